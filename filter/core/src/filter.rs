//! One request through agentplane: strip, identify, route, decide, then
//! reply or forward with trusted headers. Every path that does not end in
//! an explicit allow ends in a local reply carrying a decision id.

use crate::audit::{self, Trail};
use crate::cache::{DecisionCache, Key};
use crate::claims::{self, ClaimsError, Identity};
use crate::config::{Config, ConfigError};
use crate::headers::{self, check_value, RequestHeaders};
use crate::host::{Host, LogLevel};
use crate::ids::DecisionIds;
use crate::input::{self, RequestFacts};
use crate::metrics::{Metrics, M};
use crate::policy::{Policy, Verdict};
use crate::secrets::{self, Lookup};
use std::cell::RefCell;

/// Response (and reply) header carrying the decision id.
pub const DECISION_ID_HEADER: &str = "x-decision-id";

/// Response (and reply) header carrying the request id, as the seed's
/// design names it.
pub const TRACE_ID_HEADER: &str = "x-mcp-trace-id";

/// Response header with the filter's own timing (`headers.metrics_header`).
pub const METRICS_HEADER: &str = "x-mcp-metrics";

/// What the proxy should do with the request after the filter ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// Forward upstream.
    Continue,
    /// A local reply was sent; stop processing.
    Replied,
    /// Allowed, waiting for secrets: the worker's root context resumes the
    /// stream (or replies 503) when they arrive.
    Paused,
}

/// The outcome of one request, for logs, metrics and the response phase.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Unique id, also sent to the client.
    pub id: String,
    /// Whether the request was forwarded.
    pub allowed: bool,
    /// The status the filter replied with (0 when forwarded).
    pub status: u16,
    /// Why; empty when allowed.
    pub reason: String,
    /// The agent id, when one was established.
    pub agent: Option<String>,
    /// The decision-log record, when this decision is logged; written by
    /// [`Filter::on_log`] with the final status.
    pub record: Option<serde_json::Value>,
    /// The request id (`x-request-id`), echoed as `x-mcp-trace-id`.
    pub request_id: String,
    /// `x-mcp-metrics` value, when `headers.metrics_header` is on.
    pub timing: Option<String>,
}

/// The configured filter: immutable config and compiled policy, shared by
/// every request on a worker.
#[derive(Debug)]
pub struct Filter {
    config: Config,
    policy: Policy,
    ids: DecisionIds,
    cache: Option<RefCell<DecisionCache<Outcome>>>,
    broker: Option<RefCell<secrets::Broker>>,
    metrics: Metrics,
    /// Broker counters already exported as metrics.
    exported: std::cell::Cell<secrets::BrokerStats>,
    shipper: Option<RefCell<audit::Shipper>>,
    /// Shipper counters (shipped, dropped) already exported.
    exported_log: std::cell::Cell<(u64, u64)>,
}

#[derive(Debug, Clone)]
struct Refusal {
    status: u16,
    error: &'static str,
    reason: String,
    headers: Vec<(String, String)>,
}

impl Refusal {
    fn new(status: u16, error: &'static str, reason: impl Into<String>) -> Self {
        Refusal {
            status,
            error,
            reason: reason.into(),
            headers: Vec::new(),
        }
    }
}

impl Filter {
    /// Parses the plugin configuration and compiles the embedded policy.
    /// `seed` feeds the decision-id generator.
    pub fn new(config_json: &[u8], seed: u64) -> Result<Filter, ConfigError> {
        let config = Config::from_json(config_json)?;
        let policy = Policy::embedded(&config.policy.entrypoint, config.policy.engine)
            .map_err(|e| ConfigError::Policy(e.to_string()))?;
        Ok(Filter::with_policy(config, policy, seed))
    }

    /// A filter over an explicitly supplied policy (tests, benchmarks).
    pub fn with_policy(config: Config, policy: Policy, seed: u64) -> Filter {
        let cache = config
            .decision_cache
            .as_ref()
            .map(|c| RefCell::new(DecisionCache::new(c)));
        let shipper = config
            .decision_log
            .collector
            .as_ref()
            .filter(|_| config.decision_log.enabled)
            .map(|c| RefCell::new(audit::Shipper::new(c.clone())));
        let broker = config
            .vault
            .as_ref()
            .filter(|_| config.resources.values().any(|r| !r.secrets.is_empty()))
            .map(|v| RefCell::new(secrets::Broker::new(v.clone(), seed)));
        Filter {
            config,
            policy,
            ids: DecisionIds::new(seed),
            cache,
            broker,
            metrics: Metrics::default(),
            exported: std::cell::Cell::new(secrets::BrokerStats::default()),
            shipper,
            exported_log: std::cell::Cell::new((0, 0)),
        }
    }

    /// The validated configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The compiled policy (backend, fallback reason).
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// Handles the request headers. On [`Flow::Replied`] the reply has been
    /// sent through the host and nothing may be forwarded.
    pub fn on_request_headers<H: Host>(&self, host: &mut H) -> (Flow, Decision) {
        let timed = self.config.headers.metrics_header;
        let t0 = if timed { host.now_ns() } else { 0 };
        // Before anything else: nothing the client says about identity survives.
        let headers = headers::strip_untrusted(host, &self.config);
        let id = self.ids.next_id();
        // Envoy's `request.id` attribute is the x-request-id header that the
        // connection manager set or kept, so the header saves a host call;
        // the attribute covers hosts that do not put it in the headers.
        let mut trail = Trail {
            request_id: headers
                .get("x-request-id")
                .map(str::to_owned)
                .or_else(|| {
                    host.property(&["request", "id"])
                        .and_then(|b| String::from_utf8(b).ok())
                })
                .unwrap_or_default(),
            ..Trail::default()
        };
        let outcome = self.decide(host, &headers, &id, &mut trail);
        let timing = timed.then(|| {
            format!(
                "filter_us={};policy_us={};cache={}",
                host.now_ns().saturating_sub(t0) / 1_000,
                trail.eval_ns.unwrap_or(0) / 1_000,
                if trail.cached { "hit" } else { "miss" }
            )
        });
        let (flow, mut decision) = match outcome {
            Ok((agent, flow)) => (
                flow,
                Decision {
                    id,
                    allowed: true,
                    status: 0,
                    reason: String::new(),
                    agent: Some(agent),
                    record: None,
                    request_id: trail.request_id.clone(),
                    timing,
                },
            ),
            Err((refusal, agent)) => {
                let body = serde_json::json!({
                    "error": refusal.error,
                    "reason": refusal.reason,
                    "decision_id": id,
                })
                .to_string();
                let mut hdrs: Vec<(&str, &str)> = vec![
                    ("content-type", "application/json"),
                    (DECISION_ID_HEADER, id.as_str()),
                ];
                if check_value(&trail.request_id, self.config.headers.max_value_bytes).is_ok()
                    && !trail.request_id.is_empty()
                {
                    hdrs.push((TRACE_ID_HEADER, trail.request_id.as_str()));
                }
                if let Some(t) = &timing {
                    hdrs.push((METRICS_HEADER, t.as_str()));
                }
                hdrs.extend(
                    refusal
                        .headers
                        .iter()
                        .map(|(k, v)| (k.as_str(), v.as_str())),
                );
                host.send_reply(refusal.status, &hdrs, body.as_bytes());
                (
                    Flow::Replied,
                    Decision {
                        id,
                        allowed: false,
                        status: refusal.status,
                        reason: refusal.reason,
                        agent,
                        record: None,
                        request_id: trail.request_id.clone(),
                        timing,
                    },
                )
            }
        };
        self.metrics
            .add(host, M::HeadersStripped, headers.stripped as u64);
        let m = match (decision.allowed, decision.status) {
            (true, _) => M::Allowed,
            (false, 401) => M::Unauthorized,
            (false, 400) => M::BadRequest,
            (false, 503) if decision.reason.starts_with("secrets_unavailable") => {
                M::SecretsUnavailable
            }
            (false, _) if decision.reason == "policy_error" => M::PolicyError,
            (false, _) => M::Denied,
        };
        self.metrics.add(host, m, 1);
        let log = &self.config.decision_log;
        if log.enabled && (!decision.allowed || audit::sampled(log, &decision.id)) {
            let facts = audit::Facts {
                decision_id: &decision.id,
                now_ns: host.now_ns(),
                entrypoint: &self.config.policy.entrypoint,
                revision: crate::bundle::REVISION,
                allowed: decision.allowed,
                reason: &decision.reason,
                status: decision.status,
                agent: decision.agent.as_deref(),
            };
            decision.record = Some(audit::record(log, &facts, &trail));
        }
        (flow, decision)
    }

