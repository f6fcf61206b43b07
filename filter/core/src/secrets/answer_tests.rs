//! How the broker treats Vault's answers: retries with backoff, permanent
//! failures, deleted KV versions and unusable fields, one fresh login on
//! a 403, and leases that end before their TTL.

#![allow(clippy::unwrap_used, clippy::indexing_slicing)]

use super::plan::SEC;
use super::tests::{answer, ask, cfg, db_spec, kv_spec, login_ok, no_leak, tick, CANARY};
use super::*;
use crate::host::MockHost;
use serde_json::{json, Value};
#[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
use wasm_bindgen_test::wasm_bindgen_test as test;

#[test]
fn retryable_failures_back_off_then_fail_closed() {
    let mut b = Broker::new(cfg(), 1);
    let mut h = MockHost::new();
    ask(&mut b, &mut h, "a@clients", 1, &[kv_spec()]);
    for (i, status) in [Some(503), None, Some(429)].into_iter().enumerate() {
        tick(&mut b, &mut h);
        assert_eq!(
            h.dispatched.len(),
            i + 1,
            "attempt {i} dispatched after its backoff"
        );
        answer(&mut b, &mut h, status, Some(b"{}"));
        tick(&mut b, &mut h);
        assert_eq!(h.dispatched.len(), i + 1, "not before the backoff");
        h.now_ns += 1_000_000_000;
    }
    assert_eq!(b.pending_jobs(), 0);
    let (stream, reply) = &h.stream_replies[0];
    assert_eq!((*stream, reply.status), (1, 503));
    let body: Value = serde_json::from_slice(&reply.body).unwrap();
    assert_eq!(
        body["reason"],
        "secrets_unavailable: vault login: vault answered 429"
    );
    assert_eq!(body["decision_id"], "d1");
    assert_eq!(b.stats.failures, 1);
}

#[test]
fn permanent_failures_are_not_retried() {
    type Case<'a> = (Option<u16>, Option<&'a [u8]>, &'a str);
    let cases: [Case; 5] = [
        (Some(400), Some(b"{}"), "vault login: vault answered 400"),
        (Some(403), Some(b"{}"), "vault login: vault answered 403"),
        (
            Some(200),
            Some(b"not json"),
            "vault login: malformed response",
        ),
        (
            Some(200),
            Some(b"{\"auth\": null}"),
            "vault login: malformed response",
        ),
        (Some(200), None, "vault login: response too large"),
    ];
    for (status, body, want) in cases {
        let mut b = Broker::new(cfg(), 1);
        let mut h = MockHost::new();
        ask(&mut b, &mut h, "a@clients", 1, &[kv_spec()]);
        tick(&mut b, &mut h);
        answer(&mut b, &mut h, status, body);
        tick(&mut b, &mut h);
        assert_eq!(h.dispatched.len(), 1, "{want}");
        let reply: Value = serde_json::from_slice(&h.stream_replies[0].1.body).unwrap();
        assert_eq!(reply["reason"], format!("secrets_unavailable: {want}"));
    }
}

#[test]
fn deleted_kv_versions_and_missing_fields_are_never_injected() {
    for (status, body) in [
        (404, json!({"errors": []})),
        (
            200,
            json!({"data": {"data": null, "metadata": {"deletion_time": "2025-01-01T00:00:00Z"}}}),
        ),
        (200, json!({"data": {"data": {"other": "x"}}})),
        (200, json!({"data": {"data": {"api_key": 42}}})),
    ] {
        let mut b = Broker::new(cfg(), 1);
        let mut h = MockHost::new();
        ask(&mut b, &mut h, "a@clients", 1, &[kv_spec()]);
        tick(&mut b, &mut h);
        answer(&mut b, &mut h, Some(200), Some(&login_ok("s.tok")));
        tick(&mut b, &mut h);
        answer(
            &mut b,
            &mut h,
            Some(status),
            Some(body.to_string().as_bytes()),
        );
        assert!(h.resumed.is_empty(), "{body}");
        assert_eq!(h.stream_replies[0].1.status, 503, "{body}");
    }
}

#[test]
fn an_expired_vault_token_gets_one_relogin() {
    let mut b = Broker::new(cfg(), 1);
    let mut h = MockHost::new();
    ask(&mut b, &mut h, "a@clients", 1, &[kv_spec()]);
    tick(&mut b, &mut h);
    answer(&mut b, &mut h, Some(200), Some(&login_ok("s.old")));
    tick(&mut b, &mut h);
    answer(
        &mut b,
        &mut h,
        Some(403),
        Some(b"{\"errors\":[\"permission denied\"]}"),
    );
    tick(&mut b, &mut h);
    assert_eq!(h.dispatched[2].header(":path"), Some("/v1/auth/jwt/login"));
    answer(&mut b, &mut h, Some(200), Some(&login_ok("s.new")));
    tick(&mut b, &mut h);
    assert_eq!(h.dispatched[3].header("x-vault-token"), Some("s.new"));
    // A second 403 is final.
    answer(&mut b, &mut h, Some(403), Some(b"{}"));
    tick(&mut b, &mut h);
    assert_eq!(h.dispatched.len(), 4);
    assert_eq!(h.stream_replies[0].1.status, 503);
}

#[test]
fn leases_expire_before_their_ttl_and_are_refetched() {
    let mut b = Broker::new(cfg(), 1);
    let mut h = MockHost::new();
    ask(&mut b, &mut h, "a@clients", 1, &[db_spec()]);
    tick(&mut b, &mut h);
    answer(&mut b, &mut h, Some(200), Some(&login_ok("s.tok")));
    tick(&mut b, &mut h);
    let creds = json!({"lease_id": "database/creds/readonly/x", "lease_duration": 60,
                       "data": {"username": "v-user-1", "password": CANARY}});
    answer(
        &mut b,
        &mut h,
        Some(200),
        Some(creds.to_string().as_bytes()),
    );
    assert_eq!(
        h.resumed[0].1,
        [
            ("x-db-username".to_string(), "v-user-1".to_string()),
            ("x-db-password".to_string(), CANARY.to_string())
        ]
    );
    // 49 s later (60 s lease, 10 s margin): still cached.
    h.now_ns += 49 * SEC;
    assert!(matches!(
        ask(&mut b, &mut h, "a@clients", 2, &[db_spec()]),
        Lookup::Ready(_)
    ));
    // 50 s: refetched with the cached Vault token (no login).
    h.now_ns += SEC;
    assert_eq!(
        ask(&mut b, &mut h, "a@clients", 3, &[db_spec()]),
        Lookup::Pending
    );
    tick(&mut b, &mut h);
    assert_eq!(h.dispatched.len(), 3);
    assert_eq!(
        h.dispatched[2].header(":path"),
        Some("/v1/database/creds/readonly")
    );
    // A lease shorter than the margin is used once, never cached.
    let short = json!({"lease_duration": 5, "data": {"username": "v-user-2", "password": "p2"}});
    answer(
        &mut b,
        &mut h,
        Some(200),
        Some(short.to_string().as_bytes()),
    );
    assert_eq!(h.resumed[1].1[0].1, "v-user-2");
    assert_eq!(
        ask(&mut b, &mut h, "a@clients", 4, &[db_spec()]),
        Lookup::Pending
    );
    no_leak(&h);
}
