//! What a request needs from Vault, before anything is fetched: the
//! [`Secret`] wrapper that never prints, each secret's resolved path
//! ([`Need`], [`plan`]), and the shapes the broker caches them in
//! ([`Lease`], [`Fields`]). Nothing here calls Vault or reads shared data.

use crate::config::SecretConfig;
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::fmt;

/// Nanoseconds in a second: leases and TTLs arrive in seconds, the host's
/// clock counts nanoseconds.
pub(super) const SEC: u64 = 1_000_000_000;

/// A secret value: never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a value.
    pub fn new(v: impl Into<String>) -> Secret {
        Secret(v.into())
    }
    /// The value, for injection only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// One secret a request needs: its spec and the resolved Vault path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Need {
    /// How it is injected.
    pub spec: SecretConfig,
    /// The path with placeholders filled in.
    pub path: String,
}

/// Fills `{agent}`, `{team}`, `{type}` in every spec's path. Identity values
/// that could escape their path segment are refused.
pub fn plan(
    specs: &[SecretConfig],
    agent: &str,
    team: Option<&str>,
    kind: Option<&str>,
) -> Result<Vec<Need>, String> {
    let safe = |name: &str, v: Option<&str>| -> Result<String, String> {
        match v {
            Some(v)
                if !v.is_empty()
                    && v != "."
                    && v != ".."
                    && v.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-._~:@".contains(&b)) =>
            {
                Ok(v.to_string())
            }
            Some(_) => Err(format!(
                "the agent's {name} cannot be used in a secret path"
            )),
            None => Err(format!("the agent has no {name} for a secret path")),
        }
    };
    specs
        .iter()
        .map(|spec| {
            let template = spec.path();
            let mut path = template.to_string();
            if path.contains("{agent}") {
                path = path.replace("{agent}", &safe("id", Some(agent))?);
            }
            if path.contains("{team}") {
                path = path.replace("{team}", &safe("team", team)?);
            }
            if path.contains("{type}") {
                path = path.replace("{type}", &safe("type", kind)?);
            }
            Ok(Need {
                spec: spec.clone(),
                path,
            })
        })
        .collect()
}

#[derive(Debug, Clone)]
pub(super) struct Lease<T> {
    pub(super) value: T,
    /// Usable while now < until (the renewal margin already subtracted).
    pub(super) until_ns: u64,
}

pub(super) type Fields = BTreeMap<String, Secret>;

/// The string fields of a secret's data object (only those: a number or a
/// nested object is never injected).
pub(super) fn string_fields(obj: &Map<String, Value>) -> Fields {
    obj.iter()
        .filter_map(|(k, v)| v.as_str().map(|s| (k.clone(), Secret::new(s))))
        .collect()
}

/// Field `name` of secret #`i`, if it can be sent as a header value
/// (non-empty, no control characters, at most 8 KiB).
pub(super) fn usable<'a>(fields: &'a Fields, i: usize, name: &str) -> Result<&'a Secret, String> {
    fields
        .get(name)
        .filter(|v| !v.expose().is_empty() && crate::headers::check_value(v.expose(), 8192).is_ok())
        .ok_or_else(|| format!("secret #{i} has no usable field {name:?}"))
}
