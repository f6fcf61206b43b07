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
    /// when it is an http(s) URL). Via `linked_accounts`: the service's
    /// name at the link broker.
    pub audience: String,
    /// The scopes asked for (none: the service decides).
    #[serde(default)]
    pub scopes: Vec<String>,
    /// Which token service exchanges.
    #[serde(default)]
    pub via: Via,
}

/// The token service a service's exchange goes to.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Via {
    /// The security token service of the `token_exchange` block: a token
    /// for the caller, for another audience.
    #[default]
    TokenExchange,
    /// The link broker of the `linked_accounts` block: the token the
    /// person the caller acts for holds at a third-party service, from
    /// the account they linked (docs/acting-for-users.md#linked-accounts).
    LinkedAccounts,
}

impl Via {
    /// The configuration block this names.
    pub fn block(self) -> &'static str {
        match self {
            Via::TokenExchange => "token_exchange",
            Via::LinkedAccounts => "linked_accounts",
        }
    }
}

/// The environment variable holding the filter's secret at the link
/// broker, by default: never the token service's, so a block left at its
/// defaults cannot hand one party's secret to the other.
pub const LINKS_SECRET_ENV: &str = "AGENTPLANE_LINKS_KEY";

/// Reads the `linked_accounts` block: a token service block whose
/// `client_secret_env` defaults to [`LINKS_SECRET_ENV`].
pub(crate) fn linked_accounts<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<TokenExchangeConfig>, D::Error> {
    let Some(mut v) = Option::<serde_json::Value>::deserialize(d)? else {
        return Ok(None);
    };
    if let Some(o) = v.as_object_mut() {
        o.entry("client_secret_env")
            .or_insert_with(|| LINKS_SECRET_ENV.into());
    }
    TokenExchangeConfig::deserialize(v)
        .map(Some)
        .map_err(serde::de::Error::custom)
}

/// Whether `s` is an OAuth scope token (RFC 6749 §3.3: NQCHAR, non-empty).
pub fn scope_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b == 0x21 || (0x23..=0x5b).contains(&b) || (0x5d..=0x7e).contains(&b))
}

impl TokenExchangeConfig {
    /// Checks the block, found at `at` (`token_exchange` or
    /// `linked_accounts`).
    pub(crate) fn check(&self, at: &str) -> Result<(), ConfigError> {
        let field = |f: &str| format!("{at}.{f}");
        if self.cluster.is_empty() || self.authority.is_empty() || self.client_id.is_empty() {
            return Err(invalid(at, "needs cluster, authority and client_id"));
        }
        if !self.token_path.starts_with('/') || self.token_path.contains('#') {
            return Err(invalid(field("token_path"), "must be an absolute path"));
        }
        if self.client_secret_env.is_empty() || self.subject_token_type.is_empty() {
            return Err(invalid(
                field("client_secret_env"),
                "client_secret_env and subject_token_type must not be empty",
            ));
        }
        if !(1..=60_000).contains(&self.timeout_ms) || self.skew_s > 3_600 {
            return Err(invalid(
                field("timeout_ms"),
                "timeout_ms must be 1-60000 and skew_s at most 3600",
            ));
        }
        if !(1..=1 << 20).contains(&self.max_entries) {
            return Err(invalid(field("max_entries"), "must be 1-1048576"));
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
