//! One request through agentplane: strip, identify, route, decide, then
//! reply or forward with trusted headers. Every path that does not end in
//! an explicit allow ends in a local reply carrying a decision id.

use crate::claims::{self, ClaimsError, Identity};
use crate::config::{Config, ConfigError};
use crate::headers::{self, check_value};
use crate::host::{Host, LogLevel};
use crate::ids::DecisionIds;
use crate::input::{self, RequestFacts};
use crate::policy::{Policy, Verdict};

/// Response (and reply) header carrying the decision id.
pub const DECISION_ID_HEADER: &str = "x-decision-id";

/// What the proxy should do with the request after the filter ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// Forward upstream.
    Continue,
    /// A local reply was sent; stop processing.
    Replied,
}

/// The outcome of one request, for logs, metrics and the response phase.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Unique id, also sent to the client.
    pub id: String,
    /// Whether the request was forwarded.
    pub allowed: bool,
    /// The status the filter replied with (0 when forwarded).
    pub status: u16,
    /// Why; empty when allowed.
    pub reason: String,
    /// The agent id, when one was established.
    pub agent: Option<String>,
}

/// The configured filter: immutable config and compiled policy, shared by
/// every request on a worker.
#[derive(Debug)]
pub struct Filter {
    config: Config,
    policy: Policy,
    ids: DecisionIds,
}

struct Refusal {
    status: u16,
    error: &'static str,
    reason: String,
    headers: Vec<(String, String)>,
}

impl Refusal {
    fn new(status: u16, error: &'static str, reason: impl Into<String>) -> Self {
        Refusal {
            status,
            error,
            reason: reason.into(),
            headers: Vec::new(),
        }
    }
}

impl Filter {
    /// Parses the plugin configuration and compiles the embedded policy.
    /// `seed` feeds the decision-id generator.
    pub fn new(config_json: &[u8], seed: u64) -> Result<Filter, ConfigError> {
        let config = Config::from_json(config_json)?;
        let policy = Policy::embedded(&config.policy.entrypoint)
            .map_err(|e| ConfigError::Policy(e.to_string()))?;
        Ok(Filter::with_policy(config, policy, seed))
    }

    /// A filter over an explicitly supplied policy (tests, benchmarks).
    pub fn with_policy(config: Config, policy: Policy, seed: u64) -> Filter {
        Filter {
            config,
            policy,
            ids: DecisionIds::new(seed),
        }
    }

    /// The validated configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Handles the request headers. On [`Flow::Replied`] the reply has been
    /// sent through the host and nothing may be forwarded.
    pub fn on_request_headers<H: Host>(&self, host: &mut H) -> (Flow, Decision) {
        // Before anything else: nothing the client says about identity survives.
        headers::strip_untrusted(host, &self.config);
        let id = self.ids.next_id();
        match self.decide(host) {
            Ok(agent) => (
                Flow::Continue,
                Decision {
                    id,
                    allowed: true,
                    status: 0,
                    reason: String::new(),
                    agent: Some(agent),
                },
            ),
            Err((refusal, agent)) => {
                let body = serde_json::json!({
                    "error": refusal.error,
                    "reason": refusal.reason,
                    "decision_id": id,
                })
                .to_string();
                let mut hdrs: Vec<(&str, &str)> = vec![
                    ("content-type", "application/json"),
                    (DECISION_ID_HEADER, id.as_str()),
                ];
                hdrs.extend(refusal.headers.iter().map(|(k, v)| (k.as_str(), v.as_str())));
                host.send_reply(refusal.status, &hdrs, body.as_bytes());
                host.log(
                    LogLevel::Debug,
                    &format!(
                        "agentplane: denied {} decision_id={id} agent={} reason={}",
                        refusal.status,
                        agent.as_deref().unwrap_or("-"),
                        refusal.reason
                    ),
                );
                (
                    Flow::Replied,
                    Decision {
                        id,
                        allowed: false,
                        status: refusal.status,
                        reason: refusal.reason,
                        agent,
                    },
                )
            }
        }
    }

