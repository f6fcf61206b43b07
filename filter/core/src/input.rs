//! Builds the OPA input document from the request, the identity and the
//! resource registry. Its shape is documented in docs/input.md; keep the
//! two in step.

use crate::config::{Config, ResourceConfig};
use crate::headers::RequestHeaders;
use crate::principal::Principal;
use crate::value;
use regorus::Value as Rego;
use serde_json::{Map, Value};
use std::fmt;

/// A path the filter refuses to route.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RouteError {
    /// A `.`/`..` segment, an encoded slash or a backslash: the policy and
    /// the upstream could disagree on which resource is meant.
    Ambiguous(String),
    /// The `:path` header is missing or not origin-form.
    Malformed,
    /// A filter guarding one service (`routing.local_service`) got a path
    /// naming another registered service: the request was meant for a
    /// service that is not the one it reaches.
    OtherService {
        /// The service this filter guards, where the request is delivered.
        local: String,
        /// The registered service the path names.
        named: String,
    },
}

impl fmt::Display for RouteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RouteError::Ambiguous(seg) => write!(f, "ambiguous path segment {seg:?}"),
            RouteError::Malformed => write!(f, "malformed request path"),
            RouteError::OtherService { local, named } => write!(
                f,
                "the path names service {named:?}, but this proxy guards and delivers to {local:?} only"
            ),
        }
    }
}

impl std::error::Error for RouteError {}

/// The parts of `:path` the policy sees.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route<'a> {
    /// The service (resource id), if the path names one.
    pub service: Option<&'a str>,
    /// Non-empty segments; the first is the service.
    pub segments: Vec<&'a str>,
    /// The path without the query string.
    pub raw_path: &'a str,
    /// The raw query string (after `?`), possibly empty.
    pub query: &'a str,
    /// The path the service itself receives: what follows the service
    /// segment (at least `/`), plus the query. Both route forms give the
    /// same upstream path, so where a request lands never depends on which
    /// form the client chose. `None` when the path names no service, and
    /// with `routing.local_service`, where the path goes on unchanged.
    pub upstream_path: Option<String>,
}

/// Splits `:path` into service, segments and query.
///
/// `/mcp://svc/a/b?x=1` (when `routing.mcp_scheme`) and `/svc/a/b?x=1` (when
/// `routing.first_segment`) both give service `svc` and segments
/// `["svc", "a", "b"]`.
///
/// With `routing.local_service` the path does not pick the service: `/a/b`
/// gives the local service, segments `[local, "a", "b"]` (so `path[0]` is
/// still the service) and no upstream path (it is delivered as sent).
pub fn parse_route<'a>(path: &'a str, config: &'a Config) -> Result<Route<'a>, RouteError> {
    if let Some(local) = config.routing.local_service.as_deref() {
        return parse_local(path, local, config);
    }
    let (raw_path, query) = split_path(path)?;
    let rest = match raw_path.strip_prefix("/mcp://") {
        Some(rest) if config.routing.mcp_scheme => Some(rest),
        _ if config.routing.first_segment => raw_path.get(1..),
        _ => None,
    };
    let segments: Vec<&str> = rest
        .map(|r| r.split('/').filter(|s| !s.is_empty()).collect())
        .unwrap_or_default();
    check_segments(&segments)?;
    let upstream_path = rest.and_then(|r| {
        let r = r.trim_start_matches('/');
        let (svc, tail) = r.split_at(r.find('/').unwrap_or(r.len()));
        (!svc.is_empty()).then(|| {
            let mut p = if tail.is_empty() {
                "/".to_string()
            } else {
                tail.to_string()
            };
            if !query.is_empty() {
                p.push('?');
                p.push_str(query);
            }
            p
        })
    });
    Ok(Route {
        service: segments.first().copied(),
        segments,
        raw_path,
        query,
        upstream_path,
    })
}

/// An origin-form `:path` split into path and query (any fragment dropped).
fn split_path(path: &str) -> Result<(&str, &str), RouteError> {
    if !path.starts_with('/') {
        return Err(RouteError::Malformed);
    }
    let (raw_path, query) = match path.split_once('?') {
        Some((p, q)) => (p, q),
        None => (path, ""),
    };
    let raw_path = raw_path.split_once('#').map_or(raw_path, |(p, _)| p);
    let query = query.split_once('#').map_or(query, |(q, _)| q);
    Ok((raw_path, query))
}

/// Refuses segments the policy and the upstream could read as different
/// resources.
fn check_segments(segments: &[&str]) -> Result<(), RouteError> {
    for seg in segments {
        let lower = seg.to_ascii_lowercase();
        if *seg == "."
            || *seg == ".."
            || lower.contains("%2f")
            || lower.contains("%5c")
            || seg.contains('\\')
            || lower.contains("%2e")
        {
            return Err(RouteError::Ambiguous((*seg).to_string()));
        }
    }
    Ok(())
}

