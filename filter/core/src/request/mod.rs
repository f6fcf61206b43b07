//! One request through agentplane: strip, identify, route, decide, then
//! forward with trusted headers or refuse. A request's outcome is one
//! [`State`] value, decided once; [`Denial`] renders it into the reply,
//! the metric and the decision-log record. Nothing is forwarded unless it
//! was explicitly allowed.
//!
//! This file holds the host callbacks in the order a request meets them
//! (configure, request headers, request body, tick, callout response,
//! stream done); each phase lives in its own file beside it: [`stream`]
//! (per-stream state), [`worker`] ([`Filter`] and its per-VM state),
//! `admitted` (headers phase), `judged` (the decision), `limited`,
//! `forwarded`, `approved` (waiting for a human approval), `paused`
//! (waiting for secrets), `recorded` (reply, metric,
//! record, log), `listed` (list responses) and `signed` (txn tokens).

use crate::audit::Trail;
use crate::cache::KeyPlan;
use crate::config::{Config, ConfigError};
use crate::host::{Host, LogLevel};
use crate::input;
use crate::metrics::M;
use crate::outcome::{Denial, State};
use crate::policy::Policy;
use crate::secrets;

mod admitted;
mod approved;
mod exchanged;
mod forwarded;
mod judged;
mod limited;
mod listed;
mod paused;
mod recorded;
mod shadowed;
mod signed;
mod stream;
mod worker;

use admitted::{bad, unroutable, Admission};
use forwarded::Who;
pub use listed::{BodyStep, ResponseBody};
use stream::{Admitted, Awaiting, Carried, Paused, Refused, Wait};
pub use stream::{Decision, Flow, RequestBody};
pub use worker::Filter;
use worker::{Allowed, Configured, Outcome, Visible, Worker};

#[cfg(test)]
mod tests;

/// Response (and reply) header carrying the decision id.
pub const DECISION_ID_HEADER: &str = "x-decision-id";

/// Response (and reply) header carrying the request id, as the seed's
/// design names it.
pub const TRACE_ID_HEADER: &str = "x-mcp-trace-id";

/// Response header with the filter's own timing (`headers.metrics_header`).
pub const METRICS_HEADER: &str = "x-mcp-metrics";

/// The MCP tool an allowed `tools/call` names, for the upstream (and a
/// fleet-wide rate limit service's descriptors). In the stripped
/// `x-agent-` namespace: a client cannot set it.
pub const TOOL_HEADER: &str = "x-agent-tool";

/// How often the root context ticks when it has background work.
pub const TICK_MS: u64 = 5;

impl Filter {
    /// Parses the plugin configuration and compiles the embedded policy.
    /// `seed` feeds the decision-id generator.
    pub fn new(config_json: &[u8], seed: u64) -> Result<Filter, ConfigError> {
        let config = Config::from_json(config_json)?;
        let policy = Policy::embedded(&config.policy.entrypoint, config.policy.engine)
            .map_err(|e| ConfigError::Policy(e.to_string()))?;
        let shadow = shadowed::load(&config)?;
        let mut f = Filter::with_policy(config, policy, seed);
        f.worker.shadow = shadow;
        Ok(f)
    }

    /// A filter over an explicitly supplied policy (tests, benchmarks).
    pub fn with_policy(config: Config, policy: Policy, seed: u64) -> Filter {
        let key_plan = KeyPlan::new(policy.reads(), &config.headers.input);
        let worker = Worker::new(&config, policy, seed);
        Filter {
            core: Configured {
                docs: input::ResourceDocs::new(&config),
                key_plan,
                approval_keys: approved::grant_keys(&config),
                config,
            },
            worker,
        }
    }

    /// The validated configuration.
    pub fn config(&self) -> &Config {
        &self.core.config
    }

    /// The compiled policy (backend, fallback reason).
    pub fn policy(&self) -> &Policy {
        &self.worker.policy
    }

    /// Once per VM, on the root context after a successful configure:
    /// defines the stats, creates the cross-worker claims map (so every
    /// claim is a compare-and-swap) and logs what was configured. Returns
    /// the tick period the root context needs, if any.
    pub fn on_configured<H: Host>(&mut self, host: &mut H, version: &str) -> Option<u64> {
        self.core.on_configured(&mut self.worker, host, version)
    }

    /// The VM is shutting down (the root context's `on_done`): writes the
    /// decision-record chain's last checkpoint.
    pub fn on_vm_done<H: Host>(&mut self, host: &mut H) {
        self.core.checkpoint(&mut self.worker, host, true);
    }

