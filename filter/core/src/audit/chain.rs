//! The decision log's hash chain and its signed checkpoints.
//!
//! Every VM (one per Envoy worker) keeps one chain, named at configure
//! from the VM's random seed. When a record is handed to its sink (at
//! stream end, in the order the worker hands records over) it gets
//! `"log":{"chain":…,"prev":…,"seq":…}`: `seq` counts the chain's records
//! from 1 and `prev` is [`digest`] of the previous record's exact bytes
//! ([`GENESIS`] for the first). Removing, editing, swapping or inserting
//! a record breaks a link; rewriting the whole chain is what checkpoints
//! stop: a checkpoint names the chain's last record (its `seq` and
//! digest) at a time, signed with Ed25519 by the gateway's signing key
//! (the transaction-token key from OpenBao, published in the JWKS).
//!
//! The signature is over a domain-separated message ([`message`]), never
//! a JWS: a transaction token's signing input (`base64url.base64url`)
//! holds no newline, so no checkpoint signature can pass as a token's and
//! no token's as a checkpoint's. What does not live here: reading a log
//! and walking its chains (the `agentplane-log` command).

use crate::txn::Key;
use base64ct::{Base64UrlUnpadded, Encoding};
use ed25519_dalek::Signature;
use serde_json::Value as Json;
use sha2::{Digest, Sha256};

/// `prev` of a chain's first record.
pub const GENESIS: &str = "sha256:0000000000000000000000000000000000000000000000000000000000000000";

/// What every checkpoint line starts with (in Envoy's log).
pub const CHECKPOINT_PREFIX: &str = "agentplane-checkpoint ";

/// `type` of a checkpoint object (records have none).
pub const CHECKPOINT_TYPE: &str = "checkpoint";

/// One VM's chain: its name, the last record's sequence number and
/// digest, and what the last checkpoint covered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chain {
    name: String,
    seq: u64,
    last: String,
    /// `seq` the last checkpoint covered.
    checkpointed: u64,
    /// When the next periodic checkpoint is due (ns; 0: at the first tick).
    next_ns: u64,
}

/// `sha256:<hex>` of `bytes`.
pub fn digest(bytes: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let d = Sha256::digest(bytes);
    let mut out = String::with_capacity(7 + 64);
    out.push_str("sha256:");
    for b in d {
        for n in [b >> 4, b & 0xf] {
            out.push(char::from(HEX.get(usize::from(n)).copied().unwrap_or(b'0')));
        }
    }
    out
}

/// The bytes a checkpoint's signature covers.
pub fn message(chain: &str, seq: u64, digest: &str, time: &str) -> String {
    format!("agentplane-checkpoint\n{chain}\n{seq}\n{digest}\n{time}")
}

impl Chain {
    /// A fresh chain named from the VM's seed (distinct per VM: the seed
    /// is drawn from the host's randomness).
    pub fn new(seed: u64) -> Chain {
        // A digest of the seed, domain-separated: the name, in every record
        // and checkpoint, shows neither the seed nor the decision-id
        // generator's state (SplitMix64 of the seed, an invertible mix).
        let d = digest(&[b"agentplane-chain\n".as_slice(), &seed.to_le_bytes()].concat());
        Chain {
            name: d.get(7..23).unwrap_or("0000000000000000").to_string(),
            seq: 0,
            last: GENESIS.to_string(),
            checkpointed: 0,
            next_ns: 0,
        }
    }

    /// The chain's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The last record's sequence number (0 before the first).
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// Writes the next record's `"log":{…}` member (with its leading
    /// comma) into `out`; [`Chain::append`] must follow with the record.
    pub(super) fn write_link(&self, out: &mut String) {
        // The name is hex and the digest `sha256:` hex: nothing to escape.
        out.push_str(",\"log\":{\"chain\":\"");
        out.push_str(&self.name);
        out.push_str("\",\"prev\":\"");
        out.push_str(&self.last);
        out.push_str("\",\"seq\":");
        out.push_str(&self.seq.saturating_add(1).to_string());
        out.push('}');
    }

    /// Makes `record` (the exact text handed to the sink) the chain's last.
    pub(super) fn append(&mut self, record: &str) {
        self.seq = self.seq.saturating_add(1);
        self.last = digest(record.as_bytes());
    }

    /// Whether a periodic checkpoint is due at `now_ns` (every
    /// `interval_s`, and only when records came since the last one).
    pub fn due(&self, now_ns: u64, interval_s: u64) -> bool {
        interval_s > 0 && self.seq > self.checkpointed && now_ns >= self.next_ns
    }

