//! Rate limits and in-flight caps through real Envoy with two workers: one
//! bucket per key for the whole proxy, drawn from by both workers.
//!
//! The shipped policy gives `experimental` agents 5 requests/s with a
//! burst of 10, and `batch-runner@clients` 2 requests in flight.

use agentplane_e2e::envoy::yaml;
use agentplane_e2e::{default_plugin_config, render_envoy, EnvoySetup, Idp, Stack};
use std::time::{Duration, Instant};

/// Envoy with two workers and the echo upstream.
fn two_workers() -> Stack {
    two_workers_with(default_plugin_config())
}

fn two_workers_with(plugin_config: String) -> Stack {
    Stack::start_workers(&plugin_config, 2)
}

/// A bearer token for agent `sub` of team customer-success.
fn bearer(p: &Stack, sub: &str, kind: &str, perms: &[&str]) -> String {
    let t = p
        .idp
        .agent_token(sub, "customer-success", kind, "production", perms);
    format!("Bearer {t}")
}

/// The limit holds for the whole proxy, not per worker: 32 clients on
/// their own connections (spread over both workers) hammer for 2 s; the
/// agent gets its burst plus its rate over the time it tried, within one
/// request either way, where two per-worker buckets would have given it
/// about twice that. Requests the policy refuses never count.
#[test]
fn a_looping_agent_gets_its_burst_plus_its_rate_across_workers() {
    let p = two_workers();
    let lab = bearer(
        &p,
        "lab-1@clients",
        "experimental",
        &["skills:invoke", "data:write"],
    );
    // Refused by the policy (experimental agents may not write data):
    // these consume nothing.
    for _ in 0..20 {
        let r = p
            .envoy
            .request("POST", "/mcp://customer-data/x", &[("authorization", &lab)]);
        assert_eq!(r.status, 403, "{r:?}");
    }
    let port = p.envoy.port;
    let start = Instant::now();
    let run = Duration::from_secs(2);
    let clients: Vec<_> = (0..32)
        .map(|_| {
            let lab = lab.clone();
            std::thread::spawn(move || {
                let mut seen = Vec::new();
                while start.elapsed() < run {
                    let r = agentplane_e2e::http(
                        port,
                        "POST",
                        "/mcp://sentiment-analysis/x",
                        &[("authorization", &lab)],
                        "",
                    );
                    seen.push(r);
                }
                seen
            })
        })
        .collect();
    let all: Vec<_> = clients
        .into_iter()
        .flat_map(|c| c.join().unwrap())
        .collect();
    let tried = start.elapsed().as_secs_f64();
    let allowed = all.iter().filter(|r| r.status == 200).count() as f64;
    let limited: Vec<_> = all.iter().filter(|r| r.status == 429).collect();
    assert_eq!(
        allowed as usize + limited.len(),
        all.len(),
        "only 200 or 429"
    );
    let workers = p.envoy.connections_per_worker();
    assert!(
        workers.len() == 2 && workers.iter().all(|&n| n > 0),
        "both workers took connections: {workers:?}"
    );
    // Burst 10 plus 5/s over the time requests were sent.
    let expected = 10.0 + 5.0 * tried;
    eprintln!(
        "limits accuracy: {allowed} allowed of {} requests in {tried:.3} s on workers {workers:?}; burst + rate x t = {expected:.2}",
        all.len()
    );
    assert!(
        (allowed - expected).abs() <= 2.0,
        "{allowed} allowed in {tried:.2} s, expected {expected:.1} ± 2 ({} requests)",
        all.len()
    );
    // The 429's shape.
    let r = limited[0];
    let body: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(body["error"], "rate_limited");
    assert_eq!(body["reason"], "limit experimental exceeded");
    assert_eq!(
        body["decision_id"].as_str(),
        r.header("x-decision-id"),
        "{r:?}"
    );
    assert!(r
        .header("retry-after")
        .is_some_and(|v| v.parse::<u64>().unwrap() >= 1));
    assert_eq!(
        r.header("ratelimit-policy"),
        Some("\"experimental\";q=10;w=2")
    );
    assert!(r
        .header("ratelimit")
        .unwrap()
        .starts_with("\"experimental\";r=0;t="));
    // Another agent of the same type has its own bucket.
    let other = bearer(&p, "lab-2@clients", "experimental", &["skills:invoke"]);
    let r = p.envoy.request(
        "POST",
        "/mcp://sentiment-analysis/x",
        &[("authorization", &other)],
    );
    assert_eq!(r.status, 200, "{r:?}");
    // The upstream saw exactly the allowed ones (plus that last one).
    assert_eq!(p.upstream.seen().len(), allowed as usize + 1);
    let stats = p.envoy.admin("/stats?filter=agentplane");
    assert!(
        stats.contains("agentplane.limits.refused.experimental: "),
        "{stats}"
    );
    // As Prometheus reads it (the dashboard's per-limit panel).
    let prom = p.envoy.admin("/stats/prometheus");
    assert!(
        prom.lines()
            .any(|l| l.starts_with("agentplane_limits_refused_experimental{} ")),
        "{prom}"
    );
}

