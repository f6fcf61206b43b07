//! The binding table on its own (`MockHost` shared data): who may use a
//! session, expiry, a full table, what the server may and may not do.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use super::*;
use crate::config::IdentityConfig;
use crate::host::MockHost;
use serde_json::json;
#[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
use wasm_bindgen_test::wasm_bindgen_test as test;

const S: u64 = 1_000_000_000;
const T0: u64 = 1_746_273_600 * S;
const TTL: u64 = 3_600;

fn table(slots: u64) -> Table {
    Table::new(&McpConfig {
        session_slots: slots,
        session_ttl_s: TTL,
        ..McpConfig::default()
    })
}

fn principal(payload: serde_json::Value) -> Principal {
    let map = payload.as_object().unwrap().clone();
    let identity = crate::claims::identity(map, &IdentityConfig::default()).unwrap();
    Principal::new(1, identity, 256)
}

fn agent(sub: &str) -> Principal {
    principal(json!({"iss": "https://idp", "sub": sub}))
}

fn ticket(p: &Principal, method: &str, session: Option<&str>) -> Ticket {
    Ticket::new(p, method, session)
}

fn host(shared: &crate::host::SharedData, now: u64) -> MockHost {
    let mut h = MockHost::new().at(now);
    h.shared = shared.clone();
    h
}

/// `p`'s request (no session) whose response opens `id`.
fn open(t: &Table, shared: &crate::host::SharedData, now: u64, p: &Principal, id: &str) {
    let mut h = host(shared, now);
    h.response_headers = vec![(":status".into(), "200".into()), (HEADER.into(), id.into())];
    t.on_response(&mut h, &ticket(p, "POST", None));
}

fn admit(
    t: &Table,
    shared: &crate::host::SharedData,
    now: u64,
    p: &Principal,
    id: &str,
) -> Result<(), Refusal> {
    t.admit(&mut host(shared, now), &ticket(p, "POST", Some(id)))
}

#[test]
fn a_session_serves_the_principal_it_was_opened_by_and_no_other() {
    let t = table(64);
    let shared = crate::host::SharedData::default();
    t.create(&mut host(&shared, T0));
    let (a, b) = (agent("a@clients"), agent("b@clients"));
    open(&t, &shared, T0, &a, "sess-1");
    assert_eq!(admit(&t, &shared, T0, &a, "sess-1"), Ok(()));
    assert_eq!(admit(&t, &shared, T0, &b, "sess-1"), Err(Refusal::Foreign));
    assert_eq!(
        admit(&t, &shared, T0, &a, "sess-2"),
        Err(Refusal::Unknown),
        "never bound: refused, whoever asks"
    );
    // The same subject from another issuer is another principal.
    let other_iss = principal(json!({"iss": "https://other", "sub": "a@clients"}));
    assert_eq!(
        admit(&t, &shared, T0, &other_iss, "sess-1"),
        Err(Refusal::Foreign)
    );
    // No session id: nothing to check.
    let mut h = host(&shared, T0);
    assert_eq!(t.admit(&mut h, &ticket(&b, "POST", None)), Ok(()));
}

#[test]
fn a_session_opened_by_an_actor_for_a_user_serves_neither_alone_nor_another_actor() {
    let t = table(64);
    let shared = crate::host::SharedData::default();
    let acting = principal(json!({"iss": "i", "sub": "alice", "act": {"sub": "orchestrator"}}));
    let other_actor = principal(json!({"iss": "i", "sub": "alice", "act": {"sub": "rogue"}}));
    let alone = principal(json!({"iss": "i", "sub": "alice"}));
    open(&t, &shared, T0, &acting, "sess-d");
    assert_eq!(admit(&t, &shared, T0, &acting, "sess-d"), Ok(()));
    for p in [&other_actor, &alone] {
        assert_eq!(admit(&t, &shared, T0, p, "sess-d"), Err(Refusal::Foreign));
    }
}

#[test]
fn a_binding_expires_unless_used_and_each_use_extends_it() {
    let t = table(64);
    let shared = crate::host::SharedData::default();
    let a = agent("a@clients");
    open(&t, &shared, T0, &a, "s");
    // Used at 90% of its TTL: extended from then.
    let used = T0 + TTL * S * 9 / 10;
    assert_eq!(admit(&t, &shared, used, &a, "s"), Ok(()));
    assert_eq!(admit(&t, &shared, T0 + TTL * S * 3 / 2, &a, "s"), Ok(()));
    // Then unused past its TTL: unknown, to its owner too.
    let idle = T0 + TTL * S * 3 / 2 + TTL * S + S;
    assert_eq!(admit(&t, &shared, idle, &a, "s"), Err(Refusal::Unknown));
    // An expired binding is not another principal's: the server reusing
    // the id binds it to whoever it answers now.
    let b = agent("b@clients");
    open(&t, &shared, idle, &b, "s");
    assert_eq!(admit(&t, &shared, idle, &b, "s"), Ok(()));
    assert_eq!(admit(&t, &shared, idle, &a, "s"), Err(Refusal::Foreign));
}

