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
use crate::cache::{DecisionCache, KeyFacts, KeyPlan};
use crate::claims::ClaimsError;
use crate::config::{Config, ConfigError, Protocol, SERVICE_HEADER};
use crate::headers::{self, check_value, RequestHeaders};
use crate::host::{Host, LogLevel};
use crate::ids::DecisionIds;
use crate::input::{self, RequestFacts, Route};
use crate::metrics::{Metrics, M};
use crate::outcome::{Denial, State};
use crate::policy::{Policy, Verdict};
use crate::principal::{Principal, Principals};
use crate::secrets::{self, Completion, Lookup};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;

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
    /// Undecided until the whole body is read ([`Filter::on_request_body`]):
    /// hold the headers and buffer the body.
    NeedBody,
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
    /// For an MCP message: its JSON-RPC id (`null` when unknown), so a
    /// refusal answers as a JSON-RPC error.
    pub rpc: Option<serde_json::Value>,
    /// For an allowed MCP list request: how to filter its response.
    pub list: Option<crate::mcp::ListJob>,
    /// In-flight leases held until the stream ends.
    pub held: crate::limits::Held,
    /// For an allowed request to an MCP service: who may use a session
    /// its response opens ([`crate::session`]).
    pub session: Option<crate::session::Ticket>,
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
    /// Which request facts a decision key holds.
    key_plan: KeyPlan,
    worker: Worker,
}

/// The MCP tool an allowed `tools/call` names, for the upstream (and a
/// fleet-wide rate limit service's descriptors). In the stripped
/// `x-agent-` namespace: a client cannot set it.
pub const TOOL_HEADER: &str = "x-agent-tool";

/// A request body the filter waited for, as the host delivered it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestBody<'a> {
    /// All of it.
    Complete(&'a [u8]),
    /// Longer than `mcp.max_body_bytes`: 413, nothing upstream.
    TooLarge,
    /// The host failed to hand it over: 503, nothing upstream.
    Unreadable,
}

/// A list response's visible names (`None`: the policy does not filter).
type Visible = Rc<Option<Vec<String>>>;

/// Per-worker (per-VM) state. Everything that changes while requests flow
/// lives here, apart from the immutable config and policy.
#[derive(Debug)]
struct Worker {
    ids: DecisionIds,
    cache: Option<RefCell<DecisionCache<Rc<Outcome>>>>,
    /// Visible sets of list responses, like decisions (same bounds).
    lists: Option<RefCell<DecisionCache<Visible>>>,
    /// Verified identities by their metadata bytes.
    principals: RefCell<Principals>,
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
    /// Requests waiting for their body (MCP POSTs), by stream id.
    awaiting: RefCell<HashMap<u32, Awaiting>>,
    /// Where the policy's limits count (shared by every worker).
    limits: crate::limits::Table,
    /// This VM's lease owner prefix (the stream id fills the low half).
    lease_owner: u64,
    /// Per-limit refusal counters, by limit name (bounded).
    limit_metrics: RefCell<HashMap<String, Option<u32>>>,
    /// Transaction tokens: the key, minted and verified tokens.
    txn: Option<RefCell<crate::txn::Signer>>,
}

/// What the headers phase ends in.
#[derive(Debug)]
enum Admission {
    /// A request to decide.
    Decide(Admitted),
    /// A request the filter answers itself (protected resource metadata).
    Answer(crate::outcome::Reply),
}

/// What the headers phase established about a request.
#[derive(Debug)]
struct Admitted {
    decision_id: String,
    reserved: bool,
    headers: RequestHeaders,
    principal: Rc<Principal>,
    method: String,
    path: String,
    service: Option<String>,
    authority: Option<String>,
    /// The connection's peer, when `source.peer_certificate` is on.
    source: Option<Box<crate::source::Source>>,
    /// A verified inbound transaction token.
    transaction: Option<Rc<crate::txn::Inbound>>,
}

impl Admitted {
    /// A POST to an MCP service is decided on its body.
    fn needs_body(&self, config: &Config) -> bool {
        self.method == "POST"
            && config
                .resource(self.service.as_deref().unwrap_or(""))
                .protocol
                == Protocol::Mcp
    }
}

/// A request waiting for its body.
#[derive(Debug)]
struct Awaiting {
    admitted: Admitted,
    trail: Trail,
    t0: u64,
}

/// A refusal and the agent it concerns, if known.
type Refused = (Denial, Option<String>);

