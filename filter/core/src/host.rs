//! The seam between request logic and the proxy: [`Host`], and [`MockHost`]
//! which implements it in memory for tests.
//!
//! Header names passed to and returned from a host are lower-case, as HTTP/2
//! and Envoy's header map present them.

use std::cell::RefCell;
use std::collections::BTreeMap;

/// Severity of a log line handed to the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum LogLevel {
    /// Per-request detail; off in production.
    Debug,
    /// Configuration and lifecycle events.
    Info,
    /// Something an operator should look at.
    Warn,
    /// The filter could not do what it was asked.
    Error,
}

/// What the filter needs from the proxy for one request.
pub trait Host {
    /// Reads a proxy property (an Envoy attribute path such as
    /// `["metadata", "filter_metadata", "envoy.filters.http.jwt_authn"]`) as
    /// raw bytes. `None` when the property does not exist.
    fn property(&self, path: &[&str]) -> Option<Vec<u8>>;
    /// Sets a property of the current stream (Envoy keeps `name` as the
    /// filter state `wasm.<name>`, which access loggers can write). False
    /// when the host refused or has no such thing.
    fn set_property(&mut self, _name: &str, _value: &[u8]) -> bool {
        false
    }
    /// All request headers (pseudo-headers included), in order, as the
    /// bytes the proxy holds: HTTP allows header values that are not UTF-8.
    /// `None` when the host could not hand the map over.
    fn request_headers(&self) -> Option<Vec<(Vec<u8>, Vec<u8>)>>;
    /// Sets (replaces) a request header. False when the host refused.
    fn set_request_header(&mut self, name: &str, value: &str) -> bool;
    /// Removes every value of a request header. False when the host refused.
    fn remove_request_header(&mut self, name: &[u8]) -> bool;
    /// Replaces the request body the host buffered (`old_len` bytes) with
    /// `body`, in the body phase. False when the host refused: the filter
    /// then refuses the request, since the bytes it decided on would not
    /// be the bytes that go upstream.
    fn replace_request_body(&mut self, _old_len: usize, _body: &[u8]) -> bool {
        false
    }
    /// Sets (replaces) a response header; only valid in the response phase.
    fn set_response_header(&mut self, name: &str, value: &str);
    /// A response header's value (response phase), if present and UTF-8.
    fn response_header(&self, _name: &str) -> Option<String> {
        None
    }
    /// Removes a response header (response phase).
    fn remove_response_header(&mut self, _name: &str) {}
    /// Ends the request with a local reply; nothing is forwarded upstream.
    fn send_reply(&mut self, status: u16, headers: &[(&str, &str)], body: &[u8]);
    /// Wall-clock time in nanoseconds since the Unix epoch.
    fn now_ns(&self) -> u64;
    /// Writes a line to the proxy's log.
    fn log(&self, level: LogLevel, message: &str);

    // --- callouts (secrets): used from the worker's root context ---------

    /// The id of the stream being handled (proxy-wasm context id).
    fn stream_id(&self) -> u32 {
        0
    }
    /// Asks for [`crate::Filter::on_tick`] every `period_ms` (0: stop).
    fn arm_tick(&mut self, _period_ms: u64) {}
    /// Sends an HTTP request to a proxy cluster; the answer arrives later
    /// through [`crate::Filter::on_callout_response`] with the returned token.
    fn dispatch_http_call(
        &mut self,
        _cluster: &str,
        _headers: &[(&str, &str)],
        _body: Option<&[u8]>,
        _timeout_ms: u64,
    ) -> Result<u32, String> {
        Err("this host cannot make callouts".into())
    }
    /// Sets request headers on a paused stream and lets it continue. False
    /// when the stream is gone.
    fn resume_stream(&mut self, _stream: u32, _set: &[(String, String)]) -> bool {
        false
    }
    /// Ends a paused stream with a local reply. False when it is gone.
    fn reply_stream(
        &mut self,
        _stream: u32,
        _status: u16,
        _headers: &[(&str, &str)],
        _body: &[u8],
    ) -> bool {
        false
    }
    /// Defines a counter (or, with `histogram`, a histogram) in the proxy's
    /// stats; `None` when the host has no stats.
    fn define_metric(&mut self, _name: &str, _histogram: bool) -> Option<u32> {
        None
    }
    /// Adds to a counter.
    fn add_metric(&mut self, _id: u32, _delta: u64) {}
    /// Records a histogram sample.
    fn record_metric(&mut self, _id: u32, _value: u64) {}
    /// Data shared by every worker's VM (same `vm_id`): value and its CAS.
    fn shared_get(&self, _key: &str) -> Option<(Vec<u8>, u32)> {
        None
    }
    /// Stores shared data; with `cas`, only if the value has not changed
    /// since it was read. False when refused.
    fn shared_set(&mut self, _key: &str, _value: &[u8], _cas: Option<u32>) -> bool {
        false
    }
    /// An environment variable the proxy hands the VM (Envoy:
    /// `vm_config.environment_variables`), for credentials that must not
    /// be in the plugin configuration.
    fn env_var(&self, _name: &str) -> Option<String> {
        None
    }
}

