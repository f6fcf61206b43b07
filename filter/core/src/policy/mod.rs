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
//!
//! `entry.rs` resolves a package entrypoint into one generated decision
//! rule; `verdict.rs` turns what the policy returned into a [`Verdict`].

use regorus::languages::rego::compiler::Compiler;
use regorus::rvm::RegoVM;
use regorus::Engine;
use serde_json::Value;
use std::fmt;

mod compiled;
mod entry;
mod verdict;

pub use verdict::{PolicyError, Verdict};

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
    Rvm(RegoVM),
    /// regorus' tree interpreter, for policies the RVM cannot compile yet.
    Interpreter(Engine),
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
    /// The program was compiled by `build.rs`, not at configure time.
    built: bool,
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
        let (mode, limits) = if in_package.is_empty() {
            (Mode::Rule(entrypoint.to_string()), false)
        } else {
            let (rule, limits) = entry::add(&mut engine, &in_package, entrypoint)?;
            (Mode::Package(rule), limits)
        };
        // Resolve the entry rule with the interpreter first: a missing rule is
        // a configuration error, whichever backend runs requests.
        let rule = mode.rule().to_string();
        let mut interpreter = Policy {
            backend: Backend::Interpreter(engine.clone()),
            mode,
            rvm_fallback: None,
            reads: crate::reads::input_reads(modules),
            limits,
            built: false,
        };
        Policy::eval_rule(
            &mut interpreter.backend,
            &rule,
            regorus::Value::new_object(),
        )
        .map_err(|e| PolicyError::Entrypoint(format!("{rule}: {e}")))?;
        if choice == EngineChoice::Interpreter {
            return Ok(interpreter);
        }
        match compile_rvm(&mut engine, &rule, data_json) {
            Ok(vm) => Ok(Policy {
                backend: Backend::Rvm(vm),
                mode: interpreter.mode,
                rvm_fallback: None,
                reads: interpreter.reads,
                limits,
                built: false,
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

    /// Whether the program was compiled when the filter was built (loaded,
    /// not compiled, at configure time).
    pub fn compiled_at_build(&self) -> bool {
        self.built
    }

    /// The bundle embedded at build time. On the RVM with the entrypoint
    /// `build.rs` compiled for, the program it compiled is loaded (a
    /// program that does not load is an error, not a recompile); otherwise
    /// the bundle compiles now.
    pub fn embedded(entrypoint: &str, choice: EngineChoice) -> Result<Policy, PolicyError> {
        if choice == EngineChoice::Rvm {
            if let Some(c) = crate::bundle::COMPILED
                .as_ref()
                .filter(|c| c.entrypoint == entrypoint)
            {
                return compiled::load(c);
            }
        }
        Policy::compile_runtime(entrypoint, choice)
    }

    /// Compiles the embedded bundle's Rego now, as [`Policy::embedded`]
    /// does when no build-time program fits (tests compare the two).
    pub fn compile_runtime(entrypoint: &str, choice: EngineChoice) -> Result<Policy, PolicyError> {
        Policy::compile_for(
            crate::bundle::MODULES,
            crate::bundle::DATA_JSON,
            entrypoint,
            choice,
        )
    }

    /// Runs the entry rule; its answer stays a regorus value, read in
    /// place by `verdict.rs`. `&mut`: the VM or engine keeps the input and
    /// its registers between calls, and the worker that owns the policy
    /// runs one evaluation at a time.
    fn eval_rule(
        backend: &mut Backend,
        rule: &str,
        input: regorus::Value,
    ) -> Result<regorus::Value, PolicyError> {
        Ok(match backend {
            Backend::Rvm(vm) => {
                vm.set_input(input);
                vm.execute().map_err(|e| PolicyError::Eval(e.to_string()))?
            }
            Backend::Interpreter(engine) => {
                engine.set_input(input);
                engine
                    .eval_rule(rule.to_string())
                    .map_err(|e| PolicyError::Eval(e.to_string()))?
            }
        })
    }

    /// [`Policy::evaluate`] for a JSON input (tests, tools).
    pub fn evaluate_json(&mut self, input: &Value) -> Result<Verdict, PolicyError> {
        self.evaluate(crate::value::to_rego(input))
    }

    /// Evaluates the policy for one input document (consumed: the request
    /// path builds it for this call only).
    pub fn evaluate(&mut self, input: regorus::Value) -> Result<Verdict, PolicyError> {
        let backend = &mut self.backend;
        match &self.mode {
            Mode::Package(rule) => verdict::decision(Policy::eval_rule(backend, rule, input)?),
            Mode::Rule(r) => verdict::response_object(Policy::eval_rule(backend, r, input)?),
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
        let mut p = pol(
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
        let mut p = pol("package t\nallow := true\ndeny if input.x\n", "data.t").unwrap();
        let v = p.evaluate_json(&json!({"x": true})).unwrap();
        assert_eq!(
            (v.allowed, v.reasons),
            (false, vec!["denied by policy".to_string()])
        );
        let mut p = pol(
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
        let mut p = pol("package t\nallow := \"yes\"\n", "data.t").unwrap();
        assert!(matches!(
            p.evaluate_json(&json!({})),
            Err(PolicyError::BadResult(_))
        ));
        let mut p = pol("package t\nallow := true\ndeny := 5\n", "data.t").unwrap();
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
        let mut p =
            Policy::compile_for(&modules, "{}", "data.t", EngineChoice::Interpreter).unwrap();
        assert_eq!(p.backend(), "interpreter");
        assert!(p.evaluate_json(&both).is_err());
        // The RVM makes the rule undefined: still a deny.
        let mut p = Policy::compile_for(&modules, "{}", "data.t", EngineChoice::Rvm).unwrap();
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
        let mut p = pol(src, "data.t.decision").unwrap();
        let v = p.evaluate_json(&json!({"busy": true})).unwrap();
        assert_eq!(v.status, Some(429));
        assert_eq!(v.reasons, ["slow down"]);
        assert_eq!(v.headers, [("retry-after".to_string(), "5".to_string())]);
        assert!(p.evaluate_json(&json!({})).unwrap().allowed);

        let mut p = pol(src, "data.t.flag").unwrap();
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
            let mut p = pol(&format!("package t\nd := {r}\n"), "data.t.d").unwrap();
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

    #[test]
    fn answers_are_read_as_their_json_would_be() {
        // Sets come sorted, a reason that is not a string is its JSON
        // text, integers written as floats are integers, and a float is
        // not a time.
        let src = r#"package t
allow := true
deny contains r if some r in input.deny
valid_until_ns := input.until
missing_scope := {"b:x", "a:y"}
visible := {"t2", 3, "t1"}
limits := {{"name": "r", "rate": 2}}
d := {"allowed": false, "status": 403.0, "headers": {"X-B": "2", "x-a": "1", 1: "one"}, "reason": ["r2", "r1"]}
"#;
        let mut p = pol(src, "data.t").unwrap();
        let v = p
            .evaluate_json(&json!({"deny": ["b", 1, {"k": [2]}], "until": 7}))
            .unwrap();
        assert!(!v.allowed);
        assert_eq!(v.reasons, ["1", "b", r#"{"k":[2]}"#]);
        assert_eq!(v.valid_until_ns, Some(7));
        assert_eq!(v.scope.as_deref(), Some("a:y b:x"));
        assert_eq!(v.visible, Some(vec!["t1".to_string(), "t2".to_string()]));
        assert_eq!(
            v.limits.iter().map(|l| l.summary()).collect::<Vec<_>>(),
            ["r|agent|burst=2"]
        );
        let v = p.evaluate_json(&json!({"until": 5.5})).unwrap();
        assert!(v.allowed);
        assert_eq!(v.valid_until_ns, None);

        let mut p = pol(src, "data.t.d").unwrap();
        let v = p.evaluate_json(&json!({})).unwrap();
        assert_eq!(v.status, Some(403));
        assert_eq!(v.reasons, ["r2", "r1"]);
        let h = |k: &str, v: &str| (k.to_string(), v.to_string());
        assert_eq!(v.headers, [h("1", "one"), h("x-b", "2"), h("x-a", "1")]);
    }
}
