//! The decision: the MCP revision a message is sent under, the request's
//! action, the decision cache, and the policy's verdict turned into an
//! [`Outcome`] (with its limits and headers checked).

use super::{unroutable, Admitted, Allowed, Carried, Configured, Flow, Outcome, Refused, Worker};
use crate::audit::Trail;
use crate::cache::KeyFacts;
use crate::config::Protocol;
use crate::headers::{check_value, RequestHeaders};
use crate::host::{Host, LogLevel};
use crate::input::{self, RequestFacts};
use crate::metrics::M;
use crate::outcome::Denial;
use crate::policy::Verdict;
use crate::principal::Principal;
use std::rc::Rc;

impl Configured {
    /// Decides an admitted request (with its MCP message, for an MCP
    /// POST) and forwards or refuses it.
    pub(super) fn judge<H: Host>(
        &self,
        w: &mut Worker,
        host: &mut H,
        a: &Admitted,
        mcp: Option<&crate::mcp::Message>,
        trail: &mut Trail,
        carried: &mut Carried,
    ) -> Result<(String, Flow), Refused> {
        let route = input::parse_route(&a.path, &self.config).map_err(unroutable)?;
        let now = host.now_ns();
        let logging = self.config.decision_log.enabled;
        let principal = &a.principal;
        let headers = &a.headers;
        let method = a.method.as_str();
        if logging {
            trail.agent_type.clone_from(&principal.identity.agent_type);
            trail.team.clone_from(&principal.identity.team);
            trail.chain = (!principal.identity.chain.is_empty()).then(|| {
                principal
                    .identity
                    .chain
                    .iter()
                    .map(|a| a.sub.clone())
                    .collect()
            });
        }
        if let (true, Some(m)) = (self.config.tracing.attributes, mcp) {
            let (v, s) = (
                headers.get("mcp-protocol-version"),
                headers.get(crate::mcp::SESSION_HEADER),
            );
            crate::trace::message(host, m, v, s);
        }
        let resource = self.config.resource(route.service.unwrap_or(""));
        let (action, mcp_version) = match (resource.protocol, mcp) {
            (Protocol::Mcp, Some(m)) => {
                let version = self
                    .mcp_version(headers, m, resource)
                    .map_err(|e| (Denial::Mcp(e), Some(principal.identity.id.clone())))?;
                let action = match m.kind {
                    crate::mcp::Kind::Response => self.config.mcp.actions.get("response"),
                    _ => None,
                }
                .map(String::as_str)
                .or_else(|| {
                    m.method
                        .as_deref()
                        .and_then(|name| self.config.mcp.action_for(name))
                });
                if action.is_none() && m.kind == crate::mcp::Kind::Request {
                    // A method no action maps: unknown here, as a server
                    // answers one it does not implement.
                    let e = crate::mcp::McpError::new(
                        crate::mcp::code::METHOD_NOT_FOUND,
                        format!(
                            "method {:?} is not available through this gateway",
                            m.method.as_deref().unwrap_or_default()
                        ),
                    );
                    return Err((Denial::Mcp(e), Some(principal.identity.id.clone())));
                }
                (action, version)
            }
            (Protocol::Mcp, None) => (
                self.config.mcp.actions.get(method).map(String::as_str),
                None,
            ),
            (Protocol::Http, _) => (self.config.action_for(resource, method), None),
        };
        // The tool called: limits may count by it (only names they list),
        // and it goes upstream as `x-agent-tool` for fleet-wide limits.
        trail.tool = mcp
            .filter(|m| m.method.as_deref() == Some("tools/call"))
            .and_then(|m| m.name())
            .map(str::to_string);
        // A call to a pinned service's tool: the definition a list last
        // showed, and how it stands against its pin.
        let pins = w.policy.pins().clone();
        let pinned = (resource.protocol == Protocol::Mcp)
            .then(|| route.service.and_then(|s| Some((s, pins.service(s)?))))
            .flatten();
        let tool_pin = pinned
            .zip(trail.tool.as_deref())
            .map(|((service, sp), tool)| sp.called(host, &mut w.pins, now, service, tool));
        if tool_pin
            .as_ref()
            .is_some_and(|p| p.state == crate::mcp::pins::PinState::Changed)
        {
            w.metrics.add(host, M::ToolPinChanged, 1);
        }
        let request_id = trail.request_id.clone();
        let facts = RequestFacts {
            method,
            route: &route,
            host: a.authority.as_deref().unwrap_or_default(),
            id: &request_id,
            action,
            time_ns: now,
            source: a.source.as_deref(),
            transaction: a.transaction.as_deref(),
            envoy: (self.config.policy.input == crate::config::InputShape::Envoy).then(|| {
                let address = |side: &str| {
                    host.property(&[side, "address"])
                        .and_then(|b| String::from_utf8(b).ok())
                };
                crate::ext_authz::members(&crate::ext_authz::Facts {
                    headers,
                    id: &request_id,
                    method,
                    path: headers.get(":path").unwrap_or(route.raw_path),
                    host: a.authority.as_deref().unwrap_or_default(),
                    addresses: (address("source"), address("destination")),
                    jwt: &principal.jwt,
                    body: mcp
                        .and_then(|m| m.to_json().ok())
                        .and_then(|b| serde_json::from_slice(&b).ok()),
                })
            }),
        };
        let mcp_doc = || mcp.map(|m| input::mcp_doc(m, mcp_version.as_deref(), tool_pin.as_ref()));
        // The input document, built at most once: a list request keeps it
        // for its response, and the decision reuses that one.
        let build = || {
            input::build(
                headers,
                &self.config,
                &self.docs,
                principal,
                &facts,
                mcp_doc(),
            )
        };
        let list_doc = |c: &Carried| {
            c.list
                .as_ref()
                .filter(|j| j.field.is_some())
                .map(|j| j.doc.clone())
        };
        let key = w.cache.as_ref().map(|_| {
            self.key_plan.key(&KeyFacts {
                principal: principal.serial,
                service: route.service,
                action,
                method,
                host: facts.host,
                raw_path: route.raw_path,
                query: route.query,
                request_id: &request_id,
                headers,
                mcp: mcp.map(|m| (m, mcp_version.as_deref())),
                tool_pin: tool_pin.as_ref(),
                source: a.source.as_deref(),
                transaction: a.transaction.as_deref(),
            })
        });
        // Every response of an MCP service is read for list results: a
        // list request's answer is filtered by the policy, on this
        // request's input with the listed names added; any other list
        // result is refused (see `mcp::ListJob`).
        if resource.protocol == Protocol::Mcp {
            let field = mcp
                .and_then(|m| m.method.as_deref())
                .and_then(crate::mcp::list_field);
            carried.list = Some(crate::mcp::ListJob {
                field,
                doc: if field.is_some() {
                    build()
                } else {
                    regorus::Value::Null
                },
                private: mcp_version.as_deref().is_some_and(|v| v >= "2026-07-28"),
                form: None,
                key: key.clone(),
                pins: pinned
                    .filter(|_| field == Some("tools"))
                    .map(|(service, _)| (Rc::clone(&pins), service.to_string())),
                changed: Vec::new(),
                guarded: pinned.is_some(),
                events: Default::default(),
                phase: Default::default(),
            });
        }
        if let (Some(cache), Some(key)) = (&mut w.cache, &key) {
            let hit = cache.get(key, now);
            let m = if hit.is_some() {
                M::DecisionCacheHit
            } else {
                M::DecisionCacheMiss
            };
            w.metrics.add(host, m, 1);
            if let Some(outcome) = hit {
                trail.cached = true;
                // This request's own input: the cached decision was made on
                // one that agrees with it wherever the policy looks, but the
                // record describes this request (its path, query, headers,
                // message), not the one that filled the cache.
                let shadowing = self.shadowing(w, &a.decision_id);
                if logging || shadowing {
                    let doc = list_doc(carried).unwrap_or_else(build);
                    if shadowing {
                        self.shadow(w, host, doc.clone(), &outcome, trail);
                    }
                    if logging {
                        trail.input = Some(doc);
                    }
                }
                let v = mcp_version.as_deref();
                if let Some(flow) = self.gate(w, host, &outcome, a, mcp, v, trail, carried)? {
                    return Ok((outcome.agent.clone(), flow));
                }
                return self.forward(w, host, &outcome, a, &route, &request_id, trail, carried);
            }
        }
        let doc = list_doc(carried).unwrap_or_else(build);
        let shadow_doc = self.shadowing(w, &a.decision_id).then(|| doc.clone());
        let (outcome, valid_until) = self.authorize(w, host, principal, doc, trail);
        if let Some(doc) = shadow_doc {
            self.shadow(w, host, doc, &outcome, trail);
        }
        let outcome = Rc::new(outcome);
        if let (Some(cache), Some(key), Some(until)) = (&mut w.cache, key, valid_until) {
            cache.insert(key, Rc::clone(&outcome), now, until);
        }
        let v = mcp_version.as_deref();
        if let Some(flow) = self.gate(w, host, &outcome, a, mcp, v, trail, carried)? {
            return Ok((outcome.agent.clone(), flow));
        }
        self.forward(w, host, &outcome, a, &route, &request_id, trail, carried)
    }

