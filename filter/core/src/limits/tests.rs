use super::*;
use crate::config::LimitsConfig;
use crate::host::{Host, LogLevel, MockHost};
use serde_json::json;
#[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
use wasm_bindgen_test::wasm_bindgen_test as test;

const S: u64 = 1_000_000_000;

fn table(slots: u64) -> Table {
    Table::new(&LimitsConfig {
        slots,
        ..LimitsConfig::default()
    })
}

fn limits(v: serde_json::Value) -> Vec<Limit> {
    parse(&crate::value::to_rego(&v)).unwrap()
}

fn agent(a: &str) -> Facts<'_> {
    Facts {
        agent: a,
        ..Facts::default()
    }
}

fn host_at(t: u64) -> MockHost {
    MockHost::new().at(t)
}

/// Admits `n` requests at the host's clock; how many passed.
fn admitted(t: &mut Table, h: &mut MockHost, l: &[Limit], f: &Facts<'_>, n: usize) -> usize {
    let mut ev = Events::default();
    (0..n)
        .filter(|i| t.admit(h, l, f, *i as u64, &mut ev).is_ok())
        .count()
}

#[test]
fn a_bucket_admits_its_burst_then_its_rate() {
    let mut t = table(64);
    let l = limits(json!([{"name": "per-agent", "by": ["agent"], "rate": 2, "burst": 5}]));
    let mut h = host_at(1_000 * S);
    t.create(&mut h);
    assert_eq!(
        admitted(&mut t, &mut h, &l, &agent("a"), 10),
        5,
        "the burst"
    );
    let mut ev = Events::default();
    let r = t.admit(&mut h, &l, &agent("a"), 99, &mut ev).unwrap_err();
    assert_eq!(r.limit, "per-agent");
    assert_eq!(r.retry_after_s, 1);
    assert_eq!(r.policy, "\"per-agent\";q=5;w=3");
    assert!(r.state.starts_with("\"per-agent\";r=0;t="), "{}", r.state);
    // Half a second later: one more token (2 per second).
    h.now_ns += S / 2;
    assert_eq!(admitted(&mut t, &mut h, &l, &agent("a"), 3), 1);
    // A clock that steps back gives nothing back.
    h.now_ns -= 10 * S;
    assert_eq!(admitted(&mut t, &mut h, &l, &agent("a"), 3), 0);
    // Another agent has its own bucket.
    assert_eq!(admitted(&mut t, &mut h, &l, &agent("b"), 10), 5);
}

#[test]
fn a_request_costs_what_the_limit_says() {
    let mut t = table(64);
    let l = limits(json!([{"name": "heavy", "rate": 1, "burst": 5, "cost": 2}]));
    let mut h = host_at(S);
    assert_eq!(admitted(&mut t, &mut h, &l, &agent("a"), 5), 2);
    let free = limits(json!([{"name": "free", "rate": 1, "burst": 1, "cost": 0}]));
    assert_eq!(admitted(&mut t, &mut h, &free, &agent("a"), 50), 50);
}

#[test]
fn every_bucket_has_room_or_none_is_charged() {
    let mut t = table(64);
    let l = limits(json!([
        {"name": "agent", "by": ["agent"], "rate": 1, "burst": 10},
        {"name": "team", "by": ["team"], "rate": 1, "burst": 3},
    ]));
    let mut h = host_at(S);
    let f = Facts {
        agent: "a",
        team: Some("t1"),
        ..Facts::default()
    };
    assert_eq!(admitted(&mut t, &mut h, &l, &f, 10), 3, "the team's 3");
    // The agent's bucket was charged only for the 3 that passed: 7 left.
    let agent_only = limits(json!([{"name": "agent", "by": ["agent"], "rate": 1, "burst": 10}]));
    assert_eq!(admitted(&mut t, &mut h, &agent_only, &f, 10), 7);
}

/// A host that lets another worker act between this worker's read and its
/// compare-and-swap, once per write, as a second Envoy worker would.
struct Racing<'a> {
    inner: MockHost,
    other: Option<(&'a mut Table, &'a [Limit], MockHost)>,
    other_passed: usize,
    writes: usize,
}

