//! Approvers sign in at the real identity provider (`idp/server.mjs`):
//! authorization code with PKCE for a first-party client, a password form,
//! an ID token whose `sub` is the approver. A browser-like client
//! (`agentplane_e2e::idp::browser`) does what a person's browser does; the
//! client's redirect_uri is a local listener that records what arrives.
//! Every way in without the right password, the right browser or PKCE
//! ends without a code.

use agentplane_e2e::idp::browser::{Browser, Page};
use agentplane_e2e::provider::{agent_metadata, FirstParty, IdProvider, Pkce};
use agentplane_e2e::Upstream;
use base64::Engine;
use jwt_compact::alg::Rsa;
use jwt_compact::prelude::*;
use serde_json::{json, Value};

const WRONG: &str = "wrong username or password";

struct World {
    idp: IdProvider,
    /// The first-party client's redirect_uri listens here.
    callback: Upstream,
    client: FirstParty,
}

/// The provider with approver alice and a first-party client whose
/// redirect_uri is a local listener.
fn world() -> World {
    let callback = Upstream::start();
    let client = FirstParty::new(
        "approval-service",
        &format!("http://127.0.0.1:{}/callback", callback.port),
    );
    let idp = IdProvider::start_with_approvers(
        &[("alice", "correct horse")],
        std::slice::from_ref(&client),
    );
    World {
        idp,
        callback,
        client,
    }
}

impl World {
    /// What reached the redirect_uri: the paths, queries included.
    fn arrived(&self) -> Vec<String> {
        self.callback.seen().into_iter().map(|s| s.path).collect()
    }

    /// A browser at the sign-in form of a fresh PKCE flow.
    fn at_the_form(&self, pkce: &Pkce) -> (Browser, Page) {
        let mut b = Browser::new();
        let page = b.get(
            &self
                .idp
                .authorize_url(&self.client, "st-1", "nonce-1", Some(pkce)),
        );
        assert_eq!(page.response.status, 200, "{page:?}");
        assert!(page.url.contains("/interaction/"), "{}", page.url);
        (b, page)
    }
}

/// The ID token's claims, its RS256 signature verified with the
/// provider's published JWKS.
fn verified_claims(idp: &IdProvider, id_token: &str) -> Value {
    let jwks: Value = serde_json::from_str(&idp.jwks()).unwrap();
    let token = UntrustedToken::new(id_token).unwrap();
    assert_eq!(token.algorithm(), "RS256");
    let kid = token.header().key_id.clone().unwrap();
    let jwk = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kid"] == kid.as_str())
        .unwrap_or_else(|| panic!("kid {kid} not in {jwks}"));
    let b64 = |k: &str| {
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(jwk[k].as_str().unwrap())
            .unwrap();
        rsa::BigUint::from_bytes_be(&bytes)
    };
    let key = rsa::RsaPublicKey::new(b64("n"), b64("e")).unwrap();
    let checked: Token<Value> = Rsa::rs256()
        .validator(&key)
        .validate(&token)
        .unwrap_or_else(|e| panic!("ID token signature: {e}"));
    Value::Object(checked.claims().custom.as_object().unwrap().clone())
}

/// Right password: the code arrives at the redirect_uri with the state,
/// and the client exchanges it (with its secret and the PKCE verifier)
/// for an RS256 ID token naming alice, for this client, with the nonce.
/// The code works once; the client gets no JWT to call the gateway with.
#[test]
fn an_approver_signs_in_and_the_code_buys_an_id_token_naming_them() {
    let w = world();
    let pkce = Pkce::new();
    let mut b = Browser::new();
    let url = w
        .idp
        .authorize_url(&w.client, "st-1", "nonce-1", Some(&pkce));
    let page = b.sign_in(&url, "alice", "correct horse");
    assert!(page.url.starts_with(&w.client.redirect_uri), "{}", page.url);
    assert_eq!(page.query("state").as_deref(), Some("st-1"));
    let code = page
        .query("code")
        .unwrap_or_else(|| panic!("no code: {}", page.url));
    assert!(
        w.arrived()
            .iter()
            .any(|p| p.contains(&format!("code={code}"))),
        "{:?}",
        w.arrived()
    );

    let r = w.idp.exchange_code(&w.client, &code, &pkce.verifier);
    assert_eq!(r.status, 200, "{}", r.body);
    let tokens = r.json();
    let claims = verified_claims(&w.idp, tokens["id_token"].as_str().unwrap());
    assert_eq!(claims["sub"], "alice", "{claims}");
    assert_eq!(claims["iss"], json!(w.idp.issuer()), "{claims}");
    assert_eq!(claims["aud"], json!(w.client.client_id), "{claims}");
    assert_eq!(claims["nonce"], "nonce-1", "{claims}");
    // Its access token is the provider's own (userinfo), not a JWT the
    // gateway would take.
    let access = tokens["access_token"].as_str().unwrap();
    assert_ne!(access.split('.').count(), 3, "{access}");

    let again = w.idp.exchange_code(&w.client, &code, &pkce.verifier);
    assert_eq!(again.status, 400, "{}", again.body);
    assert_eq!(again.json()["error"], "invalid_grant");
}

