//! Stats the filter exports through the proxy (Envoy: `/stats`, and
//! `/stats/prometheus` as `agentplane_*`). Names are fixed and carry
//! no per-request values, so cardinality is bounded.

use crate::host::Host;

/// Every metric, by index into [`NAMES`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
pub enum M {
    /// Allowed decisions.
    Allowed,
    /// Denied by the policy (403 or the policy's status).
    Denied,
    /// No or unusable identity (401).
    Unauthorized,
    /// Malformed requests (400).
    BadRequest,
    /// Policy evaluation errors (403 policy_error).
    PolicyError,
    /// Secrets could not be had (503).
    SecretsUnavailable,
    /// Decisions answered from the decision cache.
    DecisionCacheHit,
    /// Decisions evaluated.
    DecisionCacheMiss,
    /// Client headers removed from the trusted namespace.
    HeadersStripped,
    /// Requests whose secrets were all cached.
    SecretsCacheHit,
    /// Vault logins sent.
    VaultLogins,
    /// Vault secret reads sent.
    VaultReads,
    /// Secret fetch jobs that failed.
    VaultFailures,
    /// Decision records the collector accepted.
    LogShipped,
    /// Decision records dropped (collector buffer full, or refused).
    LogDropped,
    /// Requests refused because mandatory logging had no room (503).
    LogUnavailable,
    /// Requests refused because the proxy failed a host call (503).
    HostFailure,
    /// Requests refused by a limit (429).
    RateLimited,
    /// Limit slots probed but held by another live key.
    LimitCollisions,
    /// Limit slots taken over from a key that had nothing left to lose.
    LimitEvictions,
    /// Limit writes that lost a compare-and-swap race and were retried.
    LimitRetries,
    /// Requests refused because no transaction token could be had (503).
    TxnUnavailable,
    /// Transaction tokens signed.
    TxnMinted,
    /// Requests that reused a token signed before.
    TxnReused,
    /// Inbound transaction tokens verified (signature checked).
    TxnVerified,
    /// Tools found changed since they were pinned (in a list, or called).
    ToolPinChanged,
    /// Calls answered "approval required" (pending, used, expired) or
    /// refused for their approval (rejected, edited, bad grant).
    ApprovalRequired,
    /// Calls let through on an approval.
    ApprovalGranted,
    /// Calls refused because the approval service could not answer.
    ApprovalUnavailable,
    /// Tokens exchanged (RFC 8693 requests sent).
    TokenExchanged,
    /// Requests served an exchanged token from a cache.
    TokenExchangeHit,
    /// Requests refused because no token could be exchanged.
    ExchangeUnavailable,
    /// Requests answered "link your account" (no usable linked account).
    LinkRequired,
    /// Decisions the shadow revision also made.
    ShadowEvaluated,
    /// Shadow decisions that disagreed on allow.
    ShadowAllow,
    /// ... on the deny reasons (both refused).
    ShadowDeny,
    /// ... on the limits (both allowed).
    ShadowLimits,
    /// ... on the approval asked for (both allowed).
    ShadowApproval,
    /// ... on the token exchange chosen (both allowed).
    ShadowExchange,
    /// Policy evaluation time, µs (histogram).
    PolicyEvalUs,
}

/// Stat names, in [`M`] order.
pub const NAMES: [&str; M::PolicyEvalUs as usize + 1] = [
    "agentplane.decisions.allowed",
    "agentplane.decisions.denied",
    "agentplane.decisions.unauthorized",
    "agentplane.decisions.bad_request",
    "agentplane.decisions.policy_error",
    "agentplane.decisions.secrets_unavailable",
    "agentplane.decision_cache.hit",
    "agentplane.decision_cache.miss",
    "agentplane.headers.stripped",
    "agentplane.secrets.cache_hit",
    "agentplane.vault.logins",
    "agentplane.vault.reads",
    "agentplane.vault.failures",
    "agentplane.decision_log.shipped",
    "agentplane.decision_log.dropped",
    "agentplane.decisions.log_unavailable",
    "agentplane.decisions.proxy_error",
    "agentplane.decisions.rate_limited",
    "agentplane.limits.collisions",
    "agentplane.limits.evictions",
    "agentplane.limits.cas_retries",
    "agentplane.decisions.txn_token_unavailable",
    "agentplane.txn_token.minted",
    "agentplane.txn_token.reused",
    "agentplane.txn_token.verified",
    "agentplane.mcp.tool_pin_changed",
    "agentplane.decisions.approval_required",
    "agentplane.approval.granted",
    "agentplane.decisions.approval_unavailable",
    "agentplane.token_exchange.exchanged",
    "agentplane.token_exchange.cache_hit",
    "agentplane.decisions.token_exchange_unavailable",
    "agentplane.decisions.link_required",
    "agentplane.shadow.evaluated",
    "agentplane.shadow.disagreed.allow",
    "agentplane.shadow.disagreed.deny",
    "agentplane.shadow.disagreed.limits",
    "agentplane.shadow.disagreed.approval",
    "agentplane.shadow.disagreed.exchange",
    "agentplane.policy.eval_us",
];

/// Metric ids from the host, defined once per VM.
#[derive(Debug)]
pub struct Metrics {
    ids: [Option<u32>; NAMES.len()],
}

// By hand: std derives `Default` for arrays of at most 32.
impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            ids: [None; NAMES.len()],
        }
    }
}

impl Metrics {
    /// Defines every metric (at configure time, on the root context).
    pub fn define<H: Host>(&mut self, host: &mut H) {
        for (i, (name, id)) in NAMES.iter().zip(self.ids.iter_mut()).enumerate() {
            let histogram = i == M::PolicyEvalUs as usize;
            *id = host.define_metric(name, histogram);
        }
    }

    /// Adds to a counter (nothing if undefined or zero).
    pub fn add<H: Host>(&self, host: &mut H, m: M, delta: u64) {
        if delta == 0 {
            return;
        }
        if let Some(id) = self.ids.get(m as usize).copied().flatten() {
            host.add_metric(id, delta);
        }
    }

    /// Records a histogram sample.
    pub fn record<H: Host>(&self, host: &mut H, m: M, value: u64) {
        if let Some(id) = self.ids.get(m as usize).copied().flatten() {
            host.record_metric(id, value);
        }
    }
}
