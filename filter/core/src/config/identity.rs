//! The `identity` and `source` sections: where the verified token's
//! payload is found and how far it is trusted ([`IdentityConfig`], whose
//! audience a token must carry), and what is read about the connection's
//! peer ([`SourceConfig`]).

use super::error::{invalid, ConfigError};
use serde::Deserialize;

/// Where the verified identity is found and how claims are named.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IdentityConfig {
    /// Dynamic-metadata namespace jwt_authn writes to.
    pub metadata_namespace: String,
    /// Key of the payload in that namespace: jwt_authn's `payload_in_metadata`
    /// name, or the issuer when Istio's RequestAuthentication configured it.
    pub payload_key: String,
    /// Prefix of the custom claims `agent_type`, `team`, `environment`.
    pub claims_namespace: String,
    /// Largest encoded payload accepted.
    pub max_payload_bytes: usize,
    /// Deepest nesting of objects/lists accepted in the payload.
    pub max_depth: usize,
    /// Pass the agent's `authorization` header (its bearer JWT) upstream.
    /// Off: allowed requests reach services without it (set jwt_authn's
    /// `forward: true` so the filter can log in to Vault with it).
    pub forward_token: bool,
    /// Distinct verified tokens whose decoded identity each worker keeps
    /// (0: decode every request).
    pub cache_entries: usize,
    /// Key of jwt_authn's `failed_status_in_metadata` in the namespace: a
    /// token that failed verification (401 `invalid_token` with its reason).
    pub failure_key: String,
    /// Whose audience a token must carry (see [`crate::audience`]).
    pub audience_mode: AudienceMode,
}

impl Default for IdentityConfig {
    fn default() -> Self {
        IdentityConfig {
            metadata_namespace: "envoy.filters.http.jwt_authn".into(),
            payload_key: "jwt_payload".into(),
            claims_namespace: "https://mcp.example.com/".into(),
            max_payload_bytes: 16 * 1024,
            max_depth: 16,
            forward_token: false,
            cache_entries: 1024,
            failure_key: "jwt_failure".into(),
            audience_mode: AudienceMode::PerService,
        }
    }
}

/// Whose audience a token must carry (`identity.audience_mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(try_from = "String")]
pub enum AudienceMode {
    /// A service with its own audience (`resources.<name>.audience`, else
    /// its `resource_uri`) accepts only tokens issued for it; a service
    /// without one refuses tokens bound to another service's (RFC 8707).
    #[default]
    PerService,
    /// Only the gateway's one audience, which jwt_authn checks: the filter
    /// checks no audience (tokens cannot be bound to one service).
    Gateway,
}

impl TryFrom<String> for AudienceMode {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        match s.as_str() {
            "per_service" => Ok(AudienceMode::PerService),
            "gateway" => Ok(AudienceMode::Gateway),
            other => Err(format!(
                "identity.audience_mode {other:?} is not a mode: use \"per_service\" (each service accepts tokens for its own audience) or \"gateway\" (one audience, checked by jwt_authn)"
            )),
        }
    }
}

/// The connection's peer (see [`crate::source`]).
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct SourceConfig {
    /// Read the peer certificate's identity from Envoy's connection
    /// properties into `input.source` (where agentplane sees mTLS).
    /// Off: `input.source` is `null` and no property is read.
    pub peer_certificate: bool,
    /// Envoy sanitizes and sets `x-forwarded-client-cert` itself (the
    /// connection manager's `forward_client_cert_details`): keep it. Off:
    /// a client's `x-forwarded-client-cert` is stripped like any trusted
    /// header.
    pub xfcc_from_envoy: bool,
}

impl IdentityConfig {
    /// Checks the section.
    pub(crate) fn check(&self) -> Result<(), ConfigError> {
        if self.metadata_namespace.is_empty() {
            return Err(invalid("identity.metadata_namespace", "must not be empty"));
        }
        if self.payload_key.is_empty() {
            return Err(invalid(
                "identity.payload_key",
                "must not be empty: use jwt_authn's payload_in_metadata name, or the issuer for Istio",
            ));
        }
        if !(256..=1024 * 1024).contains(&self.max_payload_bytes) {
            return Err(invalid(
                "identity.max_payload_bytes",
                "must be between 256 and 1048576",
            ));
        }
        if !(2..=64).contains(&self.max_depth) {
            return Err(invalid("identity.max_depth", "must be between 2 and 64"));
        }
        if self.cache_entries > 1_000_000 {
            return Err(invalid(
                "identity.cache_entries",
                "must be at most 1000000 (0 decodes every request)",
            ));
        }
        Ok(())
    }
}
