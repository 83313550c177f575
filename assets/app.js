// Tally dashboard. Plain DOM, no framework, no build step. Every
// user-supplied string (event names, ids, URLs, referrers, properties) is
// set with textContent or as an attribute value, never as HTML.
//
// The view (site, range, filters, funnel steps, inspected id) lives in the
// URL's query string: every change pushes a history entry, so a view can be
// shared, reloaded, and left with the back button.
'use strict';

const $ = (id) => document.getElementById(id);
const FILTERS = ['event', 'page', 'referrer', 'source'];
const state = {
  csrf: null, sites: [], site: null, range: '7d', from: null, to: null,
  filter: {}, steps: [], inspect: '', live: null, generation: 0, data: {},
};

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  Object.entries(attrs || {}).forEach(([k, v]) => (k === 'class' ? (node.className = v) : node.setAttribute(k, v)));
  children.forEach((c) => node.append(c instanceof Node ? c : document.createTextNode(String(c))));
  return node;
}

async function api(path, options) {
  const res = await fetch(path, Object.assign({ credentials: 'same-origin' }, options));
  if (res.status === 401) { showLogin(); throw new Error('logged out'); }
  const body = await res.json();
  if (!res.ok) throw new Error(body.message || res.statusText);
  return body;
}

// ---- the view in the URL ----

function readUrl() {
  const p = new URLSearchParams(location.search);
  state.site = p.get('site') || state.site;
  state.range = p.get('range') || '7d';
  state.from = p.get('from');
  state.to = p.get('to');
  state.filter = {};
  FILTERS.forEach((k) => { if (p.get(k)) state.filter[k] = p.get(k); });
  state.steps = p.getAll('step');
  state.inspect = p.get('inspect') || '';
}

function viewParams() {
  const p = new URLSearchParams({ site: state.site || '', range: state.range });
  if (state.range === 'custom') { p.set('from', state.from || ''); p.set('to', state.to || ''); }
  FILTERS.forEach((k) => { if (state.filter[k]) p.set(k, state.filter[k]); });
  return p;
}

function writeUrl(push) {
  const p = viewParams();
  state.steps.forEach((s) => p.append('step', s));
  if (state.inspect) p.set('inspect', state.inspect);
  const url = '?' + p.toString();
  if (url === location.search) return;
  if (push) history.pushState(null, '', url); else history.replaceState(null, '', url);
}

// Changes the view, records it in the history, and redraws.
function navigate(change) {
  change();
  writeUrl(true);
  syncControls();
  refresh();
}

function setFilter(kind, value) {
  navigate(() => { state.filter = Object.assign({}, state.filter, { [kind]: value }); });
}

function query(extra) {
  const p = viewParams();
  Object.entries(extra || {}).forEach(([k, v]) => p.set(k, v));
  return p.toString();
}

function syncControls() {
  $('site-select').value = state.site || '';
  $('range-select').value = state.range;
  $('custom-range').hidden = state.range !== 'custom';
  if (state.range === 'custom') { $('from').value = state.from || ''; $('to').value = state.to || ''; }
  $('inspect-id').value = state.inspect;
  const chips = Object.entries(state.filter).map(([k, v]) => el('span', { class: 'chip' },
    `${k}: ${v}`,
    button('×', () => navigate(() => { const f = Object.assign({}, state.filter); delete f[k]; state.filter = f; }),
      { class: 'x', 'aria-label': `Remove the ${k} filter`, 'data-filter': k })));
  $('filter-chips').replaceChildren(...chips);
  $('filters').hidden = chips.length === 0;
  const site = state.sites.find((s) => s.name === state.site);
  $('tz').textContent = site ? `Days and hours in ${site.timezone}` : '';
}

function button(text, onclick, attrs) {
  const b = el('button', Object.assign({ type: 'button', class: 'link' }, attrs || {}), text);
  b.addEventListener('click', onclick);
  return b;
}

// ---- login ----

