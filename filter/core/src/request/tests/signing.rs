//! Transaction tokens through the request path (`signed.rs`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use super::*;
use crate::host::MockHost;
use crate::txn::{self, Keyring};
use serde_json::{json, Value};
#[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
use wasm_bindgen_test::wasm_bindgen_test as test;

const SEED: [u8; 32] = [42; 32];
const VAULT_TOKEN: &str = "hvs.vault-token-canary";

fn kv() -> Vec<u8> {
    json!({"data": {"data": {
        "kid": "gw-1",
        "d": <base64ct::Base64UrlUnpadded as base64ct::Encoding>::encode_string(&SEED),
    }}})
    .to_string()
    .into_bytes()
}

fn seed_b64() -> String {
    <base64ct::Base64UrlUnpadded as base64ct::Encoding>::encode_string(&SEED)
}

fn signing_filter(extra: Value) -> Filter {
    let mut cfg = json!({
        "vault": {"cluster": "vault", "role": "agent"},
        "txn_token": {"issuer": "https://gw.example", "audience": "corp.example"},
        "resources": {
            "tickets": {"type": "data", "txn_token": true,
                "metadata": {"team": "customer-success", "environment": "production"}},
            "plain": {"type": "data",
                "metadata": {"team": "customer-success", "environment": "production"}},
            "sealed": {"type": "data", "txn_token": true, "identity_headers": false,
                "metadata": {"team": "customer-success", "environment": "production"}}
        }
    });
    for (k, v) in extra.as_object().unwrap() {
        cfg[k] = v.clone();
    }
    Filter::new(cfg.to_string().as_bytes(), 7).unwrap()
}

fn root() -> MockHost {
    let mut r = MockHost::new().at(NOON);
    r.env
        .insert("AGENTPLANE_VAULT_TOKEN".into(), VAULT_TOKEN.into());
    r
}

/// Configures `f` and answers its key read.
fn loaded(f: &mut Filter) -> MockHost {
    let mut r = root();
    f.on_configured(&mut r, "test");
    let call = r.dispatched.last().expect("the key is read at configure");
    let token = call.token;
    f.on_callout_response(&mut r, token, Some(200), Some(&kv()));
    r
}

fn ring() -> Keyring {
    Keyring::from_kv(&kv()).unwrap()
}

fn cfg(f: &Filter) -> txn::TxnConfig {
    f.config().txn_token.clone().unwrap()
}

fn get(path: &str) -> MockHost {
    request("GET", path, Some(claims(json!({}))))
}

#[test]
fn requests_needing_a_token_wait_for_the_key_and_never_pass_unsigned() {
    let mut f = signing_filter(json!({}));
    let mut r = root();
    f.on_configured(&mut r, "test");
    let call = &r.dispatched[0];
    assert_eq!(call.cluster, "vault");
    assert!(call.headers.contains(&(
        ":path".into(),
        "/v1/secret/data/agentplane/txn-signing".into()
    )));
    assert!(call
        .headers
        .contains(&("x-vault-token".into(), VAULT_TOKEN.into())));
    // Not loaded yet: 503 with a reason and a decision id; the JWKS too.
    let mut h = get("/tickets/1");
    let (flow, d) = f.on_request_headers(&mut h);
    assert_eq!(flow, Flow::Replied);
    assert_eq!(h.reply.as_ref().unwrap().status, 503);
    assert_eq!(
        body(&h)["reason"],
        "txn_token_unavailable: signing key not loaded"
    );
    assert_eq!(body(&h)["decision_id"], d.id.as_str());
    let mut j = get("/.well-known/agentplane/jwks.json");
    f.on_request_headers(&mut j);
    assert_eq!(j.reply.as_ref().unwrap().status, 503);
    // A service without tokens is not held up.
    let mut p = get("/plain/1");
    assert_eq!(f.on_request_headers(&mut p).0, Flow::Continue);
    // A failed read is retried with backoff; the key then loads.
    let token = r.dispatched[0].token;
    f.on_callout_response(&mut r, token, Some(503), None);
    f.on_tick(&mut r);
    assert_eq!(r.dispatched.len(), 1, "backing off");
    r.now_ns += 1_000_000_000;
    f.on_tick(&mut r);
    assert_eq!(r.dispatched.len(), 2);
    let token = r.dispatched[1].token;
    f.on_callout_response(&mut r, token, Some(200), Some(&kv()));
    let mut h = get("/tickets/1");
    assert_eq!(f.on_request_headers(&mut h).0, Flow::Continue);
    assert_eq!(h.header_values("txn-token").len(), 1);
}

