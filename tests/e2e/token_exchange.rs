//! Token exchange (RFC 8693) at the real provider (`idp/token_exchange.mjs`):
//! a gateway client trades an agent's token for one to an upstream, down-
//! scoped, carrying the delegation chain in `act`, verified with the
//! provider's published keys. Every token the provider did not sign, or
//! signed for something else, and every wider ask is refused with the
//! RFC 6749 §5.2 error a standard client expects.

use agentplane_e2e::idp::exchange::{ExchangeClient, ACCESS_TOKEN, GRANT};
use agentplane_e2e::provider::{agent_metadata, IdProvider, Registered};
use agentplane_e2e::{Idp, AUDIENCE};
use serde_json::{json, Value};

const UPSTREAM: &str = "https://tickets.example.com/mcp";

struct World {
    idp: IdProvider,
    gateway: ExchangeClient,
    /// The agent the tokens are exchanged for.
    triage: Registered,
    /// Another agent, acting for it.
    helper: Registered,
}

/// The provider with a gateway client that accepts agents' gateway
/// tokens (and its own exchanged ones) and may ask for UPSTREAM.
fn world_with(more: &[(&str, &str)]) -> World {
    let gateway = ExchangeClient::new(
        "gateway",
        &[AUDIENCE, UPSTREAM],
        &[UPSTREAM],
        &["data:read", "skills:invoke"],
    );
    let narrow = ExchangeClient::new(
        "narrow",
        &["https://elsewhere.example.com/"],
        &[UPSTREAM],
        &["data:read"],
    );
    let idp = IdProvider::start_with_exchange(&[gateway.clone(), narrow], more);
    let perms = ["skills:invoke", "data:read", "data:write"];
    let triage = idp.register(
        "triage",
        "support",
        "customer-success",
        "production",
        &perms,
    );
    let helper = idp.register(
        "helper",
        "support",
        "customer-success",
        "production",
        &perms,
    );
    World {
        idp,
        gateway,
        triage,
        helper,
    }
}

fn world() -> World {
    world_with(&[])
}

fn token(idp: &IdProvider, agent: &Registered, scope: &str) -> String {
    let r = idp.token_response(agent, scope);
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()["access_token"].as_str().unwrap().to_string()
}

fn subject(t: &str) -> Vec<(&'static str, String)> {
    vec![
        ("subject_token", t.to_string()),
        ("subject_token_type", ACCESS_TOKEN.to_string()),
    ]
}

fn form<'a>(fields: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    fields.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

/// A refusal: 400, JSON, this error, and no token echoed back.
fn refused(r: &agentplane_e2e::Response, error: &str, tokens: &[&str]) {
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(r.json()["error"], error, "{}", r.body);
    assert!(r.json()["error_description"].is_string(), "{}", r.body);
    assert!(r.json()["access_token"].is_null(), "{}", r.body);
    for t in tokens {
        assert!(!r.body.contains(t), "a token in the error: {}", r.body);
    }
}

