//! Where pinned tool definitions are kept between requests: one record per
//! pinned service in the proxy's shared data (every worker sees it, a
//! policy swap with the same VM id keeps it), holding per tool the first
//! definition seen (for first use) and the last one a list showed.
//!
//! - **One record per service, updated by compare-and-swap**: two workers
//!   seeing a tool for the first time at once agree on which definition
//!   came first (the loser re-reads and finds it), and a record never
//!   loses another worker's update.
//! - **Bounded**: a record holds at most [`MAX_RECORD_BYTES`]; a list that
//!   would grow it further is refused, so a server cannot grow the proxy's
//!   memory by listing ever new names. Only services in `data.mcp.pins`
//!   have a record, created when a VM configures.
//! - **Cached per worker** ([`PinCache`]) for [`FRESH_NS`]: a call and an
//!   unchanged list cost no host call; a change a list shows on one worker
//!   applies there at once and on the others within [`FRESH_NS`]. Read
//!   again after that, a record is decoded again only if its version
//!   changed.
//! - **Fail closed**: a record that does not decode (a write from another
//!   build, corruption) makes a call's tool count as changed and a list
//!   fail.

use super::pins::{is_digest, PinState, Pins, ServicePins, ToolPin};
use crate::host::Host;
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;

/// How long a worker trusts what it read of the shared records.
pub const FRESH_NS: u64 = 1_000_000_000;

/// The largest record a service may have (about 1,500 tools with short
/// names).
pub const MAX_RECORD_BYTES: usize = 256 * 1024;

/// Compare-and-swap attempts before a list gives up (fails closed).
const CAS_TRIES: usize = 8;

/// What a list that showed a tool twice with two definitions leaves as
/// the tool's last definition: no SHA-256 of a definition (finding one is
/// a preimage attack), so it matches no pin, reviewed or first, and it
/// pins nothing on first use.
pub const TWIN: &str = "sha256:0000000000000000000000000000000000000000000000000000000000000000";

/// Per tool: the first definition seen, the last one a list showed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Seen {
    first: Option<String>,
    last: Option<String>,
}

/// One service's record.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Record {
    tools: BTreeMap<String, Seen>,
}

/// The shared-data key of a service's record (its length first: no name
/// forges another's key).
fn key(service: &str) -> String {
    // The format's version is in the key: a filter built with another
    // record format reads and writes its own records, never this one's.
    format!("agentplane.pins.v1.{}.{service}", service.len())
}

impl Record {
    /// `name_len u32 LE, name, first_len u8, first, last_len u8, last` per
    /// tool; `None` when the bytes are not such a record.
    fn decode(mut b: &[u8]) -> Option<Record> {
        fn take<'a>(b: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
            let (head, rest) = (b.get(..n)?, b.get(n..)?);
            *b = rest;
            Some(head)
        }
        fn digest(b: &mut &[u8]) -> Option<Option<String>> {
            let n = usize::from(*take(b, 1)?.first()?);
            if n == 0 {
                return Some(None);
            }
            let d = std::str::from_utf8(take(b, n)?).ok()?;
            is_digest(d).then(|| Some(d.to_string()))
        }
        let mut r = Record::default();
        while !b.is_empty() {
            let len = u32::from_le_bytes(take(&mut b, 4)?.try_into().ok()?);
            let name = std::str::from_utf8(take(&mut b, usize::try_from(len).ok()?)?).ok()?;
            let seen = Seen {
                first: digest(&mut b)?,
                last: digest(&mut b)?,
            };
            r.tools.insert(name.to_string(), seen);
        }
        Some(r)
    }

    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for (name, s) in &self.tools {
            out.extend_from_slice(&u32::try_from(name.len()).unwrap_or(u32::MAX).to_le_bytes());
            out.extend_from_slice(name.as_bytes());
            for d in [&s.first, &s.last] {
                let d = d.as_deref().unwrap_or("");
                out.push(u8::try_from(d.len()).unwrap_or(0));
                out.extend_from_slice(d.as_bytes());
            }
        }
        out
    }
}

/// Creates every pinned service's record that does not exist yet (at
/// configure, on the root context).
pub fn create<H: Host>(host: &mut H, pins: &Pins) {
    for s in pins.services() {
        let k = key(s);
        if host.shared_get(&k).is_none() {
            host.shared_set(&k, &[], None);
        }
    }
}

/// What a worker last read of each service's record, and when.
#[derive(Debug, Default)]
pub struct PinCache {
    records: HashMap<String, Cached>,
}

#[derive(Debug)]
struct Cached {
    record: Rc<Record>,
    /// When it was read or written.
    at: u64,
    /// Its shared-data version when it was read (`None` after a write,
    /// whose version the host does not say).
    cas: Option<u32>,
}

