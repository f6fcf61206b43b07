//! The broker's routes driven in process (tower's `oneshot`), against
//! attacks on them: client credentials that only look like the filter's,
//! and parameters given twice. Nothing listens at the provider or at
//! OpenBao here, so a request that gets past the checks under test fails
//! later, with another answer than the refusal they must give.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use super::*;
use crate::grant::Signer;
use crate::oidc::Oidc;
use crate::sessions::Sessions;
use crate::store::{Limits, Store};
use axum::http::Request;
use std::sync::Mutex;
use tower::ServiceExt as _;

const KEY: &str = "filter-key-0123456789";

fn app() -> Arc<App> {
    Arc::new(App {
        store: Mutex::new(Store::new(Limits::default())),
        sessions: Mutex::new(Sessions::default()),
        signer: Signer::new([9u8; 32], "approval-1".into()),
        oidc: Oidc::new(
            "http://127.0.0.1:9".into(),
            "approval".into(),
            "secret".into(),
            "http://svc.test/callback".into(),
        )
        .unwrap(),
        filter_key: KEY.into(),
        public_url: "http://svc.test".into(),
        secure: false,
        clock: || 1_000,
        links: Some(super::super::tests::links()),
    })
}

/// POSTs `form` to `/token` with `authorization`: status and `error`.
async fn token(authorization: &str, form: &str) -> (StatusCode, String) {
    let req = Request::post("/token")
        .header("authorization", authorization)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(Body::from(form.to_string()))
        .unwrap();
    let r = crate::router(app()).oneshot(req).await.unwrap();
    let status = r.status();
    let body = axum::body::to_bytes(r.into_body(), 1 << 16).await.unwrap();
    let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    (status, v["error"].as_str().unwrap_or("").to_string())
}

fn basic(pair: &str) -> String {
    format!("Basic {}", STANDARD.encode(pair))
}

#[tokio::test]
async fn a_client_secret_with_junk_after_an_ampersand_is_not_the_filters() {
    // The form parser ends a value at `&`: read that way, `KEY&junk`
    // was `KEY`.
    let (s, e) = token(&basic(&format!("agentplane-filter:{KEY}&junk")), "").await;
    assert_eq!(
        (s, e.as_str()),
        (StatusCode::UNAUTHORIZED, "invalid_client")
    );
    let (s, e) = token(&basic(&format!("agentplane-filter&x:{KEY}")), "").await;
    assert_eq!(
        (s, e.as_str()),
        (StatusCode::UNAUTHORIZED, "invalid_client")
    );
    for bad in [
        basic("agentplane-filter:wrong"),
        basic(&format!("agentplane-filter:{KEY}x")),
        basic(&format!("other:{KEY}")),
        basic(&format!("agentplane-filter{KEY}")),
        format!("Bearer {KEY}"),
        "Basic !!!".into(),
    ] {
        let (s, e) = token(&bad, "").await;
        assert_eq!(
            (s, e.as_str()),
            (StatusCode::UNAUTHORIZED, "invalid_client"),
            "{bad}"
        );
    }
    // The filter's own encoding (each part form-encoded), any case of the
    // scheme: past client authentication (to the missing grant type).
    let encoded = KEY.replace('-', "%2D");
    for good in [
        basic(&format!("agentplane-filter:{KEY}")),
        basic(&format!("agentplane%2Dfilter:{encoded}")).replace("Basic", "basic"),
    ] {
        let (s, e) = token(&good, "").await;
        assert_eq!(
            (s, e.as_str()),
            (StatusCode::BAD_REQUEST, "unsupported_grant_type"),
            "{good}"
        );
    }
}

#[tokio::test]
async fn a_second_scope_parameter_does_not_skip_the_scope_check() {
    let auth = basic(&format!("agentplane-filter:{KEY}"));
    let base = "grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Atoken-exchange\
                &subject_token=x.y.z\
                &subject_token_type=urn%3Aietf%3Aparams%3Aoauth%3Atoken-type%3Aaccess_token\
                &audience=saas";
    // Read once, a scope the link does not hold is refused.
    let (s, e) = token(&auth, &format!("{base}&scope=admin")).await;
    assert_eq!((s, e.as_str()), (StatusCode::BAD_REQUEST, "invalid_scope"));
    // Twice, it was read as no scope at all, and the request went on.
    let (s, e) = token(&auth, &format!("{base}&scope=openid&scope=admin")).await;
    assert_eq!(
        (s, e.as_str()),
        (StatusCode::BAD_REQUEST, "invalid_request")
    );
    let (s, e) = token(&auth, &format!("{base}&audience=saas")).await;
    assert_eq!(
        (s, e.as_str()),
        (StatusCode::BAD_REQUEST, "invalid_request")
    );
    // Once each: on to the subject token (unverifiable here).
    let (s, e) = token(&auth, &format!("{base}&scope=openid")).await;
    assert_eq!((s, e.as_str()), (StatusCode::BAD_REQUEST, "invalid_grant"));
}

#[tokio::test]
async fn a_session_cookie_tossed_in_beside_the_persons_signs_no_one_in() {
    // A sibling subdomain sets mallory's session at /link/saas (sent
    // before alice's, at /): read first, alice's "Link my account" would
    // link her account to mallory.
    let app = app();
    let (mallory, csrf) = {
        let mut s = app.sessions.lock().unwrap();
        let id = s.create("mallory".into(), 1_000);
        let csrf = s.get(&id, 1_000).unwrap().csrf;
        (id, csrf)
    };
    let alice = app.sessions.lock().unwrap().create("alice".into(), 1_000);
    let cookie = format!(
        "{SESSION_COOKIE}={mallory}; {SESSION_COOKIE}={alice}",
        SESSION_COOKIE = crate::routes::SESSION_COOKIE
    );
    let req = Request::post("/link/saas/start")
        .header("cookie", cookie)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(Body::from(format!("csrf={csrf}")))
        .unwrap();
    let r = crate::router(app).oneshot(req).await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert!(r.headers().get("location").is_none());
}
