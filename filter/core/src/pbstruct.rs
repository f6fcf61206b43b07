//! Decodes `google.protobuf.Struct` bytes (how Envoy hands out dynamic
//! metadata to wasm) into JSON, faithfully and within limits.
//!
//! Numbers arrive as doubles; an integral value that a double represents
//! exactly (|x| ≤ 2^53) becomes a JSON integer, so `exp: 1700000000` stays
//! an integer for the policy. NaN and infinities have no JSON form and are
//! rejected. Unknown fields are skipped, as protobuf requires.

use serde_json::{Map, Number, Value};
use std::fmt;

/// Bounds on what the decoder accepts.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Maximum nesting of structs and lists.
    pub max_depth: usize,
    /// Maximum encoded size in bytes.
    pub max_bytes: usize,
}

/// Why a buffer is not an acceptable `Struct`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum DecodeError {
    /// The buffer ended inside a field.
    Truncated,
    /// A varint longer than 10 bytes.
    VarintOverflow,
    /// A wire type protobuf does not define (or groups, which Struct never uses).
    BadWireType(u8),
    /// A string field that is not UTF-8.
    InvalidUtf8,
    /// A number that JSON cannot represent.
    NonFiniteNumber,
    /// Nested deeper than [`Limits::max_depth`].
    TooDeep,
    /// Larger than [`Limits::max_bytes`].
    TooLarge { size: usize, max: usize },
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::Truncated => write!(f, "truncated protobuf"),
            DecodeError::VarintOverflow => write!(f, "varint overflow"),
            DecodeError::BadWireType(t) => write!(f, "unsupported wire type {t}"),
            DecodeError::InvalidUtf8 => write!(f, "string is not UTF-8"),
            DecodeError::NonFiniteNumber => write!(f, "number is NaN or infinite"),
            DecodeError::TooDeep => write!(f, "nested too deeply"),
            DecodeError::TooLarge { size, max } => {
                write!(f, "{size} bytes exceeds the limit of {max}")
            }
        }
    }
}

impl std::error::Error for DecodeError {}

/// Decodes a serialized `google.protobuf.Struct` into a JSON object.
pub fn decode_struct(buf: &[u8], limits: Limits) -> Result<Map<String, Value>, DecodeError> {
    if buf.len() > limits.max_bytes {
        return Err(DecodeError::TooLarge {
            size: buf.len(),
            max: limits.max_bytes,
        });
    }
    struct_fields(buf, limits.max_depth)
}

/// Finds `filter_metadata[namespace]` in a serialized
/// `envoy.config.core.v3.Metadata` (what Envoy returns for the `metadata`
/// attribute) and decodes that `Struct`. `Ok(None)` when the namespace is
/// absent. Other namespaces are skipped unparsed.
pub fn decode_metadata_namespace(
    buf: &[u8],
    namespace: &str,
    limits: Limits,
) -> Result<Option<Map<String, Value>>, DecodeError> {
    metadata_namespace_bytes(buf, namespace)?
        .map(|v| decode_struct(v, limits))
        .transpose()
}

/// The serialized `Struct` of `filter_metadata[namespace]`, undecoded
/// (the last entry when the map repeats the key, as protobuf merges maps).
/// `Ok(None)` when the namespace is absent.
pub fn metadata_namespace_bytes<'a>(
    buf: &'a [u8],
    namespace: &str,
) -> Result<Option<&'a [u8]>, DecodeError> {
    let mut found = None;
    for_each_entry(buf, |key, value| {
        if key == namespace.as_bytes() {
            found = Some(value);
        }
    })?;
    Ok(found)
}

/// Calls `f` with the key and value bytes of each entry of a serialized
/// protobuf map (field 1, each a message of key 1 and value 2, the last of
/// each kept, as protobuf merges them), in wire order.
fn for_each_entry<'a>(
    buf: &'a [u8],
    mut f: impl FnMut(&'a [u8], &'a [u8]),
) -> Result<(), DecodeError> {
    let mut r = Reader { buf };
    while let Some((number, field)) = r.field()? {
        let (1, Field::Bytes(entry)) = (number, field) else {
            continue;
        };
        let mut key: &[u8] = &[];
        let mut value: &[u8] = &[];
        let mut e = Reader { buf: entry };
        while let Some((n, field)) = e.field()? {
            match (n, field) {
                (1, Field::Bytes(b)) => key = b,
                (2, Field::Bytes(b)) => value = b,
                _ => {}
            }
        }
        f(key, value);
    }
    Ok(())
}

