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

use serde_json::{Map, Value};
use std::fmt;

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

/// Bounds on what the parser accepts.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Deepest nesting of objects and arrays.
    pub max_depth: usize,
}

/// What kind of JSON-RPC message a client sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A method call with an id: the server answers it.
    Request,
    /// A method call without an id: no answer.
    Notification,
    /// The client answering a server's request (`result` or `error`).
    Response,
}

impl Kind {
    /// The name `input.mcp.kind` carries.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Request => "request",
            Kind::Notification => "notification",
            Kind::Response => "response",
        }
    }
}

/// One parsed MCP message.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    /// Request, notification or response.
    pub kind: Kind,
    /// The method (absent for responses).
    pub method: Option<String>,
    /// The id: a string or a number (absent for notifications).
    pub id: Option<Value>,
    /// `params`, when present.
    pub params: Option<Map<String, Value>>,
    /// The message's other members (`jsonrpc`, a response's `result` or
    /// `error`, anything else), kept so that what goes upstream is the
    /// message as parsed ([`Message::to_json`]).
    pub rest: Map<String, Value>,
}

/// Why a body is not an acceptable MCP message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct McpError {
    /// The JSON-RPC error code for the refusal.
    pub code: i64,
    /// What is wrong, for the client.
    pub message: String,
    /// Members the error's `data` carries besides the filter's own (for
    /// −32022: `supported`, `requested`).
    pub data: Option<Map<String, Value>>,
}

impl McpError {
    /// An error with a code and a message.
    pub fn new(code: i64, message: impl Into<String>) -> McpError {
        McpError {
            code,
            message: message.into(),
            data: None,
        }
    }

    /// −32022 for a revision outside `supported`, with the `data` a
    /// 2026-07-28 client reads to retry with one it speaks.
    pub fn unsupported_version(requested: &str, supported: &[String]) -> McpError {
        let mut data = Map::new();
        data.insert("supported".into(), Value::from(supported.to_vec()));
        data.insert("requested".into(), Value::from(requested));
        McpError {
            code: code::UNSUPPORTED_PROTOCOL_VERSION,
            message: format!(
                "unsupported MCP protocol version {requested:?}; supported: {}",
                supported.join(", ")
            ),
            data: Some(data),
        }
    }

    /// The HTTP status of the refusal: a method the gateway does not know
    /// is an answer (200, as a server answers it); anything else is 400.
    pub fn status(&self) -> u16 {
        if self.code == code::METHOD_NOT_FOUND {
            200
        } else {
            400
        }
    }
}

impl fmt::Display for McpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.message, self.code)
    }
}

impl std::error::Error for McpError {}

/// Parses a body into one message (see the module docs for what is
/// refused).
pub fn parse(body: &[u8], limits: Limits) -> Result<Message, McpError> {
    let value = strict_json(body, limits.max_depth)
        .map_err(|e| McpError::new(code::PARSE_ERROR, format!("invalid JSON: {e}")))?;
    let mut obj = match value {
        Value::Object(o) => o,
        Value::Array(_) => {
            return Err(McpError::new(
                code::INVALID_REQUEST,
                "JSON-RPC batches are not part of MCP since 2025-06-18",
            ))
        }
        _ => {
            return Err(McpError::new(
                code::INVALID_REQUEST,
                "a JSON-RPC message must be an object",
            ))
        }
    };
    let invalid = |m: &str| McpError::new(code::INVALID_REQUEST, m);
    if let Some((k, known)) = misspelt(&obj, &MEMBERS) {
        return Err(McpError::new(
            code::INVALID_REQUEST,
            format!("member {k:?} must be spelled {known:?}"),
        ));
    }
    if let Some((k, known)) = obj
        .get("params")
        .and_then(Value::as_object)
        .and_then(|p| misspelt(p, &PARAMS))
    {
        return Err(McpError::new(
            code::INVALID_PARAMS,
            format!("params member {k:?} must be spelled {known:?}"),
        ));
    }
    if obj.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
        return Err(invalid("\"jsonrpc\" must be \"2.0\""));
    }
    let id = match obj.remove("id") {
        None => None,
        Some(v @ (Value::String(_) | Value::Number(_))) => Some(v),
        Some(_) => return Err(invalid("\"id\" must be a string or a number")),
    };
    let params = match obj.remove("params") {
        None => None,
        Some(Value::Object(p)) => Some(p),
        Some(_) => return Err(invalid("\"params\" must be an object")),
    };
    let method = match obj.remove("method") {
        None => None,
        Some(Value::String(m)) if !m.is_empty() => Some(m),
        Some(_) => return Err(invalid("\"method\" must be a non-empty string")),
    };
    let answer = obj.contains_key("result") || obj.contains_key("error");
    let kind = match (&method, &id, answer) {
        (Some(_), Some(_), false) => Kind::Request,
        (Some(_), None, false) => Kind::Notification,
        (None, Some(_), true) if params.is_none() => Kind::Response,
        (None, _, _) => return Err(invalid("missing \"method\"")),
        (Some(_), _, true) => {
            return Err(invalid(
                "a message cannot both call a method and carry a result",
            ))
        }
    };
    let m = Message {
        kind,
        method,
        id,
        params,
        rest: obj,
    };
    m.check_params()?;
    Ok(m)
}

