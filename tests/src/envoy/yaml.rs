//! Envoy's configuration edited as YAML: a rendered configuration is
//! parsed into a value (JSON's data model, which is all Envoy's
//! configuration uses), changed through the accessors here, and written
//! back. A test names the node it changes (a listener, an HTTP filter, a
//! cluster), never a run of text and its indentation, so a template's
//! layout or comments can change without breaking an edit.

use super::render::RenderedEnvoy;
use serde_json::{json, Value};

/// The agent-facing listener's name in `envoy/envoy.yaml`.
pub const AGENT_LISTENER: &str = "agent_listener";
/// The agentplane filter's name in the HTTP filter chain.
pub const WASM_FILTER: &str = "envoy.filters.http.wasm";
/// jwt_authn's name in the HTTP filter chain.
pub const JWT_FILTER: &str = "envoy.filters.http.jwt_authn";
/// The router's name in the HTTP filter chain (always last).
pub const ROUTER_FILTER: &str = "envoy.filters.http.router";

/// YAML text as a value; panics (the test's own YAML is wrong) otherwise.
pub fn parse(yaml: &str) -> Value {
    serde_norway::from_str(yaml).unwrap_or_else(|e| panic!("not YAML: {e}\n{yaml}"))
}

/// A value as YAML text.
pub fn to_yaml(v: &Value) -> String {
    serde_norway::to_string(v).unwrap_or_else(|e| panic!("not writable as YAML: {e}"))
}

impl RenderedEnvoy {
    /// Parses the configuration, lets `f` change it, and writes it back.
    pub fn edit<T>(&mut self, f: impl FnOnce(&mut Value) -> T) -> T {
        let mut v = parse(&self.yaml);
        let out = f(&mut v);
        self.yaml = to_yaml(&v);
        out
    }

    /// Adds a static loopback cluster (a collector, a fake Vault).
    pub fn add_cluster(&mut self, name: &str, port: u16) {
        self.edit(|v| clusters(v).push(loopback_cluster(name, port)));
    }
}

/// The node of `list` whose `name` is `name`.
fn named<'a>(list: &'a mut Value, name: &str, what: &str) -> &'a mut Value {
    list.as_array_mut()
        .and_then(|l| l.iter_mut().find(|x| x["name"] == name))
        .unwrap_or_else(|| panic!("no {what} named {name}"))
}

/// `static_resources.listeners`.
pub fn listeners(v: &mut Value) -> &mut Vec<Value> {
    as_list(&mut v["static_resources"]["listeners"], "listeners")
}

/// A listener by name.
pub fn listener<'a>(v: &'a mut Value, name: &str) -> &'a mut Value {
    named(&mut v["static_resources"]["listeners"], name, "listener")
}

/// A listener's HTTP connection manager settings (its one filter chain's
/// one network filter).
pub fn hcm(listener: &mut Value) -> &mut Value {
    &mut listener["filter_chains"][0]["filters"][0]["typed_config"]
}

/// A listener's HTTP filters, in order.
pub fn http_filters(listener: &mut Value) -> &mut Vec<Value> {
    as_list(&mut hcm(listener)["http_filters"], "http_filters")
}

/// A listener's HTTP filter by name.
pub fn http_filter<'a>(listener: &'a mut Value, name: &str) -> &'a mut Value {
    named(&mut hcm(listener)["http_filters"], name, "HTTP filter")
}

/// The agentplane filter's `config` (name, vm_config, configuration).
pub fn wasm_config(listener: &mut Value) -> &mut Value {
    &mut http_filter(listener, WASM_FILTER)["typed_config"]["config"]
}

/// Removes a listener's HTTP filter by name (it must be there).
pub fn remove_http_filter(listener: &mut Value, name: &str) -> Value {
    let filters = http_filters(listener);
    let at = filters
        .iter()
        .position(|f| f["name"] == name)
        .unwrap_or_else(|| panic!("no HTTP filter named {name}"));
    filters.remove(at)
}

/// The routes of a listener's one virtual host, in order.
pub fn routes(listener: &mut Value) -> &mut Vec<Value> {
    as_list(
        &mut hcm(listener)["route_config"]["virtual_hosts"][0]["routes"],
        "routes",
    )
}

/// jwt_authn's provider of the agents' tokens.
pub fn jwt_provider(listener: &mut Value) -> &mut Value {
    &mut http_filter(listener, JWT_FILTER)["typed_config"]["providers"]["agents"]
}

/// `static_resources.clusters`.
pub fn clusters(v: &mut Value) -> &mut Vec<Value> {
    as_list(&mut v["static_resources"]["clusters"], "clusters")
}

/// A static cluster of one loopback endpoint.
pub fn loopback_cluster(name: &str, port: u16) -> Value {
    json!({
        "name": name, "type": "STATIC", "connect_timeout": "1s",
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [
            {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}}}
        ]}]}
    })
}

fn as_list<'a>(v: &'a mut Value, what: &str) -> &'a mut Vec<Value> {
    v.as_array_mut()
        .unwrap_or_else(|| panic!("{what} is not a list"))
}

/// Points a listener's agentplane filter at another build of it.
pub fn set_wasm(listener: &mut Value, path: &str) {
    wasm_config(listener)["vm_config"]["code"]["local"]["filename"] = json!(path);
}

/// Changes a listener's agentplane plugin configuration (the JSON string
/// in the filter's `configuration`) through `f`.
pub fn edit_plugin_config(listener: &mut Value, f: impl FnOnce(&mut Value)) {
    let value = &mut wasm_config(listener)["configuration"]["value"];
    let mut cfg: Value = serde_json::from_str(value.as_str().unwrap_or_default())
        .unwrap_or_else(|e| panic!("the plugin configuration is not JSON: {e}"));
    f(&mut cfg);
    *value = json!(cfg.to_string());
}

impl RenderedEnvoy {
    /// Runs the agent listener's agentplane filter from another build.
    pub fn set_wasm(&mut self, path: &str) {
        self.edit(|v| set_wasm(listener(v, AGENT_LISTENER), path));
    }
}

/// `envoy/tracing.yaml`: the shipped OpenTelemetry tracer block and its
/// collector cluster.
pub fn tracing_snippet() -> Value {
    let text = std::fs::read_to_string(crate::repo_root().join("envoy/tracing.yaml"))
        .unwrap_or_else(|e| panic!("envoy/tracing.yaml: {e}"));
    parse(&text)
}

impl RenderedEnvoy {
    /// Traces the agent listener as `envoy/tracing.yaml` says, exporting
    /// OTLP/HTTP to a collector on loopback `port`.
    pub fn with_tracing(&mut self, port: u16) {
        let snippet = tracing_snippet();
        self.edit(|v| {
            hcm(listener(v, AGENT_LISTENER))["tracing"] = snippet["tracing"].clone();
            let mut cluster = snippet["cluster"].clone();
            cluster["type"] = json!("STATIC");
            cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
                ["socket_address"] = json!({"address": "127.0.0.1", "port_value": port});
            clusters(v).push(cluster);
        });
    }
}