/// Shared data as [`MockHost`] keeps it: give two hosts the same one to
/// play two workers.
pub type SharedData = std::rc::Rc<RefCell<BTreeMap<String, (Vec<u8>, u32)>>>;

fn owned(headers: &[(&str, &str)]) -> Vec<(String, String)> {
    headers
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

impl Reply {
    fn new(status: u16, headers: &[(&str, &str)], body: &[u8]) -> Reply {
        Reply {
            status,
            headers: owned(headers),
            body: body.to_vec(),
        }
    }
}

/// A callout recorded by [`MockHost`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dispatched {
    /// Token returned to the filter.
    pub token: u32,
    /// Target cluster.
    pub cluster: String,
    /// Request headers (pseudo-headers included).
    pub headers: Vec<(String, String)>,
    /// Request body.
    pub body: Option<Vec<u8>>,
    /// Timeout.
    pub timeout_ms: u64,
}

impl Dispatched {
    /// A header of the callout.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A local reply recorded by [`MockHost`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// HTTP status.
    pub status: u16,
    /// Response headers.
    pub headers: Vec<(String, String)>,
    /// Response body.
    pub body: Vec<u8>,
}

/// An in-memory [`Host`] for tests: properties and headers in, reply and
/// modified headers out.
#[derive(Debug, Default)]
pub struct MockHost {
    properties: BTreeMap<Vec<String>, Vec<u8>>,
    headers: Vec<(Vec<u8>, Vec<u8>)>,
    /// When set, the host refuses header writes and removals.
    pub refuse_header_writes: bool,
    /// When set, the host cannot hand over the request header map.
    pub no_header_map: bool,
    /// Request header writes and removals made.
    pub header_writes: u32,
    /// The request body as it goes upstream, when the filter replaced it.
    pub forwarded_body: Option<Vec<u8>>,
    /// When set, the host refuses to replace the request body.
    pub refuse_body_writes: bool,
    /// The local reply, if the filter sent one.
    pub reply: Option<Reply>,
    /// Clock reading returned by [`Host::now_ns`].
    pub now_ns: u64,
    /// Response headers set by the filter.
    pub response_headers: Vec<(String, String)>,
    /// Every line logged, with its level.
    pub logs: RefCell<Vec<(LogLevel, String)>>,
    /// The stream id [`Host::stream_id`] returns.
    pub stream: u32,
    /// Callouts sent, in order.
    pub dispatched: Vec<Dispatched>,
    /// When set, dispatching fails with this error.
    pub dispatch_error: Option<String>,
    /// Streams resumed, with the headers set on them.
    pub resumed: Vec<(u32, Vec<(String, String)>)>,
    /// Local replies sent to other streams.
    pub stream_replies: Vec<(u32, Reply)>,
    /// Streams that no longer exist (resume/reply fail).
    pub gone: Vec<u32>,
    /// The last tick period asked for.
    pub tick_ms: Option<u64>,
    /// Shared data (see [`SharedData`]).
    pub shared: SharedData,
    /// Shared-data reads and writes this host served.
    pub shared_calls: std::cell::Cell<u32>,
    /// Metrics by name: counter totals, or histogram samples summed.
    pub metrics: BTreeMap<String, u64>,
    metric_names: Vec<String>,
    /// Environment variables [`Host::env_var`] answers from.
    pub env: BTreeMap<String, String>,
    /// Properties the filter set, by name (the last value set).
    pub set_properties: BTreeMap<String, Vec<u8>>,
    /// When set, the host refuses to set properties.
    pub refuse_set_property: bool,
}

impl MockHost {
    /// An empty host at 2025-05-03T12:00:00Z.
    pub fn new() -> Self {
        MockHost {
            now_ns: 1_746_273_600_000_000_000,
            ..Default::default()
        }
    }

    /// Adds a property at `path`.
    pub fn with_property(mut self, path: &[&str], value: impl Into<Vec<u8>>) -> Self {
        self.properties
            .insert(path.iter().map(|s| s.to_string()).collect(), value.into());
        self
    }

    /// Appends a request header (the name is lower-cased as Envoy does).
    pub fn with_header(self, name: &str, value: &str) -> Self {
        self.with_header_bytes(name.as_bytes(), value.as_bytes())
    }

    /// Appends a request header given as raw bytes (not necessarily UTF-8).
    pub fn with_header_bytes(mut self, name: &[u8], value: &[u8]) -> Self {
        self.headers
            .push((name.to_ascii_lowercase(), value.to_vec()));
        self
    }

    /// Sets the clock.
    pub fn at(mut self, now_ns: u64) -> Self {
        self.now_ns = now_ns;
        self
    }

    /// Every value of a request header as it would go upstream.
    pub fn header_values(&self, name: &str) -> Vec<String> {
        self.headers
            .iter()
            .filter(|(k, _)| k == name.as_bytes())
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
            .collect()
    }