/// [`parse_route`] for a filter that guards one service: whatever the
/// path says, that service is the one the request reaches, so it is the one
/// decided. A path that names another registered service, in either route
/// form and whatever `mcp_scheme`/`first_segment` say, was meant for that
/// service and is refused rather than decided as this one.
fn parse_local<'a>(
    path: &'a str,
    local: &'a str,
    config: &Config,
) -> Result<Route<'a>, RouteError> {
    let (raw_path, query) = split_path(path)?;
    let named = raw_path
        .strip_prefix("/mcp://")
        .unwrap_or(raw_path)
        .split('/')
        .find(|s| !s.is_empty());
    if let Some(named) = named.filter(|n| *n != local && config.resources.contains_key(*n)) {
        return Err(RouteError::OtherService {
            local: local.to_string(),
            named: named.to_string(),
        });
    }
    let mut segments = vec![local];
    segments.extend(raw_path.split('/').filter(|s| !s.is_empty()));
    check_segments(segments.get(1..).unwrap_or_default())?;
    Ok(Route {
        service: Some(local),
        segments,
        raw_path,
        query,
        upstream_path: None,
    })
}

pub(crate) fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        let hex = |j: usize| bytes.get(j).and_then(|c| (*c as char).to_digit(16));
        match b {
            b'+' => out.push(b' '),
            b'%' => {
                if let (Some(h), Some(l)) = (hex(i + 1), hex(i + 2)) {
                    out.push((h * 16 + l) as u8);
                    i += 2;
                } else {
                    out.push(b'%');
                }
            }
            _ => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parses a query string into `{name: [values...]}`, decoded.
pub fn parse_query(query: &str) -> Map<String, Value> {
    let mut out = Map::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let entry = out
            .entry(percent_decode(k))
            .or_insert_with(|| Value::Array(Vec::new()));
        if let Value::Array(values) = entry {
            values.push(Value::String(percent_decode(v)));
        }
    }
    out
}

/// `input.resource` for every registered service, built once at configure
/// time rather than on every request (config knows no engine values; this
/// is where they are made).
#[derive(Debug)]
pub struct ResourceDocs {
    docs: std::collections::BTreeMap<String, Rego>,
}

/// `input.resource`: type, id, whether registered, metadata, and
/// `protocol: "mcp"` for an MCP service (absent: plain HTTP).
fn resource_doc(r: &ResourceConfig, id: Option<&str>, registered: bool) -> Rego {
    let mut entries = vec![
        ("type", Rego::from(r.kind.as_str())),
        ("id", value::opt_str(id)),
        ("registered", Rego::from(registered)),
        (
            "metadata",
            value::object(
                r.metadata
                    .iter()
                    .map(|(k, v)| (k.as_str(), value::to_rego(v))),
            ),
        ),
    ];
    if r.protocol == crate::config::Protocol::Mcp {
        entries.push(("protocol", Rego::from("mcp")));
    }
    value::object(entries)
}

impl ResourceDocs {
    /// Builds the documents of a configuration's registry.
    pub fn new(config: &Config) -> ResourceDocs {
        ResourceDocs {
            docs: config
                .resources
                .iter()
                .map(|(name, r)| (name.clone(), resource_doc(r, Some(name), true)))
                .collect(),
        }
    }

    /// `input.resource` for a service (or for a path that names none).
    pub fn get(&self, config: &Config, service: Option<&str>) -> Rego {
        match service.and_then(|s| self.docs.get(s)) {
            Some(doc) => doc.clone(),
            None => resource_doc(&config.default_resource, service, false),
        }
    }
}

/// Everything request-specific the input document needs.
pub struct RequestFacts<'a> {
    /// `:method`.
    pub method: &'a str,
    /// The parsed `:path`.
    pub route: &'a Route<'a>,
    /// `:authority`.
    pub host: &'a str,
    /// The request id (the decision id, or a trusted `x-request-id`).
    pub id: &'a str,
    /// The action the table gives the service's type and the method.
    pub action: Option<&'a str>,
    /// When the decision is made, ns since the epoch.
    pub time_ns: u64,
    /// The connection's peer, when read.
    pub source: Option<&'a crate::source::Source>,
    /// A verified inbound transaction token.
    pub transaction: Option<&'a crate::txn::Inbound>,
    /// With `policy.input: "envoy"`: opa-envoy-plugin's members
    /// (`crate::ext_authz::members`), added to the document; `None`
    /// otherwise.
    pub envoy: Option<Vec<(&'static str, Rego)>>,
}

