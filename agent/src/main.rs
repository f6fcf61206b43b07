//! `agentplane-agent`: onboard and offboard agents, and run workflows.
//!
//! ```text
//! agentplane-agent register --idp URL --initial-access-token T --name N \
//!     --type support --team customer-success --env production \
//!     --perm skills:invoke --perm data:read \
//!     [--vault URL --vault-token T --secret api_key=...]
//! agentplane-agent deregister --idp URL --admin-token T --client-id ID \
//!     [--vault URL --vault-token T]
//! agentplane-agent check WORKFLOW.yaml
//! agentplane-agent run WORKFLOW.yaml --idp URL --client-id ID \
//!     [--sidecar http://localhost:15000] [--scope "a b"] --input k=v ...
//!     (the client secret from AGENTPLANE_CLIENT_SECRET)
//! ```
//!
//! `register` prints the client id and its secret once, as JSON: keep
//! them; nothing else has the secret. It prints nothing that manages the
//! registration: changing an agent's grants or deleting it takes the
//! provider's administrator token (`deregister --admin-token`).

use agentplane_agent::{Agent, ClientCredentials, SystemClock, TokenCache, Workflow};
use serde_json::{json, Map, Value};
use std::process::ExitCode;

const AUDIENCE: &str = "https://mcp.example.com/";
const KV_PREFIX: &str = "secret/data/mcp/agents";

struct Args {
    positional: Vec<String>,
    flags: Vec<(String, String)>,
}

impl Args {
    fn parse(raw: impl Iterator<Item = String>) -> Result<Args, String> {
        let mut positional = Vec::new();
        let mut flags = Vec::new();
        let mut it = raw.peekable();
        while let Some(a) = it.next() {
            match a.strip_prefix("--") {
                Some(name) => {
                    let v = it.next().ok_or_else(|| format!("--{name} needs a value"))?;
                    flags.push((name.to_string(), v));
                }
                None => positional.push(a),
            }
        }
        Ok(Args { positional, flags })
    }

