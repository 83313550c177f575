//! actix-web only: routes, the error → status table, embedded assets.
//! Handlers parse requests into domain types and call the [`App`]; no SQL
//! and no dedup rule lives here.

pub mod assets;
pub(crate) mod body;
pub mod client_ip;
pub mod dashboard;
pub mod error;
mod ingest;
mod ops;
mod visitor;

use crate::app::App;
use crate::metrics::Endpoint;
use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::{from_fn, Next};
use actix_web::{web, HttpServer};
use std::future::Future;
use std::net::TcpListener;
use std::sync::Arc;

/// Registers every route. Each resource is named after its
/// [`Endpoint`], which is how requests are counted by route.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.configure(ingest::routes)
        .configure(ops::routes)
        .configure(dashboard::routes);
}

/// Counts every answer by endpoint and status.
async fn count_requests(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let res = next.call(req).await?;
    if let Some(app) = res.request().app_data::<web::Data<App>>() {
        let endpoint = Endpoint::of_route(res.request().match_name());
        app.metrics.request(endpoint, res.status().as_u16());
    }
    Ok(res)
}

/// Lives as long as its connection: counts open connections.
struct OpenConnection(Arc<crate::metrics::Metrics>);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.connection(-1);
    }
}

/// Headers on every answer: no inline script may run in the dashboard, no
/// page may frame it, no MIME sniffing.
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// HTTP worker threads (the machine class Tally targets has two cores; the
/// writer thread and DuckDB take the rest).
const WORKERS: usize = 2;

/// Connections each worker holds at most: what the open-file limit leaves
/// after the store, the control socket and some slack, so a flood of idle
/// connections makes new ones wait in the backlog instead of failing
/// `accept` (and `/healthz`) with "too many open files".
fn max_connections() -> usize {
    let soft = rlimit::getrlimit(rlimit::Resource::NOFILE).map_or(1024, |(soft, _)| soft);
    (soft.saturating_sub(256) as usize / WORKERS).clamp(64, 25_000)
}

/// Raises the soft open-file limit to the hard one (systemd starts services
/// at 1,024); returns the new soft limit.
pub fn raise_open_file_limit() -> std::io::Result<u64> {
    rlimit::increase_nofile_limit(u64::MAX)
}

/// Serves HTTP on `listener` until `shutdown` resolves, then stops taking
/// connections and lets in-flight requests finish.
pub async fn serve(
    app: Arc<App>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let auth = web::Data::new(dashboard::Auth::new(app.password_epoch.clone()));
    let metrics = app.metrics.clone();
    let data = web::Data::from(app);
    let server = HttpServer::new(move || {
        actix_web::App::new()
            .app_data(data.clone())
            .app_data(auth.clone())
            .app_data(web::QueryConfig::default().error_handler(|e, _| error::extractor_error(e)))
            .app_data(web::PathConfig::default().error_handler(|e, _| error::extractor_error(e)))
            .app_data(web::JsonConfig::default().error_handler(|e, _| error::extractor_error(e)))
            .wrap(
                actix_web::middleware::DefaultHeaders::new()
                    .add(("Content-Security-Policy", CSP))
                    .add(("X-Content-Type-Options", "nosniff"))
                    .add(("Referrer-Policy", "same-origin")),
            )
            .wrap(from_fn(count_requests))
            .configure(routes)
            .default_service(web::to(|| async {
                Err::<actix_web::HttpResponse, _>(error::ApiError::NotFound)
            }))
    })
    .on_connect(move |_, ext| {
        metrics.connection(1);
        ext.insert(OpenConnection(metrics.clone()));
    })
    .workers(WORKERS)
    .max_connections(max_connections())
    .client_request_timeout(std::time::Duration::from_secs(5))
    .client_disconnect_timeout(std::time::Duration::from_secs(1))
    .keep_alive(std::time::Duration::from_secs(30))
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
