//! The proxy-wasm shell around `agentplane-core`: it only translates.
//!
//! [`abi`] is our own proxy-wasm ABI layer (the only `unsafe`, and nothing
//! in it panics); this file is the dispatcher it calls into. Each root
//! context configures one [`Filter`] (or refuses the configuration, with a
//! log line saying what to fix); each stream context holds its decision and
//! the id of its root, and maps the core's [`Flow`] to the ABI's action
//! codes. [`EnvoyHost`] implements the core's `Host` over the ABI.
//!
//! No callback can trap: the state lives in one thread-local cell that each
//! callback borrows once, lending its root's filter `&mut` to the core for
//! the length of the call (proxy-wasm runs one callback at a time per VM;
//! Envoy defers local replies and resumes to after the call). Should that
//! borrow ever fail, a stream callback answers the fail-closed 503 and a
//! root callback logs it. Unknown context ids are ignored or answered with
//! the 503, and every host error becomes a core-level failure.

#![deny(unsafe_op_in_unsafe_fn)]

// The one module allowed `unsafe`; see its safety notes.
#[allow(unsafe_code)]
mod abi;

use agentplane_core::outcome::Served;
use agentplane_core::{
    BodyStep, Decision, Filter, Flow, Host, LogLevel, RequestBody, ResponseBody, State,
};
use std::cell::RefCell;
use std::collections::HashMap;
use std::hash::BuildHasher;

const VERSION: &str = env!("CARGO_PKG_VERSION");

/// `Action::Continue` / `Action::Pause`.
const CONTINUE: u32 = 0;
const PAUSE: u32 = 1;

#[derive(Default)]
struct Plugin {
    /// Root contexts and their configured filter (None until configured,
    /// or when the configuration was refused).
    roots: HashMap<u32, Option<Filter>>,
    streams: HashMap<u32, Stream>,
}

struct Stream {
    root: u32,
    /// Whether its root had a filter when the stream began: a stream that
    /// began unconfigured stays refused.
    configured: bool,
    decision: Option<Decision>,
    /// Undecided until its body is complete (an MCP POST).
    awaiting_body: bool,
    /// A list response being read to be filtered.
    filtering_response: bool,
}

thread_local! {
    static PLUGIN: RefCell<Plugin> = RefCell::new(Plugin::default());
}

/// Runs `f` on the plugin state; `None` if it is already borrowed (a
/// callback the host made while another was running), which each caller
/// turns into its fail-closed answer.
fn with<R>(f: impl FnOnce(&mut Plugin) -> R) -> Option<R> {
    PLUGIN.with(|p| p.try_borrow_mut().ok().map(|mut p| f(&mut p)))
}

/// Runs `f` on one stream and its root's filter. `Err` carries the
/// fail-closed reason when there is none to run on.
fn with_stream<R>(
    context: u32,
    f: impl FnOnce(&mut Stream, &mut Filter) -> R,
) -> Result<R, &'static str> {
    with(|p| {
        let Plugin { roots, streams } = p;
        let s = streams.get_mut(&context).ok_or("unknown_stream")?;
        let filter = roots
            .get_mut(&s.root)
            .and_then(Option::as_mut)
            .filter(|_| s.configured)
            .ok_or("filter_not_configured")?;
        Ok(f(s, filter))
    })
    .unwrap_or(Err("reentrant_callback"))
}

/// Runs `f` on a root's filter; `None` when it has none (or the state is
/// busy, which is logged: a root callback has no stream to refuse).
fn with_root<R>(root: u32, f: impl FnOnce(&mut Filter) -> R) -> Option<R> {
    let Some(r) = with(|p| p.roots.get_mut(&root).and_then(Option::as_mut).map(f)) else {
        EnvoyHost::root(root).log(
            LogLevel::Error,
            "agentplane: root callback while another ran; skipped",
        );
        return None;
    };
    r
}

pub(crate) fn on_context_create(context: u32, parent: u32) {
    with(|p| {
        if parent == 0 {
            p.roots.insert(context, None);
        } else {
            let configured = p.roots.get(&parent).is_some_and(Option::is_some);
            p.streams.insert(
                context,
                Stream {
                    root: parent,
                    configured,
                    decision: None,
                    awaiting_body: false,
                    filtering_response: false,
                },
            );
        }
    });
}

