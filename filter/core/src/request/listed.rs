//! List responses (`tools/list`, `prompts/list`, `resources/list`) shown
//! through the policy's `visible` rule.
//!
//! A JSON body is one message: it is buffered (bounded by
//! `mcp.max_body_bytes`) and replaced whole. An event stream is filtered as
//! network chunks arrive: complete events are looked at once, only the
//! event carrying the list result is rewritten, every other event passes
//! byte for byte, and only an incomplete event waits (bounded alike). Once
//! the request's answer went out, the rest streams through untouched.
//! Whatever cannot be read or decided ends as a JSON-RPC error: an
//! unfiltered list never passes.

use super::{Configured, Decision, Visible, Worker};
use crate::host::{Host, LogLevel};
use crate::mcp::pin_store::TWIN;
use crate::mcp::pins::{self, PinState, ToolPin};
use crate::mcp::{self, BodyForm, ListJob, ListPhase};
use crate::metrics::M;
use crate::outcome::ListRefusal;
use serde_json::Value;
use std::rc::Rc;

/// What happens to an upstream response's body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseBody {
    /// Not read: it streams through.
    Untouched,
    /// A JSON list: buffered, then replaced whole (the headers wait).
    Buffered,
    /// An event-stream list: filtered chunk by chunk.
    Streamed,
}

/// What to do with one chunk of a response body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BodyStep {
    /// Send it as it is.
    Pass,
    /// Keep buffering (a JSON list not yet complete).
    Hold,
    /// Send these bytes instead (of the chunk, or of all that was held).
    Replace(Vec<u8>),
}

impl Decision {
    /// A JSON list response is still being buffered: its body must not
    /// pass before it is filtered (the host calls this when trailers end
    /// the body without an end-of-stream body callback).
    pub fn holds_list_body(&self) -> bool {
        self.list
            .as_ref()
            .is_some_and(|j| j.form == Some(BodyForm::Json) && j.phase == ListPhase::Reading)
    }
}

impl Configured {
    /// [`Filter::on_response_headers`] on this worker's state.
    pub(super) fn on_response_headers<H: Host>(
        &self,
        host: &mut H,
        decision: &mut Decision,
    ) -> ResponseBody {
        if let Some(t) = &decision.session {
            let table = crate::session::Table::new(&self.config.mcp);
            let bound = table.on_response(host, t);
            if let (Some(digest), Some(r)) = (bound, decision.record.as_mut()) {
                r.bind_session(digest);
            }
        }
        for (k, v) in self.reply_headers(decision) {
            host.set_response_header(k, v);
        }
        let Some(job) = decision.list.as_mut() else {
            return ResponseBody::Untouched;
        };
        let form = host
            .response_header("content-type")
            .and_then(|c| BodyForm::of(&c));
        // Compressed bodies cannot be read (the request went without
        // `accept-encoding`, so a server that compresses anyway is refused).
        let encoded = host
            .response_header("content-encoding")
            .is_some_and(|e| !e.trim().eq_ignore_ascii_case("identity"));
        let listing = job.field.is_some();
        match form {
            // A JSON answer to a request that lists nothing carries no list
            // to this client, compressed or not: only its own answer comes
            // in it. Unless the server is the one the pins guard against:
            // its answer is read, and a list it carries under another
            // request's id is refused (an SDK hands a message to whichever
            // pending request its id names).
            Some(BodyForm::Json) if !listing && !job.guarded => {
                decision.list = None;
                return ResponseBody::Untouched;
            }
            // Neither form on a request that lists nothing (an error page,
            // 202): nothing an MCP client reads as a list.
            None if !listing => {
                decision.list = None;
                return ResponseBody::Untouched;
            }
            _ => {}
        }
        if encoded || form.is_none() {
            // A list answer the filter cannot read: a JSON-RPC error in its
            // place.
            host.remove_response_header("content-encoding");
            host.set_response_header("content-type", "application/json");
            job.phase = ListPhase::Refused;
        }
        job.form = Some(if encoded {
            BodyForm::Json
        } else {
            form.unwrap_or(BodyForm::Json)
        });
        host.remove_response_header("content-length");
        host.set_response_header("cache-control", "private, no-store");
        match job.form {
            Some(BodyForm::Sse) => ResponseBody::Streamed,
            _ => ResponseBody::Buffered,
        }
    }