function showLogin() {
  $('dashboard').hidden = true; $('controls').hidden = true; $('login').hidden = false;
  if (state.live) { state.live.close(); state.live = null; }
  $('password').focus();
}

async function login(event) {
  event.preventDefault();
  $('login-error').textContent = '';
  const res = await fetch('/api/login', {
    method: 'POST', headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ password: $('password').value }),
  });
  const body = await res.json().catch(() => ({}));
  if (!res.ok) { $('login-error').textContent = body.message || 'Login failed'; return; }
  state.csrf = body.csrf;
  $('password').value = '';
  start();
}

async function logout() {
  await fetch('/api/logout', { method: 'POST', headers: { 'X-Tally-CSRF': state.csrf || '' } });
  showLogin();
}

async function start() {
  const sites = await api('/api/sites');
  state.sites = sites.sites;
  state.publicUrl = sites.public_url;
  $('login').hidden = true; $('controls').hidden = false; $('dashboard').hidden = false;
  $('site-select').replaceChildren(...state.sites.map((s) => el('option', { value: s.name }, s.name)));
  if (!state.sites.length) {
    state.site = null;
    showEmpty({ name: 'your first site', snippet: 'Create a site first:\n  tally site add shop --origin https://shop.example.com' });
    return;
  }
  if (!state.sites.some((s) => s.name === state.site)) state.site = state.sites[0].name;
  writeUrl(false);
  syncControls();
  refresh();
}

// ---- the cards ----

const fmt = (n) => Number(n).toLocaleString('en-US');
const pct = (part, whole) => (whole ? `${(100 * part / whole).toFixed(1)} %` : '–');

// Exact decimal text ("1234.5000") shown with thousands separators and at
// least two decimals, without going through a float.
function money(text) {
  const negative = text.startsWith('-');
  let [int, frac = ''] = text.replace('-', '').split('.');
  frac = frac.replace(/0+$/, '').padEnd(2, '0');
  int = int.replace(/\B(?=(\d{3})+(?!\d))/g, ',');
  return `${negative ? '-' : ''}${int}.${frac}`;
}

async function refresh() {
  if (!state.site) return;
  const generation = ++state.generation;
  const siteOnly = new URLSearchParams({ site: state.site });
  const names = api('/api/top?' + query({ kind: 'events', limit: 50, event: '' }));
  const calls = {
    summary: api('/api/summary?' + query()),
    series: api('/api/series?' + query()),
    events: api('/api/top?' + query({ kind: 'events' })),
    pages: api('/api/top?' + query({ kind: 'pages' })),
    referrers: api('/api/top?' + query({ kind: 'referrers' })),
    recent: api('/api/recent?' + query({ limit: 20 })),
    revenue: api('/api/revenue?' + query()),
    conversions: api('/api/conversions?' + query()),
    names,
    funnel: names.then((rows) => {
      const steps = funnelSteps(rows.map((r) => r.value));
      if (steps.length < 2) return null;
      return api('/api/funnel?' + query() + steps.map((s) => '&step=' + encodeURIComponent(s)).join(''));
    }),
    forwards: api('/api/forwards?' + siteOnly),
    nearMisses: api('/api/near-misses?' + siteOnly),
  };
  const keys = Object.keys(calls);
  let values;
  try {
    values = await Promise.all(Object.values(calls));
  } catch (e) {
    if (generation === state.generation) $('view-error').textContent = e.message;
    return;
  }
  if (generation !== state.generation) return; // a newer view is on its way
  $('view-error').textContent = '';
  const d = Object.fromEntries(keys.map((k, i) => [k, values[i]]));
  state.data = d;
  drawSummary(d.summary);
  const site = state.sites.find((s) => s.name === state.site);
  if (d.recent.length === 0 && d.summary.unique_events === 0 && !Object.keys(state.filter).length) showEmpty(site); else $('empty').hidden = true;
  drawChart(d.series.points, d.series.bucket);
  fillTop('top-events', d.events, 'event', 'No events in this range');
  fillTop('top-pages', d.pages, 'page', 'No pages in this range');
  fillTop('top-referrers', d.referrers, 'referrer', 'No referrers in this range');
  drawRevenue(d.revenue);
  drawConversions(d.conversions);
  drawSteps(d.names.map((r) => r.value));
  drawFunnel(d.funnel);
  drawForwards(d.forwards);
  drawNearMisses(d.nearMisses);
  $('feed').replaceChildren(...d.recent.map((e) => feedItem(e, false)));
  if (state.inspect) inspect(state.inspect); else $('inspect-result').replaceChildren();
  connectLive();
}

