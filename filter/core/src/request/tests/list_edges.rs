//! What reaches upstream and the client is what the policy decided: the
//! parsed message goes upstream in place of the client's bytes, and every
//! list result on every response of an MCP service passes through the
//! policy's `visible` rule or is refused (`MockHost`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use super::*;
use crate::host::MockHost;
use serde_json::{json, Value};
#[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
use wasm_bindgen_test::wasm_bindgen_test as test;

const TOOLS: &str = r#"{"jsonrpc":"2.0","id":5,"result":{"tools":[{"name":"search_docs"},{"name":"run_shell"},{"name":"delete_ticket"},{"name":"lookup_ticket"}]}}"#;
const LIST: &str = r#"{"jsonrpc":"2.0","id":5,"method":"tools/list"}"#;

/// An MCP POST through both phases, with `headers` added.
fn post(
    f: &mut Filter,
    perms: &[&str],
    body: &str,
    headers: &[(&str, &str)],
) -> (Flow, Decision, MockHost) {
    let mut h = request("POST", "/mcp://tickets-mcp/mcp", Some(mcp_claims(perms)));
    for (k, v) in headers {
        h = h.with_header(k, v);
    }
    let (flow, mut waiting) = f.on_request_headers(&mut h);
    assert_eq!(flow, Flow::NeedBody);
    let (flow, d) = f.on_request_body(&mut h, &mut waiting, RequestBody::Complete(body.as_bytes()));
    (flow, d, h)
}

/// The response to `d`'s request, with these headers and body chunks;
/// returns what the client receives.
fn respond(
    f: &mut Filter,
    d: &mut Decision,
    h: &mut MockHost,
    headers: &[(&str, &str)],
    chunks: &[&[u8]],
) -> (ResponseBody, Vec<u8>) {
    h.response_headers = headers
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let read = f.on_response_headers(h, d);
    if read == ResponseBody::Untouched {
        return (read, chunks.concat());
    }
    (read, stream_through(f, d, h, chunks))
}

const SSE: (&str, &str) = ("content-type", "text/event-stream");
const JSON: (&str, &str) = ("content-type", "application/json");

#[test]
fn case_variant_keys_are_refused_and_the_parsed_message_is_what_goes_upstream() {
    let mut f = Filter::new(MCP_CONFIG.as_bytes(), 7).unwrap();
    // Authorized as lookup, executed as delete by a Go server: refused.
    let smuggled = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"lookup_ticket","Name":"delete_ticket","arguments":{"team":"customer-success"}}}"#;
    let (flow, _, h) = post(
        &mut f,
        &["tools:call"],
        smuggled,
        &[("content-length", "150")],
    );
    assert_eq!(flow, Flow::Replied);
    assert_eq!(body(&h)["error"]["code"], crate::mcp::code::PARSE_ERROR);
    assert!(h.forwarded_body.is_none() && h.header_writes == 0);
    // An allowed call: the bytes upstream are the parsed message, with the
    // content-length that goes with them.
    let spaced = "{ \"jsonrpc\" : \"2.0\", \"id\" : 42, \"method\" : \"tools/call\",\n \"params\" : {\"name\":\"lookup_ticket\",\"arguments\":{\"team\":\"customer-success\",\"id\":\"T\\u002d1\"}} }";
    let (flow, _, h) = post(
        &mut f,
        &["tools:call"],
        spaced,
        &[("content-length", &spaced.len().to_string())],
    );
    assert_eq!(flow, Flow::Continue, "{:?}", h.reply);
    let sent = h.forwarded_body.clone().unwrap();
    assert_eq!(
        std::str::from_utf8(&sent).unwrap(),
        r#"{"id":42,"jsonrpc":"2.0","method":"tools/call","params":{"arguments":{"id":"T-1","team":"customer-success"},"name":"lookup_ticket"}}"#
    );
    assert_eq!(h.header_values("content-length"), [sent.len().to_string()]);
}

