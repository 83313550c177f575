//! Handlers of the dashboard API. Every query runs on a blocking thread with
//! its own DuckDB connection.

use super::auth::{Auth, LoggedIn};
use crate::app::App;
use crate::domain::Site;
use crate::http::assets::dashboard_files;
use crate::http::body;
use crate::http::client_ip::client_ip;
use crate::http::error::ApiError;
use actix_web::http::header;
use actix_web::web::{self, Bytes};
use actix_web::{HttpRequest, HttpResponse};
use serde::Deserialize;
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;

/// `GET /`: the dashboard page.
pub async fn index(req: HttpRequest) -> Result<HttpResponse, ApiError> {
    dashboard_files()
        .respond(&req, "index.html")
        .ok_or(ApiError::NotFound)
}

/// `GET /ui/{file}`: the page's script and styles.
pub async fn file(req: HttpRequest, path: web::Path<String>) -> Result<HttpResponse, ApiError> {
    dashboard_files()
        .respond(&req, &path)
        .ok_or(ApiError::NotFound)
}

#[derive(Deserialize)]
struct LoginBody {
    password: String,
}

/// `POST /api/login` with `{"password": …}` as JSON: sets the session
/// cookie, answers the CSRF token. JSON only, so no cross-site form can post it.
pub async fn login(
    app: web::Data<App>,
    auth: web::Data<Auth>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let is_json = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !is_json {
        return Err(ApiError::bad_request(
            "invalid_body",
            "send {\"password\": …} as application/json",
        ));
    }
    let raw = body::read(&req, payload, 4096).await?;
    let LoginBody { password } = serde_json::from_slice(&raw).map_err(|e| {
        ApiError::bad_request("invalid_body", format!("expected {{\"password\": …}}: {e}"))
    })?;
    let attempt = auth.begin(client_ip(&req, &app.config.trusted_proxies))?;
    let (cookie, csrf) = web::block(move || auth.login(&app, attempt, &password)).await??;
    Ok(HttpResponse::Ok()
        .cookie(cookie)
        .json(json!({ "csrf": csrf })))
}

/// `POST /api/logout` (needs the CSRF header).
pub async fn logout(auth: web::Data<Auth>, req: HttpRequest) -> Result<HttpResponse, ApiError> {
    auth.require_csrf(&req)?;
    auth.logout(&req);
    let mut gone = actix_web::cookie::Cookie::new(super::auth::COOKIE, "");
    gone.set_path("/");
    gone.make_removal();
    Ok(HttpResponse::Ok().cookie(gone).json(json!({"ok": true})))
}

/// `GET /api/session`: the CSRF token of the current session, or 401.
pub async fn session(s: LoggedIn) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(json!({ "csrf": s.csrf })))
}

/// `GET /api/sites`: names, keys, snippets, time zones and revenue rules.
pub async fn sites(_: LoggedIn, app: web::Data<App>) -> Result<HttpResponse, ApiError> {
    let sites: Vec<_> = app
        .sites
        .all()
        .iter()
        .map(|s| {
            json!({
                "name": s.name,
                "site_key": s.site_key,
                "origins": s.origins,
                "snippet": app.snippet(&s.site_key),
                "timezone": s.settings.timezone.name(),
                "revenue_properties": s.settings.revenue_properties(),
            })
        })
        .collect();
    Ok(HttpResponse::Ok().json(json!({ "sites": sites, "public_url": app.public_url() })))
}

/// Query string of the calls that only name a site.
#[derive(Deserialize)]
pub struct SiteQuery {
    site: String,
}

impl SiteQuery {
    fn site(&self, app: &App) -> Result<Arc<Site>, ApiError> {
        Ok(app.site(&self.site)?)
    }
}

/// `GET /api/events/lookup?site=&event_id=[&name=]`: the inspector.
pub async fn lookup(
    _: LoggedIn,
    app: web::Data<App>,
    q: web::Query<LookupQuery>,
) -> Result<HttpResponse, ApiError> {
    let q = q.into_inner();
    if q.event_id.is_empty() {
        return Err(ApiError::bad_request(
            "invalid_event_id",
            "event_id is required",
        ));
    }
    let site = app.site(&q.site)?;
    let found = web::block(move || {
        let conn = app.store.connect()?;
        crate::store::inspect::lookup(&conn, &site, &q.event_id, q.name.as_deref())
    })
    .await??;
    Ok(HttpResponse::Ok().json(found))
}

/// Query string of the inspector.
#[derive(Deserialize)]
pub struct LookupQuery {
    site: String,
    event_id: String,
    name: Option<String>,
}

