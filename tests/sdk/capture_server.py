#!/usr/bin/env python3
"""Tiny request-capturing HTTP server for checking what the SDK drivers send.

Standard library only.  Logs one JSON object per request (to --log, default
stderr): method, path, query, headers, raw body length, the body text
(gunzipped if Content-Encoding: gzip) and the decoded body (JSON parsed;
form-urlencoded/multipart fields parsed, JSON fields inside forms parsed too).

Responses: --script is a JSON list of response specs consumed one per request,
after which every request gets the automatic answer:
  * path ending in /events (Meta CAPI) -> 200 {"events_received": N, "messages": [], "fbtrace_id": "..."}
  * anything else (Segment/Rudder)     -> 200 {"success": true}
A spec is {"status": 503, "headers": {"Retry-After": "1"}, "body": "..."}
(body may be a string or any JSON value; omitted -> the automatic body), or
{"drop": true} to close the connection without answering.

  python3 capture_server.py --port 0 --log /tmp/cap.jsonl \
      --script '[{"status": 503, "headers": {"Retry-After": "1"}, "body": ""}]'
prints "PORT <n>" on stdout once listening.
"""
import argparse
import email.parser
import email.policy
import gzip
import json
import sys
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, urlsplit


def try_json(text):
    try:
        return json.loads(text)
    except (ValueError, TypeError):
        return text


def gunzip(headers, raw):
    if "gzip" in (headers.get("Content-Encoding") or "").lower():
        try:
            return gzip.decompress(raw)
        except OSError as e:
            return b"bad gzip: %s" % str(e).encode()
    return raw


def decode_body(headers, raw):
    ctype = (headers.get("Content-Type") or "").lower()
    text = raw.decode("utf-8", "replace")
    if ctype.startswith("application/x-www-form-urlencoded") and not text.lstrip().startswith("{"):
        return {"_form": {k: try_json(v) for k, v in parse_qsl(text, keep_blank_values=True)}}
    if ctype.startswith("multipart/form-data"):
        msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
            b"Content-Type: " + headers["Content-Type"].encode() + b"\r\n\r\n" + raw)
        return {"_multipart": {p.get_param("name", header="content-disposition"):
                               try_json(p.get_content()) for p in msg.iter_parts()}}
    return try_json(text)


def auto_body(path, decoded):
    if path.rstrip("/").endswith("/events"):
        data = decoded.get("_form", decoded.get("_multipart", decoded)) if isinstance(decoded, dict) else {}
        events = data.get("data", []) if isinstance(data, dict) else []
        return {"events_received": len(events) if isinstance(events, list) else 0,
                "messages": [], "fbtrace_id": "A" + uuid.uuid4().hex[:20]}
    return {"success": True}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):
        pass

    def handle_any(self):
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        if not length and "chunked" in (self.headers.get("Transfer-Encoding") or ""):
            raw = b""
            while True:
                size = int(self.rfile.readline().strip() or b"0", 16)
                if size == 0:
                    self.rfile.readline()
                    break
                raw += self.rfile.read(size)
                self.rfile.readline()
        url = urlsplit(self.path)
        plain = gunzip(self.headers, raw)
        decoded = decode_body(self.headers, plain)
        srv = self.server
        with srv.lock:
            srv.count += 1
            n = srv.count
            spec = srv.script.pop(0) if srv.script else {}
        entry = {"n": n, "method": self.command, "path": url.path,
                 "query": dict(parse_qsl(url.query, keep_blank_values=True)),
                 "headers": dict(self.headers.items()), "raw_len": len(raw),
                 "text": plain.decode("utf-8", "replace"), "body": decoded}
        if spec.get("drop"):
            entry["answered"] = "dropped"
        else:
            status = spec.get("status", 200)
            body = spec["body"] if "body" in spec else auto_body(url.path, decoded)
            out = body if isinstance(body, str) else json.dumps(body)
            entry["answered"] = {"status": status, "body": out}
        with srv.lock:
            srv.log.write(json.dumps(entry) + "\n")
            srv.log.flush()
        if spec.get("drop"):
            self.close_connection = True
            return
        data = out.encode()
        self.send_response(status)
        self.send_header("Content-Type", spec.get("content_type", "application/json"))
        for k, v in spec.get("headers", {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_POST = do_GET = do_PUT = do_DELETE = handle_any


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        if not isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            super().handle_error(request, client_address)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--log", default="-")
    ap.add_argument("--script", default="[]", help="JSON list of response specs")
    a = ap.parse_args()
    srv = Server(("127.0.0.1", a.port), Handler)
    srv.lock = threading.Lock()
    srv.count = 0
    srv.script = json.loads(a.script)
    srv.log = sys.stderr if a.log == "-" else open(a.log, "a")
    print("PORT %d" % srv.server_address[1], flush=True)
    try:
        srv.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
