//! Per-stream state: what the host does next ([`Flow`]), the request's
//! [`Decision`] the stream carries to its response and log phases, the
//! body the filter waited for ([`RequestBody`]), and what the headers
//! phase established ([`Admitted`]) while the body is awaited
//! ([`Awaiting`]).

use crate::audit::Trail;
use crate::config::{Config, Protocol};
use crate::headers::RequestHeaders;
use crate::outcome::{Denial, State};
use crate::principal::Principal;
use std::rc::Rc;

/// What the proxy should do with the request after the filter ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// Forward upstream.
    Continue,
    /// A local reply was sent; stop processing.
    Replied,
    /// Allowed, waiting for secrets: the worker's root context resumes the
    /// stream (or replies 503) when they arrive.
    Paused,
    /// Undecided until the whole body is read ([`Filter::on_request_body`]):
    /// hold the headers and buffer the body.
    NeedBody,
    /// Allowed, but waiting for the approval service: the stream's own
    /// decision carries the request until [`Filter::on_approval_response`]
    /// forwards or answers it.
    Approving,
}

/// One request's decision, for the response phase and the log.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// Unique id, also sent to the client.
    pub id: String,
    /// Where the request stands.
    pub state: State,
    /// The agent id, when one was established.
    pub agent: Option<String>,
    /// The decision-log record, when this decision is logged; written by
    /// [`Filter::on_log`] with the final status.
    pub record: Option<crate::audit::Record>,
    /// The request id, echoed as `x-mcp-trace-id`.
    pub request_id: String,
    /// `x-mcp-metrics` value, when `headers.metrics_header` is on.
    pub timing: Option<String>,
    /// Holds a place in the collector buffer (mandatory logging).
    pub reserved: bool,
    /// For an MCP message: its JSON-RPC id (`null` when unknown), so a
    /// refusal answers as a JSON-RPC error.
    pub rpc: Option<serde_json::Value>,
    /// For an allowed MCP list request: how to filter its response.
    pub list: Option<crate::mcp::ListJob>,
    /// In-flight leases held until the stream ends.
    pub held: crate::limits::Held,
    /// For an allowed request to an MCP service: who may use a session
    /// its response opens ([`crate::session`]).
    pub session: Option<crate::session::Ticket>,
    /// Headers an allowed request's response gets from the policy
    /// (`response_headers_to_add`).
    pub response_headers: Vec<(String, String)>,
    /// While the headers wait for the body ([`Flow::NeedBody`]): what the
    /// headers phase established, carried by the stream to its body phase.
    pub(super) wait: Wait,
}

/// What a request waiting for its body (or for its approval) carries from
/// one phase to the next, inside the stream's own [`Decision`]: the stream
/// owns it, so no other stream's body or approval can be decided with it.
/// It belongs to that one decision value: a clone or a comparison of a
/// decision leaves it out, and the next phase takes it once.
#[derive(Debug, Default)]
pub(super) struct Wait(Option<Box<Waiting>>);

// Always boxed (in `Wait`): the variants' sizes cost nothing per stream.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
enum Waiting {
    Body(Awaiting),
    Approval(super::approved::Approving),
}

impl Wait {
    pub(super) fn on(awaiting: Awaiting) -> Wait {
        Wait(Some(Box::new(Waiting::Body(awaiting))))
    }

    pub(super) fn approval(a: super::approved::Approving) -> Wait {
        Wait(Some(Box::new(Waiting::Approval(a))))
    }

    /// The body phase's part, if that is what waits.
    pub(super) fn take(&mut self) -> Option<Awaiting> {
        match self.0.take().map(|w| *w) {
            Some(Waiting::Body(a)) => Some(a),
            other => {
                self.0 = other.map(Box::new);
                None
            }
        }
    }

    /// The approval phase's part, if that is what waits.
    pub(super) fn take_approval(&mut self) -> Option<super::approved::Approving> {
        match self.0.take().map(|w| *w) {
            Some(Waiting::Approval(a)) => Some(a),
            other => {
                self.0 = other.map(Box::new);
                None
            }
        }
    }
}

impl Clone for Wait {
    fn clone(&self) -> Wait {
        Wait(None)
    }
}

