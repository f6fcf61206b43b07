//! Agents with identities from a real identity provider (oidc-provider,
//! `idp/server.mjs`), calling through Envoy + agentplane with the SDK.

use agentplane_agent::{Agent, ClientCredentials, Error, SystemClock, TokenCache};
use agentplane_e2e::provider::{agent_cli as cli, IdProvider, Registered};
use agentplane_e2e::{default_plugin_config, Envoy, EnvoySetup, Upstream, AUDIENCE};
use serde_json::json;

struct World {
    idp: IdProvider,
    upstream: Upstream,
    envoy: Envoy,
}

/// Envoy verifying the provider's tokens (its issuer, its JWKS).
fn world() -> World {
    world_with(
        &default_plugin_config(),
        &std::collections::HashMap::new(),
        None,
    )
}

/// [`world`] with a plugin config and some services on their own ports.
fn world_with(
    plugin_config: &str,
    ports: &std::collections::HashMap<String, u16>,
    vault_port: Option<u16>,
) -> World {
    let idp = IdProvider::start();
    let upstream = Upstream::start();
    let mut r = agentplane_e2e::render_envoy_routed(
        &EnvoySetup {
            jwks: "{}".into(), // replaced by remote_jwks below
            upstream_port: upstream.port,
            plugin_config: plugin_config.to_string(),
            vault_port: vault_port.unwrap_or_else(agentplane_e2e::free_port),
        },
        true,
        ports,
    );
    agentplane_e2e::provider::use_provider(&mut r, &idp);
    let envoy = Envoy::start_yaml(&r);
    World {
        idp,
        upstream,
        envoy,
    }
}

fn agent(w: &World, a: &Registered, scope: &str) -> Agent<ClientCredentials, SystemClock> {
    let creds = ClientCredentials::new(&w.idp.token_url(), &a.client_id, &a.client_secret)
        .resource(AUDIENCE)
        .scope(scope);
    Agent::new(
        &format!("http://127.0.0.1:{}", w.envoy.port),
        TokenCache::new(creds, SystemClock),
    )
}

/// Register at the provider (RFC 7591), get a token (client credentials,
/// resource-bound JWT), call through the sidecar: the attributes given at
/// registration are the identity agentplane decides on; a refusal comes
/// back as a typed error with its decision id; deregistration ends it.
#[tokio::test(flavor = "multi_thread")]
async fn a_registered_agent_calls_through_the_sidecar_until_it_is_deregistered() {
    let w = world();
    let reg = w.idp.register(
        "support-triage",
        "support",
        "customer-success",
        "production",
        &["skills:invoke", "data:read"],
    );
    let a = agent(&w, &reg, "skills:invoke data:read");
    let out = a
        .call_skill(
            "sentiment-analysis",
            "analyze",
            &json!({"text": "it broke"}),
        )
        .await
        .unwrap();
    assert_eq!(out["path"], "/analyze", "{out}");
    let seen = w.upstream.seen();
    let up = seen.last().unwrap();
    assert_eq!(
        up.one("x-agent-id").as_deref(),
        Some(reg.client_id.as_str())
    );
    assert_eq!(up.one("x-agent-team").as_deref(), Some("customer-success"));
    assert_eq!(up.one("x-agent-type").as_deref(), Some("support"));
    assert!(
        up.one("authorization").is_none(),
        "the token stays at the sidecar"
    );
    assert!(
        up.one("traceparent")
            .is_some_and(|t| t.starts_with(&format!("00-{}-", a.trace_id()))),
        "{:?}",
        up.one("traceparent")
    );

    // Not registered with data:write: a typed refusal.
    let e = a
        .write_data("customer-lookup", "customers/42", &json!({"note": "x"}))
        .await
        .unwrap_err();
    let d = e.denial().expect("a denial");
    assert_eq!(d.status, 403);
    assert!(d.reason.contains("data:write"), "{d}");
    assert!(d.decision_id.as_deref().is_some_and(|id| id.len() == 36));

    // Deregistered: no new token, a clear error.
    assert_eq!(w.idp.deregister(&reg).status, 204);
    assert_eq!(w.idp.token_response(&reg, "skills:invoke").status, 401);
    let after = agent(&w, &reg, "skills:invoke");
    match after
        .call_skill("sentiment-analysis", "analyze", &json!({}))
        .await
    {
        Err(Error::Token(m)) => assert!(m.contains("refused"), "{m}"),
        other => panic!("{other:?}"),
    }
}

/// A provider that is down is a clear error, not a hang.
#[tokio::test(flavor = "multi_thread")]
async fn a_provider_that_is_down_is_a_clear_error() {
    let w = world();
    let reg = w
        .idp
        .register("x", "support", "ml", "production", &["skills:invoke"]);
    let a = agent(&w, &reg, "skills:invoke");
    drop(w.idp);
    let t0 = std::time::Instant::now();
    let e = a
        .call_skill("sentiment-analysis", "x", &json!({}))
        .await
        .unwrap_err();
    assert!(t0.elapsed() < std::time::Duration::from_secs(15));
    assert!(
        matches!(e, Error::Token(ref m) if m.contains("unreachable")),
        "{e}"
    );
}

