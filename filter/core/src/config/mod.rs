//! The plugin configuration: one JSON document, unknown fields rejected,
//! validated into an immutable [`Config`] once per VM.
//!
//! Each section lives in its own file with its type(s) and its own check:
//! `identity` (and `source`), `policy`, `resources` (with `routing`,
//! `default_resource` and `actions`), `headers`, `vault` (and the
//! secrets), `limits`, `mcp`, `cache` (`decision_cache`), `oauth`,
//! `decision_log`, `txn` (`txn_token`), `approval`, `exchange`
//! (`token_exchange`). This file holds what ties them together: the document
//! ([`RawConfig`]), the parse, and the rules that span two sections (a
//! service's secrets need `vault`, its `resource_uri` needs `oauth`, ...).
//!
//! Every field and its default is documented in docs/configuration.md
//! (`filter/core/tests/docs.rs` fails when one is missing); the
//! error messages name the field and say what to fix.

mod approval;
mod cache;
mod decision_log;
mod error;
mod exchange;
mod headers;
mod identity;
mod limits;
mod mcp;
mod oauth;
mod policy;
mod resources;
mod tracing;
mod txn;
mod vault;

pub use approval::{ApprovalConfig, GrantKey};
pub use cache::DecisionCacheConfig;
pub use decision_log::{CollectorConfig, DecisionLogConfig, Sink};
pub use error::ConfigError;
pub use exchange::{scope_token, ServiceExchange, TokenExchangeConfig, Via};
pub use headers::{HeadersConfig, ALWAYS_STRIPPED, SERVICE_HEADER, TRUSTED_HEADERS};
pub use identity::{AudienceMode, IdentityConfig, SourceConfig};
pub use limits::LimitsConfig;
pub use mcp::McpConfig;
pub use oauth::OAuthConfig;
pub use policy::{EngineChoice, InputShape, PolicyConfig};
pub use resources::{Audience, Protocol, ResourceConfig, RoutingConfig, ToolDenial};
pub use tracing::TracingConfig;
pub(crate) use txn::public_key as txn_public_key;
pub use txn::{TrustedIssuer, TxnConfig, HEADER as TXN_HEADER};
pub use vault::{KvInto, SecretConfig, SecretFields, VaultConfig};

use error::invalid;
use serde::Deserialize;
use std::collections::BTreeMap;

/// The document as written: every section, with serde's defaults for the
/// ones left out. [`Config::from_json`] turns it into a [`Config`].
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    decision_log: DecisionLogConfig,
    #[serde(default)]
    decision_cache: DecisionCacheConfig,
    #[serde(default)]
    vault: Option<VaultConfig>,
    #[serde(default)]
    identity: IdentityConfig,
    #[serde(default)]
    policy: PolicyConfig,
    #[serde(default)]
    routing: RoutingConfig,
    #[serde(default)]
    resources: BTreeMap<String, ResourceConfig<SecretFields>>,
    #[serde(default)]
    default_resource: Option<ResourceConfig<SecretFields>>,
    #[serde(default)]
    actions: Option<BTreeMap<String, BTreeMap<String, String>>>,
    #[serde(default)]
    headers: HeadersConfig,
    #[serde(default)]
    limits: LimitsConfig,
    #[serde(default)]
    source: SourceConfig,
    #[serde(default)]
    mcp: McpConfig,
    #[serde(default)]
    oauth: Option<OAuthConfig>,
    #[serde(default)]
    txn_token: Option<TxnConfig>,
    #[serde(default)]
    approval: Option<ApprovalConfig>,
    #[serde(default)]
    token_exchange: Option<TokenExchangeConfig>,
    #[serde(default, deserialize_with = "exchange::linked_accounts")]
    linked_accounts: Option<TokenExchangeConfig>,
    #[serde(default)]
    tracing: TracingConfig,
}

