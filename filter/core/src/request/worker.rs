//! The configured [`Filter`]: its immutable config beside one [`Worker`]
//! of per-VM mutable state (the compiled policy, whose VM evaluates, ids,
//! caches, the secrets broker, the log shipper and record chain, streams
//! waiting for secrets or their body), the reusable [`Outcome`] of a
//! decision, and the headers every reply carries.

use super::{Decision, Paused, DECISION_ID_HEADER, METRICS_HEADER, TRACE_ID_HEADER};
use crate::audit;
use crate::cache::{DecisionCache, KeyPlan};
use crate::config::Config;
use crate::host::Host;
use crate::ids::DecisionIds;
use crate::input;
use crate::metrics::{Metrics, M};
use crate::outcome::{Denial, State};
use crate::policy::Policy;
use crate::principal::Principals;
use crate::secrets;
use std::collections::HashMap;
use std::rc::Rc;

/// The configured filter of one VM: the immutable part beside the
/// worker's mutable state. The host holds one per VM and lends it `&mut`
/// to the callback it is serving (proxy-wasm runs one callback at a time
/// per VM), so nothing in it needs a runtime borrow.
#[derive(Debug)]
pub struct Filter {
    pub(super) core: Configured,
    pub(super) worker: Worker,
}

/// What never changes after configure: the validated config and what is
/// derived from it and the policy. Every phase reads it through `&self`
/// and is handed the [`Worker`] it may change.
#[derive(Debug)]
pub(super) struct Configured {
    pub(super) config: Config,
    /// `input.resource` per registered service, built at configure time.
    pub(super) docs: input::ResourceDocs,
    /// Which request facts a decision key holds.
    pub(super) key_plan: KeyPlan,
    /// The approval service's grant keys, decoded (`approval.grant_keys`).
    pub(super) approval_keys: Vec<(String, ed25519_dalek::VerifyingKey)>,
}

/// A list response's visible names (`None`: the policy does not filter).
pub(super) type Visible = Rc<Option<Vec<String>>>;

/// Per-worker (per-VM) state. Everything that changes while requests flow
/// lives here, apart from the immutable config.
#[derive(Debug)]
pub(super) struct Worker {
    /// The compiled policy: its VM (or interpreter) keeps state between
    /// evaluations, so evaluating takes `&mut`.
    pub(super) policy: Policy,
    pub(super) ids: DecisionIds,
    pub(super) cache: Option<DecisionCache<Rc<Outcome>>>,
    /// Visible sets of list responses, like decisions (same bounds).
    pub(super) lists: Option<DecisionCache<Visible>>,
    /// Verified identities by their metadata bytes.
    pub(super) principals: Principals,
    /// What this worker last read of the shared tool pins.
    pub(super) pins: crate::mcp::pin_store::PinCache,
    pub(super) broker: Option<secrets::Broker>,
    pub(super) metrics: Metrics,
    /// Broker counters already exported as metrics.
    pub(super) exported: secrets::BrokerStats,
    pub(super) shipper: Option<audit::Shipper>,
    /// Shipper counters (shipped, dropped) already exported.
    pub(super) exported_log: (u64, u64),
    /// Decisions of streams waiting for secrets, by stream id: settled by
    /// [`Filter::on_tick`] / [`Filter::on_callout_response`].
    pub(super) pending: HashMap<u32, Paused>,
    /// Where the policy's limits count (shared by every worker).
    pub(super) limits: crate::limits::Table,
    /// This VM's lease owner prefix (the stream id fills the low half).
    pub(super) lease_owner: u64,
    /// Per-limit refusal counters, by limit name (bounded).
    pub(super) limit_metrics: HashMap<String, Option<u32>>,
    /// Transaction tokens: the key, minted and verified tokens.
    pub(super) txn: Option<crate::txn::Signer>,
    /// This VM's decision-record chain (with the decision log on).
    pub(super) chain: Option<audit::Chain>,
    /// Approval callouts in flight: token → the stream that waits.
    pub(super) approvals: HashMap<u32, u32>,
    /// Exchanged tokens for services that take them.
    pub(super) exchanger: Option<crate::exchange::Exchanger>,
    /// The link broker's exchanges (`linked_accounts`): the same machinery
    /// at another token service.
    pub(super) linker: Option<crate::exchange::Exchanger>,
    /// The shadow revision, when `policy.shadow_sample` is on.
    pub(super) shadow: Option<Policy>,
}

