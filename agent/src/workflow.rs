//! The seed's YAML workflows: steps naming a skill and path, inputs
//! templated from the run's inputs and earlier outputs, conditions, and
//! what to do when a step is refused.
//!
//! ```yaml
//! name: support-ticket-triage
//! inputs: [customer_id, ticket_text]   # optional: references are checked
//! steps:
//!   - name: analyze-sentiment
//!     skill: sentiment-analysis        # the service
//!     path: /analyze                   # `$inputs.x` / `$outputs.a.b` inside
//!     method: POST                     # GET, POST (default), PUT, DELETE
//!     input:                           # any YAML; strings may reference
//!       text: $inputs.ticket_text
//!       language: $outputs.customer.language || "en"
//!     output:
//!       sentiment: $response           # or $response.a.b
//!     when: $outputs.customer.tier == gold   # optional: ==, != or truthy
//!     on_error: continue               # or fail (default)
//! ```
//!
//! A workflow is checked whole before anything runs: unknown keys, a
//! missing skill or path, a reference to an output no earlier step
//! defines, or to an input the workflow does not declare, are errors with
//! their line and column.

use crate::error::Error;
use marked_yaml::types::{MarkedMappingNode, MarkedScalarNode};
use marked_yaml::{LoaderOptions, Node};
use serde_json::{Map, Value};
use std::collections::BTreeSet;

/// A checked workflow.
#[derive(Debug, Clone, PartialEq)]
pub struct Workflow {
    pub name: String,
    pub description: Option<String>,
    /// Declared inputs (`None`: not declared, not checked).
    pub inputs: Option<Vec<String>>,
    pub steps: Vec<StepDef>,
}

/// One step.
#[derive(Debug, Clone, PartialEq)]
pub struct StepDef {
    pub name: String,
    pub service: String,
    pub path: Vec<Piece>,
    pub method: String,
    pub input: Option<Tmpl>,
    /// Output name → the part of the response it keeps.
    pub output: Vec<(String, Vec<String>)>,
    pub when: Option<Cond>,
    pub continue_on_error: bool,
    pub line: usize,
}

/// A value with references in it.
#[derive(Debug, Clone, PartialEq)]
pub enum Tmpl {
    Literal(Value),
    Ref(Ref, Option<Value>),
    Map(Vec<(String, Tmpl)>),
    List(Vec<Tmpl>),
}

/// `$inputs.a.b` or `$outputs.a.b`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ref {
    pub outputs: bool,
    pub path: Vec<String>,
}

/// A piece of a path: text, or a reference whose value is inserted.
#[derive(Debug, Clone, PartialEq)]
pub enum Piece {
    Text(String),
    Ref(Ref),
}

/// A step's condition.
#[derive(Debug, Clone, PartialEq)]
pub enum Cond {
    Truthy(Ref),
    Eq(Ref, Value),
    Ne(Ref, Value),
}

fn at(n: &Node) -> String {
    n.span()
        .start()
        .map_or_else(|| "?".into(), |m| format!("{}:{}", m.line(), m.column()))
}

fn line_of(n: &Node) -> usize {
    n.span().start().map_or(0, |m| m.line())
}

fn bad(n: &Node, msg: impl std::fmt::Display) -> Error {
    Error::Workflow(format!("{}: {msg}", at(n)))
}

fn scalar_value(s: &MarkedScalarNode) -> Value {
    if s.may_coerce() {
        if matches!(s.as_str(), "null" | "~" | "") {
            return Value::Null;
        }
        if let Some(b) = s.as_bool() {
            return Value::Bool(b);
        }
        if let Some(i) = s.as_i64() {
            return Value::from(i);
        }
        if let Some(f) = s.as_f64() {
            return Value::from(f);
        }
    }
    Value::String(s.as_str().to_string())
}

/// A literal after `||`, `==` or `!=`: JSON (`"en"`, `false`, `3`), else
/// the bare word as a string.
fn literal(text: &str) -> Value {
    let t = text.trim();
    serde_json::from_str(t).unwrap_or_else(|_| Value::String(t.to_string()))
}

fn parse_ref(text: &str) -> Option<Ref> {
    let (outputs, rest) = if let Some(r) = text.strip_prefix("$inputs.") {
        (false, r)
    } else {
        (true, text.strip_prefix("$outputs.")?)
    };
    let path: Vec<String> = rest.split('.').map(str::to_string).collect();
    path.iter()
        .all(|p| {
            !p.is_empty()
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        })
        .then_some(Ref { outputs, path })
}

struct Checker<'a> {
    inputs: Option<&'a [String]>,
    defined: BTreeSet<String>,
}