    /// Handles the request headers. On [`Flow::Replied`] the reply has been
    /// sent through the host and nothing may be forwarded. On
    /// [`Flow::NeedBody`] (a POST to an MCP service) nothing is decided
    /// yet: the host buffers the body and hands it to
    /// [`Filter::on_request_body`].
    pub fn on_request_headers<H: Host>(&mut self, host: &mut H) -> (Flow, Decision) {
        self.core.on_request_headers(&mut self.worker, host)
    }

    /// The body of a request [`Filter::on_request_headers`] left waiting
    /// (`Flow::NeedBody`), complete, too large for `mcp.max_body_bytes`
    /// (413), or unreadable from the host (503). Decides and replies or
    /// forwards as the headers phase would have.
    pub fn on_request_body<H: Host>(
        &mut self,
        host: &mut H,
        waiting: &mut Decision,
        body: RequestBody<'_>,
    ) -> (Flow, Decision) {
        self.core
            .on_request_body(&mut self.worker, host, waiting, body)
    }

    /// Adds the decision id to the upstream response of an allowed request,
    /// and says whether its body must be read: an MCP service's event
    /// stream (any request's: a list result may come on any), a list
    /// request's JSON answer, or a list request's answer in a form the
    /// filter cannot read (then refused). Its length may then change, so
    /// `content-length` goes and the response is marked private.
    pub fn on_response_headers<H: Host>(
        &self,
        host: &mut H,
        decision: &mut Decision,
    ) -> ResponseBody {
        self.core.on_response_headers(host, decision)
    }

    /// One chunk of a response [`Filter::on_response_headers`] asked to
    /// read: `size` bytes have arrived (for a buffered JSON body, all so
    /// far), `end` when the body is complete. `read` fetches them, called
    /// only when they are needed.
    pub fn on_response_body<H: Host>(
        &mut self,
        host: &mut H,
        decision: &mut Decision,
        size: usize,
        end: bool,
        read: impl FnOnce() -> Option<Vec<u8>>,
    ) -> BodyStep {
        self.core
            .on_response_body(&mut self.worker, host, decision, size, end, read)
    }

    /// End of the stream: writes the decision-log record, if any, with the
    /// status the client got. A stream that waited for secrets is logged
    /// with how that ended.
    pub fn on_log<H: Host>(&mut self, host: &mut H, decision: &mut Decision) {
        self.core.on_log(&mut self.worker, host, decision)
    }

    /// A stream ended (possibly while waiting for secrets, possibly before
    /// its log phase).
    pub fn on_stream_done<H: Host>(
        &mut self,
        host: &mut H,
        stream: u32,
        decision: Option<&mut Decision>,
    ) {
        self.core
            .on_stream_done(&mut self.worker, host, stream, decision)
    }

    /// Root context tick: ships decision records, dispatches due secret
    /// fetches and settles streams whose secrets arrived. Returns whether
    /// secret work is pending.
    pub fn on_tick<H: Host>(&mut self, host: &mut H) -> bool {
        self.core.on_tick(&mut self.worker, host)
    }

    /// Root context: a callout answered (`status` `None` when it failed;
    /// `body` `None` when it was too large).
    pub fn on_callout_response<H: Host>(
        &mut self,
        host: &mut H,
        token: u32,
        status: Option<u16>,
        body: Option<&[u8]>,
    ) {
        self.core
            .on_callout_response(&mut self.worker, host, token, status, body)
    }

    /// Whether any service has secrets (the workers then share claims).
    pub fn has_secrets(&self) -> bool {
        self.worker.broker.is_some()
    }

    /// Whether the root context must tick: secret fetches, a decision-log
    /// collector, the signing key, or in-flight leases to renew.
    pub fn needs_tick(&self) -> bool {
        self.core.needs_tick(&self.worker)
    }

    /// Largest callout response the filter reads.
    pub fn max_callout_bytes(&self) -> usize {
        let vault = self
            .core
            .config
            .vault
            .as_ref()
            .map_or(0, |v| v.max_response_bytes);
        vault.max(64 * 1024)
    }

    /// Secrets counters, when secrets are configured.
    pub fn secrets_stats(&self) -> Option<secrets::BrokerStats> {
        Some(self.worker.broker.as_ref()?.stats)
    }

