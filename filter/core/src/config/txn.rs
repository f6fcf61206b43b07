//! The `txn_token` section: how transaction tokens are minted (issuer,
//! audience, lifetime, where the signing key is read) and whose inbound
//! tokens are accepted (see [`crate::txn`], which signs and verifies them
//! with this block). The request header's name lives here too, because
//! the header rules of [`super::Config::must_strip`] need it.

use super::error::{invalid, ConfigError};
use base64ct::{Base64UrlUnpadded, Encoding};
use ed25519_dalek::VerifyingKey;
use serde::Deserialize;

/// The request header carrying a transaction token (the draft's).
pub const HEADER: &str = "txn-token";

/// The `txn_token` block of the plugin configuration.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TxnConfig {
    /// `iss` of minted tokens.
    pub issuer: String,
    /// `aud`: the trust domain every hop of this deployment shares.
    pub audience: String,
    /// Lifetime of a minted token.
    pub ttl_s: u64,
    /// How long one token is reused for equal requests (less than
    /// `ttl_s`: a receiver always gets `ttl_s - reuse_s` seconds).
    pub reuse_s: u64,
    /// KV v2 path of the signing key, read through the `vault` cluster,
    /// e.g. `secret/data/agentplane/txn-signing`. Fields: `kid`, `d` (the
    /// Ed25519 seed, base64url) and optionally `previous_kid` and
    /// `previous_x` (the retired public key, still published and accepted).
    pub key_path: String,
    /// Environment variable of the Envoy process holding the token the
    /// filter reads the key with (`vm_config.environment_variables
    /// .host_env_keys`): only its name is configuration.
    pub vault_token_env: String,
    /// The key is read again this often (rotation).
    pub refresh_s: u64,
    /// Where the filter serves the JWKS (any `:authority`).
    pub jwks_path: String,
    /// Other gateways whose tokens are accepted inbound.
    pub trusted: Vec<TrustedIssuer>,
    /// Minted tokens (and verified inbound ones) kept per worker.
    pub max_entries: usize,
}

impl Default for TxnConfig {
    fn default() -> Self {
        TxnConfig {
            issuer: String::new(),
            audience: String::new(),
            ttl_s: 60,
            reuse_s: 30,
            key_path: "secret/data/agentplane/txn-signing".into(),
            vault_token_env: "AGENTPLANE_VAULT_TOKEN".into(),
            refresh_s: 300,
            jwks_path: "/.well-known/agentplane/jwks.json".into(),
            trusted: Vec::new(),
            max_entries: 16_384,
        }
    }
}

/// Another gateway's issuer and public key.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TrustedIssuer {
    /// Its `iss`.
    pub issuer: String,
    /// Its key id.
    pub kid: String,
    /// Its Ed25519 public key (base64url, the JWK's `x`).
    pub x: String,
}

impl TxnConfig {
    /// Checks the block.
    pub(crate) fn check(&self) -> Result<(), ConfigError> {
        if self.issuer.is_empty() || self.audience.is_empty() {
            return Err(invalid("txn_token", "needs issuer and audience"));
        }
        if !(1..=3_600).contains(&self.ttl_s) || self.reuse_s >= self.ttl_s {
            return Err(invalid(
                "txn_token.reuse_s",
                "ttl_s must be 1-3600 and reuse_s less than ttl_s",
            ));
        }
        if !self.jwks_path.starts_with('/') || self.jwks_path.contains(['?', '#']) {
            return Err(invalid("txn_token.jwks_path", "must be an absolute path"));
        }
        if self.vault_token_env.is_empty() || self.key_path.is_empty() {
            return Err(invalid(
                "txn_token.key_path",
                "key_path and vault_token_env are required",
            ));
        }
        if !(1..=1 << 20).contains(&self.max_entries) || self.refresh_s == 0 {
            return Err(invalid(
                "txn_token.max_entries",
                "max_entries must be 1-1048576 and refresh_s positive",
            ));
        }
        for t in &self.trusted {
            public_key(&t.x)
                .map_err(|e| invalid("txn_token.trusted", format!("{}: {e}", t.kid)))?;
        }
        Ok(())
    }
}

/// An Ed25519 public key from a JWK's `x` (base64url); the error says
/// what is wrong with it.
pub(crate) fn public_key(x: &str) -> Result<VerifyingKey, String> {
    let raw = Base64UrlUnpadded::decode_vec(x).map_err(|_| "x is not base64url".to_string())?;
    let raw: [u8; 32] = raw
        .try_into()
        .map_err(|_| "x is not 32 bytes".to_string())?;
    VerifyingKey::from_bytes(&raw).map_err(|_| "x is not an Ed25519 point".to_string())
}
