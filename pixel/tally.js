/* Tally pixel: sends events that the server counts once (see the README, "The pixel"). */
(function (w, d) {
  var script = d.currentScript;
  if (!script) return;
  var site = script.getAttribute('data-site');
  var endpoint = new URL(script.src).origin + '/v1/pixel';
  var stub = w.tally;
  var memorySession;
  var lastUrl;
  var referrer = d.referrer;

  function random() {
    var bytes = new Uint8Array(12);
    crypto.getRandomValues(bytes);
    return Array.prototype.map.call(bytes, function (b) {
      return (b | 256).toString(16).slice(1);
    }).join('');
  }

  // First-party session: 30 minutes of inactivity ends it.
  function session() {
    try {
      var now = Date.now();
      var s = JSON.parse(localStorage.getItem('tally_session') || 'null');
      if (!s || now - s.t > 18e5) s = { id: 's_' + random() };
      s.t = now;
      localStorage.setItem('tally_session', JSON.stringify(s));
      return s.id;
    } catch (e) {
      return memorySession || (memorySession = 's_' + random());
    }
  }

  // fetch with keepalive (it outlives the page, and its status can be read:
  // a 5xx or 429 is retried with the same body, so the same event_id);
  // sendBeacon only where fetch is missing.
  function send(body, attempt) {
    function retry() {
      if (attempt < 5) setTimeout(send, 1e3 << attempt, body, attempt + 1);
    }
    try {
      fetch(endpoint, { method: 'POST', body: body, keepalive: true, credentials: 'omit' })
        .then(function (r) { if (r.status > 499 || r.status == 429) retry(); }, retry);
    } catch (e) {
      navigator.sendBeacon(endpoint, body) || retry();
    }
  }

  function track(name, properties) {
    var props = {};
    for (var k in properties || {}) props[k] = properties[k];
    var id = props.event_id || props.event_id_override || 'evt_' + random();
    delete props.event_id;
    delete props.event_id_override;
    send(JSON.stringify({
      site: site,
      event_id: String(id),
      event_name: String(name),
      occurred_at: new Date().toISOString(),
      session_id: session(),
      url: location.href.slice(0, 4096),
      referrer: (referrer || '').slice(0, 4096) || undefined,
      properties: props
    }), 0);
  }

  function pageView() {
    if (location.href == lastUrl) return;
    if (lastUrl) referrer = lastUrl;
    track('page.view');
    lastUrl = location.href;
  }

  w.tally = { track: track };
  if (script.getAttribute('data-auto') != 'false') {
    ['pushState', 'replaceState'].forEach(function (m) {
      var original = history[m];
      history[m] = function () {
        var result = original.apply(this, arguments);
        pageView();
        return result;
      };
    });
    w.addEventListener('popstate', pageView);
    pageView();
  }
  ((stub && stub.q) || []).forEach(function (args) {
    track.apply(null, args);
  });
})(window, document);
