//! The proxy-wasm shell around `agentplane-core`: it only translates.
//!
//! `on_configure` builds one immutable [`Filter`] (config + compiled policy)
//! or returns `false` with a log line saying what to fix; each HTTP context
//! holds an `Rc` of it and maps the core's [`Flow`] to a proxy-wasm
//! [`Action`]. [`EnvoyHost`] implements the core's `Host` over hostcalls.

use agentplane_core::{filter::Decision, Filter, Flow, Host, LogLevel};
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{
    Action, BufferType, ContextType, LogLevel as PwLogLevel, MapType, MetricType,
};
use std::hash::BuildHasher;
use std::rc::Rc;
use std::time::{Duration, UNIX_EPOCH};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(PwLogLevel::Info);
    proxy_wasm::set_root_context(|id| -> Box<dyn RootContext> { Box::new(Root { id, filter: None }) });
}}

const VERSION: &str = env!("CARGO_PKG_VERSION");

struct Root {
    id: u32,
    filter: Option<Rc<Filter>>,
}

impl Context for Root {
    fn on_http_call_response(
        &mut self,
        token_id: u32,
        num_headers: usize,
        body_size: usize,
        _num_trailers: usize,
    ) {
        let Some(filter) = self.filter.clone() else {
            return;
        };
        // No headers: the call failed (timeout, refused, reset).
        let status = if num_headers == 0 {
            None
        } else {
            hostcalls::get_map_value(MapType::HttpCallResponseHeaders, ":status")
                .ok()
                .flatten()
                .and_then(|s| s.parse::<u16>().ok())
        };
        let body = if body_size > filter.max_callout_bytes() {
            None
        } else {
            Some(
                hostcalls::get_buffer(BufferType::HttpCallResponseBody, 0, body_size)
                    .ok()
                    .flatten()
                    .unwrap_or_default(),
            )
        };
        let mut host = EnvoyHost::root(self.id);
        filter.on_callout_response(&mut host, token_id, status, body.as_deref());
    }
}

fn seed() -> u64 {
    // std's RandomState draws its keys from the host's randomness (WASI random_get).
    std::collections::hash_map::RandomState::new().hash_one(EnvoyHost::root(0).now_ns())
}

