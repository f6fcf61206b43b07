//! Secrets from OpenBao/Vault, fetched through proxy callouts, cached per
//! agent and injected into allowed requests.
//!
//! # Flow
//!
//! The policy decides first. An allowed request to a service with secrets
//! either finds every secret in the cache (injected at once, no callout) or
//! pauses and joins a *job* for its (agent, service): concurrent requests
//! for the same agent and service share one job, so N cold requests cost one
//! login and one read per secret (single-flight). Jobs run on the worker's
//! root context (its tick dispatches, its callout responses advance them),
//! never on a stream that may go away: a client that disconnects only
//! leaves its job's waiter list. When a job ends, every waiting stream is
//! resumed with its headers, or answered 503 `secrets_unavailable`.
//!
//! A job's steps: log in with the agent's own JWT (`auth/<mount>/login`)
//! unless a Vault token for the agent is cached, then read each secret that
//! is not cached. Failures: no answer, 429 or 5xx are retried
//! (`vault.retries`, exponential backoff); a 403 on a read gets one fresh
//! login (the token may have expired); anything else fails the job.
//!
//! # Safety
//!
//! Everything cached is keyed by the agent id (the verified `sub`), so a
//! secret fetched with agent A's token can only be injected for agent A.
//! Values are held in [`Secret`], whose `Debug` prints nothing; error texts
//! carry statuses and classes, never response bodies.
//!
//! # Files
//!
//! - `plan.rs`: [`Secret`], [`Need`] and [`plan`] (paths filled from the
//!   agent's identity), the cached shapes;
//! - `broker.rs`: [`Broker`] and its jobs: request, tick, answer, finish;
//! - `login.rs`: the JWT login and the Vault token's lease;
//! - `kv.rs`: the read callout, keeping what it returns, KV v2 fields;
//! - `database.rs`: dynamic database credentials;
//! - `peers.rs`: cross-worker claims and values shared between workers;
//! - `keys.rs`: shared-data keys and [`principal`].

mod broker;
mod database;
mod keys;
mod kv;
mod login;
mod peers;
mod plan;

pub use broker::{Broker, BrokerStats, Completion, Lookup, Waiter};
pub use keys::{principal, CLAIMS_KEY};
pub use plan::{plan, Need, Secret};

#[cfg(test)]
mod tests;

#[cfg(test)]
mod answer_tests;

#[cfg(test)]
mod peer_tests;
