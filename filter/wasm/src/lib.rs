//! The proxy-wasm shell around `agentplane-core`: it only translates.
//!
//! `on_configure` builds one immutable [`Filter`] (config + compiled policy)
//! or returns `false` with a log line saying what to fix; each HTTP context
//! holds an `Rc` of it and maps the core's [`Flow`] to a proxy-wasm
//! [`Action`]. [`EnvoyHost`] implements the core's `Host` over hostcalls.

use agentplane_core::{filter::Decision, Filter, Flow, Host, LogLevel};
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel as PwLogLevel, MapType};
use std::hash::BuildHasher;
use std::rc::Rc;
use std::time::UNIX_EPOCH;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(PwLogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root { filter: None }) });
}}

const VERSION: &str = env!("CARGO_PKG_VERSION");

struct Root {
    filter: Option<Rc<Filter>>,
}

impl Context for Root {}

fn seed() -> u64 {
    // std's RandomState draws its keys from the host's randomness (WASI random_get).
    std::collections::hash_map::RandomState::new().hash_one(EnvoyHost.now_ns())
}

impl RootContext for Root {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        let config = self.get_plugin_configuration().unwrap_or_default();
        match Filter::new(&config, seed()) {
            Ok(filter) => {
                EnvoyHost.log(
                    LogLevel::Info,
                    &format!(
                        "agentplane {VERSION} configured: policy revision {}, entrypoint {}, engine {}",
                        agentplane_core::bundle::REVISION,
                        filter.config().policy.entrypoint,
                        filter.policy().backend(),
                    ),
                );
                if let Some(why) = filter.policy().rvm_fallback() {
                    EnvoyHost.log(
                        LogLevel::Warn,
                        &format!("agentplane: policy runs on the interpreter; the RVM cannot compile it: {why}"),
                    );
                }
                self.filter = Some(Rc::new(filter));
                true
            }
            Err(e) => {
                EnvoyHost.log(
                    LogLevel::Error,
                    &format!("agentplane: refusing configuration: {e}"),
                );
                false
            }
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Stream {
            filter: self.filter.clone(),
            decision: None,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Stream {
    filter: Option<Rc<Filter>>,
    decision: Option<Decision>,
}

impl Context for Stream {}

impl HttpContext for Stream {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let Some(filter) = self.filter.clone() else {
            // Not configured: fail closed.
            EnvoyHost.send_reply(
                503,
                &[("content-type", "application/json")],
                br#"{"error":"unavailable","reason":"filter_not_configured"}"#,
            );
            return Action::Pause;
        };
        let (flow, decision) = filter.on_request_headers(&mut EnvoyHost);
        self.decision = Some(decision);
        match flow {
            Flow::Continue => Action::Continue,
            Flow::Replied => Action::Pause,
        }
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        if let (Some(filter), Some(d)) = (&self.filter, &self.decision) {
            if d.allowed {
                filter.on_response_headers(&mut EnvoyHost, d);
            }
        }
        Action::Continue
    }
}

/// `Host` over the proxy-wasm hostcalls of the current stream.
struct EnvoyHost;

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
