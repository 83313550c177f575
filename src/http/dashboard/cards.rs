//! The per-site cards. Every handler here reads one site's events in a
//! period computed in the site's time zone, narrowed by the filter in the
//! query string (`event`, `page`, `referrer`, `source`), with one or two
//! queries on a blocking thread.

use super::auth::LoggedIn;
use crate::app::App;
use crate::domain::period::{local_time, Period};
use crate::domain::{Site, Source};
use crate::http::error::ApiError;
use crate::store::conversions;
use crate::store::stats::{self, Filter, Scope, TopKind};
use actix_web::web;
use actix_web::{HttpRequest, HttpResponse};
use serde::Deserialize;
use serde_json::json;
use std::sync::Arc;

/// Longest filter value accepted (a URL's limit).
const MAX_FILTER_BYTES: usize = 4096;

/// Query string of the per-site cards.
#[derive(Deserialize)]
pub struct CardQuery {
    site: String,
    range: Option<String>,
    from: Option<String>,
    to: Option<String>,
    event: Option<String>,
    page: Option<String>,
    referrer: Option<String>,
    source: Option<String>,
    kind: Option<String>,
    limit: Option<u32>,
}

impl CardQuery {
    /// The filter; empty values mean no filter.
    fn filter(&self) -> Result<Filter, ApiError> {
        let text = |v: &Option<String>, name: &str| -> Result<Option<String>, ApiError> {
            match v.as_deref() {
                None | Some("") => Ok(None),
                Some(s) if s.len() > MAX_FILTER_BYTES => Err(ApiError::bad_request(
                    "invalid_filter",
                    format!("{name} must be at most {MAX_FILTER_BYTES} bytes"),
                )),
                Some(s) => Ok(Some(s.to_owned())),
            }
        };
        let source = match self.source.as_deref() {
            None | Some("") => None,
            Some(s) => Some(Source::parse(s).ok_or_else(|| {
                ApiError::bad_request(
                    "invalid_source",
                    format!("source must be pixel, server or import, not {s:?}"),
                )
            })?),
        };
        Ok(Filter {
            event: text(&self.event, "event")?,
            page: text(&self.page, "page")?,
            referrer: text(&self.referrer, "referrer")?,
            source,
        })
    }

    /// The scope: the site, its period (`range`, `from`, `to` read in the
    /// site's zone) and the filter.
    fn scope(&self, site: &Site, now: i64) -> Result<Scope, ApiError> {
        let period = Period::parse(
            self.range.as_deref(),
            self.from.as_deref(),
            self.to.as_deref(),
            now,
            site.settings.timezone,
        )
        .map_err(|e| ApiError::bad_request("invalid_range", e.0))?;
        Ok(Scope {
            site: site.name.clone(),
            period,
            filter: self.filter()?,
            rules: crate::store::rollup::Rules::of(&site.settings),
            now,
        })
    }
}

/// Runs a card's queries for a logged-in request on a blocking thread, in
/// one read transaction: the rollups and their horizon are read as of one
/// moment, whatever the upkeep task commits meanwhile.
async fn card<T: serde::Serialize + Send + 'static>(
    app: web::Data<App>,
    q: &CardQuery,
    f: impl FnOnce(&duckdb::Connection, &Scope, &Site) -> crate::store::Result<T> + Send + 'static,
) -> Result<HttpResponse, ApiError> {
    let site: Arc<Site> = app.site(&q.site)?;
    let now = app.clock.now_micros();
    let scope = q.scope(&site, now)?;
    let answer = web::block(move || {
        let conn = app.store.connect()?;
        crate::store::transaction(&conn, |c| f(c, &scope, &site))
    })
    .await??;
    Ok(HttpResponse::Ok().json(answer))
}

/// `GET /api/summary`: the counters.
pub async fn summary(
    _: LoggedIn,
    app: web::Data<App>,
    q: web::Query<CardQuery>,
) -> Result<HttpResponse, ApiError> {
    card(app, &q, |c, scope, _| stats::summary(c, scope)).await
}

