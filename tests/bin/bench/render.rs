//! Each arm's Envoy configuration: the shipped one, edited as YAML (no
//! request access log, the decision logger only where the filter writes
//! records to it; without agentplane, one route; the arm's filters in
//! agentplane's place, from `envoy/bench/`).

use super::*;
use agentplane_e2e::envoy::yaml;
use agentplane_e2e::render_envoy;
use serde_json::{json, Value};

/// A filter snippet from `envoy/bench/`: a list of HTTP filters.
pub(crate) fn snippet(file: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(repo_root().join("envoy/bench").join(file)).unwrap();
    yaml::parse(&text)
        .as_array()
        .cloned()
        .unwrap_or_else(|| panic!("envoy/bench/{file} is not a list of filters"))
}

/// Where a filter stands in a listener's HTTP filter chain.
pub(crate) fn filter_at(listener: &mut Value, name: &str) -> usize {
    yaml::http_filters(listener)
        .iter()
        .position(|f| f["name"] == name)
        .unwrap_or_else(|| panic!("no {name} in the filter chain"))
}

pub(crate) fn render(arm: &Arm, setup: &EnvoySetup) -> agentplane_e2e::RenderedEnvoy {
    let mut setup2 = EnvoySetup {
        jwks: setup.jwks.clone(),
        upstream_port: setup.upstream_port,
        plugin_config: setup.plugin_config.clone(),
        vault_port: setup.vault_port,
    };
    if let Some(pc) = &arm.plugin_config {
        setup2.plugin_config = pc.clone();
    }
    let mut r = render_envoy(&setup2, true);
    r.edit(|v| {
        let l = yaml::listener(v, yaml::AGENT_LISTENER);
        // No request access log in any arm: log I/O would dilute every
        // filter's cost. An arm whose records go through Envoy's access
        // log keeps the shipped decision logger (its cost is the sink's).
        let logs = yaml::hcm(l)
            .as_object_mut()
            .and_then(|m| m.remove("access_log"))
            .expect("the shipped config's access log");
        if access_log_sink(arm) {
            let decisions = logs
                .as_array()
                .into_iter()
                .flatten()
                .find(|x| {
                    x["typed_config"]["log_format"]["text_format_source"]["inline_string"]
                        .as_str()
                        .is_some_and(|f| f.starts_with("agentplane-decision "))
                })
                .expect("the shipped config's decision logger")
                .clone();
            yaml::hcm(l)["access_log"] = json!([decisions]);
        }
        if arm.kind != Kind::Filter {
            // Without agentplane nothing names the authorized service: route
            // every request to one service, as the chain it replaces did.
            // The last route (the one that answers 403 itself) goes.
            let routes = yaml::routes(l);
            routes.pop();
            routes.push(json!({"match": {"prefix": "/"},
                "route": {"cluster": "service.hello-skill",
                    "timeout": agentplane_e2e::ROUTE_TIMEOUT}}));
        }
        if let Ok(rt) = std::env::var("AGENTPLANE_BENCH_RUNTIME") {
            yaml::wasm_config(l)["vm_config"]["runtime"] =
                json!(format!("envoy.wasm.runtime.{rt}"));
        }
        let (w, rt) = (
            filter_at(l, yaml::WASM_FILTER),
            filter_at(l, yaml::ROUTER_FILTER),
        );
        match arm.kind {
            Kind::Router => {
                let j = filter_at(l, yaml::JWT_FILTER);
                yaml::http_filters(l).drain(j..rt);
            }
            Kind::Jwt => {
                yaml::http_filters(l).drain(w..rt);
            }
            Kind::Rbac => {
                yaml::http_filters(l).splice(w..rt, snippet("rbac.yaml"));
            }
            Kind::Lua => {
                yaml::http_filters(l).splice(w..rt, snippet("seed_lua.yaml"));
            }
            Kind::Floor => yaml::set_wasm(l, &noop_wasm()),
            Kind::Filter => {
                if let Some(path) = &arm.wasm {
                    yaml::set_wasm(l, path);
                }
            }
        }
    });
    r
}

/// Whether the arm's filter hands its records to Envoy's access log.
fn access_log_sink(arm: &Arm) -> bool {
    arm.plugin_config
        .as_deref()
        .and_then(|c| serde_json::from_str::<Value>(c).ok())
        .is_some_and(|c| c["decision_log"]["sink"] == "access_log")
}

/// The do-nothing filter (`./build.sh bench` builds it).
pub(crate) fn noop_wasm() -> String {
    std::env::var("AGENTPLANE_NOOP_WASM").unwrap_or_else(|_| {
        repo_root()
            .join("target/wasm32-wasip1/release/noop.wasm")
            .display()
            .to_string()
    })
}
