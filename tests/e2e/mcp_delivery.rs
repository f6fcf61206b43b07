//! What is decided is what is delivered, with real Envoy: the server runs
//! the message the policy saw (an upstream that reads keys as Go does),
//! and every list result a client receives went through the policy, on
//! every stream, also after a pause for secrets.

use agentplane_e2e::{
    add_tickets_mcp, api_key_secret, config_with_api_key, http, Bao, Envoy, EnvoySetup, Idp,
    Response, Upstream,
};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, Command, Stdio};

const TOOLS: &str = r#"{"jsonrpc":"2.0","id":5,"result":{"tools":[{"name":"search_docs"},{"name":"run_shell"},{"name":"delete_ticket"},{"name":"lookup_ticket"}]}}"#;
const LIST: &str = r#"{"jsonrpc":"2.0","id":5,"method":"tools/list"}"#;

/// `tests/mcp/go_keys_server.py`: reads keys as Go's encoding/json does.
struct GoKeys {
    child: Child,
    port: u16,
}

impl GoKeys {
    fn start() -> GoKeys {
        let script = agentplane_e2e::repo_root().join("tests/mcp/go_keys_server.py");
        let mut child = Command::new("python3")
            .arg(script)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line.trim().parse().expect("the server prints its port");
        GoKeys { child, port }
    }

    /// Every body it received, as it received it.
    fn seen(&self) -> Vec<String> {
        let r = http(self.port, "GET", "/seen", &[], "");
        serde_json::from_value(r.json()["seen"].clone()).unwrap()
    }
}

impl Drop for GoKeys {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn mcp_config() -> Value {
    let mut cfg: Value = serde_json::from_str(&agentplane_e2e::default_plugin_config()).unwrap();
    add_tickets_mcp(&mut cfg);
    cfg
}

/// Envoy with agentplane in front of `port`, the tickets MCP service
/// registered.
fn mcp_envoy(idp: &Idp, port: u16) -> Envoy {
    Envoy::start(&EnvoySetup::without_vault(
        idp,
        port,
        mcp_config().to_string(),
    ))
}

fn token(idp: &Idp, perms: &[&str]) -> String {
    let t = idp.triage_token_with(perms);
    format!("Bearer {t}")
}

fn post(port: u16, auth: &str, body: &str, extra: &[(&str, &str)]) -> Response {
    let mut h = vec![
        ("authorization", auth),
        ("content-type", "application/json"),
        ("accept", "application/json, text/event-stream"),
    ];
    h.extend_from_slice(extra);
    http(port, "POST", "/mcp://tickets-mcp/mcp", &h, body)
}

/// Sends a request in two network writes (Envoy buffers the body across
/// them); returns the status line and the body.
fn post_in_two_writes(port: u16, auth: &str, body: &str) -> (String, String) {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_nodelay(true).unwrap();
    let head = format!(
        "POST /mcp://tickets-mcp/mcp HTTP/1.1\r\nhost: localhost\r\nauthorization: {auth}\r\ncontent-type: application/json\r\naccept: application/json, text/event-stream\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    let (a, b) = body.split_at(body.len() / 2);
    s.write_all(format!("{head}{a}").as_bytes()).unwrap();
    s.flush().unwrap();
    // Two TCP segments: Envoy sees the body in two reads.
    std::thread::sleep(std::time::Duration::from_millis(100));
    s.write_all(b.as_bytes()).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
    (
        head.lines().next().unwrap_or("").to_string(),
        body.to_string(),
    )
}

/// The attacks of a case-insensitive server: each body is authorized on
/// one spelling and run on the other by Go's and .NET's decoders. Each is
/// refused at the gateway; an allowed call reaches the server as the
/// message the policy decided on, also when Envoy buffered it in pieces.
#[test]
fn case_variant_keys_cannot_make_a_go_server_run_another_tool_than_the_one_authorized() {
    let idp = Idp::new();
    let go = GoKeys::start();
    let envoy = mcp_envoy(&idp, go.port);
    let auth = token(&idp, &["tools:list", "tools:call"]);
    for body in [
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"lookup_ticket","Name":"delete_all_tickets","arguments":{"team":"customer-success"}}}"#,
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/list","Method":"tools/call","params":{"name":"delete_ticket"}}"#,
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"lookup_ticket","arguments":{"team":"customer-success","Team":"billing"}}}"#,
        "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/list\",\"param\u{17f}\":{\"name\":\"delete_ticket\"}}",
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"lookup_ticket","Arguments":{"team":"billing"}}}"#,
    ] {
        let r = post(envoy.port, &auth, body, &[]);
        assert_eq!(r.status, 400, "{body}: {r:?}");
        assert!(r.header("x-decision-id").is_some());
    }
    assert!(go.seen().is_empty(), "nothing reached the server");
    // Allowed: the server runs lookup_ticket for the agent's own team, and
    // what it received is the parsed message, not the client's bytes.
    let call = "{ \"jsonrpc\":\"2.0\", \"id\":7, \"method\":\"tools/call\", \"params\":{\"name\":\"lookup\\u005fticket\", \"arguments\":{\"team\":\"customer-success\",\"id\":\"T-1\"}} }";
    let r = post(envoy.port, &auth, call, &[]);
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json()["result"]["executed"], "lookup_ticket");
    assert_eq!(r.json()["result"]["team"], "customer-success");
    let (status, body) = post_in_two_writes(envoy.port, &auth, call);
    assert!(status.contains(" 200 "), "{status} {body}");
    let canonical = r#"{"id":7,"jsonrpc":"2.0","method":"tools/call","params":{"arguments":{"id":"T-1","team":"customer-success"},"name":"lookup_ticket"}}"#;
    assert_eq!(go.seen(), [canonical, canonical]);
}

