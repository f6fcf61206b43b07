//! Decision cache keys: [`KeyPlan`] decides once, from the input paths the
//! policy reads, which request facts a key holds; [`KeyPlan::key`] writes
//! a request's [`KeyFacts`] into length-prefixed bytes ([`Key`]). Why equal
//! keys mean equal decisions is in the module docs of `cache`.

use crate::headers::RequestHeaders;
use crate::reads::Path;

/// Builds a key from fields, each length-prefixed so that no two different
/// field lists produce the same bytes.
#[derive(Debug, Default)]
pub struct Key(Vec<u8>);

impl Key {
    /// An empty key with room for `capacity` bytes.
    pub fn with_capacity(capacity: usize) -> Key {
        Key(Vec::with_capacity(capacity))
    }

    /// Appends a present field.
    pub fn field(&mut self, bytes: &[u8]) -> &mut Key {
        let len = u32::try_from(bytes.len()).unwrap_or(u32::MAX - 1);
        self.0.extend_from_slice(&len.to_le_bytes());
        self.0.extend_from_slice(bytes);
        self
    }

    /// Appends a field that may be absent (distinct from empty).
    pub fn optional(&mut self, bytes: Option<&[u8]>) -> &mut Key {
        match bytes {
            Some(b) => self.field(b),
            None => {
                self.0.extend_from_slice(&u32::MAX.to_le_bytes());
                self
            }
        }
    }

    /// The bytes.
    pub fn into_bytes(self) -> Vec<u8> {
        self.0
    }
}

/// One fact of a request that a decision key holds.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    /// The service (it determines `input.resource`).
    Service,
    /// `input.action`.
    Action,
    /// `input.request.method`.
    Method,
    /// `input.request.host`.
    Host,
    /// The raw path (it determines `input.request.path` and `raw_path`).
    Path,
    /// The raw query string (it determines `input.request.query`).
    Query,
    /// One configured input header.
    Header(String),
    /// All configured input headers.
    Headers,
    /// `input.request.id`.
    RequestId,
    /// `input.mcp`, or one field of it.
    Mcp(Option<String>),
    /// `input.source`.
    Source,
    /// `input.transaction`.
    Transaction,
}

/// The members of `input.mcp` a key holds by themselves (`listed` and
/// `listed_definitions` are never in a request's input: the filter adds
/// them when a list answer arrives, and the list's own key holds them);
/// reading any other keys the decision on the whole message.
const KEYED_MCP: [&str; 12] = [
    "listed",
    "listed_definitions",
    "kind",
    "method",
    "id",
    "protocol_version",
    "tool",
    "prompt",
    "uri",
    "task",
    "arguments",
    "tool_definition",
];

/// The request facts a decision depends on, besides the principal, as
/// [`KeyPlan::key`] reads them.
#[derive(Debug, Clone, Copy)]
pub struct KeyFacts<'a> {
    /// The principal's serial number.
    pub principal: u64,
    /// The service, if the path names one.
    pub service: Option<&'a str>,
    /// The action, if the table defines one.
    pub action: Option<&'a str>,
    /// The normalized method.
    pub method: &'a str,
    /// `:authority`.
    pub host: &'a str,
    /// The path without query.
    pub raw_path: &'a str,
    /// The query string.
    pub query: &'a str,
    /// The request id.
    pub request_id: &'a str,
    /// The request headers.
    pub headers: &'a RequestHeaders,
    /// The MCP message and its protocol version, for an MCP request.
    pub mcp: Option<(&'a crate::mcp::Message, Option<&'a str>)>,
    /// A called tool's definition against its pin (`input.mcp.tool_definition`).
    pub tool_pin: Option<&'a crate::mcp::pins::ToolPin>,
    /// The connection's peer, when read.
    pub source: Option<&'a crate::source::Source>,
    /// A verified inbound transaction token.
    pub transaction: Option<&'a crate::txn::Inbound>,
}

/// Which facts a decision key holds, decided once at configure time from
/// the input paths the policy reads (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyPlan {
    parts: Vec<Part>,
    input_headers: Vec<String>,
}

