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

use crate::config::LimitsConfig;
use crate::host::Host;
use serde_json::Value;
use std::cell::RefCell;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};

/// Most limits one decision may carry.
pub const MAX_LIMITS: usize = 16;
/// Largest in-flight cap (leases per key).
pub const MAX_IN_FLIGHT: u64 = 64;
/// Slots a key may probe.
pub const PROBES: u64 = 4;
/// Compare-and-swap rounds before a request is refused as contended.
const ATTEMPTS: usize = 16;
/// What a tool the limit does not name counts as.
pub const OTHER_TOOL: &str = "~other";

/// What a limit counts by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dim {
    /// One bucket for everyone.
    Global,
    /// The verified agent id.
    Agent,
    /// The agent's team (from the token).
    Team,
    /// The agent's type (from the token).
    AgentType,
    /// The registry service the request goes to.
    Service,
    /// The MCP tool called, when the limit names it in `tools`; otherwise
    /// every other tool shares one bucket ([`OTHER_TOOL`]).
    Tool,
}

impl Dim {
    fn parse(s: &str) -> Option<Dim> {
        Some(match s {
            "global" => Dim::Global,
            "agent" => Dim::Agent,
            "team" => Dim::Team,
            "agent_type" => Dim::AgentType,
            "service" => Dim::Service,
            "tool" => Dim::Tool,
            _ => return None,
        })
    }

    /// The dimension's name in a limit's `by`.
    pub fn name(self) -> &'static str {
        match self {
            Dim::Global => "global",
            Dim::Agent => "agent",
            Dim::Team => "team",
            Dim::AgentType => "agent_type",
            Dim::Service => "service",
            Dim::Tool => "tool",
        }
    }
}

/// One limit the policy applies to a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limit {
    /// The policy's name for it (a metric label, a header token).
    pub name: String,
    /// What it counts by.
    pub by: Vec<Dim>,
    /// Tools counted by name (with [`Dim::Tool`]).
    pub tools: Vec<String>,
    /// Its kind and size.
    pub kind: Kind,
}

/// A limit's kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A token bucket: one token every `interval_ns`, at most `burst`
    /// held, `cost` taken per request.
    Rate {
        /// Nanoseconds per token.
        interval_ns: u64,
        /// Bucket size.
        burst: u64,
        /// Tokens per request.
        cost: u64,
    },
    /// At most `max` requests of a key running at once.
    InFlight {
        /// The cap.
        max: u64,
    },
}

/// Reads the `limits` rule's value: a set (array) of objects
/// `{"name", "by", "rate", "period_s", "burst", "cost", "tools"}` or
/// `{"name", "by", "in_flight", "tools"}`. Anything malformed is an error
/// (the decision then fails closed).
pub fn parse(v: &Value) -> Result<Vec<Limit>, String> {
    let items = match v {
        Value::Null => return Ok(Vec::new()),
        Value::Array(items) => items,
        other => return Err(format!("`limits` is {}, not a set", kind_of(other))),
    };
    if items.len() > MAX_LIMITS {
        return Err(format!(
            "`limits` has {} entries (at most {MAX_LIMITS})",
            items.len()
        ));
    }
    items.iter().map(parse_one).collect()
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn parse_one(v: &Value) -> Result<Limit, String> {
    let o = v
        .as_object()
        .ok_or_else(|| format!("a limit is {}, not an object", kind_of(v)))?;
    let name = o
        .get("name")
        .and_then(Value::as_str)
        .filter(|n| {
            !n.is_empty()
                && n.len() <= 64
                && n.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._:-".contains(&b))
        })
        .ok_or("a limit needs a `name` of 1-64 characters [A-Za-z0-9._:-]")?
        .to_string();
    let by = match o.get("by") {
        None => vec![Dim::Agent],
        Some(Value::Array(dims)) => dims
            .iter()
            .map(|d| {
                d.as_str().and_then(Dim::parse).ok_or_else(|| {
                    format!("limit {name}: `by` names global, agent, team, agent_type, service or tool, not {d}")
                })
            })
            .collect::<Result<Vec<_>, _>>()?,
        Some(other) => {
            return Err(format!(
                "limit {name}: `by` is {}, not an array",
                kind_of(other)
            ))
        }
    };
    let tools = match o.get("tools") {
        None => Vec::new(),
        Some(Value::Array(t)) => t
            .iter()
            .map(|t| t.as_str().map(str::to_string))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| format!("limit {name}: `tools` must be strings"))?,
        Some(_) => return Err(format!("limit {name}: `tools` must be an array")),
    };
    let int = |k: &str| -> Result<Option<u64>, String> {
        match o.get(k) {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .map(Some)
                .ok_or_else(|| format!("limit {name}: `{k}` must be a non-negative integer")),
        }
    };
    let kind = if let Some(max) = int("in_flight")? {
        if o.contains_key("rate") {
            return Err(format!(
                "limit {name}: `rate` and `in_flight` are separate limits"
            ));
        }
        if !(1..=MAX_IN_FLIGHT).contains(&max) {
            return Err(format!(
                "limit {name}: `in_flight` must be 1-{MAX_IN_FLIGHT}"
            ));
        }
        Kind::InFlight { max }
    } else {
        let rate = o
            .get("rate")
            .and_then(Value::as_f64)
            .filter(|r| r.is_finite() && *r > 0.0)
            .ok_or_else(|| format!("limit {name}: needs a positive `rate` or an `in_flight`"))?;
        let period = match o.get("period_s") {
            None => 1.0,
            Some(p) => p
                .as_f64()
                .filter(|p| p.is_finite() && *p > 0.0 && *p <= 86_400.0 * 366.0)
                .ok_or_else(|| format!("limit {name}: `period_s` must be positive"))?,
        };
        let interval = (period * 1e9 / rate).round();
        if !(1.0..=1e18).contains(&interval) {
            return Err(format!("limit {name}: rate out of range"));
        }
        let burst = int("burst")?.unwrap_or_else(|| rate.ceil().max(1.0) as u64);
        if burst == 0 || burst > 1_000_000_000 {
            return Err(format!("limit {name}: `burst` must be 1-1e9"));
        }
        let cost = int("cost")?.unwrap_or(1);
        if cost > burst {
            return Err(format!(
                "limit {name}: `cost` {cost} exceeds `burst` {burst}: nothing could pass"
            ));
        }
        Kind::Rate {
            interval_ns: interval as u64,
            burst,
            cost,
        }
    };
    Ok(Limit {
        name,
        by,
        tools,
        kind,
    })
}

