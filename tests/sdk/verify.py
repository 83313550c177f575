#!/usr/bin/env python3
"""Check every driver against capture_server.py (no Tally needed).

usage: python3 tests/sdk/verify.py DIR      (DIR as given to install.sh)

For each driver: a plain run, a run where the first request gets 503 (with
Retry-After: 1, then Retry-After: 0) and then 200, and a run where every request
gets 400.  Checks exit codes, that every id arrived, and that the retried
request carried the same ids as the failed one.
"""
import json
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
DIR = os.path.abspath(sys.argv[1])
PY = os.path.join(DIR, "venv", "bin", "python")
ENV = dict(os.environ, NODE_PATH=os.path.join(DIR, "node", "node_modules"))

SEGMENT_EVENTS = [
    {"type": "track", "event": "order.completed", "messageId": "m1", "userId": "u1",
     "properties": {"order_id": "42", "total": 19.99}},
    {"type": "page", "name": "Home", "messageId": "m2", "anonymousId": "a1",
     "url": "https://shop.example.com/", "referrer": "https://google.com/"},
    {"type": "identify", "userId": "u1", "traits": {"email": "A@B.com"}, "messageId": "m3"},
]
META_EVENTS = [
    {"event_name": "Purchase", "event_id": "order-42", "event_time": 1795428000,
     "event_source_url": "https://shop.example.com/thanks", "action_source": "website",
     "user_data": {"email": "Jane@Example.com ", "phone": "+1 (555) 010-9999", "client_ip_address": "203.0.113.9"},
     "custom_data": {"value": 19.99, "currency": "EUR", "order_id": "42"}},
    {"event_name": "PageView", "event_id": "pv-1", "event_time": 1795428001,
     "event_source_url": "https://shop.example.com/", "action_source": "website",
     "user_data": {"client_ip_address": "203.0.113.9"}},
]
DRIVERS = [
    ("segment_python", [PY, "segment_python.py"], SEGMENT_EVENTS),
    ("rudder_python", [PY, "rudder_python.py"], SEGMENT_EVENTS),
    ("segment_node", ["node", "segment_node.js"], SEGMENT_EVENTS),
    ("rudder_node", ["node", "rudder_node.js"], SEGMENT_EVENTS),
    ("meta_python", [PY, "meta_python.py"], META_EVENTS),
]
SCENARIOS = [
    ("ok", [], 0),
    ("503 Retry-After:1 then 200", [{"status": 503, "headers": {"Retry-After": "1"}, "body": ""}], 0),
    ("503 Retry-After:0 then 200", [{"status": 503, "headers": {"Retry-After": "0"}, "body": ""}], 0),
    ("always 400", [{"status": 400, "body": {"code": "invalid", "message": "rejected by test",
                                             "error": {"message": "rejected by test", "code": 100}}}] * 50, 1),
]


def ids_of(req):
    body = req["body"]
    if "_form" in body:
        return [json.loads(d)["event_id"] for d in body["_form"]["data"]]
    return [m["messageId"] for m in body["batch"]]


def run(cmd, events, script):
    with tempfile.NamedTemporaryFile("r", suffix=".jsonl") as log:
        srv = subprocess.Popen([sys.executable, os.path.join(HERE, "capture_server.py"), "--log", log.name,
                                "--script", json.dumps(script)], stdout=subprocess.PIPE, text=True)
        try:
            port = srv.stdout.readline().split()[1]
            cmd = cmd[:1] + [os.path.join(HERE, cmd[1]), "http://127.0.0.1:%s" % port, "wk_test", "site_1"]
            t0 = time.monotonic()
            p = subprocess.run(cmd, input=json.dumps(events), capture_output=True, text=True, env=ENV, timeout=60)
            took = time.monotonic() - t0
        finally:
            srv.terminate()
            srv.wait()
        return p, [json.loads(line) for line in log], took


failures = 0
for name, cmd, events in DRIVERS:
    want = sorted(e.get("messageId") or e.get("event_id") for e in events)
    for scen, script, want_rc in SCENARIOS:
        p, reqs, took = run(cmd, events, script)
        problems = []
        if (p.returncode != 0) != bool(want_rc):
            problems.append("exit %d" % p.returncode)
        ok_ids = sorted(i for r in reqs if r["answered"] != "dropped" and r["answered"]["status"] < 300 for i in ids_of(r))
        if want_rc == 0 and ok_ids != want:
            problems.append("delivered ids %s" % ok_ids)
        for i, r in enumerate(reqs[:len(script)]):  # a failed request must be resent with the same ids
            if want_rc == 0 and not any(set(ids_of(r)) <= set(ids_of(q)) for q in reqs[i + 1:]):
                problems.append("ids of failed request %d not resent" % r["n"])
        if not p.stdout.strip() or len(p.stdout.strip().splitlines()) != 1:
            problems.append("stdout not one line: %r" % p.stdout)
        failures += bool(problems)
        print("%-5s %-15s %-28s rc=%d requests=%d %.1fs %s" % ("FAIL" if problems else "ok", name, scen, p.returncode,
                                                            len(reqs), took, "; ".join(problems)))
        if problems:
            print(p.stdout + p.stderr)
print("%d passed, %d failed" % (len(DRIVERS) * len(SCENARIOS) - failures, failures))
sys.exit(1 if failures else 0)
