//! Transaction tokens on the request path (see [`crate::txn`]): the JWKS
//! the filter serves, inbound tokens verified into `input.transaction`,
//! tokens minted (or reused) for allowed requests, and the signing key
//! read from Vault on the root context.

use super::{Admitted, Configured, Worker};
use crate::host::{Host, LogLevel};
use crate::metrics::M;
use crate::outcome::{Denial, Served};
use crate::txn::{self, Inbound, Keyring, Tctx, TxnClaims};
use std::rc::Rc;

const NS: u64 = 1_000_000_000;

fn now_s(now_ns: u64) -> i64 {
    i64::try_from(now_ns / NS).unwrap_or(i64::MAX)
}

/// Appends a length-prefixed field to a reuse key.
fn field(k: &mut Vec<u8>, v: &[u8]) {
    k.extend_from_slice(&u32::try_from(v.len()).unwrap_or(u32::MAX).to_le_bytes());
    k.extend_from_slice(v);
}

impl Configured {
    /// `GET` of the configured JWKS path: the public keys, or 503 until
    /// the key has loaded. Public, like protected resource metadata.
    pub(super) fn serve_jwks(&self, w: &Worker, method: &str, path: &str) -> Option<Served> {
        let cfg = self.config.txn_token.as_ref()?;
        let bare = path.split(['?', '#']).next().unwrap_or(path);
        if bare != cfg.jwks_path || !(method == "GET" || method == "HEAD") {
            return None;
        }
        let jwks = w.txn.as_ref()?.ring.jwks().map(str::to_owned);
        Some(jwks.map_or(Served::JwksUnavailable, Served::Jwks))
    }

    /// The request's `Txn-Token`, verified and presented by a party to it
    /// (`agent`, the request's verified identity); `None` when it has none.
    pub(super) fn inbound_txn<H: Host>(
        &self,
        w: &mut Worker,
        host: &mut H,
        raw: Option<&str>,
        agent: &str,
    ) -> Result<Option<Rc<Inbound>>, Denial> {
        let (Some(cfg), Some(raw)) = (self.config.txn_token.as_ref(), raw) else {
            return Ok(None);
        };
        let raw = raw.trim();
        let now = now_s(host.now_ns());
        let Some(s) = w.txn.as_mut() else {
            return Err(Denial::TxnTokenUnavailable("no signer"));
        };
        let bound = |t: Rc<Inbound>| match t.presented_by(agent) {
            Ok(()) => Ok(Some(t)),
            Err(e) => Err(Denial::InvalidTxnToken(e.0)),
        };
        // Checked on every request, cached or not: one verification serves
        // its parties, never whoever else presents the same bytes.
        if let Some(t) = s.verified(raw, now) {
            return bound(t);
        }
        if s.ring.current.is_none() {
            return Err(Denial::TxnTokenUnavailable("signing key not loaded"));
        }
        let t =
            Rc::new(txn::verify(raw, &s.ring, cfg, now).map_err(|e| Denial::InvalidTxnToken(e.0))?);
        s.remember(raw, Rc::clone(&t), cfg.max_entries, now);
        w.metrics.add(host, M::TxnVerified, 1);
        bound(t)
    }

    /// The token an allowed request to `service` carries: reused while
    /// fresh, else signed now.
    pub(super) fn txn_token_for<H: Host>(
        &self,
        w: &mut Worker,
        host: &mut H,
        a: &Admitted,
        service: &str,
        tool: Option<&str>,
    ) -> Result<Rc<str>, Denial> {
        let cfg = self
            .config
            .txn_token
            .as_ref()
            .ok_or(Denial::TxnTokenUnavailable("not configured"))?;
        let s = w
            .txn
            .as_mut()
            .ok_or(Denial::TxnTokenUnavailable("no signer"))?;
        let identity = &a.principal.identity;
        let req_wl = a
            .source
            .as_deref()
            .and_then(|s| s.spiffe_id())
            .unwrap_or(&identity.id);
        // Everything the claims are made of but the decision id: not the
        // principal's serial, which a refreshed token or an evicted
        // principal changes while the identity stays the same.
        let mut key = Vec::with_capacity(128);
        field(&mut key, identity.id.as_bytes());
        field(
            &mut key,
            identity.agent_type.as_deref().unwrap_or("\u{0}").as_bytes(),
        );
        field(
            &mut key,
            identity.team.as_deref().unwrap_or("\u{0}").as_bytes(),
        );
        field(&mut key, identity.permissions.join(" ").as_bytes());
        let actors = u32::try_from(identity.chain.len()).unwrap_or(u32::MAX);
        key.extend_from_slice(&actors.to_le_bytes());
        for actor in &identity.chain {
            field(&mut key, actor.sub.as_bytes());
            match &actor.permissions {
                Some(ps) => field(&mut key, ps.join(" ").as_bytes()),
                None => field(&mut key, b"\x00"),
            }
        }
        field(&mut key, service.as_bytes());
        field(&mut key, tool.unwrap_or("\u{0}").as_bytes());
        field(&mut key, req_wl.as_bytes());
        if let Some(t) = &a.transaction {
            for f in t.key_fields() {
                field(&mut key, f.as_bytes());
            }
        }
        let now_ns = host.now_ns();
        if let Some(t) = s.reuse(&key, now_ns) {
            w.metrics.add(host, M::TxnReused, 1);
            return Ok(t);
        }
        let Some(signing) = s.ring.current.as_ref() else {
            return Err(Denial::TxnTokenUnavailable("signing key not loaded"));
        };
        let claims = self.claims(cfg, a, service, tool, req_wl)?;
        let token: Rc<str> = txn::mint(signing, claims, now_s(now_ns), cfg.ttl_s)
            .map_err(|_| Denial::TxnTokenUnavailable("signing failed"))?
            .into();
        let until = now_ns.saturating_add(cfg.reuse_s.saturating_mul(NS));
        s.keep(key, Rc::clone(&token), until, cfg.max_entries, now_ns);
        w.metrics.add(host, M::TxnMinted, 1);
        Ok(token)
    }

