-- Dedup rate per site over the last 24 hours: copies dropped / copies received.
-- Run: tally sql "$(cat examples/dedup_rate.sql)"
WITH unique_events AS (
    SELECT site, count(*) AS n FROM events
    WHERE received_at >= now()::TIMESTAMP - INTERVAL 24 HOUR GROUP BY site
), dropped AS (
    SELECT site, count(*) AS n FROM duplicates
    WHERE received_at >= now()::TIMESTAMP - INTERVAL 24 HOUR GROUP BY site
)
SELECT u.site,
       u.n AS unique_events,
       coalesce(d.n, 0) AS duplicates_dropped,
       round(100.0 * coalesce(d.n, 0) / (u.n + coalesce(d.n, 0)), 1) AS dedup_rate_pct
FROM unique_events u LEFT JOIN dropped d USING (site)
ORDER BY u.site;