/// The provider advertises the grant in its discovery document, and RFC
/// 9207's `iss` in authorization responses.
#[test]
fn discovery_advertises_the_exchange_grant() {
    let w = world();
    let d = agentplane_e2e::http(
        w.idp.port,
        "GET",
        "/.well-known/openid-configuration",
        &[],
        "",
    )
    .json();
    let grants: Vec<&str> = d["grant_types_supported"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(grants.contains(&GRANT), "{grants:?}");
    assert!(grants.contains(&"client_credentials"), "{grants:?}");
    assert_eq!(d["authorization_response_iss_parameter_supported"], true);
}

/// An agent's token, exchanged with another agent acting: a JWT for the
/// upstream alone, the agent's `sub`, the actor in `act`, the scope asked
/// (narrower than the agent's) and the agent's attributes narrowed to it,
/// never outliving the subject. Exchanged again with a new actor, the
/// chain nests; without one, it is kept as it is.
#[test]
fn an_exchange_gives_a_downscoped_token_for_the_upstream_with_the_act_chain() {
    let w = world();
    let subject_token = token(&w.idp, &w.triage, "data:read data:write skills:invoke");
    let actor_token = token(&w.idp, &w.helper, "skills:invoke");
    let (_, subject_claims) = w.idp.verified_claims(&subject_token);
    let mut fields = subject(&subject_token);
    fields.extend([
        ("actor_token", actor_token.clone()),
        ("actor_token_type", ACCESS_TOKEN.to_string()),
        ("resource", UPSTREAM.to_string()),
        ("scope", "data:read".to_string()),
    ]);
    let r = w.idp.exchange(&w.gateway, &form(&fields));
    assert_eq!(r.status, 200, "{}", r.body);
    let answer = r.json();
    assert_eq!(answer["issued_token_type"], ACCESS_TOKEN);
    assert_eq!(answer["token_type"], "Bearer");
    assert_eq!(answer["scope"], "data:read");
    let expires_in = answer["expires_in"].as_i64().unwrap();
    assert!(expires_in > 0 && expires_in <= 300, "{answer}");
    let issued = answer["access_token"].as_str().unwrap();
    let (header, claims) = w.idp.verified_claims(issued);
    assert_eq!(header["typ"], "at+jwt", "{header}");
    assert_eq!(claims["iss"], json!(w.idp.issuer()), "{claims}");
    assert_eq!(claims["sub"], json!(w.triage.client_id), "{claims}");
    assert_eq!(claims["aud"], UPSTREAM, "{claims}");
    assert_eq!(claims["scope"], "data:read", "{claims}");
    assert_eq!(claims["client_id"], "gateway", "{claims}");
    assert_eq!(
        claims["act"],
        json!({"sub": w.helper.client_id}),
        "{claims}"
    );
    assert_eq!(claims["permissions"], json!(["data:read"]), "{claims}");
    assert_eq!(claims["https://mcp.example.com/team"], "customer-success");
    assert!(claims["jti"].is_string(), "{claims}");
    assert!(
        claims["exp"].as_i64() <= subject_claims["exp"].as_i64(),
        "{claims}"
    );

    // Again, the exchanged token as the subject, the agent itself acting:
    // the newest actor outermost, the earlier one inside.
    let own = token(&w.idp, &w.triage, "skills:invoke");
    let mut fields = subject(issued);
    fields.extend([
        ("actor_token", own),
        ("actor_token_type", ACCESS_TOKEN.to_string()),
        ("audience", UPSTREAM.to_string()),
    ]);
    let r = w.idp.exchange(&w.gateway, &form(&fields));
    assert_eq!(r.status, 200, "{}", r.body);
    let (_, nested) = w
        .idp
        .verified_claims(r.json()["access_token"].as_str().unwrap());
    assert_eq!(
        nested["act"],
        json!({"sub": w.triage.client_id, "act": {"sub": w.helper.client_id}}),
        "{nested}"
    );
    assert_eq!(nested["scope"], "data:read", "{nested}");

    // No actor: the subject's chain unchanged.
    let r = w.idp.exchange(&w.gateway, &form(&subject(issued)));
    assert_eq!(r.status, 200, "{}", r.body);
    let (_, kept) = w
        .idp
        .verified_claims(r.json()["access_token"].as_str().unwrap());
    assert_eq!(kept["act"], json!({"sub": w.helper.client_id}), "{kept}");
    assert_eq!(kept["aud"], UPSTREAM, "{kept}");
}

/// A token of another issuer, one for an audience the client does not
/// accept, a forged or garbled one: invalid_grant.
#[test]
fn a_subject_token_not_signed_here_or_for_another_audience_is_invalid_grant() {
    let w = world();
    let foreign = Idp::new().triage_token();
    let r = w.idp.exchange(&w.gateway, &form(&subject(&foreign)));
    refused(&r, "invalid_grant", &[&foreign]);

    let ours = token(&w.idp, &w.triage, "data:read");
    // A client presenting a wrong secret is invalid_client, not a grant
    // error: authentication comes first.
    let r = w
        .idp
        .exchange_as("narrow", "wrong-secret-000000", &form(&subject(&ours)));
    assert_eq!(r.status, 401, "{}", r.body);
    assert_eq!(r.json()["error"], "invalid_client");
    // Signed here, for the gateway, at a client that accepts only tokens
    // for elsewhere.
    let other = ExchangeClient::new(
        "other",
        &["https://elsewhere.example.com/"],
        &[UPSTREAM],
        &["data:read"],
    );
    let idp2 = IdProvider::start_with_exchange(std::slice::from_ref(&other), &[]);
    let agent = idp2.register("a", "support", "cs", "production", &["data:read"]);
    let for_gateway = token(&idp2, &agent, "data:read");
    let r = idp2.exchange(&other, &form(&subject(&for_gateway)));
    refused(&r, "invalid_grant", &[&for_gateway]);

    // Its signature broken: invalid_grant too.
    let mut forged = ours.clone();
    forged.truncate(forged.len() - 4);
    forged.push_str("AAAA");
    let r = w.idp.exchange(&w.gateway, &form(&subject(&forged)));
    refused(&r, "invalid_grant", &[&forged]);
    let r = w.idp.exchange(&w.gateway, &form(&subject("not-a-token")));
    refused(&r, "invalid_grant", &[]);
}

/// A subject token past its expiry (the provider's TTL set to 1 s):
/// invalid_grant.
#[test]
fn an_expired_subject_token_is_invalid_grant() {
    let w = world_with(&[("TOKEN_TTL", "1")]);
    let t = token(&w.idp, &w.triage, "data:read");
    std::thread::sleep(std::time::Duration::from_millis(2200));
    let r = w.idp.exchange(&w.gateway, &form(&subject(&t)));
    refused(&r, "invalid_grant", &[&t]);
}

/// Down-scoping only: a scope the subject token does not hold, or the
/// client may not ask for, is invalid_scope.
#[test]
fn asking_for_more_than_the_subject_holds_is_invalid_scope() {
    let w = world();
    let t = token(&w.idp, &w.triage, "data:read");
    for scope in [
        "skills:invoke",
        "data:read skills:invoke",
        "data:write",
        "admin",
    ] {
        let mut fields = subject(&t);
        fields.push(("scope", scope.to_string()));
        let r = w.idp.exchange(&w.gateway, &form(&fields));
        refused(&r, "invalid_scope", &[&t]);
    }
    // Without `scope`: what it holds and the client may have.
    let t = token(&w.idp, &w.triage, "data:read data:write");
    let r = w.idp.exchange(&w.gateway, &form(&subject(&t)));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["scope"], "data:read", "{}", r.body);
}

