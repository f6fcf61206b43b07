//! The tickets skill: an MCP server over Streamable HTTP built with the
//! official Rust SDK (`rmcp`). Its tools are what the shipped policy's
//! tool rules talk about: `search_docs` (anyone who may call tools),
//! `lookup_ticket` and `update_ticket` (own team's tickets only, by the
//! `team` argument), `delete_ticket` (needs `tickets:delete`),
//! `run_shell` (denied for every agent). It trusts nothing it is sent: it
//! only answers, and says which agent agentplane told it is calling.

pub mod changing;
pub mod samples;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{CallToolResult, ContentBlock, Implementation, ServerCapabilities, ServerConfig};
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::{schemars, tool, tool_handler, tool_router, ErrorData, ServerHandler};

/// A ticket reference.
#[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
pub struct TicketArgs {
    /// The team that owns the ticket.
    pub team: String,
    /// The ticket id.
    pub id: String,
}

/// A search.
#[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
pub struct SearchArgs {
    /// What to look for.
    pub query: String,
}

/// A command (the tool that must never run).
#[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
pub struct ShellArgs {
    /// The command.
    pub cmd: String,
}

/// The tickets server.
#[derive(Clone, Default)]
pub struct Tickets;

fn text(s: String) -> Result<CallToolResult, ErrorData> {
    Ok(CallToolResult::success(vec![ContentBlock::text(s)]))
}

#[tool_router]
impl Tickets {
    #[tool(description = "Search the support documentation")]
    async fn search_docs(
        &self,
        Parameters(a): Parameters<SearchArgs>,
    ) -> Result<CallToolResult, ErrorData> {
        text(format!("3 articles match {:?}", a.query))
    }

    #[tool(description = "Look up a ticket of your team")]
    async fn lookup_ticket(
        &self,
        Parameters(a): Parameters<TicketArgs>,
    ) -> Result<CallToolResult, ErrorData> {
        text(format!(
            "ticket {} of team {}: open, priority 2",
            a.id, a.team
        ))
    }

    #[tool(description = "Update a ticket of your team")]
    async fn update_ticket(
        &self,
        Parameters(a): Parameters<TicketArgs>,
    ) -> Result<CallToolResult, ErrorData> {
        text(format!("ticket {} of team {} updated", a.id, a.team))
    }

    #[tool(description = "Delete a ticket")]
    async fn delete_ticket(
        &self,
        Parameters(a): Parameters<TicketArgs>,
    ) -> Result<CallToolResult, ErrorData> {
        text(format!("ticket {} deleted", a.id))
    }

    #[tool(description = "Run a shell command on the ticket server")]
    async fn run_shell(
        &self,
        Parameters(a): Parameters<ShellArgs>,
    ) -> Result<CallToolResult, ErrorData> {
        text(format!("would have run {:?}", a.cmd))
    }
}

#[tool_handler]
impl ServerHandler for Tickets {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new(
                "agentplane-tickets",
                env!("CARGO_PKG_VERSION"),
            ))
            .with_instructions(
                "Support tickets. agentplane decides which tools you may call.".to_string(),
            )
    }
}

/// Serves the tickets skill at `/mcp` on `listener` until the process ends.
pub async fn serve(listener: tokio::net::TcpListener) -> std::io::Result<()> {
    let service = StreamableHttpService::new(
        || Ok(Tickets),
        LocalSessionManager::default().into(),
        StreamableHttpServerConfig::default(),
    );
    let router = axum::Router::new().nest_service("/mcp", service);
    axum::serve(listener, router).await
}