    /// Sets when the next periodic checkpoint is due.
    pub fn schedule(&mut self, now_ns: u64, interval_s: u64) {
        self.next_ns = now_ns.saturating_add(interval_s.saturating_mul(1_000_000_000));
    }

    /// The checkpoint of the chain as it stands (its JSON), signed with
    /// `key`, or stating why it is not (`unsigned`); `None` when no record
    /// came since the last checkpoint.
    pub fn checkpoint(
        &mut self,
        now_ns: u64,
        key: Result<&Key, &str>,
        interval_s: u64,
    ) -> Option<String> {
        self.schedule(now_ns, interval_s);
        if self.seq == self.checkpointed {
            return None;
        }
        self.checkpointed = self.seq;
        let time = super::rfc3339(now_ns);
        let msg = message(&self.name, self.seq, &self.last, &time);
        let mut cp = serde_json::Map::new();
        cp.insert("type".into(), Json::from(CHECKPOINT_TYPE));
        cp.insert("chain".into(), Json::from(self.name.as_str()));
        cp.insert("seq".into(), Json::from(self.seq));
        cp.insert("digest".into(), Json::from(self.last.as_str()));
        cp.insert("time".into(), Json::from(time));
        match key {
            Ok(key) => {
                let sig = key.sign(msg.as_bytes());
                cp.insert("kid".into(), Json::from(key.kid.as_str()));
                cp.insert(
                    "sig".into(),
                    Json::from(Base64UrlUnpadded::encode_string(&sig.to_bytes())),
                );
            }
            Err(why) => {
                cp.insert("unsigned".into(), Json::from(why));
            }
        }
        Some(Json::Object(cp).to_string())
    }
}

/// What a checkpoint vouches for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vouched {
    /// The chain.
    pub chain: String,
    /// Its last record's sequence number then.
    pub seq: u64,
    /// That record's digest.
    pub digest: String,
    /// When.
    pub time: String,
    /// The key that signed it (`None`: unsigned, for the reason given).
    pub kid: Result<String, String>,
}

/// Reads a checkpoint object and checks its signature against a JWKS
/// document (`{"keys":[{"kid","x",…}]}`; Ed25519 keys). An unsigned
/// checkpoint reads as such (its `kid` is the reason); a signed one whose
/// key is unknown or whose signature does not verify is an error.
pub fn verify_checkpoint(cp: &Json, jwks: Option<&Json>) -> Result<Vouched, String> {
    let field = |k: &str| cp.get(k).and_then(Json::as_str);
    let (Some(chain), Some(seq), Some(digest), Some(time)) = (
        field("chain"),
        cp.get("seq").and_then(Json::as_u64),
        field("digest"),
        field("time"),
    ) else {
        return Err("a checkpoint needs chain, seq, digest and time".into());
    };
    let mut v = Vouched {
        chain: chain.to_string(),
        seq,
        digest: digest.to_string(),
        time: time.to_string(),
        kid: Err(String::new()),
    };
    let (Some(kid), Some(sig)) = (field("kid"), field("sig")) else {
        v.kid = Err(field("unsigned").unwrap_or("no signature").to_string());
        return Ok(v);
    };
    let jwks = jwks.ok_or_else(|| format!("signed by {kid}, but no JWKS to check it"))?;
    // Every key under the kid: a JWKS merged from archived ones may hold
    // two (a key replaced without a new kid), and a checkpoint is good if
    // either signed it.
    let xs: Vec<&str> = jwks
        .get("keys")
        .and_then(Json::as_array)
        .into_iter()
        .flatten()
        .filter(|k| k.get("kid").and_then(Json::as_str) == Some(kid))
        .filter_map(|k| k.get("x").and_then(Json::as_str))
        .collect();
    if xs.is_empty() {
        return Err(format!("signed by {kid}, a key the JWKS does not hold"));
    }
    let sig = Base64UrlUnpadded::decode_vec(sig)
        .ok()
        .and_then(|s| <[u8; 64]>::try_from(s.as_slice()).ok())
        .ok_or("the signature is not 64 bytes of base64url")?;
    let msg = message(chain, seq, digest, time);
    let mut last = Ok(());
    for x in xs {
        let key = crate::config::txn_public_key(x).map_err(|e| format!("key {kid}: {e}"));
        last = key.and_then(|key| {
            key.verify_strict(msg.as_bytes(), &Signature::from_bytes(&sig))
                .map_err(|_| format!("the signature does not verify with key {kid}"))
        });
        if last.is_ok() {
            break;
        }
    }
    last?;
    v.kid = Ok(kid.to_string());
    Ok(v)
}

#[cfg(test)]
#[path = "chain_tests.rs"]
mod tests;
