//! MCP at the edges clients hit (`MockHost`): every protocol era, a
//! service's own set of revisions, denials a client hands to its model,
//! scopes a client can step up to, session ends at any hour, and the
//! 2026-07-28 rules.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use super::*;
use crate::host::MockHost;
use crate::mcp::code;
use serde_json::{json, Value};
#[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
use wasm_bindgen_test::wasm_bindgen_test as test;

const URI: &str = "https://gw.example.com/tickets-mcp/mcp";

/// A token for the service (its audience is the service's resource URI).
fn mcp_claims(perms: &[&str]) -> Value {
    claims(json!({"permissions": perms, "aud": URI}))
}

const EARLY: u64 = NOON - 6 * 3_600_000_000_000;

fn filter_with(service: Value) -> Filter {
    let mut cfg: Value = serde_json::from_str(MCP_CONFIG).unwrap();
    for (k, v) in service.as_object().unwrap() {
        cfg["resources"]["tickets-mcp"][k] = v.clone();
    }
    cfg["oauth"] = json!({"authorization_servers": ["https://idp.example.com"]});
    cfg["resources"]["tickets-mcp"]["resource_uri"] =
        json!("https://gw.example.com/tickets-mcp/mcp");
    cfg["resources"]["tickets-mcp"]["scopes_supported"] = json!(["tools:call", "tools:list"]);
    Filter::new(cfg.to_string().as_bytes(), 7).unwrap()
}

fn post(
    f: &mut Filter,
    perms: &[&str],
    body: &str,
    headers: &[(&str, &str)],
    at: u64,
) -> (Flow, MockHost) {
    let mut h = request("POST", "/mcp://tickets-mcp/mcp", Some(mcp_claims(perms))).at(at);
    for (k, v) in headers {
        h = h.with_header(k, v);
    }
    let (flow, mut waiting) = f.on_request_headers(&mut h);
    assert_eq!(flow, Flow::NeedBody);
    let (flow, _) = f.on_request_body(&mut h, &mut waiting, RequestBody::Complete(body.as_bytes()));
    (flow, h)
}

const ALL: &[&str] = &["tools:call", "tools:list", "mcp:connect", "tickets:delete"];

fn init(version: &str) -> String {
    format!(
        r#"{{"jsonrpc":"2.0","id":0,"method":"initialize","params":{{"protocolVersion":"{version}","capabilities":{{"roots":{{}}}},"clientInfo":{{"name":"probe","version":"1"}}}}}}"#
    )
}

/// Clients of every era open sessions and call through the filter; the
/// 2024-11-05 and 2025-03-26 ones were refused before.
#[test]
fn every_protocol_era_initializes_and_calls() {
    let mut f = filter_with(json!({}));
    for v in crate::mcp::SUPPORTED_VERSIONS {
        let (flow, h) = post(&mut f, ALL, &init(v), &[], NOON);
        assert_eq!(flow, Flow::Continue, "{v}: {:?}", h.reply);
        let list = r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#;
        let mut hs = vec![("mcp-protocol-version", v)];
        if v >= "2026-07-28" {
            hs.push(("mcp-method", "tools/list"));
        }
        let (flow, h) = post(&mut f, ALL, list, &hs, NOON);
        assert_eq!(flow, Flow::Continue, "{v}: {:?}", h.reply);
    }
    // No header: taken as 2025-03-26, which every service accepts by default.
    let (flow, _) = post(
        &mut f,
        ALL,
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#,
        &[],
        NOON,
    );
    assert_eq!(flow, Flow::Continue);
}

/// A service that accepts fewer revisions refuses the others, at
/// `initialize` already, with the data a 2026-07-28 client retries from.
#[test]
fn a_service_refuses_revisions_outside_its_set_with_supported_and_requested() {
    let mut f = filter_with(json!({"mcp_versions": ["2025-11-25", "2026-07-28"]}));
    let (flow, h) = post(&mut f, ALL, &init("2025-03-26"), &[], NOON);
    assert_eq!(flow, Flow::Replied);
    assert_eq!(h.reply.as_ref().unwrap().status, 400);
    let e = &body(&h)["error"];
    assert_eq!(e["code"], code::UNSUPPORTED_PROTOCOL_VERSION);
    assert_eq!(e["data"]["supported"], json!(["2025-11-25", "2026-07-28"]));
    assert_eq!(e["data"]["requested"], "2025-03-26");
    assert!(e["data"]["decision_id"].is_string());
    // A request without the header is a 2025-03-26 one: refused here too.
    let (flow, h) = post(
        &mut f,
        ALL,
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#,
        &[],
        NOON,
    );
    assert_eq!(flow, Flow::Replied);
    assert_eq!(body(&h)["error"]["data"]["requested"], "2025-03-26");
    let (flow, _) = post(&mut f, ALL, &init("2026-07-28"), &[], NOON);
    assert_eq!(flow, Flow::Continue);
    // An unknown revision in the configuration is refused at start.
    let mut cfg: Value = serde_json::from_str(MCP_CONFIG).unwrap();
    cfg["resources"]["tickets-mcp"]["mcp_versions"] = json!(["2025-02-30"]);
    let e = Filter::new(cfg.to_string().as_bytes(), 7).expect_err("refused");
    assert!(
        e.to_string().contains("resources.tickets-mcp.mcp_versions"),
        "{e}"
    );
}