/// A slow upstream: of 5 concurrent requests from an agent capped at 2 in
/// flight, 2 reach it and 3 get an immediate 429; once they finish, the
/// slots are free again.
#[test]
fn an_in_flight_cap_holds_against_a_slow_upstream_and_frees_its_slots() {
    let p = two_workers();
    let auth = bearer(&p, "batch-runner@clients", "support", &["skills:invoke"]);
    let port = p.envoy.port;
    let t0 = Instant::now();
    let calls: Vec<_> = (0..5)
        .map(|i| {
            let auth = auth.clone();
            std::thread::spawn(move || {
                // Stagger so the first two are surely in flight first.
                std::thread::sleep(Duration::from_millis(if i < 2 { 0 } else { 300 }));
                let r = agentplane_e2e::http(
                    port,
                    "POST",
                    "/mcp://sentiment-analysis/slow",
                    &[("authorization", &auth), ("x-test-delay-ms", "1500")],
                    "",
                );
                (r.status, t0.elapsed())
            })
        })
        .collect();
    let mut results: Vec<_> = calls.into_iter().map(|c| c.join().unwrap()).collect();
    results.sort();
    let statuses: Vec<u16> = results.iter().map(|r| r.0).collect();
    assert_eq!(statuses, [200, 200, 429, 429, 429]);
    for (status, took) in &results {
        if *status == 429 {
            assert!(
                *took < Duration::from_millis(1400),
                "refused at once: {took:?}"
            );
        }
    }
    // Both finished: their slots are back.
    let r = p.envoy.request(
        "POST",
        "/mcp://sentiment-analysis/again",
        &[("authorization", &auth)],
    );
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        r.header("ratelimit"),
        None,
        "an allowed response carries no limit fields"
    );
}

