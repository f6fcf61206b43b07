//! Per-service audience (RFC 8707) with the real identity provider
//! (oidc-provider issuing a token per resource) and real Envoy: a token
//! for one service is refused at another, and a client that follows the
//! MCP authorization spec (resource metadata, then a token for that
//! resource) gets in.

use agentplane_agent::{Agent, ClientCredentials, SystemClock, TokenCache};
use agentplane_e2e::provider::{IdProvider, Registered};
use agentplane_e2e::{default_plugin_config, http, Envoy, EnvoySetup, Response, Upstream};
use base64::Engine;
use serde_json::{json, Value};

/// sentiment-analysis's resource (service A).
const A: &str = "https://gw.example.com/sentiment-analysis";
/// hello-skill's resource (service B).
const B: &str = "https://gw.example.com/hello-skill";
const SCOPE: &str = "skills:invoke data:read";

struct World {
    idp: IdProvider,
    upstream: Upstream,
    envoy: Envoy,
    agent: Registered,
}

/// The provider knows A and B; the gateway gives sentiment-analysis and
/// hello-skill their own resource, customer-lookup none; Envoy verifies
/// the provider's tokens (jwt_authn's audiences rendered from the config).
fn world() -> World {
    let idp = IdProvider::start_for_resources(&[A, B]);
    let mut cfg: Value = serde_json::from_str(&default_plugin_config()).unwrap();
    cfg["oauth"] = json!({"authorization_servers": [idp.issuer()]});
    cfg["resources"]["sentiment-analysis"]["resource_uri"] = json!(A);
    cfg["resources"]["hello-skill"]["resource_uri"] = json!(B);
    let upstream = Upstream::start();
    let mut r = agentplane_e2e::render_envoy(
        &EnvoySetup {
            jwks: "{}".into(), // replaced by remote_jwks below
            upstream_port: upstream.port,
            plugin_config: cfg.to_string(),
            vault_port: agentplane_e2e::free_port(),
        },
        true,
    );
    assert!(
        r.yaml.contains(&format!(
            r#"audiences: ["{}","{B}","{A}"]"#,
            agentplane_e2e::AUDIENCE
        )),
        "jwt_authn accepts every audience the gateway serves"
    );
    agentplane_e2e::provider::use_provider(&mut r, &idp);
    let envoy = Envoy::start_yaml(&r);
    let agent = idp.register(
        "support-triage",
        "support",
        "customer-success",
        "production",
        &["skills:invoke", "data:read"],
    );
    World {
        idp,
        upstream,
        envoy,
        agent,
    }
}

/// A token from the provider for `resource` (none: its default), and the
/// `aud` it carries.
fn token(w: &World, resource: Option<&str>) -> (String, Value) {
    let r = w.idp.token_response_for(&w.agent, SCOPE, resource);
    assert_eq!(r.status, 200, "token: {}", r.body);
    let t = r.json()["access_token"].as_str().unwrap().to_string();
    let payload = t.split('.').nth(1).unwrap();
    let claims: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap(),
    )
    .unwrap();
    (format!("Bearer {t}"), claims["aud"].clone())
}

fn call(w: &World, auth: &str, method: &str, path: &str) -> Response {
    http(
        w.envoy.port,
        method,
        path,
        &[
            ("authorization", auth),
            ("content-type", "application/json"),
        ],
        "{}",
    )
}

/// The `name="value"` parameter of a challenge.
fn param<'a>(challenge: &'a str, name: &str) -> Option<&'a str> {
    let start = challenge.find(&format!("{name}=\""))? + name.len() + 2;
    let len = challenge[start..].find('"')?;
    Some(&challenge[start..start + len])
}

