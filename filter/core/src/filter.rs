//! One request through agentplane: strip, identify, route, decide, then
//! forward with trusted headers or refuse. A request's outcome is one
//! [`State`] value, decided once; [`Denial`] renders it into the reply,
//! the metric and the decision-log record. Nothing is forwarded unless it
//! was explicitly allowed.
//!
//! [`Filter`] holds the immutable part (validated config, compiled policy)
//! beside one [`Worker`] of per-VM mutable state (ids, caches, the secrets
//! broker, the log shipper, streams waiting for secrets).

use crate::audit::{self, Trail};
use crate::cache::{DecisionCache, Key};
use crate::claims::{self, ClaimsError, Identity};
use crate::config::{Config, ConfigError, SERVICE_HEADER};
use crate::headers::{self, check_value, RequestHeaders};
use crate::host::{Host, LogLevel};
use crate::ids::DecisionIds;
use crate::input::{self, RequestFacts, Route};
use crate::metrics::{Metrics, M};
use crate::outcome::{Denial, State};
use crate::policy::{Policy, Verdict};
use crate::secrets::{self, Completion, Lookup};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;

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

/// One request's decision, for the response phase and the log.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// Unique id, also sent to the client.
    pub id: String,
    /// Where the request stands.
    pub state: State,
    /// The agent id, when one was established.
    pub agent: Option<String>,
    /// The decision-log record, when this decision is logged; written by
    /// [`Filter::on_log`] with the final status.
    pub record: Option<serde_json::Value>,
    /// The request id, echoed as `x-mcp-trace-id`.
    pub request_id: String,
    /// `x-mcp-metrics` value, when `headers.metrics_header` is on.
    pub timing: Option<String>,
    /// Holds a place in the collector buffer (mandatory logging).
    pub reserved: bool,
}

impl Decision {
    /// Not refused (forwarded, or waiting for secrets).
    pub fn allowed(&self) -> bool {
        !matches!(self.state, State::Denied(_))
    }

    /// The refusal, if refused.
    pub fn denial(&self) -> Option<&Denial> {
        match &self.state {
            State::Denied(d) => Some(d),
            _ => None,
        }
    }

    /// The status the filter replied with (0 when not refused).
    pub fn status(&self) -> u16 {
        self.denial().map_or(0, Denial::status)
    }

    /// Why refused; empty otherwise.
    pub fn reason(&self) -> String {
        self.denial().map(Denial::reason).unwrap_or_default()
    }
}

/// The configured filter: immutable config and compiled policy, and the
/// worker's mutable state beside them.
#[derive(Debug)]
pub struct Filter {
    config: Config,
    /// `input.resource` per registered service, built at configure time.
    docs: input::ResourceDocs,
    policy: Policy,
    worker: Worker,
}

/// Per-worker (per-VM) state. Everything that changes while requests flow
/// lives here, apart from the immutable config and policy.
#[derive(Debug)]
struct Worker {
    ids: DecisionIds,
    cache: Option<RefCell<DecisionCache<Outcome>>>,
    broker: Option<RefCell<secrets::Broker>>,
    metrics: Metrics,
    /// Broker counters already exported as metrics.
    exported: Cell<secrets::BrokerStats>,
    shipper: Option<RefCell<audit::Shipper>>,
    /// Shipper counters (shipped, dropped) already exported.
    exported_log: Cell<(u64, u64)>,
    /// Decisions of streams waiting for secrets, by stream id: settled by
    /// [`Filter::on_tick`] / [`Filter::on_callout_response`].
    pending: RefCell<HashMap<u32, Decision>>,
}

/// A refusal and the agent it concerns, if known.
type Refused = (Denial, Option<String>);

fn bad(why: impl Into<String>) -> Refused {
    (Denial::BadRequest(why.into()), None)
}

fn unauthorized(e: ClaimsError) -> Refused {
    (Denial::Unauthorized(e), None)
}

