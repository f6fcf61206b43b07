//! Authorization: the embedded policy decides, with reasons and decision ids.

use agentplane_e2e::{Response, Stack};

fn bearer(t: &str) -> String {
    format!("Bearer {t}")
}

/// A request to Envoy with this `authorization` header and no other.
fn call(s: &Stack, method: &str, path: &str, authorization: &str) -> Response {
    s.envoy
        .request(method, path, &[("authorization", authorization)])
}

/// An allowed call reaches the service with the trusted agent headers and
/// the request id, on the path the seed's route rewrite produces; the
/// response carries the decision id.
#[test]
fn allowed_call_reaches_upstream_with_trusted_headers() {
    let s = Stack::start();
    let tok = s.idp.triage_token();
    let r = s.envoy.request(
        "POST",
        "/mcp://sentiment-analysis/v1/analyze?lang=en",
        &[
            ("authorization", &bearer(&tok)),
            ("content-type", "application/json"),
        ],
    );
    assert_eq!(r.status, 200, "{r:?}");
    let decision = r
        .header("x-decision-id")
        .expect("decision id on allowed response");
    assert_eq!(decision.len(), 36);
    let seen = s.upstream.seen();
    assert_eq!(seen.len(), 1);
    let up = &seen[0];
    assert_eq!(up.path, "/v1/analyze?lang=en");
    assert_eq!(
        up.one("x-agent-id").as_deref(),
        Some("support-triage@clients")
    );
    assert_eq!(up.one("x-agent-type").as_deref(), Some("support"));
    assert_eq!(up.one("x-agent-team").as_deref(), Some("customer-success"));
    assert!(up.one("x-request-id").is_some_and(|v| !v.is_empty()));

    // Plain first-segment routing works too.
    let r = call(&s, "GET", "/customer-lookup/tickets/42", &bearer(&tok));
    assert_eq!(r.status, 200, "{r:?}");
}

/// Missing permission: 403, a JSON body with the reason and the decision id,
/// the same id in the header; upstream not called.
#[test]
fn missing_permission_is_403_with_reason() {
    let s = Stack::start();
    let tok = s.idp.agent_token(
        "reader@clients",
        "platform",
        "support",
        "production",
        &["data:read"],
    );
    let r = call(&s, "POST", "/mcp://hello-skill/greet", &bearer(&tok));
    assert_eq!(r.status, 403, "{r:?}");
    let body = r.json();
    assert_eq!(body["error"], "forbidden");
    assert_eq!(
        body["reason"],
        "missing permission skills:invoke for action invoke_skill"
    );
    assert_eq!(body["decision_id"].as_str(), r.header("x-decision-id"));
    assert!(s.upstream.seen().is_empty());
}

/// The scope claim (space-separated) grants like the permissions array.
#[test]
fn oauth_scope_claim_grants() {
    let s = Stack::start();
    let tok = s.idp.mint(
        serde_json::json!({
            "sub": "scoped@clients", "scope": "tools:access data:read",
            "https://mcp.example.com/team": "platform",
            "https://mcp.example.com/environment": "production",
        }),
        3600,
    );
    let r = call(&s, "GET", "/mcp://web-search/q", &bearer(&tok));
    assert_eq!(r.status, 200, "{r:?}");
}

/// Team rule: an agent reaches its own team's and shared resources only.
/// Environment rule: production resources need production agents.
#[test]
fn team_and_environment_rules() {
    let s = Stack::start();
    let ml = s.idp.agent_token(
        "ml-bot@clients",
        "ml",
        "analysis",
        "production",
        &["skills:invoke", "data:read"],
    );
    let r = call(&s, "GET", "/mcp://customer-lookup/tickets", &bearer(&ml));
    assert_eq!(r.status, 403);
    assert_eq!(
        r.json()["reason"],
        "resource customer-lookup belongs to team customer-success, not ml"
    );
    let r = call(&s, "GET", "/mcp://model-registry/models", &bearer(&ml));
    assert_eq!(r.status, 200, "{r:?}");

    let staging = s.idp.agent_token(
        "ml-dev@clients",
        "ml",
        "analysis",
        "staging",
        &["skills:invoke", "data:read"],
    );
    let r = call(&s, "GET", "/mcp://model-registry/models", &bearer(&staging));
    assert_eq!(r.status, 403);
    assert_eq!(
        r.json()["reason"],
        "production resource model-registry requires a production agent, not staging"
    );
    assert_eq!(s.upstream.seen().len(), 1);
}

