//! The ready-to-mount Envoy configurations, rendered from the one
//! template (`envoy/envoy.yaml`) and the one plugin configuration
//! (`envoy/agentplane.json`) that the demo and the tests use:
//!
//! - `deploy/compose/envoy.yaml`: the compose stack's (hostnames of its
//!   services, the filter mounted at `/etc/agentplane/agentplane.wasm`);
//! - `envoy/example/envoy.yaml`: your own Envoy next to services on
//!   loopback, run from the repository root.
//!
//! Both are checked in; `./build.sh render` writes them again and
//! `./build.sh test` fails when a checked-in copy differs from a fresh
//! render, so neither can drift from what the tests run.

use crate::envoy::yaml;
use crate::{jwt_audiences, registered_services, render, repo_root};
use serde_json::{json, Value};
use std::collections::HashMap;

/// The demo's plugin configuration, the compose stack's too:
/// `envoy/agentplane.json` plus the agent's API key from OpenBao on
/// sentiment-analysis, PostgreSQL logins on model-registry, the decision
/// log (through Envoy's access log), and the tickets MCP skill. `vault_authority` is how OpenBao is
/// addressed (`:authority` of the callouts).
pub fn demo_plugin_config(vault_authority: &str) -> Value {
    let mut cfg = crate::config_with_api_key(
        json!({"cluster": "vault", "authority": vault_authority}),
        &["sentiment-analysis"],
    );
    // Records through Envoy's access log (envoy.yaml's decision logger).
    cfg["decision_log"] = json!({"enabled": true, "sink": "access_log"});
    cfg["resources"]["model-registry"]["secrets"] = json!([
        {"database": "database/creds/readonly", "username_header": "x-db-username", "password_header": "x-db-password"}
    ]);
    crate::add_tickets_mcp(&mut cfg);
    cfg
}