/// HTTP methods are case-sensitive tokens (RFC 9110 §9.1), but frameworks
/// upstream often compare them case-insensitively: the policy sees the
/// upper-cased method, so `delete` is decided as `DELETE`.
fn normalize_method(m: &str) -> Result<String, Refused> {
    let token = !m.is_empty()
        && m.len() <= 32
        && m.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    if !token {
        return Err(bad("malformed :method"));
    }
    Ok(m.to_ascii_uppercase())
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
            docs: input::ResourceDocs::new(&config),
            config,
            policy,
            worker: Worker {
                ids: DecisionIds::new(seed),
                cache,
                broker,
                metrics: Metrics::default(),
                exported: Cell::new(secrets::BrokerStats::default()),
                shipper,
                exported_log: Cell::new((0, 0)),
                pending: RefCell::new(HashMap::new()),
            },
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

    /// Once per VM, on the root context after a successful configure:
    /// defines the stats, creates the cross-worker claims map (so every
    /// claim is a compare-and-swap) and logs what was configured. Returns
    /// the tick period the root context needs, if any.
    pub fn on_configured<H: Host>(&self, host: &mut H, version: &str) -> Option<u64> {
        self.worker.metrics.define(host);
        if self.worker.broker.is_some() && host.shared_get(secrets::CLAIMS_KEY).is_none() {
            host.shared_set(secrets::CLAIMS_KEY, b"{}", None);
        }
        host.log(
            LogLevel::Info,
            &format!(
                "agentplane {version} configured: policy revision {}, entrypoint {}, engine {}",
                crate::bundle::REVISION,
                self.config.policy.entrypoint,
                self.policy.backend(),
            ),
        );
        if let Some(why) = self.policy.rvm_fallback() {
            host.log(
                LogLevel::Warn,
                &format!(
                    "agentplane: policy runs on the interpreter; the RVM cannot compile it: {why}"
                ),
            );
        }
        self.needs_tick().then_some(TICK_MS)
    }

    /// Handles the request headers. On [`Flow::Replied`] the reply has been
    /// sent through the host and nothing may be forwarded.
    pub fn on_request_headers<H: Host>(&self, host: &mut H) -> (Flow, Decision) {
        let timed = self.config.headers.metrics_header;
        let t0 = if timed { host.now_ns() } else { 0 };
        let id = self.worker.ids.next_id();
        let mut trail = Trail::default();
        let mut reserved = false;
        let result = self.decide(host, &id, &mut trail, &mut reserved);
        let timing = timed.then(|| {
            format!(
                "filter_us={};policy_us={};cache={}",
                host.now_ns().saturating_sub(t0) / 1_000,
                trail.eval_ns.unwrap_or(0) / 1_000,
                if trail.cached { "hit" } else { "miss" }
            )
        });
        let (state, agent, flow) = match result {
            Ok((agent, Flow::Paused)) => (State::Pending, Some(agent), Flow::Paused),
            Ok((agent, flow)) => (State::Allowed, Some(agent), flow),
            Err((denial, agent)) => (State::Denied(denial), agent, Flow::Replied),
        };
        let mut decision = Decision {
            id,
            state,
            agent,
            record: None,
            request_id: trail.request_id.clone(),
            timing,
            reserved,
        };
        if let State::Denied(d) = &decision.state {
            let reply = d.reply(&decision.id, &self.reply_headers(&decision));
            host.send_reply(reply.status, &reply.header_refs(), &reply.body);
        }
        if decision.state != State::Pending {
            self.count(host, &decision.state);
        }
        let log = &self.config.decision_log;
        if log.enabled && (!decision.allowed() || audit::sampled(log, &decision.id)) {
            let reasons = decision.denial().map(Denial::reasons).unwrap_or_default();
            let facts = audit::Facts {
                decision_id: &decision.id,
                now_ns: host.now_ns(),
                entrypoint: &self.config.policy.entrypoint,
                revision: crate::bundle::REVISION,
                allowed: decision.allowed(),
                reason: &decision.reason(),
                reasons: &reasons,
                status: decision.status(),
                agent: decision.agent.as_deref(),
            };
            decision.record = Some(audit::record(log, &facts, &trail));
        }
        if decision.state == State::Pending {
            self.put_pending(host.stream_id(), decision.clone());
        }
        (flow, decision)
    }

    /// The response headers every reply and every allowed response carry.
    fn reply_headers<'a>(&self, d: &'a Decision) -> Vec<(&'static str, &'a str)> {
        let mut h = vec![(DECISION_ID_HEADER, d.id.as_str())];
        if !d.request_id.is_empty() {
            h.push((TRACE_ID_HEADER, d.request_id.as_str()));
        }
        if let Some(t) = &d.timing {
            h.push((METRICS_HEADER, t.as_str()));
        }
        h
    }

    /// The one place outcomes become metrics.
    fn count<H: Host>(&self, host: &mut H, state: &State) {
        let m = match state {
            State::Allowed => M::Allowed,
            State::Pending => return,
            State::Denied(d) => d.metric(),
        };
        self.worker.metrics.add(host, m, 1);
    }

    /// End of the stream: writes the decision-log record, if any, with the
    /// status the client got. A stream that waited for secrets is logged
    /// with how that ended.
    pub fn on_log<H: Host>(&self, host: &mut H, decision: &mut Decision) {
        let settled = self
            .take_pending(host.stream_id())
            .filter(|d| d.id == decision.id);
        if let Some(d) = settled {
            decision.state = d.state;
            decision.record = d.record;
        }
        let reserved = std::mem::take(&mut decision.reserved);
        let Some(record) = decision.record.take() else {
            if reserved {
                self.release_reservation();
            }
            return;
        };
        let status = host
            .property(&["response", "code"])
            .and_then(|b| <[u8; 8]>::try_from(b.as_slice()).ok())
            .and_then(|b| u16::try_from(u64::from_le_bytes(b)).ok());
        let json = audit::finish(record, status);
        host.log(LogLevel::Info, &format!("{}{json}", audit::PREFIX));
        if let Some(mut sh) = self
            .worker
            .shipper
            .as_ref()
            .and_then(|s| s.try_borrow_mut().ok())
        {
            sh.push(json, host.now_ns(), reserved);
        }
    }

    fn release_reservation(&self) {
        if let Some(mut sh) = self
            .worker
            .shipper
            .as_ref()
            .and_then(|s| s.try_borrow_mut().ok())
        {
            sh.release();
        }
    }

    /// Adds the decision id to the upstream response of an allowed request.
    pub fn on_response_headers<H: Host>(&self, host: &mut H, decision: &Decision) {
        for (k, v) in self.reply_headers(decision) {
            host.set_response_header(k, v);
        }
    }

    /// With mandatory logging, reserves the record's place in the
    /// collector buffer; false when there is none.
    fn reserve_log(&self) -> bool {
        self.worker
            .shipper
            .as_ref()
            .and_then(|s| s.try_borrow_mut().ok())
            .is_some_and(|mut s| s.reserve())
    }

    /// The headers the filter reads: each must be UTF-8 and single.
    fn read_headers(&self) -> impl Iterator<Item = &str> {
        [
            ":method",
            ":path",
            ":authority",
            "authorization",
            "x-request-id",
            "traceparent",
            "tracestate",
        ]
        .into_iter()
        .chain(self.config.headers.input.iter().map(String::as_str))
    }

    fn decide<H: Host>(
        &self,
        host: &mut H,
        decision_id: &str,
        trail: &mut Trail,
        reserved: &mut bool,
    ) -> Result<(String, Flow), Refused> {
        // Before anything else: nothing the client says about identity survives.
        let headers = headers::strip_untrusted(host, &self.config)
            .ok_or((Denial::HostFailure("request headers"), None))?;
        self.worker
            .metrics
            .add(host, M::HeadersStripped, headers.stripped as u64);
        // The ids the filter logs are its own unless the edge is trusted to
        // have set x-request-id (headers.trust_request_id).
        let max = self.config.headers.max_value_bytes;
        trail.request_id = headers
            .get("x-request-id")
            .filter(|_| self.config.headers.trust_request_id)
            .filter(|v| !v.is_empty() && check_value(v, max).is_ok())
            .unwrap_or(decision_id)
            .to_string();
        if self.config.decision_log.mandatory {
            if !self.reserve_log() {
                return Err((Denial::LogUnavailable, None));
            }
            *reserved = true;
        }
        headers
            .check_read(self.read_headers())
            .map_err(|e| bad(e.to_string()))?;
        let raw = host
            .property(&["metadata"])
            .ok_or_else(|| unauthorized(ClaimsError::Missing))?;
        let method = normalize_method(
            headers
                .get(":method")
                .ok_or_else(|| bad("missing :method"))?,
        )?;
        let path = headers.get(":path").ok_or_else(|| bad("missing :path"))?;
        let authority = headers.get(":authority");
        let route = input::parse_route(path, &self.config).map_err(|e| bad(e.to_string()))?;
        let now = host.now_ns();
        trail.service = route.service.map(str::to_owned);

        let payload =
            claims::payload_from_metadata(&raw, &self.config.identity).map_err(unauthorized)?;
        // The payload, not the metadata bytes: Envoy serializes protobuf
        // maps in no fixed order, so equal payloads arrive as different
        // bytes. serde_json's map is sorted, which makes this canonical.
        let canonical = self
            .worker
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
        if let (Some(cache), Some(key)) = (&self.worker.cache, &key) {
            let hit = cache
                .try_borrow_mut()
                .ok()
                .and_then(|mut c| c.get(key, now));
            let m = if hit.is_some() {
                M::DecisionCacheHit
            } else {
                M::DecisionCacheMiss
            };
            self.worker.metrics.add(host, m, 1);
            if let Some(outcome) = hit {
                trail.cached = true;
                trail.input.clone_from(&outcome.input);
                let who = self.apply(host, outcome, &route, &trail.request_id)?;
                trail.agent_type.clone_from(&who.kind);
                trail.team.clone_from(&who.team);
                return self.secrets(host, &headers, route.service, who, decision_id, trail);
            }
        }

        let identity = claims::identity(payload, &self.config.identity).map_err(unauthorized)?;
        trail.agent_type.clone_from(&identity.agent_type);
        trail.team.clone_from(&identity.team);
        let request_id = trail.request_id.clone();
        let facts = RequestFacts {
            method: &method,
            route: &route,
            host: authority.unwrap_or_default(),
            id: &request_id,
            time_ns: now,
        };
        let (outcome, valid_until) = self.authorize(host, &headers, identity, &facts, trail);
        if let (Some(cache), Some(key), Some(until)) = (&self.worker.cache, key, valid_until) {
            if let Ok(mut c) = cache.try_borrow_mut() {
                c.insert(key, outcome.clone(), now, until);
            }
        }
        let who = self.apply(host, outcome, &route, &request_id)?;
        self.secrets(host, &headers, route.service, who, decision_id, trail)
    }

    /// Forwards an allowed outcome: trusted headers, the authorized
    /// service for Envoy to route on, the service's own path. Every write
    /// must succeed or the request is refused.
    fn apply<H: Host>(
        &self,
        host: &mut H,
        outcome: Outcome,
        route: &Route<'_>,
        request_id: &str,
    ) -> Result<Who, Refused> {
        let agent = outcome.agent;
        let allowed = match outcome.result {
            Ok(a) => a,
            Err(d) => return Err((d, Some(agent))),
        };
        let failed = |agent: &str| {
            (
                Denial::HostFailure("request header write"),
                Some(agent.to_string()),
            )
        };
        if !self.config.identity.forward_token && !host.remove_request_header(b"authorization") {
            return Err(failed(&agent));
        }
        let mut writes: Vec<(&str, &str)> = allowed
            .trusted
            .iter()
            .chain(allowed.extra.iter())
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        writes.push(("x-request-id", request_id));
        if let Some(service) = route.service {
            if check_value(service, self.config.headers.max_value_bytes).is_err() {
                return Err(bad("service name cannot be sent as a header"));
            }
            writes.push((SERVICE_HEADER, service));
        }
        if let Some(p) = &route.upstream_path {
            writes.push((":path", p.as_str()));
        }
        for (k, v) in writes {
            if !host.set_request_header(k, v) {
                return Err(failed(&agent));
            }
        }
        Ok(Who {
            team: allowed.team,
            kind: allowed.kind,
            principal: outcome.principal,
            agent,
        })
    }

    /// After an allow: injects the service's secrets from the cache, or
    /// pauses the stream until a job fetches them, or refuses with 503.
    fn secrets<H: Host>(
        &self,
        host: &mut H,
        headers: &RequestHeaders,
        service: Option<&str>,
        who: Who,
        decision_id: &str,
        trail: &mut Trail,
    ) -> Result<(String, Flow), Refused> {
        // An unregistered service never has secrets (config refuses
        // default_resource.secrets).
        let Some(specs) = service
            .and_then(|s| self.config.resources.get(s))
            .map(|r| &r.secrets)
            .filter(|s| !s.is_empty())
        else {
            return Ok((who.agent, Flow::Continue));
        };
        if self.config.decision_log.enabled {
            // Secret names are only for the decision log.
            for sc in specs {
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
        }
        let unavailable =
            |agent: &str, why: String| (Denial::SecretsUnavailable(why), Some(agent.to_string()));
        let Some(broker) = self.worker.broker.as_ref() else {
            return Err(unavailable(&who.agent, "no vault configured".into()));
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
            if let Some(v) = headers.get(name).filter(|v| check_value(v, 512).is_ok()) {
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
        match b.request(
            host,
            &who.principal,
            service.unwrap_or(""),
            needs,
            jwt,
            waiter,
        ) {
            Lookup::Ready(set) => {
                for (k, v) in &set {
                    if !host.set_request_header(k, v.expose()) {
                        return Err((Denial::HostFailure("request header write"), Some(who.agent)));
                    }
                }
                Ok((who.agent, Flow::Continue))
            }
            Lookup::Pending => Ok((who.agent, Flow::Paused)),
            Lookup::Failed(why) => Err(unavailable(&who.agent, why)),
        }
    }

    /// Settles a stream that waited for secrets: resumes it with them, or
    /// refuses it. The broker reports; only the filter replies and counts.
    /// The stream's final state is recorded before the host is asked to
    /// resume or reply, so a callback the host makes meanwhile (body, log)
    /// already sees it.
    fn complete<H: Host>(&self, host: &mut H, c: Completion) {
        let Some(mut d) = self.take_pending(c.stream) else {
            return; // the stream is gone
        };
        let denial = match c.result {
            Ok(set) => {
                let set: Vec<(String, String)> = set
                    .iter()
                    .map(|(k, v)| (k.clone(), v.expose().to_string()))
                    .collect();
                d.state = State::Allowed;
                self.put_pending(c.stream, d);
                if host.resume_stream(c.stream, &set) {
                    self.count(host, &State::Allowed);
                    return;
                }
                // Not resumed: a header could not be set, or the stream is
                // gone (then nothing is left to refuse).
                let Some(back) = self.take_pending(c.stream) else {
                    return;
                };
                d = back;
                Denial::HostFailure("resume with secrets")
            }
            Err(why) => Denial::SecretsUnavailable(why),
        };
        let reply = denial.reply(&d.id, &self.reply_headers(&d));
        if let Some(r) = d.record.as_mut() {
            audit::refused(r, &denial.reason(), &denial.reasons(), denial.status());
        }
        d.state = State::Denied(denial);
        self.count(host, &d.state);
        self.put_pending(c.stream, d);
        if !host.reply_stream(c.stream, reply.status, &reply.header_refs(), &reply.body) {
            self.take_pending(c.stream); // gone: nothing will log it
        }
    }

    fn take_pending(&self, stream: u32) -> Option<Decision> {
        self.worker.pending.try_borrow_mut().ok()?.remove(&stream)
    }

    fn put_pending(&self, stream: u32, d: Decision) {
        if let Ok(mut p) = self.worker.pending.try_borrow_mut() {
            p.insert(stream, d);
        }
    }

    fn settle<H: Host>(&self, host: &mut H) {
        let done = self
            .worker
            .broker
            .as_ref()
            .and_then(|b| b.try_borrow_mut().ok())
            .map(|mut b| b.take_completions())
            .unwrap_or_default();
        for c in done {
            self.complete(host, c);
        }
    }

    /// Whether any service has secrets (the workers then share claims).
    pub fn has_secrets(&self) -> bool {
        self.worker.broker.is_some()
    }

    /// Whether the root context must tick: secret fetches or a decision-log
    /// collector.
    pub fn needs_tick(&self) -> bool {
        self.worker.broker.is_some() || self.worker.shipper.is_some()
    }

    /// Root context tick: ships decision records, dispatches due secret
    /// fetches and settles streams whose secrets arrived. Returns whether
    /// secret work is pending.
    pub fn on_tick<H: Host>(&self, host: &mut H) -> bool {
        let w = &self.worker;
        if let Some(mut sh) = w.shipper.as_ref().and_then(|s| s.try_borrow_mut().ok()) {
            sh.on_tick(host);
            let (was_s, was_d) = w.exported_log.replace((sh.shipped, sh.dropped));
            w.metrics
                .add(host, M::LogShipped, sh.shipped.saturating_sub(was_s));
            w.metrics
                .add(host, M::LogDropped, sh.dropped.saturating_sub(was_d));
        }
        let (wants, now) = match w.broker.as_ref().and_then(|b| b.try_borrow_mut().ok()) {
            Some(mut b) => {
                b.on_tick(host);
                (b.wants_tick(), b.stats)
            }
            None => return false,
        };
        self.settle(host);
        let was = w.exported.replace(now);
        w.metrics
            .add(host, M::SecretsCacheHit, now.hits.saturating_sub(was.hits));
        w.metrics
            .add(host, M::VaultLogins, now.logins.saturating_sub(was.logins));
        w.metrics
            .add(host, M::VaultReads, now.reads.saturating_sub(was.reads));
        w.metrics.add(
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
        if let Some(mut sh) = self
            .worker
            .shipper
            .as_ref()
            .and_then(|s| s.try_borrow_mut().ok())
        {
            if sh.on_response(token, status, now) {
                return;
            }
        }
        if let Some(mut b) = self
            .worker
            .broker
            .as_ref()
            .and_then(|b| b.try_borrow_mut().ok())
        {
            if !b.on_response(host, token, status, body) {
                host.log(
                    LogLevel::Debug,
                    &format!("agentplane: stale callout {token}"),
                );
            }
            // Steps that can go at once (the next read) go now.
            b.on_tick(host);
        }
        self.settle(host);
    }

    /// A stream ended (possibly while waiting for secrets, possibly before
    /// its log phase).
    pub fn on_stream_done(&self, stream: u32, decision: Option<&mut Decision>) {
        if let Some(mut b) = self
            .worker
            .broker
            .as_ref()
            .and_then(|b| b.try_borrow_mut().ok())
        {
            b.forget_stream(stream);
        }
        self.take_pending(stream);
        if let Some(d) = decision {
            if std::mem::take(&mut d.reserved) {
                self.release_reservation();
            }
        }
    }

    /// Largest callout response the filter reads.
    pub fn max_callout_bytes(&self) -> usize {
        let vault = self
            .config
            .vault
            .as_ref()
            .map_or(0, |v| v.max_response_bytes);
        vault.max(64 * 1024)
    }

    /// Secrets counters, when secrets are configured.
    pub fn secrets_stats(&self) -> Option<secrets::BrokerStats> {
        Some(self.worker.broker.as_ref()?.try_borrow().ok()?.stats)
    }

    /// Where a stream that waited for secrets stands now (`Pending` until
    /// its job ends); `None` for a stream this worker does not hold.
    pub fn settled(&self, stream: u32) -> Option<State> {
        let p = self.worker.pending.try_borrow().ok()?;
        p.get(&stream).map(|d| d.state.clone())
    }

    /// Streams waiting for secrets on this worker.
    pub fn pending_streams(&self) -> usize {
        self.worker.pending.try_borrow().map_or(0, |p| p.len())
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
        let principal = secrets::principal(
            identity
                .payload
                .get("iss")
                .and_then(serde_json::Value::as_str),
            &identity.id,
        );
        let refuse = |agent: &str, principal: &str, d: Denial| {
            (
                Outcome {
                    agent: agent.to_string(),
                    principal: principal.to_string(),
                    result: Err(d),
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
                    let d = Denial::UnsafeIdentity(format!("identity for {name} {e}"));
                    return refuse(&identity.id, &principal, d);
                }
                trusted.push((name.to_string(), v.clone()));
            }
        }
        let doc = input::build(headers, &self.config, &self.docs, &identity, facts);
        let logging = self.config.decision_log.enabled;
        let input = logging.then(|| doc.clone());
        trail.input.clone_from(&input);
        let t0 = host.now_ns();
        let evaluated = self.policy.evaluate(doc);
        let eval_ns = host.now_ns().saturating_sub(t0);
        trail.eval_ns = Some(eval_ns);
        self.worker
            .metrics
            .record(host, M::PolicyEvalUs, eval_ns / 1_000);
        let verdict = match evaluated {
            Ok(v) => v,
            Err(e) => {
                host.log(LogLevel::Warn, &format!("agentplane: {e}"));
                return refuse(&identity.id, &principal, Denial::PolicyError);
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
            let lower = k.to_ascii_lowercase();
            let reserved = lower.starts_with(':')
                || self.config.must_strip(lower.as_bytes())
                || lower == "x-request-id"
                || lower == "authorization";
            if k.is_empty() || reserved || check_value(v, max).is_err() {
                host.log(
                    LogLevel::Warn,
                    &format!("agentplane: policy header {k:?} rejected"),
                );
                return refuse(&identity.id, &principal, Denial::PolicyError);
            }
        }
        let result = if allowed {
            Ok(Allowed {
                trusted,
                extra,
                team: identity.team.clone(),
                kind: identity.agent_type.clone(),
            })
        } else {
            Err(Denial::Policy {
                status: status.unwrap_or(403),
                reasons,
                headers: extra,
            })
        };
        (
            Outcome {
                agent: identity.id,
                principal,
                result,
                input,
            },
            valid_until_ns,
        )
    }

    /// Decision-cache counters `(hits, misses, entries)`, when the cache is on.
    pub fn cache_stats(&self) -> Option<(u64, u64, usize)> {
        let c = self.worker.cache.as_ref()?.try_borrow().ok()?;
        Some((c.hits, c.misses, c.len()))
    }
}

/// How often the root context ticks when it has background work.
pub const TICK_MS: u64 = 5;

/// What to do with an identified request: reusable as is for an equal
/// request (the decision cache stores these).
#[derive(Debug, Clone)]
struct Outcome {
    agent: String,
    /// Issuer and subject, for secret cache keys.
    principal: String,
    result: Result<Allowed, Denial>,
    /// The input it was decided on, kept for the decision log.
    input: Option<regorus::Value>,
}

#[derive(Debug, Clone)]
struct Allowed {
    /// `x-agent-*` headers, checked.
    trusted: Vec<(String, String)>,
    /// Headers a response-object policy added, checked.
    extra: Vec<(String, String)>,
    /// The agent's team and type (secret path templates), from the token.
    team: Option<String>,
    kind: Option<String>,
}

/// Who an allowed request is from, for secret paths.
struct Who {
    agent: String,
    principal: String,
    team: Option<String>,
    kind: Option<String>,
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
        assert!(d.allowed() && h.reply.is_none());
        assert_eq!(h.header_values("x-agent-id"), ["support-triage@clients"]);
        assert_eq!(h.header_values("x-agent-team"), ["customer-success"]);
        assert_eq!(h.header_values("x-agent-type"), ["support"]);
        // The client sent no id the filter trusts: it mints its own.
        assert_eq!(h.header_values("x-request-id"), [d.id.as_str()]);
        f.on_response_headers(&mut h, &d);
        assert_eq!(
            h.response_headers,
            [
                (DECISION_ID_HEADER.to_string(), d.id.clone()),
                (TRACE_ID_HEADER.to_string(), d.id.clone())
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
            d.reason(),
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
        assert_eq!(d.reason(), "policy_error");
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
        assert_eq!(h.header_values("x-request-id"), [d2.id.as_str()]);
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
        assert!(!d7.allowed() && d7.reason() == d6.reason() && d7.id != d6.id);
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
        assert!(at(late - 1, 4_000_000_000).allowed());
        assert!(at(late - 1, 4_000_000_000).allowed());
        assert_eq!(f.cache_stats().unwrap().0, 1);
        let d = at(late, 4_000_000_000);
        assert!(!d.allowed(), "17:00 is off hours, whatever the cache held");
        assert!(
            d.reason().contains("outside business hours"),
            "{}",
            d.reason()
        );
        // Token expiry inside the hour.
        let exp = (NOON + 10 * 60 * 1_000_000_000) / 1_000_000_000;
        assert!(at(NOON, exp).allowed());
        assert!(at(exp * 1_000_000_000 - 1, exp).allowed());
        let d = at(exp * 1_000_000_000, exp);
        assert!(
            !d.allowed() && d.reason().contains("expired"),
            "{}",
            d.reason()
        );
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
            assert!(f.on_request_headers(&mut h).1.allowed());
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
            assert!(f.on_request_headers(&mut h).1.allowed(), "{:?}", h.reply);
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
        assert!(d.allowed());
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
        assert_eq!((d.status(), h.reply.as_ref().unwrap().status), (503, 503));
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
        assert!(d.allowed());
        h = h.with_property(&["response", "code"], 201u64.to_le_bytes().to_vec());
        f.on_log(&mut h, &mut d.clone());
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
        assert_eq!(r["input"]["request"]["id"], r["decision_id"]);
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
        f.on_log(&mut h, &mut d.clone());
        let r = &log_lines(&h)[0];
        assert_eq!(r["cached"], true);
        assert_eq!(
            r["input"]["request"]["id"],
            d.id.as_str(),
            "this request's id"
        );
        assert!(r["metrics"].get("timer_rego_query_eval_ns").is_none());
    }

    #[test]
    fn denies_are_always_logged_allows_sampled() {
        let f = logged_filter(json!({"enabled": true, "sample_allowed": 0.0}));
        let mut h = request("POST", "/mcp://hello-skill/greet", Some(claims(json!({}))));
        let (_, d) = f.on_request_headers(&mut h);
        f.on_log(&mut h, &mut d.clone());
        assert!(d.allowed() && log_lines(&h).is_empty());
        let mut h = request(
            "POST",
            "/mcp://hello-skill/greet",
            Some(claims(json!({"permissions": []}))),
        );
        let (_, d) = f.on_request_headers(&mut h);
        f.on_log(&mut h, &mut d.clone());
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
        f.on_log(&mut h, &mut d.clone());
        assert_eq!(log_lines(&h)[0]["status"], 401);
        // Off by default.
        let plain = filter();
        let mut h = request("POST", "/mcp://hello-skill/greet", None);
        let (_, d) = plain.on_request_headers(&mut h);
        plain.on_log(&mut h, &mut d.clone());
        assert!(d.record.is_none() && log_lines(&h).is_empty());
    }

    #[test]
    fn counters_move_exactly_with_the_requests() {
        let f = filter();
        let mut totals = std::collections::BTreeMap::new();
        let mut run = |mut h: MockHost| {
            f.on_configured(&mut h, "test");
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
            assert!(d.allowed());
            f.on_log(&mut h, &mut d.clone());
        }
        // The collector never answered: the buffer is full, requests deny.
        let mut h = request("POST", "/mcp://hello-skill/greet", Some(claims(json!({}))));
        let (flow, d) = f.on_request_headers(&mut h);
        assert_eq!(flow, Flow::Replied);
        assert_eq!(
            (d.status(), body(&h)["reason"].as_str()),
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
        assert!(f.on_request_headers(&mut h).1.allowed());

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
    // --- attacks (issue 9): each test is named after what it stops --------

    #[test]
    fn non_utf8_header_value_cannot_crash_or_confuse_the_filter() {
        let f = filter();
        // In a header the filter never reads: forwarded untouched.
        let mut h = request("POST", "/mcp://hello-skill/greet", Some(claims(json!({}))))
            .with_header_bytes(b"x-legacy", b"caf\xe9 \xff");
        let (flow, d) = f.on_request_headers(&mut h);
        assert_eq!(flow, Flow::Continue, "{:?}", h.reply);
        assert!(d.allowed());
        assert!(h
            .raw_headers()
            .iter()
            .any(|(k, v)| k == b"x-legacy" && v == b"caf\xe9 \xff"));
        // In a header the policy reads (user-agent is an input header): 400.
        let mut h = request("POST", "/mcp://hello-skill/greet", Some(claims(json!({}))))
            .with_header_bytes(b"user-agent", b"\x80\x81");
        assert_eq!(f.on_request_headers(&mut h).0, Flow::Replied);
        assert_eq!(h.reply.as_ref().unwrap().status, 400);
        assert_eq!(body(&h)["reason"], "header user-agent is not valid UTF-8");
        // In :path, without any token: 400, never a trap.
        let mut h = MockHost::new()
            .with_header(":method", "GET")
            .with_header_bytes(b":path", b"/mcp://hello-skill/\xff");
        assert_eq!(f.on_request_headers(&mut h).0, Flow::Replied);
        assert_eq!(h.reply.as_ref().unwrap().status, 400);
        assert!(body(&h)["decision_id"].is_string());
    }

    #[test]
    fn non_utf8_header_name_in_the_trusted_namespace_is_stripped() {
        let f = filter();
        let mut h = request("POST", "/mcp://hello-skill/greet", Some(claims(json!({}))))
            .with_header_bytes(b"x-agent-\xff", b"root");
        assert_eq!(f.on_request_headers(&mut h).0, Flow::Continue);
        assert!(!h.raw_headers().iter().any(|(k, _)| k == b"x-agent-\xff"));
    }

    #[test]
    fn underscore_spelling_of_trusted_headers_never_reaches_upstream() {
        let f = filter();
        // No team claim: the spoofed one would be the only team header.
        let c = claims(json!({"https://mcp.example.com/team": null}));
        let mut h = request("POST", "/mcp://hello-skill/x", Some(c))
            .with_header("x_agent_team", "platform")
            .with_header("X_Agent-Id", "root")
            .with_header("x_agentplane_service", "tickets");
        assert_eq!(
            f.on_request_headers(&mut h).0,
            Flow::Continue,
            "{:?}",
            h.reply
        );
        let folded: Vec<String> = h
            .raw_headers()
            .iter()
            .map(|(k, _)| String::from_utf8_lossy(k).replace('_', "-"))
            .collect();
        assert!(!folded.contains(&"x-agent-team".to_string()), "{folded:?}");
        assert_eq!(h.header_values(SERVICE_HEADER), ["hello-skill"]);
        assert_eq!(h.header_values("x-agent-id"), ["support-triage@clients"]);
        assert!(h.header_values("x_agent_team").is_empty());
        assert!(h.header_values("x_agent-id").is_empty());
        assert!(h.header_values("x_agentplane_service").is_empty());
    }

    #[test]
    fn method_override_headers_cannot_turn_an_authorized_post_into_a_delete() {
        let f = filter();
        for name in [
            "x-http-method-override",
            "X-HTTP-Method",
            "x-method-override",
            "x_http_method_override",
        ] {
            let mut h = request("POST", "/mcp://tickets/1", Some(claims(json!({}))))
                .with_header(name, "DELETE");
            assert_eq!(f.on_request_headers(&mut h).0, Flow::Continue);
            assert!(
                !h.raw_headers()
                    .iter()
                    .any(|(k, _)| k.eq_ignore_ascii_case(name.as_bytes())),
                "{name} reached upstream"
            );
        }
    }

    #[test]
    fn lowercase_method_is_decided_as_the_method_upstreams_will_run() {
        let f = filter();
        // DELETE is off limits outside business hours; `delete` is the same.
        let mut h = request("delete", "/mcp://tickets/1", Some(claims(json!({})))).at(EARLY);
        assert_eq!(f.on_request_headers(&mut h).0, Flow::Replied);
        assert!(body(&h)["reason"]
            .as_str()
            .unwrap()
            .contains("DELETE is not permitted"));
        let mut h = request("GE T", "/mcp://tickets/1", Some(claims(json!({}))));
        assert_eq!(f.on_request_headers(&mut h).0, Flow::Replied);
        assert_eq!(h.reply.as_ref().unwrap().status, 400);
    }

    #[test]
    fn client_chosen_request_and_decision_ids_never_reach_logs_or_upstream() {
        let f = logged_filter(json!({"enabled": true}));
        let mut h = request("POST", "/mcp://hello-skill/greet", Some(claims(json!({}))))
            .with_header("x-request-id", "attacker-chosen")
            .with_header("x-decision-id", "forged-decision");
        let (_, mut d) = f.on_request_headers(&mut h);
        assert_eq!(h.header_values("x-request-id"), [d.id.as_str()]);
        assert!(h.header_values("x-decision-id").is_empty());
        f.on_log(&mut h, &mut d);
        let r = &log_lines(&h)[0];
        assert_eq!(r["request_id"], d.id.as_str());
        assert!(!r.to_string().contains("attacker-chosen"));
        // An edge that sets x-request-id itself may be trusted, explicitly.
        let mut cfg: Value = serde_json::from_str(CONFIG).unwrap();
        cfg["headers"] = json!({"trust_request_id": true});
        let f = Filter::new(cfg.to_string().as_bytes(), 7).unwrap();
        let mut h = request("POST", "/mcp://hello-skill/greet", Some(claims(json!({}))))
            .with_header("x-request-id", "edge-id-1");
        f.on_request_headers(&mut h);
        assert_eq!(h.header_values("x-request-id"), ["edge-id-1"]);
    }

    #[test]
    fn duplicate_headers_the_filter_reads_are_refused() {
        let f = filter();
        for (name, a, b) in [
            ("authorization", "Bearer a", "Bearer b"),
            ("content-type", "application/json", "text/plain"),
        ] {
            let mut h = request("POST", "/mcp://hello-skill/greet", Some(claims(json!({}))))
                .with_header(name, a)
                .with_header(name, b);
            assert_eq!(f.on_request_headers(&mut h).0, Flow::Replied, "{name}");
            assert_eq!(h.reply.as_ref().unwrap().status, 400);
            assert_eq!(
                body(&h)["reason"],
                format!("header {name} appears more than once")
            );
        }
    }

    #[test]
    fn scope_with_tabs_or_newlines_grants_nothing() {
        let f = filter();
        let c = claims(json!({"permissions": null, "scope": "mcp:read\tskills:invoke\nadmin"}));
        let mut h = request("POST", "/mcp://hello-skill/greet", Some(c));
        assert_eq!(f.on_request_headers(&mut h).0, Flow::Replied);
        assert_eq!(h.reply.as_ref().unwrap().status, 401);
        let c = claims(json!({"permissions": null, "scope": "mcp:read skills:invoke"}));
        let mut h = request("POST", "/mcp://hello-skill/greet", Some(c));
        assert_eq!(f.on_request_headers(&mut h).0, Flow::Continue);
    }

    #[test]
    fn a_path_authorized_for_one_service_is_routed_to_that_service_only() {
        let f = filter();
        for (path, service, upstream) in [
            ("/mcp://hello-skill/tickets/x", "hello-skill", "/tickets/x"),
            (
                "/hello-skill/tickets/x?q=1",
                "hello-skill",
                "/tickets/x?q=1",
            ),
            ("/mcp://hello-skill", "hello-skill", "/"),
            ("/mcp://hello-skill//tickets", "hello-skill", "//tickets"),
        ] {
            let mut h = request("POST", path, Some(claims(json!({}))));
            assert_eq!(f.on_request_headers(&mut h).0, Flow::Continue, "{path}");
            assert_eq!(h.header_values(SERVICE_HEADER), [service], "{path}");
            assert_eq!(h.header_values(":path"), [upstream], "{path}");
        }
        // A client cannot pre-set the routing header.
        let mut h = request("POST", "/mcp://hello-skill/x", Some(claims(json!({}))))
            .with_header(SERVICE_HEADER, "tickets");
        f.on_request_headers(&mut h);
        assert_eq!(h.header_values(SERVICE_HEADER), ["hello-skill"]);
    }

    #[test]
    fn a_proxy_refusing_header_writes_fails_closed() {
        let f = filter();
        let mut h = request("POST", "/mcp://hello-skill/greet", Some(claims(json!({}))));
        h.refuse_header_writes = true;
        assert_eq!(f.on_request_headers(&mut h).0, Flow::Replied);
        assert_eq!(h.reply.as_ref().unwrap().status, 503);
        assert!(body(&h)["decision_id"].is_string());
        // Spoofed headers that cannot be removed: refused before anything.
        let mut h = request("POST", "/mcp://hello-skill/greet", Some(claims(json!({}))))
            .with_header("x-agent-id", "root");
        h.refuse_header_writes = true;
        assert_eq!(f.on_request_headers(&mut h).0, Flow::Replied);
        assert_eq!(body(&h)["reason"], "proxy_error: request headers");
        let mut h = request("POST", "/mcp://hello-skill/greet", Some(claims(json!({}))));
        h.no_header_map = true;
        assert_eq!(f.on_request_headers(&mut h).0, Flow::Replied);
        assert_eq!(h.reply.as_ref().unwrap().status, 503);
    }

    #[test]
    fn a_request_whose_secrets_fail_after_pausing_is_logged_and_counted_as_refused() {
        let mut cfg: Value = serde_json::from_str(&json!({
            "vault": {"cluster": "vault", "role": "agent", "retries": 0},
            "decision_log": {"enabled": true},
            "resources": {
                "hello-skill": {"type": "skill", "metadata": {"team": "platform", "environment": "production"},
                    "secrets": [{"kv": "secret/data/mcp/agents/{agent}/credentials", "field": "api_key", "header": "x-api-key"}]}
            }
        }).to_string()).unwrap();
        cfg["decision_log"]["sample_allowed"] = json!(1.0);
        let f = Filter::new(cfg.to_string().as_bytes(), 7).unwrap();
        let mut root = MockHost::new();
        f.on_configured(&mut root, "test");
        let mut h = request("POST", "/mcp://hello-skill/greet", Some(claims(json!({}))))
            .with_header("authorization", "Bearer jwt");
        h.stream = 9;
        let (flow, mut d) = f.on_request_headers(&mut h);
        assert_eq!(flow, Flow::Paused);
        assert_eq!(f.settled(9), Some(State::Pending));
        f.on_tick(&mut root);
        let t = root.dispatched[0].token;
        f.on_callout_response(&mut root, t, Some(500), None);
        assert!(root.resumed.is_empty());
        let (stream, reply) = &root.stream_replies[0];
        assert_eq!((*stream, reply.status), (9, 503));
        assert_eq!(
            f.settled(9).map(|s| matches!(s, State::Denied(_))),
            Some(true)
        );
        // The stream's own log phase writes the refusal, not an allow.
        f.on_log(&mut h, &mut d);
        let r = &log_lines(&h)[0];
        assert_eq!(r["result"]["allowed"], false);
        assert_eq!(r["status"], 503);
        assert!(r["reason"]
            .as_str()
            .unwrap()
            .starts_with("secrets_unavailable"));
        assert_eq!(
            root.metrics.get("agentplane.decisions.secrets_unavailable"),
            Some(&1)
        );
        assert_eq!(root.metrics.get("agentplane.decisions.allowed"), Some(&0));
        assert_eq!(f.pending_streams(), 0);
    }

    #[test]
    fn policy_headers_cannot_overwrite_trusted_or_pseudo_headers() {
        for header in [
            ":path",
            "x-agent-id",
            "x-agentplane-service",
            "x-request-id",
            "authorization",
        ] {
            let src = format!(
                "package p\nresult := {{\"allowed\": true, \"headers\": {{\"{header}\": \"evil\"}}}}\n"
            );
            let policy = Policy::compile_for(
                &[("p.rego", src.as_str())],
                "{}",
                "data.p.result",
                crate::policy::EngineChoice::Interpreter,
            )
            .unwrap();
            let f = Filter::with_policy(Config::from_json(CONFIG.as_bytes()).unwrap(), policy, 1);
            let mut h = request("POST", "/mcp://hello-skill/greet", Some(claims(json!({}))));
            assert_eq!(f.on_request_headers(&mut h).0, Flow::Replied, "{header}");
            assert_eq!(body(&h)["reason"], "policy_error", "{header}");
        }
    }
}
