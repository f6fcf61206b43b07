//! A whole proxy for a test: the in-process identity provider, an echo
//! upstream and Envoy running the filter, started together and stopped on
//! drop. [`Stack::build`] names what differs from the default (an
//! identity provider a test already configured OpenBao with, OpenBao's
//! port, more workers, services on upstreams of their own, a shorter
//! route timeout for plain services), so no test
//! writes the setup out again.

use crate::ROUTE_TIMEOUT;
use crate::{default_plugin_config, render_envoy_timed, Envoy, EnvoySetup, Idp, Upstream};
use std::collections::HashMap;

/// Envoy + upstream + identity provider, ready to take requests.
pub struct Stack {
    /// The identity provider.
    pub idp: Idp,
    /// The echo upstream.
    pub upstream: Upstream,
    /// Envoy.
    pub envoy: Envoy,
}

/// What a [`Stack`] starts with, besides its plugin configuration.
pub struct StackBuilder {
    plugin_config: String,
    idp: Option<Idp>,
    vault_port: Option<u16>,
    workers: u32,
    ports: HashMap<String, u16>,
    route_timeout: String,
}

impl Stack {
    /// Starts everything with `envoy/agentplane.json`.
    pub fn start() -> Stack {
        Stack::start_with(&default_plugin_config())
    }

    /// Starts everything with the given plugin configuration.
    pub fn start_with(plugin_config: &str) -> Stack {
        Stack::build(plugin_config).start()
    }

    /// Starts everything with `workers` Envoy worker threads: the setup of
    /// the tests of what the workers share (limits, MCP sessions).
    pub fn start_workers(plugin_config: &str, workers: u32) -> Stack {
        Stack::build(plugin_config).workers(workers).start()
    }

    /// A stack with this plugin configuration: a fresh identity provider,
    /// no OpenBao (its cluster points at a closed port), one worker, every
    /// service on the echo upstream, until told otherwise.
    pub fn build(plugin_config: &str) -> StackBuilder {
        StackBuilder {
            plugin_config: plugin_config.to_string(),
            idp: None,
            vault_port: None,
            workers: 1,
            ports: HashMap::new(),
            route_timeout: ROUTE_TIMEOUT.to_string(),
        }
    }
}

impl StackBuilder {
    /// This identity provider (one OpenBao already trusts).
    pub fn idp(mut self, idp: Idp) -> StackBuilder {
        self.idp = Some(idp);
        self
    }

    /// OpenBao (or a fake of it) at this port: the `vault` cluster.
    pub fn vault(mut self, port: u16) -> StackBuilder {
        self.vault_port = Some(port);
        self
    }

    /// Envoy worker threads (`--concurrency`).
    pub fn workers(mut self, workers: u32) -> StackBuilder {
        self.workers = workers;
        self
    }

    /// `service` on its own upstream at `port` (an MCP server) instead of
    /// the echo upstream.
    pub fn route(mut self, service: &str, port: u16) -> StackBuilder {
        self.ports.insert(service.to_string(), port);
        self
    }

    /// Plain (not MCP) services' routes end a response after `timeout`
    /// (an Envoy duration, `2s`) instead of [`ROUTE_TIMEOUT`]: a test of
    /// what that limit cuts need not wait for the shipped one.
    pub fn route_timeout(mut self, timeout: &str) -> StackBuilder {
        self.route_timeout = timeout.to_string();
        self
    }

    /// Starts the upstream and Envoy, and waits until Envoy is ready.
    pub fn start(self) -> Stack {
        let idp = self.idp.unwrap_or_default();
        let upstream = Upstream::start();
        let mut setup = EnvoySetup::without_vault(&idp, upstream.port, self.plugin_config);
        if let Some(port) = self.vault_port {
            setup.vault_port = port;
        }
        let mut rendered = render_envoy_timed(&setup, true, &self.ports, &self.route_timeout);
        rendered.workers = self.workers;
        let envoy = Envoy::start_yaml(&rendered);
        Stack {
            idp,
            upstream,
            envoy,
        }
    }
}
