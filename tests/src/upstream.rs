//! The upstreams behind Envoy: an HTTP/1.1 echo server that records what
//! it received (and answers what a test asks for in `x-test-*` headers),
//! and the real MCP skills (`agentplane_skills`) served on a port of their
//! own. Each binds 127.0.0.1 on a port the OS picks and stops on drop.

use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// One request as the upstream saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    /// Body, as text.
    pub body: String,
    /// Method.
    pub method: String,
    /// Path as forwarded.
    pub path: String,
    /// Headers in order, names lower-cased.
    pub headers: Vec<(String, String)>,
}

impl Seen {
    /// Every value of a header.
    pub fn all(&self, name: &str) -> Vec<String> {
        self.headers
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .collect()
    }
    /// The single value of a header; fails if it appears more than once.
    pub fn one(&self, name: &str) -> Option<String> {
        let all = self.all(name);
        assert!(
            all.len() <= 1,
            "{name} appears {} times: {all:?}",
            all.len()
        );
        all.into_iter().next()
    }
}

/// An HTTP/1.1 echo server that records every request.
pub struct Upstream {
    /// Its port.
    pub port: u16,
    seen: Arc<Mutex<Vec<Seen>>>,
    stop: Arc<AtomicBool>,
    status: Arc<std::sync::atomic::AtomicU16>,
}

impl Upstream {
    /// Starts the server on a free loopback port.
    pub fn start() -> Upstream {
        Upstream::start_with(true)
    }

    /// An echo server that keeps no record (the benchmark: millions of
    /// requests).
    pub fn start_unrecorded() -> Upstream {
        Upstream::start_with(false)
    }

