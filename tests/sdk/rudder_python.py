#!/usr/bin/env python3
"""Send events through rudder-sdk-python (rudderstack.analytics).

usage: rudder_python.py BASE_URL WRITE_KEY SITE_KEY < events.json
SITE_KEY is unused (the write key identifies the source); kept for a common CLI.
Env: SDK_MAX_RETRIES (default 3: the SDK's backoff is not configurable, it
sleeps a random 0-1s, 0-2s, 0-4s, ... between tries and ignores Retry-After).
Exit 0 when every batch got HTTP 200, 1 when the SDK reported a failure.
"""
import json
import os
import sys
from datetime import datetime

import rudderstack.analytics as rudder_analytics

base_url, write_key = sys.argv[1], sys.argv[2]
events = json.load(sys.stdin)
errors = []


def on_error(err, batch):
    errors.append({"error": "%s: %s" % (type(err).__name__, err), "messageIds": [m.get("messageId") for m in batch]})
    print("rudder error: %r" % err, file=sys.stderr)


# the documented module-level setup; the first call creates rudder_analytics.default_client
rudder_analytics.write_key = write_key
rudder_analytics.dataPlaneUrl = base_url  # requests go to BASE_URL/v1/batch
rudder_analytics.gzip = True  # the default
rudder_analytics.on_error = on_error
rudder_analytics.max_retries = int(os.environ.get("SDK_MAX_RETRIES", "3"))
rudder_analytics.timeout = 5
client = rudder_analytics

PAGE_KEYS = ("url", "referrer", "path", "title", "search")

for e in events:
    common = dict(
        message_id=e.get("messageId"),
        context=dict(e.get("context") or {}),
        integrations=e.get("integrations"),
        timestamp=datetime.fromisoformat(e["timestamp"].replace("Z", "+00:00")) if e.get("timestamp") else None,
    )
    ids = dict(user_id=e.get("userId"), anonymous_id=e.get("anonymousId"))
    t = e["type"]
    if t == "track":
        client.track(event=e["event"], properties=e.get("properties"), **ids, **common)
    elif t in ("page", "screen"):
        props = dict(e.get("properties") or {})
        page = {k: e[k] for k in PAGE_KEYS if k in e}
        props.update({k: v for k, v in page.items() if k not in props})
        if t == "page" and page:
            common["context"]["page"] = {**page, **common["context"].get("page", {})}
        getattr(client, t)(name=e.get("name"), category=e.get("category"), properties=props, **ids, **common)
    elif t == "identify":
        client.identify(traits=e.get("traits"), **ids, **common)  # SDK puts traits in context.traits only
    elif t == "group":
        client.group(group_id=e["groupId"], traits=e.get("traits"), **ids, **common)
    elif t == "alias":
        client.alias(previous_id=e["previousId"], user_id=e["userId"], **common)
    else:
        sys.exit("unknown type %r" % t)

rudder_analytics.flush()  # blocks until every queued batch succeeded or was given up on
rudder_analytics.join()
print(json.dumps({"sdk": "rudder-sdk-python", "sent": len(events), "ok": not errors, "errors": errors}))
sys.exit(1 if errors else 0)
