//! Waiting for a human approval: an allowed `tools/call` whose policy asks
//! for one is bound ([`crate::approval::bind`]) and the approval service
//! asked where that binding stands, through a callout made for this
//! stream. The stream's own [`Decision`] carries the request meanwhile
//! ([`Approving`]); when the service answers, the same request is decided
//! again (the policy may have changed while a person looked) and, with a
//! grant that holds for exactly this call, forwarded. Otherwise the agent
//! is told where to get an approval, or why it was refused.

use super::{Admitted, Carried, Configured, Decision, Filter, Flow, Outcome, Refused, Worker};
use crate::approval::{self, Answer, Asked, AskedState, Binding, Form, Pending, Required};
use crate::audit::Trail;
use crate::host::{Host, LogLevel};
use crate::metrics::M;
use crate::outcome::Denial;
use ed25519_dalek::VerifyingKey;

/// The approval callout in flight for a call.
#[derive(Debug)]
pub(super) struct Asking {
    token: u32,
    binding: Binding,
    required: Required,
    form: Form,
}

/// A request waiting for the approval service, carried by its stream.
#[derive(Debug)]
pub(super) struct Approving {
    admitted: Admitted,
    message: crate::mcp::Message,
    trail: Trail,
    t0: u64,
    rpc: Option<serde_json::Value>,
    asking: Asking,
    request_state: Option<String>,
}

/// The approval service's grant keys, decoded. The config was checked
/// when it was read: a key that does not decode never gets here.
pub(super) fn grant_keys(config: &crate::config::Config) -> Vec<(String, VerifyingKey)> {
    config
        .approval
        .as_ref()
        .and_then(|a| a.keys().ok())
        .unwrap_or_default()
}

impl Approving {
    /// What its decision-log record is written from.
    pub(super) fn into_trail(self) -> Trail {
        self.trail
    }
}

