//! What configuring one worker costs natively: time to parse the config
//! and load the embedded policy (compiled when the crate was built), and
//! the resident memory it adds; then, for comparison, what compiling the
//! same Rego at configure time costs (what every VM did before).
//!
//! `cargo run --release -p agentplane-core --example startup`

#![allow(clippy::unwrap_used)]

use std::time::Instant;

const CONFIG: &str = include_str!("../../../envoy/agentplane.json");

fn rss_kib() -> usize {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

fn main() {
    let before = rss_kib();
    let t0 = Instant::now();
    let f = agentplane_core::Filter::new(CONFIG.as_bytes(), 1).unwrap();
    let took = t0.elapsed();
    let after = rss_kib();
    println!(
        "configure: {:.1} ms, +{} KiB resident (backend {})",
        took.as_secs_f64() * 1e3,
        after.saturating_sub(before),
        f.policy().backend()
    );
    let entry = "data.mcp.authz";
    let choice = agentplane_core::policy::EngineChoice::Rvm;
    let t0 = Instant::now();
    let p = agentplane_core::policy::Policy::embedded(entry, choice).unwrap();
    println!(
        "the policy load alone, again: {:.3} ms (compiled at build: {})",
        t0.elapsed().as_secs_f64() * 1e3,
        p.compiled_at_build()
    );
    let before = rss_kib();
    let t0 = Instant::now();
    let p = agentplane_core::policy::Policy::compile_runtime(entry, choice).unwrap();
    let took = t0.elapsed();
    let after = rss_kib();
    println!(
        "the same Rego compiled now: {:.1} ms, +{} KiB resident (backend {})",
        took.as_secs_f64() * 1e3,
        after.saturating_sub(before),
        p.backend()
    );
}