/// The JSON-RPC members, as the protocol spells them.
const MEMBERS: [&str; 6] = ["jsonrpc", "id", "method", "params", "result", "error"];
/// The `params` members the filter or the policy reads.
const PARAMS: [&str; 12] = [
    "name",
    "arguments",
    "uri",
    "taskId",
    "_meta",
    "cursor",
    "protocolVersion",
    "capabilities",
    "clientInfo",
    "clientCapabilities",
    "inputResponses",
    "requestState",
];

/// A key that a case-insensitive decoder would take for one of `known`
/// but is spelled otherwise (`Method`, `paramſ`, `NAME`): the filter would
/// not see it where such a server would.
fn misspelt<'a>(
    obj: &'a Map<String, Value>,
    known: &[&'static str],
) -> Option<(&'a str, &'static str)> {
    obj.keys().find_map(|k| {
        let f = fold(k);
        known
            .iter()
            .find(|want| **want != k.as_str() && fold(want) == f)
            .map(|want| (k.as_str(), *want))
    })
}

impl Message {
    /// The message as parsed, serialized: what goes upstream in place of
    /// the client's bytes, so that the server reads exactly what the
    /// policy decided on (members in sorted order, no whitespace, each
    /// string and number as this parser read it).
    pub fn to_json(&self) -> Result<Vec<u8>, serde_json::Error> {
        let mut all = self.rest.clone();
        if let Some(id) = &self.id {
            all.insert("id".into(), id.clone());
        }
        if let Some(m) = &self.method {
            all.insert("method".into(), Value::String(m.clone()));
        }
        if let Some(p) = &self.params {
            all.insert("params".into(), Value::Object(p.clone()));
        }
        serde_json::to_vec(&all)
    }

    fn param_str(&self, key: &str) -> Option<&str> {
        self.params.as_ref()?.get(key)?.as_str()
    }

    /// The target the method names: the tool or prompt (`params.name`),
    /// the resource (`params.uri`) or the task (`params.taskId`), as
    /// SEP-2243's `Mcp-Name` mirrors it.
    pub fn name(&self) -> Option<&str> {
        let key = match self.method.as_deref()? {
            "tools/call" | "prompts/get" => "name",
            "resources/read" | "resources/subscribe" | "resources/unsubscribe" => "uri",
            "tasks/get" | "tasks/update" | "tasks/cancel" => "taskId",
            _ => return None,
        };
        self.param_str(key)
    }

    /// `params.arguments` of `tools/call` and `prompts/get`.
    pub fn arguments(&self) -> Option<&Map<String, Value>> {
        self.params.as_ref()?.get("arguments")?.as_object()
    }

    /// The protocol version the message declares in its own `_meta`
    /// (2026-07-28 carries it per request), if any.
    pub fn meta_version(&self) -> Option<&str> {
        self.params
            .as_ref()?
            .get("_meta")?
            .get("io.modelcontextprotocol/protocolVersion")?
            .as_str()
    }

    /// A member of `params`, or of `params._meta` under the
    /// `io.modelcontextprotocol/` prefix (2026-07-28 carries per-request
    /// client facts there).
    fn param_or_meta(&self, key: &str, meta: &str) -> Option<&Value> {
        let p = self.params.as_ref()?;
        p.get(key).or_else(|| {
            p.get("_meta")?
                .get(format!("io.modelcontextprotocol/{meta}").as_str())
        })
    }

    /// The client's `clientInfo` (`initialize`, or a request's `_meta`).
    pub fn client_info(&self) -> Option<&Value> {
        self.param_or_meta("clientInfo", "clientInfo")
    }

    /// The client's capabilities (`initialize`'s `capabilities`, or
    /// `clientCapabilities` in a request or its `_meta`).
    pub fn client_capabilities(&self) -> Option<&Value> {
        match self.method.as_deref() {
            Some("initialize") => self.params.as_ref()?.get("capabilities"),
            _ => self.param_or_meta("clientCapabilities", "clientCapabilities"),
        }
    }

