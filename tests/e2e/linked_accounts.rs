//! Linked accounts with real parts: a person's token at a third-party
//! SaaS (a second oidc-provider, `idp/saas.mjs`) injected for calls made
//! as them. The link broker (the approval service with `--links-file`)
//! signs the person in at agentplane's provider, sends them to the SaaS
//! (code flow, PKCE), keeps the refresh token in a real OpenBao and
//! answers the filter's RFC 8693 exchanges through a real Envoy callout.
//! No link, an unlinked account or a grant the SaaS revoked: 401 with the
//! page to (re)link at. No token reaches the caller, a log or a record.

use agentplane_e2e::idp::browser::{Browser, Page};
use agentplane_e2e::links::{serve_document, Saas};
use agentplane_e2e::provider::{FirstParty, IdProvider};
use agentplane_e2e::{
    approval::OidcClient, default_plugin_config, free_port, http, Approval, Bao, Envoy, EnvoySetup,
    Idp, Response, Upstream,
};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::time::{Duration, Instant};

struct World {
    envoy: Envoy,
    upstream: Upstream,
    broker: Approval,
    saas: Saas,
    bao: Bao,
    idp: Idp,
    _people: IdProvider,
    dir: std::path::PathBuf,
}

impl Drop for World {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Access tokens at the SaaS live 31 s: the broker hands one out while
/// more than 30 s are left and the filter keeps it as long (skew 30), so
/// each is reused for about a second and a revocation shows at once.
const SAAS_TTL: u64 = 31;

fn world() -> World {
    let port = free_port();
    let client = FirstParty::new(
        "approval-service",
        &format!("http://127.0.0.1:{port}/callback"),
    );
    let people = IdProvider::start_with_approvers(
        &[("alice", "alice pw"), ("bob", "bob pw")],
        std::slice::from_ref(&client),
    );
    let saas = Saas::start(
        "agentplane-links",
        &format!("http://127.0.0.1:{port}/link/saas/callback"),
        SAAS_TTL,
    );
    let bao = Bao::start();
    // The callers' tokens: the harness's signer, its JWKS served here.
    let idp = Idp::new();
    let jwks = serve_document(idp.jwks());
    let dir = std::env::temp_dir().join(format!(
        "agentplane-links-{}-{:016x}",
        std::process::id(),
        rand::random::<u64>()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("bao.token"), &bao.root).unwrap();
    std::fs::write(dir.join("saas.secret"), &saas.client_secret).unwrap();
    let links = json!({
        "openbao": {"addr": format!("http://127.0.0.1:{}", bao.port),
                    "token_file": dir.join("bao.token")},
        "upstreams": {"saas": {"issuer": saas.issuer(), "client_id": saas.client_id,
                               "client_secret_file": dir.join("saas.secret"),
                               "scopes": ["openid", "offline_access"]}},
        "subject_tokens": {"issuer": agentplane_e2e::ISSUER,
                           "jwks_uri": format!("http://127.0.0.1:{jwks}/jwks")},
    });
    std::fs::write(dir.join("links.json"), links.to_string()).unwrap();
    let broker = Approval::start_with(
        port,
        &OidcClient {
            issuer: people.issuer(),
            client_id: client.client_id.clone(),
            client_secret: client.client_secret.clone(),
        },
        &[
            "--links-file".into(),
            dir.join("links.json").display().to_string(),
        ],
    );
    let upstream = Upstream::start();
    let mut cfg: Value = serde_json::from_str(&default_plugin_config()).unwrap();
    cfg["resources"]["saas"] = json!({
        "type": "data",
        "metadata": {"team": "customer-success", "environment": "production"},
        "token_exchange": {"audience": "saas", "via": "linked_accounts"},
    });
    cfg["linked_accounts"] = json!({
        "cluster": "links", "authority": format!("127.0.0.1:{port}"),
        "client_id": "agentplane-filter", "client_secret_env": "AGENTPLANE_LINKS_KEY",
        "timeout_ms": 3000, "skew_s": 30,
    });
    let mut r = agentplane_e2e::render_envoy_routed(
        &EnvoySetup {
            jwks: idp.jwks(),
            upstream_port: upstream.port,
            plugin_config: cfg.to_string(),
            vault_port: free_port(),
        },
        true,
        &HashMap::new(),
    );
    r.add_cluster("links", port);
    r.env
        .push(("AGENTPLANE_LINKS_KEY".into(), broker.filter_key.clone()));
    let envoy = Envoy::start_yaml(&r);
    World {
        envoy,
        upstream,
        broker,
        saas,
        bao,
        idp,
        _people: people,
        dir,
    }
}

/// Alice's token, as her MCP client or an agent acting for her holds it.
fn alice(w: &World) -> String {
    w.idp.agent_token(
        "alice",
        "customer-success",
        "support",
        "production",
        &["data:read"],
    )
}

fn call(w: &World, token: &str) -> Response {
    http(
        w.envoy.port,
        "GET",
        "/saas/items",
        &[("authorization", &format!("Bearer {token}"))],
        "",
    )
}

fn link_page(w: &World) -> String {
    format!("{}/link/saas", w.broker.url())
}

/// The form on `page` posting to a path ending in `action`.
fn form(page: &Page, action: &str) -> agentplane_e2e::idp::browser::Form {
    page.forms()
        .into_iter()
        .find(|f| f.action.ends_with(action))
        .unwrap_or_else(|| panic!("no {action} form on {}: {}", page.url, page.response.body))
}

/// The form of `page` with a password field, if any.
fn sign_in_form(page: &Page) -> Option<agentplane_e2e::idp::browser::Form> {
    page.forms()
        .into_iter()
        .find(|f| f.fields.iter().any(|(n, _)| n == "password"))
}

/// Alice opens the link page (signing in at the broker if she is not
/// yet), presses "Link", signs in at the SaaS as `saas_user` (if her
/// browser is not signed in there yet) and consents: the page she ends on.
fn link(w: &World, b: &mut Browser, saas_user: &str) -> Page {
    let mut page = b.get(&link_page(w));
    if let Some(f) = sign_in_form(&page) {
        page = b.submit(&f, &[("username", "alice"), ("password", "alice pw")]);
    }
    assert_eq!(page.url, link_page(w));
    assert_eq!(page.response.status, 200, "{}", page.response.body);
    let mut at_saas = b.submit(&form(&page, "/link/saas/start"), &[]);
    assert!(
        at_saas.url.contains(&format!(":{}/", w.saas.port)),
        "{}",
        at_saas.url
    );
    if let Some(login) = sign_in_form(&at_saas) {
        at_saas = b.submit(&login, &[("login", saas_user), ("password", "any")]);
    }
    // The SaaS's consent page: one form, "Continue".
    let done = b.submit(&at_saas.forms()[0], &[]);
    assert_eq!(done.url, link_page(w), "{:?}", b.visited);
    assert!(
        done.response.body.contains("is linked"),
        "{}",
        done.response.body
    );
    done
}

/// Calls until one answers `status` (10 s at most): the caches on the way
/// keep a token about a second.
fn until_status(w: &World, token: &str, status: u16) -> Response {
    let t0 = Instant::now();
    loop {
        let r = call(w, token);
        if r.status == status {
            return r;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "still {}: {}\nbroker: {}",
            r.status,
            r.body,
            w.broker.stderr()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The refresh token the broker stored for alice, read from OpenBao.
fn stored_refresh_token(w: &World) -> Option<String> {
    let list = agentplane_e2e::try_http(
        w.bao.port,
        "LIST",
        "/v1/secret/metadata/agentplane/links/saas",
        &[("x-vault-token", &w.bao.root)],
        "",
    )
    .ok()?;
    let key = list.json()["data"]["keys"][0].as_str()?.to_string();
    let v = w.bao.api(
        "GET",
        &format!("/v1/secret/data/agentplane/links/saas/{key}"),
        Value::Null,
    );
    assert_eq!(v["data"]["data"]["user"], "alice");
    v["data"]["data"]["refresh_token"]
        .as_str()
        .map(str::to_string)
}

/// The whole story: no link is a 401 naming the page; alice links once;
/// her calls then reach the SaaS with her SaaS token (never her own
/// token, never to her); unlinking stops them.
#[test]
fn a_person_links_their_account_once_and_calls_as_them_until_they_unlink() {
    let w = world();
    let token = alice(&w);
    let r = call(&w, &token);
    assert_eq!(r.status, 401, "{}", r.body);
    assert_eq!(r.json()["error"], "link_required");
    assert_eq!(r.json()["link"], link_page(&w).as_str());
    assert_eq!(
        r.header("www-authenticate"),
        Some(format!(r#"AccountLink url="{}""#, link_page(&w)).as_str())
    );
    assert!(
        w.upstream.seen().is_empty(),
        "nothing goes upstream unlinked"
    );

    let mut b = Browser::new();
    link(&w, &mut b, "alice-at-saas");
    let linked = w.broker.decisions();
    assert!(
        linked.iter().any(|l| l["event"] == "link.created"
            && l["user"] == "alice"
            && l["upstream"] == "saas"),
        "{linked:?}"
    );

    let r = call(&w, &token);
    assert_eq!(r.status, 200, "{}", r.body);
    let seen = w.upstream.seen();
    let sent = seen[0].one("authorization").expect("a token upstream");
    let saas_token = sent.strip_prefix("Bearer ").unwrap().to_string();
    assert_ne!(saas_token, token, "alice's own token went upstream");
    let me = w.saas.me(&saas_token);
    assert_eq!(me.status, 200, "{}", me.body);
    assert_eq!(me.json()["sub"], "alice-at-saas", "the SaaS token is hers");

    // Refreshed when it lapses: the rotated refresh token is stored, and
    // the calls go on.
    let first = stored_refresh_token(&w).expect("a stored link");
    let t0 = Instant::now();
    let rotated = loop {
        assert_eq!(call(&w, &token).status, 200);
        let now = stored_refresh_token(&w).expect("still linked");
        if now != first {
            break now;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "the refresh token never rotated"
        );
        std::thread::sleep(Duration::from_millis(200));
    };

    // Nothing secret anywhere the caller or an operator reads.
    let refusal = {
        let other = w.idp.agent_token(
            "bob",
            "customer-success",
            "support",
            "production",
            &["data:read"],
        );
        let r = call(&w, &other);
        assert_eq!(r.status, 401, "bob never linked: {}", r.body);
        r.body
    };
    let records = format!("{:?}", w.envoy.decision_records());
    let everything = format!(
        "{refusal} {records} {} {:?} {}",
        w.envoy.log(),
        w.broker.decisions(),
        w.broker.stderr()
    );
    for secret in [
        saas_token.as_str(),
        rotated.as_str(),
        first.as_str(),
        &w.broker.filter_key,
        &token,
    ] {
        assert!(!everything.contains(secret), "a token leaked");
    }

    // Unlinked at the broker's page: the next calls are 401 again.
    let page = b.get(&link_page(&w));
    let after = b.submit(&form(&page, "/link/saas/unlink"), &[]);
    assert!(
        after.response.body.contains("is not linked"),
        "{}",
        after.response.body
    );
    until_status(&w, &token, 401);
    assert!(
        stored_refresh_token(&w).is_none(),
        "the refresh token is deleted"
    );
}

/// A grant the person revoked at the SaaS: the broker's refresh is
/// `invalid_grant`, the link is dropped and the call asks for a new one.
#[test]
fn a_grant_revoked_at_the_saas_asks_for_a_new_link() {
    let w = world();
    let token = alice(&w);
    let mut b = Browser::new();
    link(&w, &mut b, "alice-at-saas");
    assert_eq!(call(&w, &token).status, 200);
    let rt = stored_refresh_token(&w).expect("a stored link");
    let revoked = w.saas.revoke(&rt);
    assert_eq!(revoked.status, 200, "{}", revoked.body);
    let r = until_status(&w, &token, 401);
    assert_eq!(r.json()["error"], "link_required", "{}", r.body);
    assert!(stored_refresh_token(&w).is_none());
    // Linking again works at once.
    link(&w, &mut b, "alice-at-saas");
    until_status(&w, &token, 200);
}

/// The token endpoint is the filter's alone, and a subject token it did
/// not get from the callers' issuer buys nothing: a stolen filter route
/// or a forged token gets no one's SaaS token.
#[test]
fn only_the_filter_with_a_genuine_token_gets_a_persons_saas_token() {
    let w = world();
    let mut b = Browser::new();
    link(&w, &mut b, "alice-at-saas");
    let exchange = |basic: &str, subject: &str, audience: &str| {
        let form = format!(
            "grant_type={}&subject_token={subject}&subject_token_type={}&audience={audience}",
            agentplane_e2e::provider::form_encode(
                "urn:ietf:params:oauth:grant-type:token-exchange"
            ),
            agentplane_e2e::provider::form_encode("urn:ietf:params:oauth:token-type:access_token"),
        );
        http(
            w.broker.port,
            "POST",
            "/token",
            &[
                ("authorization", &format!("Basic {basic}")),
                ("content-type", "application/x-www-form-urlencoded"),
            ],
            &form,
        )
    };
    use base64::Engine;
    let enc = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let filter = enc(&format!("agentplane-filter:{}", w.broker.filter_key));
    let good = alice(&w);
    let ok = exchange(&filter, &good, "saas");
    assert_eq!(ok.status, 200, "{}", ok.body);
    assert_eq!(ok.json()["token_type"], "Bearer");

    let wrong = exchange(&enc("agentplane-filter:guess-guess-guess"), &good, "saas");
    assert_eq!(
        (wrong.status, wrong.json()["error"].clone()),
        (401, json!("invalid_client"))
    );
    let forged = Idp::new().agent_token("alice", "customer-success", "support", "production", &[]);
    let f = exchange(&filter, &forged, "saas");
    assert_eq!(
        (f.status, f.json()["error"].clone()),
        (400, json!("invalid_grant")),
        "{}",
        f.body
    );
    let t = exchange(&filter, &good, "other-saas");
    assert_eq!(t.json()["error"], "invalid_target");
    for r in [&wrong, &f, &t] {
        assert!(!r.body.contains("access_token"), "{}", r.body);
    }
}
