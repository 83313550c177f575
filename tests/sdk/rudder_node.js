#!/usr/bin/env node
// Send events through @rudderstack/rudder-sdk-node.
//
// usage: NODE_PATH=DIR/node/node_modules node rudder_node.js BASE_URL WRITE_KEY SITE_KEY < events.json
// SITE_KEY is unused (the write key identifies the source); kept for a common CLI.
// Env: SDK_MAX_RETRIES (default 5).  gzip is on (the SDK default).
// Exit 0 when every event was delivered (2xx), 1 when the SDK reported a failure.
'use strict'
const Analytics = require('@rudderstack/rudder-sdk-node')

const [baseUrl, writeKey] = process.argv.slice(2)
const events = JSON.parse(require('fs').readFileSync(0, 'utf8'))
const PAGE_KEYS = ['url', 'referrer', 'path', 'title', 'search']

const errors = []
const client = new Analytics(writeKey, {
  dataPlaneUrl: baseUrl, // path defaults to /v1/batch
  // axios-retry: retries 5xx, 429 and network errors.  Its default delay
  // (200ms, 400ms, 800ms, ... +0-20%, or Retry-After if longer) is replaced by
  // 100ms, 200ms, 300ms, ..., still waiting Retry-After seconds if that is longer
  retryCount: Number(process.env.SDK_MAX_RETRIES || 5),
  axiosRetryConfig: {
    retryDelay: (n, err) => Math.max(100 * n, 1000 * (Number(err && err.response && err.response.headers['retry-after']) || 0)),
    shouldResetTimeout: true, // timeout applies per try, not to all tries
  },
  timeout: 5000,
  flushAt: 100,
  flushInterval: 200,
  logLevel: 'error',
  // without an errorHandler a failed flush() rejects; per-event callbacks report the error anyway
  errorHandler: () => {},
})

const onDone = (e) => (err) => {
  if (err) {
    const msg = String(err.response ? `${err.response.status} ${err.response.statusText}` : err.message || err)
    errors.push({ error: msg, messageId: e.messageId })
    console.error('rudder error:', e.messageId, msg)
  }
}

for (const e of events) {
  const msg = { messageId: e.messageId, userId: e.userId, anonymousId: e.anonymousId }
  for (const k of ['context', 'integrations', 'timestamp', 'originalTimestamp']) if (k in e) msg[k] = e[k]
  if (msg.timestamp) msg.timestamp = new Date(msg.timestamp) // the SDK asserts a Date
  switch (e.type) {
    case 'track':
      client.track({ ...msg, event: e.event, properties: e.properties }, onDone(e))
      break
    case 'page':
    case 'screen': {
      const page = Object.fromEntries(PAGE_KEYS.filter((k) => k in e).map((k) => [k, e[k]]))
      msg.properties = { ...page, ...e.properties }
      if (e.type === 'page' && Object.keys(page).length) {
        msg.context = { ...e.context, page: { ...page, ...(e.context || {}).page } }
      }
      client[e.type]({ ...msg, name: e.name, category: e.category }, onDone(e))
      break
    }
    case 'identify': // the SDK copies traits into context.traits as well
      client.identify({ ...msg, traits: e.traits }, onDone(e))
      break
    case 'group':
      client.group({ ...msg, groupId: e.groupId, traits: e.traits }, onDone(e))
      break
    case 'alias':
      client.alias({ ...msg, previousId: e.previousId }, onDone(e))
      break
    default:
      console.error('unknown type', e.type)
      process.exit(2)
  }
}

;(async () => {
  // flush() sends at most flushAt events per call and first awaits the request in flight
  do await client.flush()
  while (client.queue.length)
  await client.flush() // resolves once the last request in flight has settled
  await new Promise((r) => setImmediate(r)) // event callbacks run in a setImmediate
  console.log(JSON.stringify({ sdk: '@rudderstack/rudder-sdk-node', sent: events.length, ok: !errors.length, errors }))
  process.exit(errors.length ? 1 : 0)
})()
