//! The HTTP surface: the filter's `/v1/check` (bearer key), the
//! approver's page, login callback and approve/reject forms, `/jwks.json`
//! and `/healthz`. Handlers take what they need from [`App`], ask the
//! store or the provider, and turn the outcome into a response here, in
//! one place; the decision log lines (one JSON line on stdout per
//! approval, rejection and consumption) are written here too, with no
//! key, cookie, code or token in them.

use crate::check::{self, MAX_BODY};
use crate::grant::Signer;
use crate::oidc::random_b64;
use crate::oidc::{Login, Oidc};
use crate::pages::{self, ct_eq};
use crate::sessions::{Session, Sessions, LOGIN_S};
use crate::store::{Answer, DecideError, Shown, Store};
use axum::body::Body;
use axum::extract::{Form, Path, Query, State};
use axum::http::header::{
    AUTHORIZATION, CACHE_CONTROL, CONTENT_TYPE, COOKIE, LOCATION, SET_COOKIE,
};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use std::io::Write as _;
use std::sync::{Arc, Mutex, MutexGuard};

/// The session cookie's name.
pub const SESSION_COOKIE: &str = "agentplane_approval_session";
/// The cookie holding a login in progress (sealed), in the browser that
/// started it.
pub const LOGIN_COOKIE: &str = "agentplane_approval_login";

/// Everything a handler may use.
pub struct App {
    pub store: Mutex<Store>,
    pub sessions: Mutex<Sessions>,
    pub signer: Signer,
    pub oidc: Oidc,
    pub filter_key: String,
    /// Without a trailing slash.
    pub public_url: String,
    /// Whether cookies carry `Secure` (an https public URL).
    pub secure: bool,
    /// Unix seconds now (the system clock; tests bring their own).
    pub clock: fn() -> u64,
    /// Linked accounts at third-party services (`--links-file`), if on.
    pub links: Option<crate::links::Links>,
}

/// The system clock in unix seconds.
pub fn system_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The approval routes (the service's router, `crate::router`, adds the
/// link broker's and the state).
pub fn routes() -> Router<Arc<App>> {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/jwks.json", get(jwks))
        .route("/v1/check", post(check))
        .route("/a/{id}", get(record_page))
        .route("/a/{id}/approve", post(approve))
        .route("/a/{id}/reject", post(reject))
        .route("/callback", get(callback))
}

/// One decision log line on stdout. A closed stdout loses the line but
/// never stops the service.
pub(crate) fn log(line: Value) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// A lock poisoned by a panic elsewhere: answer 500 rather than trust
/// what it guards.
pub struct Poisoned;

impl IntoResponse for Poisoned {
    fn into_response(self) -> Response {
        json_error(StatusCode::INTERNAL_SERVER_ERROR, "internal error")
    }
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> Result<MutexGuard<'_, T>, Poisoned> {
    m.lock().map_err(|_| Poisoned)
}

pub(crate) fn json_error(status: StatusCode, msg: &str) -> Response {
    (status, Json(json!({"error": msg}))).into_response()
}

/// An HTML page: not cached, not framed (a framed page could trick a
/// click on Approve), no scripts at all.
pub(crate) fn html(status: StatusCode, body: String) -> Response {
    let mut r = (status, body).into_response();
    let h = r.headers_mut();
    h.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        "content-security-policy",
        HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'",
        ),
    );
    h.insert("x-frame-options", HeaderValue::from_static("DENY"));
    h.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    r
}

pub(crate) fn message(status: StatusCode, title: &str, text: &str) -> Response {
    html(status, pages::message(title, text))
}

/// A redirect setting these cookies.
pub(crate) fn redirect(status: StatusCode, location: &str, cookies: &[String]) -> Response {
    let mut r = status.into_response();
    let h = r.headers_mut();
    if let Ok(v) = HeaderValue::from_str(location) {
        h.insert(LOCATION, v);
    }
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    for c in cookies {
        if let Ok(v) = HeaderValue::from_str(c) {
            h.append(SET_COOKIE, v);
        }
    }
    r
}

impl App {
    pub(crate) fn cookie(&self, name: &str, value: &str, max_age: Option<u64>) -> String {
        let mut c = format!("{name}={value}; HttpOnly; SameSite=Lax; Path=/");
        if let Some(s) = max_age {
            c.push_str(&format!("; Max-Age={s}"));
        }
        if self.secure {
            c.push_str("; Secure");
        }
        c
    }

    fn page_url(&self, id: &str) -> String {
        format!("{}/a/{id}", self.public_url)
    }

