//! The broker's flow over one worker (`MockHost`): a cold fetch, the
//! cache, single-flight jobs, agents kept apart, streams that go away,
//! and paths filled from identity. Also the helpers the other secrets
//! tests share (a broker's config, secret specs, Vault's answers, and
//! settling finished jobs as the filter would).

#![allow(clippy::unwrap_used, clippy::indexing_slicing)]

use super::*;
use crate::config::{KvInto, SecretConfig, VaultConfig};
use crate::host::{Host, MockHost};
use serde_json::{json, Value};
use std::collections::BTreeMap;
#[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
use wasm_bindgen_test::wasm_bindgen_test as test;

pub(super) const CANARY: &str = "canary-7f3a9b-do-not-leak";

pub(super) fn cfg() -> VaultConfig {
    VaultConfig {
        retries: 2,
        ..VaultConfig::default()
    }
}

pub(super) fn kv_spec() -> SecretConfig {
    SecretConfig::Kv {
        path: "secret/data/mcp/agents/{agent}/credentials".into(),
        field: "api_key".into(),
        into: KvInto::Header("x-api-key".into()),
    }
}

pub(super) fn db_spec() -> SecretConfig {
    SecretConfig::Database {
        path: "database/creds/readonly".into(),
        username_header: "x-db-username".into(),
        password_header: "x-db-password".into(),
    }
}

pub(super) fn ask(
    b: &mut Broker,
    h: &mut MockHost,
    agent: &str,
    stream: u32,
    specs: &[SecretConfig],
) -> Lookup {
    let needs = plan(specs, agent, Some("team"), Some("support")).unwrap();
    b.request(
        h,
        agent,
        "svc",
        needs,
        Some(Secret::new(format!("jwt-of-{agent}"))),
        Waiter {
            stream,
            trace: vec![("x-request-id".into(), format!("req-{stream}"))],
        },
    )
}

pub(super) fn login_ok(token: &str) -> Vec<u8> {
    json!({"auth": {"client_token": token, "lease_duration": 3600}})
        .to_string()
        .into_bytes()
}

pub(super) fn kv_ok(v: &str) -> Vec<u8> {
    json!({"data": {"data": {"api_key": v}, "metadata": {"version": 1}}, "lease_duration": 0})
        .to_string()
        .into_bytes()
}

pub(super) fn last(h: &MockHost) -> u32 {
    h.dispatched.last().unwrap().token
}

pub(super) fn answer(
    b: &mut Broker,
    h: &mut MockHost,
    status: Option<u16>,
    body: Option<&[u8]>,
) -> bool {
    let t = last(h);
    respond(b, h, t, status, body)
}

/// Hands finished jobs to the mock as the filter would: resumes with
/// the secrets, or a 503 rendered by [`Denial`].
pub(super) fn settle(b: &mut Broker, h: &mut MockHost) {
    for c in b.take_completions() {
        match c.result {
            Ok(set) => {
                let set: Vec<(String, String)> = set
                    .iter()
                    .map(|(k, v)| (k.clone(), v.expose().to_string()))
                    .collect();
                h.resume_stream(c.stream, &set);
            }
            Err(why) => {
                let r = crate::outcome::Denial::SecretsUnavailable(why).reply(
                    &format!("d{}", c.stream),
                    &[],
                    None,
                );
                h.reply_stream(c.stream, r.status, &r.header_refs(), &r.body);
            }
        }
    }
}

pub(super) fn tick(b: &mut Broker, h: &mut MockHost) {
    b.on_tick(h);
    settle(b, h);
}

pub(super) fn respond(
    b: &mut Broker,
    h: &mut MockHost,
    token: u32,
    status: Option<u16>,
    body: Option<&[u8]>,
) -> bool {
    let r = b.on_response(h, token, status, body);
    settle(b, h);
    r
}

pub(super) fn no_leak(h: &MockHost) {
    for (_, line) in h.logs.borrow().iter() {
        assert!(
            !line.contains(CANARY) && !line.contains("jwt-of-"),
            "leaked: {line}"
        );
    }
    for (_, r) in &h.stream_replies {
        let body = String::from_utf8_lossy(&r.body);
        assert!(
            !body.contains(CANARY) && !body.contains("s.tok"),
            "leaked: {body}"
        );
    }
}

#[test]
fn cold_fetch_logs_in_reads_injects_then_serves_from_cache() {
    let mut b = Broker::new(cfg(), 1);
    let mut h = MockHost::new();
    assert_eq!(
        ask(&mut b, &mut h, "a@clients", 1, &[kv_spec()]),
        Lookup::Pending
    );
    tick(&mut b, &mut h);
    let login = &h.dispatched[0];
    assert_eq!(
        login.header("x-request-id"),
        Some("req-1"),
        "trace context on callouts"
    );
    assert_eq!(login.cluster, "vault");
    assert_eq!(login.header(":path"), Some("/v1/auth/jwt/login"));
    let body: Value = serde_json::from_slice(login.body.as_ref().unwrap()).unwrap();
    assert_eq!(body, json!({"role": "agent", "jwt": "jwt-of-a@clients"}));
    assert!(answer(&mut b, &mut h, Some(200), Some(&login_ok("s.tokA"))));
    tick(&mut b, &mut h);
    let read = &h.dispatched[1];
    assert_eq!(
        read.header(":path"),
        Some("/v1/secret/data/mcp/agents/a@clients/credentials")
    );
    assert_eq!(read.header("x-vault-token"), Some("s.tokA"));
    assert!(answer(&mut b, &mut h, Some(200), Some(&kv_ok(CANARY))));
    assert_eq!(
        h.resumed,
        [(1, vec![("x-api-key".to_string(), CANARY.to_string())])]
    );
    assert_eq!(b.pending_jobs(), 0);
    // Cached now: no callout.
    let again = ask(&mut b, &mut h, "a@clients", 2, &[kv_spec()]);
    assert_eq!(
        again,
        Lookup::Ready(vec![("x-api-key".into(), Secret::new(CANARY))])
    );
    assert_eq!(h.dispatched.len(), 2);
    assert_eq!(
        b.stats,
        BrokerStats {
            hits: 1,
            logins: 1,
            reads: 1,
            failures: 0
        }
    );
    no_leak(&h);
}

