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

use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};
use std::fmt;

/// The MCP protocol revisions this filter understands.
pub const SUPPORTED_VERSIONS: [&str; 3] = ["2025-06-18", "2025-11-25", "2026-07-28"];

/// JSON-RPC error codes used in refusals.
pub mod code {
    /// Invalid JSON.
    pub const PARSE_ERROR: i64 = -32700;
    /// Not a valid request object.
    pub const INVALID_REQUEST: i64 = -32600;
    /// Invalid method parameters.
    pub const INVALID_PARAMS: i64 = -32602;
    /// MCP 2026-07-28: a mirror header disagrees with the body.
    pub const HEADER_MISMATCH: i64 = -32020;
    /// MCP 2026-07-28: the protocol version is not supported.
    pub const UNSUPPORTED_PROTOCOL_VERSION: i64 = -32022;
    /// Implementation-defined: refused by policy.
    pub const FORBIDDEN: i64 = -32001;
    /// Implementation-defined: no verified identity.
    pub const UNAUTHORIZED: i64 = -32002;
    /// Implementation-defined: the gateway could not decide.
    pub const UNAVAILABLE: i64 = -32003;
    /// agentplane: over a rate limit or in-flight cap (HTTP 429).
    pub const RATE_LIMITED: i64 = -32004;
}

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
}

/// Why a body is not an acceptable MCP message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct McpError {
    /// The JSON-RPC error code for the refusal.
    pub code: i64,
    /// What is wrong, for the client.
    pub message: String,
}

impl McpError {
    fn new(code: i64, message: impl Into<String>) -> McpError {
        McpError {
            code,
            message: message.into(),
        }
    }

    /// The HTTP status of the refusal.
    pub fn status(&self) -> u16 {
        400
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
    };
    m.check_params()?;
    Ok(m)
}

impl Message {
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
            (None, Some(_)) if mandatory => {
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

/// Parses JSON into a value, refusing duplicate object keys and nesting
/// deeper than `max_depth`.
pub fn strict_json(body: &[u8], max_depth: usize) -> Result<Value, serde_json::Error> {
    let mut d = serde_json::Deserializer::from_slice(body);
    let v = Strict { depth: max_depth }.deserialize(&mut d)?;
    d.end()?;
    Ok(v)
}

struct Strict {
    depth: usize,
}

impl Strict {
    fn inner<E: de::Error>(&self) -> Result<Strict, E> {
        match self.depth.checked_sub(1) {
            Some(depth) if depth > 0 => Ok(Strict { depth }),
            _ => Err(E::custom("nested too deeply")),
        }
    }
}

impl<'de> DeserializeSeed<'de> for Strict {
    type Value = Value;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Strict {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        serde_json::Number::from_f64(v)
            .map(Value::Number)
            .ok_or_else(|| E::custom("number out of range"))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_string()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(v) = seq.next_element_seed(self.inner()?)? {
            items.push(v);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(k) = map.next_key::<String>()? {
            if out.contains_key(&k) {
                return Err(de::Error::custom(format!("duplicate key {k:?}")));
            }
            let v = map.next_value_seed(self.inner()?)?;
            out.insert(k, v);
        }
        Ok(Value::Object(out))
    }
}

/// A list response to filter: the list's field in the result, the
/// request's input document (the policy decides on it with the listed
/// names added), whether the result is marked `cacheScope: private`, and
/// the response's form once its headers arrived.
#[derive(Debug, Clone, PartialEq)]
pub struct ListJob {
    pub(crate) field: &'static str,
    pub(crate) doc: regorus::Value,
    pub(crate) private: bool,
    pub(crate) form: Option<BodyForm>,
    /// The request's decision key, when decisions are cached.
    pub(crate) key: Option<Vec<u8>>,
    /// An event stream's incomplete tail.
    pub(crate) events: EventSplitter,
    pub(crate) phase: ListPhase,
}

/// How far a list response has come.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ListPhase {
    /// Looking for the list result.
    #[default]
    Reading,
    /// The request's answer went out: the rest passes untouched.
    Through,
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
        _ => None,
    }
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
/// resources), when `v` is a JSON-RPC response holding such a list.
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
    let key = if field == "resources" { "uri" } else { "name" };
    item.get(key)?.as_str()
}

/// Splits an event stream into whole events as network chunks arrive.
/// Events end at a blank line (`\r\n`, `\r` or `\n` line ends); the bytes
/// of an event not yet complete wait in a tail, scanned once.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventSplitter {
    tail: Vec<u8>,
    /// How far into `tail` the scan has gone.
    scanned: usize,
    /// Where the line being scanned starts.
    line_start: usize,
}