impl Host for Racing<'_> {
    fn property(&self, p: &[&str]) -> Option<Vec<u8>> {
        self.inner.property(p)
    }
    fn request_headers(&self) -> Option<Vec<(Vec<u8>, Vec<u8>)>> {
        None
    }
    fn set_request_header(&mut self, _: &str, _: &str) -> bool {
        false
    }
    fn remove_request_header(&mut self, _: &[u8]) -> bool {
        false
    }
    fn set_response_header(&mut self, _: &str, _: &str) {}
    fn send_reply(&mut self, _: u16, _: &[(&str, &str)], _: &[u8]) {}
    fn now_ns(&self) -> u64 {
        self.inner.now_ns
    }
    fn log(&self, _: LogLevel, _: &str) {}
    fn shared_get(&self, key: &str) -> Option<(Vec<u8>, u32)> {
        self.inner.shared_get(key)
    }
    fn shared_set(&mut self, key: &str, value: &[u8], cas: Option<u32>) -> bool {
        self.writes += 1;
        // Every third write of this worker loses a race to the other one
        // (every other write would always strike the same bucket of a
        // two-bucket round: whichever worker's round that favours would
        // win every time).
        let race = self.writes % 3 == 1;
        if let Some((t, l, mut h)) = self.other.take_if(|_| race) {
            let mut ev = Events::default();
            if t.admit(&mut h, l, &agent("a"), 7, &mut ev).is_ok() {
                self.other_passed += 1;
            }
            self.other = Some((t, l, h));
        }
        self.inner.shared_set(key, value, cas)
    }
}

#[test]
fn two_workers_racing_for_one_bucket_never_overdraw_it() {
    let mut t = table(64);
    let l = limits(json!([
        {"name": "agent", "rate": 1, "burst": 20},
        {"name": "global", "by": ["global"], "rate": 1, "burst": 1000},
    ]));
    let a = host_at(S);
    let mut b = host_at(S);
    b.shared = a.shared.clone(); // one proxy, two workers
    t.create(&mut b); // both workers configured before traffic
                      // The other worker's own table, over the same shared slots.
    let mut other = table(64);
    let mut racing = Racing {
        inner: a,
        other: Some((&mut other, &l, b)),
        other_passed: 0,
        writes: 0,
    };
    let mut ev = Events::default();
    let mut mine = 0;
    for i in 0..40 {
        if t.admit(&mut racing, &l, &agent("a"), i, &mut ev).is_ok() {
            mine += 1;
        }
    }
    assert_eq!(mine + racing.other_passed, 20, "exactly the burst, shared");
    assert!(mine > 0 && racing.other_passed > 0, "both drew");
    assert!(ev.retries > 0, "the races were seen and retried");
    // The global bucket was charged exactly once per admitted request.
    let global = limits(json!([{"name": "global", "by": ["global"], "rate": 1, "burst": 1000}]));
    let mut h = host_at(S);
    h.shared = racing.inner.shared.clone();
    assert_eq!(admitted(&mut t, &mut h, &global, &agent("x"), 1000), 980);
}

#[test]
fn an_in_flight_slot_is_released_when_the_stream_ends_or_its_lease_runs_out() {
    let mut t = table(64);
    let l = limits(json!([{"name": "inflight", "in_flight": 2}]));
    let mut h = host_at(S);
    let mut ev = Events::default();
    let one = t.admit(&mut h, &l, &agent("a"), 1, &mut ev).unwrap();
    let two = t.admit(&mut h, &l, &agent("a"), 2, &mut ev).unwrap();
    let r = t.admit(&mut h, &l, &agent("a"), 3, &mut ev).unwrap_err();
    assert_eq!(r.limit, "inflight");
    assert_eq!(r.policy, "\"inflight\";q=2");
    t.release(&mut h, &one);
    let three = t.admit(&mut h, &l, &agent("a"), 3, &mut ev).unwrap();
    assert!(t.admit(&mut h, &l, &agent("a"), 4, &mut ev).is_err());
    // Releasing twice frees nothing more.
    t.release(&mut h, &one);
    assert!(t.admit(&mut h, &l, &agent("a"), 4, &mut ev).is_err());
    // A VM gone without releasing: its leases expire.
    drop((two, three));
    h.now_ns += LimitsConfig::default().lease_ms * 1_000_000 + 1;
    assert_eq!(admitted(&mut t, &mut h, &l, &agent("a"), 5), 2);
}

#[test]
fn a_refused_rate_releases_the_in_flight_lease_it_took() {
    let mut t = table(64);
    let l = limits(json!([
        {"name": "inflight", "in_flight": 1},
        {"name": "rate", "rate": 1, "burst": 1},
    ]));
    let mut h = host_at(S);
    let mut ev = Events::default();
    let first = t.admit(&mut h, &l, &agent("a"), 1, &mut ev).unwrap();
    t.release(&mut h, &first);
    let r = t.admit(&mut h, &l, &agent("a"), 2, &mut ev).unwrap_err();
    assert_eq!(r.limit, "rate");
    // The lease the refused request took is back.
    let only_flight = limits(json!([{"name": "inflight", "in_flight": 1}]));
    assert!(t
        .admit(&mut h, &only_flight, &agent("a"), 3, &mut ev)
        .is_ok());
}

