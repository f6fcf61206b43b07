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

use regorus::languages::rego::compiler::Compiler;
use regorus::rvm::RegoVM;
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
    /// Until when (ns since the epoch, exclusive) the same input, at a later
    /// `input.request.time_ns`, gets the same decision: the package's
    /// `valid_until_ns` rule. `None` when the policy does not say; the
    /// decision cache then never reuses the decision.
    pub valid_until_ns: Option<u64>,
    /// On a refusal, the OAuth scope whose absence caused it: the
    /// package's `missing_scope` rule (a string). The 403 then says
    /// `error="insufficient_scope", scope="…"` so a client can step up.
    pub scope: Option<String>,
    /// For a list response: the names the agent may see (the package's
    /// `visible` rule, a set of strings). `None` when the policy has no
    /// such rule.
    pub visible: Option<Vec<String>>,
    /// The limits that apply to the request: the package's `limits` rule
    /// (see [`crate::limits::parse`]); empty without one.
    pub limits: Vec<crate::limits::Limit>,
}

#[derive(Debug)]
enum Mode {
    /// Evaluates the generated `__agentplane_decision` rule, which reads
    /// `allow` and `deny` in one evaluation so `deny` is computed once.
    Package(String),
    Rule(String),
}

impl Mode {
    fn rule(&self) -> &str {
        match self {
            Mode::Package(r) | Mode::Rule(r) => r,
        }
    }
}

/// How the compiled bundle runs.
enum Backend {
    /// regorus' register VM: the entry rule compiled to bytecode once.
    Rvm(RefCell<RegoVM>),
    /// regorus' tree interpreter, for policies the RVM cannot compile yet.
    Interpreter(RefCell<Engine>),
}

impl fmt::Debug for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Backend::Rvm(_) => "Rvm",
            Backend::Interpreter(_) => "Interpreter",
        })
    }
}

pub use crate::config::EngineChoice;

/// Name of the module agentplane adds to a package entrypoint.
const ENTRY_MODULE: &str = "__agentplane_entry.rego";

/// One rule that gathers `allow` (false when undefined), `deny` (empty
/// when undefined or not declared) and `valid_until_ns` (0, "do not reuse",
/// when undefined or not declared) so a single evaluation decides.
fn entry_module(
    package: &str,
    has_deny: bool,
    has_valid_until: bool,
    has_scope: bool,
    has_visible: bool,
    has_limits: bool,
) -> String {
    let limits = if has_limits {
        "__agentplane_limits := limits\n"
    } else {
        ""
    };
    let visible = if has_visible {
        "__agentplane_visible := visible\n"
    } else {
        ""
    };
    let scope = if has_scope {
        "__agentplane_scope := missing_scope\n"
    } else {
        ""
    };
    let deny = if has_deny {
        "__agentplane_deny := deny\n"
    } else {
        ""
    };
    let until = if has_valid_until {
        "__agentplane_valid_until := valid_until_ns\n"
    } else {
        ""
    };
    format!(
        "package {package}\n\n\
         default __agentplane_allow := false\n\
         __agentplane_allow := allow\n\n\
         default __agentplane_deny := []\n\
         {deny}\n\
         default __agentplane_valid_until := 0\n\
         {until}\n\
         default __agentplane_scope := null\n\
         {scope}\n\
         default __agentplane_visible := null\n\
         {visible}\n\
         default __agentplane_limits := null\n\
         {limits}\n\
         __agentplane_decision := {{\"allow\": __agentplane_allow, \"deny\": __agentplane_deny, \"valid_until_ns\": __agentplane_valid_until, \"scope\": __agentplane_scope, \"visible\": __agentplane_visible, \"limits\": __agentplane_limits}}\n"
    )
}

/// A compiled policy bundle with its entrypoint resolved.
#[derive(Debug)]
pub struct Policy {
    backend: Backend,
    mode: Mode,
    /// Why the RVM was not used, when it was not.
    rvm_fallback: Option<String>,
    /// The input paths the modules read (`None`: the whole input).
    reads: Option<Vec<crate::reads::Path>>,
    /// The entrypoint package declares a `limits` rule.
    limits: bool,
}

