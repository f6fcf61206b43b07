//! The embedded Rego policy: compiled once when the VM configures, then
//! evaluated per request, turning whatever the policy returns into a
//! [`Verdict`] that can only be "allow" when the policy clearly said so.
//!
//! Two entrypoint forms:
//! - a package (`data.mcp.authz`): its `allow` rule must be `true` and its
//!   optional `deny` rule (a set/array of reasons, a string, or a boolean)
//!   must be empty or false. Any deny wins over every allow.
//! - a rule: `true`/`false`, or an object `{"allowed": bool, "status":
//!   int, "headers": {..}, "reason": string}` that shapes the reply.
//!
//! Undefined, mistyped or erroring results deny.

use regorus::Engine;
use serde_json::Value;
use std::cell::RefCell;
use std::fmt;

/// Why the policy could not produce a decision.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum PolicyError {
    /// A module or the data failed to load or compile.
    Compile(String),
    /// The entrypoint does not exist or has no `allow` rule.
    Entrypoint(String),
    /// Evaluation failed at run time.
    Eval(String),
    /// The result is not a shape the filter understands.
    BadResult(String),
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PolicyError::Compile(m) => write!(f, "policy does not compile: {m}"),
            PolicyError::Entrypoint(m) => write!(f, "policy entrypoint: {m}"),
            PolicyError::Eval(m) => write!(f, "policy evaluation failed: {m}"),
            PolicyError::BadResult(m) => write!(f, "policy result not understood: {m}"),
        }
    }
}

impl std::error::Error for PolicyError {}

/// What the policy decided.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Verdict {
    /// True only if the policy allowed and nothing denied.
    pub allowed: bool,
    /// Deny reasons, in the policy's order (sets are sorted).
    pub reasons: Vec<String>,
    /// Status chosen by a response-object policy.
    pub status: Option<u16>,
    /// Headers chosen by a response-object policy: added upstream on allow,
    /// to the reply on deny.
    pub headers: Vec<(String, String)>,
}

#[derive(Debug)]
enum Mode {
    /// Evaluates the generated `__agentplane_decision` rule, which reads
    /// `allow` and `deny` in one evaluation so `deny` is computed once.
    Package(String),
    Rule(String),
}

/// Name of the module agentplane adds to a package entrypoint.
const ENTRY_MODULE: &str = "__agentplane_entry.rego";

/// One rule that gathers `allow` (false when undefined) and `deny` (empty
/// when undefined or not declared) so a single evaluation decides.
fn entry_module(package: &str, has_deny: bool) -> String {
    let deny = if has_deny {
        "__agentplane_deny := deny\n"
    } else {
        ""
    };
    format!(
        "package {package}\n\n\
         default __agentplane_allow := false\n\
         __agentplane_allow := allow\n\n\
         default __agentplane_deny := []\n\
         {deny}\n\
         __agentplane_decision := {{\"allow\": __agentplane_allow, \"deny\": __agentplane_deny}}\n"
    )
}

/// A compiled policy bundle with its entrypoint resolved.
#[derive(Debug)]
pub struct Policy {
    engine: RefCell<Engine>,
    mode: Mode,
}

impl Policy {
    /// Loads modules and data and resolves the entrypoint. All errors here
    /// are configuration errors: the filter must not start.
    pub fn compile(
        modules: &[(&str, &str)],
        data_json: &str,
        entrypoint: &str,
    ) -> Result<Policy, PolicyError> {
        let mut engine = Engine::new();
        engine.set_rego_v0(false);
        for (name, src) in modules {
            engine
                .add_policy((*name).to_string(), (*src).to_string())
                .map_err(|e| PolicyError::Compile(format!("{name}: {e}")))?;
        }
        let data = regorus::Value::from_json_str(data_json)
            .map_err(|e| PolicyError::Compile(format!("data.json: {e}")))?;
        engine
            .add_data(data)
            .map_err(|e| PolicyError::Compile(format!("data.json: {e}")))?;

        let packages = engine
            .get_packages()
            .map_err(|e| PolicyError::Compile(e.to_string()))?;
        let in_package: Vec<&str> = modules
            .iter()
            .zip(&packages)
            .filter(|(_, p)| p.as_str() == entrypoint)
            .map(|((name, _), _)| *name)
            .collect();
        let declared = |rule: &str| -> Result<bool, PolicyError> {
            for m in &in_package {
                if engine
                    .has_declared_rule_rooted_at(m, rule)
                    .map_err(|e| PolicyError::Compile(e.to_string()))?
                {
                    return Ok(true);
                }
            }
            Ok(false)
        };
        let mode = if in_package.is_empty() {
            Mode::Rule(entrypoint.to_string())
        } else {
            if !declared("allow")? {
                return Err(PolicyError::Entrypoint(format!(
                    "package {entrypoint} declares no `allow` rule"
                )));
            }
            let package = entrypoint.strip_prefix("data.").unwrap_or(entrypoint);
            let module = entry_module(package, declared("deny")?);
            engine
                .add_policy(ENTRY_MODULE.to_string(), module)
                .map_err(|e| PolicyError::Compile(format!("{ENTRY_MODULE}: {e}")))?;
            Mode::Package(format!("{entrypoint}.__agentplane_decision"))
        };
        let policy = Policy {
            engine: RefCell::new(engine),
            mode,
        };
        // Resolve rule paths and type-check the whole bundle now, not on the
        // first request: a missing rule is an error here.
        let probe = regorus::Value::new_object();
        match &policy.mode {
            Mode::Rule(r) | Mode::Package(r) => {
                policy
                    .eval_rule(r, probe.clone())
                    .map_err(|e| PolicyError::Entrypoint(format!("{r}: {e}")))?;
            }
        }
        Ok(policy)
    }