impl EventSplitter {
    /// Adds a chunk; returns the events it completed, each as its exact
    /// bytes including the blank line that ends it.
    pub fn push(&mut self, chunk: &[u8]) -> Vec<Vec<u8>> {
        self.tail.extend_from_slice(chunk);
        let mut events = Vec::new();
        let mut start = 0;
        let mut i = self.scanned;
        while let Some(&b) = self.tail.get(i) {
            if b != b'\n' && b != b'\r' {
                i += 1;
                continue;
            }
            let end = if b == b'\r' {
                match self.tail.get(i + 1) {
                    Some(b'\n') => i + 2,
                    Some(_) => i + 1,
                    // A CR last: it may be half of a CRLF; wait.
                    None => break,
                }
            } else {
                i + 1
            };
            let blank = i == self.line_start;
            i = end;
            self.line_start = end;
            if blank {
                if let Some(event) = self.tail.get(start..end) {
                    events.push(event.to_vec());
                }
                start = end;
            }
        }
        self.tail.drain(..start);
        self.scanned = i - start;
        self.line_start -= start;
        events
    }

    /// Bytes of an event not yet complete.
    pub fn pending(&self) -> usize {
        self.tail.len()
    }

    /// Takes what is left (the stream ended, or stopped being read).
    pub fn take_rest(&mut self) -> Vec<u8> {
        self.scanned = 0;
        self.line_start = 0;
        std::mem::take(&mut self.tail)
    }
}

/// One event's lines (without their ends), as the bytes hold them.
fn event_lines(raw: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = raw;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let end = rest
            .iter()
            .position(|&b| b == b'\n' || b == b'\r')
            .unwrap_or(rest.len());
        let (line, after) = rest.split_at(end);
        rest = match after {
            [b'\r', b'\n', more @ ..] => more,
            [_, more @ ..] => more,
            [] => &[],
        };
        Some(line)
    })
}

/// A `data` field line's value (`data:v`, `data: v`, or a bare `data`).
fn data_value(line: &[u8]) -> Option<&[u8]> {
    if line == b"data" {
        return Some(b"");
    }
    let v = line.strip_prefix(b"data:")?;
    Some(v.strip_prefix(b" ").unwrap_or(v))
}

/// An event's `data` lines joined by `\n`, as the SSE spec assembles them;
/// `None` when it has no data (a comment, a priming event with an id only).
pub fn event_data(raw: &[u8]) -> Option<Vec<u8>> {
    let mut data: Option<Vec<u8>> = None;
    for v in event_lines(raw).filter_map(data_value) {
        match data.as_mut() {
            Some(d) => {
                d.push(b'\n');
                d.extend_from_slice(v);
            }
            None => data = Some(v.to_vec()),
        }
    }
    data
}

