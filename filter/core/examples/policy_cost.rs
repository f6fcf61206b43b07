//! Evaluates a policy directory's bundle N times on one input, for
//! instruction-count comparisons under callgrind (deterministic, unlike
//! timings on a shared machine):
//!   valgrind --tool=callgrind target/release/examples/policy_cost DIR INPUT N [ENTRYPOINT]
use agentplane_core::policy::{EngineChoice, Policy};
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let (Some(dir), Some(input), Some(n)) = (args.get(1), args.get(2), args.get(3)) else {
        eprintln!("usage: policy_cost DIR INPUT.json N");
        return ExitCode::FAILURE;
    };
    let read = |p: &std::path::Path| std::fs::read_to_string(p).unwrap_or_default();
    let mut modules: Vec<(String, String)> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            let n = p.to_string_lossy();
            n.ends_with(".rego") && !n.ends_with("_test.rego")
        })
        .map(|p| (p.to_string_lossy().into_owned(), read(&p)))
        .collect();
    modules.sort();
    let m: Vec<(&str, &str)> = modules
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    let data = read(&std::path::Path::new(dir).join("data.json"));
    let entry = args.get(4).map_or("data.mcp.authz", String::as_str);
    let mut policy = match Policy::compile_for(&m, &data, entry, EngineChoice::Rvm) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let Ok(input) = serde_json::from_str::<serde_json::Value>(&read(std::path::Path::new(input)))
    else {
        eprintln!("bad input");
        return ExitCode::FAILURE;
    };
    let input = agentplane_core::value::to_rego(&input);
    let n: usize = n.parse().unwrap_or(1);
    let mut allowed = 0;
    for _ in 0..n {
        if policy.evaluate(input.clone()).is_ok_and(|v| v.allowed) {
            allowed += 1;
        }
    }
    println!("backend={} allowed={allowed}/{n}", policy.backend());
    ExitCode::SUCCESS
}
