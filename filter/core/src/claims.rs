//! The agent's identity, taken from the JWT payload that Envoy's jwt_authn
//! filter verified and stored in dynamic metadata.
//!
//! Nothing here verifies a signature: [`trust_jwt_authn_payload`] says so in
//! its name. It is only sound because jwt_authn runs before this filter and
//! only jwt_authn writes its metadata namespace.

use crate::config::IdentityConfig;
use crate::host::Host;
use crate::pbstruct::{self, DecodeError, Limits};
use serde_json::{Map, Value};
use std::fmt;

/// Why no identity could be established.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClaimsError {
    /// jwt_authn left no payload: no token, or a route that does not require one.
    Missing,
    /// The metadata is not a well-formed, bounded `Struct`.
    Metadata(DecodeError),
    /// The payload under the configured key is not an object.
    PayloadNotObject,
    /// jwt_authn verified a token and rejected it (expired, wrong audience,
    /// bad signature...): its message.
    Rejected(String),
    /// `sub` is missing or empty.
    MissingSubject,
    /// A claim has the wrong JSON type.
    WrongType {
        /// The claim's name.
        claim: String,
        /// What it should be.
        expected: &'static str,
    },
    /// The token's `aud` names none of the audiences its service requires
    /// (RFC 8707): it was issued for another resource.
    WrongAudience {
        /// The service's own audiences (one of them is required).
        required: Vec<String>,
    },
    /// The token is bound to a registered service's own audience and was
    /// sent to a service that has none: it is good only at its own.
    OtherServiceAudience {
        /// The audience it carries (a configured one, so safe to quote).
        audience: String,
    },
}

impl fmt::Display for ClaimsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClaimsError::Missing => write!(f, "no verified token"),
            ClaimsError::Metadata(e) => write!(f, "verified token metadata unreadable: {e}"),
            ClaimsError::PayloadNotObject => write!(f, "token payload is not an object"),
            ClaimsError::Rejected(why) => write!(f, "token rejected: {why}"),
            ClaimsError::MissingSubject => write!(f, "token has no subject (sub)"),
            ClaimsError::WrongType { claim, expected } => {
                write!(f, "claim {claim:?} must be {expected}")
            }
            ClaimsError::WrongAudience { required } => match required.as_slice() {
                [one] => write!(f, "token audience does not include {one}"),
                all => write!(
                    f,
                    "token audience does not include any of {}",
                    all.join(", ")
                ),
            },
            ClaimsError::OtherServiceAudience { audience } => write!(
                f,
                "token audience {audience} is another service's; it is accepted only there"
            ),
        }
    }
}

impl std::error::Error for ClaimsError {}

impl ClaimsError {
    /// The challenge's `error_description` (RFC 6750 §3), for the failures
    /// a client fixes by asking for another token. Only these: their text
    /// names configured audiences alone (validated to be quotable), never
    /// anything the token says.
    pub fn error_description(&self) -> Option<String> {
        match self {
            ClaimsError::WrongAudience { .. } | ClaimsError::OtherServiceAudience { .. } => {
                Some(self.to_string())
            }
            _ => None,
        }
    }
}

/// The token's audiences: `aud` as a string or the strings of an array
/// (RFC 7519 §4.1.3). Anything else is no audience at all, which no
/// service's own audience matches.
pub fn audiences(payload: &Map<String, Value>) -> Vec<String> {
    match payload.get("aud") {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect(),
        _ => Vec::new(),
    }
}

/// The agent as the policy and the upstream see it.
#[derive(Debug, Clone, PartialEq)]
pub struct Identity {
    /// `sub`: the agent id.
    pub id: String,
    /// Namespaced `agent_type` claim.
    pub agent_type: Option<String>,
    /// Namespaced `team` claim.
    pub team: Option<String>,
    /// Namespaced `environment` claim.
    pub environment: Option<String>,
    /// Namespaced `workload_id` claim: the workload (SPIFFE ID) the token
    /// is bound to, set at registration.
    pub workload_id: Option<String>,
    /// `permissions` (array) and `scope` (space-separated), merged, in order,
    /// without duplicates.
    pub permissions: Vec<String>,
    /// The whole verified payload, for `input.jwt.payload`.
    pub payload: Map<String, Value>,
    /// RFC 8693 actors (`act`), the one acting now first; empty when the
    /// subject acts itself.
    pub chain: Vec<crate::delegation::Actor>,
}

/// Reads the payload jwt_authn verified. Trusts it without checking any
/// signature: correct only behind jwt_authn (see the module docs).
pub fn trust_jwt_authn_payload<H: Host>(
    host: &H,
    cfg: &IdentityConfig,
) -> Result<Map<String, Value>, ClaimsError> {
    let raw = host.property(&["metadata"]).ok_or(ClaimsError::Missing)?;
    payload_from_metadata(&raw, cfg)
}

