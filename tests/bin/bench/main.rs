//! `./build.sh bench`: agentplane against the seed's chain and Envoy's native
//! filters, side by side, on one Envoy worker.
//!
//! Usage: agentplane-bench [seconds per run (default 10)] [repetitions (default 3)]
//!
//! Every arm runs the same Envoy binary with `--concurrency 1`, the same
//! upstream, the same RS256 token and the same request mix (four allowed
//! requests to three services, one denied for a missing permission). Arms
//! are interleaved per repetition; the table shows medians and min–max.
//!
//! - S1  router only (the floor)
//! - S2  + jwt_authn (local JWKS; every later arm has it too)
//! - S2R S2 + Envoy's native RBAC enforcing the permission rule (`envoy/bench/rbac.yaml`)
//! - S3L S2 + the seed's Lua half, input document built by hand (`envoy/bench/seed_lua.yaml`)
//! - S4  S2 + agentplane with the project's policies (default config,
//!   decision cache on)
//! - S4U S4 with the decision cache off: every request evaluated (the
//!   cost of a miss, e.g. a new token or path)
//! - S4S S4 + the agent's API key from OpenBao injected into every allowed
//!   request (cached after the first fetch)
//! - S4L / S4Ls S4 + the decision log through Envoy's access log (sink
//!   `access_log`, the shipped decision logger writing to the log file),
//!   every decision / 1% of allowed ones (denies always)
//! - S4LE S4L through Envoy's application log (sink `envoy_log`)
//!
//! Per arm: requests/s at saturation (wrk -t1 -c16), Envoy's own CPU time
//! per request (from /proc), p50/p99 latency at a fixed rate below
//! saturation (an open-loop generator in this file: each request's latency
//! counts from when it was due, so a stall is not hidden), start-to-ready
//! time and RSS. Then a soak: N requests through S4 with RSS sampled at
//! 100k and at the end.
//!
//! Environment: `AGENTPLANE_BENCH_RATE` (open-loop rate, default 2000/s),
//! `AGENTPLANE_BENCH_SOAK` (soak requests, default 1000000, 0 skips),
//! `AGENTPLANE_BENCH_WARMUP` (seconds of load before measuring, default 3),
//! `AGENTPLANE_BENCH_EXTRA="name=/path/a.wasm,..."` (more filter builds),
//! `AGENTPLANE_BENCH_SHADOW=/path/a.wasm` (a build with a shadow revision:
//! arms S4SH0 sample 0, S4SH sample 1, S4USH sample 1 with the cache off),
//! `AGENTPLANE_BENCH_ARMS=S2,S4` (only these arms; S2 must be among them),
//! `AGENTPLANE_BENCH_MIX=allowed` (only the allowed requests).
//!
//! Layout: [`render`] (each arm's Envoy configuration), [`load`] (wrk, the
//! open-loop generator, CPU and latency figures), [`agents`] (many agents
//! and the decision cache), [`mcp`], [`txn`] and [`fleet`] (their arms;
//! `AGENTPLANE_BENCH_ONLY=fleet`: S4 against the rate limit service), [`startup`]
//! (start-up and memory per VM, one worker and two), [`split`] (where a
//! miss goes under V8, by the filter's own clock), [`targets`] (this
//! run's figures against the targets).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod agents;
mod fleet;
mod load;
mod mcp;
mod render;
mod split;
mod startup;
mod targets;
mod txn;

use agents::*;
use fleet::*;
use load::*;
use mcp::*;
use render::*;
use split::*;
use startup::*;
use targets::*;
use txn::*;

use agentplane_e2e::{default_plugin_config, repo_root, Envoy, EnvoySetup, Idp, Upstream};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

/// The request mix: (path, allowed by the policy). One in five is denied.
const FULL_MIX: [(&str, bool); 5] = [
    ("/mcp://sentiment-analysis/analyze", true),
    ("/mcp://customer-lookup/customers/42", true),
    ("/mcp://hello-skill/hello?name=bench", true),
    ("/mcp://sentiment-analysis/analyze?lang=en", true),
    ("/mcp://web-search/search?q=envoy", false),
];

