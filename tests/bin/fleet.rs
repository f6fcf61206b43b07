//! `./build.sh fleet`: two proxies, one budget. Redis, the rate limit
//! service and two Envoys (two workers each) on loopback; one agent
//! bursts through both and gets one budget between them, another agent is
//! unaffected, and the service stopped and started again shows what
//! Envoy answers meanwhile. A transcript on stdout.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use agentplane_e2e::fleet::{fleet, poll};
use serde_json::json;
use std::time::Duration;

fn main() {
    println!("Starting Redis, agentplane-ratelimit and two Envoys (two workers each)...");
    let mut f = fleet(
        json!({"domain": "agentplane", "limits": [
            {"name": "fleet.agent", "by": ["agent"], "rate": 5, "burst": 10},
            {"name": "fleet.team", "by": ["team"], "rate": 1000, "burst": 1000}
        ]}),
        "0.25s",
    );
    println!(
        "  proxies on 127.0.0.1:{} and 127.0.0.1:{}; the service on 127.0.0.1:{}",
        f.envoys[0].port, f.envoys[1].port, f.rls.port
    );
    println!("  limit fleet.agent: 5 requests/s per agent, burst 10, counted in Redis for both proxies\n");

    let auth = f.bearer("fleet-demo@clients", "support");
    println!("fleet-demo@clients: 6 clients per proxy for 2 s...");
    let (all, secs) = f.burst(&auth, 6, Duration::from_secs(2));
    let ok = |i: usize| {
        all.iter()
            .filter(|(p, r)| *p == i && r.status == 200)
            .count()
    };
    let allowed = ok(0) + ok(1);
    println!(
        "  {} requests in {secs:.2} s: {allowed} allowed (proxy 1: {}, proxy 2: {}), {} refused",
        all.len(),
        ok(0),
        ok(1),
        all.len() - allowed
    );
    println!(
        "  budget: burst + rate x t = 10 + 5 x {secs:.2} = {:.1} for the whole fleet (two per-proxy budgets would be about twice that)",
        10.0 + 5.0 * secs
    );
    if let Some((_, r)) = all.iter().find(|(_, r)| r.status == 429) {
        println!("  a refusal: {}", r.status);
        for h in [
            "x-agentplane-reason",
            "retry-after",
            "ratelimit-policy",
            "ratelimit",
            "x-decision-id",
        ] {
            println!("    {h}: {}", r.header(h).unwrap_or("-"));
        }
    }

    let other = f.bearer("fleet-other@clients", "support");
    let r = f.call(1, &other);
    println!(
        "\nfleet-other@clients, same team, through proxy 2: {}",
        r.status
    );

    println!("\nThe rate limit service stopped:");
    f.rls.kill();
    let r = f.call(0, &other);
    println!(
        "  fleet-other@clients: {} (Envoy fails closed within its timeout)",
        r.status
    );
    f.rls.restart();
    poll(Duration::from_secs(10), "the service back", || {
        f.call(0, &other).status == 200
    });
    println!("  started again: fleet-other@clients gets 200, no proxy restarted");
}
