//! Meta's Conversions API: `POST /{version}/{SITE_KEY}/events` (SPEC §2.4),
//! so a shop plugin or `facebook-business` pointed at Tally sends its
//! purchases here unchanged. The key is `(site, event_name, event_id)`, the
//! pixel's too, so `tally.track('Purchase', {event_id: 'order-42'})` and the
//! CAPI call with `event_id: 'order-42'` count once — Meta's own
//! browser + server rule, on the owner's box.
//!
//! Captured from `facebook-business`: `access_token` in the query, the body
//! form-urlencoded with `data` a JSON array of JSON *strings*; Meta's docs
//! also show JSON and multipart bodies, so all three are read. The SDK
//! judges success from the body alone and raises without `messages` and
//! `fbtrace_id`; errors use Meta's `{"error": {...}}` shape. A request with
//! an invalid event is refused whole, as Meta does.

use super::{mode, site_by_token, store, test_report, validate_each};
use crate::app::App;
use crate::domain::{Event, EventError, Fields, Source};
use crate::http::body;
use crate::http::error::ApiError;
use crate::metrics::Endpoint;
use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse, ResponseError};
use serde_json::value::RawValue;
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

/// Largest body, inflated.
pub const MAX_BODY_BYTES: usize = 4 * 1024 * 1024;
/// Most events in one request (Meta's limit).
pub const MAX_EVENTS: usize = 1_000;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/{version}/{site}/events")
            .name(Endpoint::Meta.as_str())
            .route(web::post().to(events)),
    );
}

/// An error in Meta's shape, with the status of [`ApiError`]'s table.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct MetaError(#[from] ApiError);

impl ResponseError for MetaError {
    fn status_code(&self) -> actix_web::http::StatusCode {
        self.0.status_code()
    }

    fn error_response(&self) -> HttpResponse {
        // Meta's codes: 190 bad token, 100 bad parameter, 4 throttled, 2 unavailable.
        let code = match self.0 {
            ApiError::Unauthorized(_) | ApiError::Forbidden(_) => 190,
            ApiError::QuotaExceeded { .. } | ApiError::RateLimited { .. } => 4,
            ApiError::Unavailable(_) | ApiError::Internal(_) => 2,
            _ => 100,
        };
        // Meta's typed clients read `error_subcode` as a number, so Tally's
        // own code goes in the text field beside the message.
        let transient = matches!(
            self.0,
            ApiError::Unavailable(_)
                | ApiError::QuotaExceeded { .. }
                | ApiError::RateLimited { .. }
        );
        self.0.respond_with(json!({"error": {
            "message": self.0.to_string(),
            "type": "OAuthException",
            "code": code,
            "error_user_title": self.0.code(),
            "error_user_msg": self.0.to_string(),
            "is_transient": transient,
            "fbtrace_id": trace_id(),
        }}))
    }
}

/// A request id in the place Meta puts its trace id.
fn trace_id() -> String {
    let mut b = [0u8; 12];
    rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut b);
    base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, b)
}

/// The parts of a request Tally reads, from wherever the sender put them.
#[derive(Debug, Default, PartialEq)]
struct CapiRequest {
    data: Vec<Value>,
    access_token: Option<String>,
    test_event_code: Option<String>,
}

/// `POST /{version}/{site}/events`.
async fn events(
    app: web::Data<App>,
    req: HttpRequest,
    path: web::Path<(String, String)>,
    payload: web::Payload,
) -> Result<HttpResponse, MetaError> {
    let (version, site_ref) = path.into_inner();
    if !version.starts_with('v') {
        return Err(ApiError::NotFound.into());
    }
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let body = body::read(&req, payload, MAX_BODY_BYTES).await?;
    let capi = parse_request(&content_type, body, req.query_string()).await?;
    let token = capi.access_token.as_deref().ok_or_else(|| {
        ApiError::Unauthorized("access_token is required: the site's API token".into())
    })?;
    let site = site_by_token(&req, token)?;
    if site.site_key != site_ref && site.name != site_ref {
        return Err(ApiError::Unauthorized(format!(
            "the access_token is not the API token of site {site_ref:?}"
        ))
        .into());
    }
    if capi.data.len() > MAX_EVENTS {
        return Err(ApiError::TooLarge(format!(
            "{} events in one request; the limit is {MAX_EVENTS}",
            capi.data.len()
        ))
        .into());
    }
    let (events, positions, errors) = validate_each(&capi.data, to_event);
    if let Some(first) = errors.first() {
        return Err(ApiError::bad_request(
            first.code,
            format!("data[{}]: {}", first.index, first.message),
        )
        .into());
    }
    let test = capi.test_event_code.is_some();
    let outcome = store(&app, site, events, mode(test)).await?;
    let mut answer = json!({
        "events_received": outcome.accepted + outcome.deduplicated,
        "messages": [],
        "fbtrace_id": trace_id(),
    });
    if test {
        answer["test"] = test_report(&outcome, &positions, &errors).into();
    }
    Ok(HttpResponse::Ok().json(answer))
}

