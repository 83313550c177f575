//! The CLI side of the control socket.

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

/// Sends `req` and returns the server's result value.
pub fn call(mut stream: UnixStream, req: &Request) -> Result<Value> {
    let mut line = serde_json::to_string(req)?;
    line.push('\n');
    stream
        .write_all(line.as_bytes())
        .context("cannot send to the running server")?;
    let mut answer = String::new();
    BufReader::new(stream)
        .read_line(&mut answer)
        .context("the running server did not answer")?;
    let answer: Value = serde_json::from_str(&answer)
        .with_context(|| format!("the running server answered something unreadable: {answer:?}"))?;
    if answer["ok"] == Value::Bool(true) {
        Ok(answer["result"].clone())
    } else {
        match answer["error"].as_str() {
            Some(msg) => Err(anyhow!("{msg}")),
            None => bail!("the running server refused the command"),
        }
    }
}
