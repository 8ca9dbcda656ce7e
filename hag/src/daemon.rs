//! The hag daemon's life: bind the service listeners (MPTCP) and the admin API, serve until told to stop,
//! then stop the admin API and drain the open connections (up to `limits.drain_deadline`).
//!
//! The same shape as hcpe's `daemon`: `main` parses the CLI, loads the config, sets up logging, the open-file
//! limit and the signals (`common::process`), and hands over to [`run`].

use std::future::Future;

use anyhow::Context as _;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::Config;
use crate::{Hag, admin};

/// Runs the hag until `shutdown` resolves, then stops accepting, stops the admin API and drains. Fails only
/// at start (a listen address or the admin API cannot be bound).
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let hag = Hag::bind(config.clone()).context("starting the service")?;
    let admin_stop = CancellationToken::new();
    let stop = admin_stop.clone();
    let admin = admin::start(&config, &hag, async move { stop.cancelled().await }).context("starting the admin API")?;
    info!(addrs = ?hag.local_addrs(), admin = ?admin.as_ref().map(|a| &a.addrs), "ready");
    hag.run(async {
        shutdown.await;
        // The admin API stops with the listeners, so a monitor sees the hag go away at once.
        admin_stop.cancel();
    })
    .await;
    if let Some(admin) = admin {
        match admin.task.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => warn!(error = %e, "admin API failed"),
            Err(e) => warn!(error = %e, "admin API task failed"),
        }
    }
    Ok(())
}
