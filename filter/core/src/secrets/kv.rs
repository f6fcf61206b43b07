//! Reading secrets: the read callout (a GET of `/v1/<path>` with the
//! agent's Vault token, for KV v2 and dynamic credentials alike), keeping
//! what it returns (here and in shared data, until its TTL less the
//! renewal margin), and the KV v2 specifics: fields in `data.data`, cached
//! for `vault.kv_ttl_s`, one field into one header or the bearer token.
//! Dynamic credentials' own shape is in database.rs.

use super::broker::{Broker, Job, Outcome};
use super::database;
use super::keys::value_key;
use super::plan::{string_fields, usable, Fields, Lease, Need, Secret, SEC};
use crate::config::{KvInto, SecretConfig, VaultConfig};
use crate::host::Host;
use serde_json::Value;

impl Job {
    /// The read callout for secret #`n`, carrying the first requester's
    /// trace context.
    pub(super) fn call_read<H: Host>(
        &self,
        cfg: &VaultConfig,
        host: &mut H,
        n: usize,
    ) -> Result<u32, String> {
        let need = self.needs.get(n).ok_or("no such secret")?;
        let token = self.token.as_ref().ok_or("no vault token")?;
        let path = format!("/v1/{}", need.path);
        let mut headers = vec![
            (":method", "GET"),
            (":path", path.as_str()),
            (":authority", cfg.authority.as_str()),
            ("x-vault-token", token.expose()),
        ];
        headers.extend(self.trace.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        host.dispatch_http_call(&cfg.cluster, &headers, None, cfg.timeout_ms)
    }
}

impl Broker {
    /// Job `i`'s read of secret #`n` answered 200 with `v`: its fields,
    /// kept for their lease (unless it is shorter than the renewal margin:
    /// then they serve this job only).
    pub(super) fn read<H: Host>(
        &mut self,
        host: &mut H,
        i: usize,
        n: usize,
        v: &Value,
        now: u64,
        what: &str,
    ) -> Outcome {
        let margin = self.cfg.renew_margin_s.saturating_mul(SEC);
        let kv_ttl = self.cfg.kv_ttl_s.saturating_mul(SEC);
        let Some(job) = self.jobs.get_mut(i) else {
            return Outcome::Fail(format!("{what}: job lost"));
        };
        let need = job.needs.get(n);
        let is_kv = need.is_some_and(|n| n.spec.is_kv());
        match (need, parse_read(v, is_kv, kv_ttl)) {
            (Some(need), Some((fields, ttl))) => {
                let until = now.saturating_add(ttl);
                if until.saturating_sub(margin) > now {
                    self.values.insert(
                        (job.agent.clone(), need.path.clone()),
                        Lease {
                            value: fields.clone(),
                            until_ns: until - margin,
                        },
                    );
                    let map: serde_json::Map<String, Value> = fields
                        .iter()
                        .map(|(k, v)| (k.clone(), Value::from(v.expose())))
                        .collect();
                    let v = serde_json::json!({"until": until - margin, "fields": map});
                    host.shared_set(
                        &value_key(&self.cfg, &job.agent, &need.path),
                        v.to_string().as_bytes(),
                        None,
                    );
                }
                job.fetched.insert(need.path.clone(), fields);
                Outcome::Done
            }
            _ => Outcome::Fail(format!("{what}: no secret data")),
        }
    }
}

/// A read's fields and their TTL in nanoseconds. KV v2: `data.data` holds
/// the fields (a deleted version has `data.data: null`, so none), kept
/// for `kv_ttl`; dynamic credentials: [`database::parse`]. Only string
/// fields are kept.
fn parse_read(v: &Value, kv: bool, kv_ttl: u64) -> Option<(Fields, u64)> {
    if kv {
        Some((
            string_fields(v.get("data")?.get("data")?.as_object()?),
            kv_ttl,
        ))
    } else {
        database::parse(v)
    }
}

impl Need {
    /// Secret #`i`'s configured field, as the bearer token or into its
    /// header.
    pub(super) fn kv_headers(
        &self,
        i: usize,
        fields: &Fields,
        out: &mut Vec<(String, Secret)>,
    ) -> Result<(), String> {
        let SecretConfig::Kv { field, into, .. } = &self.spec else {
            return Err(format!("secret #{i} is not a KV secret"));
        };
        let v = usable(fields, i, field)?;
        match into {
            KvInto::Bearer => out.push((
                "authorization".into(),
                Secret::new(format!("Bearer {}", v.expose())),
            )),
            KvInto::Header(h) => out.push((h.to_ascii_lowercase(), v.clone())),
        }
        Ok(())
    }
}
