//! Decision ids: unique per decision, cheap, and formatted like UUIDv4 so
//! log pipelines accept them. Not secrets: uniqueness, not unpredictability.
//! Also what is done with ids and digests everywhere: one hex encoder, and
//! one test of whether an id falls in a sample (decision log, shadow).

/// Lower-case hex of `bytes`: the one encoder for digests, MACs and keys
/// (session and tool digests, approval bindings, exchange keys).
pub fn hex(bytes: &[u8]) -> String {
    let digit = |n: u8| char::from(if n < 10 { b'0' + n } else { b'a' + n - 10 });
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(digit(b >> 4));
        s.push(digit(b & 0xf));
    }
    s
}

/// A per-VM generator: a random seed from the host, then a counter mixed
/// through SplitMix64.
#[derive(Debug)]
pub struct DecisionIds {
    seed: u64,
    counter: u64,
}

fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl DecisionIds {
    /// A generator seeded by the caller (the wasm crate uses the host's randomness).
    pub fn new(seed: u64) -> Self {
        DecisionIds {
            seed: splitmix(seed),
            counter: 0,
        }
    }

    /// The next id, e.g. `3f1c9a2e-5b7d-4e10-9c3a-0d2b4f6e8a1c`.
    pub fn next_id(&mut self) -> String {
        let n = self.counter.wrapping_add(1);
        self.counter = n;
        let hi = splitmix(self.seed ^ n.wrapping_mul(0xd6e8_feb8_6659_fd93));
        let lo = splitmix(hi ^ self.seed.rotate_left(17) ^ n);
        let hi = (hi & 0xffff_ffff_ffff_0fff) | 0x0000_0000_0000_4000;
        let lo = (lo & 0x3fff_ffff_ffff_ffff) | 0x8000_0000_0000_0000;
        format!(
            "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
            hi >> 32,
            (hi >> 16) & 0xffff,
            hi & 0xffff,
            lo >> 48,
            lo & 0xffff_ffff_ffff
        )
    }
}

/// Whether `id` falls in a sample of `rate` (0 to 1): FNV-1a of the id
/// from `salt` (samples with different salts are independent), mixed by a
/// splitmix64 finalizer (FNV's high bits move little between ids that
/// differ only at the end), compared with the rate. The same id always
/// decides alike.
pub fn in_sample(rate: f64, salt: u64, id: &str) -> bool {
    if rate >= 1.0 {
        return true;
    }
    if rate <= 0.0 {
        return false;
    }
    let mut h = salt;
    for b in id.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^= h >> 31;
    (h as f64 / u64::MAX as f64) < rate
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    #[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    #[test]
    fn unique_and_uuid_shaped() {
        let mut g = DecisionIds::new(42);
        let mut seen = HashSet::new();
        for _ in 0..10_000 {
            let id = g.next_id();
            assert_eq!(id.len(), 36);
            assert_eq!(id.as_bytes()[14], b'4');
            assert!(seen.insert(id));
        }
        assert_ne!(DecisionIds::new(1).next_id(), DecisionIds::new(2).next_id());
    }
}