    /// End of the stream: writes the decision-log record, if any, with the
    /// status the client got.
    pub fn on_log<H: Host>(&self, host: &mut H, decision: &Decision) {
        if let Some(record) = &decision.record {
            let status = host
                .property(&["response", "code"])
                .and_then(|b| <[u8; 8]>::try_from(b.as_slice()).ok())
                .and_then(|b| u16::try_from(u64::from_le_bytes(b)).ok());
            let json = audit::finish(record.clone(), status);
            host.log(LogLevel::Info, &format!("{}{json}", audit::PREFIX));
            if let Some(mut sh) = self.shipper.as_ref().and_then(|s| s.try_borrow_mut().ok()) {
                sh.push(json, host.now_ns());
            }
        }
    }

    /// With mandatory logging, whether the collector buffer has no room
    /// for this request's record.
    fn log_blocked(&self) -> bool {
        self.config.decision_log.mandatory
            && self
                .shipper
                .as_ref()
                .and_then(|s| s.try_borrow().ok())
                .is_none_or(|s| !s.has_room())
    }

    /// Adds the decision id to the upstream response of an allowed request.
    pub fn on_response_headers<H: Host>(&self, host: &mut H, decision: &Decision) {
        host.set_response_header(DECISION_ID_HEADER, &decision.id);
        if !decision.request_id.is_empty() {
            host.set_response_header(TRACE_ID_HEADER, &decision.request_id);
        }
        if let Some(t) = &decision.timing {
            host.set_response_header(METRICS_HEADER, t);
        }
    }

    fn decide<H: Host>(
        &self,
        host: &mut H,
        headers: &RequestHeaders,
        decision_id: &str,
        trail: &mut Trail,
    ) -> Result<(String, Flow), (Refusal, Option<String>)> {
        if self.log_blocked() {
            let r = Refusal::new(503, "unavailable", "decision_log_unavailable");
            return Err((r, None));
        }
        let raw = host
            .property(&["metadata"])
            .ok_or_else(|| (unauthorized(ClaimsError::Missing), None))?;
        let bad = |m: String| (Refusal::new(400, "bad_request", m), None);
        let max = self.config.headers.max_value_bytes;
        let method = headers
            .get(":method")
            .ok_or_else(|| bad("missing :method".into()))?;
        let path = headers
            .get(":path")
            .ok_or_else(|| bad("missing :path".into()))?;
        let authority = headers.get(":authority");
        let request_id = trail.request_id.clone();
        check_value(&request_id, max).map_err(|e| bad(format!("request id {e}")))?;
        let route = input::parse_route(path, &self.config).map_err(|e| bad(e.to_string()))?;
        let now = host.now_ns();
        trail.service = route.service.map(str::to_owned);

        let payload = claims::payload_from_metadata(&raw, &self.config.identity)
            .map_err(|e| (unauthorized(e), None))?;
        // The payload, not the metadata bytes: Envoy serializes protobuf
        // maps in no fixed order, so equal payloads arrive as different
        // bytes. serde_json's map is sorted, which makes this canonical.
        let canonical = self
            .cache
            .as_ref()
            .and_then(|_| serde_json::to_vec(&payload).ok());
        let key = canonical.map(|canonical| {
            let mut k = Key::with_capacity(canonical.len() + path.len() + 128);
            k.field(&canonical)
                .field(method.as_bytes())
                .field(path.as_bytes())
                .optional(authority.map(str::as_bytes));
            for name in &self.config.headers.input {
                k.optional(headers.get(name).map(str::as_bytes));
            }
            k.into_bytes()
        });
        if let (Some(cache), Some(key)) = (&self.cache, &key) {
            let hit = cache
                .try_borrow_mut()
                .ok()
                .and_then(|mut c| c.get(key, now));
            let m = if hit.is_some() {
                M::DecisionCacheHit
            } else {
                M::DecisionCacheMiss
            };
            self.metrics.add(host, m, 1);
            if let Some(outcome) = hit {
                trail.cached = true;
                trail.input.clone_from(&outcome.input);
                let who = apply(
                    host,
                    outcome,
                    &request_id,
                    self.config.identity.forward_token,
                )?;
                trail.agent_type.clone_from(&who.kind);
                trail.team.clone_from(&who.team);
                return self.secrets(host, headers, route.service, who, decision_id, trail);
            }
        }

        let identity = claims::identity(payload, &self.config.identity)
            .map_err(|e| (unauthorized(e), None))?;
        let facts = RequestFacts {
            method,
            route: &route,
            host: authority.unwrap_or_default(),
            id: &request_id,
            time_ns: now,
        };
        trail.agent_type.clone_from(&identity.agent_type);
        trail.team.clone_from(&identity.team);
        let (outcome, valid_until) = self.authorize(host, headers, identity, &facts, trail);
        if let (Some(cache), Some(key), Some(until)) = (&self.cache, key, valid_until) {
            if let Ok(mut c) = cache.try_borrow_mut() {
                c.insert(key, outcome.clone(), now, until);
            }
        }
        let who = apply(
            host,
            outcome,
            &request_id,
            self.config.identity.forward_token,
        )?;
        self.secrets(host, headers, route.service, who, decision_id, trail)
    }

