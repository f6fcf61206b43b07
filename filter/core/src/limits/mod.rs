//! Rate limits and in-flight caps the policy decides, enforced across every
//! worker of a proxy through proxy-wasm shared data.
//!
//! The entrypoint package's `limits` rule names the limits that apply to a
//! request ([`parse`]); they are decided with the rest of the decision and
//! cached with it. Counting runs per request, after an allow:
//!
//! - a **rate** limit is a token bucket kept as GCRA: one 16-byte slot
//!   holds the key's fingerprint and its theoretical arrival time (TAT),
//!   so a bucket is one compare-and-swap; a slot whose TAT has passed
//!   holds a full bucket, exactly what an absent key has, so it can be
//!   taken over without giving anyone quota;
//! - an **in-flight** cap holds one lease per running request (owner,
//!   expiry), renewed by the worker's tick while the stream lives and
//!   released when it ends however it ends; a lease that outlives its VM
//!   expires on its own.
//!
//! Shared data has no delete, so both live in fixed tables of hashed slots
//! (`limits.slots` each, created when the filter is configured). A key
//! probes [`PROBES`] slots; one held by another live key is a collision,
//! and a key that finds none free is refused (never counted elsewhere).
//!
//! A request's limits commit or fail as one. A key is counted once per
//! request (its shape is part of the key, so one name with two shapes is
//! two buckets, and the same limit listed twice is one); within a round no
//! two of its keys plan the same slot, since two writes with one
//! compare-and-swap value would make the second fail on every retry; and
//! writes go in slot order, so two workers contending for the same slots
//! cannot each undo the other's round forever.
//!
//! `rule.rs` reads the policy's limits and keys a request's facts;
//! `table.rs` counts them in shared data.

mod rule;
mod table;

pub use rule::{
    fingerprint, parse, Dim, Facts, Kind, Limit, MAX_IN_FLIGHT, MAX_LIMITS, OTHER_TOOL,
};
pub use table::{Events, Held, Refusal, Table, PROBES};

#[cfg(test)]
mod tests;
