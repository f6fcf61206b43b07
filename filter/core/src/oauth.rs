//! The MCP authorization spec, resource-server side: OAuth 2.0 Protected
//! Resource Metadata (RFC 9728) served from config, and the
//! `resource_metadata` parameter 401s carry so a client finds its
//! authorization server.
//!
//! A service's resource identifier (`resources.<name>.resource_uri`, e.g.
//! `https://gateway.example.com/tickets-mcp/mcp`) has its metadata at the
//! well-known path inserted between host and path:
//! `https://gateway.example.com/.well-known/oauth-protected-resource/tickets-mcp/mcp`.
//! The gateway's own (`oauth.resource`) is at the bare well-known path.

use crate::config::{Config, OAuthConfig};
use crate::uri::split;
pub use crate::uri::valid_resource;
use serde_json::json;

/// RFC 9728's well-known path.
pub const WELL_KNOWN: &str = "/.well-known/oauth-protected-resource";

/// Where a resource's metadata lives.
pub fn metadata_url(resource: &str) -> Option<String> {
    let (origin, path) = split(resource)?;
    let path = if path == "/" { "" } else { path };
    Some(format!("{origin}{WELL_KNOWN}{path}"))
}

/// The metadata document of one resource.
fn document(oauth: &OAuthConfig, resource: &str, scopes: &[String], name: Option<&str>) -> Vec<u8> {
    let mut doc = serde_json::Map::new();
    doc.insert("resource".into(), json!(resource));
    doc.insert(
        "authorization_servers".into(),
        json!(oauth.authorization_servers),
    );
    doc.insert("bearer_methods_supported".into(), json!(["header"]));
    let scopes = if scopes.is_empty() {
        &oauth.scopes_supported
    } else {
        scopes
    };
    if !scopes.is_empty() {
        doc.insert("scopes_supported".into(), json!(scopes));
    }
    if let Some(n) = name {
        doc.insert("resource_name".into(), json!(n));
    }
    serde_json::Value::Object(doc).to_string().into_bytes()
}

/// What a metadata request gets: the filter renders it into the reply
/// (`outcome::Served`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Metadata {
    /// The resource's document (JSON).
    Document(Vec<u8>),
    /// No resource has this path.
    NotFound,
}

/// Answers a metadata request (`GET` or `HEAD` under [`WELL_KNOWN`]) from
/// config: the document, or [`Metadata::NotFound`] for a path no resource
/// has. `None` when the request is not one, or no `oauth` is configured.
pub fn serve(method: &str, path: &str, config: &Config) -> Option<Metadata> {
    let oauth = config.oauth.as_ref()?;
    let rest = path.split(['?', '#']).next()?.strip_prefix(WELL_KNOWN)?;
    if !(rest.is_empty() || rest.starts_with('/')) || !matches!(method, "GET" | "HEAD") {
        return None;
    }
    let found = if rest.is_empty() || rest == "/" {
        oauth
            .resource
            .as_deref()
            .map(|r| document(oauth, r, &[], None))
    } else {
        config.resources.iter().find_map(|(name, r)| {
            let uri = r.resource_uri.as_deref()?;
            let (_, p) = split(uri)?;
            (p == rest).then(|| document(oauth, uri, &r.scopes_supported, Some(name)))
        })
    };
    Some(found.map_or(Metadata::NotFound, Metadata::Document))
}

/// The `resource_metadata` URL a 401 for this service points to: the
/// service's own resource, else the gateway's.
pub fn challenge_url(config: &Config, service: Option<&str>) -> Option<String> {
    let oauth = config.oauth.as_ref()?;
    let uri = service
        .and_then(|s| config.resources.get(s))
        .and_then(|r| r.resource_uri.as_deref())
        .or(oauth.resource.as_deref())?;
    metadata_url(uri)
}