/// The event with its data replaced by `data` (one line: serialized JSON
/// has no line breaks); its other fields (`id`, `event`, `retry`) stay.
pub fn with_data(raw: &[u8], data: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + 64);
    for line in event_lines(raw).filter(|l| !l.is_empty() && data_value(l).is_none()) {
        out.extend_from_slice(line);
        out.push(b'\n');
    }
    out.extend_from_slice(b"data: ");
    out.extend_from_slice(data.as_bytes());
    out.extend_from_slice(b"\n\n");
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    #[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    const L: Limits = Limits { max_depth: 16 };

    fn err(body: &str) -> McpError {
        parse(body.as_bytes(), L).unwrap_err()
    }

    #[test]
    fn a_tool_call_names_its_tool_and_arguments() {
        let m = parse(
            br#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"lookup_ticket","arguments":{"id":"T-1"}}}"#,
            L,
        )
        .unwrap();
        assert_eq!(m.kind, Kind::Request);
        assert_eq!(m.method.as_deref(), Some("tools/call"));
        assert_eq!(m.id, Some(Value::from(7)));
        assert_eq!(m.name(), Some("lookup_ticket"));
        assert_eq!(m.arguments().unwrap()["id"], "T-1");
    }

    #[test]
    fn notifications_and_client_responses_are_told_apart() {
        let n = parse(
            br#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#,
            L,
        )
        .unwrap();
        assert_eq!(n.kind, Kind::Notification);
        let r = parse(br#"{"jsonrpc":"2.0","id":"s-1","result":{}}"#, L).unwrap();
        assert_eq!(r.kind, Kind::Response);
        assert_eq!(r.method, None);
    }

    #[test]
    fn malformed_messages_are_refused_with_their_code() {
        assert_eq!(err("{").code, code::PARSE_ERROR);
        assert_eq!(err("").code, code::PARSE_ERROR);
        assert_eq!(
            err(r#"{"jsonrpc":"2.0","method":"x"} trailing"#).code,
            code::PARSE_ERROR
        );
        assert_eq!(
            err(r#"[{"jsonrpc":"2.0","id":1,"method":"ping"}]"#).code,
            code::INVALID_REQUEST
        );
        assert_eq!(err(r#""ping""#).code, code::INVALID_REQUEST);
        assert_eq!(
            err(r#"{"jsonrpc":"1.0","id":1,"method":"ping"}"#).code,
            code::INVALID_REQUEST
        );
        assert_eq!(
            err(r#"{"id":1,"method":"ping"}"#).code,
            code::INVALID_REQUEST
        );
        assert_eq!(
            err(r#"{"jsonrpc":"2.0","id":1}"#).code,
            code::INVALID_REQUEST
        );
        assert_eq!(
            err(r#"{"jsonrpc":"2.0","id":1,"method":7}"#).code,
            code::INVALID_REQUEST
        );
        assert_eq!(
            err(r#"{"jsonrpc":"2.0","id":null,"method":"ping"}"#).code,
            code::INVALID_REQUEST
        );
        assert_eq!(
            err(r#"{"jsonrpc":"2.0","id":{},"method":"ping"}"#).code,
            code::INVALID_REQUEST
        );
        assert_eq!(
            err(r#"{"jsonrpc":"2.0","id":1,"method":"ping","params":[1]}"#).code,
            code::INVALID_REQUEST
        );
        assert_eq!(
            err(r#"{"jsonrpc":"2.0","id":1,"method":"x","result":1}"#).code,
            code::INVALID_REQUEST
        );
        assert_eq!(
            err(r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{}}"#).code,
            code::INVALID_PARAMS
        );
        assert_eq!(
            err(r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"t","arguments":[1]}}"#).code,
            code::INVALID_PARAMS
        );
        assert_eq!(
            err(r#"{"jsonrpc":"2.0","id":1,"method":"resources/read","params":{"uri":3}}"#).code,
            code::INVALID_PARAMS
        );
    }

    #[test]
    fn a_duplicate_key_cannot_smuggle_a_second_tool_name() {
        let e = err(
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"read","name":"delete_all"}}"#,
        );
        assert_eq!(e.code, code::PARSE_ERROR);
        assert!(e.message.contains("duplicate key"), "{e}");
        let e = err(r#"{"jsonrpc":"2.0","id":1,"id":2,"method":"ping"}"#);
        assert!(e.message.contains("duplicate key"), "{e}");
    }

    #[test]
    fn deep_nesting_is_refused_not_recursed() {
        let deep = format!(
            r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{{"name":"t","arguments":{}1{}}}}}"#,
            "[".repeat(10_000),
            "]".repeat(10_000)
        );
        let e = parse(deep.as_bytes(), L).unwrap_err();
        assert_eq!(e.code, code::PARSE_ERROR);
        let ok = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"t","arguments":{"a":[[1]]}}}"#;
        assert!(parse(ok.as_bytes(), L).is_ok());
    }

    #[test]
    fn mirror_headers_must_agree_with_the_body() {
        let m = parse(
            br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"weather/\u6771\u4eac"}}"#,
            L,
        )
        .unwrap();
        let v = Some("2026-07-28");
        assert!(m
            .check_mirrors(
                Some("tools/call"),
                Some("=?base64?d2VhdGhlci/mnbHkuqw=?="),
                v
            )
            .is_ok());
        let e = m
            .check_mirrors(Some("tools/list"), Some("weather"), v)
            .unwrap_err();
        assert_eq!(e.code, code::HEADER_MISMATCH);
        let e = m
            .check_mirrors(Some("tools/call"), Some("other"), v)
            .unwrap_err();
        assert_eq!(e.code, code::HEADER_MISMATCH);
        assert_eq!(
            m.check_mirrors(Some("tools/call"), Some("=?base64?!!!?="), v)
                .unwrap_err()
                .code,
            code::HEADER_MISMATCH
        );
        // Mandatory from 2026-07-28, optional before.
        assert!(m.check_mirrors(None, None, v).is_err());
        assert!(m.check_mirrors(None, None, Some("2025-11-25")).is_ok());
        assert!(m.check_mirrors(None, None, None).is_ok());
        // A name header on a method that names nothing is a mismatch too.
        let list = parse(br#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#, L).unwrap();
        assert!(list
            .check_mirrors(Some("tools/list"), Some("x"), v)
            .is_err());
    }

    #[test]
    fn a_tool_list_keeps_only_the_tools_the_policy_shows() {
        let mut v: Value = serde_json::from_str(r#"{"jsonrpc":"2.0","id":3,"result":{"tools":[{"name":"a","inputSchema":{}},{"name":"b"},{"name":"c"},{"title":"nameless"}]}}"#).unwrap();
        assert_eq!(list_names(&v, "tools").unwrap(), ["a", "b", "c"]);
        assert_eq!(list_names(&v, "prompts"), None);
        retain_listed(&mut v, "tools", true, |n| n != "b");
        assert_eq!(v["id"], 3);
        assert_eq!(v["result"]["tools"].as_array().unwrap().len(), 2);
        assert_eq!(v["result"]["tools"][1]["name"], "c");
        assert_eq!(v["result"]["cacheScope"], "private");
        let n: Value =
            serde_json::from_str(r#"{"jsonrpc":"2.0","method":"notifications/progress"}"#).unwrap();
        assert_eq!(list_names(&n, "tools"), None);
    }

    /// Splits `stream` at every possible chunk boundary pair and checks the
    /// events come out the same, byte for byte.
    fn split_everywhere(stream: &[u8]) -> Vec<Vec<u8>> {
        let whole = {
            let mut s = EventSplitter::default();
            let mut e = s.push(stream);
            let rest = s.take_rest();
            if !rest.is_empty() {
                e.push(rest);
            }
            e
        };
        for i in 0..=stream.len() {
            for j in i..=stream.len() {
                let mut s = EventSplitter::default();
                let mut e = s.push(&stream[..i]);
                e.extend(s.push(&stream[i..j]));
                e.extend(s.push(&stream[j..]));
                let rest = s.take_rest();
                if !rest.is_empty() {
                    e.push(rest);
                }
                assert_eq!(e, whole, "split at {i},{j}");
            }
        }
        whole
    }

    #[test]
    fn events_split_alike_however_the_network_chunks_them() {
        let stream = b"event: message\r\nid: 1\r\ndata: {\"a\":1}\r\n\r\nid: 2\ndata: x\n\n: comment\r\rdata\ndata: y\n\npartial";
        let events = split_everywhere(stream);
        assert_eq!(events.len(), 5, "{events:?}");
        assert_eq!(events.concat(), stream, "every byte is kept");
        assert_eq!(event_data(&events[0]).unwrap(), br#"{"a":1}"#);
        assert_eq!(event_data(&events[1]).unwrap(), b"x");
        assert_eq!(event_data(&events[2]), None, "a comment has no data");
        assert_eq!(event_data(&events[3]).unwrap(), b"\ny");
        assert_eq!(events[4], b"partial");
    }

    #[test]
    fn arbitrary_bytes_in_arbitrary_chunks_never_lose_or_invent_a_byte() {
        // A small LCG: deterministic, no dependency.
        let mut x: u64 = 0x5eed;
        let mut next = move || {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (x >> 33) as usize
        };
        let alphabet = b"\r\n\r\ndata: x{}:";
        for _ in 0..300 {
            let len = next() % 200;
            let stream: Vec<u8> = (0..len)
                .map(|_| alphabet[next() % alphabet.len()])
                .collect();
            let mut s = EventSplitter::default();
            let mut out = Vec::new();
            let mut at = 0;
            while at < stream.len() {
                let n = 1 + next() % 17;
                let end = (at + n).min(stream.len());
                for e in s.push(&stream[at..end]) {
                    out.extend(e);
                }
                assert!(s.pending() <= stream.len());
                at = end;
            }
            out.extend(s.take_rest());
            assert_eq!(out, stream);
        }
    }

    #[test]
    fn a_rewritten_event_keeps_its_other_fields() {
        let raw = b"event: message\r\nid: 7\r\ndata: {\"old\":\r\ndata: 1}\r\n\r\n";
        let out = with_data(raw, r#"{"new":2}"#);
        assert_eq!(out, b"event: message\nid: 7\ndata: {\"new\":2}\n\n");
    }

    #[test]
    fn body_forms_are_read_from_the_content_type() {
        assert_eq!(
            BodyForm::of("text/event-stream; charset=utf-8"),
            Some(BodyForm::Sse)
        );
        assert_eq!(BodyForm::of("Application/JSON"), Some(BodyForm::Json));
        assert_eq!(BodyForm::of("text/html"), None);
    }

    #[test]
    fn base64_is_decoded_strictly() {
        assert_eq!(base64_decode("aGk=").unwrap(), b"hi");
        assert_eq!(base64_decode("aGkh").unwrap(), b"hi!");
        assert_eq!(base64_decode("").unwrap(), b"");
        assert!(base64_decode("aGk").is_none());
        assert!(base64_decode("a=Gk").is_none());
        assert!(base64_decode("aG=k").is_none());
        assert!(base64_decode("aGk=aGk=").is_none());
    }
}
