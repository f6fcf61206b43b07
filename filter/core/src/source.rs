//! `input.source`: the peer of the connection, from Envoy's connection
//! properties, where agentplane sees mTLS (the inbound side of a service,
//! a shared gateway). An agent reaching its own sidecar over loopback has
//! no certificate: there this stays off (`source.peer_certificate`).
//!
//! Envoy exposes only the **first** URI SAN and the first DNS SAN of the
//! peer certificate as properties; a SPIFFE ID is the URI SAN when it has
//! the `spiffe://` scheme.

use crate::host::Host;
use crate::value;
use regorus::Value as Rego;

/// What the connection says about its peer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Source {
    /// The connection used mTLS (a verified client certificate).
    pub mtls: bool,
    /// First URI SAN of the peer certificate.
    pub uri_san: Option<String>,
    /// First DNS SAN.
    pub dns_san: Option<String>,
    /// Subject.
    pub subject: Option<String>,
    /// SHA-256 digest of the certificate (hex).
    pub sha256: Option<String>,
}

fn text<H: Host>(host: &H, name: &str) -> Option<String> {
    let b = host.property(&["connection", name])?;
    let s = String::from_utf8(b).ok()?;
    (!s.is_empty()).then_some(s)
}

impl Source {
    /// Reads the connection's properties (five host calls).
    pub fn read<H: Host>(host: &H) -> Source {
        let mtls = host
            .property(&["connection", "mtls"])
            .is_some_and(|b| b == [1] || b == b"true");
        if !mtls {
            // Without a verified client certificate no SAN means anything.
            return Source::default();
        }
        Source {
            mtls,
            uri_san: text(host, "uri_san_peer_certificate"),
            dns_san: text(host, "dns_san_peer_certificate"),
            subject: text(host, "subject_peer_certificate"),
            sha256: text(host, "sha256_peer_certificate_digest"),
        }
    }

    /// The SPIFFE ID: the URI SAN when it is a `spiffe://` URI.
    pub fn spiffe_id(&self) -> Option<&str> {
        self.uri_san
            .as_deref()
            .filter(|u| u.starts_with("spiffe://"))
    }

    /// `input.source`: `null` when not read.
    pub fn doc(s: Option<&Source>) -> Rego {
        let Some(s) = s else {
            return Rego::Null;
        };
        value::object([
            ("mtls", Rego::from(s.mtls)),
            ("spiffe_id", value::opt_str(s.spiffe_id())),
            ("uri_san", value::opt_str(s.uri_san.as_deref())),
            ("dns_san", value::opt_str(s.dns_san.as_deref())),
            ("subject", value::opt_str(s.subject.as_deref())),
            ("certificate_sha256", value::opt_str(s.sha256.as_deref())),
        ])
    }

    /// The facts a decision key holds for it.
    pub fn key_fields(&self) -> [Option<&str>; 5] {
        [
            Some(if self.mtls { "1" } else { "0" }),
            self.uri_san.as_deref(),
            self.dns_san.as_deref(),
            self.subject.as_deref(),
            self.sha256.as_deref(),
        ]
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::host::MockHost;
    #[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    #[test]
    fn a_verified_peer_names_its_workload() {
        let h = MockHost::new()
            .with_property(&["connection", "mtls"], vec![1u8])
            .with_property(
                &["connection", "uri_san_peer_certificate"],
                "spiffe://corp/agent/triage",
            )
            .with_property(&["connection", "subject_peer_certificate"], "CN=triage");
        let s = Source::read(&h);
        assert!(s.mtls);
        assert_eq!(s.spiffe_id(), Some("spiffe://corp/agent/triage"));
        let d = crate::value::from_rego(&Source::doc(Some(&s)));
        assert_eq!(d["spiffe_id"], "spiffe://corp/agent/triage");
        assert_eq!(d["dns_san"], serde_json::Value::Null);
    }

    #[test]
    fn without_mtls_no_san_counts() {
        let h = MockHost::new()
            .with_property(&["connection", "mtls"], vec![0u8])
            .with_property(
                &["connection", "uri_san_peer_certificate"],
                "spiffe://forged",
            );
        let s = Source::read(&h);
        assert_eq!(s, Source::default());
        assert_eq!(s.spiffe_id(), None);
        let https = Source {
            mtls: true,
            uri_san: Some("https://not-spiffe".into()),
            ..Source::default()
        };
        assert_eq!(https.spiffe_id(), None);
    }
}
