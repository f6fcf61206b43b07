//! The plugin configuration: one JSON document, unknown fields rejected,
//! validated into an immutable [`Config`] once per VM.
//!
//! Every field and its default is documented in docs/configuration.md
//! (`filter/core/tests/docs.rs` fails when one is missing); the
//! error messages name the field and say what to fix.

use serde::Deserialize;
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::fmt;

/// Headers the filter sets itself. They are always stripped from the client
/// request, whatever the configuration says, so they cannot be forged.
pub const TRUSTED_HEADERS: &[&str] = &["x-agent-id", "x-agent-type", "x-agent-team"];

/// The trusted header naming the service the policy authorized; Envoy
/// routes on it after the filter (see the shipped `envoy/envoy.yaml`).
pub const SERVICE_HEADER: &str = "x-agentplane-service";

/// Client headers removed whatever the configuration says: the filter's
/// own headers (a client may never pre-set them) and method overrides
/// (the policy decides on `:method`; an override would let a POST that
/// was authorized act as a DELETE upstream).
pub const ALWAYS_STRIPPED: &[&str] = &[
    "x-agent-id",
    "x-agent-type",
    "x-agent-team",
    SERVICE_HEADER,
    "x-decision-id",
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
];

/// Credentials that never enter the input document.
const NEVER_IN_INPUT: &[&str] = &[
    "authorization",
    // Whoever holds it continues an MCP session (bound, but logged
    // nowhere in full).
    crate::mcp::SESSION_HEADER,
    "proxy-authorization",
    "cookie",
    "set-cookie",
    "x-vault-token",
];

/// Why a configuration was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConfigError {
    /// Not valid JSON, or a field of the wrong type, or an unknown field.
    Syntax(String),
    /// A field whose value is not acceptable.
    Invalid {
        /// Dotted path of the field.
        field: String,
        /// What is wrong and how to fix it.
        problem: String,
    },
    /// The embedded policy does not compile or lacks the entrypoint.
    Policy(String),
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::Syntax(m) => write!(f, "plugin configuration is not valid: {m}"),
            ConfigError::Invalid { field, problem } => {
                write!(f, "plugin configuration field `{field}`: {problem}")
            }
            ConfigError::Policy(m) => write!(f, "policy: {m}"),
        }
    }
}

impl std::error::Error for ConfigError {}

fn invalid(field: impl Into<String>, problem: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field: field.into(),
        problem: problem.into(),
    }
}

/// Where the verified identity is found and how claims are named.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IdentityConfig {
    /// Dynamic-metadata namespace jwt_authn writes to.
    pub metadata_namespace: String,
    /// Key of the payload in that namespace: jwt_authn's `payload_in_metadata`
    /// name, or the issuer when Istio's RequestAuthentication configured it.
    pub payload_key: String,
    /// Prefix of the custom claims `agent_type`, `team`, `environment`.
    pub claims_namespace: String,
    /// Largest encoded payload accepted.
    pub max_payload_bytes: usize,
    /// Deepest nesting of objects/lists accepted in the payload.
    pub max_depth: usize,
    /// Pass the agent's `authorization` header (its bearer JWT) upstream.
    /// Off: allowed requests reach services without it (set jwt_authn's
    /// `forward: true` so the filter can log in to Vault with it).
    pub forward_token: bool,
    /// Distinct verified tokens whose decoded identity each worker keeps
    /// (0: decode every request).
    pub cache_entries: usize,
    /// Key of jwt_authn's `failed_status_in_metadata` in the namespace: a
    /// token that failed verification (401 `invalid_token` with its reason).
    pub failure_key: String,
    /// Whose audience a token must carry (see [`crate::audience`]).
    pub audience_mode: AudienceMode,
}

impl Default for IdentityConfig {
    fn default() -> Self {
        IdentityConfig {
            metadata_namespace: "envoy.filters.http.jwt_authn".into(),
            payload_key: "jwt_payload".into(),
            claims_namespace: "https://mcp.example.com/".into(),
            max_payload_bytes: 16 * 1024,
            max_depth: 16,
            forward_token: false,
            cache_entries: 1024,
            failure_key: "jwt_failure".into(),
            audience_mode: AudienceMode::PerService,
        }
    }
}

/// Whose audience a token must carry (`identity.audience_mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(try_from = "String")]
pub enum AudienceMode {
    /// A service with its own audience (`resources.<name>.audience`, else
    /// its `resource_uri`) accepts only tokens issued for it; a service
    /// without one refuses tokens bound to another service's (RFC 8707).
    #[default]
    PerService,
    /// Only the gateway's one audience, which jwt_authn checks: the filter
    /// checks no audience (tokens cannot be bound to one service).
    Gateway,
}

