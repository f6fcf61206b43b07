//! Client ID Metadata Documents at the real provider (`idp/cimd.mjs`): a
//! client_id that is a URL to the client's metadata. A client whose
//! document a local server serves (`CIMD_ALLOW_PRIVATE=1`, as tests need
//! loopback) signs a person in with the code flow and PKCE, the answer
//! carrying RFC 9207's `iss`. Every document the fence refuses (a private
//! address without the flag, too big, too slow, not naming itself, behind
//! a redirect, holding a secret) leaves the client unknown: no form, no
//! code.

use agentplane_e2e::idp::browser::Browser;
use agentplane_e2e::provider::{form_encode, FirstParty, IdProvider, Pkce};
use agentplane_e2e::Upstream;
use serde_json::json;
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One canned answer: status line, extra headers, body, delay before it.
#[derive(Clone)]
struct Reply {
    status: &'static str,
    headers: Vec<String>,
    body: String,
    delay: Duration,
}

fn json_reply(body: String) -> Reply {
    Reply {
        status: "200 OK",
        headers: vec![
            "content-type: application/json".into(),
            "cache-control: max-age=60".into(),
        ],
        body,
        delay: Duration::ZERO,
    }
}

/// A plain HTTP server on loopback answering per path (routes added
/// after it listens, since documents name their own URL), counting the
/// connections it accepts.
struct Docs {
    port: u16,
    routes: Arc<Mutex<HashMap<String, Reply>>>,
    connections: Arc<AtomicUsize>,
}

impl Docs {
    fn start() -> Docs {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let connections = Arc::new(AtomicUsize::new(0));
        let routes: Arc<Mutex<HashMap<String, Reply>>> = Arc::default();
        let (count, table) = (connections.clone(), routes.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                count.fetch_add(1, Ordering::SeqCst);
                let table = table.clone();
                std::thread::spawn(move || {
                    let mut buf = [0u8; 4096];
                    let n = stream.read(&mut buf).unwrap_or(0);
                    let head = String::from_utf8_lossy(&buf[..n]).to_string();
                    let path = head.split(' ').nth(1).unwrap_or("").to_string();
                    let reply = table.lock().unwrap().get(&path).cloned();
                    let reply = reply.unwrap_or(Reply {
                        status: "404 Not Found",
                        headers: vec![],
                        body: String::new(),
                        delay: Duration::ZERO,
                    });
                    std::thread::sleep(reply.delay);
                    let mut out = format!("HTTP/1.1 {}\r\nconnection: close\r\n", reply.status);
                    for h in &reply.headers {
                        out.push_str(&format!("{h}\r\n"));
                    }
                    out.push_str(&format!(
                        "content-length: {}\r\n\r\n{}",
                        reply.body.len(),
                        reply.body
                    ));
                    let _ = stream.write_all(out.as_bytes());
                });
            }
        });
        Docs {
            port,
            routes,
            connections,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn route(&self, path: &str, reply: Reply) {
        self.routes.lock().unwrap().insert(path.into(), reply);
    }
}

/// A client metadata document: a public client of `id` sending people
/// back to `redirect`.
fn document(id: &str, redirect: &str) -> serde_json::Value {
    json!({
        "client_id": id, "client_name": "An MCP client",
        "redirect_uris": [redirect], "grant_types": ["authorization_code"],
        "response_types": ["code"], "token_endpoint_auth_method": "none",
    })
}

/// The provider with approver alice (a first-party client, as approvers
/// need one) and these variables.
fn provider(more: &[(&str, &str)]) -> IdProvider {
    let first = FirstParty::new("approval-service", "http://127.0.0.1:9/callback");
    IdProvider::start_with_approvers_and(&[("alice", "correct horse")], &[first], more)
}

/// `id` as a client for the harness's URL builders (public: no secret).
fn client(id: &str, redirect: &str) -> FirstParty {
    FirstParty {
        client_id: id.into(),
        client_secret: String::new(),
        redirect_uri: redirect.into(),
    }
}

/// The code at the token endpoint as a public client (no secret, the
/// PKCE verifier): the raw answer.
fn redeem(
    idp: &IdProvider,
    c: &FirstParty,
    code: &str,
    verifier: &str,
) -> agentplane_e2e::Response {
    let form = format!(
        "grant_type=authorization_code&code={}&redirect_uri={}&code_verifier={}&client_id={}",
        form_encode(code),
        form_encode(&c.redirect_uri),
        form_encode(verifier),
        form_encode(&c.client_id)
    );
    agentplane_e2e::http(
        idp.port,
        "POST",
        "/token",
        &[("content-type", "application/x-www-form-urlencoded")],
        &form,
    )
}

