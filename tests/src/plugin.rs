//! agentplane's plugin configuration as the tests and the demo use it:
//! `envoy/agentplane.json`, and the additions most tests make (the
//! agents' API key from OpenBao, the tickets MCP skill).

use crate::repo_root;
use serde_json::{json, Value};

/// The demo/test plugin configuration (`envoy/agentplane.json`).
pub fn default_plugin_config() -> String {
    std::fs::read_to_string(repo_root().join("envoy/agentplane.json")).unwrap()
}

/// `envoy/agentplane.json` with the decision log on (records in Envoy's
/// log), as most tests that read decisions run it.
pub fn logged_plugin_config() -> Value {
    let mut cfg: Value = serde_json::from_str(&default_plugin_config()).unwrap();
    cfg["decision_log"] = json!({"enabled": true});
    cfg
}

/// The KV secret every test and demo agent has in OpenBao, injected as
/// `x-api-key` (see [`Bao::put_agent_secret`]).
pub fn api_key_secret() -> Value {
    json!({"kv": "secret/data/mcp/agents/{agent}/credentials", "field": "api_key", "header": "x-api-key"})
}

/// `envoy/agentplane.json` with this `vault` section and the agents' API
/// key injected into requests to each of `services`.
pub fn config_with_api_key(vault: Value, services: &[&str]) -> Value {
    let mut cfg: Value = serde_json::from_str(&default_plugin_config()).unwrap();
    cfg["vault"] = vault;
    for s in services {
        cfg["resources"][*s]["secrets"] = json!([api_key_secret()]);
    }
    cfg
}

/// Registers the tickets skill (an MCP server, `agentplane_skills::serve`)
/// in a plugin configuration as the MCP service `tickets-mcp`.
pub fn add_tickets_mcp(cfg: &mut Value) {
    add_mcp_service(cfg, "tickets-mcp");
}

/// Registers an MCP server as the service `name`: a tool of team
/// customer-success in production, spoken to as MCP.
pub fn add_mcp_service(cfg: &mut Value, name: &str) {
    cfg["resources"][name] = json!({
        "type": "tool", "protocol": "mcp",
        "metadata": {"team": "customer-success", "environment": "production"}
    });
}
