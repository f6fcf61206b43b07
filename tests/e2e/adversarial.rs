//! Attacks against the shipped `envoy/envoy.yaml` and filter, one test per
//! defect class, each named after the attack it stops. Every one of them
//! failed against the filter and config that came before. By concern:
//! [`requests`], what a request can carry (bytes, paths, headers, scopes);
//! [`failures`], what a failing dependency or VM can do to other requests
//! (a collector, a stalled Vault, a trap).

use agentplane_e2e::envoy::yaml;
use agentplane_e2e::{
    default_plugin_config, free_port, registered_services, render_envoy_routed, send_raw, Envoy,
    EnvoySetup, Idp, Response, Upstream,
};
use std::collections::HashMap;

mod failures;
mod requests;

/// Envoy with the shipped config, every registered service on its own
/// upstream (so a test can tell which service received a request).
struct Routed {
    idp: Idp,
    upstreams: HashMap<String, Upstream>,
    envoy: Envoy,
}

impl Routed {
    fn start_with(plugin_config: &str, wasm: Option<&str>, fail_closed: bool) -> Routed {
        let idp = Idp::new();
        let mut upstreams = HashMap::new();
        for s in registered_services(plugin_config) {
            upstreams.insert(s, Upstream::start());
        }
        let ports = upstreams.iter().map(|(k, u)| (k.clone(), u.port)).collect();
        let mut r = render_envoy_routed(
            &EnvoySetup::without_vault(&idp, free_port(), plugin_config.to_string()),
            true,
            &ports,
        );
        if let Some(w) = wasm {
            r.set_wasm(w);
        }
        if fail_closed {
            r.edit(|v| {
                let wasm = yaml::wasm_config(yaml::listener(v, yaml::AGENT_LISTENER));
                assert_eq!(wasm["failure_policy"], "FAIL_RELOAD");
                wasm["failure_policy"] = "FAIL_CLOSED".into();
            });
        }
        let envoy = Envoy::start_yaml(&r);
        Routed {
            idp,
            upstreams,
            envoy,
        }
    }

    fn start() -> Routed {
        Routed::start_with(&default_plugin_config(), None, false)
    }

    fn token(&self, team: &str, perms: &[&str]) -> String {
        format!(
            "Bearer {}",
            self.idp.agent_token(
                "support-triage@clients",
                team,
                "support",
                "production",
                perms
            )
        )
    }

    fn seen(&self, service: &str) -> Vec<agentplane_e2e::Seen> {
        self.upstreams[service].seen()
    }

    fn total_seen(&self) -> usize {
        self.upstreams.values().map(|u| u.seen().len()).sum()
    }

    /// A POST with exactly these header bytes (see [`raw_request`]).
    fn post_raw(&self, path: &str, headers: &[(&[u8], &[u8])]) -> Response {
        send_raw(self.envoy.port, &raw_request(path, headers)).unwrap()
    }

    fn clear(&self) {
        for u in self.upstreams.values() {
            u.clear();
        }
    }
}

fn raw_request(path: &str, headers: &[(&[u8], &[u8])]) -> Vec<u8> {
    let mut req =
        format!("POST {path} HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n").into_bytes();
    for (k, v) in headers {
        req.extend_from_slice(k);
        req.extend_from_slice(b": ");
        req.extend_from_slice(v);
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"content-length: 0\r\n\r\n");
    req
}
