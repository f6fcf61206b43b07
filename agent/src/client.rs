//! Calls through the agentplane sidecar.

use crate::error::{Denial, Error};
use crate::retry::{next_wait, Outcome};
use crate::token::{Clock, SystemClock, TokenCache, TokenSource};
use crate::trace::Trace;
use serde_json::Value;
use std::time::Duration;
use tokio::sync::Mutex;

/// One step of a chain: the service and path to call, and its input
/// (`None`: the previous step's output).
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    pub service: String,
    pub path: String,
    pub input: Option<Value>,
}

/// An agent: its tokens, its sidecar, its trace.
pub struct Agent<S, C = SystemClock> {
    base: String,
    http: reqwest::Client,
    tokens: Mutex<TokenCache<S, C>>,
    trace: Trace,
}

impl<S: TokenSource, C: Clock> Agent<S, C> {
    /// An agent calling through the sidecar at `sidecar` (the seed's
    /// `http://localhost:15000`).
    pub fn new(sidecar: &str, tokens: TokenCache<S, C>) -> Self {
        Agent {
            base: sidecar.trim_end_matches('/').to_string(),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap_or_default(),
            tokens: Mutex::new(tokens),
            trace: Trace::new(),
        }
    }

    /// The sidecar's base URL.
    pub(crate) fn base(&self) -> &str {
        &self.base
    }

    /// The current token (fetched or refreshed as due).
    pub(crate) async fn token(&self) -> Result<crate::token::Token, Error> {
        self.tokens.lock().await.get().await
    }

    /// The trace every call of this agent carries (`traceparent`).
    pub fn trace_id(&self) -> String {
        self.trace.id()
    }

    /// Invokes a skill: `POST /mcp://<service>/<path>` with a JSON input.
    pub async fn call_skill(
        &self,
        service: &str,
        path: &str,
        input: &Value,
    ) -> Result<Value, Error> {
        self.send("POST", service, path, Some(input)).await
    }

    /// Reads data: `GET /mcp://<service>/<path>`.
    pub async fn get_data(&self, service: &str, path: &str) -> Result<Value, Error> {
        self.send("GET", service, path, None).await
    }

    /// Writes data: `POST /mcp://<service>/<path>` (not retried unless
    /// agentplane itself refused it first).
    pub async fn write_data(
        &self,
        service: &str,
        path: &str,
        data: &Value,
    ) -> Result<Value, Error> {
        self.send("POST", service, path, Some(data)).await
    }

    /// Runs steps in order, each getting its own input or the previous
    /// step's output; stops at the first error. Returns every output.
    pub async fn call_chain(&self, steps: &[Step]) -> Result<Vec<Value>, Error> {
        let mut outputs: Vec<Value> = Vec::with_capacity(steps.len());
        for s in steps {
            let input = match (&s.input, outputs.last()) {
                (Some(i), _) => i.clone(),
                (None, Some(prev)) => prev.clone(),
                (None, None) => Value::Object(Default::default()),
            };
            outputs.push(self.call_skill(&s.service, &s.path, &input).await?);
        }
        Ok(outputs)
    }