    fn start_with(record: bool) -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (s2, st2) = (seen.clone(), stop.clone());
        let status = Arc::new(std::sync::atomic::AtomicU16::new(200));
        let code2 = status.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if st2.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let s3 = s2.clone();
                let code3 = code2.clone();
                std::thread::spawn(move || serve(conn, s3, record, code3));
            }
        });
        Upstream {
            port,
            seen,
            stop,
            status,
        }
    }

    /// Answers every later request with this status (an upstream or a
    /// collector that fails).
    pub fn set_status(&self, code: u16) {
        self.status.store(code, Ordering::SeqCst);
    }

    /// Everything received so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// Forgets what was received.
    pub fn clear(&self) {
        self.seen.lock().unwrap().clear();
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

fn serve(
    conn: TcpStream,
    seen: Arc<Mutex<Vec<Seen>>>,
    record: bool,
    status: Arc<std::sync::atomic::AtomicU16>,
) {
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let mut conn = conn;
    // Lines as bytes: header values need not be UTF-8 (recorded lossily).
    let read_line = |reader: &mut BufReader<TcpStream>| -> Option<String> {
        let mut raw = Vec::new();
        match reader.read_until(b'\n', &mut raw) {
            Ok(0) | Err(_) => None,
            Ok(_) => Some(String::from_utf8_lossy(&raw).into_owned()),
        }
    };
    loop {
        let Some(line) = read_line(&mut reader) else {
            return;
        };
        let mut parts = line.split_whitespace();
        let method = parts.next().unwrap_or("").to_string();
        let path = parts.next().unwrap_or("").to_string();
        let mut headers = Vec::new();
        let mut len = 0usize;
        loop {
            let Some(h) = read_line(&mut reader) else {
                return;
            };
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                let k = k.trim().to_ascii_lowercase();
                if k == "content-length" {
                    len = v.trim().parse().unwrap_or(0);
                }
                headers.push((k, v.trim().to_string()));
            }
        }
        let chunked = headers
            .iter()
            .any(|(k, v)| k == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"));
        let mut body = vec![0u8; len];
        if chunked {
            body.clear();
            loop {
                let Some(size) = read_line(&mut reader) else {
                    return;
                };
                let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
                let mut chunk = vec![0u8; n + 2];
                if reader.read_exact(&mut chunk).is_err() {
                    return;
                }
                if n == 0 {
                    break;
                }
                body.extend_from_slice(&chunk[..n]);
            }
        } else if reader.read_exact(&mut body).is_err() {
            return;
        }
        let rec = Seen {
            body: String::from_utf8_lossy(&body).to_string(),
            method: method.clone(),
            path: path.clone(),
            headers: headers.clone(),
        };
        if record {
            seen.lock().unwrap().push(rec);
        }
        let hdrs: Vec<Value> = headers.iter().map(|(k, v)| json!([k, v])).collect();
        let header = |name: &str| {
            headers
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        };
        // A slow upstream, when a test asks for one.
        if let Some(ms) = header("x-test-delay-ms").and_then(|v| v.parse::<u64>().ok()) {
            std::thread::sleep(std::time::Duration::from_millis(ms.min(10_000)));
        }
        // Tests that need a server's answer (an MCP list result) name it:
        // `x-test-reply` as JSON, `x-test-reply-sse` as one SSE event.
        let (content_type, out) = if let Some(r) = header("x-test-reply") {
            ("application/json", r)
        } else if let Some(r) = header("x-test-reply-sse") {
            (
                "text/event-stream",
                format!("event: message\nid: 1\ndata: {r}\n\n"),
            )
        } else {
            (
                "application/json",
                json!({"method": method, "path": path, "headers": hdrs}).to_string(),
            )
        };
        // `x-test-reply-header: name: value` adds that header to the answer
        // (a server's `mcp-session-id`).
        let extra = header("x-test-reply-header")
            .map(|h| format!("{h}\r\n"))
            .unwrap_or_default();
        let resp = format!(
            "HTTP/1.1 {} X\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\n{extra}\r\n{}",
            status.load(Ordering::SeqCst),
            out.len(),
            out
        );
        if conn.write_all(resp.as_bytes()).is_err() {
            return;
        }
    }
}

/// Serves a real MCP skill (`agentplane_skills::serve`, or the sample
/// services' `agentplane_skills::samples::serve`) on `rt`, on a fresh
/// loopback port, and returns the port. It serves as long as `rt` runs.
pub fn serve_skill<F, Fut>(rt: &tokio::runtime::Runtime, serve: F) -> u16
where
    F: FnOnce(tokio::net::TcpListener) -> Fut,
    Fut: std::future::Future<Output = std::io::Result<()>> + Send + 'static,
{
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let port = listener.local_addr().unwrap().port();
    rt.spawn(serve(listener));
    port
}

/// An MCP server whose every answer is an event stream that goes quiet
/// (chunked HTTP/1.1): the event `first` at once, `second` after `gap`,
/// then the end of the stream, as a listen stream delivers notifications
/// whenever something changes. Binds 127.0.0.1 on a port the OS picks and
/// stops on drop.
pub struct SlowEvents {
    /// Its port.
    pub port: u16,
    stop: Arc<AtomicBool>,
}

impl SlowEvents {
    /// Starts the server; each event is one JSON-RPC message.
    pub fn start(first: &str, gap: std::time::Duration, second: &str) -> SlowEvents {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let st2 = stop.clone();
        let events = [first, second].map(|e| {
            let event = format!("event: message\ndata: {e}\n\n");
            format!("{:x}\r\n{event}\r\n", event.len())
        });
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if st2.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let events = events.clone();
                std::thread::spawn(move || slow_events(conn, &events, gap));
            }
        });
        SlowEvents { port, stop }
    }
}

impl Drop for SlowEvents {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

/// Reads one request (headers, then a `content-length` body), then sends
/// the stream's head and first chunk, waits `gap`, sends the second chunk
/// and ends the stream.
fn slow_events(conn: TcpStream, chunks: &[String; 2], gap: std::time::Duration) {
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let mut len = 0usize;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            if k.trim().eq_ignore_ascii_case("content-length") {
                len = v.trim().parse().unwrap_or(0);
            }
        }
    }
    let mut body = vec![0u8; len];
    if reader.read_exact(&mut body).is_err() {
        return;
    }
    let mut conn = conn;
    let head =
        "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n";
    if conn
        .write_all(format!("{head}{}", chunks[0]).as_bytes())
        .is_err()
    {
        return;
    }
    std::thread::sleep(gap);
    let _ = conn.write_all(format!("{}0\r\n\r\n", chunks[1]).as_bytes());
}
