//! A test-side HTTP/1.1 proxy in front of a real server, for failures no
//! real server would produce on cue: it forwards each request, records the
//! exchange, and answers what a [`Plan`] says — the server's answer, or
//! another one after the server stored the request (a 503 that makes a
//! sender retry what was in fact committed), or another one without
//! forwarding at all.
//!
//! ```ignore
//! let proxy = Proxy::start(&app.base, Plan::answer_503_after_forwarding("/v1/batch", 1));
//! // point the sender at proxy.base …
//! let exchanges = proxy.exchanges();
//! ```
//!
//! Plain `std` sockets and a thread per connection: requests are read whole
//! (Content-Length or chunked, `Expect: 100-continue` honoured), sent
//! upstream on a fresh connection with `Connection: close`, and relayed with
//! a Content-Length on the client's keep-alive connection. Bodies pass
//! byte for byte, so gzip stays gzip.

use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// One request as the client sent it.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    /// Path and query, as in the request line.
    pub target: String,
    pub headers: Vec<(String, String)>,
    /// As received: still gzip when the client gzipped it.
    pub body: Vec<u8>,
}

/// One answer: the server's, or the proxy's own.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// What the proxy does with one request.
#[derive(Debug, Clone)]
pub enum Action {
    /// Forward it and relay the server's answer.
    Forward,
    /// Forward it (the server stores it), then answer `Reply` instead.
    ForwardThenAnswer(Reply),
    /// Answer `Reply` without forwarding.
    Answer(Reply),
}

/// One request, what the server answered (if it was forwarded) and what
/// the client got.
#[derive(Debug, Clone)]
pub struct Exchange {
    pub request: Request,
    pub upstream: Option<Reply>,
    pub answered: u16,
}

/// Decides each request's [`Action`]; called in arrival order, under a lock.
pub struct Plan(Box<dyn FnMut(&Request) -> Action + Send>);

impl Plan {
    /// Any rule: `decide` sees each request in turn.
    pub fn new(decide: impl FnMut(&Request) -> Action + Send + 'static) -> Plan {
        Plan(Box::new(decide))
    }

    /// Forwards everything.
    pub fn forward() -> Plan {
        Plan::new(|_| Action::Forward)
    }

    /// The first `times` requests whose path starts with `path` reach the
    /// server, and their senders get `503` with `Retry-After: 1` instead of
    /// its answer; everything else is forwarded as is. A sender that
    /// retries then re-sends what the server already committed.
    pub fn answer_503_after_forwarding(path: &str, times: usize) -> Plan {
        let path = path.to_owned();
        let mut left = times;
        Plan::new(move |req| {
            if left > 0 && req.target.starts_with(&path) {
                left -= 1;
                Action::ForwardThenAnswer(Reply::unavailable())
            } else {
                Action::Forward
            }
        })
    }
}

impl Reply {
    /// `503` with `Retry-After: 1`, as a busy server answers. The JSON body
    /// reads as an error to every client: Segment-style `code` and
    /// `message`, and Meta's `error` object (facebook-business raises on
    /// an `error` that is not an object).
    pub fn unavailable() -> Reply {
        let message = "the test proxy answered 503 in the server's place";
        Reply {
            status: 503,
            headers: vec![
                ("Retry-After".into(), "1".into()),
                ("Content-Type".into(), "application/json".into()),
            ],
            body: serde_json::json!({
                "code": "unavailable",
                "message": message,
                "error": {"message": message, "type": "OAuthException", "code": 2,
                          "is_transient": true, "fbtrace_id": "test-proxy"},
            })
            .to_string()
            .into_bytes(),
        }
    }

    /// The body as JSON, if it is.
    pub fn json(&self) -> Option<Value> {
        serde_json::from_slice(&self.body).ok()
    }
}

impl Request {
    /// The first header of that name (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        header(&self.headers, name)
    }

    /// The body as sent, gunzipped when it came with `Content-Encoding: gzip`.
    pub fn body_bytes(&self) -> Vec<u8> {
        if self
            .header("content-encoding")
            .is_some_and(|e| e.eq_ignore_ascii_case("gzip"))
        {
            let mut out = Vec::new();
            flate2::read::MultiGzDecoder::new(&self.body[..])
                .read_to_end(&mut out)
                .expect("a gzip body");
            out
        } else {
            self.body.clone()
        }
    }

    /// The (inflated) body as JSON, if it is.
    pub fn json(&self) -> Option<Value> {
        serde_json::from_slice(&self.body_bytes()).ok()
    }

    /// The path without the query.
    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or_default()
    }
}

/// A running proxy; stops when dropped.
pub struct Proxy {
    /// `http://127.0.0.1:PORT`, to give the sender instead of the server's.
    pub base: String,
    addr: SocketAddr,
    exchanges: Arc<Mutex<Vec<Exchange>>>,
    stop: Arc<AtomicBool>,
    acceptor: Option<JoinHandle<()>>,
}