/// A code caught on its way (a log, a referrer) without the verifier the
/// browser's client holds buys nothing.
#[test]
fn an_intercepted_code_without_the_pkce_verifier_is_worthless() {
    let w = world();
    let pkce = Pkce::new();
    let mut b = Browser::new();
    let url = w
        .idp
        .authorize_url(&w.client, "st-1", "nonce-1", Some(&pkce));
    let code = b
        .sign_in(&url, "alice", "correct horse")
        .query("code")
        .unwrap();
    let r = w.idp.exchange_code(&w.client, &code, &Pkce::new().verifier);
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(r.json()["error"], "invalid_grant");
}

/// A wrong password gets the form again (401) saying only "wrong username
/// or password", with what was typed as the name escaped; no code reaches
/// the client. The right password afterwards still signs in.
#[test]
fn password_guessing_gets_the_form_again_and_no_code() {
    let w = world();
    let pkce = Pkce::new();
    let (mut b, form) = w.at_the_form(&pkce);
    let form = &form.forms()[0];
    for guess in ["", "Correct horse", "correct horse "] {
        let page = b.submit(form, &[("username", "alice"), ("password", guess)]);
        assert_eq!(page.response.status, 401, "{guess:?}: {page:?}");
        assert!(page.response.body.contains(WRONG), "{page:?}");
    }
    let markup = r#"<script>alert(1)</script>""#;
    let page = b.submit(form, &[("username", markup), ("password", "x")]);
    assert_eq!(page.response.status, 401);
    assert!(
        !page.response.body.contains("<script>"),
        "{}",
        page.response.body
    );
    assert!(
        page.response.body.contains("&#60;script&#62;"),
        "{}",
        page.response.body
    );
    assert!(w.arrived().is_empty(), "{:?}", w.arrived());

    let page = b.submit(
        form,
        &[("username", "alice"), ("password", "correct horse")],
    );
    assert!(page.query("code").is_some(), "{}", page.url);
}

/// Someone probing for approvers' names learns nothing: an unknown name
/// gets exactly the answer a known name with a wrong password gets.
#[test]
fn probing_for_approver_names_gets_the_same_answer_as_a_wrong_password() {
    let w = world();
    let answer = |name: &str| {
        let (mut b, page) = w.at_the_form(&Pkce::new());
        let uid = page.url.rsplit('/').next().unwrap().to_string();
        let p = b.submit(
            &page.forms()[0],
            &[("username", name), ("password", "nope")],
        );
        let body = p.response.body.replace(&uid, "UID").replace(name, "NAME");
        (p.response.status, body)
    };
    let known = answer("alice");
    let unknown = answer("mallory");
    assert_eq!(known.0, 401);
    assert!(known.1.contains(WRONG), "{}", known.1);
    assert_eq!(known, unknown);
    assert!(w.arrived().is_empty(), "{:?}", w.arrived());
}

