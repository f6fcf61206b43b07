//! The `vault` section (the OpenBao/Vault server secrets are read from)
//! and the secrets a service carries upstream (`resources.<name>.secrets`,
//! each a KV v2 field or a dynamic database credential), each checked
//! here: paths, placeholders, and headers the filter may write.

use super::error::{invalid, ConfigError};
use super::headers::{is_token, ALWAYS_STRIPPED};
use serde::Deserialize;

/// One secret injected into requests to a service: a KV v2 field into a
/// header or as the bearer token, or a dynamic database credential
/// (username and password, each into its header). Built from the
/// written form, [`SecretFields`], by its check: a secret that is
/// neither, or both, never gets this far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretConfig {
    /// A field of a KV v2 secret (`kv`, `field`, `header` or `bearer`).
    Kv {
        /// KV v2 read path, e.g. `secret/data/mcp/agents/{agent}/credentials`.
        /// Placeholders: `{agent}` (the token's `sub`), `{team}`, `{type}`.
        path: String,
        /// The field of the KV secret to inject.
        field: String,
        /// Where its value goes.
        into: KvInto,
    },
    /// Dynamic database credentials (`database`, `username_header`,
    /// `password_header`).
    Database {
        /// Dynamic credentials path, e.g. `database/creds/readonly`.
        path: String,
        /// Header the database username goes into.
        username_header: String,
        /// Header the database password goes into.
        password_header: String,
    },
}

/// Where a KV field is injected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KvInto {
    /// Into this header (as configured; written lower-cased).
    Header(String),
    /// As `authorization: Bearer <value>`.
    Bearer,
}

impl SecretConfig {
    /// The Vault path template (placeholders unexpanded).
    pub fn path(&self) -> &str {
        match self {
            SecretConfig::Kv { path, .. } | SecretConfig::Database { path, .. } => path,
        }
    }

    /// Whether this is a KV v2 read (else a database lease).
    pub fn is_kv(&self) -> bool {
        matches!(self, SecretConfig::Kv { .. })
    }

    /// The headers this secret writes, as configured (not lower-cased).
    pub fn headers(&self) -> Vec<&str> {
        match self {
            SecretConfig::Kv {
                into: KvInto::Header(h),
                ..
            } => vec![h],
            SecretConfig::Kv {
                into: KvInto::Bearer,
                ..
            } => vec!["authorization"],
            SecretConfig::Database {
                username_header,
                password_header,
                ..
            } => vec![username_header, password_header],
        }
    }
}

/// One secret as written in `resources.<name>.secrets`: the fields of
/// both kinds side by side, so that a mistake is refused naming its field
/// (`resources.<name>.secrets[<i>].field`) rather than as an unmatched
/// variant. [`SecretFields::check`] turns it into a [`SecretConfig`].
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SecretFields {
    /// KV v2 read path, e.g. `secret/data/mcp/agents/{agent}/credentials`.
    /// Placeholders: `{agent}` (the token's `sub`), `{team}`, `{type}`.
    #[serde(default)]
    pub kv: Option<String>,
    /// The field of the KV secret to inject.
    #[serde(default)]
    pub field: Option<String>,
    /// Header the KV field goes into.
    #[serde(default)]
    pub header: Option<String>,
    /// Inject the KV field as `authorization: Bearer <value>` instead.
    #[serde(default)]
    pub bearer: bool,
    /// Dynamic credentials path, e.g. `database/creds/readonly`.
    #[serde(default)]
    pub database: Option<String>,
    /// Header the database username goes into.
    #[serde(default)]
    pub username_header: Option<String>,
    /// Header the database password goes into.
    #[serde(default)]
    pub password_header: Option<String>,
}

/// Where secrets come from: an OpenBao/Vault server behind an Envoy cluster.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct VaultConfig {
    /// Envoy cluster that reaches the server.
    pub cluster: String,
    /// `:authority` of callouts.
    pub authority: String,
    /// JWT auth method mount (`auth/<mount>/login`).
    pub auth_mount: String,
    /// Role to log in as.
    pub role: String,
    /// Per-callout timeout.
    pub timeout_ms: u64,
    /// How long a KV read is reused (KV v2 has no lease).
    pub kv_ttl_s: u64,
    /// Credentials are refetched this long before they expire.
    pub renew_margin_s: u64,
    /// Retries of a callout that failed in a retryable way (429, 5xx,
    /// timeout, connection failure), with exponential backoff.
    pub retries: u32,
    /// First backoff; doubles per retry.
    pub backoff_ms: u64,
    /// Larger callout responses are refused.
    pub max_response_bytes: usize,
}

impl Default for VaultConfig {
    fn default() -> Self {
        VaultConfig {
            cluster: "vault".into(),
            authority: "vault".into(),
            auth_mount: "jwt".into(),
            role: "agent".into(),
            timeout_ms: 2_000,
            kv_ttl_s: 300,
            renew_margin_s: 10,
            retries: 2,
            backoff_ms: 50,
            max_response_bytes: 64 * 1024,
        }
    }
}