function drawSummary(s) {
  $('card-unique').textContent = fmt(s.unique_events);
  $('card-dups').textContent = fmt(s.duplicates_24h);
  $('card-rate').textContent = `${(100 * s.dedup_rate).toFixed(1)} %`;
  $('card-pixel').textContent = pct(s.pixel, s.unique_events);
  $('card-server').textContent = pct(s.server, s.unique_events);
  $('card-both').textContent = pct(s.both, s.unique_events);
}

function showEmpty(site) {
  $('empty').hidden = false;
  $('empty-site').textContent = site.name;
  $('empty-snippet').textContent = site.snippet;
  $('empty-curl').textContent =
    `curl -X POST ${state.publicUrl || location.origin}/v1/events \\\n` +
    `  -H "Authorization: Bearer $TALLY_TOKEN" -H "Content-Type: application/json" \\\n` +
    `  -d '{"events":[{"event_id":"ord_42","event_name":"order.completed","properties":{"total":199.99}}]}'`;
}

function table(id, head, rows, empty) {
  const t = $(id);
  if (!rows.length) { t.replaceChildren(el('tr', {}, el('td', { class: 'hint' }, empty))); return; }
  const th = el('tr', {}, ...head.map((h, i) => el('th', { class: i ? 'n' : '' }, h)));
  t.replaceChildren(el('thead', {}, th), el('tbody', {}, ...rows));
}

function cell(content, cls) {
  return el('td', cls ? { class: cls } : {}, content);
}

// A value that filters every card when clicked.
function filterLink(kind, value) {
  return button(value, () => setFilter(kind, value), { title: `Show only ${kind} ${value}`, 'data-value': value });
}

function fillTop(id, rows, kind, empty) {
  const t = $(id);
  if (!rows.length) { t.replaceChildren(el('tr', {}, el('td', { class: 'hint' }, empty))); return; }
  t.replaceChildren(...rows.map((r) => el('tr', {}, cell(filterLink(kind, r.value)), cell(fmt(r.count), 'n'))));
}

function drawRevenue(r) {
  const rows = r.currencies.map((c) => el('tr', {},
    cell(c.currency || '(no currency)'), cell(money(c.revenue), 'n money'), cell(fmt(c.events), 'n'),
    cell(money(c.over_count_avoided), 'n money avoided'), cell(fmt(c.dropped_copies), 'n')));
  table('revenue', ['Currency', 'Revenue', 'Events', 'Over-count avoided', 'Dropped copies'], rows, 'No revenue in this range');
  $('revenue-rule').textContent = `Read from the first of ${r.revenue_properties.join(', ')} holding a number; currency from currency. ` +
    'Over-count avoided: what the dropped copies carried, which counting every copy would have added.';
}

function drawConversions(c) {
  const rows = c.events.map((e) => el('tr', {},
    cell(filterLink('event', e.event_name)), cell(fmt(e.unique), 'n'),
    cell(pct(e.pixel, e.unique), 'n pixel-share'), cell(pct(e.server, e.unique), 'n server-share'),
    cell(pct(e.both, e.unique), 'n both-share'), cell(trend(e.days), 'trend')));
  table('conversions', ['Event', 'Deduplicated', 'Browser', 'Server', 'Both', 'Browser / day'], rows,
    'No conversions yet: names a server copy used appear here');
}