/// `GET /api/series`: events over time by source, in local buckets.
pub async fn series(
    _: LoggedIn,
    app: web::Data<App>,
    q: web::Query<CardQuery>,
) -> Result<HttpResponse, ApiError> {
    card(app, &q, |c, scope, site| {
        let p = scope.period;
        Ok(json!({
            "bucket": p.bucket,
            "timezone": site.settings.timezone.name(),
            "from": local_time(p.tz, p.from),
            "to": local_time(p.tz, p.to),
            "points": stats::series(c, scope)?,
        }))
    })
    .await
}

/// `GET /api/top?kind=events|pages|referrers&limit=`.
pub async fn top(
    _: LoggedIn,
    app: web::Data<App>,
    q: web::Query<CardQuery>,
) -> Result<HttpResponse, ApiError> {
    let kind = match q.kind.as_deref().unwrap_or("events") {
        "events" => TopKind::Events,
        "pages" => TopKind::Pages,
        "referrers" => TopKind::Referrers,
        other => {
            return Err(ApiError::bad_request(
                "invalid_kind",
                format!("kind must be events, pages or referrers, not {other:?}"),
            ))
        }
    };
    let limit = q.limit.unwrap_or(10).min(100);
    card(app, &q, move |c, scope, _| {
        stats::top(c, scope, kind, limit)
    })
    .await
}

/// `GET /api/recent?limit=`: the last unique events under the filter.
pub async fn recent(
    _: LoggedIn,
    app: web::Data<App>,
    q: web::Query<CardQuery>,
) -> Result<HttpResponse, ApiError> {
    let limit = q.limit.unwrap_or(20).min(200);
    card(app, &q, move |c, scope, _| stats::recent(c, scope, limit)).await
}

/// `GET /api/revenue`: revenue per currency and the over-count avoided.
pub async fn revenue(
    _: LoggedIn,
    app: web::Data<App>,
    q: web::Query<CardQuery>,
) -> Result<HttpResponse, ApiError> {
    card(app, &q, |c, scope, site| {
        Ok(json!({
            "revenue_properties": site.settings.revenue_properties(),
            "currencies": conversions::revenue(c, scope)?,
        }))
    })
    .await
}

/// `GET /api/conversions`: pixel / server / both per conversion event name.
pub async fn coverage(
    _: LoggedIn,
    app: web::Data<App>,
    q: web::Query<CardQuery>,
) -> Result<HttpResponse, ApiError> {
    card(app, &q, |c, scope, site| {
        Ok(json!({
            "timezone": site.settings.timezone.name(),
            "events": conversions::coverage(c, scope)?,
        }))
    })
    .await
}

/// `GET /api/funnel?step=A&step=B[&step=C]`: sessions through the steps.
pub async fn funnel(
    _: LoggedIn,
    app: web::Data<App>,
    req: HttpRequest,
    q: web::Query<CardQuery>,
) -> Result<HttpResponse, ApiError> {
    let steps = funnel_steps(req.query_string())?;
    card(app, &q, move |c, scope, _| {
        Ok(json!({ "steps": conversions::funnel(c, scope, &steps)? }))
    })
    .await
}

/// The `step` parameters of a query string: two or three event names.
fn funnel_steps(query: &str) -> Result<Vec<String>, ApiError> {
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(query)
        .map_err(|e| ApiError::bad_request("invalid_request", e.to_string()))?;
    let steps: Vec<String> = pairs
        .into_iter()
        .filter(|(k, v)| k == "step" && !v.is_empty())
        .map(|(_, v)| v)
        .collect();
    if !(2..=3).contains(&steps.len()) || steps.iter().any(|s| s.len() > 256) {
        return Err(ApiError::bad_request(
            "invalid_steps",
            "a funnel takes two or three step=EVENT_NAME parameters, in order",
        ));
    }
    Ok(steps)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn funnel_steps_come_in_order_two_or_three() {
        let steps = funnel_steps("site=s&step=page.view&step=cart.add&step=order.completed");
        assert_eq!(steps.unwrap(), ["page.view", "cart.add", "order.completed"]);
        assert!(funnel_steps("site=s&step=a").is_err());
        assert!(funnel_steps("step=a&step=b&step=c&step=d").is_err());
        assert_eq!(funnel_steps("step=a%2Cb&step=c").unwrap(), ["a,b", "c"]);
    }
}
