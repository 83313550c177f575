//! Operations endpoints: `/healthz`, `/metrics`, and the pixel script.

use super::assets;
use super::error::ApiError;
use crate::app::App;
use crate::metrics::Endpoint;
use actix_web::{web, HttpRequest, HttpResponse};

/// Registers `/healthz`, `/metrics` and `/tally.js`.
pub fn routes(cfg: &mut web::ServiceConfig) {
    let named = |path: &str, e: Endpoint| web::resource(path.to_owned()).name(e.as_str());
    cfg.service(named("/healthz", Endpoint::Health).route(web::get().to(healthz)))
        .service(named("/metrics", Endpoint::Metrics).route(web::get().to(metrics)))
        .service(
            named("/tally.js", Endpoint::Script)
                .route(web::get().to(script))
                .route(web::head().to(script)),
        );
}

/// `GET /healthz`: 200 when the writer runs and the store is writable.
async fn healthz(app: web::Data<App>) -> Result<HttpResponse, ApiError> {
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
async fn metrics(app: web::Data<App>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(
            app.metrics
                .render(&app.forward_stats.render(&app.destinations)),
        )
}

/// `GET /tally.js`: the pixel.
async fn script(req: HttpRequest) -> Result<HttpResponse, ApiError> {
    assets::pixel_files()
        .respond(&req, "tally.js")
        .ok_or(ApiError::NotFound)
}