/// A canonical byte form of a serialized `Struct`: equal forms decode to
/// equal values (map entries sorted by key with the last duplicate kept,
/// as the decoder keeps it; each value reduced to the field the decoder
/// uses), whatever order the proxy serialized its maps in. For keying
/// caches of decoded payloads; it does not validate strings or numbers,
/// so a form may stand for bytes that do not decode (the caller decodes
/// before keeping anything).
pub fn canonical_struct(buf: &[u8], limits: Limits) -> Result<Vec<u8>, DecodeError> {
    if buf.len() > limits.max_bytes {
        return Err(DecodeError::TooLarge {
            size: buf.len(),
            max: limits.max_bytes,
        });
    }
    let mut out = Vec::with_capacity(buf.len() + 16);
    canon_struct(buf, limits.max_depth, &mut out)?;
    Ok(out)
}

fn canon_len(out: &mut Vec<u8>, n: usize) {
    out.extend_from_slice(&u32::try_from(n).unwrap_or(u32::MAX).to_le_bytes());
}

fn canon_struct(buf: &[u8], depth: usize, out: &mut Vec<u8>) -> Result<(), DecodeError> {
    let mut entries: Vec<(&[u8], &[u8])> = Vec::new();
    for_each_entry(buf, |key, value| entries.push((key, value)))?;
    // Stable: among equal keys the last one stays last, and only it counts.
    entries.sort_by(|a, b| a.0.cmp(b.0));
    let mut kept: Vec<(&[u8], &[u8])> = Vec::with_capacity(entries.len());
    for e in entries {
        match kept.last_mut() {
            Some(last) if last.0 == e.0 => *last = e,
            _ => kept.push(e),
        }
    }
    out.push(b'{');
    canon_len(out, kept.len());
    for (k, v) in kept {
        canon_len(out, k.len());
        out.extend_from_slice(k);
        canon_value(v, depth, out)?;
    }
    Ok(())
}