#[test]
fn a_proxy_that_cannot_replace_the_body_fails_closed() {
    let mut f = Filter::new(MCP_CONFIG.as_bytes(), 7).unwrap();
    let mut h = request(
        "POST",
        "/mcp://tickets-mcp/mcp",
        Some(mcp_claims(&["tools:list"])),
    );
    h.refuse_body_writes = true;
    let (flow, mut waiting) = f.on_request_headers(&mut h);
    assert_eq!(flow, Flow::NeedBody);
    let (flow, d) = f.on_request_body(&mut h, &mut waiting, RequestBody::Complete(LIST.as_bytes()));
    assert_eq!(flow, Flow::Replied);
    assert_eq!(h.reply.as_ref().unwrap().status, 503);
    assert_eq!(body(&h)["error"]["data"]["decision_id"], d.id.as_str());
    assert_eq!(h.header_writes, 0, "nothing forwarded");
}

fn secrets_mcp_filter() -> Filter {
    let mut cfg: Value = serde_json::from_str(MCP_CONFIG).unwrap();
    cfg["vault"] = json!({"cluster": "vault", "role": "agent"});
    cfg["resources"]["tickets-mcp"]["secrets"] = json!([{"kv": "secret/data/mcp/agents/{agent}/credentials", "field": "api_key", "header": "x-api-key"}]);
    Filter::new(cfg.to_string().as_bytes(), 7).unwrap()
}