    /// The revision an `initialize` asks for (`params.protocolVersion`).
    pub fn requested_version(&self) -> Option<&str> {
        if self.method.as_deref() != Some("initialize") {
            return None;
        }
        self.param_str("protocolVersion")
    }

    /// Multi-round-trip requests (2026-07-28): the answers a client brings
    /// back (`params.inputResponses`) and the server's sealed state
    /// (`params.requestState`).
    pub fn mrtr(&self) -> (Option<&Value>, Option<&Value>) {
        let p = self.params.as_ref();
        (
            p.and_then(|p| p.get("inputResponses")),
            p.and_then(|p| p.get("requestState")),
        )
    }

    /// The methods that name a target must name it, with the right type.
    fn check_params(&self) -> Result<(), McpError> {
        let bad = |m: String| McpError::new(code::INVALID_PARAMS, m);
        let Some(method) = self.method.as_deref() else {
            return Ok(());
        };
        let needs = match method {
            "tools/call" | "prompts/get" => Some("name"),
            "resources/read" | "resources/subscribe" | "resources/unsubscribe" => Some("uri"),
            _ => None,
        };
        if let Some(key) = needs {
            if self.param_str(key).is_none_or(str::is_empty) {
                return Err(bad(format!(
                    "{method} needs a non-empty string params.{key}"
                )));
            }
        }
        if matches!(method, "tools/call" | "prompts/get") {
            let args = self.params.as_ref().and_then(|p| p.get("arguments"));
            if !matches!(args, None | Some(Value::Object(_))) {
                return Err(bad(format!("{method}: params.arguments must be an object")));
            }
        }
        Ok(())
    }

    /// Checks SEP-2243's mirror headers against the body: each one present
    /// must agree (`Mcp-Name` after undoing its Base64 wrapping). From
    /// 2026-07-28 on they are mandatory for requests.
    pub fn check_mirrors(
        &self,
        mcp_method: Option<&str>,
        mcp_name: Option<&str>,
        version: Option<&str>,
    ) -> Result<(), McpError> {
        let mismatch = |m: String| McpError::new(code::HEADER_MISMATCH, m);
        let mandatory = version.is_some_and(|v| v >= "2026-07-28") && self.kind != Kind::Response;
        match (mcp_method, self.method.as_deref()) {
            (Some(h), Some(b)) if h != b => {
                return Err(mismatch(format!(
                    "Mcp-Method header {h:?} does not match body method {b:?}"
                )))
            }
            (Some(h), None) => {
                return Err(mismatch(format!(
                    "Mcp-Method header {h:?} on a message without a method"
                )))
            }
            (None, Some(_)) if mandatory => {
                return Err(mismatch("missing required Mcp-Method header".into()))
            }
            _ => {}
        }
        match (mcp_name, self.name()) {
            (Some(raw), expected) => {
                let decoded = decode_header_value(raw)
                    .ok_or_else(|| mismatch("Mcp-Name header is not valid Base64".into()))?;
                if Some(decoded.as_str()) != expected {
                    return Err(mismatch(format!(
                        "Mcp-Name header {decoded:?} does not match the body ({expected:?})"
                    )));
                }
            }
            // SEP-2243 demands the name header for these three only.
            (None, Some(_))
                if mandatory
                    && matches!(
                        self.method.as_deref(),
                        Some("tools/call" | "resources/read" | "prompts/get")
                    ) =>
            {
                return Err(mismatch("missing required Mcp-Name header".into()))
            }
            _ => {}
        }
        Ok(())
    }
}

/// Undoes SEP-2243's `=?base64?<b64>?=` wrapping; other values are taken
/// as they are. `None` for a wrapping of invalid Base64 or UTF-8.
pub fn decode_header_value(value: &str) -> Option<String> {
    match value
        .strip_prefix("=?base64?")
        .and_then(|v| v.strip_suffix("?="))
    {
        Some(inner) => String::from_utf8(base64_decode(inner)?).ok(),
        None => Some(value.to_string()),
    }
}

/// Standard Base64 with padding (RFC 4648 §4), strictly.
fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let b = s.as_bytes();
    if b.len() % 4 != 0 {
        return None;
    }
    let val = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let mut out = Vec::with_capacity(b.len() / 4 * 3);
    let chunks = b.chunks(4);
    let n = chunks.len();
    for (i, chunk) in chunks.enumerate() {
        let pad = chunk.iter().rev().take_while(|&&c| c == b'=').count();
        if pad > 2 || (pad > 0 && i + 1 != n) {
            return None;
        }
        let mut acc = 0u32;
        for (j, &c) in chunk.iter().enumerate() {
            let v = if j >= 4 - pad { 0 } else { val(c)? };
            acc = (acc << 6) | v;
        }
        let bytes = acc.to_be_bytes();
        out.extend_from_slice(bytes.get(1..4 - pad)?);
    }
    Some(out)
}

