//! The program `build.rs` compiled from the embedded bundle against the
//! same Rego compiled at run time: both must give the same verdict on the
//! kata inputs (`policies/cases/*/input.json`) and on variants of them with
//! keys missing, values changed and booleans flipped. A build-time program
//! that drifted from the sources (stale, or compiled another way) fails
//! here.
//!
//! A property test then compares the program that ships with regorus'
//! tree interpreter on generated inputs (`compiled/gen.rs`): the kata
//! inputs and the shapes they lack, mutated by a seeded PRNG. Every
//! evaluation the filter makes (the decision and list filtering alike) is
//! one evaluation of the package's decision rule, so the whole [`Verdict`]
//! is compared: allowed, reasons, status, headers, `valid_until_ns`, the
//! missing scope, `visible` and the limits. `AGENTPLANE_EQUIV_CASES` sets
//! how many inputs (default 2500), `AGENTPLANE_EQUIV_SEED` the seed; a
//! failure prints both, the input, and the input shrunk to what still
//! fails.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use agentplane_core::bundle;
use agentplane_core::policy::{EngineChoice, Policy, PolicyError, Verdict};
use gen::{Gen, Rng};
use serde_json::{json, Value};
use std::fs;
use std::path::Path;
use std::sync::OnceLock;

#[path = "compiled/gen.rs"]
mod gen;

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

type Outcome = Result<Verdict, PolicyError>;

/// How the shipped program's answer relates to the interpreter's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Relation {
    /// The same verdict, or errors of the same kind (the engines word
    /// their errors differently; the filter answers every kind alike).
    Same,
    /// Known divergence: a builtin or `some .. in` given the wrong type
    /// (`object.get` on a string, `%` on null, iterating null) is an error
    /// to the interpreter (as to `opa eval --strict-builtin-errors`) and
    /// undefined to the RVM (as to OPA by default). The interpreter then
    /// has no answer to compare with; the shipped program must still give
    /// exactly the answer of the same Rego compiled to the RVM at run
    /// time, and it must deny: an input the interpreter cannot decide is
    /// never allowed (see
    /// `a_malformed_clock_or_list_is_refused_on_the_rvm_too`).
    TypeErrorDenied,
    /// Arithmetic past the integers (`exp * 1000000000` with `exp` near
    /// 1e300) is an error to the RVM and a float to the interpreter, which
    /// then denies: both refuse the request, the RVM with an evaluation
    /// error instead of the policy's reasons.
    OverflowDenied,
    /// Anything else, an allow on a type error included: a bug to report.
    Differ,
}

/// The relation of the shipped program's answer `built` to the
/// interpreter's `tree`; `now` (the Rego compiled to the RVM at run time)
/// answers where the interpreter cannot.
fn relate(built: &Outcome, tree: &Outcome, now: impl FnOnce() -> Outcome) -> Relation {
    let type_error = |e: &str| e.contains(" expects ") || e.contains("on floating-point number");
    match (built, tree) {
        (Ok(x), Ok(y)) if x == y => Relation::Same,
        (Err(x), Err(y)) if std::mem::discriminant(x) == std::mem::discriminant(y) => {
            Relation::Same
        }
        (Ok(v), Err(PolicyError::Eval(e))) if type_error(e) => {
            if now() != *built || v.allowed {
                Relation::Differ
            } else {
                Relation::TypeErrorDenied
            }
        }
        (Err(PolicyError::Eval(e)), Ok(v)) if e.contains("overflow") && !v.allowed => {
            Relation::OverflowDenied
        }
        _ => Relation::Differ,
    }
}

/// The three policies a comparison needs, evaluated afresh.
struct Judges {
    /// The program under test: the shipped one, or a wrong one.
    built: Policy,
    tree: Policy,
    now: Policy,
}

impl Judges {
    fn new(built: Policy) -> Judges {
        let tree = Policy::compile_runtime(ENTRY, EngineChoice::Interpreter).unwrap();
        assert_eq!(tree.backend(), "interpreter");
        let now = Policy::compile_runtime(ENTRY, EngineChoice::Rvm).unwrap();
        assert_eq!(now.backend(), "rvm");
        Judges { built, tree, now }
    }

    fn relate(&mut self, input: &Value) -> Relation {
        let (b, t) = (
            self.built.evaluate_json(input),
            self.tree.evaluate_json(input),
        );
        relate(&b, &t, || self.now.evaluate_json(input))
    }
}

