//! Evaluates the embedded policy for a JSON array of input documents read
//! from stdin and prints a JSON array of `{"allow", "deny", "valid_until_ns"}` (or `{"error"}`)
//! results. The OPA differential test drives it.

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
    let policy = match Policy::embedded(&entry, agentplane_core::policy::EngineChoice::Rvm) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("eval: {e}");
            return ExitCode::FAILURE;
        }
    };
    let out: Vec<serde_json::Value> = inputs
        .into_iter()
        .map(|i| match policy.evaluate_json(&i) {
            Ok(v) => serde_json::json!({"allow": v.allowed, "deny": v.reasons, "valid_until_ns": v.valid_until_ns}),
            Err(e) => serde_json::json!({"error": e.to_string()}),
        })
        .collect();
    println!("{}", serde_json::Value::Array(out));
    ExitCode::SUCCESS
}