/// How the responses of an allowed request to an MCP service are read.
/// Every list result that reaches the client passes through the policy's
/// `visible` rule: the answer to this request, when it is a list request
/// (`field`), is filtered on the request's input document with the listed
/// names added; any other list result on the same response (on an event
/// stream opened by GET, a resumed stream, a second message) cannot be
/// tied to the request the policy saw and is refused in place.
#[derive(Debug, Clone, PartialEq)]
pub struct ListJob {
    /// The list field of this request's answer, for a list request.
    pub(crate) field: Option<&'static str>,
    /// The request's input document (a list request's; else null).
    pub(crate) doc: regorus::Value,
    pub(crate) private: bool,
    pub(crate) form: Option<BodyForm>,
    /// The request's decision key, when decisions are cached.
    pub(crate) key: Option<Vec<u8>>,
    /// An event stream's incomplete tail.
    pub(crate) events: EventSplitter,
    pub(crate) phase: ListPhase,
}

/// How far a response has come.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ListPhase {
    /// Reading messages.
    #[default]
    Reading,
    /// A JSON answer went out: nothing follows it.
    Through,
    /// Refused at its headers (compressed, or of a type the filter cannot
    /// read): its first chunk becomes the JSON-RPC error.
    Refused,
    /// It could not be filtered and ended as a JSON-RPC error: the rest of
    /// the body is dropped.
    Failed,
}

/// The list methods whose results are filtered, and the field of the
/// result that holds the list.
pub fn list_field(method: &str) -> Option<&'static str> {
    match method {
        "tools/list" => Some("tools"),
        "prompts/list" => Some("prompts"),
        "resources/list" => Some("resources"),
        "resources/templates/list" => Some("resourceTemplates"),
        _ => None,
    }
}

/// Every result field [`list_field`] names.
pub const LIST_FIELDS: [&str; 4] = ["tools", "prompts", "resources", "resourceTemplates"];

/// The list fields a JSON-RPC response's `result` holds (as arrays).
pub fn list_fields_of(v: &Value) -> Vec<&'static str> {
    let Some(result) = v.get("result").and_then(Value::as_object) else {
        return Vec::new();
    };
    LIST_FIELDS
        .into_iter()
        .filter(|f| result.get(*f).is_some_and(Value::is_array))
        .collect()
}

/// A JSON-RPC response body in one of the forms Streamable HTTP uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyForm {
    /// `application/json`: one JSON-RPC message.
    Json,
    /// `text/event-stream`: events whose `data` are JSON-RPC messages.
    Sse,
}

impl BodyForm {
    /// The form of a response, from its `content-type`.
    pub fn of(content_type: &str) -> Option<BodyForm> {
        let media = content_type.split(';').next()?.trim().to_ascii_lowercase();
        match media.as_str() {
            "application/json" => Some(BodyForm::Json),
            "text/event-stream" => Some(BodyForm::Sse),
            _ => None,
        }
    }
}

/// The names a list result shows (`result.<field>[].name`, `uri` for
/// resources, `uriTemplate` for resource templates), when `v` is a JSON-RPC response holding such a list.
pub fn list_names(v: &Value, field: &str) -> Option<Vec<String>> {
    let items = v.get("result")?.get(field)?.as_array()?;
    Some(
        items
            .iter()
            .filter_map(|item| item_name(item, field))
            .map(str::to_string)
            .collect(),
    )
}

/// Keeps only the list entries `keep` accepts (an entry without a name is
/// dropped); `private` marks the result `cacheScope: "private"`
/// (2026-07-28). Does nothing to a message that holds no list.
pub fn retain_listed(v: &mut Value, field: &str, private: bool, keep: impl Fn(&str) -> bool) {
    let Some(result) = v.get_mut("result").and_then(Value::as_object_mut) else {
        return;
    };
    let Some(items) = result.get_mut(field).and_then(Value::as_array_mut) else {
        return;
    };
    items.retain(|item| item_name(item, field).is_some_and(&keep));
    if private {
        result.insert("cacheScope".into(), Value::from("private"));
    }
}

fn item_name<'a>(item: &'a Value, field: &str) -> Option<&'a str> {
    let key = match field {
        "resources" => "uri",
        "resourceTemplates" => "uriTemplate",
        _ => "name",
    };
    item.get(key)?.as_str()
}

mod events;
mod strict;
pub use events::{event_data, with_data, EventSplitter};
pub use strict::{fold, strict_json};

#[cfg(test)]
mod tests;