    /// The MCP revision a message is sent under: the `mcp-protocol-version`
    /// header, or the message's own `_meta` (2026-07-28, which then needs
    /// the header too); both, when present, must agree and name a revision
    /// the service accepts, as must the one an `initialize` asks for; the
    /// mirror headers must agree with the body; from 2026-07-28 on a
    /// client answers the server through multi-round-trip requests, never
    /// with a JSON-RPC response.
    pub(super) fn mcp_version(
        &self,
        headers: &RequestHeaders,
        m: &crate::mcp::Message,
        resource: &crate::config::ResourceConfig,
    ) -> Result<Option<String>, crate::mcp::McpError> {
        use crate::mcp::{code, Kind, McpError};
        let header = headers.get("mcp-protocol-version");
        let meta = m.meta_version();
        let version = match (header, meta) {
            (Some(h), Some(b)) if h != b => {
                return Err(McpError::new(
                    code::HEADER_MISMATCH,
                    format!("MCP-Protocol-Version header {h:?} does not match the message's {b:?}"),
                ))
            }
            (None, Some(b)) => {
                return Err(McpError::new(
                    code::HEADER_MISMATCH,
                    format!("the message declares protocol version {b:?} in _meta but the MCP-Protocol-Version header is missing"),
                ))
            }
            (h, _) => h,
        };
        let accepted = resource.mcp_versions();
        // Without a header a request is taken as 2025-03-26, as the
        // specification tells servers to; `initialize` says its own.
        let assumed = match version {
            None if m.method.as_deref() != Some("initialize") => Some("2025-03-26"),
            v => v,
        };
        for v in assumed.iter().chain(m.requested_version().iter()) {
            if !accepted.iter().any(|a| a == v) {
                return Err(McpError::unsupported_version(v, &accepted));
            }
        }
        if m.kind == Kind::Response && version.is_some_and(|v| v >= "2026-07-28") {
            return Err(McpError::new(
                code::INVALID_REQUEST,
                "from 2026-07-28 on a client answers a server through multi-round-trip requests, not JSON-RPC responses",
            ));
        }
        m.check_mirrors(headers.get("mcp-method"), headers.get("mcp-name"), version)?;
        Ok(version.map(str::to_owned))
    }

