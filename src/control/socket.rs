//! The server side of the control socket: one JSON request line in, one JSON
//! answer line out. The socket file is created owner-only (0600) in the data
//! dir; whoever can use it can already read the DuckDB file.

use super::{execute_with_progress, Request};
use crate::app::App;
use serde_json::json;
use std::path::Path;
use std::sync::Arc;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

/// Binds the socket at `path`, replacing a stale one left by a crash (the
/// caller already holds the database, so no live server owns it).
pub fn bind(path: &Path) -> std::io::Result<UnixListener> {
    if path.exists() {
        std::fs::remove_file(path)?;
    }
    let listener = UnixListener::bind(path)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(listener)
}

/// Answers connections until the task is dropped.
pub async fn serve(listener: UnixListener, app: Arc<App>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let app = app.clone();
                tokio::spawn(async move {
                    if let Err(e) = answer(stream, app).await {
                        tracing::warn!(error = %e, "control connection failed");
                    }
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "control socket accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
}

/// One request, then progress lines (`{"progress": …}`, for imports) while
/// it runs, then its answer line.
async fn answer(stream: UnixStream, app: Arc<App>) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    BufReader::new(read).read_line(&mut line).await?;
    let reply = match serde_json::from_str::<Request>(&line) {
        Ok(req) => {
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
            let mut last = std::time::Instant::now();
            let work = tokio::task::spawn_blocking(move || {
                execute_with_progress(&app, req, &mut |p| {
                    if last.elapsed() >= std::time::Duration::from_millis(200) {
                        last = std::time::Instant::now();
                        let _ = tx.send(p);
                    }
                })
            });
            while let Some(p) = rx.recv().await {
                let mut text = json!({ "progress": p }).to_string();
                text.push('\n');
                write.write_all(text.as_bytes()).await?;
            }
            let result = work.await;
            match result {
                Ok(Ok(value)) => json!({"ok": true, "result": value}),
                Ok(Err(e)) => json!({"ok": false, "error": e.0}),
                Err(e) => json!({"ok": false, "error": format!("the command failed: {e}")}),
            }
        }
        Err(e) => json!({"ok": false, "error": format!("bad control request: {e}")}),
    };
    let mut text = reply.to_string();
    text.push('\n');
    write.write_all(text.as_bytes()).await?;
    write.shutdown().await
}
