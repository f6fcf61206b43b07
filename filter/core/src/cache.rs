//! The decision cache: reuse a policy decision for an equivalent request
//! while the policy says the decision cannot change.
//!
//! # When reuse is safe
//!
//! The input document is a function of: the verified JWT payload (from the
//! dynamic metadata bytes jwt_authn wrote), the method, the path, the
//! `:authority`, the configured input headers, the request id and the time.
//! A decision's key ([`KeyPlan`]) holds the principal (a serial number
//! standing for the exact metadata bytes, see [`crate::principal`]) and
//! the exact bytes of every other fact the policy reads, found in its
//! source at configure time ([`crate::reads`]); everything when that
//! cannot be known. So two requests with equal keys build input documents
//! that are equal wherever the policy looks, up to `input.request.time_ns`.
//!
//! - Time: the policy itself says until when its decision holds, through a
//!   `valid_until_ns` rule in the entrypoint package (ours: the next UTC
//!   hour boundary, or the token's expiry if sooner). A policy without that
//!   rule is never cached. Reuse is also capped by `max_ttl_ms`.
//! - The policy and its data are compiled into the filter and the config is
//!   fixed for the life of a VM, so they cannot change under the cache.
//!
//! Keys are the full bytes, not a hash of them: a hit needs byte equality,
//! so no collision can hand one agent another's decision. The cache is per
//! worker (one per wasm VM), bounded by `max_entries`: when full, an
//! insert evicts one entry (an expired one if it finds one quickly).

use crate::config::DecisionCacheConfig;
use crate::headers::RequestHeaders;
use crate::reads::Path;
use std::collections::HashMap;

/// A bounded map from request keys to decisions with an expiry each.
#[derive(Debug)]
pub struct DecisionCache<T> {
    max_entries: usize,
    max_ttl_ns: u64,
    /// key → (decided at, valid until (exclusive), decision).
    map: HashMap<Vec<u8>, (u64, u64, T)>,
    /// Lookups answered from the cache.
    pub hits: u64,
    /// Lookups that had to evaluate.
    pub misses: u64,
}

impl<T: Clone> DecisionCache<T> {
    /// An empty cache.
    pub fn new(cfg: &DecisionCacheConfig) -> Self {
        DecisionCache {
            max_entries: cfg.max_entries,
            max_ttl_ns: cfg.max_ttl_ms.saturating_mul(1_000_000),
            map: HashMap::new(),
            hits: 0,
            misses: 0,
        }
    }

    /// The decision stored for `key`, if it is valid at `now_ns`: not
    /// before it was made (the policy vouches only for later times, and a
    /// wall clock can step back) and before its expiry.
    pub fn get(&mut self, key: &[u8], now_ns: u64) -> Option<T> {
        let found = match self.map.get(key) {
            Some((from, until, v)) if *from <= now_ns && now_ns < *until => Some(v.clone()),
            Some(_) => {
                self.map.remove(key);
                None
            }
            None => None,
        };
        if found.is_some() {
            self.hits += 1;
        } else {
            self.misses += 1;
        }
        found
    }

    /// Stores a decision made at `now_ns` that the policy says holds until
    /// `valid_until_ns` (exclusive). Decisions already stale are not kept.
    pub fn insert(&mut self, key: Vec<u8>, value: T, now_ns: u64, valid_until_ns: u64) {
        let until = valid_until_ns.min(now_ns.saturating_add(self.max_ttl_ns));
        if until <= now_ns {
            return;
        }
        if self.map.len() >= self.max_entries && !self.map.contains_key(&key) {
            // Evict one entry: the first expired one among a few, else the
            // first one the map yields (arbitrary, as the hasher is seeded).
            let victim = self
                .map
                .iter()
                .take(8)
                .find(|(_, (_, u, _))| *u <= now_ns)
                .or_else(|| self.map.iter().next())
                .map(|(k, _)| k.clone());
            if let Some(k) = victim {
                self.map.remove(&k);
            }
        }
        self.map.insert(key, (now_ns, until, value));
    }