impl VaultConfig {
    /// Checks the section.
    pub(crate) fn check(&self) -> Result<(), ConfigError> {
        for (f, val) in [
            ("cluster", &self.cluster),
            ("authority", &self.authority),
            ("role", &self.role),
        ] {
            if val.is_empty() {
                return Err(invalid(format!("vault.{f}"), "must not be empty"));
            }
        }
        if !is_vault_path(&self.auth_mount) || self.auth_mount.contains('{') {
            return Err(invalid("vault.auth_mount", "a mount path like \"jwt\""));
        }
        if !(10..=60_000).contains(&self.timeout_ms) {
            return Err(invalid("vault.timeout_ms", "must be between 10 and 60000"));
        }
        if !(1..=86_400).contains(&self.kv_ttl_s) {
            return Err(invalid("vault.kv_ttl_s", "must be between 1 and 86400"));
        }
        if self.retries > 5 {
            return Err(invalid("vault.retries", "at most 5"));
        }
        if !(1..=10_000).contains(&self.backoff_ms) {
            return Err(invalid("vault.backoff_ms", "must be between 1 and 10000"));
        }
        if !(1024..=1024 * 1024).contains(&self.max_response_bytes) {
            return Err(invalid(
                "vault.max_response_bytes",
                "must be between 1024 and 1048576",
            ));
        }
        Ok(())
    }
}

impl SecretFields {
    /// Checks one secret and says which kind it is; `field` is its dotted
    /// path (`resources.<name>.secrets[<i>]`).
    pub(crate) fn check(self, field: &str) -> Result<SecretConfig, ConfigError> {
        let header_ok = |h: Option<String>, name: &str| -> Result<String, ConfigError> {
            match h {
                Some(h) if is_token(&h) && !h.starts_with(':') => {
                    let lower = h.to_ascii_lowercase();
                    if ALWAYS_STRIPPED.contains(&lower.as_str()) || lower == "x-request-id" {
                        return Err(invalid(
                            format!("{field}.{name}"),
                            "is a header the filter sets itself",
                        ));
                    }
                    Ok(h)
                }
                Some(h) => Err(invalid(
                    format!("{field}.{name}"),
                    format!("{h:?} is not a header name"),
                )),
                None => Err(invalid(format!("{field}.{name}"), "is required")),
            }
        };
        match (self.kv, self.database) {
            (Some(path), None) => {
                if !is_vault_path(&path) {
                    return Err(invalid(
                        format!("{field}.kv"),
                        "a relative Vault path (letters, digits, -._~:@/) with only {agent}, {team}, {type} placeholders",
                    ));
                }
                let Some(kv_field) = self.field.filter(|f| !f.is_empty()) else {
                    return Err(invalid(format!("{field}.field"), "is required for kv"));
                };
                if self.username_header.is_some() || self.password_header.is_some() {
                    return Err(invalid(
                        field,
                        "username_header/password_header belong to database secrets",
                    ));
                }
                let into = match (self.bearer, self.header) {
                    (true, None) => KvInto::Bearer,
                    (true, Some(_)) => {
                        return Err(invalid(
                            format!("{field}.header"),
                            "set either header or bearer, not both",
                        ))
                    }
                    (false, h) => KvInto::Header(header_ok(h, "header")?),
                };
                Ok(SecretConfig::Kv {
                    path,
                    field: kv_field,
                    into,
                })
            }
            (None, Some(path)) => {
                if !is_vault_path(&path) {
                    return Err(invalid(
                        format!("{field}.database"),
                        "a relative Vault path like \"database/creds/readonly\"",
                    ));
                }
                if self.field.is_some() || self.header.is_some() || self.bearer {
                    return Err(invalid(field, "field/header/bearer belong to kv secrets"));
                }
                Ok(SecretConfig::Database {
                    path,
                    username_header: header_ok(self.username_header, "username_header")?,
                    password_header: header_ok(self.password_header, "password_header")?,
                })
            }
            _ => Err(invalid(field, "set exactly one of kv and database")),
        }
    }
}

/// A relative Vault path whose only placeholders are `{agent}`, `{team}`
/// and `{type}`: no empty, `.` or `..` segment.
fn is_vault_path(s: &str) -> bool {
    !s.is_empty()
        && !s.starts_with('/')
        && s.split('/')
            .all(|seg| !seg.is_empty() && seg != "." && seg != "..")
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~:@/{}".contains(&b))
        && {
            let mut rest = s;
            let mut ok = true;
            while let Some(i) = rest.find('{') {
                let tail = rest.get(i..).unwrap_or("");
                let known = ["{agent}", "{team}", "{type}"]
                    .iter()
                    .find(|p| tail.starts_with(**p));
                match known {
                    Some(p) => rest = tail.get(p.len()..).unwrap_or(""),
                    None => {
                        ok = false;
                        break;
                    }
                }
            }
            ok && !rest.contains('}')
        }
}