/// The scopes a service's tokens are asked for: the service's own list,
/// else `oauth.scopes_supported`; only values safe inside a quoted
/// challenge parameter.
pub fn scopes<'a>(config: &'a Config, service: Option<&str>) -> Vec<&'a str> {
    let Some(oauth) = config.oauth.as_ref() else {
        return Vec::new();
    };
    let own = service
        .and_then(|s| config.resources.get(s))
        .map(|r| &r.scopes_supported)
        .filter(|s| !s.is_empty());
    own.unwrap_or(&oauth.scopes_supported)
        .iter()
        .map(String::as_str)
        .filter(|s| {
            !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\')
        })
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    #[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    fn config() -> Config {
        Config::from_json(
            br#"{"oauth": {"authorization_servers": ["https://idp.example.com"],
                  "scopes_supported": ["tools:call"], "resource": "https://gw.example.com"},
                 "resources": {"tickets-mcp": {"type": "tool", "protocol": "mcp",
                   "resource_uri": "https://gw.example.com/tickets-mcp/mcp",
                   "scopes_supported": ["tools:call", "tools:list"]}}}"#,
        )
        .unwrap()
    }

    #[test]
    fn metadata_lives_at_the_well_known_path_inserted_before_the_resource_path() {
        assert_eq!(
            metadata_url("https://gw.example.com/tickets-mcp/mcp").unwrap(),
            "https://gw.example.com/.well-known/oauth-protected-resource/tickets-mcp/mcp"
        );
        assert_eq!(
            metadata_url("https://gw.example.com").unwrap(),
            "https://gw.example.com/.well-known/oauth-protected-resource"
        );
        assert!(metadata_url("ftp://x/y").is_none());
        assert!(!valid_resource("https://gw/x?q=1"));
        assert!(!valid_resource("https:///x"));
    }

    #[test]
    fn each_service_has_its_own_document_and_unknown_paths_are_404() {
        // Rendered as the filter renders them.
        let serve = |method: &str, path: &str, c: &Config| {
            super::serve(method, path, c).map(|m| {
                match m {
                    Metadata::Document(doc) => crate::outcome::Served::Metadata(doc),
                    Metadata::NotFound => crate::outcome::Served::NoMetadata,
                }
                .reply()
            })
        };
        let c = config();
        let r = serve(
            "GET",
            "/.well-known/oauth-protected-resource/tickets-mcp/mcp",
            &c,
        )
        .unwrap();
        assert_eq!(r.status, 200);
        let doc: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(doc["resource"], "https://gw.example.com/tickets-mcp/mcp");
        assert_eq!(doc["authorization_servers"][0], "https://idp.example.com");
        assert_eq!(doc["scopes_supported"], json!(["tools:call", "tools:list"]));
        assert_eq!(doc["bearer_methods_supported"], json!(["header"]));
        let root = serve("GET", "/.well-known/oauth-protected-resource", &c).unwrap();
        let doc: serde_json::Value = serde_json::from_slice(&root.body).unwrap();
        assert_eq!(doc["resource"], "https://gw.example.com");
        assert_eq!(doc["scopes_supported"], json!(["tools:call"]));
        assert_eq!(
            serve("GET", "/.well-known/oauth-protected-resource/nope", &c)
                .unwrap()
                .status,
            404
        );
        assert!(serve("POST", "/.well-known/oauth-protected-resource", &c).is_none());
        assert!(serve("GET", "/.well-known/oauth-protected-resourcex", &c).is_none());
        assert!(serve("GET", "/tickets-mcp/mcp", &c).is_none());
        let none = Config::from_json(b"{}").unwrap();
        assert!(serve("GET", "/.well-known/oauth-protected-resource", &none).is_none());
    }

    #[test]
    fn a_401_points_to_the_services_metadata() {
        let c = config();
        assert_eq!(
            challenge_url(&c, Some("tickets-mcp")).unwrap(),
            "https://gw.example.com/.well-known/oauth-protected-resource/tickets-mcp/mcp"
        );
        assert_eq!(
            challenge_url(&c, Some("other")).unwrap(),
            "https://gw.example.com/.well-known/oauth-protected-resource"
        );
    }
}
