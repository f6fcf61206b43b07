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
//! - S4L / S4Ls S4 + the decision log in Envoy's log, every decision / 1% of
//!   allowed ones (denies always)
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
//! `AGENTPLANE_BENCH_ARMS=S2,S4` (only these arms; S2 must be among them),
//! `AGENTPLANE_BENCH_MIX=allowed` (only the allowed requests).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use agentplane_e2e::{
    default_plugin_config, render_envoy, repo_root, Envoy, EnvoySetup, Idp, Upstream,
};
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

const JWT: &str = "          - name: envoy.filters.http.jwt_authn";
const WASM: &str = "          - name: envoy.filters.http.wasm";
const ROUTER: &str = "          - name: envoy.filters.http.router";

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

struct Arm {
    name: String,
    kind: Kind,
    /// Whether the arm denies the mix's denied request.
    enforces: bool,
    wasm: Option<String>,
    plugin_config: Option<String>,
}

/// A filter snippet from `envoy/bench/`, indented into the filter list.
fn snippet(file: &str) -> String {
    let text = std::fs::read_to_string(repo_root().join("envoy/bench").join(file)).unwrap();
    let mut out = String::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        if !line.is_empty() {
            out.push_str("          ");
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// The shipped config's last route, which answers 403 itself.
const CATCH_ALL: &str = "              # Anything else never reaches an upstream.";

fn render(arm: &Arm, setup: &EnvoySetup) -> agentplane_e2e::RenderedEnvoy {
    let mut setup2 = EnvoySetup {
        jwks: setup.jwks.clone(),
        upstream_port: setup.upstream_port,
        plugin_config: setup.plugin_config.clone(),
        vault_port: setup.vault_port,
    };
    if let Some(pc) = &arm.plugin_config {
        setup2.plugin_config = pc.clone();
    }
    let mut r = render_envoy(&setup2, true);
    let y = &mut r.yaml;
    // No access log in any arm: log I/O would dilute every filter's cost.
    let a = y.find("          access_log:").unwrap();
    let b = y.find("          route_config:").unwrap();
    y.replace_range(a..b, "");
    if arm.kind != Kind::Filter {
        // Without agentplane nothing names the authorized service: route
        // every request to one service, as the chain it replaces did.
        let a = y.find(CATCH_ALL).unwrap();
        let b = a + y[a..].find("\n          http_filters:").unwrap();
        y.replace_range(
            a..b,
            "              - match: { prefix: \"/\" }\n                route: { cluster: \"service.hello-skill\", timeout: 30s }",
        );
    }
    if let Ok(rt) = std::env::var("AGENTPLANE_BENCH_RUNTIME") {
        *y = y.replace("envoy.wasm.runtime.v8", &format!("envoy.wasm.runtime.{rt}"));
    }
    let (w, rt) = (y.find(WASM).unwrap(), y.find(ROUTER).unwrap());
    match arm.kind {
        Kind::Router => {
            let j = y.find(JWT).unwrap();
            y.replace_range(j..rt, "");
        }
        Kind::Jwt => y.replace_range(w..rt, ""),
        Kind::Rbac => y.replace_range(w..rt, &snippet("rbac.yaml")),
        Kind::Lua => y.replace_range(w..rt, &snippet("seed_lua.yaml")),
        Kind::Floor => {
            let default = agentplane_e2e::wasm_path().display().to_string();
            *y = y.replace(&default, &noop_wasm());
        }
        Kind::Filter => {
            if let Some(path) = &arm.wasm {
                let default = agentplane_e2e::wasm_path().display().to_string();
                *y = y.replace(&default, path);
            }
        }
    }
    r
}

/// The do-nothing filter (`./build.sh bench` builds it).
fn noop_wasm() -> String {
    std::env::var("AGENTPLANE_NOOP_WASM").unwrap_or_else(|_| {
        repo_root()
            .join("target/wasm32-wasip1/release/noop.wasm")
            .display()
            .to_string()
    })
}

fn wrk_script() -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!("agentplane-bench-{}.lua", std::process::id()));
    let paths: Vec<String> = mix().iter().map(|(p, _)| format!("{p:?}")).collect();
    let script = format!(
        "local paths = {{{}}}\nlocal i = 0\nrequest = function()\n  i = i + 1\n  return wrk.format(\"GET\", paths[(i % #paths) + 1])\nend\n",
        paths.join(", ")
    );
    std::fs::write(&path, script).unwrap();
    path
}

