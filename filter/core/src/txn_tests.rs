//! Tests of transaction tokens: signing, verification and every way an
//! inbound token can be forged.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use super::*;
#[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
use wasm_bindgen_test::wasm_bindgen_test as test;

const NOW: i64 = 1_746_273_600;

pub(crate) fn kv(kid: &str, seed: [u8; 32]) -> Vec<u8> {
    serde_json::json!({"data": {"data": {
        "kid": kid,
        "d": Base64UrlUnpadded::encode_string(&seed),
    }}})
    .to_string()
    .into_bytes()
}

fn cfg() -> TxnConfig {
    TxnConfig {
        issuer: "https://gw.example".into(),
        audience: "corp.example".into(),
        ..TxnConfig::default()
    }
}

fn claims() -> TxnClaims {
    TxnClaims {
        iss: "https://gw.example".into(),
        aud: "corp.example".into(),
        txn: "d-1".into(),
        sub: "alice@clients".into(),
        scope: "skills:invoke data:read".into(),
        req_wl: "support@clients".into(),
        svc: "tickets".into(),
        tool: Some("create_ticket".into()),
        act: nest(&["support@clients".into()]),
        tctx: Tctx {
            agent: "support@clients".into(),
            decision: "d-1".into(),
            ..Tctx::default()
        },
    }
}

fn ring(kid: &str, seed: u8) -> Keyring {
    Keyring::from_kv(&kv(kid, [seed; 32])).unwrap()
}

fn token(r: &Keyring, c: TxnClaims, at: i64) -> String {
    mint(r.current.as_ref().unwrap(), c, at, 60).unwrap()
}

#[test]
fn a_minted_token_verifies_with_its_claims() {
    let r = ring("k1", 7);
    let t = verify(&token(&r, claims(), NOW), &r, &cfg(), NOW + 10).unwrap();
    assert_eq!(t.claims, claims());
    assert_eq!(t.actors, ["support@clients"]);
    assert_eq!((t.iat_s, t.exp_s), (NOW, NOW + 60));
    let jwks: serde_json::Value = serde_json::from_str(r.jwks().unwrap()).unwrap();
    assert_eq!(jwks["keys"][0]["kid"], "k1");
    assert_eq!(jwks["keys"][0]["crv"], "Ed25519");
    assert!(
        jwks["keys"][0].get("d").is_none(),
        "the JWKS is public keys only"
    );
}

#[test]
fn a_token_signed_by_another_key_with_the_same_kid_is_refused() {
    let forged = token(&ring("k1", 9), claims(), NOW);
    assert_eq!(
        verify(&forged, &ring("k1", 7), &cfg(), NOW),
        Err(Invalid("signature or claims do not verify"))
    );
}

#[test]
fn a_token_with_edited_claims_is_refused() {
    let r = ring("k1", 7);
    let t = token(&r, claims(), NOW);
    let parts: Vec<&str> = t.split('.').collect();
    let mut c: serde_json::Value =
        serde_json::from_slice(&Base64UrlUnpadded::decode_vec(parts[1]).unwrap()).unwrap();
    c["scope"] = "admin".into();
    let edited = format!(
        "{}.{}.{}",
        parts[0],
        Base64UrlUnpadded::encode_string(c.to_string().as_bytes()),
        parts[2]
    );
    assert!(verify(&edited, &r, &cfg(), NOW).is_err());
}

#[test]
fn a_replayed_token_after_expiry_is_refused() {
    let r = ring("k1", 7);
    let t = token(&r, claims(), NOW);
    assert!(verify(&t, &r, &cfg(), NOW + 60).is_ok(), "within leeway");
    assert_eq!(verify(&t, &r, &cfg(), NOW + 66), Err(Invalid("expired")));
    assert_eq!(
        verify(&t, &r, &cfg(), NOW - 60),
        Err(Invalid("issued in the future"))
    );
}

