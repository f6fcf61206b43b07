//! Header hygiene: removing client-supplied identity headers and checking
//! values before the filter sets them.

use crate::config::Config;
use crate::host::Host;

/// Removes every client header the configuration reserves for the filter.
/// Returns how many distinct header names were removed.
pub fn strip_untrusted<H: Host>(host: &mut H, config: &Config) -> usize {
    let mut doomed: Vec<String> = host
        .request_headers()
        .into_iter()
        .map(|(k, _)| k.to_ascii_lowercase())
        .filter(|k| !k.starts_with(':') && config.must_strip(k))
        .collect();
    doomed.sort();
    doomed.dedup();
    for name in &doomed {
        host.remove_request_header(name);
    }
    doomed.len()
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
        assert_eq!(strip_untrusted(&mut h, &c), 3);
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
