//! Identity: only a token jwt_authn verified gets through, and the agent
//! headers upstream come from that token alone.

use agentplane_e2e::Stack;

/// No token: agentplane answers 401 with a Bearer challenge and a decision
/// id; the upstream never sees the request.
#[test]
fn no_token_is_401_and_not_forwarded() {
    let s = Stack::start();
    let r = s.envoy.request("POST", "/mcp://hello-skill/greet", &[]);
    assert_eq!(r.status, 401, "{r:?}");
    assert!(r.header("www-authenticate").unwrap().starts_with("Bearer"));
    // No token is not a bad token: no error code (RFC 6750 §3.1).
    assert!(
        !r.header("www-authenticate").unwrap().contains("error="),
        "{r:?}"
    );
    let body = r.json();
    assert_eq!(body["error"], "unauthorized");
    assert_eq!(body["decision_id"].as_str(), r.header("x-decision-id"));
    assert!(s.upstream.seen().is_empty());
}

/// Expired, wrongly-addressed, foreign-signed or garbage tokens are rejected
/// by jwt_authn before anything reaches upstream.
#[test]
fn bad_tokens_are_rejected() {
    let s = Stack::start();
    let expired = s.idp.mint(
        serde_json::json!({"sub": "a@clients", "permissions": ["skills:invoke"]}),
        -600,
    );
    let wrong_aud = s.idp.mint(
        serde_json::json!({"sub": "a@clients", "aud": "https://elsewhere.example/"}),
        3600,
    );
    let other_idp = agentplane_e2e::Idp::new();
    let foreign = other_idp.agent_token(
        "a@clients",
        "platform",
        "support",
        "production",
        &["skills:invoke"],
    );
    // jwt_authn verifies and marks the failure (failed_status_in_metadata);
    // agentplane answers: 401 invalid_token with jwt_authn's reason and a
    // decision id, also for a token addressed to another audience (which
    // jwt_authn alone answers 403).
    for (name, tok) in [
        ("expired", expired),
        ("wrong audience", wrong_aud),
        ("foreign key", foreign),
        ("garbage", "not.a.jwt".to_string()),
    ] {
        let auth = format!("Bearer {tok}");
        let r = s.envoy.request(
            "POST",
            "/mcp://hello-skill/greet",
            &[("authorization", &auth)],
        );
        assert_eq!(r.status, 401, "{name}: {r:?}");
        let b = r.json();
        assert!(b["decision_id"].is_string(), "{name}: {r:?}");
        let reason = b["reason"].as_str().unwrap();
        assert!(reason.starts_with("token rejected: "), "{name}: {reason}");
        assert!(
            r.header("www-authenticate")
                .is_some_and(|v| v.contains(r#"error="invalid_token""#)),
            "{name}: {r:?}"
        );
    }
    assert!(s.upstream.seen().is_empty());
}

/// A client can never forge identity: x-agent-* / x-mcp-* headers in any
/// case are removed, and upstream receives exactly one x-agent-id, the
/// token's subject.
#[test]
fn spoofed_identity_headers_never_reach_upstream() {
    let s = Stack::start();
    let tok = s.idp.triage_token_with(&["skills:invoke"]);
    let auth = format!("Bearer {tok}");
    let r = s.envoy.request(
        "POST",
        "/mcp://hello-skill/greet",
        &[
            ("authorization", &auth),
            ("X-Agent-Id", "root@clients"),
            ("x-AGENT-ID", "admin@clients"),
            ("x-agent-team", "platform"),
            ("X-Agent-Type", "admin"),
            ("x-mcp-secret", "forged"),
        ],
    );
    assert_eq!(r.status, 200, "{r:?}");
    let seen = s.upstream.seen();
    assert_eq!(seen.len(), 1);
    let up = &seen[0];
    assert_eq!(
        up.one("x-agent-id").as_deref(),
        Some("support-triage@clients")
    );
    assert_eq!(up.one("x-agent-team").as_deref(), Some("customer-success"));
    assert_eq!(up.one("x-agent-type").as_deref(), Some("support"));
    assert!(up.all("x-mcp-secret").is_empty());
    // The token itself is not forwarded (jwt_authn forward: false).
    assert!(up.all("authorization").is_empty());

    // Also when the request is denied: nothing forged in the reply path.
    let r = s.envoy.request(
        "GET",
        "/mcp://model-registry/x",
        &[("authorization", &auth), ("x-agent-id", "ml-bot@clients")],
    );
    assert_eq!(r.status, 403, "{r:?}");
    assert_eq!(s.upstream.seen().len(), 1);
}
