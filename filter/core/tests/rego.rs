//! The project's Rego test runner: loads every module of `policies/`
//! (tests included) with `data.json` into regorus and requires each
//! `test_*` rule to be true. Also checks the policy "kata" in
//! `policies/cases/*/{input,expected}.json` against the embedded bundle.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use agentplane_core::policy::Policy;
use std::fs;
use std::path::{Path, PathBuf};

fn policy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../policies")
}

#[test]
fn rego_unit_tests() {
    let dir = policy_dir();
    let mut engine = regorus::Engine::new();
    engine.set_rego_v0(false);
    let mut tests: Vec<String> = Vec::new();
    let mut files: Vec<_> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    for path in files
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "rego"))
    {
        let src = fs::read_to_string(path).unwrap();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        engine.add_policy(name.clone(), src.clone()).unwrap();
        if name.ends_with("_test.rego") {
            let package = src
                .lines()
                .find_map(|l| l.strip_prefix("package "))
                .expect("package line")
                .trim()
                .to_string();
            for line in src.lines() {
                if let Some(rest) = line.strip_prefix("test_") {
                    let rule: String = rest
                        .chars()
                        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                        .collect();
                    tests.push(format!("data.{package}.test_{rule}"));
                }
            }
        }
    }
    engine
        .add_data(regorus::Value::from_json_file(dir.join("data.json")).unwrap())
        .unwrap();
    assert!(tests.len() >= 15, "found only {} Rego tests", tests.len());
    let mut failed = Vec::new();
    for t in &tests {
        match engine.eval_rule(t.clone()) {
            Ok(v) if v == regorus::Value::from(true) => println!("PASS {t}"),
            Ok(v) => failed.push(format!("{t}: {v}")),
            Err(e) => failed.push(format!("{t}: error {e}")),
        }
    }
    println!("{} Rego tests, {} failed", tests.len(), failed.len());
    assert!(
        failed.is_empty(),
        "failing Rego tests:\n{}",
        failed.join("\n")
    );
}

#[test]
fn policy_cases() {
    let mut policy =
        Policy::embedded("data.mcp.authz", agentplane_core::policy::EngineChoice::Rvm).unwrap();
    let cases = policy_dir().join("cases");
    let mut n = 0;
    let mut dirs: Vec<_> = fs::read_dir(&cases)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    dirs.sort();
    for case in dirs {
        let input: serde_json::Value =
            serde_json::from_str(&fs::read_to_string(case.join("input.json")).unwrap()).unwrap();
        let expected: serde_json::Value =
            serde_json::from_str(&fs::read_to_string(case.join("expected.json")).unwrap()).unwrap();
        let v = policy.evaluate_json(&input).unwrap();
        let got = serde_json::json!({"allow": v.allowed, "deny": v.reasons});
        assert_eq!(got, expected, "case {}", case.display());
        n += 1;
    }
    assert!(n >= 5, "only {n} cases");
}
