#!/usr/bin/env python3
"""Send events through facebook-business (Meta Conversions API, ServerSideEvent API).

usage: meta_python.py BASE_URL ACCESS_TOKEN PIXEL_OR_SITE_ID < events.json
stdin: JSON list of events, e.g.
  [{"event_name": "Purchase", "event_id": "order-42", "event_time": 1795428000,
    "event_source_url": "https://shop.example.com/thanks", "action_source": "website",
    "user_data": {"email": "Jane@Example.com ", "phone": "+1 (555) 010-9999", "client_ip_address": "203.0.113.9"},
    "custom_data": {"value": 19.99, "currency": "EUR", "order_id": "42"}}]
  user_data keys are UserData() arguments (email, phone, external_id, client_user_agent, fbc, fbp, ...);
  custom_data keys that CustomData() does not know go to custom_properties.
Env: TEST_EVENT_CODE (optional), SDK_MAX_RETRIES (default 5), META_API_VERSION (default: the SDK's).
The SDK itself never retries: this driver re-executes the same EventRequest (same
event_ids) on 5xx/429/is_transient errors and connection errors, waiting
Retry-After (capped at 5s) or 0.1s, 0.2s, 0.4s, ...
Prints the parsed EventResponse as one JSON line; exit 0 on success, 1 on failure.
"""
import inspect
import json
import os
import sys
import time

import requests
from facebook_business.adobjects.serverside.action_source import ActionSource
from facebook_business.adobjects.serverside.custom_data import CustomData
from facebook_business.adobjects.serverside.event import Event
from facebook_business.adobjects.serverside.event_request import EventRequest
from facebook_business.adobjects.serverside.user_data import UserData
from facebook_business.api import FacebookAdsApi
from facebook_business.exceptions import FacebookRequestError
from facebook_business.session import FacebookSession

base_url, access_token, pixel_id = sys.argv[1], sys.argv[2], sys.argv[3]
specs = json.load(sys.stdin)
max_retries = int(os.environ.get("SDK_MAX_RETRIES", "5"))

FacebookSession.GRAPH = base_url.rstrip("/")  # default https://graph.facebook.com
FacebookAdsApi.init(access_token=access_token, api_version=os.environ.get("META_API_VERSION"), crash_log=False)

CUSTOM_KEYS = set(inspect.signature(CustomData.__init__).parameters) - {"self", "custom_properties"}
events = []
for s in specs:
    s = dict(s)
    ud = s.pop("user_data", None)
    cd = s.pop("custom_data", None)
    if "action_source" in s:
        s["action_source"] = ActionSource(s["action_source"])
    if cd is not None:
        extra = {k: v for k, v in cd.items() if k not in CUSTOM_KEYS}
        cd = CustomData(**{k: v for k, v in cd.items() if k in CUSTOM_KEYS}, custom_properties=extra)
    events.append(Event(**s, user_data=UserData(**ud) if ud is not None else None, custom_data=cd))

req = EventRequest(pixel_id=pixel_id, events=events, test_event_code=os.environ.get("TEST_EVENT_CODE"))

for attempt in range(max_retries + 1):
    retry_after = None
    try:
        resp = req.execute()
        print(json.dumps({"sdk": "facebook-business", "ok": True, "attempts": attempt + 1,
                          "events_received": resp.events_received, "messages": resp.messages,
                          "fbtrace_id": resp.fbtrace_id}))
        sys.exit(0)
    except FacebookRequestError as e:
        err = {"http_status": e.http_status(), "body": e.body(), "api_error_message": e.api_error_message(),
               "api_error_code": e.api_error_code(), "is_transient": e.api_transient_error()}
        retryable = e.http_status() in (429,) or (e.http_status() or 0) >= 500 or e.api_transient_error()
        retry_after = (e.http_headers() or {}).get("Retry-After")
    except (requests.ConnectionError, requests.Timeout) as e:
        err, retryable = {"exception": repr(e)}, True
    except Exception as e:  # e.g. KeyError('fbtrace_id') when a 2xx body lacks the expected fields
        err, retryable = {"exception": repr(e)}, False
    print("meta attempt %d failed: %s" % (attempt + 1, json.dumps(err, default=str)), file=sys.stderr)
    if not retryable or attempt == max_retries:
        break
    try:
        delay = min(float(retry_after), 5.0)
    except (TypeError, ValueError):
        delay = 0.1 * 2 ** attempt
    time.sleep(delay)

print(json.dumps({"sdk": "facebook-business", "ok": False, "attempts": attempt + 1, "error": err}, default=str))
sys.exit(1)
