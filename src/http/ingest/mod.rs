//! The ingest endpoints, one file per wire protocol: the `/v1/events` batch
//! shape ([`events`]), the pixel ([`pixel`]), Segment / RudderStack
//! ([`segment`]) and Meta's Conversions API ([`meta`]). Each maps its
//! payload onto [`crate::domain::Fields`], so every protocol shares one set
//! of validation rules, and hands the events to [`store`], which checks the
//! quota and answers after the commit. Adding a protocol is one file, a line
//! in [`routes`] and its [`Endpoint`](crate::metrics::Endpoint) name.
//!
//! Every protocol takes `?test=1` (Meta: `test_event_code`): the same
//! validation, hashing and decisions, answered per event, nothing stored.

mod events;
mod meta;
mod pixel;
mod segment;

use super::error::ApiError;
use crate::app::App;
use crate::domain::{Event, EventError, Site};
use crate::ingest::{Mode, Outcome};
use actix_web::dev::Payload;
use actix_web::http::header;
use actix_web::{web, FromRequest, HttpRequest};
use base64::Engine;
use serde::Serialize;
use std::future::{ready, Ready};
use std::sync::Arc;

/// Registers every ingest route.
pub fn routes(cfg: &mut web::ServiceConfig) {
    events::routes(cfg);
    pixel::routes(cfg);
    segment::routes(cfg);
    meta::routes(cfg);
}

/// The site a request authenticates as with its API token, sent as
/// `Authorization: Bearer TOKEN` or as HTTP Basic with the token as the user
/// name (the "write key" of Segment-style SDKs). 401 otherwise.
pub struct Sender(pub Arc<Site>);

impl FromRequest for Sender {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready(authenticate(req).map(Sender))
    }
}

fn authenticate(req: &HttpRequest) -> Result<Arc<Site>, ApiError> {
    let token = credentials(req)?.ok_or_else(|| {
        ApiError::Unauthorized("send the site's API token as Authorization: Bearer TOKEN".into())
    })?;
    site_by_token(req, &token)
}

/// The API token in the `Authorization` header, if there is one: `Bearer
/// TOKEN`, or Basic with the token as user name (any password).
pub fn credentials(req: &HttpRequest) -> Result<Option<String>, ApiError> {
    let Some(value) = req.headers().get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let value = value.to_str().unwrap_or_default().trim();
    let (scheme, rest) = value.split_once(' ').unwrap_or((value, ""));
    let rest = rest.trim();
    if scheme.eq_ignore_ascii_case("bearer") && !rest.is_empty() {
        return Ok(Some(rest.to_owned()));
    }
    if scheme.eq_ignore_ascii_case("basic") {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(rest)
            .ok()
            .and_then(|b| String::from_utf8(b).ok());
        if let Some(pair) = decoded {
            let user = pair.split_once(':').map_or(pair.as_str(), |(u, _)| u);
            if !user.is_empty() {
                return Ok(Some(user.to_owned()));
            }
        }
    }
    Err(ApiError::Unauthorized(
        "the Authorization header must be Bearer TOKEN, or Basic with the token as user name"
            .into(),
    ))
}

/// The site whose API token is `token`, or 401.
pub fn site_by_token(req: &HttpRequest, token: &str) -> Result<Arc<Site>, ApiError> {
    app(req).sites.by_token(token).ok_or_else(|| {
        ApiError::Unauthorized("the API token is not valid (was it rotated?)".into())
    })
}

fn app(req: &HttpRequest) -> &App {
    req.app_data::<web::Data<App>>()
        .expect("the App is registered as app data")
}

/// Whether the request asks for test mode (`?test=1` or `?test=true`).
pub fn test_mode(req: &HttpRequest) -> bool {
    req.query_string().split('&').any(|pair| {
        matches!(
            pair.split_once('=').unwrap_or((pair, "1")),
            ("test", "1" | "true" | "")
        )
    })
}