impl Checker<'_> {
    fn check(&self, r: &Ref, n: &Node) -> Result<(), Error> {
        let head = r.path.first().map(String::as_str).unwrap_or_default();
        if r.outputs && !self.defined.contains(head) {
            return Err(bad(
                n,
                format!("$outputs.{head} is not defined by an earlier step"),
            ));
        }
        if let (false, Some(inputs)) = (r.outputs, self.inputs) {
            if !inputs.iter().any(|i| i == head) {
                return Err(bad(n, format!("$inputs.{head} is not a declared input")));
            }
        }
        Ok(())
    }

    fn reference(&self, text: &str, n: &Node) -> Result<Option<Ref>, Error> {
        if !text.starts_with('$') {
            return Ok(None);
        }
        let r = parse_ref(text).ok_or_else(|| {
            bad(
                n,
                format!("{text:?} is not $inputs.<name>... or $outputs.<name>..."),
            )
        })?;
        self.check(&r, n)?;
        Ok(Some(r))
    }

    fn tmpl(&self, n: &Node) -> Result<Tmpl, Error> {
        Ok(match n {
            Node::Scalar(s) => {
                let text = s.as_str();
                let (expr, default) = match text.split_once("||") {
                    Some((e, d)) if text.starts_with('$') => (e.trim(), Some(literal(d))),
                    _ => (text, None),
                };
                match self.reference(expr, n)? {
                    Some(r) => Tmpl::Ref(r, default),
                    None => Tmpl::Literal(scalar_value(s)),
                }
            }
            Node::Mapping(m) => Tmpl::Map(
                m.iter()
                    .map(|(k, v)| Ok((k.as_str().to_string(), self.tmpl(v)?)))
                    .collect::<Result<_, Error>>()?,
            ),
            Node::Sequence(s) => {
                Tmpl::List(s.iter().map(|v| self.tmpl(v)).collect::<Result<_, _>>()?)
            }
        })
    }

    fn path(&self, text: &str, n: &Node) -> Result<Vec<Piece>, Error> {
        let mut out = Vec::new();
        let mut rest = text;
        while let Some(i) = rest.find('$') {
            let (before, from) = rest.split_at(i);
            if !before.is_empty() {
                out.push(Piece::Text(before.to_string()));
            }
            let end = from
                .char_indices()
                .skip(1)
                .find(|(_, c)| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')))
                .map_or(from.len(), |(j, _)| j);
            let token = from.get(..end).unwrap_or_default().trim_end_matches('.');
            let r = self
                .reference(token, n)?
                .ok_or_else(|| bad(n, format!("bad reference {token:?} in path")))?;
            out.push(Piece::Ref(r));
            rest = from.get(token.len()..).unwrap_or_default();
        }
        if !rest.is_empty() {
            out.push(Piece::Text(rest.to_string()));
        }
        Ok(out)
    }

    fn cond(&self, text: &str, n: &Node) -> Result<Cond, Error> {
        let (lhs, op, rhs) = if let Some((l, r)) = text.split_once("==") {
            (l, "==", Some(r))
        } else if let Some((l, r)) = text.split_once("!=") {
            (l, "!=", Some(r))
        } else {
            (text, "", None)
        };
        let r = self
            .reference(lhs.trim(), n)?
            .ok_or_else(|| bad(n, "`when` must start with a reference"))?;
        Ok(match (op, rhs) {
            ("==", Some(v)) => Cond::Eq(r, literal(v)),
            ("!=", Some(v)) => Cond::Ne(r, literal(v)),
            _ => Cond::Truthy(r),
        })
    }
}

fn keys(m: &MarkedMappingNode, allowed: &[&str], what: &str) -> Result<(), Error> {
    for (k, _) in m.iter() {
        if !allowed.contains(&k.as_str()) {
            let node = Node::Scalar(k.clone());
            return Err(bad(
                &node,
                format!(
                    "unknown key {:?} in {what} (expected one of: {})",
                    k.as_str(),
                    allowed.join(", ")
                ),
            ));
        }
    }
    Ok(())
}

fn text<'a>(m: &'a MarkedMappingNode, key: &str) -> Option<&'a str> {
    m.get_scalar(key).map(|s| s.as_str())
}

