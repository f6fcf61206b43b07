//! The seed's sample services as real HTTP services, so the demo and the
//! workflow tests carry real request and response bodies:
//!
//! - hello-skill: `POST /hello {"name"}` → a greeting naming the agent;
//! - sentiment-analysis: `POST /analyze {"text"}` → `{"label", "score"}`
//!   from a small word list;
//! - customer-lookup: `GET /customers/{id}` → the customer,
//!   `POST /customers/{id}/notes` → the saved note;
//! - web-search: `POST /search {"q"}` → results;
//! - model-registry: `GET /models` → the models.
//!
//! Each trusts only what agentplane set: the agent's identity comes from
//! `x-agent-id`, never from the body.

use axum::extract::{Json, Path};
use axum::http::HeaderMap;
use axum::routing::{get, post};
use serde_json::{json, Value};

fn agent(h: &HeaderMap) -> String {
    h.get("x-agent-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("unknown")
        .to_string()
}

fn text(v: &Value, k: &str) -> String {
    v.get(k)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

async fn hello(h: HeaderMap, Json(body): Json<Value>) -> Json<Value> {
    let name = match text(&body, "name") {
        n if n.is_empty() => "world".to_string(),
        n => n,
    };
    Json(json!({"message": format!("Hello, {name}!"), "agent": agent(&h)}))
}

/// The sentiment of a text: words for and against, counted.
pub fn sentiment(text: &str) -> (&'static str, f64) {
    const NEGATIVE: &[&str] = &[
        "broken", "bad", "angry", "terrible", "refund", "late", "never", "worst", "cancel",
    ];
    const POSITIVE: &[&str] = &["great", "thanks", "love", "good", "happy", "excellent"];
    let words: Vec<String> = text
        .split(|c: char| !c.is_alphanumeric())
        .map(str::to_lowercase)
        .collect();
    let count = |list: &[&str]| words.iter().filter(|w| list.contains(&w.as_str())).count() as f64;
    let (neg, pos) = (count(NEGATIVE), count(POSITIVE));
    let score = if neg + pos == 0.0 {
        0.0
    } else {
        (pos - neg) / (pos + neg)
    };
    let label = if score < 0.0 {
        "negative"
    } else if score > 0.0 {
        "positive"
    } else {
        "neutral"
    };
    (label, score)
}

async fn analyze(h: HeaderMap, Json(body): Json<Value>) -> Json<Value> {
    let (label, score) = sentiment(&text(&body, "text"));
    // Whether the agent's API key arrived (never its value).
    let key = h.contains_key("x-api-key");
    Json(json!({"label": label, "score": score, "api_key_received": key}))
}

async fn customer(Path(id): Path<String>) -> Json<Value> {
    let gold = id.bytes().map(u32::from).sum::<u32>() % 2 == 0;
    Json(json!({
        "id": id,
        "name": format!("Customer {id}"),
        "tier": if gold { "gold" } else { "standard" },
        "preferred_language": "en",
    }))
}

async fn note(h: HeaderMap, Path(id): Path<String>, Json(body): Json<Value>) -> Json<Value> {
    Json(json!({"customer": id, "saved": body, "by": agent(&h)}))
}

async fn search(Json(body): Json<Value>) -> Json<Value> {
    let q = text(&body, "q");
    Json(json!({"query": q, "results": [
        {"title": format!("Troubleshooting: {q}"), "url": "https://docs.example.com/troubleshooting"},
        {"title": "Returns and replacements", "url": "https://docs.example.com/returns"},
    ]}))
}

async fn models() -> Json<Value> {
    Json(json!({"models": [{"name": "sentiment-v3", "stage": "production"}]}))
}

/// Every sample service on one router.
pub fn router() -> axum::Router {
    axum::Router::new()
        .route("/hello", post(hello))
        .route("/analyze", post(analyze))
        .route("/customers/{id}", get(customer))
        .route("/customers/{id}/notes", post(note))
        .route("/search", post(search))
        .route("/models", get(models))
}

/// Serves the sample services until the process ends.
pub async fn serve(listener: tokio::net::TcpListener) -> std::io::Result<()> {
    axum::serve(listener, router()).await
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn sentiment_reads_the_words() {
        assert_eq!(sentiment("my order arrived broken").0, "negative");
        assert_eq!(sentiment("great service, thanks").0, "positive");
        assert_eq!(sentiment("where is it").0, "neutral");
    }
}
