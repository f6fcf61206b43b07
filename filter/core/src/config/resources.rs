//! The service sections: `routing` (how the service is found in the
//! path), `resources` (the registry: each service's type, protocol,
//! secrets, OAuth identifiers and audience), `default_resource` (what an
//! unregistered service is decided as) and `actions` (type and method to
//! action). Each entry checks itself here; the rules that tie a service
//! to another section (`oauth`, `vault`, `txn_token`, the audience mode)
//! are in `mod.rs`.

use super::error::{invalid, ConfigError};
use super::headers::is_token;
use super::vault::{SecretConfig, SecretFields};
use serde::Deserialize;
use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// How the service (resource id) is found in the path.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RoutingConfig {
    /// Accept the seed's `/mcp://<service>/<path>` form.
    pub mcp_scheme: bool,
    /// Accept `/<service>/<path>`.
    pub first_segment: bool,
    /// The one service this filter guards, for a filter in front of a
    /// single workload (an Istio inbound sidecar), where the request is
    /// delivered to that workload whatever its path says. Every request is
    /// decided as this service and keeps its path; a path naming another
    /// registered service is refused (403). Must be registered.
    pub local_service: Option<String>,
}

impl Default for RoutingConfig {
    fn default() -> Self {
        RoutingConfig {
            mcp_scheme: true,
            first_segment: true,
            local_service: None,
        }
    }
}

/// One entry of the resource registry. `S` is how its secrets are held:
/// as written ([`SecretFields`]) until the entry's check, then checked
/// ([`SecretConfig`], the default), the only form a [`super::Config`] has.
#[derive(Debug, Clone, Deserialize, PartialEq)]
// Only `S: Deserialize`: serde would also ask `S: Default` for `secrets`,
// which an empty list does not need.
#[serde(deny_unknown_fields, bound(deserialize = "S: Deserialize<'de>"))]
pub struct ResourceConfig<S = SecretConfig> {
    /// `skill`, `tool`, `data` or any type your policy understands.
    #[serde(rename = "type")]
    pub kind: String,
    /// Free-form metadata for the policy (`team`, `environment`, ...).
    #[serde(default)]
    pub metadata: Map<String, Value>,
    /// Fixed action for this resource, overriding the type/method table.
    #[serde(default)]
    pub action: Option<String>,
    /// Secrets an allowed request to this service carries upstream.
    #[serde(default)]
    pub secrets: Vec<S>,
    /// What the service speaks: `"http"` (default) or `"mcp"` (its POSTs
    /// are JSON-RPC messages the filter reads before deciding).
    #[serde(default)]
    pub protocol: Protocol,
    /// The service's OAuth resource identifier (RFC 9728), e.g.
    /// `https://gateway.example.com/tickets-mcp/mcp`: its metadata is
    /// served, and its 401s point there (needs `oauth`).
    #[serde(default)]
    pub resource_uri: Option<String>,
    /// The audience its tokens must carry, overriding `resource_uri` (see
    /// [`crate::audience`]).
    #[serde(default)]
    pub audience: Option<Audience>,
    /// Scopes its metadata lists (default: `oauth.scopes_supported`).
    #[serde(default)]
    pub scopes_supported: Vec<String>,
    /// Allowed requests carry a signed transaction token (`Txn-Token`,
    /// see [`crate::txn`]; needs the `txn_token` block).
    #[serde(default)]
    pub txn_token: bool,
    /// Allowed requests carry the plain `x-agent-*` identity headers
    /// (default). Off, with `txn_token`, the token is the only statement
    /// of identity upstream.
    #[serde(default = "yes")]
    pub identity_headers: bool,
    /// For an MCP service: the protocol revisions it accepts (default:
    /// every one the filter knows, [`crate::mcp::SUPPORTED_VERSIONS`]).
    #[serde(default)]
    pub mcp_versions: Option<Vec<String>>,
    /// For an MCP service: how a policy denial of `tools/call` answers.
    #[serde(default)]
    pub tool_denial: ToolDenial,
    /// The upstream takes a token exchanged for the caller's (RFC 8693),
    /// never the caller's own (needs the `token_exchange` block).
    #[serde(default)]
    pub token_exchange: Option<super::exchange::ServiceExchange>,
}