struct WrkRun {
    rps: f64,
    requests: u64,
    non2xx: u64,
}

fn wrk(port: u16, token: &str, secs: u32, script: &std::path::Path) -> WrkRun {
    let out = Command::new("wrk")
        .args(["-t1", "-c16", &format!("-d{secs}s")])
        .args(["-H", &format!("authorization: Bearer {token}")])
        .arg("-s")
        .arg(script)
        .arg(format!("http://127.0.0.1:{port}"))
        .output()
        .expect("wrk (./build.sh bench installs it)");
    let text = String::from_utf8_lossy(&out.stdout);
    let field = |prefix: &str| -> Option<f64> {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(prefix))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
    };
    let rps = field("Requests/sec:").unwrap_or_else(|| panic!("no Requests/sec in:\n{text}"));
    let requests = text
        .lines()
        .find(|l| l.contains(" requests in "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no request count in:\n{text}"));
    assert!(
        !text.contains("Socket errors"),
        "connection errors during the run:\n{text}"
    );
    let non2xx = field("Non-2xx or 3xx responses:").unwrap_or(0.0) as u64;
    WrkRun {
        rps,
        requests,
        non2xx,
    }
}

/// The share of denied requests must match the mix: a misconfigured arm
/// that allows or denies everything would otherwise look fast.
fn check_mix(arm: &Arm, run: &WrkRun) {
    let share = run.non2xx as f64 / run.requests.max(1) as f64;
    let denied = mix().iter().filter(|(_, ok)| !ok).count() as f64 / mix().len() as f64;
    if arm.enforces {
        assert!(
            (share - denied).abs() < 0.02,
            "{}: {:.1}% of responses were non-2xx, expected {:.0}%",
            arm.name,
            share * 100.0,
            denied * 100.0
        );
    } else {
        assert_eq!(run.non2xx, 0, "{}: non-2xx responses", arm.name);
    }
}

/// utime + stime of a process, in seconds.
fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are 14 and 15.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    ticks / clk_tck()
}

fn clk_tck() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// One keep-alive request; returns the status.
fn roundtrip(reader: &mut BufReader<TcpStream>, path: &str, token: &str) -> std::io::Result<u16> {
    let req =
        format!("GET {path} HTTP/1.1\r\nhost: localhost\r\nauthorization: Bearer {token}\r\n\r\n");
    reader.get_mut().write_all(req.as_bytes())?;
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line {line:?}")))?;
    let mut len = 0usize;
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            return Err(std::io::Error::other("closed"));
        }
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                len = v.trim().parse().unwrap_or(0);
            }
        }
    }
    let mut body = vec![0u8; len];
    reader.read_exact(&mut body)?;
    Ok(status)
}

/// Open loop: `conns` connections, each sending on a fixed schedule so the
/// total is `rate` requests/s; a request's latency counts from when it was
/// due, not from when it was sent. Returns sorted latencies in µs.
fn open_loop(port: u16, token: &str, rate: f64, secs: f64, conns: usize) -> Vec<u64> {
    let interval = Duration::from_secs_f64(conns as f64 / rate);
    let start = Instant::now() + Duration::from_millis(50);
    let end = start + Duration::from_secs_f64(secs);
    let threads: Vec<_> = (0..conns)
        .map(|c| {
            let token = token.to_string();
            std::thread::spawn(move || {
                let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
                stream.set_nodelay(true).unwrap();
                let mut reader = BufReader::new(stream);
                let mut lats = Vec::new();
                let offset = interval.mul_f64(c as f64 / conns as f64);
                for k in 0u32.. {
                    let due = start + offset + interval * k;
                    if due >= end {
                        break;
                    }
                    let now = Instant::now();
                    if due > now {
                        std::thread::sleep(due - now);
                    }
                    let (path, ok) = mix()[(k as usize + c) % mix().len()];
                    let status = roundtrip(&mut reader, path, &token).unwrap();
                    assert!(status < 500, "{path}: status {status}");
                    let _ = ok;
                    lats.push(due.elapsed().as_micros() as u64);
                }
                lats
            })
        })
        .collect();
    let mut all: Vec<u64> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    all.sort_unstable();
    all
}

fn pct(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i] as f64 / 1000.0
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn range(v: &[f64]) -> (f64, f64) {
    (
        v.iter().cloned().fold(f64::MAX, f64::min),
        v.iter().cloned().fold(0.0, f64::max),
    )
}

