//! The shared-data tables that count limits across workers: GCRA rate
//! slots and in-flight lease slots, probed by a key's fingerprint, written
//! only by compare-and-swap, plus this worker's live leases renewed on its
//! tick. What a limit is and how its key is made lives in `rule.rs`.

use super::rule::{fingerprint, Facts, Kind, Limit};
use crate::config::LimitsConfig;
use crate::host::Host;
use std::collections::HashMap;

/// Slots a key may probe.
pub const PROBES: u64 = 4;
/// Compare-and-swap rounds before a request is refused as contended.
const ATTEMPTS: usize = 16;

/// Why a request was not admitted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The limit that refused.
    pub limit: String,
    /// Seconds until it would admit (`Retry-After`, and `t` in `RateLimit`).
    pub retry_after_s: u64,
    /// `RateLimit-Policy` (draft-ietf-httpapi-ratelimit-headers-10).
    pub policy: String,
    /// `RateLimit`: what is left (0) and when it resets.
    pub state: String,
    /// The table had no free slot for the key.
    pub table_full: bool,
}

/// Counters of table behaviour, for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Events {
    /// Probed slots held by another live key.
    pub collisions: u64,
    /// Slots taken over from a key whose bucket had refilled (or whose
    /// leases had all expired): it loses nothing.
    pub evictions: u64,
    /// Compare-and-swap writes that lost a race and were retried.
    pub retries: u64,
}

/// In-flight lease slots, each with its key's fingerprint.
type Leases = Vec<(String, u64)>;

/// In-flight leases a request holds, released when its stream ends.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Held {
    leases: Leases,
    owner: u64,
}

impl Held {
    /// No lease held.
    pub fn is_empty(&self) -> bool {
        self.leases.is_empty()
    }
}

/// The two slot tables, named by the config's prefix, and this worker's
/// live leases (renewed on its tick).
#[derive(Debug)]
pub struct Table {
    prefix: String,
    slots: u64,
    lease_ns: u64,
    /// Leases of this worker's running streams, by owner, with when each
    /// is next renewed: a long stream must not stop counting.
    live: HashMap<u64, (Leases, u64)>,
}

/// One write a round plans: a rate slot (by index), its CAS, the key, the
/// new TAT and what it charges.
struct Step {
    idx: u64,
    slot: String,
    cas: u32,
    fp: u64,
    new_tat: u64,
    charged: u64,
    evicts: bool,
}

/// A rate slot a key can use: its index, key, CAS, TAT (0 when free) and
/// whether taking it evicts another key.
struct Found {
    idx: u64,
    slot: String,
    cas: u32,
    tat: u64,
    evicts: bool,
}

const RATE: &str = "r";
const FLIGHT: &str = "c";

impl Table {
    pub fn new(cfg: &LimitsConfig) -> Table {
        Table {
            prefix: cfg.table.clone(),
            slots: cfg.slots.max(1),
            lease_ns: cfg.lease_ms.saturating_mul(1_000_000),
            live: HashMap::new(),
        }
    }

    fn slot_key(&self, table: &str, i: u64) -> String {
        format!("{}.{table}.{}", self.prefix, i % self.slots)
    }

    /// The slot index a key's `p`th probe reads.
    fn probe(&self, fp: u64, p: u64) -> u64 {
        fp.wrapping_add(p) % self.slots
    }

    /// Creates every slot not yet present (configure time): afterwards
    /// every write is a compare-and-swap, since shared data accepts any
    /// CAS for a key that does not exist yet.
    pub fn create<H: Host>(&self, host: &mut H) {
        for table in [RATE, FLIGHT] {
            for i in 0..self.slots {
                let key = self.slot_key(table, i);
                if host.shared_get(&key).is_none() {
                    host.shared_set(&key, &[], None);
                }
            }
        }
    }

