//! Forwarding an allowed request: the session check, its limits, its
//! transaction token, then the trusted headers, the route and the secrets
//! written in one host call.

use super::{
    bad, Admitted, Carried, Configured, Flow, Outcome, Refused, Worker, DECISION_ID_HEADER,
    TOOL_HEADER,
};
use crate::audit::Trail;
use crate::config::{Protocol, SERVICE_HEADER};
use crate::headers::{self, check_value};
use crate::host::Host;
use crate::input::Route;
use crate::outcome::Denial;

/// Who an allowed request is from, for secret paths.
pub(super) struct Who<'a> {
    pub(super) agent: &'a str,
    pub(super) principal: &'a str,
    pub(super) team: Option<&'a str>,
    pub(super) kind: Option<&'a str>,
}

impl Configured {
    /// Forwards an allowed outcome or refuses a denied one. Forwarding
    /// writes the request's headers back in one host call: the client's
    /// minus what was stripped (and its token, unless forwarded), plus
    /// the trusted identity, the authorized service for Envoy to route on,
    /// the service's own path and any secrets. Every write must succeed or
    /// the request is refused.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn forward<H: Host>(
        &self,
        w: &mut Worker,
        host: &mut H,
        outcome: &Outcome,
        a: &Admitted,
        route: &Route<'_>,
        request_id: &str,
        trail: &mut Trail,
        carried: &mut Carried,
    ) -> Result<(String, Flow), Refused> {
        let headers = &a.headers;
        let agent = &outcome.agent;
        let allowed = match &outcome.result {
            Ok(a) => a,
            Err(d) => return Err((d.clone(), Some(agent.clone()))),
        };
        // Before anything counts: a session only its own principal uses.
        if self.config.resource(route.service.unwrap_or("")).protocol == Protocol::Mcp {
            let ticket = crate::session::Ticket::new(
                &a.principal,
                &a.method,
                headers.get(crate::session::HEADER),
            );
            let admitted = crate::session::Table::new(&self.config.mcp).admit(host, &ticket);
            trail.session = Some(ticket);
            admitted.map_err(|r| (Denial::McpSession(r), Some(agent.clone())))?;
        }
        if !allowed.limits.is_empty() {
            let facts = crate::limits::Facts {
                agent,
                team: allowed.team.as_deref(),
                agent_type: allowed.kind.as_deref(),
                service: route.service,
                tool: trail.tool.as_deref(),
            };
            carried.held = self
                .meter(w, host, &allowed.limits, &facts)
                .map_err(|r| (Denial::RateLimited(r), Some(agent.clone())))?;
        }
        let resource = self.config.resource(route.service.unwrap_or(""));
        let tool = trail
            .tool
            .clone()
            .filter(|t| check_value(t, self.config.headers.max_value_bytes).is_ok());
        // A registered service only: config refuses txn_token elsewhere.
        let signed = match route.service.filter(|_| resource.txn_token) {
            Some(service) => Some(
                self.txn_token_for(w, host, a, service, tool.as_deref())
                    .map_err(|d| (d, Some(agent.clone())))?,
            ),
            None => None,
        };
        let mut writes: Vec<(&str, &str)> = allowed
            .trusted
            .iter()
            .filter(|_| resource.identity_headers)
            .map(|(k, v)| (*k, v.as_str()))
            .chain(allowed.extra.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .collect();
        if let Some(t) = &signed {
            writes.push((crate::txn::HEADER, t));
            writes.push((DECISION_ID_HEADER, &a.decision_id));
        }
        writes.push(("x-request-id", request_id));
        if let Some(tool) = &tool {
            writes.push((TOOL_HEADER, tool));
        }
        if let Some(service) = route.service {
            if check_value(service, self.config.headers.max_value_bytes).is_err() {
                return Err(bad("service name cannot be sent as a header"));
            }
            writes.push((SERVICE_HEADER, service));
        }
        if let Some(p) = &route.upstream_path {
            writes.push((":path", p.as_str()));
        }
        // The body was replaced by the parsed message: its length with it.
        let body_len = trail
            .body_len
            .filter(|_| headers.get("content-length").is_some())
            .map(|n| n.to_string());
        if let Some(n) = &body_len {
            writes.push(("content-length", n.as_str()));
        }
        carried
            .response_headers
            .clone_from(&allowed.response_headers);
        let mut drop: Vec<&str> = allowed.remove_headers.iter().map(String::as_str).collect();
        // An upstream that takes an exchanged token never gets the
        // caller's, whatever `identity.forward_token` says.
        let exchange = resource.token_exchange.as_ref();
        if !self.config.identity.forward_token || exchange.is_some() {
            drop.push("authorization");
        }
        if signed.is_none() && self.config.txn_token.is_some() {
            // An inbound token is for this hop: never passed on as is.
            drop.push(crate::txn::HEADER);
        }
        if resource.protocol == Protocol::Mcp {
            // Responses stay readable for list filtering.
            drop.push("accept-encoding");
        }
        let who = Who {
            agent,
            principal: &outcome.principal,
            team: allowed.team.as_deref(),
            kind: allowed.kind.as_deref(),
        };
        let commit = |host: &mut H, secret: &[(String, crate::secrets::Secret)]| {
            let mut all = writes.clone();
            all.extend(secret.iter().map(|(k, v)| (k.as_str(), v.expose())));
            headers::rewrite(host, headers, &drop, &all)
        };
        let flow = match exchange {
            Some(x) => {
                self.exchanged(w, host, headers, &a.principal, outcome, allowed, x, commit)?
            }
            None => self.secrets(w, host, headers, route.service, &who, trail, commit)?,
        };
        Ok((agent.clone(), flow))
    }
}
