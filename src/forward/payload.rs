//! What goes on the wire to each kind of destination, and how its answer is
//! read: pure functions, so the exact bytes and signatures are unit-tested.

use crate::domain::forward::Destination;
use crate::store::outbox::Forwarded;
use hmac::{Hmac, Mac};
use serde_json::{json, Map, Value};
use sha2::Sha256;

/// The header carrying the body's HMAC-SHA256: `sha256=HEX`.
pub const SIGNATURE_HEADER: &str = "X-Tally-Signature";
/// The header carrying the send time (Unix seconds), also in the signed body
/// as `sent_at`: a receiver refuses old timestamps to stop replays.
pub const TIMESTAMP_HEADER: &str = "X-Tally-Timestamp";
/// The header carrying the event's id, the same on every retry.
pub const IDEMPOTENCY_HEADER: &str = "Idempotency-Key";

fn object(text: Option<&str>) -> Value {
    text.and_then(|t| serde_json::from_str(t).ok())
        .unwrap_or_else(|| Value::Object(Map::new()))
}

fn rfc3339(micros: i64) -> String {
    chrono::DateTime::from_timestamp_micros(micros)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true))
        .unwrap_or_default()
}

/// A webhook body: one event as JSON, with its idempotency key and the
/// send time inside the signed bytes.
pub fn webhook_body(e: &Forwarded, d: &Destination, sent_at: i64) -> Vec<u8> {
    let body = json!({
        "idempotency_key": e.event_id,
        "site": e.site,
        "event_id": e.event_id,
        "event_name": d.outgoing_name(&e.event_name),
        "source": e.source,
        "sources_seen": e.sources_seen,
        "occurred_at": rfc3339(e.occurred_at),
        "received_at": rfc3339(e.received_at),
        "url": e.url,
        "referrer": e.referrer,
        "session_id": e.session_id,
        "user_id": e.user_id,
        "anonymous_id": e.anonymous_id,
        "properties": object(e.properties.as_deref()),
        "user_data": object(e.user_data.as_deref()),
        "sent_at": sent_at,
    });
    serde_json::to_vec(&body).unwrap_or_default()
}

/// `sha256=` and the hex HMAC-SHA256 of `body` under `secret` (GitHub's
/// `X-Hub-Signature-256` convention).
pub fn signature(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// The Conversions API `data` element of one event: hashed user data
/// (never an IP), properties as `custom_data`.
pub fn meta_event(e: &Forwarded, d: &Destination) -> Value {
    let mut user = object(e.user_data.as_deref());
    if let Value::Object(map) = &mut user {
        map.remove("client_ip_address");
    }
    let mut element = json!({
        "event_name": d.outgoing_name(&e.event_name),
        "event_time": e.occurred_at.div_euclid(1_000_000),
        "event_id": e.event_id,
        "action_source": "website",
        "user_data": user,
        "custom_data": object(e.properties.as_deref()),
    });
    if let Some(url) = &e.url {
        element["event_source_url"] = Value::String(url.clone());
    }
    element
}

/// The whole Conversions API request body.
pub fn meta_body(
    events: &[&Forwarded],
    d: &Destination,
    token: &str,
    test_code: Option<&str>,
) -> Value {
    let mut body = json!({
        "data": events.iter().map(|e| meta_event(e, d)).collect::<Vec<_>>(),
        "access_token": token,
    });
    if let Some(code) = test_code {
        body["test_event_code"] = Value::String(code.to_owned());
    }
    body
}

/// How an answer reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Delivered.
    Delivered,
    /// Try again later (network trouble, 429, 5xx); `retry_after` when the
    /// receiver said how long to wait.
    Retry {
        /// Why.
        error: String,
        /// Seconds the receiver asked for.
        retry_after: Option<u64>,
    },
    /// Will never succeed as sent (a 4xx other than 408/429): park it.
    Reject {
        /// Why.
        error: String,
        /// The refusal may concern some events of a batch only (Meta's
        /// "invalid parameter", code 100, refuses a whole request for one
        /// bad event): send the halves apart to find them.
        per_event: bool,
    },
}

