//! The bare actix-web ceiling for `/v1/pixel` benchmarks: the same route
//! and CORS header, the body read and parsed as the pixel's JSON, a 204 —
//! no dedup, no store, no durable ack. Every pixel figure in BENCHMARKS.md
//! is also a ratio to this, measured in the same run.
//!
//! ```text
//! cargo run --release --example ceiling -- 127.0.0.1:PORT
//! ```

use actix_web::{web, App, HttpResponse, HttpServer};

/// The fields the pixel sends.
#[derive(serde::Deserialize)]
#[allow(dead_code)]
struct PixelEvent {
    site: String,
    event_id: String,
    event_name: String,
    session_id: Option<String>,
    url: Option<String>,
    referrer: Option<String>,
    properties: Option<serde_json::Map<String, serde_json::Value>>,
}

async fn pixel(body: web::Bytes) -> HttpResponse {
    match serde_json::from_slice::<PixelEvent>(&body) {
        Ok(_) => HttpResponse::NoContent()
            .insert_header(("Access-Control-Allow-Origin", "*"))
            .finish(),
        Err(e) => HttpResponse::BadRequest().body(e.to_string()),
    }
}

#[actix_web::main]
async fn main() -> std::io::Result<()> {
    let listen = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8090".into());
    // Two workers, as `tally serve` runs.
    HttpServer::new(|| App::new().route("/v1/pixel", web::post().to(pixel)))
        .workers(2)
        .bind(listen)?
        .run()
        .await
}