impl PartialEq for Wait {
    fn eq(&self, _: &Wait) -> bool {
        true
    }
}

impl Decision {
    /// A decision with nothing carried yet (no record, list job, leases,
    /// session or headers): each phase sets what it establishes.
    pub(super) fn new(
        id: String,
        state: State,
        agent: Option<String>,
        request_id: String,
    ) -> Decision {
        Decision {
            id,
            state,
            agent,
            record: None,
            request_id,
            timing: None,
            reserved: false,
            rpc: None,
            list: None,
            held: Default::default(),
            session: None,
            response_headers: Vec::new(),
            wait: Wait::default(),
        }
    }

    /// Not refused (forwarded, or waiting for secrets).
    pub fn allowed(&self) -> bool {
        !matches!(self.state, State::Denied(_))
    }

    /// The refusal, if refused.
    pub fn denial(&self) -> Option<&Denial> {
        match &self.state {
            State::Denied(d) => Some(d),
            _ => None,
        }
    }

    /// The status the filter replied with (0 when not refused).
    pub fn status(&self) -> u16 {
        self.denial().map_or(0, Denial::status)
    }

    /// Why refused; empty otherwise.
    pub fn reason(&self) -> String {
        self.denial().map(Denial::reason).unwrap_or_default()
    }
}

/// A request body the filter waited for, as the host delivered it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestBody<'a> {
    /// All of it.
    Complete(&'a [u8]),
    /// Longer than `mcp.max_body_bytes`: 413, nothing upstream.
    TooLarge,
    /// The host failed to hand it over: 503, nothing upstream.
    Unreadable,
}

/// What the headers phase established about a request.
#[derive(Debug)]
pub(super) struct Admitted {
    pub(super) decision_id: String,
    pub(super) reserved: bool,
    pub(super) headers: RequestHeaders,
    pub(super) principal: Rc<Principal>,
    pub(super) method: String,
    pub(super) path: String,
    pub(super) service: Option<String>,
    pub(super) authority: Option<String>,
    /// The connection's peer, when `source.peer_certificate` is on.
    pub(super) source: Option<Box<crate::source::Source>>,
    /// A verified inbound transaction token.
    pub(super) transaction: Option<Rc<crate::txn::Inbound>>,
}

impl Admitted {
    /// A POST to an MCP service is decided on its body.
    pub(super) fn needs_body(&self, config: &Config) -> bool {
        self.method == "POST"
            && config
                .resource(self.service.as_deref().unwrap_or(""))
                .protocol
                == Protocol::Mcp
    }
}

/// What a request takes on while it is decided and keeps to its end, apart
/// from its decision-log facts: the list job its response is filtered with
/// and the in-flight leases it holds. The stream's [`Decision`] takes them
/// over.
#[derive(Debug, Default)]
pub(super) struct Carried {
    /// For an MCP list request: how to filter its response.
    pub(super) list: Option<crate::mcp::ListJob>,
    /// In-flight leases taken for this request, released at stream end.
    pub(super) held: crate::limits::Held,
    /// The approval service is being asked about this call.
    pub(super) asking: Option<super::approved::Asking>,
    /// Headers the policy adds to the allowed response.
    pub(super) response_headers: Vec<(String, String)>,
    /// The filter's own `requestState` the client sent back (2026-07-28),
    /// taken out of the message before it went upstream.
    pub(super) request_state: Option<String>,
}

/// A request waiting for its body.
#[derive(Debug)]
pub(super) struct Awaiting {
    pub(super) admitted: Admitted,
    pub(super) trail: Trail,
    pub(super) t0: u64,
}

/// A stream waiting for its secrets, held by the worker whose root context
/// settles it: its decision, and the facts its decision-log record is
/// written from once the decision is final (resumed, refused, or the
/// stream ended while waiting), so the record states the outcome that
/// was delivered and follows that outcome's sampling.
#[derive(Debug)]
pub(super) struct Paused {
    pub(super) decision: Decision,
    pub(super) trail: Trail,
    /// When the policy decided (the record's time).
    pub(super) decided_ns: u64,
}

/// A refusal and the agent it concerns, if known.
pub(super) type Refused = (Denial, Option<String>);
