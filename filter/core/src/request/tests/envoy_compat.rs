//! A policy written for opa-envoy-plugin, unchanged
//! (`tests/opa/envoy/authz.rego`), run with `policy.input: "envoy"`: it
//! sees that plugin's input shape and its result object (`allowed`,
//! `headers`, `http_status`, `body`, `response_headers_to_add`,
//! `request_headers_to_remove`) shapes the request and the reply.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use super::*;
use crate::policy::Policy;

const POLICY: &str = include_str!("../../../../../tests/opa/envoy/authz.rego");

fn envoy_filter() -> Filter {
    let cfg = json!({
        "policy": {"entrypoint": "data.envoy.authz.allow", "input": "envoy"},
        "resources": {
            "reports": {"type": "data", "metadata": {"team": "customer-success", "environment": "production"}},
            "tickets-mcp": {"type": "tool", "protocol": "mcp",
                "metadata": {"team": "customer-success", "environment": "production"}}
        },
        "decision_log": {"enabled": true, "sample_allowed": 1.0},
    });
    let config = crate::config::Config::from_json(cfg.to_string().as_bytes()).unwrap();
    let policy =
        Policy::compile(&[("authz.rego", POLICY)], "{}", "data.envoy.authz.allow").unwrap();
    Filter::with_policy(config, policy, 7)
}

fn get(path: &str, headers: &[(&str, &str)]) -> (Flow, Decision, MockHost) {
    let mut f = envoy_filter();
    let mut h = request("GET", path, Some(claims(json!({}))));
    for (k, v) in headers {
        h = h.with_header(k, v);
    }
    f.on_configured(&mut h, "test");
    let (flow, mut d) = f.on_request_headers(&mut h);
    f.on_response_headers(&mut h, &mut d);
    f.on_log(&mut h, &mut d);
    (flow, d, h)
}

#[test]
fn the_plugins_input_shape_is_what_the_policy_reads() {
    let (flow, _d, h) = get(
        "/reports/q3?x=1&x=2",
        &[("x-tenant", "acme"), ("x-internal-debug", "1")],
    );
    assert_eq!(flow, Flow::Continue, "{:?}", h.reply);
    let rec = log_lines(&h).pop().unwrap();
    let input = &rec["input"];
    let http = &input["attributes"]["request"]["http"];
    assert_eq!(http["method"], "GET");
    assert_eq!(http["path"], "/reports/q3?x=1&x=2");
    assert_eq!(http["headers"]["x-tenant"], "acme");
    assert_eq!(input["parsed_path"], json!(["reports", "q3"]));
    assert_eq!(input["parsed_query"]["x"], json!(["1", "2"]));
    assert_eq!(input["version"]["ext_authz"], "v3");
    assert_eq!(
        input["attributes"]["metadataContext"]["filterMetadata"]["envoy.filters.http.jwt_authn"]
            ["jwt_payload"]["sub"],
        "support-triage@clients"
    );
    // agentplane's own members stay beside them.
    assert_eq!(input["agent"]["id"], "support-triage@clients");
}

#[test]
fn an_allow_object_adds_and_removes_request_headers_and_adds_response_headers() {
    let (flow, _d, h) = get("/reports/q3", &[("x-internal-debug", "1")]);
    assert_eq!(flow, Flow::Continue, "{:?}", h.reply);
    assert_eq!(h.header_values("x-ext-authz-check"), ["allowed"]);
    assert_eq!(h.header_values("x-reader"), ["support-triage@clients"]);
    assert!(h.header_values("x-internal-debug").is_empty());
    assert_eq!(
        h.response_headers
            .iter()
            .find(|(k, _)| k == "x-policy")
            .map(|(_, v)| v.as_str()),
        Some("envoy.authz")
    );
}

#[test]
fn a_deny_object_sets_the_status_body_and_headers_of_the_reply() {
    let (flow, d, h) = get("/reports/q3?format=csv", &[("x-tenant", "other")]);
    assert_eq!(flow, Flow::Replied);
    let r = h.reply.as_ref().unwrap();
    assert_eq!(r.status, 403);
    assert_eq!(String::from_utf8_lossy(&r.body), "denied by envoy.authz");
    let header = |n: &str| {
        r.headers
            .iter()
            .find(|(k, _)| k == n)
            .map(|(_, v)| v.clone())
    };
    assert_eq!(header("x-ext-authz-check").as_deref(), Some("denied"));
    assert_eq!(header("x-policy").as_deref(), Some("envoy.authz"));
    assert_eq!(header("x-decision-id").as_deref(), Some(d.id.as_str()));
}

#[test]
fn a_policy_reads_the_mcp_body_as_parsed_body() {
    let mut f = envoy_filter();
    let call = |f: &mut Filter, tool: &str| {
        let body = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                          "params": {"name": tool, "arguments": {}}})
        .to_string();
        mcp_call(f, &[], Some(&body), &[("content-type", "application/json")])
    };
    let (flow, _, h) = call(&mut f, "search_docs");
    assert_eq!(flow, Flow::Continue, "{:?}", h.reply);
    let (flow, _, h) = call(&mut f, "bulk_export");
    assert_eq!(flow, Flow::Replied);
    assert_eq!(h.reply.as_ref().unwrap().status, 429);
}

#[test]
fn a_policy_header_the_filter_owns_is_a_policy_error() {
    for result in [
        r#"{"allowed": true, "request_headers_to_remove": ["x-agent-id"]}"#,
        r#"{"allowed": true, "response_headers_to_add": {"x-decision-id": "forged"}}"#,
        r#"{"allowed": false, "response_headers_to_add": {":status": "200"}}"#,
        r#"{"allowed": true, "headers": {"x-a": 7}}"#,
        r#"{"allowed": false, "body": {"not": "a string"}}"#,
    ] {
        let src = format!("package t\n\nr := {result}\n");
        let config = crate::config::Config::from_json(
            json!({"policy": {"entrypoint": "data.t.r", "input": "envoy"}})
                .to_string()
                .as_bytes(),
        )
        .unwrap();
        let policy = Policy::compile(&[("t.rego", &src)], "{}", "data.t.r").unwrap();
        let mut f = Filter::with_policy(config, policy, 7);
        let mut h = request("GET", "/mcp://x/y", Some(claims(json!({}))));
        let (flow, d) = f.on_request_headers(&mut h);
        assert_eq!(flow, Flow::Replied, "{result}");
        assert_eq!(d.reason(), "policy_error", "{result}");
    }
}
