//! The proxy-wasm ABI (0.2.1) as agentplane uses it: the host functions we
//! import and the callbacks we export. This is the only module with
//! `unsafe` code, and it never panics.
//!
//! Why not the proxy-wasm SDK: its host-call wrappers `panic!` on any
//! status they did not expect and unwrap UTF-8 in header maps, its
//! dispatcher panics on unknown context ids, and it models host statuses
//! as Rust enums (a value outside the enum would be undefined behaviour).
//! A trap inside Envoy kills the VM for every stream on the worker, so
//! here every host answer is a plain `u32`, every buffer is bytes, and
//! every parse is bounds-checked.
//!
//! Safety argument shared by every import call below: each pointer handed
//! to the host points into a live Rust slice (or is null with length 0) for
//! the duration of the call, and each out-pointer points to a local of the
//! declared type. Memory the host returns was allocated by our own
//! [`proxy_on_memory_allocate`] (that is the ABI's contract), so taking
//! ownership of it with [`take`] is sound.

use agentplane_core::wire::{decode_pairs, encode_pairs};
use std::ptr::{null, null_mut};

/// A host status code (`Ok` is 0). Kept as a number: the host may answer
/// codes this module does not know.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Status(pub u32);

const OK: u32 = 0;
const NOT_FOUND: u32 = 1;

pub type Result<T> = std::result::Result<T, Status>;

fn check(code: u32) -> Result<()> {
    if code == OK {
        Ok(())
    } else {
        Err(Status(code))
    }
}

/// Header maps (`MapType`).
pub const REQUEST_HEADERS: u32 = 0;
pub const RESPONSE_HEADERS: u32 = 2;
pub const CALL_RESPONSE_HEADERS: u32 = 6;
/// Buffers (`BufferType`).
pub const CALL_RESPONSE_BODY: u32 = 4;
pub const REQUEST_BODY: u32 = 0;
pub const RESPONSE_BODY: u32 = 1;
pub const PLUGIN_CONFIGURATION: u32 = 7;
/// `StreamType::HttpRequest`.
const STREAM_REQUEST: u32 = 0;
/// Log levels.
pub const LOG_DEBUG: u32 = 1;
pub const LOG_INFO: u32 = 2;
pub const LOG_WARN: u32 = 3;
pub const LOG_ERROR: u32 = 4;
/// Metric types.
pub const METRIC_COUNTER: u32 = 0;
pub const METRIC_HISTOGRAM: u32 = 2;

#[link(wasm_import_module = "env")]
extern "C" {
    fn proxy_log(level: u32, data: *const u8, size: usize) -> u32;
    fn proxy_get_current_time_nanoseconds(out: *mut u64) -> u32;
    fn proxy_set_tick_period_milliseconds(period: u32) -> u32;
    fn proxy_get_buffer_bytes(
        kind: u32,
        start: usize,
        max: usize,
        out: *mut *mut u8,
        out_size: *mut usize,
    ) -> u32;
    fn proxy_set_buffer_bytes(
        kind: u32,
        start: usize,
        length: usize,
        data: *const u8,
        size: usize,
    ) -> u32;
    fn proxy_get_header_map_pairs(map: u32, out: *mut *mut u8, out_size: *mut usize) -> u32;
    fn proxy_get_header_map_value(
        map: u32,
        key: *const u8,
        key_size: usize,
        out: *mut *mut u8,
        out_size: *mut usize,
    ) -> u32;
    fn proxy_replace_header_map_value(
        map: u32,
        key: *const u8,
        key_size: usize,
        value: *const u8,
        value_size: usize,
    ) -> u32;
    fn proxy_remove_header_map_value(map: u32, key: *const u8, key_size: usize) -> u32;
    fn proxy_get_property(
        path: *const u8,
        path_size: usize,
        out: *mut *mut u8,
        out_size: *mut usize,
    ) -> u32;
    fn proxy_set_property(
        path: *const u8,
        path_size: usize,
        value: *const u8,
        value_size: usize,
    ) -> u32;
    fn proxy_send_local_response(
        status: u32,
        details: *const u8,
        details_size: usize,
        body: *const u8,
        body_size: usize,
        headers: *const u8,
        headers_size: usize,
        grpc_status: i32,
    ) -> u32;
    fn proxy_get_shared_data(
        key: *const u8,
        key_size: usize,
        out: *mut *mut u8,
        out_size: *mut usize,
        cas: *mut u32,
    ) -> u32;
    fn proxy_set_shared_data(
        key: *const u8,
        key_size: usize,
        value: *const u8,
        value_size: usize,
        cas: u32,
    ) -> u32;
    fn proxy_set_effective_context(context: u32) -> u32;
    fn proxy_continue_stream(stream: u32) -> u32;
    #[allow(clippy::too_many_arguments)]
    fn proxy_http_call(
        upstream: *const u8,
        upstream_size: usize,
        headers: *const u8,
        headers_size: usize,
        body: *const u8,
        body_size: usize,
        trailers: *const u8,
        trailers_size: usize,
        timeout_ms: u32,
        token: *mut u32,
    ) -> u32;
    fn proxy_define_metric(kind: u32, name: *const u8, name_size: usize, id: *mut u32) -> u32;
    fn proxy_increment_metric(id: u32, delta: i64) -> u32;
    fn proxy_record_metric(id: u32, value: u64) -> u32;
}

