//! The `oauth` section: the resource-server side of OAuth, the issuers
//! whose tokens this gateway accepts and the metadata it serves (see
//! [`crate::oauth`]).

use super::error::{invalid, ConfigError};
use serde::Deserialize;

/// The resource-server side of OAuth (see [`crate::oauth`]).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct OAuthConfig {
    /// Issuers of the tokens this gateway accepts.
    pub authorization_servers: Vec<String>,
    /// Scopes the metadata lists unless a service lists its own.
    #[serde(default)]
    pub scopes_supported: Vec<String>,
    /// The gateway's own resource identifier, served at the bare
    /// well-known path and used by 401s of services without their own.
    #[serde(default)]
    pub resource: Option<String>,
}

impl OAuthConfig {
    /// Checks the section.
    pub(crate) fn check(&self) -> Result<(), ConfigError> {
        if self.authorization_servers.is_empty()
            || !self
                .authorization_servers
                .iter()
                .all(|a| crate::uri::valid_resource(a))
        {
            return Err(invalid(
                "oauth.authorization_servers",
                "must list at least one http(s) issuer URL",
            ));
        }
        if self
            .resource
            .as_deref()
            .is_some_and(|r| !crate::uri::valid_resource(r))
        {
            return Err(invalid(
                "oauth.resource",
                "must be an http(s) URL without query or fragment",
            ));
        }
        Ok(())
    }
}