/// Checks that an arm answers the mix as it should before measuring it.
fn probe(arm: &Arm, envoy: &Envoy, token: &str) {
    for &(path, ok) in mix() {
        let r = envoy.request(
            "GET",
            path,
            &[("authorization", &format!("Bearer {token}"))],
        );
        let want_ok = ok || !arm.enforces;
        if ok && arm.name.starts_with("S4S") {
            assert!(
                r.body.contains("bench-key"),
                "{path}: no secret upstream: {}",
                r.body
            );
        }
        assert_eq!(
            r.status == 200,
            want_ok,
            "{} {path}: status {} ({})",
            arm.name,
            r.status,
            r.body
        );
    }
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
    if std::env::var("AGENTPLANE_BENCH_ONLY").as_deref() == Ok("txn") {
        txn_arms(&setup, &base_config, secs, reps, warmup, &idp, &bao);
        return;
    }
    let mut uncached: serde_json::Value = serde_json::from_str(&base_config).unwrap();
    uncached["decision_cache"] = serde_json::json!({ "enabled": false });
    let logged = |sample: f64| {
        let mut c: serde_json::Value = serde_json::from_str(&base_config).unwrap();
        c["decision_log"] = serde_json::json!({"enabled": true, "sample_allowed": sample});
        c.to_string()
    };
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
        &uncached.to_string(),
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

/// The realistic workloads of issue 10, side by side on one worker:
///
/// - MIX: 100 agents (80 with the permission, 20 without), the four
///   allowed paths of the classic mix, every request distinct (a counter in
///   the query string). 20% are denied.
/// - MIX-hard: 2,000 agents (20% without the permission) × four targets
///   differing in service, method and path: the 8,000 combinations the
///   policy tells apart outnumber the decision cache, and each comes back
///   only after 8,000 other requests.
///
/// Arms: S2, S2R, S3L, S0W (do-nothing wasm filter: Envoy's own wasm
/// cost), S4 (cache on) and S4U (cache off). The decision cache's hit ratio
/// is read from Envoy's stats around each measured run.
fn many_agents(
    setup: &EnvoySetup,
    base_config: &str,
    uncached: &str,
    secs: u32,
    reps: usize,
    warmup: u32,
    idp: &Idp,
) -> Vec<Row> {
    let mut out = Vec::new();
    // MIX: 100 agents. MIX-hard: 2,000, so that agent × target keys (8,000)
    // outnumber the decision cache (1,024 entries by default) and each
    // comes back only after 8,000 other requests.
    let mint = |n: usize, kind: &str| agent_tokens(idp, n, kind);
    let few = mint(100, "support");
    let many = mint(2000, "support");
    // The same agents as `metered` ones: the shipped data gives that type
    // one rate limit per agent (10,000/s, never reached here), so S4Q
    // counts every allowed request in shared data and S4 does not.
    let few_metered = mint(100, "metered");
    let many_metered = mint(2000, "metered");
    let arm = |name: &str, kind: Kind, enforces: bool, pc: Option<&str>| Arm {
        name: name.into(),
        kind,
        enforces,
        wasm: None,
        plugin_config: pc.map(str::to_string),
    };
    let mut arms = vec![
        arm("S2 + jwt_authn", Kind::Jwt, false, None),
        arm("S2R S2 + native RBAC", Kind::Rbac, true, None),
        arm("S3L S2 + seed Lua (no OPA call)", Kind::Lua, false, None),
        arm("S0W S2 + do-nothing wasm filter", Kind::Floor, false, None),
        arm("S4 S2 + agentplane", Kind::Filter, true, Some(base_config)),
        arm(
            "S4U S4, decision cache off",
            Kind::Filter,
            true,
            Some(uncached),
        ),
        arm(
            "S4Q S4, one rate limit per agent",
            Kind::Filter,
            true,
            Some(base_config),
        ),
    ];
    if let Ok(only) = std::env::var("AGENTPLANE_BENCH_ARMS") {
        let keep: Vec<&str> = only.split(',').collect();
        arms.retain(|a| keep.iter().any(|k| a.name.split(' ').next() == Some(*k)));
    }
    let mut run_no = 0u64;
    for (workload, hard) in [("MIX", false), ("MIX-hard", true)] {
        let mut rows: Vec<Samples> = arms.iter().map(|_| Samples::default()).collect();
        let mut hits: Vec<(f64, f64)> = vec![(0.0, 0.0); arms.len()];
        for rep in 0..reps {
            for k in 0..arms.len() {
                let i = (k + rep) % arms.len();
                let a = &arms[i];
                let t0 = Instant::now();
                let envoy = Envoy::start_yaml(&render(a, setup));
                rows[i].startup.push(t0.elapsed().as_secs_f64());
                let mut go = |secs: u32| {
                    run_no += 1;
                    let tokens = match (hard, a.name.starts_with("S4Q")) {
                        (false, false) => &few,
                        (true, false) => &many,
                        (false, true) => &few_metered,
                        (true, true) => &many_metered,
                    };
                    let script = many_script(tokens, hard, run_no * 10_000_000);
                    let r = wrk(envoy.port, "unused", secs, &script);
                    std::fs::remove_file(&script).ok();
                    r
                };
                go(warmup);
                let (h0, m0) = cache_counters(&envoy);
                let cpu0 = cpu_secs(envoy.pid());
                let run = go(secs);
                let cpu = cpu_secs(envoy.pid()) - cpu0;
                let (h1, m1) = cache_counters(&envoy);
                hits[i].0 += h1 - h0;
                hits[i].1 += m1 - m0;
                let denied = run.non2xx as f64 / run.requests.max(1) as f64;
                let want = if a.enforces { 0.2 } else { 0.0 };
                assert!(
                    (denied - want).abs() < 0.03,
                    "{workload} {}: {:.1}% denied, expected {:.0}%",
                    a.name,
                    denied * 100.0,
                    want * 100.0
                );
                rows[i].rps.push(run.rps);
                rows[i].cpu_us.push(cpu * 1e6 / run.requests as f64);
                rows[i].rss.push(envoy.rss_kib().unwrap_or(0));
                eprintln!(
                    "{workload} rep {rep} {}: {:.0} req/s, {:.1} µs CPU/req",
                    a.name,
                    run.rps,
                    cpu * 1e6 / run.requests as f64
                );
            }
        }
        let s2 = median(rows[0].rps.clone());
        let s2_cpu = median(rows[0].cpu_us.clone());
        let floor = arms.iter().position(|a| a.kind == Kind::Floor).unwrap_or(0);
        let floor_cpu = median(rows[floor].cpu_us.clone());
        let agents = if hard { 2000 } else { 100 };
        println!("\n{workload}: {agents} agents, every request distinct, 20% denied (S4 arms)");
        println!("| arm | req/s (median of {reps}) | min–max | × S2 | added CPU µs/req over S2 | over S0W | RSS (MiB) | start to ready (s) | decision-cache hit ratio |");
        println!("|---|---|---|---|---|---|---|---|---|");
        for (i, (a, r)) in arms.iter().zip(&rows).enumerate() {
            let m = median(r.rps.clone());
            let (lo, hi) = range(&r.rps);
            let cpu = median(r.cpu_us.clone());
            let ratio = if a.kind == Kind::Filter && hits[i].0 + hits[i].1 > 0.0 {
                format!("{:.1}%", hits[i].0 * 100.0 / (hits[i].0 + hits[i].1))
            } else {
                "—".into()
            };
            println!(
                "| {} | {m:.0} | {lo:.0}–{hi:.0} | {:.2} | {:.1} | {:.1} | {:.1} | {:.2} | {ratio} |",
                a.name,
                m / s2,
                cpu - s2_cpu,
                cpu - floor_cpu,
                r.rss.last().copied().unwrap_or(0) as f64 / 1024.0,
                median(r.startup.clone()),
            );
            out.push(Row {
                workload: workload.to_string(),
                arm: a.name.split(' ').next().unwrap_or("").to_string(),
                rps: m,
                cpu,
                rss_mib: r.rss.last().copied().unwrap_or(0) as f64 / 1024.0,
                start_s: median(r.startup.clone()),
                hit: (hits[i].0 + hits[i].1 > 0.0).then(|| hits[i].0 / (hits[i].0 + hits[i].1)),
            });
        }
    }
    out
}

/// One MCP arm: name, path, body, the upstream's answer, Envoy's native
/// MCP filter in front, and the arm it is compared with.
type McpArm<'a> = (&'a str, &'a str, &'a str, Option<&'a str>, bool, usize);

/// Issue 11's MCP arm: the same ~1 KB POST through agentplane, once to a
/// plain service (S4P: the body streams through unread) and once as an
/// MCP `tools/call` to a service with `"protocol": "mcp"` (S4M: the body
/// is buffered, parsed and becomes `input.mcp`). One token, a constant
/// body: the difference is the MCP machinery, not the policy.
fn mcp_arms(setup: &EnvoySetup, base_config: &str, secs: u32, reps: usize, warmup: u32, idp: &Idp) {
    let mut cfg: serde_json::Value = serde_json::from_str(base_config).unwrap();
    agentplane_e2e::add_tickets_mcp(&mut cfg);
    let cfg = cfg.to_string();
    let token = idp.agent_token(
        "support-triage@clients",
        "customer-success",
        "support",
        "production",
        &["skills:invoke", "tools:call", "tools:list"],
    );
    let args = format!(
        r#"{{"team":"customer-success","id":"T-1","note":"{}"}}"#,
        "x".repeat(900)
    );
    let body = format!(
        r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{{"name":"lookup_ticket","arguments":{args}}}}}"#
    );
    // tools/list with 50 tools in the server's answer (the echo upstream
    // answers with x-test-reply), 10 of them denied by the shipped rules.
    let tools: Vec<String> = (0..50)
        .map(|i| {
            let name = match i % 5 {
                0 => format!("run_shell_{i}"),
                _ => format!("tool_{i}"),
            };
            format!(r#"{{"name":"{name}","description":"tool number {i}","inputSchema":{{"type":"object"}}}}"#)
        })
        .collect();
    let list_reply = format!(
        r#"{{"jsonrpc":"2.0","id":1,"result":{{"tools":[{}]}}}}"#,
        tools.join(",")
    );
    let list_body = r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#.to_string();
    let script = |path: &str, body: &str, reply: Option<&str>| {
        let p = std::env::temp_dir().join(format!(
            "agentplane-bench-mcp-{}-{}-{}.lua",
            std::process::id(),
            path.len(),
            body.len()
        ));
        let reply = reply
            .map(|r| format!("wrk.headers[\"x-test-reply\"] = {r:?}\n"))
            .unwrap_or_default();
        std::fs::write(
            &p,
            format!(
                "wrk.method = \"POST\"\nwrk.body = {body:?}\nwrk.headers[\"content-type\"] = \"application/json\"\nwrk.headers[\"accept\"] = \"application/json, text/event-stream\"\n{reply}request = function() return wrk.format(nil, {path:?}) end\n"
            ),
        )
        .unwrap();
        p
    };
    // (name, path, body, upstream answer, Envoy's native MCP filter in
    // front, the arm it is compared with)
    let arms: [McpArm; 5] = [
        (
            "S4P same POST, plain service",
            "/mcp://hello-skill/call",
            &body,
            None,
            false,
            0,
        ),
        (
            "S4M same POST as MCP tools/call",
            "/mcp://tickets-mcp/mcp",
            &body,
            None,
            false,
            0,
        ),
        (
            "S4P-list tools/list answer (50 tools), plain service",
            "/mcp://hello-skill/call",
            &list_body,
            Some(&list_reply),
            false,
            2,
        ),
        (
            "S4M-list tools/list, 50 tools filtered",
            "/mcp://tickets-mcp/mcp",
            &list_body,
            Some(&list_reply),
            false,
            2,
        ),
        (
            "S4N same POST, plain service, Envoy's MCP filter in front",
            "/mcp://hello-skill/call",
            &body,
            None,
            true,
            0,
        ),
    ];
    let arm = Arm {
        name: "S4".into(),
        kind: Kind::Filter,
        enforces: true,
        wasm: None,
        plugin_config: Some(cfg),
    };
    let mut rows: Vec<Samples> = arms.iter().map(|_| Samples::default()).collect();
    for rep in 0..reps {
        for k in 0..arms.len() {
            let i = (k + rep) % arms.len();
            let (name, path, b, reply, native, _) = arms[i];
            let mut rendered = render(&arm, setup);
            if native {
                let w = rendered.yaml.find(WASM).unwrap();
                rendered.yaml.insert_str(w, &snippet("native_mcp.yaml"));
            }
            let envoy = Envoy::start_yaml(&rendered);
            let sc = script(path, b, reply);
            wrk(envoy.port, &token, warmup, &sc);
            let cpu0 = cpu_secs(envoy.pid());
            let run = wrk(envoy.port, &token, secs, &sc);
            let cpu = cpu_secs(envoy.pid()) - cpu0;
            std::fs::remove_file(&sc).ok();
            assert_eq!(run.non2xx, 0, "{name}: every request must be allowed");
            rows[i].rps.push(run.rps);
            rows[i].cpu_us.push(cpu * 1e6 / run.requests as f64);
            eprintln!("MCP rep {rep} {name}: {:.0} req/s", run.rps);
        }
    }
    println!(
        "\nMCP: one ~1 KB tools/call ({} bytes), one token, both arms allowed",
        body.len()
    );
    println!("| arm | req/s (median of {reps}) | Envoy CPU µs/req | added over its plain arm |");
    println!("|---|---|---|---|");
    for ((name, .., base), r) in arms.iter().zip(&rows) {
        let cpu = median(r.cpu_us.clone());
        let base = median(rows[*base].cpu_us.clone());
        println!(
            "| {name} | {:.0} | {cpu:.1} | {:.1} |",
            median(r.rps.clone()),
            cpu - base
        );
    }
}

