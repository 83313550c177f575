#!/usr/bin/env bash
# A server-side sender: fire an order from your backend with the same
# event_id the pixel used on the thank-you page. Run it twice: the second
# answer says "deduplicated": 1.
#   TALLY_URL=http://127.0.0.1:8080 TALLY_TOKEN=tly_... ./examples/send_order.sh 42
set -euo pipefail
order="${1:-42}"
curl -sS -X POST "${TALLY_URL:-http://127.0.0.1:8080}/v1/events" \
  -H "Authorization: Bearer ${TALLY_TOKEN:?set TALLY_TOKEN to the site's api_token}" \
  -H 'Content-Type: application/json' \
  -d '{"events": [{"event_id": "ord_'"$order"'", "event_name": "order.completed", "source": "server",
        "occurred_at": "'"$(date -u +%Y-%m-%dT%H:%M:%SZ)"'",
        "properties": {"order_id": "'"$order"'", "total": 199.99}}]}'
echo
