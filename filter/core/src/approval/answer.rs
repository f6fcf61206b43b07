//! How a call that needs approval is answered, in the terms of the
//! client's MCP revision. Every form is a JSON-RPC answer (HTTP 200) that
//! the client's SDK hands to its user or model, never a transport error.

use super::Pending;
use serde_json::{json, Value};

/// The answer's form, chosen by the message's protocol revision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Form {
    /// 2026-07-28: an input-required result with a URL elicitation and a
    /// sealed `requestState`.
    InputRequired,
    /// 2025-11-25: JSON-RPC error −32042 (URL elicitation required).
    UrlElicitation,
    /// Earlier revisions, which know no URL elicitation: a tool result
    /// marked `isError` whose text carries the link.
    ToolResult,
}

impl Form {
    /// The form for a message sent under `version` (none: 2025-03-26).
    pub fn for_version(version: Option<&str>) -> Form {
        match version {
            Some(v) if v >= "2026-07-28" => Form::InputRequired,
            Some(v) if v >= "2025-11-25" => Form::UrlElicitation,
            _ => Form::ToolResult,
        }
    }
}

/// Why the call did not pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AskedState {
    /// Nobody has approved it yet.
    Required,
    /// Its approval was used already (a replay).
    Used,
    /// Its approval, or the wait for one, ran out.
    Expired,
    /// An approver rejected it.
    Rejected {
        /// Who.
        approver: String,
    },
    /// A retry carrying the filter's `requestState` is not the call that
    /// state names (its arguments were edited, say).
    Mismatch,
    /// The call carries a member (named) that is not bound, so an
    /// approver would not see it.
    Unbound(String),
    /// The approval service's grant did not hold.
    BadGrant(&'static str),
}

/// A call refused for want of approval: why, and where to get one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Asked {
    /// Why.
    pub state: AskedState,
    /// The approval now waiting for this call, when there is one.
    pub pending: Option<Pending>,
    /// How to answer.
    pub form: Form,
    /// The sealed `requestState` (input-required form).
    pub request_state: Option<String>,
}

impl Asked {
    /// The reason, for the decision log and the answer.
    pub fn reason(&self) -> String {
        match &self.state {
            AskedState::Required => "approval required".into(),
            AskedState::Used => "approval already used: the call needs a new approval".into(),
            AskedState::Expired => "approval expired: the call needs a new approval".into(),
            AskedState::Rejected { approver } => format!("approval rejected by {approver}"),
            AskedState::Mismatch => {
                "the call differs from the one awaiting approval (arguments, tool or agent changed)"
                    .into()
            }
            AskedState::Unbound(member) => format!(
                "the call carries {member}, which an approver is not shown: a call that needs approval carries only its name, arguments and the protocol's _meta"
            ),
            AskedState::BadGrant(why) => format!("approval grant refused: {why}"),
        }
    }

    /// The `error` class of the answer.
    pub fn error(&self) -> &'static str {
        match (&self.state, &self.pending) {
            (_, Some(_)) => "approval_required",
            _ => "forbidden",
        }
    }

    /// What the user is told to do.
    fn message(&self, p: &Pending) -> String {
        format!(
            "{}. An approver must approve this exact call at {}, then retry it unchanged.",
            capitalized(&self.reason()),
            p.url
        )
    }

    /// The JSON-RPC answer to the message with id `rpc`.
    pub fn body(&self, rpc: &Value, decision_id: &str) -> Value {
        let meta = json!({"io.agentplane/decision": {
            "error": self.error(),
            "decision_id": decision_id,
            "reasons": [self.reason()],
        }});
        let Some(p) = &self.pending else {
            // Nothing to wait for: a refusal the model reads.
            return json!({
                "jsonrpc": "2.0",
                "id": rpc,
                "result": {
                    "content": [{"type": "text", "text": format!(
                        "Refused: {} (decision {decision_id})", self.reason())}],
                    "isError": true,
                    "resultType": "complete",
                    "_meta": meta,
                },
            });
        };
        let elicitation = json!({
            "mode": "url",
            "message": self.message(p),
            "url": p.url,
            "elicitationId": p.id,
        });
        match self.form {
            Form::InputRequired => {
                let mut result = json!({
                    "resultType": "input_required",
                    "inputRequests": {super::INPUT_KEY: {
                        "method": "elicitation/create",
                        "params": elicitation,
                    }},
                    "_meta": meta,
                });
                if let (Some(s), Some(o)) = (&self.request_state, result.as_object_mut()) {
                    o.insert("requestState".into(), s.clone().into());
                }
                json!({"jsonrpc": "2.0", "id": rpc, "result": result})
            }
            Form::UrlElicitation => json!({
                "jsonrpc": "2.0",
                "id": rpc,
                "error": {
                    "code": crate::mcp::code::URL_ELICITATION_REQUIRED,
                    "message": self.message(p),
                    "data": {
                        "elicitations": [elicitation],
                        "error": self.error(),
                        "decision_id": decision_id,
                        "reasons": [self.reason()],
                        "expires_at": p.expires_at,
                    },
                },
            }),
            Form::ToolResult => json!({
                "jsonrpc": "2.0",
                "id": rpc,
                "result": {
                    "content": [{"type": "text", "text": format!(
                        "{} (decision {decision_id})", self.message(p))}],
                    "isError": true,
                    "_meta": meta,
                },
            }),
        }
    }
}

fn capitalized(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().chain(c).collect(),
        None => String::new(),
    }
}
