//! The policy compiled to Rust when the filter is built (`build.rs` runs
//! this; nothing here is in the filter). One Rego package becomes one
//! `impl` of rules over regorus' values, run by `rt.rs`:
//!
//! - a complete rule is a memoized method, evaluated at most once per
//!   decision (definitions must agree, as in OPA: a conflict is an error);
//! - a partial set rule is a memoized method collecting every solution;
//! - a function is a method with one parameter per argument;
//! - a body is nested Rust blocks: `some x in c` a `for` loop, a failed
//!   expression a `continue` (or a `break` out of the body), `every` and
//!   comprehensions labelled blocks of their own;
//! - builtins are regorus' own implementations, called as its VM calls
//!   them (an undefined argument is undefined; an error is undefined),
//!   with the type tests and `object.get` done in place.
//!
//! What it does not translate (`with`, `some x` declarations, unification
//! patterns, implicit iteration over unbound variables, references into
//! the package other than a rule by name, ...) it refuses with a reason:
//! the build then prints the reason and the filter keeps the RVM program.

use super::native_expr::{path_of, var_name};
use regorus::unstable::{Expr, Parser, Rule, RuleHead};
use regorus::Value;
use std::collections::BTreeMap;
use std::fmt::Write as _;

pub(crate) type Res<T> = Result<T, String>;

/// One rule of the package, all its definitions.
#[derive(Default)]
pub(crate) struct RuleDefs<'m> {
    pub(crate) kind: Option<Kind>,
    pub(crate) specs: Vec<&'m Rule>,
    pub(crate) default: Option<&'m Expr>,
    pub(crate) index: usize,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Kind {
    Complete,
    Set,
    Func(usize),
}