impl Policy {
    /// The input paths the policy reads, when they are all static
    /// (`None`: it may read any of the input). See [`crate::reads`].
    pub fn reads(&self) -> Option<&[crate::reads::Path]> {
        self.reads.as_deref()
    }

    /// [`Policy::compile_for`] with the RVM preferred.
    pub fn compile(
        modules: &[(&str, &str)],
        data_json: &str,
        entrypoint: &str,
    ) -> Result<Policy, PolicyError> {
        Policy::compile_for(modules, data_json, entrypoint, EngineChoice::Rvm)
    }

    /// Loads modules and data and resolves the entrypoint. All errors here
    /// are configuration errors: the filter must not start. With
    /// [`EngineChoice::Rvm`], a bundle the RVM cannot compile runs on the
    /// interpreter and [`Policy::rvm_fallback`] says why.
    pub fn compile_for(
        modules: &[(&str, &str)],
        data_json: &str,
        entrypoint: &str,
        choice: EngineChoice,
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
        let mut limits = false;
        let mode = if in_package.is_empty() {
            Mode::Rule(entrypoint.to_string())
        } else {
            if !declared("allow")? {
                return Err(PolicyError::Entrypoint(format!(
                    "package {entrypoint} declares no `allow` rule"
                )));
            }
            let package = entrypoint.strip_prefix("data.").unwrap_or(entrypoint);
            limits = declared("limits")?;
            let module = entry_module(
                package,
                declared("deny")?,
                declared("valid_until_ns")?,
                declared("missing_scope")?,
                declared("visible")?,
                limits,
            );
            engine
                .add_policy(ENTRY_MODULE.to_string(), module)
                .map_err(|e| PolicyError::Compile(format!("{ENTRY_MODULE}: {e}")))?;
            Mode::Package(format!("{entrypoint}.__agentplane_decision"))
        };
        // Resolve the entry rule with the interpreter first: a missing rule is
        // a configuration error, whichever backend runs requests.
        let rule = mode.rule().to_string();
        let mut interpreter = Policy {
            backend: Backend::Interpreter(RefCell::new(engine.clone())),
            mode,
            rvm_fallback: None,
            reads: crate::reads::input_reads(modules),
            limits,
        };
        interpreter
            .eval_rule(&rule, regorus::Value::new_object())
            .map_err(|e| PolicyError::Entrypoint(format!("{rule}: {e}")))?;
        if choice == EngineChoice::Interpreter {
            return Ok(interpreter);
        }
        match compile_rvm(&mut engine, &rule, data_json) {
            Ok(vm) => Ok(Policy {
                backend: Backend::Rvm(RefCell::new(vm)),
                mode: interpreter.mode,
                rvm_fallback: None,
                reads: interpreter.reads,
                limits,
            }),
            Err(why) => {
                interpreter.rvm_fallback = Some(why);
                Ok(interpreter)
            }
        }
    }

    /// Whether the policy can name limits (its package has a `limits`
    /// rule): the filter then sets up its shared counting tables.
    pub fn has_limits(&self) -> bool {
        self.limits
    }

