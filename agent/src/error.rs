//! What can go wrong, as values an agent can act on.

use std::fmt;
use std::time::Duration;

/// A refusal agentplane (or the service) answered with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    /// HTTP status.
    pub status: u16,
    /// agentplane's error class (`forbidden`, `unauthorized`,
    /// `rate_limited`, `unavailable`, ...), when the body says.
    pub error: Option<String>,
    /// Why, in words.
    pub reason: String,
    /// The decision id to look up in the decision log, when agentplane
    /// decided.
    pub decision_id: Option<String>,
    /// `Retry-After`, when the answer carried one.
    pub retry_after: Option<Duration>,
}

impl Denial {
    /// Reads a non-2xx answer: agentplane's JSON body
    /// (`{"error","reason","decision_id"}` or a JSON-RPC error with
    /// `data.decision_id`), else the raw body as the reason.
    pub fn from_response(
        status: u16,
        decision_header: Option<&str>,
        retry_after: Option<&str>,
        body: &str,
    ) -> Denial {
        let v: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
        let rpc = v.get("error").filter(|e| e.is_object());
        let text = |x: Option<&serde_json::Value>| x.and_then(|x| x.as_str()).map(str::to_string);
        let (error, reason, decision) = match rpc {
            Some(e) => (
                text(e.get("data").and_then(|d| d.get("error"))),
                text(e.get("message")),
                text(e.get("data").and_then(|d| d.get("decision_id"))),
            ),
            None => (
                text(v.get("error")),
                text(v.get("reason")),
                text(v.get("decision_id")),
            ),
        };
        let reason = reason.unwrap_or_else(|| {
            let b = body.trim();
            if b.is_empty() {
                format!("HTTP {status}")
            } else {
                b.chars().take(200).collect()
            }
        });
        Denial {
            status,
            error,
            reason,
            decision_id: decision.or_else(|| decision_header.map(str::to_string)),
            retry_after: retry_after
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(Duration::from_secs),
        }
    }

    /// agentplane itself refused (a decision id, and an error class it
    /// uses): the request never reached the service.
    pub fn from_agentplane(&self) -> bool {
        self.decision_id.is_some() && self.error.is_some()
    }
}

impl fmt::Display for Denial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "HTTP {}: {}", self.status, self.reason)?;
        if let Some(id) = &self.decision_id {
            write!(f, " (decision {id})")?;
        }
        Ok(())
    }
}

/// An SDK error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// The call was answered with a refusal (after any retries).
    Denied(Denial),
    /// No token: the identity provider could not be reached, or refused
    /// the client (wrong or expired secret, unknown client).
    Token(String),
    /// The sidecar could not be reached, or the connection failed.
    Transport(String),
    /// An answer that is not what the protocol says (a 2xx body that is
    /// not JSON where JSON was asked for).
    Protocol(String),
    /// A workflow or chain step that cannot run (an undefined reference).
    Workflow(String),
}

impl Error {
    /// The refusal, when the call was refused.
    pub fn denial(&self) -> Option<&Denial> {
        match self {
            Error::Denied(d) => Some(d),
            _ => None,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Denied(d) => write!(f, "refused: {d}"),
            Error::Token(m) => write!(f, "no access token: {m}"),
            Error::Transport(m) => write!(f, "cannot reach the sidecar: {m}"),
            Error::Protocol(m) => write!(f, "unexpected answer: {m}"),
            Error::Workflow(m) => write!(f, "workflow: {m}"),
        }
    }
}

impl std::error::Error for Error {}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn an_agentplane_refusal_is_read_with_its_decision_id() {
        let d = Denial::from_response(
            403,
            Some("hdr-id"),
            None,
            r#"{"error":"forbidden","reason":"missing permission data:write","decision_id":"d-1"}"#,
        );
        assert_eq!(d.error.as_deref(), Some("forbidden"));
        assert_eq!(d.reason, "missing permission data:write");
        assert_eq!(d.decision_id.as_deref(), Some("d-1"));
        assert!(d.from_agentplane());
        assert_eq!(
            d.to_string(),
            "HTTP 403: missing permission data:write (decision d-1)"
        );
    }

    #[test]
    fn a_json_rpc_refusal_and_a_plain_one_are_read_too() {
        let d = Denial::from_response(
            429,
            None,
            Some("7"),
            r#"{"jsonrpc":"2.0","id":3,"error":{"code":-32004,"message":"limit experimental exceeded","data":{"error":"rate_limited","decision_id":"d-2"}}}"#,
        );
        assert_eq!(d.reason, "limit experimental exceeded");
        assert_eq!(d.decision_id.as_deref(), Some("d-2"));
        assert_eq!(d.retry_after, Some(Duration::from_secs(7)));
        let d = Denial::from_response(502, None, None, "upstream connect error");
        assert_eq!(d.reason, "upstream connect error");
        assert!(!d.from_agentplane(), "not agentplane's");
    }
}
