//! Attacks on human approval through the whole request path: getting a
//! call that needs an approval upstream without one, with someone else's,
//! with one for other arguments, twice on one, or by making the approval
//! service fail (see `crate::approval`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use super::*;
use crate::approval::tests::{grant_for, signing};
use base64ct::{Base64UrlUnpadded, Encoding};

const KEY: &str = "filter-key-0123456789";

fn approval_filter(logged: bool) -> Filter {
    let x = Base64UrlUnpadded::encode_string(signing().verifying_key().as_bytes());
    let mut config: Value = serde_json::from_str(MCP_CONFIG).unwrap();
    config["approval"] = json!({
        "cluster": "approval", "authority": "approval.local",
        "grant_keys": [{"kid": "k1", "x": x}],
    });
    if logged {
        config["decision_log"] = json!({"enabled": true});
    }
    Filter::new(config.to_string().as_bytes(), 7).unwrap()
}

fn update(args: Value) -> String {
    json!({"jsonrpc": "2.0", "id": 9, "method": "tools/call",
           "params": {"name": "update_ticket", "arguments": args}})
    .to_string()
}

fn args() -> Value {
    json!({"team": "customer-success", "id": "T-1", "status": "closed"})
}

/// A stream host with the approval key in its environment and the
/// filter's metrics defined on it.
fn host(f: &mut Filter, headers: &[(&str, &str)]) -> MockHost {
    let mut h = request(
        "POST",
        "/mcp://tickets-mcp/mcp",
        Some(mcp_claims(&["tools:call"])),
    );
    for (k, v) in headers {
        h = h.with_header(k, v);
    }
    h.now_ns = NOON;
    h.env.insert("AGENTPLANE_APPROVAL_KEY".into(), KEY.into());
    f.on_configured(&mut h, "test");
    h
}

/// Posts `body` on `h`.
fn post(f: &mut Filter, h: &mut MockHost, body: &str) -> (Flow, Decision) {
    let (flow, mut waiting) = f.on_request_headers(h);
    assert_eq!(flow, Flow::NeedBody);
    f.on_request_body(h, &mut waiting, RequestBody::Complete(body.as_bytes()))
}

/// Posts `body`; the call waits for the approval service.
fn ask(f: &mut Filter, body: &str, headers: &[(&str, &str)]) -> (Decision, MockHost) {
    let mut h = host(f, headers);
    let (flow, d) = post(f, &mut h, body);
    assert_eq!(flow, Flow::Approving, "{:?}", h.reply);
    assert!(h.reply.is_none());
    (d, h)
}

/// The service's answer to the stream's callout.
fn answer(
    f: &mut Filter,
    d: &mut Decision,
    h: &mut MockHost,
    status: Option<u16>,
    body: &str,
) -> Flow {
    let token = h.dispatched.last().unwrap().token;
    assert_eq!(f.approval_stream(token), Some(h.stream));
    f.on_approval_response(h, d, token, status, Some(body.as_bytes()))
        .unwrap()
}

fn binding_of(h: &MockHost) -> String {
    let ask: Value =
        serde_json::from_slice(h.dispatched.last().unwrap().body.as_ref().unwrap()).unwrap();
    ask["binding"].as_str().unwrap().to_string()
}

fn pending(id: &str) -> Value {
    json!({"state": "pending", "id": id, "url": format!("http://approve.local/a/{id}"), "expires_at": 1_746_274_200u64})
}

fn approved(h: &MockHost, approver: &str) -> String {
    let grant = grant_for(
        &signing(),
        "k1",
        &binding_of(h),
        approver,
        1_746_274_000,
        crate::approval::grant::TYP,
    );
    json!({"state": "approved", "id": "ap1", "approver": approver, "grant": grant}).to_string()
}

#[test]
fn a_call_needing_approval_reaches_nothing_upstream_until_the_service_answers() {
    let mut f = approval_filter(false);
    let (_d, h) = ask(&mut f, &update(args()), &[]);
    let c = h.dispatched.last().unwrap();
    assert_eq!(c.cluster, "approval");
    assert_eq!(c.header(":path"), Some("/v1/check"));
    assert_eq!(
        c.header("authorization"),
        Some(format!("Bearer {KEY}").as_str())
    );
    let ask: Value = serde_json::from_slice(c.body.as_ref().unwrap()).unwrap();
    assert_eq!(ask["approvers"], json!(["alice"]));
    assert_eq!(ask["ttl_s"], 600);
    let call: Value = serde_json::from_str(ask["call"].as_str().unwrap()).unwrap();
    assert_eq!(call["tool"], "update_ticket");
    assert_eq!(call["arguments"], args());
    assert_eq!(call["agent"], "support-triage@clients");
    // Held: no trusted header written, nothing resumed.
    assert!(h.header_values("x-agent-id").is_empty());
    assert!(h.resumed.is_empty());
}

