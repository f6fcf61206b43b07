//! The end of a decided request: its reply (a JSON-RPC error for an MCP
//! message), its metric and its decision-log record, and the record
//! written with the final status when the stream logs.

use super::{Configured, Decision, Flow, Refused, Worker};
use crate::audit::{self, Trail};
use crate::claims::ClaimsError;
use crate::host::{Host, LogLevel};
use crate::outcome::{Denial, State};

impl Configured {
    /// Renders a decided request: the reply (a JSON-RPC error for an MCP
    /// message), the metric and the decision-log record.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn finish<H: Host>(
        &self,
        w: &mut Worker,
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
            self.release_held(w, host, &mut decision);
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
            w.count(host, &decision.state);
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
            w.pending.insert(host.stream_id(), decision.clone());
        }
        (flow, decision)
    }

    /// [`Filter::on_log`] on this worker's state.
    pub(super) fn on_log<H: Host>(&self, w: &mut Worker, host: &mut H, decision: &mut Decision) {
        self.release_held(w, host, decision);
        let settled = w
            .pending
            .remove(&host.stream_id())
            .filter(|d| d.id == decision.id);
        if let Some(d) = settled {
            decision.state = d.state;
            decision.record = d.record;
        }
        let reserved = std::mem::take(&mut decision.reserved);
        let Some(record) = decision.record.take() else {
            if reserved {
                self.release_reservation(w);
            }
            return;
        };
        let status = host
            .property(&["response", "code"])
            .and_then(|b| <[u8; 8]>::try_from(b.as_slice()).ok())
            .and_then(|b| u16::try_from(u64::from_le_bytes(b)).ok());
        let json = audit::finish(record, status);
        host.log(LogLevel::Info, &format!("{}{json}", audit::PREFIX));
        if let Some(sh) = w.shipper.as_mut() {
            sh.push(json, host.now_ns(), reserved);
        }
    }

    pub(super) fn release_reservation(&self, w: &mut Worker) {
        if let Some(sh) = w.shipper.as_mut() {
            sh.release();
        }
    }
}
