-- Coverage by source: which share of unique orders the pixel and the server
-- delivered ("pixel ~ 70 %, server = 100 %").
-- Run: tally sql "$(cat examples/coverage.sql)"
SELECT site,
       count(*) AS orders,
       round(100.0 * count(*) FILTER (WHERE seen_pixel) / count(*), 1)  AS pixel_pct,
       round(100.0 * count(*) FILTER (WHERE seen_server) / count(*), 1) AS server_pct,
       round(100.0 * count(*) FILTER (WHERE seen_pixel AND seen_server) / count(*), 1) AS both_pct
FROM events
WHERE event_name = 'order.completed'
GROUP BY site
ORDER BY site;