/// Unknown service: the default resource applies and the policy denies,
/// saying the service is not registered.
#[test]
fn unknown_service_is_denied() {
    let s = Stack::start();
    let tok = s.idp.agent_token(
        "a@clients",
        "platform",
        "support",
        "production",
        &["skills:invoke", "data:read"],
    );
    let r = call(&s, "GET", "/mcp://shadow-it/x", &bearer(&tok));
    assert_eq!(r.status, 403);
    let reason = r.json()["reason"].as_str().unwrap().to_string();
    assert!(
        reason.contains("service shadow-it is not registered"),
        "{reason}"
    );
    assert!(s.upstream.seen().is_empty());
}

/// The layered model: a revoked agent is denied even with every permission.
#[test]
fn agent_layer_deny_wins() {
    let s = Stack::start();
    let tok = s.idp.agent_token(
        "revoked-agent@clients",
        "platform",
        "support",
        "production",
        &["skills:invoke"],
    );
    let r = call(&s, "POST", "/mcp://hello-skill/greet", &bearer(&tok));
    assert_eq!(r.status, 403);
    assert_eq!(
        r.json()["reason"],
        "denied by the agent revoked-agent@clients layer: credentials revoked"
    );
}

/// Path tricks cannot make the policy and the upstream disagree: Envoy
/// resolves dot segments first (`normalize_path`), so the request is decided
/// as what it really asks for; encoded slashes and backslashes are refused.
#[test]
fn ambiguous_paths_are_decided_as_what_they_resolve_to() {
    let s = Stack::start();
    let tok = s.idp.agent_token(
        "a@clients",
        "platform",
        "support",
        "production",
        &["skills:invoke"],
    );
    for p in [
        "/mcp://hello-skill/../customer-lookup/x",
        "/hello-skill/%2e%2e/customer-lookup",
    ] {
        let r = s
            .envoy
            .request("POST", p, &[("authorization", &bearer(&tok))]);
        assert_eq!(r.status, 403, "{p}: {r:?}");
        let reason = r.json()["reason"].as_str().unwrap().to_string();
        assert!(reason.contains("customer-lookup"), "{p}: {reason}");
    }
    for p in [
        "/hello-skill%2F..%2Fcustomer-lookup",
        "/mcp://hello-skill/a%5Cb",
    ] {
        let r = s
            .envoy
            .request("POST", p, &[("authorization", &bearer(&tok))]);
        assert_eq!(r.status, 400, "{p}: {r:?}");
    }
    assert!(s.upstream.seen().is_empty());
}

/// With the decision cache (on by default), repeated identical requests get
/// the same decision with fresh ids and request ids; forged headers are
/// still stripped on every hit; a cached deny never reaches upstream.
#[test]
fn repeated_requests_answer_the_same_from_the_decision_cache() {
    let s = Stack::start();
    let tok = s.idp.triage_token();
    let auth = bearer(&tok);
    let mut ids = Vec::new();
    for _ in 0..3 {
        let r = s.envoy.request(
            "POST",
            "/mcp://sentiment-analysis/analyze",
            &[("authorization", &auth), ("x-agent-team", "platform")],
        );
        assert_eq!(r.status, 200, "{r:?}");
        ids.push(r.header("x-decision-id").unwrap().to_string());
    }
    let seen = s.upstream.seen();
    assert_eq!(seen.len(), 3);
    let mut request_ids: Vec<_> = seen.iter().map(|u| u.one("x-request-id")).collect();
    for up in &seen {
        assert_eq!(up.all("x-agent-team"), ["customer-success"]);
    }
    ids.sort();
    ids.dedup();
    request_ids.sort();
    request_ids.dedup();
    assert_eq!(
        (ids.len(), request_ids.len()),
        (3, 3),
        "fresh ids per request"
    );

    s.upstream.clear();
    for _ in 0..3 {
        let r = call(&s, "GET", "/mcp://web-search/search?q=x", &auth);
        assert_eq!(r.status, 403, "{r:?}");
        assert_eq!(
            r.json()["reason"],
            "missing permission tools:access for action access_tool"
        );
    }
    assert!(s.upstream.seen().is_empty());
}

