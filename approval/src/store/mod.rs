//! The approvals: an in-memory map of records by id, and by binding to the
//! latest record for that binding. Every transition (a check, an approval,
//! a rejection) is one call under the caller's one lock, so an approval is
//! handed out at most once. Time comes in as an argument (unix seconds),
//! so tests drive it. Memory is bounded in records and in bytes of calls;
//! when full, the oldest records no one can use any more go first, and a
//! store full of live ones refuses new records rather than forget one.
//!
//! Nothing here signs, renders or logs: `check` renders, `grant` signs,
//! `routes` logs.

use serde_json::Value;
use std::collections::HashMap;

#[cfg(test)]
mod tests;

/// The call an approver is asked about, as the filter bound it.
#[derive(Debug, Clone, PartialEq)]
pub struct Call {
    /// The agent's id.
    pub agent: String,
    /// The subjects the agent acts for, outermost first.
    pub chain: Vec<String>,
    /// The service named by the policy.
    pub service: String,
    /// The path and query the call goes to upstream, when the filter
    /// binds them (it does: a server can read them).
    pub endpoint: Option<String>,
    /// The tool's name.
    pub tool: String,
    /// The call's arguments (`{}` when absent).
    pub arguments: Value,
}

/// A checked `/v1/check` body (`crate::check::parse` makes one).
#[derive(Debug, Clone)]
pub struct CheckInput {
    /// `sha256:<hex>` of the call's canonical text (verified).
    pub binding: String,
    /// The call, parsed.
    pub call: Call,
    /// The canonical text's length: what the record costs in memory.
    pub size: usize,
    /// Who may approve (identity provider subjects), deduplicated.
    pub approvers: Vec<String>,
    /// How long a pending, approved or rejected record lives.
    pub ttl_s: u64,
    /// The filter's decision id, for the logs.
    pub decision_id: String,
}

/// How much the store may hold.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Records, live or not.
    pub max_records: usize,
    /// Bytes of call text over all records.
    pub max_bytes: usize,
    /// Live records of one agent: one that asks about call after call
    /// (approvers may ignore them; each waits up to a day) must not fill
    /// the store and so refuse every other agent's approvals.
    pub max_per_agent: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_records: 10_000,
            max_bytes: 64 << 20,
            max_per_agent: 100,
        }
    }
}

/// Where a record stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    /// Waiting for an approver.
    Pending,
    /// Approved at `at`, not yet handed to the filter.
    Approved { approver: String, at: u64 },
    /// Rejected at `at`.
    Rejected { approver: String, at: u64 },
    /// Approved, and the grant was handed out: never again.
    Consumed { approver: String },
}

/// One approval request for one binding.
#[derive(Debug, Clone)]
pub struct Record {
    /// Random, unguessable: the page's address.
    pub id: String,
    /// The call's binding.
    pub binding: String,
    /// The call, as shown to approvers.
    pub call: Call,
    /// Who may decide.
    pub approvers: Vec<String>,
    /// How long each state lives.
    pub ttl_s: u64,
    /// The filter's decision id when the record was made.
    pub decision_id: String,
    /// When it was made.
    pub created: u64,
    /// When the current state lapses (pending: unanswered; approved: not
    /// collected; rejected: no longer held).
    pub expires_at: u64,
    /// Its state.
    pub state: State,
    size: usize,
}

/// What a page shows of a record at a given time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Shown {
    Pending,
    Approved(String),
    Rejected(String),
    Used(String),
    Expired,
}

/// A pending record as the filter is told about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    pub id: String,
    pub expires_at: u64,
}

/// An approval being handed out (the record is already marked used).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Approval {
    pub id: String,
    pub binding: String,
    pub approver: String,
    /// When the approver approved.
    pub approved_at: u64,
    /// The grant's expiry: approval time plus the record's ttl.
    pub exp: u64,
    pub decision_id: String,
}

/// The answer to a check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    Pending(Pending),
    Approved(Approval),
    Rejected {
        id: String,
        approver: String,
    },
    /// The approval for this binding was used already: a replay.
    Used {
        id: String,
        pending: Pending,
    },
    /// The latest record lapsed.
    Expired {
        id: String,
        pending: Pending,
    },
}

/// The store holds only live records and has no room for another.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Full;

/// Why a decision was not taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecideError {
    NotFound,
    /// The subject is not among the record's approvers.
    NotApprover,
    /// The record is no longer pending; what it shows instead.
    Closed(Shown),
}

/// A decision taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decided {
    pub id: String,
    pub binding: String,
    pub approver: String,
    pub approved: bool,
    pub decision_id: String,
    /// When the new state lapses.
    pub expires_at: u64,
}

/// The records.
#[derive(Debug, Default)]
pub struct Store {
    limits: Limits,
    by_id: HashMap<String, Record>,
    latest: HashMap<String, String>,
    bytes: usize,
}

impl Record {
    /// What the record shows at `now`.
    pub fn shown(&self, now: u64) -> Shown {
        match &self.state {
            State::Consumed { approver } => Shown::Used(approver.clone()),
            _ if now >= self.expires_at => Shown::Expired,
            State::Pending => Shown::Pending,
            State::Approved { approver, .. } => Shown::Approved(approver.clone()),
            State::Rejected { approver, .. } => Shown::Rejected(approver.clone()),
        }
    }
}

