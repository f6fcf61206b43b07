//! The headers phase: strip what the client says about identity, read the
//! ids, the request line and the verified identity, and answer the public
//! documents (protected resource metadata, JWKS). Nothing is decided here.

use super::{Admitted, Configured, Refused, Worker};
use crate::audit::Trail;
use crate::claims::ClaimsError;
use crate::headers::{self, check_value};
use crate::host::Host;
use crate::input;
use crate::metrics::M;
use crate::oauth::Metadata;
use crate::outcome::{Denial, Served};
use crate::principal::Principal;
use std::rc::Rc;

/// What the headers phase ends in.
#[derive(Debug)]
pub(super) enum Admission {
    /// A request to decide.
    Decide(Admitted),
    /// A request the filter answers itself (protected resource metadata,
    /// the JWKS).
    Answer(Served),
}

pub(super) fn bad(why: impl Into<String>) -> Refused {
    (Denial::BadRequest(why.into()), None)
}

/// A path the filter will not decide: 403 when it names a service other
/// than the one this proxy delivers to (`routing.local_service`), else 400.
pub(super) fn unroutable(e: input::RouteError) -> Refused {
    match e {
        input::RouteError::OtherService { local, named } => {
            (Denial::OtherService { local, named }, None)
        }
        other => bad(other.to_string()),
    }
}

pub(super) fn unauthorized(e: ClaimsError) -> Refused {
    (Denial::Unauthorized(e), None)
}

/// HTTP methods are case-sensitive tokens (RFC 9110 §9.1), but frameworks
/// upstream often compare them case-insensitively: the policy sees the
/// upper-cased method, so `delete` is decided as `DELETE`.
pub(super) fn normalize_method(m: &str) -> Result<String, Refused> {
    let token = !m.is_empty()
        && m.len() <= 32
        && m.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    if !token {
        return Err(bad("malformed :method"));
    }
    Ok(m.to_ascii_uppercase())
}

impl Configured {
    /// The headers the filter reads: each must be UTF-8 and single.
    pub(super) fn read_headers(&self) -> impl Iterator<Item = &str> {
        [
            ":method",
            ":path",
            ":authority",
            "authorization",
            "x-request-id",
            "traceparent",
            "tracestate",
            "mcp-protocol-version",
            "mcp-method",
            "mcp-name",
            crate::session::HEADER,
            crate::txn::HEADER,
        ]
        .into_iter()
        .chain(self.config.headers.input.iter().map(String::as_str))
    }

    /// The headers phase: strips, reads the ids, the identity and the
    /// request line. Nothing is decided yet.
    pub(super) fn admit<H: Host>(
        &self,
        w: &mut Worker,
        host: &mut H,
        decision_id: &str,
        trail: &mut Trail,
        reserved: &mut bool,
    ) -> Result<Admission, Refused> {
        // Before anything else: nothing the client says about identity
        // survives (set aside now, gone from the request when it is
        // forwarded; a refused request goes nowhere).
        let headers = headers::read(host, &self.config)
            .ok_or((Denial::HostFailure("request headers"), None))?;
        w.metrics
            .add(host, M::HeadersStripped, headers.stripped as u64);
        // The ids the filter logs are its own unless the edge is trusted to
        // have set x-request-id (headers.trust_request_id).
        let max = self.config.headers.max_value_bytes;
        trail.request_id = headers
            .get("x-request-id")
            .filter(|_| self.config.headers.trust_request_id)
            .filter(|v| !v.is_empty() && check_value(v, max).is_ok())
            .unwrap_or(decision_id)
            .to_string();
        headers
            .check_read(self.read_headers())
            .map_err(|e| bad(e.to_string()))?;
        let method = normalize_method(
            headers
                .get(":method")
                .ok_or_else(|| bad("missing :method"))?,
        )?;
        let path = headers
            .get(":path")
            .ok_or_else(|| bad("missing :path"))?
            .to_string();
        // Protected resource metadata is public: served before identity.
        if let Some(m) = crate::oauth::serve(&method, &path, &self.config) {
            return Ok(Admission::Answer(match m {
                Metadata::Document(doc) => Served::Metadata(doc),
                Metadata::NotFound => Served::NoMetadata,
            }));
        }
        if let Some(served) = self.serve_jwks(w, &method, &path) {
            return Ok(Admission::Answer(served));
        }
        if self.config.decision_log.mandatory {
            if !self.reserve_log(w) {
                return Err((Denial::LogUnavailable, None));
            }
            *reserved = true;
        }
        // Refuse a malformed path before anything waits for a body.
        let service = input::parse_route(&path, &self.config)
            .map_err(unroutable)?
            .service
            .map(str::to_owned);
        trail.service.clone_from(&service);
        let raw = host
            .property(&["metadata"])
            .ok_or_else(|| unauthorized(ClaimsError::Missing))?;
        let authority = headers.get(":authority").map(str::to_owned);
        let principal = self.principal(w, &raw)?;
        // RFC 8707: a token issued for another service is refused here,
        // before the policy or a cached decision sees it.
        crate::audience::check(&self.config, service.as_deref(), &principal.audiences)
            .map_err(|e| (Denial::Unauthorized(e), Some(principal.identity.id.clone())))?;
        let transaction = self
            .inbound_txn(
                w,
                host,
                headers.get(crate::txn::HEADER),
                &principal.identity.id,
            )
            .map_err(|d| (d, Some(principal.identity.id.clone())))?;
        Ok(Admission::Decide(Admitted {
            decision_id: decision_id.to_string(),
            reserved: *reserved,
            headers,
            principal,
            method,
            path,
            service,
            authority,
            source: self
                .config
                .source
                .peer_certificate
                .then(|| Box::new(crate::source::Source::read(host))),
            transaction,
        }))
    }

    /// The principal for this request's verified metadata, from the
    /// worker's principals when its bytes were seen before.
    pub(super) fn principal(&self, w: &mut Worker, raw: &[u8]) -> Result<Rc<Principal>, Refused> {
        let max = self.config.headers.max_value_bytes;
        w.principals
            .resolve(raw, &self.config.identity, max)
            .map_err(unauthorized)
    }

    /// With mandatory logging, reserves the record's place in the
    /// collector buffer; false when there is none.
    pub(super) fn reserve_log(&self, w: &mut Worker) -> bool {
        w.shipper.as_mut().is_some_and(|s| s.reserve())
    }
}