#[test]
fn one_token_is_reused_and_each_request_carries_its_own_decision_id() {
    let mut f = signing_filter(json!({}));
    loaded(&mut f);
    let mut a = get("/tickets/1");
    let (_, da) = f.on_request_headers(&mut a);
    let mut b = get("/tickets/2");
    let (_, db) = f.on_request_headers(&mut b);
    let ta = a.header_values("txn-token");
    assert_eq!(ta, b.header_values("txn-token"), "reused");
    assert_eq!(a.header_values("x-decision-id"), vec![da.id.clone()]);
    assert_eq!(b.header_values("x-decision-id"), vec![db.id.clone()]);
    assert_ne!(da.id, db.id);
    let t = txn::verify(&ta[0], &ring(), &cfg(&f), (NOON / 1_000_000_000) as i64).unwrap();
    assert_eq!(t.claims.sub, "support-triage@clients");
    assert_eq!(t.claims.svc, "tickets");
    assert_eq!(t.claims.aud, "corp.example");
    assert_eq!(t.claims.scope, "skills:invoke data:read data:write");
    assert_eq!(t.claims.tctx.decision, da.id);
    assert_eq!(t.claims.txn, da.id);
    assert!(t.claims.act.is_none(), "the agent acts for itself");
    // Another service gets its own token; after reuse_s a new one is signed.
    let mut c = get("/sealed/1");
    f.on_request_headers(&mut c);
    assert_ne!(c.header_values("txn-token"), ta);
    let mut late = get("/tickets/3").at(NOON + 31_000_000_000);
    f.on_request_headers(&mut late);
    assert_ne!(late.header_values("txn-token"), ta);
    // Signed again for the new window, then reused.
    let mut later = get("/tickets/4").at(NOON + 32_000_000_000);
    f.on_request_headers(&mut later);
    assert_eq!(
        later.header_values("txn-token"),
        late.header_values("txn-token")
    );
}

#[test]
fn identity_headers_off_sends_only_the_token() {
    let mut f = signing_filter(json!({}));
    loaded(&mut f);
    let mut h = get("/sealed/1");
    assert_eq!(f.on_request_headers(&mut h).0, Flow::Continue);
    assert!(h.header_values("x-agent-id").is_empty());
    assert_eq!(h.header_values("txn-token").len(), 1);
    let mut p = get("/plain/1");
    f.on_request_headers(&mut p);
    assert_eq!(p.header_values("x-agent-id"), ["support-triage@clients"]);
    assert!(p.header_values("txn-token").is_empty());
}

#[test]
fn a_forged_or_expired_inbound_txn_token_is_refused() {
    let mut f = signing_filter(json!({}));
    loaded(&mut f);
    let other = Keyring::from_kv(
        json!({"data": {"data": {"kid": "gw-1", "d": <base64ct::Base64UrlUnpadded as base64ct::Encoding>::encode_string(&[1u8; 32])}}})
            .to_string()
            .as_bytes(),
    )
    .unwrap();
    let claims_for = |iss: &str| txn::TxnClaims {
        iss: iss.into(),
        aud: "corp.example".into(),
        txn: "t-1".into(),
        sub: "alice@clients".into(),
        scope: "data:read".into(),
        req_wl: "a@clients".into(),
        svc: "orchestrator".into(),
        tool: None,
        act: None,
        tctx: txn::Tctx::default(),
    };
    let now = (NOON / 1_000_000_000) as i64;
    let forged = txn::mint(
        other.current.as_ref().unwrap(),
        claims_for("https://gw.example"),
        now,
        60,
    )
    .unwrap();
    let expired = txn::mint(
        ring().current.as_ref().unwrap(),
        claims_for("https://gw.example"),
        now - 600,
        60,
    )
    .unwrap();
    for (token, why) in [
        (
            forged.as_str(),
            "invalid_txn_token: signature or claims do not verify",
        ),
        (expired.as_str(), "invalid_txn_token: expired"),
        ("garbage", "invalid_txn_token: malformed token"),
    ] {
        let mut h = get("/plain/1").with_header("txn-token", token);
        let (flow, d) = f.on_request_headers(&mut h);
        assert_eq!(flow, Flow::Replied);
        assert_eq!(h.reply.as_ref().unwrap().status, 403);
        assert_eq!(body(&h)["reason"], why);
        assert_eq!(body(&h)["decision_id"], d.id.as_str());
    }
}

