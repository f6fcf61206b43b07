//! The proxy-wasm header-map wire format, as pure functions so the parse
//! of what the host hands over is tested (and fuzzed) natively.
//!
//! Layout: count (u32 LE), then count × (name length, value length) as u32
//! LE, then each pair's name bytes, NUL, value bytes, NUL.

/// Serializes header pairs for the host.
pub fn encode_pairs<K: AsRef<[u8]>, V: AsRef<[u8]>>(pairs: &[(K, V)]) -> Vec<u8> {
    let size = 4 + pairs
        .iter()
        .map(|(k, v)| k.as_ref().len() + v.as_ref().len() + 10)
        .sum::<usize>();
    let mut out = Vec::with_capacity(size);
    let len32 = |n: usize| u32::try_from(n).unwrap_or(u32::MAX).to_le_bytes();
    out.extend_from_slice(&len32(pairs.len()));
    for (k, v) in pairs {
        out.extend_from_slice(&len32(k.as_ref().len()));
        out.extend_from_slice(&len32(v.as_ref().len()));
    }
    for (k, v) in pairs {
        out.extend_from_slice(k.as_ref());
        out.push(0);
        out.extend_from_slice(v.as_ref());
        out.push(0);
    }
    out
}

/// Parses a serialized header map into byte pairs (names and values are
/// whatever bytes the proxy holds: nothing here assumes UTF-8). `None` when
/// the map is malformed (truncated, a count or length past the end): the
/// caller fails closed.
pub fn decode_pairs(bytes: &[u8]) -> Option<Vec<(Vec<u8>, Vec<u8>)>> {
    if bytes.is_empty() {
        return Some(Vec::new());
    }
    let u32_at = |at: usize| -> Option<usize> {
        let b: [u8; 4] = bytes.get(at..at.checked_add(4)?)?.try_into().ok()?;
        usize::try_from(u32::from_le_bytes(b)).ok()
    };
    let count = u32_at(0)?;
    let mut data = count.checked_mul(8)?.checked_add(4)?;
    if data > bytes.len() {
        return None;
    }
    let mut out = Vec::with_capacity(count);
    for i in 0..count {
        let at = 4 + i * 8;
        let (kl, vl) = (u32_at(at)?, u32_at(at + 4)?);
        let k = bytes.get(data..data.checked_add(kl)?)?.to_vec();
        data = data.checked_add(kl)?.checked_add(1)?;
        let v = bytes.get(data..data.checked_add(vl)?)?.to_vec();
        data = data.checked_add(vl)?.checked_add(1)?;
        out.push((k, v));
    }
    Some(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    #[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    #[test]
    fn pairs_round_trip_and_keep_non_utf8_bytes() {
        let enc = encode_pairs(&[(":path", "/x"), ("a", "")]);
        let dec = decode_pairs(&enc).unwrap();
        assert_eq!(
            dec,
            vec![(b":path".to_vec(), b"/x".to_vec()), (b"a".to_vec(), vec![])]
        );
        let mut raw = enc.clone();
        let at = raw.len() - 5; // the "x" of the first value
        raw[at] = 0xff;
        let dec = decode_pairs(&raw).unwrap();
        assert!(dec.iter().any(|(_, v)| v.contains(&0xff)));
    }

    #[test]
    fn truncated_or_lying_maps_are_refused_not_trapped() {
        let enc = encode_pairs(&[(":path", "/x")]);
        for cut in 1..enc.len() - 1 {
            assert!(decode_pairs(&enc[..cut]).is_none(), "cut at {cut}");
        }
        assert!(decode_pairs(&[0xff, 0xff, 0xff, 0xff, 1, 2]).is_none());
        let mut lie = enc.clone();
        lie[4] = 0xff;
        assert!(decode_pairs(&lie).is_none());
    }
}