impl TryFrom<String> for AudienceMode {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        match s.as_str() {
            "per_service" => Ok(AudienceMode::PerService),
            "gateway" => Ok(AudienceMode::Gateway),
            other => Err(format!(
                "identity.audience_mode {other:?} is not a mode: use \"per_service\" (each service accepts tokens for its own audience) or \"gateway\" (one audience, checked by jwt_authn)"
            )),
        }
    }
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

/// Which Rego document decides.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PolicyConfig {
    /// A package (`data.mcp.authz`: its `allow` and `deny` rules decide) or a
    /// rule whose value is a boolean or a response object.
    pub entrypoint: String,
    /// `"rvm"` (default) or `"interpreter"`.
    pub engine: EngineChoice,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        PolicyConfig {
            entrypoint: "data.mcp.authz".into(),
            engine: EngineChoice::Rvm,
        }
    }
}

/// Which regorus engine evaluates requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EngineChoice {
    /// The register VM (bytecode compiled once at configure time), falling
    /// back to the interpreter for bundles it cannot compile. Like OPA
    /// without strict builtin errors, builtin errors are undefined; unlike
    /// OPA, a complete rule with conflicting values is undefined rather
    /// than an error.
    #[default]
    Rvm,
    /// The tree interpreter: conflicting complete-rule values are errors
    /// (and deny), as in OPA. Slower.
    Interpreter,
}

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

/// One entry of the resource registry.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ResourceConfig {
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
    pub secrets: Vec<SecretConfig>,
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

fn yes() -> bool {
    true
}

/// The resource-server side of OAuth (see [`crate::oauth`]).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct OAuthConfig {
    /// Issuers of the tokens this gateway accepts.
    pub authorization_servers: Vec<String>,
    /// Scopes the metadata lists unless a service lists its own.
    #[serde(default)]
    pub scopes_supported: Vec<String>,
    /// The gateway's own resource identifier, served at the bare
    /// well-known path and used by 401s of services without their own.
    #[serde(default)]
    pub resource: Option<String>,
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

/// The connection's peer (see [`crate::source`]).
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct SourceConfig {
    /// Read the peer certificate's identity from Envoy's connection
    /// properties into `input.source` (where agentplane sees mTLS).
    /// Off: `input.source` is `null` and no property is read.
    pub peer_certificate: bool,
    /// Envoy sanitizes and sets `x-forwarded-client-cert` itself (the
    /// connection manager's `forward_client_cert_details`): keep it. Off:
    /// a client's `x-forwarded-client-cert` is stripped like any trusted
    /// header.
    pub xfcc_from_envoy: bool,
}

/// Where rate limits and in-flight caps count (see [`crate::limits`]).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Prefix of the shared-data slot keys. Two filters that must count
    /// separately (a canary beside the main policy) need different ones.
    pub table: String,
    /// Slots per table (rate buckets; in-flight keys): the most keys that
    /// can count at once, per proxy.
    pub slots: u64,
    /// How long an in-flight lease holds without its stream ending
    /// (a VM that crashed or reloaded cannot hold a slot longer).
    pub lease_ms: u64,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            table: "agentplane.limits".into(),
            slots: 16384,
            lease_ms: 300_000,
        }
    }
}

/// How MCP requests are read (see [`crate::mcp`]).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct McpConfig {
    /// Largest request body read; a larger one gets 413.
    pub max_body_bytes: usize,
    /// Deepest JSON nesting accepted.
    pub max_depth: usize,
    /// MCP method → action. Methods not listed get their family's
    /// (`notifications/*`), else the action `"*"` maps to, else none (and
    /// the shipped policy denies a request without one). `"response"` is a
    /// client's answer to a server request; `"GET"` and `"DELETE"` are the
    /// HTTP methods on an MCP endpoint (the server's stream, session end).
    pub actions: BTreeMap<String, String>,
    /// How long a session stays bound to its principal after its last use
    /// (see [`crate::session`]).
    pub session_ttl_s: u64,
    /// Session bindings kept per proxy (shared-data slots).
    pub session_slots: u64,
}

impl Default for McpConfig {
    fn default() -> Self {
        let actions = [
            ("initialize", "initialize"),
            ("server/discover", "initialize"),
            ("ping", "initialize"),
            ("notifications/*", "notify"),
            ("tools/list", "list_tools"),
            ("tools/call", "call_tool"),
            ("resources/list", "list_resources"),
            ("resources/templates/list", "list_resources"),
            ("resources/read", "read_resource"),
            ("resources/subscribe", "read_resource"),
            ("resources/unsubscribe", "read_resource"),
            ("prompts/list", "list_prompts"),
            ("prompts/get", "get_prompt"),
            ("completion/complete", "get_prompt"),
            ("logging/setLevel", "initialize"),
            // 2026-07-28: change notifications on a stream the client
            // opens, and tasks (long-running tool calls).
            ("subscriptions/listen", "open_stream"),
            ("tasks/get", "manage_task"),
            ("tasks/result", "manage_task"),
            ("tasks/list", "manage_task"),
            ("tasks/cancel", "manage_task"),
            ("tasks/update", "manage_task"),
            ("response", "respond"),
            ("GET", "open_stream"),
            ("DELETE", "end_session"),
        ];
        McpConfig {
            max_body_bytes: 1024 * 1024,
            max_depth: 32,
            actions: actions
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            session_ttl_s: 86_400,
            session_slots: 16_384,
        }
    }
}