/// Generates Rust for package `package` (`mcp.authz`) of `modules`,
/// with a `decision` method building the object the entry module's
/// `__agentplane_decision` rule builds: `allow` and every `(rule, key,
/// default)` of `optional` the package declares.
pub fn generate(
    modules: &[(&str, &str)],
    package: &str,
    optional: &[(&str, &str, &str)],
) -> Res<String> {
    let mut parsed = Vec::new();
    for (name, text) in modules {
        let source =
            regorus::unstable::Source::from_contents((*name).to_string(), (*text).to_string())
                .map_err(|e| format!("{name}: {e}"))?;
        let mut parser = Parser::new(&source).map_err(|e| format!("{name}: {e}"))?;
        parser
            .enable_rego_v1()
            .map_err(|e| format!("{name}: {e}"))?;
        let module = parser.parse().map_err(|e| format!("{name}: {e}"))?;
        parsed.push((name.to_string(), module));
    }
    let mut rules: BTreeMap<String, RuleDefs> = BTreeMap::new();
    let pkg_path: Vec<String> = package.split('.').map(str::to_string).collect();
    for (name, module) in &parsed {
        let p = path_of(&module.package.refr).ok_or_else(|| format!("{name}: package"))?;
        if p != pkg_path {
            // Other packages are not reachable from this one unless it
            // names them; a reference to one is refused below.
            continue;
        }
        if !module.imports.is_empty() {
            return Err(format!("{name}: imports"));
        }
        for rule in &module.policy {
            let rule: &Rule = rule;
            match rule {
                Rule::Spec { head, .. } => {
                    let (refr, kind) = match head {
                        RuleHead::Compr { refr, .. } => (refr, Kind::Complete),
                        RuleHead::Set { refr, key, .. } => {
                            if key.is_none() {
                                return Err(format!("{name}: a set rule without a key"));
                            }
                            (refr, Kind::Set)
                        }
                        RuleHead::Func { refr, args, .. } => (refr, Kind::Func(args.len())),
                    };
                    let rname =
                        var_name(refr).ok_or_else(|| format!("{name}: a rule head with a path"))?;
                    let defs = rules.entry(rname.clone()).or_default();
                    if defs.kind.is_some_and(|k| k != kind) {
                        return Err(format!("rule {rname}: mixed kinds"));
                    }
                    defs.kind = Some(kind);
                    defs.specs.push(rule);
                }
                Rule::Default {
                    refr, args, value, ..
                } => {
                    if !args.is_empty() {
                        return Err(format!("{name}: a default function"));
                    }
                    let rname =
                        var_name(refr).ok_or_else(|| format!("{name}: a default with a path"))?;
                    let defs = rules.entry(rname.clone()).or_default();
                    defs.default = Some(value);
                }
            }
        }
    }
    for (i, (name, d)) in rules.iter_mut().enumerate() {
        d.index = i;
        if d.kind.is_none() {
            // Only a default: a complete rule with that value.
            d.kind = Some(Kind::Complete);
        }
        if d.default.is_some() && d.kind != Some(Kind::Complete) {
            return Err(format!("rule {name}: a default on a set or a function"));
        }
    }
    if !rules.contains_key("allow") {
        return Err(format!("package {package} declares no `allow` rule"));
    }
    let mut g = Gen {
        rules: &rules,
        pkg: pkg_path,
        builtins: Vec::new(),
        n: 0,
        err: String::new(),
        consts: Vec::new(),
        inputs: Vec::new(),
        builtin_args: 0,
    };
    let mut codes: Vec<(String, String)> = Vec::new();
    for (name, d) in &rules {
        codes.push((name.clone(), g.rule(name, d)?));
    }
    // Rules that read no input, directly or through the rules they use,
    // depend on the data alone: their values are kept for the VM's life
    // (`self.vm`), not one decision's.
    let uses: BTreeMap<&str, (bool, Vec<String>)> = codes
        .iter()
        .map(|(name, code)| {
            // A builtin whose answer changes between calls (the clock, a
            // random number, ...) counts as reading the input.
            let varies = g
                .builtins
                .iter()
                .enumerate()
                .any(|(i, name)| varying(name) && code.contains(&format!("self.call({i},")));
            let direct = code.contains("self.input") || code.contains("self.ip_") || varies;
            let deps = code
                .split("self.r_")
                .skip(1)
                .filter_map(|rest| rest.split('(').next())
                .map(str::to_string)
                .collect();
            (name.as_str(), (direct, deps))
        })
        .collect();
    let mut data_only: BTreeMap<&str, bool> = uses.keys().map(|k| (*k, true)).collect();
    loop {
        let mut changed = false;
        for (name, (direct, deps)) in &uses {
            if !data_only.get(name).copied().unwrap_or(false) {
                continue;
            }
            let by_input = *direct
                || deps
                    .iter()
                    .any(|d| !data_only.get(ident_of(&rules, d)).copied().unwrap_or(false));
            if by_input {
                data_only.insert(name, false);
                changed = true;
            }
        }
        if !changed {
            break;
        }
    }
    let mut methods = String::new();
    for (name, code) in &codes {
        let keep = data_only.get(name.as_str()).copied().unwrap_or(false)
            && matches!(
                rules.get(name).and_then(|d| d.kind),
                Some(Kind::Complete | Kind::Set)
            );
        if keep {
            let i = rules.get(name).map_or(0, |d| d.index);
            methods.push_str(&code.replace(&format!("self.memo[{i}]"), &format!("self.vm[{i}]")));
        } else {
            methods.push_str(code);
        }
    }
    for (j, read) in g.inputs.iter().enumerate() {
        let _ = writeln!(
            methods,
            "    fn ip_{j}(&mut self) -> Value {{\n        if let Some(v) = &self.ipm[{j}] {{ return v.clone(); }}\n        let v = {read};\n        self.ipm[{j}] = Some(v.clone());\n        v\n    }}"
        );
    }
    // The decision object.
    let mut decision = String::from(
        "    /// The package's decision: what the entry module's decision rule gathers.\n    pub(super) fn decision(&mut self) -> R {\n        let mut o = rt::Obj::new();\n",
    );
    let _ = writeln!(
        decision,
        "        let a = self.{}()?;\n        o.put(\"allow\", if a.is_undefined() {{ Value::Bool(false) }} else {{ a }});",
        g.method("allow")
    );
    for (rule, key, default) in optional {
        let dflt = match *default {
            "[]" => "Value::new_array()",
            "0" => "Value::from(0u64)",
            "null" => "Value::Null",
            other => return Err(format!("default {other}")),
        };
        if let Some(d) = rules.get(*rule) {
            if !matches!(d.kind, Some(Kind::Complete) | Some(Kind::Set)) {
                return Err(format!("{rule} is a function"));
            }
            let _ = writeln!(
                decision,
                "        let v = self.{}()?;\n        o.put({key:?}, if v.is_undefined() {{ {dflt} }} else {{ v }});",
                g.method(rule)
            );
        } else {
            let _ = writeln!(decision, "        o.put({key:?}, {dflt});");
        }
    }
    decision.push_str("        Ok(o.done())\n    }\n");

    let mut out = String::new();
    let n = rules.len();
    let _ = writeln!(
        out,
        "// Generated by build.rs from the package `{package}` (policy/native/gen.rs). Do not edit.\n"
    );
    let _ = writeln!(out, "/// Builtins the policy calls, by regorus name.");
    let _ = writeln!(
        out,
        "/// The most arguments a builtin call passes.\npub(super) const BUILTIN_ARGS: usize = {};",
        g.builtin_args
    );
    let _ = writeln!(
        out,
        "pub(super) static BUILTINS: [&str; {}] = [{}];",
        g.builtins.len(),
        g.builtins
            .iter()
            .map(|b| format!("{b:?}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let _ = writeln!(
        out,
        "/// The policy's constants, built once per VM.\n#[allow(clippy::all, clippy::pedantic, clippy::restriction)]\npub(super) fn constants() -> Vec<Value> {{\n    let mut k: Vec<Value> = Vec::with_capacity({});",
        g.consts.len()
    );
    for c in &g.consts {
        let _ = writeln!(out, "    let v = {c};\n    k.push(v);");
    }
    out.push_str("    k\n}\n");
    let _ = writeln!(
        out,
        "/// How many rules are memoized per decision.\npub(super) const RULES: usize = {n};\n/// How many static input paths are read once per decision.\npub(super) const INPUTS: usize = {};",
        g.inputs.len()
    );
    let _ = writeln!(
        out,
        "#[allow(dead_code, unused_labels, unused_variables, unused_mut, unreachable_code, clippy::all, clippy::pedantic, clippy::nursery, clippy::restriction)]\nimpl Eval<'_> {{"
    );
    out.push_str(&decision);
    out.push_str(&methods);
    out.push_str("}\n");
    Ok(out)
}

/// Variables in scope: Rego name to Rust local.
#[derive(Clone, Default)]
pub(crate) struct Scope {
    pub(crate) vars: BTreeMap<String, String>,
}

/// How a query ends a solution.
#[derive(Clone)]
pub(crate) enum Emit {
    /// A rule or function value (the term; `true` without one): return it
    /// when the rule can only be `true` (`first`), else settle it and leave
    /// the definition.
    Value { def_label: String, first: bool },
    /// A set rule's key: insert and go on.
    SetKey,
    /// A comprehension's term: push or insert, and go on.
    Push { into: String, set: bool },
    /// An `every` body or a negation: leave the label with `true`.
    Holds(String),
}

pub(crate) struct Gen<'r, 'm> {
    pub(crate) rules: &'r BTreeMap<String, RuleDefs<'m>>,
    pub(crate) pkg: Vec<String>,
    pub(crate) builtins: Vec<String>,
    pub(crate) n: usize,
    /// The label an evaluation error in the body being generated breaks
    /// out of (the body fails, as on regorus' VM); empty: none, so the
    /// error ends the decision.
    pub(crate) err: String,
    /// Constants built once per VM (`constants()`): how each is built,
    /// from the ones before it (`k`).
    pub(crate) consts: Vec<String>,
    /// The static input paths read (`self.ip_N()`), each read once per
    /// decision: how each is read.
    pub(crate) inputs: Vec<String>,
    /// The most arguments a builtin call passes (regorus' builtins take a
    /// placeholder expression per argument).
    pub(crate) builtin_args: usize,
}

impl Gen<'_, '_> {
    /// `call`, a `Result<Value, rt::E>`, unwrapped: a body error fails the
    /// current body, a fatal one ends the decision.
    pub(crate) fn tri(&self, call: String) -> String {
        let body = if self.err.is_empty() {
            "return Err(rt::E::Body.message())".to_string()
        } else {
            format!("break {}", self.err)
        };
        format!("match {call} {{ Ok(v) => v, Err(rt::E::Fatal(m)) => return Err(m), Err(rt::E::Body) => {body} }}")
    }

    /// The constant built by `code` (deduplicated), as `self.k(i)`.
    pub(crate) fn constant(&mut self, code: String) -> String {
        let i = match self.consts.iter().position(|c| *c == code) {
            Some(i) => i,
            None => {
                self.consts.push(code);
                self.consts.len() - 1
            }
        };
        format!("self.k({i})")
    }

    pub(crate) fn fresh(&mut self, stem: &str) -> String {
        self.n += 1;
        format!("{stem}{}", self.n)
    }

    pub(crate) fn method(&self, rule: &str) -> String {
        format!("r_{}", ident(rule))
    }

    fn rule(&mut self, name: &str, d: &RuleDefs) -> Res<String> {
        let kind = d.kind.unwrap_or(Kind::Complete);
        let m = self.method(name);
        let mut out = String::new();
        match kind {
            Kind::Complete | Kind::Set => {
                let _ = writeln!(
                    out,
                    "    /// `{name}`\n    fn {m}(&mut self) -> R {{\n        if let Some(v) = &self.memo[{i}] {{ return Ok(v.clone()); }}\n        let v = self.c_{m}()?;\n        self.memo[{i}] = Some(v.clone());\n        Ok(v)\n    }}\n    fn c_{m}(&mut self) -> R {{",
                    i = d.index
                );
            }
            Kind::Func(n) => {
                let params: Vec<String> = (0..n).map(|i| format!("p{i}: Value")).collect();
                let _ = writeln!(
                    out,
                    "    /// `{name}` (function)\n    fn {m}(&mut self, {}) -> R {{",
                    params.join(", ")
                );
                for i in 0..n {
                    let _ = writeln!(
                        out,
                        "        if p{i}.is_undefined() {{ return Ok(Value::Undefined); }}"
                    );
                }
            }
        }
        match kind {
            Kind::Set => {
                out.push_str("        let mut set = rt::SetBuf::new();\n");
                for spec in &d.specs {
                    let Rule::Spec {
                        head: RuleHead::Set { key: Some(key), .. },
                        bodies,
                        ..
                    } = spec
                    else {
                        return Err(format!("{name}: set rule shape"));
                    };
                    if bodies.len() > 1 {
                        return Err(format!("{name}: a set rule with else"));
                    }
                    let scope = Scope::default();
                    let label = self.fresh("'q");
                    self.err = label.clone();
                    let emit = Emit::SetKey;
                    let code = match bodies.first() {
                        Some(b) => self.query(
                            &b.query.stmts,
                            0,
                            &scope,
                            &format!("break {label};"),
                            &emit,
                            Some(key),
                        )?,
                        None => self.finish(&scope, &emit, Some(key))?,
                    };
                    let _ = writeln!(out, "        {label}: {{\n{code}\n        }}");
                }
                out.push_str("        Ok(set.done())\n    }\n");
            }
            Kind::Complete | Kind::Func(_) => {
                // Rules whose every definition can only be `true` stop at the
                // first success; others settle every definition.
                let only_true = d.specs.iter().all(|s| spec_is_true(s))
                    && d.default.is_none_or(|v| {
                        matches!(
                            v,
                            Expr::Bool {
                                value: Value::Bool(false),
                                ..
                            }
                        )
                    });
                out.push_str("        let mut res: Option<Value> = None;\n");
                for spec in &d.specs {
                    let Rule::Spec { head, bodies, .. } = spec else {
                        continue;
                    };
                    let mut scope = Scope::default();
                    let mut prologue = String::new();
                    let head_value = match head {
                        RuleHead::Compr { assign, .. } => assign.as_ref().map(|a| a.value.clone()),
                        RuleHead::Func { args, assign, .. } => {
                            for (i, a) in args.iter().enumerate() {
                                match a.as_ref() {
                                    Expr::Var { value, .. } => {
                                        let v = value
                                            .as_string()
                                            .map_err(|e| e.to_string())?
                                            .to_string();
                                        if v == "_" {
                                            continue;
                                        }
                                        if let Some(prev) = scope.vars.get(&v) {
                                            let _ = writeln!(prologue, "            if p{i} != {prev} {{ break {{DEF}}; }}");
                                        } else {
                                            let local = self.fresh(&format!("v_{}_", ident(&v)));
                                            let _ = writeln!(
                                                prologue,
                                                "            let {local} = p{i}.clone();"
                                            );
                                            scope.vars.insert(v, local);
                                        }
                                    }
                                    other => {
                                        let e = self.expr(other, &scope)?;
                                        let _ = writeln!(
                                            prologue,
                                            "            if p{i} != {e} {{ break {{DEF}}; }}"
                                        );
                                    }
                                }
                            }
                            assign.as_ref().map(|a| a.value.clone())
                        }
                        RuleHead::Set { .. } => return Err(format!("{name}: kinds")),
                    };
                    let def_label = self.fresh("'d");
                    let prologue = prologue.replace("{DEF}", &def_label);
                    let mut code = String::new();
                    if bodies.is_empty() {
                        self.err = def_label.clone();
                        let value = match &head_value {
                            Some(v) => self.expr(v, &scope)?,
                            None => "Value::Bool(true)".to_string(),
                        };
                        let _ = writeln!(code, "{}", emit_value(&value, &def_label, only_true));
                    } else {
                        for (bi, body) in bodies.iter().enumerate() {
                            if bi > 0 && !body.is_else {
                                return Err(format!("{name}: several bodies in one definition"));
                            }
                            let value_expr = if bi == 0 {
                                head_value.clone()
                            } else {
                                body.assign.as_ref().map(|a| a.value.clone())
                            };
                            let label = self.fresh("'q");
                            self.err = label.clone();
                            let emit = Emit::Value {
                                def_label: def_label.clone(),
                                first: only_true,
                            };
                            let body_code = self.query(
                                &body.query.stmts,
                                0,
                                &scope,
                                &format!("break {label};"),
                                &emit,
                                value_expr.as_deref(),
                            )?;
                            let _ = writeln!(
                                code,
                                "            {label}: {{\n{body_code}\n            }}"
                            );
                        }
                    }
                    let _ = writeln!(out, "        {def_label}: {{\n{prologue}{code}        }}");
                }
                self.err = String::new();
                match d.default {
                    Some(v) => {
                        let e = self.expr(v, &Scope::default())?;
                        let _ = writeln!(
                            out,
                            "        Ok(match res {{ Some(v) => v, None => {e} }})\n    }}"
                        );
                    }
                    None => out.push_str("        Ok(res.unwrap_or(Value::Undefined))\n    }\n"),
                }
            }
        }
        Ok(out)
    }
}

pub(crate) fn emit_value(value: &str, def_label: &str, first: bool) -> String {
    if first {
        format!("{{ let v = {value}; if !v.is_undefined() {{ return Ok(v); }} }}")
    } else {
        format!("{{ let v = {value}; if !v.is_undefined() {{ rt::settle(&mut res, v)?; break {def_label}; }} }}")
    }
}

/// A definition that can only give `true`.
fn spec_is_true(r: &Rule) -> bool {
    let Rule::Spec { head, bodies, .. } = r else {
        return false;
    };
    let head_true = match head {
        RuleHead::Compr { assign, .. } | RuleHead::Func { assign, .. } => {
            assign.as_ref().is_none_or(|a| {
                matches!(
                    a.value.as_ref(),
                    Expr::Bool {
                        value: Value::Bool(true),
                        ..
                    }
                )
            })
        }
        RuleHead::Set { .. } => false,
    };
    head_true
        && bodies.iter().skip(1).all(|b| {
            b.assign.as_ref().is_none_or(|a| {
                matches!(
                    a.value.as_ref(),
                    Expr::Bool {
                        value: Value::Bool(true),
                        ..
                    }
                )
            })
        })
}

/// Whether builtin `name`'s answer is not a function of its arguments:
/// those regorus caches within one evaluation (the clock, random numbers,
/// ...) and the ones that ask the network. A rule calling one is never
/// kept beyond its decision.
fn varying(name: &str) -> bool {
    regorus::unstable::must_cache(name).is_some()
        || name.starts_with("http.")
        || name.starts_with("net.")
}

/// The rule whose method name (`r_<ident>`) is `method`.
fn ident_of<'n>(rules: &'n BTreeMap<String, RuleDefs>, method: &'n str) -> &'n str {
    rules
        .keys()
        .find(|k| ident(k) == method)
        .map_or(method, String::as_str)
}

pub(crate) fn ident(name: &str) -> String {
    name.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}
