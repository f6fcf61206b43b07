//! Per-service audience through the request path ([`crate::audience`]):
//! a token issued for one service (RFC 8707) is refused at another with
//! 401 `invalid_token` naming the audience, before the policy and the
//! decision cache.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use super::*;
use crate::host::MockHost;
use serde_json::{json, Value};
#[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
use wasm_bindgen_test::wasm_bindgen_test as test;

const A: &str = "https://gw.example.com/svc-a/mcp";
const B: &str = "https://gw.example.com/svc-b/mcp";
const GATEWAY: &str = "https://mcp.example.com/";

/// Three skills the seed's support agent may invoke: svc-a and svc-b with
/// their own resource, svc-c without.
fn config() -> Value {
    let meta = json!({"team": "platform", "environment": "production"});
    json!({
        "oauth": {"authorization_servers": ["https://idp.example.com"]},
        "resources": {
            "svc-a": {"type": "skill", "resource_uri": A, "metadata": meta},
            "svc-b": {"type": "skill", "resource_uri": B, "metadata": meta},
            "svc-c": {"type": "skill", "metadata": meta},
        },
    })
}

fn filter_with(cfg: &Value) -> Filter {
    Filter::new(cfg.to_string().as_bytes(), 7).unwrap()
}

/// The seed's support agent with a token for `aud`.
fn token(aud: Value) -> Value {
    claims(json!({ "aud": aud }))
}

fn call(f: &mut Filter, service: &str, payload: Value) -> (Decision, MockHost) {
    let mut h = request("POST", &format!("/mcp://{service}/run"), Some(payload));
    let (_, d) = f.on_request_headers(&mut h);
    (d, h)
}

#[test]
fn a_token_for_service_a_is_refused_at_service_b() {
    let mut cfg = config();
    cfg["decision_log"] = json!({"enabled": true});
    let mut f = filter_with(&cfg);
    let (d, h) = call(&mut f, "svc-a", token(json!(A)));
    assert!(d.allowed(), "{:?}", h.reply);

    let (mut d, mut h) = call(&mut f, "svc-b", token(json!(A)));
    assert_eq!(d.status(), 401);
    assert_eq!(
        reply_header(&h, "www-authenticate"),
        Some(
            r#"Bearer resource_metadata="https://gw.example.com/.well-known/oauth-protected-resource/svc-b/mcp", error="invalid_token", error_description="token audience does not include https://gw.example.com/svc-b/mcp""#
        )
    );
    assert_eq!(body(&h)["error"], "unauthorized");
    assert_eq!(
        body(&h)["reason"],
        format!("token audience does not include {B}")
    );
    assert_eq!(body(&h)["decision_id"], d.id);
    assert_eq!(reply_header(&h, DECISION_ID_HEADER), Some(d.id.as_str()));
    assert_eq!(h.header_writes, 0, "nothing forwarded");
    // The audit trail names the agent whose token it was.
    h = h.with_property(&["response", "code"], 401u64.to_le_bytes().to_vec());
    f.on_log(&mut h, &mut d);
    let rec: Value = h
        .logs
        .borrow()
        .iter()
        .find_map(|(_, l)| l.strip_prefix(crate::audit::PREFIX))
        .map(|l| serde_json::from_str(l).unwrap())
        .expect("a decision record");
    assert_eq!(rec["agent"]["id"], "support-triage@clients");
    assert_eq!(rec["result"]["allowed"], false);
    assert_eq!(
        rec["result"]["reasons"],
        json!([format!("token audience does not include {B}")])
    );

    // `aud` as an array carrying B is a token for B; one that is not a
    // string or an array of strings carries no audience.
    assert!(call(&mut f, "svc-b", token(json!([GATEWAY, B])))
        .0
        .allowed());
    assert_eq!(call(&mut f, "svc-b", token(json!(5))).0.status(), 401);
    assert_eq!(call(&mut f, "svc-b", claims(json!({}))).0.status(), 401);
}

#[test]
fn a_gateway_token_is_refused_where_a_service_has_its_own_audience() {
    let mut f = filter_with(&config());
    let (d, _) = call(&mut f, "svc-a", token(json!(GATEWAY)));
    assert_eq!(d.status(), 401);
    assert_eq!(d.reason(), format!("token audience does not include {A}"));
}

