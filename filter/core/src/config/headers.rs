//! The `headers` section: which client headers are stripped and which
//! enter the input document, and the header names the filter owns (always
//! stripped, never configurable).

use super::error::{invalid, ConfigError};
use serde::Deserialize;

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

impl HeadersConfig {
    /// Checks the section and puts it in the form the request path
    /// compares against: names lower-cased, the trusted headers added to
    /// `strip`.
    pub(crate) fn check(&mut self) -> Result<(), ConfigError> {
        for (i, p) in self.strip_prefixes.iter_mut().enumerate() {
            *p = p.to_ascii_lowercase();
            if p.is_empty() || !is_token(p) {
                return Err(invalid(
                    format!("headers.strip_prefixes[{i}]"),
                    "must be a non-empty header-name prefix",
                ));
            }
        }
        for (field, list) in [("strip", &mut self.strip), ("input", &mut self.input)] {
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
        if let Some(bad) = self
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
            if !self.strip.iter().any(|h| h == t) {
                self.strip.push((*t).to_string());
            }
        }
        if !(16..=8192).contains(&self.max_value_bytes) {
            return Err(invalid(
                "headers.max_value_bytes",
                "must be between 16 and 8192",
            ));
        }
        Ok(())
    }
}

/// An HTTP token (RFC 9110): a header name, or a method.
pub(crate) fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}
