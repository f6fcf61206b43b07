//! The `token_exchange` section and a service's `token_exchange` entry:
//! where the security token service is (an Envoy cluster and its token
//! endpoint), how the filter authenticates to it, and, per service, the
//! audience and scopes of the token its upstream takes (see
//! [`crate::exchange`]).

use super::error::{invalid, ConfigError};
use serde::Deserialize;

/// The `token_exchange` block of the plugin configuration.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct TokenExchangeConfig {
    /// The Envoy cluster of the security token service.
    pub cluster: String,
    /// `:authority` of the callouts.
    pub authority: String,
    /// Path of its token endpoint.
    pub token_path: String,
    /// The filter's client id at the service (client_secret_basic).
    pub client_id: String,
    /// Environment variable of the Envoy process (`vm_config
    /// .environment_variables.host_env_keys`) holding the client secret:
    /// only its name is configuration.
    pub client_secret_env: String,
    /// `subject_token_type` of the exchanges (RFC 8693 §3).
    pub subject_token_type: String,
    /// How long an exchange may take before the request is refused (503).
    pub timeout_ms: u64,
    /// A token is reused until this long before it expires.
    pub skew_s: u64,
    /// Exchanged tokens kept per worker, and the slots of the table the
    /// workers share them through (one token per slot).
    pub max_entries: usize,
}

impl Default for TokenExchangeConfig {
    fn default() -> Self {
        TokenExchangeConfig {
            cluster: String::new(),
            authority: String::new(),
            token_path: "/token".into(),
            client_id: String::new(),
            client_secret_env: "AGENTPLANE_EXCHANGE_SECRET".into(),
            subject_token_type: "urn:ietf:params:oauth:token-type:access_token".into(),
            timeout_ms: 2_000,
            skew_s: 30,
            max_entries: 16_384,
        }
    }
}

/// A service whose upstream takes an exchanged token.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ServiceExchange {
    /// The token's audience (RFC 8693 `audience`; also sent as `resource`
    /// when it is an http(s) URL).
    pub audience: String,
    /// The scopes asked for (none: the service decides).
    #[serde(default)]
    pub scopes: Vec<String>,
}

/// Whether `s` is an OAuth scope token (RFC 6749 §3.3: NQCHAR, non-empty).
pub fn scope_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b == 0x21 || (0x23..=0x5b).contains(&b) || (0x5d..=0x7e).contains(&b))
}

impl TokenExchangeConfig {
    /// Checks the block.
    pub(crate) fn check(&self) -> Result<(), ConfigError> {
        if self.cluster.is_empty() || self.authority.is_empty() || self.client_id.is_empty() {
            return Err(invalid(
                "token_exchange",
                "needs cluster, authority and client_id",
            ));
        }
        if !self.token_path.starts_with('/') || self.token_path.contains('#') {
            return Err(invalid(
                "token_exchange.token_path",
                "must be an absolute path",
            ));
        }
        if self.client_secret_env.is_empty() || self.subject_token_type.is_empty() {
            return Err(invalid(
                "token_exchange.client_secret_env",
                "client_secret_env and subject_token_type must not be empty",
            ));
        }
        if !(1..=60_000).contains(&self.timeout_ms) || self.skew_s > 3_600 {
            return Err(invalid(
                "token_exchange.timeout_ms",
                "timeout_ms must be 1-60000 and skew_s at most 3600",
            ));
        }
        if !(1..=1 << 20).contains(&self.max_entries) {
            return Err(invalid("token_exchange.max_entries", "must be 1-1048576"));
        }
        Ok(())
    }
}

impl ServiceExchange {
    /// Checks a service's entry (`at`: its field path).
    pub(crate) fn check(&self, at: &str) -> Result<(), ConfigError> {
        if self.audience.is_empty() || self.audience.len() > 512 {
            return Err(invalid(at, "needs an audience (at most 512 bytes)"));
        }
        if !self.scopes.iter().all(|s| scope_token(s)) {
            return Err(invalid(at, "scopes must be OAuth scope tokens"));
        }
        Ok(())
    }
}
