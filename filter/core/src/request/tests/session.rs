//! MCP sessions bound to the principal that opened them, through the
//! request path on a proxy with two workers (two filters sharing one
//! `SharedData`, `MockHost`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use super::*;
use crate::host::{MockHost, SharedData};
use serde_json::{json, Value};
#[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
use wasm_bindgen_test::wasm_bindgen_test as test;

const INIT: &str = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"t","version":"1"}}}"#;
const LIST: &str = r#"{"jsonrpc":"2.0","id":7,"method":"tools/list"}"#;
const SESSION: &str = "8c1d0b0e-a-session-id";

fn agent(sub: &str) -> Value {
    claims(json!({"sub": sub, "permissions": ["mcp:connect", "tools:list"]}))
}

/// One worker's filter, its slots created as at configure time.
fn worker(shared: &SharedData, seed: u64, config: &str) -> Filter {
    let mut f = Filter::new(config.as_bytes(), seed).unwrap();
    let mut h = MockHost::new();
    h.shared = shared.clone();
    f.on_configured(&mut h, "test");
    f
}

fn two_workers(shared: &SharedData) -> (Filter, Filter) {
    (worker(shared, 1, MCP_CONFIG), worker(shared, 2, MCP_CONFIG))
}

/// An MCP request by `who`, with `session` as its `mcp-session-id`; a POST
/// goes through both phases with `body`.
fn send(
    f: &mut Filter,
    shared: &SharedData,
    method: &str,
    who: &str,
    session: Option<&str>,
    body: &str,
) -> (Flow, Decision, MockHost) {
    let mut h = request(method, "/mcp://tickets-mcp/mcp", Some(agent(who)));
    h.shared = shared.clone();
    if let Some(s) = session {
        h = h.with_header("mcp-session-id", s);
    }
    let (flow, mut d) = f.on_request_headers(&mut h);
    if flow != Flow::NeedBody {
        return (flow, d, h);
    }
    let (flow, d) = f.on_request_body(&mut h, &mut d, RequestBody::Complete(body.as_bytes()));
    (flow, d, h)
}

