//! Envoy's configuration: `envoy/envoy.yaml` filled in for a test
//! ([`EnvoySetup`] → [`RenderedEnvoy`]), the routes and clusters of the
//! registered services, jwt_authn's audiences, and the variants tests run
//! (no filter, some services on their own ports, an Istio inbound route,
//! more workers).

use super::yaml::{self, AGENT_LISTENER, WASM_FILTER};
use crate::{free_port, Idp};
use crate::{repo_root, wasm_path, AUDIENCE, ISSUER};
use serde_json::{json, Value};
use std::collections::HashMap;

/// Fills `${NAME}` placeholders. A placeholder alone on its line is replaced
/// by the value's lines, each indented like the placeholder.
pub fn render(template: &str, vars: &HashMap<&str, String>) -> String {
    let mut out = String::new();
    for line in template.lines() {
        let trimmed = line.trim_start();
        let indent = &line[..line.len() - trimmed.len()];
        let whole = vars
            .iter()
            .find(|(k, _)| trimmed.trim_end() == format!("${{{k}}}"));
        if let Some((_, v)) = whole {
            for l in v.lines() {
                out.push_str(indent);
                out.push_str(l);
                out.push('\n');
            }
            continue;
        }
        let mut l = line.to_string();
        for (k, v) in vars {
            l = l.replace(&format!("${{{k}}}"), v);
        }
        out.push_str(&l);
        out.push('\n');
    }
    assert!(!out.contains("${"), "unfilled placeholder in:\n{out}");
    out
}

/// A filled-in Envoy configuration. Envoy binds its listener and admin
/// ports itself (port 0) and the harness reads them back, so no port is
/// picked in one place and bound in another.
pub struct RenderedEnvoy {
    /// The YAML.
    pub yaml: String,
    /// Worker threads (`--concurrency`), 1 unless a test wants more.
    pub workers: u32,
    /// Environment of the Envoy process (the VM sees the names listed in
    /// `vm_config.environment_variables.host_env_keys`).
    pub env: Vec<(String, String)>,
}

/// The registered service names of a plugin configuration.
pub fn registered_services(plugin_config: &str) -> Vec<String> {
    let v: Value = serde_json::from_str(plugin_config).unwrap_or(Value::Null);
    v.get("resources")
        .and_then(Value::as_object)
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default()
}

/// jwt_authn's `audiences` for a plugin configuration, as a YAML flow
/// list: the gateway's [`AUDIENCE`], then each registered service's own
/// (its `audience`, else its `resource_uri`), unless
/// `identity.audience_mode` is `"gateway"`. The filter then tells them
/// apart per service.
pub fn jwt_audiences(plugin_config: &str) -> String {
    let v: Value = serde_json::from_str(plugin_config).unwrap_or(Value::Null);
    let mut all = vec![AUDIENCE.to_string()];
    let gateway = v["identity"]["audience_mode"].as_str() == Some("gateway");
    for r in v["resources"]
        .as_object()
        .into_iter()
        .flat_map(|m| m.values())
    {
        let own = match (&r["audience"], &r["resource_uri"]) {
            (Value::String(a), _) => vec![a.clone()],
            (Value::Array(a), _) => a
                .iter()
                .filter_map(|x| x.as_str().map(str::to_owned))
                .collect(),
            (_, Value::String(u)) => vec![u.clone()],
            _ => Vec::new(),
        };
        for a in own.into_iter().filter(|_| !gateway) {
            if !all.contains(&a) {
                all.push(a);
            }
        }
    }
    Value::from(all).to_string()
}

/// The route `timeout` of a plain (not MCP) service: how long a whole
/// response may take, its last byte included.
pub const ROUTE_TIMEOUT: &str = "30s";

/// The route `idle_timeout` of an MCP service. Its route has no
/// whole-response limit (`timeout: 0s`): an MCP client's GET listen
/// stream is meant to stay open, and a tools/call may be answered by a
/// long event stream (progress notifications). A stream that carries no
/// byte for this long is still reset, so a dead upstream does not hold a
/// connection forever.
pub const MCP_IDLE_TIMEOUT: &str = "300s";

/// The services of a plugin configuration spoken to as MCP
/// (`"protocol": "mcp"`).
pub fn mcp_services(plugin_config: &str) -> Vec<String> {
    let v: Value = serde_json::from_str(plugin_config).unwrap_or(Value::Null);
    v.get("resources")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter(|(_, r)| r["protocol"].as_str() == Some("mcp"))
                .map(|(k, _)| k.clone())
                .collect()
        })
        .unwrap_or_default()
}