impl RootContext for Root {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        let config = self.get_plugin_configuration().unwrap_or_default();
        match Filter::new(&config, seed()) {
            Ok(filter) => {
                filter.define_metrics(&mut EnvoyHost::root(self.id));
                if filter.needs_tick() {
                    // Secret fetches and decision-log batches run on this
                    // root context's tick.
                    self.set_tick_period(TICK);
                }
                if filter.has_secrets() {
                    // The cross-worker claims map exists before any claim,
                    // so every claim is a compare-and-swap.
                    let host = EnvoyHost::root(self.id);
                    if host
                        .shared_get(agentplane_core::secrets::CLAIMS_KEY)
                        .is_none()
                    {
                        let _ = hostcalls::set_shared_data(
                            agentplane_core::secrets::CLAIMS_KEY,
                            Some(b"{}"),
                            None,
                        );
                    }
                }
                EnvoyHost::root(0).log(
                    LogLevel::Info,
                    &format!(
                        "agentplane {VERSION} configured: policy revision {}, entrypoint {}, engine {}",
                        agentplane_core::bundle::REVISION,
                        filter.config().policy.entrypoint,
                        filter.policy().backend(),
                    ),
                );
                if let Some(why) = filter.policy().rvm_fallback() {
                    EnvoyHost::root(0).log(
                        LogLevel::Warn,
                        &format!("agentplane: policy runs on the interpreter; the RVM cannot compile it: {why}"),
                    );
                }
                self.filter = Some(Rc::new(filter));
                true
            }
            Err(e) => {
                EnvoyHost::root(0).log(
                    LogLevel::Error,
                    &format!("agentplane: refusing configuration: {e}"),
                );
                false
            }
        }
    }

    fn on_tick(&mut self) {
        if let Some(filter) = self.filter.clone() {
            filter.on_tick(&mut EnvoyHost::root(self.id));
        }
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Stream {
            id: context_id,
            root: self.id,
            filter: self.filter.clone(),
            decision: None,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Stream {
    id: u32,
    root: u32,
    filter: Option<Rc<Filter>>,
    decision: Option<Decision>,
}

impl Context for Stream {
    fn on_done(&mut self) -> bool {
        if let Some(filter) = &self.filter {
            filter.on_stream_done(self.id);
        }
        true
    }
}

impl HttpContext for Stream {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let Some(filter) = self.filter.clone() else {
            // Not configured: fail closed.
            EnvoyHost::stream(self.id, self.root).send_reply(
                503,
                &[("content-type", "application/json")],
                br#"{"error":"unavailable","reason":"filter_not_configured"}"#,
            );
            return Action::Pause;
        };
        let (flow, decision) =
            filter.on_request_headers(&mut EnvoyHost::stream(self.id, self.root));
        self.decision = Some(decision);
        match flow {
            Flow::Continue => Action::Continue,
            Flow::Replied | Flow::Paused => Action::Pause,
        }
    }

    fn on_log(&mut self) {
        if let (Some(filter), Some(d)) = (&self.filter, &self.decision) {
            filter.on_log(&mut EnvoyHost::stream(self.id, self.root), d);
        }
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        if let (Some(filter), Some(d)) = (&self.filter, &self.decision) {
            if d.allowed {
                filter.on_response_headers(&mut EnvoyHost::stream(self.id, self.root), d);
            }
        }
        Action::Continue
    }
}

/// `Host` over the proxy-wasm hostcalls of the current context: a stream,
/// or the worker's root context (ticks, callout responses), which may act
/// on other streams by switching the effective context and back.
struct EnvoyHost {
    stream: u32,
    root: u32,
}

const TICK: Duration = Duration::from_millis(5);

impl EnvoyHost {
    fn stream(stream: u32, root: u32) -> EnvoyHost {
        EnvoyHost { stream, root }
    }

    fn root(root: u32) -> EnvoyHost {
        EnvoyHost { stream: 0, root }
    }

    /// Runs `f` with `stream` as the effective context, then returns to the
    /// root. False when the stream no longer exists.
    fn on_stream(&self, stream: u32, f: impl FnOnce()) -> bool {
        if hostcalls::set_effective_context(stream).is_err() {
            let _ = hostcalls::set_effective_context(self.root);
            return false;
        }
        f();
        let _ = hostcalls::set_effective_context(self.root);
        true
    }
}

impl Host for EnvoyHost {
    fn property(&self, path: &[&str]) -> Option<Vec<u8>> {
        hostcalls::get_property(path.to_vec()).ok().flatten()
    }

    fn request_headers(&self) -> Vec<(String, String)> {
        hostcalls::get_map(MapType::HttpRequestHeaders).unwrap_or_default()
    }

    fn request_header(&self, name: &str) -> Option<String> {
        hostcalls::get_map_value(MapType::HttpRequestHeaders, name)
            .ok()
            .flatten()
    }

    fn set_request_header(&mut self, name: &str, value: &str) {
        let _ = hostcalls::set_map_value(MapType::HttpRequestHeaders, name, Some(value));
    }

    fn remove_request_header(&mut self, name: &str) {
        let _ = hostcalls::set_map_value(MapType::HttpRequestHeaders, name, None);
    }

    fn set_response_header(&mut self, name: &str, value: &str) {
        let _ = hostcalls::set_map_value(MapType::HttpResponseHeaders, name, Some(value));
    }

    fn send_reply(&mut self, status: u16, headers: &[(&str, &str)], body: &[u8]) {
        let _ = hostcalls::send_http_response(u32::from(status), headers.to_vec(), Some(body));
    }

    fn now_ns(&self) -> u64 {
        hostcalls::get_current_time()
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
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
        hostcalls::dispatch_http_call(
            cluster,
            headers.to_vec(),
            body,
            vec![],
            Duration::from_millis(timeout_ms),
        )
        .map_err(|s| format!("{s:?}"))
    }

    fn define_metric(&mut self, name: &str, histogram: bool) -> Option<u32> {
        let kind = if histogram {
            MetricType::Histogram
        } else {
            MetricType::Counter
        };
        hostcalls::define_metric(kind, name).ok()
    }

    fn add_metric(&mut self, id: u32, delta: u64) {
        let _ = hostcalls::increment_metric(id, i64::try_from(delta).unwrap_or(i64::MAX));
    }

    fn record_metric(&mut self, id: u32, value: u64) {
        let _ = hostcalls::record_metric(id, value);
    }

    fn shared_get(&self, key: &str) -> Option<(Vec<u8>, u32)> {
        match hostcalls::get_shared_data(key) {
            Ok((Some(v), cas)) => Some((v, cas.unwrap_or(0))),
            _ => None,
        }
    }

    fn shared_set(&mut self, key: &str, value: &[u8], cas: Option<u32>) -> bool {
        hostcalls::set_shared_data(key, Some(value), cas).is_ok()
    }

    fn resume_stream(&mut self, stream: u32, set: &[(String, String)]) -> bool {
        self.on_stream(stream, || {
            for (k, v) in set {
                let _ = hostcalls::set_map_value(MapType::HttpRequestHeaders, k, Some(v));
            }
            let _ = hostcalls::resume_http_request();
        })
    }

    fn reply_stream(
        &mut self,
        stream: u32,
        status: u16,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> bool {
        self.on_stream(stream, || {
            let _ = hostcalls::send_http_response(u32::from(status), headers.to_vec(), Some(body));
        })
    }

    fn log(&self, level: LogLevel, message: &str) {
        let level = match level {
            LogLevel::Debug => PwLogLevel::Debug,
            LogLevel::Info => PwLogLevel::Info,
            LogLevel::Warn => PwLogLevel::Warn,
            LogLevel::Error => PwLogLevel::Error,
        };
        let _ = hostcalls::log(level, message);
    }
}
