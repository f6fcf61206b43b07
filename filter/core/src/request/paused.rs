//! Waiting for secrets: an allowed request's headers are written with its
//! service's secrets, or it pauses until the broker fetches them; the
//! worker then resumes or refuses the stream ([`Filter::on_tick`],
//! [`Filter::on_callout_response`]).

use super::{Configured, Flow, Refused, Who, Worker};
use crate::audit::Trail;
use crate::headers::{check_value, RequestHeaders};
use crate::host::Host;
use crate::outcome::{Denial, State};
use crate::secrets::{self, Completion, Lookup};

impl Configured {
    /// After an allow: writes the request's headers through `commit` with
    /// the service's secrets from the cache (none when it has no secrets),
    /// or writes them without and pauses the stream until a job fetches
    /// the secrets, or refuses with 503.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn secrets<H: Host>(
        &self,
        w: &mut Worker,
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
                for h in sc.headers() {
                    trail.secrets.push(h.to_ascii_lowercase());
                }
            }
        }
        let unavailable =
            |why: String| (Denial::SecretsUnavailable(why), Some(who.agent.to_string()));
        let Some(broker) = w.broker.as_mut() else {
            return Err(unavailable("no vault configured".into()));
        };
        let needs = secrets::plan(specs, who.agent, who.team, who.kind).map_err(unavailable)?;
        let jwt = headers.bearer().map(secrets::Secret::new);
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
        let lookup = broker.request(
            host,
            who.principal,
            service.unwrap_or(""),
            needs,
            jwt,
            waiter,
        );
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
    pub(super) fn complete<H: Host>(
        &self,
        w: &mut Worker,
        host: &mut H,
        c: Completion,
        fail: fn(String) -> Denial,
    ) {
        let Some(mut p) = w.pending.remove(&c.stream) else {
            return; // the stream is gone
        };
        let denial = match c.result {
            Ok(set) => {
                let set: Vec<(String, String)> = set
                    .iter()
                    .map(|(k, v)| (k.clone(), v.expose().to_string()))
                    .collect();
                p.decision.state = State::Allowed;
                p.decision.record = self.record(&p.decision, &p.trail, p.decided_ns);
                w.pending.insert(c.stream, p);
                if host.resume_stream(c.stream, &set) {
                    w.count(host, &State::Allowed);
                    return;
                }
                // Not resumed: a header could not be set, or the stream is
                // gone (then nothing is left to refuse).
                let Some(back) = w.pending.remove(&c.stream) else {
                    return;
                };
                p = back;
                Denial::HostFailure("resume with secrets")
            }
            Err(why) => fail(why),
        };
        // A secrets or proxy failure: no challenge, no tool result.
        let reply = self.refusal(&denial, &p.decision, None, false);
        p.decision.state = State::Denied(denial);
        p.decision.record = self.record(&p.decision, &p.trail, p.decided_ns);
        w.count(host, &p.decision.state);
        w.pending.insert(c.stream, p);
        if !host.reply_stream(c.stream, reply.status, &reply.header_refs(), &reply.body) {
            w.pending.remove(&c.stream); // gone: nothing will log it
        }
    }

    pub(super) fn settle<H: Host>(&self, w: &mut Worker, host: &mut H) {
        let done = w
            .broker
            .as_mut()
            .map(|b| b.take_completions())
            .unwrap_or_default();
        for c in done {
            self.complete(w, host, c, Denial::SecretsUnavailable);
        }
        let exchanged: Vec<_> = w.exchangers().flat_map(|x| x.take_completions()).collect();
        for c in exchanged {
            self.complete(w, host, c, super::exchanged::failure);
        }
    }
}