    /// Which backend evaluates requests: `"rvm"` or `"interpreter"`.
    pub fn backend(&self) -> &'static str {
        match self.backend {
            Backend::Rvm(_) => "rvm",
            Backend::Interpreter(_) => "interpreter",
        }
    }

    /// Why the RVM could not take this bundle, if it could not.
    pub fn rvm_fallback(&self) -> Option<&str> {
        self.rvm_fallback.as_deref()
    }

    /// Compiles the bundle embedded at build time.
    pub fn embedded(entrypoint: &str, choice: EngineChoice) -> Result<Policy, PolicyError> {
        Policy::compile_for(
            crate::bundle::MODULES,
            crate::bundle::DATA_JSON,
            entrypoint,
            choice,
        )
    }

    fn eval_rule(&self, rule: &str, input: regorus::Value) -> Result<Value, PolicyError> {
        let reentrant = |_| PolicyError::Eval("re-entrant evaluation".into());
        let v = match &self.backend {
            Backend::Rvm(vm) => {
                let mut vm = vm.try_borrow_mut().map_err(reentrant)?;
                vm.set_input(input);
                vm.execute().map_err(|e| PolicyError::Eval(e.to_string()))?
            }
            Backend::Interpreter(engine) => {
                let mut engine = engine.try_borrow_mut().map_err(reentrant)?;
                engine.set_input(input);
                engine
                    .eval_rule(rule.to_string())
                    .map_err(|e| PolicyError::Eval(e.to_string()))?
            }
        };
        Ok(crate::value::from_rego(&v))
    }

    /// [`Policy::evaluate`] for a JSON input (tests, tools).
    pub fn evaluate_json(&self, input: &Value) -> Result<Verdict, PolicyError> {
        self.evaluate(crate::value::to_rego(input))
    }

    /// Evaluates the policy for one input document (consumed: the request
    /// path builds it for this call only).
    pub fn evaluate(&self, input: regorus::Value) -> Result<Verdict, PolicyError> {
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
                // Anything but a positive integer means "do not reuse".
                let valid_until_ns = decision
                    .remove("valid_until_ns")
                    .and_then(|v| v.as_u64())
                    .filter(|&t| t > 0);
                // Only token-safe scopes are kept (RFC 6749 §3.3: tokens
                // of NQCHAR apart by single spaces): they go into a header.
                // A set or array of scopes is joined the same way.
                let token = |s: &str| {
                    !s.is_empty()
                        && s.bytes().all(|b| {
                            b == 0x21 || (0x23..=0x5b).contains(&b) || (0x5d..=0x7e).contains(&b)
                        })
                };
                let scope = match decision.remove("scope") {
                    Some(Value::String(s)) if s.split(' ').all(token) => Some(s),
                    Some(Value::Array(items)) if !items.is_empty() => {
                        let all: Option<Vec<&str>> = items.iter().map(Value::as_str).collect();
                        all.filter(|v| v.iter().all(|s| token(s)))
                            .map(|v| v.join(" "))
                    }
                    _ => None,
                };
                let visible = match decision.remove("visible") {
                    None | Some(Value::Null) => None,
                    Some(Value::Array(items)) => Some(
                        items
                            .into_iter()
                            .filter_map(|v| v.as_str().map(str::to_owned))
                            .collect(),
                    ),
                    Some(_) => Some(Vec::new()),
                };
                let limits =
                    crate::limits::parse(&decision.remove("limits").unwrap_or(Value::Null))
                        .map_err(PolicyError::BadResult)?;
                Ok(Verdict {
                    allowed: allowed && reasons.is_empty(),
                    reasons,
                    valid_until_ns,
                    scope,
                    visible,
                    limits,
                    ..Verdict::default()
                })
            }
            Mode::Rule(r) => response_object(self.eval_rule(r, input)?),
        }
    }
}

