#!/usr/bin/env python3
"""Benchmarks for BENCHMARKS.md. Each prints the numbers it measured.

    scripts/bench.py ingest     [--seconds 20] [--threads 4]   # /v1/events throughput, idle RSS
    scripts/bench.py restart    [--keys 10000000]              # time to healthy with N keys in the window
    scripts/bench.py dashboard  [--events 10000000]            # median latency of every /api/ query, 30 days
    scripts/bench.py dropin     [--runs 3] [--batch 100]       # /v1/batch (Segment SDKs' shape) beside /v1/events
    scripts/bench.py forward    [--seconds 15] [--runs 3]      # ingest with no destination vs one webhook that is down
    scripts/bench.py import     [--lines 1000000] [--backfill PATH] # tally import (server stopped), 30 % already stored; twice
    scripts/bench.py resend     [--events 200000]              # duplicates/s of re-sent copies before vs right after a restart
    scripts/bench.py pixel      [--seconds 15] [--runs 5]      # /v1/pixel under wrk, beside the bare actix ceiling; RSS
    scripts/bench.py attack     [--seconds 15] [--runs 3]      # ingest while pixel copies of one event pile 12 KB properties on it
    scripts/bench.py fixedrate  [--rate 20000] [--seconds 30]   # /v1/pixel at a constant rate, latency corrected for coordinated omission
    scripts/bench.py keys       [--seconds 15] [--runs 3]      # ingest without vs with a secondary key; index bytes a key
    scripts/bench.py deliver    [--events 3000] [--runs 3]     # webhook deliveries/s to a local receiver that answers 200

Builds nothing: run `cargo build --release --examples` first (target dir from
CARGO_TARGET_DIR, default ~/.cache/tally/target).
"""
import argparse, http.cookiejar, json, os, re, shutil, socket, statistics, subprocess, sys, tempfile, threading, time, urllib.request

TARGET = os.environ.get("CARGO_TARGET_DIR", os.path.expanduser("~/.cache/tally/target"))
# TALLY_BIN: another build of tally to measure (e.g. the commit before a change).
TALLY = os.environ.get("TALLY_BIN", os.path.join(TARGET, "release", "tally"))
EXAMPLE = lambda name: os.path.join(TARGET, "release", "examples", name)


def free_port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]; s.close(); return port


def wait_healthy(base, timeout=120):
    t0 = time.time()
    while time.time() - t0 < timeout:
        try:
            if urllib.request.urlopen(base + "/healthz", timeout=1).status == 200:
                return time.time() - t0
        except Exception:
            time.sleep(0.02)
    raise SystemExit(f"{base} not healthy after {timeout}s")


def rss_mb(pid, field="VmRSS"):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024


def rss_split(pid):
    """RSS in words: the total and its anonymous (heap) and file-backed (the
    binary's code pages, shared and reclaimable) parts."""
    return (f"{rss_mb(pid):.0f} MB ({rss_mb(pid, 'RssAnon'):.0f} anonymous + "
            f"{rss_mb(pid, 'RssFile'):.0f} file-backed)")


def serve(data_dir):
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen([TALLY, "serve", "--listen", f"127.0.0.1:{port}", "--data-dir", data_dir],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env={**os.environ, "RUST_LOG": "info"})
    return proc, base


def pixel_server():
    """A fresh data dir with a site allowed on the pixel scripts' origin, and
    a server on it, healthy and settled: (dir, site_key, process, base URL)."""
    d = tempfile.mkdtemp()
    out = subprocess.run([TALLY, "site", "add", "shop", "--origin", "https://shop.example.com", "--json",
                          "--data-dir", d], check=True, capture_output=True, text=True).stdout
    proc, base = serve(d)
    wait_healthy(base)
    time.sleep(1)
    return d, json.loads(out)["site_key"], proc, base