    /// After an allow: injects the service's secrets from the cache, or
    /// pauses the stream until a job fetches them, or answers 503.
    fn secrets<H: Host>(
        &self,
        host: &mut H,
        headers: &RequestHeaders,
        service: Option<&str>,
        who: Who,
        decision_id: &str,
        trail: &mut Trail,
    ) -> Result<(String, Flow), (Refusal, Option<String>)> {
        let specs = &self.config.resource(service.unwrap_or("")).secrets;
        // Secret names are only for the decision log: no work otherwise.
        let names = if self.config.decision_log.enabled {
            specs.as_slice()
        } else {
            &[]
        };
        for sc in names {
            for h in [&sc.header, &sc.username_header, &sc.password_header]
                .into_iter()
                .flatten()
            {
                trail.secrets.push(h.to_ascii_lowercase());
            }
            if sc.bearer {
                trail.secrets.push("authorization".into());
            }
        }
        let Some(broker) = self.broker.as_ref().filter(|_| !specs.is_empty()) else {
            return Ok((who.agent, Flow::Continue));
        };
        let unavailable = |agent: &str, why: String| {
            let mut r = Refusal::new(503, "unavailable", format!("secrets_unavailable: {why}"));
            r.headers.clear();
            (r, Some(agent.to_string()))
        };
        let needs = secrets::plan(specs, &who.agent, who.team.as_deref(), who.kind.as_deref())
            .map_err(|e| unavailable(&who.agent, e))?;
        let jwt = headers
            .get("authorization")
            .and_then(|v| {
                v.get(..7)
                    .filter(|p| p.eq_ignore_ascii_case("bearer "))
                    .and_then(|_| v.get(7..))
            })
            .map(|t| secrets::Secret::new(t.trim()));
        let mut trace: Vec<(String, String)> = Vec::new();
        if !trail.request_id.is_empty() {
            trace.push(("x-request-id".into(), trail.request_id.clone()));
        }
        for name in ["traceparent", "tracestate"] {
            if let Some(v) = headers.get(name) {
                trace.push((name.into(), v.to_string()));
            }
        }
        let waiter = secrets::Waiter {
            stream: host.stream_id(),
            decision_id: decision_id.to_string(),
            trace,
        };
        let mut b = broker
            .try_borrow_mut()
            .map_err(|_| unavailable(&who.agent, "busy".into()))?;
        match b.request(host, &who.agent, service.unwrap_or(""), needs, jwt, waiter) {
            Lookup::Ready(set) => {
                for (k, v) in &set {
                    host.set_request_header(k, v.expose());
                }
                Ok((who.agent, Flow::Continue))
            }
            Lookup::Pending => Ok((who.agent, Flow::Paused)),
            Lookup::Failed(why) => Err(unavailable(&who.agent, why)),
        }
    }

    /// Defines the filter's stats (once per VM, from the root context).
    pub fn define_metrics<H: Host>(&self, host: &mut H) {
        self.metrics.define(host);
    }

    /// Whether any service has secrets (the workers then share claims).
    pub fn has_secrets(&self) -> bool {
        self.broker.is_some()
    }

    /// Whether the root context must tick: secret fetches or a decision-log
    /// collector.
    pub fn needs_tick(&self) -> bool {
        self.broker.is_some() || self.shipper.is_some()
    }

    /// Root context tick: dispatches due secret fetches. Returns whether
    /// work is pending (the host may keep ticking either way).
    pub fn on_tick<H: Host>(&self, host: &mut H) -> bool {
        if let Some(mut sh) = self.shipper.as_ref().and_then(|s| s.try_borrow_mut().ok()) {
            sh.on_tick(host);
            let (was_s, was_d) = self.exported_log.replace((sh.shipped, sh.dropped));
            self.metrics
                .add(host, M::LogShipped, sh.shipped.saturating_sub(was_s));
            self.metrics
                .add(host, M::LogDropped, sh.dropped.saturating_sub(was_d));
        }
        let (wants, now) = match self.broker.as_ref().and_then(|b| b.try_borrow_mut().ok()) {
            Some(mut b) => {
                b.on_tick(host);
                (b.wants_tick(), b.stats)
            }
            None => return false,
        };
        let was = self.exported.replace(now);
        self.metrics
            .add(host, M::SecretsCacheHit, now.hits.saturating_sub(was.hits));
        self.metrics
            .add(host, M::VaultLogins, now.logins.saturating_sub(was.logins));
        self.metrics
            .add(host, M::VaultReads, now.reads.saturating_sub(was.reads));
        self.metrics.add(
            host,
            M::VaultFailures,
            now.failures.saturating_sub(was.failures),
        );
        wants
    }

    /// Root context: a callout answered (`status` `None` when it failed;
    /// `body` `None` when it was too large).
    pub fn on_callout_response<H: Host>(
        &self,
        host: &mut H,
        token: u32,
        status: Option<u16>,
        body: Option<&[u8]>,
    ) {
        let now = host.now_ns();
        if let Some(mut sh) = self.shipper.as_ref().and_then(|s| s.try_borrow_mut().ok()) {
            if sh.on_response(token, status, now) {
                return;
            }
        }
        if let Some(mut b) = self.broker.as_ref().and_then(|b| b.try_borrow_mut().ok()) {
            if !b.on_response(host, token, status, body) {
                host.log(
                    LogLevel::Debug,
                    &format!("agentplane: stale callout {token}"),
                );
            }
            // Steps that can go at once (the next read) go now.
            b.on_tick(host);
        }
    }

    /// A stream ended (possibly while waiting for secrets).
    pub fn on_stream_done(&self, stream: u32) {
        if let Some(mut b) = self.broker.as_ref().and_then(|b| b.try_borrow_mut().ok()) {
            b.forget_stream(stream);
        }
    }

    /// Largest callout response the filter reads.
    pub fn max_callout_bytes(&self) -> usize {
        self.config
            .vault
            .as_ref()
            .map_or(0, |v| v.max_response_bytes)
    }

    /// Secrets counters, when secrets are configured.
    pub fn secrets_stats(&self) -> Option<secrets::BrokerStats> {
        Some(self.broker.as_ref()?.try_borrow().ok()?.stats)
    }

    /// Decides for an identified request. Returns the outcome and, when the
    /// policy said so, until when the same request gets the same outcome.
    fn authorize<H: Host>(
        &self,
        host: &mut H,
        headers: &RequestHeaders,
        identity: Identity,
        facts: &RequestFacts<'_>,
        trail: &mut Trail,
    ) -> (Outcome, Option<u64>) {
        let refuse = |agent: &str, r: Refusal| {
            (
                Outcome {
                    agent: agent.to_string(),
                    result: Err(r),
                    input: None,
                },
                None,
            )
        };
        let max = self.config.headers.max_value_bytes;
        let mut trusted = Vec::with_capacity(3);
        for (name, value) in [
            ("x-agent-id", Some(&identity.id)),
            ("x-agent-type", identity.agent_type.as_ref()),
            ("x-agent-team", identity.team.as_ref()),
        ] {
            if let Some(v) = value {
                if let Err(e) = check_value(v, max) {
                    let r = Refusal::new(403, "forbidden", format!("identity for {name} {e}"));
                    return refuse(&identity.id, r);
                }
                trusted.push((name.to_string(), v.clone()));
            }
        }
        let doc = input::build(headers, &self.config, &identity, facts);
        let logging = self.config.decision_log.enabled;
        let input = logging.then(|| doc.clone());
        trail.input.clone_from(&input);
        let t0 = host.now_ns();
        let evaluated = self.policy.evaluate(doc);
        let eval_ns = host.now_ns().saturating_sub(t0);
        trail.eval_ns = Some(eval_ns);
        self.metrics.record(host, M::PolicyEvalUs, eval_ns / 1_000);
        let verdict = match evaluated {
            Ok(v) => v,
            Err(e) => {
                host.log(LogLevel::Warn, &format!("agentplane: {e}"));
                return refuse(&identity.id, Refusal::new(403, "forbidden", "policy_error"));
            }
        };
        let Verdict {
            allowed,
            reasons,
            status,
            headers: extra,
            valid_until_ns,
        } = verdict;
        for (k, v) in &extra {
            if k.is_empty() || k.starts_with(':') || check_value(v, max).is_err() {
                host.log(
                    LogLevel::Warn,
                    &format!("agentplane: policy header {k:?} rejected"),
                );
                return refuse(&identity.id, Refusal::new(403, "forbidden", "policy_error"));
            }
        }
        let result = if allowed {
            Ok(Allowed { trusted, extra })
        } else {
            let reason = if reasons.is_empty() {
                "no policy rule allowed the request".to_string()
            } else {
                reasons.join("; ")
            };
            let mut r = Refusal::new(status.unwrap_or(403), "forbidden", reason);
            r.headers = extra;
            Err(r)
        };
        (
            Outcome {
                agent: identity.id,
                result,
                input,
            },
            valid_until_ns,
        )
    }

