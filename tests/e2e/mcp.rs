//! MCP: a POST to a service registered with `"protocol": "mcp"` is decided
//! on its JSON-RPC body, read before anything goes upstream.

use agentplane_e2e::{http, Stack};
use serde_json::{json, Value};

const CALL: &str = r#"{"jsonrpc":"2.0","id":42,"method":"tools/call","params":{"name":"lookup_ticket","arguments":{"team":"customer-success","id":"T-1"}}}"#;

fn stack() -> Stack {
    let mut cfg: Value = serde_json::from_str(&agentplane_e2e::default_plugin_config()).unwrap();
    cfg["resources"]["tickets-mcp"] = json!({
        "type": "tool",
        "protocol": "mcp",
        "resource_uri": "https://gw.example.com/tickets-mcp/mcp",
        "scopes_supported": ["tools:call", "tools:list"],
        "metadata": {"team": "customer-success", "environment": "production"}
    });
    cfg["oauth"] = json!({"authorization_servers": ["https://idp.example.com"]});
    Stack::start_with(&cfg.to_string())
}

/// A token for the service's own resource: the audience it requires.
fn token(s: &Stack, perms: &[&str]) -> String {
    format!(
        "Bearer {}",
        s.idp.agent_token_for(
            "https://gw.example.com/tickets-mcp/mcp",
            "support-triage@clients",
            "customer-success",
            "support",
            "production",
            perms,
        )
    )
}

fn post(s: &Stack, auth: &str, body: &str, extra: &[(&str, &str)]) -> agentplane_e2e::Response {
    let mut h = vec![
        ("authorization", auth),
        ("content-type", "application/json"),
        ("accept", "application/json, text/event-stream"),
    ];
    h.extend_from_slice(extra);
    http(s.envoy.port, "POST", "/mcp://tickets-mcp/mcp", &h, body)
}

/// An allowed tool call reaches the server whole (headers held until the
/// body was read and decided), with the trusted identity.
#[test]
fn an_allowed_tool_call_reaches_the_server_with_its_body() {
    let s = stack();
    let r = post(&s, &token(&s, &["tools:call"]), CALL, &[]);
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.header("x-decision-id").is_some());
    let seen = s.upstream.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].path, "/mcp");
    // The message the policy decided on, re-serialized: the same message.
    assert_eq!(
        serde_json::from_str::<Value>(&seen[0].body).unwrap(),
        serde_json::from_str::<Value>(CALL).unwrap()
    );
    assert_eq!(
        seen[0].one("x-agent-id").as_deref(),
        Some("support-triage@clients")
    );
    assert!(
        seen[0].one("authorization").is_none(),
        "the token stays at the edge"
    );
}