const SVG = 'http://www.w3.org/2000/svg';
function svg(tag, attrs) {
  const node = document.createElementNS(SVG, tag);
  Object.entries(attrs).forEach(([k, v]) => node.setAttribute(k, v));
  return node;
}

function titled(node, text) {
  const title = svg('title', {});
  title.textContent = text;
  node.append(title);
  return node;
}

const color = (v) => getComputedStyle(document.documentElement).getPropertyValue(v);

// One bar per local day: the share of the day's events the pixel saw.
function trend(days) {
  const W = 120, H = 22, bw = W / Math.max(days.length, 1);
  const chart = svg('svg', { viewBox: `0 0 ${W} ${H}`, preserveAspectRatio: 'none', class: 'spark' });
  days.forEach((d, i) => {
    const share = d.unique ? d.pixel / d.unique : 0;
    const h = d.unique ? Math.max(1, share * H) : 0;
    chart.append(titled(svg('rect', { x: i * bw + 0.5, y: H - h, width: Math.max(bw - 1, 0.5), height: h, fill: color('--pixel'), 'data-day': d.day }),
      `${d.day}: ${d.unique} unique, browser ${pct(d.pixel, d.unique)}, server ${pct(d.server, d.unique)}`));
  });
  return chart;
}

// Stacked bars: pixel only, server only, both, import only.
function drawChart(points, bucket) {
  const W = 1000, H = 220, pad = 28;
  const chart = svg('svg', { viewBox: `0 0 ${W} ${H}`, preserveAspectRatio: 'none', role: 'img' });
  const keys = [['both', '--both'], ['server_only', '--server'], ['pixel_only', '--pixel'], ['import_only', '--import']];
  const max = Math.max(1, ...points.map((p) => keys.reduce((s, [k]) => s + p[k], 0)));
  const bw = (W - pad) / Math.max(points.length, 1);
  points.forEach((p, i) => {
    let y = H - pad;
    keys.forEach(([k, c]) => {
      const h = (p[k] / max) * (H - pad - 8);
      if (h > 0) {
        chart.append(titled(svg('rect', { x: pad + i * bw + 1, y: y - h, width: Math.max(bw - 2, 1), height: h, fill: color(c) }),
          `${p.t}: ${k.replace('_', ' ')} ${p[k]}`));
        y -= h;
      }
    });
  });
  const label = (x, y, text, anchor) => {
    const t = svg('text', { x, y, class: 'axis', 'text-anchor': anchor || 'start' });
    t.textContent = text;
    chart.append(t);
  };
  label(0, 12, fmt(max));
  if (points.length) {
    const cut = (t) => (bucket === 'hour' ? t.slice(5, 16).replace('T', ' ') : t);
    label(pad, H - 8, cut(points[0].t));
    label(W, H - 8, cut(points[points.length - 1].t), 'end');
  }
  $('chart').replaceChildren(chart);
}

// The funnel's steps: the chosen ones, else page.view → cart.add →
// order.completed where the site has them, else its two commonest names.
function funnelSteps(names) {
  if (state.steps.length >= 2) return state.steps;
  const wanted = ['page.view', 'cart.add', 'order.completed'].filter((n) => names.includes(n));
  return wanted.length >= 2 ? wanted : names.slice(0, 2);
}

// The step pickers: the site's event names in the range.
function drawSteps(names) {
  const steps = funnelSteps(names);
  const all = [...new Set([...names, ...steps])];
  [1, 2, 3].forEach((i) => {
    const select = $(`step-${i}`);
    const none = i === 3 ? [el('option', { value: '' }, '—')] : [];
    select.replaceChildren(...none, ...all.map((n) => el('option', { value: n }, n)));
    select.value = steps[i - 1] || '';
  });
}

function changeSteps() {
  const steps = [1, 2, 3].map((i) => $(`step-${i}`).value).filter(Boolean);
  if (steps.length >= 2) navigate(() => { state.steps = steps; });
}