struct Shared {
    upstream: String,
    plan: Mutex<Plan>,
    exchanges: Arc<Mutex<Vec<Exchange>>>,
}

impl Proxy {
    /// Listens on a free port and forwards to `upstream`
    /// (`http://HOST:PORT`), doing what `plan` says.
    pub fn start(upstream: &str, plan: Plan) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let exchanges = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let shared = Arc::new(Shared {
            upstream: upstream
                .trim_start_matches("http://")
                .trim_end_matches('/')
                .to_owned(),
            plan: Mutex::new(plan),
            exchanges: exchanges.clone(),
        });
        let acceptor = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                for conn in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(conn) = conn else { continue };
                    let shared = shared.clone();
                    // Detached: it ends when the client closes the
                    // connection or stays idle past the read timeout.
                    std::thread::spawn(move || serve(conn, &shared));
                }
            })
        };
        Proxy {
            base: format!("http://{addr}"),
            addr,
            exchanges,
            stop,
            acceptor: Some(acceptor),
        }
    }

    /// Every exchange so far, in the order the plan saw the requests.
    pub fn exchanges(&self) -> Vec<Exchange> {
        self.exchanges.lock().unwrap().clone()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the blocking accept so the loop sees the flag.
        let _ = TcpStream::connect(self.addr);
        if let Some(t) = self.acceptor.take() {
            let _ = t.join();
        }
    }
}

/// Serves one client connection, request after request (keep-alive).
fn serve(conn: TcpStream, shared: &Shared) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(30)));
    let Ok(mut writer) = conn.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(conn);
    loop {
        let Some((line, headers)) = read_head(&mut reader) else {
            return;
        };
        let mut parts = line.split_whitespace();
        let (Some(method), Some(target)) = (parts.next(), parts.next()) else {
            return;
        };
        if header(&headers, "expect").is_some_and(|v| v.eq_ignore_ascii_case("100-continue")) {
            let _ = writer.write_all(b"HTTP/1.1 100 Continue\r\n\r\n");
        }
        let Some(body) = read_body(&mut reader, &headers, false) else {
            return;
        };
        let close = header(&headers, "connection").is_some_and(|v| v.eq_ignore_ascii_case("close"));
        let request = Request {
            method: method.to_owned(),
            target: target.to_owned(),
            headers,
            body,
        };
        // Decided and recorded under one lock, so exchanges are in plan order.
        let (action, slot) = {
            let mut plan = shared.plan.lock().unwrap();
            let action = (plan.0)(&request);
            let mut exchanges = shared.exchanges.lock().unwrap();
            exchanges.push(Exchange {
                request: request.clone(),
                upstream: None,
                answered: 0,
            });
            (action, exchanges.len() - 1)
        };
        let (upstream, reply) = match action {
            Action::Forward => {
                let got = forward(&shared.upstream, &request);
                (Some(got.clone()), got)
            }
            Action::ForwardThenAnswer(reply) => (Some(forward(&shared.upstream, &request)), reply),
            Action::Answer(reply) => (None, reply),
        };
        {
            let mut exchanges = shared.exchanges.lock().unwrap();
            exchanges[slot].upstream = upstream;
            exchanges[slot].answered = reply.status;
        }
        if write_reply(&mut writer, &reply, request.method == "HEAD").is_err() || close {
            let _ = writer.shutdown(Shutdown::Both);
            return;
        }
    }
}

/// Sends `request` to the server on a new connection and reads its answer;
/// a server that cannot be reached answers 502.
fn forward(upstream: &str, request: &Request) -> Reply {
    let attempt = || -> std::io::Result<Reply> {
        let mut conn = TcpStream::connect(upstream)?;
        conn.set_read_timeout(Some(Duration::from_secs(60)))?;
        let mut head = format!("{} {} HTTP/1.1\r\n", request.method, request.target);
        for (k, v) in &request.headers {
            if !is_hop_by_hop(k) {
                head.push_str(&format!("{k}: {v}\r\n"));
            }
        }
        head.push_str(&format!(
            "Content-Length: {}\r\nConnection: close\r\n\r\n",
            request.body.len()
        ));
        conn.write_all(head.as_bytes())?;
        conn.write_all(&request.body)?;
        let mut reader = BufReader::new(conn);
        let (line, headers) = read_head(&mut reader)
            .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "no answer"))?;
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let bodyless = request.method == "HEAD" || status < 200 || status == 204 || status == 304;
        let body = if bodyless {
            Vec::new()
        } else {
            read_body(&mut reader, &headers, true)
                .ok_or_else(|| std::io::Error::other("a truncated answer"))?
        };
        Ok(Reply {
            status,
            headers,
            body,
        })
    };
    attempt().unwrap_or_else(|e| Reply {
        status: 502,
        headers: vec![("Content-Type".into(), "text/plain".into())],
        body: format!("test proxy: upstream failed: {e}").into_bytes(),
    })
}