/// A call the agent lacks the scope for is a 403 the client can step up
/// from, its body a JSON-RPC error carrying the request's id, the reason
/// and the decision id; nothing goes upstream.
#[test]
fn a_forbidden_tool_call_is_a_json_rpc_error_and_never_reaches_the_server() {
    let s = stack();
    let r = post(&s, &token(&s, &["tools:list"]), CALL, &[]);
    assert_eq!(r.status, 403, "{r:?}");
    assert!(r
        .header("www-authenticate")
        .unwrap()
        .contains(r#"error="insufficient_scope", scope="tools:call""#));
    let b = r.json();
    assert_eq!(b["jsonrpc"], "2.0");
    assert_eq!(b["id"], 42);
    assert_eq!(b["error"]["code"], -32031);
    assert_eq!(
        b["error"]["data"]["decision_id"].as_str(),
        r.header("x-decision-id")
    );
    assert!(b["error"]["message"]
        .as_str()
        .unwrap()
        .contains("call_tool"));
    assert!(s.upstream.seen().is_empty());
}

/// An allowed tool with arguments the policy forbids (another team's
/// ticket) and a tool on the deny list: refused with the policy's reason,
/// answered as the tool's result marked `isError` (HTTP 200), so the
/// client hands the reason to its model instead of failing the transport.
#[test]
fn an_allowed_tool_with_forbidden_arguments_is_refused_with_the_reason() {
    let s = stack();
    let auth = token(&s, &["tools:call"]);
    let refusal = |r: &agentplane_e2e::Response| {
        assert_eq!(r.status, 200, "{r:?}");
        let b = r.json();
        assert_eq!(b["result"]["isError"], true, "{r:?}");
        let d = &b["result"]["_meta"]["io.agentplane/decision"];
        assert_eq!(d["decision_id"].as_str(), r.header("x-decision-id"));
        let text = b["result"]["content"][0]["text"]
            .as_str()
            .unwrap()
            .to_string();
        assert!(text.contains(r.header("x-decision-id").unwrap()), "{text}");
        (
            b["id"].clone(),
            d["reasons"][0].as_str().unwrap().to_string(),
        )
    };
    let other_team = r#"{"jsonrpc":"2.0","id":"q-7","method":"tools/call","params":{"name":"lookup_ticket","arguments":{"team":"ml","id":"T-9"}}}"#;
    let (id, reason) = refusal(&post(&s, &auth, other_team, &[]));
    assert_eq!(id, "q-7");
    assert_eq!(
        reason,
        "tool lookup_ticket is limited to the agent's own team: argument team must be customer-success"
    );
    let shell = r#"{"jsonrpc":"2.0","id":8,"method":"tools/call","params":{"name":"run_shell","arguments":{"cmd":"id"}}}"#;
    let (_, reason) = refusal(&post(&s, &auth, shell, &[]));
    assert_eq!(reason, "tool run_shell is denied for every agent");
    assert!(s.upstream.seen().is_empty());
}

/// Bodies built to confuse a parser (a second `name`, a batch, a header
/// mirror that names another tool, a body over the limit) are refused with
/// their JSON-RPC code and never reach the server.
#[test]
fn smuggled_tool_names_and_oversized_bodies_never_reach_the_server() {
    let s = stack();
    let auth = token(&s, &["tools:call"]);
    let dup = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"lookup_ticket","name":"delete_all"}}"#;
    let batch = format!("[{CALL}]");
    for (body, extra, status, code) in [
        (dup, vec![], 400, -32700),
        (batch.as_str(), vec![], 400, -32600),
        ("{", vec![], 400, -32700),
        (
            CALL,
            vec![("mcp-method", "tools/call"), ("mcp-name", "harmless")],
            400,
            -32020,
        ),
    ] {
        let r = post(&s, &auth, body, &extra);
        assert_eq!(r.status, status, "{body}: {r:?}");
        assert_eq!(r.json()["error"]["code"], code, "{body}");
        assert!(r.header("x-decision-id").is_some());
    }
    let big = format!(
        r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{{"name":"t","arguments":{{"x":"{}"}}}}}}"#,
        "a".repeat(1_100_000)
    );
    let r = post(&s, &auth, &big, &[]);
    assert_eq!(r.status, 413, "{}", r.body);
    assert!(r.header("x-decision-id").is_some());
    assert!(s.upstream.seen().is_empty());
}

/// The resource-server side of MCP authorization: metadata (RFC 9728)
/// without a token, and a 401 that points to it.
#[test]
fn a_client_without_a_token_is_pointed_to_the_resource_metadata() {
    let s = stack();
    let r = http(
        s.envoy.port,
        "GET",
        "/.well-known/oauth-protected-resource/tickets-mcp/mcp",
        &[],
        "",
    );
    assert_eq!(r.status, 200, "{r:?}");
    let doc = r.json();
    assert_eq!(doc["resource"], "https://gw.example.com/tickets-mcp/mcp");
    assert_eq!(
        doc["authorization_servers"],
        json!(["https://idp.example.com"])
    );
    assert_eq!(doc["scopes_supported"], json!(["tools:call", "tools:list"]));
    let r = http(s.envoy.port, "POST", "/mcp://tickets-mcp/mcp", &[], CALL);
    assert_eq!(r.status, 401, "{r:?}");
    assert_eq!(
        r.header("www-authenticate"),
        Some(
            r#"Bearer resource_metadata="https://gw.example.com/.well-known/oauth-protected-resource/tickets-mcp/mcp", scope="tools:call tools:list""#
        )
    );
    assert!(r.header("x-decision-id").is_some());
    assert!(s.upstream.seen().is_empty());
}

