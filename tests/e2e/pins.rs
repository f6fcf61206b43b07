//! Tool-definition pinning with real peers: rmcp's client, through Envoy
//! and the release filter, to an rmcp server that changes a tool's
//! description mid-session (`agentplane_skills::changing`). The shipped
//! data pins the tickets-mcp service's tools on first use; the next policy
//! revision (`./build.sh test` builds it) carries a reviewed pin for the
//! changed definition, and is swapped in the way a policy change ships.

use crate::hotswap::{configured, next_wasm};
use agentplane_e2e::deploy::deliver_by_ecds;
use agentplane_e2e::{
    default_plugin_config, render_envoy_routed, repo_root, Envoy, EnvoySetup, Idp, Upstream,
};
use rmcp::model::CallToolRequestParams;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::ServiceExt;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::time::{Duration, Instant};

const SERVICE: &str = "tickets-mcp";

/// The rug pull: after `upgrade`, `search_docs` hides from the list and a
/// call to it is refused with the reason, while the tools that did not
/// change keep working; the swap to a revision whose reviewed pin names
/// the new definition brings it back.
#[test]
fn a_tool_changed_after_it_was_pinned_is_hidden_and_refused_until_a_reviewed_pin_names_it() {
    let next = next_wasm();
    assert!(
        next.exists(),
        "{} is missing: ./build.sh test builds it",
        next.display()
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    let server_port = agentplane_e2e::serve_skill(&rt, agentplane_skills::changing::serve);

    let idp = Idp::new();
    let upstream = Upstream::start_unrecorded();
    let mut cfg: Value = serde_json::from_str(&default_plugin_config()).unwrap();
    agentplane_e2e::add_tickets_mcp(&mut cfg);
    cfg["decision_log"] = json!({"enabled": true, "sample_allowed": 1.0});
    let ports = HashMap::from([(SERVICE.to_string(), server_port)]);
    let mut rendered = render_envoy_routed(
        &EnvoySetup::without_vault(&idp, upstream.port, cfg.to_string()),
        true,
        &ports,
    );
    let dir = deliver_by_ecds(&mut rendered, &cfg.to_string(), "agentplane-pins");
    let envoy = Envoy::start_yaml(&rendered);
    let token = idp.triage_token_with(&["mcp:connect", "tools:list", "tools:call"]);
    let uri = format!("http://127.0.0.1:{}/{SERVICE}/mcp", envoy.port);
    let before = configured(&envoy.log());
    assert!(!before.is_empty(), "{}", envoy.log());

    rt.block_on(async {
        let transport = StreamableHttpClientTransport::from_config(
            StreamableHttpClientTransportConfig::with_uri(uri).auth_header(token),
        );
        let client = ().serve(transport).await.expect("MCP session through Envoy");
        let peer = client.peer().clone();
        let names = || {
            let c = peer.clone();
            async move {
                let mut n: Vec<String> = c
                    .list_tools(Default::default())
                    .await
                    .expect("tools/list")
                    .tools
                    .iter()
                    .map(|t| t.name.to_string())
                    .collect();
                n.sort();
                n
            }
        };
        let call = |name: &'static str| {
            let c = peer.clone();
            async move {
                let args = json!({"query": "vpn"}).as_object().cloned().unwrap();
                c.call_tool(CallToolRequestParams::new(name).with_arguments(args))
                    .await
            }
        };
        // First use pins every tool's definition.
        assert_eq!(names().await, ["get_status", "search_docs", "upgrade"]);
        let ok = call("search_docs").await.expect("a pinned tool runs");
        assert!(format!("{ok:?}").contains("search_docs ran"), "{ok:?}");

        // The server changes search_docs's description mid-session.
        call("upgrade").await.expect("the upgrade runs");
        assert_eq!(names().await, ["get_status", "upgrade"]);
        let refused = call("search_docs").await;
        assert!(
            format!("{refused:?}").contains("tool definition changed since it was pinned"),
            "{refused:?}"
        );
        let still = call("get_status").await.expect("an unchanged tool runs");
        assert!(format!("{still:?}").contains("get_status ran"), "{still:?}");
        let stats = envoy.admin("/stats?filter=tool_pin_changed");
        let changed: u64 = stats
            .lines()
            .find_map(|l| l.split("tool_pin_changed: ").nth(1))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(0);
        assert!(changed >= 2, "a list and a call saw the change: {stats}");

        // A reviewer reads the new definition and pins it: the next policy
        // revision ships it, swapped in like any policy change.
        agentplane_e2e::run_ok(
            std::process::Command::new("sh")
                .arg(repo_root().join("deploy/swap.sh"))
                .arg(&dir)
                .arg(&next),
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        while !configured(&envoy.log()).iter().any(|r| !before.contains(r)) {
            assert!(
                Instant::now() < deadline,
                "no new revision:\n{}",
                envoy.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Until every worker decides with the new revision.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if names().await == ["get_status", "search_docs", "upgrade"] {
                break;
            }
            assert!(Instant::now() < deadline, "the reviewed pin never applied");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let ok = call("search_docs").await.expect("the reviewed tool runs");
        assert!(format!("{ok:?}").contains("search_docs ran"), "{ok:?}");
        let _ = client.cancel().await;
    });
    // The refusal is in the decision log with its reason.
    let refusal = envoy
        .decision_records()
        .into_iter()
        .find(|r| {
            r["result"]
                .to_string()
                .contains("changed since it was pinned")
        })
        .unwrap_or_else(|| panic!("no record of the refusal:\n{}", envoy.log()));
    assert_eq!(refusal["input"]["mcp"]["tool_definition"]["pin"], "changed");
    let _ = std::fs::remove_dir_all(&dir);
}
