//! The MCP arms: the same body through agentplane to a plain service and
//! as an MCP `tools/call`, and `tools/list` filtered, beside Envoy's
//! native MCP filter.

use super::*;
use agentplane_e2e::envoy::yaml;

/// One MCP arm: name, path, body, the upstream's answer, Envoy's native
/// MCP filter in front, the arm it is compared with, and another filter
/// build (`AGENTPLANE_BENCH_EXTRA`) in place of the current one.
pub(crate) type McpArm<'a> = (
    String,
    &'a str,
    &'a str,
    Option<&'a str>,
    bool,
    usize,
    Option<String>,
);

/// The MCP arm: the same ~1 KB POST through agentplane, once to a
/// plain service (S4P: the body streams through unread) and once as an
/// MCP `tools/call` to a service with `"protocol": "mcp"` (S4M: the body
/// is buffered, parsed and becomes `input.mcp`). One token, a constant
/// body: the difference is the MCP machinery, not the policy.
pub(crate) fn mcp_arms(
    setup: &EnvoySetup,
    base_config: &str,
    secs: u32,
    reps: usize,
    warmup: u32,
    idp: &Idp,
) {
    let mut cfg: serde_json::Value = serde_json::from_str(base_config).unwrap();
    agentplane_e2e::add_tickets_mcp(&mut cfg);
    // The same kind of service without pinned tool definitions (the
    // shipped data pins tickets-mcp on first use): what pinning costs.
    agentplane_e2e::add_mcp_service(&mut cfg, "docs-mcp");
    let cfg = cfg.to_string();
    let token = idp.triage_token_with(&["skills:invoke", "tools:call", "tools:list"]);
    let args = format!(
        r#"{{"team":"customer-success","id":"T-1","note":"{}"}}"#,
        "x".repeat(900)
    );
    let body = format!(
        r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{{"name":"lookup_ticket","arguments":{args}}}}}"#
    );
    // tools/list with 50 tools in the server's answer (the echo upstream
    // answers with x-test-reply), 10 of them denied by the shipped rules.
    let tools: Vec<String> = (0..50)
        .map(|i| {
            let name = match i % 5 {
                0 => format!("run_shell_{i}"),
                _ => format!("tool_{i}"),
            };
            format!(r#"{{"name":"{name}","description":"tool number {i}","inputSchema":{{"type":"object"}}}}"#)
        })
        .collect();
    let list_reply = format!(
        r#"{{"jsonrpc":"2.0","id":1,"result":{{"tools":[{}]}}}}"#,
        tools.join(",")
    );
    let list_body = r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#.to_string();
    let script = |path: &str, body: &str, reply: Option<&str>| {
        let p = std::env::temp_dir().join(format!(
            "agentplane-bench-mcp-{}-{}-{}.lua",
            std::process::id(),
            path.len(),
            body.len()
        ));
        let reply = reply
            .map(|r| format!("wrk.headers[\"x-test-reply\"] = {r:?}\n"))
            .unwrap_or_default();
        std::fs::write(
            &p,
            format!(
                "wrk.method = \"POST\"\nwrk.body = {body:?}\nwrk.headers[\"content-type\"] = \"application/json\"\nwrk.headers[\"accept\"] = \"application/json, text/event-stream\"\n{reply}request = function() return wrk.format(nil, {path:?}) end\n"
            ),
        )
        .unwrap();
        p
    };
    // (name, path, body, upstream answer, Envoy's native MCP filter in
    // front, the arm it is compared with)
    let mut arms: Vec<McpArm> = vec![
        (
            "S4P same POST, plain service".into(),
            "/mcp://hello-skill/call",
            &body,
            None,
            false,
            0,
            None,
        ),
        (
            "S4M same POST as MCP tools/call".into(),
            "/mcp://tickets-mcp/mcp",
            &body,
            None,
            false,
            0,
            None,
        ),
        (
            "S4P-list tools/list answer (50 tools), plain service".into(),
            "/mcp://hello-skill/call",
            &list_body,
            Some(&list_reply),
            false,
            2,
            None,
        ),
        (
            "S4M-list tools/list, 50 tools filtered".into(),
            "/mcp://tickets-mcp/mcp",
            &list_body,
            Some(&list_reply),
            false,
            2,
            None,
        ),
        (
            "S4MU same tools/call, service without pins".into(),
            "/mcp://docs-mcp/mcp",
            &body,
            None,
            false,
            0,
            None,
        ),
        (
            "S4MU-list same tools/list, service without pins".into(),
            "/mcp://docs-mcp/mcp",
            &list_body,
            Some(&list_reply),
            false,
            2,
            None,
        ),
        (
            "S4N same POST, plain service, Envoy's MCP filter in front".into(),
            "/mcp://hello-skill/call",
            &body,
            None,
            true,
            0,
            None,
        ),
    ];
    // Another build's MCP arms beside the current ones, over the same
    // plain arms: the difference is what changed between the builds.
    for extra in std::env::var("AGENTPLANE_BENCH_EXTRA")
        .unwrap_or_default()
        .split(',')
    {
        if let Some((name, path)) = extra.split_once('=') {
            arms.push((
                format!("S4M {name}"),
                "/mcp://tickets-mcp/mcp",
                &body,
                None,
                false,
                0,
                Some(path.to_string()),
            ));
            arms.push((
                format!("S4M-list {name}"),
                "/mcp://tickets-mcp/mcp",
                &list_body,
                Some(&list_reply),
                false,
                2,
                Some(path.to_string()),
            ));
        }
    }
    let arm = Arm {
        name: "S4".into(),
        kind: Kind::Filter,
        enforces: true,
        wasm: None,
        plugin_config: Some(cfg),
    };
    let mut rows: Vec<Samples> = arms.iter().map(|_| Samples::default()).collect();
    for rep in 0..reps {
        for k in 0..arms.len() {
            let i = (k + rep) % arms.len();
            let (name, path, b, reply, native, _, wasm) = &arms[i];
            let (path, b, reply, native) = (*path, *b, *reply, *native);
            let arm = Arm {
                wasm: wasm.clone(),
                ..arm.clone()
            };
            let mut rendered = render(&arm, setup);
            if native {
                rendered.edit(|v| {
                    let l = yaml::listener(v, yaml::AGENT_LISTENER);
                    let w = filter_at(l, yaml::WASM_FILTER);
                    yaml::http_filters(l).splice(w..w, snippet("native_mcp.yaml"));
                });
            }
            let envoy = Envoy::start_yaml(&rendered);
            let sc = script(path, b, reply);
            wrk(envoy.port, &token, warmup, &sc);
            let cpu0 = cpu_secs(envoy.pid());
            let run = wrk(envoy.port, &token, secs, &sc);
            let cpu = cpu_secs(envoy.pid()) - cpu0;
            std::fs::remove_file(&sc).ok();
            assert_eq!(run.non2xx, 0, "{name}: every request must be allowed");
            rows[i].rps.push(run.rps);
            rows[i].cpu_us.push(cpu * 1e6 / run.requests as f64);
            eprintln!("MCP rep {rep} {name}: {:.0} req/s", run.rps);
        }
    }
    println!(
        "\nMCP: one ~1 KB tools/call ({} bytes), one token, both arms allowed",
        body.len()
    );
    println!("| arm | req/s (median of {reps}) | Envoy CPU µs/req | added over its plain arm |");
    println!("|---|---|---|---|");
    for ((name, .., base, _), r) in arms.iter().zip(&rows) {
        let cpu = median(r.cpu_us.clone());
        let base = median(rows[*base].cpu_us.clone());
        println!(
            "| {name} | {:.0} | {cpu:.1} | {:.1} |",
            median(r.rps.clone()),
            cpu - base
        );
    }
}