/// `tools/list` answers with only the tools the agent may call, as JSON
/// and as an event stream; the filtered list is marked private.
#[test]
fn a_tool_list_shows_each_agent_only_the_tools_it_may_call() {
    let s = stack();
    let auth = token(&s, &["tools:list", "tools:call"]);
    let list = r#"{"jsonrpc":"2.0","id":5,"method":"tools/list"}"#;
    let result = r#"{"jsonrpc":"2.0","id":5,"result":{"tools":[{"name":"search_docs"},{"name":"run_shell"},{"name":"delete_ticket"},{"name":"lookup_ticket"}]}}"#;
    let names = |v: &Value| -> Vec<String> {
        v["result"]["tools"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["name"].as_str().unwrap().to_string())
            .collect()
    };
    let r = post(&s, &auth, list, &[("x-test-reply", result)]);
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(names(&r.json()), ["search_docs", "lookup_ticket"]);
    assert!(r.header("cache-control").unwrap().contains("private"));
    // The same list as a server-sent event.
    let r = post(&s, &auth, list, &[("x-test-reply-sse", result)]);
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r
        .header("content-type")
        .unwrap()
        .starts_with("text/event-stream"));
    let data = r
        .body
        .lines()
        .find_map(|l| l.strip_prefix("data: "))
        .expect("one data line");
    assert_eq!(
        names(&serde_json::from_str(data).unwrap()),
        ["search_docs", "lookup_ticket"]
    );
    assert!(!r.body.contains("run_shell"));
    // A JSON answer without a body has no list to filter: it comes back
    // at once (the headers are not held waiting for a body that never
    // comes).
    let t0 = std::time::Instant::now();
    let r = post(&s, &auth, list, &[("x-test-reply", "")]);
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.body.is_empty(), "{r:?}");
    assert!(
        t0.elapsed() < std::time::Duration::from_secs(5),
        "{:?}",
        t0.elapsed()
    );
    // An agent that may delete tickets sees that tool too.
    let auth = token(&s, &["tools:list", "tools:call", "tickets:delete"]);
    let r = post(&s, &auth, list, &[("x-test-reply", result)]);
    assert_eq!(
        names(&r.json()),
        ["search_docs", "delete_ticket", "lookup_ticket"]
    );
}

/// The real thing: the tickets skill (an rmcp Streamable HTTP server)
/// behind Envoy + agentplane, driven by rmcp's own client. The client
/// lists tools and sees only those the agent may call; a callable tool
/// runs; a tool it may not call, or a callable one with another team's
/// ticket, comes back as an MCP error with the policy's reason.
#[test]
fn an_official_mcp_client_lists_only_its_tools_and_is_refused_per_tool() {
    use rmcp::model::CallToolRequestParams;
    use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
    use rmcp::transport::StreamableHttpClientTransport;
    use rmcp::ServiceExt;

    let rt = tokio::runtime::Runtime::new().unwrap();
    let skill_port = agentplane_e2e::serve_skill(&rt, agentplane_skills::serve);

    let mut cfg: Value = serde_json::from_str(&agentplane_e2e::default_plugin_config()).unwrap();
    agentplane_e2e::add_tickets_mcp(&mut cfg);
    let Stack {
        idp,
        upstream: _up,
        envoy,
    } = Stack::build(&cfg.to_string())
        .vault(1)
        .route("tickets-mcp", skill_port)
        .start();
    let token = idp.triage_token_with(&["mcp:connect", "tools:list", "tools:call"]);
    let uri = format!("http://127.0.0.1:{}/tickets-mcp/mcp", envoy.port);
    rt.block_on(async move {
        let transport = StreamableHttpClientTransport::from_config(
            StreamableHttpClientTransportConfig::with_uri(uri).auth_header(token),
        );
        let client = ().serve(transport).await.expect("MCP session through Envoy");
        let mut tools: Vec<String> = client
            .list_tools(Default::default())
            .await
            .expect("tools/list")
            .tools
            .iter()
            .map(|t| t.name.to_string())
            .collect();
        tools.sort();
        assert_eq!(tools, ["lookup_ticket", "search_docs", "update_ticket"]);

        let args = |v: Value| v.as_object().cloned().unwrap();
        let ok = client
            .call_tool(
                CallToolRequestParams::new("search_docs")
                    .with_arguments(args(json!({"query": "vpn"}))),
            )
            .await
            .expect("an allowed tool runs");
        assert!(format!("{ok:?}").contains("articles match"), "{ok:?}");

        let denied = client
            .call_tool(
                CallToolRequestParams::new("delete_ticket")
                    .with_arguments(args(json!({"team": "customer-success", "id": "T-1"}))),
            )
            .await
            .expect_err("delete_ticket needs tickets:delete");
        // rmcp reads the 403's insufficient_scope challenge: the client
        // learns which scope to ask for.
        assert!(
            format!("{denied:?}").contains(r#"required_scope: Some("tickets:delete")"#),
            "{denied:?}"
        );
        // Another team's ticket: the policy's answer is the tool's result,
        // marked as an error, with the reason the model reads.
        let other_team = client
            .call_tool(
                CallToolRequestParams::new("lookup_ticket")
                    .with_arguments(args(json!({"team": "ml", "id": "T-9"}))),
            )
            .await
            .expect("another team's ticket: a tool result, not a transport error");
        assert_eq!(other_team.is_error, Some(true), "{other_team:?}");
        assert!(
            format!("{other_team:?}").contains("limited to the agent's own team"),
            "{other_team:?}"
        );
        let _ = client.cancel().await;
    });
}