    /// A URL of this service from its path.
    pub(crate) fn url(&self, path: &str) -> String {
        format!("{}{path}", self.public_url)
    }

    /// The session the request's cookie names, if live.
    pub(crate) fn session(&self, headers: &HeaderMap) -> Result<Option<Session>, Poisoned> {
        let Some(id) = cookie(headers, SESSION_COOKIE) else {
            return Ok(None);
        };
        Ok(lock(&self.sessions)?.get(&id, (self.clock)()))
    }
}

/// A cookie's value from the request's `Cookie` headers; none when the
/// name comes twice. This service sets each of its cookies once, at one
/// path: a second of the name was set by someone else (a sibling
/// subdomain tossing its own session in at a longer path, which the
/// browser sends first), and reading it would sign the person in as that
/// someone (whose page they might link their account on).
pub(crate) fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    let mut found = headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .filter(|(k, _)| *k == name)
        .map(|(_, v)| v.to_string());
    match (found.next(), found.next()) {
        (Some(v), None) => Some(v),
        _ => None,
    }
}

async fn jwks(State(app): State<Arc<App>>) -> Response {
    let mut r = Json(app.signer.jwks()).into_response();
    r.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("max-age=60"));
    r
}

async fn check(State(app): State<Arc<App>>, headers: HeaderMap, body: Body) -> Response {
    let presented = headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if !presented.is_some_and(|k| ct_eq(k, &app.filter_key)) {
        return json_error(StatusCode::UNAUTHORIZED, "unauthorized");
    }
    let Ok(bytes) = axum::body::to_bytes(body, MAX_BODY).await else {
        return json_error(
            StatusCode::BAD_REQUEST,
            &format!("body over {MAX_BODY} bytes or unreadable"),
        );
    };
    let input = match check::parse(&bytes) {
        Ok(i) => i,
        Err(e) => return json_error(StatusCode::BAD_REQUEST, &e),
    };
    let now = (app.clock)();
    let answer = {
        let mut store = match lock(&app.store) {
            Ok(s) => s,
            Err(p) => return p.into_response(),
        };
        store.check(&input, now, random_b64(16))
    };
    let Ok(answer) = answer else {
        return json_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "too many approvals pending; try again later",
        );
    };
    if let Answer::Approved(a) = &answer {
        log(json!({
            "event": "approval.consumed", "at": now, "id": a.id, "binding": a.binding,
            "approver": a.approver, "exp": a.exp, "decision_id": input.decision_id,
            // The filter's decision that opened this approval.
            "opened_by": a.decision_id,
        }));
    }
    Json(check::answer_json(
        &answer,
        &app.public_url,
        &app.signer,
        now,
    ))
    .into_response()
}

async fn record_page(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let session = match app.session(&headers) {
        Ok(s) => s,
        Err(p) => return p.into_response(),
    };
    let not_found = || message(StatusCode::NOT_FOUND, "Not found", "no such approval");
    let Some(session) = session else {
        // Only an approval that exists starts a login: a made-up id (a URI
        // long) would return to a 404, in a cookie as long.
        let known = match lock(&app.store) {
            Ok(s) => s.get(&id).is_some(),
            Err(p) => return p.into_response(),
        };
        if !known {
            return not_found();
        }
        return start_login(&app, format!("/a/{id}")).await;
    };
    let now = (app.clock)();
    let store = match lock(&app.store) {
        Ok(s) => s,
        Err(p) => return p.into_response(),
    };
    let Some(r) = store.get(&id) else {
        return not_found();
    };
    if !r.approvers.contains(&session.subject) {
        return message(
            StatusCode::FORBIDDEN,
            "Forbidden",
            "you are not an approver of this call",
        );
    }
    let body = pages::record_page(r, now, &session.subject, &session.csrf, &app.public_url);
    html(StatusCode::OK, body)
}

/// Sends the browser to the provider, remembering the path it was going
/// to (on this service).
pub(crate) async fn start_login(app: &App, return_to: String) -> Response {
    let login = Login::new();
    let url = match app.oidc.authorize_url(&login).await {
        Ok(u) => u,
        Err(e) => {
            eprintln_safe(&format!("login: {e}"));
            return message(
                StatusCode::BAD_GATEWAY,
                "Sign-in unavailable",
                "the identity provider cannot be reached; try again later",
            );
        }
    };
    let now = (app.clock)();
    let sealed = match lock(&app.sessions) {
        Ok(s) => s.seal_login(&login, &return_to, now),
        Err(p) => return p.into_response(),
    };
    let c = app.cookie(LOGIN_COOKIE, &sealed, Some(LOGIN_S));
    redirect(StatusCode::FOUND, &url, &[c])
}

