#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use super::*;
use serde_json::json;

fn ask(principal: &str, chain: &[&str], audience: &str, scopes: &[&str]) -> Ask {
    Ask {
        subject: Secret::new("t"),
        principal: principal.into(),
        claims: "c".into(),
        chain: chain.iter().map(|s| s.to_string()).collect(),
        audience: audience.into(),
        scopes: scopes.iter().map(|s| s.to_string()).collect(),
    }
}

#[test]
fn a_token_is_keyed_on_everything_it_depends_on() {
    let base = ask("iss|a", &["u"], "aud", &["r"]);
    for other in [
        ask("iss|b", &["u"], "aud", &["r"]),
        ask("iss|a", &[], "aud", &["r"]),
        ask("iss|a", &["v"], "aud", &["r"]),
        ask("iss|a", &["u"], "aud2", &["r"]),
        ask("iss|a", &["u"], "aud", &["r", "w"]),
        ask("iss|a", &["u"], "aud", &[]),
        // Boundaries cannot be shifted between parts.
        ask("iss|au", &[], "d", &["r"]),
        // The same subject's token with other claims (scopes, client).
        Ask {
            claims: "d".into(),
            ..ask("iss|a", &["u"], "aud", &["r"])
        },
    ] {
        assert_ne!(other.key(), base.key());
    }
    // The subject token itself is not part of the key: a refreshed token
    // of the same caller with the same claims reuses the exchange.
    let mut same = ask("iss|a", &["u"], "aud", &["r"]);
    same.subject = Secret::new("another");
    assert_eq!(same.key(), base.key());
}

#[test]
fn the_claims_digest_ignores_only_what_one_token_instance_adds() {
    let base =
        json!({"sub": "a", "scope": "r w", "client_id": "app", "exp": 1, "iat": 0, "jti": "x"});
    let digest = |v: &Value| claims_digest(v.as_object().unwrap());
    let mut refreshed = base.clone();
    refreshed["exp"] = json!(2);
    refreshed["iat"] = json!(1);
    refreshed["nbf"] = json!(1);
    refreshed["jti"] = json!("y");
    assert_eq!(digest(&refreshed), digest(&base));
    for (k, v) in [
        ("scope", json!("r")),
        ("client_id", json!("other")),
        ("aud", json!("x")),
    ] {
        let mut other = base.clone();
        other[k] = v;
        assert_ne!(digest(&other), digest(&base), "{k}");
    }
}

#[test]
fn only_a_usable_bearer_token_is_taken_from_the_service() {
    let ok = json!({"access_token": "abc", "token_type": "bearer", "expires_in": 60});
    let (t, ttl) = read(Some(200), Some(ok.to_string().as_bytes())).unwrap();
    assert_eq!((t.expose(), ttl), ("abc", 60));
    let no_ttl = json!({"access_token": "abc", "token_type": "Bearer"});
    assert_eq!(
        read(Some(200), Some(no_ttl.to_string().as_bytes()))
            .unwrap()
            .1,
        0
    );
    for bad in [
        json!({"access_token": "", "token_type": "Bearer"}),
        json!({"access_token": "a b", "token_type": "Bearer"}),
        json!({"access_token": "a\r\nx-injected: 1", "token_type": "Bearer"}),
        json!({"access_token": "abc", "token_type": "N_A"}),
        json!({"token_type": "Bearer"}),
    ] {
        assert!(
            read(Some(200), Some(bad.to_string().as_bytes())).is_err(),
            "{bad}"
        );
    }
    assert!(read(Some(200), Some(&vec![b' '; MAX_ANSWER_BYTES + 1])).is_err());
    let e = read(
        Some(400),
        Some(br#"{"error":"invalid_scope","error_description":"SECRET"}"#),
    )
    .unwrap_err();
    assert!(e.contains("invalid_scope") && !e.contains("SECRET"), "{e}");
    let e = read(Some(400), Some(br#"{"error":"a token: SECRET"}"#)).unwrap_err();
    assert!(!e.contains("SECRET"), "{e}");
    assert!(read(None, None).is_err());
}

#[test]
fn the_policy_may_choose_audience_and_scopes_and_nothing_else() {
    let v = crate::value::to_rego(&json!({"audience": "https://x", "scopes": ["b", "a", "a"]}));
    let c = parse(&v).unwrap().unwrap();
    assert_eq!(c.audience.as_deref(), Some("https://x"));
    assert_eq!(c.scopes.unwrap(), ["a", "b"]);
    assert_eq!(parse(&regorus::Value::Undefined).unwrap(), None);
    for bad in [
        json!("aud"),
        json!({"audience": ""}),
        json!({"audience": 7}),
        json!({"scopes": "a"}),
        json!({"scopes": ["a b"]}),
        json!({"scopes": ["a\"b"]}),
    ] {
        assert!(parse(&crate::value::to_rego(&bad)).is_err(), "{bad}");
    }
}

#[test]
fn form_values_are_percent_encoded() {
    assert_eq!(form("a b&c=d/é"), "a%20b%26c%3Dd%2F%C3%A9");
    assert_eq!(form("Az09-._~"), "Az09-._~");
}
