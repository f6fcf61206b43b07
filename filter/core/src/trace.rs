//! MCP-aware traces: with `tracing.attributes` on, the filter describes
//! each request it decides for Envoy's tracer, in the OpenTelemetry MCP
//! and GenAI semantic conventions' terms (`mcp.method.name`,
//! `gen_ai.tool.name`, `jsonrpc.request.id`, ...) and its own (decision id,
//! outcome).
//!
//! Envoy's tracer reads nothing from a wasm filter directly. Each
//! attribute is set as a stream property, which Envoy keeps as the filter
//! state `wasm.<property>`; the tracer's custom tags read them back with
//! `%FILTER_STATE(wasm.<property>:PLAIN)%` when the span ends
//! (`envoy/envoy.yaml` has one tag per entry of [`ATTRIBUTES`]).
//!
//! Values are bounded ([`MAX_VALUE`] bytes, control characters replaced)
//! and never carry a secret: the session id, which continues a session for
//! whoever holds it, is traced as its SHA-256 only (the decision log's
//! form), and the protocol version only when it is one the filter knows.
//! A property the host refuses leaves the attribute out of the span: the
//! trace describes the decision, it never changes it.

use crate::host::Host;
use crate::mcp::Message;
use crate::outcome::State;
use sha2::{Digest, Sha256};
use std::fmt::Write;

/// Longest value set, in bytes (cut at a character boundary): a tool name
/// or request id a client chose cannot grow every span it lands in.
pub const MAX_VALUE: usize = 128;

/// The MCP method (`tools/call`, `initialize`, ...).
pub const METHOD: &str = "agentplane.mcp.method.name";
/// The tool a `tools/call` names.
pub const TOOL: &str = "agentplane.gen_ai.tool.name";
/// `execute_tool` for a `tools/call`, as the GenAI conventions name it.
pub const OPERATION: &str = "agentplane.gen_ai.operation.name";
/// The JSON-RPC request id (a string, or a number's decimal form).
pub const REQUEST_ID: &str = "agentplane.jsonrpc.request.id";
/// The MCP revision the message is sent under (`MCP-Protocol-Version`).
pub const PROTOCOL_VERSION: &str = "agentplane.mcp.protocol.version";
/// Hex SHA-256 of the request's `Mcp-Session-Id`.
pub const SESSION: &str = "agentplane.mcp.session.id";
/// The agent the request was decided for.
pub const AGENT: &str = "agentplane.gen_ai.agent.id";
/// The decision id (also the `x-decision-id` header).
pub const DECISION: &str = "agentplane.decision.id";
/// `allowed`, `denied` or `pending` (waiting for secrets or an approval).
pub const OUTCOME: &str = "agentplane.decision.outcome";
/// On a refusal: its class (`forbidden`, `unauthorized`, `rate_limited`, ...).
pub const ERROR_TYPE: &str = "agentplane.error.type";

/// Each span attribute and the property (filter state `wasm.<property>`)
/// it is read from: what the tracer's custom tags list.
pub const ATTRIBUTES: [(&str, &str); 10] = [
    ("mcp.method.name", METHOD),
    ("gen_ai.tool.name", TOOL),
    ("gen_ai.operation.name", OPERATION),
    ("jsonrpc.request.id", REQUEST_ID),
    ("mcp.protocol.version", PROTOCOL_VERSION),
    ("mcp.session.id", SESSION),
    ("gen_ai.agent.id", AGENT),
    ("agentplane.decision.id", DECISION),
    ("agentplane.decision.outcome", OUTCOME),
    ("error.type", ERROR_TYPE),
];

/// The attributes of an MCP message, set once it is parsed (before its
/// decision, so a refusal's span names what was refused): `version` is
/// the `MCP-Protocol-Version` header, `session` the `Mcp-Session-Id`.
pub fn message<H: Host>(host: &mut H, m: &Message, version: Option<&str>, session: Option<&str>) {
    let method = m.method.as_deref();
    if let Some(method) = method {
        set(host, METHOD, method);
    }
    if method == Some("tools/call") {
        set(host, OPERATION, "execute_tool");
        if let Some(tool) = m.name() {
            set(host, TOOL, tool);
        }
    }
    match &m.id {
        Some(serde_json::Value::String(s)) => set(host, REQUEST_ID, s),
        Some(serde_json::Value::Number(n)) => set(host, REQUEST_ID, &n.to_string()),
        _ => {}
    }
    // Only a revision the filter knows: any other header value is the
    // client's free text.
    if let Some(v) = version.filter(|v| crate::mcp::SUPPORTED_VERSIONS.contains(v)) {
        set(host, PROTOCOL_VERSION, v);
    }
    if let Some(s) = session {
        set(host, SESSION, &sha256_hex(s));
    }
}

/// The decision's attributes: its id, the agent and the outcome.
pub fn decision<H: Host>(host: &mut H, id: &str, agent: Option<&str>, state: &State) {
    set(host, DECISION, id);
    if let Some(a) = agent {
        set(host, AGENT, a);
    }
    outcome(host, state);
}

/// The outcome (and on a refusal its class); set again when a pending
/// decision settles.
pub fn outcome<H: Host>(host: &mut H, state: &State) {
    let word = match state {
        State::Allowed => "allowed",
        State::Pending => "pending",
        State::Denied(_) => "denied",
    };
    set(host, OUTCOME, word);
    if let State::Denied(d) = state {
        set(host, ERROR_TYPE, d.error());
    }
}

fn set<H: Host>(host: &mut H, property: &str, value: &str) {
    // Refused: the span goes without this attribute (see the module docs).
    let _ = host.set_property(property, bounded(value).as_bytes());
}

/// `v` cut to [`MAX_VALUE`] bytes at a character boundary, control
/// characters replaced by `?`.
pub fn bounded(v: &str) -> String {
    let mut out = String::with_capacity(v.len().min(MAX_VALUE));
    for c in v.chars() {
        let c = if c.is_control() { '?' } else { c };
        if out.len() + c.len_utf8() > MAX_VALUE {
            break;
        }
        out.push(c);
    }
    out
}

fn sha256_hex(s: &str) -> String {
    let mut out = String::with_capacity(64);
    for b in Sha256::digest(s.as_bytes()) {
        let _ = write!(out, "{b:02x}");
    }
    out
}
