//! Attacks carried in the request itself: header bytes that are not
//! UTF-8, a path authorized for one service aimed at another, identity and
//! method-override headers in disguise, client-chosen correlation ids, an
//! unowned resource, a scope with whitespace tricks, percent-encoded paths.

use super::Routed;
use agentplane_e2e::default_plugin_config;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// Header values with bytes 0x80-0xFF (legal in HTTP; Envoy forwards them)
/// used to panic the filter while it read the header map, killing the
/// worker's VM for every later request. Now: a header the filter reads is
/// refused with 400; any other passes untouched; the worker keeps serving.
#[test]
fn non_utf8_header_values_cannot_kill_the_worker() {
    let s = Routed::start();
    let auth = s.token("ml", &["skills:invoke"]);
    for _ in 0..3 {
        // Without a token, as the shipped allow_missing_or_failed rule permits.
        let r = s.post_raw(
            "/mcp://sentiment-analysis/x",
            &[(b"x-legacy", b"caf\xe9\xff")],
        );
        assert_eq!(r.status, 401, "{r:?}");
        // In a header the policy reads.
        let r = s.post_raw(
            "/mcp://sentiment-analysis/x",
            &[
                (b"authorization", auth.as_bytes()),
                (b"user-agent", b"\x80\x81\xfe"),
            ],
        );
        assert_eq!(r.status, 400, "{r:?}");
        assert_eq!(r.json()["reason"], "header user-agent is not valid UTF-8");
    }
    // In a header nobody reads, with a token: forwarded, bytes intact.
    let r = s.post_raw(
        "/mcp://sentiment-analysis/x",
        &[
            (b"authorization", auth.as_bytes()),
            (b"x-legacy", b"caf\xe9"),
        ],
    );
    assert_eq!(r.status, 200, "{r:?}");
    let seen = &s.seen("sentiment-analysis")[0];
    assert_eq!(
        seen.one("x-legacy").as_deref(),
        Some("caf\u{fffd}"),
        "passed on as sent"
    );
    let r = s.envoy.request(
        "POST",
        "/mcp://sentiment-analysis/x",
        &[("authorization", &auth)],
    );
    assert_eq!(r.status, 200, "the worker still serves: {r:?}");
    assert!(!s.envoy.log().contains("wasm_fail"), "{}", s.envoy.log());
}

/// `/mcp://A/B/x` was authorized as A but arrived at the one shared
/// upstream exactly like a call to B. Now each service has its own
/// cluster, routed on the service the filter authorized; the upstream gets
/// the service's own path; anything else gets Envoy's 403.
#[test]
fn a_path_authorized_for_one_service_cannot_reach_another() {
    let s = Routed::start();
    let auth = s.token("ml", &["skills:invoke", "data:read"]);
    let cases = [
        // (path, service that must receive it, path it receives)
        (
            "/mcp://sentiment-analysis/customer-lookup/x",
            "sentiment-analysis",
            "/customer-lookup/x",
        ),
        (
            "/sentiment-analysis/customer-lookup/x",
            "sentiment-analysis",
            "/customer-lookup/x",
        ),
        (
            "/mcp://sentiment-analysis/hello-skill?q=1",
            "sentiment-analysis",
            "/hello-skill?q=1",
        ),
        ("/model-registry/models/1", "model-registry", "/models/1"),
        (
            "/mcp://model-registry/sentiment-analysis",
            "model-registry",
            "/sentiment-analysis",
        ),
    ];
    for (path, service, upstream_path) in cases {
        s.clear();
        let r = s.envoy.request("GET", path, &[("authorization", &auth)]);
        assert_eq!(r.status, 200, "{path}: {r:?}");
        let seen = s.seen(service);
        assert_eq!(seen.len(), 1, "{path} reached {service}");
        assert_eq!(seen[0].path, upstream_path, "{path}");
        assert_eq!(s.total_seen(), 1, "{path} reached one upstream only");
        assert_eq!(
            seen[0].one("x-agentplane-service").as_deref(),
            Some(service)
        );
    }
    // Refused forms never reach any upstream: encoded slashes (Envoy),
    // dot segments (resolved by Envoy first: this one asks for
    // customer-lookup, which team ml may not read), case-varied names (not
    // registered), a client-set routing header (stripped, then the
    // filter's wins).
    s.clear();
    for (path, want) in [
        ("/mcp://sentiment-analysis%2Fcustomer-lookup/x", 400),
        ("/mcp://sentiment-analysis/../customer-lookup/x", 403),
        ("/mcp://Sentiment-Analysis/x", 403),
        ("/mcp://SENTIMENT-ANALYSIS/x", 403),
        ("/mcp://nope/x", 403),
    ] {
        let r = s.envoy.request("GET", path, &[("authorization", &auth)]);
        assert_eq!(r.status, want, "{path}: {r:?}");
    }
    assert_eq!(s.total_seen(), 0);
    let r = s.envoy.request(
        "GET",
        "/mcp://sentiment-analysis/x",
        &[
            ("authorization", &auth),
            ("x-agentplane-service", "customer-lookup"),
        ],
    );
    assert_eq!(r.status, 200);
    assert_eq!(s.seen("sentiment-analysis").len(), 1);
    assert!(s.seen("customer-lookup").is_empty());
}