fn write_reply(writer: &mut TcpStream, reply: &Reply, head_only: bool) -> std::io::Result<()> {
    let mut head = format!("HTTP/1.1 {} {}\r\n", reply.status, reason(reply.status));
    for (k, v) in &reply.headers {
        if !is_hop_by_hop(k) {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
    }
    if !(reply.status == 204 || reply.status == 304) {
        head.push_str(&format!("Content-Length: {}\r\n", reply.body.len()));
    }
    head.push_str("\r\n");
    writer.write_all(head.as_bytes())?;
    if !head_only {
        writer.write_all(&reply.body)?;
    }
    writer.flush()
}

/// The start line and headers, or `None` at the end of the connection.
fn read_head(reader: &mut impl BufRead) -> Option<(String, Vec<(String, String)>)> {
    let mut line = String::new();
    // Tolerates stray empty lines between keep-alive requests.
    while line.trim().is_empty() {
        line.clear();
        if reader.read_line(&mut line).ok()? == 0 {
            return None;
        }
    }
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).ok()? == 0 {
            return None;
        }
        let h = h.trim_end_matches(['\r', '\n']);
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.push((k.trim().to_owned(), v.trim().to_owned()));
        }
    }
    Some((line.trim_end().to_owned(), headers))
}

/// A message body: chunked, Content-Length, or (for an answer without
/// either, `until_eof`) everything until the server closes.
fn read_body(
    reader: &mut impl BufRead,
    headers: &[(String, String)],
    until_eof: bool,
) -> Option<Vec<u8>> {
    let mut body = Vec::new();
    if header(headers, "transfer-encoding")
        .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"))
    {
        loop {
            let mut size = String::new();
            reader.read_line(&mut size).ok()?;
            let size = usize::from_str_radix(size.trim().split(';').next()?.trim(), 16).ok()?;
            if size == 0 {
                // Trailers, up to the empty line.
                loop {
                    let mut t = String::new();
                    if reader.read_line(&mut t).ok()? == 0 || t.trim().is_empty() {
                        return Some(body);
                    }
                }
            }
            let start = body.len();
            body.resize(start + size, 0);
            reader.read_exact(&mut body[start..]).ok()?;
            let mut crlf = [0u8; 2];
            reader.read_exact(&mut crlf).ok()?;
        }
    }
    if let Some(len) = header(headers, "content-length").and_then(|v| v.parse::<usize>().ok()) {
        body.resize(len, 0);
        reader.read_exact(&mut body).ok()?;
        return Some(body);
    }
    if until_eof {
        reader.read_to_end(&mut body).ok()?;
    }
    Some(body)
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// Headers about one connection, not the message: the proxy sets its own.
fn is_hop_by_hop(name: &str) -> bool {
    [
        "connection",
        "keep-alive",
        "transfer-encoding",
        "content-length",
        "expect",
        "proxy-connection",
        "te",
        "trailer",
        "upgrade",
    ]
    .iter()
    .any(|h| name.eq_ignore_ascii_case(h))
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        204 => "No Content",
        304 => "Not Modified",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        413 => "Payload Too Large",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        _ => "Status",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::helpers::*;

    #[test]
    fn the_proxy_relays_forwards_and_answers_in_the_servers_place() {
        let app = spawn_app();
        let mut n = 0;
        let proxy = Proxy::start(
            &app.base,
            Plan::new(move |_| {
                n += 1;
                match n {
                    1 => Action::Forward,
                    2 => Action::Answer(Reply::unavailable()),
                    _ => Action::ForwardThenAnswer(Reply::unavailable()),
                }
            }),
        );
        let client = reqwest::blocking::Client::new();
        let send = |id: &str| {
            client
                .post(format!("{}/v1/events?src=proxy", proxy.base))
                .bearer_auth(&app.token)
                .body(serde_json::json!({"events": [event(id, "signup")]}).to_string())
                .send()
                .unwrap()
        };
        let relayed = send("p1");
        assert_eq!(relayed.status(), 200);
        assert_eq!(relayed.json::<Value>().unwrap()["accepted"], 1);
        let answered = send("p2");
        assert_eq!(answered.status(), 503);
        assert_eq!(answered.headers()["retry-after"], "1");
        assert_eq!(send("p3").status(), 503);
        let seen = proxy.exchanges();
        assert_eq!(seen.len(), 3);
        assert_eq!(seen[0].request.path(), "/v1/events");
        assert_eq!(
            seen[0].request.header("authorization"),
            Some(format!("Bearer {}", app.token).as_str())
        );
        assert!(seen[1].upstream.is_none(), "answered without forwarding");
        assert_eq!(
            seen[2].upstream.as_ref().unwrap().json().unwrap()["accepted"],
            1
        );
        // p1 and p3 reached the server; p2 did not.
        assert_eq!(app.count("SELECT count(*) FROM events"), 2);
        drop(proxy);
        let forwarding = Proxy::start(&app.base, Plan::forward());
        let health = reqwest::blocking::get(format!("{}/healthz", forwarding.base)).unwrap();
        assert_eq!(health.status(), 200);
    }
}