/// The request facts a key can hold: all from verified identity, the
/// registry, or (tools) names the limit itself lists.
#[derive(Debug, Clone, Copy, Default)]
pub struct Facts<'a> {
    pub agent: &'a str,
    pub team: Option<&'a str>,
    pub agent_type: Option<&'a str>,
    pub service: Option<&'a str>,
    pub tool: Option<&'a str>,
}

impl Limit {
    /// One line naming the limit's shape (`name|by,..|burst=N` or
    /// `name|by,..|in_flight=N`): the differential test compares these.
    pub fn summary(&self) -> String {
        let by: Vec<&str> = self.by.iter().map(|d| d.name()).collect();
        let size = match self.kind {
            Kind::Rate { burst, .. } => format!("burst={burst}"),
            Kind::InFlight { max } => format!("in_flight={max}"),
        };
        format!("{}|{}|{size}", self.name, by.join(","))
    }

    /// The key this request counts under: the limit's name, each
    /// dimension's value and the limit's shape, length-prefixed. With the
    /// shape in it, two limits of one name but different sizes are two
    /// buckets (each holds), and equal keys are the same bucket.
    pub fn key(&self, f: &Facts<'_>) -> Vec<u8> {
        let mut k = Vec::with_capacity(64);
        let mut part = |s: &str| {
            k.extend_from_slice(&(s.len() as u32).to_le_bytes());
            k.extend_from_slice(s.as_bytes());
        };
        part(&self.name);
        for d in &self.by {
            part(d.name());
            part(match d {
                Dim::Global => "",
                Dim::Agent => f.agent,
                Dim::Team => f.team.unwrap_or(""),
                Dim::AgentType => f.agent_type.unwrap_or(""),
                Dim::Service => f.service.unwrap_or(""),
                Dim::Tool => match f.tool {
                    Some(t) if self.tools.iter().any(|k| k == t) => t,
                    Some(_) => OTHER_TOOL,
                    None => "",
                },
            });
        }
        part(&match self.kind {
            Kind::Rate {
                interval_ns,
                burst,
                cost,
            } => format!("rate:{interval_ns}:{burst}:{cost}"),
            Kind::InFlight { max } => format!("in_flight:{max}"),
        });
        k
    }
}

/// A key's 64-bit fingerprint, the same in every VM of one build (SipHash
/// with fixed keys). Never 0: 0 marks a free slot.
pub fn fingerprint(key: &[u8]) -> u64 {
    #[allow(deprecated)]
    let mut h = std::hash::SipHasher::new_with_keys(0x6167_656e_7470_6c61, 0x6e65_2e6c_696d_6974);
    key.hash(&mut h);
    h.finish().max(1)
}

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
    live: RefCell<HashMap<u64, (Leases, u64)>>,
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
            live: RefCell::new(HashMap::new()),
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
        &self,
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
            if let Ok(mut live) = self.live.try_borrow_mut() {
                let renew_at = now.saturating_add(self.lease_ns / 2);
                live.insert(owner, (held.leases.clone(), renew_at));
            }
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
    pub fn renew<H: Host>(&self, host: &mut H) {
        let now = host.now_ns();
        let due: Vec<(u64, Leases)> = match self.live.try_borrow_mut() {
            Ok(mut live) => live
                .iter_mut()
                .filter(|(_, (_, at))| *at <= now)
                .map(|(owner, (leases, at))| {
                    *at = now.saturating_add(self.lease_ns / 2);
                    (*owner, leases.clone())
                })
                .collect(),
            Err(_) => return,
        };
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
    pub fn release<H: Host>(&self, host: &mut H, held: &Held) {
        if let Ok(mut live) = self.live.try_borrow_mut() {
            live.remove(&held.owner);
        }
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

#[cfg(test)]
#[path = "limits_tests.rs"]
mod tests;
