//! The dashboard's and the Prometheus rules' metric names
//! (`deploy/observability/`), and what the code and Envoy export: PromQL
//! expressions read for the names they use, the filter's series as
//! Prometheus sees them, and Envoy's own that the dashboard reads. Used
//! offline (`tests/observability.rs`) and against a real Envoy
//! (`tests/e2e/observability.rs`).

use crate::repo_root;
use agentplane_core::metrics::{M, NAMES};
use serde_json::Value;
use std::collections::BTreeSet;

/// Envoy's own series the dashboard and rules read, as Envoy 1.40 renders
/// them at `/stats/prometheus` (seen on a real Envoy running the filter
/// with `envoy/envoy.yaml`), and Prometheus's `up`.
pub const ENVOY: &[&str] = &[
    // The HTTP connection manager's request time (ms, histogram) and
    // responses by class; label envoy_http_conn_manager_prefix="agent_proxy"
    // is the agent-facing listener (its stat_prefix).
    "envoy_http_downstream_rq_time_bucket",
    "envoy_http_downstream_rq_time_sum",
    "envoy_http_downstream_rq_time_count",
    "envoy_http_downstream_rq_xx",
    // The Wasm plugin named `agentplane` (`wasm.agentplane.*`): VM reloads
    // after a trap under FAIL_RELOAD, and failed or backed-off reloads.
    "envoy_wasm_agentplane_vm_reload",
    "envoy_wasm_agentplane_vm_reload_success",
    "envoy_wasm_agentplane_vm_reload_failure",
    "envoy_wasm_agentplane_vm_reload_backoff",
    // Live VMs (`wasm.envoy.wasm.runtime.v8.active`, `wasm.wasm_vm_count`).
    "envoy_wasm_envoy_wasm_runtime_v8_active",
    "envoy_wasm_wasm_vm_count",
    // Prometheus's own: whether the last scrape of a target succeeded.
    "up",
];

/// The filter's per-limit refusal counters (`agentplane.limits.refused.<name>`).
pub const LIMITS_REFUSED: &str = "agentplane_limits_refused_";

/// What PromQL expressions in `deploy/observability/` name.
#[derive(Debug, Default, PartialEq)]
pub struct Names {
    /// Metric names written out.
    pub metrics: BTreeSet<String>,
    /// `__name__` matchers' values (regular expressions or names).
    pub matchers: BTreeSet<String>,
}

/// PromQL's aggregation operators, keywords and binary set operators:
/// identifiers that are never metric names.
const WORDS: &[&str] = &[
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "inf",
    "nan",
];

/// Skips a quoted string starting at `i` (the quote); returns its content
/// and the index after the closing quote.
fn string_at(s: &[char], i: usize) -> (String, usize) {
    let quote = s[i];
    let mut out = String::new();
    let mut j = i + 1;
    while j < s.len() && s[j] != quote {
        if s[j] == '\\' && j + 1 < s.len() {
            j += 1;
        }
        out.push(s[j]);
        j += 1;
    }
    (out, j + 1)
}

/// The index after the bracket closing the one at `i`, strings skipped.
fn close_at(s: &[char], i: usize, open: char, close: char) -> usize {
    let mut depth = 0;
    let mut j = i;
    while j < s.len() {
        match s[j] {
            '"' | '\'' | '`' => {
                j = string_at(s, j).1;
                continue;
            }
            c if c == open => depth += 1,
            c if c == close => {
                depth -= 1;
                if depth == 0 {
                    return j + 1;
                }
            }
            _ => {}
        }
        j += 1;
    }
    j
}

