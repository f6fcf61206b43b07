//! Rego compiled when a VM configures: another entrypoint than the one
//! `build.rs` compiled for, the tree interpreter, a bundle the RVM cannot
//! compile, and the tests' own policies. Only in builds with the
//! `rego-compiler` feature: the shipped filter loads its build-time
//! program instead and carries none of regorus' parser or compiler.

use super::{entry, Backend, EngineChoice, Mode, Policy, PolicyError};
use regorus::languages::rego::compiler::Compiler;
use regorus::rvm::RegoVM;
use regorus::Engine;

impl Policy {
    /// [`Policy::compile_for`] with the RVM preferred.
    pub fn compile(
        modules: &[(&str, &str)],
        data_json: &str,
        entrypoint: &str,
    ) -> Result<Policy, PolicyError> {
        Policy::compile_for(modules, data_json, entrypoint, EngineChoice::Rvm)
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
        let pins = crate::mcp::pins::Pins::from_data(&data).map_err(PolicyError::Compile)?;
        engine
            .add_data(data)
            .map_err(|e| PolicyError::Compile(format!("data.json: {e}")))?;

        let packages = engine
            .get_packages()
            .map_err(|e| PolicyError::Compile(e.to_string()))?;
        let in_package = entry::in_package(modules, &packages, entrypoint);
        let (mode, rule, limits) = if in_package.is_empty() {
            (Mode::Rule, entrypoint.to_string(), false)
        } else {
            let (rule, limits) = entry::add(&mut engine, &in_package, entrypoint)?;
            (Mode::Package, rule, limits)
        };
        // Resolve the entry rule with the interpreter first: a missing rule is
        // a configuration error, whichever backend runs requests.
        let mut interpreter = Policy {
            backend: Backend::Interpreter(engine.clone(), rule.clone()),
            mode,
            rvm_fallback: None,
            reads: crate::reads::input_reads(modules),
            limits,
            built: false,
            pins: std::rc::Rc::new(pins),
        };
        interpreter
            .backend
            .eval(regorus::Value::new_object())
            .map_err(|e| PolicyError::Entrypoint(format!("{rule}: {e}")))?;
        if choice == EngineChoice::Interpreter {
            return Ok(interpreter);
        }
        match compile_rvm(&mut engine, &rule, data_json) {
            Ok(vm) => Ok(Policy {
                backend: Backend::Rvm(vm),
                ..interpreter
            }),
            Err(why) => {
                interpreter.rvm_fallback = Some(why);
                Ok(interpreter)
            }
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
