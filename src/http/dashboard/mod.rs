//! The dashboard: its embedded page and the JSON API under `/api/` that the
//! page (and any script holding a session cookie) uses.

mod api;
pub mod auth;

pub use auth::Auth;

use actix_web::web;

/// Registers the dashboard's routes.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/", web::get().to(api::index))
        .route("/ui/{file}", web::get().to(api::file))
        .route("/api/login", web::post().to(api::login))
        .route("/api/logout", web::post().to(api::logout))
        .route("/api/session", web::get().to(api::session))
        .route("/api/sites", web::get().to(api::sites))
        .route("/api/summary", web::get().to(api::summary))
        .route("/api/series", web::get().to(api::series))
        .route("/api/top", web::get().to(api::top))
        .route("/api/recent", web::get().to(api::recent))
        .route("/api/live", web::get().to(api::live));
}