class PeakRss:
    """The highest RSS of a process, sampled every 200 ms inside `with`."""

    def __init__(self, pid):
        self.pid, self.mb, self.stop = pid, 0.0, threading.Event()
        self.thread = threading.Thread(target=self.sample)

    def sample(self):
        while not self.stop.is_set():
            self.mb = max(self.mb, rss_mb(self.pid)); time.sleep(0.2)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set(); self.thread.join()


def add_site(data_dir):
    out = subprocess.run([TALLY, "site", "add", "shop", "--origin", "https://shop.example.com", "--json",
                          "--data-dir", data_dir], check=True, capture_output=True, text=True).stdout
    return json.loads(out)["api_token"]


def bench_ingest(a):
    d = tempfile.mkdtemp()
    token = add_site(d)
    proc, base = serve(d)
    wait_healthy(base)
    time.sleep(2)
    print(f"idle RSS after start: {rss_mb(proc.pid):.1f} MB")
    out = subprocess.run([EXAMPLE("loadgen"), base, token, str(a.seconds), str(a.threads), "500", "0.3"],
                         check=True, capture_output=True, text=True).stdout
    print("loadgen:", out.strip())
    print(f"RSS after load: {rss_mb(proc.pid):.1f} MB")
    proc.terminate(); proc.wait()
    shutil.rmtree(d)


def loadgen_rate(base, token, seconds, threads):
    out = subprocess.run([EXAMPLE("loadgen"), base, token, str(seconds), str(threads), "500", "0.3"],
                         check=True, capture_output=True, text=True).stdout
    return float(out.split()[0]), out.strip()


def stored_events(data_dir):
    out = subprocess.run([TALLY, "sql", "SELECT count(*) FROM events", "--format", "csv", "--data-dir", data_dir],
                         check=True, capture_output=True, text=True).stdout
    return int(out.split()[-1])


def end_check(data_dir, line):
    """The loadgen checked the answers; this checks the file: one row per
    unique event sent."""
    unique = int(re.search(r"sent (\d+) unique", line).group(1))
    stored = stored_events(data_dir)
    if stored != unique:
        raise SystemExit(f"end check FAILED: {stored} events stored, {unique} unique sent")
    return stored


def alternate_ingest(a, setups, while_up=None, after_stop=None):
    """The ingest load (`a.threads` senders, 500 a request, 30 % copies) on
    a fresh data dir per case, the cases alternating run after run so that a
    busy spell on this shared machine hits each alike. `setups` maps each
    case to what prepares its dir before the server starts; `while_up(case,
    d)` runs after the load with the server up, `after_stop(case, d, line)`
    once it has stopped. Prints the median events/s of each case beside the
    first's."""
    rates = {case: [] for case in setups}
    for run in range(a.runs):
        for case, setup in setups.items():
            d = tempfile.mkdtemp()
            token = add_site(d)
            setup(d)
            proc, base = serve(d)
            wait_healthy(base)
            time.sleep(1)
            rate, line = loadgen_rate(base, token, a.seconds, a.threads)
            rates[case].append(rate)
            print(f"run {run + 1} {case:13s} {line.splitlines()[0]}", flush=True)
            if while_up:
                while_up(case, d)
            proc.terminate(); proc.wait()
            if after_stop:
                after_stop(case, d, line)
            shutil.rmtree(d)
    medians = {case: statistics.median(r) for case, r in rates.items()}
    first = next(iter(medians.values()))
    print("median events/s: " + "; ".join(f"{case} {m:,.0f} ({100 * (m - first) / first:+.1f} %)"
                                          for case, m in medians.items()))


