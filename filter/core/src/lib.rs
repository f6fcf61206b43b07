//! agentplane's data-plane logic, independent of any proxy ABI.
//!
//! A request flows through [`Filter::on_request_headers`]: strip untrusted
//! identity headers, read the verified JWT payload ([`claims`]), build the
//! OPA input document ([`input`]), evaluate the embedded Rego ([`policy`]),
//! then either reply (401/403) or forward with trusted agent headers.
//!
//! Everything the host does goes through the small [`Host`] trait; the wasm
//! crate implements it over proxy-wasm and tests use [`MockHost`]. Nothing
//! here depends on proxy-wasm, so the whole request path runs under plain
//! `cargo test`.

pub mod approval;
pub mod audience;
pub mod audit;
pub mod bundle;
pub mod cache;
pub mod claims;
pub mod config;
pub mod delegation;
pub mod exchange;
pub mod ext_authz;
pub mod headers;
pub mod host;
pub mod ids;
pub mod input;
pub mod limits;
pub mod mcp;
pub mod metrics;
pub mod oauth;
pub mod outcome;
pub mod pbstruct;
pub mod policy;
pub mod principal;
pub mod reads;
pub mod request;
pub mod secrets;
pub mod session;
pub mod source;
pub mod trace;
pub mod txn;
pub mod uri;
pub mod value;
pub mod wire;

pub use config::{Config, ConfigError};
pub use host::{Host, LogLevel, MockHost};
pub use outcome::{Denial, State};
pub use request::{BodyStep, Decision, Filter, Flow, RequestBody, ResponseBody};
