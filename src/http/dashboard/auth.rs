//! Dashboard login: one admin password (Argon2 hash in the `settings`
//! table), sessions as random tokens held in memory, an `HttpOnly`,
//! `SameSite=Strict` cookie, a CSRF token for state-changing calls, and a
//! per-address limit on wrong passwords.
//!
//! Sessions live in memory: a restart logs everyone out, which is the safe
//! side for a single-admin appliance; a password change ends every session.
//!
//! Password checks are bounded ([`PASSWORD_CHECKS`] at once, else 429) and
//! an attempt counts as a failure before Argon2 runs, so a flood of logins
//! can neither exhaust memory nor slip past the per-address limit. The
//! address is the client's as [`crate::http::client_ip`] resolves it.

use crate::app::App;
use crate::control::PASSWORD_KEY;
use crate::http::error::ApiError;
use crate::store;
use actix_web::cookie::{Cookie, SameSite};
use actix_web::dev::Payload;
use actix_web::{web, FromRequest, HttpRequest};
use argon2::{Argon2, PasswordHash, PasswordVerifier};
use rand::RngCore;
use std::collections::HashMap;
use std::future::{ready, Ready};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

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
/// Password checks running at once. Each Argon2 check holds 19 MiB for
/// ~50 ms: more in parallel only buys memory, not logins.
pub const PASSWORD_CHECKS: usize = 2;
/// Addresses whose failures are remembered; past it the oldest is forgotten.
const MAX_TRACKED: usize = 10_000;

struct Session {
    csrf: String,
    expires: Instant,
    /// The password generation the session was opened under.
    epoch: u64,
}

/// Wrong passwords from one address in the current window.
#[derive(Clone, Copy)]
struct Failures {
    count: u32,
    since: Instant,
}

/// Sessions, the wrong-password limiter and the bound on password checks.
pub struct Auth {
    sessions: Mutex<HashMap<String, Session>>,
    failures: Mutex<HashMap<IpAddr, Failures>>,
    checks: Arc<Semaphore>,
    /// Bumped by every password change: older sessions end.
    epoch: Arc<AtomicU64>,
}

/// A logged-in session. As a handler's first argument it answers 401
/// before any other argument is read, so a caller without a session learns
/// nothing from how its query or body is refused.
pub struct LoggedIn {
    /// Its CSRF token.
    pub csrf: String,
}

impl FromRequest for LoggedIn {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready(match req.app_data::<web::Data<Auth>>() {
            Some(auth) => auth.require(req),
            None => Err(ApiError::Internal(
                "the dashboard's sessions are not set up".into(),
            )),
        })
    }
}

/// A login attempt that passed the limits: it holds one of the
/// [`PASSWORD_CHECKS`] slots and has already been counted as a failure.
pub struct Attempt {
    ip: IpAddr,
    _permit: OwnedSemaphorePermit,
}

fn random_token() -> String {
    let mut b = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut b);
    hex::encode(b)
}

impl Auth {
    /// Sessions that end when `epoch` (the password generation) moves.
    pub fn new(epoch: Arc<AtomicU64>) -> Self {
        Self {
            sessions: Mutex::default(),
            failures: Mutex::default(),
            checks: Arc::new(Semaphore::new(PASSWORD_CHECKS)),
            epoch,
        }
    }

