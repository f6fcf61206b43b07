//! Fleet-wide limits for real: two Envoy processes with two workers each,
//! Envoy's rate limit filter after agentplane, `agentplane-ratelimit`
//! counting in one Redis. One agent bursting through both proxies gets one
//! budget (burst + rate × time), another agent is unaffected, and Redis
//! or the service failing gives bounded answers, recovers without a
//! restart, and lets nothing over the budget.

use agentplane_e2e::fleet::{fleet, poll, Fleet, Ratelimit, Redis};
use agentplane_e2e::Response;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

fn reason(r: &Response) -> Option<&str> {
    r.header("x-agentplane-reason")
}

/// One agent, 12 clients over two proxies of two workers each, 2 s against
/// 5/s with a burst of 10 counted in Redis: it gets burst + rate × t once,
/// not once per proxy (that would be about twice as many). The refusals
/// are 429 with `Retry-After` and the RateLimit fields; a forged identity
/// header changes nothing; another agent of the same team is unaffected.
#[test]
fn two_proxies_share_one_budget_counted_in_redis() {
    // Timeouts well above a loaded machine's scheduling delays: this test
    // is about counting; the next one about failing.
    let f = fleet(
        json!({"domain": "agentplane", "store_timeout_ms": 500, "limits": [
            {"name": "fleet.agent", "by": ["agent"], "rate": 5, "burst": 10},
            {"name": "fleet.team", "by": ["team"], "rate": 1000, "burst": 1000}
        ]}),
        "1s",
    );
    let auth = f.bearer("fleet-1@clients", "support");
    let (all, tried) = f.burst(&auth, 6, Duration::from_secs(2));
    let allowed = all.iter().filter(|(_, r)| r.status == 200).count();
    let limited: Vec<_> = all.iter().filter(|(_, r)| r.status == 429).collect();
    let odd: Vec<_> = all
        .iter()
        .filter(|(_, r)| r.status != 200 && reason(r) != Some("fleet limit fleet.agent exceeded"))
        .map(|(_, r)| (r.status, reason(r)))
        .collect();
    assert!(odd.is_empty(), "only 200 or 429 over the limit: {odd:?}");
    let expected = 10.0 + 5.0 * tried;
    let per_proxy: Vec<usize> = (0..2)
        .map(|i| {
            all.iter()
                .filter(|(p, r)| *p == i && r.status == 200)
                .count()
        })
        .collect();
    eprintln!(
        "fleet accuracy: {allowed} allowed of {} requests in {tried:.3} s over 2 proxies x 2 workers {per_proxy:?}; burst + rate x t = {expected:.2}",
        all.len()
    );
    assert!(
        (allowed as f64) <= expected + 1.0 && (allowed as f64) >= expected - 2.0,
        "{allowed} allowed in {tried:.2} s, expected {expected:.1} (+1/-2)"
    );
    for i in 0..2 {
        assert!(
            limited.iter().any(|(p, _)| *p == i),
            "proxy {i} was limited too"
        );
    }
    let r = &limited[0].1;
    assert_eq!(reason(r), Some("fleet limit fleet.agent exceeded"), "{r:?}");
    assert!(r
        .header("retry-after")
        .is_some_and(|v| v.parse::<u64>().unwrap() >= 1));
    assert_eq!(
        r.header("ratelimit-policy"),
        Some("\"fleet.agent\";q=10;w=2")
    );
    assert!(r
        .header("ratelimit")
        .unwrap()
        .starts_with("\"fleet.agent\";r=0;t="));
    assert!(r.header("x-decision-id").is_some(), "{r:?}");
    // Forged identity headers are stripped: another agent claiming to be
    // the exhausted one is counted as itself, and the upstream (so the
    // rate limit filter, which reads the same headers) sees its own id.
    let other = f.bearer("fleet-2@clients", "support");
    let forged = f.envoys[1].request(
        "POST",
        "/mcp://sentiment-analysis/x",
        &[
            ("authorization", &other),
            ("x-agent-id", "fleet-1@clients"),
            ("x-agent-team", "other-team"),
        ],
    );
    assert_eq!(forged.status, 200, "{forged:?}");
    let echoed: Value = serde_json::from_str(&forged.body).unwrap();
    let ids: Vec<&Value> = echoed["headers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|h| h[0] == "x-agent-id")
        .map(|h| &h[1])
        .collect();
    assert_eq!(ids, [&json!("fleet-2@clients")]);
    // Another agent of the same team has its own budget, on both proxies.
    for i in 0..2 {
        let r = f.call(i, &other);
        assert_eq!(r.status, 200, "{r:?}");
    }
    // The upstream saw exactly the allowed ones (and those three).
    assert_eq!(f.upstream.seen().len(), allowed + 3);
    assert!(f
        .rls
        .metrics()
        .contains("agentplane_ratelimit_over_limit_total "));
}

/// Redis stopped (SIGSTOP) answers in bounded time with the configured
/// mode (deny: 429, reason `fleet limits unavailable`); the service killed
/// answers 503 from Envoy within its timeout; the in-filter limits go on
/// meanwhile; both recover without restarting Envoy, and over the whole
/// run the agent got no more than its budget.
#[test]
fn redis_or_the_service_failing_gives_bounded_answers_and_recovers_within_budget() {
    let mut f = fleet(
        json!({"domain": "agentplane", "store_timeout_ms": 100, "limits": [
            {"name": "fleet.agent", "by": ["agent"], "rate": 2, "burst": 4}
        ]}),
        "0.3s",
    );
    let auth = f.bearer("fleet-3@clients", "support");
    let t0 = Instant::now();
    let mut allowed = 0;
    let mut count = |r: &Response| {
        if r.status == 200 {
            allowed += 1;
        }
    };
    let r = f.call(0, &auth);
    count(&r);
    assert_eq!(r.status, 200, "{r:?}");

    // Redis stopped: every answer within a bound, refused with the reason.
    f.redis.pause();
    for i in 0..6 {
        let t = Instant::now();
        let r = f.call(i % 2, &auth);
        count(&r);
        assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
        assert_eq!(r.status, 429, "{r:?}");
        assert_eq!(reason(&r), Some("fleet limits unavailable"), "{r:?}");
        assert!(r.header("retry-after").is_some());
    }
    assert_eq!(f.rls.ready(), 503, "not ready while Redis is stopped");
    in_filter_limits_still_hold(&f, "lab-fleet-1@clients");
    f.redis.resume();
    poll(Duration::from_secs(10), "ready after SIGCONT", || {
        f.rls.ready() == 200
    });
    poll(
        Duration::from_secs(10),
        "counting again after SIGCONT",
        || {
            let r = f.call(1, &auth);
            count(&r);
            r.status == 200 || reason(&r) == Some("fleet limit fleet.agent exceeded")
        },
    );

    // The service killed: Envoy answers 503 within its 50 ms timeout.
    f.rls.kill();
    for i in 0..4 {
        let t = Instant::now();
        let r = f.call(i % 2, &auth);
        count(&r);
        assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
        assert_eq!(r.status, 503, "{r:?}");
    }
    in_filter_limits_still_hold(&f, "lab-fleet-2@clients");
    f.rls.restart();
    poll(
        Duration::from_secs(10),
        "counting again after a restart",
        || {
            let r = f.call(0, &auth);
            count(&r);
            r.status == 200 || reason(&r) == Some("fleet limit fleet.agent exceeded")
        },
    );

    // After recovery, a burst over both proxies: over the whole run, no
    // more than burst + rate x t.
    let (all, _) = f.burst(&auth, 4, Duration::from_millis(1500));
    let mut seen = std::collections::BTreeMap::new();
    for (_, r) in &all {
        assert!(r.status == 200 || r.status == 429, "{r:?}");
        count(r);
        *seen
            .entry((r.status, reason(r).map(str::to_string)))
            .or_insert(0) += 1;
    }
    eprintln!("fleet failures: the burst after recovery: {seen:?}");
    let budget = 4.0 + 2.0 * t0.elapsed().as_secs_f64();
    eprintln!("fleet failures: {allowed} allowed over the run, budget {budget:.2}");
    assert!(
        f64::from(allowed) <= budget + 1.0,
        "{allowed} allowed, budget {budget:.1}"
    );
    assert!(allowed >= 4, "the agent got its burst after recovery");
    let stderr = f.rls.stderr();
    assert!(
        stderr.contains("redis: "),
        "store errors are logged: {stderr}"
    );
}

/// An `experimental` agent (5/s, burst 10 in the filter) is cut off by
/// agentplane itself, whatever the fleet's service answers.
fn in_filter_limits_still_hold(f: &Fleet, sub: &str) {
    let lab = f.bearer(sub, "experimental");
    let port = f.envoys[0].port;
    // At once: the filter's bucket has no time to refill.
    let calls: Vec<_> = (0..20)
        .map(|_| {
            let lab = lab.clone();
            std::thread::spawn(move || {
                agentplane_e2e::http(
                    port,
                    "POST",
                    "/mcp://sentiment-analysis/x",
                    &[("authorization", &lab)],
                    "",
                )
            })
        })
        .collect();
    let mut by_filter = 0;
    for c in calls {
        let r = c.join().unwrap();
        if r.status == 429 && reason(&r).is_none() {
            let body: Value = serde_json::from_str(&r.body).unwrap();
            assert_eq!(body["reason"], "limit experimental exceeded", "{r:?}");
            by_filter += 1;
        }
    }
    assert!(by_filter >= 5, "the in-filter limit refused {by_filter}");
}

/// A bad limits file is a clear error and exit status 2, never a panic;
/// SIGTERM stops the service cleanly.
#[test]
fn the_service_refuses_a_bad_limits_file_and_stops_cleanly() {
    let e = Ratelimit::try_run(r#"{"domain": "agentplane", "limits": [{"name": "x", "rate": 0}]}"#)
        .unwrap_err();
    assert!(
        e.contains("exit status: 2") && e.contains("rate must be above 0"),
        "{e}"
    );
    assert!(!e.contains("panicked"), "{e}");
    let redis = Redis::start();
    let mut rls = Ratelimit::start(
        &json!({"domain": "agentplane", "limits": [{"name": "a", "rate": 1}]}),
        &redis,
    );
    poll(Duration::from_secs(10), "ready", || rls.ready() == 200);
    let status = rls.terminate().unwrap();
    assert!(status.success(), "{status}");
}

/// The compose stack runs the same pieces: Redis reachable by the rate
/// limit service alone, the service by Envoy (and Redis) alone, and the
/// compose Envoy's config asks it and fails closed.
#[test]
fn compose_wires_envoy_to_the_rate_limit_service_and_hides_redis() {
    use agentplane_e2e::deploy::compose::{compose_config, neighbours};
    use std::collections::BTreeSet;
    let c = compose_config();
    let set = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
    assert_eq!(neighbours(&c, "redis"), set(&["ratelimit"]));
    assert_eq!(neighbours(&c, "ratelimit"), set(&["envoy", "redis"]));
    let y = std::fs::read_to_string(
        agentplane_e2e::repo_root().join(agentplane_e2e::deploy::COMPOSE.out),
    )
    .unwrap();
    assert!(y.contains("envoy.filters.http.ratelimit") && y.contains("failure_mode_deny: true"));
    assert!(y.contains("socket_address: { address: ratelimit, port_value: 8081 }"));
}
