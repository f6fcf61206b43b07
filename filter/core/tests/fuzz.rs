//! Property test of the whole request path through `MockHost`: arbitrary
//! header names and value bytes (not UTF-8, control characters, duplicates,
//! odd spellings of trusted headers), paths, metadata bytes (valid payloads
//! with mistyped claims, truncations, garbage) and host failures. For every
//! input the filter must not panic and must end in a well-formed outcome:
//!
//! - refused: exactly one local reply, a refusal status, a JSON body whose
//!   `decision_id` is the decision's, nothing forwarded;
//! - forwarded: no reply, the trusted headers are the filter's own (never a
//!   client's), the routing header names a registered service.
//!
//! `./build.sh test` runs `AGENTPLANE_FUZZ_CASES` cases (default 4000). A
//! longer run: `AGENTPLANE_FUZZ_CASES=1000000 cargo test --release -p
//! agentplane-core --test fuzz`. `AGENTPLANE_FUZZ_SEED` picks the seed.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use agentplane_core::outcome::State;
use agentplane_core::{pbstruct, wire, Filter, Flow, MockHost, RequestBody};
use serde_json::{json, Map, Value};

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
    fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        &xs[self.below(xs.len())]
    }
    fn bytes(&mut self, max: usize) -> Vec<u8> {
        let n = self.below(max + 1);
        (0..n).map(|_| self.next() as u8).collect()
    }
}

const SERVICES: &[&str] = &["hello-skill", "tickets", "customer-data", "mcp-tools"];

const CONFIG: &str = r#"{
  "resources": {
    "hello-skill": {"type": "skill", "metadata": {"team": "platform", "environment": "production"}},
    "tickets": {"type": "data", "metadata": {"team": "customer-success", "environment": "production"}},
    "customer-data": {"type": "data", "metadata": {"team": "customer-success"}},
    "mcp-tools": {"type": "tool", "protocol": "mcp", "metadata": {"team": "customer-success", "environment": "production"}}
  },
  "decision_log": {"enabled": true, "sample_allowed": 1.0}
}"#;

const NAMES: &[&[u8]] = &[
    b"x-agent-id",
    b"X-Agent-Team",
    b"x_agent_team",
    b"x-agent-type",
    b"x-agentplane-service",
    b"x_agentplane_service",
    b"x-decision-id",
    b"x-request-id",
    b"x-http-method-override",
    b"x-mcp-secret",
    b"authorization",
    b"content-type",
    b"user-agent",
    b"x-source-system",
    b"traceparent",
    b"cookie",
    b"x-custom",
    b":path",
    b":method",
];

const PATHS: &[&str] = &[
    "/mcp://hello-skill/greet",
    "/mcp://tickets/1",
    "/tickets/1?x=%ff&y",
    "/mcp://hello-skill/../tickets",
    "/mcp://Hello-Skill/x",
    "/mcp://hello-skill%2ftickets/x",
    "/mcp:///hello-skill",
    "/mcp://customer-data/a/b",
    "//tickets",
    "/mcp://",
    "*",
    "",
    "/%2e%2e/x",
    "/mcp://hello-skill/a\\b",
    "/mcp://unknown/x",
    "/mcp://mcp-tools/mcp",
    "/mcp://mcp-tools/mcp",
];

/// MCP bodies: valid messages, near misses and garbage.
fn mcp_body(r: &mut Rng) -> Option<Vec<u8>> {
    let valid = [
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"lookup","arguments":{"id":"T-1"}}}"#,
        r#"{"jsonrpc":"2.0","id":"a","method":"tools/list"}"#,
        r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#,
        r#"{"jsonrpc":"2.0","id":3,"result":{}}"#,
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a","name":"b"}}"#,
        r#"[{"jsonrpc":"2.0","id":1,"method":"ping"}]"#,
        r#"{"jsonrpc":"2.0","id":1,"method":"resources/read","params":{"uri":"file:///x","_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28"}}}"#,
    ];
    match r.below(6) {
        0 => None,
        1 => Some(r.bytes(64)),
        2 => {
            let mut b = r.pick(&valid).as_bytes().to_vec();
            let n = b.len();
            for _ in 0..1 + r.below(3) {
                b[r.below(n)] = r.next() as u8;
            }
            Some(b)
        }
        _ => Some(r.pick(&valid).as_bytes().to_vec()),
    }
}