/// An upstream the client may not ask for, or two at once:
/// invalid_target.
#[test]
fn an_unknown_resource_is_invalid_target() {
    let w = world();
    let t = token(&w.idp, &w.triage, "data:read");
    for (k, v) in [
        ("resource", "https://unknown.example.com/mcp"),
        ("audience", "https://unknown.example.com/mcp"),
    ] {
        let mut fields = subject(&t);
        fields.push((k, v.to_string()));
        let r = w.idp.exchange(&w.gateway, &form(&fields));
        refused(&r, "invalid_target", &[&t]);
    }
    let mut fields = subject(&t);
    fields.push(("resource", UPSTREAM.to_string()));
    fields.push(("audience", "https://unknown.example.com/mcp".to_string()));
    let r = w.idp.exchange(&w.gateway, &form(&fields));
    refused(&r, "invalid_target", &[&t]);
}

/// An agent registered with `may_act` naming one other agent: that one may
/// act for it, anyone else is invalid_grant.
#[test]
fn an_actor_not_named_in_may_act_is_invalid_grant() {
    let w = world();
    let mut meta = agent_metadata("owner", "support", "cs", "production", &["data:read"]);
    // Malformed (RFC 8693 wants an object of claims): refused at
    // registration, not carried into tokens.
    for bad in [json!("someone"), json!({"name": "x"}), json!([])] {
        meta["may_act"] = bad;
        let r = w.idp.post_registration(&w.idp.initial_access_token, &meta);
        assert_eq!(r.status, 400, "{}", r.body);
        assert_eq!(r.json()["error"], "invalid_client_metadata", "{}", r.body);
    }
    meta["may_act"] = json!({"sub": w.helper.client_id});
    let r = w.idp.post_registration(&w.idp.initial_access_token, &meta);
    assert_eq!(r.status, 201, "{}", r.body);
    let owner = Registered {
        client_id: r.json()["client_id"].as_str().unwrap().into(),
        client_secret: r.json()["client_secret"].as_str().unwrap().into(),
    };
    let t = token(&w.idp, &owner, "data:read");
    let (_, claims) = w.idp.verified_claims(&t);
    assert_eq!(claims["may_act"], json!({"sub": w.helper.client_id}));

    let stranger = token(&w.idp, &w.triage, "data:read");
    let mut fields = subject(&t);
    fields.push(("actor_token", stranger.clone()));
    fields.push(("actor_token_type", ACCESS_TOKEN.to_string()));
    let r = w.idp.exchange(&w.gateway, &form(&fields));
    refused(&r, "invalid_grant", &[&t, &stranger]);

    let named = token(&w.idp, &w.helper, "data:read");
    let mut fields = subject(&t);
    fields.push(("actor_token", named));
    fields.push(("actor_token_type", ACCESS_TOKEN.to_string()));
    let r = w.idp.exchange(&w.gateway, &form(&fields));
    assert_eq!(r.status, 200, "{}", r.body);
    let (_, issued) = w
        .idp
        .verified_claims(r.json()["access_token"].as_str().unwrap());
    assert_eq!(issued["act"], json!({"sub": w.helper.client_id}));
}

