//! Human approval bound to the exact call, end to end with real parts:
//! rmcp's client calls the tickets skill (an rmcp server) through Envoy
//! and the release filter; the shipped policy wants `update_ticket`
//! approved by alice; the filter asks the approval service
//! (`agentplane-approval`) through a callout; alice signs in at the real
//! identity provider (oidc-provider, code flow with PKCE) through the
//! service's page and approves. The identical retry then passes once;
//! the replay, edited arguments and another agent do not.

use agentplane_e2e::approval::OidcClient;
use agentplane_e2e::envoy::yaml;
use agentplane_e2e::idp::browser::Browser;
use agentplane_e2e::provider::{FirstParty, IdProvider};
use agentplane_e2e::{
    default_plugin_config, free_port, render_envoy_routed, Approval, Envoy, EnvoySetup, Idp,
    Upstream,
};
use rmcp::model::CallToolRequestParams;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::ServiceExt;
use serde_json::{json, Value};
use std::collections::HashMap;

const SERVICE: &str = "tickets-mcp";

struct World {
    // Field order: Envoy stops before the service, the service before the
    // provider.
    envoy: Envoy,
    _upstream: Upstream,
    svc: Approval,
    _provider: IdProvider,
    idp: Idp,
    rt: tokio::runtime::Runtime,
}

fn world() -> World {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let skill = agentplane_e2e::serve_skill(&rt, agentplane_skills::serve);
    let port = free_port();
    let client = FirstParty::new(
        "approval-service",
        &format!("http://127.0.0.1:{port}/callback"),
    );
    let provider = IdProvider::start_with_approvers(
        &[("alice", "alice pw"), ("bob", "bob pw")],
        std::slice::from_ref(&client),
    );
    let svc = Approval::start(
        port,
        &OidcClient {
            issuer: provider.issuer(),
            client_id: client.client_id,
            client_secret: client.client_secret,
        },
    );
    let jwk = &svc.jwks()["keys"][0];
    let idp = Idp::new();
    let upstream = Upstream::start_unrecorded();
    let mut cfg: Value = serde_json::from_str(&default_plugin_config()).unwrap();
    agentplane_e2e::add_tickets_mcp(&mut cfg);
    cfg["decision_log"] = json!({"enabled": true, "sample_allowed": 1.0});
    cfg["approval"] = json!({
        "cluster": "approval", "authority": format!("127.0.0.1:{port}"),
        "grant_keys": [{"kid": jwk["kid"], "x": jwk["x"]}],
    });
    let ports = HashMap::from([(SERVICE.to_string(), skill)]);
    let mut rendered = render_envoy_routed(
        &EnvoySetup::without_vault(&idp, upstream.port, cfg.to_string()),
        true,
        &ports,
    );
    rendered.edit(|v| yaml::clusters(v).push(yaml::loopback_cluster("approval", port)));
    rendered
        .env
        .push(("AGENTPLANE_APPROVAL_KEY".into(), svc.filter_key.clone()));
    let envoy = Envoy::start_yaml(&rendered);
    World {
        envoy,
        _upstream: upstream,
        svc,
        _provider: provider,
        idp,
        rt,
    }
}

/// What a tools/call answered: the result's text, or the error's message
/// and data, as one string to look into.
async fn call(uri: &str, token: &str, args: Value) -> String {
    let transport = StreamableHttpClientTransport::from_config(
        StreamableHttpClientTransportConfig::with_uri(uri.to_string()).auth_header(token),
    );
    let client = ().serve(transport).await.expect("MCP session through Envoy");
    let r = client
        .peer()
        .call_tool(
            CallToolRequestParams::new("update_ticket")
                .with_arguments(args.as_object().cloned().unwrap()),
        )
        .await;
    let _ = client.cancel().await;
    match r {
        Ok(r) => serde_json::to_string(&r).unwrap(),
        Err(e) => format!("{e:?}"),
    }
}

/// The approval page a "approval required" answer points to.
fn page_of(answer: &str, svc: &Approval) -> String {
    let base = format!("{}/a/", svc.url());
    let start = answer
        .find(&base)
        .unwrap_or_else(|| panic!("no approval page in {answer}"));
    answer[start..]
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, ':' | '/' | '.' | '-' | '_'))
        .collect()
}

