//! MCP sessions bound to the principal that opened them, through real
//! Envoy with two workers: a session id one agent's `initialize` opened is
//! refused to every other agent on either worker, and keeps working for
//! its own agent on both (the binding is in shared data).

use agentplane_e2e::{add_tickets_mcp, http, Response, Stack};

const SESSION: &str = "e2e-5c7d1f0a-9b3e-session-never-log";
const INIT: &str = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"e2e","version":"1"}}}"#;
const PING: &str = r#"{"jsonrpc":"2.0","id":2,"method":"ping"}"#;

/// Envoy with two workers, the tickets MCP service and the decision log.
fn two_workers() -> Stack {
    let mut cfg = agentplane_e2e::logged_plugin_config();
    add_tickets_mcp(&mut cfg);
    Stack::start_workers(&cfg.to_string(), 2)
}

/// An MCP POST by agent `sub` (on its own connection), with `extra`
/// headers.
fn post(p: &Stack, sub: &str, body: &str, extra: &[(&str, &str)]) -> Response {
    let token = p.idp.agent_token(
        sub,
        "customer-success",
        "support",
        "production",
        &["mcp:connect"],
    );
    let auth = format!("Bearer {token}");
    let mut h = vec![
        ("authorization", auth.as_str()),
        ("content-type", "application/json"),
        ("accept", "application/json, text/event-stream"),
        ("mcp-protocol-version", "2025-06-18"),
    ];
    h.extend_from_slice(extra);
    http(p.envoy.port, "POST", "/mcp://tickets-mcp/mcp", &h, body)
}

#[test]
fn a_session_opened_by_one_agent_is_refused_to_another_on_either_worker() {
    let p = two_workers();
    let a = "session-owner@clients";
    let b = "session-thief@clients";
    // a opens a session: the server's answer carries its id.
    let reply_header = format!("mcp-session-id: {SESSION}");
    let r = post(
        &p,
        a,
        INIT,
        &[
            ("x-test-reply-header", &reply_header),
            (
                "x-test-reply",
                r#"{"jsonrpc":"2.0","id":1,"result":{"protocolVersion":"2025-06-18","capabilities":{},"serverInfo":{"name":"echo","version":"1"}}}"#,
            ),
        ],
    );
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.header("mcp-session-id"), Some(SESSION));
    let opened = r.header("x-decision-id").unwrap().to_string();
    p.upstream.clear();
    let before = p.envoy.connections_per_worker();
    let mut refused = None;
    // Each request on its own connection: both workers take some.
    for _ in 0..16 {
        let r = post(&p, b, PING, &[("mcp-session-id", SESSION)]);
        assert_eq!(r.status, 404, "{r:?}");
        let body = r.json();
        assert_eq!(body["id"], 2);
        assert_eq!(
            body["error"]["message"],
            "MCP session belongs to another principal"
        );
        assert_eq!(
            body["error"]["data"]["decision_id"],
            r.header("x-decision-id").unwrap()
        );
        refused.get_or_insert(r.header("x-decision-id").unwrap().to_string());
        let r = post(
            &p,
            a,
            PING,
            &[
                ("mcp-session-id", SESSION),
                ("x-test-reply", r#"{"jsonrpc":"2.0","id":2,"result":{}}"#),
            ],
        );
        assert_eq!(r.status, 200, "{r:?}");
    }
    let after = p.envoy.connections_per_worker();
    assert_eq!(after.len(), 2, "two workers: {after:?}");
    assert!(
        after.iter().zip(&before).all(|(n, m)| n > m),
        "both workers served the session ({before:?} -> {after:?})"
    );
    // Only a's requests reached the server with the session.
    let seen = p.upstream.seen();
    assert_eq!(seen.len(), 16);
    assert!(seen
        .iter()
        .all(|s| s.one("x-agent-id").as_deref() == Some(a)));
    // A session id no one opened through the proxy: refused to a as well.
    let r = post(&p, a, PING, &[("mcp-session-id", "opened-elsewhere")]);
    assert_eq!(r.status, 404, "{r:?}");
    assert!(r.json()["error"]["message"]
        .as_str()
        .unwrap()
        .starts_with("MCP session not found"));
    // The decision log names the session by one digest, never by its id.
    let bound = p.envoy.decision_record(&opened);
    let replay = p.envoy.decision_record(refused.as_deref().unwrap());
    let digest = bound["mcp_session"]["bound_sha256"].as_str().unwrap();
    assert_eq!(digest.len(), 64);
    assert_eq!(replay["mcp_session"]["id_sha256"], digest);
    assert_eq!(replay["status"], 404);
    assert!(
        !p.envoy.log().contains(SESSION),
        "session id in Envoy's log"
    );
}
