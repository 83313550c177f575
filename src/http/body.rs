//! Reading a request body: a byte limit (413 past it), a deadline (408 when
//! a sender trickles), and `Content-Encoding: gzip` inflated with the limit
//! applied to the inflated bytes, so a small gzip bomb is refused after
//! `limit` bytes instead of being allocated whole.

use super::error::ApiError;
use actix_web::http::header;
use actix_web::web::{Bytes, BytesMut, Payload};
use actix_web::HttpRequest;
use futures_util::StreamExt;
use std::io::Read;
use std::time::Duration;

/// The longest a sender may take to deliver a whole body. Bodies are at
/// most a few MiB and senders are servers or browsers: a body that takes
/// longer is a connection held hostage.
pub const BODY_DEADLINE: Duration = Duration::from_secs(20);

/// Reads the whole body, inflating gzip, refusing more than `limit` bytes
/// (checked against `Content-Length` first, then while streaming, then
/// while inflating) or a body slower than [`BODY_DEADLINE`].
pub async fn read(req: &HttpRequest, payload: Payload, limit: usize) -> Result<Bytes, ApiError> {
    let gzip = match encoding(req)? {
        Encoding::Identity => false,
        Encoding::Gzip => true,
    };
    let raw = tokio::time::timeout(BODY_DEADLINE, read_raw(req, payload, limit))
        .await
        .map_err(|_| ApiError::Timeout)??;
    if gzip {
        inflate(&raw, limit)
    } else {
        Ok(raw.freeze())
    }
}

enum Encoding {
    Identity,
    Gzip,
}

fn encoding(req: &HttpRequest) -> Result<Encoding, ApiError> {
    let Some(value) = req.headers().get(header::CONTENT_ENCODING) else {
        return Ok(Encoding::Identity);
    };
    match value
        .to_str()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase()
        .as_str()
    {
        "" | "identity" => Ok(Encoding::Identity),
        "gzip" | "x-gzip" => Ok(Encoding::Gzip),
        other => Err(ApiError::UnsupportedEncoding(format!(
            "Content-Encoding {other:?} is not supported; send gzip or an uncompressed body"
        ))),
    }
}

fn too_large(limit: usize) -> ApiError {
    ApiError::TooLarge(format!("the body is larger than {limit} bytes"))
}

async fn read_raw(
    req: &HttpRequest,
    mut payload: Payload,
    limit: usize,
) -> Result<BytesMut, ApiError> {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(too_large(limit));
    }
    let mut body = BytesMut::with_capacity(declared.unwrap_or(1024).min(limit));
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| {
            ApiError::bad_request("invalid_body", format!("cannot read the body: {e}"))
        })?;
        if body.len() + chunk.len() > limit {
            return Err(too_large(limit));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// Inflates a gzip body, stopping with 413 as soon as it passes `limit`.
pub fn inflate(gz: &[u8], limit: usize) -> Result<Bytes, ApiError> {
    let mut out = Vec::with_capacity((gz.len() * 4).min(limit));
    flate2::read::MultiGzDecoder::new(gz)
        .take(limit as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| {
            ApiError::bad_request("invalid_body", format!("the gzip body is corrupt: {e}"))
        })?;
    if out.len() > limit {
        return Err(too_large(limit));
    }
    Ok(Bytes::from(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::write::GzEncoder;
    use std::io::Write;

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = GzEncoder::new(Vec::new(), flate2::Compression::best());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    #[test]
    fn inflates_within_the_limit() {
        assert_eq!(
            &inflate(&gzip(b"{\"a\":1}"), 100).unwrap()[..],
            b"{\"a\":1}"
        );
    }

    #[test]
    fn a_bomb_stops_at_the_limit() {
        let bomb = gzip(&vec![b' '; 64 << 20]);
        assert!(bomb.len() < 100_000, "{}", bomb.len());
        assert!(matches!(
            inflate(&bomb, 4 << 20),
            Err(ApiError::TooLarge(_))
        ));
    }

    #[test]
    fn garbage_is_a_bad_request() {
        assert!(matches!(
            inflate(b"not gzip at all", 100),
            Err(ApiError::BadRequest { .. })
        ));
    }

    proptest::proptest! {
        #[test]
        fn any_bytes_inflate_or_are_refused(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..2_000)) {
            let _ = inflate(&bytes, 4096);
        }
    }
}
