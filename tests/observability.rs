//! The dashboard and the Prometheus rules against the code, offline (no
//! Envoy): every metric a PromQL expression names in
//! `deploy/observability/` is one the filter defines (`NAMES` in
//! `filter/core/src/metrics.rs`, rendered the Prometheus way, or the
//! per-limit `agentplane_limits_refused_<name>` family), one of Envoy's
//! own (`ENVOY` in `tests/src/observability.rs`), or a series `rules.yml`
//! records. A renamed counter would otherwise leave a panel empty and an
//! alert silent, and nothing would say so. `tests/e2e/observability.rs`
//! checks the same names at a real Envoy's `/stats/prometheus`.

use agentplane_core::metrics::NAMES;
use agentplane_e2e::observability::{
    dashboard_exprs, promql_names, read, recorded, rule_list, rules, unknown,
};
use std::collections::BTreeSet;

#[test]
fn the_extractor_finds_names_and_skips_functions_labels_and_ranges() {
    let n = promql_names(
        r#"histogram_quantile(0.99, sum by (le) (rate(agentplane_policy_eval_us_bucket{le!="1"}[$__rate_interval]))) / on (job) group_left up > 0 and agentplane:x:rate5m offset 5m"#,
    );
    let want: BTreeSet<String> = [
        "agentplane_policy_eval_us_bucket",
        "up",
        "agentplane:x:rate5m",
    ]
    .map(String::from)
    .into();
    assert_eq!(n.metrics, want);
    let n = promql_names(
        r#"sum by (limit) (rate(label_replace({__name__=~"agentplane_limits_refused_.+"}, "limit", "$1", "__name__", "x_(.+)")[5m:1m]))"#,
    );
    assert!(n.metrics.is_empty(), "{n:?}");
    assert_eq!(
        n.matchers,
        BTreeSet::from(["agentplane_limits_refused_.+".to_string()])
    );
}

#[test]
fn a_misspelt_or_foreign_name_is_caught() {
    let none = BTreeSet::new();
    for expr in [
        "rate(agentplane_decisions_alowed[5m])",
        "agentplane_policy_eval_us",
        "rate(envoy_cluster_upstream_rq_time_bucket[5m])",
        r#"{__name__=~"agentplane_.+"}"#,
        "agentplane:not:recorded",
    ] {
        assert!(
            !unknown(&promql_names(expr), &none).is_empty(),
            "{expr} passed"
        );
    }
    assert!(unknown(&promql_names("agentplane_limits_refused_"), &none).len() == 1);
    assert!(unknown(&promql_names("agentplane_limits_refused_per_agent"), &none).is_empty());
}

#[test]
fn dashboard_queries_name_only_exported_or_recorded_metrics() {
    let recorded = recorded(&rules());
    let exprs = dashboard_exprs();
    assert!(exprs.len() >= 20, "{} PromQL queries", exprs.len());
    let mut seen = BTreeSet::new();
    for (title, expr) in &exprs {
        let names = promql_names(expr);
        assert!(
            !names.metrics.is_empty() || !names.matchers.is_empty(),
            "{title}: no metric in {expr}"
        );
        let bad = unknown(&names, &recorded);
        assert!(bad.is_empty(), "panel {title:?}: {bad:?} in {expr}");
        seen.extend(names.metrics);
    }
    // The dashboard shows every outcome (through the recording rule), the
    // policy time, the cache, secrets, tokens, approvals and VM health.
    for needed in [
        "agentplane:decisions:rate5m",
        "agentplane_policy_eval_us_bucket",
        "envoy_http_downstream_rq_time_bucket",
        "agentplane_decision_cache_hit",
        "agentplane_vault_failures",
        "agentplane_token_exchange_exchanged",
        "agentplane_approval_granted",
        "envoy_wasm_agentplane_vm_reload_success",
    ] {
        assert!(seen.contains(needed), "no panel reads {needed}");
    }
}

#[test]
fn rules_name_only_exported_or_recorded_metrics_and_link_their_runbook() {
    let rules = rules();
    let recorded = recorded(&rules);
    let ops = read("docs/operations.md");
    let anchors: BTreeSet<String> = ops
        .lines()
        .filter_map(|l| l.strip_prefix("### "))
        .map(|h| h.trim().to_ascii_lowercase())
        .collect();
    let mut alerts = 0;
    for r in rule_list(&rules) {
        let expr = r["expr"].as_str().unwrap();
        let bad = unknown(&promql_names(expr), &recorded);
        assert!(bad.is_empty(), "{r:?}: {bad:?}");
        if let Some(alert) = r["alert"].as_str() {
            alerts += 1;
            let runbook = r["annotations"]["runbook"].as_str().unwrap_or_default();
            let anchor = runbook
                .strip_prefix("docs/operations.md#")
                .unwrap_or_else(|| panic!("{alert}: runbook {runbook}"));
            assert!(
                anchors.contains(anchor),
                "{alert}: no heading `### {anchor}` in docs/operations.md"
            );
        }
    }
    assert!(alerts >= 8, "{alerts} alerts");
    // Every outcome counter has its recorded rate.
    let outcomes: BTreeSet<String> = rule_list(&rules)
        .iter()
        .filter(|r| r["record"] == "agentplane:decisions:rate5m")
        .map(|r| {
            let outcome = r["labels"]["outcome"].as_str().unwrap();
            assert_eq!(
                r["expr"].as_str().unwrap(),
                format!("sum(rate(agentplane_decisions_{outcome}[5m]))")
            );
            format!("agentplane.decisions.{outcome}")
        })
        .collect();
    let counters: BTreeSet<String> = NAMES
        .iter()
        .filter(|n| n.starts_with("agentplane.decisions."))
        .map(|n| n.to_string())
        .collect();
    assert_eq!(outcomes, counters, "outcomes recorded vs. counted");
}