    /// Admits a request against every limit, or refuses it having counted
    /// nothing: in-flight leases first (released again if anything after
    /// refuses), then every rate bucket in one all-or-none round.
    pub fn admit<H: Host>(
        &mut self,
        host: &mut H,
        limits: &[Limit],
        facts: &Facts<'_>,
        owner: u64,
        ev: &mut Events,
    ) -> Result<Held, Refusal> {
        let now = host.now_ns();
        let mut held = Held {
            leases: Vec::new(),
            owner,
        };
        // One lease per key (the same limit twice would take two and refuse
        // itself at a cap of 1), taken in key order.
        let mut flights: Vec<(&Limit, u64, u64)> = Vec::new();
        for l in limits {
            if let Kind::InFlight { max } = l.kind {
                let fp = fingerprint(&l.key(facts));
                if !flights.iter().any(|f| f.1 == fp) {
                    flights.push((l, fp, max));
                }
            }
        }
        flights.sort_by_key(|f| f.1);
        for (l, fp, max) in flights {
            match self.lease(host, fp, max, owner, now, ev) {
                Ok(slot) => held.leases.push((slot, fp)),
                Err(table_full) => {
                    self.release(host, &held);
                    return Err(Refusal {
                        limit: l.name.clone(),
                        retry_after_s: 1,
                        policy: format!("\"{}\";q={max}", l.name),
                        state: format!("\"{}\";r=0;t=1", l.name),
                        table_full,
                    });
                }
            }
        }
        // Each key once: equal keys are one bucket (the shape is in it).
        let mut rates: Vec<(&Limit, u64, u64, u64, u64)> = Vec::new();
        for l in limits {
            if let Kind::Rate {
                interval_ns,
                burst,
                cost,
            } = l.kind
            {
                let fp = fingerprint(&l.key(facts));
                if cost > 0 && !rates.iter().any(|r| r.1 == fp) {
                    rates.push((l, fp, interval_ns, burst, cost));
                }
            }
        }
        if !rates.is_empty() {
            if let Err(r) = self.take(host, &rates, now, ev) {
                self.release(host, &held);
                return Err(r);
            }
        }
        if !held.is_empty() {
            let renew_at = now.saturating_add(self.lease_ns / 2);
            self.live.insert(owner, (held.leases.clone(), renew_at));
        }
        Ok(held)
    }

