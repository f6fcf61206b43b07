//! MCP sessions (Streamable HTTP, 2025 revisions) bound to the principal
//! that opened them.
//!
//! A stateful server answers `initialize` with an `Mcp-Session-Id` and
//! knows its client only by that id afterwards. Behind agentplane every
//! agent reaches the same server, so without a binding one agent's session
//! id would work for another. When an allowed request's response carries a
//! session id, the filter binds it to the request's principal (issuer,
//! subject and delegation chain, [`Ticket::new`]); a later request to an
//! MCP service carrying that id must come from the same principal. A
//! session id the filter never bound (opened before the filter, a binding
//! lost or expired) is refused alike: the filter cannot tell whose it is.
//! Both refusals are HTTP 404, the MCP spec's answer to an unknown session,
//! on which a client starts a new session of its own.
//!
//! Bindings live in proxy-wasm shared data, so every worker sees them, in
//! a fixed table of `mcp.session_slots` slots: shared data has no delete,
//! so memory stays bounded by the table whatever clients do. A session id
//! probes [`PROBES`] slots by its SHA-256; a slot holds 16 bytes of that
//! digest, 16 bytes of the owner's, and an expiry (`mcp.session_ttl_s`
//! after the last use). A new binding takes its own slot, else a free or
//! expired one, else evicts the binding among its probes used least
//! recently: that session is then unknown (404) and its client opens a new
//! one. A binding is never handed to another principal, so a full table
//! costs availability, not isolation. Session ids never appear in shared
//! data or logs: only digests do.

use crate::config::McpConfig;
use crate::host::{Host, LogLevel};
use crate::ids::hex;
use crate::principal::Principal;
use sha2::{Digest, Sha256};

/// The session header (lower-case, as the host presents it).
pub const HEADER: &str = crate::mcp::SESSION_HEADER;
/// Slots a session id may occupy.
pub const PROBES: u64 = 8;
/// Prefix of the slot keys in shared data.
const PREFIX: &str = "agentplane.sessions";
/// Compare-and-swap rounds before a write is given up.
const ATTEMPTS: usize = 16;
/// Bytes of a slot's value: session tag, owner, expiry.
const ENTRY: usize = 40;

/// Why a request's session id was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Never bound by this proxy, expired, or evicted.
    Unknown,
    /// Bound to another principal.
    Foreign,
}

impl Refusal {
    /// The reason given to the client and the decision log.
    pub fn reason(self) -> &'static str {
        match self {
            Refusal::Unknown => "MCP session not found: not opened through this proxy, or expired; start a new session",
            Refusal::Foreign => "MCP session belongs to another principal",
        }
    }
}

/// What a request to an MCP service carries from its headers to its
/// response: who sent it and the digest of the session id it named.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ticket {
    owner: [u8; 16],
    /// SHA-256 of the request's `mcp-session-id`, when it had one.
    sent: Option<[u8; 32]>,
    /// A DELETE: the session ends when the server agrees (2xx).
    ends: bool,
}

impl Ticket {
    /// The ticket of a request by `principal` with this method and
    /// session header.
    pub fn new(principal: &Principal, method: &str, session: Option<&str>) -> Ticket {
        Ticket {
            owner: owner_of(principal),
            sent: session.map(digest),
            ends: method == "DELETE",
        }
    }

    /// The request's session id, as hex SHA-256 (the decision log's form).
    pub fn sent_sha256(&self) -> Option<String> {
        self.sent.as_ref().map(|d| hex(d))
    }
}

/// The principal a session is bound to: issuer, subject and every actor of
/// a delegation chain, so a session opened by an orchestrator acting for a
/// user serves neither the user alone nor another actor for the same user.
fn owner_of(p: &Principal) -> [u8; 16] {
    let mut h = Sha256::new();
    let mut field = |b: &[u8]| {
        h.update((b.len() as u64).to_le_bytes());
        h.update(b);
    };
    field(b"agentplane.session.owner.v1");
    field(&[u8::from(p.issuer.is_some())]);
    field(p.issuer.as_deref().unwrap_or("").as_bytes());
    field(p.identity.id.as_bytes());
    field(&(p.identity.chain.len() as u64).to_le_bytes());
    for a in &p.identity.chain {
        field(a.sub.as_bytes());
    }
    first16(&h.finalize().into())
}

fn digest(id: &str) -> [u8; 32] {
    Sha256::digest(id.as_bytes()).into()
}

fn first16(d: &[u8; 32]) -> [u8; 16] {
    d.first_chunk::<16>().copied().unwrap_or_default()
}

/// What the MCP spec allows in a session id: visible ASCII (0x21–0x7E).
/// Anything else is never bound, so never usable through the filter.
pub fn valid_id(id: &str) -> bool {
    !id.is_empty() && id.bytes().all(|b| (0x21..=0x7e).contains(&b))
}

/// One binding as a slot holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    tag: [u8; 16],
    owner: [u8; 16],
    expires: u64,
}