def bench_keys(a):
    """Ingest without a secondary key and with `order.completed=order_id`
    (a quarter of the loadgen's events carry it); after each run the stored
    rows are checked and a restart rebuilds the index from the file and logs
    its size, so bytes a key are measured, not computed."""
    def declare_key(d):
        subprocess.run([TALLY, "site", "set", "shop", "--key", "order.completed=order_id", "--data-dir", d],
                       check=True, capture_output=True)

    def index_size(case, d, line):
        stored = end_check(d, line)
        proc, base = serve(d)
        wait_healthy(base)
        proc.terminate(); _, err = proc.communicate()
        rebuilt = next((l for l in err.decode().splitlines() if "dedup index rebuilt" in l), "")
        fields = dict(re.findall(r"(\w+)=\"?([\d.]+)", rebuilt))
        keys, per_key = int(fields.get("keys", 0)), float(fields.get("bytes_per_key", 0))
        print(f"  {stored:,} stored; index after restart: {keys:,} keys, {fields.get('index_mb')} MB, "
              f"{per_key} bytes a key, {per_key * keys / stored:.1f} bytes an event")

    alternate_ingest(a, {"no key": lambda d: None, "secondary key": declare_key}, after_stop=index_size)


def write_backfill(path, lines, stored_share, seed=7):
    """An NDJSON backfill of `lines` unique events over the last 90 days, in
    the order a shop's export has them, and beside it (`path + '.stored'`)
    a random `stored_share` of the same lines: what the store already holds."""
    import random
    rnd = random.Random(seed)
    now = time.time()
    names = ["order.completed", "page.view", "signup", "cart.add"]
    with open(path, "w") as all_, open(path + ".stored", "w") as part:
        for i in range(lines):
            at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now - 90 * 86400 + i * 90 * 86400 / lines))
            line = json.dumps({"event_id": f"bf_{i}", "event_name": names[i % 4], "occurred_at": at,
                               "session_id": f"s_{i // 7}", "url": f"https://shop.example.com/p/{i % 1000}",
                               "properties": {"order_id": str(i), "total": i % 500 + 0.99}}) + "\n"
            all_.write(line)
            if rnd.random() < stored_share:
                part.write(line)


def timed_import(data_dir, path):
    """Seconds, the import's JSON answer, and its peak RSS in MB."""
    t0 = time.perf_counter()
    done = subprocess.run(["/usr/bin/time", "-f", "%M", TALLY, "import", path, "--site", "shop", "--json",
                           "--data-dir", data_dir], check=True, capture_output=True, text=True)
    secs = time.perf_counter() - t0
    return secs, json.loads(done.stdout), int(done.stderr.split()[-1]) / 1024


def age_store(data_dir, days=3):
    """Moves every stored event's arrival `days` back, past the 48 h window:
    a backfill then meets it as history (a store lookup), not as a live
    key in the writer's index."""
    subprocess.run([TALLY, "sql", "--write", f"UPDATE events SET received_at = received_at - INTERVAL {days} DAY",
                    "--data-dir", data_dir], check=True, capture_output=True)


def bench_import(a):
    """`tally import` with the server stopped: a file whose lines are 30 %
    already stored (imported first, not timed), then the same file again
    (all stored). Before each timed run the stored events are aged past the
    window, so every stored key is found by the history lookup. Checks the
    counts of both runs; peak RSS of the import processes."""
    d = tempfile.mkdtemp()
    path = a.backfill or os.path.join(d, "backfill.ndjson")
    if not (a.backfill and os.path.exists(path) and os.path.exists(path + ".stored")):
        write_backfill(path, a.lines, 0.3)
    add_site(d)
    _, pre, _ = timed_import(d, path + ".stored")
    for run in ("first", "second"):
        age_store(d)
        secs, got, rss = timed_import(d, path)
        want_new = a.lines - pre["accepted"] if run == "first" else 0
        ok = got["accepted"] == want_new and got["accepted"] + got["deduplicated"] == a.lines
        print(f"{run} run: {a.lines:,} lines in {secs:.1f} s = {a.lines / secs:,.0f} lines/s; "
              f"accepted {got['accepted']:,}, deduplicated {got['deduplicated']:,} ({'ok' if ok else 'WRONG'}); "
              f"peak RSS {rss:.0f} MB")
        if not ok:
            raise SystemExit(f"import counts wrong: {got}, expected {want_new} new")
    print(f"events stored: {stored_events(d):,}")
    shutil.rmtree(d)