/// Login CSRF: a page elsewhere posting the form with the attacker's own
/// credentials into the victim's flow (or a stolen form URL replayed from
/// another browser) carries no interaction cookie of that flow: refused,
/// no code. The browser that started the flow is unaffected.
#[test]
fn a_sign_in_form_posted_from_another_browser_is_refused() {
    let w = world();
    let pkce = Pkce::new();
    let (mut victim, page) = w.at_the_form(&pkce);
    let form = page.forms().remove(0);
    let mut other = Browser::new();
    let p = other.submit(
        &form,
        &[("username", "alice"), ("password", "correct horse")],
    );
    assert_eq!(p.response.status, 400, "{p:?}");
    assert!(p.query("code").is_none());
    assert!(w.arrived().is_empty(), "{:?}", w.arrived());
    // Nor does another browser see the form.
    let p = other.get(&page.url);
    assert_eq!(p.response.status, 400, "{p:?}");
    assert!(p.forms().is_empty());

    let p = victim.submit(
        &form,
        &[("username", "alice"), ("password", "correct horse")],
    );
    assert!(p.query("code").is_some(), "{}", p.url);
}

/// An authorization request without PKCE, or with the `plain` method, is
/// sent back to the client with an error: no form, no code.
#[test]
fn an_authorization_request_without_pkce_is_refused() {
    let w = world();
    let mut b = Browser::new();
    let page = b.get(&w.idp.authorize_url(&w.client, "st-2", "n", None));
    assert!(page.url.starts_with(&w.client.redirect_uri), "{}", page.url);
    assert_eq!(page.query("error").as_deref(), Some("invalid_request"));
    assert!(page.query("code").is_none());

    let pkce = Pkce::new();
    let plain = w
        .idp
        .authorize_url(&w.client, "st-3", "n", Some(&pkce))
        .replace("code_challenge_method=S256", "code_challenge_method=plain");
    let page = b.get(&plain);
    assert_eq!(
        page.query("error").as_deref(),
        Some("invalid_request"),
        "{}",
        page.url
    );
    assert!(
        w.arrived().iter().all(|p| !p.contains("code=")),
        "{:?}",
        w.arrived()
    );
}

/// A client that registered itself (RFC 7591) for the code flow is no
/// first-party client: approvers get no form for it, it gets
/// access_denied and no code.
#[test]
fn a_self_registered_client_cannot_phish_an_approver_sign_in() {
    let w = world();
    let phisher = Upstream::start();
    let redirect = format!("http://127.0.0.1:{}/cb", phisher.port);
    let r = w.idp.post_registration(
        &w.idp.initial_access_token,
        &json!({
            "client_name": "approval-service", "grant_types": ["authorization_code"],
            "response_types": ["code"], "redirect_uris": [redirect],
        }),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    let client = FirstParty {
        client_id: r.json()["client_id"].as_str().unwrap().into(),
        client_secret: r.json()["client_secret"].as_str().unwrap().into(),
        redirect_uri: redirect.clone(),
    };
    let mut b = Browser::new();
    let page = b.get(&w.idp.authorize_url(&client, "s", "n", Some(&Pkce::new())));
    assert!(page.url.starts_with(&redirect), "{}", page.url);
    assert_eq!(page.query("error").as_deref(), Some("access_denied"));
    assert!(page.query("code").is_none());
    assert!(b.visited.iter().any(|u| u.contains("/interaction/")));
    assert!(page.forms().is_empty());
}

/// The first-party client signs approvers in; it cannot mint itself an
/// agent's token. Agents' client credentials work as before next to it.
#[test]
fn a_first_party_client_gets_no_agent_token_and_agents_still_do() {
    let w = world();
    let basic = base64::engine::general_purpose::STANDARD
        .encode(format!("{}:{}", w.client.client_id, w.client.client_secret));
    let auth = format!("Basic {basic}");
    let r = agentplane_e2e::http(
        w.idp.port,
        "POST",
        "/token",
        &[
            ("authorization", &auth),
            ("content-type", "application/x-www-form-urlencoded"),
        ],
        "grant_type=client_credentials",
    );
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.json()["access_token"].is_null());

    let r = w.idp.post_registration(
        &w.idp.initial_access_token,
        &agent_metadata("triage", "support", "cs", "production", &["skills:invoke"]),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    let agent = agentplane_e2e::provider::Registered {
        client_id: r.json()["client_id"].as_str().unwrap().into(),
        client_secret: r.json()["client_secret"].as_str().unwrap().into(),
    };
    let claims = w.idp.token_claims(&agent, "skills:invoke");
    assert_eq!(claims["aud"], agentplane_e2e::AUDIENCE, "{claims}");
    assert_eq!(claims["permissions"], json!(["skills:invoke"]), "{claims}");
}
