//! Token exchange on the request path with real parts: an agent
//! registered at the real provider (oidc-provider) calls a service whose
//! upstream takes its own token; the filter exchanges the agent's token
//! at the provider's token endpoint (RFC 8693) through an Envoy callout
//! and the upstream gets the exchanged token, never the agent's.

use agentplane_e2e::idp::exchange::ExchangeClient;
use agentplane_e2e::provider::{IdProvider, Registered};
use agentplane_e2e::{default_plugin_config, http, Envoy, EnvoySetup, Upstream, AUDIENCE};
use base64::Engine;
use serde_json::{json, Value};
use std::collections::HashMap;

const SAAS: &str = "https://saas.example/api";

struct World {
    envoy: Envoy,
    upstream: Upstream,
    idp: IdProvider,
    agent: Registered,
}

/// `sts`: how the token service is reached (`Good`, a wrong client
/// secret, or a closed port).
#[derive(PartialEq)]
enum Sts {
    Good,
    WrongSecret,
    Closed,
}

fn world(sts: Sts) -> World {
    let gateway = ExchangeClient::new("gateway", &[AUDIENCE], &[SAAS], &["data:read"]);
    let idp = IdProvider::start_with_exchange(std::slice::from_ref(&gateway), &[]);
    let agent = idp.register(
        "saas-reader",
        "support",
        "customer-success",
        "production",
        &["data:read"],
    );
    let upstream = Upstream::start();
    let mut cfg: Value = serde_json::from_str(&default_plugin_config()).unwrap();
    cfg["resources"]["saas"] = json!({
        "type": "data",
        "metadata": {"team": "customer-success", "environment": "production"},
        "token_exchange": {"audience": SAAS, "scopes": ["data:read"]},
    });
    cfg["token_exchange"] = json!({
        "cluster": if sts == Sts::Closed { "sts" } else { "idp" },
        "authority": format!("127.0.0.1:{}", idp.port),
        "token_path": token_path(&idp), "client_id": "gateway", "timeout_ms": 1000,
    });
    let mut r = agentplane_e2e::render_envoy_routed(
        &EnvoySetup {
            jwks: "{}".into(),
            upstream_port: upstream.port,
            plugin_config: cfg.to_string(),
            vault_port: agentplane_e2e::free_port(),
        },
        true,
        &HashMap::new(),
    );
    agentplane_e2e::provider::use_provider(&mut r, &idp);
    r.add_cluster("sts", agentplane_e2e::free_port());
    let secret = match sts {
        Sts::WrongSecret => "not-the-secret".to_string(),
        _ => gateway.client_secret.clone(),
    };
    r.env.push(("AGENTPLANE_EXCHANGE_SECRET".into(), secret));
    let envoy = Envoy::start_yaml(&r);
    World {
        envoy,
        upstream,
        idp,
        agent,
    }
}

fn token_path(idp: &IdProvider) -> String {
    let url = idp.token_url();
    let rest = url.split_once("://").map_or(url.as_str(), |(_, r)| r);
    rest.find('/')
        .map_or("/token".into(), |i| rest[i..].to_string())
}

fn agent_token(w: &World) -> String {
    let r = w.idp.token_response(&w.agent, "data:read");
    assert_eq!(r.status, 200, "{}", r.body);
    serde_json::from_str::<Value>(&r.body).unwrap()["access_token"]
        .as_str()
        .unwrap()
        .to_string()
}

fn claims(jwt: &str) -> Value {
    let payload = jwt.split('.').nth(1).unwrap();
    serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap(),
    )
    .unwrap()
}

