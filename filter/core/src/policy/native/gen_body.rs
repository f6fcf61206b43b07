//! The bodies and expressions of the policy compiled to Rust: the half of
//! the generator (`native_gen.rs`, run by `build.rs`) that turns a rule body
//! into nested blocks and an expression into a Rust expression of type
//! `Value`.

use super::native_gen::{emit_value, ident, Emit, Gen, Kind, Res, Scope};
use regorus::unstable::{ArithOp, AssignOp, BoolOp, Expr, Literal, LiteralStmt};
use regorus::Value;
use std::fmt::Write as _;

impl Gen<'_, '_> {
    /// The statements `stmts[i..]`, then the emit; `fail` leaves this
    /// solution.
    pub(crate) fn query(
        &mut self,
        stmts: &[LiteralStmt],
        i: usize,
        scope: &Scope,
        fail: &str,
        emit: &Emit,
        term: Option<&Expr>,
    ) -> Res<String> {
        let Some(stmt) = stmts.get(i) else {
            return self.finish(scope, emit, term);
        };
        if !stmt.with_mods.is_empty() {
            return Err("`with`".into());
        }
        let mut out = String::new();
        match &stmt.literal {
            Literal::SomeVars { .. } => return Err("`some x` declarations".into()),
            Literal::Expr { expr, .. } => {
                if let Expr::AssignExpr { op, lhs, rhs, .. } = expr.as_ref() {
                    let Some(v) = var_name(lhs) else {
                        return Err("an assignment to a pattern".into());
                    };
                    if scope.vars.contains_key(&v)
                        || self.rules.contains_key(&v) && *op == AssignOp::Eq
                    {
                        if *op == AssignOp::ColEq {
                            return Err(format!("`{v} :=` of a bound name"));
                        }
                        let l = self.expr(lhs, scope)?;
                        let r = self.expr(rhs, scope)?;
                        let _ = writeln!(out, "if !rt::truthy(&rt::eq(&{l}, &{r})) {{ {fail} }}");
                        out.push_str(&self.query(stmts, i + 1, scope, fail, emit, term)?);
                        return Ok(out);
                    }
                    let r = self.expr(rhs, scope)?;
                    let local = self.fresh(&format!("v_{}_", ident(&v)));
                    let _ = writeln!(
                        out,
                        "let {local} = {r};\nif {local}.is_undefined() {{ {fail} }}"
                    );
                    let mut inner = scope.clone();
                    inner.vars.insert(v, local);
                    out.push_str(&self.query(stmts, i + 1, &inner, fail, emit, term)?);
                    return Ok(out);
                }
                let e = self.expr(expr, scope)?;
                let _ = writeln!(out, "if !rt::truthy(&{e}) {{ {fail} }}");
            }
            Literal::NotExpr { expr, .. } => {
                let e = self.expr(expr, scope)?;
                let _ = writeln!(out, "if rt::truthy(&{e}) {{ {fail} }}");
            }
            Literal::SomeIn {
                key,
                value,
                collection,
                ..
            } => {
                let c = self.expr(collection, scope)?;
                let cl = self.fresh("c");
                let loop_label = self.fresh("'l");
                let k = self.fresh("k");
                let v = self.fresh("x");
                let mut inner = scope.clone();
                let mut checks = String::new();
                let inner_fail = format!("continue {loop_label};");
                for (pat, local) in [(key.as_ref(), &k), (Some(value), &v)] {
                    let Some(pat) = pat else { continue };
                    match var_name(pat) {
                        Some(name) if name == "_" => {}
                        Some(name)
                            if !inner.vars.contains_key(&name)
                                && !self.rules.contains_key(&name) =>
                        {
                            inner.vars.insert(name, local.clone());
                        }
                        _ => {
                            let e = self.expr(pat, scope)?;
                            let _ = writeln!(checks, "if {local} != {e} {{ {inner_fail} }}");
                        }
                    }
                }
                let rest = self.query(stmts, i + 1, &inner, &inner_fail, emit, term)?;
                let _ = writeln!(
                    out,
                    "let {cl} = {c};\n{loop_label}: for ({k}, {v}) in rt::items(&{cl}) {{\n{checks}{rest}\n}}\n{fail}"
                );
                return Ok(out);
            }
            Literal::Every {
                key,
                value,
                domain,
                query,
                ..
            } => {
                let d = self.expr(domain, scope)?;
                let dl = self.fresh("c");
                let every = self.fresh("'e");
                let q = self.fresh("'q");
                let k = self.fresh("k");
                let v = self.fresh("x");
                let mut inner = scope.clone();
                if let Some(key) = key {
                    if key.text() != "_" {
                        inner.vars.insert(key.text().to_string(), k.clone());
                    }
                }
                if value.text() != "_" {
                    inner.vars.insert(value.text().to_string(), v.clone());
                }
                let body = self.query(
                    &query.stmts,
                    0,
                    &inner,
                    &format!("break {q} false;"),
                    &Emit::Holds(q.clone()),
                    None,
                )?;
                let ok = self.fresh("ok");
                let _ = writeln!(
                    out,
                    "let {dl} = {d};\nlet {ok} = {every}: {{\n    if {dl}.is_undefined() {{ break {every} false; }}\n    for ({k}, {v}) in rt::items(&{dl}) {{\n        let held = {q}: {{\n{body}\n        }};\n        if !held {{ break {every} false; }}\n    }}\n    true\n}};\nif !{ok} {{ {fail} }}"
                );
            }
        }
        out.push_str(&self.query(stmts, i + 1, scope, fail, emit, term)?);
        Ok(out)
    }

