//! The decision cache: reuse a policy decision for an identical request
//! while the policy says the decision cannot change.
//!
//! # When reuse is safe
//!
//! The input document is a function of: the verified JWT payload (from the
//! dynamic metadata bytes jwt_authn wrote), the method, the path, the
//! `:authority`, the configured input headers, the request id and the time.
//! The key holds the exact bytes of everything but the last two, so two
//! requests with equal keys build equal input documents up to
//! `input.request.id` and `input.request.time_ns`.
//!
//! - A policy that reads `input.request.id` must not be cached (ours does
//!   not; the cache-safety test would catch it).
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
//! insert evicts one entry (an expired one if it finds one quickly).

use crate::config::DecisionCacheConfig;
use std::collections::HashMap;

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

/// Builds a key from fields, each length-prefixed so that no two different
/// field lists produce the same bytes.
#[derive(Debug, Default)]
pub struct Key(Vec<u8>);

impl Key {
    /// An empty key with room for `capacity` bytes.
    pub fn with_capacity(capacity: usize) -> Key {
        Key(Vec::with_capacity(capacity))
    }

    /// Appends a present field.
    pub fn field(&mut self, bytes: &[u8]) -> &mut Key {
        let len = u32::try_from(bytes.len()).unwrap_or(u32::MAX - 1);
        self.0.extend_from_slice(&len.to_le_bytes());
        self.0.extend_from_slice(bytes);
        self
    }

    /// Appends a field that may be absent (distinct from empty).
    pub fn optional(&mut self, bytes: Option<&[u8]>) -> &mut Key {
        match bytes {
            Some(b) => self.field(b),
            None => {
                self.0.extend_from_slice(&u32::MAX.to_le_bytes());
                self
            }
        }
    }

    /// The bytes.
    pub fn into_bytes(self) -> Vec<u8> {
        self.0
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    #[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    fn cache(max: usize) -> DecisionCache<u32> {
        DecisionCache::new(&DecisionCacheConfig {
            enabled: true,
            max_entries: max,
            max_ttl_ms: 1_000,
        })
    }

    #[test]
    fn hits_until_valid_until_then_misses() {
        let mut c = cache(8);
        c.insert(b"k".to_vec(), 1, 100, 500);
        assert_eq!(c.get(b"k", 100), Some(1));
        assert_eq!(c.get(b"k", 499), Some(1));
        assert_eq!(c.get(b"k", 500), None);
        assert!(c.is_empty(), "expired entry dropped on lookup");
        assert_eq!((c.hits, c.misses), (2, 1));
    }

    #[test]
    fn a_clock_stepping_back_misses() {
        let mut c = cache(8);
        c.insert(b"k".to_vec(), 1, 100, 500);
        assert_eq!(c.get(b"k", 99), None);
    }

    #[test]
    fn max_ttl_caps_the_policy_lifetime() {
        let mut c = cache(8);
        c.insert(b"k".to_vec(), 1, 0, u64::MAX);
        assert_eq!(c.get(b"k", 999_999_999), Some(1));
        assert_eq!(c.get(b"k", 1_000_000_000), None);
    }

    #[test]
    fn stale_decisions_are_not_stored() {
        let mut c = cache(8);
        c.insert(b"k".to_vec(), 1, 100, 100);
        c.insert(b"j".to_vec(), 1, 100, 0);
        assert!(c.is_empty());
    }

    #[test]
    fn stays_bounded() {
        let mut c = cache(4);
        for i in 0..100u32 {
            c.insert(i.to_le_bytes().to_vec(), i, 0, 1_000);
            assert!(c.len() <= 4);
        }
        assert_eq!(c.get(&99u32.to_le_bytes(), 1), Some(99));
        // Expired entries go first when full.
        let mut c = cache(2);
        c.insert(b"old".to_vec(), 1, 0, 10);
        c.insert(b"live".to_vec(), 2, 0, 1_000);
        c.insert(b"new".to_vec(), 3, 20, 1_000);
        assert_eq!(c.get(b"live", 21), Some(2));
        assert_eq!(c.get(b"new", 21), Some(3));
        assert_eq!(c.len(), 2);
    }

    #[test]
    fn keys_do_not_run_fields_together() {
        let k = |a: &[u8], b: &[u8]| {
            let mut k = Key::default();
            k.field(a).field(b);
            k.into_bytes()
        };
        assert_ne!(k(b"ab", b"c"), k(b"a", b"bc"));
        let mut absent = Key::default();
        absent.optional(None);
        let mut empty = Key::default();
        empty.optional(Some(b""));
        assert_ne!(absent.into_bytes(), empty.into_bytes());
    }
}