fn value_for(r: &mut Rng) -> Value {
    match r.below(9) {
        0 => Value::Null,
        1 => json!(r.next() as i64),
        2 => json!(1.5e300),
        3 => json!("skills:invoke data:read"),
        4 => json!(["skills:invoke", "data:read", "data:write"]),
        5 => json!([1, null, {"a": []}]),
        6 => json!({"nested": {"deeper": [r.next()]}}),
        7 => Value::String(String::from_utf8_lossy(&r.bytes(40)).into_owned()),
        _ => json!(true),
    }
}

fn metadata(r: &mut Rng) -> Option<Vec<u8>> {
    if r.chance(8) {
        return None;
    }
    let mut payload = Map::new();
    payload.insert(
        "sub".into(),
        if r.chance(85) {
            json!("support-triage@clients")
        } else {
            value_for(r)
        },
    );
    payload.insert("exp".into(), json!(1_746_277_200));
    payload.insert(
        "permissions".into(),
        json!(["skills:invoke", "data:read", "data:write"]),
    );
    for claim in [
        "https://mcp.example.com/team",
        "https://mcp.example.com/agent_type",
        "https://mcp.example.com/environment",
        "scope",
        "permissions",
        "iss",
        "exp",
        "act",
        "may_act",
        "https://mcp.example.com/workload_id",
    ] {
        if r.chance(15) {
            payload.insert(claim.into(), value_for(r));
        }
    }
    if !payload.contains_key("https://mcp.example.com/team") && r.chance(70) {
        payload.insert(
            "https://mcp.example.com/team".into(),
            json!("customer-success"),
        );
        payload.insert(
            "https://mcp.example.com/environment".into(),
            json!("production"),
        );
    }
    // Delegation chains: well-formed, too deep, or with broken links.
    if r.chance(20) {
        let mut act = json!({"sub": "orchestrator-1@clients",
            "https://mcp.example.com/agent_type": "orchestrator",
            "permissions": ["skills:invoke"]});
        for i in 0..r.below(20) {
            act = if r.chance(10) {
                json!({"sub": value_for(r), "act": act})
            } else {
                json!({"sub": format!("a{i}"), "act": act})
            };
        }
        payload.insert("act".into(), act);
    }
    let mut ns = Map::new();
    ns.insert("jwt_payload".into(), Value::Object(payload));
    let mut bytes = pbstruct::encode_metadata(&[("envoy.filters.http.jwt_authn", &ns)]);
    match r.below(10) {
        0 => bytes.truncate(r.below(bytes.len() + 1)),
        1 => {
            let n = bytes.len();
            for _ in 0..1 + r.below(4) {
                bytes[r.below(n)] = r.next() as u8;
            }
        }
        2 => bytes = r.bytes(64),
        _ => {}
    }
    Some(bytes)
}