impl KeyPlan {
    /// The plan for a policy that reads `reads` (`None`: anything) with
    /// these configured input headers.
    pub fn new(reads: Option<&[Path]>, input_headers: &[String]) -> KeyPlan {
        let request = [
            Part::Method,
            Part::Host,
            Part::Path,
            Part::Query,
            Part::Headers,
            Part::RequestId,
        ];
        let mut parts: Vec<Part> = Vec::new();
        let everything = || {
            let mut all = vec![
                Part::Service,
                Part::Action,
                Part::Mcp(None),
                Part::Source,
                Part::Transaction,
            ];
            all.extend(request.iter().cloned());
            all
        };
        match reads {
            None => parts = everything(),
            Some(paths) => {
                for p in paths {
                    let Some((root, rest)) = p.split_first() else {
                        parts.extend(everything());
                        continue;
                    };
                    match (root.as_str(), rest.first().map(String::as_str)) {
                        // The principal covers the token and the agent.
                        ("jwt" | "agent" | "delegation", _) => {}
                        ("resource", _) => parts.push(Part::Service),
                        ("action", _) => parts.push(Part::Action),
                        ("mcp", field) => parts.push(Part::Mcp(field.map(str::to_owned))),
                        ("source", _) => parts.push(Part::Source),
                        ("transaction", _) => parts.push(Part::Transaction),
                        ("request", None) => parts.extend(request.iter().cloned()),
                        ("request", Some("method")) => parts.push(Part::Method),
                        ("request", Some("host")) => parts.push(Part::Host),
                        ("request", Some("path" | "raw_path")) => parts.push(Part::Path),
                        ("request", Some("query")) => parts.push(Part::Query),
                        ("request", Some("id")) => parts.push(Part::RequestId),
                        ("request", Some("headers")) => match rest.get(1) {
                            None => parts.push(Part::Headers),
                            Some(h) => parts.push(Part::Header(h.clone())),
                        },
                        // Left to the policy's valid_until_ns.
                        ("request", Some("time_ns")) => {}
                        // Not in the input document: always undefined.
                        _ => {}
                    }
                }
            }
        }
        let all_headers = parts.contains(&Part::Headers);
        let mut unique: Vec<Part> = Vec::new();
        for p in parts {
            let redundant = matches!(p, Part::Header(_)) && all_headers;
            if !redundant && !unique.contains(&p) {
                unique.push(p);
            }
        }
        KeyPlan {
            parts: unique,
            input_headers: input_headers.to_vec(),
        }
    }

    /// The decision key of a request.
    pub fn key(&self, f: &KeyFacts<'_>) -> Vec<u8> {
        let mut k = Key::with_capacity(64);
        k.field(&f.principal.to_le_bytes());
        for p in &self.parts {
            match p {
                Part::Service => k.optional(f.service.map(str::as_bytes)),
                Part::Action => k.optional(f.action.map(str::as_bytes)),
                Part::Method => k.field(f.method.as_bytes()),
                Part::Host => k.field(f.host.as_bytes()),
                Part::Path => k.field(f.raw_path.as_bytes()),
                Part::Query => k.field(f.query.as_bytes()),
                Part::RequestId => k.field(f.request_id.as_bytes()),
                Part::Source => match f.source {
                    Some(src) => {
                        for v in src.key_fields() {
                            k.optional(v.map(str::as_bytes));
                        }
                        &mut k
                    }
                    None => k.optional(None),
                },
                Part::Transaction => match f.transaction {
                    Some(t) => {
                        for v in t.key_fields() {
                            k.field(v.as_bytes());
                        }
                        &mut k
                    }
                    None => k.optional(None),
                },
                Part::Header(h) => {
                    let listed = self.input_headers.iter().any(|n| n == h);
                    k.optional(f.headers.get(h).filter(|_| listed).map(str::as_bytes))
                }
                Part::Headers => {
                    for h in &self.input_headers {
                        k.optional(f.headers.get(h).map(str::as_bytes));
                    }
                    &mut k
                }
                Part::Mcp(field) => match f.mcp {
                    None => k.optional(None),
                    Some((m, version)) => {
                        let all = field.is_none();
                        let wants = |name: &str| all || field.as_deref() == Some(name);
                        k.field(b"mcp");
                        if wants("kind") {
                            k.field(m.kind.as_str().as_bytes());
                        }
                        if wants("method") {
                            k.optional(m.method.as_deref().map(str::as_bytes));
                        }
                        if wants("id") {
                            let id = m.id.as_ref().and_then(|v| serde_json::to_vec(v).ok());
                            k.optional(id.as_deref());
                        }
                        if wants("protocol_version") {
                            k.optional(version.map(str::as_bytes));
                        }
                        if ["tool", "prompt", "uri", "task"].iter().any(|n| wants(n)) {
                            // The method decides which of these the name is.
                            k.optional(m.method.as_deref().map(str::as_bytes));
                            k.optional(m.name().map(str::as_bytes));
                        }
                        if wants("arguments") {
                            // serde_json's maps are sorted: equal arguments,
                            // equal bytes.
                            let args = m.arguments().and_then(|a| serde_json::to_vec(a).ok());
                            k.optional(args.as_deref());
                        }
                        if wants("tool_definition") {
                            let p = f.tool_pin;
                            k.optional(p.and_then(|p| p.digest.as_deref()).map(str::as_bytes));
                            k.optional(p.map(|p| p.state.as_str().as_bytes()));
                        }
                        // Any other member (`client`, `requested_version`,
                        // `input_responses`, `request_state`, or one added
                        // later), or all of them: the whole message keys
                        // the decision, so no member the policy reads can
                        // be left out of the key.
                        let known = KEYED_MCP.iter().any(|n| field.as_deref() == Some(*n));
                        if !known {
                            let whole = m.to_json().ok();
                            k.optional(whole.as_deref());
                        }
                        &mut k
                    }
                },
            };
        }
        k.into_bytes()
    }
}
