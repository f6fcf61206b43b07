//! The `decision_cache` section: how many decisions each worker keeps and
//! for how long at most (see [`crate::cache`]).

use super::error::{invalid, ConfigError};
use serde::Deserialize;

/// The decision cache (see [`crate::cache`]). On by default; it only ever
/// holds decisions of a policy that defines `valid_until_ns`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct DecisionCacheConfig {
    /// `false` evaluates every request.
    pub enabled: bool,
    /// Most decisions kept per worker.
    pub max_entries: usize,
    /// Longest any decision is reused, whatever the policy's
    /// `valid_until_ns` says, in milliseconds.
    pub max_ttl_ms: u64,
}

impl Default for DecisionCacheConfig {
    fn default() -> Self {
        DecisionCacheConfig {
            enabled: true,
            max_entries: 1024,
            max_ttl_ms: 60_000,
        }
    }
}

impl DecisionCacheConfig {
    /// Checks the section (an enabled cache's bounds; a disabled one's
    /// are never used).
    pub(crate) fn check(&self) -> Result<(), ConfigError> {
        if !self.enabled {
            return Ok(());
        }
        if !(1..=1_000_000).contains(&self.max_entries) {
            return Err(invalid(
                "decision_cache.max_entries",
                "must be between 1 and 1000000",
            ));
        }
        if !(1..=3_600_000).contains(&self.max_ttl_ms) {
            return Err(invalid(
                "decision_cache.max_ttl_ms",
                "must be between 1 and 3600000 (one hour)",
            ));
        }
        Ok(())
    }
}
