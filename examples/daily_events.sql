-- Unique events per day and name for the last 30 days (times are UTC).
-- Run: tally sql "$(cat examples/daily_events.sql)" --format csv
SELECT date_trunc('day', occurred_at) AS day, event_name, count(*) AS events
FROM events
WHERE occurred_at >= now()::TIMESTAMP - INTERVAL 30 DAY
GROUP BY ALL
ORDER BY day, events DESC;