/// The mix in use: `AGENTPLANE_BENCH_MIX=allowed` drops the denied request
/// (a denied request skips the upstream hop, which flatters every arm that
/// denies; the allowed-only mix measures what authorization adds).
fn mix() -> &'static [(&'static str, bool)] {
    if std::env::var("AGENTPLANE_BENCH_MIX").as_deref() == Ok("allowed") {
        &FULL_MIX[..4]
    } else {
        &FULL_MIX
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Router,
    Jwt,
    Rbac,
    Lua,
    /// A do-nothing proxy-wasm filter in agentplane's place (`filter/noop`).
    Floor,
    Filter,
}

#[derive(Clone)]
struct Arm {
    name: String,
    kind: Kind,
    /// Whether the arm denies the mix's denied request.
    enforces: bool,
    wasm: Option<String>,
    plugin_config: Option<String>,
}

struct WrkRun {
    rps: f64,
    requests: u64,
    non2xx: u64,
}

#[derive(Default)]
struct Samples {
    rps: Vec<f64>,
    cpu_us: Vec<f64>,
    p50: Vec<f64>,
    p99: Vec<f64>,
    startup: Vec<f64>,
    rss: Vec<u64>,
}

/// One arm's medians in one workload.
#[derive(Debug, Clone)]
struct Row {
    workload: String,
    arm: String,
    rps: f64,
    cpu: f64,
    rss_mib: f64,
    start_s: f64,
    hit: Option<f64>,
}
fn main() {
    let mut args = std::env::args().skip(1);
    let secs: u32 = args.next().and_then(|a| a.parse().ok()).unwrap_or(10);
    let reps: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(3);
    let env_num = |k: &str, d: f64| -> f64 {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let rate = env_num("AGENTPLANE_BENCH_RATE", 2000.0);
    let soak = env_num("AGENTPLANE_BENCH_SOAK", 1_000_000.0) as u64;
    let warmup = env_num("AGENTPLANE_BENCH_WARMUP", 3.0).max(1.0) as u32;

    let idp = Idp::new();
    let token = idp.triage_token();
    let up = Upstream::start_unrecorded();
    let base_config = default_plugin_config();
    // S4S: the agent's API key from OpenBao, injected into every allowed
    // request of the mix (cached after the first).
    let bao = agentplane_e2e::Bao::start();
    bao.setup_agents(&idp);
    bao.put_agent_secret(
        "support-triage@clients",
        serde_json::json!({"api_key": "bench-key"}),
    );
    let with_secrets = agentplane_e2e::config_with_api_key(
        serde_json::json!({"cluster": "vault", "authority": "127.0.0.1"}),
        &["sentiment-analysis", "customer-lookup", "hello-skill"],
    );
    let setup = EnvoySetup {
        jwks: idp.jwks(),
        upstream_port: up.port,
        plugin_config: base_config.clone(),
        vault_port: bao.port,
    };
    if std::env::var("AGENTPLANE_BENCH_ONLY").as_deref() == Ok("mcp") {
        mcp_arms(&setup, &base_config, secs, reps, warmup, &idp);
        return;
    }
    if std::env::var("AGENTPLANE_BENCH_ONLY").as_deref() == Ok("split") {
        split_arms(&setup, &base_config, reps, &idp);
        return;
    }
    if std::env::var("AGENTPLANE_BENCH_ONLY").as_deref() == Ok("startup") {
        startup_arms(&setup, reps);
        return;
    }
    if std::env::var("AGENTPLANE_BENCH_ONLY").as_deref() == Ok("fleet") {
        fleet_arms(&setup, &base_config, secs, reps, warmup, &idp);
        return;
    }
    if std::env::var("AGENTPLANE_BENCH_ONLY").as_deref() == Ok("txn") {
        txn_arms(&setup, &base_config, secs, reps, warmup, &idp, &bao);
        return;
    }
    let mut uncached: serde_json::Value = serde_json::from_str(&base_config).unwrap();
    uncached["decision_cache"] = serde_json::json!({ "enabled": false });
    let logged = |sample: f64| {
        let mut c: serde_json::Value = serde_json::from_str(&base_config).unwrap();
        c["decision_log"] =
            serde_json::json!({"enabled": true, "sample_allowed": sample, "sink": "access_log"});
        c.to_string()
    };
    // Through Envoy's log: no `sink` key, so older filter builds take it too.
    let logged_envoy = {
        let mut c: serde_json::Value = serde_json::from_str(&base_config).unwrap();
        c["decision_log"] = serde_json::json!({"enabled": true});
        c.to_string()
    };
    if std::env::var("AGENTPLANE_BENCH_ONLY").as_deref() == Ok("agents") {
        let uncached = uncached.to_string();
        many_agents(
            &setup,
            &base_config,
            (&uncached, &logged(1.0), &logged_envoy),
            secs,
            reps,
            warmup,
            &idp,
        );
        return;
    }
    let arm = |name: &str, kind: Kind, enforces: bool| Arm {
        name: name.into(),
        kind,
        enforces,
        wasm: None,
        plugin_config: None,
    };
    let mut arms = vec![
        arm("S1 router only", Kind::Router, false),
        arm("S2 + jwt_authn", Kind::Jwt, false),
        arm("S2R S2 + native RBAC", Kind::Rbac, true),
        arm("S3L S2 + seed Lua (no OPA call)", Kind::Lua, false),
        arm("S4 S2 + agentplane", Kind::Filter, true),
        Arm {
            plugin_config: Some(uncached.to_string()),
            ..arm("S4U S4, decision cache off", Kind::Filter, true)
        },
        Arm {
            plugin_config: Some(with_secrets.to_string()),
            ..arm("S4S S4 + cached secret injection", Kind::Filter, true)
        },
        Arm {
            plugin_config: Some(logged(1.0)),
            ..arm("S4L S4 + decision log, every decision", Kind::Filter, true)
        },
        Arm {
            plugin_config: Some(logged(0.01)),
            ..arm("S4Ls S4 + decision log, 1% of allows", Kind::Filter, true)
        },
        Arm {
            plugin_config: Some(logged_envoy.clone()),
            ..arm("S4LE S4L through Envoy's log", Kind::Filter, true)
        },
    ];
    for extra in std::env::var("AGENTPLANE_BENCH_EXTRA")
        .unwrap_or_default()
        .split(',')
    {
        if let Some((name, path)) = extra.split_once('=') {
            arms.push(Arm {
                wasm: Some(path.to_string()),
                ..arm(&format!("S4 {name}"), Kind::Filter, true)
            });
            arms.push(Arm {
                wasm: Some(path.to_string()),
                plugin_config: Some(logged_envoy.clone()),
                ..arm(&format!("S4LE {name}"), Kind::Filter, true)
            });
        }
    }
    if let Ok(only) = std::env::var("AGENTPLANE_BENCH_ARMS") {
        let keep: Vec<&str> = only.split(',').collect();
        arms.retain(|a| keep.iter().any(|k| a.name.split(' ').next() == Some(*k)));
    }
    let script = wrk_script();
    let mut samples: Vec<Samples> = arms.iter().map(|_| Samples::default()).collect();
    for rep in 0..reps {
        // Each repetition starts one arm later, so no arm always runs
        // right after the same neighbour.
        for k in 0..arms.len() {
            let i = (k + rep) % arms.len();
            let a = &arms[i];
            let t0 = Instant::now();
            let envoy = Envoy::start_yaml(&render(a, &setup));
            eprintln!("{}: ready on port {}", a.name, envoy.port);
            let s = &mut samples[i];
            s.startup.push(t0.elapsed().as_secs_f64());
            probe(a, &envoy, &token);
            wrk(envoy.port, &token, warmup, &script); // warm-up (V8 tiers up hot code)
            let cpu0 = cpu_secs(envoy.pid());
            let run = wrk(envoy.port, &token, secs, &script);
            let cpu = cpu_secs(envoy.pid()) - cpu0;
            check_mix(a, &run);
            let lats = open_loop(envoy.port, &token, rate, f64::from(secs).min(10.0), 8);
            s.rps.push(run.rps);
            s.cpu_us.push(cpu * 1e6 / run.requests as f64);
            s.p50.push(pct(&lats, 0.50));
            s.p99.push(pct(&lats, 0.99));
            s.rss.push(envoy.rss_kib().unwrap_or(0));
            eprintln!(
                "rep {rep} {}: {:.0} req/s, {:.1} µs CPU/req, p50 {:.2} ms p99 {:.2} ms at {rate}/s, RSS {} KiB",
                a.name,
                run.rps,
                cpu * 1e6 / run.requests as f64,
                pct(&lats, 0.5),
                pct(&lats, 0.99),
                envoy.rss_kib().unwrap_or(0)
            );
        }
    }
    std::fs::remove_file(&script).ok();

    let s2i = arms
        .iter()
        .position(|a| a.kind == Kind::Jwt)
        .expect("the S2 arm");
    let s2 = median(samples[s2i].rps.clone());
    let s2_cpu = median(samples[s2i].cpu_us.clone());
    println!(
        "\n| arm | req/s (median of {reps}) | min–max | × S2 | added µs/req (from req/s) | Envoy CPU µs/req | added CPU µs/req | p50 / p99 ms at {rate:.0}/s | start to ready (s) | RSS (MiB) |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for (a, s) in arms.iter().zip(&samples) {
        let m = median(s.rps.clone());
        let (lo, hi) = range(&s.rps);
        let cpu = median(s.cpu_us.clone());
        println!(
            "| {} | {m:.0} | {lo:.0}–{hi:.0} | {:.2} | {:.1} | {cpu:.1} | {:.1} | {:.2} / {:.2} | {:.2} | {:.1} |",
            a.name,
            m / s2,
            (1.0 / m - 1.0 / s2) * 1e6,
            cpu - s2_cpu,
            median(s.p50.clone()),
            median(s.p99.clone()),
            median(s.startup.clone()),
            s.rss.last().copied().unwrap_or(0) as f64 / 1024.0
        );
    }
    println!(
        "wrk -t1 -c16, {secs} s runs after a {warmup} s warm-up, one Envoy worker; mix: {} requests, {} denied.",
        mix().len(),
        mix().iter().filter(|(_, ok)| !ok).count()
    );
    let wasm = agentplane_e2e::wasm_path();
    println!(
        "agentplane.wasm: {} bytes",
        std::fs::metadata(&wasm).unwrap().len()
    );

    let mut rows = many_agents(
        &setup,
        &base_config,
        (&uncached.to_string(), &logged(1.0), &logged_envoy),
        secs,
        reps,
        warmup,
        &idp,
    );
    if std::env::var("AGENTPLANE_BENCH_MCP").as_deref() != Ok("0") {
        mcp_arms(&setup, &base_config, secs, reps, warmup, &idp);
    }
    if std::env::var("AGENTPLANE_BENCH_TXN").as_deref() != Ok("0") {
        txn_arms(&setup, &base_config, secs, reps, warmup, &idp, &bao);
    }
    for (a, smp) in arms.iter().zip(&samples) {
        rows.push(Row {
            workload: "classic".into(),
            arm: a.name.split(' ').next().unwrap_or("").to_string(),
            rps: median(smp.rps.clone()),
            cpu: median(smp.cpu_us.clone()),
            rss_mib: smp.rss.last().copied().unwrap_or(0) as f64 / 1024.0,
            start_s: median(smp.startup.clone()),
            hit: None,
        });
    }
    let mut soaked = None;

    if soak > 0 {
        let a = arms
            .iter()
            .find(|a| a.kind == Kind::Filter)
            .expect("an agentplane arm");
        let envoy = Envoy::start_yaml(&render(a, &setup));
        let script = wrk_script();
        wrk(envoy.port, &token, 1, &script);
        let mut done = 0u64;
        let mut at_100k = None;
        let first_mark = soak.min(100_000);
        while done < soak {
            let left = soak - done;
            // Short runs near a sampling point, long ones otherwise.
            let target = if at_100k.is_none() {
                first_mark - done.min(first_mark)
            } else {
                left
            };
            let run_secs = ((target as f64 / 5000.0).ceil() as u32).clamp(1, 20);
            let run = wrk(envoy.port, &token, run_secs, &script);
            check_mix(a, &run);
            done += run.requests;
            if at_100k.is_none() && done >= first_mark {
                at_100k = Some((done, envoy.rss_kib().unwrap_or(0)));
            }
        }
        let end = envoy.rss_kib().unwrap_or(0);
        let (n1, r1) = at_100k.unwrap_or((0, 0));
        println!(
            "soak through S4: RSS {:.1} MiB after {n1} requests, {:.1} MiB after {done} ({:+.1}%)",
            r1 as f64 / 1024.0,
            end as f64 / 1024.0,
            (end as f64 / r1.max(1) as f64 - 1.0) * 100.0
        );
        soaked = Some((r1 as f64, end as f64));
        std::fs::remove_file(&script).ok();
    }
    targets(
        &rows,
        soaked,
        std::fs::metadata(&wasm).map(|m| m.len()).unwrap_or(0),
    );
}
