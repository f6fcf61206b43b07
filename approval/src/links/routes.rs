//! The HTTP side of linked accounts: the link page (`GET /link/<service>`,
//! signed in at agentplane's provider first), its forms (`start`,
//! `unlink`, with the session's CSRF token), the service's callback, and
//! the filter's token endpoint (`POST /token`, RFC 8693). Log lines (one
//! JSON line on stdout per link made or removed) name the service and the
//! person, never a code or a token.

// Handlers' helpers return the refusal they render (a `Response`) as
// their error: boxing it would only move the allocation.
#![allow(clippy::result_large_err)]

use super::{Issued, Links, PENDING_S};
use crate::oidc::random_b64;
use crate::pages::{self, ct_eq, escape};
use crate::routes::{
    cookie, eprintln_safe, html, json_error, log, message, redirect, start_login, App,
};
use crate::sessions::Session;
use axum::body::Body;
use axum::extract::{Form, Path, Query, State};
use axum::http::header::{AUTHORIZATION, CACHE_CONTROL};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::Arc;

/// The cookie binding a link in progress to the browser that started it.
pub const LINK_COOKIE: &str = "agentplane_link";
/// RFC 8693's grant type.
const GRANT: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
/// The longest `/token` request read.
const MAX_FORM: usize = 16 * 1024;

/// The routes (404 for all of them when links are off).
pub fn router() -> Router<Arc<App>> {
    Router::new()
        .route("/link/{upstream}", get(page))
        .route("/link/{upstream}/start", post(start))
        .route("/link/{upstream}/unlink", post(unlink))
        .route("/link/{upstream}/callback", get(callback))
        .route("/token", post(token))
}

fn not_found() -> Response {
    message(StatusCode::NOT_FOUND, "Not found", "no such service")
}

/// The links and the named service, or 404.
fn service<'a>(
    app: &'a App,
    name: &str,
) -> Result<(&'a Links, &'a super::upstream::Upstream), Response> {
    let links = app.links.as_ref().ok_or_else(not_found)?;
    let up = links.upstream(name).ok_or_else(not_found)?;
    Ok((links, up))
}

fn redirect_uri(app: &App, upstream: &str) -> String {
    app.url(&format!("/link/{upstream}/callback"))
}

fn unavailable(e: &str) -> Response {
    eprintln_safe(&format!("links: {e}"));
    message(
        StatusCode::SERVICE_UNAVAILABLE,
        "Unavailable",
        "linked accounts cannot be read or written right now; try again later",
    )
}

/// The signed-in person, or a refusal.
fn signed_in(app: &App, headers: &HeaderMap) -> Result<Option<Session>, Response> {
    app.session(headers).map_err(IntoResponse::into_response)
}

