//! Exchanged tokens on the request path: the caller's token goes to the
//! token service only, the upstream gets the exchanged one, concurrent
//! requests share one exchange, and every failure refuses (503) without
//! a token in the answer, the log or the record.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use super::*;
use std::collections::BTreeMap;

const AGENT_JWT: &str = "agent.jwt.CANARY-SUBJECT";
const EXCHANGED: &str = "exchanged.jwt.CANARY-UPSTREAM";
const CLIENT_SECRET: &str = "CANARY-CLIENT-SECRET";

fn exchange_filter() -> Filter {
    let cfg = json!({
        "token_exchange": {"cluster": "sts", "authority": "sts.local", "client_id": "gateway"},
        "decision_log": {"enabled": true},
        "resources": {
            "saas": {"type": "tool", "metadata": {"team": "customer-success", "environment": "production"},
                "token_exchange": {"audience": "https://saas.example/api", "scopes": ["tickets:read"]}},
        }
    });
    Filter::new(cfg.to_string().as_bytes(), 7).unwrap()
}

fn call(f: &mut Filter, stream: u32) -> (Flow, Decision, MockHost) {
    let mut h = request(
        "GET",
        "/mcp://saas/tickets",
        Some(claims(json!({"permissions": ["tools:access"]}))),
    )
    .with_header("authorization", &format!("Bearer {AGENT_JWT}"));
    h.stream = stream;
    h.env
        .insert("AGENTPLANE_EXCHANGE_SECRET".into(), CLIENT_SECRET.into());
    f.on_configured(&mut h, "test");
    let (flow, d) = f.on_request_headers(&mut h);
    (flow, d, h)
}

fn form_of(body: &[u8]) -> BTreeMap<String, String> {
    let text = String::from_utf8(body.to_vec()).unwrap();
    text.split('&')
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap();
            let mut out = Vec::new();
            let b = v.as_bytes();
            let mut i = 0;
            while i < b.len() {
                if b[i] == b'%' {
                    out.push(u8::from_str_radix(&v[i + 1..i + 3], 16).unwrap());
                    i += 3;
                } else {
                    out.push(b[i]);
                    i += 1;
                }
            }
            (k.to_string(), String::from_utf8(out).unwrap())
        })
        .collect()
}

fn answer(ttl: u64) -> Vec<u8> {
    json!({"access_token": EXCHANGED, "issued_token_type": "urn:ietf:params:oauth:token-type:access_token",
           "token_type": "Bearer", "expires_in": ttl})
    .to_string()
    .into_bytes()
}

#[test]
fn the_upstream_gets_the_exchanged_token_and_never_the_callers() {
    let mut f = exchange_filter();
    let (flow, d, h) = call(&mut f, 42);
    assert_eq!(flow, Flow::Paused, "{:?}", h.reply);
    assert!(d.allowed());
    assert!(
        h.header_values("authorization").is_empty(),
        "the caller's token is gone before anything waits"
    );
    let c = &h.dispatched[0];
    assert_eq!(c.cluster, "sts");
    assert_eq!(c.header(":path"), Some("/token"));
    assert_eq!(
        c.header("content-type"),
        Some("application/x-www-form-urlencoded")
    );
    let basic = c
        .header("authorization")
        .unwrap()
        .strip_prefix("Basic ")
        .unwrap();
    let decoded =
        String::from_utf8(<base64ct::Base64 as base64ct::Encoding>::decode_vec(basic).unwrap())
            .unwrap();
    assert_eq!(decoded, format!("gateway:{CLIENT_SECRET}"));
    let form = form_of(c.body.as_ref().unwrap());
    assert_eq!(form["grant_type"], crate::exchange::GRANT_TYPE);
    assert_eq!(form["subject_token"], AGENT_JWT);
    assert_eq!(
        form["subject_token_type"],
        "urn:ietf:params:oauth:token-type:access_token"
    );
    assert_eq!(form["audience"], "https://saas.example/api");
    assert_eq!(form["resource"], "https://saas.example/api");
    assert_eq!(form["scope"], "tickets:read");

    let mut root = MockHost::new();
    f.on_configured(&mut root, "test");
    f.on_callout_response(&mut root, c.token, Some(200), Some(&answer(600)));
    assert_eq!(
        root.resumed,
        [(
            42,
            vec![("authorization".to_string(), format!("Bearer {EXCHANGED}"))]
        )]
    );
    assert_eq!(root.metrics["agentplane.decisions.allowed"], 1);

    // Next request: from the cache, at once, no callout.
    let (flow, _d, h) = call(&mut f, 43);
    assert_eq!(flow, Flow::Continue);
    assert!(h.dispatched.is_empty());
    assert_eq!(
        h.header_values("authorization"),
        [format!("Bearer {EXCHANGED}")]
    );
    assert_eq!(h.metrics["agentplane.token_exchange.cache_hit"], 1);
}

