//! The decision log: one JSON record per logged decision, in OPA's
//! decision-log shape plus what only the filter knows.
//!
//! A record is rendered as JSON text when the decision is made
//! ([`writer`]) and handed over when the stream ends, with the response
//! status, to the configured sink (`decision_log.sink`): Envoy's own
//! access log (the record set as the stream's filter state
//! `wasm.agentplane_decision`, which a file access logger writes with
//! `%FILTER_STATE(wasm.agentplane_decision:PLAIN)%`), or Envoy's
//! application log as one line starting with [`PREFIX`]; and, when
//! configured, to an HTTP collector ([`Shipper`]):
//!
//! ```text
//! agentplane-decision {"agent":{…},"cached":false,"decision_id":"…","input":{…},"labels":{…},
//!   "log":{"chain":"…","prev":"sha256:…","seq":7},"metrics":{"timer_rego_query_eval_ns":…},"path":"mcp/authz","reason":"…","request_id":"…",
//!   "resource":"web-search","result":{"allowed":false,"reasons":["…"]},"secrets":[],"status":403,
//!   "timestamp":"2026-11-26T14:02:11.123456789Z"}
//! ```
//!
//! Records form one hash chain per VM, anchored by signed checkpoints
//! ([`chain`]).
//!
//! Nothing secret can reach a record: the input never holds credentials
//! (`authorization`, cookies and Vault tokens are refused as input headers),
//! secrets are listed by target header name only, and `decision_log.mask`
//! removes any further input paths.

pub mod chain;
mod shipper;
mod writer;

pub use chain::Chain;
pub use shipper::Shipper;
pub use writer::Record;

use crate::config::DecisionLogConfig;

/// The property a record is set as for Envoy's access log: Envoy keeps it
/// as the filter state `wasm.agentplane_decision`.
pub const PROPERTY: &str = "agentplane_decision";

/// What every record line starts with.
pub const PREFIX: &str = "agentplane-decision ";

/// The filter's version, in every record's labels.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Facts about one decision, gathered along the request path.
#[derive(Debug, Default, Clone)]
pub struct Trail {
    /// The input document of this request (for a cache hit: built for the
    /// record; the cached decision was made on one that agrees with it
    /// wherever the policy looks).
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
    /// The human approval the call went through on.
    pub approval: Option<crate::approval::Granted>,
    /// What the shadow revision decided, when it was asked.
    pub shadow: Option<Shadowed>,
}

/// The shadow revision's decision, for the record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shadowed {
    /// Its revision (content hash).
    pub revision: &'static str,
    /// Whether it allowed.
    pub allowed: bool,
    /// Its deny reasons (or `policy_error`).
    pub reasons: Vec<String>,
    /// The entry points where it disagreed with the enforced decision.
    pub disagree: Vec<&'static str>,
}

/// Whether an allowed decision with this id falls in the sample.
pub fn sampled(cfg: &DecisionLogConfig, decision_id: &str) -> bool {
    crate::ids::in_sample(cfg.sample_allowed, 0xcbf2_9ce4_8422_2325, decision_id)
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

/// Renders a record at decision time: everything but the final status
/// and the session a response binds (see [`Record::finish`]).
pub fn record(cfg: &DecisionLogConfig, f: &Facts<'_>, trail: &Trail) -> Record {
    writer::render(cfg, f, trail)
}

/// Sets the final response status (when the request was forwarded, the
/// upstream's) and gives the record as one line of JSON (the Envoy log
/// line is [`PREFIX`] followed by it), linked into `chain` when there is
/// one (see [`chain`]).
pub fn finish(record: Record, response_status: Option<u16>, chain: Option<&mut Chain>) -> String {
    match chain {
        Some(c) => record.finish_chained(response_status, c),
        None => record.finish(response_status),
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

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use serde_json::{json, Value};
    #[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
    use wasm_bindgen_test::wasm_bindgen_test as test;

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
        let line = finish(record(&cfg, &f, &trail), Some(200), None);
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
