//! Headers a client or a proxy gets wrong: non-UTF-8, spellings of trusted
//! names, method overrides, client-chosen ids, duplicates, refused writes,
//! policy headers over trusted ones.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use super::*;
#[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
use wasm_bindgen_test::wasm_bindgen_test as test;

#[test]
fn non_utf8_header_value_cannot_crash_or_confuse_the_filter() {
    let mut f = filter();
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
    let mut f = filter();
    let mut h = request("POST", "/mcp://hello-skill/greet", Some(claims(json!({}))))
        .with_header_bytes(b"x-agent-\xff", b"root");
    assert_eq!(f.on_request_headers(&mut h).0, Flow::Continue);
    assert!(!h.raw_headers().iter().any(|(k, _)| k == b"x-agent-\xff"));
}

#[test]
fn underscore_spelling_of_trusted_headers_never_reaches_upstream() {
    let mut f = filter();
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
    let mut f = filter();
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
    let mut f = filter();
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
    let mut f = logged_filter(json!({"enabled": true}));
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
    let mut f = Filter::new(cfg.to_string().as_bytes(), 7).unwrap();
    let mut h = request("POST", "/mcp://hello-skill/greet", Some(claims(json!({}))))
        .with_header("x-request-id", "edge-id-1");
    f.on_request_headers(&mut h);
    assert_eq!(h.header_values("x-request-id"), ["edge-id-1"]);
}

#[test]
fn duplicate_headers_the_filter_reads_are_refused() {
    let mut f = filter();
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
    let mut f = filter();
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
    let mut f = filter();
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
    let mut f = filter();
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
        let mut f = Filter::with_policy(Config::from_json(CONFIG.as_bytes()).unwrap(), policy, 1);
        let mut h = request("POST", "/mcp://hello-skill/greet", Some(claims(json!({}))));
        assert_eq!(f.on_request_headers(&mut h).0, Flow::Replied, "{header}");
        assert_eq!(body(&h)["reason"], "policy_error", "{header}");
    }
}