    /// Adds the decision id to the upstream response of an allowed request.
    pub fn on_response_headers<H: Host>(&self, host: &mut H, decision: &Decision) {
        host.set_response_header(DECISION_ID_HEADER, &decision.id);
    }

    fn decide<H: Host>(&self, host: &mut H) -> Result<String, (Refusal, Option<String>)> {
        let identity = self.identify(host).map_err(|r| (r, None))?;
        let agent = Some(identity.id.clone());
        self.authorize(host, &identity).map_err(|r| (r, agent))?;
        Ok(identity.id)
    }

    fn identify<H: Host>(&self, host: &H) -> Result<Identity, Refusal> {
        let unauthorized = |e: ClaimsError| {
            let challenge = match e {
                ClaimsError::Missing => r#"Bearer realm="agentplane""#,
                _ => r#"Bearer realm="agentplane", error="invalid_token""#,
            };
            let mut r = Refusal::new(401, "unauthorized", e.to_string());
            r.headers.push(("www-authenticate".into(), challenge.into()));
            r
        };
        let payload =
            claims::trust_jwt_authn_payload(host, &self.config.identity).map_err(unauthorized)?;
        claims::identity(payload, &self.config.identity).map_err(unauthorized)
    }

    fn authorize<H: Host>(&self, host: &mut H, identity: &Identity) -> Result<(), Refusal> {
        let max = self.config.headers.max_value_bytes;
        let trusted = [
            ("x-agent-id", Some(&identity.id)),
            ("x-agent-type", identity.agent_type.as_ref()),
            ("x-agent-team", identity.team.as_ref()),
        ];
        for (name, value) in &trusted {
            if let Some(v) = value {
                check_value(v, max).map_err(|e| {
                    Refusal::new(403, "forbidden", format!("identity for {name} {e}"))
                })?;
            }
        }

        let method = host
            .request_header(":method")
            .ok_or_else(|| Refusal::new(400, "bad_request", "missing :method"))?;
        let path = host
            .request_header(":path")
            .ok_or_else(|| Refusal::new(400, "bad_request", "missing :path"))?;
        let authority = host.request_header(":authority").unwrap_or_default();
        let request_id = host
            .property(&["request", "id"])
            .and_then(|b| String::from_utf8(b).ok())
            .or_else(|| host.request_header("x-request-id"))
            .unwrap_or_default();
        check_value(&request_id, max)
            .map_err(|e| Refusal::new(400, "bad_request", format!("request id {e}")))?;
        let route = input::parse_route(&path, &self.config)
            .map_err(|e| Refusal::new(400, "bad_request", e.to_string()))?;
        let facts = RequestFacts {
            method: &method,
            route: &route,
            host: &authority,
            id: &request_id,
            time_ns: host.now_ns(),
        };
        let doc = input::build(host, &self.config, identity, &facts);
        let verdict = self.policy.evaluate(&doc).map_err(|e| {
            host.log(LogLevel::Warn, &format!("agentplane: {e}"));
            Refusal::new(403, "forbidden", "policy_error")
        })?;
        let Verdict {
            allowed,
            reasons,
            status,
            headers: extra,
        } = verdict;
        for (k, v) in &extra {
            if k.is_empty() || k.starts_with(':') || check_value(v, max).is_err() {
                host.log(LogLevel::Warn, &format!("agentplane: policy header {k:?} rejected"));
                return Err(Refusal::new(403, "forbidden", "policy_error"));
            }
        }
        if !allowed {
            let reason = if reasons.is_empty() {
                "no policy rule allowed the request".to_string()
            } else {
                reasons.join("; ")
            };
            let mut r = Refusal::new(status.unwrap_or(403), "forbidden", reason);
            r.headers = extra;
            return Err(r);
        }
        for (name, value) in trusted {
            if let Some(v) = value {
                host.set_request_header(name, v);
            }
        }
        if !request_id.is_empty() {
            host.set_request_header("x-request-id", &request_id);
        }
        for (k, v) in &extra {
            host.set_request_header(k, v);
        }
        Ok(())
    }
}