fn one_case(f: &mut Filter, r: &mut Rng) {
    let mut h = MockHost::new();
    if r.chance(90) {
        let methods = ["GET", "POST", "DELETE", "delete", "PATCH", "G\u{e9}T", ""];
        let m = methods[r.below(methods.len())];
        h = h.with_header(":method", m);
    }
    if r.chance(95) {
        let mut p = r.pick(PATHS).as_bytes().to_vec();
        if r.chance(10) {
            p.extend(r.bytes(8));
        }
        h = h.with_header_bytes(b":path", &p);
    }
    let spoof_values = ["root", "tickets", "admin"];
    for _ in 0..r.below(8) {
        let name: Vec<u8> = if r.chance(85) {
            r.pick(NAMES).to_vec()
        } else {
            r.bytes(12)
        };
        let value: Vec<u8> = if r.chance(70) {
            r.pick(&spoof_values).as_bytes().to_vec()
        } else {
            r.bytes(300)
        };
        h = h.with_header_bytes(&name, &value);
    }
    if let Some(md) = metadata(r) {
        h = h.with_property(&["metadata"], md);
    }
    h.refuse_header_writes = r.chance(3);
    h.no_header_map = r.chance(2);
    h.stream = 1 + r.below(1000) as u32;

    let (mut flow, mut d) = f.on_request_headers(&mut h);
    if flow == Flow::NeedBody {
        assert!(h.reply.is_none() && d.state == State::Pending);
        assert_eq!(
            h.header_writes, 0,
            "nothing written before the body is read"
        );
        let id = d.id.clone();
        let body = mcp_body(r);
        let body = match body.as_deref() {
            Some(b) => RequestBody::Complete(b),
            None if r.chance(50) => RequestBody::TooLarge,
            None => RequestBody::Unreadable,
        };
        let mut waiting = d;
        (flow, d) = f.on_request_body(&mut h, &mut waiting, body);
        assert_eq!(d.id, id, "one decision across both phases");
        assert!(d.rpc.is_some());
    }
    match flow {
        Flow::Replied => {
            let reply = h.reply.as_ref().expect("a refusal sends a reply");
            assert!(matches!(d.state, State::Denied(_)));
            assert!((400..600).contains(&reply.status), "{}", reply.status);
            let body: Value = serde_json::from_slice(&reply.body).expect("JSON body");
            if let Some(rpc) = &d.rpc {
                assert_eq!(body["jsonrpc"], "2.0");
                assert_eq!(&body["id"], rpc);
                assert_eq!(body["error"]["data"]["decision_id"], d.id.as_str());
                assert!(body["error"]["code"].is_i64() && body["error"]["message"].is_string());
            } else {
                assert_eq!(body["decision_id"], d.id.as_str());
                assert!(body["reason"].is_string() && body["error"].is_string());
            }
            assert!(reply
                .headers
                .iter()
                .any(|(k, v)| k == "x-decision-id" && v == &d.id));
        }
        Flow::Continue => {
            assert!(h.reply.is_none());
            assert_eq!(d.state, State::Allowed);
            // The trusted headers are exactly the filter's: one agent id,
            // from the token (the generator's subjects are never "root").
            let ids = h.header_values("x-agent-id");
            assert_eq!(ids.len(), 1, "{ids:?}");
            assert!(!spoof_values.contains(&ids[0].as_str()), "{ids:?}");
            for v in spoof_values {
                for n in [
                    "x-agent-team",
                    "x-agent-type",
                    "x-decision-id",
                    "x-http-method-override",
                ] {
                    assert!(
                        !h.header_values(n).contains(&v.to_string()),
                        "client value {v:?} survived in {n}"
                    );
                }
            }
            let svc = h.header_values("x-agentplane-service");
            assert_eq!(svc.len(), 1, "exactly one routing header");
            assert!(SERVICES.contains(&svc[0].as_str()), "{svc:?}");
            // No underscore spelling of a trusted header survives either.
            for (k, _) in h.raw_headers() {
                assert!(!k.contains(&b'_') || !k.starts_with(b"x_agent"), "{k:?}");
            }
        }
        Flow::Paused => panic!("no service has secrets here"),
        Flow::NeedBody => panic!("the body phase decides"),
        Flow::Approving => panic!("no approval service is configured here"),
    }
    f.on_response_headers(&mut h, &mut d);
    f.on_log(&mut h, &mut d);
    let stream = h.stream;
    f.on_stream_done(&mut h, stream, Some(&mut d));
}

fn cases() -> u64 {
    std::env::var("AGENTPLANE_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4000)
}

fn seed() -> u64 {
    std::env::var("AGENTPLANE_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x5eed)
}

#[test]
fn arbitrary_requests_never_panic_and_always_end_in_a_well_formed_outcome() {
    let mut f = Filter::new(CONFIG.as_bytes(), 1).unwrap();
    let mut r = Rng(seed());
    let (mut refused, mut forwarded) = (0u64, 0u64);
    for i in 0..cases() {
        let before = r.0;
        let res =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| one_case(&mut f, &mut r)));
        if let Err(e) = res {
            panic!("case {i} (rng state {before:#x}) failed: {e:?}");
        }
    }
    // Both outcomes were exercised (the generator is not degenerate).
    let mut r = Rng(seed());
    for _ in 0..200 {
        let mut h = MockHost::new()
            .with_header(":method", "POST")
            .with_header(":path", PATHS[r.below(PATHS.len())]);
        let md = metadata(&mut r);
        if let Some(md) = md {
            h = h.with_property(&["metadata"], md);
        }
        match f.on_request_headers(&mut h).0 {
            Flow::Continue => forwarded += 1,
            _ => refused += 1,
        }
    }
    assert!(
        forwarded > 0 && refused > 0,
        "forwarded {forwarded}, refused {refused}"
    );
}