/// A token this gateway signed on a first hop, for alice, scope data:read.
fn first_hop(actor: Option<&str>) -> String {
    let now = (NOON / 1_000_000_000) as i64;
    let claims = txn::TxnClaims {
        iss: "https://gw.example".into(),
        aud: "corp.example".into(),
        txn: "txn-root".into(),
        sub: "alice@clients".into(),
        scope: "data:read".into(),
        req_wl: "orchestrator@clients".into(),
        svc: "support".into(),
        tool: None,
        act: actor.and_then(|a| txn::nest(&[a.to_string()])),
        tctx: txn::Tctx::default(),
    };
    txn::mint(ring().current.as_ref().unwrap(), claims, now, 60).unwrap()
}

/// A request by `sub` (a support agent), the orchestrator acting for it
/// when `delegated` (RFC 8693: the token an exchange gives the
/// orchestrator for alice).
fn get_as(path: &str, sub: &str, delegated: bool) -> MockHost {
    let mut c = json!({"sub": sub});
    if delegated {
        c["act"] = json!({"sub": "orchestrator@clients",
            "https://mcp.example.com/agent_type": "orchestrator",
            "permissions": ["skills:invoke", "data:read"]});
    }
    request("GET", path, Some(claims(c)))
}

#[test]
fn a_second_hop_keeps_the_subject_and_transaction_and_narrows_scope() {
    let mut f = signing_filter(json!({}));
    loaded(&mut f);
    let now = (NOON / 1_000_000_000) as i64;
    let first = first_hop(Some("support-triage@clients"));
    // The support agent, called by the orchestrator for alice, calls on
    // (it is the token's actor).
    let mut h = get("/tickets/1").with_header("txn-token", &first);
    assert_eq!(
        f.on_request_headers(&mut h).0,
        Flow::Continue,
        "{:?}",
        h.reply
    );
    let next = h.header_values("txn-token");
    assert_ne!(next[0], first);
    let t = txn::verify(&next[0], &ring(), &cfg(&f), now).unwrap();
    assert_eq!(t.claims.sub, "alice@clients");
    assert_eq!(t.claims.txn, "txn-root");
    assert_eq!(
        t.actors,
        ["support-triage@clients", "support-triage@clients"]
    );
    assert_eq!(t.claims.scope, "data:read", "narrowed, never widened");
    assert_eq!(t.claims.tctx.agent, "support-triage@clients");
    // The orchestrator, acting for alice with a token exchanged for her,
    // carries her transaction on: alice is its subject.
    let mut d =
        get_as("/tickets/1", "alice@clients", true).with_header("txn-token", &first_hop(None));
    assert_eq!(
        f.on_request_headers(&mut d).0,
        Flow::Continue,
        "{:?}",
        d.reply
    );
    let t = txn::verify(&d.header_values("txn-token")[0], &ring(), &cfg(&f), now).unwrap();
    assert_eq!(t.claims.sub, "alice@clients");
    assert_eq!(t.claims.txn, "txn-root");
    assert_eq!(t.actors, ["orchestrator@clients"]);
    // A service without tokens never sees the inbound one.
    let mut p = get("/plain/1").with_header("txn-token", &first);
    assert_eq!(f.on_request_headers(&mut p).0, Flow::Continue);
    assert!(p.header_values("txn-token").is_empty());
}

#[test]
fn a_leaked_txn_token_presented_by_another_agent_is_refused() {
    let mut f = signing_filter(json!({}));
    loaded(&mut f);
    // Alice's transaction, the orchestrator acting in it. The support
    // agent got a copy (a log, a skill that echoes headers) and attaches
    // it to its own calls: the next hop's token would name alice as the
    // subject of what the support agent does.
    let leaked = first_hop(Some("orchestrator@clients"));
    for path in ["/tickets/1", "/plain/1"] {
        let mut h = get(path).with_header("txn-token", &leaked);
        let (flow, d) = f.on_request_headers(&mut h);
        assert_eq!(flow, Flow::Replied, "{path}");
        assert_eq!(h.reply.as_ref().unwrap().status, 403);
        assert_eq!(
            body(&h)["reason"],
            "invalid_txn_token: presented by an agent that is neither its subject nor one of its actors"
        );
        assert_eq!(body(&h)["decision_id"], d.id.as_str());
        assert_eq!(h.header_writes, 0, "nothing forwarded");
    }
    // Verified once and cached: the cache answers for its parties only.
    let mut ok =
        get_as("/tickets/1", "orchestrator@clients", false).with_header("txn-token", &leaked);
    assert_eq!(
        f.on_request_headers(&mut ok).0,
        Flow::Continue,
        "{:?}",
        ok.reply
    );
    let mut again = get("/tickets/1").with_header("txn-token", &leaked);
    assert_eq!(f.on_request_headers(&mut again).0, Flow::Replied);
    assert_eq!(again.reply.as_ref().unwrap().status, 403);
    // Its own token, or one exchanged to act for alice, would do: acting
    // in alice's name takes alice's consent, not a copy of her token.
    let mut d = get_as("/tickets/1", "alice@clients", true).with_header("txn-token", &leaked);
    assert_eq!(
        f.on_request_headers(&mut d).0,
        Flow::Continue,
        "{:?}",
        d.reply
    );
}