/// [`trust_jwt_authn_payload`] for metadata bytes already read from the host.
pub fn payload_from_metadata(
    raw: &[u8],
    cfg: &IdentityConfig,
) -> Result<Map<String, Value>, ClaimsError> {
    let ns = pbstruct::metadata_namespace_bytes(raw, &cfg.metadata_namespace)
        .map_err(ClaimsError::Metadata)?
        .ok_or(ClaimsError::Missing)?;
    let limits = Limits {
        max_depth: cfg.max_depth,
        max_bytes: cfg.max_payload_bytes,
    };
    payload_from_namespace(ns, cfg, limits)
}

/// The payload in the bytes of jwt_authn's metadata namespace (a
/// serialized `Struct`).
pub fn payload_from_namespace(
    ns: &[u8],
    cfg: &IdentityConfig,
    limits: Limits,
) -> Result<Map<String, Value>, ClaimsError> {
    let mut ns = pbstruct::decode_struct(ns, limits).map_err(ClaimsError::Metadata)?;
    match ns.remove(&cfg.payload_key) {
        // jwt_authn's `failed_status_in_metadata`: a token was presented and
        // failed verification (`allow_missing_or_failed` lets it through so
        // that the 401 carries a decision id and the spec's challenge).
        None => match ns.get(&cfg.failure_key) {
            // google::jwt_verify's JwtMissed (1): no token at all.
            Some(Value::Object(f))
                if f.get("code").and_then(Value::as_i64) == Some(1)
                    || f.get("message").and_then(Value::as_str) == Some("Jwt is missing") =>
            {
                Err(ClaimsError::Missing)
            }
            Some(Value::Object(f)) => Err(ClaimsError::Rejected(
                f.get("message")
                    .and_then(Value::as_str)
                    .unwrap_or("verification failed")
                    .chars()
                    .take(200)
                    .collect(),
            )),
            _ => Err(ClaimsError::Missing),
        },
        Some(Value::Object(m)) => Ok(m),
        Some(_) => Err(ClaimsError::PayloadNotObject),
    }
}

fn optional_string(
    payload: &Map<String, Value>,
    claim: &str,
) -> Result<Option<String>, ClaimsError> {
    match payload.get(claim) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(ClaimsError::WrongType {
            claim: claim.to_string(),
            expected: "a string",
        }),
    }
}

/// Extracts the identity from a verified payload.
pub fn identity(
    payload: Map<String, Value>,
    cfg: &IdentityConfig,
) -> Result<Identity, ClaimsError> {
    let id = optional_string(&payload, "sub")?
        .filter(|s| !s.is_empty())
        .ok_or(ClaimsError::MissingSubject)?;
    let ns = |name: &str| format!("{}{}", cfg.claims_namespace, name);
    let agent_type = optional_string(&payload, &ns("agent_type"))?;
    let team = optional_string(&payload, &ns("team"))?;
    let environment = optional_string(&payload, &ns("environment"))?;
    let workload_id = optional_string(&payload, &ns("workload_id"))?;

    let mut permissions: Vec<String> = Vec::new();
    let mut add = |p: &str| {
        if !p.is_empty() && !permissions.iter().any(|q| q == p) {
            permissions.push(p.to_string());
        }
    };
    let not_string_array = || ClaimsError::WrongType {
        claim: "permissions".into(),
        expected: "an array of strings",
    };
    match payload.get("permissions") {
        None | Some(Value::Null) => {}
        Some(Value::Array(items)) => {
            for item in items {
                add(item.as_str().ok_or_else(not_string_array)?);
            }
        }
        Some(_) => return Err(not_string_array()),
    }
    if let Some(scope) = optional_string(&payload, "scope")? {
        if !is_scope(&scope) {
            return Err(ClaimsError::WrongType {
                claim: "scope".into(),
                expected: "scope tokens separated by single spaces (RFC 6749 section 3.3)",
            });
        }
        scope
            .split(' ')
            .filter(|t| !t.is_empty())
            .for_each(&mut add);
    }
    let chain = crate::delegation::chain(&payload, &cfg.claims_namespace).map_err(|expected| {
        ClaimsError::WrongType {
            claim: "act".into(),
            expected,
        }
    })?;
    Ok(Identity {
        id,
        agent_type,
        team,
        environment,
        workload_id,
        permissions,
        payload,
        chain,
    })
}