/// `x_agent_team` (underscore) passed the strip, and frameworks read it as
/// `x-agent-team`: the only team header when the token has no team claim.
#[test]
fn underscore_spelled_identity_headers_never_reach_upstream() {
    let s = Routed::start();
    let tok = s.idp.mint(
        json!({"sub": "a@clients", "permissions": ["skills:invoke"],
               "https://mcp.example.com/environment": "production"}),
        3600,
    );
    let r = s.envoy.request(
        "POST",
        "/mcp://sentiment-analysis/x",
        &[
            ("authorization", &format!("Bearer {tok}")),
            ("x_agent_team", "ml"),
            ("x_agent_id", "root"),
            ("X_AGENTPLANE_SERVICE", "customer-lookup"),
        ],
    );
    assert_eq!(r.status, 200, "{r:?}");
    let seen = &s.seen("sentiment-analysis")[0];
    for (k, v) in &seen.headers {
        let folded = k.replace('_', "-");
        assert!(
            !(folded == "x-agent-team"
                || v == "root"
                || (folded == "x-agentplane-service" && v != "sentiment-analysis")),
            "{k}: {v} reached upstream"
        );
    }
    assert_eq!(seen.one("x-agent-id").as_deref(), Some("a@clients"));
}

/// `POST` with `x-http-method-override: DELETE` was authorized as POST and
/// the override reached upstream.
#[test]
fn method_override_headers_cannot_smuggle_a_delete() {
    let s = Routed::start();
    let auth = s.token("customer-success", &["data:read", "data:write"]);
    for name in [
        "x-http-method-override",
        "x-http-method",
        "x-method-override",
    ] {
        s.clear();
        let r = s.envoy.request(
            "POST",
            "/mcp://customer-lookup/customers/1",
            &[("authorization", &auth), (name, "DELETE")],
        );
        assert_eq!(r.status, 200, "{r:?}");
        let seen = &s.seen("customer-lookup")[0];
        assert_eq!(seen.method, "POST");
        assert!(seen.one(name).is_none(), "{name} reached upstream");
    }
}

/// A client's `x-request-id` became the id in decision logs, upstream
/// headers and Vault callouts; a client `x-decision-id` passed upstream.
#[test]
fn client_chosen_correlation_ids_are_never_trusted() {
    let cfg = agentplane_e2e::logged_plugin_config();
    let s = Routed::start_with(&cfg.to_string(), None, false);
    let auth = s.token("ml", &["skills:invoke"]);
    let r = s.envoy.request(
        "POST",
        "/mcp://sentiment-analysis/x",
        &[
            ("authorization", &auth),
            ("x-request-id", "attacker-chosen-id"),
            ("x-decision-id", "forged-decision"),
        ],
    );
    assert_eq!(r.status, 200, "{r:?}");
    let seen = &s.seen("sentiment-analysis")[0];
    assert_ne!(
        seen.one("x-request-id").as_deref(),
        Some("attacker-chosen-id")
    );
    assert!(seen.one("x-decision-id").is_none());
    assert_ne!(r.header("x-mcp-trace-id"), Some("attacker-chosen-id"));
    let decision = r.header("x-decision-id").unwrap().to_string();
    assert_ne!(decision, "forged-decision");
    let t0 = Instant::now();
    while !s.envoy.log().contains(&decision) && t0.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(50));
    }
    let log = s.envoy.log();
    assert!(log.contains(&decision));
    assert!(!log.contains("attacker-chosen-id"), "client id in the log");
}

