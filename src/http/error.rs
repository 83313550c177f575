//! The one place where errors become HTTP statuses. Every answer other than
//! success is JSON: `{"error": CODE, "message": TEXT}`.

use crate::ingest::IngestError;
use crate::store::StoreError;
use actix_web::http::{header, StatusCode};
use actix_web::{HttpResponse, ResponseError};

/// Seconds a sender should wait after a 503.
const RETRY_AFTER_BUSY: u64 = 1;

/// An error answer of the HTTP API.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400: the request is malformed; `code` names what.
    #[error("{message}")]
    BadRequest {
        /// Machine-readable code.
        code: &'static str,
        /// What is wrong.
        message: String,
    },
    /// 401: missing or wrong credentials.
    #[error("{0}")]
    Unauthorized(String),
    /// 403: not allowed from here.
    #[error("{0}")]
    Forbidden(String),
    /// 404.
    #[error("not found")]
    NotFound,
    /// 408: the body did not arrive in time; the connection is closed.
    #[error("the request body did not arrive within the deadline")]
    Timeout,
    /// 413: body or batch too large.
    #[error("{0}")]
    TooLarge(String),
    /// 415: a `Content-Encoding` Tally does not read.
    #[error("{0}")]
    UnsupportedEncoding(String),
    /// 429: the site's daily quota is spent.
    #[error("the site's daily quota is spent")]
    QuotaExceeded {
        /// Seconds until it resets.
        retry_after: u64,
    },
    /// 429: too many attempts (e.g. wrong passwords).
    #[error("too many attempts; retry in {retry_after} s")]
    RateLimited {
        /// Seconds to wait.
        retry_after: u64,
    },
    /// 503: nothing was stored; retry the whole request.
    #[error("{0}")]
    Unavailable(String),
    /// 500: a bug or an unexpected failure.
    #[error("{0}")]
    Internal(String),
}

impl ApiError {
    /// A 400 with a code and message.
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        ApiError::BadRequest {
            code,
            message: message.into(),
        }
    }

    /// The machine-readable code of the answer's body.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::BadRequest { code, .. } => code,
            ApiError::Unauthorized(_) => "unauthorized",
            ApiError::Forbidden(_) => "forbidden",
            ApiError::NotFound => "not_found",
            ApiError::Timeout => "request_timeout",
            ApiError::TooLarge(_) => "payload_too_large",
            ApiError::UnsupportedEncoding(_) => "unsupported_encoding",
            ApiError::QuotaExceeded { .. } => "quota_exceeded",
            ApiError::RateLimited { .. } => "rate_limited",
            ApiError::Unavailable(_) => "unavailable",
            ApiError::Internal(_) => "internal",
        }
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::BadRequest { .. } => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound => StatusCode::NOT_FOUND,
            ApiError::Timeout => StatusCode::REQUEST_TIMEOUT,
            ApiError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedEncoding(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::QuotaExceeded { .. } | ApiError::RateLimited { .. } => {
                StatusCode::TOO_MANY_REQUESTS
            }
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        self.respond_with(serde_json::json!({"error": self.code(), "message": self.to_string()}))
    }
}

impl ApiError {
    /// The error's answer (status, `Retry-After` and other headers, a log
    /// line) with `body` as its JSON body: protocols that promise their
    /// senders another error shape (Segment's, Meta's) use this.
    pub fn respond_with(&self, body: serde_json::Value) -> HttpResponse {
        let status = self.status_code();
        if status.is_server_error() {
            tracing::error!(status = status.as_u16(), error = %self, "request failed");
        } else {
            tracing::debug!(status = status.as_u16(), error = %self, "request refused");
        }
        let mut res = HttpResponse::build(status);
        match self {
            ApiError::QuotaExceeded { retry_after } | ApiError::RateLimited { retry_after } => {
                res.insert_header((header::RETRY_AFTER, retry_after.to_string()));
            }
            ApiError::Unavailable(_) => {
                res.insert_header((header::RETRY_AFTER, RETRY_AFTER_BUSY.to_string()));
            }
            ApiError::Unauthorized(_) => {
                res.insert_header((header::WWW_AUTHENTICATE, "Bearer"));
            }
            // A body may still be trickling in: do not wait for the rest.
            ApiError::Timeout => {
                res.force_close();
            }
            _ => {}
        }
        res.json(body)
    }
}

impl From<IngestError> for ApiError {
    fn from(e: IngestError) -> Self {
        ApiError::Unavailable(format!("{e}; nothing of this request was stored, retry it"))
    }
}

/// A blocking task that panicked or was cancelled.
impl From<actix_web::error::BlockingError> for ApiError {
    fn from(e: actix_web::error::BlockingError) -> Self {
        ApiError::Internal(e.to_string())
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::UnknownSite(_) => ApiError::bad_request("unknown_site", e.to_string()),
            StoreError::Invalid(_) | StoreError::SiteExists(_) => {
                ApiError::bad_request("invalid_request", e.to_string())
            }
            StoreError::Locked { .. } | StoreError::Io { .. } | StoreError::NewerSchema { .. } => {
                ApiError::Unavailable(format!("the store cannot answer: {e}"))
            }
            StoreError::Db(_) => ApiError::Internal(e.to_string()),
        }
    }
}

/// Answers a malformed query string, JSON body or path the extractors refuse
/// as a JSON 400 like every other error (actix would answer text/plain).
pub fn extractor_error(err: impl std::fmt::Display) -> actix_web::Error {
    ApiError::bad_request("invalid_request", err.to_string()).into()
}