/// Tokens for `n` agents of type `kind`, every fifth without the
/// permission the mix needs (20% denied).
fn agent_tokens(idp: &Idp, n: usize, kind: &str) -> Vec<String> {
    (0..n)
        .map(|i| {
            let perms: &[&str] = if i % 5 == 4 {
                &[]
            } else {
                &["skills:invoke", "data:read"]
            };
            idp.agent_token(
                &format!("agent-{i:04}@clients"),
                "customer-success",
                kind,
                "production",
                perms,
            )
        })
        .collect()
}

/// Transaction tokens (issue 14), side by side on one worker, each arm on
/// three workloads: the classic mix (one agent, four allowed requests to
/// three services, one denied), MIX (100 agents, every request distinct,
/// 20% denied) and MIX-hard (2,000 agents × three services: 4,800 allowed
/// (agent, service) pairs outnumber the 4,096 tokens a worker keeps, so
/// tokens are signed again and again):
///
/// - S4   the three services without tokens (the same config otherwise)
/// - S4T  a Txn-Token on each: one signature per (agent, service) per
///   30 s, reused in between, and `x-decision-id` per request
/// - S4T0 the same with reuse off (`reuse_s` 0): a signature per allowed
///   request, so (S4T0 − S4T) / allowed share is the cost of one
fn txn_arms(
    setup: &EnvoySetup,
    base_config: &str,
    secs: u32,
    reps: usize,
    warmup: u32,
    idp: &Idp,
    bao: &agentplane_e2e::Bao,
) {
    let (vault_token, _) = bao.setup_txn_signing("bench-1");
    let config = |txn: Option<u64>| {
        let mut c: serde_json::Value = serde_json::from_str(base_config).unwrap();
        c["vault"] = serde_json::json!({"cluster": "vault", "authority": "127.0.0.1"});
        c["txn_token"] = serde_json::json!({
            "issuer": "https://gateway.bench", "audience": "bench", "ttl_s": 60,
            "reuse_s": txn.unwrap_or(30),
        });
        if txn.is_some() {
            for svc in ["sentiment-analysis", "customer-lookup", "hello-skill"] {
                c["resources"][svc]["txn_token"] = serde_json::json!(true);
            }
        }
        c.to_string()
    };
    let arms: [(&str, String); 3] = [
        ("S4", config(None)),
        ("S4T", config(Some(30))),
        ("S4T0", config(Some(0))),
    ];
    let one = idp.triage_token();
    let many = agent_tokens(idp, 100, "support");
    let hard = agent_tokens(idp, 2000, "support");
    let workloads = ["classic", "MIX", "MIX-hard"];
    let mut rows: Vec<Vec<Samples>> = workloads
        .iter()
        .map(|_| arms.iter().map(|_| Samples::default()).collect())
        .collect();
    let mut minted = [[0f64; 3]; 3];
    let mut served = [[0f64; 3]; 3];
    let mut start = 0u64;
    for rep in 0..reps {
        for k in 0..arms.len() {
            let i = (k + rep) % arms.len();
            let (name, pc) = &arms[i];
            let a = Arm {
                name: name.to_string(),
                kind: Kind::Filter,
                enforces: true,
                wasm: None,
                plugin_config: Some(pc.clone()),
            };
            let mut rendered = render(&a, setup);
            rendered
                .env
                .push(("AGENTPLANE_VAULT_TOKEN".into(), vault_token.clone()));
            let envoy = Envoy::start_yaml(&rendered);
            // The key loads after configure: wait for the JWKS.
            let t0 = Instant::now();
            while agentplane_e2e::try_http(
                envoy.port,
                "GET",
                "/.well-known/agentplane/jwks.json",
                &[],
                "",
            )
            .map(|r| r.status)
                != Ok(200)
            {
                assert!(
                    t0.elapsed() < Duration::from_secs(20),
                    "{name}: key never loaded"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
            for (w, _) in workloads.iter().enumerate() {
                start += 10_000_000;
                let script = match w {
                    0 => wrk_script(),
                    1 => many_script(&many, false, start),
                    _ => many_script(&hard, true, start),
                };
                wrk(envoy.port, &one, warmup, &script);
                let m0 = txn_minted(&envoy);
                let cpu0 = cpu_secs(envoy.pid());
                let run = wrk(envoy.port, &one, secs, &script);
                let cpu = cpu_secs(envoy.pid()) - cpu0;
                std::fs::remove_file(&script).ok();
                check_mix(&a, &run);
                rows[w][i].rps.push(run.rps);
                rows[w][i].cpu_us.push(cpu * 1e6 / run.requests as f64);
                minted[w][i] += txn_minted(&envoy) - m0;
                served[w][i] += (run.requests - run.non2xx) as f64;
                eprintln!(
                    "txn rep {rep} {name} {}: {:.0} req/s, {:.1} µs CPU/req",
                    workloads[w],
                    run.rps,
                    cpu * 1e6 / run.requests as f64
                );
            }
        }
    }
    println!("\nTransaction tokens: Envoy CPU µs per request, medians of {reps}, one worker");
    println!("| workload | S4 | S4T (reused) | added | S4T0 (signed per request) | one signature | signatures per allowed request in S4T's measured runs |");
    println!("|---|---|---|---|---|---|---|");
    for (w, name) in workloads.iter().enumerate() {
        let cpu = |i: usize| median(rows[w][i].cpu_us.clone());
        let allowed = 0.8;
        println!(
            "| {name} | {:.1} | {:.1} | {:+.1} | {:.1} | {:.1} | {:.4} |",
            cpu(0),
            cpu(1),
            cpu(1) - cpu(0),
            cpu(2),
            (cpu(2) - cpu(1)) / allowed,
            minted[w][1] / served[w][1].max(1.0)
        );
    }
    println!(
        "agentplane.wasm: {} bytes",
        std::fs::metadata(agentplane_e2e::wasm_path())
            .map(|m| m.len())
            .unwrap_or(0)
    );
}

fn txn_minted(envoy: &Envoy) -> f64 {
    envoy
        .admin("/stats?filter=agentplane.txn_token.minted")
        .lines()
        .find_map(|l| {
            l.split_once("agentplane.txn_token.minted: ")
                .map(|(_, v)| v)
        })
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
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

/// Issue 10's targets against this run's figures.
fn targets(rows: &[Row], soak: Option<(f64, f64)>, wasm_bytes: u64) {
    let get = |w: &str, a: &str| rows.iter().find(|r| r.workload == w && r.arm == a);
    let mut lines: Vec<(String, String, String, Option<bool>)> = Vec::new();
    for w in ["MIX", "MIX-hard"] {
        if let (Some(q), Some(s4)) = (get(w, "S4Q"), get(w, "S4")) {
            let d = q.cpu - s4.cpu;
            lines.push((
                format!("{w}: one rate limit per agent, S4Q CPU over S4 (issue 12)"),
                "≤ 5 µs".into(),
                format!("{d:.1} µs"),
                Some(d <= 5.0),
            ));
        }
    }
    let mut ratio = |name: &str, w: &str, a: &str, b: &str, min: f64| {
        if let (Some(x), Some(y)) = (get(w, a), get(w, b)) {
            let v = x.rps / y.rps;
            let hit = x
                .hit
                .map(|h| format!(", hit ratio {:.1}%", h * 100.0))
                .unwrap_or_default();
            lines.push((
                name.into(),
                format!("≥ {min:.2}"),
                format!("{v:.2}{hit}"),
                Some(v >= min),
            ));
        }
    };
    ratio("MIX, cache on: S4 × S2", "MIX", "S4", "S2", 0.80);
    ratio("MIX, cache off: S4U × S3L", "MIX", "S4U", "S3L", 1.0);
    ratio("MIX-hard, cache on: S4 × S3L", "MIX-hard", "S4", "S3L", 1.0);
    ratio(
        "one token (classic mix): S4 × S2",
        "classic",
        "S4",
        "S2",
        0.90,
    );
    if let (Some(x), Some(f)) = (get("MIX", "S4"), get("MIX", "S0W")) {
        let v = x.cpu - f.cpu;
        lines.push((
            "MIX: S4 CPU over the do-nothing filter".into(),
            "≤ 10 µs/req".into(),
            format!("{v:.1} µs/req"),
            Some(v <= 10.0),
        ));
    }
    if let (Some(x), Some(y)) = (get("MIX", "S4"), get("MIX", "S2")) {
        let v = x.rss_mib - y.rss_mib;
        lines.push((
            "memory: S4 RSS over S2 (one worker)".into(),
            "≤ 40 MiB".into(),
            format!("{v:.1} MiB"),
            Some(v <= 40.0),
        ));
        lines.push((
            "start to ready (one pinned core)".into(),
            "≤ 1 s".into(),
            format!("{:.2} s", x.start_s),
            Some(x.start_s <= 1.0),
        ));
    }
    if let Some((a, b)) = soak {
        let v = (b / a.max(1.0) - 1.0) * 100.0;
        lines.push((
            "flat RSS over the soak (100k → end)".into(),
            "≤ +5%".into(),
            format!("{v:+.1}%"),
            Some(v <= 5.0),
        ));
    }
    let mib = wasm_bytes as f64 / 1_000_000.0;
    lines.push((
        "filter size".into(),
        "≤ 2.5 MB".into(),
        format!("{mib:.2} MB"),
        Some(mib <= 2.5),
    ));
    println!("\nTargets (issue 10), this run:");
    println!("| target | wanted | measured | met |");
    println!("|---|---|---|---|");
    for (name, want, got, met) in lines {
        let met = match met {
            Some(true) => "yes",
            Some(false) => "**no**",
            None => "—",
        };
        println!("| {name} | {want} | {got} | {met} |");
    }
    println!("(100k agents vs 10 and regorus vs OPA per evaluation: the native runs printed after this.)");
}

/// `agentplane.decision_cache.hit` and `.miss` from Envoy's stats (which
/// shows them as `wasmcustom.agentplane...`).
fn cache_counters(envoy: &Envoy) -> (f64, f64) {
    let stats = envoy.admin("/stats?filter=agentplane.decision_cache");
    let get = |name: &str| {
        stats
            .lines()
            .find_map(|l| l.split_once(&format!("{name}: ")).map(|(_, v)| v))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0.0)
    };
    (
        get("agentplane.decision_cache.hit"),
        get("agentplane.decision_cache.miss"),
    )
}

/// A wrk script: request `i` (counting from `start`, so no two runs repeat
/// a request) goes as agent `i % 100` to a distinct URL.
fn many_script(tokens: &[String], hard: bool, start: u64) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!(
        "agentplane-bench-many-{}-{start}.lua",
        std::process::id()
    ));
    let toks: Vec<String> = tokens.iter().map(|t| format!("\"Bearer {t}\"")).collect();
    let body = if hard {
        "local targets = {{\"GET\", \"/mcp://customer-lookup/customers/\"}, {\"POST\", \"/mcp://sentiment-analysis/analyze/\"}, {\"POST\", \"/mcp://hello-skill/hello/\"}, {\"GET\", \"/mcp://sentiment-analysis/models/\"}}\n\
         request = function()\n  i = i + 1\n  local t = targets[(math.floor(i / #tokens) % #targets) + 1]\n  return wrk.format(t[1], t[2] .. i, {[\"authorization\"] = tokens[(i % #tokens) + 1]})\nend\n"
    } else {
        "local paths = {\"/mcp://sentiment-analysis/analyze?n=\", \"/mcp://customer-lookup/customers/42?n=\", \"/mcp://hello-skill/hello?name=bench&n=\", \"/mcp://sentiment-analysis/analyze?lang=en&n=\"}\n\
         request = function()\n  i = i + 1\n  local p = paths[(math.floor(i / 100) % #paths) + 1]\n  return wrk.format(\"GET\", p .. i, {[\"authorization\"] = tokens[(i % #tokens) + 1]})\nend\n"
    };
    let script = format!(
        "local tokens = {{{}}}\nlocal i = {start}\n{body}",
        toks.join(", ")
    );
    std::fs::write(&path, script).unwrap();
    path
}
