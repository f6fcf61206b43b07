//! The `decision_log` section: which decisions are logged, what is masked
//! out of their input, where records are written (`sink`), how often the
//! record chain is checkpointed, and the optional HTTP collector records
//! are shipped to (see [`crate::audit`]).

use super::error::{invalid, ConfigError};
use serde::Deserialize;

/// The decision log (see [`crate::audit`]).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DecisionLogConfig {
    /// Write one record per logged decision (to `sink`).
    pub enabled: bool,
    /// Where records are written when the stream ends.
    pub sink: Sink,
    /// Share of allowed decisions logged (0.0–1.0); denies are always logged.
    pub sample_allowed: f64,
    /// JSON pointers removed from every record's input, e.g.
    /// `/input/jwt/payload/email` (like OPA's `system.log.mask`).
    pub mask: Vec<String>,
    /// Also ship records in batches to an HTTP collector.
    pub collector: Option<CollectorConfig>,
    /// Deny (503) when a record cannot be handed to the collector because
    /// its buffer is full, as opa-envoy-plugin does with mandatory logging.
    pub mandatory: bool,
    /// Seconds between signed checkpoints of the record chain (one is
    /// also written when the VM shuts down); 0: only at shutdown.
    pub checkpoint_s: u64,
}

impl Default for DecisionLogConfig {
    fn default() -> Self {
        DecisionLogConfig {
            enabled: false,
            sink: Sink::default(),
            sample_allowed: 1.0,
            mask: Vec::new(),
            collector: None,
            mandatory: false,
            checkpoint_s: 60,
        }
    }
}

/// Where the filter hands its records over.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Sink {
    /// Envoy's application log, one line per record starting with
    /// `agentplane-decision ` (written synchronously by Envoy's logger:
    /// costly per record, but needs no Envoy configuration).
    #[default]
    EnvoyLog,
    /// Envoy's access log: the record is set as the stream's filter state
    /// `wasm.agentplane_decision`, which an access logger configured with
    /// `%FILTER_STATE(wasm.agentplane_decision:PLAIN)%` writes (buffered,
    /// natively). Records are lost if Envoy has no such logger.
    AccessLog,
}

/// An HTTP collector for decision records: `POST <path>` with a JSON array.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct CollectorConfig {
    /// Envoy cluster of the collector.
    pub cluster: String,
    /// `:authority` of the POSTs.
    pub authority: String,
    /// Path records are POSTed to.
    pub path: String,
    /// Records per POST at most; a full batch is sent at once.
    pub max_batch: usize,
    /// A partial batch waits at most this long.
    pub flush_ms: u64,
    /// Records held per worker (unsent or being sent); beyond, records are
    /// dropped (counted), or with `mandatory` requests are denied.
    pub max_buffer: usize,
    /// Bytes of record JSON held per worker at most (records admitted
    /// under mandatory logging may overshoot by what was reserved).
    pub max_buffer_bytes: usize,
    /// Per POST.
    pub timeout_ms: u64,
}

impl Default for CollectorConfig {
    fn default() -> Self {
        CollectorConfig {
            cluster: "decision_logs".into(),
            authority: "decision-logs".into(),
            path: "/logs".into(),
            max_batch: 100,
            flush_ms: 1_000,
            max_buffer: 10_000,
            max_buffer_bytes: 16 * 1024 * 1024,
            timeout_ms: 2_000,
        }
    }
}

impl DecisionLogConfig {
    /// Checks the section.
    pub(crate) fn check(&self) -> Result<(), ConfigError> {
        if !(0.0..=1.0).contains(&self.sample_allowed) {
            return Err(invalid(
                "decision_log.sample_allowed",
                "must be between 0.0 and 1.0",
            ));
        }
        if let Some(c) = &self.collector {
            c.check()?;
        }
        if self.mandatory && (self.collector.is_none() || !self.enabled) {
            return Err(invalid(
                "decision_log.mandatory",
                "needs decision_log.enabled and a collector (Envoy's log always takes a record)",
            ));
        }
        if self.checkpoint_s > 86_400 {
            return Err(invalid(
                "decision_log.checkpoint_s",
                "at most 86400 (0: only at shutdown)",
            ));
        }
        for (i, m) in self.mask.iter().enumerate() {
            if !m.starts_with("/input/") || m.ends_with('/') {
                return Err(invalid(
                    format!("decision_log.mask[{i}]"),
                    "a JSON pointer into the input, like \"/input/jwt/payload/email\"",
                ));
            }
        }
        Ok(())
    }
}

impl CollectorConfig {
    /// Checks `decision_log.collector`.
    fn check(&self) -> Result<(), ConfigError> {
        if self.cluster.is_empty() || self.authority.is_empty() || !self.path.starts_with('/') {
            return Err(invalid(
                "decision_log.collector",
                "needs a cluster, an authority and a path starting with /",
            ));
        }
        if self.max_batch == 0 || self.max_batch > self.max_buffer || self.max_buffer > 1_000_000 {
            return Err(invalid(
                "decision_log.collector",
                "1 <= max_batch <= max_buffer <= 1000000",
            ));
        }
        if !(4096..=1024 * 1024 * 1024).contains(&self.max_buffer_bytes) {
            return Err(invalid(
                "decision_log.collector.max_buffer_bytes",
                "must be between 4096 and 1073741824",
            ));
        }
        if !(1..=600_000).contains(&self.flush_ms) || !(10..=60_000).contains(&self.timeout_ms) {
            return Err(invalid(
                "decision_log.collector",
                "flush_ms 1-600000 and timeout_ms 10-60000",
            ));
        }
        Ok(())
    }
}
