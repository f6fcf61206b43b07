//! Strict JSON: the one parser for every JSON-RPC message the filter
//! decides on or filters. It refuses what two parsers could read
//! differently: duplicate keys (also keys equal under Unicode case
//! folding, which Go's and .NET's decoders match), nesting past a bound,
//! numbers out of range, invalid UTF-8 and lone surrogates.

use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};
use std::borrow::Cow;
use std::collections::BTreeSet;
use std::fmt;

/// A key as the decoders that match keys regardless of case see it: Go's
/// `encoding/json` (each rune to upper case: `ſ`→`S`, `ı`→`I`), .NET
/// (upper invariant), Python's `casefold` (`ß`→`ss`). Upper then lower
/// case equates every pair any of them equates (and a few more, which
/// only refuses more).
pub fn fold(key: &str) -> Cow<'_, str> {
    if key.bytes().all(|b| b.is_ascii() && !b.is_ascii_uppercase()) {
        Cow::Borrowed(key)
    } else if key.is_ascii() {
        Cow::Owned(key.to_ascii_lowercase())
    } else {
        Cow::Owned(key.to_uppercase().to_lowercase())
    }
}

/// Parses JSON into a value, refusing duplicate object keys (exact, or
/// equal under [`fold`]) and nesting deeper than `max_depth`.
pub fn strict_json(body: &[u8], max_depth: usize) -> Result<Value, serde_json::Error> {
    let mut d = serde_json::Deserializer::from_slice(body);
    let v = Strict { depth: max_depth }.deserialize(&mut d)?;
    d.end()?;
    Ok(v)
}

struct Strict {
    depth: usize,
}

impl Strict {
    fn inner<E: de::Error>(&self) -> Result<Strict, E> {
        match self.depth.checked_sub(1) {
            Some(depth) if depth > 0 => Ok(Strict { depth }),
            _ => Err(E::custom("nested too deeply")),
        }
    }
}

impl<'de> DeserializeSeed<'de> for Strict {
    type Value = Value;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Strict {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        serde_json::Number::from_f64(v)
            .map(Value::Number)
            .ok_or_else(|| E::custom("number out of range"))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_string()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(v) = seq.next_element_seed(self.inner()?)? {
            items.push(v);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        // Folded keys: a server on Go or .NET would take `Name` for `name`
        // (the last one wins there), so both may not stand.
        let mut folded: BTreeSet<String> = BTreeSet::new();
        while let Some(k) = map.next_key::<String>()? {
            if out.contains_key(&k) {
                return Err(de::Error::custom(format!("duplicate key {k:?}")));
            }
            if !folded.insert(fold(&k).into_owned()) {
                return Err(de::Error::custom(format!(
                    "duplicate key {k:?} (another key differs from it only in letter case)"
                )));
            }
            let v = map.next_value_seed(self.inner()?)?;
            out.insert(k, v);
        }
        Ok(Value::Object(out))
    }
}
