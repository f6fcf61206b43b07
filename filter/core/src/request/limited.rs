//! The policy's limits, counted per request after an allow (see
//! [`crate::limits`]): the filter's side, with its metrics.

use super::{Configured, Decision, Worker};
use crate::host::Host;
use crate::limits::{Events, Facts, Held, Limit, Refusal};
use crate::metrics::M;

/// Most limit names with their own refusal counter; the rest share
/// `agentplane.limits.refused.other`.
const MAX_NAMED: usize = 64;

impl Configured {
    /// Admits the request against its limits, or refuses it having counted
    /// nothing. The leases it takes are released when the stream ends.
    pub(super) fn meter<H: Host>(
        &self,
        w: &mut Worker,
        host: &mut H,
        limits: &[Limit],
        facts: &Facts<'_>,
    ) -> Result<Held, Refusal> {
        let owner = w.lease_owner | u64::from(host.stream_id());
        let mut ev = Events::default();
        let result = w.limits.admit(host, limits, facts, owner, &mut ev);
        let m = &w.metrics;
        m.add(host, M::LimitCollisions, ev.collisions);
        m.add(host, M::LimitEvictions, ev.evictions);
        m.add(host, M::LimitRetries, ev.retries);
        if let Err(r) = &result {
            self.count_refusal(w, host, &r.limit);
        }
        result
    }

    /// Gives back the in-flight leases a decision holds (once).
    pub(super) fn release_held<H: Host>(
        &self,
        w: &mut Worker,
        host: &mut H,
        decision: &mut Decision,
    ) {
        let held = std::mem::take(&mut decision.held);
        if !held.is_empty() {
            w.limits.release(host, &held);
        }
    }

    /// `agentplane.limits.refused.<name>`: names come from the policy, so
    /// the set is bounded by it, and capped besides.
    fn count_refusal<H: Host>(&self, w: &mut Worker, host: &mut H, name: &str) {
        let names = &mut w.limit_metrics;
        let id = match names.get(name) {
            Some(id) => *id,
            None => {
                let label = if names.len() < MAX_NAMED {
                    name
                } else {
                    "other"
                };
                let id = host.define_metric(&format!("agentplane.limits.refused.{label}"), false);
                if names.len() < MAX_NAMED {
                    names.insert(name.to_string(), id);
                }
                id
            }
        };
        if let Some(id) = id {
            host.add_metric(id, 1);
        }
    }
}
