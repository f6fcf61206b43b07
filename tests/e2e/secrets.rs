//! Secrets: real OpenBao (dev server) with JWT auth and per-agent KV paths;
//! the filter logs in as the agent, reads, injects, caches, fails closed.

use agentplane_e2e::{
    default_plugin_config, Bao, Envoy, EnvoySetup, Idp, Response, Stack, Upstream,
};
use serde_json::{json, Value};

const CANARY_A: &str = "canary-a-5b1f0e3c-never-log";
const CANARY_B: &str = "canary-b-9d2c7a41-never-log";

struct World {
    idp: Idp,
    bao: Bao,
    upstream: Upstream,
    envoy: Envoy,
}

/// `sentiment-analysis` injects the agent's own `api_key` as `x-api-key`;
/// `model-registry` asks for agent B's path whoever calls (Vault must refuse
/// anyone else).
fn world() -> World {
    let idp = Idp::new();
    let bao = Bao::start();
    bao.setup_agents(&idp);
    bao.put_agent_secret("a@clients", json!({"api_key": CANARY_A}));
    bao.put_agent_secret("b@clients", json!({"api_key": CANARY_B}));
    let mut cfg = agentplane_e2e::config_with_api_key(
        json!({"cluster": "vault", "authority": "127.0.0.1", "role": "agent", "retries": 1}),
        &["sentiment-analysis"],
    );
    cfg["resources"]["model-registry"]["secrets"] = json!([
        {"kv": "secret/data/mcp/agents/b@clients/credentials", "field": "api_key", "header": "x-api-key"}
    ]);
    let Stack {
        idp,
        upstream,
        envoy,
    } = Stack::build(&cfg.to_string())
        .idp(idp)
        .vault(bao.port)
        .start();
    World {
        idp,
        bao,
        upstream,
        envoy,
    }
}

fn token(w: &World, sub: &str, team: &str) -> String {
    let t = w.idp.agent_token(
        sub,
        team,
        "support",
        "production",
        &["skills:invoke", "data:read"],
    );
    format!("Bearer {t}")
}

/// A request to Envoy with this `authorization` header and no other.
fn call(w: &World, method: &str, path: &str, authorization: &str) -> Response {
    w.envoy
        .request(method, path, &[("authorization", authorization)])
}

/// `n` simultaneous cold requests from one agent; their statuses.
fn concurrently(port: u16, auth: &str, n: usize) -> Vec<u16> {
    let threads: Vec<_> = (0..n)
        .map(|_| {
            let auth = auth.to_string();
            std::thread::spawn(move || {
                agentplane_e2e::http(
                    port,
                    "POST",
                    "/mcp://sentiment-analysis/analyze",
                    &[("authorization", &auth)],
                    "",
                )
                .status
            })
        })
        .collect();
    threads.into_iter().map(|t| t.join().unwrap()).collect()
}

fn no_canary_anywhere(w: &World) {
    let log = w.envoy.log();
    let stats = w.envoy.admin("/stats");
    for c in [CANARY_A, CANARY_B] {
        assert!(!log.contains(c), "secret in Envoy's log");
        assert!(!stats.contains(c), "secret in Envoy's stats");
    }
}