#[test]
fn a_pending_approval_is_answered_with_its_page_in_each_revisions_terms() {
    let mut f = approval_filter(false);
    // No version header: 2025-03-26, a tool error with the link.
    let (mut d, mut h) = ask(&mut f, &update(args()), &[]);
    let flow = answer(
        &mut f,
        &mut d,
        &mut h,
        Some(200),
        &pending("ap1").to_string(),
    );
    assert_eq!(flow, Flow::Replied);
    let r = h.reply.as_ref().unwrap();
    assert_eq!(r.status, 200);
    let b = body(&h);
    assert_eq!(b["id"], 9);
    assert_eq!(b["result"]["isError"], true);
    assert!(b["result"]["content"][0]["text"]
        .as_str()
        .unwrap()
        .contains("http://approve.local/a/ap1"));
    assert_eq!(d.reason(), "approval required");
    assert_eq!(h.metrics["agentplane.decisions.approval_required"], 1);
    // 2025-11-25: URL elicitation error −32042.
    let (mut d, mut h) = ask(
        &mut f,
        &update(args()),
        &[("mcp-protocol-version", "2025-11-25")],
    );
    answer(
        &mut f,
        &mut d,
        &mut h,
        Some(200),
        &pending("ap1").to_string(),
    );
    let b = body(&h);
    assert_eq!(b["error"]["code"], -32042);
    assert_eq!(
        b["error"]["data"]["elicitations"][0]["url"],
        "http://approve.local/a/ap1"
    );
    // No key anywhere in what the agent sees.
    assert!(!String::from_utf8_lossy(&h.reply.as_ref().unwrap().body).contains(KEY));
}

#[test]
fn an_approved_call_goes_upstream_once_with_its_approver_on_record() {
    let mut f = approval_filter(true);
    let (mut d, mut h) = ask(&mut f, &update(args()), &[]);
    let yes = approved(&h, "alice");
    let flow = answer(&mut f, &mut d, &mut h, Some(200), &yes);
    assert_eq!(flow, Flow::Continue, "{:?}", h.reply);
    assert!(h.reply.is_none());
    assert_eq!(h.header_values("x-agent-id"), ["support-triage@clients"]);
    assert_eq!(h.header_values("x-agent-tool"), ["update_ticket"]);
    assert_eq!(h.metrics["agentplane.approval.granted"], 1);
    f.on_log(&mut h, &mut d);
    let rec = log_lines(&h).pop().unwrap();
    assert_eq!(rec["approval"]["approver"], "alice");
    assert_eq!(rec["approval"]["binding"], binding_of(&h).as_str());
    assert_eq!(rec["result"]["allowed"], true);
    assert!(!rec.to_string().contains(KEY));
}

#[test]
fn a_grant_for_edited_arguments_another_approver_or_a_forged_key_is_refused() {
    let mut f = approval_filter(false);
    let (mut d, mut h) = ask(&mut f, &update(args()), &[]);
    let other = grant_for(
        &signing(),
        "k1",
        "sha256:00",
        "alice",
        1_746_274_000,
        crate::approval::grant::TYP,
    );
    let body_ = json!({"state": "approved", "id": "ap1", "grant": other}).to_string();
    assert_eq!(
        answer(&mut f, &mut d, &mut h, Some(200), &body_),
        Flow::Replied
    );
    assert!(
        d.reason().contains("grant is for another call"),
        "{}",
        d.reason()
    );
    assert!(h.header_values("x-agent-id").is_empty());

    let (mut d, mut h) = ask(&mut f, &update(args()), &[]);
    let yes = approved(&h, "mallory");
    assert_eq!(
        answer(&mut f, &mut d, &mut h, Some(200), &yes),
        Flow::Replied
    );
    assert!(
        d.reason().contains("approver the policy does not accept"),
        "{}",
        d.reason()
    );

    let (mut d, mut h) = ask(&mut f, &update(args()), &[]);
    let forged = grant_for(
        &ed25519_dalek::SigningKey::from_bytes(&[9u8; 32]),
        "k1",
        &binding_of(&h),
        "alice",
        1_746_274_000,
        crate::approval::grant::TYP,
    );
    let body_ = json!({"state": "approved", "id": "ap1", "grant": forged}).to_string();
    assert_eq!(
        answer(&mut f, &mut d, &mut h, Some(200), &body_),
        Flow::Replied
    );
    assert!(d.reason().contains("signature"), "{}", d.reason());
}

