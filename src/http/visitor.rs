//! Visitor ids for pixel copies: HMAC-SHA256 keyed with the day's salt over
//! (site, IP, user agent), cut to 64 bits. The raw IP is used here and
//! nowhere else: never stored, never logged.

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
    let info = req.connection_info();
    let ip = client_ip(info.realip_remote_addr().unwrap_or_default());
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

/// The address without its port (`1.2.3.4:5` → `1.2.3.4`, `[::1]:5` → `::1`).
fn client_ip(addr: &str) -> &str {
    if let Some(rest) = addr.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match addr.rsplit_once(':') {
        Some((ip, port)) if !ip.contains(':') && port.parse::<u16>().is_ok() => ip,
        _ => addr,
    }
}

#[cfg(test)]
mod tests {
    use super::client_ip;

    #[test]
    fn strips_ports_only() {
        assert_eq!(client_ip("1.2.3.4:5678"), "1.2.3.4");
        assert_eq!(client_ip("1.2.3.4"), "1.2.3.4");
        assert_eq!(client_ip("[::1]:80"), "::1");
        assert_eq!(client_ip("2001:db8::1"), "2001:db8::1");
    }
}