    /// Every request header as it would go upstream, as bytes.
    pub fn raw_headers(&self) -> &[(Vec<u8>, Vec<u8>)] {
        &self.headers
    }
}

impl Host for MockHost {
    fn property(&self, path: &[&str]) -> Option<Vec<u8>> {
        let key: Vec<String> = path.iter().map(|s| s.to_string()).collect();
        self.properties.get(&key).cloned()
    }

    fn set_property(&mut self, name: &str, value: &[u8]) -> bool {
        if self.refuse_set_property {
            return false;
        }
        self.set_properties.insert(name.to_string(), value.to_vec());
        true
    }

    fn request_headers(&self) -> Option<Vec<(Vec<u8>, Vec<u8>)>> {
        (!self.no_header_map).then(|| self.headers.clone())
    }

    fn set_request_header(&mut self, name: &str, value: &str) -> bool {
        if !self.remove_request_header(name.as_bytes()) {
            return false;
        }
        self.headers
            .push((name.as_bytes().to_vec(), value.as_bytes().to_vec()));
        true
    }

    fn remove_request_header(&mut self, name: &[u8]) -> bool {
        if self.refuse_header_writes {
            return false;
        }
        self.header_writes += 1;
        self.headers.retain(|(k, _)| !k.eq_ignore_ascii_case(name));
        true
    }

    fn replace_request_body(&mut self, _old_len: usize, body: &[u8]) -> bool {
        if self.refuse_body_writes {
            return false;
        }
        self.forwarded_body = Some(body.to_vec());
        true
    }

    fn response_header(&self, name: &str) -> Option<String> {
        self.response_headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    }

    fn remove_response_header(&mut self, name: &str) {
        self.response_headers.retain(|(k, _)| k != name);
    }

    fn set_response_header(&mut self, name: &str, value: &str) {
        self.response_headers.retain(|(k, _)| k != name);
        self.response_headers
            .push((name.to_string(), value.to_string()));
    }

    fn send_reply(&mut self, status: u16, headers: &[(&str, &str)], body: &[u8]) {
        self.reply = Some(Reply::new(status, headers, body));
    }

    fn now_ns(&self) -> u64 {
        self.now_ns
    }

    fn log(&self, level: LogLevel, message: &str) {
        self.logs.borrow_mut().push((level, message.to_string()));
    }

    fn stream_id(&self) -> u32 {
        self.stream
    }

    fn env_var(&self, name: &str) -> Option<String> {
        self.env.get(name).cloned()
    }

    fn arm_tick(&mut self, period_ms: u64) {
        self.tick_ms = Some(period_ms);
    }

    fn dispatch_http_call(
        &mut self,
        cluster: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
        timeout_ms: u64,
    ) -> Result<u32, String> {
        if let Some(e) = &self.dispatch_error {
            return Err(e.clone());
        }
        let token = u32::try_from(self.dispatched.len()).unwrap_or(u32::MAX) + 1;
        self.dispatched.push(Dispatched {
            token,
            cluster: cluster.to_string(),
            headers: owned(headers),
            body: body.map(<[u8]>::to_vec),
            timeout_ms,
        });
        Ok(token)
    }

    fn define_metric(&mut self, name: &str, _histogram: bool) -> Option<u32> {
        self.metric_names.push(name.to_string());
        self.metrics.entry(name.to_string()).or_insert(0);
        u32::try_from(self.metric_names.len() - 1).ok()
    }

    fn add_metric(&mut self, id: u32, delta: u64) {
        if let Some(n) = self.metric_names.get(id as usize) {
            *self.metrics.entry(n.clone()).or_insert(0) += delta;
        }
    }

    fn record_metric(&mut self, id: u32, value: u64) {
        self.add_metric(id, value);
    }

    fn shared_get(&self, key: &str) -> Option<(Vec<u8>, u32)> {
        self.shared_calls.set(self.shared_calls.get() + 1);
        self.shared.borrow().get(key).cloned()
    }

    fn shared_set(&mut self, key: &str, value: &[u8], cas: Option<u32>) -> bool {
        self.shared_calls.set(self.shared_calls.get() + 1);
        let mut m = self.shared.borrow_mut();
        let current = m.get(key).map_or(0, |(_, c)| *c);
        if cas.is_some_and(|c| c != 0 && c != current) {
            return false;
        }
        m.insert(key.to_string(), (value.to_vec(), current + 1));
        true
    }

    fn resume_stream(&mut self, stream: u32, set: &[(String, String)]) -> bool {
        if self.gone.contains(&stream) {
            return false;
        }
        self.resumed.push((stream, set.to_vec()));
        true
    }

    fn reply_stream(
        &mut self,
        stream: u32,
        status: u16,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> bool {
        if self.gone.contains(&stream) {
            return false;
        }
        self.stream_replies
            .push((stream, Reply::new(status, headers, body)));
        true
    }
}