function drawFunnel(f) {
  if (!f) { table('funnel', [], [], 'Pick two or three events'); return; }
  const first = f.steps[0].sessions;
  const rows = f.steps.map((s, i) => {
    const bar = el('div', { class: 'bar' });
    bar.style.width = `${first ? (100 * s.sessions / first) : 0}%`;
    const prev = i ? f.steps[i - 1].sessions : s.sessions;
    return el('tr', {}, cell(`${i + 1}. ${s.event_name}`), cell(fmt(s.sessions), 'n sessions'),
      cell(i ? pct(s.sessions, prev) : '', 'n'), cell(el('div', { class: 'track' }, bar), 'barcell'));
  });
  table('funnel', ['Step', 'Sessions', 'Of previous', ''], rows, '');
}

function drawForwards(f) {
  const rows = f.destinations.map((d) => el('tr', {},
    cell(`${d.kind} · ${d.target}`), cell(fmt(d.delivered), 'n'), cell(fmt(d.pending), 'n'),
    cell(fmt(d.parked), d.parked ? 'n parked' : 'n')));
  table('forwards', ['Destination', 'Delivered', 'Pending', 'Parked'], rows,
    'No destinations. Add one with: tally forward add SITE --webhook URL');
}

const KINDS = { case_or_space: 'Case or space', prefix_or_suffix: 'Prefix or suffix', event_name: 'Event name' };

function drawNearMisses(r) {
  const found = r.kinds.filter((k) => k.count > 0);
  if (!found.length) {
    $('near-misses').replaceChildren(el('p', { class: 'hint' }, `None among ${fmt(r.events_checked)} events in the window.`));
    return;
  }
  const form = (f) => el('span', {}, inspectLink(f.event_id), ` ${f.event_name} (${f.sources.join('+')})`);
  $('near-misses').replaceChildren(...found.map((k) => el('div', { class: 'near' },
    el('h4', {}, `${KINDS[k.kind] || k.kind}: ${fmt(k.count)}`),
    el('ul', {}, ...k.examples.map((p) => el('li', {}, form(p.a), ' ≈ ', form(p.b)))))));
}

// ---- the inspector and the payload tester ----

function inspectLink(id) {
  return button(id, () => showInspected(id), { class: 'link mono', title: `Inspect ${id}` });
}

// Looks `id` up and records it in the URL; the other cards stay as they are.
function showInspected(id) {
  state.inspect = id;
  writeUrl(true);
  syncControls();
  $('inspector').scrollIntoView();
  inspect(id);
}

async function inspect(id) {
  let result;
  try {
    result = await api('/api/events/lookup?' + new URLSearchParams({ site: state.site, event_id: id }));
  } catch (e) {
    $('inspect-result').replaceChildren(el('p', { class: 'error' }, e.message));
    return;
  }
  const blocks = result.events.map((e) => el('div', { class: 'inspected' },
    el('p', {}, el('b', {}, e.event_name), ` · ${e.event_id} · kept the ${e.kept_source} copy · seen from ${e.sources_seen.join(', ')} · window from ${e.window_start}`),
    copiesTable(e.copies)));
  if (result.unmatched.length) blocks.push(el('div', {}, el('p', {}, 'Dropped copies whose kept event is gone:'), copiesTable(result.unmatched)));
  if (!blocks.length) blocks.push(el('p', { class: 'hint' }, `No copy of ${id} in ${state.site}.`));
  $('inspect-result').replaceChildren(...blocks);
}

function copiesTable(copies) {
  const rows = copies.map((c) => el('tr', { class: c.kept ? 'kept' : '' },
    cell(c.source), cell(c.arrived), cell(c.kept ? 'kept' : `dropped: ${c.why || c.rule}`),
    cell(c.filled && Object.keys(c.filled).length ? JSON.stringify(c.filled) : '')));
  return el('table', { class: 'copies' },
    el('thead', {}, el('tr', {}, ...['Source', 'Arrived (UTC)', 'Decision', 'Filled in'].map((h) => el('th', {}, h)))),
    el('tbody', {}, ...rows));
}

