//! Decisions on plain HTTP requests: trusted headers, 401s, policy denials,
//! routes, the clock, policy errors, response objects, decision ids.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use super::*;
#[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
use wasm_bindgen_test::wasm_bindgen_test as test;

#[test]
fn allow_sets_trusted_headers() {
    let mut f = filter();
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
    let mut f = filter();
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
    let mut f = filter();
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
    let mut f = filter();
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
    let mut f = filter();
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
    let mut f = filter();
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
    let mut f = filter();
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
    let mut f = filter();
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
    let mut f = Filter::with_policy(config, policy, 1);
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
    let mut f = Filter::with_policy(config, policy, 1);
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
    let mut f = filter();
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
