//! The decision cache: equal requests only, never past the hour or the
//! token, only when the policy says how long, keyed alike whatever the
//! protobuf map order.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use super::*;
#[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
use wasm_bindgen_test::wasm_bindgen_test as test;

fn cached_filter() -> Filter {
    let mut cfg: Value = serde_json::from_str(CONFIG).unwrap();
    cfg["decision_cache"] = json!({"max_entries": 16});
    Filter::new(cfg.to_string().as_bytes(), 7).unwrap()
}

const HOUR: u64 = 3_600_000_000_000;

#[test]
fn cache_reuses_decisions_for_equal_requests_only() {
    let mut f = cached_filter();
    let run = |f: &mut Filter, path: &str, payload: Value, ua: Option<&str>, rid: &str| {
        let mut h = request("POST", path, Some(payload))
            .with_property(&["request", "id"], rid)
            .with_header("x-agent-team", "forged");
        if let Some(ua) = ua {
            h = h.with_header("user-agent", ua);
        }
        let (flow, d) = f.on_request_headers(&mut h);
        (flow, d, h)
    };
    let (flow, d1, _) = run(
        &mut f,
        "/mcp://hello-skill/greet",
        claims(json!({})),
        None,
        "r1",
    );
    assert_eq!(flow, Flow::Continue);
    assert_eq!(f.cache_stats(), Some((0, 1, 1)));
    let (flow, d2, h) = run(
        &mut f,
        "/mcp://hello-skill/greet",
        claims(json!({})),
        None,
        "r2",
    );
    assert_eq!(flow, Flow::Continue);
    assert_eq!(f.cache_stats(), Some((1, 1, 1)), "second request is a hit");
    assert_ne!(d1.id, d2.id, "every request gets its own decision id");
    assert_eq!(h.header_values("x-agent-team"), ["customer-success"]);
    assert_eq!(h.header_values("x-agent-id"), ["support-triage@clients"]);
    assert_eq!(h.header_values("x-request-id"), [d2.id.as_str()]);
    // What the policy never reads (the path below the service, a header
    // it ignores) shares the decision; anything it reads changes the key.
    let (_, _, h3) = run(
        &mut f,
        "/mcp://hello-skill/other?q=1",
        claims(json!({})),
        None,
        "r3",
    );
    assert_eq!(
        h3.header_values(":path"),
        ["/other?q=1"],
        "this request's own path"
    );
    run(
        &mut f,
        "/mcp://hello-skill/greet",
        claims(json!({})),
        Some("x"),
        "r5",
    );
    assert_eq!(f.cache_stats(), Some((3, 1, 1)));
    run(
        &mut f,
        "/mcp://hello-skill/greet",
        claims(json!({"sub": "other@clients"})),
        None,
        "r4",
    );
    run(&mut f, "/mcp://tickets/1", claims(json!({})), None, "r8");
    assert_eq!(f.cache_stats(), Some((3, 3, 3)));
    // A cached deny is still a deny, with its reason and a fresh id.
    let no_perm = claims(json!({"permissions": ["data:read"]}));
    let (_, d6, _) = run(
        &mut f,
        "/mcp://hello-skill/greet",
        no_perm.clone(),
        None,
        "r6",
    );
    let (flow, d7, h) = run(&mut f, "/mcp://hello-skill/greet", no_perm, None, "r7");
    assert_eq!(f.cache_stats(), Some((4, 4, 4)));
    assert_eq!(flow, Flow::Replied);
    assert!(!d7.allowed() && d7.reason() == d6.reason() && d7.id != d6.id);
    assert_eq!(body(&h)["decision_id"], d7.id);
    assert_eq!(h.header_writes, 0);
}