/// Builds the input document, directly as a regorus value (see
/// [`crate::value`] for why).
pub fn build(
    headers: &RequestHeaders,
    config: &Config,
    docs: &ResourceDocs,
    principal: &Principal,
    facts: &RequestFacts<'_>,
    mcp: Option<Rego>,
) -> Rego {
    let header_doc = value::object(
        config
            .headers
            .input
            .iter()
            .filter_map(|name| Some((name.as_str(), Rego::from(headers.get(name)?)))),
    );
    let action = facts.action.map_or(Rego::Null, Rego::from);
    let query = if facts.route.query.is_empty() {
        Rego::new_object()
    } else {
        value::to_rego(&Value::Object(parse_query(facts.route.query)))
    };
    let mut doc = vec![
        ("jwt", principal.jwt.clone()),
        ("agent", principal.agent.clone()),
        ("delegation", principal.delegation.clone()),
        ("source", crate::source::Source::doc(facts.source)),
        ("transaction", crate::txn::Inbound::doc(facts.transaction)),
        (
            "request",
            value::object([
                ("id", Rego::from(facts.id)),
                ("method", Rego::from(facts.method)),
                ("host", Rego::from(facts.host)),
                ("path", value::strings(&facts.route.segments)),
                ("raw_path", Rego::from(facts.route.raw_path)),
                ("query", query),
                ("headers", header_doc),
                ("time_ns", Rego::from(facts.time_ns)),
            ]),
        ),
        ("resource", docs.get(config, facts.route.service)),
        ("action", action),
        ("mcp", mcp.unwrap_or(Rego::Null)),
    ];
    if let Some(x) = &facts.envoy {
        doc.extend(x.iter().cloned());
    }
    value::object(doc)
}

