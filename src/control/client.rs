//! The CLI side of the control socket.

use super::import::Progress;
use super::Request;
use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;

/// A connection to a running server, or `None` when no server listens there
/// (no socket, or a stale one left by a crash).
pub fn connect(path: &Path) -> Option<UnixStream> {
    UnixStream::connect(path).ok()
}

/// Sends `req` and returns the server's result value; progress lines the
/// server sends first go to `progress`.
pub fn call(
    mut stream: UnixStream,
    req: &Request,
    progress: &mut dyn FnMut(Progress),
) -> Result<Value> {
    let mut line = serde_json::to_string(req)?;
    line.push('\n');
    stream
        .write_all(line.as_bytes())
        .context("cannot send to the running server")?;
    let mut reader = BufReader::new(stream);
    let answer = loop {
        let mut text = String::new();
        let n = reader
            .read_line(&mut text)
            .context("the running server did not answer")?;
        if n == 0 {
            bail!("the running server closed the connection without an answer");
        }
        let value: Value = serde_json::from_str(&text).with_context(|| {
            format!("the running server answered something unreadable: {text:?}")
        })?;
        match value.get("progress") {
            Some(p) => {
                if let Ok(p) = serde_json::from_value(p.clone()) {
                    progress(p);
                }
            }
            None => break value,
        }
    };
    if answer["ok"] == Value::Bool(true) {
        Ok(answer["result"].clone())
    } else {
        match answer["error"].as_str() {
            Some(msg) => Err(anyhow!("{msg}")),
            None => bail!("the running server refused the command"),
        }
    }
}