    /// One all-or-none round over the rate buckets, retried on a lost
    /// race; whatever a failed round wrote is refunded first. No two keys
    /// of the round plan one slot, and the writes go in slot order.
    fn take<H: Host>(
        &self,
        host: &mut H,
        rates: &[(&Limit, u64, u64, u64, u64)],
        now: u64,
        ev: &mut Events,
    ) -> Result<(), Refusal> {
        let contended = |l: &Limit| Refusal {
            limit: l.name.clone(),
            retry_after_s: 1,
            policy: format!("\"{}\"", l.name),
            state: format!("\"{}\";r=0;t=1", l.name),
            table_full: false,
        };
        'round: for _ in 0..ATTEMPTS {
            let mut plan: Vec<Step> = Vec::with_capacity(rates.len());
            for &(l, fp, interval, burst, cost) in rates {
                let Some(found) = self.find_rate(host, fp, now, &plan, ev) else {
                    return Err(Refusal {
                        table_full: true,
                        ..contended(l)
                    });
                };
                // An empty bucket's TAT. One beyond it was written before
                // the clock stepped back: it is held at empty, so the
                // bucket refills at its rate from now rather than after
                // the time the clock lost (and never gains anything).
                let until = now.saturating_add(burst.saturating_mul(interval));
                let start = found.tat.max(now).min(until);
                let new_tat = start.saturating_add(cost.saturating_mul(interval));
                if new_tat > until {
                    if found.tat > until {
                        // Stored, or every later request would clamp
                        // from its own `now` and never see a refill.
                        host.shared_set(&found.slot, &rate_value(fp, until), Some(found.cas));
                    }
                    let wait = (new_tat - until).div_ceil(1_000_000_000).max(1);
                    let window = burst
                        .saturating_mul(interval)
                        .div_ceil(1_000_000_000)
                        .max(1);
                    let reset = (start - now).div_ceil(1_000_000_000);
                    let left = until.saturating_sub(start) / interval.max(1);
                    return Err(Refusal {
                        limit: l.name.clone(),
                        retry_after_s: wait,
                        policy: format!("\"{}\";q={burst};w={window}", l.name),
                        state: format!("\"{}\";r={left};t={}", l.name, reset.max(wait)),
                        table_full: false,
                    });
                }
                plan.push(Step {
                    idx: found.idx,
                    slot: found.slot,
                    cas: found.cas,
                    fp,
                    new_tat,
                    charged: cost.saturating_mul(interval),
                    evicts: found.evicts,
                });
            }
            // Slot order: of two rounds wanting the same slots, the one
            // that wins the first contested slot wins them all.
            plan.sort_by_key(|s| s.idx);
            for (i, step) in plan.iter().enumerate() {
                if !host.shared_set(
                    &step.slot,
                    &rate_value(step.fp, step.new_tat),
                    Some(step.cas),
                ) {
                    ev.retries += 1;
                    for done in plan.iter().take(i) {
                        self.refund(host, &done.slot, done.fp, done.charged);
                    }
                    continue 'round;
                }
            }
            ev.evictions += plan.iter().filter(|s| s.evicts).count() as u64;
            return Ok(());
        }
        match rates.first() {
            Some(r) => Err(contended(r.0)),
            None => Ok(()),
        }
    }

    /// The slot for `fp`: its own, else the first free one among its
    /// probes (never written, or a refilled bucket) that no other key of
    /// this round has planned.
    fn find_rate<H: Host>(
        &self,
        host: &mut H,
        fp: u64,
        now: u64,
        plan: &[Step],
        ev: &mut Events,
    ) -> Option<Found> {
        let mut free = None;
        for p in 0..PROBES {
            let idx = self.probe(fp, p);
            if plan.iter().any(|s| s.idx == idx) {
                // Another key of this request writes it this round.
                ev.collisions += 1;
                continue;
            }
            let slot = self.slot_key(RATE, idx);
            let (value, cas) = get_slot(host, &slot);
            let found = |tat, evicts| Found {
                idx,
                slot: slot.clone(),
                cas,
                tat,
                evicts,
            };
            match read_rate(&value) {
                Some((f, tat)) if f == fp => return Some(found(tat, false)),
                Some((_, tat)) if tat > now => ev.collisions += 1,
                Some(_) => {
                    free.get_or_insert_with(|| found(0, true));
                }
                None => {
                    free.get_or_insert_with(|| found(0, false));
                }
            }
        }
        free
    }

    /// Gives `amount` of TAT back to `fp`'s bucket (a round that failed
    /// half-way). Best effort, retried on a lost race.
    fn refund<H: Host>(&self, host: &mut H, slot: &str, fp: u64, amount: u64) {
        for _ in 0..ATTEMPTS {
            let Some((value, cas)) = host.shared_get(slot) else {
                return;
            };
            let Some((f, tat)) = read_rate(&value) else {
                return;
            };
            if f != fp {
                return;
            }
            if host.shared_set(slot, &rate_value(fp, tat.saturating_sub(amount)), Some(cas)) {
                return;
            }
        }
    }

    /// Takes one lease on `fp`'s in-flight slot. `Err(true)` when no slot
    /// is free for it, `Err(false)` when the cap is reached.
    fn lease<H: Host>(
        &self,
        host: &mut H,
        fp: u64,
        max: u64,
        owner: u64,
        now: u64,
        ev: &mut Events,
    ) -> Result<String, bool> {
        for _ in 0..ATTEMPTS {
            let mut found = None;
            for p in 0..PROBES {
                let slot = self.slot_key(FLIGHT, self.probe(fp, p));
                let (value, cas) = get_slot(host, &slot);
                let (f, leases) = read_flight(&value);
                let live: Vec<(u64, u64)> = leases.into_iter().filter(|l| l.1 > now).collect();
                if f == fp {
                    found = Some((slot, cas, live, false));
                    break;
                }
                if live.is_empty() {
                    if found.is_none() {
                        found = Some((slot, cas, Vec::new(), f != 0));
                    }
                } else {
                    ev.collisions += 1;
                }
            }
            let Some((slot, cas, mut live, evicts)) = found else {
                return Err(true);
            };
            if live.len() as u64 >= max {
                return Err(false);
            }
            live.push((owner, now.saturating_add(self.lease_ns)));
            if host.shared_set(&slot, &flight_value(fp, &live), Some(cas)) {
                if evicts {
                    ev.evictions += 1;
                }
                return Ok(slot);
            }
            ev.retries += 1;
        }
        Err(false)
    }

    /// Extends, on the worker's tick, every lease of a running stream that
    /// is half-way to expiring: a stream that outlives `limits.lease_ms`
    /// still counts against its cap. A lease already gone (expired while
    /// the worker stalled, and taken over) is not brought back.
    pub fn renew<H: Host>(&mut self, host: &mut H) {
        let now = host.now_ns();
        let next = now.saturating_add(self.lease_ns / 2);
        let due: Vec<(u64, Leases)> = self
            .live
            .iter_mut()
            .filter(|(_, (_, at))| *at <= now)
            .map(|(owner, (leases, at))| {
                *at = next;
                (*owner, leases.clone())
            })
            .collect();
        let until = now.saturating_add(self.lease_ns);
        for (owner, leases) in due {
            for (slot, fp) in &leases {
                self.update_lease(host, slot, *fp, owner, Some(until));
            }
        }
    }

    /// Extends `owner`'s lease on `slot` (while still `fp`'s) to `until`,
    /// or removes it (`None`).
    fn update_lease<H: Host>(
        &self,
        host: &mut H,
        slot: &str,
        fp: u64,
        owner: u64,
        until: Option<u64>,
    ) {
        for _ in 0..ATTEMPTS {
            let Some((value, cas)) = host.shared_get(slot) else {
                return;
            };
            let (f, mut leases) = read_flight(&value);
            if f != fp {
                return; // taken over after our lease expired
            }
            let Some(i) = leases.iter().position(|l| l.0 == owner) else {
                return;
            };
            match (until, leases.get_mut(i)) {
                (Some(until), Some(lease)) => lease.1 = lease.1.max(until),
                _ => {
                    leases.remove(i);
                }
            }
            if host.shared_set(slot, &flight_value(fp, &leases), Some(cas)) {
                return;
            }
        }
    }

    /// Releases every lease `held` has (stream end; also after a refusal).
    pub fn release<H: Host>(&mut self, host: &mut H, held: &Held) {
        self.live.remove(&held.owner);
        for (slot, fp) in &held.leases {
            self.update_lease(host, slot, *fp, held.owner, None);
        }
    }
}