async function runTest() {
  $('test-error').textContent = '';
  let events;
  try {
    const parsed = JSON.parse($('test-payload').value);
    events = Array.isArray(parsed) ? parsed : (parsed.events || [parsed]);
  } catch (e) { $('test-error').textContent = `Not JSON: ${e.message}`; return; }
  try {
    const answer = await api('/api/test', {
      method: 'POST', headers: { 'Content-Type': 'application/json', 'X-Tally-CSRF': state.csrf || '' },
      body: JSON.stringify({ site: state.site, events }),
    });
    $('test-result').replaceChildren(...answer.test.map((d) => el('li', { class: d.outcome },
      el('b', {}, d.outcome), ' ', describeDecision(d))));
  } catch (e) { $('test-error').textContent = e.message; }
}

function describeDecision(d) {
  if (d.outcome === 'rejected') return `${d.code}: ${d.message}`;
  const parts = [`${d.source} copy`, `kept: ${d.kept_source}`];
  if (d.rule) parts.push(`rule: ${d.rule}`);
  if (d.matched_key) parts.push(`matched ${d.matched_key}${d.matched_value ? ' = ' + d.matched_value : ''}`);
  if (d.replaces_kept) parts.push('replaces the kept copy');
  if (d.filled && Object.keys(d.filled).length) parts.push(`fills ${JSON.stringify(d.filled)}`);
  if (d.user_data) parts.push(`user data ${JSON.stringify(d.user_data)}`);
  return parts.join(' · ');
}

// ---- the live feed ----

// Feed times are UTC; shown in the site's zone.
function localTime(utc) {
  const site = state.sites.find((s) => s.name === state.site);
  const t = new Date(utc.replace(' ', 'T') + 'Z');
  try {
    return new Intl.DateTimeFormat('sv-SE', {
      timeZone: site ? site.timezone : 'UTC', year: 'numeric', month: '2-digit', day: '2-digit',
      hour: '2-digit', minute: '2-digit', second: '2-digit', hourCycle: 'h23',
    }).format(t);
  } catch (_) { return `${utc} UTC`; }
}

function feedItem(e, fresh) {
  return el('li', { class: fresh ? 'new' : '' },
    el('span', { class: 'dot ' + (e.source === 'import' ? 'import' : e.source) }),
    el('span', { class: 'name' }, e.event_name),
    inspectLink(e.event_id),
    el('span', { class: 'meta' }, `${e.source} · ${localTime(e.occurred_at)}${e.url ? ' · ' + e.url : ''}`));
}

// Whether a live event passes the filter (the feed carries no referrer and
// only the kept copy's source).
function matches(e) {
  const f = state.filter;
  return (!f.event || f.event === e.event_name) && (!f.page || f.page === e.url) &&
    !f.referrer && (!f.source || f.source === e.source);
}

function connectLive() {
  if (state.live) state.live.close();
  const source = new EventSource('/api/live?' + new URLSearchParams({ site: state.site }));
  source.onopen = () => { $('live-status').textContent = 'connected'; };
  source.onerror = () => { $('live-status').textContent = 'reconnecting…'; };
  source.onmessage = (m) => {
    const e = JSON.parse(m.data);
    if (!matches(e)) return;
    const feed = $('feed');
    feed.prepend(feedItem(e, true));
    while (feed.children.length > 200) feed.lastChild.remove();
    if (state.range !== 'custom') $('card-unique').textContent = fmt(Number($('card-unique').textContent.replace(/,/g, '')) + 1);
    $('empty').hidden = true;
  };
  state.live = source;
}

// ---- CSV export of what a card shows ----

