//! Grants this proxy has let a call through on, shared by its workers: a
//! grant's id is claimed before its call goes on, so an approval service
//! answer replayed on the network path (or a service that forgot) cannot
//! pass a second call here. The service's own single use stays the
//! fleet-wide guard; this is the proxy's.
//!
//! One shared-data record (created at configure, updated with
//! compare-and-swap so two workers cannot both claim an id): lines of
//! `<expiry s> <id>`, expired ones dropped on every write, at most
//! [`MAX_ENTRIES`] (the oldest go first: their grants expire first).

use crate::host::Host;

/// The record's key.
pub const KEY: &str = "agentplane.approval.used.v1";
/// Ids remembered at most.
pub const MAX_ENTRIES: usize = 4_096;
/// Compare-and-swap attempts before the claim fails (closed).
const ATTEMPTS: u32 = 16;

/// Creates the record if it is missing (configure time).
pub fn create<H: Host>(host: &mut H) {
    if host.shared_get(KEY).is_none() {
        host.shared_set(KEY, b"", None);
    }
}

/// Claims grant `id` (valid until `exp_s`) at `now_s`. `Err`: used
/// already, or the record cannot be updated (the call is then refused).
pub fn claim<H: Host>(host: &mut H, id: &str, exp_s: i64, now_s: i64) -> Result<(), &'static str> {
    if id.is_empty()
        || id
            .bytes()
            .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
    {
        return Err("grant id is not usable");
    }
    for _ in 0..ATTEMPTS {
        let Some((bytes, cas)) = host.shared_get(KEY) else {
            return Err("the used-grant record is missing");
        };
        let text = String::from_utf8_lossy(&bytes);
        let mut live: Vec<(i64, &str)> = text
            .lines()
            .filter_map(|l| {
                let (e, i) = l.split_once(' ')?;
                Some((e.parse::<i64>().ok()?, i))
            })
            .filter(|(e, _)| *e >= now_s)
            .collect();
        if live.iter().any(|(_, i)| *i == id) {
            return Err("approval already used");
        }
        live.sort_unstable();
        while live.len() >= MAX_ENTRIES {
            live.remove(0);
        }
        let mut out = String::with_capacity(text.len() + id.len() + 24);
        for (e, i) in &live {
            out.push_str(&format!("{e} {i}\n"));
        }
        out.push_str(&format!("{exp_s} {id}\n"));
        if host.shared_set(KEY, out.as_bytes(), Some(cas)) {
            return Ok(());
        }
    }
    Err("the used-grant record is busy")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::host::MockHost;

    #[test]
    fn a_grant_replayed_to_this_proxy_passes_once() {
        let mut h = MockHost::new();
        create(&mut h);
        assert_eq!(claim(&mut h, "ap1", 100, 10), Ok(()));
        assert_eq!(claim(&mut h, "ap1", 100, 20), Err("approval already used"));
        assert_eq!(claim(&mut h, "ap2", 100, 20), Ok(()));
        // Expired entries go; their grants cannot pass anyway.
        assert_eq!(claim(&mut h, "ap3", 300, 200), Ok(()));
        let (text, _) = h.shared_get(KEY).unwrap();
        assert_eq!(String::from_utf8(text).unwrap(), "300 ap3\n");
    }

    #[test]
    fn the_record_stays_bounded_and_odd_ids_are_refused() {
        let mut h = MockHost::new();
        create(&mut h);
        for i in 0..(MAX_ENTRIES + 10) {
            assert_eq!(claim(&mut h, &format!("g{i}"), 1_000 + i as i64, 0), Ok(()));
        }
        let (text, _) = h.shared_get(KEY).unwrap();
        assert_eq!(
            String::from_utf8(text).unwrap().lines().count(),
            MAX_ENTRIES
        );
        assert!(claim(&mut h, "a b", 10, 0).is_err());
        assert!(claim(&mut h, "a\nb", 10, 0).is_err());
        let mut missing = MockHost::new();
        assert!(claim(&mut missing, "x", 10, 0).is_err(), "fails closed");
    }
}
