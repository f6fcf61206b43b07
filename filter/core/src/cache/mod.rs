//! The decision cache: reuse a policy decision for an equivalent request
//! while the policy says the decision cannot change.
//!
//! # When reuse is safe
//!
//! The input document is a function of: the verified JWT payload (from the
//! dynamic metadata bytes jwt_authn wrote), the method, the path, the
//! `:authority`, the configured input headers, the request id and the time.
//! A decision's key ([`KeyPlan`]) holds the principal (a serial number
//! standing for the exact metadata bytes, see [`crate::principal`]) and
//! the exact bytes of every other fact the policy reads, found in its
//! source at configure time ([`crate::reads`]); everything when that
//! cannot be known. So two requests with equal keys build input documents
//! that are equal wherever the policy looks, up to `input.request.time_ns`.
//!
//! - Time: the policy itself says until when its decision holds, through a
//!   `valid_until_ns` rule in the entrypoint package (ours: the next UTC
//!   hour boundary, or the token's expiry if sooner). A policy without that
//!   rule is never cached. Reuse is also capped by `max_ttl_ms`.
//! - The policy and its data are compiled into the filter and the config is
//!   fixed for the life of a VM, so they cannot change under the cache.
//!
//! Keys are the full bytes, not a hash of them: a hit needs byte equality,
//! so no collision can hand one agent another's decision. The cache is per
//! worker (one per wasm VM), bounded by `max_entries`: when full, an
//! insert evicts one entry (an expired one if it finds one quickly).//!
//! This file holds the cache itself; `key.rs` builds the keys.

use crate::config::DecisionCacheConfig;
use std::collections::HashMap;

mod key;

pub use key::{Key, KeyFacts, KeyPlan};

/// A bounded map from request keys to decisions with an expiry each.
#[derive(Debug)]
pub struct DecisionCache<T> {
    max_entries: usize,
    max_ttl_ns: u64,
    /// key → (decided at, valid until (exclusive), decision).
    map: HashMap<Vec<u8>, (u64, u64, T)>,
    /// Lookups answered from the cache.
    pub hits: u64,
    /// Lookups that had to evaluate.
    pub misses: u64,
}

impl<T: Clone> DecisionCache<T> {
    /// An empty cache.
    pub fn new(cfg: &DecisionCacheConfig) -> Self {
        DecisionCache {
            max_entries: cfg.max_entries,
            max_ttl_ns: cfg.max_ttl_ms.saturating_mul(1_000_000),
            map: HashMap::new(),
            hits: 0,
            misses: 0,
        }
    }

    /// The decision stored for `key`, if it is valid at `now_ns`: not
    /// before it was made (the policy vouches only for later times, and a
    /// wall clock can step back) and before its expiry.
    pub fn get(&mut self, key: &[u8], now_ns: u64) -> Option<T> {
        let found = match self.map.get(key) {
            Some((from, until, v)) if *from <= now_ns && now_ns < *until => Some(v.clone()),
            Some(_) => {
                self.map.remove(key);
                None
            }
            None => None,
        };
        if found.is_some() {
            self.hits += 1;
        } else {
            self.misses += 1;
        }
        found
    }

    /// Stores a decision made at `now_ns` that the policy says holds until
    /// `valid_until_ns` (exclusive). Decisions already stale are not kept.
    pub fn insert(&mut self, key: Vec<u8>, value: T, now_ns: u64, valid_until_ns: u64) {
        let until = valid_until_ns.min(now_ns.saturating_add(self.max_ttl_ns));
        if until <= now_ns {
            return;
        }
        if self.map.len() >= self.max_entries && !self.map.contains_key(&key) {
            // Evict one entry: the first expired one among a few, else the
            // first one the map yields (arbitrary, as the hasher is seeded).
            let victim = self
                .map
                .iter()
                .take(8)
                .find(|(_, (_, u, _))| *u <= now_ns)
                .or_else(|| self.map.iter().next())
                .map(|(k, _)| k.clone());
            if let Some(k) = victim {
                self.map.remove(&k);
            }
        }
        self.map.insert(key, (now_ns, until, value));
    }

    /// Entries held (some may have expired).
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