/// The upstream answers `d`'s request with `status` and these headers.
fn respond(f: &Filter, h: &mut MockHost, d: &mut Decision, status: &str, headers: &[(&str, &str)]) {
    h.response_headers = vec![(":status".into(), status.into())];
    h.response_headers
        .extend(headers.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    f.on_response_headers(h, d);
}

/// Agent `who` opens `SESSION` through `f`: its initialize is forwarded
/// and the server answers with the session id.
fn open(f: &mut Filter, shared: &SharedData, who: &str) {
    let (flow, mut d, mut h) = send(f, shared, "POST", who, None, INIT);
    assert_eq!(flow, Flow::Continue, "{:?}", h.reply);
    respond(f, &mut h, &mut d, "200", &[("mcp-session-id", SESSION)]);
}

#[test]
fn a_session_id_replayed_by_another_agent_is_refused() {
    let shared = SharedData::default();
    let (mut w1, mut w2) = two_workers(&shared);
    open(&mut w1, &shared, "agent-a@clients");
    // Agent b, allowed to list on its own (and that decision cached)...
    let (flow, ..) = send(&mut w2, &shared, "POST", "agent-b@clients", None, LIST);
    assert_eq!(flow, Flow::Continue);
    // ... replays a's session id, on either worker: refused as the MCP
    // spec answers an unknown session, and nothing reaches the server.
    for w in [&mut w2, &mut w1] {
        let (flow, d, h) = send(w, &shared, "POST", "agent-b@clients", Some(SESSION), LIST);
        assert_eq!(flow, Flow::Replied);
        assert_eq!(h.reply.as_ref().unwrap().status, 404);
        assert_eq!(h.header_writes, 0, "nothing forwarded");
        let b = body(&h);
        assert_eq!(b["jsonrpc"], "2.0");
        assert_eq!(b["id"], 7);
        assert_eq!(b["error"]["code"], crate::mcp::code::FORBIDDEN);
        assert_eq!(
            b["error"]["message"],
            "MCP session belongs to another principal"
        );
        assert_eq!(b["error"]["data"]["decision_id"], d.id.as_str());
        assert_eq!(
            d.denial(),
            Some(&Denial::McpSession(crate::session::Refusal::Foreign))
        );
    }
    // a's own requests pass on the worker that did not see it open.
    let (flow, d, h) = send(
        &mut w2,
        &shared,
        "POST",
        "agent-a@clients",
        Some(SESSION),
        LIST,
    );
    assert_eq!(flow, Flow::Continue, "{:?}", h.reply);
    assert!(d.allowed());
    let (flow, ..) = send(
        &mut w2,
        &shared,
        "GET",
        "agent-a@clients",
        Some(SESSION),
        "",
    );
    assert_eq!(flow, Flow::Continue);
    // b's GET of the session's stream is refused alike (no JSON-RPC id:
    // the plain refusal body).
    let (flow, d, h) = send(
        &mut w1,
        &shared,
        "GET",
        "agent-b@clients",
        Some(SESSION),
        "",
    );
    assert_eq!(flow, Flow::Replied);
    assert_eq!(h.reply.as_ref().unwrap().status, 404);
    assert_eq!(body(&h)["decision_id"], d.id.as_str());
}

#[test]
fn a_session_id_the_filter_never_bound_is_refused() {
    let shared = SharedData::default();
    let (mut w1, _) = two_workers(&shared);
    // Opened before the filter was deployed, or its binding lost.
    let (flow, d, h) = send(
        &mut w1,
        &shared,
        "POST",
        "agent-a@clients",
        Some("opened-elsewhere"),
        LIST,
    );
    assert_eq!(flow, Flow::Replied);
    assert_eq!(h.reply.as_ref().unwrap().status, 404);
    assert_eq!(
        d.denial(),
        Some(&Denial::McpSession(crate::session::Refusal::Unknown))
    );
    assert!(body(&h)["error"]["message"]
        .as_str()
        .unwrap()
        .starts_with("MCP session not found"));
    // A service that is not MCP is not concerned.
    let mut h = request("GET", "/mcp://tickets/t/1", Some(claims(json!({}))))
        .with_header("mcp-session-id", "opened-elsewhere");
    h.shared = shared.clone();
    let cfg: Value = json!({"resources": {
        "tickets": {"type": "data", "metadata": {"team": "customer-success", "environment": "production"}}}});
    let mut plain = worker(&shared, 3, &cfg.to_string());
    assert_eq!(
        plain.on_request_headers(&mut h).0,
        Flow::Continue,
        "{:?}",
        h.reply
    );
}

#[test]
fn ending_a_session_is_bound_alike_and_frees_its_binding() {
    let shared = SharedData::default();
    let (mut w1, mut w2) = two_workers(&shared);
    open(&mut w1, &shared, "agent-a@clients");
    let (flow, _, h) = send(
        &mut w2,
        &shared,
        "DELETE",
        "agent-b@clients",
        Some(SESSION),
        "",
    );
    assert_eq!(flow, Flow::Replied);
    assert_eq!(h.reply.as_ref().unwrap().status, 404);
    let (flow, mut d, mut h) = send(
        &mut w2,
        &shared,
        "DELETE",
        "agent-a@clients",
        Some(SESSION),
        "",
    );
    assert_eq!(flow, Flow::Continue, "{:?}", h.reply);
    respond(&w2, &mut h, &mut d, "200", &[]);
    // Ended: the id is unknown now, to its owner too.
    let (flow, d, _) = send(
        &mut w1,
        &shared,
        "POST",
        "agent-a@clients",
        Some(SESSION),
        LIST,
    );
    assert_eq!(flow, Flow::Replied);
    assert_eq!(
        d.denial(),
        Some(&Denial::McpSession(crate::session::Refusal::Unknown))
    );
}

#[test]
fn the_decision_log_names_a_session_by_its_digest_only() {
    let shared = SharedData::default();
    let mut cfg: Value = serde_json::from_str(MCP_CONFIG).unwrap();
    cfg["decision_log"] = json!({"enabled": true});
    let mut w = worker(&shared, 1, &cfg.to_string());
    let digest = |s: &str| {
        use sha2::Digest;
        sha2::Sha256::digest(s.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    };
    // The initialize's record names the session its answer opened.
    let (_, mut d, mut h) = send(&mut w, &shared, "POST", "agent-a@clients", None, INIT);
    respond(&w, &mut h, &mut d, "200", &[("mcp-session-id", SESSION)]);
    w.on_log(&mut h, &mut d);
    // A refused replay's record names the session it carried.
    let (_, mut d2, mut h2) = send(
        &mut w,
        &shared,
        "POST",
        "agent-b@clients",
        Some(SESSION),
        LIST,
    );
    w.on_log(&mut h2, &mut d2);
    let mut recs = Vec::new();
    for h in [&h, &h2] {
        let logs = h.logs.borrow();
        assert!(logs.iter().all(|(_, l)| !l.contains(SESSION)), "{logs:?}");
        recs.extend(
            logs.iter()
                .filter_map(|(_, l)| l.strip_prefix(crate::audit::PREFIX))
                .map(|l| serde_json::from_str::<Value>(l).unwrap()),
        );
    }
    assert_eq!(recs.len(), 2);
    assert_eq!(
        recs[0]["mcp_session"],
        json!({"bound_sha256": digest(SESSION)})
    );
    assert_eq!(
        recs[1]["mcp_session"],
        json!({"id_sha256": digest(SESSION)})
    );
    assert_eq!(recs[1]["status"], 404);
    assert_eq!(
        recs[1]["reason"],
        "MCP session belongs to another principal"
    );
    // And the id can never be copied into the input document.
    let mut cfg: Value = serde_json::from_str(MCP_CONFIG).unwrap();
    cfg["headers"] = json!({"input": ["Mcp-Session-Id"]});
    let e = Filter::new(cfg.to_string().as_bytes(), 1).unwrap_err();
    assert!(
        e.to_string().contains("never enters the input document"),
        "{e}"
    );
}

#[test]
fn two_session_headers_are_refused_before_anything_is_bound_or_checked() {
    let shared = SharedData::default();
    let (mut w1, _) = two_workers(&shared);
    open(&mut w1, &shared, "agent-a@clients");
    // b names its own (unknown) id first and a's second: a proxy or server
    // reading the other copy must never see a's session through b.
    let mut h = request(
        "POST",
        "/mcp://tickets-mcp/mcp",
        Some(agent("agent-b@clients")),
    )
    .with_header("mcp-session-id", "mine")
    .with_header("mcp-session-id", SESSION);
    h.shared = shared.clone();
    let (flow, _) = w1.on_request_headers(&mut h);
    assert_eq!(flow, Flow::Replied);
    assert_eq!(h.reply.as_ref().unwrap().status, 400);
}
