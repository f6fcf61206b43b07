//! An allowed request to a service whose upstream takes an exchanged
//! token: its headers are written with that token, from a cache, or it
//! pauses until the exchange ends and the worker resumes or refuses it
//! ([`crate::exchange`]), as a secret fetch does. The caller's own token
//! never goes upstream.

use super::{Allowed, Configured, Flow, Outcome, Refused, Worker};
use crate::config::{ServiceExchange, Via};
use crate::headers::RequestHeaders;
use crate::host::{Host, LogLevel};
use crate::metrics::M;
use crate::outcome::Denial;
use crate::principal::Principal;
use crate::secrets::{Lookup, Secret};

impl Configured {
    /// Writes the request's headers through `commit` with the exchanged
    /// token, or without it (the stream then waits for it), or refuses.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn exchanged<H: Host>(
        &self,
        w: &mut Worker,
        host: &mut H,
        headers: &RequestHeaders,
        principal: &Principal,
        outcome: &Outcome,
        allowed: &Allowed,
        x: &ServiceExchange,
        commit: impl FnOnce(&mut H, &[(String, Secret)]) -> bool,
    ) -> Result<Flow, Refused> {
        let agent = || Some(outcome.agent.clone());
        let unavailable = |why: String| (Denial::ExchangeUnavailable(why), agent());
        let ex = match x.via {
            Via::TokenExchange => w.exchanger.as_mut(),
            Via::LinkedAccounts => w.linker.as_mut(),
        };
        let Some(ex) = ex else {
            return Err(unavailable(format!("no {} block", x.via.block())));
        };
        // The verified token jwt_authn checked: the subject token.
        let subject = headers
            .bearer()
            // One JWT and nothing else: what jwt_authn verified is the
            // first run of these characters after the scheme, and only
            // that may go to the token service.
            .filter(|t| {
                !t.is_empty()
                    && t.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
            })
            .ok_or_else(|| unavailable("the request carries no single token to exchange".into()))?;
        let choice = allowed.exchange.clone().unwrap_or_default();
        // The service's scopes are the most its upstream gets: the policy
        // narrows them, never asks for more (a rule computing scopes from
        // the request would otherwise widen them). None configured: the
        // token service decides, and the policy may name any.
        if let Some(asked) = &choice.scopes {
            if !x.scopes.is_empty() && !asked.iter().all(|s| x.scopes.contains(s)) {
                host.log(
                    LogLevel::Warn,
                    "agentplane: the policy's exchange scopes are not all the service's",
                );
                return Err((Denial::PolicyError, agent()));
            }
        }
        let mut scopes = choice.scopes.unwrap_or_else(|| x.scopes.clone());
        scopes.sort();
        scopes.dedup();
        let ask = crate::exchange::Ask {
            subject: Secret::new(subject),
            principal: outcome.principal.clone(),
            claims: principal.claims_digest().to_owned(),
            chain: principal
                .identity
                .chain
                .iter()
                .map(|c| c.sub.clone())
                .collect(),
            audience: choice.audience.unwrap_or_else(|| x.audience.clone()),
            scopes,
        };
        let before = ex.stats;
        let lookup = ex.request(host, &ask, host.stream_id());
        let after = ex.stats;
        w.metrics
            .add(host, M::TokenExchangeHit, after.hits - before.hits);
        w.metrics
            .add(host, M::TokenExchanged, after.exchanges - before.exchanges);
        let failed = || (Denial::HostFailure("request header write"), agent());
        match lookup {
            Lookup::Ready(set) => commit(host, &set)
                .then_some(Flow::Continue)
                .ok_or_else(failed),
            // The token is set when the stream resumes.
            Lookup::Pending => commit(host, &[]).then_some(Flow::Paused).ok_or_else(failed),
            Lookup::Failed(why) => Err((failure(why), agent())),
        }
    }
}

/// The refusal a failed exchange is: the caller's (403, marked by
/// [`crate::exchange::REFUSED`]), a link to make (marked by
/// [`crate::exchange::LINK`]) or the gateway's (503).
pub(super) fn failure(why: String) -> Denial {
    if let Some(url) = why.strip_prefix(crate::exchange::LINK) {
        return Denial::LinkRequired(url.to_string());
    }
    match why.strip_prefix(crate::exchange::REFUSED) {
        Some(rest) => Denial::ExchangeRefused(rest.to_string()),
        None => Denial::ExchangeUnavailable(why),
    }
}