#[test]
fn a_full_table_evicts_the_least_recently_used_binding_and_never_hands_it_over() {
    // Two slots: every id probes both.
    let t = table(2);
    let shared = crate::host::SharedData::default();
    let (a, b, c) = (agent("a"), agent("b"), agent("c"));
    open(&t, &shared, T0, &a, "sa");
    open(&t, &shared, T0 + S, &b, "sb");
    // a's session in use since: b's is the least recently used.
    let later = T0 + TTL * S / 2;
    assert_eq!(admit(&t, &shared, later, &a, "sa"), Ok(()));
    open(&t, &shared, later, &c, "sc");
    assert_eq!(admit(&t, &shared, later, &c, "sc"), Ok(()));
    assert_eq!(admit(&t, &shared, later, &a, "sa"), Ok(()));
    // b's binding is gone: its session is unknown (its client opens a new
    // one), to b and to anyone else alike.
    assert_eq!(admit(&t, &shared, later, &b, "sb"), Err(Refusal::Unknown));
    assert_eq!(admit(&t, &shared, later, &c, "sb"), Err(Refusal::Unknown));
    // Memory stays at the table's two slots.
    assert_eq!(shared.borrow().len(), 2);
}

#[test]
fn an_expired_binding_is_reused_before_a_live_one_is_evicted() {
    let t = table(2);
    let shared = crate::host::SharedData::default();
    let (a, b, c) = (agent("a"), agent("b"), agent("c"));
    open(&t, &shared, T0, &a, "sa");
    let later = T0 + TTL * S / 2;
    open(&t, &shared, later, &b, "sb");
    let after_a = T0 + TTL * S + S;
    open(&t, &shared, after_a, &c, "sc");
    assert_eq!(admit(&t, &shared, after_a, &b, "sb"), Ok(()), "live: kept");
    assert_eq!(admit(&t, &shared, after_a, &c, "sc"), Ok(()));
}

#[test]
fn a_server_handing_out_a_live_session_of_another_principal_does_not_move_it() {
    let t = table(64);
    let shared = crate::host::SharedData::default();
    let (a, b) = (agent("a"), agent("b"));
    open(&t, &shared, T0, &a, "sa");
    // b's initialize is answered with a's session id.
    open(&t, &shared, T0, &b, "sa");
    assert_eq!(admit(&t, &shared, T0, &a, "sa"), Ok(()));
    assert_eq!(admit(&t, &shared, T0, &b, "sa"), Err(Refusal::Foreign));
}

#[test]
fn a_delete_the_server_accepted_ends_the_binding_and_a_refused_one_keeps_it() {
    let t = table(64);
    let shared = crate::host::SharedData::default();
    let (a, b) = (agent("a"), agent("b"));
    open(&t, &shared, T0, &a, "sa");
    let delete = |p: &Principal, status: &str| {
        let mut h = host(&shared, T0);
        h.response_headers = vec![(":status".into(), status.into())];
        t.on_response(&mut h, &ticket(p, "DELETE", Some("sa")));
    };
    // Not the owner's (never forwarded in the filter; here: no effect).
    delete(&b, "200");
    assert_eq!(admit(&t, &shared, T0, &a, "sa"), Ok(()));
    // The server does not let clients end sessions.
    delete(&a, "405");
    assert_eq!(admit(&t, &shared, T0, &a, "sa"), Ok(()));
    delete(&a, "204");
    assert_eq!(admit(&t, &shared, T0, &a, "sa"), Err(Refusal::Unknown));
}

#[test]
fn shared_data_and_logs_hold_digests_never_the_session_id() {
    let t = table(16);
    let shared = crate::host::SharedData::default();
    let a = agent("a");
    let id = "3f1c2b9e-secret-session-id";
    let mut h = host(&shared, T0);
    h.response_headers = vec![(HEADER.into(), id.into())];
    let bound = t.on_response(&mut h, &ticket(&a, "POST", None));
    let needle = id.as_bytes();
    for (k, (v, _)) in shared.borrow().iter() {
        assert!(!k.contains(id));
        assert!(!v.windows(needle.len()).any(|w| w == needle));
    }
    assert!(h.logs.borrow().iter().all(|(_, l)| !l.contains(id)));
    assert_eq!(bound, Some(hex(&digest(id))));
    assert_eq!(admit(&t, &shared, T0, &a, id), Ok(()));
}

#[test]
fn a_session_id_that_is_not_visible_ascii_is_never_bound() {
    let t = table(16);
    let shared = crate::host::SharedData::default();
    let a = agent("a");
    for id in ["has space", "tab\there", "é-unicode"] {
        open(&t, &shared, T0, &a, id);
        assert_eq!(
            admit(&t, &shared, T0, &a, id),
            Err(Refusal::Unknown),
            "{id:?}"
        );
    }
    assert!(valid_id("abc-123_~!") && !valid_id(""));
}
