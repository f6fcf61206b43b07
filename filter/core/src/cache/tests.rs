use super::*;
use crate::headers::RequestHeaders;
use crate::reads::Path;
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
        tool_pin: None,
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

/// A tool whose definition changed since a decision was cached must not
/// be answered from that decision: the pin is part of the key.
#[test]
fn a_cached_call_to_a_pinned_tool_is_not_reused_once_the_tool_changed() {
    use crate::mcp::pins::{PinState, ToolPin};
    let plan = KeyPlan::new(
        Some(&paths(&[
            &["mcp", "tool"],
            &["mcp", "tool_definition", "pin"],
        ])),
        &[],
    );
    let m = crate::mcp::parse(
        br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"t"}}"#,
        crate::mcp::Limits { max_depth: 8 },
    )
    .unwrap();
    let h = headers(&[]);
    let pin = |state| ToolPin {
        digest: Some("sha256:00".into()),
        state,
    };
    let (matches, changed) = (pin(PinState::Matches), pin(PinState::Changed));
    let key = |p: Option<&ToolPin>| {
        plan.key(&KeyFacts {
            mcp: Some((&m, None)),
            tool_pin: p,
            ..facts(&h)
        })
    };
    assert_ne!(key(Some(&matches)), key(Some(&changed)));
    assert_ne!(key(Some(&matches)), key(None));
}

/// A policy that reads a member of `input.mcp` the key does not hold by
/// itself (here the client's info) gets the whole message in its key: two
/// clients that differ only there never share a decision.
#[test]
fn a_policy_reading_an_unkeyed_mcp_member_never_shares_a_decision_across_it() {
    let plan = KeyPlan::new(Some(&paths(&[&["mcp", "client", "info"]])), &[]);
    let parse =
        |b: &str| crate::mcp::parse(b.as_bytes(), crate::mcp::Limits { max_depth: 8 }).unwrap();
    let a = parse(
        r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","clientInfo":{"name":"good","version":"1"},"capabilities":{}}}"#,
    );
    let b = parse(
        r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","clientInfo":{"name":"evil","version":"1"},"capabilities":{}}}"#,
    );
    let h = headers(&[]);
    let key = |m: &crate::mcp::Message| {
        plan.key(&KeyFacts {
            mcp: Some((m, None)),
            ..facts(&h)
        })
    };
    assert_ne!(key(&a), key(&b));
}

/// The shipped policy reads only members the key holds by themselves: two
/// calls that differ in their JSON-RPC id share a decision (else every MCP
/// request would miss the cache).
#[test]
fn the_shipped_policy_keys_a_tool_call_without_its_id() {
    let reads = crate::reads::input_reads(crate::bundle::MODULES).unwrap();
    let plan = KeyPlan::new(Some(&reads), &[]);
    let parse =
        |b: &str| crate::mcp::parse(b.as_bytes(), crate::mcp::Limits { max_depth: 8 }).unwrap();
    let a = parse(r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"t"}}"#);
    let b = parse(r#"{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"t"}}"#);
    let h = headers(&[]);
    let key = |m: &crate::mcp::Message| {
        plan.key(&KeyFacts {
            mcp: Some((m, None)),
            ..facts(&h)
        })
    };
    assert_eq!(key(&a), key(&b));
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
