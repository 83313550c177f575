#!/usr/bin/env python3
"""Send events through segment-analytics-python (segment.analytics).

usage: segment_python.py BASE_URL WRITE_KEY SITE_KEY < events.json
SITE_KEY is unused (the write key identifies the source); kept for a common CLI.
Env: SDK_MAX_RETRIES (default 5).
Exit 0 when every batch was accepted (2xx), 1 when the SDK reported a failure.
"""
import json
import os
import sys
from datetime import datetime

import segment.analytics as analytics

base_url, write_key = sys.argv[1], sys.argv[2]
events = json.load(sys.stdin)
errors = []


def on_error(err, batch):
    errors.append({"error": str(err), "messageIds": [m.get("messageId") for m in batch]})
    print("segment error: %s" % err, file=sys.stderr)


client = analytics.Client(
    write_key,
    host=base_url,
    gzip=True,
    on_error=on_error,
    max_retries=int(os.environ.get("SDK_MAX_RETRIES", "5")),
    # counted retries wait 0s, 0.5s, 1s, 2s, ...; give up once failures span 3s
    max_total_backoff_duration=3,
    # 4xx/5xx with Retry-After > 0: wait as told, for at most 10s in all
    max_rate_limit_duration=10,
    upload_interval=0.1,
    timeout=5,
)


def page_props(e):
    props = dict(e.get("properties") or {})
    for k in ("url", "referrer", "path", "title", "search"):
        if k in e:
            props.setdefault(k, e[k])
    return props


def page_context(e):
    ctx = dict(e.get("context") or {})
    page = {k: e[k] for k in ("url", "referrer", "path", "title", "search") if k in e}
    if page:
        ctx["page"] = {**page, **ctx.get("page", {})}
    return ctx


for e in events:
    common = dict(
        message_id=e.get("messageId"),
        context=e.get("context"),
        integrations=e.get("integrations"),
        timestamp=datetime.fromisoformat(e["timestamp"].replace("Z", "+00:00")) if e.get("timestamp") else None,
    )
    ids = dict(user_id=e.get("userId"), anonymous_id=e.get("anonymousId"))
    t = e["type"]
    if t == "track":
        client.track(event=e["event"], properties=e.get("properties"), **ids, **common)
    elif t in ("page", "screen"):
        common["context"] = page_context(e) if t == "page" else e.get("context")
        getattr(client, t)(name=e.get("name"), category=e.get("category"), properties=page_props(e), **ids, **common)
    elif t == "identify":
        client.identify(traits=e.get("traits"), **ids, **common)
    elif t == "group":
        client.group(group_id=e["groupId"], traits=e.get("traits"), **ids, **common)
    elif t == "alias":
        client.alias(previous_id=e["previousId"], user_id=e["userId"], **common)
    else:
        sys.exit("unknown type %r" % t)

client.flush()  # blocks until every queued batch succeeded or was given up on
client.join()
print(json.dumps({"sdk": "segment-analytics-python", "sent": len(events), "ok": not errors, "errors": errors}))
sys.exit(1 if errors else 0)
