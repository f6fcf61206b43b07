//! The decision log: one JSON record per logged decision, in OPA's
//! decision-log shape plus what only the filter knows.
//!
//! A record is written to Envoy's log when the stream ends (so it carries
//! the response status), as one line starting with [`PREFIX`]:
//!
//! ```text
//! agentplane-decision {"decision_id":"…","timestamp":"2026-11-26T14:02:11.123456789Z","path":"mcp/authz",
//!   "input":{…},"result":{"allowed":false,"reasons":["…"]},"labels":{…},"metrics":{"timer_rego_query_eval_ns":…},
//!   "agent":{…},"resource":"web-search","reason":"…","status":403,"cached":false,"secrets":[],"request_id":"…"}
//! ```
//!
//! Nothing secret can reach a record: the input never holds credentials
//! (`authorization`, cookies and Vault tokens are refused as input headers),
//! secrets are listed by target header name only, and `decision_log.mask`
//! removes any further input paths.

use crate::config::{CollectorConfig, DecisionLogConfig};
use crate::host::Host;
use serde_json::{json, Map, Value};
use std::collections::VecDeque;

/// What every record line starts with.
pub const PREFIX: &str = "agentplane-decision ";

/// The filter's version, in every record's labels.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Facts about one decision, gathered along the request path.
#[derive(Debug, Default, Clone)]
pub struct Trail {
    /// The input document the policy saw (for a cache hit: the one the
    /// cached decision was made on).
    pub input: Option<regorus::Value>,
    /// Policy evaluation time.
    pub eval_ns: Option<u64>,
    /// Answered from the decision cache.
    pub cached: bool,
    /// The service (resource id).
    pub service: Option<String>,
    /// Target headers of injected secrets (names only).
    pub secrets: Vec<String>,
    /// The request id.
    pub request_id: String,
    /// Agent type and team, when known.
    pub agent_type: Option<String>,
    /// Agent team, when known.
    pub team: Option<String>,
    /// The delegation chain (actors, the one acting now first), when the
    /// token has one.
    pub chain: Option<Vec<String>>,
    /// The MCP tool called, when any (limits may count by it).
    pub tool: Option<String>,
    /// The length of the request body sent upstream, when the filter
    /// replaced it with the message it decided on.
    pub body_len: Option<usize>,
    /// For a request to an MCP service: its principal and session digest.
    pub session: Option<crate::session::Ticket>,
}

/// Whether an allowed decision with this id falls in the sample.
pub fn sampled(cfg: &DecisionLogConfig, decision_id: &str) -> bool {
    if cfg.sample_allowed >= 1.0 {
        return true;
    }
    if cfg.sample_allowed <= 0.0 {
        return false;
    }
    // FNV-1a of the id: uniform enough, and the same id always decides alike.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in decision_id.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (h as f64 / u64::MAX as f64) < cfg.sample_allowed
}

/// Inputs of [`record`].
#[derive(Debug)]
pub struct Facts<'a> {
    /// Decision id.
    pub decision_id: &'a str,
    /// Decision time.
    pub now_ns: u64,
    /// Entrypoint, e.g. `data.mcp.authz`.
    pub entrypoint: &'a str,
    /// Policy revision.
    pub revision: &'a str,
    /// Allowed?
    pub allowed: bool,
    /// Why not (empty when allowed).
    pub reason: &'a str,
    /// The policy's deny reasons (or the one reason of another refusal).
    pub reasons: &'a [String],
    /// Status the filter answered (0 when forwarded).
    pub status: u16,
    /// Agent id, when established.
    pub agent: Option<&'a str>,
}

/// Builds a record (without the final status, see [`finish`]).
pub fn record(cfg: &DecisionLogConfig, f: &Facts<'_>, trail: &Trail) -> Value {
    let mut input = trail
        .input
        .as_ref()
        .map_or(Value::Null, crate::value::from_rego);
    if trail.cached {
        // The cached decision's input, with this request's id and time.
        if let Some(req) = input.get_mut("request").and_then(Value::as_object_mut) {
            req.insert("id".into(), Value::from(trail.request_id.as_str()));
            req.insert("time_ns".into(), Value::from(f.now_ns));
        }
    }
    let mut doc = json!({ "input": input });
    for pointer in &cfg.mask {
        remove_pointer(&mut doc, pointer);
    }
    let input = doc.get_mut("input").map(Value::take).unwrap_or(Value::Null);
    let reasons = f.reasons;
    let mut metrics = Map::new();
    if let Some(ns) = trail.eval_ns {
        metrics.insert("timer_rego_query_eval_ns".into(), Value::from(ns));
    }
    let mut rec = json!({
        "decision_id": f.decision_id,
        "timestamp": rfc3339(f.now_ns),
        "path": f.entrypoint.strip_prefix("data.").unwrap_or(f.entrypoint).replace('.', "/"),
        "input": input,
        "result": {"allowed": f.allowed, "reasons": reasons},
        "labels": {"id": "agentplane", "version": VERSION, "policy_revision": f.revision},
        "metrics": metrics,
        "agent": {"id": f.agent, "type": trail.agent_type, "team": trail.team,
                  "delegation": trail.chain},
        "resource": trail.service,
        "reason": f.reason,
        "status": f.status,
        "cached": trail.cached,
        "secrets": trail.secrets,
        "request_id": trail.request_id,
    });
    // The session as its digest only: the id itself continues the session.
    let sent = trail
        .session
        .as_ref()
        .and_then(crate::session::Ticket::sent_sha256);
    if let (Some(h), Some(obj)) = (sent, rec.as_object_mut()) {
        obj.insert("mcp_session".into(), json!({ "id_sha256": h }));
    }
    rec
}

