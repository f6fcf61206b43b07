//! Tests of the request path through `MockHost`, split by concern; this
//! file holds the requests, tokens and configurations they share.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use super::*;
use crate::config::SERVICE_HEADER;
use crate::host::MockHost;
use crate::pbstruct;
use serde_json::{json, Value};

mod approval;
mod audience;
mod cache;
mod decide;
mod edge;
mod envoy_compat;
mod exchange;
mod headers;
mod limits;
mod linked;
mod list_edges;
mod lists;
mod logging;
mod mcp;
mod pins;
mod route;
mod secrets;
mod session;
mod shadow;
mod signing;
mod traced;

const NOON: u64 = 1_746_273_600_000_000_000;
const EARLY: u64 = 1_746_252_000_000_000_000;

const CONFIG: &str = r#"{"resources": {
    "hello-skill": {"type": "skill", "metadata": {"team": "platform", "environment": "production"}},
    "tickets": {"type": "data", "metadata": {"team": "customer-success", "environment": "production"}}
}}"#;

fn filter() -> Filter {
    Filter::new(CONFIG.as_bytes(), 7).unwrap()
}

fn claims(extra: Value) -> Value {
    let mut c = json!({
        "sub": "support-triage@clients",
        "exp": 1_746_277_200,
        "permissions": ["skills:invoke", "data:read", "data:write"],
        "https://mcp.example.com/agent_type": "support",
        "https://mcp.example.com/team": "customer-success",
        "https://mcp.example.com/environment": "production",
    });
    for (k, v) in extra.as_object().unwrap() {
        c[k] = v.clone();
    }
    c
}

fn request(method: &str, path: &str, payload: Option<Value>) -> MockHost {
    let mut h = MockHost::new()
        .at(NOON)
        .with_header(":method", method)
        .with_header(":path", path)
        .with_header(":authority", "localhost:15000")
        .with_property(&["request", "id"], "req-123");
    if let Some(p) = payload {
        let mut ns = serde_json::Map::new();
        ns.insert("jwt_payload".into(), p);
        h = h.with_property(
            &["metadata"],
            pbstruct::encode_metadata(&[("envoy.filters.http.jwt_authn", &ns)]),
        );
    }
    h
}

fn body(h: &MockHost) -> Value {
    serde_json::from_slice(&h.reply.as_ref().expect("a reply").body).unwrap()
}

fn reply_header<'a>(h: &'a MockHost, name: &str) -> Option<&'a str> {
    h.reply
        .as_ref()?
        .headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

fn logged_filter(extra: Value) -> Filter {
    let mut cfg: Value = serde_json::from_str(CONFIG).unwrap();
    cfg["decision_log"] = extra;
    Filter::new(cfg.to_string().as_bytes(), 7).unwrap()
}

/// Feeds `chunks` as a response body, as the proxy would (what was held
/// comes again with the next chunk); returns what the client receives.
fn stream_through(f: &mut Filter, d: &mut Decision, h: &mut MockHost, chunks: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut held: Vec<u8> = Vec::new();
    for (i, c) in chunks.iter().enumerate() {
        held.extend_from_slice(c);
        let end = i + 1 == chunks.len();
        let body = held.clone();
        match f.on_response_body(h, d, body.len(), end, || Some(body.clone())) {
            BodyStep::Pass => out.append(&mut held),
            BodyStep::Hold => {}
            BodyStep::Replace(bytes) => {
                out.extend(bytes);
                held.clear();
            }
        }
    }
    out
}

fn log_lines(h: &MockHost) -> Vec<Value> {
    h.logs
        .borrow()
        .iter()
        .filter_map(|(_, l)| l.strip_prefix(crate::audit::PREFIX))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

const MCP_CONFIG: &str = r#"{"resources": {
    "tickets-mcp": {"type": "tool", "protocol": "mcp",
        "metadata": {"team": "customer-success", "environment": "production"}}
}, "mcp": {"max_body_bytes": 2048}}"#;

fn mcp_claims(perms: &[&str]) -> Value {
    claims(json!({ "permissions": perms }))
}

/// Runs an MCP POST through both phases.
fn mcp_call(
    f: &mut Filter,
    perms: &[&str],
    body: Option<&str>,
    headers: &[(&str, &str)],
) -> (Flow, Decision, MockHost) {
    let mut h = request("POST", "/mcp://tickets-mcp/mcp", Some(mcp_claims(perms)));
    for (k, v) in headers {
        h = h.with_header(k, v);
    }
    let (flow, mut waiting) = f.on_request_headers(&mut h);
    assert_eq!(flow, Flow::NeedBody);
    assert!(h.reply.is_none() && h.header_writes == 0);
    let body = match body {
        Some(b) => RequestBody::Complete(b.as_bytes()),
        None => RequestBody::TooLarge,
    };
    let (flow, d) = f.on_request_body(&mut h, &mut waiting, body);
    assert_eq!(d.id, waiting.id);
    (flow, d, h)
}

const CALL: &str = r#"{"jsonrpc":"2.0","id":42,"method":"tools/call","params":{"name":"lookup_ticket","arguments":{"team":"customer-success","id":"T-1"}}}"#;
