//! MCP requests: JSON-RPC 2.0 messages a client POSTs over Streamable
//! HTTP, parsed strictly so that the policy decides on exactly what the
//! server will execute.
//!
//! Supported protocol revisions: [`SUPPORTED_VERSIONS`]. All of them
//! removed JSON-RPC batching (2025-06-18 did), so a JSON array is refused.
//! The body must be one JSON object with `"jsonrpc": "2.0"`, no duplicate
//! key at any depth (a server that keeps the first of two `name`s would run
//! another tool than the one authorized), nesting at most
//! [`Limits::max_depth`] deep, and `params`, when present, an object.
//!
//! 2026-07-28 (SEP-2243) mirrors the method and the target name in headers
//! (`Mcp-Method`, `Mcp-Name`, values wrapped as `=?base64?…?=` when they
//! cannot travel bare). When present, they must agree with the body, or
//! the request is refused as that revision says: HTTP 400 with JSON-RPC
//! error −32020. The policy only ever sees the body's values.
//! `Mcp-Param-*` headers mirror tool arguments chosen by the tool's schema,
//! which the server checks; the policy never sees them.
//!
//! `message.rs` parses and checks a client's message, `list.rs` filters
//! list results through the policy, `pins.rs` pins tool definitions (kept by `pin_store.rs`), `strict.rs` is the strict JSON reader
//! and `events.rs` splits event streams; the JSON-RPC codes stay here.

/// The MCP protocol revisions this filter understands, oldest first: every
/// era clients speak (a service may accept fewer: `resources.<id>.mcp_versions`).
pub const SUPPORTED_VERSIONS: [&str; 5] = [
    "2024-11-05",
    "2025-03-26",
    "2025-06-18",
    "2025-11-25",
    "2026-07-28",
];

/// JSON-RPC error codes used in refusals. The filter's own codes sit in
/// the implementation-defined range where no MCP SDK has one of its own
/// (the TypeScript SDK reads −32000 as a closed connection and −32001 as a
/// timeout; MCP itself uses −32002, −32020…−32022 and −32042).
pub mod code {
    /// Invalid JSON.
    pub const PARSE_ERROR: i64 = -32700;
    /// Not a valid request object.
    pub const INVALID_REQUEST: i64 = -32600;
    /// A method the gateway does not know (no action maps it).
    pub const METHOD_NOT_FOUND: i64 = -32601;
    /// Invalid method parameters.
    pub const INVALID_PARAMS: i64 = -32602;
    /// MCP 2026-07-28: a mirror header disagrees with the body.
    pub const HEADER_MISMATCH: i64 = -32020;
    /// MCP 2026-07-28: the protocol version is not supported; `data`
    /// carries `supported` and `requested`.
    pub const UNSUPPORTED_PROTOCOL_VERSION: i64 = -32022;
    /// MCP 2025-11-25: URL elicitation required (a call that needs a human
    /// approval; `data.elicitations` points to the page).
    pub const URL_ELICITATION_REQUIRED: i64 = -32042;
    /// agentplane: refused by policy.
    pub const FORBIDDEN: i64 = -32031;
    /// agentplane: no verified identity (with HTTP 401).
    pub const UNAUTHORIZED: i64 = -32032;
    /// agentplane: the gateway could not decide or deliver (HTTP 503).
    pub const UNAVAILABLE: i64 = -32033;
    /// agentplane: over a rate limit or in-flight cap (HTTP 429).
    pub const RATE_LIMITED: i64 = -32034;
}

/// The Streamable HTTP session header (lower case, as proxies hand it).
pub const SESSION_HEADER: &str = "mcp-session-id";

mod events;
mod list;
mod message;
pub mod pin_store;
pub mod pins;
mod strict;
pub use events::{event_data, with_data, EventSplitter};
pub use list::{
    list_field, list_fields_of, list_names, retain_listed, BodyForm, ListJob, ListPhase,
    LIST_FIELDS,
};
pub use message::{decode_header_value, parse, Kind, Limits, McpError, Message};
pub use strict::{fold, strict_json};

#[cfg(test)]
mod tests;
