//! Secrets on the request path: allowed requests wait for theirs, denied
//! ones fetch nothing, and every failure (before or after the pause) is a
//! refusal that is logged and counted.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use super::*;
#[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
use wasm_bindgen_test::wasm_bindgen_test as test;

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
    let mut f = secrets_filter();
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
    let mut f = secrets_filter();
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

/// A decision-logging filter (allowed decisions sampled at `sample`) and
/// a request to a service with a secret, paused on stream 9 while the
/// secret is fetched: `(filter, root context, stream, decision)`.
fn paused_for_secrets(sample: f64) -> (Filter, MockHost, MockHost, Decision) {
    let cfg = json!({
        "vault": {"cluster": "vault", "role": "agent", "retries": 0},
        "decision_log": {"enabled": true, "sample_allowed": sample},
        "resources": {
            "hello-skill": {"type": "skill", "metadata": {"team": "platform", "environment": "production"},
                "secrets": [{"kv": "secret/data/mcp/agents/{agent}/credentials", "field": "api_key", "header": "x-api-key"}]}
        }
    });
    let mut f = Filter::new(cfg.to_string().as_bytes(), 7).unwrap();
    let mut root = MockHost::new();
    f.on_configured(&mut root, "test");
    let mut h = request("POST", "/mcp://hello-skill/greet", Some(claims(json!({}))))
        .with_header("authorization", "Bearer jwt");
    h.stream = 9;
    let (flow, d) = f.on_request_headers(&mut h);
    assert_eq!(flow, Flow::Paused);
    (f, root, h, d)
}

#[test]
fn a_request_whose_secrets_fail_after_pausing_is_logged_and_counted_as_refused() {
    let (mut f, mut root, mut h, mut d) = paused_for_secrets(1.0);
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
fn a_refusal_after_pausing_is_logged_even_when_allowed_decisions_are_not_sampled() {
    // Denials are always logged; a request refused only after waiting for
    // its secrets was decided "allowed" first, and must not inherit the
    // allowed decisions' sample (1 % of allowed, say) and vanish from the log.
    let (mut f, mut root, mut h, mut d) = paused_for_secrets(0.0);
    f.on_tick(&mut root);
    let t = root.dispatched[0].token;
    f.on_callout_response(&mut root, t, Some(500), None);
    assert_eq!(root.stream_replies[0].1.status, 503);
    f.on_log(&mut h, &mut d);
    let lines = log_lines(&h);
    assert_eq!(lines.len(), 1, "the refusal is logged: {lines:?}");
    assert_eq!(lines[0]["result"]["allowed"], false);
    assert_eq!(lines[0]["status"], 503);
    assert_eq!(lines[0]["decision_id"], json!(d.id));
}

#[test]
fn an_allowed_request_resumed_with_its_secrets_follows_the_allowed_sample() {
    // The other side: resumed and allowed, it is an allowed decision, so
    // a zero sample logs nothing.
    let (mut f, mut root, mut h, mut d) = paused_for_secrets(0.0);
    f.on_tick(&mut root);
    let t = root.dispatched[0].token;
    f.on_callout_response(
        &mut root,
        t,
        Some(200),
        Some(br#"{"auth":{"client_token":"s.tok","lease_duration":600}}"#),
    );
    let t = root.dispatched[1].token;
    f.on_callout_response(
        &mut root,
        t,
        Some(200),
        Some(br#"{"data":{"data":{"api_key":"k-123"}}}"#),
    );
    assert_eq!(root.resumed.len(), 1, "resumed with its secrets");
    f.on_log(&mut h, &mut d);
    assert!(log_lines(&h).is_empty());
}
