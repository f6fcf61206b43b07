//! Trace attributes (`tracing.attributes`): what a tools/call, a refused
//! call and a request that is not MCP set for Envoy's tracer, and that
//! nothing is set with the option off.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use super::*;
use crate::trace;
use std::collections::BTreeMap;
#[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
use wasm_bindgen_test::wasm_bindgen_test as test;

fn traced_filter(cfg: &str, on: bool) -> Filter {
    let mut v: Value = serde_json::from_str(cfg).unwrap();
    v["tracing"] = json!({ "attributes": on });
    Filter::new(v.to_string().as_bytes(), 7).unwrap()
}

/// The trace properties the host was handed, by span attribute.
fn attributes(h: &MockHost) -> BTreeMap<&'static str, String> {
    trace::ATTRIBUTES
        .iter()
        .filter_map(|(tag, prop)| {
            let v = h.set_properties.get(*prop)?;
            Some((*tag, String::from_utf8(v.clone()).unwrap()))
        })
        .collect()
}

const SESSION: &str = "3f1c0a9e-session-secret";

#[test]
fn an_allowed_tool_call_names_its_method_tool_id_and_decision() {
    let mut f = traced_filter(MCP_CONFIG, true);
    let headers = [("mcp-protocol-version", "2025-06-18")];
    let (flow, d, h) = mcp_call(&mut f, &["tools:call"], Some(CALL), &headers);
    assert_eq!(flow, Flow::Continue, "{:?}", h.reply);
    let a = attributes(&h);
    assert_eq!(a["mcp.method.name"], "tools/call");
    assert_eq!(a["gen_ai.tool.name"], "lookup_ticket");
    assert_eq!(a["gen_ai.operation.name"], "execute_tool");
    assert_eq!(a["jsonrpc.request.id"], "42");
    assert_eq!(a["mcp.protocol.version"], "2025-06-18");
    assert_eq!(a["gen_ai.agent.id"], "support-triage@clients");
    assert_eq!(a["agentplane.decision.id"], d.id);
    assert_eq!(a["agentplane.decision.outcome"], "allowed");
    assert!(!a.contains_key("error.type"), "{a:?}");
    assert!(!a.contains_key("mcp.session.id"), "{a:?}");
}

#[test]
fn a_session_is_traced_as_its_digest_only() {
    let mut f = traced_filter(MCP_CONFIG, true);
    // A session never opened through this proxy: refused (404), traced.
    let headers = [("mcp-session-id", SESSION)];
    let (flow, _, h) = mcp_call(&mut f, &["tools:call"], Some(CALL), &headers);
    assert_eq!(flow, Flow::Replied);
    let a = attributes(&h);
    assert_eq!(a["agentplane.decision.outcome"], "denied");
    assert_eq!(a["error.type"], "not_found");
    // The session id continues the session for whoever holds it: only its
    // digest is traced, the decision log's form.
    let digest = &a["mcp.session.id"];
    assert_eq!(digest.len(), 64);
    assert!(digest.bytes().all(|b| b.is_ascii_hexdigit()), "{digest}");
    assert!(h
        .set_properties
        .values()
        .all(|v| !String::from_utf8_lossy(v).contains(SESSION)));
}

#[test]
fn a_refused_call_says_denied_and_its_error_class() {
    let mut f = traced_filter(MCP_CONFIG, true);
    // tools:list does not grant tools/call.
    let (flow, d, h) = mcp_call(&mut f, &["tools:list"], Some(CALL), &[]);
    assert_eq!(flow, Flow::Replied);
    let a = attributes(&h);
    assert_eq!(a["agentplane.decision.outcome"], "denied");
    assert_eq!(a["error.type"], "forbidden");
    assert_eq!(a["agentplane.decision.id"], d.id);
    assert_eq!(a["gen_ai.tool.name"], "lookup_ticket");
    // No header: nothing is claimed about the revision or a session.
    assert!(!a.contains_key("mcp.protocol.version"), "{a:?}");
    assert!(!a.contains_key("mcp.session.id"), "{a:?}");
}

#[test]
fn a_request_without_a_token_is_traced_as_unauthorized() {
    let mut f = traced_filter(CONFIG, true);
    let mut h = request("GET", "/hello-skill/hi", None);
    let (flow, d) = f.on_request_headers(&mut h);
    assert_eq!(flow, Flow::Replied);
    let a = attributes(&h);
    assert_eq!(a["agentplane.decision.outcome"], "denied");
    assert_eq!(a["error.type"], "unauthorized");
    assert_eq!(a["agentplane.decision.id"], d.id);
}