    /// [`Filter::on_response_body`] on this worker's state.
    pub(super) fn on_response_body<H: Host>(
        &self,
        w: &mut Worker,
        host: &mut H,
        decision: &mut Decision,
        size: usize,
        end: bool,
        read: impl FnOnce() -> Option<Vec<u8>>,
    ) -> BodyStep {
        let Decision { id, rpc, list, .. } = decision;
        let Some(job) = list.as_mut() else {
            return BodyStep::Pass;
        };
        let max = self.config.mcp.max_body_bytes;
        let depth = self.config.mcp.max_depth;
        let form = job.form.unwrap_or(BodyForm::Json);
        let fail = |job: &mut ListJob, why: &'static str| {
            job.phase = ListPhase::Failed;
            job.events.take_rest();
            ListRefusal::Unreadable(why).body(form, rpc.as_ref(), id)
        };
        match job.phase {
            ListPhase::Through => return BodyStep::Pass,
            // Refused at its headers: the error in place of the first
            // chunk, then nothing.
            ListPhase::Refused => {
                job.phase = ListPhase::Failed;
                let why = "list response unreadable (compressed or of an unknown type)";
                return BodyStep::Replace(ListRefusal::Unreadable(why).body(
                    form,
                    rpc.as_ref(),
                    id,
                ));
            }
            ListPhase::Failed => return BodyStep::Replace(Vec::new()),
            ListPhase::Reading => {}
        }
        if form == BodyForm::Json {
            if size > max {
                let why = if job.field.is_some() {
                    "list response too large to filter"
                } else {
                    "response of a pinned service too large to read"
                };
                return BodyStep::Replace(fail(job, why));
            }
            if !end {
                return BodyStep::Hold;
            }
            // A pinned service's answer to a request that lists nothing
            // is read too (guarded): its error must not speak of a list.
            let unreadable = if job.field.is_some() {
                "list response unreadable"
            } else {
                "response of a pinned service unreadable"
            };
            let Some(body) = read() else {
                return BodyStep::Replace(fail(job, unreadable));
            };
            let Ok(mut v) = mcp::strict_json(&body, depth) else {
                return BodyStep::Replace(fail(job, unreadable));
            };
            job.phase = ListPhase::Through;
            return match self.screen(w, host, job, id, rpc.as_ref(), &mut v) {
                Ok(false) => BodyStep::Pass,
                Ok(true) => match serde_json::to_vec(&v) {
                    Ok(out) => BodyStep::Replace(out),
                    Err(_) => BodyStep::Replace(fail(job, "list filter failed")),
                },
                Err(why) => BodyStep::Replace(fail(job, why)),
            };
        }
        let Some(chunk) = read() else {
            return BodyStep::Replace(fail(job, "list response unreadable"));
        };
        let mut events = job.events.push(&chunk);
        if end {
            // A last event without its blank line still counts: a client
            // may read it, so it is filtered like any other.
            let rest = job.events.take_rest();
            if !rest.is_empty() {
                events.push(rest);
            }
        }
        let mut out = Vec::with_capacity(chunk.len());
        for raw in events {
            // No data (a comment), or empty data (the priming event a
            // resumable stream starts with): nothing a client parses.
            let Some(data) = mcp::event_data(&raw).filter(|d| !d.trim_ascii().is_empty()) else {
                out.extend_from_slice(&raw);
                continue;
            };
            // Data the filter cannot read may be a list a laxer parser
            // reads (a lone surrogate, `1e400`, deep nesting): refused.
            let Ok(mut v) = mcp::strict_json(&data, depth) else {
                out.extend(fail(job, "event stream message unreadable"));
                return BodyStep::Replace(out);
            };
            match self.screen(w, host, job, id, rpc.as_ref(), &mut v) {
                Ok(false) => out.extend_from_slice(&raw),
                Ok(true) => match serde_json::to_string(&v) {
                    Ok(data) => out.extend(mcp::with_data(&raw, &data)),
                    Err(_) => {
                        out.extend(fail(job, "list filter failed"));
                        return BodyStep::Replace(out);
                    }
                },
                Err(why) => {
                    // Events already looked at still go; then the error.
                    out.extend(fail(job, why));
                    return BodyStep::Replace(out);
                }
            }
        }
        if job.events.pending() > max {
            out.extend(fail(job, "event too large to filter"));
        }
        if out == chunk {
            BodyStep::Pass
        } else {
            BodyStep::Replace(out)
        }
    }

    /// Looks at one message of a response: the answer to this list request
    /// is filtered through `visible`; a list result it cannot tie to the
    /// request the policy saw becomes a JSON-RPC error for that message.
    /// True when the message was rewritten.
    fn screen<H: Host>(
        &self,
        w: &mut Worker,
        host: &mut H,
        job: &mut ListJob,
        decision_id: &str,
        rpc: Option<&Value>,
        v: &mut Value,
    ) -> Result<bool, &'static str> {
        if v.is_array() {
            // Batches left MCP in 2025-06-18; an array could hide a list.
            return Err("batched response refused");
        }
        let fields = mcp::list_fields_of(v);
        if fields.is_empty() {
            return Ok(false);
        }
        let answer = is_answer(v, rpc);
        match job.field {
            Some(field) if answer && fields == [field] => self.show(w, host, job, field, v),
            // The answer to a request that lists nothing: its own result
            // (a tool's output), not a list shown to the client.
            None if answer => Ok(false),
            _ => {
                let id = v.get("id").cloned().unwrap_or(Value::Null);
                *v = ListRefusal::Untied.message(id, decision_id);
                Ok(true)
            }
        }
    }

    /// Filters one message if it holds a list: true when it was rewritten.
    fn show<H: Host>(
        &self,
        w: &mut Worker,
        host: &mut H,
        job: &mut ListJob,
        field: &'static str,
        v: &mut Value,
    ) -> Result<bool, &'static str> {
        let Some(listed) = mcp::list_names(v, field) else {
            return Ok(false);
        };
        let defs = pinned(w, host, job, v)?;
        let visible = self.visible(w, host, job, field, &listed, defs.as_ref())?;
        // A policy without a `visible` rule shows nothing: a list is only
        // ever shown through the policy.
        let names: &[String] = visible.as_ref().as_deref().unwrap_or(&[]);
        mcp::retain_listed(v, field, job.private, |n| names.iter().any(|s| s == n));
        Ok(true)
    }

    /// The policy's `visible` set for these listed names, on the request's
    /// input with `input.mcp.listed` (and, for a pinned service's tools,
    /// `input.mcp.listed_definitions`) added; cached per worker like
    /// decisions, keyed by the request's decision key, the names and their
    /// pins.
    fn visible<H: Host>(
        &self,
        w: &mut Worker,
        host: &mut H,
        job: &ListJob,
        field: &'static str,
        listed: &[String],
        defs: Option<&Definitions>,
    ) -> Result<Visible, &'static str> {
        let list_key = job.key.as_ref().map(|k| {
            let mut key = crate::cache::Key::with_capacity(k.len() + 16 * listed.len());
            key.field(k).field(field.as_bytes());
            for n in listed {
                key.field(n.as_bytes());
            }
            if let Some(defs) = defs {
                key.field(b"pins");
                for (name, p) in defs {
                    key.field(name.as_bytes())
                        .optional(p.digest.as_deref().map(str::as_bytes))
                        .field(p.state.as_str().as_bytes());
                }
            }
            key.into_bytes()
        });
        let now = host.now_ns();
        if let Some(hit) = list_key
            .as_ref()
            .and_then(|k| w.lists.as_mut()?.get(k, now))
        {
            return Ok(hit);
        }
        let mut doc = job.doc.clone();
        if let Ok(o) = doc.as_object_mut() {
            if let Some(Ok(m)) = o
                .get_mut(&regorus::Value::from("mcp"))
                .map(regorus::Value::as_object_mut)
            {
                m.insert(
                    regorus::Value::from("listed"),
                    crate::value::strings(listed),
                );
                if let Some(defs) = defs {
                    let defs: std::collections::BTreeMap<_, _> = defs
                        .iter()
                        .map(|(n, p)| (regorus::Value::from(n.as_str()), p.to_rego()))
                        .collect();
                    m.insert(
                        regorus::Value::from("listed_definitions"),
                        regorus::Value::from(defs),
                    );
                }
            }
        }
        let verdict = w.policy.evaluate(doc).map_err(|e| {
            host.log(LogLevel::Warn, &format!("agentplane: list filter: {e}"));
            "list filter failed"
        })?;
        let visible: Visible = Rc::new(verdict.visible);
        if let (Some(k), Some(until), Some(lists)) =
            (list_key, verdict.valid_until_ns, w.lists.as_mut())
        {
            lists.insert(k, visible.clone(), now, until);
        }
        Ok(visible)
    }
}

