//! The `limits` section: where the policy's rate limits and in-flight
//! caps count (see [`crate::limits`]).

use super::error::{invalid, ConfigError};
use serde::Deserialize;

/// Where rate limits and in-flight caps count (see [`crate::limits`]).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Prefix of the shared-data slot keys. Two filters that must count
    /// separately (a canary beside the main policy) need different ones.
    pub table: String,
    /// Slots per table (rate buckets; in-flight keys): the most keys that
    /// can count at once, per proxy.
    pub slots: u64,
    /// How long an in-flight lease holds without its stream ending
    /// (a VM that crashed or reloaded cannot hold a slot longer).
    pub lease_ms: u64,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            table: "agentplane.limits".into(),
            slots: 16384,
            lease_ms: 300_000,
        }
    }
}

impl LimitsConfig {
    /// Checks the section.
    pub(crate) fn check(&self) -> Result<(), ConfigError> {
        if !(1..=1 << 20).contains(&self.slots) {
            return Err(invalid("limits.slots", "must be between 1 and 1048576"));
        }
        if !(1_000..=86_400_000).contains(&self.lease_ms) {
            return Err(invalid(
                "limits.lease_ms",
                "must be between 1000 and 86400000",
            ));
        }
        if self.table.is_empty()
            || self.table.len() > 64
            || !self
                .table
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        {
            return Err(invalid(
                "limits.table",
                "must be 1-64 characters of [A-Za-z0-9._-]",
            ));
        }
        Ok(())
    }
}