    /// One call with its retries: a 401 refreshes the token once; the rest
    /// follows [`crate::retry`].
    pub(crate) async fn send(
        &self,
        method: &str,
        service: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, Error> {
        let url = format!(
            "{}/mcp://{service}/{}",
            self.base,
            path.trim_start_matches('/')
        );
        let verb = reqwest::Method::from_bytes(method.as_bytes())
            .map_err(|_| Error::Protocol(format!("bad method {method}")))?;
        let mut refreshed = false;
        let mut attempt = 1;
        loop {
            let token = self.tokens.lock().await.get().await?;
            let mut req = self
                .http
                .request(verb.clone(), &url)
                .bearer_auth(token.expose())
                .header("traceparent", self.trace.traceparent())
                .header("accept", "application/json");
            if let Some(b) = body {
                req = req.json(b);
            }
            let answer = match req.send().await {
                Ok(a) => a,
                Err(e) => match next_wait(attempt, method, &Outcome::NoAnswer) {
                    Some(w) => {
                        tokio::time::sleep(w).await;
                        attempt += 1;
                        continue;
                    }
                    None => return Err(Error::Transport(format!("{method} {url}: {e}"))),
                },
            };
            let status = answer.status().as_u16();
            let header = |n: &str| {
                answer
                    .headers()
                    .get(n)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string)
            };
            let (decision, retry_after) = (header("x-decision-id"), header("retry-after"));
            let text = answer
                .text()
                .await
                .map_err(|e| Error::Transport(format!("{method} {url}: {e}")))?;
            if (200..300).contains(&status) {
                return Ok(serde_json::from_str(&text).unwrap_or(Value::String(text)));
            }
            let denial =
                Denial::from_response(status, decision.as_deref(), retry_after.as_deref(), &text);
            if status == 401 && !refreshed {
                // The token may have been revoked or rotated: once more
                // with a fresh one.
                refreshed = true;
                self.tokens.lock().await.invalidate();
                continue;
            }
            match next_wait(attempt, method, &Outcome::Refused(&denial)) {
                Some(w) => {
                    tokio::time::sleep(w).await;
                    attempt += 1;
                }
                None => return Err(Error::Denied(denial)),
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]
mod tests {
    use super::*;
    use crate::token::Token;
    use serde_json::json;
    use std::io::{BufRead, BufReader, Read, Write};
    use std::net::TcpListener;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::{Arc, Mutex as StdMutex};

    #[derive(Default, Clone)]
    struct Tokens(Arc<AtomicU64>);
    impl TokenSource for Tokens {
        async fn fetch(&self) -> Result<Token, Error> {
            let n = self.0.fetch_add(1, Ordering::SeqCst) + 1;
            Ok(Token::new(format!("tok{n}"), 300))
        }
    }

    /// A sidecar stand-in answering a script of (status, headers, body);
    /// records each request's line and headers.
    fn sidecar(
        script: Vec<(u16, &'static str, &'static str)>,
    ) -> (String, Arc<StdMutex<Vec<String>>>) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let seen = Arc::new(StdMutex::new(Vec::new()));
        let s2 = seen.clone();
        std::thread::spawn(move || {
            for (status, headers, body) in script {
                let (mut c, _) = l.accept().unwrap();
                let mut r = BufReader::new(c.try_clone().unwrap());
                let mut head = String::new();
                let mut len = 0;
                loop {
                    let mut line = String::new();
                    r.read_line(&mut line).unwrap();
                    if line == "\r\n" {
                        break;
                    }
                    if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                        len = v.trim().parse().unwrap();
                    }
                    head.push_str(&line);
                }
                let mut b = vec![0; len];
                r.read_exact(&mut b).unwrap();
                head.push_str(&String::from_utf8_lossy(&b));
                s2.lock().unwrap().push(head);
                let out = format!(
                    "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n{headers}\r\n{body}",
                    body.len()
                );
                c.write_all(out.as_bytes()).unwrap();
            }
        });
        (format!("http://127.0.0.1:{port}"), seen)
    }

    fn agent(base: &str) -> Agent<Tokens, SystemClock> {
        Agent::new(base, TokenCache::new(Tokens::default(), SystemClock))
    }

    #[tokio::test]
    async fn a_401_refreshes_the_token_once_then_the_call_goes_through() {
        let (base, seen) = sidecar(vec![
            (
                401,
                "",
                r#"{"error":"unauthorized","reason":"token rejected: Jwt is expired","decision_id":"d1"}"#,
            ),
            (200, "", r#"{"ok":true}"#),
        ]);
        let a = agent(&base);
        let out = a
            .call_skill("hello-skill", "hello", &json!({"name": "x"}))
            .await
            .unwrap();
        assert_eq!(out, json!({"ok": true}));
        let seen = seen.lock().unwrap();
        assert!(
            seen[0].starts_with("POST /mcp://hello-skill/hello "),
            "{}",
            seen[0]
        );
        assert!(seen[0].contains("authorization: Bearer tok1"));
        assert!(
            seen[1].contains("authorization: Bearer tok2"),
            "a fresh token"
        );
        assert!(seen[1].contains(&format!("traceparent: 00-{}-", a.trace_id())));
    }

    #[tokio::test]
    async fn a_refusal_is_a_typed_error_with_its_decision_id_and_a_429_waits() {
        let (base, seen) = sidecar(vec![
            (
                429,
                "retry-after: 0\r\n",
                r#"{"error":"rate_limited","reason":"limit experimental exceeded","decision_id":"d2"}"#,
            ),
            (200, "", r#"{"n":1}"#),
            (
                403,
                "x-decision-id: d3\r\n",
                r#"{"error":"forbidden","reason":"missing permission data:write for action write_data","decision_id":"d3"}"#,
            ),
        ]);
        let a = agent(&base);
        assert_eq!(
            a.get_data("customer-data", "/c/1").await.unwrap(),
            json!({"n": 1})
        );
        let e = a
            .write_data("customer-data", "c/1", &json!({}))
            .await
            .unwrap_err();
        let d = e.denial().unwrap();
        assert_eq!(d.status, 403);
        assert_eq!(d.decision_id.as_deref(), Some("d3"));
        assert!(d.reason.contains("data:write"));
        assert_eq!(seen.lock().unwrap().len(), 3, "the 403 was not retried");
    }

    #[tokio::test]
    async fn a_chain_passes_each_output_on() {
        let (base, seen) = sidecar(vec![
            (200, "", r#"{"sentiment":"negative"}"#),
            (200, "", r#"{"ticket":"T-9"}"#),
        ]);
        let a = agent(&base);
        let out = a
            .call_chain(&[
                Step {
                    service: "sentiment-analysis".into(),
                    path: "analyze".into(),
                    input: Some(json!({"text": "broken"})),
                },
                Step {
                    service: "support-tools".into(),
                    path: "tickets".into(),
                    input: None,
                },
            ])
            .await
            .unwrap();
        assert_eq!(out[1], json!({"ticket": "T-9"}));
        let seen = seen.lock().unwrap();
        assert!(
            seen[1].ends_with(r#"{"sentiment":"negative"}"#),
            "{}",
            seen[1]
        );
    }
}