#[test]
fn the_policy_sees_the_inbound_transaction() {
    let mut f = signing_filter(json!({"decision_log": {"enabled": true, "sample_allowed": 1.0}}));
    loaded(&mut f);
    let first = first_hop(Some("support-triage@clients"));
    let mut h = get("/plain/1").with_header("txn-token", &first);
    let (_, mut d) = f.on_request_headers(&mut h);
    f.on_log(&mut h, &mut d);
    let logs = h.logs.borrow();
    let line = logs
        .iter()
        .find_map(|(_, l)| l.strip_prefix(crate::audit::PREFIX))
        .expect("a decision record");
    let rec: Value = serde_json::from_str(line).unwrap();
    assert_eq!(rec["input"]["transaction"]["sub"], "alice@clients");
    assert_eq!(rec["input"]["transaction"]["txn"], "txn-root");
    assert!(!line.contains(&first), "the raw token is not logged");
}

#[test]
fn the_jwks_is_public_and_no_secret_leaks_into_logs_or_replies() {
    let mut f = signing_filter(json!({"decision_log": {"enabled": true, "sample_allowed": 1.0}}));
    let r = loaded(&mut f);
    let mut j = MockHost::new()
        .at(NOON)
        .with_header(":method", "GET")
        .with_header(":path", "/.well-known/agentplane/jwks.json")
        .with_header(":authority", "gw");
    f.on_request_headers(&mut j);
    let reply = j.reply.clone().unwrap();
    assert_eq!(reply.status, 200);
    let jwks: Value = serde_json::from_slice(&reply.body).unwrap();
    assert_eq!(jwks["keys"][0]["kid"], "gw-1");
    let mut h = get("/tickets/1");
    let (_, mut d) = f.on_request_headers(&mut h);
    f.on_log(&mut h, &mut d);
    let seed = seed_b64();
    let mut seen: Vec<String> = r.logs.borrow().iter().map(|(_, l)| l.clone()).collect();
    seen.extend(h.logs.borrow().iter().map(|(_, l)| l.clone()));
    seen.push(String::from_utf8_lossy(&reply.body).into_owned());
    seen.push(format!("{f:?}"));
    assert!(seen.iter().any(|l| l.contains("signing key gw-1 loaded")));
    for l in &seen {
        assert!(!l.contains(&seed), "seed leaked: {l}");
        assert!(!l.contains(VAULT_TOKEN), "vault token leaked: {l}");
    }
}

#[test]
fn without_the_vault_token_variable_the_key_is_not_read_and_it_says_why() {
    let mut f = signing_filter(json!({}));
    let mut r = MockHost::new().at(NOON);
    f.on_configured(&mut r, "test");
    assert!(r.dispatched.is_empty());
    assert!(r
        .logs
        .borrow()
        .iter()
        .any(|(_, l)| l.contains("AGENTPLANE_VAULT_TOKEN is not set")));
}

#[test]
fn a_vault_that_hangs_keeps_token_services_closed_and_is_asked_again() {
    let mut f = signing_filter(json!({}));
    let mut r = root();
    f.on_configured(&mut r, "test");
    // The callout timed out: no answer at all.
    let token = r.dispatched[0].token;
    f.on_callout_response(&mut r, token, None, None);
    let mut h = get("/tickets/1");
    assert_eq!(f.on_request_headers(&mut h).0, Flow::Replied);
    assert_eq!(h.reply.as_ref().unwrap().status, 503);
    assert!(r
        .logs
        .borrow()
        .iter()
        .any(|(_, l)| l.contains("vault unreachable")));
    r.now_ns += 1_000_000_000;
    f.on_tick(&mut r);
    assert_eq!(r.dispatched.len(), 2, "read again after the backoff");
}

#[test]
fn an_underscore_spelled_txn_token_never_reaches_upstream() {
    let mut f = signing_filter(json!({}));
    loaded(&mut f);
    let mut h = get("/plain/1").with_header("txn_token", "forged");
    assert_eq!(f.on_request_headers(&mut h).0, Flow::Continue);
    assert!(h.header_values("txn_token").is_empty());
    assert!(h.header_values("txn-token").is_empty());
}