/// A client known only by its document's URL signs alice in: the form
/// names it, the code comes back with `state` and the provider's `iss`
/// (RFC 9207), and buys an ID token naming alice for that client. The
/// document was fetched once for the whole flow (it is cached).
#[test]
fn a_cimd_client_signs_a_person_in_with_the_code_flow() {
    let callback = Upstream::start();
    let redirect = format!("http://127.0.0.1:{}/cb", callback.port);
    let docs = Docs::start();
    let id = docs.url("/client.json");
    docs.route(
        "/client.json",
        json_reply(document(&id, &redirect).to_string()),
    );
    let idp = provider(&[("CIMD_ALLOW_PRIVATE", "1")]);
    let c = client(&id, &redirect);
    let pkce = Pkce::new();
    let mut b = Browser::new();
    let form = b.get(&idp.authorize_url(&c, "st-9", "n-9", Some(&pkce)));
    assert_eq!(form.response.status, 200, "{form:?}");
    assert!(form.response.body.contains(&id), "{}", form.response.body);
    let page = b.sign_in(
        &idp.authorize_url(&c, "st-9", "n-9", Some(&pkce)),
        "alice",
        "correct horse",
    );
    assert!(page.url.starts_with(&redirect), "{}", page.url);
    assert_eq!(page.query("state").as_deref(), Some("st-9"));
    assert_eq!(page.query("iss"), Some(idp.issuer()), "{}", page.url);
    let code = page
        .query("code")
        .unwrap_or_else(|| panic!("no code: {}", page.url));
    let r = redeem(&idp, &c, &code, &pkce.verifier);
    assert_eq!(r.status, 200, "{}", r.body);
    let (_, claims) = idp.verified_claims(r.json()["id_token"].as_str().unwrap());
    assert_eq!(claims["sub"], "alice", "{claims}");
    assert_eq!(claims["aud"], json!(id), "{claims}");
    assert_eq!(
        docs.connections.load(Ordering::SeqCst),
        1,
        "fetched once, then cached"
    );
}

/// The authorization request of a refused client: no sign-in form, no
/// redirect to its redirect_uri (the provider cannot trust it), an error
/// page instead; it comes back within the fetch's 2 s (plus slack).
fn refused(idp: &IdProvider, id: &str, redirect: &str) {
    let started = Instant::now();
    let mut b = Browser::new();
    let page = b.get(&idp.authorize_url(&client(id, redirect), "s", "n", Some(&Pkce::new())));
    assert!(
        started.elapsed() < Duration::from_millis(3500),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(page.response.status, 400, "{id}: {page:?}");
    assert!(!page.url.starts_with(redirect), "{}", page.url);
    assert!(page.forms().is_empty(), "{id}: a form for a refused client");
    assert!(
        page.response.body.contains("invalid_client"),
        "{}",
        page.response.body
    );
}

/// Without CIMD_ALLOW_PRIVATE a URL whose host resolves to loopback (or is
/// a loopback address) is never fetched: no connection reaches the server.
#[test]
fn a_cimd_url_resolving_to_loopback_is_refused_without_the_flag() {
    let docs = Docs::start();
    let idp = provider(&[]);
    for id in [
        format!("https://localhost:{}/client.json", docs.port),
        format!("https://127.0.0.1:{}/client.json", docs.port),
        format!("https://[::1]:{}/client.json", docs.port),
    ] {
        docs.route(
            "/client.json",
            json_reply(document(&id, "https://app.example/cb").to_string()),
        );
        refused(&idp, &id, "https://app.example/cb");
    }
    // Plain http is no metadata document URL at all without the flag.
    let id = docs.url("/client.json");
    refused(&idp, &id, "https://app.example/cb");
    assert_eq!(docs.connections.load(Ordering::SeqCst), 0);
}

/// With loopback allowed, each broken document is still refused: over
/// 5 KB, slower than 2 s, naming another client_id, behind a redirect (to
/// a valid one), holding a client_secret.
#[test]
fn oversized_slow_mismatched_redirected_or_secret_documents_are_refused() {
    let redirect = "http://127.0.0.1:9/cb";
    let docs = Docs::start();
    let idp = provider(&[("CIMD_ALLOW_PRIVATE", "1")]);
    let ok = docs.url("/ok.json");
    docs.route("/ok.json", json_reply(document(&ok, redirect).to_string()));

    let big = docs.url("/big.json");
    let mut doc = document(&big, redirect);
    doc["client_name"] = json!("x".repeat(6000));
    docs.route("/big.json", json_reply(doc.to_string()));
    refused(&idp, &big, redirect);

    let slow = docs.url("/slow.json");
    let mut reply = json_reply(document(&slow, redirect).to_string());
    reply.delay = Duration::from_secs(5);
    docs.route("/slow.json", reply);
    refused(&idp, &slow, redirect);

    let other = docs.url("/other.json");
    docs.route(
        "/other.json",
        json_reply(document(&ok, redirect).to_string()),
    );
    refused(&idp, &other, redirect);

    let moved = docs.url("/moved.json");
    docs.route(
        "/moved.json",
        Reply {
            status: "302 Found",
            headers: vec![format!("location: {ok}")],
            body: String::new(),
            delay: Duration::ZERO,
        },
    );
    refused(&idp, &moved, redirect);

    let secret = docs.url("/secret.json");
    let mut doc = document(&secret, redirect);
    doc["client_secret"] = json!("0123456789abcdef0123");
    docs.route("/secret.json", json_reply(doc.to_string()));
    refused(&idp, &secret, redirect);

    // Each was fetched (the fence is the document's content, not the
    // address); the redirect's target was not followed.
    assert_eq!(docs.connections.load(Ordering::SeqCst), 5);
    // The valid one next to them works: the refusals were the documents'.
    let mut b = Browser::new();
    let page = b.get(&idp.authorize_url(&client(&ok, redirect), "s", "n", Some(&Pkce::new())));
    assert_eq!(page.response.status, 200, "{page:?}");
    assert!(!page.forms().is_empty());
}
