//! The dashboard: its embedded page and the JSON API under `/api/` that the
//! page (and any script holding a session cookie) uses. `cards` holds the
//! per-site cards (a period in the site's zone, a filter); `api` the rest:
//! login, sites, the inspector, near misses, forwarding, the payload tester
//! and the live feed.

mod api;
pub mod auth;
mod cards;

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
        .service(get("/api/summary", web::get().to(cards::summary)))
        .service(get("/api/series", web::get().to(cards::series)))
        .service(get("/api/top", web::get().to(cards::top)))
        .service(get("/api/recent", web::get().to(cards::recent)))
        .service(get("/api/revenue", web::get().to(cards::revenue)))
        .service(get("/api/conversions", web::get().to(cards::coverage)))
        .service(get("/api/funnel", web::get().to(cards::funnel)))
        .service(get("/api/forwards", web::get().to(api::forwards)))
        .service(get("/api/live", web::get().to(api::live)))
        .service(get("/api/events/lookup", web::get().to(api::lookup)))
        .service(get("/api/near-misses", web::get().to(api::near_misses)))
        .service(get("/api/test", web::post().to(api::test_payload)));
}
