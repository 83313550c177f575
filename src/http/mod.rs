//! actix-web only: routes, the error → status table, embedded assets.
//! Handlers parse requests into domain types and call the [`App`]; no SQL
//! and no dedup rule lives here.

pub mod assets;
pub(crate) mod body;
pub mod dashboard;
pub mod error;
mod ingest;
mod ops;
mod visitor;

use crate::app::App;
use actix_web::{web, HttpServer};
use std::future::Future;
use std::net::TcpListener;
use std::sync::Arc;

/// Registers every route.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/v1/events", web::post().to(ingest::events))
        .route("/v1/pixel", web::post().to(ingest::pixel))
        .route("/tally.js", web::get().to(ops::script))
        .route("/tally.js", web::head().to(ops::script))
        .route("/healthz", web::get().to(ops::healthz))
        .route("/metrics", web::get().to(ops::metrics))
        .configure(dashboard::routes);
}

/// Headers on every answer: no inline script may run in the dashboard, no
/// page may frame it, no MIME sniffing.
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// Serves HTTP on `listener` until `shutdown` resolves, then stops taking
/// connections and lets in-flight requests finish.
pub async fn serve(
    app: Arc<App>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let data = web::Data::from(app);
    let auth = web::Data::new(dashboard::Auth::default());
    let server = HttpServer::new(move || {
        actix_web::App::new()
            .app_data(data.clone())
            .app_data(auth.clone())
            .wrap(
                actix_web::middleware::DefaultHeaders::new()
                    .add(("Content-Security-Policy", CSP))
                    .add(("X-Content-Type-Options", "nosniff"))
                    .add(("Referrer-Policy", "same-origin")),
            )
            .configure(routes)
            .default_service(web::to(|| async {
                Err::<actix_web::HttpResponse, _>(error::ApiError::NotFound)
            }))
    })
    .workers(2)
    .disable_signals()
    .shutdown_timeout(5)
    .listen(listener)?
    .run();
    let handle = server.handle();
    tokio::spawn(async move {
        shutdown.await;
        handle.stop(true).await;
    });
    server.await
}