/// Takes ownership of a buffer the host returned.
///
/// Safety: `ptr` is null, or was returned by [`proxy_on_memory_allocate`]
/// for exactly `len` bytes (the ABI's contract for returned buffers), and
/// nothing else owns it.
unsafe fn take(ptr: *mut u8, len: usize) -> Vec<u8> {
    if ptr.is_null() {
        return Vec::new();
    }
    if len == 0 {
        // Our allocator handed out a zero-length boxed slice: a dangling,
        // non-null pointer that owns nothing. Nothing to free.
        return Vec::new();
    }
    // SAFETY: see the function's contract; the allocation is a boxed
    // slice of `len` bytes, so capacity == len.
    unsafe { Vec::from_raw_parts(ptr, len, len) }
}

/// Allocates memory for the host (the ABI's `malloc`). Returns null when
/// the allocation fails, instead of aborting.
#[no_mangle]
pub extern "C" fn proxy_on_memory_allocate(size: usize) -> *mut u8 {
    let mut v: Vec<u8> = Vec::new();
    if v.try_reserve_exact(size).is_err() {
        return null_mut();
    }
    v.resize(size, 0);
    Box::into_raw(v.into_boxed_slice()).cast::<u8>()
}

#[no_mangle]
pub extern "C" fn proxy_abi_version_0_2_1() {}

#[cfg(target_os = "wasi")]
extern "C" {
    fn __wasm_call_ctors();
}

/// WASI reactor initialisation.
#[no_mangle]
pub extern "C" fn _initialize() {
    #[cfg(target_os = "wasi")]
    // SAFETY: the linker-generated constructor runner, called once, first,
    // as a WASI reactor must.
    unsafe {
        __wasm_call_ctors();
    }
}

// --- callbacks: each forwards to the safe dispatcher in `crate` ----------

#[no_mangle]
pub extern "C" fn proxy_on_context_create(context: u32, parent: u32) {
    crate::on_context_create(context, parent);
}

#[no_mangle]
pub extern "C" fn proxy_on_vm_start(_context: u32, _size: usize) -> bool {
    true
}

#[no_mangle]
pub extern "C" fn proxy_on_configure(context: u32, size: usize) -> bool {
    crate::on_configure(context, size)
}

#[no_mangle]
pub extern "C" fn proxy_on_tick(context: u32) {
    crate::on_tick(context);
}

#[no_mangle]
pub extern "C" fn proxy_on_request_headers(context: u32, _headers: usize, eos: bool) -> u32 {
    crate::on_request_headers(context, eos)
}

#[no_mangle]
pub extern "C" fn proxy_on_request_body(context: u32, size: usize, eos: bool) -> u32 {
    crate::on_request_body(context, size, eos)
}

#[no_mangle]
pub extern "C" fn proxy_on_request_trailers(context: u32, _trailers: usize) -> u32 {
    // Trailers end the body: a stream still waiting for it is decided on
    // what was buffered.
    crate::on_request_body(context, usize::MAX, true)
}

#[no_mangle]
pub extern "C" fn proxy_on_response_headers(context: u32, _headers: usize, eos: bool) -> u32 {
    crate::on_response_headers(context, eos)
}

#[no_mangle]
pub extern "C" fn proxy_on_response_body(context: u32, size: usize, eos: bool) -> u32 {
    crate::on_response_body(context, size, eos)
}

