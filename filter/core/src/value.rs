//! Direct conversions between `serde_json::Value` and `regorus::Value`.
//!
//! regorus' own `From<serde_json::Value>` goes through serde and costs
//! several microseconds per input document; walking the tree and building
//! values directly is several times cheaper, and this is the request path.
//! The readers ([`number`], [`is_null`], [`items`], [`member`], [`str_of`])
//! let the policy's answer be read in place, each value meaning what its
//! JSON ([`from_rego`]) would mean.

use regorus::Value as Rego;
use serde_json::{Map, Number, Value as Json};
use std::collections::BTreeMap;

/// Builds a regorus value from JSON.
pub fn to_rego(v: &Json) -> Rego {
    match v {
        Json::Null => Rego::Null,
        Json::Bool(b) => Rego::from(*b),
        Json::Number(n) => number_to_rego(n),
        Json::String(s) => Rego::from(s.as_str()),
        Json::Array(items) => Rego::from(items.iter().map(to_rego).collect::<Vec<_>>()),
        Json::Object(m) => object(m.iter().map(|(k, v)| (k.as_str(), to_rego(v)))),
    }
}

fn number_to_rego(n: &Number) -> Rego {
    if let Some(i) = n.as_i64() {
        Rego::from(i)
    } else if let Some(u) = n.as_u64() {
        Rego::from(u)
    } else {
        Rego::from(n.as_f64().unwrap_or(f64::NAN))
    }
}

/// Builds a regorus object from string keys and values.
pub fn object<'a>(entries: impl IntoIterator<Item = (&'a str, Rego)>) -> Rego {
    Rego::from(
        entries
            .into_iter()
            .map(|(k, v)| (Rego::from(k), v))
            .collect::<BTreeMap<Rego, Rego>>(),
    )
}

/// Builds a regorus array of strings.
pub fn strings<S: AsRef<str>>(items: &[S]) -> Rego {
    Rego::from(
        items
            .iter()
            .map(|s| Rego::from(s.as_ref()))
            .collect::<Vec<_>>(),
    )
}

/// An optional string, `null` when absent.
pub fn opt_str(s: Option<&str>) -> Rego {
    s.map_or(Rego::Null, Rego::from)
}

/// A regorus number as [`from_rego`] reads it: an integer when it is one,
/// else a float. `None` for a non-number, or a float JSON cannot hold
/// (which [`from_rego`] makes `null`). Readers of the policy's answer use
/// it so that a value means what it would mean as JSON, without building
/// the JSON.
pub fn number(v: &Rego) -> Option<Number> {
    let Rego::Number(n) = v else {
        return None;
    };
    if let Some(i) = n.as_i64() {
        Some(Number::from(i))
    } else if let Some(u) = n.as_u64() {
        Some(Number::from(u))
    } else {
        n.as_f64().and_then(Number::from_f64)
    }
}

/// Whether [`from_rego`] makes `v` JSON `null`: null, undefined, or a
/// number JSON cannot hold.
pub fn is_null(v: &Rego) -> bool {
    match v {
        Rego::Null | Rego::Undefined => true,
        Rego::Number(_) => number(v).is_none(),
        _ => false,
    }
}

/// The items of an array or a set, in the order [`from_rego`] gives them
/// (a set sorted), and how many there are; `None` for anything else.
pub fn items(v: &Rego) -> Option<(usize, impl Iterator<Item = &Rego>)> {
    let (len, array, set) = match v {
        Rego::Array(a) => (a.len(), Some(a.iter()), None),
        Rego::Set(s) => (s.len(), None, Some(s.iter_sorted())),
        _ => return None,
    };
    Some((
        len,
        array.into_iter().flatten().chain(set.into_iter().flatten()),
    ))
}

/// A string's text; `None` for anything else.
pub fn str_of(v: &Rego) -> Option<&str> {
    match v {
        Rego::String(s) => Some(&**s),
        _ => None,
    }
}

/// An object's member `key` (a string key, as JSON has them).
pub fn member<'a>(v: &'a Rego, key: &str) -> Option<&'a Rego> {
    match v {
        Rego::Object(o) => o.get(&Rego::from(key)),
        _ => None,
    }
}

/// Converts a regorus value back to JSON. Sets become sorted arrays,
/// non-string object keys their JSON text, and undefined `null`.
pub fn from_rego(v: &Rego) -> Json {
    match v {
        Rego::Null | Rego::Undefined => Json::Null,
        Rego::Bool(b) => Json::Bool(*b),
        Rego::Number(_) => number(v).map_or(Json::Null, Json::Number),
        Rego::String(s) => Json::String(s.to_string()),
        Rego::Array(a) => Json::Array(a.iter().map(from_rego).collect()),
        Rego::Set(s) => Json::Array(s.iter_sorted().map(from_rego).collect()),
        Rego::Object(o) => {
            let mut m = Map::new();
            for (k, v) in o.iter() {
                let key = match k {
                    Rego::String(s) => s.to_string(),
                    other => from_rego(other).to_string(),
                };
                m.insert(key, from_rego(v));
            }
            Json::Object(m)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    #[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    #[test]
    fn agrees_with_regorus_serde() {
        let v = json!({
            "s": "x", "i": -3, "u": 18446744073709551615u64, "f": 0.25, "big": 1746273600000000000u64,
            "b": true, "n": null, "a": [1, "two", [3]], "o": {"k": {"z": []}}
        });
        let via_serde: Rego = serde_json::from_value(v.clone()).unwrap();
        assert_eq!(to_rego(&v), via_serde);
        assert_eq!(from_rego(&to_rego(&v)), v);
    }

    #[test]
    fn sets_become_sorted_arrays() {
        let s: std::collections::BTreeSet<Rego> =
            ["b", "a"].iter().map(|x| Rego::from(*x)).collect();
        assert_eq!(from_rego(&Rego::from(s)), json!(["a", "b"]));
        assert_eq!(from_rego(&Rego::Undefined), Json::Null);
    }
}