/// Each listed tool's definition against its pin, by name.
type Definitions = std::collections::BTreeMap<String, ToolPin>;

/// For a `tools/list` answer of a pinned service: each listed tool's
/// digest and pin (first definitions pinned, last ones remembered, see
/// [`crate::mcp::pins`]); the changed ones are counted and named in
/// `job.changed`. A name listed twice with two definitions counts as
/// changed: the list is filtered by name, so the second definition would
/// otherwise pass under the first one's pin.
fn pinned<H: Host>(
    w: &mut Worker,
    host: &mut H,
    job: &mut ListJob,
    v: &Value,
) -> Result<Option<Definitions>, &'static str> {
    let Some((pins, service)) = job.pins.as_ref() else {
        return Ok(None);
    };
    let (Some(sp), Some(items)) = (
        pins.service(service),
        v.get("result")
            .and_then(|r| r.get("tools"))
            .and_then(Value::as_array),
    ) else {
        return Ok(None);
    };
    let mut defs = Definitions::new();
    let mut twins = std::collections::BTreeSet::new();
    for item in items {
        let (Some(name), Some(d)) = (item.get("name").and_then(Value::as_str), pins::digest(item))
        else {
            continue;
        };
        match defs.get(name) {
            Some(seen) if seen.digest.as_deref() != Some(d.as_str()) => {
                twins.insert(name.to_string());
            }
            Some(_) => {}
            None => {
                let pin = ToolPin {
                    digest: Some(d),
                    state: PinState::Unpinned,
                };
                defs.insert(name.to_string(), pin);
            }
        }
    }
    // A twin is remembered as neither definition (see `TWIN`): it counts
    // as changed, so calls to it are refused whichever one the client
    // kept, and it pins nothing on first use.
    let shown: Vec<(&str, &str)> = defs
        .iter()
        .map(|(n, p)| match twins.contains(n) {
            true => (n.as_str(), TWIN),
            false => (n.as_str(), p.digest.as_deref().unwrap_or(TWIN)),
        })
        .collect();
    let now = host.now_ns();
    let states = sp.listed(host, &mut w.pins, now, service, &shown)?;
    // `shown` is in `defs`' order, one entry each.
    let mut changed = 0;
    for ((name, p), state) in defs.iter_mut().zip(states) {
        p.state = state;
        if state == PinState::Changed {
            // Named in the request's decision record when it is written.
            job.changed.push(name.clone());
            changed += 1;
        }
    }
    w.metrics.add(host, M::ToolPinChanged, changed);
    Ok(Some(defs))
}

/// Whether `v` answers the request (a response carrying its id): after it,
/// the stream has nothing more to filter.
fn is_answer(v: &Value, rpc: Option<&Value>) -> bool {
    let responds = v.get("result").is_some() || v.get("error").is_some();
    responds && rpc.is_some_and(|id| v.get("id") == Some(id))
}