async fn page(
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Response {
    let (links, up) = match service(&app, &name) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let session = match signed_in(&app, &headers) {
        Ok(Some(s)) => s,
        Ok(None) => return start_login(&app, format!("/link/{name}")).await,
        Err(r) => return r,
    };
    let linked = match links.linked(&up.name, &session.subject).await {
        Ok(l) => l,
        Err(e) => return unavailable(&e),
    };
    let who = escape(&session.subject);
    let svc = escape(&up.name);
    let csrf = escape(&session.csrf);
    let mut body = if linked {
        format!("<p>Your account at <b>{svc}</b> is linked to <b>{who}</b>: agents acting for you call it as you.</p>\n")
    } else {
        format!("<p><b>{who}</b>, your account at <b>{svc}</b> is not linked. Agents acting for you cannot call it until you link it.</p>\n")
    };
    body.push_str(&format!(
        "<form method=\"post\" action=\"/link/{svc}/start\"><input type=\"hidden\" name=\"csrf\" value=\"{csrf}\"><button type=\"submit\">{}</button></form>\n",
        if linked { "Link again" } else { "Link my account" }
    ));
    if linked {
        body.push_str(&format!(
            "<form method=\"post\" action=\"/link/{svc}/unlink\"><input type=\"hidden\" name=\"csrf\" value=\"{csrf}\"><button type=\"submit\">Unlink</button></form>\n"
        ));
    }
    html(
        StatusCode::OK,
        pages::page(&format!("{} account", up.name), &body),
    )
}

#[derive(Deserialize)]
struct CsrfForm {
    csrf: String,
}

/// The session of a form post whose CSRF token is the session's.
fn form_session(app: &App, headers: &HeaderMap, csrf: &str) -> Result<Session, Response> {
    match signed_in(app, headers)? {
        Some(s) if ct_eq(csrf, &s.csrf) => Ok(s),
        Some(_) => Err(message(
            StatusCode::FORBIDDEN,
            "Forbidden",
            "this form is stale or was not made by this service; reload the page",
        )),
        None => Err(message(
            StatusCode::UNAUTHORIZED,
            "Not signed in",
            "open the link page to sign in",
        )),
    }
}

async fn start(
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    Form(f): Form<CsrfForm>,
) -> Response {
    let (links, up) = match service(&app, &name) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let session = match form_session(&app, &headers, &f.csrf) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let browser = random_b64(32);
    let now = (app.clock)();
    match links
        .start(
            up,
            &session.subject,
            &browser,
            &redirect_uri(&app, &name),
            now,
        )
        .await
    {
        Ok(url) => {
            let c = format!(
                "{}; Path=/link/{name}",
                app.cookie(LINK_COOKIE, &browser, Some(PENDING_S))
            );
            redirect(StatusCode::SEE_OTHER, &url, &[c])
        }
        Err(e) => unavailable(&e),
    }
}

#[derive(Deserialize)]
struct CallbackParams {
    code: Option<String>,
    state: Option<String>,
    iss: Option<String>,
    error: Option<String>,
}

async fn callback(
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
    Query(p): Query<CallbackParams>,
    headers: HeaderMap,
) -> Response {
    let (links, up) = match service(&app, &name) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let again = "open the link page again";
    let session = match signed_in(&app, &headers) {
        Ok(Some(s)) => s,
        Ok(None) => return message(StatusCode::UNAUTHORIZED, "Not signed in", again),
        Err(r) => return r,
    };
    // RFC 9207: an answer naming another issuer came from another server
    // (a mix-up attack); one without `iss` is accepted from a server that
    // does not promise to send it.
    match up.iss_ok(p.iss.as_deref()).await {
        Ok(true) => {}
        Ok(false) => return message(StatusCode::BAD_REQUEST, "Wrong issuer", again),
        Err(e) => return unavailable(&e),
    }
    let (Some(code), Some(state), None) = (p.code, p.state, p.error) else {
        return message(StatusCode::FORBIDDEN, "Link refused", again);
    };
    let browser = cookie(&headers, LINK_COOKIE).unwrap_or_default();
    let now = (app.clock)();
    let done = links
        .finish(
            up,
            &state,
            &browser,
            &session.subject,
            &code,
            &redirect_uri(&app, &name),
            now,
        )
        .await;
    if let Err(e) = done {
        eprintln_safe(&format!("links: {e}"));
        return message(
            StatusCode::BAD_REQUEST,
            "Link failed",
            &format!("{e}; {again}"),
        );
    }
    log(json!({"event": "link.created", "at": now, "upstream": up.name, "user": session.subject}));
    let gone = format!(
        "{}; Path=/link/{name}",
        app.cookie(LINK_COOKIE, "", Some(0))
    );
    redirect(
        StatusCode::SEE_OTHER,
        &app.url(&format!("/link/{name}")),
        &[gone],
    )
}

async fn unlink(
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    Form(f): Form<CsrfForm>,
) -> Response {
    let (links, up) = match service(&app, &name) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let session = match form_session(&app, &headers, &f.csrf) {
        Ok(s) => s,
        Err(r) => return r,
    };
    if let Err(e) = links.unlink(&up.name, &session.subject).await {
        return unavailable(&e);
    }
    let now = (app.clock)();
    log(json!({"event": "link.removed", "at": now, "upstream": up.name, "user": session.subject}));
    redirect(
        StatusCode::SEE_OTHER,
        &app.url(&format!("/link/{name}")),
        &[],
    )
}

/// An RFC 6749 §5.2 error answer, never cached.
fn oauth_error(status: StatusCode, code: &str, extra: Value) -> Response {
    let mut body = json!({"error": code});
    if let (Some(o), Value::Object(more)) = (body.as_object_mut(), extra) {
        o.extend(more);
    }
    let mut r = (status, Json(body)).into_response();
    r.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// Whether the Basic credentials are the filter's.
fn filter_client(app: &App, links: &Links, headers: &HeaderMap) -> bool {
    let Some(b64) = headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.get(..6)
                .filter(|p| p.eq_ignore_ascii_case("basic "))
                .and(v.get(6..))
        })
    else {
        return false;
    };
    let Some(pair) = STANDARD
        .decode(b64.trim())
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
    else {
        return false;
    };
    let Some((id, secret)) = pair.split_once(':') else {
        return false;
    };
    // RFC 6749 §2.3.1: each form-encoded. A raw `&` is no such encoding,
    // and the form parser would end the value there: `key&anything`
    // would pass as `key`.
    let dec = |s: &str| {
        if s.contains('&') {
            return None;
        }
        url::form_urlencoded::parse(format!("x={s}").as_bytes())
            .next()
            .map(|(_, v)| v.into_owned())
    };
    let (Some(id), Some(secret)) = (dec(id), dec(secret)) else {
        return false;
    };
    // Both compared, whatever the first says.
    let id_ok = ct_eq(&id, &links.filter_client_id);
    let secret_ok = ct_eq(&secret, &app.filter_key);
    id_ok & secret_ok
}