impl Worker {
    /// The exchangers this worker has (token service, link broker).
    pub(super) fn exchangers(&mut self) -> impl Iterator<Item = &mut crate::exchange::Exchanger> {
        self.exchanger.iter_mut().chain(self.linker.iter_mut())
    }

    /// A VM's fresh state for `config`, deciding with `policy`; `seed`
    /// feeds decision ids, lease owners and the record chain's name.
    pub(super) fn new(config: &Config, policy: Policy, seed: u64) -> Worker {
        let shipper = config
            .decision_log
            .collector
            .as_ref()
            .filter(|_| config.decision_log.enabled)
            .map(|c| audit::Shipper::new(c.clone()));
        let broker = config
            .vault
            .as_ref()
            .filter(|_| config.resources.values().any(|r| !r.secrets.is_empty()))
            .map(|v| secrets::Broker::new(v.clone(), seed));
        Worker {
            policy,
            ids: DecisionIds::new(seed),
            cache: config.decision_cache.as_ref().map(DecisionCache::new),
            lists: config.decision_cache.as_ref().map(DecisionCache::new),
            principals: Principals::new(config.identity.cache_entries),
            pins: Default::default(),
            broker,
            metrics: Metrics::default(),
            exported: secrets::BrokerStats::default(),
            shipper,
            exported_log: (0, 0),
            pending: HashMap::new(),
            limits: crate::limits::Table::new(&config.limits),
            lease_owner: (seed ^ (seed >> 32)) << 32,
            limit_metrics: HashMap::new(),
            txn: config
                .txn_token
                .as_ref()
                .map(|_| crate::txn::Signer::default()),
            chain: config.decision_log.enabled.then(|| audit::Chain::new(seed)),
            approvals: HashMap::new(),
            exchanger: config
                .token_exchange
                .clone()
                .map(crate::exchange::Exchanger::new),
            linker: config
                .linked_accounts
                .clone()
                .map(crate::exchange::Exchanger::new),
            shadow: None,
        }
    }
}

/// What to do with an identified request: reusable as is for an equal
/// request (the decision cache stores these).
#[derive(Debug, Clone)]
pub(super) struct Outcome {
    pub(super) agent: String,
    /// Issuer and subject, for secret cache keys.
    pub(super) principal: String,
    pub(super) result: Result<Allowed, Denial>,
}

#[derive(Debug, Clone)]
pub(super) struct Allowed {
    /// `x-agent-*` headers, checked.
    pub(super) trusted: Vec<(&'static str, String)>,
    /// Headers a response-object policy added, checked.
    pub(super) extra: Vec<(String, String)>,
    /// The agent's team and type (secret path templates), from the token.
    pub(super) team: Option<String>,
    pub(super) kind: Option<String>,
    /// The limits the policy applies (counted per request).
    pub(super) limits: Vec<crate::limits::Limit>,
    /// The human approval the call needs first, if any.
    pub(super) approval: Option<crate::approval::Required>,
    /// The policy's choice of an exchanged token's audience and scopes.
    pub(super) exchange: Option<crate::exchange::Choice>,
    /// Headers the policy adds to the response (`response_headers_to_add`).
    pub(super) response_headers: Vec<(String, String)>,
    /// Headers the policy takes off the upstream request.
    pub(super) remove_headers: Vec<String>,
}

impl Configured {
    /// The response headers every reply and every allowed response carry.
    pub(super) fn reply_headers<'a>(&self, d: &'a Decision) -> Vec<(&'a str, &'a str)> {
        let mut h = vec![(DECISION_ID_HEADER, d.id.as_str())];
        h.extend(
            d.response_headers
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str())),
        );
        if !d.request_id.is_empty() {
            h.push((TRACE_ID_HEADER, d.request_id.as_str()));
        }
        if let Some(t) = &d.timing {
            h.push((METRICS_HEADER, t.as_str()));
        }
        h
    }
}

impl Worker {
    /// The one place outcomes become metrics.
    pub(super) fn count<H: Host>(&mut self, host: &mut H, state: &State) {
        let m = match state {
            State::Allowed => M::Allowed,
            State::Pending => return,
            State::Denied(d) => d.metric(),
        };
        self.metrics.add(host, m, 1);
    }
}