    /// Decides for an identified request. Returns the outcome and, when the
    /// policy said so, until when the same request gets the same outcome.
    pub(super) fn authorize<H: Host>(
        &self,
        w: &mut Worker,
        host: &mut H,
        principal: &Principal,
        doc: regorus::Value,
        trail: &mut Trail,
    ) -> (Outcome, Option<u64>) {
        let identity = &principal.identity;
        let refuse = |d: Denial| {
            (
                Outcome {
                    agent: identity.id.clone(),
                    principal: principal.secrets_principal.clone(),
                    result: Err(d),
                },
                None,
            )
        };
        let trusted = match &principal.trusted {
            Ok(t) => t.clone(),
            Err(why) => return refuse(Denial::UnsafeIdentity(why.clone())),
        };
        let max = self.config.headers.max_value_bytes;
        if self.config.decision_log.enabled {
            trail.input = Some(doc.clone());
        }
        let t0 = host.now_ns();
        let evaluated = w.policy.evaluate(doc);
        let eval_ns = host.now_ns().saturating_sub(t0);
        trail.eval_ns = Some(eval_ns);
        w.metrics.record(host, M::PolicyEvalUs, eval_ns / 1_000);
        let verdict = match evaluated {
            Ok(v) => v,
            Err(e) => {
                host.log(LogLevel::Warn, &format!("agentplane: {e}"));
                return refuse(Denial::PolicyError);
            }
        };
        let Verdict {
            allowed,
            reasons,
            status,
            headers: extra,
            valid_until_ns,
            scope,
            visible: _,
            limits,
            approval,
            exchange,
            response_headers,
            remove_headers,
            body,
        } = verdict;
        let reserved = |lower: &str| {
            lower.starts_with(':')
                || self.config.must_strip(lower.as_bytes())
                || lower == "x-request-id"
        };
        // Response headers the filter owns: the decision and trace ids,
        // its timing.
        let owned = |lower: &str| {
            lower.starts_with(':')
                || [
                    super::DECISION_ID_HEADER,
                    super::TRACE_ID_HEADER,
                    super::METRICS_HEADER,
                ]
                .contains(&lower)
        };
        let bad_header = extra
            .iter()
            .map(|(k, v)| (k, v, reserved(k) || k == "authorization"))
            .chain(response_headers.iter().map(|(k, v)| (k, v, owned(k))))
            .find(|(k, v, taken)| k.is_empty() || *taken || check_value(v, max).is_err())
            .map(|(k, _, _)| k.clone())
            .or_else(|| remove_headers.iter().find(|k| reserved(k)).cloned());
        if let Some(k) = bad_header {
            host.log(
                LogLevel::Warn,
                &format!("agentplane: policy header {k:?} rejected"),
            );
            return refuse(Denial::PolicyError);
        }
        let result = if allowed {
            Ok(Allowed {
                response_headers,
                remove_headers,
                trusted,
                extra,
                team: identity.team.clone(),
                kind: identity.agent_type.clone(),
                limits,
                approval,
                exchange,
            })
        } else {
            let status = status.unwrap_or(403);
            let mut headers = extra;
            headers.extend(response_headers);
            if let Some(scope) = scope.filter(|_| status == 403) {
                // RFC 6750 §3.1: the client can ask for this scope and retry.
                let mut v = format!(
                    r#"Bearer error="insufficient_scope", scope="{scope}", error_description="missing scope(s): {scope}""#
                );
                if let Some(url) =
                    crate::oauth::challenge_url(&self.config, trail.service.as_deref())
                {
                    v.push_str(&format!(r#", resource_metadata="{url}""#));
                }
                headers.retain(|(k, _)| !k.eq_ignore_ascii_case("www-authenticate"));
                headers.push(("www-authenticate".into(), v));
            }
            Err(Denial::Policy {
                status,
                reasons,
                headers,
                body,
            })
        };
        (
            Outcome {
                agent: identity.id.clone(),
                principal: principal.secrets_principal.clone(),
                result,
            },
            valid_until_ns,
        )
    }
}
