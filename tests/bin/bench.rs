//! `./build.sh bench`: requests/s through one Envoy worker with jwt_authn
//! only (S2) and with jwt_authn + agentplane (S4), same upstream, token and
//! request, arms interleaved, median of the repetitions.
//!
//! Usage: agentplane-bench [seconds per run (default 10)] [repetitions (default 3)]
//!
//! `AGENTPLANE_BENCH_EXTRA="name=/path/a.wasm,other=/path/b.wasm"` adds arms
//! running other builds of the filter, measured in the same interleaved run.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use agentplane_e2e::{default_plugin_config, render_envoy, Envoy, EnvoySetup, Idp, Upstream};
use std::process::Command;

fn wrk(port: u16, token: &str, secs: u32) -> f64 {
    let out = Command::new("wrk")
        .args(["-t1", "-c16", &format!("-d{secs}s")])
        .args(["-H", &format!("authorization: Bearer {token}")])
        .arg(format!(
            "http://127.0.0.1:{port}/mcp://sentiment-analysis/analyze"
        ))
        .output()
        .expect("wrk (./build.sh bench installs it)");
    let text = String::from_utf8_lossy(&out.stdout);
    let rps = text
        .lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no Requests/sec in wrk output:\n{text}"));
    let non2xx = text.lines().any(|l| l.contains("Non-2xx"));
    assert!(!non2xx, "requests failed during the run:\n{text}");
    rps
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn main() {
    let mut args = std::env::args().skip(1);
    let secs: u32 = args.next().and_then(|a| a.parse().ok()).unwrap_or(10);
    let reps: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(3);
    let idp = Idp::new();
    let token = idp.agent_token(
        "support-triage@clients",
        "customer-success",
        "support",
        "production",
        &["skills:invoke", "data:read"],
    );
    let up = Upstream::start();
    let setup = EnvoySetup {
        jwks: idp.jwks(),
        upstream_port: up.port,
        plugin_config: default_plugin_config(),
    };
    let mut arms: Vec<(String, Option<String>)> = vec![
        ("S2 jwt_authn".into(), None),
        (
            "S4 jwt_authn + agentplane".into(),
            Some(agentplane_e2e::wasm_path().display().to_string()),
        ),
    ];
    for extra in std::env::var("AGENTPLANE_BENCH_EXTRA")
        .unwrap_or_default()
        .split(',')
    {
        if let Some((name, path)) = extra.split_once('=') {
            arms.push((format!("S4 {name}"), Some(path.to_string())));
        }
    }
    let mut results: Vec<Vec<f64>> = vec![Vec::new(); arms.len()];
    // Per arm: seconds from spawn to ready, RSS after warm-up and after the run.
    let mut startup: Vec<Vec<f64>> = vec![Vec::new(); arms.len()];
    let mut rss: Vec<Vec<(u64, u64)>> = vec![Vec::new(); arms.len()];
    for rep in 0..reps {
        for (i, (name, wasm)) in arms.iter().enumerate() {
            let t0 = std::time::Instant::now();
            let envoy = match wasm {
                Some(path) => {
                    let mut r = render_envoy(&setup, true);
                    let default = agentplane_e2e::wasm_path().display().to_string();
                    r.yaml = r.yaml.replace(&default, path);
                    Envoy::start_yaml(&r)
                }
                None => Envoy::start_yaml(&render_envoy(&setup, false)),
            };
            startup[i].push(t0.elapsed().as_secs_f64());
            wrk(envoy.port, &token, 1); // warm-up
            let warm = envoy.rss_kib().unwrap_or(0);
            let rps = wrk(envoy.port, &token, secs);
            let after = envoy.rss_kib().unwrap_or(0);
            eprintln!("rep {rep} {name}: {rps:.0} req/s, RSS {warm} -> {after} KiB");
            results[i].push(rps);
            rss[i].push((warm, after));
        }
    }
    let base = median(results[0].clone());
    println!("\n| arm | req/s (median of {reps}) | min-max | vs S2 | start to ready (s) | RSS warm -> end (MiB) |");
    println!("|---|---|---|---|---|---|");
    for (i, (name, _)) in arms.iter().enumerate() {
        let m = median(results[i].clone());
        let lo = results[i].iter().cloned().fold(f64::MAX, f64::min);
        let hi = results[i].iter().cloned().fold(0.0, f64::max);
        let up = median(startup[i].clone());
        let (w, a) = rss[i].last().copied().unwrap_or((0, 0));
        println!(
            "| {name} | {m:.0} | {lo:.0}-{hi:.0} | {:.2} | {up:.2} | {:.1} -> {:.1} |",
            m / base,
            w as f64 / 1024.0,
            a as f64 / 1024.0
        );
    }
    println!();
    for (i, (name, _)) in arms.iter().enumerate().skip(1) {
        let added_us = (1.0 / median(results[i].clone()) - 1.0 / base) * 1e6;
        println!("{name} adds {added_us:.1} µs per request over jwt_authn (1 worker, wrk -t1 -c16, {secs}s runs)");
    }
    let wasm = agentplane_e2e::wasm_path();
    println!(
        "agentplane.wasm: {} bytes",
        std::fs::metadata(wasm).unwrap().len()
    );
}
