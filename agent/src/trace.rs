//! W3C Trace Context: one trace per agent run, a new span per call, so a
//! whole workflow is one trace across agentplane's decision logs.

use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicU64, Ordering};

/// Random bits from the OS (std's hasher keys come from it).
fn random_u64(salt: u64) -> u64 {
    RandomState::new().hash_one(salt)
}

/// A trace: its id, and spans minted under it.
#[derive(Debug)]
pub struct Trace {
    id: [u64; 2],
    spans: AtomicU64,
}

impl Default for Trace {
    fn default() -> Self {
        Trace::new()
    }
}

impl Trace {
    /// A new trace with a random id.
    pub fn new() -> Trace {
        let mut id = [random_u64(1), random_u64(2)];
        if id == [0, 0] {
            id[1] = 1; // all-zero ids are invalid
        }
        Trace {
            id,
            spans: AtomicU64::new(0),
        }
    }

    /// The trace id, 32 hex digits.
    pub fn id(&self) -> String {
        format!("{:016x}{:016x}", self.id[0], self.id[1])
    }

    /// A `traceparent` for the next call: this trace, a new span, sampled.
    pub fn traceparent(&self) -> String {
        let n = self.spans.fetch_add(1, Ordering::Relaxed);
        let span = random_u64(n).max(1);
        format!("00-{}-{span:016x}-01", self.id())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_call_of_a_run_shares_the_trace_and_gets_its_own_span() {
        let t = Trace::new();
        let (a, b) = (t.traceparent(), t.traceparent());
        let parts: Vec<&str> = a.split('-').collect();
        assert_eq!(parts.len(), 4);
        assert_eq!(parts[0], "00");
        assert_eq!(parts[1], t.id());
        assert_eq!(parts[1].len(), 32);
        assert_eq!(parts[2].len(), 16);
        assert_eq!(parts[3], "01");
        assert_ne!(a, b, "a new span per call");
        assert_eq!(&b[..35], &a[..35], "same trace");
        assert_ne!(Trace::new().id(), t.id());
    }
}