    /// Admits a login attempt from `ip`: 429 when the address is locked out
    /// or every password-check slot is busy. The attempt counts as a failure
    /// now, before any hashing, so parallel attempts cannot outrun the limit.
    pub fn begin(&self, ip: IpAddr) -> Result<Attempt, ApiError> {
        let permit = self
            .checks
            .clone()
            .try_acquire_owned()
            .map_err(|_| ApiError::RateLimited { retry_after: 1 })?;
        let mut failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        if let Some(f) = failures.get(&ip) {
            let age = now.duration_since(f.since);
            if f.count >= MAX_FAILURES && age < FAILURE_WINDOW {
                return Err(ApiError::RateLimited {
                    retry_after: (FAILURE_WINDOW - age).as_secs().max(1),
                });
            }
        }
        if failures.len() >= MAX_TRACKED && !failures.contains_key(&ip) {
            failures.retain(|_, f| now.duration_since(f.since) < FAILURE_WINDOW);
            if failures.len() >= MAX_TRACKED {
                let oldest = failures
                    .iter()
                    .min_by_key(|(_, f)| f.since)
                    .map(|(ip, _)| *ip);
                if let Some(oldest) = oldest {
                    failures.remove(&oldest);
                }
            }
        }
        let slot = failures.entry(ip).or_insert(Failures {
            count: 0,
            since: now,
        });
        if now.duration_since(slot.since) >= FAILURE_WINDOW {
            *slot = Failures {
                count: 0,
                since: now,
            };
        }
        slot.count += 1;
        Ok(Attempt {
            ip,
            _permit: permit,
        })
    }

    /// Checks `password` for an admitted attempt (blocking: Argon2); on
    /// success clears the address's failures and returns the session cookie
    /// and CSRF token.
    pub fn login(
        &self,
        app: &App,
        attempt: Attempt,
        password: &str,
    ) -> Result<(Cookie<'static>, String), ApiError> {
        let hash =
            store::settings::get(&*app.store.connect()?, PASSWORD_KEY)?.ok_or_else(|| {
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
            return Err(ApiError::Unauthorized("wrong password".into()));
        }
        self.failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&attempt.ip);
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
                epoch: self.epoch.load(Ordering::SeqCst),
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

    /// Whether the session `token` is still open (not expired, not logged
    /// out, opened under the current password).
    pub fn is_open(&self, token: &str) -> bool {
        self.open_session(token).is_some()
    }

    fn open_session(&self, token: &str) -> Option<LoggedIn> {
        let sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        let epoch = self.epoch.load(Ordering::SeqCst);
        sessions
            .get(token)
            .filter(|s| s.expires > Instant::now() && s.epoch == epoch)
            .map(|s| LoggedIn {
                csrf: s.csrf.clone(),
            })
    }

    /// The session of a request, or 401.
    pub fn require(&self, req: &HttpRequest) -> Result<LoggedIn, ApiError> {
        let token = req
            .cookie(COOKIE)
            .ok_or_else(|| ApiError::Unauthorized("log in first (POST /api/login)".into()))?;
        self.open_session(token.value())
            .ok_or_else(|| ApiError::Unauthorized("the session has ended; log in again".into()))
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembered_addresses_stay_bounded() {
        let auth = Auth::new(Arc::default());
        for i in 0..(MAX_TRACKED as u32 + 5_000) {
            let ip = IpAddr::from(i.to_be_bytes());
            drop(auth.begin(ip).unwrap());
        }
        let tracked = auth.failures.lock().unwrap().len();
        assert!(tracked <= MAX_TRACKED, "{tracked}");
    }

    #[test]
    fn a_sixth_attempt_in_the_window_is_refused_before_any_hashing() {
        let auth = Auth::new(Arc::default());
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        for _ in 0..MAX_FAILURES {
            drop(auth.begin(ip).unwrap());
        }
        assert!(matches!(auth.begin(ip), Err(ApiError::RateLimited { .. })));
        let other: IpAddr = "192.0.2.2".parse().unwrap();
        assert!(auth.begin(other).is_ok());
    }

    #[test]
    fn password_checks_are_bounded() {
        let auth = Auth::new(Arc::default());
        let held: Vec<_> = (0..PASSWORD_CHECKS)
            .map(|i| auth.begin(IpAddr::from([10, 0, 0, i as u8])).unwrap())
            .collect();
        assert!(matches!(
            auth.begin("10.0.1.1".parse().unwrap()),
            Err(ApiError::RateLimited { retry_after: 1 })
        ));
        drop(held);
        assert!(auth.begin("10.0.1.1".parse().unwrap()).is_ok());
    }
}
