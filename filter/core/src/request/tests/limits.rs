//! The policy's limits through the request path (`MockHost`; the shipped
//! policy gives `experimental` agents 10 requests of burst at 5/s,
//! `batch-runner@clients` 2 requests in flight, and `delete_ticket` 3
//! calls per agent at 1 a minute).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use super::*;
use crate::host::{MockHost, SharedData};
use serde_json::{json, Value};
#[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
use wasm_bindgen_test::wasm_bindgen_test as test;

const CONFIG: &str = r#"{"resources": {
    "hello-skill": {"type": "skill", "metadata": {"team": "platform", "environment": "production"}},
    "tickets": {"type": "data", "metadata": {"team": "customer-success", "environment": "production"}}
}}"#;

fn lab_agent(id: &str) -> Value {
    claims(json!({"sub": id, "https://mcp.example.com/agent_type": "experimental"}))
}

/// One request on a proxy whose workers share `shared`; the stream ends
/// (log, done) unless `keep_open`.
fn send(
    f: &mut Filter,
    shared: &SharedData,
    stream: u32,
    path: &str,
    who: Value,
    keep_open: bool,
) -> (Decision, MockHost) {
    let mut h = request("POST", path, Some(who));
    h.shared = shared.clone();
    h.stream = stream;
    let (_, mut d) = f.on_request_headers(&mut h);
    if !keep_open {
        f.on_log(&mut h, &mut d);
        f.on_stream_done(&mut h, stream, Some(&mut d));
    }
    (d, h)
}

#[test]
fn a_looping_agent_is_held_to_its_rate_and_others_are_not() {
    let mut f = Filter::new(CONFIG.as_bytes(), 7).unwrap();
    let shared = SharedData::default();
    f.on_configured(&mut MockHost::new(), "test");
    let mut passed = 0;
    let mut refused = None;
    for i in 0..25 {
        let (d, h) = send(
            &mut f,
            &shared,
            i,
            "/mcp://hello-skill/go",
            lab_agent("lab-1@clients"),
            false,
        );
        if d.allowed() {
            passed += 1;
        } else if refused.is_none() {
            refused = Some((d, h));
        }
    }
    assert_eq!(passed, 10, "the burst, at one instant");
    let (d, h) = refused.unwrap();
    let reply = h.reply.as_ref().unwrap();
    assert_eq!(reply.status, 429);
    let b = body(&h);
    assert_eq!(b["error"], "rate_limited");
    assert_eq!(b["reason"], "limit experimental exceeded");
    assert_eq!(b["decision_id"], d.id.as_str());
    assert_eq!(reply_header(&h, "retry-after"), Some("1"));
    assert_eq!(
        reply_header(&h, "ratelimit-policy"),
        Some("\"experimental\";q=10;w=2")
    );
    assert!(reply_header(&h, "ratelimit")
        .unwrap()
        .starts_with("\"experimental\";r=0;t="));
    assert_eq!(h.header_writes, 0, "nothing forwarded");
    // Another experimental agent has its own bucket; a support agent none.
    let (d, _) = send(
        &mut f,
        &shared,
        90,
        "/mcp://hello-skill/go",
        lab_agent("lab-2@clients"),
        false,
    );
    assert!(d.allowed());
    let (d, _) = send(
        &mut f,
        &shared,
        91,
        "/mcp://hello-skill/go",
        claims(json!({})),
        false,
    );
    assert!(d.allowed());
}

#[test]
fn refused_requests_never_consume() {
    let mut f = Filter::new(CONFIG.as_bytes(), 7).unwrap();
    let shared = SharedData::default();
    // Experimental agents may not write data: 30 refusals...
    for i in 0..30 {
        let (d, h) = send(
            &mut f,
            &shared,
            i,
            "/mcp://tickets/t/1",
            lab_agent("lab-1@clients"),
            false,
        );
        assert_eq!(h.reply.as_ref().unwrap().status, 403, "{:?}", d.state);
    }
    // ... and the whole burst is still there.
    let passed = (100..120)
        .filter(|i| {
            send(
                &mut f,
                &shared,
                *i,
                "/mcp://hello-skill/go",
                lab_agent("lab-1@clients"),
                false,
            )
            .0
            .allowed()
        })
        .count();
    assert_eq!(passed, 10);
}

