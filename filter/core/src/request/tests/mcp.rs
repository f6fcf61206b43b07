//! MCP requests decided on their body: JSON-RPC errors with the request id,
//! malformed and smuggling bodies, bodies the host cannot hand over, GET
//! and DELETE, resource metadata and scopes.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use super::*;
#[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
use wasm_bindgen_test::wasm_bindgen_test as test;

#[test]
fn an_mcp_tool_call_is_decided_on_its_body() {
    let mut f = Filter::new(MCP_CONFIG.as_bytes(), 7).unwrap();
    let (flow, d, h) = mcp_call(
        &mut f,
        &["tools:call"],
        Some(CALL),
        &[("x-agent-tool", "run_shell")],
    );
    assert_eq!(flow, Flow::Continue, "{:?}", h.reply);
    assert!(d.allowed());
    assert_eq!(h.header_values("x-agent-id"), ["support-triage@clients"]);
    assert_eq!(h.header_values(":path"), ["/mcp"]);
    // The tool goes upstream as a trusted header; a client's is gone.
    assert_eq!(h.header_values("x-agent-tool"), ["lookup_ticket"]);
}

#[test]
fn an_mcp_refusal_is_a_json_rpc_error_with_the_request_id() {
    let mut f = Filter::new(MCP_CONFIG.as_bytes(), 7).unwrap();
    // tools:list does not grant tools/call.
    let (flow, d, h) = mcp_call(&mut f, &["tools:list"], Some(CALL), &[]);
    assert_eq!(flow, Flow::Replied);
    assert_eq!(h.reply.as_ref().unwrap().status, 403);
    let b = body(&h);
    assert_eq!(b["jsonrpc"], "2.0");
    assert_eq!(b["id"], 42);
    assert_eq!(b["error"]["code"], crate::mcp::code::FORBIDDEN);
    assert_eq!(b["error"]["data"]["decision_id"], d.id);
    assert!(b["error"]["message"]
        .as_str()
        .unwrap()
        .contains("missing permission tools:call for action call_tool"));
}

#[test]
fn malformed_or_smuggling_mcp_bodies_are_refused_before_the_policy() {
    let mut f = Filter::new(MCP_CONFIG.as_bytes(), 7).unwrap();
    let perms = &["tools:call"];
    for (body, code) in [
        ("{not json", crate::mcp::code::PARSE_ERROR),
        (
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"lookup_ticket","name":"delete_all"}}"#,
            crate::mcp::code::PARSE_ERROR,
        ),
        (
            r#"[{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"x"}}]"#,
            crate::mcp::code::INVALID_REQUEST,
        ),
    ] {
        let (flow, _, h) = mcp_call(&mut f, perms, Some(body), &[]);
        assert_eq!(flow, Flow::Replied, "{body}");
        assert_eq!(h.reply.as_ref().unwrap().status, 400);
        assert_eq!(body_code(&h), code, "{body}");
    }
    // A mirror header that contradicts the body (2026-07-28 semantics).
    let (flow, _, h) = mcp_call(
        &mut f,
        perms,
        Some(CALL),
        &[("mcp-method", "tools/call"), ("mcp-name", "harmless_tool")],
    );
    assert_eq!(flow, Flow::Replied);
    assert_eq!(body_code(&h), crate::mcp::code::HEADER_MISMATCH);
    assert_eq!(body(&h)["id"], 42);
    // An unsupported revision.
    let (_, _, h) = mcp_call(
        &mut f,
        perms,
        Some(CALL),
        &[("mcp-protocol-version", "2024-01-01")],
    );
    assert_eq!(
        body_code(&h),
        crate::mcp::code::UNSUPPORTED_PROTOCOL_VERSION
    );
    // Too large: 413, nothing upstream.
    let (flow, _, h) = mcp_call(&mut f, perms, None, &[]);
    assert_eq!(flow, Flow::Replied);
    assert_eq!(h.reply.as_ref().unwrap().status, 413);
    assert_eq!(h.header_writes, 0);
}

#[test]
fn a_body_the_host_cannot_hand_over_is_a_503_not_a_parse_error() {
    let mut f = Filter::new(MCP_CONFIG.as_bytes(), 7).unwrap();
    let mut h = request(
        "POST",
        "/mcp://tickets-mcp/mcp",
        Some(mcp_claims(&["tools:call"])),
    );
    let (flow, mut waiting) = f.on_request_headers(&mut h);
    assert_eq!(flow, Flow::NeedBody);
    let (flow, d) = f.on_request_body(&mut h, &mut waiting, RequestBody::Unreadable);
    assert_eq!(flow, Flow::Replied);
    let reply = h.reply.as_ref().unwrap();
    assert_eq!(reply.status, 503);
    assert_eq!(d.id, waiting.id);
    assert_eq!(body(&h)["error"]["data"]["decision_id"], d.id.as_str());
    assert_eq!(h.header_writes, 0, "nothing forwarded");
}

fn body_code(h: &MockHost) -> i64 {
    body(h)["error"]["code"].as_i64().unwrap()
}