#[no_mangle]
pub extern "C" fn proxy_on_response_trailers(context: u32, _trailers: usize) -> u32 {
    crate::on_response_trailers(context)
}

#[no_mangle]
pub extern "C" fn proxy_on_log(context: u32) {
    crate::on_log(context);
}

#[no_mangle]
pub extern "C" fn proxy_on_done(context: u32) -> bool {
    crate::on_done(context);
    true
}

#[no_mangle]
pub extern "C" fn proxy_on_delete(context: u32) {
    crate::on_delete(context);
}

#[no_mangle]
pub extern "C" fn proxy_on_http_call_response(
    context: u32,
    token: u32,
    headers: usize,
    body_size: usize,
    _trailers: usize,
) {
    crate::on_http_call_response(context, token, headers, body_size);
}

// --- safe wrappers --------------------------------------------------------

/// Writes a log line. Errors are ignored by callers: logging must never
/// change a decision.
pub fn log(level: u32, message: &str) -> Result<()> {
    // SAFETY: message is a live slice for the call.
    check(unsafe { proxy_log(level, message.as_ptr(), message.len()) })
}

/// Wall-clock time, ns since the epoch; 0 when the host will not say.
pub fn now_ns() -> u64 {
    let mut t: u64 = 0;
    // SAFETY: out-pointer to a local u64.
    match unsafe { proxy_get_current_time_nanoseconds(&mut t) } {
        OK => t,
        _ => 0,
    }
}

pub fn set_tick_period_ms(ms: u32) -> Result<()> {
    // SAFETY: no pointers.
    check(unsafe { proxy_set_tick_period_milliseconds(ms) })
}

/// Reads up to `max` bytes of a buffer from its start.
pub fn buffer(kind: u32, max: usize) -> Result<Vec<u8>> {
    let mut ptr = null_mut();
    let mut len = 0usize;
    // SAFETY: out-pointers to locals.
    let code = unsafe { proxy_get_buffer_bytes(kind, 0, max, &mut ptr, &mut len) };
    // SAFETY: host-returned buffer (see `take`); taken even on error so a
    // buffer handed back with a failure status is not leaked.
    let bytes = unsafe { take(ptr, len) };
    match code {
        OK => Ok(bytes),
        NOT_FOUND => Ok(Vec::new()),
        c => Err(Status(c)),
    }
}

/// All pairs of a header map, names and values as the bytes Envoy holds.
pub fn header_pairs(map: u32) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let mut ptr = null_mut();
    let mut len = 0usize;
    // SAFETY: out-pointers to locals.
    let code = unsafe { proxy_get_header_map_pairs(map, &mut ptr, &mut len) };
    // SAFETY: host-returned buffer.
    let bytes = unsafe { take(ptr, len) };
    check(code)?;
    decode_pairs(&bytes).ok_or(Status(u32::MAX))
}

/// One header value, as bytes; `None` when absent.
pub fn header_value(map: u32, name: &str) -> Result<Option<Vec<u8>>> {
    let mut ptr = null_mut();
    let mut len = 0usize;
    // SAFETY: name is a live slice; out-pointers to locals.
    let code =
        unsafe { proxy_get_header_map_value(map, name.as_ptr(), name.len(), &mut ptr, &mut len) };
    // SAFETY: host-returned buffer.
    let bytes = unsafe { take(ptr, len) };
    match code {
        OK if !ptr.is_null() => Ok(Some(bytes)),
        OK | NOT_FOUND => Ok(None),
        c => Err(Status(c)),
    }
}

pub fn replace_header(map: u32, name: &str, value: &[u8]) -> Result<()> {
    // SAFETY: live slices for the call.
    check(unsafe {
        proxy_replace_header_map_value(map, name.as_ptr(), name.len(), value.as_ptr(), value.len())
    })
}

/// Replaces bytes `[0, length)` of a body buffer with `data`.
pub fn set_buffer(kind: u32, length: usize, data: &[u8]) -> Result<()> {
    // SAFETY: live slice for the call.
    check(unsafe { proxy_set_buffer_bytes(kind, 0, length, data.as_ptr(), data.len()) })
}

pub fn remove_header(map: u32, name: &[u8]) -> Result<()> {
    // SAFETY: live slice for the call.
    check(unsafe { proxy_remove_header_map_value(map, name.as_ptr(), name.len()) })
}