/// Each agent receives its own secret, and only in its target header; the
/// agent's JWT is not forwarded; a second call is served from the cache
/// (it still works with OpenBao stopped).
#[test]
fn agents_receive_their_own_secrets() {
    let mut w = world();
    let a = token(&w, "a@clients", "ml");
    let b = token(&w, "b@clients", "ml");
    for (auth, want) in [(&a, CANARY_A), (&b, CANARY_B), (&a, CANARY_A)] {
        let r = call(&w, "POST", "/mcp://sentiment-analysis/analyze", auth);
        assert_eq!(r.status, 200, "{r:?}");
        assert!(!r.body.contains(CANARY_A) || want == CANARY_A);
    }
    let seen = w.upstream.seen();
    let got: Vec<_> = seen.iter().map(|s| s.all("x-api-key")).collect();
    assert_eq!(got, [vec![CANARY_A], vec![CANARY_B], vec![CANARY_A]]);
    for s in &seen {
        assert!(s.all("authorization").is_empty(), "agent JWT forwarded");
        let others: Vec<_> = s
            .headers
            .iter()
            .filter(|(k, v)| k != "x-api-key" && (v.contains(CANARY_A) || v.contains(CANARY_B)))
            .collect();
        assert!(others.is_empty(), "secret in another header: {others:?}");
    }

    // Cached: OpenBao can go away.
    w.bao.stop();
    w.upstream.clear();
    let r = call(&w, "POST", "/mcp://sentiment-analysis/analyze", &a);
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(w.upstream.seen()[0].all("x-api-key"), [CANARY_A]);
    no_canary_anywhere(&w);
}

/// OpenBao enforces isolation too: agent A's Vault token cannot read B's
/// path (403, one re-login, 403 again), so A gets 503 and nothing upstream.
#[test]
fn vault_policy_keeps_agents_apart() {
    let w = world();
    let a = token(&w, "a@clients", "ml");
    let r = call(&w, "GET", "/mcp://model-registry/models", &a);
    assert_eq!(r.status, 503, "{r:?}");
    let body = r.json();
    assert_eq!(body["error"], "unavailable");
    assert_eq!(
        body["reason"],
        "secrets_unavailable: secret #0: vault answered 403"
    );
    assert_eq!(r.header("x-decision-id"), body["decision_id"].as_str());
    assert!(w.upstream.seen().is_empty());
    // B may read its own path through the same service.
    let b = token(&w, "b@clients", "ml");
    let r = call(&w, "GET", "/mcp://model-registry/models", &b);
    assert_eq!(r.status, 200, "{r:?}");
    no_canary_anywhere(&w);
}

/// OpenBao down: 503 `secrets_unavailable` with a decision id, nothing
/// forwarded; back up: served again.
#[test]
fn vault_outage_fails_closed_then_recovers() {
    let mut w = world();
    let port = w.bao.port;
    w.bao.stop();
    let a = token(&w, "a@clients", "ml");
    let r = call(&w, "POST", "/mcp://sentiment-analysis/analyze", &a);
    assert_eq!(r.status, 503, "{r:?}");
    // Envoy answers the callout itself (503: no connection to the cluster).
    assert_eq!(
        r.json()["reason"],
        "secrets_unavailable: vault login: vault answered 503"
    );
    assert!(w.upstream.seen().is_empty());

    // A dev server keeps nothing: configure the new one again.
    w.bao = Bao::start_on(port);
    w.bao.setup_agents(&w.idp);
    w.bao
        .put_agent_secret("a@clients", json!({"api_key": CANARY_A}));
    let r = call(&w, "POST", "/mcp://sentiment-analysis/analyze", &a);
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(w.upstream.seen()[0].all("x-api-key"), [CANARY_A]);
    no_canary_anywhere(&w);
}

/// Many concurrent cold requests for one agent: one login and one read
/// (single-flight), every request served with the right secret.
#[test]
fn concurrent_cold_requests_share_one_fetch() {
    let w = world();
    let a = token(&w, "a@clients", "ml");
    let port = w.envoy.port;
    assert!(concurrently(port, &a, 16).iter().all(|s| *s == 200));
    assert_eq!(w.upstream.seen().len(), 16);
    for s in w.upstream.seen() {
        assert_eq!(s.all("x-api-key"), [CANARY_A]);
    }
    // OpenBao's own counters: one login, one KV read for 16 requests.
    assert_eq!(w.bao.metric("vault_core_handle_login_request_count"), 1);
    assert_eq!(w.bao.metric("vault_route_read_secret__count"), 1);
    no_canary_anywhere(&w);
}