/// The route and cluster blocks for each service of a plugin
/// configuration: routes match the service agentplane authorized
/// (`x-agentplane-service`), clusters point at `port_of(service)`. A plain
/// service's route ends a response after `route_timeout`
/// ([`ROUTE_TIMEOUT`] but in tests); an MCP service's has no such limit,
/// only [`MCP_IDLE_TIMEOUT`].
pub fn service_blocks(
    plugin_config: &str,
    route_timeout: &str,
    port_of: impl Fn(&str) -> u16,
) -> (String, String) {
    let mcp = mcp_services(plugin_config);
    let mut routes = String::new();
    let mut clusters = String::new();
    for s in registered_services(plugin_config) {
        let timeouts = if mcp.contains(&s) {
            format!("timeout: 0s, idle_timeout: {MCP_IDLE_TIMEOUT}")
        } else {
            format!("timeout: {route_timeout}")
        };
        routes.push_str(&format!(
            "- match:\n    prefix: \"/\"\n    headers:\n    - name: x-agentplane-service\n      string_match: {{ exact: \"{s}\" }}\n  route: {{ cluster: \"service.{s}\", {timeouts} }}\n"
        ));
        clusters.push_str(&format!(
            "- name: \"service.{s}\"\n  type: STATIC\n  connect_timeout: 2s\n  load_assignment:\n    cluster_name: \"service.{s}\"\n    endpoints:\n    - lb_endpoints:\n      - endpoint:\n          address:\n            socket_address: {{ address: 127.0.0.1, port_value: {} }}\n",
            port_of(&s)
        ));
    }
    (routes, clusters)
}

/// Fills `envoy/envoy.yaml`: every registered service reaches
/// `setup.upstream_port`. Without `with_filter` the agentplane wasm filter
/// is cut out (the benchmark's jwt_authn-only arm).
pub fn render_envoy(setup: &EnvoySetup, with_filter: bool) -> RenderedEnvoy {
    render_envoy_routed(setup, with_filter, &HashMap::new())
}

/// [`render_envoy`] with some services on their own upstream ports.
pub fn render_envoy_routed(
    setup: &EnvoySetup,
    with_filter: bool,
    ports: &HashMap<String, u16>,
) -> RenderedEnvoy {
    render_envoy_timed(setup, with_filter, ports, ROUTE_TIMEOUT)
}

/// [`render_envoy_routed`] with plain services' routes ending a response
/// after `route_timeout` instead of [`ROUTE_TIMEOUT`]: a test of what that
/// limit cuts need not wait 30 s.
pub fn render_envoy_timed(
    setup: &EnvoySetup,
    with_filter: bool,
    ports: &HashMap<String, u16>,
    route_timeout: &str,
) -> RenderedEnvoy {
    let mut vars = HashMap::new();
    vars.insert("LISTEN_PORT", "0".to_string());
    vars.insert("ADMIN_PORT", "0".to_string());
    vars.insert("VAULT_PORT", setup.vault_port.to_string());
    vars.insert("ISSUER", ISSUER.to_string());
    vars.insert("AUDIENCES", jwt_audiences(&setup.plugin_config));
    vars.insert("JWKS", setup.jwks.clone());
    let (routes, clusters) = service_blocks(&setup.plugin_config, route_timeout, |s| {
        ports.get(s).copied().unwrap_or(setup.upstream_port)
    });
    vars.insert("SERVICE_ROUTES", routes);
    vars.insert("SERVICE_CLUSTERS", clusters);
    vars.insert("WASM", wasm_path().display().to_string());
    vars.insert("PLUGIN_CONFIG", setup.plugin_config.clone());
    let template = std::fs::read_to_string(repo_root().join("envoy/envoy.yaml")).unwrap();
    let mut r = RenderedEnvoy {
        workers: 1,
        yaml: render(&template, &vars),
        env: Vec::new(),
    };
    if !with_filter {
        r.edit(|v| yaml::remove_http_filter(yaml::listener(v, AGENT_LISTENER), WASM_FILTER));
    }
    r
}

/// Values for `envoy/envoy.yaml`'s placeholders.
pub struct EnvoySetup {
    /// JWKS JSON.
    pub jwks: String,
    /// Upstream port.
    pub upstream_port: u16,
    /// agentplane's JSON configuration.
    pub plugin_config: String,
    /// OpenBao's port (the `vault` cluster); any closed port when unused.
    pub vault_port: u16,
}

impl EnvoySetup {
    /// A setup without OpenBao (its cluster points at a closed port): the
    /// identity provider's keys, one upstream, a plugin configuration.
    pub fn without_vault(idp: &Idp, upstream_port: u16, plugin_config: String) -> EnvoySetup {
        EnvoySetup {
            jwks: idp.jwks(),
            upstream_port,
            plugin_config,
            vault_port: free_port(),
        }
    }
}

/// `envoy/envoy.yaml` routed as an Istio sidecar's inbound listener is:
/// one route delivers every request to the pod (`setup.upstream_port`,
/// cluster `inbound`), whatever its path or `x-agentplane-service` says.
pub fn render_envoy_inbound(setup: &EnvoySetup) -> RenderedEnvoy {
    let mut r = render_envoy(setup, true);
    r.edit(|v| {
        let routes = yaml::routes(yaml::listener(v, AGENT_LISTENER));
        // The service routes go; the last route (anything else: 403) stays.
        let last = routes.pop().expect("the catch-all route");
        assert!(last.get("direct_response").is_some(), "{last}");
        *routes = vec![
            json!({"match": {"prefix": "/"}, "route": {"cluster": "inbound", "timeout": "30s"}}),
            last,
        ];
        yaml::clusters(v).push(yaml::loopback_cluster("inbound", setup.upstream_port));
    });
    assert!(!r.yaml.contains("name: x-agentplane-service"));
    r
}
