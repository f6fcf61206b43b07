//! The end of a decided request: its reply (a JSON-RPC error for an MCP
//! message), its metric and its decision-log record, the record written
//! with the final status when the stream logs (linked into the VM's
//! record chain), and the chain's checkpoints.

use super::{Carried, Configured, Decision, Flow, Paused, Refused, Worker};
use crate::audit::{self, Trail};
use crate::config::Sink;
use crate::host::{Host, LogLevel};
use crate::outcome::{Challenge, Denial, Reply, State};

impl Configured {
    /// Renders a decided request: the reply (a JSON-RPC error for an MCP
    /// message), the metric and the decision-log record.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn finish<H: Host>(
        &self,
        w: &mut Worker,
        host: &mut H,
        id: String,
        trail: Trail,
        carried: Carried,
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
            timing,
            reserved,
            rpc,
            held: carried.held,
            ..Decision::new(id, state, agent, trail.request_id.clone())
        };
        // A request that waits for its secrets keeps its list job: its
        // response is filtered alike when it resumes.
        if matches!(decision.state, State::Allowed | State::Pending) {
            decision.list = carried.list;
            decision.response_headers = carried.response_headers;
            decision.session = trail.session.clone();
        }
        if !decision.allowed() {
            // Refused after its leases were taken: they go back now.
            self.release_held(w, host, &mut decision);
        }
        if let State::Denied(d) = &decision.state {
            let reply = self.refusal(d, &decision, trail.service.as_deref(), trail.tool.is_some());
            host.send_reply(reply.status, &reply.header_refs(), &reply.body);
        }
        if decision.state != State::Pending {
            w.count(host, &decision.state);
        }
        if self.config.tracing.attributes {
            let agent = decision.agent.as_deref();
            crate::trace::decision(host, &decision.id, agent, &decision.state);
        }
        let now_ns = host.now_ns();
        if decision.state == State::Pending {
            // Its record is written once the outcome is known.
            let paused = Paused {
                decision: decision.clone(),
                trail,
                decided_ns: now_ns,
            };
            w.pending.insert(host.stream_id(), paused);
        } else {
            decision.record = self.record(&decision, &trail, now_ns);
        }
        (flow, decision)
    }

    /// The decision-log record of a decision in the state it is delivered
    /// in: every refusal, and allowed decisions in the sample; `None` when
    /// it is not logged. The one place a record is made (the log phase
    /// adds the response status, a session its id).
    pub(super) fn record(
        &self,
        decision: &Decision,
        trail: &Trail,
        now_ns: u64,
    ) -> Option<audit::Record> {
        let log = &self.config.decision_log;
        if !log.enabled || (decision.allowed() && !audit::sampled(log, &decision.id)) {
            return None;
        }
        let reasons = decision.denial().map(Denial::reasons).unwrap_or_default();
        let facts = audit::Facts {
            decision_id: &decision.id,
            now_ns,
            entrypoint: &self.config.policy.entrypoint,
            revision: crate::bundle::REVISION,
            allowed: decision.allowed(),
            reason: &decision.reason(),
            reasons: &reasons,
            status: decision.status(),
            agent: decision.agent.as_deref(),
        };
        Some(audit::record(log, &facts, trail))
    }

    /// [`Filter::on_log`] on this worker's state.
    pub(super) fn on_log<H: Host>(&self, w: &mut Worker, host: &mut H, decision: &mut Decision) {
        self.release_held(w, host, decision);
        if let Some(trail) = decision.wait.take_approval().map(|a| a.into_trail()) {
            // The stream ended while its approval was being asked for.
            decision.record = self.record(decision, &trail, host.now_ns());
        }
        let settled = w
            .pending
            .remove(&host.stream_id())
            .filter(|p| p.decision.id == decision.id);
        if let Some(p) = settled {
            decision.record = match p.decision.state {
                // The stream ended while it waited: recorded as it stood.
                State::Pending => self.record(&p.decision, &p.trail, p.decided_ns),
                _ => p.decision.record,
            };
            decision.state = p.decision.state;
            if self.config.tracing.attributes {
                crate::trace::outcome(host, &decision.state);
            }
        }
        let reserved = std::mem::take(&mut decision.reserved);
        let Some(mut record) = decision.record.take() else {
            if reserved {
                self.release_reservation(w);
            }
            return;
        };
        if let Some(job) = &decision.list {
            record.tools_changed(job.changed.iter().cloned());
        }
        // The response status is only read when the filter did not answer.
        let status = record.needs_status().then(|| {
            host.property(&["response", "code"])
                .and_then(|b| <[u8; 8]>::try_from(b.as_slice()).ok())
                .and_then(|b| u16::try_from(u64::from_le_bytes(b)).ok())
        });
        let json = audit::finish(record, status.flatten(), w.chain.as_mut());
        self.write_record(host, &json);
        if let Some(sh) = w.shipper.as_mut() {
            sh.push(json, host.now_ns(), reserved);
        }
    }

    /// Root context: writes a checkpoint of the record chain to Envoy's
    /// log (and the collector) when one is due, or at once when `last`
    /// (the VM shutting down). It is signed with the transaction-token
    /// key; while that key is still loading a periodic checkpoint waits,
    /// and without a `txn_token` block checkpoints say they are unsigned.
    pub(super) fn checkpoint<H: Host>(&self, w: &mut Worker, host: &mut H, last: bool) {
        let interval = self.config.decision_log.checkpoint_s;
        let Some(chain) = w.chain.as_mut() else {
            return;
        };
        let now = host.now_ns();
        if !last && !chain.due(now, interval) {
            return;
        }
        let key = match (&self.config.txn_token, w.txn.as_ref()) {
            (None, _) => Err("no signing key configured (txn_token)"),
            (Some(_), s) => match s.and_then(|s| s.ring.current.as_ref()) {
                Some(k) => Ok(k),
                None if !last => return,
                None => Err("the signing key had not loaded"),
            },
        };
        let Some(cp) = chain.checkpoint(now, key, interval) else {
            return;
        };
        let mut line = String::with_capacity(audit::chain::CHECKPOINT_PREFIX.len() + cp.len());
        line.push_str(audit::chain::CHECKPOINT_PREFIX);
        line.push_str(&cp);
        host.log(LogLevel::Info, &line);
        if let Some(sh) = w.shipper.as_mut() {
            sh.push(cp, now, false);
        }
    }

    /// Hands a finished record to the configured sink. Envoy's access log
    /// takes it as the stream's filter state, written after this (the
    /// filter's log callback runs before the access loggers); if Envoy
    /// refuses the property, the record goes to Envoy's log instead of
    /// being lost.
    fn write_record<H: Host>(&self, host: &mut H, json: &str) {
        if self.config.decision_log.sink == Sink::AccessLog
            && host.set_property(audit::PROPERTY, json.as_bytes())
        {
            return;
        }
        let mut line = String::with_capacity(audit::PREFIX.len() + json.len());
        line.push_str(audit::PREFIX);
        line.push_str(json);
        host.log(LogLevel::Info, &line);
    }

    /// The one place a refusal becomes its reply, whether the stream is
    /// refused at once or after waiting for secrets: a JSON-RPC error (or
    /// a tool result) for an MCP message, and for a 401 the challenge that
    /// points to the resource metadata.
    pub(super) fn refusal(
        &self,
        d: &Denial,
        decision: &Decision,
        service: Option<&str>,
        tool_call: bool,
    ) -> Reply {
        // A policy refusal of a tools/call is a tool result the model
        // reads, unless the service asks for a JSON-RPC error.
        let tool_result = tool_call
            && self.config.resource(service.unwrap_or("")).tool_denial
                == crate::config::ToolDenial::Result;
        // MCP authorization: a 401 tells the client where its
        // authorization server is and which scopes to ask for.
        let challenge = crate::oauth::challenge_url(&self.config, service).map(|url| Challenge {
            resource_metadata: url,
            scopes: crate::oauth::scopes(&self.config, service),
        });
        d.answer(
            &decision.id,
            &self.reply_headers(decision),
            decision.rpc.as_ref(),
            tool_result,
            challenge.as_ref(),
        )
    }

    pub(super) fn release_reservation(&self, w: &mut Worker) {
        if let Some(sh) = w.shipper.as_mut() {
            sh.release();
        }
    }
}