async fn token(State(app): State<Arc<App>>, headers: HeaderMap, body: Body) -> Response {
    let Some(links) = app.links.as_ref() else {
        return json_error(StatusCode::NOT_FOUND, "not found");
    };
    if !filter_client(&app, links, &headers) {
        return oauth_error(StatusCode::UNAUTHORIZED, "invalid_client", json!({}));
    }
    let Ok(bytes) = axum::body::to_bytes(body, MAX_FORM).await else {
        return oauth_error(StatusCode::BAD_REQUEST, "invalid_request", json!({}));
    };
    let form: Vec<(String, String)> = url::form_urlencoded::parse(&bytes).into_owned().collect();
    // RFC 6749 §3.2: no parameter twice. Read as "absent", a second
    // `scope` would skip the scope check below.
    let mut seen = std::collections::HashSet::new();
    if !form.iter().all(|(n, _)| seen.insert(n.as_str())) {
        return oauth_error(StatusCode::BAD_REQUEST, "invalid_request", json!({}));
    }
    let one = |k: &str| {
        let mut it = form.iter().filter(|(n, _)| n == k).map(|(_, v)| v.as_str());
        match (it.next(), it.next()) {
            (Some(v), None) => Some(v),
            _ => None,
        }
    };
    if one("grant_type") != Some(GRANT) {
        return oauth_error(StatusCode::BAD_REQUEST, "unsupported_grant_type", json!({}));
    }
    let (Some(subject), Some(kind)) = (one("subject_token"), one("subject_token_type")) else {
        return oauth_error(StatusCode::BAD_REQUEST, "invalid_request", json!({}));
    };
    if !matches!(
        kind,
        "urn:ietf:params:oauth:token-type:access_token" | "urn:ietf:params:oauth:token-type:jwt"
    ) {
        return oauth_error(StatusCode::BAD_REQUEST, "invalid_request", json!({}));
    }
    let Some(up) = one("audience").and_then(|a| links.upstream(a)) else {
        return oauth_error(StatusCode::BAD_REQUEST, "invalid_target", json!({}));
    };
    // The scopes the service was linked with are the most there is: a
    // request for others is refused, not widened.
    if let Some(asked) = one("scope") {
        if !asked
            .split(' ')
            .filter(|s| !s.is_empty())
            .all(|s| up.scopes.iter().any(|c| c == s))
        {
            return oauth_error(StatusCode::BAD_REQUEST, "invalid_scope", json!({}));
        }
    }
    let now = (app.clock)();
    let verified = match &links.subjects {
        Some(s) => s.verify(subject, now).await,
        None => app.oidc.verify_access_token(subject, now).await,
    };
    // The person is the token's subject: the one an agent acts for (the
    // actor in `act` is the agent), or the person calling themselves.
    let user = match verified {
        Ok((sub, _actor)) => sub,
        Err(e) => {
            eprintln_safe(&format!("token: {e}"));
            return oauth_error(StatusCode::BAD_REQUEST, "invalid_grant", json!({}));
        }
    };
    match links.token(up, &user, now).await {
        Issued::Token(t, expires_in) => oauth_ok(&t, expires_in),
        Issued::LinkRequired => oauth_error(
            StatusCode::BAD_REQUEST,
            "link_required",
            json!({
                "error_description": "the person has not linked an account at this service",
                "link_uri": app.url(&format!("/link/{}", up.name)),
            }),
        ),
        Issued::Unavailable(e) => {
            eprintln_safe(&format!("token: {e}"));
            oauth_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "temporarily_unavailable",
                json!({}),
            )
        }
    }
}

fn oauth_ok(token: &str, expires_in: u64) -> Response {
    let mut r = Json(json!({
        "access_token": token,
        "issued_token_type": "urn:ietf:params:oauth:token-type:access_token",
        "token_type": "Bearer",
        "expires_in": expires_in,
    }))
    .into_response();
    r.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

#[cfg(test)]
#[path = "routes_tests.rs"]
mod tests;