#[test]
fn an_evicted_key_gets_no_quota_it_would_not_otherwise_have() {
    // One slot for everyone: keys compete for it.
    let mut t = table(1);
    let l = limits(json!([{"name": "r", "rate": 1, "burst": 2}]));
    let mut h = host_at(10 * S);
    let mut ev = Events::default();
    assert_eq!(admitted(&mut t, &mut h, &l, &agent("a"), 3), 2);
    // While a's bucket is not full again, b finds no free slot: refused
    // (never counted in another key's bucket, never given a fresh one).
    let r = t.admit(&mut h, &l, &agent("b"), 1, &mut ev).unwrap_err();
    assert!(r.table_full);
    assert!(ev.collisions > 0);
    // Once a's bucket has refilled, b takes the slot over: a loses
    // nothing, since a full bucket is what an absent key has.
    h.now_ns += 2 * S;
    assert!(t.admit(&mut h, &l, &agent("b"), 2, &mut ev).is_ok());
    assert_eq!(ev.evictions, 1);
    let r = t.admit(&mut h, &l, &agent("a"), 3, &mut ev).unwrap_err();
    assert!(r.table_full, "a waits for b's bucket to refill");
}

#[test]
fn a_tool_the_limit_does_not_name_counts_in_one_overflow_bucket() {
    let mut t = table(256);
    let l = limits(
        json!([{"name": "per-tool", "by": ["agent", "tool"], "tools": ["lookup_ticket"], "rate": 1, "burst": 2}]),
    );
    let mut h = host_at(S);
    fn tool(name: &str) -> Facts<'_> {
        Facts {
            agent: "a",
            tool: Some(name),
            ..Facts::default()
        }
    }
    assert_eq!(admitted(&mut t, &mut h, &l, &tool("lookup_ticket"), 5), 2);
    // Minted names all share one bucket.
    let minted: usize = (0..10)
        .map(|i| {
            let name = format!("made_up_{i}");
            admitted(&mut t, &mut h, &l, &tool(&name), 1)
        })
        .sum();
    assert_eq!(minted, 2);
    assert_eq!(
        l[0].key(&tool("made_up_1")),
        l[0].key(&tool("made_up_2")),
        "one key"
    );
}

#[test]
fn malformed_limits_are_errors_not_silently_dropped() {
    for bad in [
        json!({"name": "x"}),
        json!([{"by": ["agent"], "rate": 1}]),
        json!([{"name": "has space", "rate": 1}]),
        json!([{"name": "x", "rate": 0}]),
        json!([{"name": "x", "rate": -1}]),
        json!([{"name": "x", "rate": 1, "by": ["ip"]}]),
        json!([{"name": "x", "rate": 1, "by": "agent"}]),
        json!([{"name": "x", "rate": 1, "burst": 0}]),
        json!([{"name": "x", "rate": 1, "burst": 2, "cost": 3}]),
        json!([{"name": "x", "in_flight": 0}]),
        json!([{"name": "x", "in_flight": 65}]),
        json!([{"name": "x", "in_flight": 1, "rate": 1}]),
        json!([{"name": "x", "rate": 1, "tools": [1]}]),
        json!([{"name": "x"}]),
        json!((0..17)
            .map(|i| json!({"name": format!("l{i}"), "rate": 1}))
            .collect::<Vec<_>>()),
    ] {
        assert!(parse(&crate::value::to_rego(&bad)).is_err(), "{bad}");
    }
    let l = limits(json!([{"name": "x", "rate": 100, "period_s": 60}]));
    assert_eq!(
        l[0].kind,
        Kind::Rate {
            interval_ns: 600_000_000,
            burst: 100,
            cost: 1
        }
    );
    assert_eq!(l[0].by, [Dim::Agent], "by agent unless told");
    assert!(parse(&regorus::Value::Null).unwrap().is_empty());
}

/// Two limit names whose keys (agent `a`) start probing at the same slot
/// of a `slots`-slot table.
fn same_first_slot(slots: u64) -> (String, String) {
    let first = |n: &str| {
        let l = limits(json!([{"name": n, "rate": 1, "burst": 5}]));
        fingerprint(&l[0].key(&agent("a"))) % slots
    };
    let names: Vec<String> = (0..64).map(|i| format!("l{i}")).collect();
    for (i, a) in names.iter().enumerate() {
        if let Some(b) = names.iter().skip(i + 1).find(|b| first(b) == first(a)) {
            return (a.clone(), b.clone());
        }
    }
    unreachable!("64 names over {slots} slots share a first slot");
}

