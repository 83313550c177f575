//! Visitor ids for pixel copies: HMAC-SHA256 keyed with the day's salt over
//! (site, IP, user agent), cut to 64 bits. The raw IP is used here and
//! nowhere else: never stored, never logged. The IP is the peer's unless a
//! trusted proxy reports another (see [`super::client_ip`]).

use super::client_ip::client_ip;
use super::error::ApiError;
use crate::app::App;
use crate::domain::Site;
use actix_web::http::header;
use actix_web::HttpRequest;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The visitor id of the request's client for `site`, for today.
pub fn visitor_id(app: &App, site: &Site, req: &HttpRequest) -> Result<String, ApiError> {
    let salt = app.daily_salt().map_err(|e| {
        ApiError::Unavailable(format!("the store cannot write the day's salt: {e}"))
    })?;
    let ip = client_ip(req, &app.config.trusted_proxies).to_string();
    let agent = req
        .headers()
        .get(header::USER_AGENT)
        .map(|v| v.as_bytes())
        .unwrap_or_default();
    let mut mac = Hmac::<Sha256>::new_from_slice(salt.as_bytes())
        .map_err(|e| ApiError::Internal(format!("visitor hash: {e}")))?;
    mac.update(&site.id.to_le_bytes());
    mac.update(ip.as_bytes());
    mac.update(&[0]);
    mac.update(agent);
    Ok(hex::encode(&mac.finalize().into_bytes()[..8]))
}