impl McpConfig {
    /// The action of an MCP method: its own entry, else its family's
    /// (`notifications/*`), else `"*"`'s.
    pub fn action_for(&self, method: &str) -> Option<&str> {
        let family = method.rsplit_once('/').map(|(head, _)| format!("{head}/*"));
        self.actions
            .get(method)
            .or_else(|| family.and_then(|f| self.actions.get(&f)))
            .or_else(|| self.actions.get("*"))
            .map(String::as_str)
    }
}

/// One secret injected into requests to a service: a KV v2 field, or a
/// dynamic database credential (username and password).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SecretConfig {
    /// KV v2 read path, e.g. `secret/data/mcp/agents/{agent}/credentials`.
    /// Placeholders: `{agent}` (the token's `sub`), `{team}`, `{type}`.
    #[serde(default)]
    pub kv: Option<String>,
    /// The field of the KV secret to inject.
    #[serde(default)]
    pub field: Option<String>,
    /// Header the KV field goes into.
    #[serde(default)]
    pub header: Option<String>,
    /// Inject the KV field as `authorization: Bearer <value>` instead.
    #[serde(default)]
    pub bearer: bool,
    /// Dynamic credentials path, e.g. `database/creds/readonly`.
    #[serde(default)]
    pub database: Option<String>,
    /// Header the database username goes into.
    #[serde(default)]
    pub username_header: Option<String>,
    /// Header the database password goes into.
    #[serde(default)]
    pub password_header: Option<String>,
}

/// Where secrets come from: an OpenBao/Vault server behind an Envoy cluster.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct VaultConfig {
    /// Envoy cluster that reaches the server.
    pub cluster: String,
    /// `:authority` of callouts.
    pub authority: String,
    /// JWT auth method mount (`auth/<mount>/login`).
    pub auth_mount: String,
    /// Role to log in as.
    pub role: String,
    /// Per-callout timeout.
    pub timeout_ms: u64,
    /// How long a KV read is reused (KV v2 has no lease).
    pub kv_ttl_s: u64,
    /// Credentials are refetched this long before they expire.
    pub renew_margin_s: u64,
    /// Retries of a callout that failed in a retryable way (429, 5xx,
    /// timeout, connection failure), with exponential backoff.
    pub retries: u32,
    /// First backoff; doubles per retry.
    pub backoff_ms: u64,
    /// Larger callout responses are refused.
    pub max_response_bytes: usize,
}

impl Default for VaultConfig {
    fn default() -> Self {
        VaultConfig {
            cluster: "vault".into(),
            authority: "vault".into(),
            auth_mount: "jwt".into(),
            role: "agent".into(),
            timeout_ms: 2_000,
            kv_ttl_s: 300,
            renew_margin_s: 10,
            retries: 2,
            backoff_ms: 50,
            max_response_bytes: 64 * 1024,
        }
    }
}

fn is_vault_path(s: &str) -> bool {
    !s.is_empty()
        && !s.starts_with('/')
        && s.split('/')
            .all(|seg| !seg.is_empty() && seg != "." && seg != "..")
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~:@/{}".contains(&b))
        && {
            let mut rest = s;
            let mut ok = true;
            while let Some(i) = rest.find('{') {
                let tail = rest.get(i..).unwrap_or("");
                let known = ["{agent}", "{team}", "{type}"]
                    .iter()
                    .find(|p| tail.starts_with(**p));
                match known {
                    Some(p) => rest = tail.get(p.len()..).unwrap_or(""),
                    None => {
                        ok = false;
                        break;
                    }
                }
            }
            ok && !rest.contains('}')
        }
}