#[test]
fn a_token_for_another_trust_domain_or_issuer_is_refused() {
    let r = ring("k1", 7);
    let mut c = claims();
    c.aud = "other.example".into();
    assert_eq!(
        verify(&token(&r, c, NOW), &r, &cfg(), NOW),
        Err(Invalid("audience is not this trust domain"))
    );
    let mut c = claims();
    c.iss = "https://evil.example".into();
    assert_eq!(
        verify(&token(&r, c, NOW), &r, &cfg(), NOW),
        Err(Invalid("issuer does not match its key"))
    );
}

#[test]
fn unsigned_and_other_algorithm_tokens_are_refused() {
    let r = ring("k1", 7);
    let b64 = |v: serde_json::Value| Base64UrlUnpadded::encode_string(v.to_string().as_bytes());
    let body = b64(serde_json::json!({"sub": "x"}));
    for header in [
        serde_json::json!({"alg": "none", "typ": TYP, "kid": "k1"}),
        serde_json::json!({"alg": "HS256", "typ": TYP, "kid": "k1"}),
        serde_json::json!({"alg": "EdDSA", "typ": "JWT", "kid": "k1"}),
        serde_json::json!({"alg": "EdDSA", "typ": TYP}),
        serde_json::json!({"alg": "EdDSA", "typ": TYP, "kid": "nope"}),
    ] {
        for sig in ["", "AAAA", &"A".repeat(86)] {
            let t = format!("{}.{body}.{sig}", b64(header.clone()));
            assert!(verify(&t, &r, &cfg(), NOW).is_err(), "{header} {sig}");
        }
    }
}

#[test]
fn garbage_tokens_never_panic() {
    let r = ring("k1", 7);
    let good = token(&r, claims(), NOW);
    let mut inputs: Vec<String> = vec![
        String::new(),
        ".".into(),
        "..".into(),
        "a.b.c.d".into(),
        "x".repeat(MAX_TOKEN_BYTES + 1),
        "\u{0}.\u{ffff}.é".into(),
    ];
    // Every truncation and a byte flip at every position.
    for i in 0..good.len() {
        inputs.push(good[..i].to_string());
        let mut b = good.clone().into_bytes();
        b[i] = if b[i] == b'A' { b'B' } else { b'A' };
        inputs.push(String::from_utf8(b).unwrap());
    }
    for t in &inputs {
        assert!(verify(t, &r, &cfg(), NOW).is_err(), "{t}");
    }
}

fn x_of(r: &Keyring) -> String {
    let j: serde_json::Value = serde_json::from_str(r.jwks().unwrap()).unwrap();
    j["keys"][0]["x"].as_str().unwrap().to_string()
}

#[test]
fn a_trusted_gateway_token_verifies_and_a_rotated_key_still_does() {
    let other = ring("gw2", 3);
    let mut c = cfg();
    let x = x_of(&other);
    c.trusted.push(TrustedIssuer {
        issuer: "https://gw2.example".into(),
        kid: "gw2".into(),
        x: x.clone(),
    });
    assert!(c.check().is_ok());
    let mut cl = claims();
    cl.iss = "https://gw2.example".into();
    let mine = ring("k1", 7);
    assert!(verify(&token(&other, cl, NOW), &mine, &c, NOW).is_ok());
    // Rotation: the old key is published and accepted.
    let rotated = Keyring::from_kv(
        serde_json::json!({"data": {"data": {
            "kid": "k2",
            "d": Base64UrlUnpadded::encode_string(&[8u8; 32]),
            "previous_kid": "k1",
            "previous_x": x_of(&mine),
        }}})
        .to_string()
        .as_bytes(),
    )
    .unwrap();
    assert!(verify(&token(&mine, claims(), NOW), &rotated, &cfg(), NOW).is_ok());
    let jwks: serde_json::Value = serde_json::from_str(rotated.jwks().unwrap()).unwrap();
    assert_eq!(jwks["keys"].as_array().unwrap().len(), 2);
}

