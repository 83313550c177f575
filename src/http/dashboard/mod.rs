//! The dashboard: its embedded page and the JSON API under `/api/` that the
//! page (and any script holding a session cookie) uses.

mod api;
pub mod auth;

pub use auth::Auth;

use crate::metrics::Endpoint;
use actix_web::web;

/// Registers the dashboard's routes, each named `dashboard` for the
/// request counters.
pub fn routes(cfg: &mut web::ServiceConfig) {
    let get = |path: &str, route: actix_web::Route| {
        web::resource(path.to_owned())
            .name(Endpoint::Dashboard.as_str())
            .route(route)
    };
    cfg.service(get("/", web::get().to(api::index)))
        .service(get("/ui/{file}", web::get().to(api::file)))
        .service(get("/api/login", web::post().to(api::login)))
        .service(get("/api/logout", web::post().to(api::logout)))
        .service(get("/api/session", web::get().to(api::session)))
        .service(get("/api/sites", web::get().to(api::sites)))
        .service(get("/api/summary", web::get().to(api::summary)))
        .service(get("/api/series", web::get().to(api::series)))
        .service(get("/api/top", web::get().to(api::top)))
        .service(get("/api/recent", web::get().to(api::recent)))
        .service(get("/api/live", web::get().to(api::live)))
        .service(get("/api/events/lookup", web::get().to(api::lookup)))
        .service(get("/api/near-misses", web::get().to(api::near_misses)))
        .service(get("/api/test", web::post().to(api::test_payload)));
}