/// Reads `data`, `access_token` and `test_event_code` from the query and a
/// JSON, form-urlencoded or multipart body.
async fn parse_request(
    content_type: &str,
    body: web::Bytes,
    query: &str,
) -> Result<CapiRequest, ApiError> {
    let mut out = CapiRequest::default();
    let mut data: Option<Value> = None;
    let set = |out: &mut CapiRequest, data: &mut Option<Value>, k: &str, v: Value| match k {
        "data" => *data = Some(v),
        "access_token" => out.access_token = v.as_str().map(str::to_owned),
        "test_event_code" => {
            out.test_event_code = v.as_str().map(str::to_owned).filter(|s| !s.is_empty())
        }
        _ => {}
    };
    for (k, v) in form_pairs(query.as_bytes())? {
        set(&mut out, &mut data, &k, Value::String(v));
    }
    let first = body.iter().find(|b| !b.is_ascii_whitespace()).copied();
    if content_type.starts_with("multipart/form-data") {
        for (k, v) in multipart_fields(content_type, body).await? {
            set(&mut out, &mut data, &k, Value::String(v));
        }
    } else if content_type.starts_with("application/json") || first == Some(b'{') {
        let fields: Map<String, Value> = serde_json::from_slice(&body).map_err(|e| {
            ApiError::bad_request(
                "invalid_body",
                format!("the JSON body must be an object: {e}"),
            )
        })?;
        for (k, v) in fields {
            set(&mut out, &mut data, &k, v);
        }
    } else if first.is_some() {
        for (k, v) in form_pairs(&body)? {
            set(&mut out, &mut data, &k, Value::String(v));
        }
    }
    out.data = match data {
        None => {
            return Err(ApiError::bad_request(
                "invalid_body",
                "data is required: a list of events",
            ))
        }
        Some(Value::Array(items)) => items,
        Some(Value::String(text)) => match serde_json::from_str(&text) {
            Ok(Value::Array(items)) => items,
            _ => {
                return Err(ApiError::bad_request(
                    "invalid_body",
                    "data must be a JSON array of events",
                ))
            }
        },
        Some(_) => {
            return Err(ApiError::bad_request(
                "invalid_body",
                "data must be a JSON array of events",
            ))
        }
    };
    Ok(out)
}

fn form_pairs(bytes: &[u8]) -> Result<Vec<(String, String)>, ApiError> {
    serde_urlencoded::from_bytes(bytes)
        .map_err(|e| ApiError::bad_request("invalid_body", format!("malformed form data: {e}")))
}

async fn multipart_fields(
    content_type: &str,
    body: web::Bytes,
) -> Result<Vec<(String, String)>, ApiError> {
    let bad = |e: multer::Error| {
        ApiError::bad_request("invalid_body", format!("malformed multipart body: {e}"))
    };
    let boundary = multer::parse_boundary(content_type).map_err(bad)?;
    let stream = futures_util::stream::once(async move { Ok::<_, std::io::Error>(body) });
    let mut parts = multer::Multipart::new(stream, boundary);
    let mut out = Vec::new();
    while let Some(field) = parts.next_field().await.map_err(bad)? {
        let name = field.name().unwrap_or_default().to_owned();
        out.push((name, field.text().await.map_err(bad)?));
    }
    Ok(out)
}

