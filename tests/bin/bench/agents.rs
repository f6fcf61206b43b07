//! Many agents: the mix from many tokens (the decision cache's hit rate
//! and cost when it cannot hold everyone), and the tokens and wrk script
//! that drive it.

use super::*;

/// The realistic workloads, side by side on one worker:
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
/// cost), S4 (cache on), S4U (cache off), S4Q (a rate limit per agent),
/// S4L (every decision logged through Envoy's access log) and S4LE (through
/// Envoy's application log). The decision cache's hit ratio is read from
/// Envoy's stats around each measured run.
pub(crate) fn many_agents(
    setup: &EnvoySetup,
    base_config: &str,
    (uncached, logged, logged_envoy): (&str, &str, &str),
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
        arm(
            "S4L S4 + decision log, every decision",
            Kind::Filter,
            true,
            Some(logged),
        ),
        arm(
            "S4LE S4L through Envoy's log",
            Kind::Filter,
            true,
            Some(logged_envoy),
        ),
    ];
    // Other filter builds side by side (`AGENTPLANE_BENCH_EXTRA`), with the
    // cache on and off: a before/after comparison in one run.
    for extra in std::env::var("AGENTPLANE_BENCH_EXTRA")
        .unwrap_or_default()
        .split(',')
    {
        if let Some((name, path)) = extra.split_once('=') {
            for (arm_name, pc) in [
                ("S4", base_config),
                ("S4U", uncached),
                ("S4LE", logged_envoy),
            ] {
                arms.push(Arm {
                    wasm: Some(path.to_string()),
                    ..arm(&format!("{arm_name} {name}"), Kind::Filter, true, Some(pc))
                });
            }
        }
    }
    // A build carrying a shadow revision (`AGENTPLANE_BENCH_SHADOW`): with
    // the shadow deciding every request (cache on and off), and with it
    // off, what it costs when off.
    let with_sample = |pc: &str, sample: f64| {
        let mut v: serde_json::Value = serde_json::from_str(pc).unwrap();
        v["policy"]["shadow_sample"] = sample.into();
        v.to_string()
    };
    let shadow_configs = [
        ("S4SH0", with_sample(base_config, 0.0)),
        ("S4SH", with_sample(base_config, 1.0)),
        ("S4USH", with_sample(uncached, 1.0)),
    ];
    if let Ok(path) = std::env::var("AGENTPLANE_BENCH_SHADOW") {
        for (name, pc) in &shadow_configs {
            arms.push(Arm {
                wasm: Some(path.clone()),
                ..arm(name, Kind::Filter, true, Some(pc))
            });
        }
    }
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

/// Tokens for `n` agents of type `kind`, every fifth without the
/// permission the mix needs (20% denied).
pub(crate) fn agent_tokens(idp: &Idp, n: usize, kind: &str) -> Vec<String> {
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

/// `agentplane.decision_cache.hit` and `.miss` from Envoy's stats (which
/// shows them as `wasmcustom.agentplane...`).
pub(crate) fn cache_counters(envoy: &Envoy) -> (f64, f64) {
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
pub(crate) fn many_script(tokens: &[String], hard: bool, start: u64) -> std::path::PathBuf {
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