/// A stream that runs longer than `limits.lease_ms` keeps its lease (each
/// worker renews its streams' leases on its tick): with leases of 1 s, two
/// calls of 3 s from an agent capped at 2 in flight still hold both slots
/// 2 s in, so a third is refused; before, their leases lapsed at 1 s and
/// the cap let a third (and a fourth...) through.
#[test]
fn a_stream_outliving_its_lease_still_counts_against_the_in_flight_cap() {
    let mut cfg: serde_json::Value = serde_json::from_str(&default_plugin_config()).unwrap();
    cfg["limits"]["lease_ms"] = serde_json::json!(1000);
    let p = two_workers_with(cfg.to_string());
    let auth = bearer(&p, "batch-runner@clients", "support", &["skills:invoke"]);
    let port = p.envoy.port;
    let slow: Vec<_> = (0..2)
        .map(|_| {
            let auth = auth.clone();
            std::thread::spawn(move || {
                agentplane_e2e::http(
                    port,
                    "POST",
                    "/mcp://sentiment-analysis/slow",
                    &[("authorization", &auth), ("x-test-delay-ms", "3000")],
                    "",
                )
                .status
            })
        })
        .collect();
    // Both reached the upstream (polled, not slept on).
    let t0 = Instant::now();
    while p.upstream.seen().len() < 2 {
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "the slow calls never arrived"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    // Past twice their lease, still running.
    std::thread::sleep(Duration::from_millis(2000));
    for _ in 0..4 {
        let r = p.envoy.request(
            "POST",
            "/mcp://sentiment-analysis/third",
            &[("authorization", &auth)],
        );
        assert_eq!(r.status, 429, "a lapsed lease let it through: {r:?}");
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&r.body).unwrap()["reason"],
            "limit batch-runner.in_flight exceeded"
        );
    }
    let statuses: Vec<u16> = slow.into_iter().map(|c| c.join().unwrap()).collect();
    assert_eq!(statuses, [200, 200]);
    // Both ended: their slots are back (released, not renewed).
    let r = p.envoy.request(
        "POST",
        "/mcp://sentiment-analysis/again",
        &[("authorization", &auth)],
    );
    assert_eq!(r.status, 200, "{r:?}");
}

/// `envoy/ratelimit/`, the fleet-wide path (Envoy's rate limit filter after
/// agentplane, descriptors from its trusted headers, an RLS cluster), put
/// into the shipped Envoy config, is accepted by Envoy itself
/// (`--mode validate`). A broken snippet fails here, not in a user's fleet.
#[test]
fn the_fleet_wide_rate_limit_example_is_a_valid_envoy_config() {
    let root = agentplane_e2e::repo_root().join("envoy/ratelimit");
    let read = |f: &str| std::fs::read_to_string(root.join(f)).unwrap();
    let parse = |f: &str| yaml::parse(&read(f));
    let mut r = render_envoy(
        &EnvoySetup::without_vault(
            &Idp::new(),
            agentplane_e2e::free_port(),
            default_plugin_config(),
        ),
        true,
    );
    r.edit(|v| {
        let listener = yaml::listener(v, yaml::AGENT_LISTENER);
        let filters = yaml::http_filters(listener);
        let router = filters.len() - 1;
        assert_eq!(filters[router]["name"], yaml::ROUTER_FILTER);
        let limit = parse("filter.yaml");
        filters.splice(router..router, limit.as_array().unwrap().iter().cloned());
        let host = &mut yaml::hcm(listener)["route_config"]["virtual_hosts"][0];
        for (k, x) in parse("virtual-host.yaml").as_object().unwrap() {
            host[k] = x.clone();
        }
        let cluster = parse("cluster.yaml");
        yaml::clusters(v).splice(0..0, cluster.as_array().unwrap().iter().cloned());
    });
    let y = &r.yaml;
    assert!(y.contains("envoy.filters.http.ratelimit") && y.contains("descriptor_key: tool"));
    let path = std::env::temp_dir().join(format!("agentplane-fleet-{}.yaml", std::process::id()));
    std::fs::write(&path, y).unwrap();
    let out = std::process::Command::new(agentplane_e2e::envoy_bin())
        .args([
            "--mode",
            "validate",
            "--use-dynamic-base-id",
            "-l",
            "error",
            "-c",
        ])
        .arg(&path)
        .output()
        .unwrap();
    std::fs::remove_file(&path).ok();
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // The service's own limits file names the same descriptor keys.
    let limits: serde_json::Value = serde_json::from_str(&read("limits.json")).unwrap();
    let by: Vec<String> = limits["limits"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|l| l["by"].as_array().unwrap().iter())
        .map(|k| k.as_str().unwrap().to_string())
        .collect();
    for key in ["agent", "team", "tool"] {
        assert!(by.iter().any(|b| b == key), "{key}");
    }
}
