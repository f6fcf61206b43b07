//! One client message: [`parse`] reads a body strictly into a
//! [`Message`] (or refuses it with an [`McpError`] carrying its JSON-RPC
//! code), and [`Message::check_mirrors`] checks SEP-2243's mirror headers
//! against it. List results and event streams live in `list.rs` and
//! `events.rs`.

use super::{code, fold, strict_json};
use serde_json::{Map, Value};
use std::fmt;

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
pub(super) fn base64_decode(s: &str) -> Option<Vec<u8>> {
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
