//! The two ingest endpoints: `POST /v1/events` (server senders, bearer
//! token, batches) and `POST /v1/pixel` (the browser, origin-checked).
//! Both parse at the boundary and hand typed events to the ingest pipeline;
//! they answer only after the commit.

use super::body;
use super::error::ApiError;
use crate::app::App;
use crate::domain::{Event, Site, Source};
use crate::metrics::{Endpoint, Fate};
use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use std::sync::Arc;

/// Largest `/v1/events` body.
pub const MAX_BATCH_BYTES: usize = 1024 * 1024;
/// Most events in one `/v1/events` batch.
pub const MAX_BATCH_EVENTS: usize = 1_000;
/// Largest `/v1/pixel` body.
pub const MAX_PIXEL_BYTES: usize = 16 * 1024;

#[derive(Deserialize)]
struct Batch {
    events: Vec<Box<RawValue>>,
}

/// One rejected event of a batch.
#[derive(Debug, Serialize)]
struct Rejection {
    index: usize,
    code: &'static str,
    message: String,
}

#[derive(Debug, Serialize)]
struct BatchAnswer {
    accepted: u64,
    deduplicated: u64,
    rejected: u64,
    errors: Vec<Rejection>,
}

/// `POST /v1/events`.
pub async fn events(
    app: web::Data<App>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    app.metrics.request(Endpoint::Events);
    let site = authenticate(&app, &req)?;
    let body = body::read(&req, payload, MAX_BATCH_BYTES).await?;
    check_quota(&app, &site)?;
    let batch: Batch = serde_json::from_slice(&body).map_err(|e| {
        ApiError::bad_request(
            "invalid_body",
            format!("the body must be a JSON object {{\"events\": [...]}}: {e}"),
        )
    })?;
    if batch.events.len() > MAX_BATCH_EVENTS {
        return Err(ApiError::TooLarge(format!(
            "{} events in one batch; the limit is {MAX_BATCH_EVENTS}",
            batch.events.len()
        )));
    }
    let mut events = Vec::with_capacity(batch.events.len());
    let mut errors = Vec::new();
    for (index, raw) in batch.events.iter().enumerate() {
        match Event::parse(raw.get(), Source::Server) {
            Ok(event) => events.push(event),
            Err(e) => errors.push(Rejection {
                index,
                code: e.code,
                message: e.message,
            }),
        }
    }
    let outcome = if events.is_empty() {
        Default::default()
    } else {
        app.ingest()?.ingest(site, events).await?
    };
    app.metrics
        .count(Source::Server, Fate::Rejected, errors.len() as u64);
    Ok(HttpResponse::Ok().json(BatchAnswer {
        accepted: outcome.accepted,
        deduplicated: outcome.deduplicated,
        rejected: errors.len() as u64,
        errors,
    }))
}

/// 429 once `site` has spent its daily quota.
fn check_quota(app: &App, site: &Site) -> Result<(), ApiError> {
    app.ingest()?
        .quotas
        .check(site, app.clock.now_micros())
        .map_err(|q| ApiError::QuotaExceeded {
            retry_after: q.retry_after_secs,
        })
}

fn authenticate(app: &App, req: &HttpRequest) -> Result<Arc<Site>, ApiError> {
    let value = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| {
            ApiError::Unauthorized(
                "send the site's API token as Authorization: Bearer TOKEN".into(),
            )
        })?;
    let token = value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))
        .map(str::trim)
        .ok_or_else(|| {
            ApiError::Unauthorized("the Authorization header must be Bearer TOKEN".into())
        })?;
    app.sites.by_token(token).ok_or_else(|| {
        ApiError::Unauthorized("the API token is not valid (was it rotated?)".into())
    })
}

/// `POST /v1/pixel`.
pub async fn pixel(
    app: web::Data<App>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    app.metrics.request(Endpoint::Pixel);
    let body = body::read(&req, payload, MAX_PIXEL_BYTES).await?;
    let text = std::str::from_utf8(&body)
        .map_err(|_| ApiError::bad_request("invalid_body", "the body must be UTF-8 JSON"))?;
    let (key, mut event) = Event::parse_pixel(text).map_err(|e| {
        app.metrics.count(Source::Pixel, Fate::Rejected, 1);
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
    check_quota(&app, &site)?;
    event.visitor_id = Some(super::visitor::visitor_id(&app, &site, &req)?);
    app.ingest()?.ingest(site, vec![event]).await?;
    let mut res = HttpResponse::NoContent();
    // Lets the pixel's fetch fallback read the status, to retry on 5xx.
    if let Some(allowed) = req.headers().get(header::ORIGIN) {
        res.insert_header((header::ACCESS_CONTROL_ALLOW_ORIGIN, allowed.clone()));
    }
    Ok(res.finish())
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