/// RFC 6749 §3.3: `scope-token *( SP scope-token )`, each token of
/// `%x21 / %x23-5B / %x5D-7E`. A tab, newline, double space or quote makes
/// the claim malformed: splitting it on "any whitespace" would grant
/// permissions the issuer never wrote as tokens.
fn is_scope(s: &str) -> bool {
    s.is_empty()
        || s.split(' ').all(|t| {
            !t.is_empty()
                && t.bytes()
                    .all(|b| b == 0x21 || (0x23..=0x5b).contains(&b) || (0x5d..=0x7e).contains(&b))
        })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::host::MockHost;
    use serde_json::json;
    #[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    fn host_with(payload: Value) -> MockHost {
        let mut ns = Map::new();
        ns.insert("jwt_payload".into(), payload);
        MockHost::new().with_property(
            &["metadata"],
            pbstruct::encode_metadata(&[("envoy.filters.http.jwt_authn", &ns)]),
        )
    }

    fn ident(payload: Value) -> Result<Identity, ClaimsError> {
        let cfg = IdentityConfig::default();
        let p = trust_jwt_authn_payload(&host_with(payload), &cfg)?;
        identity(p, &cfg)
    }

    #[test]
    fn reads_standard_and_namespaced_claims() {
        let id = ident(json!({
            "sub": "support-triage@clients",
            "permissions": ["skills:invoke", "data:read"],
            "scope": "data:read tools:access",
            "https://mcp.example.com/agent_type": "support",
            "https://mcp.example.com/team": "customer-success",
            "https://mcp.example.com/environment": "production",
            "exp": 1746277200
        }))
        .unwrap();
        assert_eq!(id.id, "support-triage@clients");
        assert_eq!(id.agent_type.as_deref(), Some("support"));
        assert_eq!(id.team.as_deref(), Some("customer-success"));
        assert_eq!(id.environment.as_deref(), Some("production"));
        assert_eq!(
            id.permissions,
            ["skills:invoke", "data:read", "tools:access"]
        );
        assert_eq!(id.payload["exp"], json!(1746277200));
    }

    #[test]
    fn missing_metadata_or_key_is_missing() {
        let cfg = IdentityConfig::default();
        assert_eq!(
            trust_jwt_authn_payload(&MockHost::new(), &cfg),
            Err(ClaimsError::Missing)
        );
        let mut ns = Map::new();
        ns.insert("other".into(), json!({"sub": "x"}));
        let h = MockHost::new().with_property(
            &["metadata"],
            pbstruct::encode_metadata(&[("envoy.filters.http.jwt_authn", &ns)]),
        );
        assert_eq!(trust_jwt_authn_payload(&h, &cfg), Err(ClaimsError::Missing));
    }

    #[test]
    fn istio_style_issuer_key() {
        let cfg = IdentityConfig {
            payload_key: "https://issuer.example/".into(),
            ..Default::default()
        };
        let mut ns = Map::new();
        ns.insert("https://issuer.example/".into(), json!({"sub": "a"}));
        let h = MockHost::new().with_property(
            &["metadata"],
            pbstruct::encode_metadata(&[("envoy.filters.http.jwt_authn", &ns)]),
        );
        let p = trust_jwt_authn_payload(&h, &cfg).unwrap();
        assert_eq!(identity(p, &cfg).unwrap().id, "a");
    }

    #[test]
    fn wrong_types_are_rejected() {
        let cases = [
            (json!({"sub": 5}), "\"sub\" must be a string"),
            (json!({"sub": ""}), "no subject"),
            (json!({}), "no subject"),
            (
                json!({"sub": "a", "permissions": "skills:invoke"}),
                "array of strings",
            ),
            (json!({"sub": "a", "permissions": [1]}), "array of strings"),
            (
                json!({"sub": "a", "scope": ["x"]}),
                "\"scope\" must be a string",
            ),
            (
                json!({"sub": "a", "https://mcp.example.com/team": {"x": 1}}),
                "team",
            ),
            (json!("just a string"), "not an object"),
        ];
        for (payload, want) in cases {
            let e = ident(payload.clone()).unwrap_err().to_string();
            assert!(e.contains(want), "{payload}: {e}");
        }
    }

    #[test]
    fn malformed_and_oversized_metadata_fail() {
        let cfg = IdentityConfig::default();
        let h = MockHost::new().with_property(&["metadata"], vec![0x0a, 0x10, 0x01]);
        assert!(matches!(
            trust_jwt_authn_payload(&h, &cfg),
            Err(ClaimsError::Metadata(_))
        ));
        let huge = json!({"sub": "a", "blob": "x".repeat(20_000)});
        assert!(matches!(
            ident(huge),
            Err(ClaimsError::Metadata(DecodeError::TooLarge { .. }))
        ));
        let mut deep = json!("leaf");
        for _ in 0..40 {
            deep = json!([deep]);
        }
        assert!(matches!(
            ident(json!({"sub": "a", "deep": deep})),
            Err(ClaimsError::Metadata(DecodeError::TooDeep))
        ));
    }

    #[test]
    fn a_token_jwt_authn_rejected_is_refused_with_its_reason() {
        let mut ns = Map::new();
        ns.insert(
            "jwt_failure".into(),
            serde_json::json!({"code": 3, "message": "Audiences in Jwt are not allowed"}),
        );
        let h = MockHost::new().with_property(
            &["metadata"],
            pbstruct::encode_metadata(&[("envoy.filters.http.jwt_authn", &ns)]),
        );
        let e = trust_jwt_authn_payload(&h, &IdentityConfig::default()).unwrap_err();
        assert_eq!(
            e,
            ClaimsError::Rejected("Audiences in Jwt are not allowed".into())
        );
        assert_eq!(
            e.to_string(),
            "token rejected: Audiences in Jwt are not allowed"
        );
    }
}