    /// Entries held (some may have expired).
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

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
                        &mut k
                    }
                },
            };
        }
        k.into_bytes()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    #[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    fn paths(ps: &[&[&str]]) -> Vec<Path> {
        ps.iter()
            .map(|p| p.iter().map(|s| s.to_string()).collect())
            .collect()
    }

    fn headers(pairs: &[(&str, &str)]) -> RequestHeaders {
        RequestHeaders::from_pairs(
            pairs
                .iter()
                .map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec()))
                .collect(),
            |_| false,
        )
    }

    fn facts<'a>(h: &'a RequestHeaders) -> KeyFacts<'a> {
        KeyFacts {
            principal: 7,
            service: Some("tickets"),
            action: Some("read_data"),
            method: "GET",
            host: "h",
            raw_path: "/mcp://tickets/1",
            query: "a=1",
            request_id: "r1",
            headers: h,
            mcp: None,
            source: None,
            transaction: None,
        }
    }

    #[test]
    fn a_key_holds_what_the_policy_reads_and_the_principal() {
        let input = vec!["content-type".to_string()];
        let plan = KeyPlan::new(
            Some(&paths(&[
                &["jwt", "payload", "exp"],
                &["agent", "team"],
                &["resource"],
                &["action"],
                &["request", "method"],
                &["request", "time_ns"],
                &["elsewhere"],
            ])),
            &input,
        );
        let h = headers(&[("content-type", "a"), ("x-other", "1")]);
        let h2 = headers(&[("content-type", "b")]);
        let base = plan.key(&facts(&h));
        // Facts the policy never reads share the decision.
        for f in [
            KeyFacts {
                query: "a=2",
                ..facts(&h)
            },
            KeyFacts {
                raw_path: "/mcp://tickets/2",
                ..facts(&h)
            },
            KeyFacts {
                request_id: "r2",
                ..facts(&h)
            },
            KeyFacts {
                host: "other",
                ..facts(&h)
            },
            KeyFacts {
                headers: &h2,
                ..facts(&h)
            },
        ] {
            assert_eq!(plan.key(&f), base);
        }
        // Facts it reads, and the principal, never do.
        for f in [
            KeyFacts {
                principal: 8,
                ..facts(&h)
            },
            KeyFacts {
                service: Some("billing"),
                ..facts(&h)
            },
            KeyFacts {
                service: None,
                ..facts(&h)
            },
            KeyFacts {
                action: None,
                ..facts(&h)
            },
            KeyFacts {
                method: "POST",
                ..facts(&h)
            },
        ] {
            assert_ne!(plan.key(&f), base);
        }
    }

    #[test]
    fn an_unknown_read_keys_on_everything_but_the_time() {
        let input = vec!["content-type".to_string()];
        for plan in [
            KeyPlan::new(None, &input),
            KeyPlan::new(Some(&paths(&[&[]])), &input),
        ] {
            let h = headers(&[("content-type", "a")]);
            let h2 = headers(&[("content-type", "b")]);
            let base = plan.key(&facts(&h));
            for f in [
                KeyFacts {
                    query: "a=2",
                    ..facts(&h)
                },
                KeyFacts {
                    raw_path: "/mcp://tickets/2",
                    ..facts(&h)
                },
                KeyFacts {
                    request_id: "r2",
                    ..facts(&h)
                },
                KeyFacts {
                    host: "other",
                    ..facts(&h)
                },
                KeyFacts {
                    headers: &h2,
                    ..facts(&h)
                },
                KeyFacts {
                    service: None,
                    ..facts(&h)
                },
            ] {
                assert_ne!(plan.key(&f), base);
            }
        }
    }

    #[test]
    fn a_header_read_keys_on_that_configured_header_only() {
        let input = vec!["content-type".to_string(), "x-source".to_string()];
        let plan = KeyPlan::new(
            Some(&paths(&[
                &["request", "headers", "x-source"],
                &["request", "headers", "not-configured"],
            ])),
            &input,
        );
        let a = headers(&[("x-source", "crm"), ("content-type", "a")]);
        let b = headers(&[("x-source", "erp"), ("content-type", "a")]);
        let c = headers(&[
            ("x-source", "crm"),
            ("content-type", "b"),
            ("not-configured", "1"),
        ]);
        assert_ne!(plan.key(&facts(&a)), plan.key(&facts(&b)));
        assert_eq!(plan.key(&facts(&a)), plan.key(&facts(&c)));
        // Field boundaries are length-prefixed: no two splits collide.
        let x = headers(&[("x-source", "ab")]);
        let y = headers(&[("x-source", "a")]);
        assert_ne!(plan.key(&facts(&x)), plan.key(&facts(&y)));
    }

    #[test]
    fn an_mcp_key_holds_the_tool_and_arguments_the_policy_reads_not_the_id() {
        let plan = KeyPlan::new(
            Some(&paths(&[&["mcp", "tool"], &["mcp", "arguments"]])),
            &[],
        );
        let parse =
            |b: &str| crate::mcp::parse(b.as_bytes(), crate::mcp::Limits { max_depth: 8 }).unwrap();
        let a = parse(
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"t","arguments":{"x":1,"y":2}}}"#,
        );
        let same = parse(
            r#"{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"arguments":{"y":2,"x":1},"name":"t"}}"#,
        );
        let other_tool = parse(
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"u","arguments":{"x":1,"y":2}}}"#,
        );
        let other_args = parse(
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"t","arguments":{"x":1,"y":3}}}"#,
        );
        let h = headers(&[]);
        let key = |m: &crate::mcp::Message| {
            plan.key(&KeyFacts {
                mcp: Some((m, None)),
                ..facts(&h)
            })
        };
        assert_eq!(key(&a), key(&same), "id and key order are not read");
        assert_ne!(key(&a), key(&other_tool));
        assert_ne!(key(&a), key(&other_args));
        assert_ne!(
            key(&a),
            plan.key(&facts(&h)),
            "an MCP request never shares a plain one's key"
        );
    }

    fn cache(max: usize) -> DecisionCache<u32> {
        DecisionCache::new(&DecisionCacheConfig {
            enabled: true,
            max_entries: max,
            max_ttl_ms: 1_000,
        })
    }

    #[test]
    fn hits_until_valid_until_then_misses() {
        let mut c = cache(8);
        c.insert(b"k".to_vec(), 1, 100, 500);
        assert_eq!(c.get(b"k", 100), Some(1));
        assert_eq!(c.get(b"k", 499), Some(1));
        assert_eq!(c.get(b"k", 500), None);
        assert!(c.is_empty(), "expired entry dropped on lookup");
        assert_eq!((c.hits, c.misses), (2, 1));
    }

    #[test]
    fn a_clock_stepping_back_misses() {
        let mut c = cache(8);
        c.insert(b"k".to_vec(), 1, 100, 500);
        assert_eq!(c.get(b"k", 99), None);
    }

    #[test]
    fn max_ttl_caps_the_policy_lifetime() {
        let mut c = cache(8);
        c.insert(b"k".to_vec(), 1, 0, u64::MAX);
        assert_eq!(c.get(b"k", 999_999_999), Some(1));
        assert_eq!(c.get(b"k", 1_000_000_000), None);
    }

    #[test]
    fn stale_decisions_are_not_stored() {
        let mut c = cache(8);
        c.insert(b"k".to_vec(), 1, 100, 100);
        c.insert(b"j".to_vec(), 1, 100, 0);
        assert!(c.is_empty());
    }

    #[test]
    fn stays_bounded() {
        let mut c = cache(4);
        for i in 0..100u32 {
            c.insert(i.to_le_bytes().to_vec(), i, 0, 1_000);
            assert!(c.len() <= 4);
        }
        assert_eq!(c.get(&99u32.to_le_bytes(), 1), Some(99));
        // Expired entries go first when full.
        let mut c = cache(2);
        c.insert(b"old".to_vec(), 1, 0, 10);
        c.insert(b"live".to_vec(), 2, 0, 1_000);
        c.insert(b"new".to_vec(), 3, 20, 1_000);
        assert_eq!(c.get(b"live", 21), Some(2));
        assert_eq!(c.get(b"new", 21), Some(3));
        assert_eq!(c.len(), 2);
    }

    #[test]
    fn keys_do_not_run_fields_together() {
        let k = |a: &[u8], b: &[u8]| {
            let mut k = Key::default();
            k.field(a).field(b);
            k.into_bytes()
        };
        assert_ne!(k(b"ab", b"c"), k(b"a", b"bc"));
        let mut absent = Key::default();
        absent.optional(None);
        let mut empty = Key::default();
        empty.optional(Some(b""));
        assert_ne!(absent.into_bytes(), empty.into_bytes());
    }
}