#[test]
fn unusable_key_material_is_refused_without_echoing_it() {
    for body in [
        "not json".to_string(),
        r#"{"data":{"data":{"kid":"k"}}}"#.into(),
        r#"{"data":{"data":{"kid":"k","d":"c2VjcmV0LXNlZWQ"}}}"#.into(),
        r#"{"data":{"data":{"d":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"}}}"#.into(),
    ] {
        let e = Keyring::from_kv(body.as_bytes()).unwrap_err();
        assert!(!e.contains("c2VjcmV0") && !e.contains("AAAA"), "{e}");
    }
    assert_eq!(format!("{:?}", ring("k1", 7).current.unwrap()), "Key(k1)");
}

#[test]
fn act_chains_nest_and_flatten() {
    let actors = vec!["a".to_string(), "b".into(), "c".into()];
    let n = nest(&actors).unwrap();
    assert_eq!(n["sub"], "a");
    assert_eq!(n["act"]["act"]["sub"], "c");
    assert_eq!(flatten(Some(&n)).unwrap(), actors);
    assert_eq!(nest(&[]), None);
    assert_eq!(flatten(None).unwrap(), Vec::<String>::new());
    assert_eq!(flatten(Some(&serde_json::json!({"sub": 1}))), None);
    let deep = nest(&vec!["x".to_string(); 17]);
    assert_eq!(flatten(deep.as_ref()), None);
}

#[test]
fn bad_configurations_are_refused() {
    let mut c = cfg();
    c.reuse_s = c.ttl_s;
    assert!(c.check().is_err());
    let mut c = cfg();
    c.issuer.clear();
    assert!(c.check().is_err());
    let mut c = cfg();
    c.trusted.push(TrustedIssuer {
        issuer: "i".into(),
        kid: "k".into(),
        x: "short".into(),
    });
    assert!(c.check().is_err());
}

#[test]
fn a_full_token_table_sheds_half_not_everything() {
    let mut s = Signer::default();
    let t: Rc<str> = "t".into();
    for i in 0..8u8 {
        s.keep(vec![i], Rc::clone(&t), 100, 8, 10);
    }
    s.keep(vec![99], Rc::clone(&t), 100, 8, 10);
    assert!(s.reuse(&[99], 50).is_some(), "the new token is kept");
    let kept = (0..8u8).filter(|i| s.reuse(&[*i], 50).is_some()).count();
    assert_eq!(kept, 4, "half the old ones stay");
    // Stale ones go first.
    let mut s = Signer::default();
    for i in 0..8u8 {
        s.keep(vec![i], Rc::clone(&t), if i < 4 { 5 } else { 100 }, 8, 0);
    }
    s.keep(vec![99], Rc::clone(&t), 100, 8, 10);
    let kept = (4..8u8).filter(|i| s.reuse(&[*i], 50).is_some()).count();
    assert_eq!(kept, 4, "only the stale ones went");
}

#[test]
fn a_leaked_token_presented_by_an_agent_it_does_not_name_is_refused() {
    let r = ring("k1", 7);
    let t = verify(&token(&r, claims(), NOW), &r, &cfg(), NOW).unwrap();
    // Its subject (directly, or through a delegated token) and its actors
    // may carry it on.
    assert_eq!(t.presented_by("alice@clients"), Ok(()));
    assert_eq!(t.presented_by("support@clients"), Ok(()));
    // Anyone else holding a copy may not.
    for intruder in ["mallory@clients", "", "alice@clients ", "ALICE@clients"] {
        assert_eq!(
            t.presented_by(intruder),
            Err(Invalid(
                "presented by an agent that is neither its subject nor one of its actors"
            )),
            "{intruder:?}"
        );
    }
    // Naming an agent elsewhere (its workload, its service) is not enough.
    let mut c = claims();
    c.act = None;
    c.req_wl = "mallory@clients".into();
    c.svc = "mallory@clients".into();
    let t = verify(&token(&r, c, NOW), &r, &cfg(), NOW).unwrap();
    assert!(t.presented_by("mallory@clients").is_err());
}