    /// Where a stream that waited for secrets stands now (`Pending` until
    /// its job ends); `None` for a stream this worker does not hold.
    pub fn settled(&self, stream: u32) -> Option<State> {
        self.worker
            .pending
            .get(&stream)
            .map(|p| p.decision.state.clone())
    }

    /// Streams waiting for secrets on this worker.
    pub fn pending_streams(&self) -> usize {
        self.worker.pending.len()
    }

    /// Decision-cache counters `(hits, misses, entries)`, when the cache is on.
    pub fn cache_stats(&self) -> Option<(u64, u64, usize)> {
        let c = self.worker.cache.as_ref()?;
        Some((c.hits, c.misses, c.len()))
    }
}

impl Configured {
    /// [`Filter::on_configured`] on this worker's state.
    pub(super) fn on_configured<H: Host>(
        &self,
        w: &mut Worker,
        host: &mut H,
        version: &str,
    ) -> Option<u64> {
        w.metrics.define(host);
        if w.broker.is_some() && host.shared_get(secrets::CLAIMS_KEY).is_none() {
            host.shared_set(secrets::CLAIMS_KEY, b"{}", None);
        }
        if w.policy.has_limits() {
            w.limits.create(host);
        }
        if self.config.has_mcp() {
            crate::session::Table::new(&self.config.mcp).create(host);
            crate::mcp::pin_store::create(host, w.policy.pins());
        }
        if self.config.approval.is_some() {
            crate::approval::used::create(host);
        }
        host.log(
            LogLevel::Info,
            &format!(
                "agentplane {version} configured: policy revision {}, entrypoint {}, engine {}",
                crate::bundle::REVISION,
                self.config.policy.entrypoint,
                w.policy.backend(),
            ),
        );
        // Pins apply to requests to a registered MCP service of that name:
        // under a misspelt or unregistered name they pin nothing, and the
        // policy (shipped with them) cannot tell.
        for s in w.policy.pins().services() {
            let mcp = self.config.resources.get(s);
            if !mcp.is_some_and(|r| r.protocol == crate::config::Protocol::Mcp) {
                host.log(
                    LogLevel::Warn,
                    &format!(
                        "agentplane: data.mcp.pins names {s:?}, not a registered MCP service: its tool pins apply to nothing"
                    ),
                );
            }
        }
        if let Some(why) = w.policy.rvm_fallback() {
            host.log(
                LogLevel::Warn,
                &format!(
                    "agentplane: policy runs on the interpreter; the RVM cannot compile it: {why}"
                ),
            );
        }
        self.txn_tick(w, host);
        if let Some(c) = w.chain.as_mut() {
            c.schedule(host.now_ns(), self.config.decision_log.checkpoint_s);
        }
        self.needs_tick(w).then_some(TICK_MS)
    }

    /// [`Filter::on_request_headers`] on this worker's state.
    pub(super) fn on_request_headers<H: Host>(
        &self,
        w: &mut Worker,
        host: &mut H,
    ) -> (Flow, Decision) {
        let t0 = if self.config.headers.metrics_header {
            host.now_ns()
        } else {
            0
        };
        let id = w.ids.next_id();
        let mut trail = Trail::default();
        let mut reserved = false;
        let mut carried = Carried::default();
        let result = match self.admit(w, host, &id, &mut trail, &mut reserved) {
            Ok(Admission::Answer(served)) => {
                let reply = served.reply();
                host.send_reply(reply.status, &reply.header_refs(), &reply.body);
                let d = Decision::new(id, State::Allowed, None, trail.request_id);
                return (Flow::Replied, d);
            }
            Ok(Admission::Decide(admitted)) if admitted.needs_body(&self.config) => {
                let mut waiting = Decision {
                    reserved,
                    ..Decision::new(
                        id.clone(),
                        State::Pending,
                        Some(admitted.principal.identity.id.clone()),
                        trail.request_id.clone(),
                    )
                };
                waiting.wait = Wait::on(Awaiting {
                    admitted,
                    trail,
                    t0,
                });
                return (Flow::NeedBody, waiting);
            }
            Ok(Admission::Decide(admitted)) => {
                self.judge(w, host, &admitted, None, &mut trail, &mut carried)
            }
            Err(refused) => Err(refused),
        };
        self.finish(w, host, id, trail, carried, reserved, t0, result, None)
    }

