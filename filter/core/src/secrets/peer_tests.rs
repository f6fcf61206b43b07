//! Two workers over one shared-data store: one fetch for both, a lapsed
//! claim taken over, a peer's failure passed on at once; and shared-data
//! keys that cannot collide.

#![allow(clippy::unwrap_used, clippy::indexing_slicing)]

use super::keys::{claim_key, token_key, value_key};
use super::plan::SEC;
use super::tests::{answer, ask, cfg, kv_ok, kv_spec, login_ok, tick, CANARY};
use super::*;
use crate::config::VaultConfig;
use crate::host::MockHost;
#[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
use wasm_bindgen_test::wasm_bindgen_test as test;

/// Two workers' brokers and hosts over one shared-data store.
fn two_workers() -> ((Broker, MockHost), (Broker, MockHost)) {
    let shared = crate::host::SharedData::default();
    let worker = |id| {
        let mut h = MockHost::new();
        h.shared = shared.clone();
        (Broker::new(cfg(), id), h)
    };
    (worker(1), worker(2))
}

#[test]
fn workers_share_fetches_through_shared_data() {
    let ((mut w1, mut h1), (mut w2, mut h2)) = two_workers();
    // Worker 1 claims the fetch; worker 2 waits for it instead of
    // logging in too.
    assert_eq!(
        ask(&mut w1, &mut h1, "a@clients", 1, &[kv_spec()]),
        Lookup::Pending
    );
    assert_eq!(
        ask(&mut w2, &mut h2, "a@clients", 7, &[kv_spec()]),
        Lookup::Pending
    );
    tick(&mut w1, &mut h1);
    tick(&mut w2, &mut h2);
    assert_eq!((h1.dispatched.len(), h2.dispatched.len()), (1, 0));
    answer(&mut w1, &mut h1, Some(200), Some(&login_ok("s.tok")));
    tick(&mut w1, &mut h1);
    answer(&mut w1, &mut h1, Some(200), Some(&kv_ok(CANARY)));
    tick(&mut w2, &mut h2);
    assert!(h2.dispatched.is_empty(), "worker 2 made no callout");
    assert_eq!(
        h2.resumed,
        [(7, vec![("x-api-key".to_string(), CANARY.to_string())])]
    );
    // Later requests on worker 2 hit its own cache.
    assert!(matches!(
        ask(&mut w2, &mut h2, "a@clients", 8, &[kv_spec()]),
        Lookup::Ready(_)
    ));
    // Another agent's entry is never read for this one.
    assert_eq!(
        ask(&mut w2, &mut h2, "b@clients", 9, &[kv_spec()]),
        Lookup::Pending
    );
}

#[test]
fn a_lapsed_claim_is_taken_over() {
    let ((mut w1, mut h1), (mut w2, mut h2)) = two_workers();
    ask(&mut w1, &mut h1, "a@clients", 1, &[kv_spec()]);
    ask(&mut w2, &mut h2, "a@clients", 2, &[kv_spec()]);
    tick(&mut w1, &mut h1); // worker 1 then stalls forever
    h2.now_ns += 60 * SEC;
    tick(&mut w2, &mut h2);
    assert_eq!(h2.dispatched.len(), 1, "worker 2 fetches itself");
    assert_eq!(h2.dispatched[0].header(":path"), Some("/v1/auth/jwt/login"));
}

#[test]
fn a_worker_waiting_on_a_failed_fetch_fails_at_once_not_after_the_claim() {
    let ((mut w1, mut h1), (mut w2, mut h2)) = two_workers();
    ask(&mut w1, &mut h1, "a@clients", 1, &[kv_spec()]);
    ask(&mut w2, &mut h2, "a@clients", 2, &[kv_spec()]);
    tick(&mut w1, &mut h1);
    tick(&mut w2, &mut h2);
    assert!(h2.dispatched.is_empty(), "worker 2 waits for worker 1");
    // Worker 1's login times out (no retries left): its job fails.
    let mut c = cfg();
    c.retries = 0;
    w1.cfg = c;
    answer(&mut w1, &mut h1, None, None);
    assert_eq!(h1.stream_replies.len(), 1);
    // Worker 2's next tick (5 ms later), not the claim's lease, ends it.
    h2.now_ns += 5_000_000;
    tick(&mut w2, &mut h2);
    assert_eq!(h2.stream_replies.len(), 1, "told at once");
    assert_eq!(h2.stream_replies[0].1.status, 503);
    assert!(
        h2.dispatched.is_empty(),
        "and it did not hammer Vault itself"
    );
    // A new request may claim over the failure marker and try again.
    ask(&mut w2, &mut h2, "a@clients", 3, &[kv_spec()]);
    tick(&mut w2, &mut h2);
    assert_eq!(h2.dispatched.len(), 1);
}

#[test]
fn cache_keys_cannot_collide_across_issuers_roles_or_crafted_ids() {
    // Two issuers with the same subject are two agents.
    assert_ne!(
        principal(Some("https://a/"), "bot"),
        principal(Some("https://b/"), "bot")
    );
    // Separators inside ids cannot forge another tuple.
    assert_ne!(principal(Some("a"), "b/c"), principal(Some("a/b"), "c"));
    assert_ne!(principal(Some("1:a"), ""), principal(Some(""), "1:a"));
    let c = cfg();
    let other_role = VaultConfig {
        role: "admin".into(),
        ..cfg()
    };
    let p = principal(Some("i"), "bot");
    assert_ne!(token_key(&c, &p), token_key(&other_role, &p));
    assert_ne!(value_key(&c, &p, "x/y"), value_key(&other_role, &p, "x/y"));
    assert_ne!(
        value_key(&c, &p, "a"),
        value_key(&c, &format!("{p}1:a"), "")
    );
    assert_ne!(claim_key(&c, &p, "svc"), claim_key(&c, &p, "svc2"));
}
