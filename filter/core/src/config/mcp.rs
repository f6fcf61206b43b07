//! The `mcp` section: how MCP requests are read (body and depth limits),
//! which action each MCP method is decided as, and how long sessions stay
//! bound (see [`crate::mcp`] and [`crate::session`]).

use super::error::{invalid, ConfigError};
use serde::Deserialize;
use std::collections::BTreeMap;

/// How MCP requests are read (see [`crate::mcp`]).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct McpConfig {
    /// Largest request body read; a larger one gets 413.
    pub max_body_bytes: usize,
    /// Deepest JSON nesting accepted.
    pub max_depth: usize,
    /// MCP method → action. Methods not listed get their family's
    /// (`notifications/*`), else the action `"*"` maps to, else none (and
    /// the shipped policy denies a request without one). `"response"` is a
    /// client's answer to a server request; `"GET"` and `"DELETE"` are the
    /// HTTP methods on an MCP endpoint (the server's stream, session end).
    pub actions: BTreeMap<String, String>,
    /// How long a session stays bound to its principal after its last use
    /// (see [`crate::session`]).
    pub session_ttl_s: u64,
    /// Session bindings kept per proxy (shared-data slots).
    pub session_slots: u64,
}

impl Default for McpConfig {
    fn default() -> Self {
        let actions = [
            ("initialize", "initialize"),
            ("server/discover", "initialize"),
            ("ping", "initialize"),
            ("notifications/*", "notify"),
            ("tools/list", "list_tools"),
            ("tools/call", "call_tool"),
            ("resources/list", "list_resources"),
            ("resources/templates/list", "list_resources"),
            ("resources/read", "read_resource"),
            ("resources/subscribe", "read_resource"),
            ("resources/unsubscribe", "read_resource"),
            ("prompts/list", "list_prompts"),
            ("prompts/get", "get_prompt"),
            ("completion/complete", "get_prompt"),
            ("logging/setLevel", "initialize"),
            // 2026-07-28: change notifications on a stream the client
            // opens, and tasks (long-running tool calls).
            ("subscriptions/listen", "open_stream"),
            ("tasks/get", "manage_task"),
            ("tasks/result", "manage_task"),
            ("tasks/list", "manage_task"),
            ("tasks/cancel", "manage_task"),
            ("tasks/update", "manage_task"),
            ("response", "respond"),
            ("GET", "open_stream"),
            ("DELETE", "end_session"),
        ];
        McpConfig {
            max_body_bytes: 1024 * 1024,
            max_depth: 32,
            actions: actions
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            session_ttl_s: 86_400,
            session_slots: 16_384,
        }
    }
}

impl McpConfig {
    /// The action of an MCP method: its own entry, else its family's
    /// (`notifications/*`), else `"*"`'s.
    pub fn action_for(&self, method: &str) -> Option<&str> {
        let family = method.rsplit_once('/').map(|(head, _)| format!("{head}/*"));
        self.actions
            .get(method)
            .or_else(|| family.and_then(|f| self.actions.get(&f)))
            .or_else(|| self.actions.get("*"))
            .map(String::as_str)
    }

    /// Checks the section.
    pub(crate) fn check(&self) -> Result<(), ConfigError> {
        if !(1024..=16 * 1024 * 1024).contains(&self.max_body_bytes) {
            return Err(invalid(
                "mcp.max_body_bytes",
                "must be between 1024 and 16777216",
            ));
        }
        if !(2..=128).contains(&self.max_depth) {
            return Err(invalid("mcp.max_depth", "must be between 2 and 128"));
        }
        if !(60..=30 * 86_400).contains(&self.session_ttl_s) {
            return Err(invalid(
                "mcp.session_ttl_s",
                "must be between 60 and 2592000",
            ));
        }
        if !(1..=1 << 20).contains(&self.session_slots) {
            return Err(invalid(
                "mcp.session_slots",
                "must be between 1 and 1048576",
            ));
        }
        Ok(())
    }
}
