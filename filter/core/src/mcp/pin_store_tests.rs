//! The pin store's tests: first use, reviewed pins, the worker cache's
//! freshness window, host calls spared, the record's bound, compare-and-
//! swap races and failing closed.

#![allow(clippy::unwrap_used, clippy::indexing_slicing)]

use super::*;
use crate::host::MockHost;
use crate::mcp::pins::digest;
use serde_json::json;

fn d(desc: &str) -> String {
    digest(&json!({"name": "t", "description": desc})).unwrap()
}

fn tofu() -> ServicePins {
    ServicePins {
        tools: BTreeMap::new(),
        first_use: true,
    }
}

/// A host whose pins exist for service `s`, as configure leaves them.
fn host() -> MockHost {
    let mut h = MockHost::new();
    h.shared_set(&key("s"), &[], None);
    h
}

fn one(sp: &ServicePins, h: &mut MockHost, c: &mut PinCache, now: u64, d: &str) -> PinState {
    sp.listed(h, c, now, "s", &[("t", d)]).unwrap()[0]
}

#[test]
fn a_reviewed_pin_decides_and_first_use_pins_what_it_does_not_cover() {
    let (a, b) = (d("a"), d("b"));
    let mut h = host();
    let mut c = PinCache::default();
    let reviewed = ServicePins {
        tools: [("t".to_string(), a.clone())].into(),
        first_use: false,
    };
    assert_eq!(one(&reviewed, &mut h, &mut c, 0, &a), PinState::Matches);
    assert_eq!(one(&reviewed, &mut h, &mut c, 0, &b), PinState::Changed);
    let mut h = host();
    let mut c = PinCache::default();
    let sp = tofu();
    assert_eq!(sp.called(&h, &mut c, 0, "s", "t").state, PinState::Unseen);
    assert_eq!(one(&sp, &mut h, &mut c, 0, &a), PinState::Matches);
    assert_eq!(
        sp.called(&h, &mut c, 0, "s", "t"),
        ToolPin {
            digest: Some(a.clone()),
            state: PinState::Matches
        }
    );
    // The server changes the tool: the first definition stays the pin.
    assert_eq!(one(&sp, &mut h, &mut c, 0, &b), PinState::Changed);
    assert_eq!(sp.called(&h, &mut c, 0, "s", "t").state, PinState::Changed);
    let off = ServicePins::default();
    assert_eq!(one(&off, &mut h, &mut c, 0, &a), PinState::Unpinned);
}

/// A change one worker's list shows reaches another worker's calls once
/// what that worker read is no longer fresh; on the worker that saw it,
/// at once.
#[test]
fn a_change_seen_on_one_worker_reaches_the_others_within_the_freshness_window() {
    let (a, b) = (d("a"), d("b"));
    let mut h = host();
    let (mut one_w, mut two_w) = (PinCache::default(), PinCache::default());
    let sp = tofu();
    assert_eq!(one(&sp, &mut h, &mut one_w, 0, &a), PinState::Matches);
    assert_eq!(
        sp.called(&h, &mut two_w, 0, "s", "t").state,
        PinState::Matches
    );
    assert_eq!(one(&sp, &mut h, &mut one_w, 1, &b), PinState::Changed);
    assert_eq!(
        sp.called(&h, &mut one_w, 1, "s", "t").state,
        PinState::Changed
    );
    assert_eq!(
        sp.called(&h, &mut two_w, 1, "s", "t").state,
        PinState::Matches
    );
    assert_eq!(
        sp.called(&h, &mut two_w, FRESH_NS, "s", "t").state,
        PinState::Changed
    );
}

/// A fresh cache answers calls and unchanged lists without a host call.
#[test]
fn a_fresh_worker_cache_spares_the_host_calls() {
    let a = d("a");
    let mut h = host();
    let mut c = PinCache::default();
    let sp = tofu();
    sp.listed(&mut h, &mut c, 0, "s", &[("t", &a)]).unwrap();
    let after_first = h.shared_calls.get();
    assert!(after_first > 0);
    let again = sp.listed(&mut h, &mut c, 5, "s", &[("t", &a)]).unwrap();
    assert_eq!(again, [PinState::Matches]);
    assert_eq!(sp.called(&h, &mut c, 5, "s", "t").state, PinState::Matches);
    assert_eq!(h.shared_calls.get(), after_first);
}