/// Each service's own audience: usable in a challenge, and meaningful in
/// the configured mode.
fn validate_audiences(
    identity: &IdentityConfig,
    resources: &BTreeMap<String, ResourceConfig>,
    default_res: Option<&ResourceConfig>,
) -> Result<(), ConfigError> {
    if default_res.is_some_and(|r| r.audience.is_some()) {
        return Err(invalid(
            "default_resource.audience",
            "unregistered services have no audience of their own; register the service under resources",
        ));
    }
    for (name, r) in resources {
        let Some(Audience(list)) = &r.audience else {
            continue;
        };
        let field = format!("resources.{name}.audience");
        if identity.audience_mode == AudienceMode::Gateway {
            return Err(invalid(
                field,
                "has no effect with identity.audience_mode \"gateway\" (tokens carry the gateway's one audience); remove it, or use \"per_service\"",
            ));
        }
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
    Ok(())
}

fn validate_secret(field: &str, sc: &SecretConfig) -> Result<(), ConfigError> {
    let header_ok = |h: &Option<String>, name: &str| -> Result<(), ConfigError> {
        match h {
            Some(h) if is_token(h) && !h.starts_with(':') => {
                let lower = h.to_ascii_lowercase();
                if ALWAYS_STRIPPED.contains(&lower.as_str()) || lower == "x-request-id" {
                    return Err(invalid(
                        format!("{field}.{name}"),
                        "is a header the filter sets itself",
                    ));
                }
                Ok(())
            }
            Some(h) => Err(invalid(
                format!("{field}.{name}"),
                format!("{h:?} is not a header name"),
            )),
            None => Err(invalid(format!("{field}.{name}"), "is required")),
        }
    };
    match (&sc.kv, &sc.database) {
        (Some(path), None) => {
            if !is_vault_path(path) {
                return Err(invalid(
                    format!("{field}.kv"),
                    "a relative Vault path (letters, digits, -._~:@/) with only {agent}, {team}, {type} placeholders",
                ));
            }
            if sc.field.as_deref().is_none_or(str::is_empty) {
                return Err(invalid(format!("{field}.field"), "is required for kv"));
            }
            if sc.username_header.is_some() || sc.password_header.is_some() {
                return Err(invalid(
                    field,
                    "username_header/password_header belong to database secrets",
                ));
            }
            match (sc.bearer, &sc.header) {
                (true, None) => Ok(()),
                (true, Some(_)) => Err(invalid(
                    format!("{field}.header"),
                    "set either header or bearer, not both",
                )),
                (false, h) => header_ok(h, "header"),
            }
        }
        (None, Some(path)) => {
            if !is_vault_path(path) {
                return Err(invalid(
                    format!("{field}.database"),
                    "a relative Vault path like \"database/creds/readonly\"",
                ));
            }
            if sc.field.is_some() || sc.header.is_some() || sc.bearer {
                return Err(invalid(field, "field/header/bearer belong to kv secrets"));
            }
            header_ok(&sc.username_header, "username_header")?;
            header_ok(&sc.password_header, "password_header")
        }
        _ => Err(invalid(field, "set exactly one of kv and database")),
    }
}

fn default_resource() -> ResourceConfig {
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
    }
}

/// Header handling.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HeadersConfig {
    /// Client headers starting with any of these are removed before anything
    /// else happens (case-insensitive).
    pub strip_prefixes: Vec<String>,
    /// Further exact client header names to remove.
    pub strip: Vec<String>,
    /// Request headers copied into `input.request.headers`.
    pub input: Vec<String>,
    /// Longest value accepted for a header the filter sets.
    pub max_value_bytes: usize,
    /// Add `x-mcp-metrics` (the filter's own timing) to responses.
    pub metrics_header: bool,
    /// Take the client-facing `x-request-id` as the request id. Only for an
    /// edge that sets it itself (Envoy with `use_remote_address` and no
    /// trusted internal addresses); otherwise the filter uses its own
    /// decision id, so no client can choose the ids in the audit trail.
    pub trust_request_id: bool,
}

impl Default for HeadersConfig {
    fn default() -> Self {
        HeadersConfig {
            strip_prefixes: vec!["x-agent-".into(), "x-mcp-".into()],
            strip: Vec::new(),
            input: vec![
                "content-type".into(),
                "user-agent".into(),
                "x-source-system".into(),
            ],
            max_value_bytes: 256,
            metrics_header: false,
            trust_request_id: false,
        }
    }
}

/// The decision cache (see [`crate::cache`]). On by default; it only ever
/// holds decisions of a policy that defines `valid_until_ns`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct DecisionCacheConfig {
    /// `false` evaluates every request.
    pub enabled: bool,
    /// Most decisions kept per worker.
    pub max_entries: usize,
    /// Longest any decision is reused, whatever the policy's
    /// `valid_until_ns` says, in milliseconds.
    pub max_ttl_ms: u64,
}

impl Default for DecisionCacheConfig {
    fn default() -> Self {
        DecisionCacheConfig {
            enabled: true,
            max_entries: 1024,
            max_ttl_ms: 60_000,
        }
    }
}

/// The decision log (see [`crate::audit`]).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DecisionLogConfig {
    /// Write one record per logged decision to Envoy's log.
    pub enabled: bool,
    /// Share of allowed decisions logged (0.0–1.0); denies are always logged.
    pub sample_allowed: f64,
    /// JSON pointers removed from every record's input, e.g.
    /// `/input/jwt/payload/email` (like OPA's `system.log.mask`).
    pub mask: Vec<String>,
    /// Also ship records in batches to an HTTP collector.
    pub collector: Option<CollectorConfig>,
    /// Deny (503) when a record cannot be handed to the collector because
    /// its buffer is full, as opa-envoy-plugin does with mandatory logging.
    pub mandatory: bool,
}