fn seed(root: u32) -> u64 {
    // std's RandomState draws its keys from the host's randomness (WASI random_get).
    std::collections::hash_map::RandomState::new().hash_one((root, abi::now_ns()))
}

/// The VM's linear memory, in bytes.
fn linear_memory_bytes() -> usize {
    #[cfg(target_arch = "wasm32")]
    {
        core::arch::wasm32::memory_size(0) * 65_536
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        0
    }
}

pub(crate) fn on_configure(root: u32, size: usize) -> bool {
    let mut host = EnvoyHost::root(root);
    let config = match abi::buffer(abi::PLUGIN_CONFIGURATION, size) {
        Ok(c) => c,
        Err(s) => {
            host.log(
                LogLevel::Error,
                &format!(
                    "agentplane: cannot read the plugin configuration (status {})",
                    s.0
                ),
            );
            return false;
        }
    };
    let t0 = abi::now_ns();
    match Filter::new(&config, seed(root)) {
        Ok(mut filter) => {
            if let Some(ms) = filter.on_configured(&mut host, VERSION) {
                let _ = abi::set_tick_period_ms(u32::try_from(ms).unwrap_or(u32::MAX));
            }
            // What this VM holds once configured (linear memory never
            // shrinks, so this is also its peak so far), for the bench and
            // for operators sizing sidecars.
            host.log(
                LogLevel::Info,
                &format!(
                    "agentplane: VM configured in {} us, linear memory {} KiB",
                    abi::now_ns().saturating_sub(t0) / 1_000,
                    linear_memory_bytes() / 1024
                ),
            );
            with(|p| p.roots.insert(root, Some(filter))).is_some()
        }
        Err(e) => {
            host.log(
                LogLevel::Error,
                &format!("agentplane: refusing configuration: {e}"),
            );
            false
        }
    }
}

pub(crate) fn on_tick(root: u32) {
    with_root(root, |filter| filter.on_tick(&mut EnvoyHost::root(root)));
}

pub(crate) fn on_http_call_response(root: u32, token: u32, headers: usize, body_size: usize) {
    // No headers: the call failed (timeout, refused, reset).
    let status = if headers == 0 {
        None
    } else {
        abi::header_value(abi::CALL_RESPONSE_HEADERS, ":status")
            .ok()
            .flatten()
            .and_then(|s| std::str::from_utf8(&s).ok()?.parse::<u16>().ok())
    };
    if approval_response(root, token, status, body_size) {
        return;
    }
    with_root(root, |filter| {
        let body = if body_size > filter.max_callout_bytes() {
            None
        } else {
            abi::buffer(abi::CALL_RESPONSE_BODY, body_size).ok()
        };
        filter.on_callout_response(&mut EnvoyHost::root(root), token, status, body.as_deref());
    });
}

/// Envoy answers every callout on the root context; an approval callout
/// belongs to the stream that waits for it, which is then served in its
/// own context (forwarded, or answered). Returns whether `token` was one.
fn approval_response(root: u32, token: u32, status: Option<u16>, body_size: usize) -> bool {
    with(|p| {
        let Plugin { roots, streams } = p;
        let Some(filter) = roots.get_mut(&root).and_then(Option::as_mut) else {
            return false;
        };
        let Some(stream) = filter.approval_stream(token) else {
            return false;
        };
        // A stream that ended meanwhile has nothing left to serve.
        let Some(decision) = streams.get_mut(&stream).and_then(|s| s.decision.as_mut()) else {
            return true;
        };
        let body = if body_size > filter.max_callout_bytes() {
            None
        } else {
            abi::buffer(abi::CALL_RESPONSE_BODY, body_size).ok()
        };
        if abi::set_effective_context(stream).is_ok() {
            let mut host = EnvoyHost::stream(stream, root);
            let flow =
                filter.on_approval_response(&mut host, decision, token, status, body.as_deref());
            if flow == Some(Flow::Continue) {
                let _ = abi::continue_request();
            }
        }
        let _ = abi::set_effective_context(root);
        true
    })
    .unwrap_or(false)
}