#[test]
fn cache_never_outlives_the_hour_or_the_token() {
    // DELETE on data is allowed in business hours only (9-17 UTC).
    let mut f = cached_filter();
    let day = NOON - 12 * HOUR;
    let at = |f: &mut Filter, t: u64, exp_s: u64| {
        let mut h = request(
            "DELETE",
            "/mcp://tickets/1",
            Some(claims(json!({"exp": exp_s}))),
        )
        .at(t);
        f.on_request_headers(&mut h).1
    };
    let late = day + 17 * HOUR;
    assert!(at(&mut f, late - 1, 4_000_000_000).allowed());
    assert!(at(&mut f, late - 1, 4_000_000_000).allowed());
    assert_eq!(f.cache_stats().unwrap().0, 1);
    let d = at(&mut f, late, 4_000_000_000);
    assert!(!d.allowed(), "17:00 is off hours, whatever the cache held");
    assert!(
        d.reason().contains("outside business hours"),
        "{}",
        d.reason()
    );
    // Token expiry inside the hour.
    let exp = (NOON + 10 * 60 * 1_000_000_000) / 1_000_000_000;
    assert!(at(&mut f, NOON, exp).allowed());
    assert!(at(&mut f, exp * 1_000_000_000 - 1, exp).allowed());
    let d = at(&mut f, exp * 1_000_000_000, exp);
    assert!(
        !d.allowed() && d.reason().contains("expired"),
        "{}",
        d.reason()
    );
}

#[test]
fn cache_ignores_policies_that_do_not_say_how_long_they_hold() {
    let mut cfg: Value = serde_json::from_str(CONFIG).unwrap();
    cfg["decision_cache"] = json!({});
    let config = Config::from_json(cfg.to_string().as_bytes()).unwrap();
    let policy = Policy::compile(
        &[(
            "p.rego",
            "package p\nallow if input.agent.team == \"customer-success\"\n",
        )],
        "{}",
        "data.p",
    )
    .unwrap();
    let mut f = Filter::with_policy(config, policy, 1);
    for _ in 0..3 {
        let mut h = request("POST", "/mcp://hello-skill/greet", Some(claims(json!({}))));
        assert!(f.on_request_headers(&mut h).1.allowed());
    }
    assert_eq!(f.cache_stats(), Some((0, 3, 0)));
}

/// A length-delimited protobuf field (for hand-built metadata).
fn pb_field(out: &mut Vec<u8>, field: u8, bytes: &[u8]) {
    out.push((field << 3) | 2);
    let mut n = bytes.len();
    loop {
        let b = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(b);
            break;
        }
        out.push(b | 0x80);
    }
    out.extend_from_slice(bytes);
}

#[test]
fn cache_key_ignores_protobuf_map_order() {
    // Envoy serializes Struct maps in no fixed order: the same payload
    // must still hit.
    let mut f = filter();
    let payload = claims(json!({}));
    let fields: Vec<(String, Value)> = payload.as_object().unwrap().clone().into_iter().collect();
    let metadata = |reverse: bool| {
        let mut st = Vec::new();
        let mut order: Vec<_> = fields.iter().collect();
        if reverse {
            order.reverse();
        }
        for (k, v) in order {
            let mut one = serde_json::Map::new();
            one.insert(k.clone(), v.clone());
            st.extend(pbstruct::encode_struct(&one));
        }
        // {"jwt_payload": <struct>} as a Struct, then the Metadata entry.
        let mut value = Vec::new();
        pb_field(&mut value, 5, &st);
        let mut entry = Vec::new();
        pb_field(&mut entry, 1, b"jwt_payload");
        pb_field(&mut entry, 2, &value);
        let mut ns = Vec::new();
        pb_field(&mut ns, 1, &entry);
        let mut md_entry = Vec::new();
        pb_field(&mut md_entry, 1, b"envoy.filters.http.jwt_authn");
        pb_field(&mut md_entry, 2, &ns);
        let mut md = Vec::new();
        pb_field(&mut md, 1, &md_entry);
        md
    };
    assert_ne!(metadata(false), metadata(true));
    for reverse in [false, true] {
        let mut h = request("POST", "/mcp://hello-skill/greet", None)
            .with_property(&["metadata"], metadata(reverse));
        assert!(f.on_request_headers(&mut h).1.allowed(), "{:?}", h.reply);
    }
    assert_eq!(f.cache_stats(), Some((1, 1, 1)));
}