/// The decision records Envoy logged so far.
fn records(envoy: &Envoy) -> Vec<Value> {
    envoy
        .log()
        .lines()
        .filter_map(|l| l.find("{\"agent\"").map(|i| &l[i..]))
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// The whole flow with real peers: asked, approved by alice at the page,
/// passed once with alice on record; the replay, edited arguments and
/// another agent get "approval required", never the tool.
#[test]
fn a_call_approved_by_a_person_passes_once_and_nothing_else_passes_on_it() {
    let w = world();
    let uri = format!("http://127.0.0.1:{}/{SERVICE}/mcp", w.envoy.port);
    let token = w
        .idp
        .triage_token_with(&["mcp:connect", "tools:list", "tools:call"]);
    let args = json!({"team": "customer-success", "id": "T-7"});
    let first = w.rt.block_on(call(&uri, &token, args.clone()));
    assert!(first.contains("approval required"), "{first}");
    assert!(
        !first.contains("updated"),
        "the tool ran unapproved: {first}"
    );
    assert!(!first.contains(&w.svc.filter_key), "{first}");
    let page = page_of(&first, &w.svc);

    // alice signs in through the page and sees exactly the call.
    let mut b = Browser::new();
    let shown = b.sign_in(&page, "alice", "alice pw");
    assert_eq!(shown.response.status, 200, "{}", shown.response.body);
    for what in ["support-triage@clients", SERVICE, "update_ticket", "T-7"] {
        assert!(
            shown.response.body.contains(what),
            "{what}: {}",
            shown.response.body
        );
    }
    let approve = shown
        .forms()
        .into_iter()
        .find(|f| f.action.ends_with("/approve"))
        .expect("an approve form for alice");
    let done = b.submit(&approve, &[]);
    assert!(
        done.response.body.contains("approved by alice"),
        "{}",
        done.response.body
    );

    // Edited arguments: another call, never approved.
    let edited = json!({"team": "customer-success", "id": "T-8"});
    let other = w.rt.block_on(call(&uri, &token, edited));
    assert!(other.contains("approval required"), "{other}");
    assert_ne!(
        page_of(&other, &w.svc),
        page,
        "a new approval for a new call"
    );

    // Another agent, the same arguments: another binding too.
    let analyst = w.idp.agent_token(
        "support-analyst@clients",
        "customer-success",
        "support",
        "production",
        &["mcp:connect", "tools:list", "tools:call"],
    );
    let theirs = w.rt.block_on(call(&uri, &analyst, args.clone()));
    assert!(theirs.contains("approval required"), "{theirs}");

    // The identical call passes, once.
    let passed = w.rt.block_on(call(&uri, &token, args.clone()));
    assert!(
        passed.contains("ticket T-7 of team customer-success updated"),
        "{passed}"
    );
    let replay = w.rt.block_on(call(&uri, &token, args.clone()));
    assert!(replay.contains("approval already used"), "{replay}");
    assert!(!replay.contains("updated"), "{replay}");

    // The record of the call that passed names alice and its binding; no
    // record or log line holds the filter's key.
    let recs = records(&w.envoy);
    let approved: Vec<&Value> = recs
        .iter()
        .filter(|r| r.get("approval").is_some())
        .collect();
    assert_eq!(approved.len(), 1, "{recs:?}");
    assert_eq!(approved[0]["approval"]["approver"], "alice");
    assert_eq!(approved[0]["result"]["allowed"], true);
    assert!(!w.envoy.log().contains(&w.svc.filter_key));
    let stats = w.envoy.admin("/stats?filter=approval");
    assert!(stats.contains("agentplane.approval.granted: 1"), "{stats}");
}

/// A rejection is final for the call: the agent is told who rejected it.
#[test]
fn a_call_rejected_by_its_approver_is_refused_with_who_rejected_it() {
    let w = world();
    let uri = format!("http://127.0.0.1:{}/{SERVICE}/mcp", w.envoy.port);
    let token = w
        .idp
        .triage_token_with(&["mcp:connect", "tools:list", "tools:call"]);
    let args = json!({"team": "customer-success", "id": "T-9"});
    let first = w.rt.block_on(call(&uri, &token, args.clone()));
    let page = page_of(&first, &w.svc);
    let mut b = Browser::new();
    let shown = b.sign_in(&page, "alice", "alice pw");
    let reject = shown
        .forms()
        .into_iter()
        .find(|f| f.action.ends_with("/reject"))
        .expect("a reject form for alice");
    b.submit(&reject, &[]);
    let after = w.rt.block_on(call(&uri, &token, args));
    assert!(after.contains("approval rejected by alice"), "{after}");
    assert!(!after.contains("updated"), "{after}");
}

/// bob signs in fine but is not among the approvers the policy names:
/// the page offers him nothing, and the call stays unapproved.
#[test]
fn someone_the_policy_does_not_name_cannot_approve() {
    let w = world();
    let uri = format!("http://127.0.0.1:{}/{SERVICE}/mcp", w.envoy.port);
    let token = w
        .idp
        .triage_token_with(&["mcp:connect", "tools:list", "tools:call"]);
    let args = json!({"team": "customer-success", "id": "T-10"});
    let first = w.rt.block_on(call(&uri, &token, args.clone()));
    let page = page_of(&first, &w.svc);
    let mut b = Browser::new();
    let shown = b.sign_in(&page, "bob", "bob pw");
    assert_eq!(shown.response.status, 403, "{}", shown.response.body);
    assert!(shown.forms().is_empty());
    let again = w.rt.block_on(call(&uri, &token, args));
    assert!(again.contains("approval required"), "{again}");
}

/// The approval service stopped: the call is refused (503) in bounded
/// time, never passed.
#[test]
fn a_call_needing_approval_fails_closed_when_the_approval_service_is_down() {
    let mut w = world();
    w.svc.terminate();
    let uri = format!("http://127.0.0.1:{}/{SERVICE}/mcp", w.envoy.port);
    let token = w
        .idp
        .triage_token_with(&["mcp:connect", "tools:list", "tools:call"]);
    let t0 = std::time::Instant::now();
    let r = w.rt.block_on(call(
        &uri,
        &token,
        json!({"team": "customer-success", "id": "T-11"}),
    ));
    assert!(t0.elapsed() < std::time::Duration::from_secs(10));
    assert!(
        r.contains("approval_unavailable") || r.contains("503"),
        "{r}"
    );
    assert!(!r.contains("updated"), "{r}");
}