#[test]
fn concurrent_requests_share_one_exchange() {
    let mut f = exchange_filter();
    let (_, _, h1) = call(&mut f, 1);
    let (flow, _, h2) = call(&mut f, 2);
    assert_eq!(flow, Flow::Paused);
    assert!(h2.dispatched.is_empty(), "the second waits for the first's");
    let mut root = MockHost::new();
    f.on_callout_response(
        &mut root,
        h1.dispatched[0].token,
        Some(200),
        Some(&answer(600)),
    );
    let streams: Vec<u32> = root.resumed.iter().map(|(s, _)| *s).collect();
    assert_eq!(streams, [1, 2]);
}

#[test]
fn a_refusing_silent_or_garbled_token_service_fails_closed_without_leaking() {
    // A refusal of the caller's token is the caller's (403); anything
    // else the gateway's (503).
    for (status, body, code, metric) in [
        (Some(400u16), br#"{"error":"invalid_grant","error_description":"subject agent.jwt.CANARY-SUBJECT expired"}"#.to_vec(), 403, "agentplane.decisions.denied"),
        (Some(400), br#"{"error":"invalid_scope"}"#.to_vec(), 403, "agentplane.decisions.denied"),
        (Some(401), br#"{"error":"invalid_client"}"#.to_vec(), 503, "agentplane.decisions.token_exchange_unavailable"),
        (None, Vec::new(), 503, "agentplane.decisions.token_exchange_unavailable"),
        (Some(500), b"oops".to_vec(), 503, "agentplane.decisions.token_exchange_unavailable"),
        (Some(200), b"{\"access_token\": 7}".to_vec(), 503, "agentplane.decisions.token_exchange_unavailable"),
        (Some(200), br#"{"access_token":"x","token_type":"N_A"}"#.to_vec(), 503, "agentplane.decisions.token_exchange_unavailable"),
        (Some(200), b"not json".to_vec(), 503, "agentplane.decisions.token_exchange_unavailable"),
    ] {
        let mut f = exchange_filter();
        let (_, mut d, mut h) = call(&mut f, 7);
        let mut root = MockHost::new();
        f.on_configured(&mut root, "test");
        f.on_callout_response(&mut root, h.dispatched[0].token, status, Some(&body));
        assert!(root.resumed.is_empty(), "{status:?}");
        let (stream, reply) = &root.stream_replies[0];
        assert_eq!(*stream, 7);
        assert_eq!(reply.status, code, "{status:?}");
        let text = String::from_utf8_lossy(&reply.body).to_string();
        let class = if code == 403 { "token_exchange_refused" } else { "token_exchange_unavailable" };
        assert!(text.contains(class), "{text}");
        f.on_log(&mut h, &mut d);
        let all = format!(
            "{text} {:?} {:?} {:?}",
            log_lines(&h),
            root.logs.borrow(),
            h.logs.borrow()
        );
        for canary in [AGENT_JWT, EXCHANGED, CLIENT_SECRET, "CANARY"] {
            assert!(!all.contains(canary), "{canary} leaked: {all}");
        }
        assert_eq!(root.metrics[metric], 1, "{status:?}");
    }
}

#[test]
fn without_its_client_secret_or_a_subject_token_nothing_is_exchanged() {
    let mut f = exchange_filter();
    let mut h = request(
        "GET",
        "/mcp://saas/tickets",
        Some(claims(json!({"permissions": ["tools:access"]}))),
    )
    .with_header("authorization", &format!("Bearer {AGENT_JWT}"));
    let (flow, d) = f.on_request_headers(&mut h);
    assert_eq!(flow, Flow::Replied);
    assert!(d.reason().contains("secret is not set"), "{}", d.reason());
    assert!(h.dispatched.is_empty());
    assert!(!String::from_utf8_lossy(&h.reply.as_ref().unwrap().body).contains("CANARY"));
}

#[test]
fn a_token_for_one_caller_is_never_served_to_another() {
    let mut f = exchange_filter();
    let (_, _, h) = call(&mut f, 1);
    let mut root = MockHost::new();
    f.on_callout_response(
        &mut root,
        h.dispatched[0].token,
        Some(200),
        Some(&answer(600)),
    );
    // Another agent: its own exchange.
    let mut h = request(
        "GET",
        "/mcp://saas/tickets",
        Some(claims(
            json!({"sub": "other@clients", "permissions": ["tools:access"]}),
        )),
    )
    .with_header("authorization", "Bearer other.jwt");
    h.env
        .insert("AGENTPLANE_EXCHANGE_SECRET".into(), CLIENT_SECRET.into());
    let (flow, _) = f.on_request_headers(&mut h);
    assert_eq!(flow, Flow::Paused);
    assert_eq!(
        form_of(h.dispatched[0].body.as_ref().unwrap())["subject_token"],
        "other.jwt"
    );
}

#[test]
fn a_service_with_an_exchanged_token_and_secrets_or_no_token_service_is_refused() {
    let both = json!({
        "vault": {"cluster": "vault", "role": "agent"},
        "token_exchange": {"cluster": "sts", "authority": "sts.local", "client_id": "gateway"},
        "resources": {"saas": {"type": "tool", "token_exchange": {"audience": "a"},
            "secrets": [{"kv": "secret/data/x", "field": "k", "header": "x-k"}]}}
    });
    let e = Filter::new(both.to_string().as_bytes(), 7).unwrap_err();
    assert!(
        e.to_string()
            .contains("either secrets or an exchanged token"),
        "{e}"
    );
    let orphan =
        json!({"resources": {"saas": {"type": "tool", "token_exchange": {"audience": "a"}}}});
    let e = Filter::new(orphan.to_string().as_bytes(), 7).unwrap_err();
    assert!(
        e.to_string().contains("needs the token_exchange block"),
        "{e}"
    );
    let default = json!({
        "token_exchange": {"cluster": "sts", "authority": "sts.local", "client_id": "gateway"},
        "default_resource": {"type": "tool", "token_exchange": {"audience": "a"}}
    });
    assert!(Filter::new(default.to_string().as_bytes(), 7).is_err());
}

/// A request of `payload`'s caller bearing `token`, on `stream`.
fn call_as(f: &mut Filter, payload: Value, token: &str, stream: u32) -> (Flow, MockHost) {
    let mut h = request("GET", "/mcp://saas/tickets", Some(payload))
        .with_header("authorization", &format!("Bearer {token}"));
    h.stream = stream;
    h.env
        .insert("AGENTPLANE_EXCHANGE_SECRET".into(), CLIENT_SECRET.into());
    let (flow, _) = f.on_request_headers(&mut h);
    (flow, h)
}

#[test]
fn a_narrower_or_foreign_token_of_the_same_subject_is_never_served_anothers_exchange() {
    // What the token service grants depends on the subject token, not
    // only on who it names: its scopes, the client that holds it, its
    // audience, its may_act. Another token of the same `sub` and chain
    // lacking any of them gets its own exchange (which the service may
    // refuse), never the first one's token.
    let broad = claims(json!({"permissions": ["tools:access", "tickets:read"],
        "client_id": "trusted-app", "aud": "agentplane"}));
    let mut variants = Vec::new();
    for (k, v) in [
        ("permissions", json!(["tools:access"])),
        ("scope", json!("tools:access")),
        ("client_id", json!("untrusted-app")),
        ("aud", json!(["agentplane", "elsewhere"])),
        ("may_act", json!({"sub": "someone-else"})),
    ] {
        let mut p = broad.clone();
        p[k] = v;
        variants.push(p);
    }
    for narrow in variants {
        let mut f = exchange_filter();
        let (_, h) = call_as(&mut f, broad.clone(), AGENT_JWT, 1);
        let mut root = MockHost::new();
        f.on_callout_response(
            &mut root,
            h.dispatched[0].token,
            Some(200),
            Some(&answer(600)),
        );
        assert_eq!(root.resumed.len(), 1);
        let (flow, h) = call_as(&mut f, narrow.clone(), "narrow.jwt", 2);
        assert_eq!(flow, Flow::Paused, "{narrow}");
        assert!(
            h.header_values("authorization").is_empty(),
            "{narrow} got the broader token's exchange"
        );
        assert_eq!(
            form_of(h.dispatched[0].body.as_ref().unwrap())["subject_token"],
            "narrow.jwt"
        );
    }
    // The same claims in a refreshed token (another exp, iat, jti): the
    // exchange is reused.
    let mut f = exchange_filter();
    let (_, h) = call_as(&mut f, broad.clone(), AGENT_JWT, 1);
    let mut root = MockHost::new();
    f.on_callout_response(
        &mut root,
        h.dispatched[0].token,
        Some(200),
        Some(&answer(600)),
    );
    let mut refreshed = broad.clone();
    refreshed["exp"] = json!(1_746_280_000);
    refreshed["iat"] = json!(1_746_270_000);
    refreshed["jti"] = json!("another");
    let (flow, h) = call_as(&mut f, refreshed, "refreshed.jwt", 2);
    assert_eq!(flow, Flow::Continue);
    assert!(h.dispatched.is_empty());
}

/// The filter with a policy that allows and whose `exchange` rule is
/// `exchange`.
fn exchange_filter_with(exchange: &str) -> Filter {
    let cfg = json!({
        "token_exchange": {"cluster": "sts", "authority": "sts.local", "client_id": "gateway"},
        "resources": {
            "saas": {"type": "tool", "token_exchange": {"audience": "https://saas.example/api",
                "scopes": ["tickets:read", "tickets:list"]}},
        }
    });
    let config = Config::from_json(cfg.to_string().as_bytes()).unwrap();
    let src = format!("package p\nallow := true\nexchange := {exchange}\n");
    let policy = Policy::compile(&[("p.rego", src.as_str())], "{}", "data.p").unwrap();
    Filter::with_policy(config, policy, 1)
}

#[test]
fn a_policy_choosing_scopes_beyond_the_services_is_refused_not_widened() {
    // The service's scopes are the most its upstream gets; the policy
    // narrows them. A policy rule computing scopes from what the request
    // says must not be a way to ask the token service for more.
    let mut f = exchange_filter_with(r#"{"scopes": ["tickets:read", "tickets:delete"]}"#);
    let (flow, d, h) = call(&mut f, 1);
    assert_eq!(flow, Flow::Replied, "{}", d.reason());
    assert!(!d.allowed());
    assert!(h.dispatched.is_empty(), "asked the token service for more");
    assert!(d.reason().contains("policy_error"), "{}", d.reason());
    assert!(h
        .logs
        .borrow()
        .iter()
        .any(|(_, l)| l.contains("exchange scopes")));
    let mut f = exchange_filter_with(r#"{"scopes": ["tickets:list"]}"#);
    let (flow, _, h) = call(&mut f, 1);
    assert_eq!(flow, Flow::Paused);
    assert_eq!(
        form_of(h.dispatched[0].body.as_ref().unwrap())["scope"],
        "tickets:list"
    );
}

#[test]
fn a_token_service_claiming_a_huge_lifetime_does_not_pin_its_token_for_ever() {
    // `expires_in` of u64::MAX (or milliseconds where seconds are meant):
    // the token was kept past its real life, here and in shared data, and
    // every call went upstream with a dead token until Envoy restarted.
    let payload =
        claims(json!({"permissions": ["tools:access"], "exp": NOON / 1_000_000_000 + 86_400}));
    let mut f = exchange_filter();
    let (_, h) = call_as(&mut f, payload.clone(), AGENT_JWT, 1);
    let mut root = MockHost::new().at(NOON);
    f.on_callout_response(
        &mut root,
        h.dispatched[0].token,
        Some(200),
        Some(&answer(u64::MAX)),
    );
    assert_eq!(root.resumed.len(), 1);
    let later = |f: &mut Filter, after_s: u64, stream: u32| {
        let mut h = request("GET", "/mcp://saas/tickets", Some(payload.clone()))
            .at(NOON + after_s * 1_000_000_000)
            .with_header("authorization", &format!("Bearer {AGENT_JWT}"));
        h.stream = stream;
        h.env
            .insert("AGENTPLANE_EXCHANGE_SECRET".into(), CLIENT_SECRET.into());
        h.shared = root.shared.clone();
        let (flow, _) = f.on_request_headers(&mut h);
        (flow, h)
    };
    let (flow, _) = later(&mut f, 60, 2);
    assert_eq!(flow, Flow::Continue, "reused within the bound");
    let (flow, h) = later(&mut f, crate::exchange::MAX_LIFE_S + 1, 3);
    assert_eq!(flow, Flow::Paused, "still the old token after the bound");
    assert_eq!(h.dispatched.len(), 1);
}

#[test]
fn a_token_from_another_token_service_or_client_is_not_taken_from_shared_data() {
    // Shared data outlives a configuration and is shared by every filter
    // of the VM: a token one token service (or client) issued was served
    // by a filter configured for another, for the same caller and audience.
    let with = |client_id: &str, cluster: &str| {
        let cfg = json!({
            "token_exchange": {"cluster": cluster, "authority": "sts.local", "client_id": client_id},
            "resources": {"saas": {"type": "tool",
                "metadata": {"team": "customer-success", "environment": "production"},
                "token_exchange": {"audience": "https://saas.example/api", "scopes": ["tickets:read"]}}}
        });
        Filter::new(cfg.to_string().as_bytes(), 7).unwrap()
    };
    let payload = claims(json!({"permissions": ["tools:access"]}));
    let mut first = with("gateway", "sts");
    let (_, h) = call_as(&mut first, payload.clone(), AGENT_JWT, 1);
    let shared = h.shared.clone();
    let mut root = MockHost::new();
    root.shared = shared.clone();
    first.on_callout_response(
        &mut root,
        h.dispatched[0].token,
        Some(200),
        Some(&answer(600)),
    );
    assert!(!shared.borrow().is_empty(), "published");
    for (client_id, cluster) in [
        ("gateway", "sts"),
        ("gateway-2", "sts"),
        ("gateway", "other-sts"),
    ] {
        let mut f = with(client_id, cluster);
        let mut h = request("GET", "/mcp://saas/tickets", Some(payload.clone()))
            .with_header("authorization", &format!("Bearer {AGENT_JWT}"));
        h.env
            .insert("AGENTPLANE_EXCHANGE_SECRET".into(), CLIENT_SECRET.into());
        h.shared = shared.clone();
        let (flow, _) = f.on_request_headers(&mut h);
        if (client_id, cluster) == ("gateway", "sts") {
            assert_eq!(flow, Flow::Continue, "the same token service: shared");
        } else {
            assert_eq!(
                flow,
                Flow::Paused,
                "{client_id} {cluster} took another's token"
            );
            assert_eq!(h.dispatched[0].cluster, cluster);
        }
    }
}

#[test]
fn only_the_one_token_jwt_authn_verified_goes_to_the_token_service() {
    // jwt_authn verifies the first JWT after the prefix and ignores what
    // follows; the whole rest went to the token service as the subject
    // token, a string the gateway never verified.
    for value in [
        format!("Bearer {AGENT_JWT} other.jwt.VICTIM"),
        format!("Bearer {AGENT_JWT},other.jwt.VICTIM"),
        format!("Bearer {AGENT_JWT}+x"),
    ] {
        let mut f = exchange_filter();
        let mut h = request(
            "GET",
            "/mcp://saas/tickets",
            Some(claims(json!({"permissions": ["tools:access"]}))),
        )
        .with_header("authorization", &value);
        h.env
            .insert("AGENTPLANE_EXCHANGE_SECRET".into(), CLIENT_SECRET.into());
        let (flow, d) = f.on_request_headers(&mut h);
        assert_eq!(flow, Flow::Replied, "{value}");
        assert!(h.dispatched.is_empty(), "{value}");
        assert!(
            d.reason().contains("token_exchange_unavailable"),
            "{}",
            d.reason()
        );
    }
    // Odd but single: spaces around it, a lower-case scheme.
    let mut f = exchange_filter();
    let mut h = request(
        "GET",
        "/mcp://saas/tickets",
        Some(claims(json!({"permissions": ["tools:access"]}))),
    )
    .with_header("authorization", &format!("bearer   {AGENT_JWT} "));
    h.env
        .insert("AGENTPLANE_EXCHANGE_SECRET".into(), CLIENT_SECRET.into());
    assert_eq!(f.on_request_headers(&mut h).0, Flow::Paused);
    assert_eq!(
        form_of(h.dispatched[0].body.as_ref().unwrap())["subject_token"],
        AGENT_JWT
    );
}

#[test]
fn many_callers_fill_a_bounded_shared_table_and_a_shared_slot_never_serves_another_caller() {
    // Envoy never deletes a shared-data key: one entry per (caller,
    // claims, audience, scopes) ever exchanged grew for the life of the
    // process. Now a fixed number of slots (max_entries); a slot holding
    // another caller's token is a miss, never that token.
    let cfg = json!({
        "token_exchange": {"cluster": "sts", "authority": "sts.local", "client_id": "gateway", "max_entries": 4},
        "resources": {"saas": {"type": "tool",
            "metadata": {"team": "customer-success", "environment": "production"},
            "token_exchange": {"audience": "https://saas.example/api"}}}
    });
    let new = || Filter::new(cfg.to_string().as_bytes(), 7).unwrap();
    let shared = crate::host::SharedData::default();
    let caller =
        |n: u32| claims(json!({"sub": format!("agent-{n}"), "permissions": ["tools:access"]}));
    let mut f = new();
    for n in 0..40 {
        let (_, mut h) = call_as(&mut f, caller(n), AGENT_JWT, n + 1);
        h.shared = shared.clone();
        let mut root = MockHost::new();
        root.shared = shared.clone();
        let token = json!({"access_token": format!("token-of-{n}"), "token_type": "Bearer", "expires_in": 600});
        f.on_callout_response(
            &mut root,
            h.dispatched[0].token,
            Some(200),
            Some(token.to_string().as_bytes()),
        );
    }
    let entries = shared
        .borrow()
        .keys()
        .filter(|k| k.starts_with("agentplane.exchange"))
        .count();
    assert!(entries <= 4, "{entries} shared entries for a table of 4");
    // Another worker: every caller gets its own token or exchanges anew.
    let mut other = new();
    let (mut hits, mut misses) = (0, 0);
    for n in 0..40 {
        let mut h = request("GET", "/mcp://saas/tickets", Some(caller(n)))
            .with_header("authorization", &format!("Bearer {AGENT_JWT}"));
        h.env
            .insert("AGENTPLANE_EXCHANGE_SECRET".into(), CLIENT_SECRET.into());
        h.shared = shared.clone();
        h.stream = 100 + n;
        let (flow, _) = other.on_request_headers(&mut h);
        if flow == Flow::Continue {
            assert_eq!(
                h.header_values("authorization"),
                [format!("Bearer token-of-{n}")]
            );
            hits += 1;
        } else {
            assert_eq!(flow, Flow::Paused);
            misses += 1;
        }
    }
    assert!(hits > 0 && misses > 0, "{hits} hits, {misses} misses");
}