    /// Compiles the bundle embedded at build time.
    pub fn embedded(entrypoint: &str) -> Result<Policy, PolicyError> {
        Policy::compile(crate::bundle::MODULES, crate::bundle::DATA_JSON, entrypoint)
    }

    fn eval_rule(&self, rule: &str, input: regorus::Value) -> Result<Value, PolicyError> {
        let mut engine = self
            .engine
            .try_borrow_mut()
            .map_err(|_| PolicyError::Eval("re-entrant evaluation".into()))?;
        engine.set_input(input);
        let v = engine
            .eval_rule(rule.to_string())
            .map_err(|e| PolicyError::Eval(e.to_string()))?;
        if v == regorus::Value::Undefined {
            return Ok(Value::Null);
        }
        serde_json::to_value(&v).map_err(|e| PolicyError::BadResult(e.to_string()))
    }

    /// Evaluates the policy for one input document (consumed: the request
    /// path builds it for this call only).
    pub fn evaluate(&self, input: Value) -> Result<Verdict, PolicyError> {
        let input: regorus::Value =
            serde_json::from_value(input).map_err(|e| PolicyError::Eval(format!("input: {e}")))?;
        match &self.mode {
            Mode::Package(rule) => {
                let mut decision = match self.eval_rule(rule, input)? {
                    Value::Object(o) => o,
                    other => {
                        return Err(PolicyError::BadResult(format!(
                            "package decision is {}",
                            kind(&other)
                        )))
                    }
                };
                let allowed = match decision.remove("allow") {
                    Some(Value::Bool(b)) => b,
                    Some(other) => {
                        return Err(PolicyError::BadResult(format!(
                            "`allow` is {}, not a boolean",
                            kind(&other)
                        )))
                    }
                    None => false,
                };
                let reasons = deny_reasons(decision.remove("deny").unwrap_or(Value::Null))?;
                Ok(Verdict {
                    allowed: allowed && reasons.is_empty(),
                    reasons,
                    ..Verdict::default()
                })
            }
            Mode::Rule(r) => response_object(self.eval_rule(r, input)?),
        }
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "undefined",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn deny_reasons(v: Value) -> Result<Vec<String>, PolicyError> {
    Ok(match v {
        Value::Null | Value::Bool(false) => Vec::new(),
        Value::Bool(true) => vec!["denied by policy".into()],
        Value::String(s) if s.is_empty() => Vec::new(),
        Value::String(s) => vec![s],
        Value::Array(items) => items
            .into_iter()
            .map(|i| match i {
                Value::String(s) => s,
                other => other.to_string(),
            })
            .collect(),
        other => {
            return Err(PolicyError::BadResult(format!(
                "`deny` is {}; use a set of reason strings",
                kind(&other)
            )))
        }
    })
}

fn response_object(v: Value) -> Result<Verdict, PolicyError> {
    let obj = match v {
        Value::Bool(allowed) => {
            return Ok(Verdict {
                allowed,
                ..Verdict::default()
            })
        }
        Value::Null => {
            return Ok(Verdict {
                allowed: false,
                reasons: vec!["policy result undefined".into()],
                ..Verdict::default()
            })
        }
        Value::Object(o) => o,
        other => {
            return Err(PolicyError::BadResult(format!(
                "entrypoint is {}, not a boolean or response object",
                kind(&other)
            )))
        }
    };
    let allowed = match obj.get("allowed") {
        Some(Value::Bool(b)) => *b,
        _ => {
            return Err(PolicyError::BadResult(
                "response object needs a boolean `allowed`".into(),
            ))
        }
    };
    let status = match obj.get("status") {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) => match n.as_u64().and_then(|s| u16::try_from(s).ok()) {
            Some(s) if (200..=599).contains(&s) => Some(s),
            _ => return Err(PolicyError::BadResult(format!("status {n} is not 200-599"))),
        },
        Some(other) => {
            return Err(PolicyError::BadResult(format!(
                "`status` is {}",
                kind(other)
            )))
        }
    };
    let mut headers = Vec::new();
    match obj.get("headers") {
        None | Some(Value::Null) => {}
        Some(Value::Object(h)) => {
            for (k, v) in h {
                match v {
                    Value::String(s) => headers.push((k.to_ascii_lowercase(), s.clone())),
                    other => {
                        return Err(PolicyError::BadResult(format!(
                            "header {k:?} is {}",
                            kind(other)
                        )))
                    }
                }
            }
        }
        Some(other) => {
            return Err(PolicyError::BadResult(format!(
                "`headers` is {}",
                kind(other)
            )))
        }
    }
    let reasons = match obj.get("reason") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(s)) => vec![s.clone()],
        Some(other) => deny_reasons(other.clone())?,
    };
    Ok(Verdict {
        allowed,
        reasons,
        status,
        headers,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests {
    use super::*;
    use serde_json::json;
    #[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    fn pol(src: &str, entry: &str) -> Result<Policy, PolicyError> {
        Policy::compile(&[("p.rego", src)], "{}", entry)
    }

    #[test]
    fn package_mode_deny_wins() {
        let p = pol(
            "package t\nallow if input.ok\ndeny contains \"blocked\" if input.block\n",
            "data.t",
        )
        .unwrap();
        assert!(p.evaluate(json!({"ok": true})).unwrap().allowed);
        let v = p.evaluate(json!({"ok": true, "block": true})).unwrap();
        assert!(!v.allowed);
        assert_eq!(v.reasons, ["blocked"]);
        let v = p.evaluate(json!({})).unwrap();
        assert!(!v.allowed);
        assert!(v.reasons.is_empty());
    }

    #[test]
    fn boolean_and_string_denies() {
        let p = pol("package t\nallow := true\ndeny if input.x\n", "data.t").unwrap();
        let v = p.evaluate(json!({"x": true})).unwrap();
        assert_eq!(
            (v.allowed, v.reasons),
            (false, vec!["denied by policy".to_string()])
        );
        let p = pol(
            "package t\nallow := true\ndeny := \"nope\" if input.x\n",
            "data.t",
        )
        .unwrap();
        assert_eq!(p.evaluate(json!({"x": true})).unwrap().reasons, ["nope"]);
        assert!(p.evaluate(json!({})).unwrap().allowed);
    }

    #[test]
    fn non_boolean_allow_is_an_error() {
        let p = pol("package t\nallow := \"yes\"\n", "data.t").unwrap();
        assert!(matches!(
            p.evaluate(json!({})),
            Err(PolicyError::BadResult(_))
        ));
        let p = pol("package t\nallow := true\ndeny := 5\n", "data.t").unwrap();
        assert!(matches!(
            p.evaluate(json!({})),
            Err(PolicyError::BadResult(_))
        ));
    }

    #[test]
    fn runtime_errors_deny() {
        // Conflicting complete-rule values are an evaluation error.
        let p = pol(
            "package t\nallow := true if input.a\nallow := false if input.b\n",
            "data.t",
        )
        .unwrap();
        assert!(p.evaluate(json!({"a": true, "b": true})).is_err());
    }

    #[test]
    fn rule_mode_response_object() {
        let src = r#"package t
decision := {"allowed": false, "status": 429, "reason": "slow down", "headers": {"Retry-After": "5"}} if input.busy
decision := {"allowed": true} if not input.busy
flag := input.f
"#;
        let p = pol(src, "data.t.decision").unwrap();
        let v = p.evaluate(json!({"busy": true})).unwrap();
        assert_eq!(v.status, Some(429));
        assert_eq!(v.reasons, ["slow down"]);
        assert_eq!(v.headers, [("retry-after".to_string(), "5".to_string())]);
        assert!(p.evaluate(json!({})).unwrap().allowed);

        let p = pol(src, "data.t.flag").unwrap();
        assert!(p.evaluate(json!({"f": true})).unwrap().allowed);
        assert!(!p.evaluate(json!({})).unwrap().allowed);
        assert!(matches!(
            p.evaluate(json!({"f": 3})),
            Err(PolicyError::BadResult(_))
        ));
    }

    #[test]
    fn bad_response_objects() {
        for r in [
            r#"{"status": 403}"#,
            r#"{"allowed": "true"}"#,
            r#"{"allowed": false, "status": 99}"#,
            r#"{"allowed": false, "headers": {"a": 1}}"#,
        ] {
            let p = pol(&format!("package t\nd := {r}\n"), "data.t.d").unwrap();
            assert!(
                matches!(p.evaluate(json!({})), Err(PolicyError::BadResult(_))),
                "{r}"
            );
        }
    }

    #[test]
    fn configuration_errors() {
        assert!(matches!(
            pol("package t\nallow if {", "data.t"),
            Err(PolicyError::Compile(_))
        ));
        assert!(matches!(
            pol("package t\nx := 1\n", "data.t"),
            Err(PolicyError::Entrypoint(_))
        ));
        assert!(matches!(
            pol("package t\nallow := true\n", "data.nope.allow"),
            Err(PolicyError::Entrypoint(_))
        ));
        assert!(matches!(
            Policy::compile(
                &[("p.rego", "package t\nallow := true\n")],
                "{not json",
                "data.t"
            ),
            Err(PolicyError::Compile(_))
        ));
    }

    #[test]
    fn embedded_bundle_compiles() {
        Policy::embedded("data.mcp.authz").unwrap();
        assert_eq!(crate::bundle::REVISION.len(), 16);
    }
}