fn kid(token: &str) -> String {
    use base64::Engine;
    let head = token.split('.').next().unwrap_or_default();
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(head)
        .unwrap_or_default();
    let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
    v["kid"].as_str().unwrap_or_default().to_string()
}

fn token(w: &World, a: &Registered) -> String {
    let r = w.idp.token_response(a, "skills:invoke");
    assert_eq!(r.status, 200, "{}", r.body);
    let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    v["access_token"].as_str().unwrap().to_string()
}

/// Key rotation at the provider (publish the next key, then sign with it)
/// is picked up by Envoy's remote JWKS without a restart; tokens signed
/// with the old key keep working while it is published.
#[test]
fn a_key_rotation_at_the_provider_is_picked_up_without_restarting_envoy() {
    let w = world();
    let reg = w.idp.register(
        "rotating",
        "support",
        "ml",
        "production",
        &["skills:invoke"],
    );
    let call = |t: &str| {
        w.envoy
            .request(
                "POST",
                "/mcp://sentiment-analysis/x",
                &[("authorization", &format!("Bearer {t}"))],
            )
            .status
    };
    let old = token(&w, &reg);
    assert_eq!(call(&old), 200);
    w.idp.keys("publish");
    let signing = w.idp.keys("sign");
    let new = token(&w, &reg);
    assert_eq!(kid(&new), signing);
    assert_ne!(kid(&new), kid(&old));
    // Within a few cache periods (1 s) Envoy has the new key.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    let mut status = call(&new);
    while status != 200 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(200));
        status = call(&new);
    }
    assert_eq!(status, 200, "the new key was never picked up");
    assert_eq!(call(&old), 200, "the old key is still published");
}

/// With a data file, the provider keeps its registrations across a
/// restart (without one they live in memory: docs/agents.md).
#[test]
fn registrations_survive_a_provider_restart_with_a_data_file() {
    let file = std::env::temp_dir().join(format!("agentplane-idp-{}.json", std::process::id()));
    let _ = std::fs::remove_file(&file);
    let first = IdProvider::start_with("iat-restart", Some(&file));
    let reg = first.register("kept", "support", "ml", "production", &["skills:invoke"]);
    drop(first);
    let second = IdProvider::start_with("iat-restart", Some(&file));
    let r = second.token_response(&reg, "skills:invoke");
    std::fs::remove_file(&file).ok();
    assert_eq!(r.status, 200, "{}", r.body);
}

/// The whole onboarding: `agentplane-agent register` creates the client at
/// the provider and the agent's secret in OpenBao; the agent runs the
/// shipped support workflow through the sidecar (one step refused and
/// recorded, one skipped by its condition); `deregister` removes both, and
/// the agent can no longer get a token.
#[tokio::test(flavor = "multi_thread")]
async fn a_cli_registered_agent_runs_the_support_workflow_then_is_offboarded() {
    let bao = agentplane_e2e::Bao::start();
    // sentiment-analysis gets the agent's API key injected; OpenBao trusts
    // the provider's keys for the agent's own login.
    let cfg = agentplane_e2e::config_with_api_key(
        json!({"cluster": "vault", "authority": "127.0.0.1", "auth_mount": "jwt-idp"}),
        &["sentiment-analysis"],
    );
    let w = world_with(
        &cfg.to_string(),
        &std::collections::HashMap::new(),
        Some(bao.port),
    );
    agentplane_e2e::provider::bao_trusts(&bao, &w.idp, "jwt-idp");
    let vault = format!("http://127.0.0.1:{}", bao.port);
    let out = agentplane_e2e::run_ok(
        cli()
            .args([
                "register",
                "--idp",
                &w.idp.issuer(),
                "--initial-access-token",
            ])
            .arg(&w.idp.initial_access_token)
            .args([
                "--name",
                "support-triage",
                "--type",
                "support",
                "--team",
                "customer-success",
            ])
            .args([
                "--env",
                "production",
                "--perm",
                "skills:invoke",
                "--perm",
                "data:read",
            ])
            .args([
                "--perm",
                "tools:access",
                "--vault",
                &vault,
                "--vault-token",
                &bao.root,
            ])
            .args(["--secret", "api_key=k-123"]),
    );
    let reg: serde_json::Value = serde_json::from_slice(&out).unwrap();
    let id = reg["client_id"].as_str().unwrap().to_string();
    let secret_path = format!("/v1/secret/data/mcp/agents/{id}/credentials");
    assert_eq!(
        bao.api("GET", &secret_path, serde_json::Value::Null)["data"]["data"]["api_key"],
        "k-123"
    );

    let registered = Registered {
        client_id: id.clone(),
        client_secret: reg["client_secret"].as_str().unwrap().into(),
    };
    let a = agent(&w, &registered, "skills:invoke data:read tools:access");
    let text = std::fs::read_to_string(
        agentplane_e2e::repo_root().join("examples/workflows/support.yaml"),
    )
    .unwrap();
    let wf = agentplane_agent::Workflow::parse(&text).unwrap();
    let inputs = json!({"customer_id": "42", "ticket_text": "my order is broken"});
    let outputs = a
        .run(&wf, inputs.as_object().unwrap().clone())
        .await
        .unwrap();
    // The echo service answers with what it received.
    assert_eq!(outputs["customer"]["path"], "/customers/42");
    assert_eq!(outputs["sentiment"]["method"], "POST");
    // The secret registration put in OpenBao was injected for this agent.
    let injected = w
        .upstream
        .seen()
        .iter()
        .find(|s| s.path == "/analyze")
        .and_then(|s| s.one("x-api-key"));
    assert_eq!(injected.as_deref(), Some("k-123"));
    // save-note needs data:write: refused, recorded, the run went on.
    assert_eq!(outputs["save-note"]["error"]["status"], 403);
    assert!(outputs["save-note"]["error"]["decision_id"].is_string());
    // The sentiment was not "negative": escalate was skipped.
    assert!(outputs.get("related").is_none());
    // Every call of the run is one trace.
    let traces: std::collections::BTreeSet<String> = w
        .upstream
        .seen()
        .iter()
        .filter_map(|s| s.one("traceparent"))
        .map(|t| t.split('-').nth(1).unwrap_or_default().to_string())
        .collect();
    assert_eq!(traces.into_iter().collect::<Vec<_>>(), [a.trace_id()]);

    agentplane_e2e::run_ok(
        cli()
            .args(["deregister", "--idp", &w.idp.issuer()])
            .args(["--admin-token", &w.idp.admin_token])
            .args([
                "--client-id",
                &id,
                "--vault",
                &vault,
                "--vault-token",
                &bao.root,
            ]),
    );
    assert_eq!(
        w.idp.token_response(&registered, "skills:invoke").status,
        401
    );
    let gone = agentplane_e2e::http(
        bao.port,
        "GET",
        &secret_path,
        &[("x-vault-token", &bao.root)],
        "",
    );
    assert_eq!(gone.status, 404, "{}", gone.body);
}