/// Leaving the actor token out does not step around `may_act`: the
/// exchanging client then acts for the subject itself, so it must be the
/// one named. A token whose `may_act` names another agent was exchanged
/// by any gateway client that simply sent no actor token.
#[test]
fn a_may_act_token_exchanged_without_an_actor_by_a_client_it_does_not_name_is_invalid_grant() {
    let w = world();
    let register = |name: &str, may_act: Value| {
        let mut meta = agent_metadata(name, "support", "cs", "production", &["data:read"]);
        meta["may_act"] = may_act;
        let r = w.idp.post_registration(&w.idp.initial_access_token, &meta);
        assert_eq!(r.status, 201, "{}", r.body);
        Registered {
            client_id: r.json()["client_id"].as_str().unwrap().into(),
            client_secret: r.json()["client_secret"].as_str().unwrap().into(),
        }
    };
    let owner = register("owner", json!({"sub": w.helper.client_id}));
    let t = token(&w.idp, &owner, "data:read");
    let r = w.idp.exchange(&w.gateway, &form(&subject(&t)));
    refused(&r, "invalid_grant", &[&t]);
    assert!(
        r.json()["error_description"]
            .as_str()
            .unwrap()
            .contains("may_act"),
        "{}",
        r.body
    );
    // A token naming the gateway client: it may exchange it without an
    // actor, and the issued token has no act.
    let trusting = register("trusting", json!({"sub": w.gateway.client_id}));
    let t = token(&w.idp, &trusting, "data:read");
    let r = w.idp.exchange(&w.gateway, &form(&subject(&t)));
    assert_eq!(r.status, 200, "{}", r.body);
    let (_, issued) = w
        .idp
        .verified_claims(r.json()["access_token"].as_str().unwrap());
    assert!(issued["act"].is_null(), "{issued}");
}

/// An exchanged token keeps its subject's `may_act`: exchanged again (a
/// client that accepts its own exchanged tokens), the actor must still be
/// one the subject named. The issued token dropped it, so a second
/// exchange let anyone act.
#[test]
fn a_re_exchanged_token_keeps_its_subjects_may_act() {
    let w = world();
    let mut meta = agent_metadata("owner", "support", "cs", "production", &["data:read"]);
    meta["may_act"] = json!({"sub": w.helper.client_id});
    let r = w.idp.post_registration(&w.idp.initial_access_token, &meta);
    assert_eq!(r.status, 201, "{}", r.body);
    let owner = Registered {
        client_id: r.json()["client_id"].as_str().unwrap().into(),
        client_secret: r.json()["client_secret"].as_str().unwrap().into(),
    };
    let t = token(&w.idp, &owner, "data:read");
    let named = token(&w.idp, &w.helper, "data:read");
    let mut fields = subject(&t);
    fields.push(("actor_token", named));
    fields.push(("actor_token_type", ACCESS_TOKEN.to_string()));
    let r = w.idp.exchange(&w.gateway, &form(&fields));
    assert_eq!(r.status, 200, "{}", r.body);
    let exchanged = r.json()["access_token"].as_str().unwrap().to_string();
    let (_, issued) = w.idp.verified_claims(&exchanged);
    assert_eq!(issued["may_act"], json!({"sub": w.helper.client_id}));

    let stranger = token(&w.idp, &w.triage, "data:read");
    let mut fields = subject(&exchanged);
    fields.push(("actor_token", stranger.clone()));
    fields.push(("actor_token_type", ACCESS_TOKEN.to_string()));
    let r = w.idp.exchange(&w.gateway, &form(&fields));
    refused(&r, "invalid_grant", &[&exchanged, &stranger]);
}

/// A registered agent (client credentials), and one that listed the grant
/// in its own registration, are not exchange clients:
/// unauthorized_client.
#[test]
fn a_client_without_the_grant_is_unauthorized_client() {
    let w = world();
    let t = token(&w.idp, &w.triage, "data:read");
    let r = w.idp.exchange_as(
        &w.triage.client_id,
        &w.triage.client_secret,
        &form(&subject(&t)),
    );
    refused(&r, "unauthorized_client", &[&t]);

    let mut meta = agent_metadata("sneaky", "support", "cs", "production", &["data:read"]);
    meta["grant_types"] = json!([GRANT]);
    let r = w.idp.post_registration(&w.idp.initial_access_token, &meta);
    assert_eq!(r.status, 201, "{}", r.body);
    let (id, secret) = (
        r.json()["client_id"].as_str().unwrap().to_string(),
        r.json()["client_secret"].as_str().unwrap().to_string(),
    );
    let r = w.idp.exchange_as(&id, &secret, &form(&subject(&t)));
    refused(&r, "unauthorized_client", &[&t]);

    // And the exchange client gets no client-credentials token.
    let gw = Registered {
        client_id: w.gateway.client_id.clone(),
        client_secret: w.gateway.client_secret.clone(),
    };
    let r = w.idp.token_response(&gw, "data:read");
    refused(&r, "unauthorized_client", &[]);
}