def send_all(base, token, events, batch=50):
    """Sends `events` in sequential batches on one keep-alive connection;
    returns (seconds, accepted, deduplicated)."""
    import http.client
    host = base.removeprefix("http://")
    conn = http.client.HTTPConnection(host)
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    acc = dd = 0
    t0 = time.perf_counter()
    for i in range(0, len(events), batch):
        conn.request("POST", "/v1/events", json.dumps({"events": events[i:i + batch]}), headers)
        res = conn.getresponse(); body = json.loads(res.read())
        if res.status != 200:
            raise SystemExit(f"status {res.status}: {body}")
        acc += body["accepted"]; dd += body["deduplicated"]
    return time.perf_counter() - t0, acc, dd


def bench_resend(a):
    """A sender re-sends every event it sent (after a deploy or a crash):
    duplicates/s of the same copies with the server still up, then again
    right after a restart (the index rebuilt from the file)."""
    d = tempfile.mkdtemp()
    token = add_site(d)
    events = [{"event_id": f"r_{i}", "event_name": ["order.completed", "signup", "cart.add"][i % 3],
               "source": "server", "properties": {"order_id": str(i), "total": i % 500 + 0.99, "sku": f"sku-{i % 97}"}}
              for i in range(a.events)]
    proc, base = serve(d)
    wait_healthy(base)
    secs, acc, _ = send_all(base, token, events)
    print(f"stored {acc:,} events in {secs:.1f} s ({acc / secs:,.0f}/s, sequential batches of 50)")
    rates = {}
    for case in ("before restart", "after restart"):
        if case == "after restart":
            proc.terminate(); proc.wait()
            proc, base = serve(d)
            wait_healthy(base)
        secs, acc, dd = send_all(base, token, events)
        if acc != 0 or dd != a.events:
            raise SystemExit(f"{case}: accepted {acc}, deduplicated {dd}: expected every copy a duplicate")
        rates[case] = dd / secs
        print(f"{case:15s} {dd:,} duplicates in {secs:.1f} s = {dd / secs:,.0f} duplicates/s")
    print(f"after/before: {rates['after restart'] / rates['before restart']:.2f}")
    proc.terminate(); proc.wait()
    shutil.rmtree(d)


def wrk_pixel(base, site_key, seconds, connections):
    """wrk against /v1/pixel with scripts/pixel.lua; (req/s, the WRK line)."""
    lua = os.path.join(os.path.dirname(os.path.abspath(__file__)), "pixel.lua")
    out = subprocess.run(["wrk", "-t", "2", "-c", str(connections), "-d", f"{seconds}s", "--latency", "-s", lua,
                          base + "/v1/pixel"], check=True, capture_output=True, text=True,
                         env={**os.environ, "SITE_KEY": site_key}).stdout
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    line = next(l for l in out.splitlines() if l.startswith("WRK "))
    fields = dict(kv.split("=") for kv in line.split()[1:])
    if int(fields["non2xx"]) or int(fields["errors"]):
        raise SystemExit(f"wrk saw failures: {line}")
    return rate, fields