#[test]
fn a_request_that_is_not_mcp_carries_only_the_decision() {
    let mut f = traced_filter(CONFIG, true);
    let mut h = request("GET", "/hello-skill/hi", Some(claims(json!({}))));
    let (flow, d) = f.on_request_headers(&mut h);
    assert_eq!(flow, Flow::Continue, "{:?}", h.reply);
    let a = attributes(&h);
    let keys: Vec<_> = a.keys().copied().collect();
    assert_eq!(
        keys,
        [
            "agentplane.decision.id",
            "agentplane.decision.outcome",
            "gen_ai.agent.id"
        ]
    );
    assert_eq!(a["agentplane.decision.id"], d.id);
    assert_eq!(a["agentplane.decision.outcome"], "allowed");
}

#[test]
fn with_the_option_off_nothing_is_set() {
    for cfg in [MCP_CONFIG, CONFIG] {
        let mut f = traced_filter(cfg, false);
        let (_, _, h) = mcp_call(
            &mut traced_filter(MCP_CONFIG, false),
            &["tools:list"],
            Some(CALL),
            &[("mcp-session-id", SESSION)],
        );
        assert!(h.set_properties.is_empty(), "{:?}", h.set_properties);
        let mut h = request("GET", "/hello-skill/hi", Some(claims(json!({}))));
        f.on_request_headers(&mut h);
        assert!(h.set_properties.is_empty(), "{:?}", h.set_properties);
    }
    // The default configuration is off.
    assert!(!filter().config().tracing.attributes);
}

#[test]
fn client_chosen_values_are_bounded_and_unknown_revisions_left_out() {
    let mut f = traced_filter(MCP_CONFIG, true);
    let long = "t".repeat(500);
    let call = json!({"jsonrpc": "2.0", "id": "a\nb", "method": "tools/call",
        "params": {"name": long, "arguments": {}}})
    .to_string();
    let (_, _, h) = mcp_call(
        &mut f,
        &["tools:list"],
        Some(&call),
        &[("mcp-protocol-version", "9999-01-01")],
    );
    let a = attributes(&h);
    assert_eq!(a["gen_ai.tool.name"].len(), trace::MAX_VALUE);
    assert_eq!(a["jsonrpc.request.id"], "a?b");
    assert!(!a.contains_key("mcp.protocol.version"), "{a:?}");
    // A multi-byte character is never cut in half.
    let cut = trace::bounded(&"é".repeat(100));
    assert_eq!(cut.len(), trace::MAX_VALUE);
    assert!(cut.chars().all(|c| c == 'é'));
}

#[test]
fn a_decision_that_waited_for_its_secrets_is_traced_as_it_settled() {
    let cfg = json!({
        "vault": {"cluster": "vault", "role": "agent"},
        "tracing": {"attributes": true},
        "resources": {"hello-skill": {"type": "skill",
            "metadata": {"team": "platform", "environment": "production"},
            "secrets": [{"kv": "secret/data/mcp/agents/{agent}/credentials",
                "field": "api_key", "header": "x-api-key"}]}}
    });
    let mut f = Filter::new(cfg.to_string().as_bytes(), 7).unwrap();
    let mut root = MockHost::new();
    f.on_configured(&mut root, "test");
    let mut h = request("POST", "/hello-skill/greet", Some(claims(json!({}))))
        .with_header("authorization", "Bearer jwt");
    h.stream = 9;
    let (flow, mut d) = f.on_request_headers(&mut h);
    assert_eq!(flow, Flow::Paused);
    assert_eq!(attributes(&h)["agentplane.decision.outcome"], "pending");
    // The login fails: refused (503) while the stream waited.
    f.on_tick(&mut root);
    let t = root.dispatched[0].token;
    f.on_callout_response(&mut root, t, Some(500), None);
    assert_eq!(root.stream_replies[0].1.status, 503);
    // The stream's log phase (before Envoy ends the span) says so.
    f.on_log(&mut h, &mut d);
    let a = attributes(&h);
    assert_eq!(a["agentplane.decision.outcome"], "denied");
    assert_eq!(a["error.type"], "unavailable");
    assert_eq!(a["agentplane.decision.id"], d.id);
}