    /// Decision-cache counters `(hits, misses, entries)`, when the cache is on.
    pub fn cache_stats(&self) -> Option<(u64, u64, usize)> {
        let c = self.cache.as_ref()?.try_borrow().ok()?;
        Some((c.hits, c.misses, c.len()))
    }
}

/// What to do with an identified request: reusable as is for an equal
/// request (the decision cache stores these).
#[derive(Debug, Clone)]
struct Outcome {
    agent: String,
    result: Result<Allowed, Refusal>,
    /// The input it was decided on, kept for the decision log.
    input: Option<regorus::Value>,
}

#[derive(Debug, Clone)]
struct Allowed {
    /// `x-agent-*` headers, checked.
    trusted: Vec<(String, String)>,
    /// Headers a response-object policy added, checked.
    extra: Vec<(String, String)>,
}

/// Who an allowed request is from, for secret paths.
struct Who {
    agent: String,
    team: Option<String>,
    kind: Option<String>,
}

fn apply<H: Host>(
    host: &mut H,
    outcome: Outcome,
    request_id: &str,
    forward_token: bool,
) -> Result<Who, (Refusal, Option<String>)> {
    match outcome.result {
        Ok(allowed) => {
            if !forward_token {
                host.remove_request_header("authorization");
            }
            for (name, value) in &allowed.trusted {
                host.set_request_header(name, value);
            }
            if !request_id.is_empty() {
                host.set_request_header("x-request-id", request_id);
            }
            for (k, v) in &allowed.extra {
                host.set_request_header(k, v);
            }
            let find = |n: &str| {
                allowed
                    .trusted
                    .iter()
                    .find(|(k, _)| k == n)
                    .map(|(_, v)| v.clone())
            };
            Ok(Who {
                team: find("x-agent-team"),
                kind: find("x-agent-type"),
                agent: outcome.agent,
            })
        }
        Err(r) => Err((r, Some(outcome.agent))),
    }
}