fn canon_value(buf: &[u8], depth: usize, out: &mut Vec<u8>) -> Result<(), DecodeError> {
    // The decoder keeps the last field it understands.
    let mut last: Option<(u64, Field<'_>)> = None;
    let mut r = Reader { buf };
    while let Some((number, field)) = r.field()? {
        let known = matches!(
            (number, &field),
            (1, Field::Varint(_))
                | (2, Field::Fixed64(_))
                | (3, Field::Bytes(_))
                | (4, Field::Varint(_))
                | (5, Field::Bytes(_))
                | (6, Field::Bytes(_))
        );
        if known {
            last = Some((number, field));
        }
    }
    match last {
        None | Some((1, _)) => out.push(b'n'),
        Some((2, Field::Fixed64(bits))) => {
            out.push(b'd');
            out.extend_from_slice(&bits.to_le_bytes());
        }
        Some((3, Field::Bytes(b))) => {
            out.push(b's');
            canon_len(out, b.len());
            out.extend_from_slice(b);
        }
        Some((4, Field::Varint(v))) => out.extend_from_slice(if v != 0 { b"t" } else { b"f" }),
        Some((5, Field::Bytes(b))) => canon_struct(b, nested(depth)?, out)?,
        Some((6, Field::Bytes(b))) => {
            let depth = nested(depth)?;
            let mut items: Vec<&[u8]> = Vec::new();
            let mut r = Reader { buf: b };
            while let Some((number, field)) = r.field()? {
                if let (1, Field::Bytes(item)) = (number, field) {
                    items.push(item);
                }
            }
            out.push(b'[');
            canon_len(out, items.len());
            for item in items {
                canon_value(item, depth, out)?;
            }
        }
        Some(_) => out.push(b'n'),
    }
    Ok(())
}

/// Encodes `filter_metadata` namespaces as a serialized
/// `envoy.config.core.v3.Metadata`, as Envoy returns it (tests, fixtures).
pub fn encode_metadata(namespaces: &[(&str, &Map<String, Value>)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (ns, m) in namespaces {
        let mut entry = Vec::new();
        put_bytes(&mut entry, 1, ns.as_bytes());
        put_bytes(&mut entry, 2, &encode_struct(m));
        put_bytes(&mut out, 1, &entry);
    }
    out
}

enum Field<'a> {
    Varint(u64),
    Fixed64(u64),
    Bytes(&'a [u8]),
    Fixed32,
}

struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn varint(&mut self) -> Result<u64, DecodeError> {
        let mut out: u64 = 0;
        for i in 0..10 {
            let (&b, rest) = self.buf.split_first().ok_or(DecodeError::Truncated)?;
            self.buf = rest;
            out |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(out);
            }
        }
        Err(DecodeError::VarintOverflow)
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if n > self.buf.len() {
            return Err(DecodeError::Truncated);
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    /// Next (field number, value), or `None` at the end.
    fn field(&mut self) -> Result<Option<(u64, Field<'a>)>, DecodeError> {
        if self.buf.is_empty() {
            return Ok(None);
        }
        let tag = self.varint()?;
        let number = tag >> 3;
        let field = match tag & 7 {
            0 => Field::Varint(self.varint()?),
            1 => {
                let b = self.take(8)?;
                let mut a = [0u8; 8];
                a.copy_from_slice(b);
                Field::Fixed64(u64::from_le_bytes(a))
            }
            2 => {
                let len = usize::try_from(self.varint()?).map_err(|_| DecodeError::Truncated)?;
                Field::Bytes(self.take(len)?)
            }
            5 => {
                self.take(4)?;
                Field::Fixed32
            }
            t => return Err(DecodeError::BadWireType(t as u8)),
        };
        Ok(Some((number, field)))
    }
}

fn struct_fields(buf: &[u8], depth: usize) -> Result<Map<String, Value>, DecodeError> {
    let mut map = Map::new();
    let mut r = Reader { buf };
    while let Some((number, field)) = r.field()? {
        if let (1, Field::Bytes(entry)) = (number, field) {
            let (k, v) = map_entry(entry, depth)?;
            map.insert(k, v);
        }
    }
    Ok(map)
}

fn map_entry(buf: &[u8], depth: usize) -> Result<(String, Value), DecodeError> {
    let mut key = String::new();
    let mut value = Value::Null;
    let mut r = Reader { buf };
    while let Some((number, field)) = r.field()? {
        match (number, field) {
            (1, Field::Bytes(b)) => key = utf8(b)?,
            (2, Field::Bytes(b)) => value = value_of(b, depth)?,
            _ => {}
        }
    }
    Ok((key, value))
}

fn value_of(buf: &[u8], depth: usize) -> Result<Value, DecodeError> {
    let mut out = Value::Null;
    let mut r = Reader { buf };
    while let Some((number, field)) = r.field()? {
        out = match (number, field) {
            (1, Field::Varint(_)) => Value::Null,
            (2, Field::Fixed64(bits)) => json_number(f64::from_bits(bits))?,
            (3, Field::Bytes(b)) => Value::String(utf8(b)?),
            (4, Field::Varint(v)) => Value::Bool(v != 0),
            (5, Field::Bytes(b)) => Value::Object(struct_fields(b, nested(depth)?)?),
            (6, Field::Bytes(b)) => list(b, nested(depth)?)?,
            _ => continue,
        };
    }
    Ok(out)
}

fn list(buf: &[u8], depth: usize) -> Result<Value, DecodeError> {
    let mut items = Vec::new();
    let mut r = Reader { buf };
    while let Some((number, field)) = r.field()? {
        if let (1, Field::Bytes(b)) = (number, field) {
            items.push(value_of(b, depth)?);
        }
    }
    Ok(Value::Array(items))
}

fn nested(depth: usize) -> Result<usize, DecodeError> {
    depth
        .checked_sub(1)
        .filter(|d| *d > 0)
        .ok_or(DecodeError::TooDeep)
}

fn utf8(b: &[u8]) -> Result<String, DecodeError> {
    std::str::from_utf8(b)
        .map(str::to_owned)
        .map_err(|_| DecodeError::InvalidUtf8)
}

const MAX_EXACT_INT: f64 = 9_007_199_254_740_992.0; // 2^53

fn json_number(x: f64) -> Result<Value, DecodeError> {
    if !x.is_finite() {
        return Err(DecodeError::NonFiniteNumber);
    }
    if x.fract() == 0.0 && x.abs() <= MAX_EXACT_INT {
        // Exact: the range check above keeps the cast lossless.
        #[allow(clippy::cast_possible_truncation)]
        return Ok(Value::Number(Number::from(x as i64)));
    }
    Number::from_f64(x)
        .map(Value::Number)
        .ok_or(DecodeError::NonFiniteNumber)
}

/// Encodes JSON as a serialized `google.protobuf.Struct`, the inverse of
/// [`decode_struct`]. Used by tests and fixtures to produce exactly what
/// Envoy hands the filter.
pub fn encode_struct(map: &Map<String, Value>) -> Vec<u8> {
    let mut out = Vec::new();
    for (k, v) in map {
        let mut entry = Vec::new();
        put_bytes(&mut entry, 1, k.as_bytes());
        put_bytes(&mut entry, 2, &encode_value(v));
        put_bytes(&mut out, 1, &entry);
    }
    out
}

fn encode_value(v: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    match v {
        Value::Null => {
            put_varint(&mut out, 1 << 3);
            put_varint(&mut out, 0);
        }
        Value::Number(n) => {
            put_varint(&mut out, (2 << 3) | 1);
            out.extend_from_slice(&n.as_f64().unwrap_or(0.0).to_le_bytes());
        }
        Value::String(s) => put_bytes(&mut out, 3, s.as_bytes()),
        Value::Bool(b) => {
            put_varint(&mut out, 4 << 3);
            put_varint(&mut out, u64::from(*b));
        }
        Value::Object(m) => put_bytes(&mut out, 5, &encode_struct(m)),
        Value::Array(items) => {
            let mut l = Vec::new();
            for i in items {
                put_bytes(&mut l, 1, &encode_value(i));
            }
            put_bytes(&mut out, 6, &l);
        }
    }
    out
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_bytes(out: &mut Vec<u8>, field: u64, b: &[u8]) {
    put_varint(out, (field << 3) | 2);
    put_varint(out, b.len() as u64);
    out.extend_from_slice(b);
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use serde_json::json;
    #[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    const L: Limits = Limits {
        max_depth: 8,
        max_bytes: 4096,
    };

    fn roundtrip(v: Value) -> Value {
        let m = v.as_object().unwrap().clone();
        Value::Object(decode_struct(&encode_struct(&m), L).unwrap())
    }

    #[test]
    fn roundtrips_every_kind() {
        let v = json!({
            "sub": "agent@clients", "exp": 1700000000, "ratio": 0.5, "neg": -3,
            "ok": true, "no": false, "nil": null,
            "permissions": ["a", "b"], "nested": {"l": [1, {"x": "y"}, []]}
        });
        assert_eq!(roundtrip(v.clone()), v);
    }

    #[test]
    fn integers_beyond_2_53_stay_floats() {
        let v = roundtrip(json!({"big": 1.0e16}));
        assert!(v["big"].is_f64());
        let v = roundtrip(json!({"edge": 9007199254740992_i64}));
        assert_eq!(v["edge"], json!(9007199254740992_i64));
    }

    #[test]
    fn rejects_truncated_and_garbage() {
        let m = json!({"k": "value"}).as_object().unwrap().clone();
        let b = encode_struct(&m);
        for cut in 1..b.len() {
            assert!(decode_struct(&b[..cut], L).is_err(), "cut at {cut}");
        }
        assert_eq!(decode_struct(&[0x0b], L), Err(DecodeError::BadWireType(3)));
        assert_eq!(
            decode_struct(
                &[0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01],
                L
            ),
            Err(DecodeError::VarintOverflow)
        );
    }

    #[test]
    fn rejects_non_finite_and_bad_utf8() {
        // Value{number_value: NaN} inside an entry.
        let mut val = vec![(2 << 3) | 1];
        val.extend_from_slice(&f64::NAN.to_le_bytes());
        let mut entry = Vec::new();
        put_bytes(&mut entry, 1, b"n");
        put_bytes(&mut entry, 2, &val);
        let mut s = Vec::new();
        put_bytes(&mut s, 1, &entry);
        assert_eq!(decode_struct(&s, L), Err(DecodeError::NonFiniteNumber));

        let mut entry = Vec::new();
        put_bytes(&mut entry, 1, &[0xff, 0xfe]);
        let mut s = Vec::new();
        put_bytes(&mut s, 1, &entry);
        assert_eq!(decode_struct(&s, L), Err(DecodeError::InvalidUtf8));
    }

    #[test]
    fn enforces_depth_and_size() {
        let mut v = json!("leaf");
        for _ in 0..20 {
            v = json!({ "n": v });
        }
        let b = encode_struct(v.as_object().unwrap());
        assert!(matches!(decode_struct(&b, L), Err(DecodeError::TooDeep)));
        let big = json!({"k": "x".repeat(5000)});
        let b = encode_struct(big.as_object().unwrap());
        assert!(matches!(
            decode_struct(&b, L),
            Err(DecodeError::TooLarge { .. })
        ));
    }

    #[test]
    fn metadata_namespaces() {
        let jwt = json!({"jwt_payload": {"sub": "a"}})
            .as_object()
            .unwrap()
            .clone();
        let other = json!({"x": 1}).as_object().unwrap().clone();
        let md = encode_metadata(&[
            ("other.filter", &other),
            ("envoy.filters.http.jwt_authn", &jwt),
        ]);
        let got = decode_metadata_namespace(&md, "envoy.filters.http.jwt_authn", L).unwrap();
        assert_eq!(
            got.map(Value::Object),
            Some(json!({"jwt_payload": {"sub": "a"}}))
        );
        assert_eq!(decode_metadata_namespace(&md, "missing", L).unwrap(), None);
        assert_eq!(decode_metadata_namespace(&[], "missing", L).unwrap(), None);
        assert!(decode_metadata_namespace(&md[..md.len() - 1], "x", L).is_err());
    }

    #[test]
    fn skips_unknown_fields() {
        let m = json!({"k": 1}).as_object().unwrap().clone();
        let mut b = encode_struct(&m);
        // field 9, varint 5; field 10, fixed32
        b.extend_from_slice(&[0x48, 0x05, 0x55, 1, 2, 3, 4]);
        assert_eq!(
            Value::Object(decode_struct(&b, L).unwrap()),
            json!({"k": 1})
        );
    }
}