/// The first list of an agent whose secrets are not cached yet waits for
/// them; its answer is filtered all the same.
#[test]
fn a_list_that_waited_for_secrets_is_still_filtered() {
    let mut f = secrets_mcp_filter();
    let (flow, mut d, mut h) = post(
        &mut f,
        &["tools:list", "tools:call"],
        LIST,
        &[("authorization", "Bearer the.agent.jwt")],
    );
    assert_eq!(flow, Flow::Paused, "{:?}", h.reply);
    assert!(d.list.is_some(), "the list job travels through the pause");
    let mut root = MockHost::new();
    f.on_tick(&mut root);
    let t = root.dispatched[0].token;
    f.on_callout_response(
        &mut root,
        t,
        Some(200),
        Some(br#"{"auth":{"client_token":"s.x","lease_duration":600}}"#),
    );
    let t = root.dispatched[1].token;
    f.on_callout_response(
        &mut root,
        t,
        Some(200),
        Some(br#"{"data":{"data":{"api_key":"k-1"}}}"#),
    );
    assert_eq!(root.resumed.len(), 1);
    let (read, out) = respond(&mut f, &mut d, &mut h, &[JSON], &[TOOLS.as_bytes()]);
    assert_eq!(read, ResponseBody::Buffered);
    let v: Value = serde_json::from_slice(&out).unwrap();
    let names: Vec<&str> = v["result"]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["search_docs", "lookup_ticket"]);
}

/// Events whose data a lax parser reads but this one cannot: each ends
/// the stream with the JSON-RPC error instead of passing as is.
#[test]
fn unparseable_list_events_end_the_stream_instead_of_passing() {
    let mut f = Filter::new(MCP_CONFIG.as_bytes(), 7).unwrap();
    let deep = format!("{}1{}", "[".repeat(200), "]".repeat(200));
    let hidden: Vec<Vec<u8>> = vec![
        // A lone surrogate in a listed name: JSON.parse takes it.
        br#"data: {"jsonrpc":"2.0","id":5,"result":{"tools":[{"name":"run_shell","x":"\udc00"}]}}"#.to_vec(),
        // A number JavaScript reads as Infinity.
        br#"data: {"jsonrpc":"2.0","id":5,"result":{"tools":[{"name":"run_shell"}],"n":1e400}}"#.to_vec(),
        format!(r#"data: {{"jsonrpc":"2.0","id":5,"result":{{"tools":[{{"name":"run_shell"}}],"d":{deep}}}}}"#).into_bytes(),
        b"data: {\"jsonrpc\":\"2.0\",\"id\":5,\"result\":{\"tools\":[{\"name\":\"run_shell\",\"t\":\"\xff\"}]}}".to_vec(),
        // Duplicate result keys: which one a client takes is its choice.
        br#"data: {"jsonrpc":"2.0","id":5,"result":{"tools":[]},"result":{"tools":[{"name":"run_shell"}]}}"#.to_vec(),
    ];
    for mut event in hidden {
        event.extend_from_slice(b"\n\n");
        let (_, mut d, mut h) = post(&mut f, &["tools:list", "tools:call"], LIST, &[]);
        let (_, out) = respond(
            &mut f,
            &mut d,
            &mut h,
            &[SSE],
            &[&event, b"data: {\"jsonrpc\":\"2.0\",\"method\":\"x\"}\n\n"],
        );
        let text = String::from_utf8_lossy(&out);
        assert!(!text.contains("run_shell"), "{text}");
        assert!(text.contains("unreadable"), "{text}");
        assert!(
            !text.contains("\"x\""),
            "the rest of the stream is dropped: {text}"
        );
    }
    // A byte-order mark does not hide the first event from the filter.
    let (_, mut d, mut h) = post(&mut f, &["tools:list", "tools:call"], LIST, &[]);
    let bom = format!("\u{feff}data: {TOOLS}\n\n");
    let (_, out) = respond(&mut f, &mut d, &mut h, &[SSE], &[bom.as_bytes()]);
    let text = String::from_utf8_lossy(&out);
    assert!(
        !text.contains("run_shell") && text.contains("lookup_ticket"),
        "{text}"
    );
}

/// A list result that reaches the client on a stream the filter cannot
/// tie to the list request it decided: a GET stream (resumption, server
/// messages), or a tool call's stream carrying another message's answer.
#[test]
fn list_results_on_streams_not_tied_to_a_list_request_are_refused() {
    let mut f = Filter::new(MCP_CONFIG.as_bytes(), 7).unwrap();
    let mut h = request(
        "GET",
        "/mcp://tickets-mcp/mcp",
        Some(mcp_claims(&["tools:call", "tools:list", "mcp:connect"])),
    )
    .with_header("last-event-id", "r1");
    let (flow, mut d) = f.on_request_headers(&mut h);
    assert_eq!(flow, Flow::Continue, "{:?}", h.reply);
    let replayed = format!("id: r1\ndata: {TOOLS}\n\n");
    let (read, out) = respond(
        &mut f,
        &mut d,
        &mut h,
        &[SSE],
        &[replayed.as_bytes(), b": keepalive\n\n"],
    );
    assert_eq!(read, ResponseBody::Streamed);
    let text = String::from_utf8_lossy(&out);
    assert!(
        !text.contains("run_shell") && !text.contains("search_docs"),
        "{text}"
    );
    assert!(text.contains("does not answer the list request"), "{text}");
    assert!(
        text.contains("id: r1") && text.ends_with(": keepalive\n\n"),
        "{text}"
    );
    // A tool call's event stream: its own answer passes, a list for
    // another id does not; templates too.
    let call = r#"{"jsonrpc":"2.0","id":9,"method":"tools/call","params":{"name":"lookup_ticket","arguments":{"team":"customer-success"}}}"#;
    let (flow, mut d, mut h) = post(&mut f, &["tools:call", "tools:list"], call, &[]);
    assert_eq!(flow, Flow::Continue, "{:?}", h.reply);
    let other = format!("data: {}\n\n", TOOLS);
    let templates = "data: {\"jsonrpc\":\"2.0\",\"id\":7,\"result\":{\"resourceTemplates\":[{\"uriTemplate\":\"file:///{x}\",\"name\":\"x\"}]}}\n\n";
    let own = "data: {\"jsonrpc\":\"2.0\",\"id\":9,\"result\":{\"content\":[{\"type\":\"text\",\"text\":\"ok\"}]}}\n\n";
    let (_, out) = respond(
        &mut f,
        &mut d,
        &mut h,
        &[SSE],
        &[other.as_bytes(), templates.as_bytes(), own.as_bytes()],
    );
    let text = String::from_utf8_lossy(&out);
    assert!(
        !text.contains("run_shell") && !text.contains("uriTemplate"),
        "{text}"
    );
    assert_eq!(
        text.matches("does not answer the list request").count(),
        2,
        "{text}"
    );
    assert!(text.ends_with(own), "{text}");
    // A tool call's JSON answer is its own; on this service, whose tools
    // are pinned (the shipped data), it is read all the same, so that no
    // list hides in it under another request's id (tests/pins.rs), and
    // passes as sent.
    let (_, mut d, mut h) = post(&mut f, &["tools:call", "tools:list"], call, &[]);
    let (read, out) = respond(&mut f, &mut d, &mut h, &[JSON], &[b"{}"]);
    assert_eq!(read, ResponseBody::Buffered);
    assert_eq!(out, b"{}");
    // Compressed, it cannot be read: refused.
    let (_, mut d, mut h) = post(&mut f, &["tools:call", "tools:list"], call, &[]);
    let (_, out) = respond(
        &mut f,
        &mut d,
        &mut h,
        &[JSON, ("content-encoding", "gzip")],
        &[b"x"],
    );
    assert!(String::from_utf8_lossy(&out).contains("unreadable"));
    // An event stream that cannot be read could carry a list: refused.
    let (_, mut d, mut h) = post(&mut f, &["tools:call", "tools:list"], call, &[]);
    let (_, out) = respond(
        &mut f,
        &mut d,
        &mut h,
        &[SSE, ("content-encoding", "gzip")],
        &[b"x"],
    );
    assert!(String::from_utf8_lossy(&out).contains("unreadable"));
}

/// Forms the filter cannot read or that could be read two ways are
/// refused on a list request: a batch, a compressed body, an unknown type,
/// and a list in another field than the one asked for.
#[test]
fn batched_compressed_and_unknown_typed_list_answers_are_refused() {
    let mut f = Filter::new(MCP_CONFIG.as_bytes(), 7).unwrap();
    let batch = format!("[{TOOLS}]");
    let prompts = TOOLS.replace("\"tools\"", "\"prompts\"");
    let both = TOOLS.replace(
        "\"result\":{",
        "\"result\":{\"prompts\":[{\"name\":\"p\"}],",
    );
    for (headers, chunk) in [
        (vec![JSON], batch.as_str()),
        (vec![JSON, ("content-encoding", "gzip")], TOOLS),
        (vec![("content-type", "text/plain")], TOOLS),
        (vec![], TOOLS),
        (vec![JSON], prompts.as_str()),
        (vec![JSON], both.as_str()),
    ] {
        let (_, mut d, mut h) = post(&mut f, &["tools:list", "tools:call"], LIST, &[]);
        let (_, out) = respond(&mut f, &mut d, &mut h, &headers, &[chunk.as_bytes()]);
        let text = String::from_utf8_lossy(&out);
        assert!(!text.contains("run_shell"), "{headers:?}: {text}");
        let v: Value =
            serde_json::from_slice(&out).unwrap_or_else(|_| panic!("{headers:?}: {text}"));
        assert_eq!(
            v["error"]["code"],
            crate::mcp::code::UNAVAILABLE,
            "{headers:?}: {text}"
        );
        assert_eq!(h.response_header("content-encoding"), None);
    }
}

/// A policy without a `visible` rule shows no list entry at all.
#[test]
fn a_policy_without_a_visible_rule_shows_nothing() {
    let policy =
        crate::policy::Policy::compile(&[("p.rego", "package p\nallow := true\n")], "{}", "data.p")
            .unwrap();
    let mut f = Filter::with_policy(Config::from_json(MCP_CONFIG.as_bytes()).unwrap(), policy, 1);
    let (flow, mut d, mut h) = post(&mut f, &["tools:list"], LIST, &[]);
    assert_eq!(flow, Flow::Continue, "{:?}", h.reply);
    let (_, out) = respond(&mut f, &mut d, &mut h, &[JSON], &[TOOLS.as_bytes()]);
    let v: Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(v["result"]["tools"], json!([]));
}
