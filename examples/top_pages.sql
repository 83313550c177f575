-- Top pages and referrers from the pixel's page views over the last 7 days.
-- Run: tally sql "$(cat examples/top_pages.sql)"
SELECT url, count(*) AS views, count(DISTINCT visitor_id) AS visitors
FROM events
WHERE event_name = 'page.view' AND occurred_at >= now()::TIMESTAMP - INTERVAL 7 DAY
GROUP BY url
ORDER BY views DESC
LIMIT 20;