#[test]
fn txn_token_configuration_is_checked() {
    for bad in [
        json!({"resources": {"s": {"type": "data", "txn_token": true}}}),
        json!({"txn_token": {"issuer": "i", "audience": "a"}}),
        json!({"vault": {}, "txn_token": {"issuer": "i", "audience": "a"},
               "resources": {"s": {"type": "data", "identity_headers": false}}}),
    ] {
        assert!(Filter::new(bad.to_string().as_bytes(), 1).is_err(), "{bad}");
    }
    // Without the block, a client's Txn-Token is stripped like x-agent-*.
    let mut f = Filter::new(
        br#"{"resources": {"tickets": {"type": "data",
            "metadata": {"team": "customer-success", "environment": "production"}}}}"#,
        1,
    )
    .unwrap();
    let mut h = get("/tickets/1").with_header("txn-token", "forged");
    assert_eq!(f.on_request_headers(&mut h).0, Flow::Continue);
    assert!(h.header_values("txn-token").is_empty());
}

/// The text after `prefix` of each log line that has it.
fn lines_after(h: &MockHost, prefix: &str) -> Vec<String> {
    h.logs
        .borrow()
        .iter()
        .filter_map(|(_, l)| l.strip_prefix(prefix).map(str::to_owned))
        .collect()
}

#[test]
fn the_record_chain_is_checkpointed_with_the_signing_key_and_at_shutdown() {
    use crate::audit::chain::{digest, verify_checkpoint, CHECKPOINT_PREFIX};
    let mut f = signing_filter(json!({"decision_log": {"enabled": true, "checkpoint_s": 1}}));
    let mut r = loaded(&mut f);
    let jwks: Value = serde_json::from_str(ring().jwks().unwrap()).unwrap();
    let mut records = Vec::new();
    for _ in 0..2 {
        let mut h = get("/plain/1");
        let (_, mut d) = f.on_request_headers(&mut h);
        f.on_log(&mut h, &mut d);
        records.extend(lines_after(&h, crate::audit::PREFIX));
    }
    assert_eq!(records.len(), 2);
    f.on_tick(&mut r);
    assert!(lines_after(&r, CHECKPOINT_PREFIX).is_empty(), "not due yet");
    r.now_ns = NOON + 1_000_000_000;
    f.on_tick(&mut r);
    let cps = lines_after(&r, CHECKPOINT_PREFIX);
    assert_eq!(cps.len(), 1);
    let v = verify_checkpoint(&serde_json::from_str(&cps[0]).unwrap(), Some(&jwks)).unwrap();
    assert_eq!((v.seq, v.kid), (2, Ok("gw-1".to_string())));
    assert_eq!(v.digest, digest(records[1].as_bytes()), "the last record");
    f.on_tick(&mut r);
    f.on_vm_done(&mut r);
    assert_eq!(lines_after(&r, CHECKPOINT_PREFIX).len(), 1, "nothing new");
    // One more record: the VM going away checkpoints it at once.
    let mut h = get("/plain/1");
    let (_, mut d) = f.on_request_headers(&mut h);
    f.on_log(&mut h, &mut d);
    let last = lines_after(&h, crate::audit::PREFIX);
    f.on_vm_done(&mut r);
    let cps = lines_after(&r, CHECKPOINT_PREFIX);
    let v = verify_checkpoint(&serde_json::from_str(&cps[1]).unwrap(), Some(&jwks)).unwrap();
    assert_eq!(v.seq, 3);
    assert_eq!(v.digest, digest(last[0].as_bytes()));
}

#[test]
fn a_periodic_checkpoint_waits_for_the_key_rather_than_going_unsigned() {
    use crate::audit::chain::CHECKPOINT_PREFIX;
    let mut f = signing_filter(json!({"decision_log": {"enabled": true, "checkpoint_s": 1}}));
    let mut r = root();
    f.on_configured(&mut r, "test");
    let mut h = get("/plain/1");
    let (_, mut d) = f.on_request_headers(&mut h);
    f.on_log(&mut h, &mut d);
    r.now_ns = NOON + 2_000_000_000;
    f.on_tick(&mut r);
    assert!(lines_after(&r, CHECKPOINT_PREFIX).is_empty());
    // Shutting down before it loaded: the last checkpoint says so.
    f.on_vm_done(&mut r);
    let cp: Value = serde_json::from_str(&lines_after(&r, CHECKPOINT_PREFIX)[0]).unwrap();
    assert_eq!(cp["unsigned"], "the signing key had not loaded");
    assert!(cp.get("sig").is_none());
}