    /// What a solution does.
    pub(crate) fn finish(
        &mut self,
        scope: &Scope,
        emit: &Emit,
        term: Option<&Expr>,
    ) -> Res<String> {
        Ok(match emit {
            Emit::Value { def_label, first } => {
                let value = match term {
                    Some(t) => self.expr(t, scope)?,
                    None => "Value::Bool(true)".into(),
                };
                emit_value(&value, def_label, *first)
            }
            Emit::SetKey => {
                let t = term.ok_or("a set rule without a key")?;
                let e = self.expr(t, scope)?;
                format!("set.add({e});")
            }
            Emit::Push { into, set } => {
                let t = term.ok_or("a comprehension without a term")?;
                let e = self.expr(t, scope)?;
                if *set {
                    format!("{into}.add({e});")
                } else {
                    format!("{{ let t = {e}; if !t.is_undefined() {{ {into}.push(t); }} }}")
                }
            }
            Emit::Holds(label) => format!("break {label} true;"),
        })
    }

    fn builtin(&mut self, name: &str) -> Res<usize> {
        if !regorus::unstable::BUILTINS.contains_key(name) {
            return Err(format!("no builtin {name}"));
        }
        if let Some(i) = self.builtins.iter().position(|b| b == name) {
            return Ok(i);
        }
        self.builtins.push(name.to_string());
        Ok(self.builtins.len() - 1)
    }

    /// `f(vec![parts])`, a constant when every part is one.
    fn maybe_constant(&mut self, f: &str, parts: &[String]) -> String {
        let ks: Option<Vec<String>> = parts
            .iter()
            .map(|p| {
                p.strip_prefix("self.k(")
                    .and_then(|r| r.strip_suffix(')'))
                    .map(|i| format!("rt::kc(&k, {i})"))
            })
            .collect();
        match ks {
            Some(ks) => self.constant(format!("{f}(vec![{}])", ks.join(", "))),
            None => format!("{f}(vec![{}])", parts.join(", ")),
        }
    }