/// A fail-closed reply for a stream the filter cannot handle, rendered by
/// the core like every other reply.
fn unavailable(reason: &'static str) -> u32 {
    let reply = Served::Unavailable(reason).reply();
    let _ = abi::send_local_response(u32::from(reply.status), &reply.header_refs(), &reply.body);
    PAUSE
}

pub(crate) fn on_request_headers(context: u32, eos: bool) -> u32 {
    #[cfg(feature = "test-trap")]
    if let Ok(Some(_)) = abi::header_value(abi::REQUEST_HEADERS, "x-agentplane-test-trap") {
        // The worst case the end-to-end test can provoke: a trap.
        std::process::abort();
    }
    let served = with_stream(context, |s, filter| {
        let mut host = EnvoyHost::stream(context, s.root);
        let (mut flow, mut decision) = filter.on_request_headers(&mut host);
        if flow == Flow::NeedBody && eos {
            // No body will come: decide on an empty one.
            let mut waiting = decision;
            (flow, decision) =
                filter.on_request_body(&mut host, &mut waiting, RequestBody::Complete(&[]));
        }
        s.decision = Some(decision);
        s.awaiting_body = flow == Flow::NeedBody;
        flow
    });
    match served {
        Ok(Flow::Continue) => CONTINUE,
        // NeedBody: the headers wait for the body (Envoy's
        // `allow_on_headers_stop_iteration`).
        Ok(Flow::Replied | Flow::Paused | Flow::NeedBody | Flow::Approving) => PAUSE,
        Err(reason) => unavailable(reason),
    }
}

/// Body and trailers. A request waiting for its body (an MCP POST) is
/// buffered until complete, then decided. Otherwise the body is held while
/// the request waits for secrets or was refused, so no byte of it reaches
/// upstream before the headers do.
pub(crate) fn on_request_body(context: u32, size: usize, eos: bool) -> u32 {
    let served = with_stream(context, |s, filter| {
        if !s.awaiting_body {
            let state = match s.decision.as_ref().map(|d| &d.state) {
                // A stream that waited for secrets: how that ended.
                Some(State::Pending) => filter.settled(context),
                state => state.cloned(),
            };
            return match state {
                Some(State::Allowed) => CONTINUE,
                // Pending, denied, or headers never decided: hold it.
                _ => PAUSE,
            };
        }
        let max = filter.config().mcp.max_body_bytes;
        let too_large = size > max && size != usize::MAX;
        if !eos && !too_large {
            return PAUSE; // StopIterationAndBuffer: Envoy keeps buffering.
        }
        let mut host = EnvoyHost::stream(context, s.root);
        let read = if too_large {
            None
        } else {
            Some(abi::buffer(abi::REQUEST_BODY, max.saturating_add(1)))
        };
        let body = match &read {
            None => RequestBody::TooLarge,
            Some(Ok(b)) if b.len() <= max => RequestBody::Complete(b),
            Some(Ok(_)) => RequestBody::TooLarge,
            Some(Err(_)) => RequestBody::Unreadable,
        };
        s.awaiting_body = false;
        // The stream's waiting decision carries what its headers phase
        // established; without one, the filter refuses the body (503).
        let mut waiting = s.decision.take();
        let (flow, decision) = match waiting.as_mut() {
            Some(w) => filter.on_request_body(&mut host, w, body),
            None => return unavailable("unknown_stream"),
        };
        s.decision = Some(decision);
        match flow {
            Flow::Continue => CONTINUE,
            _ => PAUSE,
        }
    });
    // A stream the filter does not hold, or whose root has no filter:
    // nothing was decided for it, so its body is held.
    served.unwrap_or(PAUSE)
}

pub(crate) fn on_response_headers(context: u32, eos: bool) -> u32 {
    let served = with_stream(context, |s, filter| {
        let decision = s.decision.as_mut()?;
        let body = filter.on_response_headers(&mut EnvoyHost::stream(context, s.root), decision);
        // A response without a body has no list to filter: waiting for
        // one would hold the headers until a timeout.
        s.filtering_response = body != ResponseBody::Untouched && !eos;
        Some(body)
    });
    match served {
        Ok(Some(ResponseBody::Buffered)) if !eos => PAUSE, // the headers wait for the filtered body
        _ => CONTINUE,
    }
}