/// Maps one element of `data` (an object, or a JSON string of one) onto
/// an event (SPEC §2.4); an event without `event_id` gets one derived from
/// its content, so an identical resend is still one event.
pub fn to_event(element: &Value) -> Result<Event, EventError> {
    let bad = |m: &str| EventError::new("invalid_event", m.to_owned());
    let parsed;
    let object = match element {
        Value::Object(o) => o,
        Value::String(text) => {
            parsed = serde_json::from_str::<Value>(text)
                .map_err(|_| bad("a data element must be a JSON object"))?;
            parsed
                .as_object()
                .ok_or_else(|| bad("a data element must be a JSON object"))?
        }
        _ => return Err(bad("a data element must be a JSON object")),
    };
    let occurred_at = match object.get("event_time") {
        None | Some(Value::Null) => None,
        Some(t) => Some(unix_seconds(t).ok_or_else(|| {
            EventError::new(
                "invalid_occurred_at",
                "event_time must be Unix seconds in the years 1970 to 9999 (not milliseconds)",
            )
        })?),
    };
    let properties = match object.get("custom_data") {
        None | Some(Value::Null) => None,
        Some(v) => {
            Some(RawValue::from_string(v.to_string()).map_err(|_| bad("custom_data is not JSON"))?)
        }
    };
    let event_id = match object.get("event_id") {
        None | Some(Value::Null) => Value::String(content_key(object)),
        Some(Value::Number(n)) => Value::String(n.to_string()),
        Some(other) => other.clone(),
    };
    let fields = Fields {
        event_id: Some(event_id),
        event_name: object.get("event_name").cloned(),
        occurred_at,
        url: object.get("event_source_url").cloned(),
        properties,
        user_data: object.get("user_data").cloned(),
        ..Fields::default()
    };
    fields.validate(Source::Server)
}

/// `event_time` (seconds, as a number or numeric text) as RFC 3339.
fn unix_seconds(v: &Value) -> Option<Value> {
    let secs = match v {
        Value::Number(n) => n.as_i64().or_else(|| n.as_f64().map(|f| f as i64))?,
        Value::String(s) => s.trim().parse::<i64>().ok()?,
        _ => return None,
    };
    // 9999-12-31T23:59:59Z: a time in milliseconds lands past it.
    if !(0..=253_402_300_799).contains(&secs) {
        return None;
    }
    let t = chrono::DateTime::from_timestamp(secs, 0)?;
    Some(Value::String(
        t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    ))
}

