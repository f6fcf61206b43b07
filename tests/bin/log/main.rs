//! `agentplane-log`: tools for agentplane's decision log.
//!
//! `agentplane-log verify [--jwks FILE|URL]... [--allow-unsigned] [--partial]
//! [--closed] [FILE|-]...` reads logs (files, or stdin when none or `-`),
//! verifies every record chain and checkpoint (see `verify.rs`) and prints
//! `n records, k chains, verified to checkpoint …`, or the first removed,
//! reordered, inserted or edited record with its position. Exit status: 0
//! verified, 1 a verification failure, 2 a usage or read error.

mod verify;

use serde_json::Value;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::ExitCode;
use std::time::Duration;

const USAGE: &str = "usage: agentplane-log verify [--jwks FILE|http://HOST:PORT/PATH]... [--allow-unsigned] [--partial] [--closed] [FILE|-]...

  --jwks FILE|URL   the gateway's JWKS (txn_token.jwks_path), to check checkpoint signatures;
                    again for archived ones (keys rotated out of it)
  --allow-unsigned  accept checkpoints a filter without a signing key wrote
  --partial         a chain may begin past seq 1 (a rotated file)
  --closed          the writer has shut down: every record must be under a checkpoint";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(summary) => {
            println!("{summary}");
            ExitCode::SUCCESS
        }
        Err(Error::Tampered(why)) => {
            println!("FAILED: {why}");
            ExitCode::from(1)
        }
        Err(Error::Usage(why)) => {
            eprintln!("agentplane-log: {why}\n{USAGE}");
            ExitCode::from(2)
        }
    }
}

enum Error {
    Tampered(String),
    Usage(String),
}

fn run(args: &[String]) -> Result<verify::Summary, Error> {
    let (cmd, rest) = args
        .split_first()
        .ok_or_else(|| Error::Usage("no command".into()))?;
    if cmd != "verify" {
        return Err(Error::Usage(format!("unknown command {cmd}")));
    }
    let mut opts = verify::Options::default();
    // Every `--jwks` given: archived ones beside the current one, for the
    // checkpoints of keys rotated out of it.
    let mut keys: Option<Vec<Value>> = None;
    let mut files = Vec::new();
    let mut it = rest.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--jwks" => {
                let src = it
                    .next()
                    .ok_or_else(|| Error::Usage("--jwks needs a file or URL".into()))?;
                let more = read_jwks(src).map_err(Error::Usage)?;
                let more = more.get("keys").and_then(Value::as_array).cloned();
                keys.get_or_insert_with(Vec::new)
                    .extend(more.unwrap_or_default());
            }
            "--allow-unsigned" => opts.allow_unsigned = true,
            "--partial" => opts.partial = true,
            "--closed" => opts.closed = true,
            "-h" | "--help" => return Err(Error::Usage("help".into())),
            f if f.starts_with("--") => return Err(Error::Usage(format!("unknown option {f}"))),
            f => files.push(f.to_string()),
        }
    }
    if files.is_empty() {
        files.push("-".into());
    }
    let mut inputs = Vec::new();
    for f in files {
        let mut bytes = Vec::new();
        let read = if f == "-" {
            std::io::stdin().read_to_end(&mut bytes).map(|_| ())
        } else {
            std::fs::read(&f).map(|b| bytes = b)
        };
        read.map_err(|e| Error::Usage(format!("cannot read {f}: {e}")))?;
        let name = if f == "-" { "stdin".to_string() } else { f };
        inputs.push((name, text(bytes)));
    }
    let jwks = keys.map(|keys| serde_json::json!({ "keys": keys }));
    verify::verify(&inputs, jwks.as_ref(), opts).map_err(Error::Tampered)
}

/// A log's text. Lines beside the records may hold bytes that are not
/// UTF-8 (a client's header an access log writes raw): read lossily, they
/// cannot make the whole log unreadable. No record changes (the filter
/// writes only UTF-8); a record line with such bytes no longer matches its
/// digest, an edit as it should be.
fn text(bytes: Vec<u8>) -> String {
    match String::from_utf8(bytes) {
        Ok(s) => s,
        Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
    }
}

/// The JWKS from a file or an `http://` URL (the filter serves it at
/// `txn_token.jwks_path`; for https, fetch it with curl into a file).
fn read_jwks(src: &str) -> Result<Value, String> {
    let text = match src.strip_prefix("http://") {
        Some(rest) => get(rest)?,
        None if src.contains("://") => {
            return Err(format!(
                "{src}: only http:// URLs (fetch others into a file)"
            ))
        }
        None => std::fs::read_to_string(src).map_err(|e| format!("cannot read {src}: {e}"))?,
    };
    serde_json::from_str(&text).map_err(|_| format!("{src}: not a JSON JWKS"))
}

/// A plain HTTP/1.0 GET (no chunking to undo): the body of a 200.
fn get(host_path: &str) -> Result<String, String> {
    let (host, path) = match host_path.split_once('/') {
        Some((h, p)) => (h, format!("/{p}")),
        None => (host_path, "/".to_string()),
    };
    let addr = if host.contains(':') {
        host.to_string()
    } else {
        format!("{host}:80")
    };
    let err = |e: std::io::Error| format!("http://{host_path}: {e}");
    let mut s = TcpStream::connect(&addr).map_err(err)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(err)?;
    write!(
        s,
        "GET {path} HTTP/1.0\r\nHost: {host}\r\nAccept: application/json\r\n\r\n"
    )
    .map_err(err)?;
    let mut resp = String::new();
    s.read_to_string(&mut resp).map_err(err)?;
    let (head, body) = resp
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("http://{host_path}: not an HTTP response"))?;
    let status = head.split_whitespace().nth(1).unwrap_or("");
    if status != "200" {
        return Err(format!("http://{host_path} answered {status}"));
    }
    Ok(body.to_string())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::io::BufRead;
    use std::net::TcpListener;

    /// Serves one HTTP response with `status` and `body`; gives the port.
    fn serve_once(status: &'static str, body: &'static str) -> u16 {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut r = std::io::BufReader::new(s.try_clone().unwrap());
            let mut line = String::new();
            while r.read_line(&mut line).unwrap() > 2 {
                line.clear();
            }
            let _ = write!(
                s,
                "HTTP/1.1 {status}\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            );
        });
        port
    }

    #[test]
    fn the_jwks_is_read_from_an_http_url_and_only_from_a_200() {
        let port = serve_once("200 OK", r#"{"keys":[{"kid":"gw-1","x":"abc"}]}"#);
        let v = read_jwks(&format!(
            "http://127.0.0.1:{port}/.well-known/agentplane/jwks.json"
        ));
        assert_eq!(v.unwrap()["keys"][0]["kid"], "gw-1");
        let port = serve_once("503 Service Unavailable", "no key yet");
        let e = read_jwks(&format!("http://127.0.0.1:{port}/jwks")).unwrap_err();
        assert!(e.ends_with("answered 503"), "{e}");
        let e = read_jwks("https://gateway.example/jwks.json").unwrap_err();
        assert!(e.contains("only http://"), "{e}");
    }

    #[test]
    fn usage_errors_are_not_verification_failures() {
        let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(matches!(run(&args(&["check"])), Err(Error::Usage(_))));
        assert!(matches!(
            run(&args(&["verify", "--bogus"])),
            Err(Error::Usage(_))
        ));
        assert!(matches!(
            run(&args(&["verify", "/nonexistent/agentplane.log"])),
            Err(Error::Usage(_))
        ));
    }
}
