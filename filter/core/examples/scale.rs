//! Does a decision get slower with more agents in the layered policy data?
//! Compiles the embedded policy with `N` extra agents in `data.agents` (and
//! N/10 teams) for N in 10, 1,000, 100,000 and times one allowed and one
//! denied decision for an agent among them; reports the memory the data
//! costs (each Envoy worker's VM holds one copy).
//!
//! `cargo run --release -p agentplane-core --example scale [iterations]`

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use agentplane_core::policy::{EngineChoice, Policy};
use serde_json::{json, Value};
use std::time::Instant;

/// Resident set size in bytes: with no allocator hooks (unsafe code is
/// forbidden here), the growth of RSS across compiling the policy and data
/// is an upper bound on what they hold.
fn rss() -> usize {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<usize>().ok())
        })
        .unwrap_or(0)
        * 1024
}

fn data(n: usize) -> String {
    let mut d: Value = serde_json::from_str(agentplane_core::bundle::DATA_JSON).unwrap();
    for i in 0..n {
        let layer = if i % 7 == 0 {
            json!({"deny_actions": ["write_data"]})
        } else {
            json!({"allow": true})
        };
        d["agents"][format!("agent-{i}@clients")] = layer;
    }
    for i in 0..n / 10 {
        d["teams"][format!("team-{i}")] = json!({"allow": true});
    }
    d.to_string()
}

fn input(agent: &str, perms: &[&str]) -> Value {
    json!({
        "jwt": {"valid": true, "payload": {"sub": agent, "exp": 1746277200}},
        "agent": {"id": agent, "type": "support", "team": "team-3",
                  "environment": "production", "permissions": perms},
        "request": {"id": "r", "method": "POST", "host": "h",
                    "path": ["sentiment-analysis", "analyze"], "raw_path": "/mcp://sentiment-analysis/analyze",
                    "query": {}, "headers": {}, "time_ns": 1746273600000000000u64},
        "resource": {"type": "skill", "id": "sentiment-analysis", "registered": true,
                     "metadata": {"team": "ml", "environment": "production", "shared": true}},
        "action": "invoke_skill",
    })
}

/// One size in a fresh process, so that memory freed by another size is
/// not reused and hidden. Prints `n rss_bytes allowed_us denied_us`.
fn one(n: usize, iters: u32) {
    // The JSON text is one large allocation (returned to the system when
    // dropped); building it leaves nothing else behind.
    let json =
        std::fs::read_to_string(std::env::temp_dir().join(format!("agentplane-scale-{n}.json")))
            .unwrap();
    let before = rss();
    // The shipped engine (the policy compiled to Rust);
    // AGENTPLANE_SCALE_ENGINE=rvm measures regorus' VM instead.
    let mut policy = if std::env::var("AGENTPLANE_SCALE_ENGINE").as_deref() == Ok("rvm") {
        Policy::compile_for(
            agentplane_core::bundle::MODULES,
            &json,
            "data.mcp.authz",
            EngineChoice::Rvm,
        )
    } else {
        Policy::native_with_data(&json)
    }
    .expect("policy compiles");
    drop(json);
    let grown = rss().saturating_sub(before);
    // An agent in the middle of the map, allowed; and the same with a
    // missing permission (slow path: every reason computed).
    let agent = format!("agent-{}@clients", n / 2 + 1);
    let ok = agentplane_core::value::to_rego(&input(&agent, &["skills:invoke"]));
    let bad = agentplane_core::value::to_rego(&input(&agent, &["data:read"]));
    let mut time = |inp: &regorus::Value, want: bool| {
        let v = policy.evaluate(inp.clone()).unwrap();
        assert_eq!(v.allowed, want, "{:?}", v.reasons);
        let t = Instant::now();
        for _ in 0..iters {
            std::hint::black_box(policy.evaluate(inp.clone()).unwrap());
        }
        t.elapsed().as_secs_f64() * 1e6 / f64::from(iters)
    };
    let a = time(&ok, true);
    let d = time(&bad, false);
    println!("{n} {grown} {a} {d}");
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--one") {
        let n = args[2].parse().unwrap();
        return one(n, args[3].parse().unwrap());
    }
    let iters: u32 = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(20_000);
    println!("| agents in data | RSS growth for policy + data (MiB) | allowed decision (µs) | denied decision (µs) |");
    println!("|---|---|---|---|");
    let mut rows = Vec::new();
    for n in [10usize, 1_000, 100_000] {
        let file = std::env::temp_dir().join(format!("agentplane-scale-{n}.json"));
        std::fs::write(&file, data(n)).unwrap();
        let out = std::process::Command::new(&args[0])
            .args(["--one", &n.to_string(), &iters.to_string()])
            .output()
            .unwrap();
        std::fs::remove_file(&file).ok();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let line = String::from_utf8_lossy(&out.stdout).to_string();
        let f: Vec<f64> = line
            .split_whitespace()
            .map(|x| x.parse().unwrap())
            .collect();
        println!(
            "| {n} | {:.1} | {:.2} | {:.2} |",
            f[1] / (1024.0 * 1024.0),
            f[2],
            f[3]
        );
        rows.push(f);
    }
    println!(
        "\n100k agents vs 10: allowed {:.2}x, denied {:.2}x (target <= 1.2x)",
        rows[2][2] / rows[0][2],
        rows[2][3] / rows[0][3]
    );
}