/// A validated configuration. Immutable after [`Config::from_json`].
#[derive(Debug, Clone)]
pub struct Config {
    /// Identity source.
    pub identity: IdentityConfig,
    /// Policy entrypoint.
    pub policy: PolicyConfig,
    /// Path forms.
    pub routing: RoutingConfig,
    /// Registry: service name → resource.
    pub resources: BTreeMap<String, ResourceConfig>,
    /// Resource used for services not in the registry.
    pub default_resource: ResourceConfig,
    /// Resource type → (method or `*`) → action.
    pub actions: BTreeMap<String, BTreeMap<String, String>>,
    /// Header handling, names lower-cased.
    pub headers: HeadersConfig,
    /// The decision cache, unless disabled.
    pub decision_cache: Option<DecisionCacheConfig>,
    /// The secrets server, when any service has secrets.
    pub vault: Option<VaultConfig>,
    /// The decision log.
    pub decision_log: DecisionLogConfig,
    /// MCP request handling.
    pub mcp: McpConfig,
    /// Protected resource metadata, when configured.
    pub oauth: Option<OAuthConfig>,
    /// Where the policy's limits count.
    pub limits: LimitsConfig,
    /// The connection's peer.
    pub source: SourceConfig,
    /// Transaction tokens, when configured.
    pub txn_token: Option<TxnConfig>,
    /// The approval service, when configured.
    pub approval: Option<ApprovalConfig>,
    /// The security token service, when configured.
    pub token_exchange: Option<TokenExchangeConfig>,
    /// The link broker (per-person tokens at third-party services), when
    /// configured: a token service as `token_exchange` is.
    pub linked_accounts: Option<TokenExchangeConfig>,
    /// What the filter hands Envoy's tracer.
    pub tracing: TracingConfig,
}

impl Config {
    /// Parses and validates the plugin configuration. Empty input means
    /// all defaults.
    pub fn from_json(bytes: &[u8]) -> Result<Config, ConfigError> {
        let raw: RawConfig = if bytes.iter().all(u8::is_ascii_whitespace) {
            RawConfig::default()
        } else {
            serde_json::from_slice(bytes).map_err(|e| ConfigError::Syntax(e.to_string()))?
        };
        // Each entry's check also turns its secrets into their checked
        // form, the only one a Config holds. A loop, not a collect: the
        // map is already in order, and a collect would ship a sort.
        let mut resources = BTreeMap::new();
        for (name, r) in raw.resources {
            let r = r.check(&name)?;
            resources.insert(name, r);
        }
        let default_resource = match raw.default_resource {
            Some(r) => r.check_default()?,
            None => resources::default_resource(),
        };
        let mut config = Config {
            identity: raw.identity,
            policy: raw.policy,
            routing: raw.routing,
            resources,
            default_resource,
            actions: raw.actions.unwrap_or_else(resources::default_actions),
            headers: raw.headers,
            decision_cache: raw.decision_cache.enabled.then_some(raw.decision_cache),
            vault: raw.vault,
            decision_log: raw.decision_log,
            mcp: raw.mcp,
            oauth: raw.oauth,
            limits: raw.limits,
            source: raw.source,
            txn_token: raw.txn_token,
            approval: raw.approval,
            token_exchange: raw.token_exchange,
            linked_accounts: raw.linked_accounts,
            tracing: raw.tracing,
        };
        config.check_sections()?;
        config.check_ties()?;
        Ok(config)
    }

    /// Each other section checks itself (`headers` also lower-cases its
    /// names and adds the trusted headers to `strip`).
    fn check_sections(&mut self) -> Result<(), ConfigError> {
        if let Some(a) = &self.approval {
            a.check()?;
        }
        if let Some(x) = &self.token_exchange {
            x.check("token_exchange")?;
        }
        if let Some(x) = &self.linked_accounts {
            x.check("linked_accounts")?;
        }
        if let Some(t) = &self.txn_token {
            t.check()?;
        }
        self.limits.check()?;
        if let Some(o) = &self.oauth {
            o.check()?;
        }
        self.mcp.check()?;
        self.identity.check()?;
        self.policy.check()?;
        self.routing.check()?;
        resources::check_actions(&self.actions)?;
        self.headers.check()?;
        if let Some(c) = &self.decision_cache {
            c.check()?;
        }
        if let Some(v) = &self.vault {
            v.check()?;
        }
        self.decision_log.check()
    }

