//! Header hygiene: removing client-supplied identity headers and checking
//! values before the filter sets them.

use crate::config::Config;
use crate::host::Host;

/// The request headers after stripping, read from the host once: every
/// later lookup is answered here instead of by another host call.
#[derive(Debug, Default)]
pub struct RequestHeaders {
    list: Vec<(String, String)>,
    /// How many distinct header names were stripped.
    pub stripped: usize,
}

impl RequestHeaders {
    /// The first value of a header (lower-case name), if present and not stripped.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.list
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Removes every client header the configuration reserves for the filter
/// and returns what is left.
pub fn strip_untrusted<H: Host>(host: &mut H, config: &Config) -> RequestHeaders {
    let all = host.request_headers();
    let mut list = Vec::with_capacity(all.len());
    let mut doomed: Vec<String> = Vec::new();
    for (k, v) in all {
        let k = k.to_ascii_lowercase();
        if !k.starts_with(':') && config.must_strip(&k) {
            doomed.push(k);
        } else {
            list.push((k, v));
        }
    }
    doomed.sort();
    doomed.dedup();
    for name in &doomed {
        host.remove_request_header(name);
    }
    RequestHeaders {
        list,
        stripped: doomed.len(),
    }
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
        let left = strip_untrusted(&mut h, &c);
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