/// The TypeScript SDK throws on an HTTP error, so the model never saw why
/// a call was refused: a policy denial of a tool call is a tool result.
#[test]
fn a_denied_tool_call_is_a_tool_error_the_model_reads() {
    let mut f = filter_with(json!({}));
    let shell = r#"{"jsonrpc":"2.0","id":9,"method":"tools/call","params":{"name":"run_shell","arguments":{}}}"#;
    let (flow, h) = post(&mut f, ALL, shell, &[], NOON);
    assert_eq!(flow, Flow::Replied);
    let r = h.reply.as_ref().unwrap();
    assert_eq!(r.status, 200);
    let b = body(&h);
    assert_eq!(b["id"], 9);
    assert_eq!(b["result"]["isError"], true);
    let text = b["result"]["content"][0]["text"].as_str().unwrap();
    let id = reply_header(&h, "x-decision-id").unwrap();
    assert!(
        text.contains("tool run_shell is denied for every agent"),
        "{text}"
    );
    assert!(text.contains(id), "{text}");
    assert_eq!(
        b["result"]["_meta"]["io.agentplane/decision"]["decision_id"],
        id
    );
    // Per service: a JSON-RPC error instead, on the filter's own code.
    let mut f = filter_with(json!({"tool_denial": "error"}));
    let (_, h) = post(&mut f, ALL, shell, &[], NOON);
    assert_eq!(h.reply.as_ref().unwrap().status, 200);
    assert_eq!(body(&h)["error"]["code"], code::FORBIDDEN);
    // Another method's denial: 200 with a JSON-RPC error; a notification
    // has no answer, so it stays an HTTP refusal.
    let mut f = filter_with(json!({}));
    let revoked = || {
        request(
            "POST",
            "/mcp://tickets-mcp/mcp",
            Some(claims(json!({
            "sub": "revoked-agent@clients", "permissions": ["prompts:get", "mcp:connect"], "aud": URI}))),
        )
    };
    let mut h = revoked();
    let (flow, mut waiting) = f.on_request_headers(&mut h);
    assert_eq!(flow, Flow::NeedBody);
    f.on_request_body(
        &mut h,
        &mut waiting,
        RequestBody::Complete(
            br#"{"jsonrpc":"2.0","id":3,"method":"prompts/get","params":{"name":"p"}}"#,
        ),
    );
    assert_eq!(h.reply.as_ref().unwrap().status, 200, "{:?}", body(&h));
    assert_eq!(body(&h)["error"]["code"], code::FORBIDDEN);
    assert!(body(&h)["error"]["message"]
        .as_str()
        .unwrap()
        .contains("credentials revoked"));
    let mut h = revoked();
    let (_, mut waiting) = f.on_request_headers(&mut h);
    f.on_request_body(
        &mut h,
        &mut waiting,
        RequestBody::Complete(br#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#),
    );
    assert_eq!(h.reply.as_ref().unwrap().status, 403);
}

/// Missing scopes: a 403 naming every one of them, the metadata and a
/// description, so a client asks once; a 401 names the scopes to ask for.
#[test]
fn a_client_learns_every_missing_scope_and_where_to_ask() {
    let mut f = filter_with(json!({}));
    let delete = r#"{"jsonrpc":"2.0","id":4,"method":"tools/call","params":{"name":"delete_ticket","arguments":{}}}"#;
    let (_, h) = post(&mut f, &["tools:list"], delete, &[], NOON);
    assert_eq!(h.reply.as_ref().unwrap().status, 403);
    assert_eq!(
        reply_header(&h, "www-authenticate").unwrap(),
        r#"Bearer error="insufficient_scope", scope="tickets:delete tools:call", error_description="missing scope(s): tickets:delete tools:call", resource_metadata="https://gw.example.com/.well-known/oauth-protected-resource/tickets-mcp/mcp""#
    );
    let mut h = request("POST", "/mcp://tickets-mcp/mcp", None);
    f.on_request_headers(&mut h);
    assert_eq!(h.reply.as_ref().unwrap().status, 401);
    let challenge = reply_header(&h, "www-authenticate").unwrap();
    assert!(
        challenge.contains(r#"scope="tools:call tools:list""#),
        "{challenge}"
    );
    assert!(
        challenge.starts_with("Bearer resource_metadata="),
        "{challenge}"
    );
}

/// A method no action maps is unknown here, as a server says it.
#[test]
fn an_unmapped_method_is_method_not_found() {
    let mut f = filter_with(json!({}));
    let (_, h) = post(
        &mut f,
        ALL,
        r#"{"jsonrpc":"2.0","id":5,"method":"vendor/secret_admin"}"#,
        &[],
        NOON,
    );
    assert_eq!(h.reply.as_ref().unwrap().status, 200);
    assert_eq!(body(&h)["error"]["code"], code::METHOD_NOT_FOUND);
    assert_eq!(body(&h)["id"], 5);
}

/// Ending a session is always allowed (the shipped policy's off-hours
/// rule applies to destructive tools on MCP services, not to DELETE).
#[test]
fn a_session_ends_at_night_while_destructive_tools_wait_for_business_hours() {
    let mut f = filter_with(json!({}));
    let mut h = request("DELETE", "/mcp://tickets-mcp/mcp", Some(mcp_claims(&[]))).at(EARLY);
    assert_eq!(
        f.on_request_headers(&mut h).0,
        Flow::Continue,
        "{:?}",
        h.reply
    );
    let delete = r#"{"jsonrpc":"2.0","id":4,"method":"tools/call","params":{"name":"delete_ticket","arguments":{}}}"#;
    let (_, h) = post(&mut f, ALL, delete, &[], EARLY);
    assert!(
        body(&h)["result"]["content"][0]["text"]
            .as_str()
            .unwrap()
            .contains("tool delete_ticket is not permitted outside business hours"),
        "{:?}",
        body(&h)
    );
    let (flow, _) = post(&mut f, ALL, delete, &[], NOON);
    assert_eq!(flow, Flow::Continue);
}

/// 2026-07-28: the version header is required when `_meta` names one; a
/// client answers through multi-round-trip requests, not responses;
/// `Mcp-Name` is demanded for the three methods SEP-2243 names only;
/// listening for changes and tasks have actions.
#[test]
fn the_2026_07_28_rules() {
    let mut f = filter_with(json!({}));
    let meta = r#"{"jsonrpc":"2.0","id":1,"method":"tools/list","params":{"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28"}}}"#;
    let (_, h) = post(&mut f, ALL, meta, &[], NOON);
    assert_eq!(body(&h)["error"]["code"], code::HEADER_MISMATCH);
    let v = ("mcp-protocol-version", "2026-07-28");
    let answer = r#"{"jsonrpc":"2.0","id":"s1","result":{}}"#;
    let (_, h) = post(&mut f, ALL, answer, &[v], NOON);
    assert_eq!(body(&h)["error"]["code"], code::INVALID_REQUEST);
    let (flow, _) = post(
        &mut f,
        ALL,
        answer,
        &[("mcp-protocol-version", "2025-11-25")],
        NOON,
    );
    assert_eq!(flow, Flow::Continue);
    let subscribe =
        r#"{"jsonrpc":"2.0","id":2,"method":"resources/subscribe","params":{"uri":"file:///a"}}"#;
    let (_, h) = post(
        &mut f,
        &["resources:read"],
        subscribe,
        &[v, ("mcp-method", "resources/subscribe")],
        NOON,
    );
    assert_ne!(
        h.reply.as_ref().map(|_| body(&h)["error"]["code"].clone()),
        Some(json!(code::HEADER_MISMATCH)),
        "no Mcp-Name demanded for resources/subscribe"
    );
    for (method, params) in [
        ("subscriptions/listen", "{}"),
        ("tasks/get", r#"{"taskId":"t1"}"#),
    ] {
        let m = format!(r#"{{"jsonrpc":"2.0","id":3,"method":"{method}","params":{params}}}"#);
        let (flow, h) = post(&mut f, ALL, &m, &[v, ("mcp-method", method)], NOON);
        assert_eq!(
            flow,
            Flow::Continue,
            "{method}: {:?}",
            h.reply.as_ref().map(|_| body(&h))
        );
    }
}

/// The client and a multi-round-trip request's fields reach the policy.
#[test]
fn the_client_and_mrtr_fields_are_in_the_input() {
    let m = crate::mcp::parse(
        br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"t","inputResponses":{"a":{"ok":true}},"requestState":"sealed","_meta":{"io.modelcontextprotocol/clientInfo":{"name":"c","version":"2"},"io.modelcontextprotocol/clientCapabilities":{"elicitation":{}}}}}"#,
        crate::mcp::Limits { max_depth: 16 },
    )
    .unwrap();
    let doc = crate::value::from_rego(&crate::input::mcp_doc(&m, Some("2026-07-28"), None));
    assert_eq!(doc["client"]["info"]["name"], "c");
    assert_eq!(doc["client"]["capabilities"], json!({"elicitation": {}}));
    assert_eq!(doc["input_responses"], json!({"a": {"ok": true}}));
    assert_eq!(doc["request_state"], "sealed");
    let i = crate::mcp::parse(
        init("2025-03-26").as_bytes(),
        crate::mcp::Limits { max_depth: 16 },
    )
    .unwrap();
    let doc = crate::value::from_rego(&crate::input::mcp_doc(&i, None, None));
    assert_eq!(doc["requested_version"], "2025-03-26");
    assert_eq!(doc["client"]["info"]["name"], "probe");
    assert_eq!(doc["client"]["capabilities"], json!({"roots": {}}));
}
