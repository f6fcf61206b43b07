//! agentplane's agent SDK: what an agent developer uses so that identity,
//! policy, secrets and limits stay the sidecar's business.
//!
//! - [`token`]: an access token from the identity provider (OAuth 2.0
//!   client credentials, RFC 8707 resource), cached and refreshed before it
//!   expires, refreshed once more on a 401; never logged.
//! - [`Agent`]: `call_skill`, `get_data`, `write_data` and `call_chain`
//!   through the sidecar (`http://localhost:15000/mcp://<service>/<path>`),
//!   each carrying a W3C `traceparent` from one trace per agent run
//!   ([`trace`]).
//! - [`Error`]: agentplane's refusals as values (status, reason, decision
//!   id), and [`retry`]'s rules for when trying again is safe.

pub mod client;
pub mod error;
pub mod mcp;
pub mod retry;
pub mod token;
pub mod trace;
pub mod workflow;

pub use client::{Agent, Step};
pub use error::{Denial, Error};
pub use token::{ClientCredentials, Clock, SystemClock, TokenCache, TokenSource};
pub use workflow::Workflow;