/// How a policy denial of an MCP `tools/call` is answered.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ToolDenial {
    /// HTTP 200 with a `CallToolResult` marked `isError`, carrying the
    /// reason and the decision id: the model sees why (default).
    #[default]
    Result,
    /// HTTP 200 with a JSON-RPC error (code −32031).
    Error,
}

impl ResourceConfig {
    /// The MCP revisions this service accepts, oldest first.
    pub fn mcp_versions(&self) -> Vec<String> {
        match &self.mcp_versions {
            Some(v) => v.clone(),
            None => crate::mcp::SUPPORTED_VERSIONS
                .iter()
                .map(|v| v.to_string())
                .collect(),
        }
    }
}

/// serde's default for `identity_headers`: on.
fn yes() -> bool {
    true
}

/// A service's protocol.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    /// Plain HTTP: the action comes from the type and method table.
    #[default]
    Http,
    /// MCP over Streamable HTTP (see [`crate::mcp`]).
    Mcp,
}

/// A service's own audience (`resources.<name>.audience`): a string or a
/// list of strings, of which a token must carry one.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "Value")]
pub struct Audience(pub Vec<String>);

impl TryFrom<Value> for Audience {
    type Error = String;
    fn try_from(v: Value) -> Result<Self, String> {
        let not_strings = || "audience must be a string or a list of strings".to_string();
        match v {
            Value::String(s) => Ok(Audience(vec![s])),
            Value::Array(items) => items
                .into_iter()
                .map(|i| match i {
                    Value::String(s) => Ok(s),
                    _ => Err(not_strings()),
                })
                .collect::<Result<_, _>>()
                .map(Audience),
            _ => Err(not_strings()),
        }
    }
}

impl RoutingConfig {
    /// Checks the section (that `local_service` is registered is checked
    /// with the registry, in `mod.rs`).
    pub(crate) fn check(&self) -> Result<(), ConfigError> {
        if !self.mcp_scheme && !self.first_segment {
            return Err(invalid(
                "routing",
                "enable at least one of mcp_scheme and first_segment",
            ));
        }
        Ok(())
    }
}

impl ResourceConfig<SecretFields> {
    /// Checks a registered service's entry, `resources.<name>`.
    pub(crate) fn check(mut self, name: &str) -> Result<ResourceConfig, ConfigError> {
        if !is_service_name(name) {
            return Err(invalid(
                format!("resources.{name}"),
                "a service name uses only letters, digits and -._~:@",
            ));
        }
        if self.kind.is_empty() {
            return Err(invalid(
                format!("resources.{name}.type"),
                "must not be empty",
            ));
        }
        if let Some(vs) = &self.mcp_versions {
            let field = format!("resources.{name}.mcp_versions");
            if self.protocol != Protocol::Mcp {
                return Err(invalid(
                    field,
                    "applies to \"protocol\": \"mcp\" services only",
                ));
            }
            if vs.is_empty() {
                return Err(invalid(field, "must list at least one revision"));
            }
            if let Some(v) = vs
                .iter()
                .find(|v| !crate::mcp::SUPPORTED_VERSIONS.contains(&v.as_str()))
            {
                return Err(invalid(
                    field,
                    format!(
                        "{v:?} is not a revision the filter knows; known: {}",
                        crate::mcp::SUPPORTED_VERSIONS.join(", ")
                    ),
                ));
            }
        }
        if let Some(u) = &self.resource_uri {
            if !crate::uri::valid_resource(u) {
                return Err(invalid(
                    format!("resources.{name}.resource_uri"),
                    "must be an http(s) URL without query or fragment",
                ));
            }
        }
        if let Some(Audience(list)) = &self.audience {
            let field = format!("resources.{name}.audience");
            if list.is_empty() {
                return Err(invalid(
                    field,
                    "must name at least one audience; omit it to use the service's resource_uri",
                ));
            }
            // Named in the WWW-Authenticate challenge's quoted error_description.
            if let Some(bad) = list.iter().find(|a| {
                a.is_empty()
                    || !a
                        .bytes()
                        .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\')
            }) {
                return Err(invalid(
                    field,
                    format!("{bad:?} is not an audience: non-empty printable text without spaces, quotes or backslashes, like \"https://gw.example.com/tickets-mcp/mcp\""),
                ));
            }
        }
        let mut secrets = Vec::with_capacity(self.secrets.len());
        for (i, sc) in std::mem::take(&mut self.secrets).into_iter().enumerate() {
            secrets.push(sc.check(&format!("resources.{name}.secrets[{i}]"))?);
        }
        Ok(self.with_secrets(secrets))
    }