def bench_pixel(a):
    """/v1/pixel under wrk (256 connections, one new page view a request)
    beside the bare actix handler of examples/ceiling.rs, alternating in
    one run; each Tally run on a fresh data dir, its peak RSS sampled, its
    stored rows checked against the answered requests."""
    rates = {"ceiling": [], "tally": []}
    for run in range(a.runs):
        port = free_port()
        ceiling = subprocess.Popen([EXAMPLE("ceiling"), f"127.0.0.1:{port}"])
        base = f"http://127.0.0.1:{port}"
        time.sleep(0.5)
        rate, f = wrk_pixel(base, "pk_ceiling", a.seconds, a.connections)
        rates["ceiling"].append(rate)
        print(f"run {run + 1} ceiling {rate:9,.0f} req/s  p50 {f['p50_ms']} ms  p99 {f['p99_ms']} ms", flush=True)
        ceiling.terminate(); ceiling.wait()

        d, site_key, proc, base = pixel_server()
        with PeakRss(proc.pid) as peak:
            rate, f = wrk_pixel(base, site_key, a.seconds, a.connections)
            time.sleep(10)
            after = rss_split(proc.pid)
        rates["tally"].append(rate)
        proc.terminate(); proc.wait()
        stored = stored_events(d)
        answered = int(f["requests"])
        # wrk stops with up to one request a connection unanswered; the
        # server may have stored those.
        if not answered <= stored <= answered + a.connections:
            raise SystemExit(f"end check FAILED: {stored} stored, {answered} answered")
        print(f"run {run + 1} tally   {rate:9,.0f} req/s  p50 {f['p50_ms']} ms  p99 {f['p99_ms']} ms  "
              f"= {rate / rates['ceiling'][-1]:.0%} of the ceiling; {stored:,} stored for {answered:,} answered; "
              f"peak RSS {peak.mb:.0f} MB, {after} 10 s after", flush=True)
        shutil.rmtree(d)
    c, t = statistics.median(rates["ceiling"]), statistics.median(rates["tally"])
    print(f"median req/s: ceiling {c:,.0f}; tally {t:,.0f} = {t / c:.0%}")


def bench_fixedrate(a):
    """/v1/pixel at a constant rate (examples/fixedrate.rs: each request due
    at start + i / rate, latency from when it was due, so stalls are not
    hidden), a fresh server per run; peak RSS sampled; stored rows checked
    against the answered requests."""
    results = []
    for run in range(a.runs):
        d, site_key, proc, base = pixel_server()
        with PeakRss(proc.pid) as peak:
            out = subprocess.run([EXAMPLE("fixedrate"), base.removeprefix("http://"), site_key, str(a.rate),
                                  str(a.seconds), str(a.connections)], check=True, capture_output=True,
                                 text=True).stdout.strip()
            time.sleep(10)
            after = rss_split(proc.pid)
        proc.terminate(); proc.wait()
        f = dict(zip(out.split()[0::2], out.split()[1::2]))
        stored = stored_events(d)
        if stored != int(f["ok"]):
            raise SystemExit(f"end check FAILED: {stored} stored, {f['ok']} answered 2xx")
        print(f"run {run + 1} {out}; {stored:,} stored; peak RSS {peak.mb:.0f} MB, {after} 10 s after", flush=True)
        m = re.search(r"p50 ([\d.]+) ms p90 ([\d.]+) ms p99 ([\d.]+) ms p99.9 ([\d.]+) ms", out)
        results.append(tuple(float(x) for x in m.groups()))
        shutil.rmtree(d)
    med = [statistics.median(r[i] for r in results) for i in range(4)]
    print(f"{a.rate:,} req/s for {a.seconds} s, {a.connections} connections, {a.runs} runs, medians: "
          f"p50 {med[0]:.2f} ms  p90 {med[1]:.2f} ms  p99 {med[2]:.2f} ms  p99.9 {med[3]:.2f} ms")