/// The SDK's MCP session (rmcp's client) with a provider-issued token: the
/// tickets skill behind Envoy + agentplane lists only what the agent may
/// call, runs an allowed tool, and refuses a forbidden one with the
/// policy's reason.
#[tokio::test(flavor = "multi_thread")]
async fn the_sdk_speaks_mcp_through_the_sidecar_with_a_provider_token() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let skill_port = listener.local_addr().unwrap().port();
    tokio::spawn(agentplane_skills::serve(listener));
    let mut cfg: serde_json::Value = serde_json::from_str(&default_plugin_config()).unwrap();
    agentplane_e2e::add_tickets_mcp(&mut cfg);
    let ports = std::collections::HashMap::from([("tickets-mcp".to_string(), skill_port)]);
    let w = world_with(&cfg.to_string(), &ports, None);
    let reg = w.idp.register(
        "mcp-agent",
        "support",
        "customer-success",
        "production",
        &["mcp:connect", "tools:list", "tools:call"],
    );
    let a = agent(&w, &reg, "mcp:connect tools:list tools:call");
    let session = a.mcp("tickets-mcp").await.unwrap();
    let mut tools = session.list_tools().await.unwrap();
    tools.sort();
    assert_eq!(tools, ["lookup_ticket", "search_docs", "update_ticket"]);
    let ok = session
        .call_tool(
            "lookup_ticket",
            json!({"team": "customer-success", "id": "T-1"}),
        )
        .await
        .unwrap();
    assert!(ok.to_string().contains("T-1"), "{ok}");
    let refused = session
        .call_tool("run_shell", json!({"command": "id"}))
        .await
        .unwrap_err();
    assert!(
        refused.to_string().contains("run_shell is denied"),
        "{refused}"
    );
    // The SDK reads the refusal out of the tool result: agentplane's,
    // with the decision id to look up.
    let d = refused.denial().expect("a refusal");
    assert!(d.from_agentplane(), "{d:?}");
    session.close().await;
}

/// A client secret the provider does not accept (wrong, or expired) is a
/// clear error naming the client, and nothing is sent to the sidecar.
#[tokio::test(flavor = "multi_thread")]
async fn a_rejected_client_secret_is_a_clear_error() {
    let w = world();
    let mut reg = w
        .idp
        .register("x", "support", "ml", "production", &["skills:invoke"]);
    reg.client_secret = "not-the-secret".into();
    let a = agent(&w, &reg, "skills:invoke");
    let e = a
        .call_skill("sentiment-analysis", "x", &json!({}))
        .await
        .unwrap_err();
    match &e {
        Error::Token(m) => assert!(
            m.contains("refused client")
                && m.contains(&reg.client_id)
                && !m.contains("not-the-secret"),
            "{m}"
        ),
        other => panic!("{other:?}"),
    }
    assert!(w.upstream.seen().is_empty());
}
