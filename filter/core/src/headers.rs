//! Header hygiene: removing client-supplied identity headers, checking
//! values before the filter sets them, and writing an allowed request's
//! headers.

use crate::config::Config;
use crate::host::Host;

/// Headers the filter itself sets upstream (the identity, the delegation,
/// the MCP tool). A client's copy is removed whatever
/// `headers.strip_prefixes` says: a configuration that leaves `x-agent-`
/// out of it must not let a client name its own actor or tool, where the
/// filter writes none (no delegation; not a `tools/call`).
pub const FILTER_SET: &[&str] = &[
    "x-agent-id",
    "x-agent-type",
    "x-agent-team",
    "x-agent-actor",
    "x-agent-delegation",
    "x-agent-tool",
];

/// Whether a client header (lower-case) is one of [`FILTER_SET`], with `_`
/// read as `-` as many frameworks do.
pub fn filter_set(lower_name: &[u8]) -> bool {
    FILTER_SET.iter().any(|h| {
        h.len() == lower_name.len()
            && h.bytes()
                .zip(lower_name)
                .all(|(a, &b)| a == b || (a == b'-' && b == b'_'))
    })
}

/// The request headers after stripping, read from the host once: every
/// later lookup is answered here instead of by another host call, and an
/// allowed request's headers go back in one write ([`rewrite`]).
///
/// Names are lower-cased; values are the bytes the proxy holds. A value
/// that is not UTF-8 still goes upstream untouched, but a header the filter
/// reads ([`RequestHeaders::check_read`]) with such a value refuses the
/// request instead of being read as absent.
#[derive(Debug, Default)]
pub struct RequestHeaders {
    pairs: Vec<(Vec<u8>, Vec<u8>)>,
    /// Names set aside, removed from the request when it is forwarded.
    doomed: Vec<Vec<u8>>,
    /// How many distinct header names were stripped.
    pub stripped: usize,
}

/// Why a header the filter reads cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderError {
    /// Its value is not UTF-8.
    NotUtf8(String),
    /// It appears more than once: the filter and the upstream could read
    /// different values.
    Duplicate(String),
}

impl std::fmt::Display for HeaderError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HeaderError::NotUtf8(n) => write!(f, "header {n} is not valid UTF-8"),
            HeaderError::Duplicate(n) => write!(f, "header {n} appears more than once"),
        }
    }
}

impl RequestHeaders {
    /// The first value of a header (lower-case name), if present, UTF-8
    /// and not stripped.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(k, _)| k == name.as_bytes())
            .and_then(|(_, v)| std::str::from_utf8(v).ok())
    }

    /// The credentials of `Authorization: Bearer <token>` (the scheme in
    /// any case), trimmed: what jwt_authn verified, for the callouts that
    /// present it (Vault's JWT login, a token exchange).
    pub fn bearer(&self) -> Option<&str> {
        let v = self.get("authorization")?;
        v.get(..7)
            .filter(|p| p.eq_ignore_ascii_case("bearer "))
            .and_then(|_| v.get(7..))
            .map(str::trim)
    }

    /// Checks the headers the filter reads: each must be UTF-8 and appear
    /// at most once.
    pub fn check_read<'a>(
        &self,
        names: impl IntoIterator<Item = &'a str>,
    ) -> Result<(), HeaderError> {
        for name in names {
            let mut found = self.pairs.iter().filter(|(k, _)| k == name.as_bytes());
            if let Some((_, v)) = found.next() {
                if found.next().is_some() {
                    return Err(HeaderError::Duplicate(name.to_string()));
                }
                if std::str::from_utf8(v).is_err() {
                    return Err(HeaderError::NotUtf8(name.to_string()));
                }
            }
        }
        Ok(())
    }

    /// Builds the snapshot from raw pairs without touching a host (tests,
    /// fuzzing); `strip` decides which names go (never pseudo-headers).
    pub fn from_pairs(
        pairs: Vec<(Vec<u8>, Vec<u8>)>,
        strip: impl Fn(&[u8]) -> bool,
    ) -> RequestHeaders {
        let mut kept = Vec::with_capacity(pairs.len());
        let mut doomed: Vec<Vec<u8>> = Vec::new();
        for (mut k, v) in pairs {
            k.make_ascii_lowercase();
            if k.first() != Some(&b':') && strip(&k) {
                if !doomed.contains(&k) {
                    doomed.push(k);
                }
                continue;
            }
            kept.push((k, v));
        }
        RequestHeaders {
            pairs: kept,
            stripped: doomed.len(),
            doomed,
        }
    }

    /// Every kept header, in order.
    pub fn pairs(&self) -> &[(Vec<u8>, Vec<u8>)] {
        &self.pairs
    }
}

/// Reads the request headers once and sets aside every client header the
/// configuration reserves for the filter: they are gone from the snapshot
/// now and from the request when an allowed request's headers are written
/// back ([`rewrite`]); a refused request goes nowhere. `None` when the
/// host could not hand over the header map: the caller fails closed.
pub fn read<H: Host>(host: &H, config: &Config) -> Option<RequestHeaders> {
    let all = host.request_headers()?;
    Some(RequestHeaders::from_pairs(all, |n| {
        filter_set(n) || config.must_strip(n)
    }))
}

