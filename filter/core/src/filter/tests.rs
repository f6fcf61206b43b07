//! Tests of the request path through `MockHost` (`filter.rs`), kept in
//! their own file so the pipeline itself stays short enough to read.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use super::*;
use crate::host::MockHost;
use crate::pbstruct;
use serde_json::{json, Value};
#[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
use wasm_bindgen_test::wasm_bindgen_test as test;

pub(super) const NOON: u64 = 1_746_273_600_000_000_000;
const EARLY: u64 = 1_746_252_000_000_000_000;

const CONFIG: &str = r#"{"resources": {
    "hello-skill": {"type": "skill", "metadata": {"team": "platform", "environment": "production"}},
    "tickets": {"type": "data", "metadata": {"team": "customer-success", "environment": "production"}}
}}"#;

fn filter() -> Filter {
    Filter::new(CONFIG.as_bytes(), 7).unwrap()
}

pub(super) fn claims(extra: Value) -> Value {
    let mut c = json!({
        "sub": "support-triage@clients",
        "exp": 1_746_277_200,
        "permissions": ["skills:invoke", "data:read", "data:write"],
        "https://mcp.example.com/agent_type": "support",
        "https://mcp.example.com/team": "customer-success",
        "https://mcp.example.com/environment": "production",
    });
    for (k, v) in extra.as_object().unwrap() {
        c[k] = v.clone();
    }
    c
}

pub(super) fn request(method: &str, path: &str, payload: Option<Value>) -> MockHost {
    let mut h = MockHost::new()
        .at(NOON)
        .with_header(":method", method)
        .with_header(":path", path)
        .with_header(":authority", "localhost:15000")
        .with_property(&["request", "id"], "req-123");
    if let Some(p) = payload {
        let mut ns = serde_json::Map::new();
        ns.insert("jwt_payload".into(), p);
        h = h.with_property(
            &["metadata"],
            pbstruct::encode_metadata(&[("envoy.filters.http.jwt_authn", &ns)]),
        );
    }
    h
}

pub(super) fn body(h: &MockHost) -> Value {
    serde_json::from_slice(&h.reply.as_ref().expect("a reply").body).unwrap()
}

pub(super) fn reply_header<'a>(h: &'a MockHost, name: &str) -> Option<&'a str> {
    h.reply
        .as_ref()?
        .headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

#[test]
fn allow_sets_trusted_headers() {
    let f = filter();
    let mut h = request("POST", "/mcp://hello-skill/greet", Some(claims(json!({}))))
        .with_header("X-Agent-Id", "root@clients")
        .with_header("x-agent-team", "platform");
    let (flow, mut d) = f.on_request_headers(&mut h);
    assert_eq!(flow, Flow::Continue, "{:?}", h.reply);
    assert!(d.allowed() && h.reply.is_none());
    assert_eq!(h.header_values("x-agent-id"), ["support-triage@clients"]);
    assert_eq!(h.header_values("x-agent-team"), ["customer-success"]);
    assert_eq!(h.header_values("x-agent-type"), ["support"]);
    // The client sent no id the filter trusts: it mints its own.
    assert_eq!(h.header_values("x-request-id"), [d.id.as_str()]);
    f.on_response_headers(&mut h, &mut d);
    assert_eq!(
        h.response_headers,
        [
            (DECISION_ID_HEADER.to_string(), d.id.clone()),
            (TRACE_ID_HEADER.to_string(), d.id.clone())
        ]
    );
}

