//! The dashboard's and the rules' metric names at a real Envoy 1.40
//! running the filter: every series they read (but what Prometheus
//! records or makes itself, and the per-limit family, defined at a
//! limit's first refusal) is at `/stats/prometheus` under exactly that
//! name, so the offline check (`tests/observability.rs`) and its
//! allow-list of Envoy's own names stay true to what Envoy renders.

use agentplane_e2e::observability::{
    dashboard_exprs, promql_names, rule_list, rules, LIMITS_REFUSED,
};
use agentplane_e2e::Stack;
use std::collections::BTreeSet;

#[test]
fn every_series_the_dashboard_and_rules_read_is_at_envoys_prometheus_endpoint() {
    let s = Stack::start();
    // An allowed decision (a policy evaluation: the histogram has a
    // sample) and a refused one.
    let tok = s.idp.triage_token_with(&["skills:invoke"]);
    let r = s.envoy.request(
        "POST",
        "/mcp://sentiment-analysis/analyze",
        &[("authorization", &format!("Bearer {tok}"))],
    );
    assert_eq!(r.status, 200, "{r:?}");
    let r = s.envoy.request("GET", "/mcp://web-search/q", &[]);
    assert_eq!(r.status, 401, "{r:?}");

    let prom = s.envoy.admin("/stats/prometheus");
    let exported: BTreeSet<&str> = prom
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split(['{', ' ']).next())
        .collect();
    let mut read = BTreeSet::new();
    for (_, expr) in dashboard_exprs() {
        read.extend(promql_names(&expr).metrics);
    }
    for r in rule_list(&rules()) {
        read.extend(promql_names(r["expr"].as_str().unwrap()).metrics);
    }
    let missing: Vec<&String> = read
        .iter()
        // Recorded by rules.yml; Prometheus's own `up`; the per-limit family.
        .filter(|n| !n.contains(':') && *n != "up" && !n.starts_with(LIMITS_REFUSED))
        .filter(|n| !exported.contains(n.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "read by the dashboard or rules, not exported: {missing:?}"
    );
    assert!(read.len() > 30, "{read:?}");
    // The policy's time is a histogram with the sample just taken (Envoy
    // merges histograms at its stats flush, every 5 s by default).
    let count = |prom: &str| {
        prom.lines()
            .find(|l| l.starts_with("agentplane_policy_eval_us_count"))
            .and_then(|l| l.rsplit_once(' '))
            .and_then(|(_, v)| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let t0 = std::time::Instant::now();
    let mut n = count(&prom);
    while n < 1.0 && t0.elapsed() < std::time::Duration::from_secs(15) {
        std::thread::sleep(std::time::Duration::from_millis(250));
        n = count(&s.envoy.admin("/stats/prometheus"));
    }
    assert!(n >= 1.0, "agentplane_policy_eval_us_count {n}");
}
