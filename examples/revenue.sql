-- Revenue per day from order properties, each order counted once however
-- many copies arrived.
-- Run: tally sql "$(cat examples/revenue.sql)"
SELECT date_trunc('day', occurred_at) AS day,
       count(*) AS orders,
       round(sum((properties->>'total')::DOUBLE), 2) AS revenue
FROM events
WHERE event_name = 'order.completed'
GROUP BY ALL
ORDER BY day;