    /// [`Filter::on_request_body`] on this worker's state.
    pub(super) fn on_request_body<H: Host>(
        &self,
        w: &mut Worker,
        host: &mut H,
        waiting: &mut Decision,
        body: RequestBody<'_>,
    ) -> (Flow, Decision) {
        let Some(Awaiting {
            admitted,
            mut trail,
            t0,
        }) = waiting.wait.take()
        else {
            // Not waiting: the host called twice, or after a decision.
            let id = w.ids.next_id();
            let result = Err((Denial::HostFailure("request body without headers"), None));
            return self.finish(
                w,
                host,
                id,
                Trail::default(),
                Carried::default(),
                false,
                0,
                result,
                None,
            );
        };
        let limits = crate::mcp::Limits {
            max_depth: self.config.mcp.max_depth,
        };
        let agent = Some(admitted.principal.identity.id.clone());
        let mut request_state = None;
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
                .and_then(|mut m| {
                    // The gateway's own `requestState` is for the gateway:
                    // the server never sees it.
                    request_state = m.params.as_mut().and_then(crate::approval::take_state);
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
        let mut carried = Carried {
            request_state,
            ..Carried::default()
        };
        let result = match &parsed {
            Ok(m) => self.judge(w, host, &admitted, Some(m), &mut trail, &mut carried),
            Err(refused) => Err(refused.clone()),
        };
        let (id, reserved) = (admitted.decision_id.clone(), admitted.reserved);
        match parsed {
            Ok(m) => self.conclude(w, host, admitted, Some(m), trail, carried, t0, result, rpc),
            Err(_) => self.finish(w, host, id, trail, carried, reserved, t0, result, rpc),
        }
    }

    /// [`Filter::on_tick`] on this worker's state.
    pub(super) fn on_tick<H: Host>(&self, w: &mut Worker, host: &mut H) -> bool {
        self.txn_tick(w, host);
        self.checkpoint(w, host, false);
        w.limits.renew(host);
        if let Some(sh) = w.shipper.as_mut() {
            sh.on_tick(host);
            let (was_s, was_d) = std::mem::replace(&mut w.exported_log, (sh.shipped, sh.dropped));
            w.metrics
                .add(host, M::LogShipped, sh.shipped.saturating_sub(was_s));
            w.metrics
                .add(host, M::LogDropped, sh.dropped.saturating_sub(was_d));
        }
        let (wants, now) = match w.broker.as_mut() {
            Some(b) => {
                b.on_tick(host);
                (b.wants_tick(), b.stats)
            }
            None => return false,
        };
        self.settle(w, host);
        let was = std::mem::replace(&mut w.exported, now);
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

    /// [`Filter::on_callout_response`] on this worker's state.
    pub(super) fn on_callout_response<H: Host>(
        &self,
        w: &mut Worker,
        host: &mut H,
        token: u32,
        status: Option<u16>,
        body: Option<&[u8]>,
    ) {
        if self.txn_response(w, host, token, status, body) {
            return;
        }
        if w.exchangers()
            .any(|x| x.on_response(host, token, status, body))
        {
            self.settle(w, host);
            return;
        }
        let now = host.now_ns();
        if let Some(sh) = w.shipper.as_mut() {
            if sh.on_response(token, status, now) {
                return;
            }
        }
        if let Some(b) = w.broker.as_mut() {
            if !b.on_response(host, token, status, body) {
                host.log(
                    LogLevel::Debug,
                    &format!("agentplane: stale callout {token}"),
                );
            }
            // Steps that can go at once (the next read) go now.
            b.on_tick(host);
        }
        self.settle(w, host);
    }

    /// [`Filter::on_stream_done`] on this worker's state.
    pub(super) fn on_stream_done<H: Host>(
        &self,
        w: &mut Worker,
        host: &mut H,
        stream: u32,
        decision: Option<&mut Decision>,
    ) {
        if let Some(b) = w.broker.as_mut() {
            b.forget_stream(stream);
        }
        w.pending.remove(&stream);
        w.approvals.retain(|_, s| *s != stream);
        for x in w.exchangers() {
            x.forget_stream(stream);
        }
        if let Some(d) = decision {
            self.release_held(w, host, d);
            if std::mem::take(&mut d.reserved) {
                self.release_reservation(w);
            }
        }
    }

    /// Whether the root context must tick: secret fetches, a decision-log
    /// collector or checkpoints, the signing key, or in-flight leases to
    /// renew.
    fn needs_tick(&self, w: &Worker) -> bool {
        w.broker.is_some()
            || w.shipper.is_some()
            || w.txn.is_some()
            || w.policy.has_limits()
            || (w.chain.is_some() && self.config.decision_log.checkpoint_s > 0)
    }
}
