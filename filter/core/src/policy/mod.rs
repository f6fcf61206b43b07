//! The embedded Rego policy, ready to evaluate per request, turning
//! whatever the policy returns into a [`Verdict`] that can only be "allow"
//! when the policy clearly said so.
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
//! Where the program comes from: `build.rs` compiles the bundle for the
//! build's entrypoint and `compiled.rs` loads that program, with no Rego
//! parsed or compiled when a VM starts. Compiling Rego at configure time
//! (another entrypoint, the tree interpreter, a bundle the RVM cannot
//! compile) needs the `rego-compiler` feature (`runtime.rs`, `entry.rs`):
//! on by default for native builds and tests, left out of the shipped
//! filter so V8 never compiles regorus' parser, compiler and interpreter.
//! `verdict.rs` turns what the policy returned into a [`Verdict`].

use serde_json::Value;
use std::fmt;

mod compiled;
#[cfg(feature = "rego-compiler")]
mod entry;
pub(crate) mod native;
#[cfg(feature = "rego-compiler")]
mod runtime;
mod verdict;

pub use verdict::{PolicyError, Verdict};

/// How the entry rule's answer is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// The generated `__agentplane_decision` rule of a package, which
    /// reads `allow` and `deny` in one evaluation so `deny` is computed
    /// once.
    Package,
    /// A rule answering a boolean or a response object.
    Rule,
}

/// How the compiled bundle runs. One per worker, so its size is not
/// worth an indirection on every evaluation.
#[allow(clippy::large_enum_variant)]
enum Backend {
    /// regorus' register VM: the entry rule compiled to bytecode once.
    #[cfg(feature = "rvm")]
    Rvm(regorus::rvm::RegoVM),
    /// The package compiled to Rust at build time, with its data and the
    /// builtins it calls.
    Native(regorus::Value, native::Builtins, Box<native::Memo>),
    /// regorus' tree interpreter and the rule it evaluates, for policies
    /// the RVM cannot compile yet.
    #[cfg(feature = "rego-compiler")]
    Interpreter(regorus::Engine, String),
}

impl fmt::Debug for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl Backend {
    fn name(&self) -> &'static str {
        match self {
            #[cfg(feature = "rvm")]
            Backend::Rvm(_) => "rvm",
            Backend::Native(..) => "native",
            #[cfg(feature = "rego-compiler")]
            Backend::Interpreter(..) => "interpreter",
        }
    }

    /// Runs the entry rule; its answer stays a regorus value, read in
    /// place by `verdict.rs`. `&mut`: the VM or engine keeps the input and
    /// its registers between calls, and the worker that owns the policy
    /// runs one evaluation at a time.
    fn eval(&mut self, input: regorus::Value) -> Result<regorus::Value, PolicyError> {
        match self {
            #[cfg(feature = "rvm")]
            Backend::Rvm(vm) => {
                vm.set_input(input);
                vm.execute().map_err(|e| PolicyError::Eval(e.to_string()))
            }
            Backend::Native(data, builtins, vm) => {
                native::Eval::decide(&input, data, builtins, vm).map_err(PolicyError::Eval)
            }
            #[cfg(feature = "rego-compiler")]
            Backend::Interpreter(engine, rule) => {
                engine.set_input(input);
                engine
                    .eval_rule(rule.clone())
                    .map_err(|e| PolicyError::Eval(e.to_string()))
            }
        }
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
    /// Tool-definition pins from `data.mcp.pins`.
    pins: std::rc::Rc<crate::mcp::pins::Pins>,
}

/// Whether this build can compile Rego when a VM configures.
pub const COMPILES_AT_CONFIGURE: bool = cfg!(feature = "rego-compiler");

impl Policy {
    /// The input paths the policy reads, when they are all static
    /// (`None`: it may read any of the input). See [`crate::reads`].
    pub fn reads(&self) -> Option<&[crate::reads::Path]> {
        self.reads.as_deref()
    }

    /// Whether the policy can name limits (its package has a `limits`
    /// rule): the filter then sets up its shared counting tables.
    pub fn has_limits(&self) -> bool {
        self.limits
    }

