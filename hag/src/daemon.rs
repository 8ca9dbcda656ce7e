//! The hag daemon's life: bind the service listeners (MPTCP) and the admin API, serve until told to stop
//! (reloading the config on SIGHUP meanwhile), then stop the admin API and drain the open connections (up to
//! `limits.drain_deadline`).
//!
//! The same shape as hcpe's `daemon`: `main` parses the CLI, loads the config, sets up logging, the open-file
//! limit and the signals (`common::process`), and hands over to [`run`].

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use common::admin::Auth;
use common::process::LogLevelSetter;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::Config;
use crate::live::{ReloadOutcome, Settings};
use crate::{Hag, admin};

/// What `main` hands the daemon besides the config.
#[derive(Default)]
pub struct RunOptions {
    /// The file the config was read from; SIGHUP re-reads it (`None`: SIGHUP is logged and ignored).
    pub config_path: Option<PathBuf>,
    /// Changes the log filter on a reload (`None`: a `log_level` change needs a restart).
    pub log_level: Option<LogLevelSetter>,
}

/// Runs the hag until `shutdown` resolves, then stops accepting, stops the admin API and drains. Fails only
/// at start (a listen address or the admin API cannot be bound).
pub async fn run(config: Config, opts: RunOptions, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let hag = Hag::bind(config).context("starting the service")?;
    let admin_stop = CancellationToken::new();
    let stop = admin_stop.clone();
    let admin = admin::start(&hag, async move { stop.cancelled().await }).context("starting the admin API")?;
    let (admin, auth) = admin.map_or((None, None), |(a, auth)| (Some(a), Some(auth)));
    // Installed before "ready", so a reload asked for as soon as the daemon says it is up is not lost.
    let hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).context("SIGHUP handler")?;
    let reloads = tokio::spawn(reload_on_hangup(hangup, hag.settings(), opts, auth));
    info!(addrs = ?hag.local_addrs(), admin = ?admin.as_ref().map(|a| &a.addrs), "ready");
    common::process::notify_ready();
    hag.run(async {
        shutdown.await;
        common::process::notify_stopping();
        // The admin API stops with the listeners, so a monitor sees the hag go away at once.
        admin_stop.cancel();
    })
    .await;
    reloads.abort();
    if let Some(admin) = admin {
        match admin.task.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => warn!(error = %e, "admin API failed"),
            Err(e) => warn!(error = %e, "admin API task failed"),
        }
    }
    Ok(())
}

/// Reloads the config on every SIGHUP until aborted.
async fn reload_on_hangup(
    mut hangup: tokio::signal::unix::Signal,
    settings: Arc<Settings>,
    opts: RunOptions,
    auth: Option<Arc<Auth>>,
) {
    while hangup.recv().await.is_some() {
        let Some(path) = opts.config_path.clone() else {
            warn!("SIGHUP: hag was not started from a config file; nothing to reload");
            continue;
        };
        common::process::notify_reloading();
        info!(config = %path.display(), "SIGHUP: reloading the config");
        match reload(&settings, path, opts.log_level.as_ref(), auth.as_deref()).await {
            Ok(out) if !out.restart_required.is_empty() => warn!(
                restart_required = ?out.restart_required,
                "some changes take effect only after a restart"
            ),
            Ok(_) => {}
            Err(e) => warn!(error = %e, "config reload refused: the running config stays"),
        }
        common::process::notify_ready();
    }
}

/// Reads and validates `path`, then applies it (see `live`).
pub async fn reload(
    settings: &Settings,
    path: PathBuf,
    log: Option<&LogLevelSetter>,
    auth: Option<&Auth>,
) -> anyhow::Result<ReloadOutcome> {
    let new = tokio::task::spawn_blocking(move || Config::from_file(&path)).await.context("reload task")??;
    Ok(settings.apply(new, log, auth))
}
