//! `agentplane-skill-tickets [address]`: the tickets skill on
//! `127.0.0.1:8001` (or the given address), path `/mcp`.

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8001".to_string());
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    eprintln!("tickets skill (MCP, Streamable HTTP) on http://{addr}/mcp");
    agentplane_skills::serve(listener).await
}
