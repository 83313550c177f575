//! Operations endpoints: `/healthz`, `/metrics`, and the pixel script.

use super::assets;
use super::error::ApiError;
use crate::app::App;
use crate::metrics::Endpoint;
use actix_web::{web, HttpRequest, HttpResponse};

/// `GET /healthz`: 200 when the writer runs and the store is writable.
pub async fn healthz(app: web::Data<App>) -> Result<HttpResponse, ApiError> {
    let ingest = app.ingest()?;
    if ingest.is_healthy() {
        Ok(HttpResponse::Ok().json(serde_json::json!({"status": "ok"})))
    } else {
        Err(ApiError::Unavailable(
            "the store cannot write; see the server log".into(),
        ))
    }
}

/// `GET /metrics`: Prometheus text.
pub async fn metrics(app: web::Data<App>) -> HttpResponse {
    app.metrics.request(Endpoint::Other);
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(app.metrics.render())
}

/// `GET /tally.js`: the pixel.
pub async fn script(app: web::Data<App>, req: HttpRequest) -> Result<HttpResponse, ApiError> {
    app.metrics.request(Endpoint::Script);
    assets::pixel_files()
        .respond(&req, "tally.js")
        .ok_or(ApiError::NotFound)
}