impl Entry {
    fn encode(&self) -> [u8; ENTRY] {
        let mut v = [0u8; ENTRY];
        let expires = self.expires.to_le_bytes();
        let bytes = self.tag.iter().chain(&self.owner).chain(&expires);
        for (dst, src) in v.iter_mut().zip(bytes) {
            *dst = *src;
        }
        v
    }

    /// A slot's value; `None` for a free slot (empty, or of another size).
    fn decode(v: &[u8]) -> Option<Entry> {
        let v: &[u8; ENTRY] = v.try_into().ok()?;
        let (tag, rest) = v.split_first_chunk::<16>()?;
        let (owner, expires) = rest.split_first_chunk::<16>()?;
        Some(Entry {
            tag: *tag,
            owner: *owner,
            expires: u64::from_le_bytes(*expires.first_chunk::<8>()?),
        })
    }
}

/// A slot as read: its key, CAS and binding (if any).
struct Slot {
    key: String,
    cas: u32,
    entry: Option<Entry>,
}

/// What a session id's probes hold.
struct Scan {
    /// The slot bound to this session id.
    own: Option<Slot>,
    /// Where a new binding goes: a free or expired slot, else the live
    /// binding used least recently (evicted).
    target: Option<Slot>,
}

/// What [`Table::bind`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bound {
    /// A new binding.
    New,
    /// A new binding that evicted another principal's live one.
    Evicted,
    /// Already bound to this principal (expiry refreshed if due).
    Kept,
    /// Bound to another principal and live: left as it is.
    Conflict,
    /// Lost every compare-and-swap round: not bound.
    Contended,
}

/// The binding table: `mcp.session_slots` shared-data slots.
#[derive(Debug, Clone, Copy)]
pub struct Table {
    slots: u64,
    ttl_ns: u64,
}

impl Table {
    /// The table `cfg` describes.
    pub fn new(cfg: &McpConfig) -> Table {
        Table {
            slots: cfg.session_slots.max(1),
            ttl_ns: cfg.session_ttl_s.saturating_mul(1_000_000_000),
        }
    }

    fn key(&self, idx: u64) -> String {
        format!("{PREFIX}.{}", idx % self.slots)
    }

    /// Creates every slot not yet present (configure time), so every later
    /// write is a compare-and-swap: shared data accepts any CAS for a key
    /// that does not exist yet.
    pub fn create<H: Host>(&self, host: &mut H) {
        for i in 0..self.slots {
            let key = self.key(i);
            if host.shared_get(&key).is_none() {
                host.shared_set(&key, &[], None);
            }
        }
    }

    fn read<H: Host>(&self, host: &mut H, idx: u64) -> Slot {
        let key = self.key(idx);
        // A slot `create` did not make (the table grew): made here.
        let (value, cas) = match host.shared_get(&key) {
            Some(v) => v,
            None => {
                host.shared_set(&key, &[], None);
                host.shared_get(&key).unwrap_or_default()
            }
        };
        Slot {
            entry: Entry::decode(&value),
            key,
            cas,
        }
    }

    /// Reads `tag`'s probes.
    fn scan<H: Host>(&self, host: &mut H, tag: &[u8; 16], now: u64) -> Scan {
        let start = tag
            .first_chunk::<8>()
            .copied()
            .map_or(0, u64::from_le_bytes);
        let mut first_free: Option<Slot> = None;
        let mut lru: Option<(u64, Slot)> = None;
        for p in 0..PROBES.min(self.slots) {
            let slot = self.read(host, start.wrapping_add(p));
            match slot.entry {
                Some(e) if e.tag == *tag => {
                    return Scan {
                        own: Some(slot),
                        target: None,
                    }
                }
                // A live binding: evicted only if used least recently
                // (earliest expiry) and nothing is free.
                Some(e) if e.expires > now => {
                    if lru.as_ref().is_none_or(|(at, _)| e.expires < *at) {
                        lru = Some((e.expires, slot));
                    }
                }
                // Free or expired: the first one is where a binding goes.
                _ => {
                    if first_free.is_none() {
                        first_free = Some(slot);
                    }
                }
            }
        }
        Scan {
            own: None,
            target: first_free.or(lru.map(|(_, s)| s)),
        }
    }

    /// Whether a binding expiring at `expires` is due for a refresh: at
    /// most about sixteen writes per TTL for a session in steady use.
    fn stale(&self, expires: u64, now: u64) -> bool {
        expires < now.saturating_add(self.ttl_ns - self.ttl_ns / 16)
    }