/// A line on stderr (operational errors, never secrets).
pub(crate) fn eprintln_safe(line: &str) {
    let _ = writeln!(std::io::stderr().lock(), "agentplane-approval: {line}");
}

#[derive(Deserialize)]
struct CallbackParams {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
}

async fn callback(
    State(app): State<Arc<App>>,
    Query(p): Query<CallbackParams>,
    headers: HeaderMap,
) -> Response {
    let again = "open the approval link again";
    let now = (app.clock)();
    // The browser that started this login (its cookie holds it), not one
    // handed its callback.
    let pending = match lock(&app.sessions) {
        Ok(s) => match (cookie(&headers, LOGIN_COOKIE), p.state.as_deref()) {
            (Some(c), Some(st)) => s.open_login(&c, st, now),
            _ => None,
        },
        Err(p) => return p.into_response(),
    };
    let Some(pending) = pending else {
        return message(
            StatusCode::BAD_REQUEST,
            "Sign-in expired or not started here",
            again,
        );
    };
    let Some(code) = p.code.filter(|_| p.error.is_none()) else {
        return message(StatusCode::FORBIDDEN, "Sign-in refused", again);
    };
    let subject = match app.oidc.sign_in(&code, &pending.login, now).await {
        Ok(s) => s,
        Err(e) => {
            eprintln_safe(&format!("sign-in failed: {e}"));
            return message(StatusCode::FORBIDDEN, "Sign-in failed", again);
        }
    };
    let sid = match lock(&app.sessions) {
        Ok(mut s) => s.create(subject, (app.clock)()),
        Err(p) => return p.into_response(),
    };
    let cookies = [
        app.cookie(SESSION_COOKIE, &sid, None),
        app.cookie(LOGIN_COOKIE, "", Some(0)),
    ];
    redirect(
        StatusCode::SEE_OTHER,
        &app.url(&pending.return_to),
        &cookies,
    )
}

#[derive(Deserialize)]
struct DecisionForm {
    csrf: String,
}

async fn approve(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    Form(f): Form<DecisionForm>,
) -> Response {
    decide(&app, &id, &headers, &f.csrf, true)
}

async fn reject(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    Form(f): Form<DecisionForm>,
) -> Response {
    decide(&app, &id, &headers, &f.csrf, false)
}

fn decide(app: &App, id: &str, headers: &HeaderMap, csrf: &str, approve: bool) -> Response {
    let session = match app.session(headers) {
        Ok(Some(s)) => s,
        Ok(None) => {
            return message(
                StatusCode::UNAUTHORIZED,
                "Not signed in",
                "open the approval link to sign in",
            )
        }
        Err(p) => return p.into_response(),
    };
    if !ct_eq(csrf, &session.csrf) {
        return message(
            StatusCode::FORBIDDEN,
            "Forbidden",
            "this form is stale or was not made by this service; reload the page",
        );
    }
    let now = (app.clock)();
    let decided = match lock(&app.store) {
        Ok(mut s) => s.decide(id, &session.subject, approve, now),
        Err(p) => return p.into_response(),
    };
    match decided {
        Ok(d) => {
            log(json!({
                "event": if d.approved { "approval.approved" } else { "approval.rejected" },
                "at": now, "id": d.id, "binding": d.binding, "approver": d.approver,
                "expires_at": d.expires_at, "decision_id": d.decision_id,
            }));
            redirect(StatusCode::SEE_OTHER, &app.page_url(id), &[])
        }
        Err(DecideError::NotFound) => {
            message(StatusCode::NOT_FOUND, "Not found", "no such approval")
        }
        Err(DecideError::NotApprover) => message(
            StatusCode::FORBIDDEN,
            "Forbidden",
            "you are not an approver of this call",
        ),
        Err(DecideError::Closed(shown)) => {
            let what = match shown {
                Shown::Pending => "pending",
                Shown::Approved(_) => "already approved",
                Shown::Rejected(_) => "already rejected",
                Shown::Used(_) => "already approved and used",
                Shown::Expired => "expired",
            };
            message(
                StatusCode::CONFLICT,
                "No longer pending",
                &format!("this call is {what}"),
            )
        }
    }
}

#[cfg(test)]
#[path = "routes_tests.rs"]
mod tests;