/// Dynamic database credentials from OpenBao's database engine against a
/// real PostgreSQL: the injected username and password log in; they are
/// reused while their lease holds (minus the renewal margin) and replaced by
/// new ones after.
#[test]
fn database_credentials_log_in_and_rotate() {
    let pg = agentplane_e2e::Postgres::start();
    let idp = Idp::new();
    let bao = Bao::start();
    bao.setup_agents(&idp);
    // 13 s leases, 10 s margin: each credential is reused for 3 s.
    bao.setup_database(&pg, "13s");
    let mut cfg: Value = serde_json::from_str(&default_plugin_config()).unwrap();
    cfg["vault"] = json!({"cluster": "vault", "authority": "127.0.0.1", "renew_margin_s": 10});
    cfg["resources"]["customer-lookup"]["secrets"] = json!([{
        "database": "database/creds/readonly",
        "username_header": "x-db-username",
        "password_header": "x-db-password"
    }]);
    let upstream = Upstream::start();
    let envoy = Envoy::start(&EnvoySetup {
        jwks: idp.jwks(),
        upstream_port: upstream.port,
        plugin_config: cfg.to_string(),
        vault_port: bao.port,
    });
    let auth = format!(
        "Bearer {}",
        idp.agent_token(
            "a@clients",
            "customer-success",
            "support",
            "production",
            &["data:read"]
        )
    );
    let call = || {
        let r = envoy.request(
            "GET",
            "/mcp://customer-lookup/customers/7",
            &[("authorization", &auth)],
        );
        assert_eq!(r.status, 200, "{r:?}");
        let seen = upstream.seen();
        let last = seen.last().unwrap();
        (
            last.one("x-db-username").unwrap(),
            last.one("x-db-password").unwrap(),
        )
    };
    let (u1, p1) = call();
    assert_eq!(pg.login(&u1, &p1, "select current_user").unwrap(), u1);
    assert_eq!(call().0, u1, "reused while the lease holds");
    // Waiting out a lease is the behaviour under test, not a readiness wait.
    std::thread::sleep(std::time::Duration::from_millis(3500));
    let (u2, p2) = call();
    assert_ne!(u2, u1, "a new credential after the lease");
    assert_eq!(pg.login(&u2, &p2, "select current_user").unwrap(), u2);
    assert!(
        pg.login(&u1, "wrong", "select 1").is_err(),
        "passwords are checked"
    );
    for p in [&p1, &p2] {
        assert!(!envoy.log().contains(p.as_str()), "password in Envoy's log");
        assert!(!envoy.admin("/stats").contains(p.as_str()));
    }
}

/// Two Envoy workers: concurrent cold requests for one agent still cost
/// OpenBao exactly one login and one read; the worker that did not fetch
/// takes the result from shared data.
#[test]
fn two_workers_share_one_fetch() {
    let idp = Idp::new();
    let bao = Bao::start();
    bao.setup_agents(&idp);
    bao.put_agent_secret("a@clients", json!({"api_key": CANARY_A}));
    let cfg = agentplane_e2e::config_with_api_key(
        json!({"cluster": "vault", "authority": "127.0.0.1"}),
        &["sentiment-analysis"],
    );
    let Stack {
        idp,
        upstream,
        envoy,
    } = Stack::build(&cfg.to_string())
        .idp(idp)
        .vault(bao.port)
        .workers(2)
        .start();
    let token = idp.agent_token(
        "a@clients",
        "ml",
        "support",
        "production",
        &["skills:invoke"],
    );
    let auth = format!("Bearer {token}");
    let port = envoy.port;
    assert!(concurrently(port, &auth, 24).iter().all(|s| *s == 200));
    for s in upstream.seen() {
        assert_eq!(s.all("x-api-key"), [CANARY_A]);
    }
    assert_eq!(bao.metric("vault_core_handle_login_request_count"), 1);
    assert_eq!(bao.metric("vault_route_read_secret__count"), 1);
    assert!(!envoy.log().contains(CANARY_A));
}
