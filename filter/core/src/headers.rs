//! Header hygiene: removing client-supplied identity headers and checking
//! values before the filter sets them.

use crate::config::Config;
use crate::host::Host;

/// The request headers after stripping, read from the host once: every
/// later lookup is answered here instead of by another host call.
///
/// Names are lower-cased. Values that are not UTF-8 are kept out of the
/// list (they still go upstream untouched); their names are remembered so
/// that a header the filter reads ([`RequestHeaders::check_read`]) with
/// such a value refuses the request instead of being read as absent.
#[derive(Debug, Default)]
pub struct RequestHeaders {
    list: Vec<(String, String)>,
    /// Names whose value was not UTF-8 (or whose name was not).
    opaque: Vec<String>,
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
        self.list
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Checks the headers the filter reads: each must be UTF-8 and appear
    /// at most once.
    pub fn check_read<'a>(
        &self,
        names: impl IntoIterator<Item = &'a str>,
    ) -> Result<(), HeaderError> {
        for name in names {
            if self.opaque.iter().any(|n| n == name) {
                return Err(HeaderError::NotUtf8(name.to_string()));
            }
            if self.list.iter().filter(|(k, _)| k == name).nth(1).is_some() {
                return Err(HeaderError::Duplicate(name.to_string()));
            }
        }
        Ok(())
    }

    /// Builds the snapshot from raw pairs without touching a host (tests,
    /// fuzzing); `strip` decides which names go.
    pub fn from_pairs(
        pairs: Vec<(Vec<u8>, Vec<u8>)>,
        strip: impl Fn(&[u8]) -> bool,
    ) -> (RequestHeaders, Vec<Vec<u8>>) {
        let mut list = Vec::with_capacity(pairs.len());
        let mut opaque = Vec::new();
        let mut doomed: Vec<Vec<u8>> = Vec::new();
        for (k, v) in pairs {
            let lower = k.to_ascii_lowercase();
            if lower.first() != Some(&b':') && strip(&lower) {
                // Removed under the name the proxy holds (header maps match
                // names case-insensitively).
                doomed.push(lower);
                continue;
            }
            match (String::from_utf8(lower), String::from_utf8(v)) {
                (Ok(k), Ok(v)) => list.push((k, v)),
                (Ok(k), Err(_)) => opaque.push(k),
                (Err(e), _) => opaque.push(String::from_utf8_lossy(e.as_bytes()).into_owned()),
            }
        }
        doomed.sort();
        doomed.dedup();
        let stripped = doomed.len();
        (
            RequestHeaders {
                list,
                opaque,
                stripped,
            },
            doomed,
        )
    }
}

/// Removes every client header the configuration reserves for the filter
/// and returns what is left. `None` when the host could not hand over the
/// header map or refused a removal: the caller fails closed.
pub fn strip_untrusted<H: Host>(host: &mut H, config: &Config) -> Option<RequestHeaders> {
    let all = host.request_headers()?;
    let (headers, doomed) = RequestHeaders::from_pairs(all, |n| config.must_strip(n));
    for name in &doomed {
        if !host.remove_request_header(name) {
            return None;
        }
    }
    Some(headers)
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
        let left = strip_untrusted(&mut h, &c).unwrap();
        assert_eq!(left.stripped, 3);
        assert_eq!(left.get("x-agent-id"), None);
        assert_eq!(left.get("content-type"), Some("application/json"));
        assert!(h.header_values("x-agent-id").is_empty());
        assert!(h.header_values("x-agent-team").is_empty());
        assert_eq!(h.header_values("content-type"), ["application/json"]);
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