/// A slot's value and CAS. A slot [`Table::create`] did not make (a table
/// grown by a config change) is made here; only then can two workers
/// racing to make the same slot lose one count.
fn get_slot<H: Host>(host: &mut H, slot: &str) -> (Vec<u8>, u32) {
    if let Some(v) = host.shared_get(slot) {
        return v;
    }
    host.shared_set(slot, &[], None);
    host.shared_get(slot).unwrap_or_default()
}

fn rate_value(fp: u64, tat: u64) -> [u8; 16] {
    let mut v = [0u8; 16];
    let (a, b) = v.split_at_mut(8);
    a.copy_from_slice(&fp.to_le_bytes());
    b.copy_from_slice(&tat.to_le_bytes());
    v
}

fn read_rate(v: &[u8]) -> Option<(u64, u64)> {
    let fp = u64::from_le_bytes(v.get(..8)?.try_into().ok()?);
    let tat = u64::from_le_bytes(v.get(8..16)?.try_into().ok()?);
    (fp != 0).then_some((fp, tat))
}

fn flight_value(fp: u64, leases: &[(u64, u64)]) -> Vec<u8> {
    let mut v = Vec::with_capacity(8 + 16 * leases.len());
    v.extend_from_slice(&fp.to_le_bytes());
    for (owner, until) in leases {
        v.extend_from_slice(&owner.to_le_bytes());
        v.extend_from_slice(&until.to_le_bytes());
    }
    v
}

fn read_flight(v: &[u8]) -> (u64, Vec<(u64, u64)>) {
    let word = |c: &[u8]| c.try_into().map(u64::from_le_bytes).unwrap_or(0);
    let Some(fp) = v.get(..8).map(word) else {
        return (0, Vec::new());
    };
    let leases = v
        .get(8..)
        .unwrap_or_default()
        .chunks_exact(16)
        .map(|c| {
            let (a, b) = c.split_at(8);
            (word(a), word(b))
        })
        .collect();
    (fp, leases)
}