#[test]
fn mcp_get_and_delete_are_their_own_actions() {
    let mut f = Filter::new(MCP_CONFIG.as_bytes(), 7).unwrap();
    // Ending a session needs no permission (the shipped policy's
    // session_actions); opening the server's stream needs mcp:connect.
    let mut h = request(
        "DELETE",
        "/mcp://tickets-mcp/mcp",
        Some(mcp_claims(&["tools:call"])),
    );
    assert_eq!(f.on_request_headers(&mut h).0, Flow::Continue);
    let (method, action) = ("GET", "open_stream");
    let mut h = request(
        method,
        "/mcp://tickets-mcp/mcp",
        Some(mcp_claims(&["tools:call"])),
    );
    let (flow, _) = f.on_request_headers(&mut h);
    assert_eq!(flow, Flow::Replied, "{method}: needs mcp:connect");
    assert!(
        body(&h)["reason"].as_str().unwrap().contains(action),
        "{method}"
    );
    let mut h = request(
        method,
        "/mcp://tickets-mcp/mcp",
        Some(mcp_claims(&["mcp:connect"])),
    );
    assert_eq!(f.on_request_headers(&mut h).0, Flow::Continue, "{method}");
}

#[test]
fn a_body_for_a_stream_that_never_waited_fails_closed() {
    let mut f = Filter::new(MCP_CONFIG.as_bytes(), 7).unwrap();
    let mut h = request(
        "POST",
        "/mcp://tickets-mcp/mcp",
        Some(mcp_claims(&["tools:call"])),
    );
    h.stream = 99;
    let (flow, mut waiting) = f.on_request_headers(&mut h);
    assert_eq!(flow, Flow::NeedBody);
    let (flow, mut decided) =
        f.on_request_body(&mut h, &mut waiting, RequestBody::Complete(CALL.as_bytes()));
    assert_eq!(flow, Flow::Continue);
    // The host hands a body again: to the waiting decision it already
    // used, or to the decision that came of it. Neither decides anything.
    let (flow, d) = f.on_request_body(&mut h, &mut waiting, RequestBody::Complete(CALL.as_bytes()));
    assert_eq!(flow, Flow::Replied);
    assert_eq!(d.status(), 503);
    let (flow, d) = f.on_request_body(&mut h, &mut decided, RequestBody::Complete(CALL.as_bytes()));
    assert_eq!(flow, Flow::Replied);
    assert_eq!(d.status(), 503);
    // A copy of a waiting decision does not carry its wait.
    let mut h = request(
        "POST",
        "/mcp://tickets-mcp/mcp",
        Some(mcp_claims(&["tools:call"])),
    );
    let (_, waiting) = f.on_request_headers(&mut h);
    let (flow, d) = f.on_request_body(
        &mut h,
        &mut waiting.clone(),
        RequestBody::Complete(CALL.as_bytes()),
    );
    assert_eq!((flow, d.status()), (Flow::Replied, 503));
}

#[test]
fn protected_resource_metadata_is_served_and_401s_point_to_it() {
    let cfg = r#"{"oauth": {"authorization_servers": ["https://idp.example.com"]},
        "resources": {"tickets-mcp": {"type": "tool", "protocol": "mcp",
            "resource_uri": "https://gw.example.com/tickets-mcp/mcp",
            "metadata": {"team": "customer-success", "environment": "production"}}}}"#;
    let mut f = Filter::new(cfg.as_bytes(), 7).unwrap();
    let mut h = request(
        "GET",
        "/.well-known/oauth-protected-resource/tickets-mcp/mcp",
        None,
    );
    let (flow, _) = f.on_request_headers(&mut h);
    assert_eq!(flow, Flow::Replied);
    assert_eq!(h.reply.as_ref().unwrap().status, 200);
    assert_eq!(
        body(&h)["resource"],
        "https://gw.example.com/tickets-mcp/mcp"
    );
    // No token: the challenge names the metadata, without an error.
    let mut h = request("POST", "/mcp://tickets-mcp/mcp", None);
    f.on_request_headers(&mut h);
    assert_eq!(h.reply.as_ref().unwrap().status, 401);
    assert_eq!(
        reply_header(&h, "www-authenticate"),
        Some(
            r#"Bearer resource_metadata="https://gw.example.com/.well-known/oauth-protected-resource/tickets-mcp/mcp""#
        )
    );
    // A token whose claims are unusable: invalid_token.
    let mut h = request(
        "POST",
        "/mcp://tickets-mcp/mcp",
        Some(claims(json!({"sub": ""}))),
    );
    f.on_request_headers(&mut h);
    assert!(reply_header(&h, "www-authenticate")
        .unwrap()
        .ends_with(r#", error="invalid_token""#));
}

#[test]
fn a_missing_scope_is_named_so_the_client_can_step_up() {
    let mut f = Filter::new(MCP_CONFIG.as_bytes(), 7).unwrap();
    let (_, _, h) = mcp_call(&mut f, &["tools:list"], Some(CALL), &[]);
    assert_eq!(h.reply.as_ref().unwrap().status, 403);
    assert_eq!(
        reply_header(&h, "www-authenticate"),
        Some(
            r#"Bearer error="insufficient_scope", scope="tools:call", error_description="missing scope(s): tools:call""#
        )
    );
    // A refusal for another reason names no scope: it is the policy's
    // answer to the call (a tool result marked as an error).
    let other = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"run_shell"}}"#;
    let (_, _, h) = mcp_call(&mut f, &["tools:call"], Some(other), &[]);
    assert_eq!(h.reply.as_ref().unwrap().status, 200);
    assert_eq!(body(&h)["result"]["isError"], true);
    assert_eq!(reply_header(&h, "www-authenticate"), None);
}
