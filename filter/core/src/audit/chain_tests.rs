//! The record chain and its checkpoints: links over exact bytes, and
//! signatures that verify against the published JWKS and nothing else.

#![allow(clippy::unwrap_used, clippy::indexing_slicing)]

use super::*;
use crate::audit::{finish, record, Facts, Trail};
use crate::config::DecisionLogConfig;
use crate::txn::Keyring;
use serde_json::Value;
#[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
use wasm_bindgen_test::wasm_bindgen_test as test;

fn line(chain: &mut Chain, id: &str) -> String {
    let f = Facts {
        decision_id: id,
        now_ns: 1_000,
        entrypoint: "data.mcp.authz",
        revision: "rev",
        allowed: true,
        reason: "",
        reasons: &[],
        status: 0,
        agent: Some("a@clients"),
    };
    let trail = Trail {
        request_id: id.into(),
        ..Trail::default()
    };
    finish(
        record(&DecisionLogConfig::default(), &f, &trail),
        Some(200),
        Some(chain),
    )
}

/// A keyring as read from OpenBao (KV v2).
fn ring_of(seed: u8) -> Keyring {
    let kv = serde_json::json!({"data": {"data": {
        "kid": "log-1",
        "d": Base64UrlUnpadded::encode_string(&[seed; 32]),
    }}});
    Keyring::from_kv(kv.to_string().as_bytes()).unwrap()
}

fn ring() -> Keyring {
    ring_of(7)
}

#[test]
fn records_chain_by_seq_and_the_digest_of_the_previous_records_exact_text() {
    let mut c = Chain::new(42);
    let lines: Vec<String> = (0..3).map(|i| line(&mut c, &format!("d{i}"))).collect();
    let recs: Vec<Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    for (i, r) in recs.iter().enumerate() {
        assert_eq!(r["log"]["chain"], c.name());
        assert_eq!(r["log"]["seq"], i as u64 + 1);
        assert_eq!(r["status"], 200, "the rest of the record is intact");
    }
    assert_eq!(recs[0]["log"]["prev"], GENESIS);
    assert_eq!(recs[1]["log"]["prev"], digest(lines[0].as_bytes()));
    assert_eq!(recs[2]["log"]["prev"], digest(lines[1].as_bytes()));
    assert_eq!(c.seq(), 3);
    // Still the text serde_json gives for the record: `log` in key order.
    assert_eq!(serde_json::to_string(&recs[1]).unwrap(), lines[1]);
    assert_ne!(Chain::new(43).name(), c.name(), "one chain per VM seed");
    assert_eq!(Chain::new(42).name(), c.name());
}

#[test]
fn the_digest_is_sha256_of_the_bytes_as_written() {
    assert_eq!(
        digest(b"abc"),
        "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
    // A record re-serialized another way (spaces) digests differently:
    // the chain vouches for the text, not for a parse of it.
    let mut c = Chain::new(1);
    let text = line(&mut c, "d");
    let spaced = text.replacen(':', ": ", 1);
    assert_ne!(digest(text.as_bytes()), digest(spaced.as_bytes()));
}

#[test]
fn a_signed_checkpoint_verifies_against_the_jwks_and_not_once_edited() {
    let ring = ring();
    let jwks: Value = serde_json::from_str(ring.jwks().unwrap()).unwrap();
    let key = ring.current.as_ref().unwrap();
    let mut c = Chain::new(5);
    assert_eq!(c.checkpoint(0, Ok(key), 60), None, "nothing to vouch for");
    let last = line(&mut c, "d1");
    let cp: Value = serde_json::from_str(&c.checkpoint(2_000, Ok(key), 60).unwrap()).unwrap();
    assert_eq!(cp["type"], CHECKPOINT_TYPE);
    let v = verify_checkpoint(&cp, Some(&jwks)).unwrap();
    assert_eq!((v.chain.as_str(), v.seq), (c.name(), 1));
    assert_eq!(v.digest, digest(last.as_bytes()));
    assert_eq!(v.kid, Ok("log-1".to_string()));
    for (field, forged) in [
        ("seq", Value::from(2)),
        ("digest", Value::from(GENESIS)),
        ("time", Value::from("2099-01-01T00:00:00.000000000Z")),
        ("chain", Value::from("0000000000000000")),
    ] {
        let mut bad = cp.clone();
        bad[field] = forged;
        let e = verify_checkpoint(&bad, Some(&jwks)).unwrap_err();
        assert!(e.contains("does not verify"), "{field}: {e}");
    }
    let other = ring_of(8);
    let other: Value = serde_json::from_str(other.jwks().unwrap()).unwrap();
    assert!(
        verify_checkpoint(&cp, Some(&other)).is_err(),
        "same kid, another key"
    );
    // A JWKS merged from archives: the replaced key under the same kid
    // first, then this one.
    let mut merged = other.clone();
    merged["keys"]
        .as_array_mut()
        .unwrap()
        .extend(jwks["keys"].as_array().unwrap().iter().cloned());
    assert_eq!(
        verify_checkpoint(&cp, Some(&merged)).unwrap().kid,
        Ok("log-1".to_string())
    );
    let e = verify_checkpoint(&cp, Some(&serde_json::json!({"keys": []}))).unwrap_err();
    assert!(e.contains("does not hold"), "{e}");
    assert!(verify_checkpoint(&cp, None).is_err(), "signed, no JWKS");
    assert_eq!(c.checkpoint(3_000, Ok(key), 60), None, "no record since");
}

#[test]
fn without_a_key_a_checkpoint_says_it_is_unsigned() {
    let mut c = Chain::new(9);
    line(&mut c, "d1");
    let cp: Value = serde_json::from_str(&c.checkpoint(0, Err("no key"), 60).unwrap()).unwrap();
    assert!(cp.get("sig").is_none());
    let v = verify_checkpoint(&cp, None).unwrap();
    assert_eq!(v.kid, Err("no key".to_string()));
}

#[test]
fn periodic_checkpoints_come_every_interval_and_only_after_new_records() {
    let mut c = Chain::new(3);
    c.schedule(0, 10);
    assert!(!c.due(20_000_000_000, 10), "no record yet");
    line(&mut c, "d1");
    assert!(!c.due(9_999_999_999, 10));
    assert!(c.due(10_000_000_000, 10));
    assert!(!c.due(u64::MAX, 0), "0: only at shutdown");
    assert!(c.checkpoint(10_000_000_000, Err("x"), 10).is_some());
    line(&mut c, "d2");
    assert!(!c.due(19_999_999_999, 10), "rescheduled from the last one");
    assert!(c.due(20_000_000_000, 10));
}

#[test]
fn the_chain_name_shows_neither_the_seed_nor_the_decision_id_generators_state() {
    // What `ids.rs` seeds its generator with: SplitMix64 of the seed.
    let splitmix = |z: u64| {
        let mut z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    for seed in [0, 1, 42, u64::MAX] {
        let name = Chain::new(seed).name().to_string();
        assert_eq!(name.len(), 16, "{name}");
        assert!(name.bytes().all(|b| b.is_ascii_hexdigit()), "{name}");
        assert_ne!(name, format!("{:016x}", splitmix(seed)));
        assert_ne!(name, format!("{seed:016x}"));
    }
    assert_ne!(Chain::new(1).name(), Chain::new(2).name());
}