#[test]
fn a_replayed_or_expired_approval_is_answered_with_a_new_one_to_ask_for() {
    let mut f = approval_filter(false);
    for (state, reason) in [
        ("used", "approval already used"),
        ("expired", "approval expired"),
    ] {
        let (mut d, mut h) = ask(&mut f, &update(args()), &[]);
        let b = json!({"state": state, "id": "ap1", "pending": pending("ap2")}).to_string();
        assert_eq!(answer(&mut f, &mut d, &mut h, Some(200), &b), Flow::Replied);
        assert!(d.reason().starts_with(reason), "{}", d.reason());
        assert!(body(&h).to_string().contains("http://approve.local/a/ap2"));
        assert!(h.header_values("x-agent-id").is_empty());
    }
    let (mut d, mut h) = ask(&mut f, &update(args()), &[]);
    let b = json!({"state": "rejected", "id": "ap1", "approver": "alice"}).to_string();
    assert_eq!(answer(&mut f, &mut d, &mut h, Some(200), &b), Flow::Replied);
    assert_eq!(d.reason(), "approval rejected by alice");
}

#[test]
fn a_silent_failing_or_garbled_approval_service_fails_closed() {
    let mut f = approval_filter(false);
    for (status, b) in [
        (None, ""),
        (Some(500), "{}"),
        (Some(200), "approved"),
        (Some(200), r#"{"state":"approved","id":"ap1"}"#),
    ] {
        let (mut d, mut h) = ask(&mut f, &update(args()), &[]);
        assert_eq!(answer(&mut f, &mut d, &mut h, status, b), Flow::Replied);
        assert_eq!(h.reply.as_ref().unwrap().status, 503, "{status:?} {b}");
        assert!(
            d.reason().starts_with("approval_unavailable"),
            "{}",
            d.reason()
        );
        assert!(h.header_values("x-agent-id").is_empty());
    }
    assert_eq!(f.worker.approvals.len(), 0, "every callout answered once");
}

#[test]
fn without_an_approval_service_or_its_key_the_call_is_refused_not_passed() {
    let mut f = Filter::new(MCP_CONFIG.as_bytes(), 7).unwrap();
    let (flow, d, h) = mcp_call(&mut f, &["tools:call"], Some(&update(args())), &[]);
    assert_eq!(flow, Flow::Replied);
    assert_eq!(h.reply.as_ref().unwrap().status, 503);
    assert!(d.reason().contains("no approval service"), "{}", d.reason());
    let mut f = approval_filter(false);
    let (flow, d, _h) = mcp_call(&mut f, &["tools:call"], Some(&update(args())), &[]);
    assert_eq!(flow, Flow::Replied);
    assert!(
        d.reason().contains("approval key is not set"),
        "{}",
        d.reason()
    );
}

#[test]
fn a_retry_with_the_sealed_request_state_must_be_the_call_it_names() {
    let mut f = approval_filter(false);
    let v = [
        ("mcp-protocol-version", "2026-07-28"),
        ("mcp-method", "tools/call"),
        ("mcp-name", "update_ticket"),
    ];
    let (mut d, mut h) = ask(&mut f, &update(args()), &v);
    answer(
        &mut f,
        &mut d,
        &mut h,
        Some(200),
        &pending("ap1").to_string(),
    );
    let b = body(&h);
    assert_eq!(b["result"]["resultType"], "input_required");
    let state = b["result"]["requestState"].as_str().unwrap().to_string();
    // The same call with the state: asked again, and the state does not
    // go upstream.
    let with_state = |a: Value| {
        json!({"jsonrpc": "2.0", "id": 10, "method": "tools/call", "params": {
            "name": "update_ticket", "arguments": a, "requestState": state,
            "inputResponses": {crate::approval::INPUT_KEY: {"result": {"action": "accept"}}}}})
        .to_string()
    };
    let (_d, h) = ask(&mut f, &with_state(args()), &v);
    let sent = String::from_utf8(h.forwarded_body.clone().unwrap()).unwrap();
    assert!(
        !sent.contains("requestState") && !sent.contains("inputResponses"),
        "{sent}"
    );
    // Edited arguments with that state: refused at once, nothing asked.
    let mut edited = args();
    edited["status"] = json!("deleted");
    let mut h = host(&mut f, &v);
    let (flow, d) = post(&mut f, &mut h, &with_state(edited));
    assert_eq!(flow, Flow::Replied);
    assert!(h.dispatched.is_empty());
    assert!(d.reason().starts_with("the call differs"), "{}", d.reason());
}

#[test]
fn a_stream_that_ends_while_waiting_is_recorded_and_its_callout_forgotten() {
    let mut f = approval_filter(true);
    let (mut d, mut h) = ask(&mut f, &update(args()), &[]);
    let token = h.dispatched.last().unwrap().token;
    f.on_log(&mut h, &mut d);
    let stream = h.stream;
    f.on_stream_done(&mut h, stream, Some(&mut d));
    assert_eq!(f.approval_stream(token), None);
    assert_eq!(log_lines(&h).len(), 1, "the waiting call is on record");
}

#[test]
fn smuggling_members_the_approver_never_sees_past_an_approval_is_refused() {
    // Only agent, chain, service, endpoint, tool and arguments are bound
    // and shown; whatever else goes upstream would pass on an approval for
    // a call the approver never saw whole.
    let mut f = approval_filter(false);
    let call = |params: Value, top: Option<(&str, Value)>| {
        let mut m = json!({"jsonrpc": "2.0", "id": 9, "method": "tools/call", "params": params});
        if let Some((k, v)) = top {
            m[k] = v;
        }
        m.to_string()
    };
    let base = |extra: (&str, Value)| {
        let mut p = json!({"name": "update_ticket", "arguments": args()});
        p[extra.0] = extra.1;
        p
    };
    for (body, member) in [
        (call(base(("dryRun", json!(false))), None), "params.dryRun"),
        (
            call(base(("_meta", json!({"io.example/as_user": "root"}))), None),
            "params._meta.io.example/as_user",
        ),
        (
            call(
                base(("inputResponses", json!({"confirm": {"ok": true}}))),
                None,
            ),
            "params.inputResponses",
        ),
        (
            call(base(("requestState", json!("server-state"))), None),
            "params.requestState",
        ),
        (
            call(base(("x", json!(1))), Some(("extra", json!("y")))),
            "extra",
        ),
    ] {
        let mut h = host(&mut f, &[]);
        let (flow, d) = post(&mut f, &mut h, &body);
        assert_eq!(flow, Flow::Replied, "{body}");
        assert!(h.dispatched.is_empty(), "nothing asked for {body}");
        assert!(h.header_values("x-agent-id").is_empty());
        assert!(d.reason().contains(member), "{member}: {}", d.reason());
    }
    // What the protocol itself puts there is not the approver's concern.
    let ok = call(
        base((
            "_meta",
            json!({"progressToken": 3, "io.modelcontextprotocol/clientInfo": {"name": "c"}}),
        )),
        None,
    );
    let (_d, _h) = ask(&mut f, &ok, &[]);
}

#[test]
fn swapping_the_transaction_an_approved_call_rides_on_is_another_binding() {
    // An agent called for alice and for bob holds a transaction token for
    // each; upstream reads the call as made for the token's subject. An
    // approval shown (and bound) without it would pass the call for bob
    // on an approval asked while acting for alice.
    use crate::txn::{self, Keyring};
    let seed = Base64UrlUnpadded::encode_string(&[42u8; 32]);
    let kv = json!({"data": {"data": {"kid": "gw-1", "d": seed}}}).to_string();
    let x = Base64UrlUnpadded::encode_string(signing().verifying_key().as_bytes());
    let mut config: Value = serde_json::from_str(MCP_CONFIG).unwrap();
    config["approval"] = json!({"cluster": "approval", "authority": "approval.local",
        "grant_keys": [{"kid": "k1", "x": x}]});
    config["vault"] = json!({"cluster": "vault", "role": "agent"});
    config["txn_token"] = json!({"issuer": "https://gw.example", "audience": "corp.example"});
    config["resources"]["tickets-mcp"]["txn_token"] = json!(true);
    let mut f = Filter::new(config.to_string().as_bytes(), 7).unwrap();
    let mut root = MockHost::new().at(NOON);
    root.env
        .insert("AGENTPLANE_VAULT_TOKEN".into(), "hvs.t".into());
    f.on_configured(&mut root, "test");
    let token = root.dispatched.last().unwrap().token;
    f.on_callout_response(&mut root, token, Some(200), Some(kv.as_bytes()));
    let ring = Keyring::from_kv(kv.as_bytes()).unwrap();
    let hop = |sub: &str| {
        let claims = txn::TxnClaims {
            iss: "https://gw.example".into(),
            aud: "corp.example".into(),
            txn: format!("txn-{sub}"),
            sub: sub.into(),
            scope: "tools:call".into(),
            req_wl: "orchestrator@clients".into(),
            svc: "support".into(),
            tool: None,
            act: txn::nest(&["support-triage@clients".to_string()]),
            tctx: txn::Tctx::default(),
        };
        let now = (NOON / 1_000_000_000) as i64;
        txn::mint(ring.current.as_ref().unwrap(), claims, now, 60).unwrap()
    };
    let mut calls = Vec::new();
    for user in ["alice@clients", "bob@clients"] {
        let (_d, h) = ask(&mut f, &update(args()), &[("txn-token", &hop(user))]);
        let ask: Value =
            serde_json::from_slice(h.dispatched.last().unwrap().body.as_ref().unwrap()).unwrap();
        let call: Value = serde_json::from_str(ask["call"].as_str().unwrap()).unwrap();
        assert!(
            call["chain"].as_array().unwrap().contains(&json!(user)),
            "the approver is shown whom the call is for: {call}"
        );
        calls.push(ask["binding"].clone());
    }
    assert_ne!(calls[0], calls[1], "one approval for both users");
}

#[test]
fn sending_the_approved_call_to_another_endpoint_of_the_service_is_another_binding() {
    // A server can read its path and query (a toolset, an account, a
    // config): the same call to another endpoint is another call.
    let mut f = approval_filter(false);
    let mut seen = Vec::new();
    for path in [
        "/mcp://tickets-mcp/mcp",
        "/mcp://tickets-mcp/mcp?account=other",
        "/mcp://tickets-mcp/admin/mcp",
    ] {
        let mut h = request("POST", path, Some(mcp_claims(&["tools:call"]))).at(NOON);
        h.env.insert("AGENTPLANE_APPROVAL_KEY".into(), KEY.into());
        f.on_configured(&mut h, "test");
        let (flow, _d) = post(&mut f, &mut h, &update(args()));
        assert_eq!(flow, Flow::Approving, "{path}: {:?}", h.reply);
        let ask: Value =
            serde_json::from_slice(h.dispatched.last().unwrap().body.as_ref().unwrap()).unwrap();
        let call: Value = serde_json::from_str(ask["call"].as_str().unwrap()).unwrap();
        let upstream = path.trim_start_matches("/mcp://tickets-mcp");
        assert_eq!(
            call["endpoint"], upstream,
            "the approver sees where it goes"
        );
        seen.push(ask["binding"].clone());
    }
    assert_ne!(seen[0], seen[1]);
    assert_ne!(seen[0], seen[2]);
}

#[test]
fn a_huge_unbound_member_name_does_not_bloat_the_answer_or_the_record() {
    let mut f = approval_filter(true);
    let key = "k".repeat(1500);
    let body = json!({"jsonrpc": "2.0", "id": 9, "method": "tools/call", "params": {
        "name": "update_ticket", "arguments": args(), &key: 1}})
    .to_string();
    let mut h = host(&mut f, &[]);
    let (flow, mut d) = post(&mut f, &mut h, &body);
    assert_eq!(flow, Flow::Replied);
    assert!(d.reason().len() < 300, "{}", d.reason().len());
    assert!(d.reason().contains("params.kkk"), "{}", d.reason());
    f.on_log(&mut h, &mut d);
    let rec = log_lines(&h).pop().unwrap();
    assert!(!rec["result"].to_string().contains(&key));
}

#[test]
fn an_approved_answer_replayed_to_this_proxy_passes_one_call() {
    let mut f = approval_filter(false);
    let (mut d, mut h) = ask(&mut f, &update(args()), &[]);
    let yes = approved(&h, "alice");
    assert_eq!(
        answer(&mut f, &mut d, &mut h, Some(200), &yes),
        Flow::Continue
    );
    // The same answer again (a replay on the path to the service, or a
    // service that forgot), on another worker sharing this proxy's data.
    let mut h2 = request(
        "POST",
        "/mcp://tickets-mcp/mcp",
        Some(mcp_claims(&["tools:call"])),
    );
    h2.now_ns = NOON;
    h2.shared = h.shared.clone();
    h2.env.insert("AGENTPLANE_APPROVAL_KEY".into(), KEY.into());
    let (flow, mut d2) = post(&mut f, &mut h2, &update(args()));
    assert_eq!(flow, Flow::Approving);
    assert_eq!(
        answer(&mut f, &mut d2, &mut h2, Some(200), &yes),
        Flow::Replied
    );
    assert!(
        d2.reason().contains("approval already used"),
        "{}",
        d2.reason()
    );
    assert!(h2.header_values("x-agent-id").is_empty());
}
