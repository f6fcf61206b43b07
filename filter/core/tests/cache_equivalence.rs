//! The decision cache must be invisible: a long, seeded sequence of
//! requests (agents, services, methods, headers, paths and queries the
//! policy never reads, a clock that crosses hour boundaries and token
//! expiries, and sometimes steps back) gets exactly the same decisions and
//! upstream headers from a filter with the cache as from one without it.

#![allow(clippy::unwrap_used, clippy::indexing_slicing)]

use agentplane_core::{pbstruct, Filter, Flow, MockHost};
use serde_json::{json, Value};

const CONFIG: &str = include_str!("../../../envoy/agentplane.json");
const HOUR: u64 = 3_600_000_000_000;
const SEC: u64 = 1_000_000_000;
/// 2025-05-03 00:00 UTC.
const DAY: u64 = 1_746_230_400 * SEC;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[(self.next() % items.len() as u64) as usize]
    }
}

fn token(sub: &str, team: &str, kind: &str, env: &str, perms: &[&str], exp_ns: u64) -> Value {
    json!({
        "iss": "https://idp.agentplane.test/", "aud": "https://mcp.example.com/",
        "sub": sub, "exp": exp_ns / SEC, "permissions": perms,
        "https://mcp.example.com/agent_type": kind,
        "https://mcp.example.com/team": team,
        "https://mcp.example.com/environment": env,
    })
}

fn host(payload: &Value, method: &str, path: &str, ua: Option<&str>, t: u64, rid: u64) -> MockHost {
    let mut ns = serde_json::Map::new();
    ns.insert("jwt_payload".into(), payload.clone());
    let mut h = MockHost::new()
        .at(t)
        .with_header(":method", method)
        .with_header(":path", path)
        .with_header(":authority", "localhost:15000")
        .with_header("x-agent-id", "forged")
        .with_property(&["request", "id"], format!("req-{rid}").as_str())
        .with_property(
            &["metadata"],
            pbstruct::encode_metadata(&[("envoy.filters.http.jwt_authn", &ns)]),
        );
    if let Some(ua) = ua {
        h = h.with_header("user-agent", ua);
    }
    h
}

/// Everything observable about one decision except its random id.
fn observe(f: &mut Filter, mut h: MockHost) -> String {
    let (flow, d) = f.on_request_headers(&mut h);
    let reply = h.reply.as_ref().map(|r| {
        let mut body: Value = serde_json::from_slice(&r.body).unwrap();
        body["decision_id"] = Value::Null;
        let headers: Vec<_> = r
            .headers
            .iter()
            .filter(|(k, _)| k != "x-decision-id")
            .collect();
        format!("{} {headers:?} {body}", r.status)
    });
    let upstream: Vec<_> = [
        "x-agent-id",
        "x-agent-type",
        "x-agent-team",
        "x-request-id",
        "x-agentplane-service",
        ":path",
    ]
    .iter()
    .map(|n| h.header_values(n))
    .collect();
    format!(
        "{:?} allowed={} status={} reason={} agent={:?} reply={reply:?} upstream={upstream:?}",
        flow == Flow::Continue,
        d.allowed(),
        d.status(),
        d.reason(),
        d.agent
    )
}

#[test]
fn cache_changes_no_decision() {
    let mut cached_cfg: Value = serde_json::from_str(CONFIG).unwrap();
    cached_cfg["decision_cache"] = json!({"max_entries": 1024, "max_ttl_ms": 3_600_000});
    let mut cached = Filter::new(cached_cfg.to_string().as_bytes(), 1).unwrap();
    let mut plain_cfg: Value = serde_json::from_str(CONFIG).unwrap();
    plain_cfg["decision_cache"] = json!({"enabled": false});
    let mut plain = Filter::new(plain_cfg.to_string().as_bytes(), 1).unwrap();
    assert!(plain.cache_stats().is_none());

    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut t = DAY + 8 * HOUR + 59 * 60 * SEC;
    let exp_soon = t + 20 * 60 * SEC + 7 * SEC;
    let tokens = [
        token(
            "triage@clients",
            "customer-success",
            "support",
            "production",
            &["skills:invoke", "data:read", "data:write"],
            t + 40 * HOUR,
        ),
        token(
            "triage@clients",
            "customer-success",
            "support",
            "production",
            &["skills:invoke", "data:read", "data:write"],
            exp_soon,
        ),
        token(
            "ml-bot@clients",
            "ml",
            "experimental",
            "production",
            &["skills:invoke", "data:read", "data:write", "tools:access"],
            t + 40 * HOUR,
        ),
        token(
            "staging@clients",
            "platform",
            "support",
            "staging",
            &["skills:invoke", "tools:access"],
            t + 40 * HOUR,
        ),
        token(
            "revoked-agent@clients",
            "ml",
            "support",
            "production",
            &["skills:invoke"],
            t + 40 * HOUR,
        ),
        token(
            "q@clients",
            "quarantine",
            "support",
            "production",
            &["skills:invoke", "data:read"],
            t + 40 * HOUR,
        ),
    ];
    let paths = [
        "/mcp://sentiment-analysis/analyze",
        "/mcp://customer-lookup/customers/42",
        "/mcp://hello-skill/hello",
        "/mcp://web-search/search?q=a",
        "/mcp://model-registry/models",
        "/unregistered/x",
    ];
    let methods = ["GET", "POST", "DELETE", "PUT"];
    let uas = [None, Some("agent/1"), Some("agent/2")];
    let boundaries = [9 * HOUR, 17 * HOUR, 24 * HOUR + 9 * HOUR];
    let mut differences = Vec::new();
    for i in 0..6000u64 {
        // Mostly small steps; sometimes jump to just before a boundary
        // (an hour change or a token's expiry).
        match rng.next() % 50 {
            0 => {
                let b = DAY + *rng.pick(&boundaries);
                if b > t + SEC {
                    t = b - 1 - rng.next() % SEC;
                }
            }
            1 if exp_soon > t + SEC => t = exp_soon - 1 - rng.next() % SEC,
            // Wall clocks step back (NTP): up to ten minutes.
            2 => t -= rng.next() % (600 * SEC),
            _ => t += rng.next() % (3 * SEC),
        }
        let tok = rng.pick(&tokens);
        let method = *rng.pick(&methods);
        // What the shipped policy never reads varies too (the path below
        // the service, the query): the cache shares decisions across it,
        // and must still decide each request as the uncached filter does.
        let path = match rng.next() % 3 {
            0 => rng.pick(&paths).to_string(),
            1 => format!("{}/{}", rng.pick(&paths), rng.next() % 5),
            _ => format!("{}?n={i}", rng.pick(&paths)).replace("?q=a?n", "?q=a&n"),
        };
        let ua = *rng.pick(&uas);
        let a = observe(&mut cached, host(tok, method, &path, ua, t, i));
        let b = observe(&mut plain, host(tok, method, &path, ua, t, i));
        if a != b {
            differences.push(format!("#{i} t={t}\n  cached: {a}\n  plain:  {b}"));
        }
    }
    assert!(
        differences.is_empty(),
        "{}",
        differences[..differences.len().min(5)].join("\n")
    );
    let (hits, misses, _) = cached.cache_stats().unwrap();
    // Not vacuous: the cache answered most requests, and the sequence saw
    // both outcomes around the boundaries.
    assert!(hits > 1000, "hits {hits}, misses {misses}");
    assert!(misses > 300, "hits {hits}, misses {misses}");
}
