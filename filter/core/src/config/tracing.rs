//! The `tracing` section: whether the filter describes each request for
//! Envoy's tracer (see [`crate::trace`]). Off by default, and then the
//! filter makes no host call for it.

use serde::Deserialize;

/// What the filter hands Envoy's tracer.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct TracingConfig {
    /// Set the request's trace attributes (MCP method, tool, JSON-RPC id,
    /// protocol version, session digest, agent, decision id, outcome,
    /// error class) as filter state for the tracer's custom tags.
    pub attributes: bool,
}