/// `input.mcp` for an MCP message: `kind`, `method`, `id`, the target
/// (`tool`, `prompt` or `uri`, by method), `arguments`, the protocol
/// version it was sent under, the version an `initialize` asks for
/// (`requested_version`), the client (`client.info`,
/// `client.capabilities`, when it says) and a multi-round-trip request's
/// `input_responses` and `request_state`; for a call to a tool of a pinned
/// service, `tool_definition` (`digest`, `pin`: see [`crate::mcp::pins`]).
/// `null` on requests that are not MCP.
pub fn mcp_doc(
    m: &crate::mcp::Message,
    version: Option<&str>,
    tool_pin: Option<&crate::mcp::pins::ToolPin>,
) -> Rego {
    let method = m.method.as_deref();
    let target = match method {
        Some("tools/call") => Some("tool"),
        Some("prompts/get") => Some("prompt"),
        Some("resources/read" | "resources/subscribe" | "resources/unsubscribe") => Some("uri"),
        Some("tasks/get" | "tasks/update" | "tasks/cancel") => Some("task"),
        _ => None,
    };
    let mut entries = vec![
        ("kind", Rego::from(m.kind.as_str())),
        ("method", value::opt_str(method)),
        ("id", m.id.as_ref().map_or(Rego::Null, value::to_rego)),
        ("protocol_version", value::opt_str(version)),
    ];
    if let Some(t) = target {
        entries.push((t, value::opt_str(m.name())));
    }
    if let Some(p) = tool_pin {
        entries.push(("tool_definition", p.to_rego()));
    }
    if matches!(method, Some("tools/call" | "prompts/get")) {
        let args = m.arguments().map_or_else(Rego::new_object, |a| {
            value::to_rego(&Value::Object(a.clone()))
        });
        entries.push(("arguments", args));
    }
    let (info, capabilities) = (m.client_info(), m.client_capabilities());
    if info.is_some() || capabilities.is_some() {
        let opt = |v: Option<&Value>| v.map_or(Rego::Null, value::to_rego);
        entries.push((
            "client",
            value::object(vec![
                ("info", opt(info)),
                ("capabilities", opt(capabilities)),
            ]),
        ));
    }
    if let Some(v) = m.requested_version() {
        entries.push(("requested_version", Rego::from(v)));
    }
    let (responses, state) = m.mrtr();
    if let Some(r) = responses {
        entries.push(("input_responses", value::to_rego(r)));
    }
    if let Some(s) = state {
        entries.push(("request_state", value::to_rego(s)));
    }
    value::object(entries)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use crate::claims::Identity;
    use crate::host::MockHost;
    use serde_json::json;
    #[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    fn cfg() -> Config {
        Config::from_json(
            br#"{"resources": {"sentiment-analysis": {"type": "skill",
                "metadata": {"team": "ml", "environment": "production"}}}}"#,
        )
        .unwrap()
    }

    #[test]
    fn both_route_forms_name_the_service() {
        let c = cfg();
        let r = parse_route("/mcp://sentiment-analysis/v1/analyze?lang=en", &c).unwrap();
        assert_eq!(r.service, Some("sentiment-analysis"));
        assert_eq!(r.segments, ["sentiment-analysis", "v1", "analyze"]);
        assert_eq!(r.raw_path, "/mcp://sentiment-analysis/v1/analyze");
        assert_eq!(r.query, "lang=en");
        let r = parse_route("/sentiment-analysis//v1/", &c).unwrap();
        assert_eq!(r.segments, ["sentiment-analysis", "v1"]);
        assert_eq!(parse_route("/", &c).unwrap().service, None);
    }

    #[test]
    fn routing_modes_are_honoured() {
        let only_mcp = Config::from_json(br#"{"routing": {"first_segment": false}}"#).unwrap();
        assert_eq!(parse_route("/svc/x", &only_mcp).unwrap().service, None);
        assert_eq!(
            parse_route("/mcp://svc/x", &only_mcp).unwrap().service,
            Some("svc")
        );
        let only_seg = Config::from_json(br#"{"routing": {"mcp_scheme": false}}"#).unwrap();
        assert_eq!(
            parse_route("/mcp://svc/x", &only_seg).unwrap().service,
            Some("mcp:")
        );
    }

    #[test]
    fn ambiguous_paths_are_refused() {
        let c = cfg();
        for p in [
            "/mcp://svc/../billing",
            "/svc/./x",
            "/svc/a%2Fb",
            "/svc/%2e%2e/x",
            "/svc/a\\b",
            "/mcp://../x",
        ] {
            assert!(
                matches!(parse_route(p, &c), Err(RouteError::Ambiguous(_))),
                "{p}"
            );
        }
        assert_eq!(parse_route("svc", &c), Err(RouteError::Malformed));
    }

    #[test]
    fn query_is_decoded_into_lists() {
        let q = parse_query("a=1&a=2&b=hello+world&c&d=%41%zz");
        assert_eq!(
            Value::Object(q),
            json!({"a": ["1", "2"], "b": ["hello world"], "c": [""], "d": ["A%zz"]})
        );
    }

    #[test]
    fn document_has_the_documented_shape() {
        let c = cfg();
        let h = MockHost::new()
            .with_header("content-type", "application/json")
            .with_header("authorization", "Bearer secret-token")
            .with_header("cookie", "session=1");
        let ident = Identity {
            id: "agent@clients".into(),
            agent_type: Some("support".into()),
            team: Some("customer-success".into()),
            environment: None,
            workload_id: None,
            permissions: vec!["skills:invoke".into()],
            payload: json!({"sub": "agent@clients"}).as_object().unwrap().clone(),
            chain: Vec::new(),
        };
        let ident = Principal::new(1, ident, 256);
        let route = parse_route("/mcp://sentiment-analysis/analyze", &c).unwrap();
        let facts = RequestFacts {
            method: "POST",
            route: &route,
            host: "localhost",
            id: "rid",
            action: c.action_for(c.resource("sentiment-analysis"), "POST"),
            time_ns: 7,
            source: None,
            transaction: None,
            envoy: None,
        };
        let hdrs = crate::headers::read(&h, &c).unwrap();
        let doc = crate::value::from_rego(&build(
            &hdrs,
            &c,
            &ResourceDocs::new(&c),
            &ident,
            &facts,
            None,
        ));
        assert_eq!(doc["action"], "invoke_skill");
        assert_eq!(
            doc["resource"],
            json!({"type": "skill", "id": "sentiment-analysis", "registered": true,
            "metadata": {"team": "ml", "environment": "production"}})
        );
        assert_eq!(
            doc["request"]["path"],
            json!(["sentiment-analysis", "analyze"])
        );
        assert_eq!(
            doc["request"]["headers"],
            json!({"content-type": "application/json"})
        );
        assert_eq!(doc["agent"]["environment"], Value::Null);
        let text = doc.to_string();
        assert!(!text.contains("secret-token") && !text.contains("session=1"));

        let route = parse_route("/nope/x", &c).unwrap();
        let facts = RequestFacts {
            method: "GET",
            route: &route,
            host: "h",
            id: "r",
            action: c.action_for(c.resource("nope"), "GET"),
            time_ns: 7,
            source: None,
            transaction: None,
            envoy: None,
        };
        let doc = crate::value::from_rego(&build(
            &hdrs,
            &c,
            &ResourceDocs::new(&c),
            &ident,
            &facts,
            None,
        ));
        assert_eq!(doc["resource"]["metadata"]["team"], "unknown");
        assert_eq!(doc["resource"]["registered"], false);
        assert_eq!(doc["action"], Value::Null);
    }
}
