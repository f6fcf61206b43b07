//! The policy program `build.rs` compiled from the embedded bundle: loaded
//! into a register VM at configure time with no Rego parsed or compiled.
//! The program and its data come in regorus' binary program format; a blob
//! this regorus cannot load complete (another format version, a builtin it
//! lacks, corrupt bytes) or that another regorus version wrote is a
//! configuration error, so the filter fails closed instead of running
//! something other than what was built.

use super::{Backend, Mode, Policy, PolicyError};
use crate::bundle::Compiled;
#[cfg(feature = "rvm")]
use regorus::rvm::program::DeserializationResult;
#[cfg(feature = "rvm")]
use regorus::rvm::{Program, RegoVM};
#[cfg(feature = "rvm")]
use std::sync::Arc;

/// `compiled` as a [`Policy`]: with `native`, the package compiled to Rust
/// when this build has it; otherwise its program loaded into a VM.
pub(super) fn load(compiled: &Compiled, native: bool) -> Result<Policy, PolicyError> {
    let (backend, pins) = if native && compiled.package && super::native::AVAILABLE.is_none() {
        let data = native_data(compiled)?;
        let pins = crate::mcp::pins::Pins::from_data(&data).map_err(PolicyError::Compile)?;
        let builtins = super::native::Builtins::resolve().map_err(PolicyError::Compile)?;
        (Backend::Native(data, builtins, super::native::memo()), pins)
    } else {
        rvm(compiled)?
    };
    Ok(Policy {
        backend,
        mode: if compiled.package {
            Mode::Package
        } else {
            Mode::Rule
        },
        rvm_fallback: None,
        reads: crate::bundle::READS.map(|paths| {
            paths
                .iter()
                .map(|p| p.iter().map(|s| (*s).to_string()).collect())
                .collect()
        }),
        limits: compiled.limits,
        built: true,
        pins: std::rc::Rc::new(pins),
    })
}

/// The data for the Rust-compiled policy: the program's copy where the
/// build carries the VM, else the bundle's `data.json`.
fn native_data(compiled: &Compiled) -> Result<regorus::Value, PolicyError> {
    #[cfg(feature = "rvm")]
    {
        Ok(complete(compiled.data, "data")?.rule_tree)
    }
    #[cfg(not(feature = "rvm"))]
    {
        let _ = compiled;
        regorus::Value::from_json_str(crate::bundle::DATA_JSON)
            .map_err(|e| PolicyError::Compile(format!("compiled policy data: {e}")))
    }
}

/// A build without the VM cannot run the program.
#[cfg(not(feature = "rvm"))]
fn rvm(_: &Compiled) -> Result<(Backend, crate::mcp::pins::Pins), PolicyError> {
    Err(PolicyError::Compile(
        "this filter carries the policy compiled to Rust and no RVM: use \"engine\": \"native\" (the default), or rebuild the filter with the rvm feature".into(),
    ))
}

/// The program loaded into a VM, checked first: a program another regorus
/// wrote, or without its entry point, is refused.
#[cfg(feature = "rvm")]
fn rvm(compiled: &Compiled) -> Result<(Backend, crate::mcp::pins::Pins), PolicyError> {
    let program = complete(compiled.program, "program")?;
    // Only the format number is checked by regorus itself: a program from
    // another regorus may mean other instructions under the same number.
    let ours = Program::new().metadata.compiler_version;
    if program.metadata.compiler_version != ours {
        return Err(PolicyError::Compile(format!(
            "compiled policy: built by regorus {}, this is {ours}",
            program.metadata.compiler_version
        )));
    }
    if program.get_entry_point(compiled.rule).is_none() {
        return Err(PolicyError::Compile(format!(
            "compiled policy: no entry point {}",
            compiled.rule
        )));
    }
    let data = complete(compiled.data, "data")?.rule_tree;
    let pins = crate::mcp::pins::Pins::from_data(&data).map_err(PolicyError::Compile)?;
    let mut vm = RegoVM::new();
    vm.load_program(Arc::new(program));
    vm.set_data(data)
        .map_err(|e| PolicyError::Compile(format!("compiled policy data: {e}")))?;
    Ok((Backend::Rvm(vm), pins))
}

/// The program in `bytes`, only if it loads complete.
#[cfg(feature = "rvm")]
fn complete(bytes: &[u8], what: &str) -> Result<Program, PolicyError> {
    match Program::deserialize_binary(bytes) {
        Ok(DeserializationResult::Complete(p)) => Ok(p),
        Ok(DeserializationResult::Partial(_)) => Err(PolicyError::Compile(format!(
            "compiled policy {what}: this regorus loads it only partially"
        ))),
        Err(e) => Err(PolicyError::Compile(format!("compiled policy {what}: {e}"))),
    }
}

#[cfg(all(test, feature = "rvm"))]
#[allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
mod tests {
    use super::*;
    #[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    fn shipped() -> &'static Compiled {
        crate::bundle::COMPILED
            .as_ref()
            .expect("build.rs compiles the shipped bundle")
    }

    #[test]
    fn shipped_program_loads() {
        let p = load(shipped(), false).unwrap();
        assert_eq!(p.backend(), "rvm");
        assert!(p.compiled_at_build());
        assert_eq!(
            p.reads().map(<[_]>::to_vec),
            crate::reads::input_reads(crate::bundle::MODULES)
        );
    }

    fn with(program: &'static [u8], data: &'static [u8]) -> Compiled {
        Compiled {
            program,
            data,
            ..*shipped()
        }
    }

    fn leak(bytes: Vec<u8>) -> &'static [u8] {
        Box::leak(bytes.into_boxed_slice())
    }

    #[test]
    fn unloadable_programs_are_configuration_errors() {
        let c = shipped();
        // An older format number loads only partially.
        let mut old = c.program.to_vec();
        old[4] = 5;
        // A newer one, a truncated one, and no program at all.
        let mut new = c.program.to_vec();
        new[4] = 7;
        let cut = c.program[..c.program.len() / 2].to_vec();
        for (name, program, data) in [
            ("old", leak(old), c.data),
            ("new", leak(new), c.data),
            ("cut", leak(cut), c.data),
            ("empty", &[][..], c.data),
            ("data", c.program, &b"REGO"[..]),
        ] {
            assert!(
                matches!(
                    load(&with(program, data), false),
                    Err(PolicyError::Compile(_))
                ),
                "{name}"
            );
        }
    }

    #[test]
    fn a_program_without_the_entry_rule_is_refused() {
        let c = Compiled {
            rule: "data.nope.__agentplane_decision",
            ..*shipped()
        };
        assert!(matches!(load(&c, false), Err(PolicyError::Compile(_))));
    }
}