/// Sets the final response status (when the request was forwarded, the
/// upstream's) and renders the record as one line of JSON (the Envoy log
/// line is [`PREFIX`] followed by it).
pub fn finish(mut record: Value, response_status: Option<u16>) -> String {
    if let (Some(s), Some(obj)) = (response_status, record.as_object_mut()) {
        if obj.get("status").and_then(Value::as_u64) == Some(0) {
            obj.insert("status".into(), Value::from(s));
        }
    }
    record.to_string()
}

fn remove_pointer(doc: &mut Value, pointer: &str) {
    let Some((parent, last)) = pointer.rsplit_once('/') else {
        return;
    };
    let key = last.replace("~1", "/").replace("~0", "~");
    match doc.pointer_mut(parent) {
        Some(Value::Object(m)) => {
            m.remove(&key);
        }
        Some(Value::Array(a)) => {
            if let Ok(i) = key.parse::<usize>() {
                if i < a.len() {
                    a.remove(i);
                }
            }
        }
        _ => {}
    }
}

/// `2026-11-26T14:02:11.123456789Z` from ns since the epoch.
pub fn rfc3339(ns: u64) -> String {
    let secs = ns / 1_000_000_000;
    let nanos = ns % 1_000_000_000;
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{nanos:09}Z",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60
    )
}

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

    #[test]
    fn timestamps_are_rfc3339_utc() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000000000Z");
        assert_eq!(
            rfc3339(1_746_273_600_000_000_001),
            "2025-05-03T12:00:00.000000001Z"
        );
        assert_eq!(
            rfc3339(951_782_400_000_000_000),
            "2000-02-29T00:00:00.000000000Z"
        );
        assert_eq!(
            rfc3339(4_102_444_799_000_000_000),
            "2099-12-31T23:59:59.000000000Z"
        );
    }

    #[test]
    fn sampling_is_a_share_and_stable() {
        let cfg = |s| DecisionLogConfig {
            sample_allowed: s,
            ..DecisionLogConfig::default()
        };
        let ids: Vec<String> = (0..2000).map(|i| format!("id-{i}")).collect();
        let n = ids.iter().filter(|i| sampled(&cfg(0.25), i)).count();
        assert!((400..600).contains(&n), "{n}");
        assert!(ids.iter().all(|i| sampled(&cfg(1.0), i)));
        assert!(!ids.iter().any(|i| sampled(&cfg(0.0), i)));
        assert_eq!(sampled(&cfg(0.5), "x"), sampled(&cfg(0.5), "x"));
    }

    #[test]
    fn masks_remove_input_paths() {
        let cfg = DecisionLogConfig {
            enabled: true,
            mask: vec![
                "/input/jwt/payload/email".into(),
                "/input/request/headers/user-agent".into(),
            ],
            ..DecisionLogConfig::default()
        };
        let input = crate::value::to_rego(&json!({
            "jwt": {"payload": {"sub": "a", "email": "canary@example.com"}},
            "request": {"id": "r1", "time_ns": 1, "headers": {"user-agent": "canary-ua", "content-type": "x"}},
        }));
        let trail = Trail {
            input: Some(input),
            cached: true,
            request_id: "r2".into(),
            ..Trail::default()
        };
        let f = Facts {
            decision_id: "d",
            now_ns: 5,
            entrypoint: "data.mcp.authz",
            revision: "rev",
            allowed: false,
            reason: "a; b",
            reasons: &["a".to_string(), "b".to_string()],
            status: 403,
            agent: Some("a"),
        };
        let line = finish(record(&cfg, &f, &trail), Some(200));
        assert!(!line.contains("canary"), "{line}");
        let v: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["path"], "mcp/authz");
        assert_eq!(v["result"]["reasons"], json!(["a", "b"]));
        assert_eq!(v["status"], 403, "a reply's status is kept");
        assert_eq!(
            v["input"]["request"]["id"], "r2",
            "cached input gets this request's id"
        );
        assert_eq!(v["input"]["request"]["time_ns"], 5);
        assert_eq!(v["input"]["request"]["headers"]["content-type"], "x");
        assert_eq!(v["labels"]["policy_revision"], "rev");
    }
}
