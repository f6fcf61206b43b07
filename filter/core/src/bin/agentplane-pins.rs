//! `agentplane-pins`: prints the digests of a server's tools for review, as
//! the policy data that pins them (`data.mcp.pins`, docs/mcp.md).
//!
//! ```text
//! agentplane-pins [--service NAME] [--first-use] [FILE]
//! ```
//!
//! Reads a `tools/list` answer from FILE or standard input: a JSON-RPC
//! response, its `result`, a bare array of tools, or an event stream whose
//! `data:` lines carry the response. Writes one line per tool to standard
//! error (digest, name, description) for the reviewer, and to standard
//! output the JSON to merge into `policies/data.json`. Exits 1 when the
//! input holds no tool list.

use agentplane_core::mcp::pins::digest;
use serde_json::{json, Map, Value};
use std::io::Read;
use std::process::ExitCode;

fn usage(why: &str) -> ExitCode {
    eprintln!(
        "agentplane-pins: {why}\nusage: agentplane-pins [--service NAME] [--first-use] [FILE]"
    );
    ExitCode::from(2)
}

/// The tools of a list answer in any of the forms the command reads.
fn tools_of(text: &str) -> Option<Vec<Value>> {
    let from = |v: Value| -> Option<Vec<Value>> {
        match v {
            Value::Array(items) => Some(items),
            Value::Object(mut o) => match o.remove("result") {
                Some(r) => r.get("tools")?.as_array().cloned(),
                None => o.remove("tools")?.as_array().cloned(),
            },
            _ => None,
        }
    };
    if let Ok(v) = serde_json::from_str::<Value>(text) {
        return from(v);
    }
    // An event stream: the first data line that holds a list.
    text.lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .filter_map(|d| serde_json::from_str::<Value>(d.trim()).ok())
        .find_map(from)
}

fn main() -> ExitCode {
    let mut service = "SERVICE".to_string();
    let mut first_use = false;
    let mut file = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--service" => match args.next() {
                Some(s) => service = s,
                None => return usage("--service needs a name"),
            },
            "--first-use" => first_use = true,
            "-h" | "--help" => return usage("prints tool digests for review"),
            f if file.is_none() && !f.starts_with("--") => file = Some(f.to_string()),
            other => return usage(&format!("unexpected argument {other:?}")),
        }
    }
    let mut text = String::new();
    let read = match &file {
        Some(f) => std::fs::read_to_string(f).map(|t| text = t),
        None => std::io::stdin().read_to_string(&mut text).map(|_| ()),
    };
    if let Err(e) = read {
        return usage(&format!("cannot read the input: {e}"));
    }
    let Some(tools) = tools_of(&text) else {
        eprintln!("agentplane-pins: no tools/list answer in the input");
        return ExitCode::from(1);
    };
    let mut pins = Map::new();
    for t in &tools {
        let (Some(name), Some(d)) = (t.get("name").and_then(Value::as_str), digest(t)) else {
            eprintln!("agentplane-pins: skipped an entry without a name");
            continue;
        };
        let about = t.get("description").and_then(Value::as_str).unwrap_or("");
        eprintln!("{d}  {name}  {about}");
        pins.insert(name.to_string(), Value::from(d));
    }
    let entry = if first_use {
        json!({ "first_use": true, "tools": pins })
    } else {
        json!({ "tools": pins })
    };
    let out = json!({ "mcp": { "pins": { service: entry } } });
    match serde_json::to_string_pretty(&out) {
        Ok(s) => {
            println!("{s}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("agentplane-pins: {e}");
            ExitCode::from(1)
        }
    }
}