fn stat(envoy: &Envoy, name: &str) -> u64 {
    envoy
        .admin(&format!("/stats?filter={name}"))
        .lines()
        .find_map(|l| l.split(&format!("{name}: ")).nth(1))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

/// The upstream sees a token for its own audience naming the agent and
/// the gateway as the exchanging client, narrowed to the asked scope; the
/// agent's token never arrives; the second call reuses the exchange.
#[test]
fn the_upstream_gets_a_token_exchanged_for_the_agents_and_never_the_agents() {
    let w = world(Sts::Good);
    let token = agent_token(&w);
    let bearer = format!("Bearer {token}");
    for _ in 0..2 {
        let r = http(
            w.envoy.port,
            "GET",
            "/saas/items",
            &[("authorization", bearer.as_str())],
            "",
        );
        assert_eq!(r.status, 200, "{}", r.body);
        assert!(!r.body.contains(&token));
    }
    let seen = w.upstream.seen();
    assert_eq!(seen.len(), 2);
    for s in &seen {
        let auth = s.one("authorization").expect("an upstream token");
        let upstream_token = auth.strip_prefix("Bearer ").unwrap();
        assert_ne!(upstream_token, token, "the agent's own token went upstream");
        let c = claims(upstream_token);
        assert_eq!(c["aud"], SAAS, "{c}");
        assert_eq!(c["sub"], claims(&token)["sub"], "{c}");
        assert_eq!(c["client_id"], "gateway", "{c}");
        assert_eq!(c["scope"], "data:read", "{c}");
    }
    assert_eq!(stat(&w.envoy, "agentplane.token_exchange.exchanged"), 1);
    assert_eq!(stat(&w.envoy, "agentplane.token_exchange.cache_hit"), 1);
    assert!(
        !w.envoy.log().contains(&token),
        "the agent's token in Envoy's log"
    );
}

/// The token service refuses the filter's client, or cannot be reached:
/// the call is refused (503) within the exchange timeout with the
/// service's error code at most, and nothing reaches the upstream.
#[test]
fn a_refusing_or_unreachable_token_service_fails_closed_in_bounded_time() {
    for (sts, why) in [
        (Sts::WrongSecret, "invalid_client"),
        (Sts::Closed, "token service"),
    ] {
        let w = world(sts);
        let token = agent_token(&w);
        let bearer = format!("Bearer {token}");
        let t0 = std::time::Instant::now();
        let r = http(
            w.envoy.port,
            "GET",
            "/saas/items",
            &[("authorization", bearer.as_str())],
            "",
        );
        assert!(t0.elapsed() < std::time::Duration::from_secs(5));
        assert_eq!(r.status, 503, "{}", r.body);
        assert!(r.body.contains("token_exchange_unavailable"), "{}", r.body);
        assert!(r.body.contains(why), "{}", r.body);
        assert!(!r.body.contains(&token));
        assert!(w.upstream.seen().is_empty());
        assert_eq!(
            stat(&w.envoy, "agentplane.decisions.token_exchange_unavailable"),
            1
        );
    }
}

/// An agent whose tokens say who may act for it (`may_act`) and do not
/// name the gateway's client: nothing is exchanged and nothing reaches
/// the upstream (the provider exchanged such a token for any client that
/// sent no actor token). Naming the gateway, the call goes through.
#[test]
fn an_agent_whose_may_act_does_not_name_the_gateway_gets_nothing_upstream() {
    let w = world(Sts::Good);
    let register = |name: &str, may_act: Value| {
        let mut meta = agentplane_e2e::provider::agent_metadata(
            name,
            "support",
            "customer-success",
            "production",
            &["data:read"],
        );
        meta["may_act"] = may_act;
        let r = w.idp.post_registration(&w.idp.initial_access_token, &meta);
        assert_eq!(r.status, 201, "{}", r.body);
        Registered {
            client_id: r.json()["client_id"].as_str().unwrap().into(),
            client_secret: r.json()["client_secret"].as_str().unwrap().into(),
        }
    };
    let call = |agent: &Registered| {
        let r = w.idp.token_response(agent, "data:read");
        assert_eq!(r.status, 200, "{}", r.body);
        let token = r.json()["access_token"].as_str().unwrap().to_string();
        let bearer = format!("Bearer {token}");
        let r = http(
            w.envoy.port,
            "GET",
            "/saas/items",
            &[("authorization", bearer.as_str())],
            "",
        );
        assert!(!r.body.contains(&token));
        r
    };
    let other = register("guarded", json!({"sub": w.agent.client_id}));
    let r = call(&other);
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(r.body.contains("token_exchange_refused"), "{}", r.body);
    assert!(r.body.contains("invalid_grant"), "{}", r.body);
    assert!(w.upstream.seen().is_empty(), "a token went upstream");
    let trusting = register("trusting", json!({"sub": "gateway"}));
    let r = call(&trusting);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(w.upstream.seen().len(), 1);
}