/// Two workers see a tool for the first time, each a different
/// definition, their writes interleaved: the compare-and-swap makes the
/// second re-read, so both agree on which came first.
#[test]
fn two_workers_racing_on_first_use_agree_on_one_pin() {
    let (a, b) = (d("a"), d("b"));
    let mut h = host();
    let sp = tofu();
    // Worker two read the empty record; worker one then pins `a`.
    let (_, stale_cas) = h.shared_get(&key("s")).unwrap();
    let (mut c1, mut c2) = (PinCache::default(), PinCache::default());
    assert_eq!(one(&sp, &mut h, &mut c1, 0, &a), PinState::Matches);
    // Worker two's write with what it read first is refused...
    let mut r = Record::default();
    r.tools.insert(
        "t".into(),
        Seen {
            first: Some(b.clone()),
            last: Some(b.clone()),
        },
    );
    assert!(!h.shared_set(&key("s"), &r.encode(), Some(stale_cas)));
    // ...and through the store it re-reads: `a` came first.
    assert_eq!(one(&sp, &mut h, &mut c2, 0, &b), PinState::Changed);
    assert_eq!(
        sp.called(&h, &mut c1, FRESH_NS, "s", "t").state,
        PinState::Changed
    );
}

/// A server listing ever new names cannot grow the proxy's memory past
/// the record's bound: the list that would is refused, and the record
/// stays as it was.
#[test]
fn a_server_listing_ever_new_tools_cannot_grow_the_record_past_its_bound() {
    let mut h = host();
    let mut c = PinCache::default();
    let sp = tofu();
    let a = d("a");
    let mut refused = None;
    for round in 0..100 {
        let names: Vec<String> = (0..100).map(|i| format!("tool-{round}-{i:04}")).collect();
        let tools: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), a.as_str())).collect();
        if let Err(e) = sp.listed(&mut h, &mut c, 0, "s", &tools) {
            refused = Some((round, e));
            break;
        }
    }
    let (round, why) = refused.expect("a bound");
    assert!(
        round > 5,
        "a real server's list fits: refused at round {round}"
    );
    assert_eq!(why, "too many tools to pin for this service");
    assert!(h.shared_get(&key("s")).unwrap().0.len() <= MAX_RECORD_BYTES);
}

/// A record that does not decode (another build's, corrupt): calls count
/// as changed and lists fail, never unpinned.
#[test]
fn an_undecodable_record_fails_closed() {
    let a = d("a");
    let sp = tofu();
    for bytes in [
        &b"\x05\x00\x00\x00ab"[..],
        &b"\x01\x00\x00\x00t\x03abc\x00"[..],
    ] {
        let mut h = MockHost::new();
        h.shared_set(&key("s"), bytes, None);
        let mut c = PinCache::default();
        assert_eq!(sp.called(&h, &mut c, 0, "s", "t").state, PinState::Changed);
        assert!(sp.listed(&mut h, &mut c, 0, "s", &[("t", &a)]).is_err());
    }
    // No record at all (configure had not run here): nothing seen yet.
    let mut h = MockHost::new();
    let mut c = PinCache::default();
    assert_eq!(sp.called(&h, &mut c, 0, "s", "t").state, PinState::Unseen);
    assert_eq!(one(&sp, &mut h, &mut c, 0, &a), PinState::Matches);
}

#[test]
fn a_record_decodes_to_what_was_encoded_and_names_cannot_forge_keys() {
    let mut r = Record::default();
    r.tools.insert(
        "x\u{0}y".into(),
        Seen {
            first: Some(d("a")),
            last: None,
        },
    );
    r.tools.insert("".into(), Seen::default());
    assert_eq!(Record::decode(&r.encode()), Some(r));
    assert_ne!(key("a.1.b"), key("a"));
    assert_ne!(key("ab"), key("a"));
}

/// A worker whose freshness window ran out re-reads the record but does
/// not decode it again when its version is unchanged (a record of 1,500
/// tools takes about a millisecond to decode, on the first call of every
/// second on every worker otherwise); a changed version is decoded.
#[test]
fn an_unchanged_record_is_not_decoded_again_after_the_window() {
    let mut h = host();
    let mut c = PinCache::default();
    let sp = tofu();
    assert_eq!(one(&sp, &mut h, &mut c, 0, &d("a")), PinState::Matches);
    let call = |h: &MockHost, c: &mut PinCache, now| sp.called(h, c, now, "s", "t").state;
    assert_eq!(call(&h, &mut c, FRESH_NS), PinState::Matches);
    // The same version with bytes that do not decode: only a decode
    // would see them.
    h.shared.borrow_mut().get_mut(&key("s")).unwrap().0 = b"junk".to_vec();
    assert_eq!(call(&h, &mut c, 2 * FRESH_NS), PinState::Matches);
    // A new version is decoded (and fails closed).
    h.shared_set(&key("s"), b"junk", None);
    assert_eq!(call(&h, &mut c, 3 * FRESH_NS), PinState::Changed);
}