impl Workflow {
    /// Parses and checks a workflow.
    pub fn parse(yaml: &str) -> Result<Workflow, Error> {
        // Quoted scalars stay strings ("3" is not 3).
        let opts = LoaderOptions::default()
            .error_on_duplicate_keys(true)
            .prevent_coercion(true);
        let root = marked_yaml::parse_yaml_with_options(0, yaml, opts)
            .map_err(|e| Error::Workflow(e.to_string()))?;
        let top = root
            .as_mapping()
            .ok_or_else(|| bad(&root, "a workflow is a mapping"))?;
        keys(
            top,
            &["name", "description", "version", "inputs", "steps"],
            "the workflow",
        )?;
        let name = text(top, "name")
            .ok_or_else(|| bad(&root, "the workflow needs a `name`"))?
            .to_string();
        let inputs = match top.get_node("inputs") {
            None => None,
            Some(Node::Sequence(s)) => Some(
                s.iter()
                    .map(|i| match i {
                        Node::Scalar(x) => Ok(x.as_str().to_string()),
                        other => Err(bad(other, "inputs are names")),
                    })
                    .collect::<Result<Vec<_>, _>>()?,
            ),
            Some(other) => return Err(bad(other, "`inputs` is a list of names")),
        };
        let steps_node = top
            .get_node("steps")
            .ok_or_else(|| bad(&root, "the workflow needs `steps`"))?;
        let seq = steps_node
            .as_sequence()
            .ok_or_else(|| bad(steps_node, "`steps` is a list"))?;
        let mut checker = Checker {
            inputs: inputs.as_deref(),
            defined: BTreeSet::new(),
        };
        let mut steps = Vec::new();
        let mut names = BTreeSet::new();
        for node in seq.iter() {
            let m = node
                .as_mapping()
                .ok_or_else(|| bad(node, "a step is a mapping"))?;
            keys(
                m,
                &[
                    "name", "skill", "path", "method", "input", "output", "when", "on_error",
                ],
                "a step",
            )?;
            let name = text(m, "name")
                .ok_or_else(|| bad(node, "a step needs a `name`"))?
                .to_string();
            if !names.insert(name.clone()) {
                return Err(bad(node, format!("step name {name:?} is used twice")));
            }
            let service = text(m, "skill")
                .filter(|s| !s.is_empty() && !s.contains('/'))
                .ok_or_else(|| bad(node, format!("step {name}: `skill` names a service")))?
                .to_string();
            let path_node = m
                .get_node("path")
                .ok_or_else(|| bad(node, format!("step {name}: needs a `path`")))?;
            let path = checker.path(text(m, "path").unwrap_or_default(), path_node)?;
            let method = text(m, "method").unwrap_or("POST").to_ascii_uppercase();
            if !matches!(method.as_str(), "GET" | "POST" | "PUT" | "DELETE" | "PATCH") {
                return Err(bad(
                    node,
                    format!("step {name}: method {method} is not supported"),
                ));
            }
            let input = m.get_node("input").map(|n| checker.tmpl(n)).transpose()?;
            let when = match m.get_node("when") {
                Some(n) => Some(checker.cond(text(m, "when").unwrap_or_default(), n)?),
                None => None,
            };
            let continue_on_error = match text(m, "on_error") {
                None | Some("fail") => false,
                Some("continue") => true,
                Some(other) => {
                    return Err(bad(
                        node,
                        format!("step {name}: on_error is fail or continue, not {other:?}"),
                    ))
                }
            };
            let mut output = Vec::new();
            if let Some(o) = m.get_node("output") {
                let om = o
                    .as_mapping()
                    .ok_or_else(|| bad(o, "`output` maps names to $response..."))?;
                for (k, v) in om.iter() {
                    let src = match v {
                        Node::Scalar(s) => s.as_str(),
                        other => {
                            return Err(bad(other, "an output is $response or $response.<path>"))
                        }
                    };
                    let path = if src == "$response" {
                        Vec::new()
                    } else if let Some(p) = src.strip_prefix("$response.") {
                        p.split('.').map(str::to_string).collect()
                    } else {
                        return Err(bad(
                            v,
                            format!("output {:?} must be $response...", k.as_str()),
                        ));
                    };
                    output.push((k.as_str().to_string(), path));
                }
            }
            for (k, _) in &output {
                checker.defined.insert(k.clone());
            }
            // A step's own errors can be referred to by later steps.
            checker.defined.insert(name.clone());
            steps.push(StepDef {
                name,
                service,
                path,
                method,
                input,
                output,
                when,
                continue_on_error,
                line: line_of(node),
            });
        }
        Ok(Workflow {
            name,
            description: text(top, "description").map(str::to_string),
            inputs,
            steps,
        })
    }
}

/// The values a run has so far.
#[derive(Debug, Default, Clone)]
pub struct Scope {
    pub inputs: Map<String, Value>,
    pub outputs: Map<String, Value>,
}