    /// A Rust expression of type `Value` (may use `?` and `self`).
    pub(crate) fn expr(&mut self, e: &Expr, scope: &Scope) -> Res<String> {
        Ok(match e {
            Expr::String { value, .. } | Expr::RawString { value, .. } => {
                let s = value.as_string().map_err(|e| e.to_string())?;
                self.constant(format!("Value::from({:?})", s.as_ref()))
            }
            Expr::Number { value, .. } => {
                let l = literal(value)?;
                self.constant(l)
            }
            Expr::Bool { value, .. } => format!("Value::Bool({})", value == &Value::Bool(true)),
            Expr::Null { .. } => "Value::Null".into(),
            Expr::Var { .. } | Expr::RefDot { .. } | Expr::RefBrack { .. } => {
                self.reference(e, scope)?
            }
            Expr::Array { items, .. } => {
                let parts = items
                    .iter()
                    .map(|i| self.expr(i, scope))
                    .collect::<Res<Vec<_>>>()?;
                self.maybe_constant("rt::array", &parts)
            }
            Expr::Set { items, .. } => {
                let parts = items
                    .iter()
                    .map(|i| self.expr(i, scope))
                    .collect::<Res<Vec<_>>>()?;
                self.maybe_constant("rt::set", &parts)
            }
            Expr::Object { fields, .. } => {
                let mut parts = Vec::new();
                for (_, k, v) in fields {
                    parts.push(format!(
                        "({}, {})",
                        self.expr(k, scope)?,
                        self.expr(v, scope)?
                    ));
                }
                format!("rt::object(vec![{}])", parts.join(", "))
            }
            Expr::ArrayCompr { term, query, .. } | Expr::SetCompr { term, query, .. } => {
                let set = matches!(e, Expr::SetCompr { .. });
                let acc = self.fresh("acc");
                let label = self.fresh("'q");
                let emit = Emit::Push {
                    into: acc.clone(),
                    set,
                };
                let body = self.query(
                    &query.stmts,
                    0,
                    scope,
                    &format!("break {label};"),
                    &emit,
                    Some(term),
                )?;
                if set {
                    format!("{{ let mut {acc} = rt::SetBuf::new();\n{label}: {{\n{body}\n}}\n{acc}.done() }}")
                } else {
                    format!("{{ let mut {acc}: Vec<Value> = Vec::new();\n{label}: {{\n{body}\n}}\nValue::from({acc}) }}")
                }
            }
            Expr::ObjectCompr { .. } => return Err("object comprehensions".into()),
            Expr::Call { fcn, params, .. } => {
                let Some(path) = path_of(fcn) else {
                    return Err("a call through an expression".into());
                };
                let name = path.join(".");
                let args = params
                    .iter()
                    .map(|p| self.expr(p, scope))
                    .collect::<Res<Vec<_>>>()?;
                if path.len() == 1
                    && self
                        .rules
                        .get(&name)
                        .is_some_and(|d| matches!(d.kind, Some(Kind::Func(_))))
                {
                    let Some(Kind::Func(n)) = self.rules[&name].kind else {
                        unreachable!()
                    };
                    if n != args.len() {
                        return Err(format!("{name} called with {} arguments", args.len()));
                    }
                    let (binds, names) = bind_args(&args);
                    format!(
                        "{{ {binds}self.{}({})? }}",
                        self.method(&name),
                        names.join(", ")
                    )
                } else if path.len() == 1 && self.rules.contains_key(&name) {
                    return Err(format!("{name} is not a function"));
                } else {
                    match (name.as_str(), args.as_slice()) {
                        (
                            "is_string" | "is_number" | "is_array" | "is_object" | "is_boolean"
                            | "is_null" | "is_set",
                            [a],
                        ) => {
                            format!("rt::{name}(&{a})")
                        }
                        ("object.get", [o, k, d]) => {
                            format!("rt::object_get(&{o}, &{k}, &{d})")
                        }
                        _ => {
                            let i = self.builtin(&name)?;
                            self.builtin_args = self.builtin_args.max(args.len());
                            let (binds, names) = bind_args(&args);
                            format!("{{ {binds}self.call({i}, &[{}])? }}", names.join(", "))
                        }
                    }
                }
            }
            Expr::UnaryExpr { expr, .. } => {
                let a = self.expr(expr, scope)?;
                self.tri(format!("rt::neg(&{a})"))
            }
            Expr::BinExpr { op, lhs, rhs, .. } => {
                let f = match op {
                    regorus::unstable::BinOp::Union => "union",
                    regorus::unstable::BinOp::Intersection => "intersection",
                };
                let (l, r) = (self.expr(lhs, scope)?, self.expr(rhs, scope)?);
                self.tri(format!("rt::{f}(&{l}, &{r})"))
            }
            Expr::BoolExpr { op, lhs, rhs, .. } => {
                let f = match op {
                    BoolOp::Lt => "lt",
                    BoolOp::Le => "le",
                    BoolOp::Eq => "eq",
                    BoolOp::Ge => "ge",
                    BoolOp::Gt => "gt",
                    BoolOp::Ne => "ne",
                };
                format!(
                    "rt::{f}(&{}, &{})",
                    self.expr(lhs, scope)?,
                    self.expr(rhs, scope)?
                )
            }
            Expr::ArithExpr { op, lhs, rhs, .. } => {
                let f = match op {
                    ArithOp::Add => "add",
                    ArithOp::Sub => "sub",
                    ArithOp::Mul => "mul",
                    ArithOp::Div => "div",
                    ArithOp::Mod => "rem",
                };
                let (l, r) = (self.expr(lhs, scope)?, self.expr(rhs, scope)?);
                // `bind_args` names them a0 and a1.
                let (binds, _) = bind_args(&[l, r]);
                let call = self.tri(format!("rt::{f}(&a0, &a1)"));
                format!("{{ {binds}{call} }}")
            }
            Expr::AssignExpr { .. } => return Err("an assignment inside an expression".into()),
            Expr::Membership {
                key,
                value,
                collection,
                ..
            } => {
                if key.is_some() {
                    return Err("`k, v in c` as an expression".into());
                }
                format!(
                    "rt::member(&{}, &{})",
                    self.expr(value, scope)?,
                    self.expr(collection, scope)?
                )
            }
            #[allow(unreachable_patterns)]
            _ => return Err("an expression form".into()),
        })
    }