/// Where one rendered configuration points.
pub struct Profile {
    /// Output path, relative to the repository root.
    pub out: &'static str,
    /// The address Envoy's agent-facing listener binds (in a container:
    /// every interface; the compose file publishes it on the host's
    /// loopback only). The admin interface is not configurable: it always
    /// binds 127.0.0.1 (see [`render_profile`]).
    pub bind: &'static str,
    /// The agent-facing port.
    pub listen: u16,
    /// Admin port.
    pub admin: u16,
    /// The filter's path as Envoy sees it.
    pub wasm: &'static str,
    /// OpenBao's host and port.
    pub vault: (&'static str, u16),
    /// The identity provider (issuer URL; its JWKS is `<issuer>/jwks`).
    pub idp: (&'static str, u16),
    /// Every sample service's host and port.
    pub skills: (&'static str, u16),
    /// The tickets MCP skill's host and port.
    pub tickets: (&'static str, u16),
    /// A listener on every interface serving only the admin interface's
    /// `/stats/prometheus`, for a Prometheus in another container (see
    /// [`stats_listener`]); none where Prometheus can reach the admin
    /// interface on loopback.
    pub stats: Option<u16>,
    /// The fleet-wide rate limit service's host and gRPC port: Envoy's
    /// rate limit filter after agentplane asks it (`envoy/ratelimit/`).
    pub ratelimit: Option<(&'static str, u16)>,
}

/// The compose stack's Envoy.
pub const COMPOSE: Profile = Profile {
    out: "deploy/compose/envoy.yaml",
    bind: "0.0.0.0",
    listen: 15000,
    admin: 9901,
    wasm: "/etc/agentplane/agentplane.wasm",
    vault: ("openbao", 8200),
    idp: ("idp", 3000),
    skills: ("skills", 8080),
    tickets: ("tickets", 8001),
    stats: Some(9902),
    ratelimit: Some(("ratelimit", 8081)),
};

/// Your own Envoy beside services on loopback.
pub const EXAMPLE: Profile = Profile {
    out: "envoy/example/envoy.yaml",
    bind: "127.0.0.1",
    listen: 15000,
    admin: 9901,
    wasm: "target/agentplane.wasm",
    vault: ("127.0.0.1", 8200),
    idp: ("127.0.0.1", 3000),
    skills: ("127.0.0.1", 8080),
    tickets: ("127.0.0.1", 8001),
    stats: None,
    ratelimit: None,
};

fn cluster(name: &str, host: &str, port: u16, indent: &str) -> String {
    let kind = if host.parse::<std::net::IpAddr>().is_ok() {
        "STATIC"
    } else {
        "STRICT_DNS"
    };
    let body = format!(
        "- name: \"{name}\"\n  type: {kind}\n  connect_timeout: 2s\n  load_assignment:\n    cluster_name: \"{name}\"\n    endpoints:\n    - lb_endpoints:\n      - endpoint:\n          address:\n            socket_address: {{ address: {host}, port_value: {port} }}\n"
    );
    body.lines()
        .map(|l| format!("{indent}{l}\n"))
        .collect::<String>()
}

/// Renders one profile.
pub fn render_profile(p: &Profile) -> String {
    let template = std::fs::read_to_string(repo_root().join("envoy/envoy.yaml")).unwrap();
    let vault_authority = if p.vault.0.parse::<std::net::IpAddr>().is_ok() {
        p.vault.0.to_string()
    } else {
        format!("{}:{}", p.vault.0, p.vault.1)
    };
    let plugin = serde_json::to_string_pretty(&demo_plugin_config(&vault_authority)).unwrap();
    let issuer = format!("http://{}:{}", p.idp.0, p.idp.1);
    let services = registered_services(&plugin);
    let (routes, _) = crate::service_blocks(&plugin, crate::ROUTE_TIMEOUT, |_| p.skills.1);
    let clusters: String = services
        .iter()
        .map(|s| {
            let (host, port) = if s == "tickets-mcp" {
                p.tickets
            } else {
                p.skills
            };
            cluster(&format!("service.{s}"), host, port, "")
        })
        .collect();
    let mut vars = HashMap::new();
    vars.insert("LISTEN_PORT", p.listen.to_string());
    vars.insert("ADMIN_PORT", p.admin.to_string());
    vars.insert("VAULT_PORT", p.vault.1.to_string());
    vars.insert("ISSUER", issuer.clone());
    vars.insert("AUDIENCES", jwt_audiences(&plugin));
    vars.insert("JWKS", String::new());
    vars.insert("SERVICE_ROUTES", routes);
    vars.insert("SERVICE_CLUSTERS", clusters);
    vars.insert("WASM", p.wasm.to_string());
    vars.insert("PLUGIN_CONFIG", plugin);
    let mut y = render(&template, &vars);
    // jwt_authn fetches the provider's keys itself: no key in the file.
    let a = y.find("                  local_jwks:").unwrap();
    let b = a + y[a..].find("                  from_headers:").unwrap();
    y.replace_range(
        a..b,
        &format!(
            "                  remote_jwks:\n                    http_uri: {{ uri: \"{issuer}/jwks\", cluster: idp, timeout: 2s }}\n                    cache_duration: 300s\n                    async_fetch: {{}}\n"
        ),
    );
    // OpenBao and the provider by name.
    let vault_static = format!(
        "  - name: vault\n    type: STATIC\n    connect_timeout: 1s\n    load_assignment:\n      cluster_name: vault\n      endpoints:\n      - lb_endpoints:\n        - endpoint:\n            address:\n              socket_address: {{ address: 127.0.0.1, port_value: {} }}\n",
        p.vault.1
    );
    assert!(y.contains(&vault_static), "the template's vault cluster");
    let named = format!(
        "{}{}",
        cluster("vault", p.vault.0, p.vault.1, "  "),
        cluster("idp", p.idp.0, p.idp.1, "  ")
    );
    y = y.replace(&vault_static, &named);
    // Only the listener follows `bind`. The admin interface (which can
    // quit Envoy, drain its listeners and dump its config, secrets
    // included) stays on the container's or host's own loopback: reach it
    // with `docker-compose exec envoy`, never over a network.
    let at = format!("address: 127.0.0.1, port_value: {} }}", p.listen);
    assert_eq!(
        y.matches(&at).count(),
        1,
        "the template binds the listener once"
    );
    y = y.replace(
        &at,
        &format!("address: {}, port_value: {} }}", p.bind, p.listen),
    );
    let admin = format!("address: 127.0.0.1, port_value: {} }}", p.admin);
    assert_eq!(
        y.matches(&admin).count(),
        1,
        "the template's admin on loopback"
    );
    if let Some(at) = p.ratelimit {
        y = crate::fleet::with_fleet_limits_text(&y, at);
    }
    if let Some(port) = p.stats {
        y = stats_listener(&y, p.admin, port);
    }
    let header = format!(
        "# GENERATED by `./build.sh render` from envoy/envoy.yaml and\n# envoy/agentplane.json: edit those, then render again (`./build.sh test`\n# fails while this copy differs). Filter: {}.\n",
        p.wasm
    );
    header + &y
}

/// Adds the `stats` listener: `GET /stats/prometheus` on `port`, every
/// interface, proxied to the admin interface on loopback; any other path
/// or method is a 404 from Envoy itself. Prometheus in another container
/// scrapes it, while the admin interface (which can quit Envoy and dump
/// its configuration) stays on loopback.
fn stats_listener(y: &str, admin: u16, port: u16) -> String {
    let at = "\n  clusters:\n";
    assert_eq!(y.matches(at).count(), 1, "the template's clusters, once");
    let listener = format!(
        "\n  # Prometheus's scrape target: /stats/prometheus of the admin interface,\n  # nothing else of it (docs/operations.md).\n  - name: stats\n    address:\n      socket_address: {{ address: 0.0.0.0, port_value: {port} }}\n    filter_chains:\n    - filters:\n      - name: envoy.filters.network.http_connection_manager\n        typed_config:\n          \"@type\": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager\n          stat_prefix: stats\n          route_config:\n            name: stats\n            virtual_hosts:\n            - name: stats\n              domains: [\"*\"]\n              routes:\n              - match:\n                  path: /stats/prometheus\n                  headers: [{{ name: \":method\", string_match: {{ exact: GET }} }}]\n                route: {{ cluster: admin_stats }}\n              - match: {{ prefix: / }}\n                direct_response: {{ status: 404 }}\n          http_filters:\n          - name: envoy.filters.http.router\n            typed_config:\n              \"@type\": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
    );
    let cluster = cluster("admin_stats", "127.0.0.1", admin, "  ");
    y.replacen(at, &format!("{listener}{at}{cluster}"), 1)
}

/// The ECDS document (a `DiscoveryResponse`) that delivers the filter to
/// an Envoy loading it through `config_discovery` from a file: the same
/// filter settings as `envoy/envoy.yaml`'s static one.
pub fn ecds_document(wasm: &str, plugin_config: &str) -> String {
    let config = serde_json::to_string(plugin_config).unwrap_or_default();
    format!(
        "# agentplane's filter, delivered by Envoy's extension config discovery\n\
         # from this file; deploy/swap.sh replaces it atomically.\n\
         version_info: \"1\"\n\
         resources:\n\
         - \"@type\": type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig\n\
         \x20 name: agentplane\n\
         \x20 typed_config:\n\
         \x20   \"@type\": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm\n\
         \x20   config:\n\
         \x20     name: agentplane\n\
         \x20     root_id: agentplane\n\
         \x20     failure_policy: FAIL_RELOAD\n\
         \x20     allow_on_headers_stop_iteration: true\n\
         \x20     vm_config:\n\
         \x20       vm_id: agentplane\n\
         \x20       runtime: envoy.wasm.runtime.v8\n\
         \x20       environment_variables:\n\
         \x20         host_env_keys: [\"AGENTPLANE_VAULT_TOKEN\"]\n\
         \x20       code:\n\
         \x20         local:\n\
         \x20           filename: \"{wasm}\"\n\
         \x20     configuration:\n\
         \x20       \"@type\": type.googleapis.com/google.protobuf.StringValue\n\
         \x20       value: {config}\n"
    )
}

/// A rendered Envoy config whose agentplane filter comes from
/// `<dir>/ecds.yaml` (watched: an atomic rename swaps it) instead of
/// being inline.
pub fn with_ecds(rendered: &mut crate::RenderedEnvoy, dir: &std::path::Path) {
    rendered.edit(|v| {
        let filter = yaml::http_filter(yaml::listener(v, yaml::AGENT_LISTENER), yaml::WASM_FILTER);
        *filter = json!({
            "name": "agentplane",
            "config_discovery": {
                "config_source": {"path_config_source": {
                    "path": format!("{}/ecds.yaml", dir.display()),
                    "watched_directory": {"path": dir.display().to_string()},
                }},
                "type_urls": ["type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm"],
            },
        });
    });
}

/// Has `rendered` take agentplane's filter (the release build, with
/// `plugin_config`) through extension config discovery from a fresh
/// directory named after `name`, and returns that directory, where
/// `deploy/swap.sh` can swap another build in.
pub fn deliver_by_ecds(
    rendered: &mut crate::RenderedEnvoy,
    plugin_config: &str,
    name: &str,
) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let wasm = crate::wasm_path().display().to_string();
    std::fs::write(dir.join("ecds.yaml"), ecds_document(&wasm, plugin_config)).unwrap();
    with_ecds(rendered, &dir);
    dir
}

/// The compose stack's checks: `docker-compose config` as JSON, and
/// OpenBao as the stack runs it.
pub mod compose;
