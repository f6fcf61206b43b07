//! The routes driven in process (tower's `oneshot`), with a clock of the
//! test's own and sessions made directly (the login itself, against the
//! real identity provider, is the end-to-end tests' business).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use super::*;
use crate::check::binding_of;
use crate::store::Limits;
use axum::http::Request;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use std::sync::atomic::{AtomicU64, Ordering};
use tower::ServiceExt as _;

const KEY: &str = "filter-key-0123456789";

static NOW: AtomicU64 = AtomicU64::new(1_000_000);

fn clock() -> u64 {
    NOW.load(Ordering::SeqCst)
}

fn app() -> Arc<App> {
    Arc::new(App {
        store: Mutex::new(Store::new(Limits::default())),
        sessions: Mutex::new(Sessions::default()),
        signer: Signer::new([9u8; 32], "approval-1".into()),
        // Nothing listens there: a login cannot start.
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
        clock,
        links: None,
    })
}

struct Got {
    status: StatusCode,
    headers: HeaderMap,
    body: String,
}

impl Got {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap()
    }
}

async fn send(app: &Arc<App>, req: Request<Body>) -> Got {
    let r = crate::router(app.clone()).oneshot(req).await.unwrap();
    let status = r.status();
    let headers = r.headers().clone();
    let body = axum::body::to_bytes(r.into_body(), 1 << 20).await.unwrap();
    Got {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

fn call(args: Value) -> String {
    json!({"agent": "a1", "arguments": args, "chain": ["u1"], "service": "tickets",
           "tool": "close"})
    .to_string()
}

async fn check_call(app: &Arc<App>, auth: Option<&str>, body: String) -> Got {
    let mut req = Request::post("/v1/check").header("content-type", "application/json");
    if let Some(a) = auth {
        req = req.header("authorization", a);
    }
    send(app, req.body(Body::from(body)).unwrap()).await
}

async fn check_ok(app: &Arc<App>, c: &str) -> Value {
    let body = json!({"binding": binding_of(c), "call": c, "approvers": ["alice"],
                      "ttl_s": 300, "decision_id": "d1"});
    let g = check_call(app, Some(&format!("Bearer {KEY}")), body.to_string()).await;
    assert_eq!(g.status, 200, "{}", g.body);
    g.json()
}

/// A session for `subject`: (cookie header, csrf token).
fn session(app: &Arc<App>, subject: &str) -> (String, String) {
    let mut s = app.sessions.lock().unwrap();
    let id = s.create(subject.into(), clock());
    let csrf = s.get(&id, clock()).unwrap().csrf;
    (format!("{SESSION_COOKIE}={id}"), csrf)
}

async fn form(app: &Arc<App>, path: &str, cookie: &str, csrf: &str) -> Got {
    let req = Request::post(path)
        .header("content-type", "application/x-www-form-urlencoded")
        .header("cookie", cookie)
        .body(Body::from(format!("csrf={csrf}&decision=x")))
        .unwrap();
    send(app, req).await
}

async fn page(app: &Arc<App>, id: &str, cookie: &str) -> Got {
    let req = Request::get(format!("/a/{id}"))
        .header("cookie", cookie)
        .body(Body::empty())
        .unwrap();
    send(app, req).await
}

#[tokio::test]
async fn check_wants_the_filter_key() {
    let app = app();
    let c = call(json!({}));
    let body = json!({"binding": binding_of(&c), "call": c, "approvers": ["alice"], "ttl_s": 5})
        .to_string();
    for auth in [
        None,
        Some("Bearer wrong-key-0123456789"),
        Some(KEY),
        Some("Basic ZmlsdGVyLWtleS0wMTIzNDU2Nzg5"),
    ] {
        let g = check_call(&app, auth, body.clone()).await;
        assert_eq!(g.status, 401, "{auth:?}");
        assert_eq!(g.json(), json!({"error": "unauthorized"}));
    }
    assert_eq!(app.store.lock().unwrap().len(), 0);
}

#[tokio::test]
async fn check_refuses_bad_bodies_with_400() {
    let app = app();
    let auth = format!("Bearer {KEY}");
    let c = call(json!({"id": 1}));
    let other = call(json!({"id": 2}));
    let mismatch = json!({"binding": binding_of(&other), "call": c, "approvers": ["alice"],
                          "ttl_s": 5});
    let g = check_call(&app, Some(&auth), mismatch.to_string()).await;
    assert_eq!(g.status, 400);
    assert!(g.json()["error"].as_str().unwrap().contains("binding"));
    let big = json!({"binding": "", "call": "x".repeat(MAX_BODY), "approvers": [], "ttl_s": 5});
    let g = check_call(&app, Some(&auth), big.to_string()).await;
    assert_eq!(g.status, 400, "{}", g.body);
    let g = check_call(&app, Some(&auth), "not json".into()).await;
    assert_eq!(g.status, 400);
}

#[tokio::test]
async fn approve_through_the_page_then_one_grant_then_used() {
    let app = app();
    let c = call(json!({"note": "<script>alert(1)</script>"}));
    let p = check_ok(&app, &c).await;
    assert_eq!(p["state"], "pending");
    let id = p["id"].as_str().unwrap().to_string();
    // 128 bits, base64url.
    assert_eq!(URL_SAFE_NO_PAD.decode(&id).unwrap().len(), 16);
    assert_eq!(p["url"], format!("http://svc.test/a/{id}"));
    assert_eq!(p["expires_at"], clock() + 300);

    let (cookie, csrf) = session(&app, "alice");
    let g = page(&app, &id, &cookie).await;
    assert_eq!(g.status, 200);
    assert_eq!(g.headers["x-frame-options"], "DENY");
    assert!(g.body.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
    assert!(!g.body.contains("<script>"));
    assert!(g.body.contains(&format!("value=\"{csrf}\"")));

    // A forged form changes nothing.
    let g = form(&app, &format!("/a/{id}/approve"), &cookie, "forged").await;
    assert_eq!(g.status, 403);
    assert_eq!(check_ok(&app, &c).await["state"], "pending");
    // Without a session: nothing either.
    let g = form(&app, &format!("/a/{id}/approve"), "", &csrf).await;
    assert_eq!(g.status, 401);

    let g = form(&app, &format!("/a/{id}/approve"), &cookie, &csrf).await;
    assert_eq!(g.status, 303, "{}", g.body);
    assert_eq!(g.headers["location"], format!("http://svc.test/a/{id}"));
    // Twice: already approved.
    let g = form(&app, &format!("/a/{id}/reject"), &cookie, &csrf).await;
    assert_eq!(g.status, 409);

    let a = check_ok(&app, &c).await;
    assert_eq!(a["state"], "approved");
    assert_eq!(a["id"], id.as_str());
    assert_eq!(a["approver"], "alice");
    let grant = a["grant"].as_str().unwrap();
    let claims: Value = serde_json::from_slice(
        &URL_SAFE_NO_PAD
            .decode(grant.split('.').nth(1).unwrap())
            .unwrap(),
    )
    .unwrap();
    assert_eq!(claims["binding"], binding_of(&c));
    assert_eq!(claims["jti"], id.as_str());

    let u = check_ok(&app, &c).await;
    assert_eq!(u["state"], "used");
    assert_eq!(u["id"], id.as_str());
    assert_eq!(u["pending"]["state"], "pending");
    assert_ne!(u["pending"]["id"], id.as_str());
    let g = page(&app, &id, &cookie).await;
    assert!(g.body.contains("approved by alice and used"), "{}", g.body);
}

#[tokio::test]
async fn a_non_approver_sees_403_and_cannot_decide() {
    let app = app();
    let c = call(json!({}));
    let id = check_ok(&app, &c).await["id"].as_str().unwrap().to_string();
    let (cookie, csrf) = session(&app, "mallory");
    let g = page(&app, &id, &cookie).await;
    assert_eq!(g.status, 403);
    assert!(g.body.contains("you are not an approver of this call"));
    assert!(!g.body.contains("tickets"), "the call leaked: {}", g.body);
    let g = form(&app, &format!("/a/{id}/approve"), &cookie, &csrf).await;
    assert_eq!(g.status, 403);
    assert_eq!(check_ok(&app, &c).await["state"], "pending");
}

#[tokio::test]
async fn without_a_session_the_page_sends_to_the_provider() {
    let app = app();
    let id = check_ok(&app, &call(json!({"id": 7}))).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    // The provider is unreachable here: a clear 502, no session made.
    let g = page(&app, &id, "").await;
    assert_eq!(g.status, 502);
    assert!(g.headers.get("set-cookie").is_none());
    // A callback nobody started.
    let req = Request::get("/callback?code=c&state=s")
        .body(Body::empty())
        .unwrap();
    assert_eq!(send(&app, req).await.status, 400);
}

#[tokio::test]
async fn flooding_the_page_with_made_up_ids_starts_no_login() {
    // Each login in progress keeps the page id it returns to; made-up ids
    // (up to a URI's length each) would fill memory and push approvers'
    // own logins out. Only an approval that exists starts one.
    let app = app();
    for id in ["whatever".to_string(), "x".repeat(60_000)] {
        let g = page(&app, &id, "").await;
        assert_eq!(g.status, 404, "{}", &id[..8]);
        assert!(g.headers.get("location").is_none());
        assert!(g.headers.get("set-cookie").is_none());
    }
}

#[tokio::test]
async fn a_login_callback_in_a_browser_that_did_not_start_it_is_refused() {
    // Login CSRF: the attacker's own callback (their code, their state)
    // opened in the victim's browser, which holds no login or another.
    let app = app();
    let (mine, other) = (crate::oidc::Login::new(), crate::oidc::Login::new());
    let sealed = app
        .sessions
        .lock()
        .unwrap()
        .seal_login(&mine, "/a/x", clock());
    for (cookie, state) in [
        (String::new(), mine.state.clone()),
        (format!("{LOGIN_COOKIE}={sealed}"), other.state.clone()),
        (format!("{LOGIN_COOKIE}=forged.mac"), mine.state.clone()),
    ] {
        let req = Request::get(format!("/callback?code=c&state={state}"))
            .header("cookie", cookie)
            .body(Body::empty())
            .unwrap();
        let g = send(&app, req).await;
        assert_eq!(g.status, 400);
        assert!(g.body.contains("not started here"), "{}", g.body);
        assert!(g.headers.get("set-cookie").is_none());
    }
    // Its own browser gets on to the provider (unreachable here: 403).
    let req = Request::get(format!("/callback?code=c&state={}", mine.state))
        .header("cookie", format!("{LOGIN_COOKIE}={sealed}"))
        .body(Body::empty())
        .unwrap();
    let g = send(&app, req).await;
    assert_eq!(g.status, 403, "{}", g.body);
    assert!(g.body.contains("Sign-in failed"), "{}", g.body);
}

#[tokio::test]
async fn health_and_keys() {
    let app = app();
    let g = send(&app, Request::get("/healthz").body(Body::empty()).unwrap()).await;
    assert_eq!((g.status.as_u16(), g.body.as_str()), (200, "ok"));
    let g = send(
        &app,
        Request::get("/jwks.json").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(g.json(), app.signer.jwks());
}