    /// `input...`, `data...`, a local, a rule, with `.f` and `[e]` steps.
    fn reference(&mut self, e: &Expr, scope: &Scope) -> Res<String> {
        // Flatten into a root and steps.
        let mut steps: Vec<Step> = Vec::new();
        let mut cur = e;
        let root = loop {
            match cur {
                Expr::RefDot { refr, field, .. } => {
                    steps.push(Step::Field(
                        field.1.as_string().map_err(|e| e.to_string())?.to_string(),
                    ));
                    cur = refr;
                }
                Expr::RefBrack { refr, index, .. } => {
                    steps.push(match index.as_ref() {
                        Expr::String { value, .. } => {
                            Step::Field(value.as_string().map_err(|e| e.to_string())?.to_string())
                        }
                        other => Step::Dyn(self.expr(other, scope)?),
                    });
                    cur = refr;
                }
                Expr::Var { value, .. } => {
                    break value.as_string().map_err(|e| e.to_string())?.to_string()
                }
                _ => return Err("a reference into an expression".into()),
            }
        };
        steps.reverse();
        let (base, rest): (String, &[Step]) = if let Some(local) = scope.vars.get(&root) {
            (local.clone(), &steps[..])
        } else if root == "input" {
            ("*self.input".into(), &steps[..])
        } else if root == "data" {
            // A path that leaves the package's own path reads data; one
            // that names a rule of the package calls it.
            let fields: Vec<Option<&str>> = steps
                .iter()
                .map(|s| match s {
                    Step::Field(f) => Some(f.as_str()),
                    Step::Dyn(_) => None,
                })
                .collect();
            let mut diverges = false;
            for (i, p) in self.pkg.iter().enumerate() {
                match fields.get(i) {
                    Some(Some(f)) if f == p => {}
                    Some(Some(_)) => {
                        diverges = true;
                        break;
                    }
                    _ => return Err("a reference to the package as data".into()),
                }
            }
            if diverges {
                ("*self.data".into(), &steps[..])
            } else {
                let n = self.pkg.len();
                match fields.get(n) {
                    Some(Some(rule)) if self.rules.contains_key(*rule) => (
                        format!("self.{}()?", self.method(rule)),
                        steps.get(n + 1..).unwrap_or_default(),
                    ),
                    _ => return Err("a reference into the package".into()),
                }
            }
        } else if root == "_" {
            return Err("`_`".into());
        } else if let Some(d) = self.rules.get(&root) {
            if matches!(d.kind, Some(Kind::Func(_))) {
                return Err(format!("function {root} as a value"));
            }
            (format!("self.{}()?", self.method(&root)), &steps[..])
        } else {
            return Err(format!("an unbound name {root} (implicit iteration)"));
        };
        let mut codes = Vec::new();
        for s in rest {
            codes.push(match s {
                Step::Field(f) => {
                    let k = self.constant(format!("Value::from({f:?})"));
                    let i = k.trim_start_matches("self.k(").trim_end_matches(')');
                    format!("rt::K::R(self.kr({i}))")
                }
                Step::Dyn(e) => format!("rt::K::V({e})"),
            });
        }
        let steps_code = codes.join(", ");
        if base.starts_with("self.r_") {
            if rest.is_empty() {
                return Ok(base);
            }
            let t = self.fresh("t");
            return Ok(format!(
                "{{ let {t} = {base}; rt::at(&{t}, &[{steps_code}]) }}"
            ));
        }
        // A static path into the input: read once per decision.
        if base == "*self.input" && !rest.is_empty() && !steps_code.contains("rt::K::V") {
            let read = format!("rt::at(self.input, &[{steps_code}])");
            let j = match self.inputs.iter().position(|r| *r == read) {
                Some(j) => j,
                None => {
                    self.inputs.push(read);
                    self.inputs.len() - 1
                }
            };
            return Ok(format!("self.ip_{j}()"));
        }
        // `self.input`, `self.data` (references) or a local (a value).
        let b = match base.strip_prefix('*') {
            Some(r) => r.to_string(),
            None => format!("&{base}"),
        };
        if rest.is_empty() {
            return Ok(format!("({b}).clone()"));
        }
        Ok(format!("rt::at({b}, &[{steps_code}])"))
    }
}

