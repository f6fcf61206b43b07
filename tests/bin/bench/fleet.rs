//! The fleet-wide arm (`AGENTPLANE_BENCH_ONLY=fleet`): what asking the
//! rate limit service costs per request, beside S4 in one run.

use super::*;
use agentplane_e2e::fleet::{poll, with_fleet_limits, Ratelimit, Redis};

/// S4 and S4F (S4 + Envoy's rate limit filter asking
/// `agentplane-ratelimit`, Redis behind it, on every allowed request:
/// one gRPC round trip on loopback and one Lua script in Redis), the
/// classic mix, one worker. Limits that are never reached (a million a
/// second per agent and per team), so every request is counted and none
/// refused by them. Envoy's CPU per request, the service's and Redis's
/// (unpinned: they share the machine), and latency at a fixed rate.
pub(crate) fn fleet_arms(
    setup: &EnvoySetup,
    base_config: &str,
    secs: u32,
    reps: usize,
    warmup: u32,
    idp: &Idp,
) {
    let token = idp.triage_token();
    let redis = Redis::start();
    let rls = Ratelimit::start(
        &serde_json::json!({"domain": "agentplane", "limits": [
            {"name": "fleet.agent", "by": ["agent"], "rate": 1e6, "burst": 1_000_000},
            {"name": "fleet.team", "by": ["team"], "rate": 1e6, "burst": 1_000_000}
        ]}),
        &redis,
    );
    poll(Duration::from_secs(10), "ratelimit ready", || {
        rls.ready() == 200
    });
    let names = ["S4", "S4F"];
    let mut rows: Vec<Samples> = names.iter().map(|_| Samples::default()).collect();
    let mut side: Vec<(Vec<f64>, Vec<f64>)> = names.iter().map(|_| (vec![], vec![])).collect();
    let rate = 500.0;
    for rep in 0..reps {
        for k in 0..names.len() {
            let i = (k + rep) % names.len();
            let a = Arm {
                name: names[i].to_string(),
                kind: Kind::Filter,
                enforces: true,
                wasm: None,
                plugin_config: Some(base_config.to_string()),
            };
            let mut r = render(&a, setup);
            if i == 1 {
                with_fleet_limits(&mut r, rls.port, None);
            }
            let envoy = Envoy::start_yaml(&r);
            probe(&a, &envoy, &token);
            let script = wrk_script();
            wrk(envoy.port, &token, warmup, &script);
            let cpu = || {
                (
                    cpu_secs(envoy.pid()),
                    cpu_secs(rls.pid()),
                    cpu_secs(redis.pid()),
                )
            };
            let c0 = cpu();
            let run = wrk(envoy.port, &token, secs, &script);
            let c1 = cpu();
            std::fs::remove_file(&script).ok();
            check_mix(&a, &run);
            let per = |a: f64, b: f64| (b - a) * 1e6 / run.requests as f64;
            rows[i].rps.push(run.rps);
            rows[i].cpu_us.push(per(c0.0, c1.0));
            side[i].0.push(per(c0.1, c1.1));
            side[i].1.push(per(c0.2, c1.2));
            let lat = open_loop(envoy.port, &token, rate, f64::from(secs), 4);
            rows[i].p50.push(pct(&lat, 0.5));
            rows[i].p99.push(pct(&lat, 0.99));
            eprintln!(
                "fleet rep {rep} {}: {:.0} req/s, Envoy {:.1} µs CPU/req, service {:.1}, Redis {:.1}",
                names[i],
                run.rps,
                per(c0.0, c1.0),
                per(c0.1, c1.1),
                per(c0.2, c1.2)
            );
        }
    }
    println!("\nFleet-wide limits: the classic mix (80% allowed, each asking the service), medians of {reps}, one Envoy worker");
    println!("| arm | req/s | Envoy CPU µs/req | service CPU µs/req | Redis CPU µs/req | p50 ms at {rate}/s | p99 ms |");
    println!("|---|---|---|---|---|---|---|");
    for (i, name) in names.iter().enumerate() {
        println!(
            "| {name} | {:.0} | {:.1} | {:.1} | {:.1} | {:.2} | {:.2} |",
            median(rows[i].rps.clone()),
            median(rows[i].cpu_us.clone()),
            median(side[i].0.clone()),
            median(side[i].1.clone()),
            median(rows[i].p50.clone()),
            median(rows[i].p99.clone()),
        );
    }
}