/// A property (`path` segments joined by NUL, as the ABI wants); `None`
/// when it does not exist.
pub fn property(path: &[&str]) -> Result<Option<Vec<u8>>> {
    let joined = path.join("\0");
    let mut ptr = null_mut();
    let mut len = 0usize;
    // SAFETY: joined is a live slice; out-pointers to locals.
    let code = unsafe { proxy_get_property(joined.as_ptr(), joined.len(), &mut ptr, &mut len) };
    // SAFETY: host-returned buffer.
    let bytes = unsafe { take(ptr, len) };
    match code {
        OK if !ptr.is_null() => Ok(Some(bytes)),
        OK | NOT_FOUND => Ok(None),
        c => Err(Status(c)),
    }
}

/// Sets a property of the current stream (one path segment: Envoy keeps
/// it as the filter state `wasm.<name>`).
pub fn set_property(name: &str, value: &[u8]) -> Result<()> {
    // SAFETY: live slices for the call.
    check(unsafe { proxy_set_property(name.as_ptr(), name.len(), value.as_ptr(), value.len()) })
}

/// Ends the current stream with a local reply.
pub fn send_local_response(status: u32, headers: &[(&str, &str)], body: &[u8]) -> Result<()> {
    let map = encode_pairs(headers);
    let details = "agentplane";
    // SAFETY: live slices for the call.
    check(unsafe {
        proxy_send_local_response(
            status,
            details.as_ptr(),
            details.len(),
            body.as_ptr(),
            body.len(),
            map.as_ptr(),
            map.len(),
            -1,
        )
    })
}

/// Shared data and its CAS; `None` when the key is absent.
pub fn shared_get(key: &str) -> Result<Option<(Vec<u8>, u32)>> {
    let mut ptr = null_mut();
    let mut len = 0usize;
    let mut cas = 0u32;
    // SAFETY: key is a live slice; out-pointers to locals.
    let code =
        unsafe { proxy_get_shared_data(key.as_ptr(), key.len(), &mut ptr, &mut len, &mut cas) };
    // SAFETY: host-returned buffer.
    let bytes = unsafe { take(ptr, len) };
    match code {
        OK => Ok(Some((bytes, cas))),
        NOT_FOUND => Ok(None),
        c => Err(Status(c)),
    }
}

/// Stores shared data; with `cas` non-zero only if unchanged since read.
pub fn shared_set(key: &str, value: &[u8], cas: u32) -> Result<()> {
    // SAFETY: live slices for the call.
    check(unsafe {
        proxy_set_shared_data(key.as_ptr(), key.len(), value.as_ptr(), value.len(), cas)
    })
}

pub fn set_effective_context(context: u32) -> Result<()> {
    // SAFETY: no pointers.
    check(unsafe { proxy_set_effective_context(context) })
}

/// Resumes the current (effective) stream's request.
pub fn continue_request() -> Result<()> {
    // SAFETY: no pointers.
    check(unsafe { proxy_continue_stream(STREAM_REQUEST) })
}

/// Sends an HTTP callout; returns its token.
pub fn http_call(
    cluster: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
    timeout_ms: u32,
) -> Result<u32> {
    let map = encode_pairs(headers);
    let (bp, bl) = body.map_or((null(), 0), |b| (b.as_ptr(), b.len()));
    let mut token = 0u32;
    // SAFETY: live slices (or null with 0) for the call; out-pointer to a local.
    check(unsafe {
        proxy_http_call(
            cluster.as_ptr(),
            cluster.len(),
            map.as_ptr(),
            map.len(),
            bp,
            bl,
            null(),
            0,
            timeout_ms,
            &mut token,
        )
    })?;
    Ok(token)
}

pub fn define_metric(kind: u32, name: &str) -> Result<u32> {
    let mut id = 0u32;
    // SAFETY: name is a live slice; out-pointer to a local.
    check(unsafe { proxy_define_metric(kind, name.as_ptr(), name.len(), &mut id) })?;
    Ok(id)
}

pub fn increment_metric(id: u32, delta: i64) -> Result<()> {
    // SAFETY: no pointers.
    check(unsafe { proxy_increment_metric(id, delta) })
}

pub fn record_metric(id: u32, value: u64) -> Result<()> {
    // SAFETY: no pointers.
    check(unsafe { proxy_record_metric(id, value) })
}
