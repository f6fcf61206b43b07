//! The outcome's renderings: status, error class, metric and reply of
//! every refusal.

#![allow(clippy::unwrap_used)]

use super::*;
#[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
use wasm_bindgen_test::wasm_bindgen_test as test;

#[test]
fn each_denial_renders_status_class_and_metric_in_one_place() {
    let cases = [
        (
            Denial::Unauthorized(ClaimsError::Missing),
            401,
            "unauthorized",
            M::Unauthorized,
        ),
        (
            Denial::BadRequest("x".into()),
            400,
            "bad_request",
            M::BadRequest,
        ),
        (
            Denial::Policy {
                status: 429,
                reasons: vec!["a".into(), "b".into()],
                headers: vec![],
                body: None,
            },
            429,
            "forbidden",
            M::Denied,
        ),
        (Denial::PolicyError, 403, "forbidden", M::PolicyError),
        (
            Denial::SecretsUnavailable("vault unreachable".into()),
            503,
            "unavailable",
            M::SecretsUnavailable,
        ),
        (
            Denial::LogUnavailable,
            503,
            "unavailable",
            M::LogUnavailable,
        ),
        (
            Denial::HostFailure("request headers"),
            503,
            "unavailable",
            M::HostFailure,
        ),
    ];
    for (d, status, error, metric) in cases {
        let r = d.reply("id-1", &[("x-decision-id", "id-1")], None);
        assert_eq!(
            (r.status, d.error(), d.metric()),
            (status, error, metric),
            "{d}"
        );
        let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(body["decision_id"], "id-1");
        assert_eq!(body["reason"], d.reason().as_str());
        assert!(r
            .headers
            .iter()
            .any(|(k, v)| k == "x-decision-id" && v == "id-1"));
    }
    let d = Denial::Policy {
        status: 403,
        reasons: vec!["a".into(), "b".into()],
        headers: vec![],
        body: None,
    };
    assert_eq!(d.reason(), "a; b");
    assert_eq!(d.reasons(), ["a", "b"]);
}