const CSV = {
  revenue: (d) => [['currency', 'revenue', 'events', 'over_count_avoided', 'dropped_copies'],
    ...d.revenue.currencies.map((c) => [c.currency || '', c.revenue, c.events, c.over_count_avoided, c.dropped_copies])],
  conversions: (d) => [['event_name', 'day', 'unique', 'pixel', 'server', 'both'],
    ...d.conversions.events.flatMap((e) => [[e.event_name, 'all', e.unique, e.pixel, e.server, e.both],
      ...e.days.map((x) => [e.event_name, x.day, x.unique, x.pixel, x.server, x.both])])],
  series: (d) => [['t', 'pixel_only', 'server_only', 'both', 'import_only'],
    ...d.series.points.map((p) => [p.t, p.pixel_only, p.server_only, p.both, p.import_only])],
  funnel: (d) => [['step', 'event_name', 'sessions'], ...(d.funnel ? d.funnel.steps : []).map((s, i) => [i + 1, s.event_name, s.sessions])],
  forwards: (d) => [['id', 'kind', 'target', 'delivered', 'pending', 'parked'],
    ...d.forwards.destinations.map((x) => [x.id, x.kind, x.target, x.delivered, x.pending, x.parked])],
  events: (d) => [['event_name', 'count'], ...d.events.map((r) => [r.value, r.count])],
  pages: (d) => [['page', 'count'], ...d.pages.map((r) => [r.value, r.count])],
  referrers: (d) => [['referrer', 'count'], ...d.referrers.map((r) => [r.value, r.count])],
};

// A quoted CSV field; text a spreadsheet would run as a formula is
// prefixed with an apostrophe.
function csvField(v) {
  let s = String(v);
  if (typeof v === 'string' && /^[=+\-@\t\r]/.test(s) && !/^-?\d+(\.\d+)?$/.test(s)) s = `'${s}`;
  return `"${s.replace(/"/g, '""')}"`;
}

function csvText(card) {
  return CSV[card](state.data).map((row) => row.map(csvField).join(',')).join('\r\n') + '\r\n';
}

function download(card) {
  if (!state.data.summary) return; // nothing loaded yet
  const blob = new Blob([csvText(card)], { type: 'text/csv;charset=utf-8' });
  const url = URL.createObjectURL(blob);
  const name = `tally-${state.site}-${card}-${state.range === 'custom' ? `${state.from}-${state.to}` : state.range}.csv`;
  const a = el('a', { href: url, download: name });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}

// ---- wiring ----

function init() {
  $('login-form').addEventListener('submit', login);
  $('logout').addEventListener('click', logout);
  $('site-select').addEventListener('change', (e) => navigate(() => {
    state.site = e.target.value; state.filter = {}; state.steps = []; state.inspect = '';
  }));
  $('range-select').addEventListener('change', (e) => {
    $('custom-range').hidden = e.target.value !== 'custom';
    if (e.target.value !== 'custom') navigate(() => { state.range = e.target.value; });
  });
  $('apply-range').addEventListener('click', () => {
    if (!$('from').value || !$('to').value) return;
    navigate(() => { state.range = 'custom'; state.from = $('from').value; state.to = $('to').value; });
  });
  $('clear-filters').addEventListener('click', () => navigate(() => { state.filter = {}; }));
  $('filter-pixel').addEventListener('click', () => setFilter('source', 'pixel'));
  $('filter-server').addEventListener('click', () => setFilter('source', 'server'));
  [1, 2, 3].forEach((i) => $(`step-${i}`).addEventListener('change', changeSteps));
  $('inspect-form').addEventListener('submit', (e) => {
    e.preventDefault();
    const id = $('inspect-id').value.trim();
    if (id) showInspected(id);
  });
  $('test-run').addEventListener('click', runTest);
  $('test-payload').value = JSON.stringify([{ event_id: 'ord_42', event_name: 'order.completed', properties: { total: 199.99, currency: 'EUR' } }]);
  document.querySelectorAll('button.csv').forEach((b) => b.addEventListener('click', () => download(b.dataset.card)));
  window.addEventListener('popstate', () => { readUrl(); syncControls(); refresh(); });
  readUrl();
  api('/api/session').then((s) => { state.csrf = s.csrf; start(); }).catch(() => showLogin());
}

init();