/// `GET /api/near-misses?site=`: near misses in the site's window.
pub async fn near_misses(
    _: LoggedIn,
    app: web::Data<App>,
    q: web::Query<SiteQuery>,
) -> Result<HttpResponse, ApiError> {
    let site = q.site(&app)?;
    let since = app.clock.now_micros() - i64::from(site.settings.window_secs) * 1_000_000;
    let report = web::block(move || {
        crate::store::stats::near_misses(&*app.store.connect()?, &site.name, since)
    })
    .await??;
    Ok(HttpResponse::Ok().json(report))
}

/// `GET /api/forwards?site=`: the site's forwarding destinations with
/// their delivered / pending / parked counts (secrets never).
pub async fn forwards(
    _: LoggedIn,
    app: web::Data<App>,
    q: web::Query<SiteQuery>,
) -> Result<HttpResponse, ApiError> {
    let site = q.site(&app)?;
    let listed = web::block(move || crate::control::forward::list(&app, Some(&site.name)))
        .await?
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok(HttpResponse::Ok().json(json!({ "destinations": listed })))
}

/// `POST /api/test` (CSRF header) `{"site", "events": [...]}`: the payload
/// tester, i.e. `/v1/events?test=1` for a logged-in owner.
pub async fn test_payload(
    app: web::Data<App>,
    auth: web::Data<Auth>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    auth.require_csrf(&req)?;
    let raw = body::read(&req, payload, 1024 * 1024).await?;
    let t: TestBody = serde_json::from_slice(&raw).map_err(|e| {
        ApiError::bad_request(
            "invalid_body",
            format!("expected {{\"site\": …, \"events\": [...]}}: {e}"),
        )
    })?;
    let site = app.site(&t.site)?;
    let (events, positions, errors) = crate::http::ingest::validate_each(t.events.iter(), |raw| {
        crate::domain::Event::parse(raw.get(), crate::domain::Source::Server)
    });
    let outcome = crate::http::ingest::store(
        &app,
        site,
        events,
        crate::ingest::Mode::Test { history: false },
    )
    .await?;
    Ok(HttpResponse::Ok().json(json!({
        "accepted": outcome.accepted,
        "deduplicated": outcome.deduplicated,
        "rejected": errors.len(),
        "test": crate::http::ingest::test_report(&outcome, &positions, &errors),
    })))
}

#[derive(Deserialize)]
struct TestBody {
    site: String,
    events: Vec<Box<serde_json::value::RawValue>>,
}

/// `GET /api/live?site=`: Server-Sent Events, one `event` per unique event
/// committed from now on; duplicates never appear. A comment every 15 s
/// keeps proxies from closing the stream, and the stream ends within a
/// second of its session ending (logout, password change, expiry).
pub async fn live(
    _: LoggedIn,
    app: web::Data<App>,
    auth: web::Data<Auth>,
    req: HttpRequest,
    q: web::Query<SiteQuery>,
) -> Result<HttpResponse, ApiError> {
    let token = req
        .cookie(super::auth::COOKIE)
        .map(|c| c.value().to_owned())
        .unwrap_or_default();
    let site = q.site(&app)?.name.clone();
    let feed = Feed {
        rx: app.ingest()?.subscribe(),
        site,
        auth: auth.into_inner(),
        token,
    };
    let stream = futures_util::stream::unfold(feed, |mut feed| async move {
        let next = feed.next().await?;
        Some((Ok::<_, std::convert::Infallible>(next), feed))
    });
    Ok(HttpResponse::Ok()
        .insert_header((header::CONTENT_TYPE, "text/event-stream"))
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .insert_header(("X-Accel-Buffering", "no"))
        .streaming(stream))
}

/// One dashboard's live feed: the site's unique events, while its session lasts.
struct Feed {
    rx: tokio::sync::broadcast::Receiver<Arc<crate::ingest::FeedItem>>,
    site: String,
    auth: Arc<Auth>,
    token: String,
}

impl Feed {
    /// The next chunk of the stream, or `None` once the session or the
    /// writer has ended.
    async fn next(&mut self) -> Option<Bytes> {
        use tokio::sync::broadcast::error::RecvError;
        let mut idle = Duration::ZERO;
        loop {
            if !self.auth.is_open(&self.token) {
                return None;
            }
            match tokio::time::timeout(Duration::from_secs(1), self.rx.recv()).await {
                Err(_) => {
                    idle += Duration::from_secs(1);
                    if idle >= Duration::from_secs(15) {
                        return Some(Bytes::from_static(b": keep-alive\n\n"));
                    }
                }
                Ok(Ok(item)) if item.site == self.site => {
                    let data = serde_json::to_string(&*item).unwrap_or_default();
                    return Some(Bytes::from(format!("data: {data}\n\n")));
                }
                Ok(Ok(_)) | Ok(Err(RecvError::Lagged(_))) => {}
                Ok(Err(RecvError::Closed)) => return None,
            }
        }
    }
}
