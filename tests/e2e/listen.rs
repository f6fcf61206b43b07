//! 2026-07-28's change notifications through the filter: a real stateless
//! client and a real server, both the official Python SDK (`mcp` 2.3.0),
//! through Envoy + jwt_authn + agentplane.
//!
//! The server (`tests/clients/py_server.py`) serves `subscriptions/listen`
//! (SEP-2575): the listen request's response is an event stream that
//! carries the acknowledgment, then one notification per change. The
//! client (`tests/clients/py_listen_client.py`) prints one JSON line of what
//! the SDK handed back. The filter maps `subscriptions/listen` to
//! `open_stream` (permission `mcp:connect`) and reads every event of an
//! MCP service's event streams for list results, so the stream's
//! notifications must come through it as the SDK expects them: stamped
//! with the listen request's id, or the SDK drops them. Every subprocess
//! is time-bound and stopped on drop, also when a test fails.

use crate::clients::procs::{python, run, Service};
use agentplane_e2e::{add_mcp_service, repo_root, Envoy, Idp, Stack, Upstream};
use serde_json::{json, Value};
use std::process::Command;
use std::time::Duration;

const SERVICE: &str = "listen-mcp";

/// The Python server behind Envoy + agentplane as `listen-mcp`, registered
/// as tickets-mcp is (`agentplane_e2e::add_tickets_mcp`): an MCP service of
/// the agent's own team, no `resource_uri`, so tokens carry the gateway's
/// audience.
struct Listening {
    envoy: Envoy,
    idp: Idp,
    _upstream: Upstream,
    // Dropped last: stops the server after Envoy.
    _server: Service,
}

impl Listening {
    fn start() -> Listening {
        let dir = repo_root().join("tests/clients");
        let server = Service::start(
            "py-server",
            Command::new(python())
                .arg(dir.join("py_server.py"))
                .current_dir(&dir),
        );
        let mut cfg = agentplane_e2e::logged_plugin_config();
        add_mcp_service(&mut cfg, SERVICE);
        let Stack {
            idp,
            upstream,
            envoy,
        } = Stack::build(&cfg.to_string())
            .route(SERVICE, server.port)
            .start();
        Listening {
            envoy,
            idp,
            _upstream: upstream,
            _server: server,
        }
    }

    /// Runs the client with a token holding `perms`, negotiating `how`
    /// (`discover` or `pinned`), and parses its one JSON line.
    fn client(&self, how: &str, perms: &[&str]) -> Value {
        let dir = repo_root().join("tests/clients");
        let token = self.idp.triage_token_with(perms);
        let url = format!("http://127.0.0.1:{}/mcp://{SERVICE}/mcp", self.envoy.port);
        let (out, err) = run(
            Command::new(python())
                .arg(dir.join("py_listen_client.py"))
                .arg(url)
                .arg(how)
                .current_dir(&dir)
                .env("MCP_TOKEN", token),
            Duration::from_secs(90),
        );
        // Shown with the test's output when it fails.
        eprintln!("py_listen_client.py {how}: {}", out.trim());
        serde_json::from_str(out.trim())
            .unwrap_or_else(|e| panic!("py_listen_client.py {how}: {e}: {out:?}\nstderr:\n{err}"))
    }
}

/// The HTTP exchanges of one JSON-RPC method, as the client recorded them.
fn exchanges<'a>(r: &'a Value, rpc: &str) -> Vec<&'a Value> {
    r["http"]
        .as_array()
        .map(|h| h.iter().filter(|x| x["rpc"] == rpc).collect())
        .unwrap_or_default()
}

/// A 2026-07-28 client discovers the server, lists and calls its tools and
/// opens a listen stream; a tool call on another request changes the tool
/// list, and the change notification reaches the SDK through the filter on
/// that stream (the SDK admits it only with the stream's subscription id,
/// so a rewritten or held event fails here), after which the new tool is
/// listed and callable. A token without `mcp:connect` may still list but is
/// refused the listen as MCP authorization says: 403 `insufficient_scope`
/// naming the scope to step up to.
#[test]
fn a_2026_07_28_client_discovers_lists_calls_and_listens_for_changes_through_the_filter() {
    let l = Listening::start();
    let r = l.client("discover", &["mcp:connect", "tools:list", "tools:call"]);
    assert!(r.get("connect").is_none(), "{r}");
    assert_eq!(r["negotiated"], "2026-07-28", "{r}");
    assert_eq!(r["tools"], json!(["add_tool", "echo"]), "{r}");
    let listen = &r["listen"];
    assert_eq!(listen["honored"], json!({"toolsListChanged": true}), "{r}");
    assert_eq!(
        listen["call"],
        json!({"isError": false, "text": "added greet"}),
        "{r}"
    );
    assert_eq!(listen["event"], "ToolsListChanged", "{r}");
    assert_eq!(
        r["tools_after"],
        json!(["add_tool", "echo", "greet"]),
        "{r}"
    );
    assert_eq!(
        r["greet"],
        json!({"isError": false, "text": "hello"}),
        "{r}"
    );
    // Stateless: discovered, never initialized, no session to end; every
    // request named the era and was answered.
    let http = r["http"].as_array().unwrap();
    assert_eq!(exchanges(&r, "server/discover").len(), 1, "{r}");
    for x in http {
        assert_eq!(x["method"], "POST", "{x}");
        assert_ne!(x["rpc"], "initialize", "{x}");
        assert_eq!(x["version"], "2026-07-28", "{x}");
        assert_eq!(x["status"], 200, "{x}");
    }
    let streams = exchanges(&r, "subscriptions/listen");
    assert_eq!(streams.len(), 1, "{r}");
    let content_type = streams[0]["content_type"].as_str().unwrap_or_default();
    assert!(content_type.starts_with("text/event-stream"), "{r}");
    // The filter decided the listen as the action docs/mcp.md names.
    let records = l.envoy.decision_records();
    let decided: Vec<&Value> = records
        .iter()
        .filter(|d| d["input"]["mcp"]["method"] == "subscriptions/listen")
        .collect();
    assert_eq!(decided.len(), 1, "{records:?}");
    assert_eq!(
        decided[0]["input"]["action"], "open_stream",
        "{}",
        decided[0]
    );
    assert_eq!(decided[0]["result"]["allowed"], true, "{}", decided[0]);

    // Without mcp:connect the client may not discover either, so it adopts
    // 2026-07-28 without a probe; listing works, the listen does not.
    let r = l.client("pinned", &["tools:list", "tools:call"]);
    assert!(r.get("connect").is_none(), "{r}");
    let tools = r["tools"].as_array().cloned().unwrap_or_default();
    assert!(tools.contains(&json!("echo")), "{r}");
    assert_eq!(r["listen"]["threw"], "MCPError", "{r}");
    assert_eq!(r["listen"]["code"], -32031, "{r}");
    let refused = exchanges(&r, "subscriptions/listen");
    assert_eq!(refused.len(), 1, "{r}");
    assert_eq!(refused[0]["status"], 403, "{r}");
    let challenge = refused[0]["www_authenticate"].as_str().unwrap_or_default();
    assert!(
        challenge.contains("error=\"insufficient_scope\"")
            && challenge.contains("scope=\"mcp:connect\""),
        "{challenge:?} in {r}"
    );
    assert!(exchanges(&r, "server/discover").is_empty(), "{r}");
}
