//! Ships decision records in batches to an HTTP collector, beside
//! whichever sink writes them locally (see [`super`]).

use crate::config::CollectorConfig;
use crate::host::Host;
use std::collections::VecDeque;

/// Batches records for an HTTP collector (per worker; flushed from the
/// root context's tick).
///
/// Bounded twice, in records (`max_buffer`) and in bytes
/// (`max_buffer_bytes`). With mandatory logging a request reserves its
/// record's place when it is admitted ([`Shipper::reserve`]), so a record
/// for a request that was served is never dropped for lack of room.
#[derive(Debug)]
pub struct Shipper {
    cfg: CollectorConfig,
    buf: VecDeque<String>,
    /// Bytes held in `buf`.
    bytes: usize,
    /// Places promised to admitted requests whose record has not come yet.
    reserved: usize,
    /// When the oldest unsent record arrived.
    oldest_ns: Option<u64>,
    /// The POST in flight: its token and how many records it carries.
    inflight: Option<(u32, usize)>,
    /// No POST before this time (after a failure).
    retry_at: u64,
    /// Records dropped: buffer full, or refused by the collector (4xx).
    pub dropped: u64,
    /// Records the collector accepted.
    pub shipped: u64,
    /// POSTs that failed.
    pub failures: u64,
}

impl Shipper {
    /// An empty shipper.
    pub fn new(cfg: CollectorConfig) -> Shipper {
        Shipper {
            cfg,
            buf: VecDeque::new(),
            bytes: 0,
            reserved: 0,
            oldest_ns: None,
            inflight: None,
            retry_at: 0,
            dropped: 0,
            shipped: 0,
            failures: 0,
        }
    }

    /// Whether another record fits, counting reserved places.
    pub fn has_room(&self) -> bool {
        self.buf.len().saturating_add(self.reserved) < self.cfg.max_buffer
            && self.bytes < self.cfg.max_buffer_bytes
    }

    /// Promises a place to a request being admitted; false when there is
    /// none (mandatory logging then refuses the request).
    pub fn reserve(&mut self) -> bool {
        if !self.has_room() {
            return false;
        }
        self.reserved += 1;
        true
    }

    /// Gives back a place a request reserved but never used.
    pub fn release(&mut self) {
        self.reserved = self.reserved.saturating_sub(1);
    }

    /// Queues a record (its JSON). A record with a reserved place is always
    /// taken; any other is dropped (and counted) when there is no room.
    pub fn push(&mut self, record: String, now: u64, reserved: bool) -> bool {
        if reserved {
            self.release();
        } else if !self.has_room()
            || self.bytes.saturating_add(record.len()) > self.cfg.max_buffer_bytes
        {
            self.dropped += 1;
            return false;
        }
        if self.buf.is_empty() {
            self.oldest_ns = Some(now);
        }
        self.bytes = self.bytes.saturating_add(record.len());
        self.buf.push_back(record);
        true
    }

    /// Records waiting (including those being sent).
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// Bytes of records waiting.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// Sends a batch when one is full or the oldest record waited long
    /// enough (root context tick).
    pub fn on_tick<H: Host>(&mut self, host: &mut H) {
        let now = host.now_ns();
        if self.inflight.is_some() || self.buf.is_empty() || now < self.retry_at {
            return;
        }
        let waited = self
            .oldest_ns
            .is_some_and(|t| now.saturating_sub(t) >= self.cfg.flush_ms.saturating_mul(1_000_000));
        if self.buf.len() < self.cfg.max_batch && !waited {
            return;
        }
        let n = self.buf.len().min(self.cfg.max_batch);
        let mut body = String::from("[");
        for (i, r) in self.buf.iter().take(n).enumerate() {
            if i > 0 {
                body.push(',');
            }
            body.push_str(r);
        }
        body.push(']');
        let sent = host.dispatch_http_call(
            &self.cfg.cluster,
            &[
                (":method", "POST"),
                (":path", &self.cfg.path),
                (":authority", &self.cfg.authority),
                ("content-type", "application/json"),
            ],
            Some(body.as_bytes()),
            self.cfg.timeout_ms,
        );
        match sent {
            Ok(token) => self.inflight = Some((token, n)),
            Err(_) => {
                self.failures += 1;
                self.retry_at = now.saturating_add(1_000_000_000);
            }
        }
    }

    fn pop(&mut self, n: usize) {
        for _ in 0..n {
            if let Some(r) = self.buf.pop_front() {
                self.bytes = self.bytes.saturating_sub(r.len());
            }
        }
    }

