//! `POST /v1/pixel`: the browser pixel. Public (the site key is in every
//! page), so the page's origin must be one of the site's, the copy counts as
//! unauthenticated (its property values never beat a server's), and its
//! `occurred_at` is clamped to its arrival within [`CLOCK_SKEW_SECS`].

use super::{mode, store, test_mode};
use crate::app::App;
use crate::domain::{Event, Source};
use crate::http::body;
use crate::http::error::ApiError;
use crate::metrics::{Endpoint, Fate};
use actix_web::http::header;
use actix_web::middleware::DefaultHeaders;
use actix_web::{web, HttpRequest, HttpResponse};

/// Largest `/v1/pixel` body.
pub const MAX_PIXEL_BYTES: usize = 16 * 1024;

/// How far a pixel's `occurred_at` may stray from its arrival: browsers'
/// clocks drift, and a copy is retried for up to half a minute.
pub const CLOCK_SKEW_SECS: i64 = 15 * 60;

pub fn routes(cfg: &mut web::ServiceConfig) {
    // Every answer, errors included, may be read by any page's script: the
    // pixel reads the status to retry a 5xx or 429 and to stop on a 4xx.
    // No cookie is ever involved (the pixel sends with credentials omitted).
    cfg.service(
        web::resource("/v1/pixel")
            .name(Endpoint::Pixel.as_str())
            .wrap(DefaultHeaders::new().add((header::ACCESS_CONTROL_ALLOW_ORIGIN, "*")))
            .route(web::post().to(pixel)),
    );
}

/// `POST /v1/pixel[?test=1]`: 204 for a new event and a duplicate alike;
/// in test mode 200 with the decision.
async fn pixel(
    app: web::Data<App>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let body = body::read(&req, payload, MAX_PIXEL_BYTES).await?;
    let text = std::str::from_utf8(&body)
        .map_err(|_| ApiError::bad_request("invalid_body", "the body must be UTF-8 JSON"))?;
    let test = test_mode(&req);
    let (key, mut event) = Event::parse_pixel(text).map_err(|e| {
        if !test {
            app.metrics.count(Source::Pixel, Fate::Rejected, 1);
        }
        ApiError::bad_request(e.code, e.message)
    })?;
    let site = app.sites.by_key(&key).ok_or_else(|| {
        ApiError::bad_request("unknown_site", format!("no site has the key {key:?}"))
    })?;
    let origin = request_origin(&req)
        .ok_or_else(|| ApiError::Forbidden("the request has no Origin or Referer header".into()))?;
    if !site.allows_origin(origin) {
        return Err(ApiError::Forbidden(format!(
            "{origin} is not an allowed origin of this site (tally site set {} --origin …)",
            site.name
        )));
    }
    event.clamp_occurred_at(app.clock.now_micros(), CLOCK_SKEW_SECS * 1_000_000);
    event.visitor_id = Some(crate::http::visitor::visitor_id(&app, &site, &req)?);
    let outcome = store(&app, site, vec![event], mode(test)).await?;
    Ok(match outcome.decisions {
        Some(decisions) if test => HttpResponse::Ok().json(serde_json::json!({"test": decisions})),
        _ => HttpResponse::NoContent().finish(),
    })
}

/// The page origin of a request: `Origin`, else `Referer`.
fn request_origin(req: &HttpRequest) -> Option<&str> {
    let get = |name| {
        req.headers()
            .get(name)
            .and_then(|v: &header::HeaderValue| v.to_str().ok())
    };
    get(header::ORIGIN)
        .filter(|o| *o != "null")
        .or_else(|| get(header::REFERER))
}