#[test]
fn a_token_for_service_a_is_refused_at_service_b() {
    let w = world();
    let (for_a, aud) = token(&w, Some(A));
    assert_eq!(aud, json!(A), "the provider binds the token to A");
    let r = call(&w, &for_a, "POST", "/mcp://sentiment-analysis/analyze");
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(w.upstream.seen().len(), 1);

    let r = call(&w, &for_a, "POST", "/mcp://hello-skill/greet");
    assert_eq!(r.status, 401, "{r:?}");
    let challenge = r.header("www-authenticate").unwrap();
    assert!(challenge.starts_with("Bearer "), "{challenge}");
    assert_eq!(param(challenge, "error"), Some("invalid_token"));
    assert_eq!(
        param(challenge, "error_description"),
        Some(format!("token audience does not include {B}").as_str())
    );
    assert_eq!(
        param(challenge, "resource_metadata"),
        Some("https://gw.example.com/.well-known/oauth-protected-resource/hello-skill")
    );
    let id = r.header("x-decision-id").unwrap();
    assert_eq!(r.json()["decision_id"], id);
    assert_eq!(w.upstream.seen().len(), 1, "nothing reached hello-skill");

    // A service without its own resource refuses A's token too...
    let r = call(&w, &for_a, "GET", "/mcp://customer-lookup/customers/42");
    assert_eq!(r.status, 401, "{r:?}");
    assert!(r.json()["reason"]
        .as_str()
        .unwrap()
        .starts_with(&format!("token audience {A} is another service's")));
    // ...and takes the gateway's, as before services had their own; which
    // is no longer good at A.
    let (gateway, aud) = token(&w, None);
    assert_eq!(aud, json!(agentplane_e2e::AUDIENCE));
    let r = call(&w, &gateway, "GET", "/mcp://customer-lookup/customers/42");
    assert_eq!(r.status, 200, "{r:?}");
    let r = call(&w, &gateway, "POST", "/mcp://sentiment-analysis/analyze");
    assert_eq!(r.status, 401, "{r:?}");
    assert_eq!(w.upstream.seen().len(), 2);
}

/// What an MCP client does (MCP authorization; RFC 9728, 8414, 8707): it
/// is refused without a token, reads the resource metadata the challenge
/// points to, finds the authorization server's token endpoint, asks it
/// for a token for that resource, and calls again.
#[tokio::test(flavor = "multi_thread")]
async fn a_client_following_the_spec_gets_a_token_that_works() {
    let w = world();
    let r = http(
        w.envoy.port,
        "POST",
        "/mcp://sentiment-analysis/analyze",
        &[],
        "{}",
    );
    assert_eq!(r.status, 401, "{r:?}");
    let url = param(r.header("www-authenticate").unwrap(), "resource_metadata")
        .unwrap()
        .to_string();
    // The metadata URL names the gateway's public host; here it is Envoy.
    let path = url.strip_prefix("https://gw.example.com").unwrap();
    let doc = http(w.envoy.port, "GET", path, &[], "");
    assert_eq!(doc.status, 200, "{doc:?}");
    let doc = doc.json();
    let resource = doc["resource"].as_str().unwrap().to_string();
    assert_eq!(resource, A);
    let issuer = doc["authorization_servers"][0].as_str().unwrap();
    assert_eq!(issuer, w.idp.issuer());
    // RFC 8414 metadata of the authorization server, asked for at the
    // issuer's own host (the provider names its endpoints after it).
    let host = issuer.trim_start_matches("http://");
    let meta = agentplane_e2e::send_raw(
        w.idp.port,
        format!(
            "GET /.well-known/oauth-authorization-server HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n\r\n"
        )
        .as_bytes(),
    )
    .unwrap();
    assert_eq!(meta.status, 200, "{meta:?}");
    assert_eq!(meta.json()["issuer"], issuer, "RFC 8414 §3.3");
    let token_endpoint = meta.json()["token_endpoint"].as_str().unwrap().to_string();

    let creds = ClientCredentials::new(&token_endpoint, &w.agent.client_id, &w.agent.client_secret)
        .resource(&resource)
        .scope(SCOPE);
    let agent = Agent::new(
        &format!("http://127.0.0.1:{}", w.envoy.port),
        TokenCache::new(creds, SystemClock),
    );
    let out = agent
        .call_skill("sentiment-analysis", "analyze", &json!({"text": "ok"}))
        .await
        .unwrap();
    assert_eq!(out["path"], "/analyze", "{out}");
    // The same token elsewhere: a typed 401 naming the audience.
    let e = agent
        .call_skill("hello-skill", "greet", &json!({}))
        .await
        .unwrap_err();
    let d = e.denial().expect("a denial");
    assert_eq!(d.status, 401, "{d}");
    assert_eq!(d.reason, format!("token audience does not include {B}"));
}

/// The provider issues tokens only for the resources it was told about:
/// a resource it does not know (or a near spelling of one) is
/// `invalid_target`.
#[test]
fn the_provider_refuses_a_token_for_a_resource_it_does_not_know() {
    let idp = IdProvider::start_for_resources(&[A]);
    let agent = idp.register(
        "support-triage",
        "support",
        "customer-success",
        "production",
        &["skills:invoke"],
    );
    for unknown in [
        "https://evil.example/",
        "https://gw.example.com/sentiment-analysis/",
        B,
    ] {
        let r = idp.token_response_for(&agent, "skills:invoke", Some(unknown));
        assert_eq!(r.status, 400, "{unknown}: {r:?}");
        assert_eq!(r.json()["error"], "invalid_target", "{unknown}");
    }
    let r = idp.token_response_for(&agent, "skills:invoke", Some(A));
    assert_eq!(r.status, 200, "{r:?}");
}
