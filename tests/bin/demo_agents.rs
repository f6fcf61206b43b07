//! The demo's second half: an agent onboarded at the real identity
//! provider with `agentplane-agent register`, running the seed's support
//! workflow through the sidecar with the SDK, then offboarded.

use agentplane_agent::{Agent, ClientCredentials, SystemClock, TokenCache, Workflow};
use agentplane_e2e::provider::{bao_trusts, use_provider, IdProvider};
use agentplane_e2e::{Bao, Envoy, EnvoySetup, Upstream, AUDIENCE};

use serde_json::{json, Value};

fn cli(args: &[&str]) -> Value {
    let bin = agentplane_e2e::repo_root().join("target/debug/agentplane-agent");
    let out = std::process::Command::new(&bin)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}", bin.display()));
    assert!(
        out.status.success(),
        "agentplane-agent {}: {}",
        args.first().unwrap_or(&""),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
}

pub fn onboarding(rt: &tokio::runtime::Runtime, bao: &Bao, mask: fn(&str) -> String) {
    println!("\n--- agents from a real identity provider ---");
    let idp = IdProvider::start();
    println!(
        "identity provider (oidc-provider) on {}: client credentials, RS256 JWTs for {AUDIENCE}",
        idp.issuer()
    );
    bao_trusts(bao, &idp, "jwt-idp");
    let cfg = agentplane_e2e::config_with_api_key(
        json!({"cluster": "vault", "authority": "127.0.0.1", "auth_mount": "jwt-idp"}),
        &["sentiment-analysis"],
    );
    // The sample services, for real: sentiment from the text, customers,
    // search results (skills/src/samples.rs).
    let samples = agentplane_e2e::serve_skill(rt, agentplane_skills::samples::serve);
    let ports: std::collections::HashMap<String, u16> = [
        "hello-skill",
        "sentiment-analysis",
        "customer-lookup",
        "web-search",
        "model-registry",
    ]
    .iter()
    .map(|s| (s.to_string(), samples))
    .collect();
    let upstream = Upstream::start();
    let mut r = agentplane_e2e::render_envoy_routed(
        &EnvoySetup {
            jwks: "{}".into(),
            upstream_port: upstream.port,
            plugin_config: cfg.to_string(),
            vault_port: bao.port,
        },
        true,
        &ports,
    );
    use_provider(&mut r, &idp);
    let envoy = Envoy::start_yaml(&r);
    println!(
        "Envoy on 127.0.0.1:{} verifies the provider's tokens with remote JWKS",
        envoy.port
    );

    let vault = format!("http://127.0.0.1:{}", bao.port);
    let issuer = idp.issuer();
    let reg = cli(&[
        "register",
        "--idp",
        &issuer,
        "--initial-access-token",
        &idp.initial_access_token,
        "--name",
        "support-triage",
        "--type",
        "support",
        "--team",
        "customer-success",
        "--env",
        "production",
        "--perm",
        "skills:invoke",
        "--perm",
        "data:read",
        "--perm",
        "tools:access",
        "--vault",
        &vault,
        "--vault-token",
        &bao.root,
        "--secret",
        "api_key=sk-onboarded-51e0c2",
    ]);
    let id = reg["client_id"].as_str().unwrap_or_default().to_string();
    let secret = reg["client_secret"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    println!(
        "agentplane-agent register -> client_id {id}, client_secret {} (printed once), its API key in OpenBao",
        mask(&secret)
    );

    let creds = ClientCredentials::new(&idp.token_url(), &id, &secret)
        .resource(AUDIENCE)
        .scope("skills:invoke data:read tools:access");
    let agent = Agent::new(
        &format!("http://127.0.0.1:{}", envoy.port),
        TokenCache::new(creds, SystemClock),
    );
    let text = std::fs::read_to_string(
        agentplane_e2e::repo_root().join("examples/workflows/support.yaml"),
    )
    .unwrap();
    let wf = Workflow::parse(&text).unwrap();
    println!(
        "running workflow {} ({} steps, trace {})",
        wf.name,
        wf.steps.len(),
        agent.trace_id()
    );
    let inputs = json!({"customer_id": "42", "ticket_text": "my order arrived broken"});
    let outputs = rt
        .block_on(agent.run(&wf, inputs.as_object().cloned().unwrap_or_default()))
        .unwrap();
    for step in &wf.steps {
        match outputs.get(&step.name) {
            Some(v) if v.get("error").is_some() => println!(
                "  {:<18} refused: HTTP {} {} (decision {})",
                step.name,
                v["error"]["status"],
                v["error"]["reason"].as_str().unwrap_or(""),
                v["error"]["decision_id"].as_str().unwrap_or("")
            ),
            Some(v) => println!("  {:<18} -> {v}", step.name),
            None => println!("  {:<18} skipped (its condition did not hold)", step.name),
        }
    }
    let key = outputs["sentiment"]["api_key_received"] == json!(true);
    println!("  sentiment-analysis got the agent's API key from its own OpenBao login: {key}");
    assert!(key, "the secret was not injected");
    drop(upstream);

    cli(&[
        "deregister",
        "--idp",
        &issuer,
        "--admin-token",
        &idp.admin_token,
        "--client-id",
        &id,
        "--vault",
        &vault,
        "--vault-token",
        &bao.root,
    ]);
    let again = Agent::new(
        &format!("http://127.0.0.1:{}", envoy.port),
        TokenCache::new(
            ClientCredentials::new(&idp.token_url(), &id, &secret).resource(AUDIENCE),
            SystemClock,
        ),
    );
    match rt.block_on(again.call_skill("sentiment-analysis", "analyze", &json!({}))) {
        Err(e) => println!("agentplane-agent deregister -> the agent gets no token: {e}"),
        Ok(_) => panic!("a deregistered agent got through"),
    }
}