#[test]
fn no_identity_is_401_with_challenge() {
    let f = filter();
    let mut h =
        request("POST", "/mcp://hello-skill/greet", None).with_header("x-agent-id", "forged");
    let (flow, d) = f.on_request_headers(&mut h);
    assert_eq!(flow, Flow::Replied);
    assert_eq!(h.reply.as_ref().unwrap().status, 401);
    assert_eq!(
        reply_header(&h, "www-authenticate"),
        Some(r#"Bearer realm="agentplane""#)
    );
    assert_eq!(body(&h)["decision_id"], d.id);
    assert_eq!(reply_header(&h, DECISION_ID_HEADER), Some(d.id.as_str()));
    // Refused: nothing goes upstream, so no header is written at all.
    assert_eq!(h.header_writes, 0);
}

#[test]
fn wrong_claim_types_are_401_invalid_token() {
    let f = filter();
    let mut h = request(
        "POST",
        "/mcp://hello-skill/greet",
        Some(claims(json!({"permissions": "all"}))),
    );
    f.on_request_headers(&mut h);
    assert_eq!(h.reply.as_ref().unwrap().status, 401);
    assert!(reply_header(&h, "www-authenticate")
        .unwrap()
        .contains("invalid_token"));
    assert_eq!(
        body(&h)["reason"],
        "claim \"permissions\" must be an array of strings"
    );
}

#[test]
fn header_injection_in_claims_is_denied() {
    let f = filter();
    for (claim, name) in [
        ("https://mcp.example.com/team", "x-agent-team"),
        ("sub", "x-agent-id"),
    ] {
        let mut h = request(
            "POST",
            "/mcp://hello-skill/greet",
            Some(claims(json!({ claim: "x\r\nx-agent-id: root" }))),
        );
        let (flow, _) = f.on_request_headers(&mut h);
        assert_eq!(flow, Flow::Replied);
        assert_eq!(h.reply.as_ref().unwrap().status, 403);
        assert_eq!(
            body(&h)["reason"],
            format!("identity for {name} contains a control character")
        );
    }
    let mut h = request(
        "POST",
        "/mcp://hello-skill/greet",
        Some(claims(json!({"sub": "a".repeat(300)}))),
    );
    f.on_request_headers(&mut h);
    assert_eq!(
        body(&h)["reason"],
        "identity for x-agent-id is 300 bytes, over 256"
    );
}

#[test]
fn policy_denies_with_reasons() {
    let f = filter();
    let mut h = request(
        "POST",
        "/mcp://hello-skill/greet",
        Some(claims(json!({"permissions": ["data:read"]}))),
    );
    let (_, d) = f.on_request_headers(&mut h);
    assert_eq!(h.reply.as_ref().unwrap().status, 403);
    assert_eq!(
        body(&h)["reason"],
        "missing permission skills:invoke for action invoke_skill"
    );
    assert_eq!(
        d.reason(),
        "missing permission skills:invoke for action invoke_skill"
    );
    assert_eq!(d.agent.as_deref(), Some("support-triage@clients"));
    assert!(
        h.header_values("x-agent-id").is_empty(),
        "nothing set on deny"
    );
}

#[test]
fn unknown_service_is_denied() {
    let f = filter();
    let mut h = request("GET", "/nowhere/x", Some(claims(json!({}))));
    f.on_request_headers(&mut h);
    assert_eq!(h.reply.as_ref().unwrap().status, 403);
    let reason = body(&h)["reason"].as_str().unwrap().to_string();
    assert!(
        reason.contains("service nowhere is not registered"),
        "{reason}"
    );
}

#[test]
fn ambiguous_or_missing_path_is_400() {
    let f = filter();
    let mut h = request(
        "GET",
        "/mcp://hello-skill/../tickets",
        Some(claims(json!({}))),
    );
    f.on_request_headers(&mut h);
    assert_eq!(h.reply.as_ref().unwrap().status, 400);
    let mut h = MockHost::new().with_property(
        &["metadata"],
        pbstruct::encode_metadata(&[(
            "envoy.filters.http.jwt_authn",
            json!({"jwt_payload": claims(json!({}))})
                .as_object()
                .unwrap(),
        )]),
    );
    f.on_request_headers(&mut h);
    assert_eq!(h.reply.as_ref().unwrap().status, 400);
}

#[test]
fn clock_drives_off_hours_rule() {
    let f = filter();
    let mut h = request("DELETE", "/tickets/42", Some(claims(json!({}))));
    assert_eq!(f.on_request_headers(&mut h).0, Flow::Continue);
    let mut h = request("DELETE", "/tickets/42", Some(claims(json!({})))).at(EARLY);
    assert_eq!(f.on_request_headers(&mut h).0, Flow::Replied);
    assert_eq!(
        body(&h)["reason"],
        "DELETE is not permitted outside business hours (9:00-17:00 UTC)"
    );
}

#[test]
fn policy_errors_fail_closed() {
    let config = Config::from_json(b"").unwrap();
    let policy = Policy::compile(
        // A non-boolean `allow` is an error on every engine.
        &[("p.rego", "package t\nallow := input.agent.id\n")],
        "{}",
        "data.t",
    )
    .unwrap();
    let f = Filter::with_policy(config, policy, 1);
    let mut h = request("GET", "/svc/x", Some(claims(json!({}))));
    let (flow, d) = f.on_request_headers(&mut h);
    assert_eq!(flow, Flow::Replied);
    assert_eq!(h.reply.as_ref().unwrap().status, 403);
    assert_eq!(d.reason(), "policy_error");
    assert!(h
        .logs
        .borrow()
        .iter()
        .any(|(l, m)| *l == LogLevel::Warn && m.contains("policy")));
}

#[test]
fn response_object_shapes_the_reply() {
    let config = Config::from_json(br#"{"policy": {"entrypoint": "data.t.decision"}}"#).unwrap();
    let src = r#"package t
decision := {"allowed": false, "status": 429, "reason": "slow down", "headers": {"retry-after": "5"}} if input.agent.team == "customer-success"
decision := {"allowed": true, "headers": {"x-policy-tier": "gold"}} if input.agent.team != "customer-success"
"#;
    let policy = Policy::compile(&[("p.rego", src)], "{}", "data.t.decision").unwrap();
    let f = Filter::with_policy(config, policy, 1);
    let mut h = request("GET", "/svc/x", Some(claims(json!({}))));
    f.on_request_headers(&mut h);
    assert_eq!(h.reply.as_ref().unwrap().status, 429);
    assert_eq!(reply_header(&h, "retry-after"), Some("5"));
    assert_eq!(body(&h)["reason"], "slow down");
    let mut h = request(
        "GET",
        "/svc/x",
        Some(claims(json!({"https://mcp.example.com/team": "ml"}))),
    );
    assert_eq!(f.on_request_headers(&mut h).0, Flow::Continue);
    assert_eq!(h.header_values("x-policy-tier"), ["gold"]);
}

#[test]
fn decision_ids_are_unique_per_request() {
    let f = filter();
    let mut a = request("POST", "/mcp://hello-skill/x", None);
    let mut b = request("POST", "/mcp://hello-skill/x", None);
    assert_ne!(
        f.on_request_headers(&mut a).1.id,
        f.on_request_headers(&mut b).1.id
    );
}

#[test]
fn bad_config_and_bad_entrypoint_refuse_to_start() {
    let e = Filter::new(br#"{"policy": {"entrypoint": "data.nope"}}"#, 1).unwrap_err();
    assert!(e.to_string().contains("data.nope"), "{e}");
    let e = Filter::new(br#"{"resources": []}"#, 1).unwrap_err();
    assert!(e.to_string().contains("invalid type"), "{e}");
}

fn cached_filter() -> Filter {
    let mut cfg: Value = serde_json::from_str(CONFIG).unwrap();
    cfg["decision_cache"] = json!({"max_entries": 16});
    Filter::new(cfg.to_string().as_bytes(), 7).unwrap()
}

const HOUR: u64 = 3_600_000_000_000;

#[test]
fn cache_reuses_decisions_for_equal_requests_only() {
    let f = cached_filter();
    let run = |path: &str, payload: Value, ua: Option<&str>, rid: &str| {
        let mut h = request("POST", path, Some(payload))
            .with_property(&["request", "id"], rid)
            .with_header("x-agent-team", "forged");
        if let Some(ua) = ua {
            h = h.with_header("user-agent", ua);
        }
        let (flow, d) = f.on_request_headers(&mut h);
        (flow, d, h)
    };
    let (flow, d1, _) = run("/mcp://hello-skill/greet", claims(json!({})), None, "r1");
    assert_eq!(flow, Flow::Continue);
    assert_eq!(f.cache_stats(), Some((0, 1, 1)));
    let (flow, d2, h) = run("/mcp://hello-skill/greet", claims(json!({})), None, "r2");
    assert_eq!(flow, Flow::Continue);
    assert_eq!(f.cache_stats(), Some((1, 1, 1)), "second request is a hit");
    assert_ne!(d1.id, d2.id, "every request gets its own decision id");
    assert_eq!(h.header_values("x-agent-team"), ["customer-success"]);
    assert_eq!(h.header_values("x-agent-id"), ["support-triage@clients"]);
    assert_eq!(h.header_values("x-request-id"), [d2.id.as_str()]);
    // What the policy never reads (the path below the service, a header
    // it ignores) shares the decision; anything it reads changes the key.
    let (_, _, h3) = run(
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
        "/mcp://hello-skill/greet",
        claims(json!({})),
        Some("x"),
        "r5",
    );
    assert_eq!(f.cache_stats(), Some((3, 1, 1)));
    run(
        "/mcp://hello-skill/greet",
        claims(json!({"sub": "other@clients"})),
        None,
        "r4",
    );
    run("/mcp://tickets/1", claims(json!({})), None, "r8");
    assert_eq!(f.cache_stats(), Some((3, 3, 3)));
    // A cached deny is still a deny, with its reason and a fresh id.
    let no_perm = claims(json!({"permissions": ["data:read"]}));
    let (_, d6, _) = run("/mcp://hello-skill/greet", no_perm.clone(), None, "r6");
    let (flow, d7, h) = run("/mcp://hello-skill/greet", no_perm, None, "r7");
    assert_eq!(f.cache_stats(), Some((4, 4, 4)));
    assert_eq!(flow, Flow::Replied);
    assert!(!d7.allowed() && d7.reason() == d6.reason() && d7.id != d6.id);
    assert_eq!(body(&h)["decision_id"], d7.id);
    assert_eq!(h.header_writes, 0);
}

#[test]
fn cache_never_outlives_the_hour_or_the_token() {
    // DELETE on data is allowed in business hours only (9-17 UTC).
    let f = cached_filter();
    let day = NOON - 12 * HOUR;
    let at = |t: u64, exp_s: u64| {
        let mut h = request(
            "DELETE",
            "/mcp://tickets/1",
            Some(claims(json!({"exp": exp_s}))),
        )
        .at(t);
        f.on_request_headers(&mut h).1
    };
    let late = day + 17 * HOUR;
    assert!(at(late - 1, 4_000_000_000).allowed());
    assert!(at(late - 1, 4_000_000_000).allowed());
    assert_eq!(f.cache_stats().unwrap().0, 1);
    let d = at(late, 4_000_000_000);
    assert!(!d.allowed(), "17:00 is off hours, whatever the cache held");
    assert!(
        d.reason().contains("outside business hours"),
        "{}",
        d.reason()
    );
    // Token expiry inside the hour.
    let exp = (NOON + 10 * 60 * 1_000_000_000) / 1_000_000_000;
    assert!(at(NOON, exp).allowed());
    assert!(at(exp * 1_000_000_000 - 1, exp).allowed());
    let d = at(exp * 1_000_000_000, exp);
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
    let f = Filter::with_policy(config, policy, 1);
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
    let f = filter();
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

fn secrets_filter() -> Filter {
    let cfg = json!({
        "vault": {"cluster": "vault", "role": "agent"},
        "resources": {
            "hello-skill": {"type": "skill", "metadata": {"team": "platform", "environment": "production"},
                "secrets": [{"kv": "secret/data/mcp/agents/{agent}/credentials", "field": "api_key", "header": "x-api-key"}]},
            "tickets": {"type": "data", "metadata": {"team": "customer-success", "environment": "production"}}
        }
    });
    Filter::new(cfg.to_string().as_bytes(), 7).unwrap()
}

#[test]
fn allowed_requests_wait_for_their_secrets_denied_ones_fetch_nothing() {
    let f = secrets_filter();
    assert!(f.has_secrets());
    // Denied (missing permission): no callout, ever.
    let mut h = request(
        "POST",
        "/mcp://hello-skill/greet",
        Some(claims(json!({"permissions": []}))),
    )
    .with_header("authorization", "Bearer the.agent.jwt");
    assert_eq!(f.on_request_headers(&mut h).0, Flow::Replied);
    f.on_tick(&mut h);
    assert!(h.dispatched.is_empty());

    // Allowed: paused; the root logs in with the agent's JWT, reads, resumes.
    let mut h = request("POST", "/mcp://hello-skill/greet", Some(claims(json!({}))))
        .with_header("authorization", "Bearer the.agent.jwt");
    h.stream = 42;
    let (flow, d) = f.on_request_headers(&mut h);
    assert_eq!(flow, Flow::Paused);
    assert!(d.allowed());
    assert!(
        h.header_values("authorization").is_empty(),
        "agent JWT not forwarded"
    );
    assert_eq!(h.header_values("x-agent-id"), ["support-triage@clients"]);
    let mut root = MockHost::new();
    f.on_tick(&mut root);
    assert_eq!(root.dispatched.len(), 1);
    let login: Value = serde_json::from_slice(root.dispatched[0].body.as_ref().unwrap()).unwrap();
    assert_eq!(login["jwt"], "the.agent.jwt");
    let t = root.dispatched[0].token;
    f.on_callout_response(
        &mut root,
        t,
        Some(200),
        Some(br#"{"auth":{"client_token":"s.x","lease_duration":600}}"#),
    );
    // The read goes out at once (no need to wait for the next tick).
    assert_eq!(root.dispatched.len(), 2);
    let t = root.dispatched[1].token;
    f.on_callout_response(
        &mut root,
        t,
        Some(200),
        Some(br#"{"data":{"data":{"api_key":"k-123"}}}"#),
    );
    assert_eq!(
        root.resumed,
        [(42, vec![("x-api-key".to_string(), "k-123".to_string())])]
    );

    // Next request: straight from the cache, not paused.
    let mut h = request("POST", "/mcp://hello-skill/greet", Some(claims(json!({}))))
        .with_header("authorization", "Bearer the.agent.jwt");
    assert_eq!(f.on_request_headers(&mut h).0, Flow::Continue);
    assert_eq!(h.header_values("x-api-key"), ["k-123"]);

    // Services without secrets never pause.
    let mut h = request("GET", "/tickets/1", Some(claims(json!({}))));
    assert_eq!(f.on_request_headers(&mut h).0, Flow::Continue);
    assert_eq!(f.secrets_stats().unwrap().logins, 1);
}

#[test]
fn secrets_without_a_token_or_vault_config_fail_closed() {
    let f = secrets_filter();
    let mut h = request("POST", "/mcp://hello-skill/greet", Some(claims(json!({}))));
    let (flow, d) = f.on_request_headers(&mut h);
    assert_eq!(flow, Flow::Replied);
    assert_eq!((d.status(), h.reply.as_ref().unwrap().status), (503, 503));
    assert_eq!(
        body(&h)["reason"],
        "secrets_unavailable: no bearer token to log in to Vault with"
    );
    assert_eq!(body(&h)["error"], "unavailable");

    let e = Filter::new(
        br#"{"resources": {"s": {"type": "skill", "secrets": [{"kv": "secret/data/x", "field": "k", "header": "x-k"}]}}}"#,
        1,
    )
    .unwrap_err();
    assert!(
        e.to_string().contains("secrets need a `vault` section"),
        "{e}"
    );
    for (bad, want) in [
        (
            json!({"kv": "secret/data/{agentt}/x", "field": "k", "header": "x-k"}),
            "placeholders",
        ),
        (
            json!({"kv": "../x", "field": "k", "header": "x-k"}),
            "relative Vault path",
        ),
        (json!({"kv": "secret/data/x", "header": "x-k"}), "field"),
        (
            json!({"kv": "secret/data/x", "field": "k", "header": "x-agent-id"}),
            "sets itself",
        ),
        (
            json!({"kv": "secret/data/x", "field": "k", "header": "x-k", "bearer": true}),
            "not both",
        ),
        (
            json!({"database": "database/creds/r", "username_header": "x-u"}),
            "password_header",
        ),
        (json!({"field": "k"}), "exactly one of kv and database"),
    ] {
        let cfg = json!({"vault": {}, "resources": {"s": {"type": "skill", "secrets": [bad]}}});
        let e = Filter::new(cfg.to_string().as_bytes(), 1).unwrap_err();
        assert!(e.to_string().contains(want), "{e} (wanted {want})");
    }
}

fn logged_filter(extra: Value) -> Filter {
    let mut cfg: Value = serde_json::from_str(CONFIG).unwrap();
    cfg["decision_log"] = extra;
    Filter::new(cfg.to_string().as_bytes(), 7).unwrap()
}

fn log_lines(h: &MockHost) -> Vec<Value> {
    h.logs
        .borrow()
        .iter()
        .filter_map(|(_, l)| l.strip_prefix(crate::audit::PREFIX))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn decisions_are_logged_in_opa_shape_without_credentials() {
    let f = logged_filter(json!({"enabled": true, "mask": ["/input/jwt/payload/email"]}));
    let canary_jwt = "Bearer canary-jwt-0a1b2c";
    let mut h = request(
        "POST",
        "/mcp://hello-skill/greet",
        Some(claims(json!({"email": "canary@x.org"}))),
    )
    .with_header("authorization", canary_jwt)
    .with_header("cookie", "session=canary-cookie");
    let (_, d) = f.on_request_headers(&mut h);
    assert!(d.allowed());
    h = h.with_property(&["response", "code"], 201u64.to_le_bytes().to_vec());
    f.on_log(&mut h, &mut d.clone());
    let all: String = h.logs.borrow().iter().map(|(_, l)| l.clone()).collect();
    assert!(!all.contains("canary"), "{all}");
    let recs = log_lines(&h);
    assert_eq!(recs.len(), 1);
    let r = &recs[0];
    assert_eq!(r["decision_id"], d.id);
    assert_eq!(r["path"], "mcp/authz");
    assert_eq!(r["result"]["allowed"], true);
    assert_eq!(r["status"], 201, "upstream's status");
    assert_eq!(r["agent"]["id"], "support-triage@clients");
    assert_eq!(r["agent"]["team"], "customer-success");
    assert_eq!(r["resource"], "hello-skill");
    assert_eq!(r["input"]["resource"]["id"], "hello-skill");
    assert_eq!(r["input"]["request"]["id"], r["decision_id"]);
    assert!(
        r["input"]["jwt"]["payload"].get("email").is_none(),
        "masked"
    );
    assert!(r["metrics"]["timer_rego_query_eval_ns"].as_u64().is_some());
    assert_eq!(r["labels"]["policy_revision"], crate::bundle::REVISION);
    assert_eq!(r["cached"], false);

    // The same request again: a cache hit, still logged with its input.
    let mut h = request(
        "POST",
        "/mcp://hello-skill/greet",
        Some(claims(json!({"email": "canary@x.org"}))),
    )
    .with_property(&["request", "id"], "req-456");
    let (_, d) = f.on_request_headers(&mut h);
    f.on_log(&mut h, &mut d.clone());
    let r = &log_lines(&h)[0];
    assert_eq!(r["cached"], true);
    assert_eq!(
        r["input"]["request"]["id"],
        d.id.as_str(),
        "this request's id"
    );
    assert!(r["metrics"].get("timer_rego_query_eval_ns").is_none());
}

#[test]
fn denies_are_always_logged_allows_sampled() {
    let f = logged_filter(json!({"enabled": true, "sample_allowed": 0.0}));
    let mut h = request("POST", "/mcp://hello-skill/greet", Some(claims(json!({}))));
    let (_, d) = f.on_request_headers(&mut h);
    f.on_log(&mut h, &mut d.clone());
    assert!(d.allowed() && log_lines(&h).is_empty());
    let mut h = request(
        "POST",
        "/mcp://hello-skill/greet",
        Some(claims(json!({"permissions": []}))),
    );
    let (_, d) = f.on_request_headers(&mut h);
    f.on_log(&mut h, &mut d.clone());
    let r = &log_lines(&h)[0];
    assert_eq!(r["result"]["allowed"], false);
    assert_eq!(r["status"], 403);
    assert_eq!(
        r["result"]["reasons"][0],
        "missing permission skills:invoke for action invoke_skill"
    );
    // No identity: still a record.
    let mut h = request("POST", "/mcp://hello-skill/greet", None);
    let (_, d) = f.on_request_headers(&mut h);
    f.on_log(&mut h, &mut d.clone());
    assert_eq!(log_lines(&h)[0]["status"], 401);
    // Off by default.
    let plain = filter();
    let mut h = request("POST", "/mcp://hello-skill/greet", None);
    let (_, d) = plain.on_request_headers(&mut h);
    plain.on_log(&mut h, &mut d.clone());
    assert!(d.record.is_none() && log_lines(&h).is_empty());
}

#[test]
fn counters_move_exactly_with_the_requests() {
    let f = filter();
    let mut totals = std::collections::BTreeMap::new();
    let mut run = |mut h: MockHost| {
        f.on_configured(&mut h, "test");
        f.on_request_headers(&mut h);
        for (k, v) in &h.metrics {
            *totals.entry(k.clone()).or_insert(0u64) += v;
        }
    };
    for _ in 0..3 {
        run(
            request("POST", "/mcp://hello-skill/greet", Some(claims(json!({}))))
                .with_header("x-agent-id", "forged"),
        );
    }
    run(request(
        "POST",
        "/mcp://hello-skill/greet",
        Some(claims(json!({"permissions": []}))),
    ));
    run(request("POST", "/mcp://hello-skill/greet", None));
    run(request(
        "POST",
        "/mcp://hello-skill/../x",
        Some(claims(json!({}))),
    ));
    let get = |k: &str| totals.get(k).copied().unwrap_or(0);
    assert_eq!(get("agentplane.decisions.allowed"), 3);
    assert_eq!(get("agentplane.decisions.denied"), 1);
    assert_eq!(get("agentplane.decisions.unauthorized"), 1);
    assert_eq!(get("agentplane.decisions.bad_request"), 1);
    assert_eq!(get("agentplane.headers.stripped"), 3);
    assert_eq!(get("agentplane.decision_cache.miss"), 2);
    assert_eq!(get("agentplane.decision_cache.hit"), 2);
}

#[test]
fn mandatory_logging_denies_when_records_cannot_be_handed_over() {
    let f = logged_filter(json!({"enabled": true, "mandatory": true,
        "collector": {"cluster": "logs", "max_batch": 1, "max_buffer": 2}}));
    assert!(f.needs_tick());
    for _ in 0..2 {
        let mut h = request("POST", "/mcp://hello-skill/greet", Some(claims(json!({}))));
        let (_, d) = f.on_request_headers(&mut h);
        assert!(d.allowed());
        f.on_log(&mut h, &mut d.clone());
    }
    // The collector never answered: the buffer is full, requests deny.
    let mut h = request("POST", "/mcp://hello-skill/greet", Some(claims(json!({}))));
    let (flow, d) = f.on_request_headers(&mut h);
    assert_eq!(flow, Flow::Replied);
    assert_eq!(
        (d.status(), body(&h)["reason"].as_str()),
        (503, Some("decision_log_unavailable"))
    );
    // The root ships a batch; once the collector accepts, requests pass.
    let mut root = MockHost::new();
    f.on_tick(&mut root);
    let t = root.dispatched[0].token;
    let batch: Value = serde_json::from_slice(root.dispatched[0].body.as_ref().unwrap()).unwrap();
    assert_eq!(batch.as_array().unwrap().len(), 1);
    f.on_callout_response(&mut root, t, Some(204), None);
    let mut h = request("POST", "/mcp://hello-skill/greet", Some(claims(json!({}))));
    assert!(f.on_request_headers(&mut h).1.allowed());

    let e = Filter::new(
        br#"{"decision_log": {"enabled": true, "mandatory": true}}"#,
        1,
    )
    .unwrap_err();
    assert!(
        e.to_string()
            .contains("needs decision_log.enabled and a collector"),
        "{e}"
    );
}

#[test]
fn metrics_header_reports_the_filters_own_timing_when_enabled() {
    let mut cfg: Value = serde_json::from_str(CONFIG).unwrap();
    cfg["headers"] = json!({"metrics_header": true});
    let f = Filter::new(cfg.to_string().as_bytes(), 7).unwrap();
    let mut h = request("POST", "/mcp://hello-skill/greet", Some(claims(json!({}))));
    let (_, mut d) = f.on_request_headers(&mut h);
    f.on_response_headers(&mut h, &mut d);
    let v = h
        .response_headers
        .iter()
        .find(|(k, _)| k == METRICS_HEADER)
        .unwrap()
        .1
        .clone();
    assert!(
        v.starts_with("filter_us=") && v.ends_with(";cache=miss"),
        "{v}"
    );
    let mut h = request("POST", "/mcp://hello-skill/greet", None);
    f.on_request_headers(&mut h);
    assert!(reply_header(&h, METRICS_HEADER).is_some());
    // Off by default.
    let mut h = request("POST", "/mcp://hello-skill/greet", Some(claims(json!({}))));
    let (_, mut d) = filter().on_request_headers(&mut h);
    filter().on_response_headers(&mut h, &mut d);
    assert!(!h.response_headers.iter().any(|(k, _)| k == METRICS_HEADER));
}
// --- attacks (issue 9): each test is named after what it stops --------

#[test]
fn non_utf8_header_value_cannot_crash_or_confuse_the_filter() {
    let f = filter();
    // In a header the filter never reads: forwarded untouched.
    let mut h = request("POST", "/mcp://hello-skill/greet", Some(claims(json!({}))))
        .with_header_bytes(b"x-legacy", b"caf\xe9 \xff");
    let (flow, d) = f.on_request_headers(&mut h);
    assert_eq!(flow, Flow::Continue, "{:?}", h.reply);
    assert!(d.allowed());
    assert!(h
        .raw_headers()
        .iter()
        .any(|(k, v)| k == b"x-legacy" && v == b"caf\xe9 \xff"));
    // In a header the policy reads (user-agent is an input header): 400.
    let mut h = request("POST", "/mcp://hello-skill/greet", Some(claims(json!({}))))
        .with_header_bytes(b"user-agent", b"\x80\x81");
    assert_eq!(f.on_request_headers(&mut h).0, Flow::Replied);
    assert_eq!(h.reply.as_ref().unwrap().status, 400);
    assert_eq!(body(&h)["reason"], "header user-agent is not valid UTF-8");
    // In :path, without any token: 400, never a trap.
    let mut h = MockHost::new()
        .with_header(":method", "GET")
        .with_header_bytes(b":path", b"/mcp://hello-skill/\xff");
    assert_eq!(f.on_request_headers(&mut h).0, Flow::Replied);
    assert_eq!(h.reply.as_ref().unwrap().status, 400);
    assert!(body(&h)["decision_id"].is_string());
}

#[test]
fn non_utf8_header_name_in_the_trusted_namespace_is_stripped() {
    let f = filter();
    let mut h = request("POST", "/mcp://hello-skill/greet", Some(claims(json!({}))))
        .with_header_bytes(b"x-agent-\xff", b"root");
    assert_eq!(f.on_request_headers(&mut h).0, Flow::Continue);
    assert!(!h.raw_headers().iter().any(|(k, _)| k == b"x-agent-\xff"));
}

#[test]
fn underscore_spelling_of_trusted_headers_never_reaches_upstream() {
    let f = filter();
    // No team claim: the spoofed one would be the only team header.
    let c = claims(json!({"https://mcp.example.com/team": null}));
    let mut h = request("POST", "/mcp://hello-skill/x", Some(c))
        .with_header("x_agent_team", "platform")
        .with_header("X_Agent-Id", "root")
        .with_header("x_agentplane_service", "tickets");
    assert_eq!(
        f.on_request_headers(&mut h).0,
        Flow::Continue,
        "{:?}",
        h.reply
    );
    let folded: Vec<String> = h
        .raw_headers()
        .iter()
        .map(|(k, _)| String::from_utf8_lossy(k).replace('_', "-"))
        .collect();
    assert!(!folded.contains(&"x-agent-team".to_string()), "{folded:?}");
    assert_eq!(h.header_values(SERVICE_HEADER), ["hello-skill"]);
    assert_eq!(h.header_values("x-agent-id"), ["support-triage@clients"]);
    assert!(h.header_values("x_agent_team").is_empty());
    assert!(h.header_values("x_agent-id").is_empty());
    assert!(h.header_values("x_agentplane_service").is_empty());
}

#[test]
fn method_override_headers_cannot_turn_an_authorized_post_into_a_delete() {
    let f = filter();
    for name in [
        "x-http-method-override",
        "X-HTTP-Method",
        "x-method-override",
        "x_http_method_override",
    ] {
        let mut h = request("POST", "/mcp://tickets/1", Some(claims(json!({}))))
            .with_header(name, "DELETE");
        assert_eq!(f.on_request_headers(&mut h).0, Flow::Continue);
        assert!(
            !h.raw_headers()
                .iter()
                .any(|(k, _)| k.eq_ignore_ascii_case(name.as_bytes())),
            "{name} reached upstream"
        );
    }
}

#[test]
fn lowercase_method_is_decided_as_the_method_upstreams_will_run() {
    let f = filter();
    // DELETE is off limits outside business hours; `delete` is the same.
    let mut h = request("delete", "/mcp://tickets/1", Some(claims(json!({})))).at(EARLY);
    assert_eq!(f.on_request_headers(&mut h).0, Flow::Replied);
    assert!(body(&h)["reason"]
        .as_str()
        .unwrap()
        .contains("DELETE is not permitted"));
    let mut h = request("GE T", "/mcp://tickets/1", Some(claims(json!({}))));
    assert_eq!(f.on_request_headers(&mut h).0, Flow::Replied);
    assert_eq!(h.reply.as_ref().unwrap().status, 400);
}

#[test]
fn client_chosen_request_and_decision_ids_never_reach_logs_or_upstream() {
    let f = logged_filter(json!({"enabled": true}));
    let mut h = request("POST", "/mcp://hello-skill/greet", Some(claims(json!({}))))
        .with_header("x-request-id", "attacker-chosen")
        .with_header("x-decision-id", "forged-decision");
    let (_, mut d) = f.on_request_headers(&mut h);
    assert_eq!(h.header_values("x-request-id"), [d.id.as_str()]);
    assert!(h.header_values("x-decision-id").is_empty());
    f.on_log(&mut h, &mut d);
    let r = &log_lines(&h)[0];
    assert_eq!(r["request_id"], d.id.as_str());
    assert!(!r.to_string().contains("attacker-chosen"));
    // An edge that sets x-request-id itself may be trusted, explicitly.
    let mut cfg: Value = serde_json::from_str(CONFIG).unwrap();
    cfg["headers"] = json!({"trust_request_id": true});
    let f = Filter::new(cfg.to_string().as_bytes(), 7).unwrap();
    let mut h = request("POST", "/mcp://hello-skill/greet", Some(claims(json!({}))))
        .with_header("x-request-id", "edge-id-1");
    f.on_request_headers(&mut h);
    assert_eq!(h.header_values("x-request-id"), ["edge-id-1"]);
}

#[test]
fn duplicate_headers_the_filter_reads_are_refused() {
    let f = filter();
    for (name, a, b) in [
        ("authorization", "Bearer a", "Bearer b"),
        ("content-type", "application/json", "text/plain"),
    ] {
        let mut h = request("POST", "/mcp://hello-skill/greet", Some(claims(json!({}))))
            .with_header(name, a)
            .with_header(name, b);
        assert_eq!(f.on_request_headers(&mut h).0, Flow::Replied, "{name}");
        assert_eq!(h.reply.as_ref().unwrap().status, 400);
        assert_eq!(
            body(&h)["reason"],
            format!("header {name} appears more than once")
        );
    }
}

#[test]
fn scope_with_tabs_or_newlines_grants_nothing() {
    let f = filter();
    let c = claims(json!({"permissions": null, "scope": "mcp:read\tskills:invoke\nadmin"}));
    let mut h = request("POST", "/mcp://hello-skill/greet", Some(c));
    assert_eq!(f.on_request_headers(&mut h).0, Flow::Replied);
    assert_eq!(h.reply.as_ref().unwrap().status, 401);
    let c = claims(json!({"permissions": null, "scope": "mcp:read skills:invoke"}));
    let mut h = request("POST", "/mcp://hello-skill/greet", Some(c));
    assert_eq!(f.on_request_headers(&mut h).0, Flow::Continue);
}

#[test]
fn a_path_authorized_for_one_service_is_routed_to_that_service_only() {
    let f = filter();
    for (path, service, upstream) in [
        ("/mcp://hello-skill/tickets/x", "hello-skill", "/tickets/x"),
        (
            "/hello-skill/tickets/x?q=1",
            "hello-skill",
            "/tickets/x?q=1",
        ),
        ("/mcp://hello-skill", "hello-skill", "/"),
        ("/mcp://hello-skill//tickets", "hello-skill", "//tickets"),
    ] {
        let mut h = request("POST", path, Some(claims(json!({}))));
        assert_eq!(f.on_request_headers(&mut h).0, Flow::Continue, "{path}");
        assert_eq!(h.header_values(SERVICE_HEADER), [service], "{path}");
        assert_eq!(h.header_values(":path"), [upstream], "{path}");
    }
    // A client cannot pre-set the routing header.
    let mut h = request("POST", "/mcp://hello-skill/x", Some(claims(json!({}))))
        .with_header(SERVICE_HEADER, "tickets");
    f.on_request_headers(&mut h);
    assert_eq!(h.header_values(SERVICE_HEADER), ["hello-skill"]);
}

#[test]
fn a_proxy_refusing_header_writes_fails_closed() {
    let f = filter();
    let mut h = request("POST", "/mcp://hello-skill/greet", Some(claims(json!({}))));
    h.refuse_header_writes = true;
    assert_eq!(f.on_request_headers(&mut h).0, Flow::Replied);
    assert_eq!(h.reply.as_ref().unwrap().status, 503);
    assert!(body(&h)["decision_id"].is_string());
    // Spoofed headers that cannot be removed: refused, never forwarded.
    let mut h = request("POST", "/mcp://hello-skill/greet", Some(claims(json!({}))))
        .with_header("x-agent-id", "root");
    h.refuse_header_writes = true;
    assert_eq!(f.on_request_headers(&mut h).0, Flow::Replied);
    assert_eq!(body(&h)["reason"], "proxy_error: request header write");
    assert_eq!(
        h.header_values("x-agent-id"),
        ["root"],
        "still the client's, and refused"
    );
    let mut h = request("POST", "/mcp://hello-skill/greet", Some(claims(json!({}))));
    h.no_header_map = true;
    assert_eq!(f.on_request_headers(&mut h).0, Flow::Replied);
    assert_eq!(h.reply.as_ref().unwrap().status, 503);
}

#[test]
fn a_request_whose_secrets_fail_after_pausing_is_logged_and_counted_as_refused() {
    let mut cfg: Value = serde_json::from_str(&json!({
        "vault": {"cluster": "vault", "role": "agent", "retries": 0},
        "decision_log": {"enabled": true},
        "resources": {
            "hello-skill": {"type": "skill", "metadata": {"team": "platform", "environment": "production"},
                "secrets": [{"kv": "secret/data/mcp/agents/{agent}/credentials", "field": "api_key", "header": "x-api-key"}]}
        }
    }).to_string()).unwrap();
    cfg["decision_log"]["sample_allowed"] = json!(1.0);
    let f = Filter::new(cfg.to_string().as_bytes(), 7).unwrap();
    let mut root = MockHost::new();
    f.on_configured(&mut root, "test");
    let mut h = request("POST", "/mcp://hello-skill/greet", Some(claims(json!({}))))
        .with_header("authorization", "Bearer jwt");
    h.stream = 9;
    let (flow, mut d) = f.on_request_headers(&mut h);
    assert_eq!(flow, Flow::Paused);
    assert_eq!(f.settled(9), Some(State::Pending));
    f.on_tick(&mut root);
    let t = root.dispatched[0].token;
    f.on_callout_response(&mut root, t, Some(500), None);
    assert!(root.resumed.is_empty());
    let (stream, reply) = &root.stream_replies[0];
    assert_eq!((*stream, reply.status), (9, 503));
    assert_eq!(
        f.settled(9).map(|s| matches!(s, State::Denied(_))),
        Some(true)
    );
    // The stream's own log phase writes the refusal, not an allow.
    f.on_log(&mut h, &mut d);
    let r = &log_lines(&h)[0];
    assert_eq!(r["result"]["allowed"], false);
    assert_eq!(r["status"], 503);
    assert!(r["reason"]
        .as_str()
        .unwrap()
        .starts_with("secrets_unavailable"));
    assert_eq!(
        root.metrics.get("agentplane.decisions.secrets_unavailable"),
        Some(&1)
    );
    assert_eq!(root.metrics.get("agentplane.decisions.allowed"), Some(&0));
    assert_eq!(f.pending_streams(), 0);
}

#[test]
fn policy_headers_cannot_overwrite_trusted_or_pseudo_headers() {
    for header in [
        ":path",
        "x-agent-id",
        "x-agentplane-service",
        "x-request-id",
        "authorization",
    ] {
        let src = format!(
            "package p\nresult := {{\"allowed\": true, \"headers\": {{\"{header}\": \"evil\"}}}}\n"
        );
        let policy = Policy::compile_for(
            &[("p.rego", src.as_str())],
            "{}",
            "data.p.result",
            crate::policy::EngineChoice::Interpreter,
        )
        .unwrap();
        let f = Filter::with_policy(Config::from_json(CONFIG.as_bytes()).unwrap(), policy, 1);
        let mut h = request("POST", "/mcp://hello-skill/greet", Some(claims(json!({}))));
        assert_eq!(f.on_request_headers(&mut h).0, Flow::Replied, "{header}");
        assert_eq!(body(&h)["reason"], "policy_error", "{header}");
    }
}

// --- MCP -------------------------------------------------------------

pub(super) const MCP_CONFIG: &str = r#"{"resources": {
    "tickets-mcp": {"type": "tool", "protocol": "mcp",
        "metadata": {"team": "customer-success", "environment": "production"}}
}, "mcp": {"max_body_bytes": 2048}}"#;

pub(super) fn mcp_claims(perms: &[&str]) -> Value {
    claims(json!({ "permissions": perms }))
}

/// Runs an MCP POST through both phases.
fn mcp_call(
    f: &Filter,
    perms: &[&str],
    body: Option<&str>,
    headers: &[(&str, &str)],
) -> (Flow, Decision, MockHost) {
    let mut h = request("POST", "/mcp://tickets-mcp/mcp", Some(mcp_claims(perms)));
    for (k, v) in headers {
        h = h.with_header(k, v);
    }
    let (flow, waiting) = f.on_request_headers(&mut h);
    assert_eq!(flow, Flow::NeedBody);
    assert!(h.reply.is_none() && h.header_writes == 0);
    let body = match body {
        Some(b) => RequestBody::Complete(b.as_bytes()),
        None => RequestBody::TooLarge,
    };
    let (flow, d) = f.on_request_body(&mut h, body);
    assert_eq!(d.id, waiting.id);
    (flow, d, h)
}

const CALL: &str = r#"{"jsonrpc":"2.0","id":42,"method":"tools/call","params":{"name":"lookup_ticket","arguments":{"team":"customer-success","id":"T-1"}}}"#;

#[test]
fn an_mcp_tool_call_is_decided_on_its_body() {
    let f = Filter::new(MCP_CONFIG.as_bytes(), 7).unwrap();
    let (flow, d, h) = mcp_call(
        &f,
        &["tools:call"],
        Some(CALL),
        &[("x-agent-tool", "run_shell")],
    );
    assert_eq!(flow, Flow::Continue, "{:?}", h.reply);
    assert!(d.allowed());
    assert_eq!(h.header_values("x-agent-id"), ["support-triage@clients"]);
    assert_eq!(h.header_values(":path"), ["/mcp"]);
    // The tool goes upstream as a trusted header; a client's is gone.
    assert_eq!(h.header_values("x-agent-tool"), ["lookup_ticket"]);
}

#[test]
fn an_mcp_refusal_is_a_json_rpc_error_with_the_request_id() {
    let f = Filter::new(MCP_CONFIG.as_bytes(), 7).unwrap();
    // tools:list does not grant tools/call.
    let (flow, d, h) = mcp_call(&f, &["tools:list"], Some(CALL), &[]);
    assert_eq!(flow, Flow::Replied);
    assert_eq!(h.reply.as_ref().unwrap().status, 403);
    let b = body(&h);
    assert_eq!(b["jsonrpc"], "2.0");
    assert_eq!(b["id"], 42);
    assert_eq!(b["error"]["code"], crate::mcp::code::FORBIDDEN);
    assert_eq!(b["error"]["data"]["decision_id"], d.id);
    assert!(b["error"]["message"]
        .as_str()
        .unwrap()
        .contains("missing permission tools:call for action call_tool"));
}

#[test]
fn malformed_or_smuggling_mcp_bodies_are_refused_before_the_policy() {
    let f = Filter::new(MCP_CONFIG.as_bytes(), 7).unwrap();
    let perms = &["tools:call"];
    for (body, code) in [
        ("{not json", crate::mcp::code::PARSE_ERROR),
        (
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"lookup_ticket","name":"delete_all"}}"#,
            crate::mcp::code::PARSE_ERROR,
        ),
        (
            r#"[{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"x"}}]"#,
            crate::mcp::code::INVALID_REQUEST,
        ),
    ] {
        let (flow, _, h) = mcp_call(&f, perms, Some(body), &[]);
        assert_eq!(flow, Flow::Replied, "{body}");
        assert_eq!(h.reply.as_ref().unwrap().status, 400);
        assert_eq!(body_code(&h), code, "{body}");
    }
    // A mirror header that contradicts the body (2026-07-28 semantics).
    let (flow, _, h) = mcp_call(
        &f,
        perms,
        Some(CALL),
        &[("mcp-method", "tools/call"), ("mcp-name", "harmless_tool")],
    );
    assert_eq!(flow, Flow::Replied);
    assert_eq!(body_code(&h), crate::mcp::code::HEADER_MISMATCH);
    assert_eq!(body(&h)["id"], 42);
    // An unsupported revision.
    let (_, _, h) = mcp_call(
        &f,
        perms,
        Some(CALL),
        &[("mcp-protocol-version", "2024-01-01")],
    );
    assert_eq!(
        body_code(&h),
        crate::mcp::code::UNSUPPORTED_PROTOCOL_VERSION
    );
    // Too large: 413, nothing upstream.
    let (flow, _, h) = mcp_call(&f, perms, None, &[]);
    assert_eq!(flow, Flow::Replied);
    assert_eq!(h.reply.as_ref().unwrap().status, 413);
    assert_eq!(h.header_writes, 0);
}

#[test]
fn a_body_the_host_cannot_hand_over_is_a_503_not_a_parse_error() {
    let f = Filter::new(MCP_CONFIG.as_bytes(), 7).unwrap();
    let mut h = request(
        "POST",
        "/mcp://tickets-mcp/mcp",
        Some(mcp_claims(&["tools:call"])),
    );
    let (flow, waiting) = f.on_request_headers(&mut h);
    assert_eq!(flow, Flow::NeedBody);
    let (flow, d) = f.on_request_body(&mut h, RequestBody::Unreadable);
    assert_eq!(flow, Flow::Replied);
    let reply = h.reply.as_ref().unwrap();
    assert_eq!(reply.status, 503);
    assert_eq!(d.id, waiting.id);
    assert_eq!(body(&h)["error"]["data"]["decision_id"], d.id.as_str());
    assert_eq!(h.header_writes, 0, "nothing forwarded");
}

fn body_code(h: &MockHost) -> i64 {
    body(h)["error"]["code"].as_i64().unwrap()
}

#[test]
fn mcp_get_and_delete_are_their_own_actions() {
    let f = Filter::new(MCP_CONFIG.as_bytes(), 7).unwrap();
    // Ending a session needs no permission (the shipped policy's
    // session_actions); opening the server's stream needs mcp:connect.
    let mut h = request(
        "DELETE",
        "/mcp://tickets-mcp/mcp",
        Some(mcp_claims(&["tools:call"])),
    );
    assert_eq!(f.on_request_headers(&mut h).0, Flow::Continue);
    let (method, action) = ("GET", "open_stream");
    let mut h = request(
        method,
        "/mcp://tickets-mcp/mcp",
        Some(mcp_claims(&["tools:call"])),
    );
    let (flow, _) = f.on_request_headers(&mut h);
    assert_eq!(flow, Flow::Replied, "{method}: needs mcp:connect");
    assert!(
        body(&h)["reason"].as_str().unwrap().contains(action),
        "{method}"
    );
    let mut h = request(
        method,
        "/mcp://tickets-mcp/mcp",
        Some(mcp_claims(&["mcp:connect"])),
    );
    assert_eq!(f.on_request_headers(&mut h).0, Flow::Continue, "{method}");
}

#[test]
fn a_body_for_a_stream_that_never_waited_fails_closed() {
    let f = Filter::new(MCP_CONFIG.as_bytes(), 7).unwrap();
    let mut h = request(
        "POST",
        "/mcp://tickets-mcp/mcp",
        Some(mcp_claims(&["tools:call"])),
    );
    h.stream = 99;
    let (flow, d) = f.on_request_body(&mut h, RequestBody::Complete(CALL.as_bytes()));
    assert_eq!(flow, Flow::Replied);
    assert_eq!(d.status(), 503);
}

#[test]
fn protected_resource_metadata_is_served_and_401s_point_to_it() {
    let cfg = r#"{"oauth": {"authorization_servers": ["https://idp.example.com"]},
        "resources": {"tickets-mcp": {"type": "tool", "protocol": "mcp",
            "resource_uri": "https://gw.example.com/tickets-mcp/mcp",
            "metadata": {"team": "customer-success", "environment": "production"}}}}"#;
    let f = Filter::new(cfg.as_bytes(), 7).unwrap();
    let mut h = request(
        "GET",
        "/.well-known/oauth-protected-resource/tickets-mcp/mcp",
        None,
    );
    let (flow, _) = f.on_request_headers(&mut h);
    assert_eq!(flow, Flow::Replied);
    assert_eq!(h.reply.as_ref().unwrap().status, 200);
    assert_eq!(
        body(&h)["resource"],
        "https://gw.example.com/tickets-mcp/mcp"
    );
    // No token: the challenge names the metadata, without an error.
    let mut h = request("POST", "/mcp://tickets-mcp/mcp", None);
    f.on_request_headers(&mut h);
    assert_eq!(h.reply.as_ref().unwrap().status, 401);
    assert_eq!(
        reply_header(&h, "www-authenticate"),
        Some(
            r#"Bearer resource_metadata="https://gw.example.com/.well-known/oauth-protected-resource/tickets-mcp/mcp""#
        )
    );
    // A token whose claims are unusable: invalid_token.
    let mut h = request(
        "POST",
        "/mcp://tickets-mcp/mcp",
        Some(claims(json!({"sub": ""}))),
    );
    f.on_request_headers(&mut h);
    assert!(reply_header(&h, "www-authenticate")
        .unwrap()
        .ends_with(r#", error="invalid_token""#));
}

#[test]
fn a_missing_scope_is_named_so_the_client_can_step_up() {
    let f = Filter::new(MCP_CONFIG.as_bytes(), 7).unwrap();
    let (_, _, h) = mcp_call(&f, &["tools:list"], Some(CALL), &[]);
    assert_eq!(h.reply.as_ref().unwrap().status, 403);
    assert_eq!(
        reply_header(&h, "www-authenticate"),
        Some(
            r#"Bearer error="insufficient_scope", scope="tools:call", error_description="missing scope(s): tools:call""#
        )
    );
    // A refusal for another reason names no scope: it is the policy's
    // answer to the call (a tool result marked as an error).
    let other = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"run_shell"}}"#;
    let (_, _, h) = mcp_call(&f, &["tools:call"], Some(other), &[]);
    assert_eq!(h.reply.as_ref().unwrap().status, 200);
    assert_eq!(body(&h)["result"]["isError"], true);
    assert_eq!(reply_header(&h, "www-authenticate"), None);
}

/// A list request through to its response headers, in `content_type`.
fn list_reply(f: &Filter, content_type: &str) -> (Decision, MockHost, ResponseBody) {
    let list = r#"{"jsonrpc":"2.0","id":5,"method":"tools/list"}"#;
    let (flow, mut d, mut h) = mcp_call(f, &["tools:list", "tools:call"], Some(list), &[]);
    assert_eq!(flow, Flow::Continue, "{:?}", h.reply);
    assert!(d.list.is_some());
    h.response_headers = vec![
        ("content-type".into(), content_type.into()),
        ("content-length".into(), "999".into()),
    ];
    let read = f.on_response_headers(&mut h, &mut d);
    (d, h, read)
}

const TOOLS: &str = r#"{"jsonrpc":"2.0","id":5,"result":{"tools":[{"name":"search_docs"},{"name":"run_shell"},{"name":"delete_ticket"},{"name":"lookup_ticket"}]}}"#;

fn tool_names(v: &Value) -> Vec<&str> {
    v["result"]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect()
}

/// Feeds `chunks` as a response body; returns what the client receives.
fn stream_through(f: &Filter, d: &mut Decision, h: &mut MockHost, chunks: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut held: Vec<u8> = Vec::new();
    for (i, c) in chunks.iter().enumerate() {
        held.extend_from_slice(c);
        let end = i + 1 == chunks.len();
        let body = held.clone();
        match f.on_response_body(h, d, body.len(), end, || Some(body.clone())) {
            BodyStep::Pass => out.append(&mut held),
            BodyStep::Hold => {}
            BodyStep::Replace(bytes) => {
                out.extend(bytes);
                held.clear();
            }
        }
    }
    out
}

#[test]
fn a_tool_list_response_shows_only_the_tools_the_agent_may_call() {
    let f = Filter::new(MCP_CONFIG.as_bytes(), 7).unwrap();
    let (mut d, mut h, read) = list_reply(&f, "application/json");
    assert_eq!(read, ResponseBody::Buffered, "the body must be read");
    assert_eq!(h.response_header("content-length"), None);
    let body = TOOLS.as_bytes();
    let (a, b) = body.split_at(40);
    let out = stream_through(&f, &mut d, &mut h, &[a, b]);
    let out: Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(tool_names(&out), ["search_docs", "lookup_ticket"]);
    // The same list again is answered from the worker's list cache, alike.
    let (mut d, mut h, _) = list_reply(&f, "application/json");
    let again = stream_through(&f, &mut d, &mut h, &[body]);
    assert_eq!(serde_json::from_slice::<Value>(&again).unwrap(), out);
    // A tool call's response is not read.
    let (_, mut d, mut h) = mcp_call(&f, &["tools:call"], Some(CALL), &[]);
    h.response_headers = vec![("content-type".into(), "application/json".into())];
    assert_eq!(
        f.on_response_headers(&mut h, &mut d),
        ResponseBody::Untouched
    );
}

#[test]
fn a_json_list_still_buffered_is_held_until_filtered() {
    let f = Filter::new(MCP_CONFIG.as_bytes(), 7).unwrap();
    let (mut d, mut h, _) = list_reply(&f, "application/json");
    assert!(d.holds_list_body(), "trailers now would pass it unfiltered");
    let body = TOOLS.as_bytes();
    assert_eq!(
        f.on_response_body(&mut h, &mut d, 10, false, || None),
        BodyStep::Hold
    );
    assert!(d.holds_list_body());
    stream_through(&f, &mut d, &mut h, &[body]);
    assert!(!d.holds_list_body(), "filtered: nothing held");
    let (d, _, _) = list_reply(&f, "text/event-stream");
    assert!(
        !d.holds_list_body(),
        "event streams are filtered chunk by chunk"
    );
}

#[test]
fn an_oversized_list_response_ends_as_an_error_never_unfiltered() {
    let mut config: Value = serde_json::from_str(MCP_CONFIG).unwrap();
    config["mcp"]["max_body_bytes"] = json!(4096);
    let f = Filter::new(config.to_string().as_bytes(), 7).unwrap();
    // JSON: too large while buffering.
    let (mut d, mut h, _) = list_reply(&f, "application/json");
    let big = format!(
        r#"{{"jsonrpc":"2.0","id":5,"result":{{"tools":[{{"name":"run_shell","description":"{}"}}]}}}}"#,
        "x".repeat(5000)
    );
    let (a, b) = big.as_bytes().split_at(4500);
    let out = stream_through(&f, &mut d, &mut h, &[a, b]);
    let v: Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(v["id"], 5);
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("too large"));
    assert_eq!(v["error"]["data"]["decision_id"], d.id.as_str());
    // An event stream whose list event never ends within the bound: the
    // events before it pass, then the error; nothing of the list.
    let (mut d, mut h, read) = list_reply(&f, "text/event-stream");
    assert_eq!(read, ResponseBody::Streamed);
    let progress = b"data: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\"}\n\n";
    let event = format!("data: {big}\n\n");
    let (a, b) = event.as_bytes().split_at(4200);
    let out = stream_through(&f, &mut d, &mut h, &[progress, a, b, b"data: more\n\n"]);
    let text = String::from_utf8(out).unwrap();
    assert!(
        text.starts_with(std::str::from_utf8(progress).unwrap()),
        "{text}"
    );
    assert!(!text.contains("run_shell"), "{text}");
    assert!(text.contains("too large"), "{text}");
    assert!(
        !text.contains("more"),
        "the rest of a failed stream is dropped"
    );
    // Unreadable JSON is an error too.
    let (mut d, mut h, _) = list_reply(&f, "application/json");
    let out = stream_through(&f, &mut d, &mut h, &[b"{\"tools\": ["]);
    let v: Value = serde_json::from_slice(&out).unwrap();
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("unreadable"));
}

#[test]
fn an_event_stream_list_is_filtered_as_chunks_arrive_and_the_rest_streams_through() {
    let f = Filter::new(MCP_CONFIG.as_bytes(), 7).unwrap();
    let prime = b"id: p0\ndata:\n\n".to_vec();
    let progress = b"event: message\r\ndata: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\",\"params\":{\"progress\":1}}\r\n\r\n".to_vec();
    let result = format!("event: message\nid: r1\ndata: {TOOLS}\n\n").into_bytes();
    let after = b"data: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/message\"}\n\n".to_vec();
    let stream = [prime.clone(), progress.clone(), result, after.clone()].concat();
    // However the network cuts the stream, the client gets the same.
    let mut seen = None;
    for cut in [1, 7, 13, 64, 200, stream.len()] {
        let (mut d, mut h, _) = list_reply(&f, "text/event-stream");
        let chunks: Vec<&[u8]> = stream.chunks(cut).collect();
        let out = stream_through(&f, &mut d, &mut h, &chunks);
        if let Some(s) = &seen {
            assert_eq!(&out, s, "cut every {cut} bytes");
        }
        seen = Some(out);
    }
    let out = seen.unwrap();
    let text = String::from_utf8(out.clone()).unwrap();
    assert!(out.starts_with(&[prime, progress].concat()), "{text}");
    assert!(
        out.ends_with(&after),
        "events after the answer pass: {text}"
    );
    assert!(
        !text.contains("run_shell") && !text.contains("delete_ticket"),
        "{text}"
    );
    let data = text
        .split("id: r1\n")
        .nth(1)
        .and_then(|e| e.lines().next()?.strip_prefix("data: "))
        .unwrap();
    let v: Value = serde_json::from_str(data).unwrap();
    assert_eq!(tool_names(&v), ["search_docs", "lookup_ticket"]);
    // After the answer the stream is still read: a second list result on
    // it (another id) is refused in place, never shown unfiltered.
    let (mut d, mut h, _) = list_reply(&f, "text/event-stream");
    let first = format!("data: {TOOLS}\n\n");
    let second = format!("data: {}\n\n", TOOLS.replace("\"id\":5", "\"id\":6"));
    let out = stream_through(&f, &mut d, &mut h, &[first.as_bytes(), second.as_bytes()]);
    let text = String::from_utf8(out).unwrap();
    assert_eq!(text.matches("run_shell").count(), 0, "{text}");
    assert!(text.contains("does not answer the list request"), "{text}");
}
