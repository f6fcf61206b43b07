//! `agentplane-skill-samples [address]`: the seed's sample services
//! (hello-skill, sentiment-analysis, customer-lookup, web-search,
//! model-registry) on one HTTP server, `127.0.0.1:8080` by default.

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8080".to_string());
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    eprintln!("sample skills on http://{addr}");
    agentplane_skills::samples::serve(listener).await
}