fn bad(why: impl Into<String>) -> Refused {
    (Denial::BadRequest(why.into()), None)
}

/// A path the filter will not decide: 403 when it names a service other
/// than the one this proxy delivers to (`routing.local_service`), else 400.
fn unroutable(e: input::RouteError) -> Refused {
    match e {
        input::RouteError::OtherService { local, named } => {
            (Denial::OtherService { local, named }, None)
        }
        other => bad(other.to_string()),
    }
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
            key_plan: KeyPlan::new(policy.reads(), &config.headers.input),
            worker: Worker {
                ids: DecisionIds::new(seed),
                lists: config
                    .decision_cache
                    .as_ref()
                    .map(|c| RefCell::new(DecisionCache::new(c))),
                cache,
                principals: RefCell::new(Principals::new(config.identity.cache_entries)),
                broker,
                metrics: Metrics::default(),
                exported: Cell::new(secrets::BrokerStats::default()),
                shipper,
                exported_log: Cell::new((0, 0)),
                pending: RefCell::new(HashMap::new()),
                awaiting: RefCell::new(HashMap::new()),
                limits: crate::limits::Table::new(&config.limits),
                lease_owner: (seed ^ (seed >> 32)) << 32,
                limit_metrics: RefCell::new(HashMap::new()),
                txn: config
                    .txn_token
                    .as_ref()
                    .map(|_| RefCell::new(crate::txn::Signer::default())),
            },
            config,
            policy,
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
        if self.policy.has_limits() {
            self.worker.limits.create(host);
        }
        if self.config.has_mcp() {
            crate::session::Table::new(&self.config.mcp).create(host);
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
        self.txn_tick(host);
        self.needs_tick().then_some(TICK_MS)
    }

    /// Handles the request headers. On [`Flow::Replied`] the reply has been
    /// sent through the host and nothing may be forwarded. On
    /// [`Flow::NeedBody`] (a POST to an MCP service) nothing is decided
    /// yet: the host buffers the body and hands it to
    /// [`Filter::on_request_body`].
    pub fn on_request_headers<H: Host>(&self, host: &mut H) -> (Flow, Decision) {
        let t0 = if self.config.headers.metrics_header {
            host.now_ns()
        } else {
            0
        };
        let id = self.worker.ids.next_id();
        let mut trail = Trail::default();
        let mut reserved = false;
        let result = match self.admit(host, &id, &mut trail, &mut reserved) {
            Ok(Admission::Answer(reply)) => {
                host.send_reply(reply.status, &reply.header_refs(), &reply.body);
                let d = Decision {
                    id,
                    state: State::Allowed,
                    agent: None,
                    record: None,
                    request_id: trail.request_id,
                    timing: None,
                    reserved: false,
                    rpc: None,
                    list: None,
                    held: Default::default(),
                    session: None,
                };
                return (Flow::Replied, d);
            }
            Ok(Admission::Decide(admitted)) if admitted.needs_body(&self.config) => {
                let waiting = Decision {
                    id: id.clone(),
                    state: State::Pending,
                    agent: Some(admitted.principal.identity.id.clone()),
                    record: None,
                    request_id: trail.request_id.clone(),
                    timing: None,
                    reserved,
                    rpc: None,
                    list: None,
                    held: Default::default(),
                    session: None,
                };
                self.put_awaiting(
                    host.stream_id(),
                    Awaiting {
                        admitted,
                        trail,
                        t0,
                    },
                );
                return (Flow::NeedBody, waiting);
            }
            Ok(Admission::Decide(admitted)) => self.judge(host, &admitted, None, &mut trail),
            Err(refused) => Err(refused),
        };
        self.finish(host, id, trail, reserved, t0, result, None)
    }

    /// The body of a request [`Filter::on_request_headers`] left waiting
    /// (`Flow::NeedBody`), complete, too large for `mcp.max_body_bytes`
    /// (413), or unreadable from the host (503). Decides and replies or
    /// forwards as the headers phase would have.
    pub fn on_request_body<H: Host>(
        &self,
        host: &mut H,
        body: RequestBody<'_>,
    ) -> (Flow, Decision) {
        let Some(Awaiting {
            admitted,
            mut trail,
            t0,
        }) = self.take_awaiting(host.stream_id())
        else {
            // Not waiting: the host called twice, or for another stream.
            let id = self.worker.ids.next_id();
            let result = Err((Denial::HostFailure("request body without headers"), None));
            return self.finish(host, id, Trail::default(), false, 0, result, None);
        };
        let id = admitted.decision_id.clone();
        let reserved = admitted.reserved;
        let limits = crate::mcp::Limits {
            max_depth: self.config.mcp.max_depth,
        };
        let agent = Some(admitted.principal.identity.id.clone());
        let parsed = match body {
            RequestBody::TooLarge => Err((
                Denial::TooLarge {
                    max: self.config.mcp.max_body_bytes,
                },
                agent,
            )),
            RequestBody::Unreadable => Err((Denial::HostFailure("request body"), agent)),
            RequestBody::Complete(b) => crate::mcp::parse(b, limits)
                .map_err(|e| (Denial::Mcp(e), agent.clone()))
                .and_then(|m| {
                    // What goes upstream is the message the policy decides
                    // on, re-serialized: never the client's bytes, which
                    // another parser could read otherwise.
                    let out = m.to_json().map_err(|_| {
                        (
                            Denial::HostFailure("request body serialization"),
                            agent.clone(),
                        )
                    })?;
                    if !host.replace_request_body(b.len(), &out) {
                        return Err((Denial::HostFailure("request body write"), agent.clone()));
                    }
                    trail.body_len = Some(out.len());
                    Ok(m)
                }),
        };
        let rpc = Some(
            parsed
                .as_ref()
                .ok()
                .and_then(|m| m.id.clone())
                .unwrap_or(serde_json::Value::Null),
        );
        let result = match &parsed {
            Ok(m) => self.judge(host, &admitted, Some(m), &mut trail),
            Err(refused) => Err(refused.clone()),
        };
        self.finish(host, id, trail, reserved, t0, result, rpc)
    }

    /// Renders a decided request: the reply (a JSON-RPC error for an MCP
    /// message), the metric and the decision-log record.
    #[allow(clippy::too_many_arguments)]
    fn finish<H: Host>(
        &self,
        host: &mut H,
        id: String,
        mut trail: Trail,
        reserved: bool,
        t0: u64,
        result: Result<(String, Flow), Refused>,
        rpc: Option<serde_json::Value>,
    ) -> (Flow, Decision) {
        let timing = self.config.headers.metrics_header.then(|| {
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
            rpc,
            list: None,
            held: std::mem::take(&mut trail.held),
            session: None,
        };
        // A request that waits for its secrets keeps its list job: its
        // response is filtered alike when it resumes.
        if matches!(decision.state, State::Allowed | State::Pending) {
            decision.list = trail.list.clone();
            decision.session = trail.session.clone();
        }
        if !decision.allowed() {
            // Refused after its leases were taken: they go back now.
            self.release_held(host, &mut decision);
        }
        if let State::Denied(d) = &decision.state {
            // A policy refusal of a tools/call is a tool result the model
            // reads, unless the service asks for a JSON-RPC error.
            let tool_result = trail.tool.is_some()
                && self
                    .config
                    .resource(trail.service.as_deref().unwrap_or(""))
                    .tool_denial
                    == crate::config::ToolDenial::Result;
            let mut reply = d.answer(
                &decision.id,
                &self.reply_headers(&decision),
                decision.rpc.as_ref(),
                tool_result,
            );
            if let (Denial::Unauthorized(e), Some(url)) = (
                d,
                crate::oauth::challenge_url(&self.config, trail.service.as_deref()),
            ) {
                // MCP authorization: the client finds its authorization
                // server from the resource metadata (RFC 9728 §5.1).
                let mut v = format!(r#"Bearer resource_metadata="{url}""#);
                // The scopes to ask for (MCP authorization: the client
                // requests them from the start).
                let scopes = crate::oauth::scopes(&self.config, trail.service.as_deref());
                if !scopes.is_empty() {
                    v.push_str(&format!(r#", scope="{}""#, scopes.join(" ")));
                }
                if *e != ClaimsError::Missing {
                    v.push_str(r#", error="invalid_token""#);
                }
                if let Some(d) = e.error_description() {
                    v.push_str(&format!(r#", error_description="{d}""#));
                }
                for (k, old) in &mut reply.headers {
                    if k == "www-authenticate" {
                        *old = v.clone();
                    }
                }
            }
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
    pub(crate) fn reply_headers<'a>(&self, d: &'a Decision) -> Vec<(&'static str, &'a str)> {
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
        self.release_held(host, decision);
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
            "mcp-protocol-version",
            "mcp-method",
            "mcp-name",
            crate::session::HEADER,
            crate::txn::HEADER,
        ]
        .into_iter()
        .chain(self.config.headers.input.iter().map(String::as_str))
    }

    /// The headers phase: strips, reads the ids, the identity and the
    /// request line. Nothing is decided yet.
    fn admit<H: Host>(
        &self,
        host: &mut H,
        decision_id: &str,
        trail: &mut Trail,
        reserved: &mut bool,
    ) -> Result<Admission, Refused> {
        // Before anything else: nothing the client says about identity
        // survives (set aside now, gone from the request when it is
        // forwarded; a refused request goes nowhere).
        let headers = headers::read(host, &self.config)
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
        headers
            .check_read(self.read_headers())
            .map_err(|e| bad(e.to_string()))?;
        let method = normalize_method(
            headers
                .get(":method")
                .ok_or_else(|| bad("missing :method"))?,
        )?;
        let path = headers
            .get(":path")
            .ok_or_else(|| bad("missing :path"))?
            .to_string();
        // Protected resource metadata is public: served before identity.
        if let Some(reply) = crate::oauth::serve(&method, &path, &self.config) {
            return Ok(Admission::Answer(reply));
        }
        if let Some(reply) = self.serve_jwks(&method, &path) {
            return Ok(Admission::Answer(reply));
        }
        if self.config.decision_log.mandatory {
            if !self.reserve_log() {
                return Err((Denial::LogUnavailable, None));
            }
            *reserved = true;
        }
        // Refuse a malformed path before anything waits for a body.
        let service = input::parse_route(&path, &self.config)
            .map_err(unroutable)?
            .service
            .map(str::to_owned);
        trail.service.clone_from(&service);
        let raw = host
            .property(&["metadata"])
            .ok_or_else(|| unauthorized(ClaimsError::Missing))?;
        let authority = headers.get(":authority").map(str::to_owned);
        let principal = self.principal(&raw)?;
        // RFC 8707: a token issued for another service is refused here,
        // before the policy or a cached decision sees it.
        crate::audience::check(&self.config, service.as_deref(), &principal.audiences)
            .map_err(|e| (Denial::Unauthorized(e), Some(principal.identity.id.clone())))?;
        let transaction = self
            .inbound_txn(
                host,
                headers.get(crate::txn::HEADER),
                &principal.identity.id,
            )
            .map_err(|d| (d, Some(principal.identity.id.clone())))?;
        Ok(Admission::Decide(Admitted {
            decision_id: decision_id.to_string(),
            reserved: *reserved,
            headers,
            principal,
            method,
            path,
            service,
            authority,
            source: self
                .config
                .source
                .peer_certificate
                .then(|| Box::new(crate::source::Source::read(host))),
            transaction,
        }))
    }

    /// Decides an admitted request (with its MCP message, for an MCP
    /// POST) and forwards or refuses it.
    fn judge<H: Host>(
        &self,
        host: &mut H,
        a: &Admitted,
        mcp: Option<&crate::mcp::Message>,
        trail: &mut Trail,
    ) -> Result<(String, Flow), Refused> {
        let route = input::parse_route(&a.path, &self.config).map_err(unroutable)?;
        let now = host.now_ns();
        let logging = self.config.decision_log.enabled;
        let principal = &a.principal;
        let headers = &a.headers;
        let method = a.method.as_str();
        if logging {
            trail.agent_type.clone_from(&principal.identity.agent_type);
            trail.team.clone_from(&principal.identity.team);
            trail.chain = (!principal.identity.chain.is_empty()).then(|| {
                principal
                    .identity
                    .chain
                    .iter()
                    .map(|a| a.sub.clone())
                    .collect()
            });
        }
        let resource = self.config.resource(route.service.unwrap_or(""));
        let (action, mcp_version) = match (resource.protocol, mcp) {
            (Protocol::Mcp, Some(m)) => {
                let version = self
                    .mcp_version(headers, m, resource)
                    .map_err(|e| (Denial::Mcp(e), Some(principal.identity.id.clone())))?;
                let action = match m.kind {
                    crate::mcp::Kind::Response => self.config.mcp.actions.get("response"),
                    _ => None,
                }
                .map(String::as_str)
                .or_else(|| {
                    m.method
                        .as_deref()
                        .and_then(|name| self.config.mcp.action_for(name))
                });
                if action.is_none() && m.kind == crate::mcp::Kind::Request {
                    // A method no action maps: unknown here, as a server
                    // answers one it does not implement.
                    let e = crate::mcp::McpError::new(
                        crate::mcp::code::METHOD_NOT_FOUND,
                        format!(
                            "method {:?} is not available through this gateway",
                            m.method.as_deref().unwrap_or_default()
                        ),
                    );
                    return Err((Denial::Mcp(e), Some(principal.identity.id.clone())));
                }
                (action, version)
            }
            (Protocol::Mcp, None) => (
                self.config.mcp.actions.get(method).map(String::as_str),
                None,
            ),
            (Protocol::Http, _) => (self.config.action_for(resource, method), None),
        };
        // The tool called: limits may count by it (only names they list),
        // and it goes upstream as `x-agent-tool` for fleet-wide limits.
        trail.tool = mcp
            .filter(|m| m.method.as_deref() == Some("tools/call"))
            .and_then(|m| m.name())
            .map(str::to_string);
        let request_id = trail.request_id.clone();
        let facts = RequestFacts {
            method,
            route: &route,
            host: a.authority.as_deref().unwrap_or_default(),
            id: &request_id,
            action,
            time_ns: now,
            source: a.source.as_deref(),
            transaction: a.transaction.as_deref(),
        };
        let mcp_doc = || mcp.map(|m| input::mcp_doc(m, mcp_version.as_deref()));
        // The input document, built at most once: a list request keeps it
        // for its response, and the decision reuses that one.
        let build = || {
            input::build(
                headers,
                &self.config,
                &self.docs,
                principal,
                &facts,
                mcp_doc(),
            )
        };
        let list_doc = |t: &Trail| {
            t.list
                .as_ref()
                .filter(|j| j.field.is_some())
                .map(|j| j.doc.clone())
        };
        let key = self.worker.cache.as_ref().map(|_| {
            self.key_plan.key(&KeyFacts {
                principal: principal.serial,
                service: route.service,
                action,
                method,
                host: facts.host,
                raw_path: route.raw_path,
                query: route.query,
                request_id: &request_id,
                headers,
                mcp: mcp.map(|m| (m, mcp_version.as_deref())),
                source: a.source.as_deref(),
                transaction: a.transaction.as_deref(),
            })
        });
        // Every response of an MCP service is read for list results: a
        // list request's answer is filtered by the policy, on this
        // request's input with the listed names added; any other list
        // result is refused (see `mcp::ListJob`).
        if resource.protocol == Protocol::Mcp {
            let field = mcp
                .and_then(|m| m.method.as_deref())
                .and_then(crate::mcp::list_field);
            trail.list = Some(crate::mcp::ListJob {
                field,
                doc: if field.is_some() {
                    build()
                } else {
                    regorus::Value::Null
                },
                private: mcp_version.as_deref().is_some_and(|v| v >= "2026-07-28"),
                form: None,
                key: key.clone(),
                events: Default::default(),
                phase: Default::default(),
            });
        }
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
                // This request's own input: the cached decision was made on
                // one that differs at most where the policy never looks.
                if logging {
                    trail.input = Some(list_doc(trail).unwrap_or_else(build));
                }
                return self.forward(host, &outcome, a, &route, &request_id, trail);
            }
        }
        let doc = list_doc(trail).unwrap_or_else(build);
        let (outcome, valid_until) = self.authorize(host, principal, doc, trail);
        let outcome = Rc::new(outcome);
        if let (Some(cache), Some(key), Some(until)) = (&self.worker.cache, key, valid_until) {
            if let Ok(mut c) = cache.try_borrow_mut() {
                c.insert(key, Rc::clone(&outcome), now, until);
            }
        }
        self.forward(host, &outcome, a, &route, &request_id, trail)
    }

    /// The MCP revision a message is sent under: the `mcp-protocol-version`
    /// header, or the message's own `_meta` (2026-07-28, which then needs
    /// the header too); both, when present, must agree and name a revision
    /// the service accepts, as must the one an `initialize` asks for; the
    /// mirror headers must agree with the body; from 2026-07-28 on a
    /// client answers the server through multi-round-trip requests, never
    /// with a JSON-RPC response.
    fn mcp_version(
        &self,
        headers: &RequestHeaders,
        m: &crate::mcp::Message,
        resource: &crate::config::ResourceConfig,
    ) -> Result<Option<String>, crate::mcp::McpError> {
        use crate::mcp::{code, Kind, McpError};
        let header = headers.get("mcp-protocol-version");
        let meta = m.meta_version();
        let version = match (header, meta) {
            (Some(h), Some(b)) if h != b => {
                return Err(McpError::new(
                    code::HEADER_MISMATCH,
                    format!("MCP-Protocol-Version header {h:?} does not match the message's {b:?}"),
                ))
            }
            (None, Some(b)) => {
                return Err(McpError::new(
                    code::HEADER_MISMATCH,
                    format!("the message declares protocol version {b:?} in _meta but the MCP-Protocol-Version header is missing"),
                ))
            }
            (h, _) => h,
        };
        let accepted = resource.mcp_versions();
        // Without a header a request is taken as 2025-03-26, as the
        // specification tells servers to; `initialize` says its own.
        let assumed = match version {
            None if m.method.as_deref() != Some("initialize") => Some("2025-03-26"),
            v => v,
        };
        for v in assumed.iter().chain(m.requested_version().iter()) {
            if !accepted.iter().any(|a| a == v) {
                return Err(McpError::unsupported_version(v, &accepted));
            }
        }
        if m.kind == Kind::Response && version.is_some_and(|v| v >= "2026-07-28") {
            return Err(McpError::new(
                code::INVALID_REQUEST,
                "from 2026-07-28 on a client answers a server through multi-round-trip requests, not JSON-RPC responses",
            ));
        }
        m.check_mirrors(headers.get("mcp-method"), headers.get("mcp-name"), version)?;
        Ok(version.map(str::to_owned))
    }

    /// The principal for this request's verified metadata, from the
    /// worker's principals when its bytes were seen before.
    fn principal(&self, raw: &[u8]) -> Result<Rc<Principal>, Refused> {
        let max = self.config.headers.max_value_bytes;
        match self.worker.principals.try_borrow_mut() {
            Ok(mut ps) => ps.resolve(raw, &self.config.identity, max),
            // Not re-entrant; a fresh table decodes without keeping.
            Err(_) => Principals::new(0).resolve(raw, &self.config.identity, max),
        }
        .map_err(unauthorized)
    }

    /// Forwards an allowed outcome or refuses a denied one. Forwarding
    /// writes the request's headers back in one host call: the client's
    /// minus what was stripped (and its token, unless forwarded), plus
    /// the trusted identity, the authorized service for Envoy to route on,
    /// the service's own path and any secrets. Every write must succeed or
    /// the request is refused.
    fn forward<H: Host>(
        &self,
        host: &mut H,
        outcome: &Outcome,
        a: &Admitted,
        route: &Route<'_>,
        request_id: &str,
        trail: &mut Trail,
    ) -> Result<(String, Flow), Refused> {
        let headers = &a.headers;
        let agent = &outcome.agent;
        let allowed = match &outcome.result {
            Ok(a) => a,
            Err(d) => return Err((d.clone(), Some(agent.clone()))),
        };
        // Before anything counts: a session only its own principal uses.
        if self.config.resource(route.service.unwrap_or("")).protocol == Protocol::Mcp {
            let ticket = crate::session::Ticket::new(
                &a.principal,
                &a.method,
                headers.get(crate::session::HEADER),
            );
            let admitted = crate::session::Table::new(&self.config.mcp).admit(host, &ticket);
            trail.session = Some(ticket);
            admitted.map_err(|r| (Denial::McpSession(r), Some(agent.clone())))?;
        }
        if !allowed.limits.is_empty() {
            let facts = crate::limits::Facts {
                agent,
                team: allowed.team.as_deref(),
                agent_type: allowed.kind.as_deref(),
                service: route.service,
                tool: trail.tool.as_deref(),
            };
            trail.held = self
                .meter(host, &allowed.limits, &facts)
                .map_err(|r| (Denial::RateLimited(r), Some(agent.clone())))?;
        }
        let resource = self.config.resource(route.service.unwrap_or(""));
        let tool = trail
            .tool
            .clone()
            .filter(|t| check_value(t, self.config.headers.max_value_bytes).is_ok());
        // A registered service only: config refuses txn_token elsewhere.
        let signed = match route.service.filter(|_| resource.txn_token) {
            Some(service) => Some(
                self.txn_token_for(host, a, service, tool.as_deref())
                    .map_err(|d| (d, Some(agent.clone())))?,
            ),
            None => None,
        };
        let mut writes: Vec<(&str, &str)> = allowed
            .trusted
            .iter()
            .filter(|_| resource.identity_headers)
            .map(|(k, v)| (*k, v.as_str()))
            .chain(allowed.extra.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .collect();
        if let Some(t) = &signed {
            writes.push((crate::txn::HEADER, t));
            writes.push((DECISION_ID_HEADER, &a.decision_id));
        }
        writes.push(("x-request-id", request_id));
        if let Some(tool) = &tool {
            writes.push((TOOL_HEADER, tool));
        }
        if let Some(service) = route.service {
            if check_value(service, self.config.headers.max_value_bytes).is_err() {
                return Err(bad("service name cannot be sent as a header"));
            }
            writes.push((SERVICE_HEADER, service));
        }
        if let Some(p) = &route.upstream_path {
            writes.push((":path", p.as_str()));
        }
        // The body was replaced by the parsed message: its length with it.
        let body_len = trail
            .body_len
            .filter(|_| headers.get("content-length").is_some())
            .map(|n| n.to_string());
        if let Some(n) = &body_len {
            writes.push(("content-length", n.as_str()));
        }
        let mut drop: Vec<&str> = Vec::with_capacity(3);
        if !self.config.identity.forward_token {
            drop.push("authorization");
        }
        if signed.is_none() && self.config.txn_token.is_some() {
            // An inbound token is for this hop: never passed on as is.
            drop.push(crate::txn::HEADER);
        }
        if resource.protocol == Protocol::Mcp {
            // Responses stay readable for list filtering.
            drop.push("accept-encoding");
        }
        let who = Who {
            agent,
            principal: &outcome.principal,
            team: allowed.team.as_deref(),
            kind: allowed.kind.as_deref(),
        };
        let flow = self.secrets(host, headers, route.service, &who, trail, |host, secret| {
            let mut all = writes.clone();
            all.extend(secret.iter().map(|(k, v)| (k.as_str(), v.expose())));
            headers::rewrite(host, headers, &drop, &all)
        })?;
        Ok((agent.clone(), flow))
    }

    /// After an allow: writes the request's headers through `commit` with
    /// the service's secrets from the cache (none when it has no secrets),
    /// or writes them without and pauses the stream until a job fetches
    /// the secrets, or refuses with 503.
    fn secrets<H: Host>(
        &self,
        host: &mut H,
        headers: &RequestHeaders,
        service: Option<&str>,
        who: &Who<'_>,
        trail: &mut Trail,
        commit: impl FnOnce(&mut H, &[(String, secrets::Secret)]) -> bool,
    ) -> Result<Flow, Refused> {
        let failed = || {
            (
                Denial::HostFailure("request header write"),
                Some(who.agent.to_string()),
            )
        };
        // An unregistered service never has secrets (config refuses
        // default_resource.secrets).
        let Some(specs) = service
            .and_then(|s| self.config.resources.get(s))
            .map(|r| &r.secrets)
            .filter(|s| !s.is_empty())
        else {
            return if commit(host, &[]) {
                Ok(Flow::Continue)
            } else {
                Err(failed())
            };
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
            |why: String| (Denial::SecretsUnavailable(why), Some(who.agent.to_string()));
        let Some(broker) = self.worker.broker.as_ref() else {
            return Err(unavailable("no vault configured".into()));
        };
        let needs = secrets::plan(specs, who.agent, who.team, who.kind).map_err(unavailable)?;
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
            trace,
        };
        let mut b = broker
            .try_borrow_mut()
            .map_err(|_| unavailable("busy".into()))?;
        let lookup = b.request(
            host,
            who.principal,
            service.unwrap_or(""),
            needs,
            jwt,
            waiter,
        );
        drop(b);
        match lookup {
            Lookup::Ready(set) => {
                if commit(host, &set) {
                    Ok(Flow::Continue)
                } else {
                    Err(failed())
                }
            }
            // The secrets are set when the stream resumes.
            Lookup::Pending => {
                if commit(host, &[]) {
                    Ok(Flow::Paused)
                } else {
                    Err(failed())
                }
            }
            Lookup::Failed(why) => Err(unavailable(why)),
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
        let reply = denial.reply(&d.id, &self.reply_headers(&d), d.rpc.as_ref());
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

    fn put_awaiting(&self, stream: u32, a: Awaiting) {
        if let Ok(mut w) = self.worker.awaiting.try_borrow_mut() {
            w.insert(stream, a);
        }
    }

    fn take_awaiting(&self, stream: u32) -> Option<Awaiting> {
        self.worker.awaiting.try_borrow_mut().ok()?.remove(&stream)
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

    /// Whether the root context must tick: secret fetches, a decision-log
    /// collector, the signing key, or in-flight leases to renew.
    pub fn needs_tick(&self) -> bool {
        self.worker.broker.is_some()
            || self.worker.shipper.is_some()
            || self.worker.txn.is_some()
            || self.policy.has_limits()
    }

    /// Root context tick: ships decision records, dispatches due secret
    /// fetches and settles streams whose secrets arrived. Returns whether
    /// secret work is pending.
    pub fn on_tick<H: Host>(&self, host: &mut H) -> bool {
        let w = &self.worker;
        self.txn_tick(host);
        w.limits.renew(host);
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
        if self.txn_response(host, token, status, body) {
            return;
        }
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
    pub fn on_stream_done<H: Host>(
        &self,
        host: &mut H,
        stream: u32,
        decision: Option<&mut Decision>,
    ) {
        if let Some(mut b) = self
            .worker
            .broker
            .as_ref()
            .and_then(|b| b.try_borrow_mut().ok())
        {
            b.forget_stream(stream);
        }
        self.take_pending(stream);
        self.take_awaiting(stream);
        if let Some(d) = decision {
            self.release_held(host, d);
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
        principal: &Principal,
        doc: regorus::Value,
        trail: &mut Trail,
    ) -> (Outcome, Option<u64>) {
        let identity = &principal.identity;
        let refuse = |d: Denial| {
            (
                Outcome {
                    agent: identity.id.clone(),
                    principal: principal.secrets_principal.clone(),
                    result: Err(d),
                },
                None,
            )
        };
        let trusted = match &principal.trusted {
            Ok(t) => t.clone(),
            Err(why) => return refuse(Denial::UnsafeIdentity(why.clone())),
        };
        let max = self.config.headers.max_value_bytes;
        if self.config.decision_log.enabled {
            trail.input = Some(doc.clone());
        }
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
                return refuse(Denial::PolicyError);
            }
        };
        let Verdict {
            allowed,
            reasons,
            status,
            headers: extra,
            valid_until_ns,
            scope,
            visible: _,
            limits,
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
                return refuse(Denial::PolicyError);
            }
        }
        let result = if allowed {
            Ok(Allowed {
                trusted,
                extra,
                team: identity.team.clone(),
                kind: identity.agent_type.clone(),
                limits,
            })
        } else {
            let status = status.unwrap_or(403);
            let mut headers = extra;
            if let Some(scope) = scope.filter(|_| status == 403) {
                // RFC 6750 §3.1: the client can ask for this scope and retry.
                let mut v = format!(
                    r#"Bearer error="insufficient_scope", scope="{scope}", error_description="missing scope(s): {scope}""#
                );
                if let Some(url) =
                    crate::oauth::challenge_url(&self.config, trail.service.as_deref())
                {
                    v.push_str(&format!(r#", resource_metadata="{url}""#));
                }
                headers.retain(|(k, _)| !k.eq_ignore_ascii_case("www-authenticate"));
                headers.push(("www-authenticate".into(), v));
            }
            Err(Denial::Policy {
                status,
                reasons,
                headers,
            })
        };
        (
            Outcome {
                agent: identity.id.clone(),
                principal: principal.secrets_principal.clone(),
                result,
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
}

#[derive(Debug, Clone)]
struct Allowed {
    /// `x-agent-*` headers, checked.
    trusted: Vec<(&'static str, String)>,
    /// Headers a response-object policy added, checked.
    extra: Vec<(String, String)>,
    /// The agent's team and type (secret path templates), from the token.
    team: Option<String>,
    kind: Option<String>,
    /// The limits the policy applies (counted per request).
    limits: Vec<crate::limits::Limit>,
}

/// Who an allowed request is from, for secret paths.
struct Who<'a> {
    agent: &'a str,
    principal: &'a str,
    team: Option<&'a str>,
    kind: Option<&'a str>,
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod limit_tests;

#[cfg(test)]
mod list_tests;

#[cfg(test)]
mod edge_tests;

#[cfg(test)]
mod route_tests;

#[cfg(test)]
mod session_tests;

#[cfg(test)]
mod audience_tests;

mod listing;
pub use listing::{BodyStep, ResponseBody};

mod limiting;

mod signing;

#[cfg(test)]
mod signing_tests;