impl Default for DecisionLogConfig {
    fn default() -> Self {
        DecisionLogConfig {
            enabled: false,
            sample_allowed: 1.0,
            mask: Vec::new(),
            collector: None,
            mandatory: false,
        }
    }
}

/// An HTTP collector for decision records: `POST <path>` with a JSON array.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct CollectorConfig {
    /// Envoy cluster of the collector.
    pub cluster: String,
    /// `:authority` of the POSTs.
    pub authority: String,
    /// Path records are POSTed to.
    pub path: String,
    /// Records per POST at most; a full batch is sent at once.
    pub max_batch: usize,
    /// A partial batch waits at most this long.
    pub flush_ms: u64,
    /// Records held per worker (unsent or being sent); beyond, records are
    /// dropped (counted), or with `mandatory` requests are denied.
    pub max_buffer: usize,
    /// Bytes of record JSON held per worker at most (records admitted
    /// under mandatory logging may overshoot by what was reserved).
    pub max_buffer_bytes: usize,
    /// Per POST.
    pub timeout_ms: u64,
}

impl Default for CollectorConfig {
    fn default() -> Self {
        CollectorConfig {
            cluster: "decision_logs".into(),
            authority: "decision-logs".into(),
            path: "/logs".into(),
            max_batch: 100,
            flush_ms: 1_000,
            max_buffer: 10_000,
            max_buffer_bytes: 16 * 1024 * 1024,
            timeout_ms: 2_000,
        }
    }
}

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
    resources: BTreeMap<String, ResourceConfig>,
    #[serde(default)]
    default_resource: Option<ResourceConfig>,
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
    txn_token: Option<crate::txn::TxnConfig>,
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
    pub txn_token: Option<crate::txn::TxnConfig>,
}