/// Delegation (RFC 8693): a token naming an orchestrator acting for a
/// support agent passes with the permissions both hold; upstream learns the
/// actor and the chain; a chain that is too long, or an actor type the
/// policy does not allow, is refused with its reason.
#[test]
fn a_delegated_call_carries_its_chain_and_never_gains_permissions() {
    let s = Stack::start();
    let token = |act: serde_json::Value| {
        bearer(&s.idp.mint(
            serde_json::json!({
                "sub": "support-triage@clients",
                "permissions": ["skills:invoke", "data:read"],
                "https://mcp.example.com/agent_type": "support",
                "https://mcp.example.com/team": "customer-success",
                "https://mcp.example.com/environment": "production",
                "act": act,
            }),
            300,
        ))
    };
    let orchestrator = |perms: serde_json::Value, inner: serde_json::Value| {
        serde_json::json!({"sub": "orchestrator-1@clients",
            "https://mcp.example.com/agent_type": "orchestrator",
            "permissions": perms, "act": inner})
    };
    // Every actor of the chain is held to what the current one is: the
    // planner behind the orchestrator is an orchestrator too.
    let ok = token(orchestrator(
        serde_json::json!(["skills:invoke"]),
        serde_json::json!({"sub": "planner@clients",
            "https://mcp.example.com/agent_type": "orchestrator",
            "permissions": ["skills:invoke", "data:read"]}),
    ));
    let r = call(&s, "POST", "/mcp://sentiment-analysis/analyze", &ok);
    assert_eq!(r.status, 200, "{r:?}");
    let up = s.upstream.seen().pop().unwrap();
    assert_eq!(
        up.one("x-agent-id").as_deref(),
        Some("support-triage@clients")
    );
    assert_eq!(
        up.one("x-agent-actor").as_deref(),
        Some("orchestrator-1@clients")
    );
    assert_eq!(
        up.one("x-agent-delegation").as_deref(),
        Some(r#"["orchestrator-1@clients","planner@clients"]"#)
    );
    // The subject may read data; the orchestrator may not: refused.
    let r = call(&s, "GET", "/mcp://customer-lookup/customers/42", &ok);
    assert_eq!(r.status, 403, "{r:?}");
    assert!(
        r.body.contains("missing permission data:read"),
        "{}",
        r.body
    );
    // An agent that may not act for a support agent cannot pass its call
    // through an orchestrator that may.
    let laundered = token(orchestrator(
        serde_json::json!(["skills:invoke"]),
        serde_json::json!({"sub": "lab-1@clients",
            "https://mcp.example.com/agent_type": "experimental",
            "permissions": ["skills:invoke"]}),
    ));
    let r = call(&s, "POST", "/mcp://sentiment-analysis/analyze", &laundered);
    assert_eq!(r.status, 403, "{r:?}");
    assert!(
        r.body
            .contains("an agent of type experimental may not act for a support agent"),
        "{}",
        r.body
    );
    // Three actors: longer than the 2 allowed.
    let deep = token(orchestrator(
        serde_json::json!(["skills:invoke"]),
        serde_json::json!({"sub": "b", "act": {"sub": "c"}}),
    ));
    let r = call(&s, "POST", "/mcp://sentiment-analysis/analyze", &deep);
    assert_eq!(r.status, 403);
    assert!(
        r.body.contains("delegation chain of 3 actors"),
        "{}",
        r.body
    );
    // A client cannot claim a chain in a header: stripped.
    let r = s.envoy.request(
        "POST",
        "/mcp://sentiment-analysis/analyze",
        &[
            ("authorization", &ok),
            ("x-agent-delegation", "[\"forged\"]"),
        ],
    );
    assert_eq!(r.status, 200);
    let up = s.upstream.seen().pop().unwrap();
    assert!(!up
        .one("x-agent-delegation")
        .unwrap_or_default()
        .contains("forged"));
    // A malformed act is an unusable token.
    let bad = token(serde_json::json!("orchestrator"));
    let r = call(&s, "POST", "/mcp://sentiment-analysis/analyze", &bad);
    assert_eq!(r.status, 401, "{r:?}");
}