#[test]
fn arbitrary_header_map_bytes_from_the_host_never_panic() {
    let mut r = Rng(seed() ^ 1);
    let good = wire::encode_pairs(&[(":path", "/x"), ("a", "b")]);
    for _ in 0..cases() {
        let mut b = if r.chance(50) {
            good.clone()
        } else {
            r.bytes(64)
        };
        if !b.is_empty() && r.chance(50) {
            let n = b.len();
            b[r.below(n)] = r.next() as u8;
        }
        if let Some(pairs) = wire::decode_pairs(&b) {
            // Whatever parses is bounded by the input.
            let total: usize = pairs.iter().map(|(k, v)| k.len() + v.len()).sum();
            assert!(total <= b.len());
        }
    }
}

#[test]
fn arbitrary_metadata_bytes_never_panic_the_decoder() {
    let mut r = Rng(seed() ^ 2);
    let limits = pbstruct::Limits {
        max_depth: 16,
        max_bytes: 64 * 1024,
    };
    for _ in 0..cases() {
        let b = match metadata(&mut r) {
            Some(b) if r.chance(50) => b,
            _ => r.bytes(256),
        };
        let _ = pbstruct::decode_metadata_namespace(&b, "envoy.filters.http.jwt_authn", limits);
        let _ = pbstruct::decode_struct(&b, limits);
    }
}

/// A struct from a tiny alphabet, entries in random order and with random
/// duplicate keys, so that distinct byte strings often mean the same value.
fn small_struct(r: &mut Rng, depth: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for _ in 0..r.below(4) {
        let key = *r.pick(&["a", "b", "c"]);
        let value = match r.below(if depth > 0 { 6 } else { 5 }) {
            0 => Value::Null,
            1 => json!(true),
            2 => json!("x"),
            3 => json!(1),
            4 => json!(["x", 1]),
            _ => {
                let inner = small_struct(r, depth - 1);
                pbstruct::decode_struct(&inner, LIMITS).map_or(Value::Null, Value::Object)
            }
        };
        let mut one = Map::new();
        one.insert(key.into(), value);
        out.extend(pbstruct::encode_struct(&one));
    }
    out
}

const LIMITS: pbstruct::Limits = pbstruct::Limits {
    max_depth: 16,
    max_bytes: 64 * 1024,
};

/// The principal cache keys on the canonical form of jwt_authn's metadata
/// (Envoy serializes maps in no fixed order): two payloads that decode
/// differently must never share a form, or one agent would get another's
/// identity; the same payload in another order must share it.
#[test]
fn payloads_that_decode_differently_never_share_a_cache_key() {
    let mut r = Rng(seed() ^ 3);
    let mut seen: std::collections::HashMap<Vec<u8>, Map<String, Value>> =
        std::collections::HashMap::new();
    for _ in 0..cases() * 4 {
        let b = small_struct(&mut r, 2);
        let (Ok(form), Ok(decoded)) = (
            pbstruct::canonical_struct(&b, LIMITS),
            pbstruct::decode_struct(&b, LIMITS),
        ) else {
            continue;
        };
        // The same entries, reversed: the same form exactly when no key
        // repeats (with a repeat, the last one wins, so order matters).
        let entries = pbstruct::decode_struct(&b, LIMITS).unwrap();
        let mut rev = Vec::new();
        for (k, v) in entries.iter().rev() {
            let mut one = Map::new();
            one.insert(k.clone(), v.clone());
            rev.extend(pbstruct::encode_struct(&one));
        }
        assert_eq!(
            pbstruct::canonical_struct(&rev, LIMITS).unwrap(),
            pbstruct::canonical_struct(&pbstruct::encode_struct(&entries), LIMITS).unwrap()
        );
        if let Some(prev) = seen.insert(form, decoded.clone()) {
            assert_eq!(prev, decoded, "one form, two payloads");
        }
    }
    assert!(seen.len() > 20, "the alphabet produced too few forms");
}