    /// The rules that span two sections: a block a service's setting
    /// relies on must be there.
    fn check_ties(&self) -> Result<(), ConfigError> {
        if self.txn_token.is_some() && self.vault.is_none() {
            return Err(invalid(
                "txn_token",
                "needs a vault block: the signing key is read from it",
            ));
        }
        let named = self
            .resources
            .iter()
            .map(|(n, r)| (format!("resources.{n}"), r))
            .chain([("default_resource".to_string(), &self.default_resource)]);
        for (name, r) in named {
            if r.txn_token && self.txn_token.is_none() {
                return Err(invalid(
                    format!("{name}.txn_token"),
                    "needs the txn_token block",
                ));
            }
            if let Some(x) = &r.token_exchange {
                let at = format!("{name}.token_exchange");
                x.check(&at)?;
                let block = match x.via {
                    Via::TokenExchange => &self.token_exchange,
                    Via::LinkedAccounts => &self.linked_accounts,
                };
                if block.is_none() {
                    return Err(invalid(at, format!("needs the {} block", x.via.block())));
                }
                if !r.secrets.is_empty() {
                    return Err(invalid(
                        at,
                        "a service takes either secrets or an exchanged token, not both",
                    ));
                }
            }
            if !r.identity_headers && !r.txn_token {
                return Err(invalid(
                    format!("{name}.identity_headers"),
                    "may be off only when txn_token is on",
                ));
            }
        }
        for (name, r) in &self.resources {
            if r.resource_uri.is_some() && self.oauth.is_none() {
                return Err(invalid(
                    format!("resources.{name}.resource_uri"),
                    "needs an oauth block (its authorization_servers)",
                ));
            }
            if r.audience.is_some() && self.identity.audience_mode == AudienceMode::Gateway {
                return Err(invalid(
                    format!("resources.{name}.audience"),
                    "has no effect with identity.audience_mode \"gateway\" (tokens carry the gateway's one audience); remove it, or use \"per_service\"",
                ));
            }
            if !r.secrets.is_empty() && self.vault.is_none() {
                return Err(invalid(
                    format!("resources.{name}.secrets"),
                    "secrets need a `vault` section (cluster, auth_mount, role)",
                ));
            }
        }
        if let Some(local) = &self.routing.local_service {
            // The decision names this service's registry entry: an
            // unregistered one would decide every request on
            // default_resource, a typo that fails open or shut by accident.
            if !self.resources.contains_key(local) {
                return Err(invalid(
                    "routing.local_service",
                    format!("{local:?} is not a registered service (resources)"),
                ));
            }
        }
        Ok(())
    }

    /// The resource for a service: its registry entry or the default.
    pub fn resource(&self, service: &str) -> &ResourceConfig {
        self.resources
            .get(service)
            .unwrap_or(&self.default_resource)
    }

    /// Whether any service (or the default resource) speaks MCP.
    pub fn has_mcp(&self) -> bool {
        self.resources
            .values()
            .chain([&self.default_resource])
            .any(|r| r.protocol == Protocol::Mcp)
    }

    /// The action for a resource and method, if the table defines one.
    pub fn action_for<'a>(&'a self, resource: &'a ResourceConfig, method: &str) -> Option<&'a str> {
        if let Some(a) = &resource.action {
            return Some(a);
        }
        let methods = self.actions.get(&resource.kind)?;
        methods
            .get(method)
            .or_else(|| methods.get("*"))
            .map(String::as_str)
    }

    /// Whether a client header (lower-case name, as bytes) must be removed
    /// before processing. Underscores count as dashes: many frameworks
    /// read `x_agent_team` as `x-agent-team`.
    pub fn must_strip(&self, lower_name: &[u8]) -> bool {
        let folded: Vec<u8> = lower_name
            .iter()
            .map(|&b| if b == b'_' { b'-' } else { b })
            .collect();
        self.headers
            .strip_prefixes
            .iter()
            .any(|p| folded.starts_with(p.as_bytes()))
            || self.headers.strip.iter().any(|h| folded == h.as_bytes())
            || ALWAYS_STRIPPED.iter().any(|h| folded == h.as_bytes())
            || (!self.source.xfcc_from_envoy && folded == b"x-forwarded-client-cert")
            // Without the block a client's Txn-Token means nothing; with it,
            // only its own spelling is read, and `txn_token` goes.
            || (folded == TXN_HEADER.as_bytes()
                && (self.txn_token.is_none() || lower_name != TXN_HEADER.as_bytes()))
    }
}

#[cfg(test)]
mod tests;