/// The seed's actions: skills are invoked, tools accessed, data read or written.
fn default_actions() -> BTreeMap<String, BTreeMap<String, String>> {
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

fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

fn is_service_name(s: &str) -> bool {
    !s.is_empty()
        && s != "."
        && s != ".."
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~:@".contains(&b))
}

fn is_rego_path(s: &str) -> bool {
    let mut parts = s.split('.');
    parts.next() == Some("data")
        && s.len() > 5
        && parts.all(|p| {
            let mut c = p.chars();
            c.next()
                .is_some_and(|f| f.is_ascii_alphabetic() || f == '_')
                && c.all(|x| x.is_ascii_alphanumeric() || x == '_')
        })
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
        let RawConfig {
            identity,
            policy,
            routing,
            resources,
            default_resource: default_res,
            actions,
            mut headers,
            decision_cache,
            vault,
            decision_log,
            mcp,
            oauth,
            limits,
            source,
            txn_token,
        } = raw;
        if let Some(t) = &txn_token {
            t.check()
                .map_err(|(field, problem)| invalid(field, problem))?;
            if vault.is_none() {
                return Err(invalid(
                    "txn_token",
                    "needs a vault block: the signing key is read from it",
                ));
            }
        }
        let named = resources
            .iter()
            .map(|(n, r)| (format!("resources.{n}"), r))
            .chain(
                default_res
                    .iter()
                    .map(|r| ("default_resource".to_string(), r)),
            );
        for (name, r) in named {
            if r.txn_token && txn_token.is_none() {
                return Err(invalid(
                    format!("{name}.txn_token"),
                    "needs the txn_token block",
                ));
            }
            if !r.identity_headers && !r.txn_token {
                return Err(invalid(
                    format!("{name}.identity_headers"),
                    "may be off only when txn_token is on",
                ));
            }
        }
        if !(1..=1 << 20).contains(&limits.slots) {
            return Err(invalid("limits.slots", "must be between 1 and 1048576"));
        }
        if !(1_000..=86_400_000).contains(&limits.lease_ms) {
            return Err(invalid(
                "limits.lease_ms",
                "must be between 1000 and 86400000",
            ));
        }
        if limits.table.is_empty()
            || limits.table.len() > 64
            || !limits
                .table
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        {
            return Err(invalid(
                "limits.table",
                "must be 1-64 characters of [A-Za-z0-9._-]",
            ));
        }
        if let Some(o) = &oauth {
            if o.authorization_servers.is_empty()
                || !o
                    .authorization_servers
                    .iter()
                    .all(|a| crate::uri::valid_resource(a))
            {
                return Err(invalid(
                    "oauth.authorization_servers",
                    "must list at least one http(s) issuer URL",
                ));
            }
            if o.resource
                .as_deref()
                .is_some_and(|r| !crate::uri::valid_resource(r))
            {
                return Err(invalid(
                    "oauth.resource",
                    "must be an http(s) URL without query or fragment",
                ));
            }
        }
        for (name, r) in &resources {
            if let Some(vs) = &r.mcp_versions {
                let field = format!("resources.{name}.mcp_versions");
                if r.protocol != Protocol::Mcp {
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
            if let Some(u) = &r.resource_uri {
                if !crate::uri::valid_resource(u) {
                    return Err(invalid(
                        format!("resources.{name}.resource_uri"),
                        "must be an http(s) URL without query or fragment",
                    ));
                }
                if oauth.is_none() {
                    return Err(invalid(
                        format!("resources.{name}.resource_uri"),
                        "needs an oauth block (its authorization_servers)",
                    ));
                }
            }
        }
        validate_audiences(&identity, &resources, default_res.as_ref())?;
        if !(1024..=16 * 1024 * 1024).contains(&mcp.max_body_bytes) {
            return Err(invalid(
                "mcp.max_body_bytes",
                "must be between 1024 and 16777216",
            ));
        }
        if !(2..=128).contains(&mcp.max_depth) {
            return Err(invalid("mcp.max_depth", "must be between 2 and 128"));
        }
        if !(60..=30 * 86_400).contains(&mcp.session_ttl_s) {
            return Err(invalid(
                "mcp.session_ttl_s",
                "must be between 60 and 2592000",
            ));
        }
        if !(1..=1 << 20).contains(&mcp.session_slots) {
            return Err(invalid(
                "mcp.session_slots",
                "must be between 1 and 1048576",
            ));
        }

        if identity.metadata_namespace.is_empty() {
            return Err(invalid("identity.metadata_namespace", "must not be empty"));
        }
        if identity.payload_key.is_empty() {
            return Err(invalid(
                "identity.payload_key",
                "must not be empty: use jwt_authn's payload_in_metadata name, or the issuer for Istio",
            ));
        }
        if !(256..=1024 * 1024).contains(&identity.max_payload_bytes) {
            return Err(invalid(
                "identity.max_payload_bytes",
                "must be between 256 and 1048576",
            ));
        }
        if !(2..=64).contains(&identity.max_depth) {
            return Err(invalid("identity.max_depth", "must be between 2 and 64"));
        }
        if identity.cache_entries > 1_000_000 {
            return Err(invalid(
                "identity.cache_entries",
                "must be at most 1000000 (0 decodes every request)",
            ));
        }
        if !is_rego_path(&policy.entrypoint) {
            return Err(invalid(
                "policy.entrypoint",
                format!(
                    "{:?} is not a Rego data path like \"data.mcp.authz\"",
                    policy.entrypoint
                ),
            ));
        }
        if !routing.mcp_scheme && !routing.first_segment {
            return Err(invalid(
                "routing",
                "enable at least one of mcp_scheme and first_segment",
            ));
        }
        if let Some(local) = &routing.local_service {
            // The decision names this service's registry entry: an
            // unregistered one would decide every request on
            // default_resource, a typo that fails open or shut by accident.
            if !resources.contains_key(local) {
                return Err(invalid(
                    "routing.local_service",
                    format!("{local:?} is not a registered service (resources)"),
                ));
            }
        }
        for (name, r) in &resources {
            if !is_service_name(name) {
                return Err(invalid(
                    format!("resources.{name}"),
                    "a service name uses only letters, digits and -._~:@",
                ));
            }
            if r.kind.is_empty() {
                return Err(invalid(
                    format!("resources.{name}.type"),
                    "must not be empty",
                ));
            }
            for (i, sc) in r.secrets.iter().enumerate() {
                validate_secret(&format!("resources.{name}.secrets[{i}]"), sc)?;
            }
            if !r.secrets.is_empty() && vault.is_none() {
                return Err(invalid(
                    format!("resources.{name}.secrets"),
                    "secrets need a `vault` section (cluster, auth_mount, role)",
                ));
            }
        }
        let default_resource = default_res.unwrap_or_else(default_resource);
        if default_resource.kind.is_empty() {
            return Err(invalid("default_resource.type", "must not be empty"));
        }
        if !default_resource.secrets.is_empty() {
            // The default resource stands for every unregistered service
            // name a client can invent: secrets there would be handed to
            // whatever upstream such a name reaches.
            return Err(invalid(
                "default_resource.secrets",
                "unregistered services never get secrets; register the service under resources",
            ));
        }
        let actions = actions.unwrap_or_else(default_actions);
        for (kind, methods) in &actions {
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

        for (i, p) in headers.strip_prefixes.iter_mut().enumerate() {
            *p = p.to_ascii_lowercase();
            if p.is_empty() || !is_token(p) {
                return Err(invalid(
                    format!("headers.strip_prefixes[{i}]"),
                    "must be a non-empty header-name prefix",
                ));
            }
        }
        for (field, list) in [("strip", &mut headers.strip), ("input", &mut headers.input)] {
            for (i, h) in list.iter_mut().enumerate() {
                *h = h.to_ascii_lowercase();
                if !is_token(h) {
                    return Err(invalid(
                        format!("headers.{field}[{i}]"),
                        format!("{h:?} is not a header name"),
                    ));
                }
            }
        }
        if let Some(bad) = headers
            .input
            .iter()
            .find(|h| NEVER_IN_INPUT.contains(&h.as_str()))
        {
            return Err(invalid(
                "headers.input",
                format!(
                    "{bad:?} carries credentials and never enters the input document; remove it"
                ),
            ));
        }
        for t in TRUSTED_HEADERS {
            if !headers.strip.iter().any(|h| h == t) {
                headers.strip.push((*t).to_string());
            }
        }
        if !(16..=8192).contains(&headers.max_value_bytes) {
            return Err(invalid(
                "headers.max_value_bytes",
                "must be between 16 and 8192",
            ));
        }

        let decision_cache = decision_cache.enabled.then_some(decision_cache);
        if let Some(c) = &decision_cache {
            if !(1..=1_000_000).contains(&c.max_entries) {
                return Err(invalid(
                    "decision_cache.max_entries",
                    "must be between 1 and 1000000",
                ));
            }
            if !(1..=3_600_000).contains(&c.max_ttl_ms) {
                return Err(invalid(
                    "decision_cache.max_ttl_ms",
                    "must be between 1 and 3600000 (one hour)",
                ));
            }
        }

        if let Some(v) = &vault {
            for (f, val) in [
                ("cluster", &v.cluster),
                ("authority", &v.authority),
                ("role", &v.role),
            ] {
                if val.is_empty() {
                    return Err(invalid(format!("vault.{f}"), "must not be empty"));
                }
            }
            if !is_vault_path(&v.auth_mount) || v.auth_mount.contains('{') {
                return Err(invalid("vault.auth_mount", "a mount path like \"jwt\""));
            }
            if !(10..=60_000).contains(&v.timeout_ms) {
                return Err(invalid("vault.timeout_ms", "must be between 10 and 60000"));
            }
            if !(1..=86_400).contains(&v.kv_ttl_s) {
                return Err(invalid("vault.kv_ttl_s", "must be between 1 and 86400"));
            }
            if v.retries > 5 {
                return Err(invalid("vault.retries", "at most 5"));
            }
            if !(1..=10_000).contains(&v.backoff_ms) {
                return Err(invalid("vault.backoff_ms", "must be between 1 and 10000"));
            }
            if !(1024..=1024 * 1024).contains(&v.max_response_bytes) {
                return Err(invalid(
                    "vault.max_response_bytes",
                    "must be between 1024 and 1048576",
                ));
            }
        }

        if !(0.0..=1.0).contains(&decision_log.sample_allowed) {
            return Err(invalid(
                "decision_log.sample_allowed",
                "must be between 0.0 and 1.0",
            ));
        }
        if let Some(c) = &decision_log.collector {
            if c.cluster.is_empty() || c.authority.is_empty() || !c.path.starts_with('/') {
                return Err(invalid(
                    "decision_log.collector",
                    "needs a cluster, an authority and a path starting with /",
                ));
            }
            if c.max_batch == 0 || c.max_batch > c.max_buffer || c.max_buffer > 1_000_000 {
                return Err(invalid(
                    "decision_log.collector",
                    "1 <= max_batch <= max_buffer <= 1000000",
                ));
            }
            if !(4096..=1024 * 1024 * 1024).contains(&c.max_buffer_bytes) {
                return Err(invalid(
                    "decision_log.collector.max_buffer_bytes",
                    "must be between 4096 and 1073741824",
                ));
            }
            if !(1..=600_000).contains(&c.flush_ms) || !(10..=60_000).contains(&c.timeout_ms) {
                return Err(invalid(
                    "decision_log.collector",
                    "flush_ms 1-600000 and timeout_ms 10-60000",
                ));
            }
        }
        if decision_log.mandatory && (decision_log.collector.is_none() || !decision_log.enabled) {
            return Err(invalid(
                "decision_log.mandatory",
                "needs decision_log.enabled and a collector (Envoy's log always takes a record)",
            ));
        }
        for (i, m) in decision_log.mask.iter().enumerate() {
            if !m.starts_with("/input/") || m.ends_with('/') {
                return Err(invalid(
                    format!("decision_log.mask[{i}]"),
                    "a JSON pointer into the input, like \"/input/jwt/payload/email\"",
                ));
            }
        }

        Ok(Config {
            identity,
            policy,
            routing,
            resources,
            default_resource,
            actions,
            headers,
            decision_cache,
            vault,
            decision_log,
            mcp,
            oauth,
            limits,
            source,
            txn_token,
        })
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
            || (folded == crate::txn::HEADER.as_bytes()
                && (self.txn_token.is_none() || lower_name != crate::txn::HEADER.as_bytes()))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests {
    use super::*;
    #[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    fn err(json: &str) -> String {
        match Config::from_json(json.as_bytes()) {
            Ok(_) => panic!("accepted {json}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn empty_means_defaults() {
        let c = Config::from_json(b"").unwrap();
        assert_eq!(c.identity.payload_key, "jwt_payload");
        assert_eq!(c.policy.entrypoint, "data.mcp.authz");
        assert!(c.must_strip(b"x-agent-id"));
        assert!(c.must_strip(b"x-mcp-anything"));
        assert!(!c.must_strip(b"content-type"));
        let c2 = Config::from_json(b"{}").unwrap();
        assert_eq!(c2.headers.input, c.headers.input);
    }

    #[test]
    fn bad_configs_say_what_to_fix() {
        let cases: &[(&str, &str)] = &[
            ("{", "not valid"),
            (r#"{"bogus": 1}"#, "unknown field `bogus`"),
            (
                r#"{"identity": {"payload_kye": "x"}}"#,
                "unknown field `payload_kye`",
            ),
            (
                r#"{"identity": {"payload_key": ""}}"#,
                "`identity.payload_key`",
            ),
            (
                r#"{"policy": {"entrypoint": "mcp.authz"}}"#,
                "not a Rego data path",
            ),
            (
                r#"{"policy": {"entrypoint": "data.mcp..x"}}"#,
                "not a Rego data path",
            ),
            (
                r#"{"routing": {"mcp_scheme": false, "first_segment": false}}"#,
                "at least one",
            ),
            (
                r#"{"resources": {"a/b": {"type": "skill"}}}"#,
                "`resources.a/b`",
            ),
            (
                r#"{"resources": {"a": {"kind": "skill"}}}"#,
                "unknown field `kind`",
            ),
            (
                r#"{"resources": {"a": {"type": ""}}}"#,
                "`resources.a.type`",
            ),
            (
                r#"{"headers": {"input": ["Authorization"]}}"#,
                "never enters the input",
            ),
            (
                r#"{"headers": {"input": ["cookie"]}}"#,
                "never enters the input",
            ),
            (
                r#"{"headers": {"strip": ["bad header"]}}"#,
                "is not a header name",
            ),
            (
                r#"{"headers": {"strip_prefixes": [""]}}"#,
                "`headers.strip_prefixes[0]`",
            ),
            (
                r#"{"headers": {"max_value_bytes": 1}}"#,
                "between 16 and 8192",
            ),
            (r#"{"identity": {"max_depth": 1000}}"#, "between 2 and 64"),
            (
                r#"{"identity": {"cache_entries": 1000001}}"#,
                "at most 1000000",
            ),
            (
                r#"{"actions": {"data": {"bad method": "x"}}}"#,
                "HTTP methods",
            ),
            (r#"{"policy": {"entrypoint": 5}}"#, "invalid type"),
            (
                r#"{"policy": {"engine": "wasm"}}"#,
                "unknown variant `wasm`",
            ),
            (
                r#"{"vault": {"cluster": "vault", "auth_mount": "jwt", "role": "agent"},
                    "default_resource": {"type": "skill", "secrets": [{"kv": "secret/data/{agent}", "field": "k", "header": "x-key"}]}}"#,
                "unregistered services never get secrets",
            ),
        ];
        for (json, want) in cases {
            let e = err(json);
            assert!(e.contains(want), "{json}: {e:?} lacks {want:?}");
        }
    }

    #[test]
    fn trusted_headers_are_always_stripped() {
        let c = Config::from_json(br#"{"headers": {"strip_prefixes": ["x-other-"]}}"#).unwrap();
        for t in TRUSTED_HEADERS {
            assert!(c.must_strip(t.as_bytes()), "{t}");
        }
        assert!(!c.must_strip(b"x-mcp-foo"));
    }

    #[test]
    fn actions_follow_type_and_method() {
        let c = Config::from_json(
            br#"{"resources": {
                "s": {"type": "skill"}, "d": {"type": "data"},
                "fixed": {"type": "data", "action": "access_tool"}}}"#,
        )
        .unwrap();
        let a = |svc: &str, m: &str| c.action_for(c.resource(svc), m).map(str::to_owned);
        assert_eq!(a("s", "POST").as_deref(), Some("invoke_skill"));
        assert_eq!(a("d", "GET").as_deref(), Some("read_data"));
        assert_eq!(a("d", "DELETE").as_deref(), Some("write_data"));
        assert_eq!(a("fixed", "GET").as_deref(), Some("access_tool"));
        assert_eq!(a("unregistered", "GET"), None);
        assert_eq!(c.resource("nope").metadata["team"], "unknown");
    }
}
