//! MCP sessions with a service through the sidecar, over the official
//! Rust SDK's client (rmcp, Streamable HTTP), with the agent's token.

use crate::error::Error;
use crate::token::{Clock, TokenSource};
use crate::Agent;
use rmcp::model::CallToolRequestParams;
use rmcp::service::RunningService;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::{RoleClient, ServiceExt};
use serde_json::Value;

/// An open MCP session.
pub struct McpSession {
    client: RunningService<RoleClient, ()>,
}

impl<S: TokenSource, C: Clock> Agent<S, C> {
    /// Opens an MCP session with `service` (its endpoint
    /// `/<service>/mcp` on the sidecar).
    pub async fn mcp(&self, service: &str) -> Result<McpSession, Error> {
        let token = self.token().await?;
        let uri = format!("{}/{service}/mcp", self.base());
        let transport = StreamableHttpClientTransport::from_config(
            StreamableHttpClientTransportConfig::with_uri(uri).auth_header(token.expose()),
        );
        let client = ()
            .serve(transport)
            .await
            .map_err(|e| Error::Protocol(format!("MCP session with {service}: {e}")))?;
        Ok(McpSession { client })
    }
}

impl McpSession {
    /// The tools this agent may see (agentplane filters the list).
    pub async fn list_tools(&self) -> Result<Vec<String>, Error> {
        let tools = self
            .client
            .list_tools(Default::default())
            .await
            .map_err(|e| Error::Protocol(format!("tools/list: {e}")))?;
        Ok(tools.tools.iter().map(|t| t.name.to_string()).collect())
    }

    /// Calls a tool; a refusal (agentplane's JSON-RPC error) is an error
    /// whose text carries the reason.
    pub async fn call_tool(&self, name: &str, arguments: Value) -> Result<Value, Error> {
        let mut params = CallToolRequestParams::new(name.to_string());
        if let Value::Object(a) = arguments {
            params = params.with_arguments(a);
        }
        let out = self
            .client
            .call_tool(params)
            .await
            .map_err(|e| Error::Protocol(format!("tools/call {name}: {e}")))?;
        let v = serde_json::to_value(out).map_err(|e| Error::Protocol(e.to_string()))?;
        // agentplane answers a policy refusal of a call as a tool result
        // marked `isError` (so a model reads why); to the program it is
        // the refusal it is, with its decision id.
        if v.get("isError") == Some(&Value::Bool(true)) {
            if let Some(d) = v.get("_meta").and_then(|m| m.get("io.agentplane/decision")) {
                let text = |k: &str| d.get(k).and_then(Value::as_str).map(str::to_string);
                let reasons: Vec<&str> = d
                    .get("reasons")
                    .and_then(Value::as_array)
                    .map(|r| r.iter().filter_map(Value::as_str).collect())
                    .unwrap_or_default();
                return Err(Error::Denied(crate::error::Denial {
                    // The refusal's class (the policy's "forbidden"),
                    // delivered inside a 200 MCP answer.
                    status: 403,
                    error: text("error"),
                    reason: reasons.join("; "),
                    decision_id: text("decision_id"),
                    retry_after: None,
                }));
            }
        }
        Ok(v)
    }

    /// Ends the session.
    pub async fn close(self) {
        let _ = self.client.cancel().await;
    }
}