impl Store {
    /// An empty store with these limits.
    pub fn new(limits: Limits) -> Store {
        Store {
            limits,
            ..Store::default()
        }
    }

    /// How many records it holds.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// A record by id.
    pub fn get(&self, id: &str) -> Option<&Record> {
        self.by_id.get(id)
    }

    /// The filter asks where `input.binding` stands. `fresh_id` names the
    /// record made if one is needed. An approved record is answered once
    /// and marked used in the same step.
    pub fn check(
        &mut self,
        input: &CheckInput,
        now: u64,
        fresh_id: String,
    ) -> Result<Answer, Full> {
        let latest = self
            .latest
            .get(&input.binding)
            .and_then(|id| self.by_id.get_mut(id));
        let Some(r) = latest else {
            return self.insert(input, now, fresh_id).map(Answer::Pending);
        };
        let old = r.id.clone();
        match r.shown(now) {
            Shown::Used(_) => {
                let pending = self.insert(input, now, fresh_id)?;
                Ok(Answer::Used { id: old, pending })
            }
            Shown::Expired => {
                let pending = self.insert(input, now, fresh_id)?;
                Ok(Answer::Expired { id: old, pending })
            }
            Shown::Pending => Ok(Answer::Pending(Pending {
                id: old,
                expires_at: r.expires_at,
            })),
            Shown::Rejected(approver) => Ok(Answer::Rejected { id: old, approver }),
            Shown::Approved(approver) => {
                let approved_at = match r.state {
                    State::Approved { at, .. } => at,
                    _ => now,
                };
                r.state = State::Consumed {
                    approver: approver.clone(),
                };
                Ok(Answer::Approved(Approval {
                    id: old,
                    binding: r.binding.clone(),
                    approver,
                    approved_at,
                    exp: approved_at.saturating_add(r.ttl_s),
                    decision_id: r.decision_id.clone(),
                }))
            }
        }
    }

    /// `subject` approves (or rejects) record `id` at `now`: only a named
    /// approver, only while it is pending and unexpired.
    pub fn decide(
        &mut self,
        id: &str,
        subject: &str,
        approve: bool,
        now: u64,
    ) -> Result<Decided, DecideError> {
        let r = self.by_id.get_mut(id).ok_or(DecideError::NotFound)?;
        // Before the state: a non-approver learns nothing about the record.
        if !r.approvers.iter().any(|a| a == subject) {
            return Err(DecideError::NotApprover);
        }
        match r.shown(now) {
            Shown::Pending => {}
            other => return Err(DecideError::Closed(other)),
        }
        let approver = subject.to_string();
        r.state = if approve {
            State::Approved {
                approver: approver.clone(),
                at: now,
            }
        } else {
            State::Rejected {
                approver: approver.clone(),
                at: now,
            }
        };
        r.expires_at = now.saturating_add(r.ttl_s);
        Ok(Decided {
            id: r.id.clone(),
            binding: r.binding.clone(),
            approver,
            approved: approve,
            decision_id: r.decision_id.clone(),
            expires_at: r.expires_at,
        })
    }

    /// A new pending record for `input`, now the latest for its binding.
    fn insert(&mut self, input: &CheckInput, now: u64, id: String) -> Result<Pending, Full> {
        let agent = &input.call.agent;
        let mine = self
            .by_id
            .values()
            .filter(|r| r.call.agent == *agent && self.is_live(r, now))
            .count();
        if mine >= self.limits.max_per_agent {
            return Err(Full);
        }
        self.make_room(input.size, now)?;
        let expires_at = now.saturating_add(input.ttl_s);
        let record = Record {
            id: id.clone(),
            binding: input.binding.clone(),
            call: input.call.clone(),
            approvers: input.approvers.clone(),
            ttl_s: input.ttl_s,
            decision_id: input.decision_id.clone(),
            created: now,
            expires_at,
            state: State::Pending,
            size: input.size,
        };
        self.bytes = self.bytes.saturating_add(input.size);
        self.latest.insert(input.binding.clone(), id.clone());
        self.by_id.insert(id.clone(), record);
        Ok(Pending { id, expires_at })
    }

    /// Whether a record can still matter to the filter: the latest for
    /// its binding, not used, not lapsed.
    fn is_live(&self, r: &Record, now: u64) -> bool {
        self.latest.get(&r.binding) == Some(&r.id)
            && matches!(
                r.shown(now),
                Shown::Pending | Shown::Approved(_) | Shown::Rejected(_)
            )
    }

    /// Evicts the oldest records that are not live until one of `size`
    /// bytes fits.
    fn make_room(&mut self, size: usize, now: u64) -> Result<(), Full> {
        if size > self.limits.max_bytes {
            return Err(Full);
        }
        while self.by_id.len() >= self.limits.max_records
            || self.bytes.saturating_add(size) > self.limits.max_bytes
        {
            let oldest = self
                .by_id
                .values()
                .filter(|r| !self.is_live(r, now))
                .min_by_key(|r| r.created)
                .map(|r| r.id.clone());
            let Some(id) = oldest else {
                return Err(Full);
            };
            self.remove(&id);
        }
        Ok(())
    }

    fn remove(&mut self, id: &str) {
        if let Some(r) = self.by_id.remove(id) {
            self.bytes = self.bytes.saturating_sub(r.size);
            if self.latest.get(&r.binding) == Some(&r.id) {
                self.latest.remove(&r.binding);
            }
        }
    }
}