impl PinCache {
    /// The service's record: the cached one while fresh, else read (and
    /// decoded only if it changed since: a record of 1,500 tools takes
    /// about a millisecond to decode).
    fn record<H: Host>(&mut self, host: &H, service: &str, now_ns: u64) -> Option<Rc<Record>> {
        if let Some(c) = self.records.get(service) {
            if now_ns.saturating_sub(c.at) < FRESH_NS {
                return Some(Rc::clone(&c.record));
            }
        }
        // No record yet (configure creates one; a VM that never
        // configured here has none): nothing seen.
        let (bytes, cas) = host
            .shared_get(&key(service))
            .map_or((Vec::new(), None), |(b, c)| (b, Some(c)));
        if let Some(c) = self.records.get_mut(service) {
            if cas.is_some() && c.cas == cas {
                c.at = now_ns;
                return Some(Rc::clone(&c.record));
            }
        }
        let r = Rc::new(Record::decode(&bytes)?);
        self.keep(service, Rc::clone(&r), now_ns, cas);
        Some(r)
    }

    fn keep(&mut self, service: &str, record: Rc<Record>, at: u64, cas: Option<u32>) {
        let c = Cached { record, at, cas };
        self.records.insert(service.to_string(), c);
    }
}

impl ServicePins {
    /// How definition `d` of `tool` stands, given its first-use pin.
    fn state(&self, tool: &str, first: Option<&str>, d: &str) -> PinState {
        if d == TWIN {
            return PinState::Changed;
        }
        if let Some(reviewed) = self.tools.get(tool) {
            return if reviewed == d {
                PinState::Matches
            } else {
                PinState::Changed
            };
        }
        if !self.first_use {
            return PinState::Unpinned;
        }
        match first {
            Some(first) if first == d => PinState::Matches,
            Some(_) => PinState::Changed,
            None => PinState::Unpinned,
        }
    }

    fn uses_first(&self, tool: &str) -> bool {
        self.first_use && !self.tools.contains_key(tool)
    }

    /// A list showed these tools (name, digest; each name once): pins a
    /// tool with first use when nothing pinned it yet, remembers each
    /// definition as the one clients see, and says how each stands. An
    /// error (the list then fails) when the record cannot be read or
    /// updated, or would outgrow [`MAX_RECORD_BYTES`].
    pub fn listed<H: Host>(
        &self,
        host: &mut H,
        cache: &mut PinCache,
        now_ns: u64,
        service: &str,
        tools: &[(&str, &str)],
    ) -> Result<Vec<PinState>, &'static str> {
        let stale = |r: &Record| {
            tools.iter().any(|(name, d)| {
                let s = r.tools.get(*name);
                s.and_then(|s| s.last.as_deref()) != Some(*d)
                    || (self.uses_first(name)
                        && *d != TWIN
                        && s.and_then(|s| s.first.as_ref()).is_none())
            })
        };
        let unreadable = "pinned tool definitions unreadable";
        let mut record = cache.record(host, service, now_ns).ok_or(unreadable)?;
        if stale(&record) {
            record = self.update(host, service, tools)?;
            cache.keep(service, Rc::clone(&record), now_ns, None);
        }
        Ok(tools
            .iter()
            .map(|(name, d)| {
                let first = record.tools.get(*name).and_then(|s| s.first.as_deref());
                self.state(name, first, d)
            })
            .collect())
    }

    /// Writes what a list showed into the service's record.
    fn update<H: Host>(
        &self,
        host: &mut H,
        service: &str,
        tools: &[(&str, &str)],
    ) -> Result<Rc<Record>, &'static str> {
        let k = key(service);
        for _ in 0..CAS_TRIES {
            // Without a record, the write creates it (no compare-and-swap
            // then: configure creates every record before requests flow).
            let (bytes, cas) = host
                .shared_get(&k)
                .map_or((Vec::new(), None), |(b, c)| (b, Some(c)));
            let mut r = Record::decode(&bytes).ok_or("pinned tool definitions unreadable")?;
            for (name, d) in tools {
                let s = r.tools.entry((*name).to_string()).or_default();
                if self.uses_first(name) && s.first.is_none() && *d != TWIN {
                    s.first = Some((*d).to_string());
                }
                s.last = Some((*d).to_string());
            }
            let out = r.encode();
            if out.len() > MAX_RECORD_BYTES {
                return Err("too many tools to pin for this service");
            }
            if host.shared_set(&k, &out, cas) {
                return Ok(Rc::new(r));
            }
        }
        Err("pinned tool definitions busy")
    }

    /// A call to `tool`: the definition a list last showed, and how it
    /// stands (changed, failing closed, when the record does not decode).
    pub fn called<H: Host>(
        &self,
        host: &H,
        cache: &mut PinCache,
        now_ns: u64,
        service: &str,
        tool: &str,
    ) -> ToolPin {
        let Some(record) = cache.record(host, service, now_ns) else {
            return ToolPin {
                digest: None,
                state: PinState::Changed,
            };
        };
        let seen = record.tools.get(tool);
        match seen.and_then(|s| s.last.clone()) {
            None => ToolPin {
                digest: None,
                state: PinState::Unseen,
            },
            Some(d) => ToolPin {
                state: self.state(tool, seen.and_then(|s| s.first.as_deref()), &d),
                digest: Some(d),
            },
        }
    }
}

#[cfg(test)]
#[path = "pin_store_tests.rs"]
mod tests;
