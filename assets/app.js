// Tally dashboard. Plain DOM, no framework. Every user-supplied string
// (event names, ids, URLs, referrers) is set with textContent, never as HTML.
'use strict';

const $ = (id) => document.getElementById(id);
const state = { csrf: null, sites: [], site: null, range: '7d', from: null, to: null, live: null };

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

function query(extra) {
  const p = new URLSearchParams({ site: state.site, range: state.range });
  if (state.range === 'custom') { p.set('from', state.from); p.set('to', state.to); }
  Object.entries(extra || {}).forEach(([k, v]) => p.set(k, v));
  return p.toString();
}

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
  const select = $('site-select');
  select.replaceChildren(...state.sites.map((s) => el('option', { value: s.name }, s.name)));
  if (!state.sites.length) {
    state.site = null;
    showEmpty({ name: 'your first site', snippet: 'Create a site first:\n  tally site add shop --origin https://shop.example.com' });
    return;
  }
  state.site = state.site || state.sites[0].name;
  select.value = state.site;
  refresh();
}

const fmt = (n) => Number(n).toLocaleString('en-US');
const pct = (part, whole) => (whole ? `${(100 * part / whole).toFixed(1)} %` : '–');

async function refresh() {
  if (!state.site) return;
  const [summary, series, events, pages, referrers, recent] = await Promise.all([
    api('/api/summary?' + query()),
    api('/api/series?' + query()),
    api('/api/top?' + query({ kind: 'events' })),
    api('/api/top?' + query({ kind: 'pages' })),
    api('/api/top?' + query({ kind: 'referrers' })),
    api('/api/recent?' + query({ limit: 20 })),
  ]);
  $('card-unique').textContent = fmt(summary.unique_events);
  $('card-dups').textContent = fmt(summary.duplicates_24h);
  $('card-rate').textContent = `${(100 * summary.dedup_rate).toFixed(1)} %`;
  $('card-pixel').textContent = pct(summary.pixel, summary.unique_events);
  $('card-server').textContent = pct(summary.server, summary.unique_events);
  $('card-both').textContent = pct(summary.both, summary.unique_events);
  const site = state.sites.find((s) => s.name === state.site);
  if (recent.length === 0 && summary.unique_events === 0) showEmpty(site); else $('empty').hidden = true;
  drawChart(series.points, series.bucket);
  fillTop('top-events', events, 'No events in this range');
  fillTop('top-pages', pages, 'No page views in this range');
  fillTop('top-referrers', referrers, 'No referrers in this range');
  $('feed').replaceChildren(...recent.map((e) => feedItem(e, false)));
  connectLive();
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

function fillTop(id, rows, empty) {
  const table = $(id);
  if (!rows.length) { table.replaceChildren(el('tr', {}, el('td', { class: 'hint' }, empty))); return; }
  table.replaceChildren(...rows.map((r) => el('tr', {}, el('td', { title: r.value }, r.value), el('td', { class: 'n' }, fmt(r.count)))));
}

const SVG = 'http://www.w3.org/2000/svg';
function svg(tag, attrs) {
  const node = document.createElementNS(SVG, tag);
  Object.entries(attrs).forEach(([k, v]) => node.setAttribute(k, v));
  return node;
}

// Stacked bars: pixel only, server only, both, import only.
function drawChart(points, bucket) {
  const W = 1000, H = 220, pad = 28;
  const chart = svg('svg', { viewBox: `0 0 ${W} ${H}`, preserveAspectRatio: 'none', role: 'img' });
  const keys = [['both', '--both'], ['server_only', '--server'], ['pixel_only', '--pixel'], ['import_only', '--import']];
  const max = Math.max(1, ...points.map((p) => keys.reduce((s, [k]) => s + p[k], 0)));
  const bw = (W - pad) / Math.max(points.length, 1);
  const color = (v) => getComputedStyle(document.documentElement).getPropertyValue(v);
  points.forEach((p, i) => {
    let y = H - pad;
    keys.forEach(([k, c]) => {
      const h = (p[k] / max) * (H - pad - 8);
      if (h > 0) {
        const rect = svg('rect', { x: pad + i * bw + 1, y: y - h, width: Math.max(bw - 2, 1), height: h, fill: color(c) });
        const title = svg('title', {});
        title.textContent = `${p.t}: ${k.replace('_', ' ')} ${p[k]}`;
        rect.append(title);
        chart.append(rect);
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
    const first = points[0].t, last = points[points.length - 1].t;
    const cut = (t) => (bucket === 'hour' ? t.slice(5, 16) : t.slice(0, 10));
    label(pad, H - 8, cut(first));
    label(W, H - 8, cut(last), 'end');
  }
  $('chart').replaceChildren(chart);
}

function feedItem(e, fresh) {
  return el('li', { class: fresh ? 'new' : '' },
    el('span', { class: 'dot ' + (e.source === 'import' ? 'import' : e.source) }),
    el('span', { class: 'name' }, e.event_name),
    el('span', { class: 'meta' }, `${e.event_id} · ${e.source} · ${e.occurred_at}${e.url ? ' · ' + e.url : ''}`));
}

function connectLive() {
  if (state.live) state.live.close();
  const source = new EventSource('/api/live?' + new URLSearchParams({ site: state.site }));
  source.onopen = () => { $('live-status').textContent = 'connected'; };
  source.onerror = () => { $('live-status').textContent = 'reconnecting…'; };
  source.onmessage = (m) => {
    const e = JSON.parse(m.data);
    const feed = $('feed');
    feed.prepend(feedItem(e, true));
    while (feed.children.length > 200) feed.lastChild.remove();
    if (state.range !== 'custom') $('card-unique').textContent = fmt(Number($('card-unique').textContent.replace(/,/g, '')) + 1);
    $('empty').hidden = true;
  };
  state.live = source;
}

function init() {
  $('login-form').addEventListener('submit', login);
  $('logout').addEventListener('click', logout);
  $('site-select').addEventListener('change', (e) => { state.site = e.target.value; refresh(); });
  $('range-select').addEventListener('change', (e) => {
    $('custom-range').hidden = e.target.value !== 'custom';
    if (e.target.value !== 'custom') { state.range = e.target.value; refresh(); }
  });
  $('apply-range').addEventListener('click', () => {
    if (!$('from').value || !$('to').value) return;
    state.range = 'custom'; state.from = $('from').value; state.to = $('to').value;
    refresh();
  });
  api('/api/session').then((s) => { state.csrf = s.csrf; start(); }).catch(() => showLogin());
}

init();
