//! The plugin configuration: one JSON document, unknown fields rejected,
//! validated into an immutable [`Config`] once per VM.
//!
//! Every field and its default is documented in the README; the
//! error messages name the field and say what to fix.

use serde::Deserialize;
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::fmt;

/// Headers the filter sets itself. They are always stripped from the client
/// request, whatever the configuration says, so they cannot be forged.
pub const TRUSTED_HEADERS: &[&str] = &["x-agent-id", "x-agent-type", "x-agent-team"];

/// Credentials that never enter the input document.
const NEVER_IN_INPUT: &[&str] = &[
    "authorization",
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
}

impl Default for IdentityConfig {
    fn default() -> Self {
        IdentityConfig {
            metadata_namespace: "envoy.filters.http.jwt_authn".into(),
            payload_key: "jwt_payload".into(),
            claims_namespace: "https://mcp.example.com/".into(),
            max_payload_bytes: 16 * 1024,
            max_depth: 16,
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
    pub engine: crate::policy::EngineChoice,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        PolicyConfig {
            entrypoint: "data.mcp.authz".into(),
            engine: crate::policy::EngineChoice::Rvm,
        }
    }
}

/// How the service (resource id) is found in the path.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RoutingConfig {
    /// Accept the seed's `/mcp://<service>/<path>` form.
    pub mcp_scheme: bool,
    /// Accept `/<service>/<path>`.
    pub first_segment: bool,
}

impl Default for RoutingConfig {
    fn default() -> Self {
        RoutingConfig {
            mcp_scheme: true,
            first_segment: true,
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
}

fn default_resource() -> ResourceConfig {
    let mut metadata = Map::new();
    metadata.insert("team".into(), Value::String("unknown".into()));
    metadata.insert("environment".into(), Value::String("unknown".into()));
    ResourceConfig {
        kind: "unknown".into(),
        metadata,
        action: None,
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

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    decision_cache: DecisionCacheConfig,
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
    /// `input.resource` for each registered service, built once here
    /// rather than on every request.
    resource_docs: BTreeMap<String, regorus::Value>,
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

fn resource_doc(r: &ResourceConfig, id: Option<&str>, registered: bool) -> regorus::Value {
    use crate::value;
    value::object([
        ("type", regorus::Value::from(r.kind.as_str())),
        ("id", value::opt_str(id)),
        ("registered", regorus::Value::from(registered)),
        (
            "metadata",
            value::object(
                r.metadata
                    .iter()
                    .map(|(k, v)| (k.as_str(), value::to_rego(v))),
            ),
        ),
    ])
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
        } = raw;

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
        }
        let default_resource = default_res.unwrap_or_else(default_resource);
        if default_resource.kind.is_empty() {
            return Err(invalid("default_resource.type", "must not be empty"));
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

        let resource_docs = resources
            .iter()
            .map(|(name, r)| (name.clone(), resource_doc(r, Some(name), true)))
            .collect();
        Ok(Config {
            identity,
            policy,
            routing,
            resources,
            default_resource,
            actions,
            headers,
            decision_cache,
            resource_docs,
        })
    }

    /// `input.resource` for a service (or for a path that names none).
    pub fn resource_doc(&self, service: Option<&str>) -> regorus::Value {
        match service.and_then(|s| self.resource_docs.get(s)) {
            Some(doc) => doc.clone(),
            None => resource_doc(&self.default_resource, service, false),
        }
    }

    /// The resource for a service: its registry entry or the default.
    pub fn resource(&self, service: &str) -> &ResourceConfig {
        self.resources
            .get(service)
            .unwrap_or(&self.default_resource)
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

    /// Whether a client header must be removed before processing.
    pub fn must_strip(&self, lower_name: &str) -> bool {
        self.headers
            .strip_prefixes
            .iter()
            .any(|p| lower_name.starts_with(p.as_str()))
            || self.headers.strip.iter().any(|h| h == lower_name)
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
        assert!(c.must_strip("x-agent-id"));
        assert!(c.must_strip("x-mcp-anything"));
        assert!(!c.must_strip("content-type"));
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
                r#"{"actions": {"data": {"bad method": "x"}}}"#,
                "HTTP methods",
            ),
            (r#"{"policy": {"entrypoint": 5}}"#, "invalid type"),
            (
                r#"{"policy": {"engine": "wasm"}}"#,
                "unknown variant `wasm`",
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
            assert!(c.must_strip(t), "{t}");
        }
        assert!(!c.must_strip("x-mcp-foo"));
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
