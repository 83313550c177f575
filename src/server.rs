//! `tally serve`: the HTTP server and the control socket over one [`App`],
//! until a shutdown signal; then drain the ingest queue, commit, checkpoint.

use crate::app::App;
use crate::control;
use anyhow::{Context, Result};
use std::future::Future;
use std::net::TcpListener;
use std::sync::Arc;

/// Runs the appliance on `listener` until `shutdown` resolves.
pub async fn run(
    app: Arc<App>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    app.ingest().context("cannot start the ingest writer")?;
    ensure_password(&app)?;
    crate::store::settings::set(
        &*app.store.connect()?,
        crate::store::settings::PUBLIC_URL_KEY,
        &app.config.public_url,
    )?;
    let socket_path = app.config.socket_path();
    let socket = control::socket::bind(&socket_path)
        .with_context(|| format!("cannot bind the control socket {}", socket_path.display()))?;
    let control_task = tokio::spawn(control::socket::serve(socket, app.clone()));
    let upkeep =
        crate::upkeep::Upkeep::start(app.clone()).context("cannot start the upkeep thread")?;
    let forward_task = tokio::spawn(crate::forward::run(app.clone()));
    let addr = listener.local_addr()?;
    tracing::info!(%addr, data_dir = %app.config.data_dir.display(), "tally is serving");
    let served = crate::http::serve(app.clone(), listener, shutdown).await;
    control_task.abort();
    forward_task.abort();
    let _ = std::fs::remove_file(&socket_path);
    let closing = app.clone();
    tokio::task::spawn_blocking(move || {
        upkeep.stop();
        closing.shutdown()
    })
    .await?;
    tracing::info!("tally stopped cleanly");
    served.context("the HTTP server failed")
}

/// On the first start, sets a random dashboard password and logs it once.
fn ensure_password(app: &App) -> Result<()> {
    let conn = app.store.connect()?;
    if crate::store::settings::get(&conn, control::PASSWORD_KEY)?.is_none() {
        let password = crate::domain::site::new_salt()[..20].to_owned();
        let hash = crate::domain::password::hash(&password)?;
        crate::store::settings::set(&conn, control::PASSWORD_KEY, &hash)?;
        tracing::warn!(
            "no dashboard password was set; generated one (shown only now): {password} \
             -- change it with `tally admin set-password`"
        );
    }
    Ok(())
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("installing a SIGINT handler");
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: draining and stopping"),
        _ = int.recv() => tracing::info!("SIGINT: draining and stopping"),
    }
}