/// A service without its own audience keeps the gateway's rule (jwt_authn
/// checked the token), but a token bound to another service's audience is
/// good only there.
#[test]
fn a_token_for_service_a_is_refused_at_a_service_without_its_own_audience() {
    let mut f = filter_with(&config());
    assert!(call(&mut f, "svc-c", token(json!(GATEWAY))).0.allowed());
    let (d, h) = call(&mut f, "svc-c", token(json!(A)));
    assert_eq!(d.status(), 401);
    let challenge = reply_header(&h, "www-authenticate").unwrap();
    assert!(
        challenge.contains(r#"error="invalid_token""#),
        "{challenge}"
    );
    assert!(
        challenge.contains(&format!(
            r#"error_description="token audience {A} is another service's; it is accepted only there""#
        )),
        "{challenge}"
    );
    // Also at a name nothing registers.
    assert_eq!(
        call(&mut f, "unregistered", token(json!(A))).0.status(),
        401
    );
}

#[test]
fn an_audience_list_overrides_the_resource_uri() {
    let mut cfg = config();
    cfg["resources"]["svc-b"]["audience"] = json!(["b-api", "b-api-v2"]);
    let mut f = filter_with(&cfg);
    let (d, h) = call(&mut f, "svc-b", token(json!(B)));
    assert_eq!(d.status(), 401);
    assert!(reply_header(&h, "www-authenticate")
        .unwrap()
        .contains(r#"error_description="token audience does not include any of b-api, b-api-v2""#));
    assert!(call(&mut f, "svc-b", token(json!(["x", "b-api-v2"])))
        .0
        .allowed());
    // Bound to svc-b now: refused at svc-c.
    assert_eq!(call(&mut f, "svc-c", token(json!("b-api"))).0.status(), 401);
}

/// Without `oauth` (an `audience` and no resource_uri) the challenge has
/// no metadata to point to, and still says why.
#[test]
fn without_oauth_the_challenge_still_names_the_audience() {
    let cfg = json!({"resources": {"svc-a": {"type": "skill", "audience": "svc-a-api",
        "metadata": {"team": "platform", "environment": "production"}}}});
    let mut f = filter_with(&cfg);
    let (d, h) = call(&mut f, "svc-a", token(json!(GATEWAY)));
    assert_eq!(d.status(), 401);
    assert_eq!(
        reply_header(&h, "www-authenticate"),
        Some(
            r#"Bearer realm="agentplane", error="invalid_token", error_description="token audience does not include svc-a-api""#
        )
    );
    assert!(call(&mut f, "svc-a", token(json!("svc-a-api"))).0.allowed());
}

/// The decision cache keys on the principal and the service; the audience
/// check runs before it, so a decision cached for one service's token is
/// never reached by a token for another service.
#[test]
fn a_token_for_service_a_cannot_ride_a_decision_cached_at_service_b() {
    let mut cfg = config();
    cfg["decision_cache"] = json!({"max_entries": 16});
    let mut f = filter_with(&cfg);
    for _ in 0..2 {
        assert!(call(&mut f, "svc-b", token(json!(B))).0.allowed());
    }
    assert_eq!(f.cache_stats(), Some((1, 1, 1)), "B's decision is cached");
    // The same agent, same request, token for A: refused, and the cache
    // was not even asked.
    let (d, _) = call(&mut f, "svc-b", token(json!(A)));
    assert_eq!(d.status(), 401);
    assert_eq!(f.cache_stats(), Some((1, 1, 1)));
    // A token for A and B alike would share nothing with B's entry either:
    // another token, another principal, another key.
    assert!(call(&mut f, "svc-b", token(json!([A, B]))).0.allowed());
    assert_eq!(f.cache_stats(), Some((1, 2, 2)));
    // And A's own allow, cached, is not reached at B.
    assert!(call(&mut f, "svc-a", token(json!(A))).0.allowed());
    assert!(call(&mut f, "svc-a", token(json!(A))).0.allowed());
    assert_eq!(f.cache_stats(), Some((2, 3, 3)));
    assert_eq!(call(&mut f, "svc-b", token(json!(A))).0.status(), 401);
    assert_eq!(f.cache_stats(), Some((2, 3, 3)));
}

/// `identity.audience_mode: "gateway"`: the one audience jwt_authn checks
/// is the whole rule, as before per-service audiences.
#[test]
fn gateway_mode_leaves_the_audience_to_jwt_authn() {
    let mut cfg = config();
    cfg["identity"] = json!({"audience_mode": "gateway"});
    let mut f = filter_with(&cfg);
    assert!(call(&mut f, "svc-a", token(json!(GATEWAY))).0.allowed());
    assert!(call(&mut f, "svc-b", token(json!(A))).0.allowed());
}

/// An edit of [`config`] that makes it invalid.
type Edit = Box<dyn Fn(&mut Value)>;

#[test]
fn audience_config_errors_say_what_to_fix() {
    let with = |edit: &dyn Fn(&mut Value)| {
        let mut c = config();
        edit(&mut c);
        Filter::new(c.to_string().as_bytes(), 1)
            .map(|_| ())
            .unwrap_err()
            .to_string()
    };
    let cases: Vec<(Edit, &str)> = vec![
        (
            Box::new(|c| c["identity"] = json!({"audience_mode": "per-service"})),
            r#"identity.audience_mode "per-service" is not a mode: use "per_service""#,
        ),
        (
            Box::new(|c| c["resources"]["svc-a"]["audience"] = json!("")),
            r#"field `resources.svc-a.audience`: "" is not an audience"#,
        ),
        (
            Box::new(|c| c["resources"]["svc-a"]["audience"] = json!([])),
            "field `resources.svc-a.audience`: must name at least one audience; omit it to use the service's resource_uri",
        ),
        (
            Box::new(|c| c["resources"]["svc-a"]["audience"] = json!(["ok", 1])),
            "audience must be a string or a list of strings",
        ),
        (
            Box::new(|c| c["resources"]["svc-a"]["audience"] = json!("a\"b")),
            "without spaces, quotes or backslashes",
        ),
        (
            Box::new(|c| {
                c["identity"] = json!({"audience_mode": "gateway"});
                c["resources"]["svc-a"]["audience"] = json!("x");
            }),
            r#"field `resources.svc-a.audience`: has no effect with identity.audience_mode "gateway""#,
        ),
        (
            Box::new(|c| {
                c["default_resource"] = json!({"type": "unknown", "audience": "x"});
            }),
            "field `default_resource.audience`: unregistered services have no audience of their own",
        ),
    ];
    for (edit, want) in cases {
        let e = with(&*edit);
        assert!(e.contains(want), "{e:?} lacks {want:?}");
    }
}