#[test]
fn an_in_flight_cap_frees_its_slot_however_the_stream_ends() {
    let mut f = Filter::new(CONFIG.as_bytes(), 7).unwrap();
    let shared = SharedData::default();
    let who = || claims(json!({"sub": "batch-runner@clients"}));
    let (mut one, mut h1) = send(&mut f, &shared, 1, "/mcp://hello-skill/go", who(), true);
    let (_two, _h2) = send(&mut f, &shared, 2, "/mcp://hello-skill/go", who(), true);
    assert!(one.allowed());
    let (d, h) = send(&mut f, &shared, 3, "/mcp://hello-skill/go", who(), true);
    assert_eq!(h.reply.as_ref().unwrap().status, 429);
    assert_eq!(body(&h)["reason"], "limit batch-runner.in_flight exceeded");
    assert!(d.held.is_empty(), "a refusal holds nothing");
    // The first stream is reset: Envoy calls done without a log.
    f.on_stream_done(&mut h1, 1, Some(&mut one));
    let (d, _) = send(&mut f, &shared, 4, "/mcp://hello-skill/go", who(), true);
    assert!(d.allowed(), "its slot came back");
}

#[test]
fn a_tool_call_over_its_limit_gets_a_json_rpc_error_with_its_id() {
    let mut f = Filter::new(MCP_CONFIG.as_bytes(), 7).unwrap();
    let shared = SharedData::default();
    let call = r#"{"jsonrpc":"2.0","id":77,"method":"tools/call","params":{"name":"delete_ticket","arguments":{"id":"T-1"}}}"#;
    let perms = json!({"permissions": ["tools:call", "tickets:delete"]});
    let mut statuses = Vec::new();
    let mut last = None;
    for i in 0..5 {
        let mut h = request(
            "POST",
            "/mcp://tickets-mcp/mcp",
            Some(claims(perms.clone())),
        );
        h.shared = shared.clone();
        h.stream = i;
        h.now_ns = NOON;
        let (flow, mut waiting) = f.on_request_headers(&mut h);
        assert_eq!(flow, Flow::NeedBody);
        let (_, mut d) =
            f.on_request_body(&mut h, &mut waiting, RequestBody::Complete(call.as_bytes()));
        statuses.push(h.reply.as_ref().map_or(200, |r| r.status));
        f.on_stream_done(&mut h, i, Some(&mut d));
        last = Some(h);
    }
    assert_eq!(statuses, [200, 200, 200, 429, 429]);
    let h = last.unwrap();
    let b = body(&h);
    assert_eq!(b["id"], 77);
    assert_eq!(b["error"]["code"], crate::mcp::code::RATE_LIMITED);
    assert_eq!(b["error"]["message"], "limit tool.delete_ticket exceeded");
    assert_eq!(
        reply_header(&h, "retry-after"),
        Some("60"),
        "a token a minute"
    );
}

#[test]
fn a_stream_outliving_its_lease_still_counts_through_the_workers_tick() {
    let mut f = Filter::new(CONFIG.as_bytes(), 7).unwrap();
    let shared = SharedData::default();
    let mut root = MockHost::new().at(NOON);
    root.shared = shared.clone();
    assert_eq!(
        f.on_configured(&mut root, "test"),
        Some(TICK_MS),
        "limits need the tick"
    );
    let who = || claims(json!({"sub": "batch-runner@clients"}));
    let at = |f: &mut Filter, stream: u32, now: u64, keep_open: bool| {
        let mut h = request("POST", "/mcp://hello-skill/go", Some(who())).at(now);
        h.shared = shared.clone();
        h.stream = stream;
        let (_, mut d) = f.on_request_headers(&mut h);
        if !keep_open {
            f.on_log(&mut h, &mut d);
            f.on_stream_done(&mut h, stream, Some(&mut d));
        }
        (d, h)
    };
    // Two long downloads, capped at 2 in flight.
    let (mut one, mut h1) = at(&mut f, 1, NOON, true);
    let (_two, _h2) = at(&mut f, 2, NOON, true);
    assert!(one.allowed());
    // Twice the lease later, with the worker ticking all along, they
    // still run, so a third still waits.
    let lease = crate::config::LimitsConfig::default().lease_ms * 1_000_000;
    for _ in 0..8 {
        root.now_ns += lease / 4;
        f.on_tick(&mut root);
    }
    let (d, h) = at(&mut f, 3, root.now_ns, false);
    assert_eq!(
        h.reply.as_ref().map(|r| r.status),
        Some(429),
        "{:?}",
        d.state
    );
    // One ends: its slot is back, and not renewed back to life.
    f.on_stream_done(&mut h1, 1, Some(&mut one));
    root.now_ns += lease / 4;
    f.on_tick(&mut root);
    let (d, _) = at(&mut f, 4, root.now_ns, false);
    assert!(d.allowed());
}
