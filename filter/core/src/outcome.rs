//! A request's outcome as one typed value, and the one place that renders
//! it: into the local reply ([`Denial::reply`]), the metric
//! ([`Denial::metric`]) and the decision-log fields ([`Denial::reason`]).
//! Modules that decide return a [`Denial`]; none of them replies, counts
//! or formats a reason for the log.

use crate::claims::ClaimsError;
use crate::metrics::M;
use std::fmt;

/// Why a request was refused. Each kind fixes its status, its error class
/// and its metric.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Denial {
    /// No usable identity (401).
    Unauthorized(ClaimsError),
    /// The request cannot be decided as sent: ambiguous path, header that
    /// is not UTF-8 or appears twice, bad method (400).
    BadRequest(String),
    /// The policy said no: its reasons, its status (403 unless the policy
    /// chose another) and any headers it set on the refusal.
    Policy {
        /// The policy's status.
        status: u16,
        /// Every deny reason (empty: no rule allowed the request).
        reasons: Vec<String>,
        /// Headers from a response-object policy, checked.
        headers: Vec<(String, String)>,
        /// A response-object policy's reply body, sent as is.
        body: Option<String>,
    },
    /// The policy could not be evaluated, or returned something unusable
    /// (403 `policy_error`).
    PolicyError,
    /// A verified identity value cannot be sent in a trusted header (403).
    UnsafeIdentity(String),
    /// The service's secrets could not be had (503), with the failure class.
    SecretsUnavailable(String),
    /// Mandatory decision logging has no room for the record (503).
    LogUnavailable,
    /// The proxy refused something the filter needs: the header map, a
    /// header write (503). Nothing is forwarded unchecked.
    HostFailure(&'static str),
    /// An MCP request that is not an acceptable JSON-RPC message (or
    /// whose mirror headers disagree with it): 400, its own JSON-RPC code.
    Mcp(crate::mcp::McpError),
    /// A body over the configured maximum: 413.
    TooLarge {
        /// The maximum, in bytes.
        max: usize,
    },
    /// Over a limit the policy applies: 429 with `Retry-After` and the
    /// RateLimit fields.
    RateLimited(crate::limits::Refusal),
    /// An inbound `Txn-Token` that does not verify (403), with why.
    InvalidTxnToken(&'static str),
    /// A transaction token is needed and cannot be had: the signing key
    /// has not loaded, or signing failed (503).
    TxnTokenUnavailable(&'static str),
    /// A proxy that guards and delivers to one service
    /// (`routing.local_service`) got a path naming another registered
    /// service (403): deciding it as either would decide on a service the
    /// request was not meant for or does not reach.
    OtherService {
        /// The service this proxy delivers to.
        local: String,
        /// The registered service the path names.
        named: String,
    },
    /// An `Mcp-Session-Id` this principal may not use: never bound, expired,
    /// or bound to another principal (404, as an MCP server answers an
    /// unknown session: the client starts a new one).
    McpSession(crate::session::Refusal),
    /// A tool call the policy lets through only with a human approval it
    /// does not have (yet): answered in the client's MCP terms, HTTP 200.
    Approval(Box<crate::approval::Asked>),
    /// The approval service could not be asked, or answered something
    /// unusable (503), with why.
    ApprovalUnavailable(String),
    /// The token the service's upstream takes could not be exchanged for
    /// the caller's (503), with why.
    ExchangeUnavailable(String),
    /// The token service refused to exchange the caller's token (403: not
    /// for this audience, these scopes or this actor), with its error code.
    ExchangeRefused(String),
    /// The person the caller acts for has no usable linked account at the
    /// service (401; an MCP request gets a URL elicitation): the page to
    /// link it at, as the link broker named it.
    LinkRequired(String),
}

impl Denial {
    /// The HTTP status of the refusal.
    pub fn status(&self) -> u16 {
        match self {
            Denial::Unauthorized(_) | Denial::LinkRequired(_) => 401,
            Denial::BadRequest(_) => 400,
            Denial::Mcp(e) => e.status(),
            Denial::TooLarge { .. } => 413,
            Denial::McpSession(_) => 404,
            Denial::RateLimited(_) => 429,
            Denial::Approval(_) => 403,
            Denial::ApprovalUnavailable(_) | Denial::ExchangeUnavailable(_) => 503,
            Denial::Policy { status, .. } => *status,
            Denial::PolicyError
            | Denial::UnsafeIdentity(_)
            | Denial::InvalidTxnToken(_)
            | Denial::OtherService { .. }
            | Denial::ExchangeRefused(_) => 403,
            Denial::SecretsUnavailable(_)
            | Denial::LogUnavailable
            | Denial::HostFailure(_)
            | Denial::TxnTokenUnavailable(_) => 503,
        }
    }

    /// The `error` field of the reply body.
    pub fn error(&self) -> &'static str {
        match self {
            Denial::Unauthorized(_) => "unauthorized",
            Denial::LinkRequired(_) => "link_required",
            Denial::BadRequest(_) | Denial::Mcp(_) => "bad_request",
            Denial::TooLarge { .. } => "payload_too_large",
            Denial::McpSession(_) => "not_found",
            Denial::RateLimited(_) => "rate_limited",
            Denial::Approval(a) => a.error(),
            Denial::ApprovalUnavailable(_) | Denial::ExchangeUnavailable(_) => "unavailable",
            Denial::Policy { .. }
            | Denial::PolicyError
            | Denial::UnsafeIdentity(_)
            | Denial::InvalidTxnToken(_)
            | Denial::OtherService { .. }
            | Denial::ExchangeRefused(_) => "forbidden",
            Denial::SecretsUnavailable(_)
            | Denial::LogUnavailable
            | Denial::HostFailure(_)
            | Denial::TxnTokenUnavailable(_) => "unavailable",
        }
    }

    /// The human-readable reason (reply body, decision log).
    pub fn reason(&self) -> String {
        match self {
            Denial::Unauthorized(e) => e.to_string(),
            Denial::BadRequest(why) => why.clone(),
            Denial::Mcp(e) => e.message.clone(),
            Denial::TooLarge { max } => format!("request body exceeds {max} bytes"),
            Denial::McpSession(r) => r.reason().into(),
            Denial::RateLimited(r) if r.table_full => format!(
                "limit {} has no free slot in the limits table (limits.slots)",
                r.limit
            ),
            Denial::RateLimited(r) => format!("limit {} exceeded", r.limit),
            // A response object's body says why when no reason does (an MCP
            // client gets it as the JSON-RPC error's message).
            Denial::Policy {
                reasons,
                body: Some(b),
                ..
            } if reasons.is_empty() && !b.is_empty() => b.chars().take(256).collect(),
            Denial::Policy { reasons, .. } if reasons.is_empty() => {
                "no policy rule allowed the request".into()
            }
            Denial::Policy { reasons, .. } => reasons.join("; "),
            Denial::PolicyError => "policy_error".into(),
            Denial::UnsafeIdentity(why) => why.clone(),
            Denial::SecretsUnavailable(class) => format!("secrets_unavailable: {class}"),
            Denial::LogUnavailable => "decision_log_unavailable".into(),
            Denial::HostFailure(what) => format!("proxy_error: {what}"),
            Denial::InvalidTxnToken(why) => format!("invalid_txn_token: {why}"),
            Denial::TxnTokenUnavailable(why) => format!("txn_token_unavailable: {why}"),
            Denial::Approval(a) => a.reason(),
            Denial::ApprovalUnavailable(why) => format!("approval_unavailable: {why}"),
            Denial::ExchangeUnavailable(why) => format!("token_exchange_unavailable: {why}"),
            Denial::ExchangeRefused(why) => format!("token_exchange_refused: {why}"),
            Denial::LinkRequired(url) => format!(
                "link_required: the person this call acts for has no linked account at the service; link it at {url}"
            ),
            Denial::OtherService { local, named } => format!(
                "the path names service {named:?}; this proxy guards and delivers to {local:?} only"
            ),
        }
    }

    /// The policy's deny reasons, for the decision log's `result.reasons`.
    pub fn reasons(&self) -> Vec<String> {
        match self {
            Denial::Policy { reasons, .. } => reasons.clone(),
            other => vec![other.reason()],
        }
    }

    /// The counter this refusal adds to.
    pub fn metric(&self) -> M {
        match self {
            Denial::Unauthorized(_) => M::Unauthorized,
            Denial::BadRequest(_) | Denial::Mcp(_) | Denial::TooLarge { .. } => M::BadRequest,
            Denial::Policy { .. }
            | Denial::UnsafeIdentity(_)
            | Denial::OtherService { .. }
            | Denial::ExchangeRefused(_)
            | Denial::McpSession(_) => M::Denied,
            Denial::PolicyError => M::PolicyError,
            Denial::RateLimited(_) => M::RateLimited,
            Denial::SecretsUnavailable(_) => M::SecretsUnavailable,
            Denial::LogUnavailable => M::LogUnavailable,
            Denial::HostFailure(_) => M::HostFailure,
            Denial::InvalidTxnToken(_) => M::Unauthorized,
            Denial::TxnTokenUnavailable(_) => M::TxnUnavailable,
            Denial::Approval(_) => M::ApprovalRequired,
            Denial::ApprovalUnavailable(_) => M::ApprovalUnavailable,
            Denial::ExchangeUnavailable(_) => M::ExchangeUnavailable,
            Denial::LinkRequired(_) => M::LinkRequired,
        }
    }

    /// The local reply: status, headers and JSON body
    /// `{"error", "reason", "decision_id"}`. `extra` are the response
    /// headers every reply carries (decision id, trace id, timing).
    pub fn reply(
        &self,
        decision_id: &str,
        extra: &[(&str, &str)],
        rpc: Option<&serde_json::Value>,
    ) -> Reply {
        self.answer(decision_id, extra, rpc, false, None)
    }

    /// The policy's plain "no" (403, no scope to step up to): what an MCP
    /// server would answer itself, so an MCP request gets it as an answer
    /// (HTTP 200) that its client hands to the model, not as a transport
    /// failure.
    pub fn is_policy_answer(&self) -> bool {
        matches!(self, Denial::Policy { status: 403, headers, .. }
            if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("www-authenticate")))
    }

    /// [`Denial::reply`] for an MCP message with id `rpc`: a policy refusal
    /// of a request ([`Denial::is_policy_answer`]) is HTTP 200, as a
    /// `CallToolResult` marked `isError` when `tool_result` (a `tools/call`),
    /// else as a JSON-RPC error; every other refusal keeps its status. A
    /// 401 with a `challenge` points to the resource metadata (RFC 9728
    /// §5.1) instead of naming a realm.
    pub fn answer(
        &self,
        decision_id: &str,
        extra: &[(&str, &str)],
        rpc: Option<&serde_json::Value>,
        tool_result: bool,
        challenge: Option<&Challenge<'_>>,
    ) -> Reply {
        let answered = rpc.is_some_and(|id| !id.is_null())
            && (self.is_policy_answer()
                || matches!(self, Denial::Approval(_) | Denial::LinkRequired(_)));
        let body = match rpc {
            // MCP's URL elicitation (2025-11-25): the client opens the link
            // page for the person and retries; a client that knows no
            // elicitation shows the message, which names the page too.
            Some(id) if answered && matches!(self, Denial::LinkRequired(_)) => {
                let url = match self {
                    Denial::LinkRequired(u) => u.as_str(),
                    _ => "",
                };
                let message = format!(
                    "Link your account at this service to let the agent act for you: {url}"
                );
                serde_json::json!({
                    "jsonrpc": "2.0",
                    "id": id,
                    "error": {
                        "code": crate::mcp::code::URL_ELICITATION_REQUIRED,
                        "message": message,
                        "data": {
                            "elicitations": [{
                                "mode": "url",
                                "message": message,
                                "url": url,
                                "elicitationId": decision_id,
                            }],
                            "error": self.error(),
                            "decision_id": decision_id,
                            "reasons": self.reasons(),
                        },
                    },
                })
            }
            Some(id) if answered && matches!(self, Denial::Approval(_)) => match self {
                Denial::Approval(a) => a.body(id, decision_id),
                _ => serde_json::Value::Null,
            },
            Some(id) if answered && tool_result => serde_json::json!({
                "jsonrpc": "2.0",
                "id": id,
                "result": {
                    "content": [{"type": "text", "text": format!(
                        "Refused by policy: {} (decision {decision_id})", self.reason())}],
                    "isError": true,
                    // 2026-07-28 results say they are complete; earlier
                    // revisions ignore a member they do not know.
                    "resultType": "complete",
                    "_meta": {"io.agentplane/decision": {
                        "error": self.error(),
                        "decision_id": decision_id,
                        "reasons": self.reasons(),
                    }},
                },
            }),
            // An MCP client shows a JSON-RPC error best: the request's id,
            // the reason, and the decision id in `data`.
            Some(id) => {
                let mut data = serde_json::Map::new();
                if let Denial::Mcp(crate::mcp::McpError { data: Some(d), .. }) = self {
                    data.extend(d.clone());
                }
                data.insert("error".into(), self.error().into());
                data.insert("decision_id".into(), decision_id.into());
                data.insert("reasons".into(), self.reasons().into());
                serde_json::json!({
                    "jsonrpc": "2.0",
                    "id": id,
                    "error": {
                        "code": self.rpc_code(),
                        "message": self.reason(),
                        "data": data,
                    },
                })
            }
            None => match self {
                Denial::Policy { body: Some(b), .. } => serde_json::Value::String(b.clone()),
                Denial::LinkRequired(url) => serde_json::json!({
                    "error": self.error(),
                    "reason": self.reason(),
                    "decision_id": decision_id,
                    "link": url,
                }),
                _ => serde_json::json!({
                    "error": self.error(),
                    "reason": self.reason(),
                    "decision_id": decision_id,
                }),
            },
        };
        // A policy's own body goes as it wrote it; everything else as JSON.
        let body = match body {
            serde_json::Value::String(s) => s.into_bytes(),
            other => other.to_string().into_bytes(),
        };
        let mut headers: Vec<(String, String)> =
            vec![("content-type".into(), "application/json".into())];
        headers.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        match self {
            Denial::Unauthorized(e) => {
                let mut v = match challenge {
                    Some(c) => {
                        let mut v =
                            format!(r#"Bearer resource_metadata="{}""#, c.resource_metadata);
                        // MCP authorization: the client asks for these
                        // scopes from the start.
                        if !c.scopes.is_empty() {
                            v.push_str(&format!(r#", scope="{}""#, c.scopes.join(" ")));
                        }
                        if *e != ClaimsError::Missing {
                            v.push_str(r#", error="invalid_token""#);
                        }
                        v
                    }
                    None => match e {
                        ClaimsError::Missing => r#"Bearer realm="agentplane""#,
                        _ => r#"Bearer realm="agentplane", error="invalid_token""#,
                    }
                    .to_string(),
                };
                if let Some(d) = e.error_description() {
                    v.push_str(&format!(r#", error_description="{d}""#));
                }
                headers.push(("www-authenticate".into(), v));
            }
            Denial::Policy { headers: h, .. } => headers.extend(h.iter().cloned()),
            // A 401 names how to authenticate: here, by linking an account
            // at the page (not a Bearer challenge, which would send an
            // OAuth client to the gateway's own authorization server).
            Denial::LinkRequired(url) if !answered => {
                headers.push((
                    "www-authenticate".into(),
                    format!(r#"AccountLink url="{url}""#),
                ));
            }
            Denial::RateLimited(r) => {
                headers.push(("retry-after".into(), r.retry_after_s.to_string()));
                headers.push(("ratelimit-policy".into(), r.policy.clone()));
                headers.push(("ratelimit".into(), r.state.clone()));
            }
            _ => {}
        }
        Reply {
            status: if answered { 200 } else { self.status() },
            headers,
            body,
        }
    }
}

impl Denial {
    /// The JSON-RPC error code of this refusal of an MCP message.
    pub fn rpc_code(&self) -> i64 {
        use crate::mcp::code;
        match self {
            Denial::Mcp(e) => e.code,
            Denial::BadRequest(_) | Denial::TooLarge { .. } => code::INVALID_REQUEST,
            Denial::Unauthorized(_) => code::UNAUTHORIZED,
            Denial::Policy { .. }
            | Denial::PolicyError
            | Denial::UnsafeIdentity(_)
            | Denial::InvalidTxnToken(_)
            | Denial::OtherService { .. }
            | Denial::ExchangeRefused(_) => code::FORBIDDEN,
            // A client reads the HTTP 404 (start a new session); the code
            // is the filter's own refusal code, like every other refusal.
            Denial::McpSession(_) => code::FORBIDDEN,
            Denial::SecretsUnavailable(_)
            | Denial::LogUnavailable
            | Denial::HostFailure(_)
            | Denial::TxnTokenUnavailable(_) => code::UNAVAILABLE,
            Denial::RateLimited(_) => code::RATE_LIMITED,
            Denial::Approval(_) => code::FORBIDDEN,
            Denial::LinkRequired(_) => code::URL_ELICITATION_REQUIRED,
            Denial::ApprovalUnavailable(_) | Denial::ExchangeUnavailable(_) => code::UNAVAILABLE,
        }
    }
}

impl fmt::Display for Denial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: {}", self.status(), self.error(), self.reason())
    }
}

/// Where the client of a 401 finds its authorization server: the
/// resource's metadata URL and the scopes to ask for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge<'a> {
    /// The `resource_metadata` URL (RFC 9728 §5.1).
    pub resource_metadata: String,
    /// The scopes the client should request, checked safe to quote.
    pub scopes: Vec<&'a str>,
}

/// A rendered local reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// HTTP status.
    pub status: u16,
    /// Headers.
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: Vec<u8>,
}

impl Reply {
    /// Headers as borrowed pairs, as [`crate::Host::send_reply`] takes them.
    pub fn header_refs(&self) -> Vec<(&str, &str)> {
        self.headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect()
    }
}

/// A reply the filter makes that refuses nothing it decided: the public
/// documents it serves before identity, their errors, and the answers of
/// the shell and the list filter when they cannot go on. Rendered here,
/// beside [`Denial`], so every byte the filter answers with has one place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Served {
    /// OAuth protected resource metadata (200, cacheable).
    Metadata(Vec<u8>),
    /// A metadata path no resource has (404).
    NoMetadata,
    /// The transaction-token JWKS (200, cacheable).
    Jwks(String),
    /// The JWKS before the signing key has loaded (503, retry soon).
    JwksUnavailable,
    /// The proxy-wasm shell cannot hand the stream to the filter (503),
    /// with the failure class.
    Unavailable(&'static str),
}

impl Served {
    /// The local reply.
    pub fn reply(&self) -> Reply {
        let json = || ("content-type".to_string(), "application/json".to_string());
        let (status, headers, body) = match self {
            Served::Metadata(doc) => (
                200,
                vec![json(), ("cache-control".into(), "max-age=300".into())],
                doc.clone(),
            ),
            Served::NoMetadata => (
                404,
                vec![json()],
                br#"{"error":"not_found","reason":"no protected resource at this path"}"#.to_vec(),
            ),
            Served::Jwks(keys) => (
                200,
                vec![
                    ("content-type".into(), "application/jwk-set+json".into()),
                    ("cache-control".into(), "public, max-age=60".into()),
                ],
                keys.clone().into_bytes(),
            ),
            Served::JwksUnavailable => (
                503,
                vec![json(), ("retry-after".into(), "1".into())],
                br#"{"error":"unavailable","reason":"txn_token_unavailable: signing key not loaded"}"#
                    .to_vec(),
            ),
            Served::Unavailable(reason) => (
                503,
                vec![json()],
                format!(r#"{{"error":"unavailable","reason":"{reason}"}}"#).into_bytes(),
            ),
        };
        Reply {
            status,
            headers,
            body,
        }
    }
}

/// Why a list response (or one message in it) cannot be shown: it ends as
/// a JSON-RPC error where the list would have been.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListRefusal {
    /// The response (or an event) cannot be read or filtered, with why.
    Unreadable(&'static str),
    /// A list result that does not answer the list request this stream
    /// carries.
    Untied,
}

impl ListRefusal {
    /// The JSON-RPC error message replacing the list: the answer to `rpc`
    /// (for [`ListRefusal::Unreadable`]) or to the message's own `id`
    /// (for [`ListRefusal::Untied`]).
    pub fn message(&self, id: serde_json::Value, decision_id: &str) -> serde_json::Value {
        let why = match self {
            ListRefusal::Unreadable(why) => *why,
            ListRefusal::Untied => "list result refused: it does not answer the list request this stream carries; list again",
        };
        serde_json::json!({
            "jsonrpc": "2.0",
            "id": id,
            "error": {"code": crate::mcp::code::UNAVAILABLE,
                      "message": why,
                      "data": {"decision_id": decision_id}},
        })
    }

    /// [`ListRefusal::message`] as a response body in the response's form.
    pub fn body(
        &self,
        form: crate::mcp::BodyForm,
        rpc: Option<&serde_json::Value>,
        decision_id: &str,
    ) -> Vec<u8> {
        let msg = self
            .message(rpc.cloned().unwrap_or(serde_json::Value::Null), decision_id)
            .to_string();
        match form {
            crate::mcp::BodyForm::Json => msg.into_bytes(),
            crate::mcp::BodyForm::Sse => format!("event: message\ndata: {msg}\n\n").into_bytes(),
        }
    }
}

/// Where a request stands after the filter saw its headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    /// Forwarded upstream.
    Allowed,
    /// Allowed by the policy, waiting for its secrets (resolves to
    /// `Allowed` or `Denied`).
    Pending,
    /// Refused with a local reply.
    Denied(Denial),
}

#[cfg(test)]
#[path = "outcome_tests.rs"]
mod tests;
