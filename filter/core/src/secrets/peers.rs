//! Sharing fetches between workers. Each worker has its own broker, but
//! all share one shared-data store: a job first claims its (agent,
//! service) in the claims map ([`super::CLAIMS_KEY`]), so one worker
//! fetches while the others watch for the values it publishes, take the
//! fetch over when its claim lapses, or fail at once when it failed.

use super::broker::{inject, Broker, Step};
use super::keys::{claim_key, claims, read_shared, value_key, CLAIMS_KEY};
use super::plan::{string_fields, Fields, Lease, SEC};
use crate::host::Host;
use serde_json::Value;
use std::collections::HashMap;

/// Another worker's claim, as a waiting job sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PeerClaim {
    /// Still fetching.
    Held,
    /// Ended without a result.
    Failed,
    /// Released (or lapsed) without a failure marker.
    Gone,
}

impl Broker {
    /// A value another worker fetched, copied into this worker's cache.
    pub(super) fn load_shared<H: Host>(
        &mut self,
        host: &H,
        agent: &str,
        path: &str,
        now: u64,
    ) -> Option<Fields> {
        let (until, v) = read_shared(host, &value_key(&self.cfg, agent, path), now)?;
        let fields = string_fields(v.get("fields")?.as_object()?);
        self.values.insert(
            (agent.to_string(), path.to_string()),
            Lease {
                value: fields.clone(),
                until_ns: until,
            },
        );
        Some(fields)
    }

    /// Claims the fetch for (agent, service) across workers. `Err(until)`:
    /// another worker holds it until then. All claims live in one shared
    /// map updated with compare-and-swap, so two workers cannot both win.
    pub(super) fn claim<H: Host>(
        &self,
        host: &mut H,
        agent: &str,
        service: &str,
        now: u64,
    ) -> Result<(), u64> {
        let lease = self
            .cfg
            .timeout_ms
            .saturating_mul(u64::from(self.cfg.retries) + 2)
            .saturating_mul(2_000_000);
        let until = now.saturating_add(lease);
        let key = claim_key(&self.cfg, agent, service);
        for _ in 0..8 {
            let (mut map, cas) = claims(host);
            if let Some(c) = map.get(&key) {
                let owner = c.get("owner").and_then(Value::as_u64).unwrap_or(0);
                let held = c.get("until").and_then(Value::as_u64).unwrap_or(0);
                let failed = c.get("failed").and_then(Value::as_bool) == Some(true);
                if owner != self.id && now < held && !failed {
                    return Err(held);
                }
            }
            map.retain(|_, c| c.get("until").and_then(Value::as_u64).unwrap_or(0) > now);
            map.insert(
                key.clone(),
                serde_json::json!({"owner": self.id, "until": until}),
            );
            let bytes = Value::Object(map).to_string();
            if host.shared_set(CLAIMS_KEY, bytes.as_bytes(), cas) {
                if cas.is_some() {
                    return Ok(());
                }
                // The map did not exist (the root creates it at configure;
                // a host without shared data never has it): read back.
                return match host.shared_get(CLAIMS_KEY) {
                    Some((b, _)) if b == bytes.as_bytes() => Ok(()),
                    Some(_) => Err(until),
                    None => Ok(()),
                };
            }
            if host.shared_get(CLAIMS_KEY).is_none() {
                // No shared data at all: every worker fetches for itself.
                return Ok(());
            }
        }
        Err(now.saturating_add(5_000_000))
    }

    /// Gives the claim up. After a failure the entry stays briefly as a
    /// failure marker, so that jobs on other workers waiting for this fetch
    /// fail at once instead of waiting out the claim's lease; a new request
    /// may claim over a marker at any time.
    pub(super) fn release<H: Host>(&self, host: &mut H, agent: &str, service: &str, failed: bool) {
        let key = claim_key(&self.cfg, agent, service);
        let now = host.now_ns();
        for _ in 0..8 {
            let (mut map, cas) = claims(host);
            let mine = map
                .get(&key)
                .and_then(|c| c.get("owner"))
                .and_then(Value::as_u64)
                == Some(self.id);
            if !mine {
                return;
            }
            if failed {
                map.insert(
                    key.clone(),
                    serde_json::json!({"owner": self.id, "until": now.saturating_add(SEC), "failed": true}),
                );
            } else {
                map.remove(&key);
            }
            if host.shared_set(CLAIMS_KEY, Value::Object(map).to_string().as_bytes(), cas) {
                return;
            }
        }
    }

    /// What became of another worker's claim on a fetch this worker waits for.
    fn peer_claim<H: Host>(&self, host: &H, agent: &str, service: &str, now: u64) -> PeerClaim {
        let (map, _) = claims(host);
        match map.get(&claim_key(&self.cfg, agent, service)) {
            Some(c) if c.get("failed").and_then(Value::as_bool) == Some(true) => PeerClaim::Failed,
            Some(c) => {
                let until = c.get("until").and_then(Value::as_u64).unwrap_or(0);
                if now < until {
                    PeerClaim::Held
                } else {
                    PeerClaim::Gone
                }
            }
            None => PeerClaim::Gone,
        }
    }

    /// Jobs waiting for another worker: done when its results appear in
    /// shared data; taken over when its claim lapses.
    pub(super) fn watch_peers<H: Host>(&mut self, host: &mut H, now: u64) {
        let mut i = 0;
        while i < self.jobs.len() {
            let Some(job) = self.jobs.get(i) else { break };
            let Step::AwaitPeer(until) = job.step else {
                i += 1;
                continue;
            };
            let (agent, service, needs) =
                (job.agent.clone(), job.service.clone(), job.needs.clone());
            let mut fetched = HashMap::new();
            for n in &needs {
                let f = self
                    .cached(&agent, &n.path, now)
                    .cloned()
                    .or_else(|| self.load_shared(host, &agent, &n.path, now));
                match f {
                    Some(f) => {
                        fetched.insert(n.path.clone(), f);
                    }
                    None => break,
                }
            }
            if fetched.len() == needs.len() {
                self.stats.hits += 1;
                let result = inject(&needs, &fetched);
                self.finish(host, i, result);
                continue; // swap_remove moved another job to i
            }
            let peer = self.peer_claim(host, &agent, &service, now);
            if peer == PeerClaim::Failed {
                // The worker that fetched for us failed: so do we, now.
                self.finish(host, i, Err("vault fetch failed on another worker".into()));
                continue; // swap_remove moved another job to i
            }
            if now >= until || peer == PeerClaim::Gone {
                let claimed = self.claim(host, &agent, &service, now);
                let token = self.token(host, &agent, now);
                if let Some(job) = self.jobs.get_mut(i) {
                    match claimed {
                        Ok(()) => {
                            job.claimed = true;
                            job.fetched = fetched;
                            if job.token.is_none() {
                                job.token = token;
                            }
                            job.step = Step::Login;
                            job.due_ns = now;
                        }
                        Err(later) => job.step = Step::AwaitPeer(later),
                    }
                }
                let next = self.next_step_of(i);
                if let (Some(job), Some(step)) = (self.jobs.get_mut(i), next) {
                    if job.claimed {
                        job.step = step;
                    }
                }
            }
            i += 1;
        }
    }
}
