#!/usr/bin/env python3
"""Crash battery: SIGKILL `tally serve` at random moments under load, and
check after every restart that each acknowledged event is stored exactly
once and that re-sent copies are still duplicates.

    scripts/crash.py --rounds 200            # the full battery (BENCHMARKS.md)
    scripts/crash.py --rounds 3 --quick      # the short version the test suite runs

Each round starts the server, runs 4 senders posting batches of 200 events
to /v1/events (30 % of them re-sent copies of events acknowledged before),
asks for CHECKPOINTs at random moments (so kills also land inside
checkpoints), kills the server with SIGKILL after a random 0.2-3 s, then
restarts it and checks the store. Exits 1 on the first lost, duplicated or
un-deduplicated event; prints rounds, acked, lost and duplicates.

Builds nothing: `cargo build --release` first (binary from --binary, else
$CARGO_TARGET_DIR/release/tally, default ~/.cache/tally/target).
"""
import argparse, json, os, random, signal, socket, subprocess, sys, tempfile, threading, time
import urllib.error, urllib.request

TARGET = os.environ.get("CARGO_TARGET_DIR", os.path.expanduser("~/.cache/tally/target"))
ERRORS = []  # what the sender threads saw go wrong


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def run(tally, data_dir, *args):
    out = subprocess.run([tally, *args, "--data-dir", data_dir], capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"tally {' '.join(args)} failed: {out.stderr}")
    return out.stdout


def wait_healthy(base, timeout=60):
    t0 = time.time()
    while time.time() - t0 < timeout:
        try:
            if urllib.request.urlopen(base + "/healthz", timeout=1).status == 200:
                return
        except Exception:
            time.sleep(0.02)
    raise SystemExit(f"{base} not healthy after {timeout} s")


def post(base, token, events, timeout=10):
    body = json.dumps({"events": events}).encode()
    req = urllib.request.Request(base + "/v1/events", data=body, method="POST",
                                 headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as res:
        return json.loads(res.read())


def sender(base, token, prefix, acked, lock, stop, rng):
    n = 0
    while not stop.is_set():
        batch, fresh = [], []
        for _ in range(200):
            with lock:
                old = rng.choice(acked) if acked and rng.random() < 0.3 else None
            if old is None:
                old = f"{prefix}_{n}"
                fresh.append(old)
                n += 1
            batch.append({"event_id": old, "event_name": "order.completed"})
        try:
            answer = post(base, token, batch)
        except Exception:
            return  # the server died mid-request: this batch was never acknowledged
        with lock:
            if answer["accepted"] + answer["deduplicated"] != len(batch) or answer["accepted"] != len(fresh):
                ERRORS.append(f"answer does not add up for {len(fresh)} new of {len(batch)}: {answer}")
            acked.extend(fresh)


def checkpointer(tally, data_dir, stop, rng):
    while not stop.is_set():
        time.sleep(rng.uniform(0.1, 1.0))
        subprocess.run([tally, "sql", "CHECKPOINT", "--write", "--data-dir", data_dir],
                       capture_output=True, timeout=30)


def check(tally, data_dir, acked_file):
    """Lost = acknowledged ids missing from the store; duplicated = ids stored twice."""
    q = ("SELECT (SELECT count(*) FROM read_csv('{f}', header=false, columns={{'id': 'VARCHAR'}}) a "
         "ANTI JOIN events e ON e.event_id = a.id) AS lost, "
         "(SELECT count(*) - count(DISTINCT event_id) FROM events) AS duplicated, "
         "(SELECT count(*) FROM events) AS stored").format(f=acked_file)
    row = json.loads(run(tally, data_dir, "sql", q, "--write", "--format", "json"))[0]
    return row["lost"], row["duplicated"], row["stored"]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--rounds", type=int, default=200)
    p.add_argument("--binary", default=os.path.join(TARGET, "release", "tally"))
    p.add_argument("--seed", type=int, default=int(time.time()))
    p.add_argument("--quick", action="store_true", help="shorter rounds (the test suite's version)")
    a = p.parse_args()
    rng = random.Random(a.seed)
    data_dir = tempfile.mkdtemp(prefix="tally-crash-")
    token = json.loads(run(a.binary, data_dir, "site", "add", "shop", "--origin", "https://shop.example.com", "--json"))["api_token"]
    acked, lock = [], threading.Lock()
    acked_file = os.path.join(data_dir, "acked.csv")
    written = 0
    total_lost = total_dup = 0
    for r in range(a.rounds):
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        proc = subprocess.Popen([a.binary, "serve", "--listen", f"127.0.0.1:{port}", "--data-dir", data_dir],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                env={**os.environ, "RUST_LOG": "error"})
        wait_healthy(base)
        # After a restart, copies of acknowledged events are still duplicates.
        if acked:
            sample = rng.sample(acked, min(200, len(acked)))
            again = post(base, token, [{"event_id": i, "event_name": "order.completed"} for i in sample])
            if again["accepted"] != 0:
                print(f"round {r}: {again['accepted']} re-sent copies were counted as new", file=sys.stderr)
                sys.exit(1)
        stop = threading.Event()
        threads = [threading.Thread(target=sender, args=(base, token, f"r{r}s{s}", acked, lock, stop, random.Random(rng.random())))
                   for s in range(4)]
        threads.append(threading.Thread(target=checkpointer, args=(a.binary, data_dir, stop, random.Random(rng.random()))))
        for t in threads:
            t.start()
        time.sleep(rng.uniform(0.2, 1.0 if a.quick else 3.0))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        stop.set()
        for t in threads:
            t.join()
        if ERRORS:
            print(f"round {r + 1}: {ERRORS[0]}", file=sys.stderr)
            sys.exit(1)
        with open(acked_file, "a") as f:
            f.writelines(i + "\n" for i in acked[written:])
        written = len(acked)
        lost, duplicated, stored = check(a.binary, data_dir, acked_file)
        total_lost += lost
        total_dup += duplicated
        print(f"round {r + 1}/{a.rounds}: acked {len(acked)}, stored {stored}, lost {lost}, duplicates {duplicated}", flush=True)
        if lost or duplicated:
            sys.exit(1)
    print(json.dumps({"rounds": a.rounds, "acked": len(acked), "lost": total_lost, "duplicates": total_dup, "seed": a.seed}))


if __name__ == "__main__":
    main()