#[test]
fn concurrent_cold_requests_share_one_login_and_read() {
    let mut b = Broker::new(cfg(), 1);
    let mut h = MockHost::new();
    for s in 1..=20 {
        assert_eq!(
            ask(&mut b, &mut h, "a@clients", s, &[kv_spec()]),
            Lookup::Pending
        );
    }
    tick(&mut b, &mut h);
    answer(&mut b, &mut h, Some(200), Some(&login_ok("s.tokA")));
    tick(&mut b, &mut h);
    answer(&mut b, &mut h, Some(200), Some(&kv_ok(CANARY)));
    assert_eq!(h.dispatched.len(), 2, "one login, one read for 20 requests");
    assert_eq!(h.resumed.len(), 20);
}

#[test]
fn agents_never_get_each_others_secrets() {
    let mut b = Broker::new(cfg(), 1);
    let mut h = MockHost::new();
    ask(&mut b, &mut h, "a@clients", 1, &[kv_spec()]);
    ask(&mut b, &mut h, "b@clients", 2, &[kv_spec()]);
    ask(&mut b, &mut h, "a@clients", 3, &[kv_spec()]);
    tick(&mut b, &mut h);
    assert_eq!(h.dispatched.len(), 2, "one login per agent");
    // Answer B first, A second, with tokens and values per agent.
    let (ta, tb) = (h.dispatched[0].token, h.dispatched[1].token);
    respond(&mut b, &mut h, tb, Some(200), Some(&login_ok("s.tokB")));
    respond(&mut b, &mut h, ta, Some(200), Some(&login_ok("s.tokA")));
    tick(&mut b, &mut h);
    for d in h.dispatched.clone().iter().skip(2) {
        let who = if d.header("x-vault-token") == Some("s.tokA") {
            "A"
        } else {
            "B"
        };
        assert!(d
            .header(":path")
            .unwrap()
            .contains(&format!("{}@clients", who.to_lowercase())));
        respond(
            &mut b,
            &mut h,
            d.token,
            Some(200),
            Some(&kv_ok(&format!("secret-{who}"))),
        );
    }
    let got: BTreeMap<u32, String> = h
        .resumed
        .iter()
        .map(|(s, v)| (*s, v[0].1.clone()))
        .collect();
    assert_eq!(got[&1], "secret-A");
    assert_eq!(got[&3], "secret-A");
    assert_eq!(got[&2], "secret-B");
}

#[test]
fn disconnected_streams_are_skipped_and_late_answers_ignored() {
    let mut b = Broker::new(cfg(), 1);
    let mut h = MockHost::new();
    ask(&mut b, &mut h, "a@clients", 1, &[kv_spec()]);
    ask(&mut b, &mut h, "a@clients", 2, &[kv_spec()]);
    ask(&mut b, &mut h, "a@clients", 3, &[kv_spec()]);
    tick(&mut b, &mut h);
    b.forget_stream(1);
    h.gone.push(3); // gone without Envoy telling the filter yet
    answer(&mut b, &mut h, Some(200), Some(&login_ok("s.tok")));
    tick(&mut b, &mut h);
    let read = last(&h);
    respond(&mut b, &mut h, read, Some(200), Some(&kv_ok(CANARY)));
    assert_eq!(h.resumed.len(), 1);
    assert_eq!(h.resumed[0].0, 2);
    // The same token again (a duplicate or late answer): ignored.
    assert!(!respond(
        &mut b,
        &mut h,
        read,
        Some(200),
        Some(&kv_ok("other"))
    ));
    assert!(!respond(&mut b, &mut h, 999, None, None));
}

#[test]
fn identity_values_cannot_escape_the_path() {
    for bad in ["../root", "a/b", "", ".."] {
        assert!(plan(&[kv_spec()], bad, None, None).is_err(), "{bad:?}");
    }
    let p = plan(&[kv_spec()], "a@clients", None, None).unwrap();
    assert_eq!(p[0].path, "secret/data/mcp/agents/a@clients/credentials");
    let team = SecretConfig::Kv {
        path: "secret/data/teams/{team}/k".into(),
        field: "api_key".into(),
        into: KvInto::Header("x-api-key".into()),
    };
    assert!(
        plan(std::slice::from_ref(&team), "a", None, None).is_err(),
        "no team claim"
    );
    assert_eq!(
        plan(&[team], "a", Some("ml"), None).unwrap()[0].path,
        "secret/data/teams/ml/k"
    );
}

#[test]
fn secrets_do_not_print() {
    assert_eq!(format!("{:?}", Secret::new(CANARY)), "Secret(..)");
    let l = Lookup::Ready(vec![("x".into(), Secret::new(CANARY))]);
    assert!(!format!("{l:?}").contains(CANARY));
}