/// A JSON list response is buffered whole, then replaced by its filtered
/// form; an event-stream list is rewritten chunk by chunk; every other
/// response body streams through untouched.
pub(crate) fn on_response_body(context: u32, size: usize, eos: bool) -> u32 {
    let served = with_stream(context, |s, filter| {
        if !s.filtering_response {
            return None;
        }
        let decision = s.decision.as_mut()?;
        let step = filter.on_response_body(
            &mut EnvoyHost::stream(context, s.root),
            decision,
            size,
            eos,
            || abi::buffer(abi::RESPONSE_BODY, size).ok(),
        );
        s.filtering_response = decision.list.is_some();
        Some(step)
    });
    match served {
        Ok(Some(BodyStep::Hold)) => PAUSE, // StopIterationAndBuffer
        Ok(Some(BodyStep::Replace(out))) => {
            if abi::set_buffer(abi::RESPONSE_BODY, size, &out).is_err() {
                // The body could not be replaced: end the stream rather
                // than pass an unfiltered list.
                return unavailable("list_filter_failed");
            }
            CONTINUE
        }
        _ => CONTINUE,
    }
}

/// Trailers end a response body without an end-of-stream body callback:
/// a JSON list still being buffered cannot be filtered here, so the
/// response ends as a 503 rather than pass unfiltered.
pub(crate) fn on_response_trailers(context: u32) -> u32 {
    let held = with(|p| {
        p.streams.get(&context).is_some_and(|s| {
            s.filtering_response && s.decision.as_ref().is_some_and(Decision::holds_list_body)
        })
    })
    .unwrap_or(false);
    if held {
        return unavailable("list_response_with_trailers");
    }
    CONTINUE
}

pub(crate) fn on_log(context: u32) {
    let _ = with_stream(context, |s, filter| {
        if let Some(mut decision) = s.decision.take() {
            filter.on_log(&mut EnvoyHost::stream(context, s.root), &mut decision);
        }
    });
}

pub(crate) fn on_done(context: u32) {
    let _ = with(|p| {
        let Plugin { roots, streams } = p;
        let Some(mut s) = streams.remove(&context) else {
            // A root context: its VM is going away (Envoy shutting down,
            // or the plugin replaced).
            if let Some(filter) = roots.get_mut(&context).and_then(Option::as_mut) {
                filter.on_vm_done(&mut EnvoyHost::root(context));
            }
            return;
        };
        if let Some(filter) = roots.get_mut(&s.root).and_then(Option::as_mut) {
            if s.configured {
                filter.on_stream_done(
                    &mut EnvoyHost::stream(context, s.root),
                    context,
                    s.decision.as_mut(),
                );
            }
        }
    });
}

pub(crate) fn on_delete(context: u32) {
    on_done(context);
    with(|p| p.roots.remove(&context));
}

/// `Host` over the ABI for the current context: a stream, or the worker's
/// root context (ticks, callout responses), which may act on other streams
/// by switching the effective context and back.
struct EnvoyHost {
    stream: u32,
    root: u32,
}

impl EnvoyHost {
    fn stream(stream: u32, root: u32) -> EnvoyHost {
        EnvoyHost { stream, root }
    }

    fn root(root: u32) -> EnvoyHost {
        EnvoyHost { stream: 0, root }
    }

    /// Runs `f` with `stream` as the effective context, then returns to the
    /// root. `None` when the stream no longer exists.
    fn on_stream<R>(&self, stream: u32, f: impl FnOnce() -> R) -> Option<R> {
        if abi::set_effective_context(stream).is_err() {
            let _ = abi::set_effective_context(self.root);
            return None;
        }
        let r = f();
        let _ = abi::set_effective_context(self.root);
        Some(r)
    }
}

impl Host for EnvoyHost {
    fn property(&self, path: &[&str]) -> Option<Vec<u8>> {
        abi::property(path).ok().flatten()
    }