/// The metric names and `__name__` matchers in one PromQL expression
/// (Grafana's `$__rate_interval` and such sit in ranges, skipped).
pub fn promql_names(expr: &str) -> Names {
    let s: Vec<char> = expr.chars().collect();
    let mut names = Names::default();
    let mut i = 0;
    while i < s.len() {
        let c = s[i];
        if c == '"' || c == '\'' || c == '`' {
            i = string_at(&s, i).1;
        } else if c == '{' {
            let end = close_at(&s, i, '{', '}');
            let body: String = s[i + 1..end - 1].iter().collect();
            for op in ["__name__=~", "__name__="] {
                if let Some(at) = body.find(op) {
                    let rest: Vec<char> = body[at + op.len()..].trim_start().chars().collect();
                    if !rest.is_empty() {
                        names.matchers.insert(string_at(&rest, 0).0);
                    }
                    break;
                }
            }
            i = end;
        } else if c == '[' {
            i = close_at(&s, i, '[', ']');
        } else if c.is_ascii_digit() || c == '.' {
            while i < s.len() && (s[i].is_ascii_alphanumeric() || s[i] == '.') {
                i += 1;
            }
        } else if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < s.len() && (s[i].is_ascii_alphanumeric() || s[i] == '_' || s[i] == ':') {
                i += 1;
            }
            let word: String = s[start..i].iter().collect();
            let mut next = i;
            while next < s.len() && s[next].is_whitespace() {
                next += 1;
            }
            let call = s.get(next) == Some(&'(');
            let lower = word.to_ascii_lowercase();
            if [
                "by",
                "without",
                "on",
                "ignoring",
                "group_left",
                "group_right",
            ]
            .contains(&lower.as_str())
            {
                // A label list, not names.
                if call {
                    i = close_at(&s, next, '(', ')');
                }
            } else if !call && !WORDS.contains(&lower.as_str()) {
                names.metrics.insert(word);
            }
        } else {
            i += 1;
        }
    }
    names
}

/// The filter's series as Prometheus sees them (dots as underscores; the
/// histogram's `_bucket`, `_sum` and `_count`).
pub fn filter_series() -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (i, name) in NAMES.iter().enumerate() {
        let prom = name.replace('.', "_");
        if i == M::PolicyEvalUs as usize {
            for suffix in ["_bucket", "_sum", "_count"] {
                out.insert(format!("{prom}{suffix}"));
            }
        } else {
            out.insert(prom);
        }
    }
    out
}

/// A file of the repository, as text.
pub fn read(path: &str) -> String {
    std::fs::read_to_string(repo_root().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

pub fn rules() -> Value {
    serde_norway::from_str(&read("deploy/observability/rules.yml")).unwrap()
}

/// Every rule in rules.yml.
pub fn rule_list(rules: &Value) -> Vec<Value> {
    rules["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap().clone())
        .collect()
}

/// The series rules.yml records.
pub fn recorded(rules: &Value) -> BTreeSet<String> {
    rule_list(rules)
        .iter()
        .filter_map(|r| r["record"].as_str().map(String::from))
        .collect()
}

/// Whether every name in `names` is exported or recorded; the offenders.
pub fn unknown(names: &Names, recorded: &BTreeSet<String>) -> Vec<String> {
    let filter = filter_series();
    let mut bad: Vec<String> = names
        .metrics
        .iter()
        .filter(|n| {
            let family = n.starts_with(LIMITS_REFUSED) && n.len() > LIMITS_REFUSED.len();
            let known = filter.contains(*n)
                || ENVOY.contains(&n.as_str())
                || recorded.contains(*n)
                || family;
            !known
        })
        .cloned()
        .collect();
    // A `__name__` matcher must stay within the per-limit family.
    bad.extend(
        names
            .matchers
            .iter()
            .filter(|m| !m.starts_with(LIMITS_REFUSED))
            .map(|m| format!("__name__ matcher {m}")),
    );
    bad
}

/// Every PromQL expression of the dashboard (Prometheus datasource only;
/// the Loki panels read decision records), with its panel's title.
pub fn dashboard_exprs() -> Vec<(String, String)> {
    let d: Value = serde_json::from_str(&read(
        "deploy/observability/grafana/dashboards/agentplane.json",
    ))
    .unwrap();
    let mut out = Vec::new();
    for p in d["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().into_iter().flatten() {
            let ds = if t["datasource"].is_object() {
                &t["datasource"]
            } else {
                &p["datasource"]
            };
            if ds["type"] == "prometheus" {
                let title = p["title"].as_str().unwrap_or_default().to_string();
                out.push((title, t["expr"].as_str().unwrap().to_string()));
            }
        }
    }
    out
}