/// An agent's first list, while its secrets are fetched from OpenBao, and
/// every list after, shows only what the policy lets it see.
#[test]
fn the_first_list_while_secrets_are_fetched_is_filtered() {
    let idp = Idp::new();
    let bao = Bao::start();
    bao.setup_agents(&idp);
    bao.put_agent_secret(
        "support-triage@clients",
        json!({"api_key": "sk-list-canary"}),
    );
    let mut cfg = config_with_api_key(
        json!({"cluster": "vault", "authority": "127.0.0.1", "role": "agent", "retries": 1}),
        &[],
    );
    add_tickets_mcp(&mut cfg);
    cfg["resources"]["tickets-mcp"]["secrets"] = json!([api_key_secret()]);
    let upstream = Upstream::start();
    let envoy = Envoy::start(&EnvoySetup {
        jwks: idp.jwks(),
        upstream_port: upstream.port,
        plugin_config: cfg.to_string(),
        vault_port: bao.port,
    });
    let auth = token(&idp, &["tools:list", "tools:call"]);
    for form in ["x-test-reply", "x-test-reply-sse", "x-test-reply"] {
        let r = post(envoy.port, &auth, LIST, &[(form, TOOLS)]);
        assert_eq!(r.status, 200, "{form}: {r:?}");
        assert!(!r.body.contains("run_shell"), "{form}: {}", r.body);
        assert!(r.body.contains("lookup_ticket"), "{form}: {}", r.body);
    }
    let seen = upstream.seen();
    assert_eq!(seen.len(), 3);
    assert!(
        seen.iter()
            .all(|s| s.one("x-api-key").as_deref() == Some("sk-list-canary")),
        "each list waited for (or found) the agent's secret"
    );
    assert_eq!(
        bao.metric("vault_core_handle_login_request_count"),
        1,
        "one login: the first list paused for it"
    );
}

/// Events a lax parser reads (JavaScript's JSON.parse takes a lone
/// surrogate and reads 1e400 as Infinity) but the filter cannot: the
/// stream ends with the JSON-RPC error instead of passing them.
#[test]
fn unreadable_list_events_end_the_stream_instead_of_leaking_the_list() {
    let idp = Idp::new();
    let upstream = Upstream::start();
    let envoy = mcp_envoy(&idp, upstream.port);
    let auth = token(&idp, &["tools:list", "tools:call"]);
    for event in [
        r#"{"jsonrpc":"2.0","id":5,"result":{"tools":[{"name":"run_shell","t":"\udc00"}]}}"#,
        r#"{"jsonrpc":"2.0","id":5,"result":{"tools":[{"name":"run_shell"}],"n":1e400}}"#,
        r#"{"jsonrpc":"2.0","id":5,"result":{"tools":[]},"result":{"tools":[{"name":"run_shell"}]}}"#,
    ] {
        let r = post(envoy.port, &auth, LIST, &[("x-test-reply-sse", event)]);
        assert_eq!(r.status, 200, "{r:?}");
        assert!(!r.body.contains("run_shell"), "{event}: {}", r.body);
        assert!(r.body.contains("unreadable"), "{event}: {}", r.body);
    }
}

/// A list answer replayed on a GET stream (resumption with Last-Event-ID,
/// the server's own stream) cannot be tied to a list request the policy
/// decided: it is refused in place; the stream's other events pass.
#[test]
fn a_list_replayed_on_a_get_stream_is_refused() {
    let idp = Idp::new();
    let upstream = Upstream::start();
    let envoy = mcp_envoy(&idp, upstream.port);
    let auth = token(&idp, &["tools:list", "tools:call", "mcp:connect"]);
    let r = http(
        envoy.port,
        "GET",
        "/mcp://tickets-mcp/mcp",
        &[
            ("authorization", &auth),
            ("accept", "text/event-stream"),
            ("last-event-id", "1"),
            ("x-test-reply-sse", TOOLS),
        ],
        "",
    );
    assert_eq!(r.status, 200, "{r:?}");
    assert!(
        !r.body.contains("run_shell") && !r.body.contains("search_docs"),
        "{}",
        r.body
    );
    assert!(
        r.body.contains("does not answer the list request"),
        "{}",
        r.body
    );
    assert_eq!(upstream.seen().len(), 1, "the stream itself was allowed");
}