/// `v` with strings over 80 characters cut, for a readable report (the
/// seed gives the whole input back).
fn brief(v: &Value) -> Value {
    match v {
        Value::String(s) if s.chars().count() > 80 => {
            let head: String = s.chars().take(40).collect();
            Value::from(format!("{head}…({} chars)", s.chars().count()))
        }
        Value::Array(a) => a.iter().map(brief).collect(),
        Value::Object(m) => Value::Object(m.iter().map(|(k, v)| (k.clone(), brief(v))).collect()),
        other => other.clone(),
    }
}

/// One input of the comparison and the interpreter's answer to it.
struct Case {
    /// Where it came from: `AGENTPLANE_EQUIV_SEED=<n>` makes it first.
    origin: String,
    input: Value,
    tree: Outcome,
}

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The generator's seeds and `AGENTPLANE_EQUIV_CASES` inputs generated
/// from `AGENTPLANE_EQUIV_SEED` (input `i` from seed `seed + i` alone, so
/// one reruns by itself), with the interpreter's answers: computed once
/// for every test here, since the interpreter costs most of the time.
fn corpus() -> &'static [Case] {
    static CORPUS: OnceLock<Vec<Case>> = OnceLock::new();
    CORPUS.get_or_init(|| {
        let (seed, cases) = (
            env("AGENTPLANE_EQUIV_SEED", 0x5eed),
            env("AGENTPLANE_EQUIV_CASES", 2500),
        );
        let mut tree = Policy::compile_runtime(ENTRY, EngineChoice::Interpreter).unwrap();
        let kata = kata_inputs();
        let allowed = kata
            .iter()
            .find(|i| tree.evaluate_json(i).is_ok_and(|v| v.allowed))
            .expect("a kata input the policy allows")
            .clone();
        let data: Value = serde_json::from_str(bundle::DATA_JSON).unwrap();
        let built = Policy::embedded(ENTRY, EngineChoice::Rvm).unwrap();
        let reads = built
            .reads()
            .expect("the shipped policy reads static paths");
        let gen = Gen::new(kata, &allowed, &data, reads);
        let seeds = gen.seeds().iter().enumerate();
        let seeds = seeds.map(|(i, s)| (format!("seed input {i}"), s.clone()));
        let generated = (0..cases).map(|i| {
            let s = seed.wrapping_add(i);
            (format!("AGENTPLANE_EQUIV_SEED={s}"), gen.input(&mut Rng(s)))
        });
        println!("seed {seed}, {cases} generated inputs");
        seeds
            .chain(generated)
            .map(|(origin, input)| Case {
                tree: tree.evaluate_json(&input),
                origin,
                input,
            })
            .collect()
    })
}