    fn one(&self, name: &str) -> Option<&str> {
        self.flags
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    fn need(&self, name: &str) -> Result<&str, String> {
        self.one(name)
            .ok_or_else(|| format!("--{name} is required"))
    }

    fn all(&self, name: &str) -> Vec<&str> {
        self.flags
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

fn pairs(items: &[&str]) -> Result<Map<String, Value>, String> {
    items
        .iter()
        .map(|kv| {
            kv.split_once('=')
                .map(|(k, v)| (k.to_string(), Value::String(v.to_string())))
                .ok_or_else(|| format!("{kv:?} is not key=value"))
        })
        .collect()
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(10))
        .build()
        .unwrap_or_default()
}

async fn answer(r: reqwest::Result<reqwest::Response>, what: &str) -> Result<Value, String> {
    let r = r.map_err(|e| format!("{what}: {e}"))?;
    let status = r.status();
    let body = r.text().await.unwrap_or_default();
    if !status.is_success() {
        return Err(format!("{what}: HTTP {status}: {body}"));
    }
    Ok(serde_json::from_str(&body).unwrap_or(Value::Null))
}

async fn register(a: &Args) -> Result<(), String> {
    let idp = a.need("idp")?.trim_end_matches('/');
    let discovery = answer(
        http()
            .get(format!("{idp}/.well-known/openid-configuration"))
            .send()
            .await,
        "identity provider discovery",
    )
    .await?;
    let reg_endpoint = discovery
        .get("registration_endpoint")
        .and_then(Value::as_str)
        .ok_or("the provider offers no dynamic registration")?;
    let body = json!({
        "client_name": a.need("name")?,
        "grant_types": ["client_credentials"],
        "response_types": [],
        "token_endpoint_auth_method": "client_secret_basic",
        "agent_type": a.need("type")?,
        "team": a.need("team")?,
        "environment": a.need("env")?,
        "permissions": a.all("perm"),
    });
    let reg = answer(
        http()
            .post(reg_endpoint)
            .bearer_auth(a.need("initial-access-token")?)
            .json(&body)
            .send()
            .await,
        "registration",
    )
    .await?;
    let client_id = reg
        .get("client_id")
        .and_then(Value::as_str)
        .ok_or("no client_id in the answer")?;
    if let Some(vault) = a.one("vault") {
        let secret = pairs(&a.all("secret"))?;
        let url = format!(
            "{}/v1/{KV_PREFIX}/{client_id}/credentials",
            vault.trim_end_matches('/')
        );
        answer(
            http()
                .post(url)
                .header("x-vault-token", a.need("vault-token")?)
                .json(&json!({ "data": secret }))
                .send()
                .await,
            "OpenBao (the agent's initial secret)",
        )
        .await?;
    }
    // The agent's own credentials only: a registration access token, if a
    // provider hands one out, could rewrite the agent's grants (RFC 7592).
    println!(
        "{}",
        json!({
            "client_id": client_id,
            "client_secret": reg.get("client_secret").cloned().unwrap_or(Value::Null),
        })
    );
    Ok(())
}

async fn deregister(a: &Args) -> Result<(), String> {
    let id = a.need("client-id")?;
    let mut url = reqwest::Url::parse(a.need("idp")?).map_err(|e| format!("--idp: {e}"))?;
    url.path_segments_mut()
        .map_err(|()| "--idp: not a base URL".to_string())?
        .pop_if_empty()
        .extend(["admin", "clients", id]);
    let r = http()
        .delete(url)
        .bearer_auth(a.need("admin-token")?)
        .send()
        .await
        .map_err(|e| format!("deregistration: {e}"))?;
    if r.status().as_u16() != 204 {
        return Err(format!("deregistration: HTTP {}", r.status()));
    }
    if let Some(vault) = a.one("vault") {
        let meta = KV_PREFIX.replacen("/data/", "/metadata/", 1);
        let url = format!("{}/v1/{meta}/{id}/credentials", vault.trim_end_matches('/'));
        let r = http()
            .delete(url)
            .header("x-vault-token", a.need("vault-token")?)
            .send()
            .await
            .map_err(|e| format!("OpenBao: {e}"))?;
        if !r.status().is_success() {
            return Err(format!("OpenBao: HTTP {}", r.status()));
        }
    }
    println!("{}", json!({"deregistered": true}));
    Ok(())
}

fn load(a: &Args) -> Result<Workflow, String> {
    let file = a.positional.get(1).ok_or("which workflow file?")?;
    let text = std::fs::read_to_string(file).map_err(|e| format!("{file}: {e}"))?;
    Workflow::parse(&text).map_err(|e| format!("{file}:{e}"))
}

async fn run(a: &Args) -> Result<(), String> {
    let wf = load(a)?;
    let secret = std::env::var("AGENTPLANE_CLIENT_SECRET")
        .map_err(|_| "AGENTPLANE_CLIENT_SECRET is not set".to_string())?;
    let idp = a.need("idp")?.trim_end_matches('/');
    let mut creds = ClientCredentials::new(&format!("{idp}/token"), a.need("client-id")?, &secret)
        .resource(a.one("audience").unwrap_or(AUDIENCE));
    if let Some(s) = a.one("scope") {
        creds = creds.scope(s);
    }
    let agent = Agent::new(
        a.one("sidecar").unwrap_or("http://localhost:15000"),
        TokenCache::new(creds, SystemClock),
    );
    let inputs = pairs(&a.all("input"))?;
    eprintln!("workflow {} (trace {})", wf.name, agent.trace_id());
    let out = agent.run(&wf, inputs).await.map_err(|e| e.to_string())?;
    println!("{}", Value::Object(out));
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = match Args::parse(std::env::args().skip(1)) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("agentplane-agent: {e}");
            return ExitCode::from(2);
        }
    };
    let result = match args.positional.first().map(String::as_str) {
        Some("register") => register(&args).await,
        Some("deregister") => deregister(&args).await,
        Some("check") => {
            load(&args).map(|wf| println!("{}: {} steps, ok", wf.name, wf.steps.len()))
        }
        Some("run") => run(&args).await,
        _ => Err(
            "usage: agentplane-agent {register|deregister|check|run} ... (see docs/agents.md)"
                .into(),
        ),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("agentplane-agent: {e}");
            ExitCode::FAILURE
        }
    }
}
