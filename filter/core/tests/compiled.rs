//! The program `build.rs` compiled from the embedded bundle against the
//! same Rego compiled at run time: both must give the same verdict on the
//! kata inputs (`policies/cases/*/input.json`) and on variants of them with
//! keys missing, values changed and booleans flipped. A build-time program
//! that drifted from the sources (stale, or compiled another way) fails
//! here.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use agentplane_core::policy::{EngineChoice, Policy};
use serde_json::Value;
use std::fs;
use std::path::Path;

const ENTRY: &str = "data.mcp.authz";

fn kata_inputs() -> Vec<Value> {
    let cases = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../policies/cases");
    let mut dirs: Vec<_> = fs::read_dir(cases)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    dirs.sort();
    dirs.iter()
        .map(|d| serde_json::from_str(&fs::read_to_string(d.join("input.json")).unwrap()).unwrap())
        .collect()
}

/// `input` and, for every key down to depth 2, a copy without it and a
/// copy with its value changed (booleans flipped, strings and numbers
/// replaced, containers emptied).
fn variants(input: &Value) -> Vec<Value> {
    let mut out = vec![input.clone()];
    let Value::Object(top) = input else {
        return out;
    };
    for (k, v) in top {
        let mut gone = input.clone();
        gone.as_object_mut().unwrap().remove(k);
        out.push(gone);
        for changed in changes(v) {
            let mut c = input.clone();
            c[k] = changed;
            out.push(c);
        }
        if let Value::Object(inner) = v {
            for (k2, v2) in inner {
                let mut gone = input.clone();
                gone[k].as_object_mut().unwrap().remove(k2);
                out.push(gone);
                for changed in changes(v2) {
                    let mut c = input.clone();
                    c[k][k2] = changed;
                    out.push(c);
                }
            }
        }
    }
    out
}

fn changes(v: &Value) -> Vec<Value> {
    match v {
        Value::Bool(b) => vec![Value::Bool(!b)],
        Value::String(_) => vec![Value::from("x"), Value::from(7)],
        Value::Number(_) => vec![Value::from(0), Value::from(i64::MAX), Value::from("1")],
        Value::Array(_) => vec![Value::Array(vec![]), Value::Null],
        Value::Object(_) => vec![Value::Object(Default::default()), Value::from(true)],
        Value::Null => vec![Value::from(1)],
    }
}

#[test]
fn build_time_program_decides_like_the_sources() {
    let mut built = Policy::embedded(ENTRY, EngineChoice::Rvm).unwrap();
    assert!(
        built.compiled_at_build(),
        "the shipped bundle loads precompiled"
    );
    let mut now = Policy::compile_runtime(ENTRY, EngineChoice::Rvm).unwrap();
    assert!(!now.compiled_at_build());
    assert_eq!(now.backend(), "rvm", "fell back: {:?}", now.rvm_fallback());
    assert_eq!(built.has_limits(), now.has_limits());
    assert_eq!(built.reads(), now.reads());

    let mut checked = 0;
    let mut allowed = 0;
    for input in kata_inputs() {
        for v in variants(&input) {
            let (a, b) = (built.evaluate_json(&v), now.evaluate_json(&v));
            match (&a, &b) {
                (Ok(x), Ok(y)) => {
                    assert_eq!(x, y, "input {v}");
                    allowed += usize::from(x.allowed);
                }
                (Err(_), Err(_)) => {}
                _ => panic!("input {v}: build-time {a:?}, runtime {b:?}"),
            }
            checked += 1;
        }
    }
    println!("{checked} inputs, {allowed} allowed, same verdicts");
    // The variants must reach both outcomes to compare anything.
    assert!(checked > 200, "only {checked} inputs");
    assert!(
        allowed > 0 && allowed < checked,
        "{allowed} of {checked} allowed"
    );
}

#[test]
fn other_entrypoints_and_the_interpreter_compile_at_configure_time() {
    let p = Policy::embedded(ENTRY, EngineChoice::Interpreter).unwrap();
    assert!(!p.compiled_at_build());
    assert_eq!(p.backend(), "interpreter");
    let p = Policy::embedded("data.mcp.authz.allow", EngineChoice::Rvm).unwrap();
    assert!(!p.compiled_at_build());
    assert!(Policy::embedded("data.nope", EngineChoice::Rvm).is_err());
}