/// The first case of each relation but [`Relation::Same`], and how many.
type Found = Vec<(Relation, &'static Case, usize)>;

/// Every case through `j.built`; stops at the first [`Relation::Differ`].
fn compare(j: &mut Judges) -> Found {
    let mut found: Found = Vec::new();
    for case in corpus() {
        let b = j.built.evaluate_json(&case.input);
        let r = relate(&b, &case.tree, || j.now.evaluate_json(&case.input));
        if r == Relation::Same {
            continue;
        }
        match found.iter_mut().find(|f| f.0 == r) {
            Some(f) => f.2 += 1,
            None => found.push((r, case, 1)),
        }
        if r == Relation::Differ {
            break;
        }
    }
    found
}

#[test]
fn the_shipped_program_decides_like_the_interpreter_on_generated_inputs() {
    let built = Policy::embedded(ENTRY, EngineChoice::Rvm).unwrap();
    assert!(built.compiled_at_build());
    let mut j = Judges::new(built);
    for (r, case, n) in compare(&mut j) {
        let input = &case.input;
        let (b, t) = (j.built.evaluate_json(input), &case.tree);
        let at = format!("{r:?} at {}\ninput: {}", case.origin, brief(input));
        if r != Relation::Differ {
            // Tolerated: shown, not shrunk (the interpreter is slow).
            println!("{n} times {at}\nshipped: {b:?}\ninterpreter: {t:?}");
            continue;
        }
        let shrunk = gen::shrink(input.clone(), |i| j.relate(i) == r);
        let (b, t) = (
            j.built.evaluate_json(&shrunk),
            j.tree.evaluate_json(&shrunk),
        );
        panic!(
            "the shipped program and the interpreter differ: {at}\nshrunk: {}\n\
             on it, shipped: {b:?}\non it, interpreter: {t:?}\n(alone: that seed and \
             AGENTPLANE_EQUIV_CASES=1 cargo test -p agentplane-core --test compiled)",
            brief(&shrunk)
        );
    }
    // Every part of the verdict must have been reached, both ways.
    let answers: Vec<&Verdict> = corpus()
        .iter()
        .filter_map(|c| c.tree.as_ref().ok())
        .collect();
    let n = corpus().len();
    for (what, count) in [
        ("allowed", answers.iter().filter(|v| v.allowed).count()),
        (
            "refused with reasons",
            answers.iter().filter(|v| !v.reasons.is_empty()).count(),
        ),
        (
            "with a missing scope",
            answers.iter().filter(|v| v.scope.is_some()).count(),
        ),
        (
            "with visible names",
            answers
                .iter()
                .filter(|v| v.visible.as_ref().is_some_and(|v| !v.is_empty()))
                .count(),
        ),
        (
            "with limits",
            answers.iter().filter(|v| !v.limits.is_empty()).count(),
        ),
        (
            "with valid_until_ns",
            answers
                .iter()
                .filter(|v| v.valid_until_ns.is_some())
                .count(),
        ),
        ("not answered", n - answers.len()),
    ] {
        println!("{count} of {n} {what}");
        assert!(count * 50 >= n && count < n, "{count} of {n} {what}");
    }
}

/// Found by the comparison above: where the interpreter fails on a type
/// error the RVM treats the expression as undefined, and the policy once
/// allowed there. With `input.request.time_ns` null, a boolean or
/// fractional, `hour_utc` was undefined, so `not off_hours` held (a DELETE
/// at any hour), and null sorts below every number (an expired token
/// passed); with `input.mcp.listed` null, `visible` was empty and the list
/// allowed. The policy now refuses a clock that is not an integer with its
/// own reason and reads `listed` only as a list, on both engines.
#[test]
fn a_malformed_clock_or_list_is_refused_on_the_rvm_too() {
    let mut j = Judges::new(Policy::embedded(ENTRY, EngineChoice::Rvm).unwrap());
    let allowed = kata_inputs()
        .into_iter()
        .find(|i| i["action"] == "invoke_skill")
        .unwrap();
    assert!(j.built.evaluate_json(&allowed).unwrap().allowed);
    let mut inputs = Vec::new();
    for clock in [
        Value::Null,
        Value::from(false),
        Value::from(1.5),
        // A whole number as a float: `%` fails on it in regorus.
        Value::from(1_746_252_000_000_000_000.0_f64),
    ] {
        let mut i = allowed.clone();
        i["request"]["method"] = "DELETE".into();
        i["request"]["time_ns"] = clock;
        i["jwt"]["payload"]["exp"] = 1.into();
        inputs.push(i);
    }
    let mut list = allowed.clone();
    list["agent"]["permissions"] = json!(["tools:list"]);
    list["action"] = "list_tools".into();
    list["mcp"] = json!({"method": "tools/list", "listed": null});
    inputs.push(list);
    let (clocks, lists) = inputs.split_at(4);
    for i in clocks {
        let b = j.built.evaluate_json(i).unwrap();
        assert!(!b.allowed, "{i}: {b:?}");
        assert!(
            b.reasons.iter().any(|r| r == "request has no numeric time"),
            "{i}: {b:?}"
        );
        // The interpreter agrees, or fails on the float clock's `%`.
        assert_ne!(j.relate(i), Relation::Differ, "{i}");
    }
    for i in lists {
        let b = j.built.evaluate_json(i).unwrap();
        assert_eq!(b.visible, Some(vec![]), "{i}: {b:?}");
        assert_eq!(j.relate(i), Relation::Same, "{i}");
    }
}

/// Plausible miscompiles, each in one rule: (module, text, replacement).
const WRONG: [(&str, &str, &str); 6] = [
    // The token's expiry, off by one at the boundary.
    (
        "authz.rego",
        "input.request.time_ns < exp * 1000000000\n\tis_string(action)",
        "input.request.time_ns <= exp * 1000000000\n\tis_string(action)",
    ),
    // A reason worded otherwise.
    (
        "authz.rego",
        "msg := sprintf(\"missing permission %v",
        "msg := sprintf(\"missing permissions %v",
    ),
    // `every` over the chain dropped.
    (
        "delegation.rego",
        "\tevery a in delegation_actors {\n\t\tchain_actor_type(a) in actor_types_allowed\n\t}\n}",
        "}",
    ),
    // One layer's limits read from another.
    (
        "limits.rego",
        "some l in type_layer.limits",
        "some l in agent_layer.limits",
    ),
    // A list answer filtered without the tool's own permissions.
    (
        "tools.rego",
        "every needed in object.get(object.get(cfg, \"tool_permissions\", {}), name, [])",
        "every needed in object.get(object.get(cfg, \"tool_permissions\", {}), \"x\", [])",
    ),
    // The earlier of two times taken as the later.
    ("authz.rego", "min({next_hour_ns", "max({next_hour_ns"),
];

/// The comparison is not vacuous: run with the shipped program replaced
/// by the bundle with one rule changed (as a wrong compile would change
/// it), it must find a difference.
#[test]
fn the_comparison_catches_a_program_that_decides_otherwise() {
    let mut j = Judges::new(Policy::embedded(ENTRY, EngineChoice::Rvm).unwrap());
    for (file, from, to) in WRONG {
        let modules: Vec<(&str, String)> = bundle::MODULES
            .iter()
            .map(|&(name, src)| {
                if name == file {
                    assert!(src.contains(from), "{file} no longer has {from:?}");
                    (name, src.replacen(from, to, 1))
                } else {
                    (name, src.to_string())
                }
            })
            .collect();
        let refs: Vec<(&str, &str)> = modules.iter().map(|(n, s)| (*n, s.as_str())).collect();
        j.built = Policy::compile_for(&refs, bundle::DATA_JSON, ENTRY, EngineChoice::Rvm).unwrap();
        assert_eq!(j.built.backend(), "rvm", "{to:?}");
        let found = compare(&mut j);
        let differ = found.iter().find(|f| f.0 == Relation::Differ);
        let (_, case, _) = differ.unwrap_or_else(|| panic!("{from:?} -> {to:?} went unnoticed"));
        println!("{to:?}: caught by {}", case.origin);
    }
}

/// The policy compiled to Rust (`policy/native`) against the RVM program
/// it replaces, on the kata inputs, their variants and the generated
/// corpus: the same verdict everywhere (an evaluation error on both sides
/// counts as the same: both deny).
#[test]
fn the_policy_compiled_to_rust_decides_like_the_rvm() {
    let mut native = Policy::embedded(ENTRY, EngineChoice::Native).unwrap();
    assert_eq!(
        native.backend(),
        "native",
        "the shipped policy compiles to Rust"
    );
    let mut rvm = Policy::embedded(ENTRY, EngineChoice::Rvm).unwrap();
    assert_eq!(rvm.backend(), "rvm");
    let mut inputs: Vec<(String, Value)> = Vec::new();
    for (i, input) in kata_inputs().iter().enumerate() {
        for v in variants(input) {
            inputs.push((format!("kata variant of input {i}"), v));
        }
    }
    for case in corpus() {
        inputs.push((case.origin.clone(), case.input.clone()));
    }
    let (mut allowed, mut errors) = (0, 0);
    for (origin, input) in &inputs {
        let (a, b) = (native.evaluate_json(input), rvm.evaluate_json(input));
        match (&a, &b) {
            (Ok(x), Ok(y)) => {
                assert_eq!(x, y, "{origin}\ninput {}", brief(input));
                allowed += usize::from(x.allowed);
            }
            (Err(_), Err(_)) => errors += 1,
            _ => {
                let shrunk = gen::shrink(input.clone(), |i| {
                    native.evaluate_json(i).is_ok() != rvm.evaluate_json(i).is_ok()
                });
                panic!(
                    "{origin}\ninput {}\nnative {a:?}\nrvm {b:?}\nshrunk {}\nnative {:?}\nrvm {:?}",
                    brief(input),
                    brief(&shrunk),
                    native.evaluate_json(&shrunk),
                    rvm.evaluate_json(&shrunk)
                )
            }
        }
    }
    println!(
        "{} inputs, {allowed} allowed, {errors} errors on both",
        inputs.len()
    );
    assert!(
        allowed > 100 && allowed < inputs.len(),
        "{allowed} of {}",
        inputs.len()
    );
}