def bench_attack(a):
    """The ingest load with and without an attacker who knows the public
    site key: 4 connections sending pixel copies of one order, each with a
    new 12 KB property (the hardening review's finding 1), alternating runs."""
    import http.client, random

    def attacker(host, site_key, stop, sent):
        conn = http.client.HTTPConnection(host)
        while not stop.is_set():
            body = json.dumps({"site": site_key, "event_id": "ord_attacked", "event_name": "order.completed",
                               "properties": {f"k{random.getrandbits(48)}": "x" * 12_000}})
            conn.request("POST", "/v1/pixel", body, {"Content-Type": "text/plain", "Origin": "https://shop.example.com"})
            res = conn.getresponse(); res.read()
            sent[0] += 1

    rates = {"no attack": [], "under attack": []}
    for run in range(a.runs):
        for case in rates:
            d = tempfile.mkdtemp()
            out = subprocess.run([TALLY, "site", "add", "shop", "--origin", "https://shop.example.com", "--json",
                                  "--data-dir", d], check=True, capture_output=True, text=True).stdout
            site = json.loads(out)
            proc, base = serve(d)
            wait_healthy(base)
            time.sleep(1)
            stop, sent, threads = threading.Event(), [0], []
            if case == "under attack":
                threads = [threading.Thread(target=attacker, args=(base.removeprefix("http://"), site["site_key"], stop, sent))
                           for _ in range(4)]
                for t in threads:
                    t.start()
                time.sleep(2)
            rate, line = loadgen_rate(base, site["api_token"], a.seconds, a.threads)
            stop.set()
            for t in threads:
                t.join()
            rates[case].append(rate)
            print(f"run {run + 1} {case:13s} {line.splitlines()[0]}" + (f"; {sent[0]:,} attack copies" if threads else ""),
                  flush=True)
            proc.terminate(); proc.wait()
            end_check(d, line) if case == "no attack" else None
            shutil.rmtree(d)
    for case, r in rates.items():
        print(f"median events/s {case}: {statistics.median(r):,.0f}")


def bench_forward(a):
    """Ingest throughput without destinations, and with one webhook whose
    port refuses connections."""
    down = f"http://127.0.0.1:{free_port()}/hook"  # nothing listens there

    def add_webhook(d):
        subprocess.run([TALLY, "forward", "add", "shop", "--webhook", down, "--data-dir", d],
                       check=True, capture_output=True)

    def backlog(case, d):
        if case == "webhook down":
            listed = json.loads(subprocess.run([TALLY, "forward", "list", "--json", "--data-dir", d],
                                               check=True, capture_output=True, text=True).stdout)[0]
            print(f"  destination: pending {listed['pending']}, delivered {listed['delivered']}, "
                  f"parked {listed['parked']}")

    alternate_ingest(a, {"none": lambda d: None, "webhook down": add_webhook}, while_up=backlog,
                     after_stop=lambda case, d, line: end_check(d, line))


def bench_restart(a):
    d = tempfile.mkdtemp()
    # All keys inside the 48 h window: spread over 1.5 days.
    subprocess.run([EXAMPLE("seed"), d, str(a.keys), "1.5"], check=True)
    proc, base = serve(d)
    t0 = time.time()
    secs = wait_healthy(base)
    print(f"healthy {secs:.2f} s after start with {a.keys} keys in the window; RSS {rss_mb(proc.pid):.0f} MB")
    proc.terminate(); _, err = proc.communicate()
    for line in err.decode().splitlines():
        if "dedup index rebuilt" in line:
            print("log:", line.strip())
    shutil.rmtree(d)


