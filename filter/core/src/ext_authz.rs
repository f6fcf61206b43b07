//! The input shape of opa-envoy-plugin (Envoy's `ext_authz` check request,
//! as OPA's Envoy plugin hands it to a policy), so that a policy written
//! for it runs unchanged (`policy.input: "envoy"`): `attributes.request
//! .http` (`id`, `method`, `path`, `host`, `scheme`, `protocol`,
//! `headers`, `size`), `attributes.source` and `attributes.destination`
//! (`address.socketAddress`), `attributes.metadataContext.filterMetadata`
//! (the verified token's payload under jwt_authn's name), `parsed_path`,
//! `parsed_query`, `parsed_body`, `truncated_body` and `version`. The
//! members agentplane's own policies read stay beside them.

use crate::headers::RequestHeaders;
use crate::value;
use regorus::Value as Rego;

/// What the shape is built from.
pub struct Facts<'a> {
    /// The request's headers (the client's, minus what the filter strips;
    /// pseudo-headers included, as ext_authz hands them).
    pub headers: &'a RequestHeaders,
    /// The request id.
    pub id: &'a str,
    /// `:method`.
    pub method: &'a str,
    /// `:path` as the client sent it, query included.
    pub path: &'a str,
    /// `:authority`.
    pub host: &'a str,
    /// The connection's addresses, when the host tells: (source,
    /// destination) as `ip:port`.
    pub addresses: (Option<String>, Option<String>),
    /// `input.jwt` (`valid`, `payload`): the payload goes under
    /// jwt_authn's `payload_in_metadata` name, `jwt_payload`.
    pub jwt: &'a Rego,
    /// The request body as JSON, when the filter read and parsed it (an
    /// MCP message).
    pub body: Option<serde_json::Value>,
}

/// `address.socketAddress` of `ip:port` (`[v6]:port` too).
fn socket(addr: Option<&str>) -> Rego {
    let Some(a) = addr else {
        return Rego::new_object();
    };
    let (ip, port) = match a.rsplit_once(':') {
        Some((ip, port)) => (
            ip.trim_start_matches('[').trim_end_matches(']'),
            port.parse::<u64>().ok(),
        ),
        None => (a, None),
    };
    value::object([(
        "address",
        value::object([(
            "socketAddress",
            value::object([
                ("address", Rego::from(ip)),
                ("portValue", port.map_or(Rego::Null, Rego::from)),
            ]),
        )]),
    )])
}

/// opa-envoy-plugin's `parsed_path`: the path before `?`, split on `/`
/// after the leading ones, each segment percent-decoded.
pub fn parsed_path(path: &str) -> Vec<String> {
    let before = path.split(['?', '#']).next().unwrap_or_default();
    let trimmed = before.trim_start_matches('/');
    if trimmed.is_empty() {
        return vec![String::new()];
    }
    trimmed
        .split('/')
        .map(crate::input::percent_decode)
        .collect()
}

/// The members this shape adds to the input document.
pub fn members(f: &Facts<'_>) -> Vec<(&'static str, Rego)> {
    // Repeated headers are joined with "," as Envoy joins them for
    // ext_authz; a value that is not UTF-8 is left out.
    let mut headers: std::collections::BTreeMap<String, String> = Default::default();
    for (k, v) in f.headers.pairs() {
        let (Ok(k), Ok(v)) = (std::str::from_utf8(k), std::str::from_utf8(v)) else {
            continue;
        };
        headers
            .entry(k.to_string())
            .and_modify(|e| {
                e.push(',');
                e.push_str(v);
            })
            .or_insert_with(|| v.to_string());
    }
    let scheme = f
        .headers
        .get(":scheme")
        .or_else(|| f.headers.get("x-forwarded-proto"))
        .unwrap_or("http");
    let size = f
        .headers
        .get("content-length")
        .and_then(|n| n.parse::<u64>().ok());
    let http = value::object([
        ("id", Rego::from(f.id)),
        ("method", Rego::from(f.method)),
        ("path", Rego::from(f.path)),
        ("host", Rego::from(f.host)),
        ("scheme", Rego::from(scheme)),
        ("protocol", Rego::from("HTTP/1.1")),
        (
            "headers",
            value::object(
                headers
                    .iter()
                    .map(|(k, v)| (k.as_str(), Rego::from(v.as_str()))),
            ),
        ),
        ("size", size.map_or(Rego::Null, Rego::from)),
    ]);
    let query = f.path.split_once('?').map_or("", |(_, q)| q);
    let query = query.split('#').next().unwrap_or_default();
    vec![
        (
            "attributes",
            value::object([
                ("request", value::object([("http", http)])),
                ("source", socket(f.addresses.0.as_deref())),
                ("destination", socket(f.addresses.1.as_deref())),
                (
                    "metadataContext",
                    value::object([(
                        "filterMetadata",
                        value::object([(
                            "envoy.filters.http.jwt_authn",
                            value::object([(
                                "jwt_payload",
                                crate::value::member(f.jwt, "payload")
                                    .cloned()
                                    .unwrap_or(Rego::Null),
                            )]),
                        )]),
                    )]),
                ),
            ]),
        ),
        ("parsed_path", value::strings(&parsed_path(f.path))),
        (
            "parsed_query",
            value::to_rego(&serde_json::Value::Object(crate::input::parse_query(query))),
        ),
        (
            "parsed_body",
            f.body.as_ref().map_or(Rego::Null, value::to_rego),
        ),
        ("truncated_body", Rego::from(false)),
        (
            "version",
            value::object([
                ("encoding", Rego::from("protojson")),
                ("ext_authz", Rego::from("v3")),
            ]),
        ),
    ]
}