/// Arguments evaluated into locals first (each may borrow `self`).
fn bind_args(args: &[String]) -> (String, Vec<String>) {
    let mut binds = String::new();
    let mut names = Vec::new();
    for (i, a) in args.iter().enumerate() {
        let _ = write!(binds, "let a{i} = {a}; ");
        names.push(format!("a{i}"));
    }
    (binds, names)
}

enum Step {
    Field(String),
    Dyn(String),
}

fn literal(v: &Value) -> Res<String> {
    if let Ok(i) = v.as_i64() {
        return Ok(format!("Value::from({i}i64)"));
    }
    if let Ok(u) = v.as_u64() {
        return Ok(format!("Value::from({u}u64)"));
    }
    let json = v.to_json_str().map_err(|e| e.to_string())?;
    // Checked here, so the constant cannot fail to build at run time.
    Value::from_json_str(&json).map_err(|e| format!("number {json}: {e}"))?;
    Ok(format!("rt::number({json:?}).unwrap_or(Value::Undefined)"))
}

pub(crate) fn var_name(e: &Expr) -> Option<String> {
    match e {
        Expr::Var { value, .. } => value.as_string().ok().map(|s| s.to_string()),
        _ => None,
    }
}

/// `a.b.c` as its names.
pub(crate) fn path_of(e: &Expr) -> Option<Vec<String>> {
    match e {
        Expr::Var { value, .. } => Some(vec![value.as_string().ok()?.to_string()]),
        Expr::RefDot { refr, field, .. } => {
            let mut p = path_of(refr)?;
            p.push(field.1.as_string().ok()?.to_string());
            Some(p)
        }
        _ => None,
    }
}