/// A key for an event sent without `event_id`: its name, time, user data
/// and custom data, hashed (object keys sorted, so key order does not matter).
fn content_key(object: &Map<String, Value>) -> String {
    let part = |k: &str| object.get(k).cloned().unwrap_or(Value::Null);
    let canonical = json!([
        part("event_name"),
        part("event_time"),
        part("user_data"),
        part("custom_data")
    ]);
    let digest = Sha256::digest(canonical.to_string().as_bytes());
    format!("capi_{}", &hex::encode(digest)[..32])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::personal::{hash_email, hash_phone};

    #[test]
    fn an_sdk_event_maps_onto_an_event_with_hashed_user_data() {
        let element = Value::String(
            r#"{"event_name": "Purchase", "event_time": 1795428000, "event_source_url": "https://s/thanks",
                "event_id": "order-42", "user_data": {"em": ["Jane@Example.com "], "ph": "+1 (555) 010-9999",
                "client_ip_address": "203.0.113.9"}, "custom_data": {"value": 19.99, "currency": "eur"}}"#
                .into(),
        );
        let e = to_event(&element).unwrap();
        assert_eq!(
            (e.event_id.as_str(), e.event_name.as_str()),
            ("order-42", "Purchase")
        );
        assert_eq!(e.occurred_at, Some(1_795_428_000_000_000));
        assert_eq!(e.url.as_deref(), Some("https://s/thanks"));
        let user = e.user_data.unwrap();
        assert!(user.contains(&hash_email("jane@example.com")), "{user}");
        assert!(user.contains(&hash_phone("15550109999")), "{user}");
        assert!(!user.contains("203.0.113.9"), "never stored: {user}");
        assert!(e.properties.unwrap().contains("19.99"));
    }

    #[test]
    fn an_event_without_id_is_keyed_by_its_content() {
        let a = json!({"event_name": "Lead", "event_time": 1, "custom_data": {"a": 1, "b": 2}});
        let b = json!({"custom_data": {"b": 2, "a": 1}, "event_time": 1, "event_name": "Lead"});
        let c = json!({"event_name": "Lead", "event_time": 2, "custom_data": {"a": 1, "b": 2}});
        let id = |v: &Value| to_event(v).unwrap().event_id;
        assert_eq!(id(&a), id(&b));
        assert_ne!(id(&a), id(&c));
        assert!(id(&a).starts_with("capi_"));
    }

    #[test]
    fn bad_elements_name_the_field() {
        for (v, code) in [
            (json!({"event_id": "x"}), "invalid_event_name"),
            (
                json!({"event_name": "P", "event_time": "soon"}),
                "invalid_occurred_at",
            ),
            (
                json!({"event_name": "P", "event_time": 1_795_600_000_000_i64}),
                "invalid_occurred_at",
            ),
            (
                json!({"event_name": "P", "user_data": {"street": "x"}}),
                "invalid_user_data",
            ),
            (json!(42), "invalid_event"),
            (json!("not json"), "invalid_event"),
        ] {
            assert_eq!(to_event(&v).unwrap_err().code, code, "{v}");
        }
        let ms = to_event(&json!({"event_name": "P", "event_time": 1_795_600_000_000_i64}));
        assert!(ms.unwrap_err().message.contains("not milliseconds"));
    }

    #[actix_web::test]
    async fn errors_are_in_metas_shape_with_numbers_where_meta_has_numbers() {
        let body = |e: ApiError| async move {
            let res = MetaError(e).error_response();
            let status = res.status().as_u16();
            let retry = res.headers().get("retry-after").is_some();
            let bytes = actix_web::body::to_bytes(res.into_body()).await.unwrap();
            let v: Value = serde_json::from_slice(&bytes).unwrap();
            (status, retry, v["error"].clone())
        };
        let (status, _, e) = body(ApiError::Unauthorized("bad token".into())).await;
        assert_eq!(status, 401);
        assert_eq!(
            (
                e["code"].as_u64(),
                e["type"].as_str(),
                e["message"].as_str()
            ),
            (Some(190), Some("OAuthException"), Some("bad token"))
        );
        assert_eq!(e["error_user_title"], "unauthorized");
        assert_eq!(e["is_transient"], false);
        assert!(e.get("error_subcode").is_none(), "Meta's is a number: {e}");
        assert!(!e["fbtrace_id"].as_str().unwrap().is_empty());
        let (status, retry, e) = body(ApiError::Unavailable("queue full".into())).await;
        assert_eq!((status, retry), (503, true));
        assert_eq!(
            (e["code"].as_u64(), &e["is_transient"]),
            (Some(2), &json!(true))
        );
        let (status, _, e) = body(ApiError::bad_request("invalid_event_name", "no name")).await;
        assert_eq!((status, e["code"].as_u64()), (400, Some(100)));
        assert_eq!(e["error_user_title"], "invalid_event_name");
    }

    #[actix_web::test]
    async fn the_three_body_encodings_read_alike() {
        let elem = r#"{"event_name":"Purchase","event_id":"o1"}"#;
        let form = format!(
            "data={}&test_event_code=T1",
            serde_urlencoded::to_string([(
                "x",
                format!("[{}]", serde_json::to_string(elem).unwrap())
            )])
            .unwrap()
            .trim_start_matches("x=")
        );
        let from_form = parse_request(
            "application/x-www-form-urlencoded",
            form.into(),
            "access_token=tok",
        )
        .await
        .unwrap();
        let json_body =
            format!(r#"{{"data":[{elem}],"access_token":"tok","test_event_code":"T1"}}"#);
        let from_json = parse_request("application/json", json_body.into(), "")
            .await
            .unwrap();
        let multipart = format!(
            "--XX\r\nContent-Disposition: form-data; name=\"access_token\"\r\n\r\ntok\r\n\
             --XX\r\nContent-Disposition: form-data; name=\"test_event_code\"\r\n\r\nT1\r\n\
             --XX\r\nContent-Disposition: form-data; name=\"data\"\r\n\r\n[{elem}]\r\n--XX--\r\n"
        );
        let from_multipart =
            parse_request("multipart/form-data; boundary=XX", multipart.into(), "")
                .await
                .unwrap();
        for r in [&from_form, &from_json, &from_multipart] {
            assert_eq!(r.access_token.as_deref(), Some("tok"));
            assert_eq!(r.test_event_code.as_deref(), Some("T1"));
            assert_eq!(to_event(&r.data[0]).unwrap().event_id, "o1");
        }
        assert!(parse_request("application/json", "{}".into(), "")
            .await
            .is_err());
    }

    fn json_value() -> impl proptest::strategy::Strategy<Value = Value> {
        use proptest::prelude::*;
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            ".{0,12}".prop_map(Value::from),
        ];
        leaf.prop_recursive(4, 32, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::from),
                proptest::collection::btree_map(
                    "(event_name|event_id|event_time|user_data|custom_data|em|[a-z]{1,5})",
                    inner,
                    0..6
                )
                .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest::proptest! {
        #[test]
        fn any_data_element_maps_or_is_refused_with_a_code(v in json_value()) {
            if let Err(e) = to_event(&v) {
                proptest::prop_assert!(e.code.starts_with("invalid_"));
            }
        }
    }
}