    /// Checks `default_resource`: it stands for every unregistered service
    /// name a client can invent, so it has no audience and no secrets.
    pub(crate) fn check_default(self) -> Result<ResourceConfig, ConfigError> {
        if self.audience.is_some() {
            return Err(invalid(
                "default_resource.audience",
                "unregistered services have no audience of their own; register the service under resources",
            ));
        }
        if self.kind.is_empty() {
            return Err(invalid("default_resource.type", "must not be empty"));
        }
        if !self.secrets.is_empty() {
            // Secrets there would be handed to whatever upstream such a
            // name reaches.
            return Err(invalid(
                "default_resource.secrets",
                "unregistered services never get secrets; register the service under resources",
            ));
        }
        if self.token_exchange.is_some() {
            // A token for one audience, sent to whatever such a name
            // reaches.
            return Err(invalid(
                "default_resource.token_exchange",
                "unregistered services never get an exchanged token; register the service under resources",
            ));
        }
        Ok(self.with_secrets(Vec::new()))
    }
}

impl<S> ResourceConfig<S> {
    /// The same entry with its secrets in another form.
    fn with_secrets<T>(self, secrets: Vec<T>) -> ResourceConfig<T> {
        ResourceConfig {
            kind: self.kind,
            metadata: self.metadata,
            action: self.action,
            secrets,
            protocol: self.protocol,
            resource_uri: self.resource_uri,
            audience: self.audience,
            scopes_supported: self.scopes_supported,
            txn_token: self.txn_token,
            identity_headers: self.identity_headers,
            mcp_versions: self.mcp_versions,
            tool_denial: self.tool_denial,
            token_exchange: self.token_exchange,
        }
    }
}

/// Checks the `actions` table: method keys (or `"*"`) to non-empty actions.
pub(crate) fn check_actions(
    actions: &BTreeMap<String, BTreeMap<String, String>>,
) -> Result<(), ConfigError> {
    for (kind, methods) in actions {
        for (method, action) in methods {
            if method != "*" && !is_token(method) {
                return Err(invalid(
                    format!("actions.{kind}.{method}"),
                    "keys are HTTP methods or \"*\"",
                ));
            }
            if action.is_empty() {
                return Err(invalid(
                    format!("actions.{kind}.{method}"),
                    "must not be empty",
                ));
            }
        }
    }
    Ok(())
}

/// The resource of every unregistered service: type and metadata
/// `"unknown"`, no secrets.
pub(crate) fn default_resource() -> ResourceConfig {
    let mut metadata = Map::new();
    metadata.insert("team".into(), Value::String("unknown".into()));
    metadata.insert("environment".into(), Value::String("unknown".into()));
    ResourceConfig {
        kind: "unknown".into(),
        metadata,
        action: None,
        secrets: Vec::new(),
        protocol: Protocol::Http,
        resource_uri: None,
        audience: None,
        scopes_supported: Vec::new(),
        txn_token: false,
        identity_headers: true,
        mcp_versions: None,
        tool_denial: ToolDenial::Result,
        token_exchange: None,
    }
}

/// The default actions: skills are invoked, tools accessed, data read or written.
pub(crate) fn default_actions() -> BTreeMap<String, BTreeMap<String, String>> {
    let table: &[(&str, &[(&str, &str)])] = &[
        ("skill", &[("*", "invoke_skill")]),
        ("tool", &[("*", "access_tool")]),
        (
            "data",
            &[
                ("GET", "read_data"),
                ("HEAD", "read_data"),
                ("OPTIONS", "read_data"),
                ("*", "write_data"),
            ],
        ),
    ];
    table
        .iter()
        .map(|(t, m)| {
            (
                t.to_string(),
                m.iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            )
        })
        .collect()
}

/// A service name as it appears in a path: RFC 3986 unreserved and `:@`, never `.` or `..`.
fn is_service_name(s: &str) -> bool {
    !s.is_empty()
        && s != "."
        && s != ".."
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~:@".contains(&b))
}