    /// What a minted token states. With an inbound token the transaction,
    /// subject and earlier actors are kept, this agent becomes the
    /// outermost actor, and the scope only narrows.
    fn claims(
        &self,
        cfg: &txn::TxnConfig,
        a: &Admitted,
        service: &str,
        tool: Option<&str>,
        req_wl: &str,
    ) -> Result<TxnClaims, Denial> {
        let identity = &a.principal.identity;
        let own: Vec<String> = identity.chain.iter().map(|c| c.sub.clone()).collect();
        let mut scope: Vec<&str> = identity
            .permissions
            .iter()
            .map(String::as_str)
            .filter(|p| {
                identity
                    .chain
                    .iter()
                    .filter_map(|c| c.permissions.as_ref())
                    .all(|ps| ps.iter().any(|q| q == p))
            })
            .collect();
        let (sub, actors, txn_id) = match &a.transaction {
            Some(t) => {
                scope.retain(|p| t.claims.scope.split_ascii_whitespace().any(|q| q == *p));
                let mut actors = if own.is_empty() {
                    vec![identity.id.clone()]
                } else {
                    own
                };
                actors.extend(t.actors.iter().cloned());
                (t.claims.sub.clone(), actors, t.claims.txn.clone())
            }
            None => (identity.id.clone(), own, a.decision_id.clone()),
        };
        if actors.len() > 16 {
            return Err(Denial::InvalidTxnToken("delegation chain too long"));
        }
        Ok(TxnClaims {
            iss: cfg.issuer.clone(),
            aud: cfg.audience.clone(),
            txn: txn_id,
            sub,
            scope: scope.join(" "),
            req_wl: req_wl.to_string(),
            svc: service.to_string(),
            tool: tool.map(str::to_owned),
            act: txn::nest(&actors),
            tctx: Tctx {
                agent: identity.id.clone(),
                agent_type: identity.agent_type.clone(),
                team: identity.team.clone(),
                decision: a.decision_id.clone(),
            },
        })
    }

    /// Root context: reads the signing key when it is due (at configure,
    /// then every `refresh_s`, sooner after a failure).
    pub(super) fn txn_tick<H: Host>(&self, w: &mut Worker, host: &mut H) {
        let (Some(cfg), Some(vault), Some(s)) = (
            self.config.txn_token.as_ref(),
            self.config.vault.as_ref(),
            w.txn.as_mut(),
        ) else {
            return;
        };
        let now = host.now_ns();
        if s.inflight.is_some() || now < s.next_read_ns {
            return;
        }
        let token = host
            .env_var(&cfg.vault_token_env)
            .filter(|t| !t.trim().is_empty());
        let sent = match token {
            None => Err(format!(
                "environment variable {} is not set for the VM (vm_config.environment_variables)",
                cfg.vault_token_env
            )),
            Some(token) => {
                let path = format!("/v1/{}", cfg.key_path);
                host.dispatch_http_call(
                    &vault.cluster,
                    &[
                        (":method", "GET"),
                        (":path", &path),
                        (":authority", &vault.authority),
                        ("x-vault-token", token.trim()),
                    ],
                    None,
                    vault.timeout_ms,
                )
            }
        };
        match sent {
            Ok(t) => s.inflight = Some(t),
            Err(why) => Self::key_failed(host, s, &format!("cannot read it: {why}")),
        }
    }

    fn key_failed<H: Host>(host: &mut H, s: &mut txn::Signer, why: &str) {
        s.failures = s.failures.saturating_add(1);
        let backoff_ms = (200u64 << s.failures.min(5)).min(5_000);
        s.next_read_ns = host.now_ns().saturating_add(backoff_ms * 1_000_000);
        if s.failures <= 3 || s.failures % 50 == 0 {
            host.log(
                LogLevel::Warn,
                &format!(
                    "agentplane: txn-token signing key not loaded ({} attempts): {why}",
                    s.failures
                ),
            );
        }
    }

    /// Root context: the key read answered. False when `token` is not it.
    pub(super) fn txn_response<H: Host>(
        &self,
        w: &mut Worker,
        host: &mut H,
        token: u32,
        status: Option<u16>,
        body: Option<&[u8]>,
    ) -> bool {
        let (Some(cfg), Some(s)) = (self.config.txn_token.as_ref(), w.txn.as_mut()) else {
            return false;
        };
        if s.inflight != Some(token) {
            return false;
        }
        s.inflight = None;
        let read = match (status, body) {
            (Some(200), Some(b)) => Keyring::from_kv(b),
            (Some(code), _) => Err(format!("vault answered {code}")),
            (None, _) => Err("vault unreachable".into()),
        };
        match read {
            Ok(ring) => {
                let kid = ring
                    .current
                    .as_ref()
                    .map(|k| k.kid.clone())
                    .unwrap_or_default();
                let fresh = s.ring.current.as_ref().is_none_or(|k| k.kid != kid);
                s.install(ring);
                s.failures = 0;
                s.next_read_ns = host
                    .now_ns()
                    .saturating_add(cfg.refresh_s.saturating_mul(NS));
                if fresh {
                    host.log(
                        LogLevel::Info,
                        &format!("agentplane: txn-token signing key {kid} loaded"),
                    );
                }
            }
            Err(why) => Self::key_failed(host, s, &why),
        }
        true
    }
}