/// A resource whose metadata has no owning team was allowed to every team
/// with the right permission.
#[test]
fn a_resource_without_an_owner_team_is_refused_to_every_team() {
    let mut cfg: Value = serde_json::from_str(&default_plugin_config()).unwrap();
    cfg["resources"]["orphan-data"] =
        json!({"type": "data", "metadata": {"environment": "production"}});
    cfg["resources"]["null-team"] =
        json!({"type": "data", "metadata": {"team": null, "environment": "production"}});
    let s = Routed::start_with(&cfg.to_string(), None, false);
    for team in ["ml", "customer-success", "platform"] {
        let auth = s.token(team, &["data:read"]);
        for svc in ["orphan-data", "null-team"] {
            let r = s.envoy.request(
                "GET",
                &format!("/mcp://{svc}/x"),
                &[("authorization", &auth)],
            );
            assert_eq!(r.status, 403, "{team} {svc}: {r:?}");
            assert!(
                r.json()["reason"]
                    .as_str()
                    .unwrap()
                    .contains("no owning team"),
                "{r:?}"
            );
        }
    }
    assert_eq!(s.total_seen(), 0);
}

/// `"mcp:read\tskills:invoke\nadmin"` granted `skills:invoke`: tabs and
/// newlines are not valid in a scope (RFC 6749 §3.3).
#[test]
fn scope_with_tabs_and_newlines_grants_nothing() {
    let s = Routed::start();
    let tok = s.idp.mint(
        json!({"sub": "a@clients", "scope": "mcp:read\tskills:invoke\nadmin",
               "https://mcp.example.com/team": "ml",
               "https://mcp.example.com/environment": "production"}),
        3600,
    );
    let r = s.envoy.request(
        "POST",
        "/mcp://sentiment-analysis/x",
        &[("authorization", &format!("Bearer {tok}"))],
    );
    assert_eq!(r.status, 401, "{r:?}");
    assert!(
        r.json()["reason"].as_str().unwrap().contains("scope"),
        "{r:?}"
    );
    assert_eq!(s.total_seen(), 0);
}

/// Percent-encoding an unreserved character (`%61` for `a`) or hiding a
/// dot segment as `%2e%2e` made the policy read a different path than the
/// one the upstream acts on. Envoy normalizes first (`normalize_path`), so
/// the policy's input and the upstream's path agree.
#[test]
fn percent_encoded_paths_mean_to_the_policy_what_they_mean_upstream() {
    let cfg = agentplane_e2e::logged_plugin_config();
    let s = Routed::start_with(&cfg.to_string(), None, false);
    let auth = s.token("ml", &["skills:invoke"]);
    let r = s.envoy.request(
        "POST",
        "/mcp://sentiment-analysis/%61nalyze/%7Euser",
        &[("authorization", &auth)],
    );
    assert_eq!(r.status, 200, "{r:?}");
    let seen = &s.seen("sentiment-analysis")[0];
    assert_eq!(seen.path, "/analyze/~user");
    let id = r.header("x-decision-id").unwrap().to_string();
    let t0 = Instant::now();
    let record = loop {
        let log = s.envoy.log();
        if let Some(line) = log
            .lines()
            .find(|l| l.contains(&id) && l.contains("agentplane-decision "))
        {
            let json = &line[line.find("agentplane-decision ").unwrap() + 20..];
            break serde_json::from_str::<Value>(json).unwrap();
        }
        assert!(t0.elapsed() < Duration::from_secs(10), "no record");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(
        record["input"]["request"]["path"],
        json!(["sentiment-analysis", "analyze", "~user"])
    );
    // A dot segment spelled %2e%2e is resolved before anyone decides: this
    // is a request for customer-lookup, decided and routed as one.
    s.clear();
    let r = s.envoy.request(
        "GET",
        "/mcp://sentiment-analysis/%2e%2e/%2e%2e/customer-lookup/x",
        &[("authorization", &auth)],
    );
    assert_ne!(r.status, 200, "{r:?}");
    assert!(s.seen("sentiment-analysis").is_empty());
}
