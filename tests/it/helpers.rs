//! `spawn_app()` and friends: a real server on 127.0.0.1:0 over a temp dir,
//! with a manual clock so tests can cross a dedup window without sleeping.

use reqwest::blocking::{Client, Response};
use serde_json::{json, Value};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tally::app::App;
use tally::config::Config;
use tally::domain::ManualClock;
use tempfile::TempDir;

/// The allowed origin of the test site.
pub const ORIGIN: &str = "http://localhost:3000";

/// A running in-process server.
pub struct TestApp {
    pub base: String,
    pub app: Arc<App>,
    pub clock: Arc<ManualClock>,
    pub site_key: String,
    pub token: String,
    pub client: Client,
    pub dir: TempDir,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

pub fn spawn_app() -> TestApp {
    let dir = tempfile::tempdir().unwrap();
    spawn_app_in(dir)
}

pub fn spawn_app_in(dir: TempDir) -> TestApp {
    spawn_configured(dir, |_| {})
}

/// A server over `dir` whose clock starts at `micros` (a restart that keeps
/// a test's time).
pub fn spawn_app_at(dir: TempDir, micros: i64) -> TestApp {
    let clock = ManualClock::starting_now();
    clock.set_micros(micros);
    spawn_with_clock(dir, Arc::new(clock), |_| {})
}

/// A server whose configuration `configure` adjusts first.
pub fn spawn_configured(dir: TempDir, configure: impl FnOnce(&mut Config)) -> TestApp {
    spawn_with_clock(dir, Arc::new(ManualClock::starting_now()), configure)
}

fn spawn_with_clock(
    dir: TempDir,
    clock: Arc<ManualClock>,
    configure: impl FnOnce(&mut Config),
) -> TestApp {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let mut config = Config {
        listen: addr.to_string(),
        data_dir: dir.path().to_owned(),
        public_url: format!("http://{addr}"),
        public_url_is_default: false,
        trusted_proxies: Vec::new(),
    };
    configure(&mut config);
    let app = Arc::new(App::open(config, clock.clone()).unwrap());
    let site = match app.site("shop") {
        Ok(_) => None,
        Err(_) => Some(app.add_site("shop", &[ORIGIN.to_owned()]).unwrap()),
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let served = app.clone();
    let thread = std::thread::spawn(move || {
        actix_web::rt::System::new()
            .block_on(tally::server::run(served, listener, async {
                let _ = stopped.await;
            }))
            .unwrap();
    });
    let base = format!("http://{addr}");
    wait_healthy(&base);
    let (site_key, token) = match site {
        Some(s) => (s.site_key, s.api_token),
        None => (app.site("shop").unwrap().site_key.clone(), String::new()),
    };
    TestApp {
        base,
        app,
        clock,
        site_key,
        token,
        client: Client::new(),
        dir,
        stop: Some(stop),
        thread: Some(thread),
    }
}

impl TestApp {
    /// POSTs `{"events": events}` with the site's token.
    pub fn post_events(&self, events: Value) -> Response {
        self.post_events_raw(json!({ "events": events }).to_string(), Some(&self.token))
    }

    pub fn post_events_raw(&self, body: String, token: Option<&str>) -> Response {
        let mut req = self
            .client
            .post(format!("{}/v1/events", self.base))
            .body(body);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        req.send().unwrap()
    }

    /// Runs `tally import FILE --site shop [--dry-run]` in this server's
    /// process (as the control socket does) and returns its answer.
    pub fn import(&self, file: std::path::PathBuf, dry_run: bool) -> Value {
        tally::control::execute(
            &self.app,
            tally::control::Request::Import {
                path: file,
                site: "shop".into(),
                dry_run,
            },
        )
        .unwrap()
    }

    /// POSTs events and returns the answer, asserting 200.
    pub fn send(&self, events: Value) -> Value {
        let res = self.post_events(events);
        assert_eq!(res.status(), 200);
        res.json().unwrap()
    }

    /// POSTs one pixel event from `origin`.
    pub fn pixel(&self, body: Value, origin: &str) -> Response {
        self.client
            .post(format!("{}/v1/pixel", self.base))
            .header("Content-Type", "text/plain")
            .header("Origin", origin)
            .body(body.to_string())
            .send()
            .unwrap()
    }

    /// Changes the test site's settings, as `tally site set shop …` does.
    pub fn set(&self, change: impl FnOnce(&mut tally::domain::SiteSettings)) {
        let mut settings = self.app.site("shop").unwrap().settings.clone();
        change(&mut settings);
        self.app.configure_site("shop", settings, None).unwrap();
    }

    /// Sets the dashboard password, as `tally admin set-password` does.
    pub fn set_password(&self, password: &str) {
        let hash = tally::domain::password::hash(password).unwrap();
        tally::control::execute(&self.app, tally::control::Request::SetPasswordHash { hash })
            .unwrap();
    }

    /// The `/metrics` text.
    pub fn metrics(&self) -> String {
        self.client
            .get(format!("{}/metrics", self.base))
            .send()
            .unwrap()
            .text()
            .unwrap()
    }

    /// Runs a read-only query on the running app's store.
    pub fn query(&self, sql: &str) -> Vec<Vec<Value>> {
        let conn = self.app.store.connect().unwrap();
        tally::store::sql::run(&conn, sql, false).unwrap().rows
    }

    /// A single number from a query.
    pub fn count(&self, sql: &str) -> i64 {
        self.query(sql)[0][0].as_i64().unwrap()
    }

    /// Stops the server and returns its data dir.
    pub fn stop(mut self) -> TempDir {
        self.shutdown();
        let dir = tempfile::tempdir().unwrap();
        std::mem::replace(&mut self.dir, dir)
    }

    fn shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// POSTs `events` to `/v1/events` of the server at `base` with `token`;
/// the answer, asserting 200 (for servers run as processes).
pub fn post_events_to(base: &str, token: &str, events: Vec<Value>) -> Value {
    let res = Client::new()
        .post(format!("{base}/v1/events"))
        .bearer_auth(token)
        .json(&json!({ "events": events }))
        .send()
        .unwrap();
    assert_eq!(res.status(), 200);
    res.json().unwrap()
}

/// A server event with the given id and name.
pub fn event(id: &str, name: &str) -> Value {
    json!({"event_id": id, "event_name": name, "source": "server"})
}

pub fn wait_healthy(base: &str) {
    let client = Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if let Ok(r) = client.get(format!("{base}/healthz")).send() {
            if r.status() == 200 {
                return;
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("{base} did not become healthy");
}

/// The built binary.
pub fn tally_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_tally"))
}

/// Runs `tally ARGS --data-dir DIR` and returns its output.
pub fn tally(dir: &Path, args: &[&str]) -> Output {
    Command::new(tally_bin())
        .args(args)
        .arg("--data-dir")
        .arg(dir)
        .env_remove("TALLY_DATA_DIR")
        .env_remove("TALLY_CONFIG")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// Runs `tally`, asserts success, returns stdout.
pub fn tally_ok(dir: &Path, args: &[&str]) -> String {
    let out = tally(dir, args);
    assert!(
        out.status.success(),
        "tally {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// `tally site add shop --origin https://shop.example.com --json`: the new
/// site's key, token and snippet.
pub fn add_site(dir: &Path) -> Value {
    let args = [
        "site",
        "add",
        "shop",
        "--origin",
        "https://shop.example.com",
        "--json",
    ];
    serde_json::from_str(&tally_ok(dir, &args)).unwrap()
}

/// A free TCP port on localhost.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `tally serve` as a child process.
pub struct ServerProcess {
    pub child: Child,
    pub base: String,
    log: Option<(std::thread::JoinHandle<String>,)>,
}

impl ServerProcess {
    pub fn start(dir: &Path) -> ServerProcess {
        Self::spawn(dir, Some("error"), false)
    }

    /// Starts with `RUST_LOG=level` (`None`: the default filter), keeping
    /// its stderr for [`ServerProcess::terminate_and_log`].
    pub fn start_logging(dir: &Path, level: Option<&str>) -> ServerProcess {
        Self::spawn(dir, level, true)
    }

    fn spawn(dir: &Path, level: Option<&str>, keep_log: bool) -> ServerProcess {
        let port = free_port();
        let mut command = Command::new(tally_bin());
        command
            .args([
                "serve",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--data-dir",
            ])
            .arg(dir);
        match level {
            Some(level) => command.env("RUST_LOG", level),
            None => command.env_remove("RUST_LOG"),
        };
        let mut child = command
            .stdout(Stdio::null())
            .stderr(if keep_log {
                Stdio::piped()
            } else {
                Stdio::inherit()
            })
            .spawn()
            .unwrap();
        // Drained on a thread, so a chatty log never fills the pipe.
        let log = child.stderr.take().map(|mut err| {
            (std::thread::spawn(move || {
                let mut text = String::new();
                let _ = std::io::Read::read_to_string(&mut err, &mut text);
                text
            }),)
        });
        let base = format!("http://127.0.0.1:{port}");
        wait_healthy(&base);
        ServerProcess { child, base, log }
    }

    /// SIGTERM, wait, and everything the server logged.
    pub fn terminate_and_log(mut self) -> String {
        Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        self.child.wait().unwrap();
        self.log
            .take()
            .map(|(t,)| t.join().unwrap())
            .unwrap_or_default()
    }

    /// The server's resident memory now, in KiB.
    pub fn rss_kib(&self) -> u64 {
        rss_kib_of(self.child.id())
    }

    /// The server's highest resident memory, in KiB, sampled every 10 ms
    /// while `f` runs.
    pub fn peak_rss_kib_during<T>(&self, f: impl FnOnce() -> T) -> (u64, T) {
        use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
        let done = Arc::new(AtomicBool::new(false));
        let peak = Arc::new(AtomicU64::new(self.rss_kib()));
        let sampler = {
            let (done, peak, pid) = (done.clone(), peak.clone(), self.child.id());
            std::thread::spawn(move || {
                while !done.load(Ordering::SeqCst) {
                    peak.fetch_max(rss_kib_of(pid), Ordering::SeqCst);
                    std::thread::sleep(Duration::from_millis(10));
                }
            })
        };
        let out = f();
        done.store(true, Ordering::SeqCst);
        sampler.join().unwrap();
        (peak.load(Ordering::SeqCst), out)
    }

    /// SIGTERM, then waits; returns whether the exit was clean.
    pub fn terminate(mut self) -> bool {
        Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        let status = self.child.wait().unwrap();
        status.success()
    }

    /// SIGKILL, then waits.
    pub fn kill9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

/// A process's resident memory in KiB (`VmRSS`), 0 once it is gone.
fn rss_kib_of(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
