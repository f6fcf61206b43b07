//! End-to-end scenarios: real Envoy 1.40, jwt_authn with a harness-made
//! JWKS, the release `agentplane.wasm`, tokens minted per test.
//! Each module guards one area; each test names what it guards.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod adversarial;
mod agents;
mod approval;
mod approval_service;
mod approver_login;
mod audience;
mod audit;
mod authz;
mod cimd;
mod clients;
mod config;
mod deploy;
mod exchange_upstream;
mod fleet;
mod hotswap;
mod identity;
mod istio;
mod limits;
mod linked_accounts;
mod listen;
mod mcp;
mod mcp_delivery;
mod observability;
mod pins;
mod registration;
mod secrets;
mod session;
mod source;
mod timeouts;
mod token_exchange;
mod tracing;
mod txn;