    /// Admits a request: without a session id, always; with one, only if
    /// it is bound, live and bound to this ticket's principal. A use
    /// refreshes the binding's expiry.
    pub fn admit<H: Host>(&self, host: &mut H, t: &Ticket) -> Result<(), Refusal> {
        let Some(sent) = &t.sent else {
            return Ok(());
        };
        let tag = first16(sent);
        let now = host.now_ns();
        for round in 0..ATTEMPTS {
            let Some(Slot {
                key,
                cas,
                entry: Some(e),
            }) = self.scan(host, &tag, now).own
            else {
                return Err(Refusal::Unknown);
            };
            if e.expires <= now {
                return Err(Refusal::Unknown);
            }
            if e.owner != t.owner {
                return Err(Refusal::Foreign);
            }
            // Checked on this round's read; a lost refresh only means the
            // binding expires a little sooner.
            if !self.stale(e.expires, now) || round + 1 == ATTEMPTS {
                return Ok(());
            }
            let fresh = Entry {
                expires: now.saturating_add(self.ttl_ns),
                ..e
            };
            if host.shared_set(&key, &fresh.encode(), Some(cas)) {
                return Ok(());
            }
        }
        Ok(())
    }

    /// Binds the session whose id has digest `d` to `owner`.
    fn bind<H: Host>(&self, host: &mut H, d: &[u8; 32], owner: [u8; 16]) -> Bound {
        let tag = first16(d);
        let now = host.now_ns();
        let entry = Entry {
            tag,
            owner,
            expires: now.saturating_add(self.ttl_ns),
        };
        for _ in 0..ATTEMPTS {
            let scan = self.scan(host, &tag, now);
            let (slot, outcome) = match scan.own {
                Some(s) => match s.entry {
                    Some(e) if e.owner == owner && !self.stale(e.expires, now) => {
                        return Bound::Kept
                    }
                    Some(e) if e.owner == owner => (s, Bound::Kept),
                    Some(e) if e.expires > now => return Bound::Conflict,
                    // Another principal's binding that expired: the server
                    // reused the id, so it is the new principal's.
                    _ => (s, Bound::New),
                },
                None => match scan.target {
                    Some(s) if free(&s, now) => (s, Bound::New),
                    Some(s) => (s, Bound::Evicted),
                    None => return Bound::Contended,
                },
            };
            if host.shared_set(&slot.key, &entry.encode(), Some(slot.cas)) {
                return outcome;
            }
        }
        Bound::Contended
    }

    /// Frees the binding of `d` if `owner` holds it (the session ended).
    fn end<H: Host>(&self, host: &mut H, d: &[u8; 32], owner: [u8; 16]) {
        let tag = first16(d);
        let now = host.now_ns();
        for _ in 0..ATTEMPTS {
            let Some(slot) = self.scan(host, &tag, now).own else {
                return;
            };
            if slot.entry.is_none_or(|e| e.owner != owner) {
                return;
            }
            if host.shared_set(&slot.key, &[], Some(slot.cas)) {
                return;
            }
        }
    }

    /// The response of an allowed request to an MCP service: a session id
    /// the server hands out is bound to the request's principal; a DELETE
    /// the server accepted frees its session's binding. When a binding is
    /// made, its digest is returned, for the decision record to name.
    pub fn on_response<H: Host>(&self, host: &mut H, t: &Ticket) -> Option<String> {
        if let (true, Some(sent)) = (t.ends, &t.sent) {
            let status = host
                .response_header(":status")
                .and_then(|s| s.parse::<u16>().ok());
            if status.is_some_and(|s| (200..300).contains(&s)) {
                self.end(host, sent, t.owner);
            }
        }
        let id = host.response_header(HEADER)?;
        let d = digest(&id);
        // The request's own session: checked and refreshed on the way in
        // (and not bound again after a DELETE).
        if t.sent == Some(d) {
            return None;
        }
        let short = |d: &[u8; 32]| d.first_chunk::<6>().map_or_else(String::new, |c| hex(c));
        if !valid_id(&id) {
            host.log(
                LogLevel::Warn,
                &format!(
                    "agentplane: MCP session {} not bound: its id is not visible ASCII",
                    short(&d)
                ),
            );
            return None;
        }
        let bound = self.bind(host, &d, t.owner);
        let (level, what) = match bound {
            Bound::New | Bound::Kept => (LogLevel::Debug, "bound"),
            Bound::Evicted => (
                LogLevel::Info,
                "bound, evicting the least recently used binding of its slots (mcp.session_slots)",
            ),
            Bound::Conflict => (
                LogLevel::Warn,
                "not bound: the server handed out an id bound to another principal",
            ),
            Bound::Contended => (LogLevel::Warn, "not bound: its slots stayed contended"),
        };
        host.log(
            level,
            &format!("agentplane: MCP session {} {what}", short(&d)),
        );
        // Beside the request's own session digest, if it named one.
        matches!(bound, Bound::New | Bound::Evicted | Bound::Kept).then(|| hex(&d))
    }
}

/// Whether a slot is free or holds an expired binding.
fn free(s: &Slot, now: u64) -> bool {
    s.entry.is_none_or(|e| e.expires <= now)
}

#[cfg(test)]
#[path = "session_tests.rs"]
mod tests;