    /// A POST answered; false if the token is not ours. 2xx: shipped. A
    /// 4xx other than 408 and 429 will never succeed for this batch: it is
    /// dropped and counted rather than retried forever (it would block
    /// every record behind it). Anything else is retried after a pause.
    pub fn on_response(&mut self, token: u32, status: Option<u16>, now: u64) -> bool {
        let Some((t, n)) = self.inflight else {
            return false;
        };
        if t != token {
            return false;
        }
        self.inflight = None;
        match status {
            Some(200..=299) => {
                self.pop(n);
                self.shipped += n as u64;
                self.oldest_ns = (!self.buf.is_empty()).then_some(now);
            }
            Some(s @ 400..=499) if s != 408 && s != 429 => {
                self.pop(n);
                self.failures += 1;
                self.dropped += n as u64;
                self.oldest_ns = (!self.buf.is_empty()).then_some(now);
            }
            _ => {
                self.failures += 1;
                self.retry_at = now.saturating_add(1_000_000_000);
            }
        }
        true
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use serde_json::{json, Value};
    #[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use crate::host::MockHost;

    fn shipper(max_batch: usize, max_buffer: usize) -> Shipper {
        Shipper::new(CollectorConfig {
            max_batch,
            max_buffer,
            flush_ms: 1_000,
            ..CollectorConfig::default()
        })
    }

    #[test]
    fn shipper_batches_by_size_and_time_and_keeps_records_until_accepted() {
        let mut s = shipper(3, 5);
        let mut h = MockHost::new();
        let t = h.now_ns;
        s.push("{\"a\":1}".into(), t, false);
        s.on_tick(&mut h);
        assert!(h.dispatched.is_empty(), "a partial batch waits");
        s.push("{\"a\":2}".into(), t, false);
        s.push("{\"a\":3}".into(), t, false);
        s.on_tick(&mut h);
        assert_eq!(h.dispatched.len(), 1, "a full batch goes at once");
        let body: Value = serde_json::from_slice(h.dispatched[0].body.as_ref().unwrap()).unwrap();
        assert_eq!(body, json!([{"a": 1}, {"a": 2}, {"a": 3}]));
        assert_eq!(h.dispatched[0].header(":path"), Some("/logs"));
        // The collector fails: records are kept and resent later.
        s.push("{\"a\":4}".into(), t, false);
        assert!(s.on_response(h.dispatched[0].token, Some(503), t));
        assert_eq!((s.len(), s.failures), (4, 1));
        s.on_tick(&mut h);
        assert_eq!(h.dispatched.len(), 1, "backs off");
        h.now_ns += 1_000_000_000;
        s.on_tick(&mut h);
        assert_eq!(h.dispatched.len(), 2);
        assert!(s.on_response(h.dispatched[1].token, Some(200), h.now_ns));
        assert_eq!((s.len(), s.shipped), (1, 3));
        // The leftover partial batch goes after flush_ms.
        h.now_ns += 999_000_000;
        s.on_tick(&mut h);
        assert_eq!(h.dispatched.len(), 2);
        h.now_ns += 1_000_000;
        s.on_tick(&mut h);
        assert_eq!(h.dispatched.len(), 3);
        // Full buffer: dropped and counted.
        let mut s = shipper(2, 2);
        assert!(s.push("1".into(), 0, false) && s.push("2".into(), 0, false));
        assert!(!s.has_room());
        assert!(!s.push("3".into(), 0, false));
        assert_eq!(s.dropped, 1);
        assert!(!s.on_response(77, Some(200), 0), "not our token");
    }

    #[test]
    fn collector_rejecting_a_batch_does_not_block_the_queue_forever() {
        let mut s = shipper(2, 10);
        let mut h = MockHost::new();
        for r in ["1", "2", "3"] {
            s.push(r.into(), h.now_ns, false);
        }
        s.on_tick(&mut h);
        assert!(s.on_response(h.dispatched[0].token, Some(400), h.now_ns));
        assert_eq!(
            (s.len(), s.dropped, s.failures),
            (1, 2, 1),
            "dropped, counted"
        );
        // 429 and 408 are retried, not dropped.
        s.push("4".into(), h.now_ns, false);
        s.on_tick(&mut h);
        assert!(s.on_response(h.dispatched[1].token, Some(429), h.now_ns));
        assert_eq!((s.len(), s.dropped), (2, 2));
    }

    #[test]
    fn huge_records_cannot_grow_the_buffer_past_its_byte_bound() {
        let mut s = Shipper::new(CollectorConfig {
            max_buffer: 1000,
            max_buffer_bytes: 4096,
            ..CollectorConfig::default()
        });
        let big = "x".repeat(3000);
        assert!(s.push(big.clone(), 0, false));
        assert!(!s.push(big.clone(), 0, false), "over the byte bound");
        assert_eq!((s.len(), s.bytes(), s.dropped), (1, 3000, 1));
    }

    #[test]
    fn mandatory_logging_reserves_room_at_admission() {
        let mut s = shipper(1, 2);
        assert!(s.reserve() && s.reserve());
        assert!(!s.reserve(), "both places are promised");
        assert!(
            !s.push("other".into(), 0, false),
            "an unreserved record cannot take a promised place"
        );
        assert!(s.push("a".into(), 0, true) && s.push("b".into(), 0, true));
        s.release();
        assert_eq!(s.len(), 2);
    }
}
