//! `./build.sh demo`: Envoy with agentplane in front of sample services,
//! a handful of agents, and a transcript of what each call got and why.
//! OpenBao (dev server) holds each agent's API key and issues PostgreSQL
//! credentials; the transcript shows them arriving upstream (masked).
//! It ends with an agent onboarded at the real identity provider running
//! the seed's support workflow (`demo_agents.rs`).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use agentplane_e2e::{Bao, Envoy, Idp, Postgres, Upstream};

#[path = "demo_agents.rs"]
mod demo_agents;
use serde_json::{json, Value};

struct Stack {
    idp: Idp,
    upstream: Upstream,
    envoy: Envoy,
    pg: Postgres,
    _bao: Bao,
}

/// The first characters of a secret, for the transcript.
fn mask(v: &str) -> String {
    let head: String = v.chars().take(6).collect();
    format!("{head}…({} chars)", v.chars().count())
}

/// Who calls, with which token, what, and any extra (spoofed) headers.
type Call<'a> = (
    &'a str,
    Option<&'a str>,
    &'a str,
    &'a str,
    Vec<(&'a str, &'a str)>,
);

fn main() {
    let idp = Idp::new();
    let pg = Postgres::start();
    let bao = Bao::start();
    bao.setup_agents(&idp);
    bao.setup_database(&pg, "1h");
    bao.put_agent_secret(
        "support-triage@clients",
        json!({"api_key": "sk-support-3f9a1c77e2"}),
    );
    bao.put_agent_secret("ml-bot@clients", json!({"api_key": "sk-mlbot-b41d09aa5f"}));
    // The compose stack's configuration too (deploy/compose/envoy.yaml).
    let cfg = agentplane_e2e::deploy::demo_plugin_config("127.0.0.1");
    // The tickets skill: a real MCP server (rmcp), on its own port.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let skill_port = agentplane_e2e::serve_skill(&rt, agentplane_skills::serve);
    let agentplane_e2e::Stack {
        idp,
        upstream,
        envoy,
    } = agentplane_e2e::Stack::build(&cfg.to_string())
        .idp(idp)
        .vault(bao.port)
        .route("tickets-mcp", skill_port)
        .start();
    let s = Stack {
        idp,
        upstream,
        envoy,
        pg,
        _bao: bao,
    };
    println!(
        "agentplane demo: Envoy on 127.0.0.1:{} -> sample services on 127.0.0.1:{}",
        s.envoy.port, s.upstream.port
    );
    println!(
        "OpenBao on 127.0.0.1:{} (agents' API keys; PostgreSQL credentials for 127.0.0.1:{})",
        s._bao.port, s.pg.port
    );
    println!("policy revision {}\n", agentplane_core::bundle::REVISION);

    let support = s.idp.triage_token();
    let ml = s.idp.agent_token(
        "ml-bot@clients",
        "ml",
        "analysis",
        "production",
        &["skills:invoke", "data:read"],
    );
    let staging = s.idp.agent_token(
        "ml-dev@clients",
        "ml",
        "analysis",
        "staging",
        &["skills:invoke", "data:read"],
    );
    let revoked = s.idp.agent_token(
        "revoked-agent@clients",
        "platform",
        "support",
        "production",
        &["skills:invoke"],
    );

    let calls: Vec<Call> = vec![
        (
            "support-triage",
            Some(&support),
            "POST",
            "/mcp://sentiment-analysis/analyze",
            vec![],
        ),
        (
            "support-triage",
            Some(&support),
            "GET",
            "/mcp://customer-lookup/tickets/42",
            vec![("x-agent-id", "root@clients")],
        ),
        (
            "support-triage",
            Some(&support),
            "GET",
            "/mcp://web-search/q?text=refund",
            vec![],
        ),
        (
            "ml-bot",
            Some(&ml),
            "GET",
            "/mcp://customer-lookup/tickets/42",
            vec![],
        ),
        (
            "ml-bot",
            Some(&ml),
            "GET",
            "/mcp://model-registry/models",
            vec![],
        ),
        (
            "ml-bot",
            Some(&ml),
            "POST",
            "/mcp://sentiment-analysis/analyze",
            vec![],
        ),
        (
            "ml-dev (staging)",
            Some(&staging),
            "GET",
            "/mcp://model-registry/models",
            vec![],
        ),
        (
            "revoked-agent",
            Some(&revoked),
            "POST",
            "/mcp://hello-skill/greet",
            vec![],
        ),
        (
            "support-triage",
            Some(&support),
            "GET",
            "/mcp://shadow-it/export",
            vec![],
        ),
        (
            "(no token)",
            None,
            "POST",
            "/mcp://hello-skill/greet",
            vec![],
        ),
    ];
    for (who, token, method, path, extra) in calls {
        let auth = token.map(|t| format!("Bearer {t}"));
        let mut headers: Vec<(&str, &str)> = extra.clone();
        if let Some(a) = &auth {
            headers.push(("authorization", a));
        }
        s.upstream.clear();
        let r = s.envoy.request(method, path, &headers);
        let spoof = if extra.is_empty() {
            String::new()
        } else {
            format!(" (client sent {}: {})", extra[0].0, extra[0].1)
        };
        println!("{who:>18}  {method:<4} {path}{spoof}");
        if r.status == 200 {
            let seen = s.upstream.seen();
            let up = seen.first().expect("upstream saw the allowed call");
            println!(
                "{:>18}  -> {} allowed; upstream got {} with x-agent-id={} x-agent-team={} x-request-id={}",
                "",
                r.status,
                up.path,
                up.one("x-agent-id").unwrap_or_default(),
                up.one("x-agent-team").unwrap_or_default(),
                up.one("x-request-id").unwrap_or_default(),
            );
            if let Some(key) = up.one("x-api-key") {
                println!(
                    "{:>18}     secret from OpenBao: x-api-key={}",
                    "",
                    mask(&key)
                );
            }
            if let (Some(u), Some(p)) = (up.one("x-db-username"), up.one("x-db-password")) {
                let who = s.pg.login(&u, &p, "select current_user").unwrap();
                println!(
                    "{:>18}     database credential: x-db-username={u} x-db-password={} (logs in to PostgreSQL as {who})",
                    "",
                    mask(&p)
                );
            }
        } else {
            let body = r.json();
            println!(
                "{:>18}  -> {} {}: {} (decision {})",
                "",
                r.status,
                body["error"].as_str().unwrap_or(""),
                body["reason"].as_str().unwrap_or(""),
                body["decision_id"].as_str().unwrap_or("")
            );
            assert!(
                s.upstream.seen().is_empty(),
                "a denied call reached upstream"
            );
        }
    }
    // The audit trail: the decision-log record of the web-search denial.
    let t0 = std::time::Instant::now();
    let record = loop {
        let log = s.envoy.log();
        let found = log
            .lines()
            .filter_map(|l| {
                l.split_once("agentplane-decision ")
                    .map(|(_, r)| r.to_string())
            })
            .find(|r| r.contains("\"resource\":\"web-search\""));
        if let Some(r) = found {
            break r;
        }
        assert!(
            t0.elapsed() < std::time::Duration::from_secs(10),
            "no decision record"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let v: Value = serde_json::from_str(&record).unwrap();
    println!(
        "\ndecision log record of the web-search denial (Envoy's log, one line, prefix `agentplane-decision `):\n{}",
        serde_json::to_string_pretty(&v).unwrap()
    );
    mcp_session(&rt, &s);
    demo_agents::onboarding(&rt, &s._bao, mask);
    println!("\nstopping Envoy and the sample services");
}

/// An MCP session through agentplane with rmcp's own client.
fn mcp_session(rt: &tokio::runtime::Runtime, s: &Stack) {
    use rmcp::model::CallToolRequestParams;
    use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
    use rmcp::transport::StreamableHttpClientTransport;
    use rmcp::ServiceExt;
    let token = s
        .idp
        .triage_token_with(&["mcp:connect", "tools:list", "tools:call"]);
    let uri = format!("http://127.0.0.1:{}/tickets-mcp/mcp", s.envoy.port);
    println!("\nan MCP session: support-triage (tools:list, tools:call) with rmcp's client -> Envoy + agentplane -> the tickets skill (an rmcp server with 5 tools)");
    rt.block_on(async move {
        let transport = StreamableHttpClientTransport::from_config(
            StreamableHttpClientTransportConfig::with_uri(uri).auth_header(token),
        );
        let client = ().serve(transport).await.unwrap();
        let tools = client.list_tools(Default::default()).await.unwrap();
        let names: Vec<String> = tools.tools.iter().map(|t| t.name.to_string()).collect();
        println!("  tools/list -> {names:?} (run_shell is denied for everyone, delete_ticket needs tickets:delete)");
        let args = |v: Value| v.as_object().cloned().unwrap();
        for (tool, a) in [
            ("lookup_ticket", json!({"team": "customer-success", "id": "T-1"})),
            ("lookup_ticket", json!({"team": "ml", "id": "T-9"})),
            ("delete_ticket", json!({"team": "customer-success", "id": "T-1"})),
        ] {
            let r = client
                .call_tool(CallToolRequestParams::new(tool).with_arguments(args(a.clone())))
                .await;
            let text = |res: &rmcp::model::CallToolResult| {
                res.content
                    .first()
                    .and_then(|c| c.as_text())
                    .map_or(String::new(), |t| t.text.clone())
            };
            match r {
                // The policy's refusal of a call, as the model reads it.
                Ok(res) if res.is_error == Some(true) => {
                    println!("  tools/call {tool} {a} -> tool error (HTTP 200): {:?}", text(&res))
                }
                Ok(res) => println!("  tools/call {tool} {a} -> allowed: {}", text(&res)),
                Err(e) => println!("  tools/call {tool} {a} -> refused: {e}"),
            }
        }
        let _ = client.cancel().await;
    });
}
