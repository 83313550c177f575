//! Dashboard login: one admin password (Argon2 hash in the `settings`
//! table), sessions as random tokens held in memory, an `HttpOnly`,
//! `SameSite=Strict` cookie, a CSRF token for state-changing calls, and a
//! per-address limit on wrong passwords.
//!
//! Sessions live in memory: a restart logs everyone out, which is the safe
//! side for a single-admin appliance.

use crate::app::App;
use crate::control::PASSWORD_KEY;
use crate::http::error::ApiError;
use crate::store;
use actix_web::cookie::{Cookie, SameSite};
use actix_web::HttpRequest;
use argon2::{Argon2, PasswordHash, PasswordVerifier};
use rand::RngCore;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Name of the session cookie.
pub const COOKIE: &str = "tally_session";
/// Header carrying the CSRF token on state-changing calls.
pub const CSRF_HEADER: &str = "x-tally-csrf";
/// How long a session lasts.
const SESSION_TTL: Duration = Duration::from_secs(7 * 86_400);
/// Wrong passwords allowed per address per window.
const MAX_FAILURES: u32 = 5;
/// The window for [`MAX_FAILURES`].
const FAILURE_WINDOW: Duration = Duration::from_secs(300);

struct Session {
    csrf: String,
    expires: Instant,
}

/// Sessions and the wrong-password limiter.
#[derive(Default)]
pub struct Auth {
    sessions: Mutex<HashMap<String, Session>>,
    failures: Mutex<HashMap<String, (u32, Instant)>>,
}

/// A logged-in session.
pub struct LoggedIn {
    /// Its CSRF token.
    pub csrf: String,
}

fn random_token() -> String {
    let mut b = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut b);
    hex::encode(b)
}

impl Auth {
    /// Checks `password` for the client at `addr`; on success returns the
    /// session cookie and CSRF token.
    pub fn login(
        &self,
        app: &App,
        addr: &str,
        password: &str,
    ) -> Result<(Cookie<'static>, String), ApiError> {
        self.check_rate(addr)?;
        let hash = store::settings::get(&app.store.connect()?, PASSWORD_KEY)?.ok_or_else(|| {
            ApiError::Unauthorized(
                "no dashboard password is set; run `tally admin set-password`".into(),
            )
        })?;
        let parsed = PasswordHash::new(&hash)
            .map_err(|e| ApiError::Internal(format!("stored password hash: {e}")))?;
        if Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_err()
        {
            self.record_failure(addr);
            return Err(ApiError::Unauthorized("wrong password".into()));
        }
        self.failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(addr);
        let token = random_token();
        let csrf = random_token();
        let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        sessions.retain(|_, s| s.expires > now);
        sessions.insert(
            token.clone(),
            Session {
                csrf: csrf.clone(),
                expires: now + SESSION_TTL,
            },
        );
        let secure = app.config.public_url.starts_with("https://");
        let cookie = Cookie::build(COOKIE, token)
            .path("/")
            .http_only(true)
            .same_site(SameSite::Strict)
            .secure(secure)
            .max_age(actix_web::cookie::time::Duration::seconds(
                SESSION_TTL.as_secs() as i64,
            ))
            .finish();
        Ok((cookie, csrf))
    }

    /// The session of a request, or 401.
    pub fn require(&self, req: &HttpRequest) -> Result<LoggedIn, ApiError> {
        let token = req
            .cookie(COOKIE)
            .ok_or_else(|| ApiError::Unauthorized("log in first (POST /api/login)".into()))?;
        let sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        match sessions.get(token.value()) {
            Some(s) if s.expires > Instant::now() => Ok(LoggedIn {
                csrf: s.csrf.clone(),
            }),
            _ => Err(ApiError::Unauthorized(
                "the session has expired; log in again".into(),
            )),
        }
    }

    /// The session of a state-changing request, which must carry its CSRF token.
    pub fn require_csrf(&self, req: &HttpRequest) -> Result<LoggedIn, ApiError> {
        let session = self.require(req)?;
        let sent = req
            .headers()
            .get(CSRF_HEADER)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        let ok: bool =
            subtle::ConstantTimeEq::ct_eq(sent.as_bytes(), session.csrf.as_bytes()).into();
        if ok {
            Ok(session)
        } else {
            Err(ApiError::Forbidden(format!(
                "missing or wrong {CSRF_HEADER} header"
            )))
        }
    }

    /// Ends the request's session.
    pub fn logout(&self, req: &HttpRequest) {
        if let Some(c) = req.cookie(COOKIE) {
            self.sessions
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(c.value());
        }
    }

    fn check_rate(&self, addr: &str) -> Result<(), ApiError> {
        let failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        match failures.get(addr) {
            Some((n, since)) if *n >= MAX_FAILURES && since.elapsed() < FAILURE_WINDOW => {
                Err(ApiError::RateLimited {
                    retry_after: (FAILURE_WINDOW - since.elapsed()).as_secs().max(1),
                })
            }
            _ => Ok(()),
        }
    }

    fn record_failure(&self, addr: &str) {
        let mut failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        let slot = failures
            .entry(addr.to_owned())
            .or_insert((0, Instant::now()));
        if slot.1.elapsed() >= FAILURE_WINDOW {
            *slot = (0, Instant::now());
        }
        slot.0 += 1;
    }
}