    fn set_property(&mut self, name: &str, value: &[u8]) -> bool {
        abi::set_property(name, value).is_ok()
    }

    fn request_headers(&self) -> Option<Vec<(Vec<u8>, Vec<u8>)>> {
        abi::header_pairs(abi::REQUEST_HEADERS).ok()
    }

    fn set_request_header(&mut self, name: &str, value: &str) -> bool {
        abi::replace_header(abi::REQUEST_HEADERS, name, value.as_bytes()).is_ok()
    }

    fn remove_request_header(&mut self, name: &[u8]) -> bool {
        abi::remove_header(abi::REQUEST_HEADERS, name).is_ok()
    }

    fn replace_request_body(&mut self, old_len: usize, body: &[u8]) -> bool {
        abi::set_buffer(abi::REQUEST_BODY, old_len, body).is_ok()
    }

    fn response_header(&self, name: &str) -> Option<String> {
        abi::header_value(abi::RESPONSE_HEADERS, name)
            .ok()
            .flatten()
            .and_then(|v| String::from_utf8(v).ok())
    }

    fn remove_response_header(&mut self, name: &str) {
        let _ = abi::remove_header(abi::RESPONSE_HEADERS, name.as_bytes());
    }

    fn set_response_header(&mut self, name: &str, value: &str) {
        let _ = abi::replace_header(abi::RESPONSE_HEADERS, name, value.as_bytes());
    }

    fn send_reply(&mut self, status: u16, headers: &[(&str, &str)], body: &[u8]) {
        let _ = abi::send_local_response(u32::from(status), headers, body);
    }

    fn now_ns(&self) -> u64 {
        abi::now_ns()
    }

    fn stream_id(&self) -> u32 {
        self.stream
    }

    fn dispatch_http_call(
        &mut self,
        cluster: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
        timeout_ms: u64,
    ) -> Result<u32, String> {
        let timeout = u32::try_from(timeout_ms).unwrap_or(u32::MAX);
        abi::http_call(cluster, headers, body, timeout).map_err(|s| format!("host status {}", s.0))
    }

    fn define_metric(&mut self, name: &str, histogram: bool) -> Option<u32> {
        let kind = if histogram {
            abi::METRIC_HISTOGRAM
        } else {
            abi::METRIC_COUNTER
        };
        abi::define_metric(kind, name).ok()
    }

    fn add_metric(&mut self, id: u32, delta: u64) {
        let _ = abi::increment_metric(id, i64::try_from(delta).unwrap_or(i64::MAX));
    }

    fn record_metric(&mut self, id: u32, value: u64) {
        let _ = abi::record_metric(id, value);
    }

    fn shared_get(&self, key: &str) -> Option<(Vec<u8>, u32)> {
        abi::shared_get(key).ok().flatten()
    }

    fn shared_set(&mut self, key: &str, value: &[u8], cas: Option<u32>) -> bool {
        abi::shared_set(key, value, cas.unwrap_or(0)).is_ok()
    }

    fn resume_stream(&mut self, stream: u32, set: &[(String, String)]) -> bool {
        self.on_stream(stream, || {
            // Every secret header must land, or the stream is not resumed
            // (the caller refuses it instead).
            set.iter()
                .all(|(k, v)| abi::replace_header(abi::REQUEST_HEADERS, k, v.as_bytes()).is_ok())
                && abi::continue_request().is_ok()
        })
        .unwrap_or(false)
    }

    fn reply_stream(
        &mut self,
        stream: u32,
        status: u16,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> bool {
        self.on_stream(stream, || {
            abi::send_local_response(u32::from(status), headers, body).is_ok()
        })
        .unwrap_or(false)
    }

    fn env_var(&self, name: &str) -> Option<String> {
        // WASI environ: what vm_config.environment_variables hands the VM.
        std::env::var(name).ok()
    }

    fn log(&self, level: LogLevel, message: &str) {
        let level = match level {
            LogLevel::Debug => abi::LOG_DEBUG,
            LogLevel::Info => abi::LOG_INFO,
            LogLevel::Warn => abi::LOG_WARN,
            LogLevel::Error => abi::LOG_ERROR,
        };
        let _ = abi::log(level, message);
    }
}