/// Checks the site's quota (test mode too, which answers as live would, but
/// never counts against it), then stores `events` or, in test mode, decides
/// them; answers after the commit.
pub async fn store(
    app: &App,
    site: Arc<Site>,
    events: Vec<Event>,
    mode: Mode,
) -> Result<Outcome, ApiError> {
    if events.is_empty() {
        return Ok(Outcome::default());
    }
    let ingest = app.ingest()?;
    ingest
        .quotas
        .check(&site, app.clock.now_micros())
        .map_err(|q| ApiError::QuotaExceeded {
            retry_after: q.retry_after_secs,
        })?;
    Ok(ingest.ingest(site, events, mode).await?)
}

/// The mode of a request: test or live.
pub fn mode(test: bool) -> Mode {
    if test {
        Mode::Test { history: false }
    } else {
        Mode::Live
    }
}

/// One event of a request refused by validation.
#[derive(Debug, Clone, Serialize)]
pub struct Rejection {
    /// Its position in the request.
    pub index: usize,
    /// Machine-readable code naming the field.
    pub code: &'static str,
    /// What is wrong.
    pub message: String,
}

/// Validates a request's events one by one: the valid ones, and a
/// [`Rejection`] per invalid one.
pub fn validate_each<T>(
    items: impl IntoIterator<Item = T>,
    parse: impl Fn(T) -> Result<Event, EventError>,
) -> (Vec<Event>, Vec<usize>, Vec<Rejection>) {
    let mut events = Vec::new();
    let mut positions = Vec::new();
    let mut rejections = Vec::new();
    for (index, item) in items.into_iter().enumerate() {
        match parse(item) {
            Ok(e) => {
                events.push(e);
                positions.push(index);
            }
            Err(e) => rejections.push(Rejection {
                index,
                code: e.code,
                message: e.message,
            }),
        }
    }
    (events, positions, rejections)
}

/// Test mode's per-event answer: every event of the request in order, the
/// decision for a valid one and the rejection for an invalid one.
pub fn test_report(
    outcome: &Outcome,
    positions: &[usize],
    rejections: &[Rejection],
) -> Vec<serde_json::Value> {
    let mut out: Vec<(usize, serde_json::Value)> = Vec::new();
    for (d, index) in outcome.decisions.iter().flatten().zip(positions) {
        let mut v = serde_json::to_value(d).unwrap_or_default();
        v["index"] = (*index).into();
        out.push((*index, v));
    }
    for r in rejections {
        out.push((
            r.index,
            serde_json::json!({"index": r.index, "outcome": "rejected", "code": r.code, "message": r.message}),
        ));
    }
    out.sort_by_key(|(i, _)| *i);
    out.into_iter().map(|(_, v)| v).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::test::TestRequest;

    #[test]
    fn credentials_come_as_bearer_or_basic_user() {
        let req = TestRequest::default()
            .insert_header(("Authorization", "Bearer tly_x"))
            .to_http_request();
        assert_eq!(credentials(&req).unwrap().as_deref(), Some("tly_x"));
        let basic = base64::engine::general_purpose::STANDARD.encode("tly_y:");
        let req = TestRequest::default()
            .insert_header(("Authorization", format!("Basic {basic}")))
            .to_http_request();
        assert_eq!(credentials(&req).unwrap().as_deref(), Some("tly_y"));
        let req = TestRequest::default().to_http_request();
        assert_eq!(credentials(&req).unwrap(), None);
        let req = TestRequest::default()
            .insert_header(("Authorization", "Token abc"))
            .to_http_request();
        assert!(credentials(&req).is_err());
    }

    #[test]
    fn test_mode_reads_the_query() {
        for (q, on) in [
            ("test=1", true),
            ("a=b&test=true", true),
            ("test=0", false),
            ("", false),
        ] {
            let req = TestRequest::with_uri(&format!("/v1/events?{q}")).to_http_request();
            assert_eq!(test_mode(&req), on, "{q}");
        }
    }
}