impl Configured {
    /// Before an allowed outcome is forwarded: when the policy asks for an
    /// approval of this call, asks the approval service (the stream then
    /// waits, [`Flow::Approving`]) unless the call already carries a grant
    /// for exactly this binding. `Ok(None)`: go on forwarding.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn gate<H: Host>(
        &self,
        w: &mut Worker,
        host: &mut H,
        outcome: &Outcome,
        a: &Admitted,
        mcp: Option<&crate::mcp::Message>,
        version: Option<&str>,
        trail: &mut Trail,
        carried: &mut Carried,
    ) -> Result<Option<Flow>, Refused> {
        let Ok(allowed) = &outcome.result else {
            return Ok(None);
        };
        let Some(required) = &allowed.approval else {
            return Ok(None);
        };
        let agent = || Some(outcome.agent.clone());
        let unavailable = |why: &str| (Denial::ApprovalUnavailable(why.to_string()), agent());
        let call = mcp.filter(|m| m.method.as_deref() == Some("tools/call"));
        let (Some(m), Some(tool)) = (call, trail.tool.as_deref()) else {
            host.log(
                LogLevel::Warn,
                "agentplane: the policy asks for an approval of a request that is not a tool call",
            );
            return Err((Denial::PolicyError, agent()));
        };
        let form = Form::for_version(version);
        let refused = |state: AskedState| {
            let asked = Asked {
                state,
                pending: None,
                form,
                request_state: None,
            };
            (Denial::Approval(Box::new(asked)), agent())
        };
        if let Some(member) = approval::unbound(m) {
            return Err(refused(AskedState::Unbound(member)));
        }
        let service = trail.service.as_deref().unwrap_or_default();
        // With an inbound transaction token the call goes upstream as made
        // for that token's subject, through its actors: both are bound (and
        // shown), after the agent's own chain, or one approval would pass
        // the call for whichever transaction the retry carries.
        let mut chain: Vec<String> = a
            .principal
            .identity
            .chain
            .iter()
            .map(|c| c.sub.clone())
            .collect();
        if let Some(t) = &a.transaction {
            chain.extend(t.actors.iter().cloned());
            chain.push(t.claims.sub.clone());
        }
        // Where it goes upstream: the path as rewritten for the service, or
        // as it came.
        let route = crate::input::parse_route(&a.path, &self.config)
            .map_err(|_| unavailable("the call cannot be bound"))?;
        let endpoint = route.upstream_path.as_deref().unwrap_or(&a.path);
        let binding = approval::bind(
            &outcome.agent,
            &chain,
            service,
            endpoint,
            tool,
            m.arguments(),
        )
        .map_err(|_| unavailable("the call cannot be bound"))?;
        if trail
            .approval
            .as_ref()
            .is_some_and(|g| g.binding == binding.digest)
        {
            return Ok(None); // approved: this is the approved call itself
        }
        let Some(cfg) = &self.config.approval else {
            return Err(unavailable("no approval service is configured"));
        };
        let Some(key) = host.env_var(&cfg.key_env).filter(|k| !k.is_empty()) else {
            return Err(unavailable("the approval key is not set"));
        };
        if let Some(state) = &carried.request_state {
            // The retry of a call answered "input required": it must be
            // that call.
            match approval::open(key.as_bytes(), state) {
                Ok(b) if b == binding.digest => {}
                Ok(_) => return Err(refused(AskedState::Mismatch)),
                Err(why) => return Err(refused(AskedState::BadGrant(why))),
            }
        }
        let body = approval::ask_body(&binding, required, &a.decision_id);
        let bearer = format!("Bearer {key}");
        let sent = host.dispatch_http_call(
            &cfg.cluster,
            &[
                (":method", "POST"),
                (":path", &cfg.path),
                (":authority", &cfg.authority),
                ("content-type", "application/json"),
                ("authorization", &bearer),
            ],
            Some(&body),
            cfg.timeout_ms,
        );
        let token = sent.map_err(|_| unavailable("the approval service cannot be called"))?;
        w.approvals.insert(token, host.stream_id());
        carried.asking = Some(Asking {
            token,
            binding,
            required: required.clone(),
            form,
        });
        Ok(Some(Flow::Approving))
    }

    /// Ends a body phase: a request now waiting for its approval is kept
    /// by the stream's decision; any other is finished.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn conclude<H: Host>(
        &self,
        w: &mut Worker,
        host: &mut H,
        admitted: Admitted,
        message: Option<crate::mcp::Message>,
        trail: Trail,
        mut carried: Carried,
        t0: u64,
        result: Result<(String, Flow), Refused>,
        rpc: Option<serde_json::Value>,
    ) -> (Flow, Decision) {
        let id = admitted.decision_id.clone();
        let reserved = admitted.reserved;
        let waiting = match (&result, message, carried.asking.take()) {
            (Ok((_, Flow::Approving)), Some(message), Some(asking)) => Some((message, asking)),
            (Ok((_, Flow::Approving)), _, _) => {
                let r = Err((Denial::HostFailure("approval wait"), None));
                return self.finish(w, host, id, trail, carried, reserved, t0, r, rpc);
            }
            _ => None,
        };
        let Some((message, asking)) = waiting else {
            return self.finish(w, host, id, trail, carried, reserved, t0, result, rpc);
        };
        let mut decision = Decision {
            reserved,
            rpc: rpc.clone(),
            ..Decision::new(
                id,
                crate::outcome::State::Pending,
                Some(admitted.principal.identity.id.clone()),
                trail.request_id.clone(),
            )
        };
        decision.wait = super::Wait::approval(Approving {
            admitted,
            message,
            trail,
            t0,
            rpc,
            asking,
            request_state: carried.request_state.take(),
        });
        (Flow::Approving, decision)
    }

    /// The approval service answered (or failed to) for the stream whose
    /// decision is `decision`: forwards the call on a grant for exactly
    /// it, else answers. `None`: not this stream's callout.
    pub(super) fn on_approval<H: Host>(
        &self,
        w: &mut Worker,
        host: &mut H,
        decision: &mut Decision,
        token: u32,
        status: Option<u16>,
        body: Option<&[u8]>,
    ) -> Option<Flow> {
        let ap = decision.wait.take_approval()?;
        if ap.asking.token != token {
            decision.wait = super::Wait::approval(ap);
            return None;
        }
        let Approving {
            admitted,
            message,
            mut trail,
            t0,
            rpc,
            asking,
            request_state,
        } = ap;
        let agent = Some(admitted.principal.identity.id.clone());
        let key = self
            .config
            .approval
            .as_ref()
            .and_then(|c| host.env_var(&c.key_env))
            .unwrap_or_default();
        let asked = |state: AskedState, pending: Option<Pending>| {
            let request_state = pending
                .as_ref()
                .filter(|_| asking.form == Form::InputRequired)
                .map(|p| approval::seal(key.as_bytes(), &p.id, &asking.binding.digest));
            let asked = Asked {
                state,
                pending,
                form: asking.form,
                request_state,
            };
            Err((Denial::Approval(Box::new(asked)), agent.clone()))
        };
        let unavailable = |why: String| Err((Denial::ApprovalUnavailable(why), agent.clone()));
        let mut carried = Carried {
            request_state,
            ..Carried::default()
        };
        let now_s = i64::try_from(host.now_ns() / 1_000_000_000).unwrap_or(i64::MAX);
        let result = match (status, body) {
            (Some(200), Some(b)) => match approval::read(b) {
                Ok(Answer::Approved { grant, .. }) => match approval::grant::verify(
                    &grant,
                    &self.approval_keys,
                    &asking.binding.digest,
                    &asking.required.approvers,
                    now_s,
                ) {
                    // Claimed before its call goes on: an answer replayed
                    // to this proxy passes nothing twice.
                    Ok(g) if approval::used::claim(host, &g.id, g.expires_s, now_s).is_err() => {
                        asked(AskedState::BadGrant("approval already used"), None)
                    }
                    Ok(g) => {
                        w.metrics.add(host, M::ApprovalGranted, 1);
                        trail.approval = Some(g);
                        // Decided again where it is delivered: the policy
                        // may have changed while the approver looked.
                        self.judge(w, host, &admitted, Some(&message), &mut trail, &mut carried)
                    }
                    Err(why) => asked(AskedState::BadGrant(why), None),
                },
                Ok(Answer::Pending(p)) => asked(AskedState::Required, Some(p)),
                Ok(Answer::Used(p)) => asked(AskedState::Used, Some(p)),
                Ok(Answer::Expired(p)) => asked(AskedState::Expired, Some(p)),
                Ok(Answer::Rejected { approver, .. }) => {
                    asked(AskedState::Rejected { approver }, None)
                }
                Err(why) => unavailable(format!("the approval service's answer: {why}")),
            },
            (Some(s), _) => unavailable(format!("the approval service answered HTTP {s}")),
            (None, _) => unavailable("the approval service did not answer in time".into()),
        };
        let (flow, d) = self.conclude(
            w,
            host,
            admitted,
            Some(message),
            trail,
            carried,
            t0,
            result,
            rpc,
        );
        *decision = d;
        Some(flow)
    }
}

impl Filter {
    /// The stream waiting for approval callout `token`, if any (taken: a
    /// token is answered once). The host then calls
    /// [`Filter::on_approval_response`] with that stream's decision, in
    /// that stream's context.
    pub fn approval_stream(&mut self, token: u32) -> Option<u32> {
        self.worker.approvals.remove(&token)
    }

    /// The approval service's answer to callout `token` of the stream
    /// whose decision is `decision`. [`Flow::Continue`]: resume the
    /// request; anything else: it was answered or waits on. `None`: not
    /// this stream's callout (nothing changed).
    pub fn on_approval_response<H: Host>(
        &mut self,
        host: &mut H,
        decision: &mut Decision,
        token: u32,
        status: Option<u16>,
        body: Option<&[u8]>,
    ) -> Option<Flow> {
        self.core
            .on_approval(&mut self.worker, host, decision, token, status, body)
    }
}
