-- wrk script for POST /v1/pixel: one event a request, each with its own
-- event_id, from an allowed origin, as tally.js sends it (text/plain JSON).
-- Used by `scripts/bench.py pixel`; SITE_KEY comes from the environment.
local site = os.getenv("SITE_KEY") or "pk_missing"
local thread_id = 0
local counter = 0

function setup(thread)
  thread:set("tid", thread_id)
  thread_id = thread_id + 1
end

function init(args)
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "text/plain;charset=UTF-8"
  wrk.headers["Origin"] = "https://shop.example.com"
  math.randomseed(os.time() + tid)
  prefix = string.format("w%d_%d_", tid, math.random(1, 1e9))
end

function request()
  counter = counter + 1
  local body = string.format(
    '{"site":"%s","event_id":"evt_%s%d","event_name":"page.view","session_id":"s_%s%d",' ..
    '"url":"https://shop.example.com/p/%d","referrer":"https://news.example.org/","properties":{}}',
    site, prefix, counter, prefix, counter % 97, counter % 1000)
  return wrk.format(nil, "/v1/pixel", nil, body)
end

function done(summary, latency, requests)
  io.write(string.format("WRK requests=%d non2xx=%d errors=%d p50_ms=%.2f p99_ms=%.2f\n",
    summary.requests, summary.errors.status, summary.errors.connect + summary.errors.read +
    summary.errors.write + summary.errors.timeout,
    latency:percentile(50) / 1000, latency:percentile(99) / 1000))
end