/// Compiles the entry rule to RVM bytecode and loads program and data into
/// a VM, checking that it answers the empty input like the interpreter.
fn compile_rvm(engine: &mut Engine, rule: &str, data_json: &str) -> Result<RegoVM, String> {
    let entry: regorus::Rc<str> = regorus::Rc::from(rule);
    let compiled = engine
        .compile_with_entrypoint(&entry)
        .map_err(|e| e.to_string())?;
    let program = Compiler::compile_from_policy(&compiled, &[rule]).map_err(|e| e.to_string())?;
    let mut vm = RegoVM::new();
    vm.load_program(program);
    let data = regorus::Value::from_json_str(data_json).map_err(|e| e.to_string())?;
    vm.set_data(data).map_err(|e| e.to_string())?;
    vm.set_input(regorus::Value::new_object());
    vm.execute().map_err(|e| e.to_string())?;
    Ok(vm)
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
    // A rule entrypoint cannot say how long its answer holds: never reused.
    Ok(Verdict {
        allowed,
        reasons,
        status,
        headers,
        valid_until_ns: None,
        scope: None,
        visible: None,
        limits: Vec::new(),
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
        assert!(p.evaluate_json(&json!({"ok": true})).unwrap().allowed);
        let v = p
            .evaluate_json(&json!({"ok": true, "block": true}))
            .unwrap();
        assert!(!v.allowed);
        assert_eq!(v.reasons, ["blocked"]);
        let v = p.evaluate_json(&json!({})).unwrap();
        assert!(!v.allowed);
        assert!(v.reasons.is_empty());
    }

    #[test]
    fn boolean_and_string_denies() {
        let p = pol("package t\nallow := true\ndeny if input.x\n", "data.t").unwrap();
        let v = p.evaluate_json(&json!({"x": true})).unwrap();
        assert_eq!(
            (v.allowed, v.reasons),
            (false, vec!["denied by policy".to_string()])
        );
        let p = pol(
            "package t\nallow := true\ndeny := \"nope\" if input.x\n",
            "data.t",
        )
        .unwrap();
        assert_eq!(
            p.evaluate_json(&json!({"x": true})).unwrap().reasons,
            ["nope"]
        );
        assert!(p.evaluate_json(&json!({})).unwrap().allowed);
    }

    #[test]
    fn non_boolean_allow_is_an_error() {
        let p = pol("package t\nallow := \"yes\"\n", "data.t").unwrap();
        assert!(matches!(
            p.evaluate_json(&json!({})),
            Err(PolicyError::BadResult(_))
        ));
        let p = pol("package t\nallow := true\ndeny := 5\n", "data.t").unwrap();
        assert!(matches!(
            p.evaluate_json(&json!({})),
            Err(PolicyError::BadResult(_))
        ));
    }

    #[test]
    fn conflicting_values_deny_on_both_engines() {
        let src = "package t\nallow := true if input.a\nallow := false if input.b\n";
        let modules = [("p.rego", src)];
        let both = json!({"a": true, "b": true});
        // The interpreter reports OPA's "multiple outputs" error.
        let p = Policy::compile_for(&modules, "{}", "data.t", EngineChoice::Interpreter).unwrap();
        assert_eq!(p.backend(), "interpreter");
        assert!(p.evaluate_json(&both).is_err());
        // The RVM makes the rule undefined: still a deny.
        let p = Policy::compile_for(&modules, "{}", "data.t", EngineChoice::Rvm).unwrap();
        assert_eq!(p.backend(), "rvm");
        assert!(!p.evaluate_json(&both).unwrap().allowed);
        assert!(p.evaluate_json(&json!({"a": true})).unwrap().allowed);
    }

    #[test]
    fn embedded_bundle_runs_on_the_rvm() {
        let p = Policy::embedded("data.mcp.authz", EngineChoice::Rvm).unwrap();
        assert_eq!(p.backend(), "rvm", "fell back: {:?}", p.rvm_fallback());
    }

    #[test]
    fn rule_mode_response_object() {
        let src = r#"package t
decision := {"allowed": false, "status": 429, "reason": "slow down", "headers": {"Retry-After": "5"}} if input.busy
decision := {"allowed": true} if not input.busy
flag := input.f
"#;
        let p = pol(src, "data.t.decision").unwrap();
        let v = p.evaluate_json(&json!({"busy": true})).unwrap();
        assert_eq!(v.status, Some(429));
        assert_eq!(v.reasons, ["slow down"]);
        assert_eq!(v.headers, [("retry-after".to_string(), "5".to_string())]);
        assert!(p.evaluate_json(&json!({})).unwrap().allowed);

        let p = pol(src, "data.t.flag").unwrap();
        assert!(p.evaluate_json(&json!({"f": true})).unwrap().allowed);
        assert!(!p.evaluate_json(&json!({})).unwrap().allowed);
        assert!(matches!(
            p.evaluate_json(&json!({"f": 3})),
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
                matches!(p.evaluate_json(&json!({})), Err(PolicyError::BadResult(_))),
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
        Policy::embedded("data.mcp.authz", EngineChoice::Interpreter).unwrap();
        assert_eq!(crate::bundle::REVISION.len(), 16);
    }
}
