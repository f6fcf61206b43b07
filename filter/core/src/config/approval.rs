//! The `approval` section: where the approval service is (an Envoy
//! cluster the filter calls out to), the environment variable holding the
//! key the filter presents to it, and the keys its grants are signed with
//! (see [`crate::approval`]).

use super::error::{invalid, ConfigError};
use ed25519_dalek::VerifyingKey;
use serde::Deserialize;

/// The `approval` block of the plugin configuration.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct ApprovalConfig {
    /// The Envoy cluster of the approval service.
    pub cluster: String,
    /// `:authority` of the callouts.
    pub authority: String,
    /// Path of the service's check endpoint.
    pub path: String,
    /// How long a callout may take before the call is refused (503).
    pub timeout_ms: u64,
    /// Environment variable of the Envoy process (`vm_config
    /// .environment_variables.host_env_keys`) holding the bearer key the
    /// filter presents to the service and seals `requestState` with: only
    /// its name is configuration.
    pub key_env: String,
    /// The service's grant-signing keys (Ed25519, as JWKs: `kid`, `x`).
    pub grant_keys: Vec<GrantKey>,
}

/// A grant-signing key of the approval service.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct GrantKey {
    /// Its key id.
    pub kid: String,
    /// Its Ed25519 public key (base64url, the JWK's `x`).
    pub x: String,
}

impl Default for ApprovalConfig {
    fn default() -> Self {
        ApprovalConfig {
            cluster: String::new(),
            authority: String::new(),
            path: "/v1/check".into(),
            timeout_ms: 2_000,
            key_env: "AGENTPLANE_APPROVAL_KEY".into(),
            grant_keys: Vec::new(),
        }
    }
}

impl ApprovalConfig {
    /// Checks the block.
    pub(crate) fn check(&self) -> Result<(), ConfigError> {
        if self.cluster.is_empty() || self.authority.is_empty() {
            return Err(invalid("approval", "needs cluster and authority"));
        }
        if !self.path.starts_with('/') || self.path.contains(['?', '#']) {
            return Err(invalid("approval.path", "must be an absolute path"));
        }
        if !(1..=60_000).contains(&self.timeout_ms) {
            return Err(invalid("approval.timeout_ms", "must be 1-60000"));
        }
        if self.key_env.is_empty() {
            return Err(invalid("approval.key_env", "must name a variable"));
        }
        if self.grant_keys.is_empty() {
            return Err(invalid(
                "approval.grant_keys",
                "must list the approval service's signing key(s)",
            ));
        }
        self.keys().map(|_| ())
    }

    /// The grant keys, decoded.
    pub fn keys(&self) -> Result<Vec<(String, VerifyingKey)>, ConfigError> {
        self.grant_keys
            .iter()
            .map(|k| {
                super::txn::public_key(&k.x)
                    .map(|v| (k.kid.clone(), v))
                    .map_err(|e| invalid("approval.grant_keys", format!("{}: {e}", k.kid)))
            })
            .collect()
    }
}
