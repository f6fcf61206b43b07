//! Evaluates the embedded policy for a JSON array of input documents read
//! from stdin and prints a JSON array of `{"allow", "deny", "valid_until_ns",
//! "limits"}` (or `{"error"}`)
//! results. The OPA differential test drives it.
//!
//! With `AGENTPLANE_EVAL_REPEAT=N` it instead evaluates each input N times
//! and prints the mean µs per evaluation for each (the OPA cost comparison
//! in `./build.sh bench`; build it with `--release`).

use agentplane_core::policy::Policy;
use std::io::Read;
use std::process::ExitCode;

fn main() -> ExitCode {
    let mut text = String::new();
    if let Err(e) = std::io::stdin().read_to_string(&mut text) {
        eprintln!("eval: reading stdin: {e}");
        return ExitCode::FAILURE;
    }
    let inputs: Vec<serde_json::Value> = match serde_json::from_str(&text) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("eval: stdin is not a JSON array: {e}");
            return ExitCode::FAILURE;
        }
    };
    let entry = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "data.mcp.authz".into());
    // The shipped default engine; AGENTPLANE_EVAL_ENGINE=rvm|native|interpreter picks another.
    let engine: agentplane_core::policy::EngineChoice =
        match std::env::var("AGENTPLANE_EVAL_ENGINE") {
            Ok(e) => match serde_json::from_value(serde_json::Value::String(e.clone())) {
                Ok(c) => c,
                Err(_) => {
                    eprintln!("eval: unknown engine {e}");
                    return ExitCode::FAILURE;
                }
            },
            Err(_) => agentplane_core::policy::EngineChoice::default(),
        };
    let mut policy = match Policy::embedded(&entry, engine) {
        Ok(p) => {
            eprintln!("eval: engine {}", p.backend());
            p
        }
        Err(e) => {
            eprintln!("eval: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(n) = std::env::var("AGENTPLANE_EVAL_REPEAT")
        .ok()
        .and_then(|v| v.parse::<u32>().ok())
    {
        let times: Vec<f64> = inputs
            .iter()
            .map(|i| {
                let doc = agentplane_core::value::to_rego(i);
                let t = std::time::Instant::now();
                for _ in 0..n {
                    std::hint::black_box(policy.evaluate(doc.clone()).ok());
                }
                t.elapsed().as_secs_f64() * 1e6 / f64::from(n.max(1))
            })
            .collect();
        println!("{}", serde_json::json!(times));
        return ExitCode::SUCCESS;
    }
    let out: Vec<serde_json::Value> = inputs
        .into_iter()
        .map(|i| match policy.evaluate_json(&i) {
            Ok(v) => {
                let mut limits: Vec<String> =
                    v.limits.iter().map(agentplane_core::limits::Limit::summary).collect();
                limits.sort();
                serde_json::json!({"allow": v.allowed, "deny": v.reasons, "valid_until_ns": v.valid_until_ns, "limits": limits})
            }
            Err(e) => serde_json::json!({"error": e.to_string()}),
        })
        .collect();
    println!("{}", serde_json::Value::Array(out));
    ExitCode::SUCCESS
}
