#!/usr/bin/env node
// Send events through @segment/analytics-node.
//
// usage: NODE_PATH=DIR/node/node_modules node segment_node.js BASE_URL WRITE_KEY SITE_KEY < events.json
// SITE_KEY is unused (the write key identifies the source); kept for a common CLI.
// Env: SDK_MAX_RETRIES (default 5).  This SDK has no gzip option: bodies are plain JSON.
// Exit 0 when every event was delivered (2xx/3xx), 1 when the SDK reported a failure.
'use strict'
const { Analytics } = require('@segment/analytics-node')

const [baseUrl, writeKey] = process.argv.slice(2)
const events = JSON.parse(require('fs').readFileSync(0, 'utf8'))
const PAGE_KEYS = ['url', 'referrer', 'path', 'title', 'search']

const analytics = new Analytics({
  writeKey,
  host: baseUrl, // path defaults to /v1/batch
  maxRetries: Number(process.env.SDK_MAX_RETRIES || 5),
  // counted retries sleep 1-2s, 2-4s, 4-8s, ... (not configurable); give up once failures span 3s
  maxTotalBackoffDuration: 3,
  // 429 with Retry-After: wait as told (min 1s), for at most 10s in all
  maxRateLimitDuration: 10,
  flushAt: 100,
  flushInterval: 200,
  httpRequestTimeout: 5000,
})

const errors = []
const onDone = (e) => (err) => {
  if (err) {
    const msg = String(err && err.message ? err.message : err)
    errors.push({ error: msg, messageId: e.messageId })
    console.error('segment error:', e.messageId, msg)
  }
}

for (const e of events) {
  const common = {
    messageId: e.messageId,
    userId: e.userId,
    anonymousId: e.anonymousId,
    context: e.context,
    integrations: e.integrations,
    timestamp: e.timestamp,
  }
  switch (e.type) {
    case 'track':
      analytics.track({ ...common, event: e.event, properties: e.properties }, onDone(e))
      break
    case 'page':
    case 'screen': {
      const page = Object.fromEntries(PAGE_KEYS.filter((k) => k in e).map((k) => [k, e[k]]))
      const properties = { ...page, ...e.properties }
      if (e.type === 'page' && Object.keys(page).length) {
        common.context = { ...e.context, page: { ...page, ...(e.context || {}).page } }
      }
      analytics[e.type]({ ...common, name: e.name, category: e.category, properties }, onDone(e))
      break
    }
    case 'identify':
      analytics.identify({ ...common, traits: e.traits }, onDone(e))
      break
    case 'group':
      analytics.group({ ...common, groupId: e.groupId, traits: e.traits }, onDone(e))
      break
    case 'alias':
      analytics.alias({ ...common, previousId: e.previousId }, onDone(e))
      break
    default:
      console.error('unknown type', e.type)
      process.exit(2)
  }
}

analytics.closeAndFlush({ timeout: 30000 }).then(() => {
  console.log(JSON.stringify({ sdk: '@segment/analytics-node', sent: events.length, ok: !errors.length, errors }))
  process.exit(errors.length ? 1 : 0)
})