fn unauthorized(e: ClaimsError) -> Refusal {
    let challenge = match e {
        ClaimsError::Missing => r#"Bearer realm="agentplane""#,
        _ => r#"Bearer realm="agentplane", error="invalid_token""#,
    };
    let mut r = Refusal::new(401, "unauthorized", e.to_string());
    r.headers
        .push(("www-authenticate".into(), challenge.into()));
    r
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use crate::host::MockHost;
    use crate::pbstruct;
    use serde_json::{json, Value};
    #[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    const NOON: u64 = 1_746_273_600_000_000_000;
    const EARLY: u64 = 1_746_252_000_000_000_000;

    const CONFIG: &str = r#"{"resources": {
        "hello-skill": {"type": "skill", "metadata": {"team": "platform", "environment": "production"}},
        "tickets": {"type": "data", "metadata": {"team": "customer-success", "environment": "production"}}
    }}"#;

    fn filter() -> Filter {
        Filter::new(CONFIG.as_bytes(), 7).unwrap()
    }

    fn claims(extra: Value) -> Value {
        let mut c = json!({
            "sub": "support-triage@clients",
            "exp": 1_746_277_200,
            "permissions": ["skills:invoke", "data:read", "data:write"],
            "https://mcp.example.com/agent_type": "support",
            "https://mcp.example.com/team": "customer-success",
            "https://mcp.example.com/environment": "production",
        });
        for (k, v) in extra.as_object().unwrap() {
            c[k] = v.clone();
        }
        c
    }

    fn request(method: &str, path: &str, payload: Option<Value>) -> MockHost {
        let mut h = MockHost::new()
            .at(NOON)
            .with_header(":method", method)
            .with_header(":path", path)
            .with_header(":authority", "localhost:15000")
            .with_property(&["request", "id"], "req-123");
        if let Some(p) = payload {
            let mut ns = serde_json::Map::new();
            ns.insert("jwt_payload".into(), p);
            h = h.with_property(
                &["metadata"],
                pbstruct::encode_metadata(&[("envoy.filters.http.jwt_authn", &ns)]),
            );
        }
        h
    }

    fn body(h: &MockHost) -> Value {
        serde_json::from_slice(&h.reply.as_ref().expect("a reply").body).unwrap()
    }

    fn reply_header<'a>(h: &'a MockHost, name: &str) -> Option<&'a str> {
        h.reply
            .as_ref()?
            .headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    #[test]
    fn allow_sets_trusted_headers() {
        let f = filter();
        let mut h = request("POST", "/mcp://hello-skill/greet", Some(claims(json!({}))))
            .with_header("X-Agent-Id", "root@clients")
            .with_header("x-agent-team", "platform");
        let (flow, d) = f.on_request_headers(&mut h);
        assert_eq!(flow, Flow::Continue, "{:?}", h.reply);
        assert!(d.allowed && h.reply.is_none());
        assert_eq!(h.header_values("x-agent-id"), ["support-triage@clients"]);
        assert_eq!(h.header_values("x-agent-team"), ["customer-success"]);
        assert_eq!(h.header_values("x-agent-type"), ["support"]);
        assert_eq!(h.header_values("x-request-id"), ["req-123"]);
        f.on_response_headers(&mut h, &d);
        assert_eq!(
            h.response_headers,
            [
                (DECISION_ID_HEADER.to_string(), d.id.clone()),
                (TRACE_ID_HEADER.to_string(), "req-123".to_string())
            ]
        );
    }

    #[test]
    fn no_identity_is_401_with_challenge() {
        let f = filter();
        let mut h =
            request("POST", "/mcp://hello-skill/greet", None).with_header("x-agent-id", "forged");
        let (flow, d) = f.on_request_headers(&mut h);
        assert_eq!(flow, Flow::Replied);
        assert_eq!(h.reply.as_ref().unwrap().status, 401);
        assert_eq!(
            reply_header(&h, "www-authenticate"),
            Some(r#"Bearer realm="agentplane""#)
        );
        assert_eq!(body(&h)["decision_id"], d.id);
        assert_eq!(reply_header(&h, DECISION_ID_HEADER), Some(d.id.as_str()));
        assert!(h.header_values("x-agent-id").is_empty());
    }

    #[test]
    fn wrong_claim_types_are_401_invalid_token() {
        let f = filter();
        let mut h = request(
            "POST",
            "/mcp://hello-skill/greet",
            Some(claims(json!({"permissions": "all"}))),
        );
        f.on_request_headers(&mut h);
        assert_eq!(h.reply.as_ref().unwrap().status, 401);
        assert!(reply_header(&h, "www-authenticate")
            .unwrap()
            .contains("invalid_token"));
        assert_eq!(
            body(&h)["reason"],
            "claim \"permissions\" must be an array of strings"
        );
    }

    #[test]
    fn header_injection_in_claims_is_denied() {
        let f = filter();
        for (claim, name) in [
            ("https://mcp.example.com/team", "x-agent-team"),
            ("sub", "x-agent-id"),
        ] {
            let mut h = request(
                "POST",
                "/mcp://hello-skill/greet",
                Some(claims(json!({ claim: "x\r\nx-agent-id: root" }))),
            );
            let (flow, _) = f.on_request_headers(&mut h);
            assert_eq!(flow, Flow::Replied);
            assert_eq!(h.reply.as_ref().unwrap().status, 403);
            assert_eq!(
                body(&h)["reason"],
                format!("identity for {name} contains a control character")
            );
        }
        let mut h = request(
            "POST",
            "/mcp://hello-skill/greet",
            Some(claims(json!({"sub": "a".repeat(300)}))),
        );
        f.on_request_headers(&mut h);
        assert_eq!(
            body(&h)["reason"],
            "identity for x-agent-id is 300 bytes, over 256"
        );
    }

    #[test]
    fn policy_denies_with_reasons() {
        let f = filter();
        let mut h = request(
            "POST",
            "/mcp://hello-skill/greet",
            Some(claims(json!({"permissions": ["data:read"]}))),
        );
        let (_, d) = f.on_request_headers(&mut h);
        assert_eq!(h.reply.as_ref().unwrap().status, 403);
        assert_eq!(
            body(&h)["reason"],
            "missing permission skills:invoke for action invoke_skill"
        );
        assert_eq!(
            d.reason,
            "missing permission skills:invoke for action invoke_skill"
        );
        assert_eq!(d.agent.as_deref(), Some("support-triage@clients"));
        assert!(
            h.header_values("x-agent-id").is_empty(),
            "nothing set on deny"
        );
    }

    #[test]
    fn unknown_service_is_denied() {
        let f = filter();
        let mut h = request("GET", "/nowhere/x", Some(claims(json!({}))));
        f.on_request_headers(&mut h);
        assert_eq!(h.reply.as_ref().unwrap().status, 403);
        let reason = body(&h)["reason"].as_str().unwrap().to_string();
        assert!(
            reason.contains("service nowhere is not registered"),
            "{reason}"
        );
    }

    #[test]
    fn ambiguous_or_missing_path_is_400() {
        let f = filter();
        let mut h = request(
            "GET",
            "/mcp://hello-skill/../tickets",
            Some(claims(json!({}))),
        );
        f.on_request_headers(&mut h);
        assert_eq!(h.reply.as_ref().unwrap().status, 400);
        let mut h = MockHost::new().with_property(
            &["metadata"],
            pbstruct::encode_metadata(&[(
                "envoy.filters.http.jwt_authn",
                json!({"jwt_payload": claims(json!({}))})
                    .as_object()
                    .unwrap(),
            )]),
        );
        f.on_request_headers(&mut h);
        assert_eq!(h.reply.as_ref().unwrap().status, 400);
    }

    #[test]
    fn clock_drives_off_hours_rule() {
        let f = filter();
        let mut h = request("DELETE", "/tickets/42", Some(claims(json!({}))));
        assert_eq!(f.on_request_headers(&mut h).0, Flow::Continue);
        let mut h = request("DELETE", "/tickets/42", Some(claims(json!({})))).at(EARLY);
        assert_eq!(f.on_request_headers(&mut h).0, Flow::Replied);
        assert_eq!(
            body(&h)["reason"],
            "DELETE is not permitted outside business hours (9:00-17:00 UTC)"
        );
    }

    #[test]
    fn policy_errors_fail_closed() {
        let config = Config::from_json(b"").unwrap();
        let policy = Policy::compile(
            // A non-boolean `allow` is an error on every engine.
            &[("p.rego", "package t\nallow := input.agent.id\n")],
            "{}",
            "data.t",
        )
        .unwrap();
        let f = Filter::with_policy(config, policy, 1);
        let mut h = request("GET", "/svc/x", Some(claims(json!({}))));
        let (flow, d) = f.on_request_headers(&mut h);
        assert_eq!(flow, Flow::Replied);
        assert_eq!(h.reply.as_ref().unwrap().status, 403);
        assert_eq!(d.reason, "policy_error");
        assert!(h
            .logs
            .borrow()
            .iter()
            .any(|(l, m)| *l == LogLevel::Warn && m.contains("policy")));
    }

    #[test]
    fn response_object_shapes_the_reply() {
        let config =
            Config::from_json(br#"{"policy": {"entrypoint": "data.t.decision"}}"#).unwrap();
        let src = r#"package t
decision := {"allowed": false, "status": 429, "reason": "slow down", "headers": {"retry-after": "5"}} if input.agent.team == "customer-success"
decision := {"allowed": true, "headers": {"x-policy-tier": "gold"}} if input.agent.team != "customer-success"
"#;
        let policy = Policy::compile(&[("p.rego", src)], "{}", "data.t.decision").unwrap();
        let f = Filter::with_policy(config, policy, 1);
        let mut h = request("GET", "/svc/x", Some(claims(json!({}))));
        f.on_request_headers(&mut h);
        assert_eq!(h.reply.as_ref().unwrap().status, 429);
        assert_eq!(reply_header(&h, "retry-after"), Some("5"));
        assert_eq!(body(&h)["reason"], "slow down");
        let mut h = request(
            "GET",
            "/svc/x",
            Some(claims(json!({"https://mcp.example.com/team": "ml"}))),
        );
        assert_eq!(f.on_request_headers(&mut h).0, Flow::Continue);
        assert_eq!(h.header_values("x-policy-tier"), ["gold"]);
    }

    #[test]
    fn decision_ids_are_unique_per_request() {
        let f = filter();
        let mut a = request("POST", "/mcp://hello-skill/x", None);
        let mut b = request("POST", "/mcp://hello-skill/x", None);
        assert_ne!(
            f.on_request_headers(&mut a).1.id,
            f.on_request_headers(&mut b).1.id
        );
    }

    #[test]
    fn bad_config_and_bad_entrypoint_refuse_to_start() {
        let e = Filter::new(br#"{"policy": {"entrypoint": "data.nope"}}"#, 1).unwrap_err();
        assert!(e.to_string().contains("data.nope"), "{e}");
        let e = Filter::new(br#"{"resources": []}"#, 1).unwrap_err();
        assert!(e.to_string().contains("invalid type"), "{e}");
    }

    fn cached_filter() -> Filter {
        let mut cfg: Value = serde_json::from_str(CONFIG).unwrap();
        cfg["decision_cache"] = json!({"max_entries": 16});
        Filter::new(cfg.to_string().as_bytes(), 7).unwrap()
    }

    const HOUR: u64 = 3_600_000_000_000;

    #[test]
    fn cache_reuses_decisions_for_equal_requests_only() {
        let f = cached_filter();
        let run = |path: &str, payload: Value, ua: Option<&str>, rid: &str| {
            let mut h = request("POST", path, Some(payload))
                .with_property(&["request", "id"], rid)
                .with_header("x-agent-team", "forged");
            if let Some(ua) = ua {
                h = h.with_header("user-agent", ua);
            }
            let (flow, d) = f.on_request_headers(&mut h);
            (flow, d, h)
        };
        let (flow, d1, _) = run("/mcp://hello-skill/greet", claims(json!({})), None, "r1");
        assert_eq!(flow, Flow::Continue);
        assert_eq!(f.cache_stats(), Some((0, 1, 1)));
        let (flow, d2, h) = run("/mcp://hello-skill/greet", claims(json!({})), None, "r2");
        assert_eq!(flow, Flow::Continue);
        assert_eq!(f.cache_stats(), Some((1, 1, 1)), "second request is a hit");
        assert_ne!(d1.id, d2.id, "every request gets its own decision id");
        assert_eq!(h.header_values("x-agent-team"), ["customer-success"]);
        assert_eq!(h.header_values("x-agent-id"), ["support-triage@clients"]);
        assert_eq!(h.header_values("x-request-id"), ["r2"]);
        // Anything the input depends on changes the key.
        run("/mcp://hello-skill/other", claims(json!({})), None, "r3");
        run(
            "/mcp://hello-skill/greet",
            claims(json!({"sub": "other@clients"})),
            None,
            "r4",
        );
        run(
            "/mcp://hello-skill/greet",
            claims(json!({})),
            Some("x"),
            "r5",
        );
        assert_eq!(f.cache_stats(), Some((1, 4, 4)));
        // A cached deny is still a deny, with its reason and a fresh id.
        let no_perm = claims(json!({"permissions": ["data:read"]}));
        let (_, d6, _) = run("/mcp://hello-skill/greet", no_perm.clone(), None, "r6");
        let (flow, d7, h) = run("/mcp://hello-skill/greet", no_perm, None, "r7");
        assert_eq!(f.cache_stats(), Some((2, 5, 5)));
        assert_eq!(flow, Flow::Replied);
        assert!(!d7.allowed && d7.reason == d6.reason && d7.id != d6.id);
        assert_eq!(body(&h)["decision_id"], d7.id);
        assert!(h.header_values("x-agent-team").is_empty());
    }

    #[test]
    fn cache_never_outlives_the_hour_or_the_token() {
        // DELETE on data is allowed in business hours only (9-17 UTC).
        let f = cached_filter();
        let day = NOON - 12 * HOUR;
        let at = |t: u64, exp_s: u64| {
            let mut h = request(
                "DELETE",
                "/mcp://tickets/1",
                Some(claims(json!({"exp": exp_s}))),
            )
            .at(t);
            f.on_request_headers(&mut h).1
        };
        let late = day + 17 * HOUR;
        assert!(at(late - 1, 4_000_000_000).allowed);
        assert!(at(late - 1, 4_000_000_000).allowed);
        assert_eq!(f.cache_stats().unwrap().0, 1);
        let d = at(late, 4_000_000_000);
        assert!(!d.allowed, "17:00 is off hours, whatever the cache held");
        assert!(d.reason.contains("outside business hours"), "{}", d.reason);
        // Token expiry inside the hour.
        let exp = (NOON + 10 * 60 * 1_000_000_000) / 1_000_000_000;
        assert!(at(NOON, exp).allowed);
        assert!(at(exp * 1_000_000_000 - 1, exp).allowed);
        let d = at(exp * 1_000_000_000, exp);
        assert!(!d.allowed && d.reason.contains("expired"), "{}", d.reason);
    }

    #[test]
    fn cache_ignores_policies_that_do_not_say_how_long_they_hold() {
        let mut cfg: Value = serde_json::from_str(CONFIG).unwrap();
        cfg["decision_cache"] = json!({});
        let config = Config::from_json(cfg.to_string().as_bytes()).unwrap();
        let policy = Policy::compile(
            &[(
                "p.rego",
                "package p\nallow if input.agent.team == \"customer-success\"\n",
            )],
            "{}",
            "data.p",
        )
        .unwrap();
        let f = Filter::with_policy(config, policy, 1);
        for _ in 0..3 {
            let mut h = request("POST", "/mcp://hello-skill/greet", Some(claims(json!({}))));
            assert!(f.on_request_headers(&mut h).1.allowed);
        }
        assert_eq!(f.cache_stats(), Some((0, 3, 0)));
    }

    /// A length-delimited protobuf field (for hand-built metadata).
    fn pb_field(out: &mut Vec<u8>, field: u8, bytes: &[u8]) {
        out.push((field << 3) | 2);
        let mut n = bytes.len();
        loop {
            let b = (n & 0x7f) as u8;
            n >>= 7;
            if n == 0 {
                out.push(b);
                break;
            }
            out.push(b | 0x80);
        }
        out.extend_from_slice(bytes);
    }

    #[test]
    fn cache_key_ignores_protobuf_map_order() {
        // Envoy serializes Struct maps in no fixed order: the same payload
        // must still hit.
        let f = filter();
        let payload = claims(json!({}));
        let fields: Vec<(String, Value)> =
            payload.as_object().unwrap().clone().into_iter().collect();
        let metadata = |reverse: bool| {
            let mut st = Vec::new();
            let mut order: Vec<_> = fields.iter().collect();
            if reverse {
                order.reverse();
            }
            for (k, v) in order {
                let mut one = serde_json::Map::new();
                one.insert(k.clone(), v.clone());
                st.extend(pbstruct::encode_struct(&one));
            }
            // {"jwt_payload": <struct>} as a Struct, then the Metadata entry.
            let mut value = Vec::new();
            pb_field(&mut value, 5, &st);
            let mut entry = Vec::new();
            pb_field(&mut entry, 1, b"jwt_payload");
            pb_field(&mut entry, 2, &value);
            let mut ns = Vec::new();
            pb_field(&mut ns, 1, &entry);
            let mut md_entry = Vec::new();
            pb_field(&mut md_entry, 1, b"envoy.filters.http.jwt_authn");
            pb_field(&mut md_entry, 2, &ns);
            let mut md = Vec::new();
            pb_field(&mut md, 1, &md_entry);
            md
        };
        assert_ne!(metadata(false), metadata(true));
        for reverse in [false, true] {
            let mut h = request("POST", "/mcp://hello-skill/greet", None)
                .with_property(&["metadata"], metadata(reverse));
            assert!(f.on_request_headers(&mut h).1.allowed, "{:?}", h.reply);
        }
        assert_eq!(f.cache_stats(), Some((1, 1, 1)));
    }

    fn secrets_filter() -> Filter {
        let cfg = json!({
            "vault": {"cluster": "vault", "role": "agent"},
            "resources": {
                "hello-skill": {"type": "skill", "metadata": {"team": "platform", "environment": "production"},
                    "secrets": [{"kv": "secret/data/mcp/agents/{agent}/credentials", "field": "api_key", "header": "x-api-key"}]},
                "tickets": {"type": "data", "metadata": {"team": "customer-success", "environment": "production"}}
            }
        });
        Filter::new(cfg.to_string().as_bytes(), 7).unwrap()
    }

    #[test]
    fn allowed_requests_wait_for_their_secrets_denied_ones_fetch_nothing() {
        let f = secrets_filter();
        assert!(f.has_secrets());
        // Denied (missing permission): no callout, ever.
        let mut h = request(
            "POST",
            "/mcp://hello-skill/greet",
            Some(claims(json!({"permissions": []}))),
        )
        .with_header("authorization", "Bearer the.agent.jwt");
        assert_eq!(f.on_request_headers(&mut h).0, Flow::Replied);
        f.on_tick(&mut h);
        assert!(h.dispatched.is_empty());

        // Allowed: paused; the root logs in with the agent's JWT, reads, resumes.
        let mut h = request("POST", "/mcp://hello-skill/greet", Some(claims(json!({}))))
            .with_header("authorization", "Bearer the.agent.jwt");
        h.stream = 42;
        let (flow, d) = f.on_request_headers(&mut h);
        assert_eq!(flow, Flow::Paused);
        assert!(d.allowed);
        assert!(
            h.header_values("authorization").is_empty(),
            "agent JWT not forwarded"
        );
        assert_eq!(h.header_values("x-agent-id"), ["support-triage@clients"]);
        let mut root = MockHost::new();
        f.on_tick(&mut root);
        assert_eq!(root.dispatched.len(), 1);
        let login: Value =
            serde_json::from_slice(root.dispatched[0].body.as_ref().unwrap()).unwrap();
        assert_eq!(login["jwt"], "the.agent.jwt");
        let t = root.dispatched[0].token;
        f.on_callout_response(
            &mut root,
            t,
            Some(200),
            Some(br#"{"auth":{"client_token":"s.x","lease_duration":600}}"#),
        );
        // The read goes out at once (no need to wait for the next tick).
        assert_eq!(root.dispatched.len(), 2);
        let t = root.dispatched[1].token;
        f.on_callout_response(
            &mut root,
            t,
            Some(200),
            Some(br#"{"data":{"data":{"api_key":"k-123"}}}"#),
        );
        assert_eq!(
            root.resumed,
            [(42, vec![("x-api-key".to_string(), "k-123".to_string())])]
        );

        // Next request: straight from the cache, not paused.
        let mut h = request("POST", "/mcp://hello-skill/greet", Some(claims(json!({}))))
            .with_header("authorization", "Bearer the.agent.jwt");
        assert_eq!(f.on_request_headers(&mut h).0, Flow::Continue);
        assert_eq!(h.header_values("x-api-key"), ["k-123"]);

        // Services without secrets never pause.
        let mut h = request("GET", "/tickets/1", Some(claims(json!({}))));
        assert_eq!(f.on_request_headers(&mut h).0, Flow::Continue);
        assert_eq!(f.secrets_stats().unwrap().logins, 1);
    }

    #[test]
    fn secrets_without_a_token_or_vault_config_fail_closed() {
        let f = secrets_filter();
        let mut h = request("POST", "/mcp://hello-skill/greet", Some(claims(json!({}))));
        let (flow, d) = f.on_request_headers(&mut h);
        assert_eq!(flow, Flow::Replied);
        assert_eq!((d.status, h.reply.as_ref().unwrap().status), (503, 503));
        assert_eq!(
            body(&h)["reason"],
            "secrets_unavailable: no bearer token to log in to Vault with"
        );
        assert_eq!(body(&h)["error"], "unavailable");

        let e = Filter::new(
            br#"{"resources": {"s": {"type": "skill", "secrets": [{"kv": "secret/data/x", "field": "k", "header": "x-k"}]}}}"#,
            1,
        )
        .unwrap_err();
        assert!(
            e.to_string().contains("secrets need a `vault` section"),
            "{e}"
        );
        for (bad, want) in [
            (
                json!({"kv": "secret/data/{agentt}/x", "field": "k", "header": "x-k"}),
                "placeholders",
            ),
            (
                json!({"kv": "../x", "field": "k", "header": "x-k"}),
                "relative Vault path",
            ),
            (json!({"kv": "secret/data/x", "header": "x-k"}), "field"),
            (
                json!({"kv": "secret/data/x", "field": "k", "header": "x-agent-id"}),
                "sets itself",
            ),
            (
                json!({"kv": "secret/data/x", "field": "k", "header": "x-k", "bearer": true}),
                "not both",
            ),
            (
                json!({"database": "database/creds/r", "username_header": "x-u"}),
                "password_header",
            ),
            (json!({"field": "k"}), "exactly one of kv and database"),
        ] {
            let cfg = json!({"vault": {}, "resources": {"s": {"type": "skill", "secrets": [bad]}}});
            let e = Filter::new(cfg.to_string().as_bytes(), 1).unwrap_err();
            assert!(e.to_string().contains(want), "{e} (wanted {want})");
        }
    }

    fn logged_filter(extra: Value) -> Filter {
        let mut cfg: Value = serde_json::from_str(CONFIG).unwrap();
        cfg["decision_log"] = extra;
        Filter::new(cfg.to_string().as_bytes(), 7).unwrap()
    }

    fn log_lines(h: &MockHost) -> Vec<Value> {
        h.logs
            .borrow()
            .iter()
            .filter_map(|(_, l)| l.strip_prefix(crate::audit::PREFIX))
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    #[test]
    fn decisions_are_logged_in_opa_shape_without_credentials() {
        let f = logged_filter(json!({"enabled": true, "mask": ["/input/jwt/payload/email"]}));
        let canary_jwt = "Bearer canary-jwt-0a1b2c";
        let mut h = request(
            "POST",
            "/mcp://hello-skill/greet",
            Some(claims(json!({"email": "canary@x.org"}))),
        )
        .with_header("authorization", canary_jwt)
        .with_header("cookie", "session=canary-cookie");
        let (_, d) = f.on_request_headers(&mut h);
        assert!(d.allowed);
        h = h.with_property(&["response", "code"], 201u64.to_le_bytes().to_vec());
        f.on_log(&mut h, &d);
        let all: String = h.logs.borrow().iter().map(|(_, l)| l.clone()).collect();
        assert!(!all.contains("canary"), "{all}");
        let recs = log_lines(&h);
        assert_eq!(recs.len(), 1);
        let r = &recs[0];
        assert_eq!(r["decision_id"], d.id);
        assert_eq!(r["path"], "mcp/authz");
        assert_eq!(r["result"]["allowed"], true);
        assert_eq!(r["status"], 201, "upstream's status");
        assert_eq!(r["agent"]["id"], "support-triage@clients");
        assert_eq!(r["agent"]["team"], "customer-success");
        assert_eq!(r["resource"], "hello-skill");
        assert_eq!(r["input"]["resource"]["id"], "hello-skill");
        assert_eq!(r["input"]["request"]["id"], "req-123");
        assert!(
            r["input"]["jwt"]["payload"].get("email").is_none(),
            "masked"
        );
        assert!(r["metrics"]["timer_rego_query_eval_ns"].as_u64().is_some());
        assert_eq!(r["labels"]["policy_revision"], crate::bundle::REVISION);
        assert_eq!(r["cached"], false);

        // The same request again: a cache hit, still logged with its input.
        let mut h = request(
            "POST",
            "/mcp://hello-skill/greet",
            Some(claims(json!({"email": "canary@x.org"}))),
        )
        .with_property(&["request", "id"], "req-456");
        let (_, d) = f.on_request_headers(&mut h);
        f.on_log(&mut h, &d);
        let r = &log_lines(&h)[0];
        assert_eq!(r["cached"], true);
        assert_eq!(r["input"]["request"]["id"], "req-456");
        assert!(r["metrics"].get("timer_rego_query_eval_ns").is_none());
    }

    #[test]
    fn denies_are_always_logged_allows_sampled() {
        let f = logged_filter(json!({"enabled": true, "sample_allowed": 0.0}));
        let mut h = request("POST", "/mcp://hello-skill/greet", Some(claims(json!({}))));
        let (_, d) = f.on_request_headers(&mut h);
        f.on_log(&mut h, &d);
        assert!(d.allowed && log_lines(&h).is_empty());
        let mut h = request(
            "POST",
            "/mcp://hello-skill/greet",
            Some(claims(json!({"permissions": []}))),
        );
        let (_, d) = f.on_request_headers(&mut h);
        f.on_log(&mut h, &d);
        let r = &log_lines(&h)[0];
        assert_eq!(r["result"]["allowed"], false);
        assert_eq!(r["status"], 403);
        assert_eq!(
            r["result"]["reasons"][0],
            "missing permission skills:invoke for action invoke_skill"
        );
        // No identity: still a record.
        let mut h = request("POST", "/mcp://hello-skill/greet", None);
        let (_, d) = f.on_request_headers(&mut h);
        f.on_log(&mut h, &d);
        assert_eq!(log_lines(&h)[0]["status"], 401);
        // Off by default.
        let plain = filter();
        let mut h = request("POST", "/mcp://hello-skill/greet", None);
        let (_, d) = plain.on_request_headers(&mut h);
        plain.on_log(&mut h, &d);
        assert!(d.record.is_none() && log_lines(&h).is_empty());
    }

    #[test]
    fn counters_move_exactly_with_the_requests() {
        let f = filter();
        let mut totals = std::collections::BTreeMap::new();
        let mut run = |mut h: MockHost| {
            f.define_metrics(&mut h);
            f.on_request_headers(&mut h);
            for (k, v) in &h.metrics {
                *totals.entry(k.clone()).or_insert(0u64) += v;
            }
        };
        for _ in 0..3 {
            run(
                request("POST", "/mcp://hello-skill/greet", Some(claims(json!({}))))
                    .with_header("x-agent-id", "forged"),
            );
        }
        run(request(
            "POST",
            "/mcp://hello-skill/greet",
            Some(claims(json!({"permissions": []}))),
        ));
        run(request("POST", "/mcp://hello-skill/greet", None));
        run(request(
            "POST",
            "/mcp://hello-skill/../x",
            Some(claims(json!({}))),
        ));
        let get = |k: &str| totals.get(k).copied().unwrap_or(0);
        assert_eq!(get("agentplane.decisions.allowed"), 3);
        assert_eq!(get("agentplane.decisions.denied"), 1);
        assert_eq!(get("agentplane.decisions.unauthorized"), 1);
        assert_eq!(get("agentplane.decisions.bad_request"), 1);
        assert_eq!(get("agentplane.headers.stripped"), 3);
        assert_eq!(get("agentplane.decision_cache.miss"), 2);
        assert_eq!(get("agentplane.decision_cache.hit"), 2);
    }

    #[test]
    fn mandatory_logging_denies_when_records_cannot_be_handed_over() {
        let f = logged_filter(json!({"enabled": true, "mandatory": true,
            "collector": {"cluster": "logs", "max_batch": 1, "max_buffer": 2}}));
        assert!(f.needs_tick());
        for _ in 0..2 {
            let mut h = request("POST", "/mcp://hello-skill/greet", Some(claims(json!({}))));
            let (_, d) = f.on_request_headers(&mut h);
            assert!(d.allowed);
            f.on_log(&mut h, &d);
        }
        // The collector never answered: the buffer is full, requests deny.
        let mut h = request("POST", "/mcp://hello-skill/greet", Some(claims(json!({}))));
        let (flow, d) = f.on_request_headers(&mut h);
        assert_eq!(flow, Flow::Replied);
        assert_eq!(
            (d.status, body(&h)["reason"].as_str()),
            (503, Some("decision_log_unavailable"))
        );
        // The root ships a batch; once the collector accepts, requests pass.
        let mut root = MockHost::new();
        f.on_tick(&mut root);
        let t = root.dispatched[0].token;
        let batch: Value =
            serde_json::from_slice(root.dispatched[0].body.as_ref().unwrap()).unwrap();
        assert_eq!(batch.as_array().unwrap().len(), 1);
        f.on_callout_response(&mut root, t, Some(204), None);
        let mut h = request("POST", "/mcp://hello-skill/greet", Some(claims(json!({}))));
        assert!(f.on_request_headers(&mut h).1.allowed);

        let e = Filter::new(
            br#"{"decision_log": {"enabled": true, "mandatory": true}}"#,
            1,
        )
        .unwrap_err();
        assert!(
            e.to_string()
                .contains("needs decision_log.enabled and a collector"),
            "{e}"
        );
    }

    #[test]
    fn metrics_header_reports_the_filters_own_timing_when_enabled() {
        let mut cfg: Value = serde_json::from_str(CONFIG).unwrap();
        cfg["headers"] = json!({"metrics_header": true});
        let f = Filter::new(cfg.to_string().as_bytes(), 7).unwrap();
        let mut h = request("POST", "/mcp://hello-skill/greet", Some(claims(json!({}))));
        let (_, d) = f.on_request_headers(&mut h);
        f.on_response_headers(&mut h, &d);
        let v = h
            .response_headers
            .iter()
            .find(|(k, _)| k == METRICS_HEADER)
            .unwrap()
            .1
            .clone();
        assert!(
            v.starts_with("filter_us=") && v.ends_with(";cache=miss"),
            "{v}"
        );
        let mut h = request("POST", "/mcp://hello-skill/greet", None);
        f.on_request_headers(&mut h);
        assert!(reply_header(&h, METRICS_HEADER).is_some());
        // Off by default.
        let mut h = request("POST", "/mcp://hello-skill/greet", Some(claims(json!({}))));
        let (_, d) = filter().on_request_headers(&mut h);
        filter().on_response_headers(&mut h, &d);
        assert!(!h.response_headers.iter().any(|(k, _)| k == METRICS_HEADER));
    }
}