#[test]
fn two_limits_on_one_slot_never_livelock_into_a_permanent_429() {
    // Both keys probe the same free slot first: one request must not plan
    // two writes to it (the second would lose its compare-and-swap to the
    // first on every retry).
    let mut t = table(2);
    let (a, b) = same_first_slot(2);
    let l = limits(json!([
        {"name": a, "rate": 1, "burst": 5},
        {"name": b, "rate": 1, "burst": 3},
    ]));
    let mut h = host_at(S);
    t.create(&mut h);
    let mut ev = Events::default();
    let first = t.admit(&mut h, &l, &agent("a"), 0, &mut ev);
    assert!(first.is_ok(), "{first:?}");
    assert_eq!(
        admitted(&mut t, &mut h, &l, &agent("a"), 10),
        2,
        "b's 3 in all"
    );
    // Each key kept a slot of its own: a alone still has 2 left.
    let a_only = limits(json!([{"name": a, "rate": 1, "burst": 5}]));
    assert_eq!(admitted(&mut t, &mut h, &a_only, &agent("a"), 10), 2);
}

#[test]
fn two_limits_with_one_name_never_livelock_into_a_permanent_429() {
    let mut t = table(64);
    let mut h = host_at(S);
    t.create(&mut h);
    // One name, two shapes: two buckets, both charged.
    let l = limits(json!([
        {"name": "x", "rate": 1, "burst": 5},
        {"name": "x", "rate": 2, "burst": 3},
    ]));
    assert_eq!(
        admitted(&mut t, &mut h, &l, &agent("a"), 10),
        3,
        "the smaller"
    );
    // The same limit twice (an array, not a set) counts once.
    let twice = limits(json!([
        {"name": "y", "rate": 1, "burst": 5},
        {"name": "y", "rate": 1, "burst": 5},
    ]));
    assert_eq!(admitted(&mut t, &mut h, &twice, &agent("a"), 10), 5);
}

#[test]
fn an_in_flight_limit_named_twice_never_refuses_its_own_request() {
    let mut t = table(64);
    let mut h = host_at(S);
    let l = limits(json!([
        {"name": "f", "in_flight": 1},
        {"name": "f", "in_flight": 1},
    ]));
    let mut ev = Events::default();
    let held = t.admit(&mut h, &l, &agent("a"), 1, &mut ev);
    assert!(held.is_ok(), "{held:?}");
    assert!(
        t.admit(&mut h, &l, &agent("a"), 2, &mut ev).is_err(),
        "cap 1"
    );
    t.release(&mut h, &held.unwrap());
    assert!(t.admit(&mut h, &l, &agent("a"), 3, &mut ev).is_ok());
}

#[test]
fn a_clock_stepped_back_never_blocks_a_bucket_past_its_refill() {
    let mut t = table(64);
    let l = limits(json!([{"name": "r", "rate": 2, "burst": 4}]));
    let mut h = host_at(1_000 * S);
    assert_eq!(
        admitted(&mut t, &mut h, &l, &agent("a"), 10),
        4,
        "the burst"
    );
    // NTP steps the clock back a minute: nothing is given back...
    h.now_ns -= 60 * S;
    assert_eq!(admitted(&mut t, &mut h, &l, &agent("a"), 3), 0);
    // ...but the bucket refills at its rate from there, not after the
    // minute the clock lost.
    h.now_ns += S;
    assert_eq!(admitted(&mut t, &mut h, &l, &agent("a"), 3), 2);
    h.now_ns += 10 * S;
    assert_eq!(
        admitted(&mut t, &mut h, &l, &agent("a"), 10),
        4,
        "full again"
    );
}

#[test]
fn a_stream_outliving_its_lease_still_counts_against_the_in_flight_cap() {
    let mut t = table(64);
    let l = limits(json!([{"name": "inflight", "in_flight": 1}]));
    let mut h = host_at(S);
    let mut ev = Events::default();
    let lease = LimitsConfig::default().lease_ms * 1_000_000;
    let held = t.admit(&mut h, &l, &agent("a"), 1, &mut ev).unwrap();
    // The stream runs for three leases; the worker ticks meanwhile.
    for _ in 0..12 {
        h.now_ns += lease / 4;
        t.renew(&mut h);
        assert!(
            t.admit(&mut h, &l, &agent("a"), 2, &mut ev).is_err(),
            "still running: still counted"
        );
    }
    t.release(&mut h, &held);
    t.renew(&mut h);
    assert!(t.admit(&mut h, &l, &agent("a"), 3, &mut ev).is_ok());
    // A released lease is never renewed back to life.
    h.now_ns += lease / 2;
    t.renew(&mut h);
    assert!(
        t.admit(&mut h, &l, &agent("a"), 4, &mut ev).is_err(),
        "3 holds it"
    );
}