    /// Which backend evaluates requests: `"native"`, `"rvm"` or
    /// `"interpreter"`.
    pub fn backend(&self) -> &'static str {
        self.backend.name()
    }

    /// Why the RVM could not take this bundle, if it could not.
    pub fn rvm_fallback(&self) -> Option<&str> {
        self.rvm_fallback.as_deref()
    }

    /// The tool-definition pins in the policy's data (`data.mcp.pins`).
    pub fn pins(&self) -> &std::rc::Rc<crate::mcp::pins::Pins> {
        &self.pins
    }

    /// Whether the program was compiled when the filter was built (loaded,
    /// not compiled, at configure time).
    pub fn compiled_at_build(&self) -> bool {
        self.built
    }

    /// The shadow revision built into this filter
    /// (`AGENTPLANE_SHADOW_POLICY_DIR`), for `entrypoint`: `None` when
    /// the build has none.
    pub fn shadow(entrypoint: &str) -> Option<Result<Policy, PolicyError>> {
        let s = crate::bundle::SHADOW.as_ref()?;
        Some(if s.entrypoint == entrypoint {
            compiled::load(s, false)
        } else {
            Err(PolicyError::Compile(format!(
                "the shadow revision was compiled for {}, the configuration names {entrypoint}",
                s.entrypoint
            )))
        })
    }

    /// The bundle embedded at build time. On the RVM with the entrypoint
    /// `build.rs` compiled for, the program it compiled is loaded (a
    /// program that does not load is an error, not a recompile); otherwise
    /// the bundle compiles now, in a build that can
    /// ([`COMPILES_AT_CONFIGURE`]), and is a configuration error in one
    /// that cannot.
    pub fn embedded(entrypoint: &str, choice: EngineChoice) -> Result<Policy, PolicyError> {
        match built_for(entrypoint, choice, crate::bundle::COMPILED.as_ref()) {
            Some(c) => compiled::load(c, choice == EngineChoice::Native),
            None => Policy::compile_now(entrypoint, choice),
        }
    }

    #[cfg(feature = "rego-compiler")]
    fn compile_now(entrypoint: &str, choice: EngineChoice) -> Result<Policy, PolicyError> {
        Policy::compile_runtime(entrypoint, choice)
    }

    #[cfg(not(feature = "rego-compiler"))]
    fn compile_now(entrypoint: &str, choice: EngineChoice) -> Result<Policy, PolicyError> {
        Err(not_built(
            entrypoint,
            choice,
            crate::bundle::COMPILED.as_ref(),
        ))
    }

    /// The embedded package compiled to Rust, over another `data.json`
    /// (tools: the scale example). An error when this build did not
    /// compile the policy to Rust.
    pub fn native_with_data(data_json: &str) -> Result<Policy, PolicyError> {
        let mut p = Policy::embedded(
            &crate::config::PolicyConfig::default().entrypoint,
            EngineChoice::Native,
        )?;
        // The only backend of a build without the VM.
        #[allow(irrefutable_let_patterns)]
        let Backend::Native(data, _, vm) = &mut p.backend
        else {
            return Err(PolicyError::Compile(format!(
                "the policy is not compiled to Rust: {}",
                native::AVAILABLE.unwrap_or("another entrypoint")
            )));
        };
        *data = regorus::Value::from_json_str(data_json)
            .map_err(|e| PolicyError::Compile(format!("data: {e}")))?;
        *vm = native::memo();
        p.pins = std::rc::Rc::new(
            crate::mcp::pins::Pins::from_data(data).map_err(PolicyError::Compile)?,
        );
        Ok(p)
    }

    /// [`Policy::evaluate`] for a JSON input (tests, tools).
    pub fn evaluate_json(&mut self, input: &Value) -> Result<Verdict, PolicyError> {
        self.evaluate(crate::value::to_rego(input))
    }

    /// Evaluates the policy for one input document (consumed: the request
    /// path builds it for this call only).
    pub fn evaluate(&mut self, input: regorus::Value) -> Result<Verdict, PolicyError> {
        let answer = self.backend.eval(input)?;
        match self.mode {
            Mode::Package => verdict::decision(answer),
            Mode::Rule => verdict::response_object(answer),
        }
    }
}

/// The build-time program, when it is the one this configuration asks
/// for: the same entrypoint, on the Rust-compiled policy or the RVM.
fn built_for<'a>(
    entrypoint: &str,
    choice: EngineChoice,
    compiled: Option<&'a crate::bundle::Compiled>,
) -> Option<&'a crate::bundle::Compiled> {
    compiled.filter(|c| {
        matches!(choice, EngineChoice::Rvm | EngineChoice::Native) && c.entrypoint == entrypoint
    })
}

/// Why a build without the Rego compiler cannot run this configuration.
#[cfg_attr(feature = "rego-compiler", allow(dead_code))]
fn not_built(
    entrypoint: &str,
    choice: EngineChoice,
    compiled: Option<&crate::bundle::Compiled>,
) -> PolicyError {
    let built = match compiled {
        Some(c) => format!("the policy compiled for {}", c.entrypoint),
        None => "no compiled policy".to_string(),
    };
    let asked = match choice {
        EngineChoice::Rvm | EngineChoice::Native => format!("entrypoint {entrypoint}"),
        EngineChoice::Interpreter => format!("entrypoint {entrypoint} on the interpreter"),
    };
    PolicyError::Compile(format!(
        "this filter carries {built} and compiles no Rego at configure time; \
         the configuration asks for {asked}: rebuild with AGENTPLANE_ENTRYPOINT={entrypoint}, \
         or with the rego-compiler feature"
    ))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
mod built_tests {
    use super::*;
    #[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    fn shipped() -> Option<&'static crate::bundle::Compiled> {
        crate::bundle::COMPILED.as_ref()
    }

    #[test]
    fn the_build_time_program_serves_only_its_own_entrypoint_on_the_rvm() {
        let c = shipped().expect("build.rs compiles the shipped bundle");
        assert!(built_for(c.entrypoint, EngineChoice::Rvm, shipped()).is_some());
        assert!(built_for(c.entrypoint, EngineChoice::Interpreter, shipped()).is_none());
        assert!(built_for("data.other", EngineChoice::Rvm, shipped()).is_none());
        assert!(built_for(c.entrypoint, EngineChoice::Rvm, None).is_none());
    }

    #[test]
    fn a_build_without_the_compiler_names_what_it_carries_and_how_to_rebuild() {
        let PolicyError::Compile(m) = not_built("data.other", EngineChoice::Rvm, shipped()) else {
            panic!("a configuration error")
        };
        assert!(m.contains("compiled for data.mcp.authz"), "{m}");
        assert!(m.contains("AGENTPLANE_ENTRYPOINT=data.other"), "{m}");
        let PolicyError::Compile(m) = not_built("data.mcp.authz", EngineChoice::Interpreter, None)
        else {
            panic!("a configuration error")
        };
        assert!(m.contains("no compiled policy"), "{m}");
        assert!(m.contains("on the interpreter"), "{m}");
    }

    #[test]
    fn the_shipped_entrypoint_loads_without_compiling() {
        let p = Policy::embedded("data.mcp.authz", EngineChoice::Rvm).unwrap();
        assert_eq!(p.backend(), "rvm");
        assert!(p.compiled_at_build());
    }
}

#[cfg(all(test, feature = "rego-compiler"))]
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