def bench_dashboard(a):
    """Seeds a store (or, with --keep DIR, reuses the one seeded there
    earlier and keeps it), waits for the rollups, times each /api/ query."""
    d = a.keep or tempfile.mkdtemp()
    if not os.path.exists(os.path.join(d, "tally.duckdb")):
        os.makedirs(d, exist_ok=True)
        subprocess.run([EXAMPLE("seed"), d, str(a.events), "30"], check=True)
    subprocess.run([TALLY, "admin", "set-password", "--data-dir", d], input="bench-password\n", text=True, check=True)
    proc, base = serve(d)
    wait_healthy(base)
    jar = http.cookiejar.CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    req = urllib.request.Request(base + "/api/login", data=b'{"password":"bench-password"}',
                                 headers={"Content-Type": "application/json"})
    opener.open(req).read()
    # The rollups are counted by the upkeep task after a start; wait until
    # they reach where the 48-hour window allows (store::rollup::target).
    hour = 3_600_000_000
    goal = (int(time.time() * 1e6) - 49 * hour) // hour * hour
    t0 = time.perf_counter()
    while True:
        out = subprocess.run([TALLY, "sql", "--data-dir", d, "--format", "csv",
                              "SELECT coalesce(max(epoch_us(horizon)), 0) FROM rollup_state WHERE site = 'shop'"],
                             check=True, capture_output=True, text=True).stdout.split()
        if int(out[-1]) >= goal:
            break
        time.sleep(1)
    print(f"rollups ready {time.perf_counter() - t0:.0f} s after the start")
    paths = ["/api/summary?site=shop&range=30d", "/api/series?site=shop&range=30d",
             "/api/top?site=shop&range=30d&kind=events", "/api/top?site=shop&range=30d&kind=pages",
             "/api/top?site=shop&range=30d&kind=referrers", "/api/conversions?site=shop&range=30d",
             "/api/revenue?site=shop&range=30d",
             "/api/funnel?site=shop&range=30d&step=page.view&step=cart.add&step=order.completed",
             "/api/summary?site=shop&range=30d&page=https://shop.example.com/pricing",
             "/api/summary?site=shop&range=24h", "/api/recent?site=shop",
             "/api/near-misses?site=shop", "/api/events/lookup?site=shop&event_id=ord_42",
             "/api/forwards?site=shop"]
    for p in paths:
        opener.open(base + p).read()  # warm
        times = []
        for _ in range(a.runs):
            t0 = time.perf_counter(); opener.open(base + p).read(); times.append((time.perf_counter() - t0) * 1e3)
        print(f"{p:48s} median {statistics.median(times):7.1f} ms   max {max(times):7.1f} ms   ({a.runs} runs)")
    proc.terminate(); proc.wait()
    if not a.keep:
        shutil.rmtree(d)


def bench_dropin(a):
    """The Segment drop-in beside Tally's own endpoint under the same load:
    batches of the SDKs' size (100), 30 % re-sent copies, a fresh server
    per run, the modes interleaved so drift on a shared machine hits each
    alike; medians over the runs."""
    modes = ["events", "segment-gzip", "segment"]
    results = {m: [] for m in modes}
    for run in range(a.runs):
        for mode in (modes if run % 2 == 0 else modes[::-1]):
            d = tempfile.mkdtemp()
            token = add_site(d)
            proc, base = serve(d)
            wait_healthy(base)
            time.sleep(1)
            out = subprocess.run([EXAMPLE("loadgen"), base, token, str(a.seconds), str(a.threads), str(a.batch),
                                  "0.3", mode], check=True, capture_output=True, text=True).stdout.strip()
            print(f"run {run + 1} {mode:12s} {out}", flush=True)
            m = re.match(r"(\d+) events/s.*p50 ([\d.]+) ms, p99 ([\d.]+) ms", out)
            results[mode].append(tuple(float(x) for x in m.groups()))
            proc.terminate(); proc.wait()
            shutil.rmtree(d)
    print(f"\n{a.threads} senders, {a.batch} events a request, 30 % duplicates, {a.seconds} s, {a.runs} runs each:")
    for mode in modes:
        eps = [r[0] for r in results[mode]]
        p50 = statistics.median(r[1] for r in results[mode])
        p99 = statistics.median(r[2] for r in results[mode])
        print(f"{mode:12s} median {statistics.median(eps):9,.0f} events/s  (min {min(eps):,.0f}, max {max(eps):,.0f})"
              f"  p50 {p50:.1f} ms  p99 {p99:.1f} ms")