/// Writes an allowed request's headers: removes what was stripped and
/// every name in `drop`, then sets (replaces) each of `set`. False when
/// the host refused any of it. (Single-header writes: measured in Envoy's
/// V8, each costs a fraction of rewriting the whole map in one call.)
pub fn rewrite<H: Host>(
    host: &mut H,
    headers: &RequestHeaders,
    drop: &[&str],
    set: &[(&str, &str)],
) -> bool {
    headers.doomed.iter().all(|n| host.remove_request_header(n))
        && drop
            .iter()
            .all(|n| host.remove_request_header(n.as_bytes()))
        && set.iter().all(|(k, v)| host.set_request_header(k, v))
}

/// Why a value cannot be sent as a header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderValueError {
    /// Contains CR, LF, NUL or another control character.
    ControlCharacter,
    /// Longer than the configured maximum.
    TooLong {
        /// Its length.
        len: usize,
        /// The maximum.
        max: usize,
    },
}

impl std::fmt::Display for HeaderValueError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HeaderValueError::ControlCharacter => write!(f, "contains a control character"),
            HeaderValueError::TooLong { len, max } => write!(f, "is {len} bytes, over {max}"),
        }
    }
}

/// Accepts a value only if it is safe to place in a header verbatim:
/// no control characters (tab excepted), at most `max` bytes.
pub fn check_value(value: &str, max: usize) -> Result<(), HeaderValueError> {
    if value.len() > max {
        return Err(HeaderValueError::TooLong {
            len: value.len(),
            max,
        });
    }
    if value.bytes().any(|b| (b < 0x20 && b != b'\t') || b == 0x7f) {
        return Err(HeaderValueError::ControlCharacter);
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::host::MockHost;
    #[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    #[test]
    fn strips_any_case_and_prefix() {
        let c = Config::from_json(b"").unwrap();
        let mut h = MockHost::new()
            .with_header("X-Agent-Id", "forged")
            .with_header("x-AGENT-team", "forged")
            .with_header("x-mcp-secret", "forged")
            .with_header("x-agent-id", "forged-again")
            .with_header("content-type", "application/json");
        let left = read(&h, &c).unwrap();
        assert_eq!(left.stripped, 3);
        assert_eq!(left.get("x-agent-id"), None);
        assert_eq!(left.get("content-type"), Some("application/json"));
        assert!(rewrite(&mut h, &left, &[], &[("x-agent-id", "real")]));
        assert_eq!(h.header_values("x-agent-id"), ["real"]);
        assert!(rewrite(&mut h, &left, &[], &[]));
        assert!(h.header_values("x-agent-id").is_empty());
        assert!(h.header_values("x-agent-team").is_empty());
        assert_eq!(h.header_values("content-type"), ["application/json"]);
    }

    #[test]
    fn a_client_forging_the_filters_own_headers_is_stripped_without_the_x_agent_prefix() {
        // The prefix list no longer names `x-agent-`: the filter's own
        // headers still never come from the client.
        let c = Config::from_json(br#"{"headers": {"strip_prefixes": ["x-mcp-"]}}"#).unwrap();
        let mut h = MockHost::new()
            .with_header("x-agent-tool", "delete_everything")
            .with_header("X-Agent-Actor", "root@clients")
            .with_header("x_agent_delegation", "[\"root@clients\"]")
            .with_header("x-agent-id", "root@clients")
            .with_header("x-agent-custom", "kept")
            .with_header("x-agent-toolbox", "kept");
        let left = read(&h, &c).unwrap();
        assert_eq!(left.stripped, 4);
        for name in ["x-agent-tool", "x-agent-actor", "x_agent_delegation"] {
            assert_eq!(left.get(name), None, "{name}");
        }
        assert!(rewrite(&mut h, &left, &[], &[]));
        for name in FILTER_SET.iter().chain(&["x_agent_delegation"]) {
            assert!(h.header_values(name).is_empty(), "{name} reached upstream");
        }
        // Not the filter's: the configuration decides.
        assert_eq!(h.header_values("x-agent-custom"), ["kept"]);
        assert_eq!(h.header_values("x-agent-toolbox"), ["kept"]);
        // The names the filter writes are all in the list.
        assert!(filter_set(crate::request::TOOL_HEADER.as_bytes()));
    }

    #[test]
    fn rejects_injection_and_length() {
        assert!(check_value("support", 16).is_ok());
        assert!(check_value("a\tb", 16).is_ok());
        for bad in ["a\r\nx-agent-id: root", "a\nb", "a\0b", "a\x7f"] {
            assert_eq!(
                check_value(bad, 64),
                Err(HeaderValueError::ControlCharacter),
                "{bad:?}"
            );
        }
        assert_eq!(
            check_value(&"x".repeat(17), 16),
            Err(HeaderValueError::TooLong { len: 17, max: 16 })
        );
    }
}
