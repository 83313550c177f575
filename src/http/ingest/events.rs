//! `POST /v1/events`: server-side senders, bearer token, batches in Tally's
//! own shape (SPEC §2.3).

use super::{mode, store, test_mode, test_report, validate_each, Rejection, Sender};
use crate::app::App;
use crate::domain::{Event, Source};
use crate::http::body;
use crate::http::error::ApiError;
use crate::metrics::{Endpoint, Fate};
use actix_web::{web, HttpRequest, HttpResponse};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// Largest `/v1/events` body.
pub const MAX_BATCH_BYTES: usize = 1024 * 1024;
/// Most events in one `/v1/events` batch.
pub const MAX_BATCH_EVENTS: usize = 1_000;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/v1/events")
            .name(Endpoint::Events.as_str())
            .route(web::post().to(events)),
    );
}

#[derive(Deserialize)]
struct Batch {
    events: Vec<Box<RawValue>>,
}

#[derive(Debug, Serialize)]
struct BatchAnswer {
    accepted: u64,
    deduplicated: u64,
    rejected: u64,
    errors: Vec<Rejection>,
    /// Test mode: per event, what would happen and why.
    #[serde(skip_serializing_if = "Option::is_none")]
    test: Option<Vec<serde_json::Value>>,
}

/// Parses a `{"events": [...]}` body; a JSON array (serde's sequence form of
/// a struct) or anything else is a 400.
fn parse_batch(body: &[u8]) -> Result<Batch, ApiError> {
    let shape = || {
        ApiError::bad_request(
            "invalid_body",
            "the body must be a JSON object {\"events\": [...]}",
        )
    };
    let first = body.iter().find(|b| !b.is_ascii_whitespace());
    if first != Some(&b'{') {
        return Err(shape());
    }
    serde_json::from_slice(body).map_err(|e| {
        ApiError::bad_request(
            "invalid_body",
            format!("the body must be a JSON object {{\"events\": [...]}}: {e}"),
        )
    })
}

/// `POST /v1/events[?test=1]`.
async fn events(
    app: web::Data<App>,
    Sender(site): Sender,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let body = body::read(&req, payload, MAX_BATCH_BYTES).await?;
    let batch = parse_batch(&body)?;
    if batch.events.len() > MAX_BATCH_EVENTS {
        return Err(ApiError::TooLarge(format!(
            "{} events in one batch; the limit is {MAX_BATCH_EVENTS}",
            batch.events.len()
        )));
    }
    let test = test_mode(&req);
    let (events, positions, errors) = validate_each(batch.events.iter(), |raw| {
        Event::parse(raw.get(), Source::Server)
    });
    let outcome = store(&app, site, events, mode(test)).await?;
    if !test {
        app.metrics
            .count(Source::Server, Fate::Rejected, errors.len() as u64);
    }
    Ok(HttpResponse::Ok().json(BatchAnswer {
        accepted: outcome.accepted,
        deduplicated: outcome.deduplicated,
        rejected: errors.len() as u64,
        test: test.then(|| test_report(&outcome, &positions, &errors)),
        errors,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_object_is_a_batch() {
        assert!(parse_batch(br#" {"events": []}"#).is_ok());
        for bad in [
            &br#"[[{"event_id":"a"}]]"#[..],
            b"[]",
            b"",
            b"{\"events\": 1}",
            b"null",
        ] {
            assert!(
                parse_batch(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
