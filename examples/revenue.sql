-- Revenue per day and currency from order properties, each order counted
-- once however many copies arrived. Exact: DECIMAL, never DOUBLE. Days are
-- UTC here; the dashboard shows them in the site's time zone.
-- Run: tally sql "$(cat examples/revenue.sql)"
SELECT date_trunc('day', occurred_at) AS day,
       upper(properties->>'currency') AS currency,
       count(*) AS orders,
       sum(coalesce(TRY_CAST(properties->>'value' AS DECIMAL(18,4)),
                    TRY_CAST(properties->>'revenue' AS DECIMAL(18,4)),
                    TRY_CAST(properties->>'total' AS DECIMAL(18,4)))) AS revenue
FROM events
WHERE event_name = 'order.completed'
GROUP BY ALL
ORDER BY day, currency;