/// Reads a receiver's status, `Retry-After` and body. For Meta, the body
/// decides: `events_received` is success, an `error` object a failure
/// (Meta's transient codes 1, 2, 4, 17, 341 are retried).
pub fn judge(status: u16, retry_after: Option<u64>, body: &str, meta: bool) -> Verdict {
    let error_text = |prefix: String| {
        let snippet: String = body.chars().take(300).collect();
        if snippet.is_empty() {
            prefix
        } else {
            format!("{prefix}: {snippet}")
        }
    };
    if meta {
        if let Ok(v) = serde_json::from_str::<Value>(body) {
            if let Some(err) = v.get("error") {
                let code = err["code"].as_i64().unwrap_or_default();
                let message = format!(
                    "Meta error {code}: {}",
                    err["message"].as_str().unwrap_or("(no message)")
                );
                return if matches!(code, 1 | 2 | 4 | 17 | 341) || status == 429 || status >= 500 {
                    Verdict::Retry {
                        error: message,
                        retry_after,
                    }
                } else {
                    Verdict::Reject {
                        error: message,
                        per_event: code == 100,
                    }
                };
            }
            if (200..300).contains(&status) && v.get("events_received").is_some() {
                return Verdict::Delivered;
            }
        }
    } else if (200..300).contains(&status) {
        return Verdict::Delivered;
    }
    match status {
        408 | 429 | 500..=599 => Verdict::Retry {
            error: error_text(format!("HTTP {status}")),
            retry_after,
        },
        200..=299 => Verdict::Retry {
            error: error_text(format!("HTTP {status} without events_received")),
            retry_after,
        },
        _ => Verdict::Reject {
            error: error_text(format!("HTTP {status}")),
            per_event: false,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::forward::{Target, DEFAULT_MAX_AGE_SECS, DEFAULT_MAX_ATTEMPTS};

    fn event() -> Forwarded {
        Forwarded {
            site: "shop".into(),
            event_id: "ord_42".into(),
            event_name: "order.completed".into(),
            source: "server".into(),
            sources_seen: vec!["pixel".into(), "server".into()],
            occurred_at: 1_795_428_000_000_000,
            received_at: 1_795_428_001_000_000,
            url: Some("https://shop.example/thanks".into()),
            referrer: None,
            session_id: None,
            properties: Some(r#"{"value":199.99,"currency":"EUR","order_id":"42"}"#.into()),
            user_data: Some(r#"{"em":"abc","client_ip_address":"1.2.3.4"}"#.into()),
            user_id: None,
            anonymous_id: None,
        }
    }

    fn meta() -> Destination {
        Destination {
            id: 1,
            site: "shop".into(),
            target: Target::Meta {
                pixel_id: "123".into(),
                token: "T".into(),
                graph_url: "http://127.0.0.1:1".into(),
                test_event_code: None,
            },
            events: None,
            settle_secs: 0,
            rename: [("order.completed".to_owned(), "Purchase".to_owned())].into(),
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            max_age_secs: DEFAULT_MAX_AGE_SECS,
        }
    }

    #[test]
    fn a_webhook_body_is_signed_and_carries_its_key() {
        let body = webhook_body(&event(), &meta(), 1_800_000_000);
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["idempotency_key"], "ord_42");
        assert_eq!(v["occurred_at"], "2026-11-23T10:00:00.000000Z");
        assert_eq!(v["properties"]["value"], 199.99);
        assert_eq!(v["sent_at"], 1_800_000_000);
        // The signature a receiver recomputes from the raw body and the secret.
        let sig = signature("s3cret", &body);
        assert!(sig.starts_with("sha256=") && sig.len() == 7 + 64);
        assert_ne!(sig, signature("other", &body));
        assert_eq!(
            signature("key", b"The quick brown fox jumps over the lazy dog"),
            "sha256=f7bc83f430538424b13298e6aa6fb143ef4d59a14946175997479dbc2d1a3cd8"
        );
    }

    #[test]
    fn a_meta_event_has_meta_fields_and_no_ip() {
        let e = meta_event(&event(), &meta());
        assert_eq!(e["event_name"], "Purchase");
        assert_eq!(e["event_time"], 1_795_428_000);
        assert_eq!(e["event_id"], "ord_42");
        assert_eq!(e["action_source"], "website");
        assert_eq!(e["event_source_url"], "https://shop.example/thanks");
        assert_eq!(e["custom_data"]["currency"], "EUR");
        assert_eq!(e["user_data"], json!({"em": "abc"}));
        let body = meta_body(&[&event()], &meta(), "T", Some("TEST1"));
        assert_eq!(body["test_event_code"], "TEST1");
        assert_eq!(body["access_token"], "T");
    }

    #[test]
    fn answers_are_judged_like_their_senders_do() {
        assert_eq!(judge(200, None, "", false), Verdict::Delivered);
        assert!(matches!(
            judge(503, Some(2), "", false),
            Verdict::Retry {
                retry_after: Some(2),
                ..
            }
        ));
        assert!(matches!(judge(429, None, "", false), Verdict::Retry { .. }));
        assert!(matches!(
            judge(404, None, "nope", false),
            Verdict::Reject { .. }
        ));
        assert_eq!(
            judge(200, None, r#"{"events_received":2,"messages":[]}"#, true),
            Verdict::Delivered
        );
        let bad = r#"{"error":{"message":"Invalid parameter","code":100}}"#;
        assert!(
            matches!(judge(400, None, bad, true), Verdict::Reject { error, per_event: true } if error.contains("Invalid parameter"))
        );
        let token = r#"{"error":{"message":"Invalid OAuth access token","code":190}}"#;
        assert!(matches!(
            judge(400, None, token, true),
            Verdict::Reject {
                per_event: false,
                ..
            }
        ));
        let busy = r#"{"error":{"message":"busy","code":2}}"#;
        assert!(matches!(
            judge(200, None, busy, true),
            Verdict::Retry { .. }
        ));
        assert!(matches!(
            judge(200, None, "{}", true),
            Verdict::Retry { .. }
        ));
    }
}