impl Scope {
    fn get(&self, r: &Ref) -> Option<&Value> {
        let mut v = if r.outputs {
            self.outputs.get(r.path.first()?)?
        } else {
            self.inputs.get(r.path.first()?)?
        };
        for p in r.path.iter().skip(1) {
            v = match v {
                Value::Object(o) => o.get(p)?,
                Value::Array(a) => a.get(p.parse::<usize>().ok()?)?,
                _ => return None,
            };
        }
        Some(v)
    }

    /// A template's value: a missing or null reference takes its default,
    /// else `null`.
    pub fn render(&self, t: &Tmpl) -> Value {
        match t {
            Tmpl::Literal(v) => v.clone(),
            Tmpl::Ref(r, default) => match self.get(r) {
                Some(v) if !v.is_null() => v.clone(),
                _ => default.clone().unwrap_or(Value::Null),
            },
            Tmpl::Map(m) => {
                Value::Object(m.iter().map(|(k, v)| (k.clone(), self.render(v))).collect())
            }
            Tmpl::List(l) => Value::Array(l.iter().map(|v| self.render(v)).collect()),
        }
    }

    /// A step's path with its references filled in (each value
    /// percent-encoded as one path segment). An undefined value is an
    /// error: a call to the wrong resource must not go out.
    pub fn path(&self, pieces: &[Piece]) -> Result<String, Error> {
        let mut out = String::new();
        for p in pieces {
            match p {
                Piece::Text(t) => out.push_str(t),
                Piece::Ref(r) => {
                    let v = self.get(r).filter(|v| !v.is_null()).ok_or_else(|| {
                        Error::Workflow(format!(
                            "${}.{} has no value for the path",
                            if r.outputs { "outputs" } else { "inputs" },
                            r.path.join(".")
                        ))
                    })?;
                    let s = match v {
                        Value::String(s) => s.clone(),
                        other => other.to_string(),
                    };
                    for b in s.bytes() {
                        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                            out.push(char::from(b));
                        } else {
                            out.push_str(&format!("%{b:02X}"));
                        }
                    }
                }
            }
        }
        Ok(out)
    }

    /// Whether a condition holds.
    pub fn holds(&self, c: &Cond) -> bool {
        match c {
            Cond::Truthy(r) => !matches!(
                self.get(r),
                None | Some(Value::Null) | Some(Value::Bool(false))
            ),
            Cond::Eq(r, v) => self.get(r) == Some(v),
            Cond::Ne(r, v) => self.get(r) != Some(v),
        }
    }
}

impl<S: crate::TokenSource, C: crate::Clock> crate::Agent<S, C> {
    /// Runs a workflow with its inputs: each step in order (skipped when
    /// its `when` does not hold); a refused step fails the run unless it
    /// says `on_error: continue`, in which case `$outputs.<step>` holds
    /// `{"error": {status, reason, decision_id}}`. Returns the outputs.
    pub async fn run(
        &self,
        wf: &Workflow,
        inputs: Map<String, Value>,
    ) -> Result<Map<String, Value>, Error> {
        if let Some(declared) = &wf.inputs {
            if let Some(missing) = declared.iter().find(|i| !inputs.contains_key(*i)) {
                return Err(Error::Workflow(format!("input {missing:?} was not given")));
            }
        }
        let mut scope = Scope {
            inputs,
            outputs: Map::new(),
        };
        for step in &wf.steps {
            if step.when.as_ref().is_some_and(|c| !scope.holds(c)) {
                continue;
            }
            let path = scope.path(&step.path).map_err(|e| {
                Error::Workflow(format!("line {}: step {}: {e}", step.line, step.name))
            })?;
            let body = step.input.as_ref().map(|t| scope.render(t));
            let body = match (&body, step.method.as_str()) {
                (None, "POST" | "PUT" | "PATCH") => Some(Value::Object(Map::new())),
                _ => body,
            };
            match self
                .send(&step.method, &step.service, &path, body.as_ref())
                .await
            {
                Ok(v) => {
                    for (k, p) in &step.output {
                        let mut x = &v;
                        for part in p {
                            x = x.get(part).unwrap_or(&Value::Null);
                        }
                        scope.outputs.insert(k.clone(), x.clone());
                    }
                    scope.outputs.entry(step.name.clone()).or_insert(v);
                }
                Err(Error::Denied(d)) if step.continue_on_error => {
                    scope.outputs.insert(
                        step.name.clone(),
                        serde_json::json!({"error": {"status": d.status, "reason": d.reason, "decision_id": d.decision_id}}),
                    );
                }
                Err(e) => return Err(e),
            }
        }
        Ok(scope.outputs)
    }
}

#[cfg(test)]
#[path = "workflow_tests.rs"]
mod tests;
