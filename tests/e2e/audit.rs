//! Audit and observability: decision records in Envoy's log, counters in
//! Envoy's stats, trace context on responses and upstream.

use agentplane_e2e::Stack;
use serde_json::{json, Value};

fn stack() -> Stack {
    let mut cfg: Value = serde_json::from_str(&agentplane_e2e::default_plugin_config()).unwrap();
    cfg["decision_log"] = json!({"enabled": true, "mask": ["/input/request/headers/user-agent"]});
    Stack::start_with(&cfg.to_string())
}

fn records(s: &Stack) -> Vec<Value> {
    s.envoy
        .log()
        .lines()
        .filter_map(|l| l.split_once("agentplane-decision ").map(|(_, r)| r))
        .map(|r| serde_json::from_str(r).unwrap())
        .collect()
}

/// Reads a counter from `/stats/prometheus` (0 when absent).
fn counter(s: &Stack, name: &str) -> u64 {
    s.envoy
        .admin("/stats/prometheus")
        .lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            (k.split('{').next()? == name).then(|| v.parse::<f64>().ok())?
        })
        .map_or(0, |v| v as u64)
}

/// Every decision leaves one record with the agent, resource, reason and
/// the status the client got, and no credential; the counters move by
/// exactly the requests sent.
#[test]
fn decisions_leave_records_and_move_counters() {
    let s = stack();
    let tok = s.idp.agent_token(
        "support-triage@clients",
        "customer-success",
        "support",
        "production",
        &["skills:invoke", "data:read"],
    );
    let auth = format!("Bearer {tok}");
    for _ in 0..3 {
        let r = s.envoy.request(
            "POST",
            "/mcp://sentiment-analysis/analyze",
            &[
                ("authorization", &auth),
                ("user-agent", "canary-agent/1.0"),
                ("x-agent-team", "forged"),
            ],
        );
        assert_eq!(r.status, 200, "{r:?}");
    }
    let r = s
        .envoy
        .request("GET", "/mcp://web-search/q", &[("authorization", &auth)]);
    assert_eq!(r.status, 403);
    let denied_id = r.json()["decision_id"].as_str().unwrap().to_string();
    let r = s.envoy.request("GET", "/mcp://web-search/q", &[]);
    assert_eq!(r.status, 401);

    // Records are written when the stream ends: wait for all five.
    let t0 = std::time::Instant::now();
    let mut recs = records(&s);
    while recs.len() < 5 && t0.elapsed() < std::time::Duration::from_secs(10) {
        std::thread::sleep(std::time::Duration::from_millis(50));
        recs = records(&s);
    }
    assert_eq!(recs.len(), 5, "{recs:?}");
    let statuses: Vec<u64> = recs.iter().map(|r| r["status"].as_u64().unwrap()).collect();
    assert_eq!(statuses, [200, 200, 200, 403, 401]);
    let denied = &recs[3];
    assert_eq!(denied["decision_id"], denied_id);
    assert_eq!(denied["agent"]["id"], "support-triage@clients");
    assert_eq!(denied["resource"], "web-search");
    assert_eq!(
        denied["reason"],
        "missing permission tools:access for action access_tool"
    );
    assert_eq!(denied["path"], "mcp/authz");
    assert_eq!(denied["input"]["action"], "access_tool");
    assert_eq!(recs[1]["cached"], true);
    let log = s.envoy.log();
    assert!(!log.contains(&tok), "the agent's JWT in Envoy's log");
    assert!(!log.contains("canary-agent"), "masked input in Envoy's log");

    let prom = s.envoy.admin("/stats/prometheus");
    let ours: Vec<&str> = prom.lines().filter(|l| l.contains("agentplane")).collect();
    assert_eq!(counter(&s, "agentplane_decisions_allowed"), 3, "{ours:#?}");
    assert_eq!(counter(&s, "agentplane_decisions_denied"), 1);
    assert_eq!(counter(&s, "agentplane_decisions_unauthorized"), 1);
    assert_eq!(counter(&s, "agentplane_headers_stripped"), 3);
    assert_eq!(counter(&s, "agentplane_decision_cache_hit"), 2);
    assert_eq!(counter(&s, "agentplane_decision_cache_miss"), 2);
}

/// The request id comes back as `x-mcp-trace-id` (with the decision id),
/// and the client's W3C trace context reaches upstream untouched.
#[test]
fn trace_context_reaches_upstream_and_the_response() {
    let s = stack();
    let tok = s.idp.agent_token(
        "support-triage@clients",
        "customer-success",
        "support",
        "production",
        &["skills:invoke"],
    );
    let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let r = s.envoy.request(
        "POST",
        "/mcp://sentiment-analysis/analyze",
        &[
            ("authorization", &format!("Bearer {tok}")),
            ("traceparent", tp),
        ],
    );
    assert_eq!(r.status, 200, "{r:?}");
    let up = &s.upstream.seen()[0];
    assert_eq!(up.one("traceparent").as_deref(), Some(tp));
    let rid = up.one("x-request-id").unwrap();
    assert_eq!(r.header("x-mcp-trace-id"), Some(rid.as_str()));
    assert!(r.header("x-decision-id").is_some());
    let r = s
        .envoy
        .request("POST", "/mcp://sentiment-analysis/analyze", &[]);
    assert_eq!(r.status, 401);
    assert!(r.header("x-mcp-trace-id").is_some_and(|v| !v.is_empty()));
}
