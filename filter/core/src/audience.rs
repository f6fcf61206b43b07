//! Per-service audience (RFC 8707; the MCP authorization spec): a token
//! issued for one service is refused at another.
//!
//! Each service with a `resource_uri` advertises it as its resource
//! (RFC 9728, [`crate::oauth`]), so a client that follows the spec asks
//! the authorization server for a token with `resource=<that URI>` and
//! gets one whose `aud` is that URI. jwt_authn accepts every audience the
//! gateway serves (the gateway's and each service's own: `envoy/envoy.yaml`
//! lists them), so it cannot tell a token for service A from one for B;
//! this check does, per request, on the service the path names:
//!
//! - a service with its own audience (`resources.<name>.audience`, else its
//!   `resource_uri`) needs a token whose `aud` carries one of them;
//! - a service without one accepts what jwt_authn accepted (as before
//!   per-service audiences), except a token bound to another service's
//!   own audience: that one is good only there.
//!
//! With `identity.audience_mode: "gateway"` nothing is checked here:
//! jwt_authn's single audience is the whole rule. Runs with identity,
//! before the policy and the decision cache, so no cached decision is
//! reached by a token that is not for its service.

use crate::claims::ClaimsError;
use crate::config::{Audience, AudienceMode, Config, ResourceConfig};

/// The audiences a registered service's tokens must carry (one of them),
/// when it has its own in the configured mode.
pub fn own<'a>(config: &Config, resource: &'a ResourceConfig) -> Option<&'a [String]> {
    if config.identity.audience_mode == AudienceMode::Gateway {
        return None;
    }
    match (&resource.audience, &resource.resource_uri) {
        (Some(Audience(list)), _) => Some(list.as_slice()),
        (None, Some(uri)) => Some(std::slice::from_ref(uri)),
        (None, None) => None,
    }
}

/// Whether a token with these audiences may be used at `service` (the
/// service the path names; `None` or an unregistered name: no audience of
/// its own).
pub fn check(config: &Config, service: Option<&str>, token: &[String]) -> Result<(), ClaimsError> {
    if config.identity.audience_mode == AudienceMode::Gateway {
        return Ok(());
    }
    let resource = service.and_then(|s| config.resources.get(s));
    if let Some(required) = resource.and_then(|r| own(config, r)) {
        return if token.iter().any(|a| required.contains(a)) {
            Ok(())
        } else {
            Err(ClaimsError::WrongAudience {
                required: required.to_vec(),
            })
        };
    }
    // No audience of its own: a token bound to another service's is not
    // for this one (before per-service audiences, jwt_authn refused it).
    let bound = token.iter().find(|a| {
        config
            .resources
            .values()
            .any(|r| own(config, r).is_some_and(|own| own.contains(a)))
    });
    match bound {
        Some(a) => Err(ClaimsError::OtherServiceAudience {
            audience: a.clone(),
        }),
        None => Ok(()),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    #[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    const A: &str = "https://gw.example.com/a/mcp";
    const B: &str = "https://gw.example.com/b/mcp";
    const GATEWAY: &str = "https://mcp.example.com/";

    fn config(mode: &str) -> Config {
        Config::from_json(
            format!(
                r#"{{"identity": {{"audience_mode": "{mode}"}},
                "oauth": {{"authorization_servers": ["https://idp.example.com"]}},
                "resources": {{
                  "a": {{"type": "tool", "resource_uri": "{A}"}},
                  "b": {{"type": "tool", "resource_uri": "{B}", "audience": ["b-api", "{B}"]}},
                  "c": {{"type": "tool"}}}}}}"#
            )
            .as_bytes(),
        )
        .unwrap()
    }

    fn aud(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn each_service_takes_only_tokens_for_its_own_audience() {
        let c = config("per_service");
        assert_eq!(check(&c, Some("a"), &aud(&[A])), Ok(()));
        assert_eq!(check(&c, Some("a"), &aud(&[GATEWAY, A])), Ok(()));
        assert_eq!(
            check(&c, Some("b"), &aud(&[A])),
            Err(ClaimsError::WrongAudience {
                required: aud(&["b-api", B])
            })
        );
        assert_eq!(check(&c, Some("b"), &aud(&["b-api"])), Ok(()));
        assert_eq!(
            check(&c, Some("a"), &aud(&[GATEWAY])),
            Err(ClaimsError::WrongAudience {
                required: aud(&[A])
            })
        );
        assert!(check(&c, Some("a"), &[]).is_err(), "no aud is not A's");
    }

    #[test]
    fn a_service_without_its_own_refuses_tokens_bound_to_another() {
        let c = config("per_service");
        for svc in [Some("c"), Some("unregistered"), None] {
            assert_eq!(check(&c, svc, &aud(&[GATEWAY])), Ok(()));
            assert_eq!(check(&c, svc, &[]), Ok(()), "jwt_authn's rule, as before");
            assert_eq!(
                check(&c, svc, &aud(&[GATEWAY, A])),
                Err(ClaimsError::OtherServiceAudience { audience: A.into() })
            );
        }
    }

    #[test]
    fn gateway_mode_checks_nothing_here() {
        let c = Config::from_json(
            format!(
                r#"{{"identity": {{"audience_mode": "gateway"}},
                "oauth": {{"authorization_servers": ["https://idp.example.com"]}},
                "resources": {{"a": {{"type": "tool", "resource_uri": "{A}"}}}}}}"#
            )
            .as_bytes(),
        )
        .unwrap();
        assert_eq!(own(&c, c.resource("a")), None);
        assert_eq!(check(&c, Some("a"), &aud(&[GATEWAY])), Ok(()));
        assert_eq!(check(&c, Some("c"), &aud(&[A])), Ok(()));
    }

    #[test]
    fn the_reason_names_the_required_audience() {
        let e = ClaimsError::WrongAudience {
            required: aud(&[A]),
        };
        assert_eq!(
            e.error_description().unwrap(),
            format!("token audience does not include {A}")
        );
        let e = ClaimsError::WrongAudience {
            required: aud(&["b-api", B]),
        };
        assert_eq!(
            e.to_string(),
            format!("token audience does not include any of b-api, {B}")
        );
        assert_eq!(ClaimsError::MissingSubject.error_description(), None);
    }
}