def bench_deliver(a):
    """Orders sent to a server with one webhook destination, a local
    receiver answering 200 to each; the time until every one arrived."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    got, lock = [0], threading.Lock()

    class Hook(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self):
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            with lock:
                got[0] += 1
            self.send_response(200); self.send_header("Content-Length", "0"); self.end_headers()

        def log_message(self, *args):
            pass

    rates = []
    for run in range(a.runs):
        hook = ThreadingHTTPServer(("127.0.0.1", 0), Hook)
        threading.Thread(target=hook.serve_forever, daemon=True).start()
        got[0] = 0
        d = tempfile.mkdtemp()
        token = add_site(d)
        subprocess.run([TALLY, "forward", "add", "shop", "--webhook", f"http://127.0.0.1:{hook.server_port}/hook",
                        "--data-dir", d], check=True, capture_output=True)
        proc, base = serve(d)
        wait_healthy(base)
        t0 = time.perf_counter()
        for k in range(0, a.events, 500):
            events = [{"event_id": f"o{i}", "event_name": "order.completed", "properties": {"value": i}}
                      for i in range(k, min(a.events, k + 500))]
            urllib.request.urlopen(urllib.request.Request(
                base + "/v1/events", data=json.dumps({"events": events}).encode(),
                headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"})).read()
        while got[0] < a.events and time.perf_counter() - t0 < 600:
            time.sleep(0.05)
        secs = time.perf_counter() - t0
        proc.terminate(); proc.wait(); hook.shutdown(); shutil.rmtree(d)
        if got[0] != a.events:
            raise SystemExit(f"end check FAILED: {got[0]} of {a.events} delivered")
        rates.append(a.events / secs)
        print(f"run {run + 1}: {a.events:,} delivered in {secs:.1f} s = {rates[-1]:,.0f}/s", flush=True)
    print(f"median {statistics.median(rates):,.0f} deliveries/s over {a.runs} runs")


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    i = sub.add_parser("ingest"); i.add_argument("--seconds", type=int, default=20); i.add_argument("--threads", type=int, default=4)
    r = sub.add_parser("restart"); r.add_argument("--keys", type=int, default=10_000_000)
    f = sub.add_parser("forward"); f.add_argument("--seconds", type=int, default=15); f.add_argument("--threads", type=int, default=4); f.add_argument("--runs", type=int, default=3)
    dsh = sub.add_parser("dashboard"); dsh.add_argument("--events", type=int, default=10_000_000); dsh.add_argument("--runs", type=int, default=15)
    dsh.add_argument("--keep", metavar="DIR", help="seed into DIR once and keep it; later runs reuse it")
    im = sub.add_parser("import"); im.add_argument("--lines", type=int, default=1_000_000)
    im.add_argument("--backfill", metavar="PATH", help="write the backfill to PATH once and reuse it (same --lines)")
    rs = sub.add_parser("resend"); rs.add_argument("--events", type=int, default=200_000)
    px = sub.add_parser("pixel"); px.add_argument("--seconds", type=int, default=15); px.add_argument("--runs", type=int, default=5)
    px.add_argument("--connections", type=int, default=256)
    fr = sub.add_parser("fixedrate"); fr.add_argument("--rate", type=int, default=20_000)
    fr.add_argument("--seconds", type=int, default=30); fr.add_argument("--runs", type=int, default=5)
    fr.add_argument("--connections", type=int, default=256)
    at = sub.add_parser("attack"); at.add_argument("--seconds", type=int, default=15); at.add_argument("--threads", type=int, default=4); at.add_argument("--runs", type=int, default=3)
    k = sub.add_parser("keys"); k.add_argument("--seconds", type=int, default=15); k.add_argument("--threads", type=int, default=4); k.add_argument("--runs", type=int, default=3)
    dr = sub.add_parser("dropin"); dr.add_argument("--seconds", type=int, default=15); dr.add_argument("--threads", type=int, default=4)
    dr.add_argument("--batch", type=int, default=100); dr.add_argument("--runs", type=int, default=3)
    dv = sub.add_parser("deliver"); dv.add_argument("--events", type=int, default=3000); dv.add_argument("--runs", type=int, default=3)
    a = p.parse_args()
    {"deliver": bench_deliver, "ingest": bench_ingest, "restart": bench_restart, "dashboard": bench_dashboard, "dropin": bench_dropin, "forward": bench_forward, "keys": bench_keys, "import": bench_import, "resend": bench_resend, "pixel": bench_pixel, "attack": bench_attack, "fixedrate": bench_fixedrate}[a.cmd](a)


if __name__ == "__main__":
    main()
