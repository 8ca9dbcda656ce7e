//! `hcpe --config FILE [--check-config]`: parse the CLI, load and validate the config (exit 64 naming the
//! field when it is bad), start tracing, run the daemon until SIGTERM/SIGINT.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use common::config::EXIT_BAD_CONFIG;
use hcpe::config::Config;

#[derive(Debug, Parser)]
#[command(version, about = "Hybrid-access CPE: LAN TCP over kernel MPTCP to a hag")]
struct Cli {
    /// YAML config file.
    #[arg(long)]
    config: PathBuf,
    /// Validate the config and exit (0 ok, 64 bad).
    #[arg(long)]
    check_config: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match Config::from_file(&cli.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("hcpe: bad config {}: {e}", cli.config.display());
            return ExitCode::from(EXIT_BAD_CONFIG as u8);
        }
    };
    if cli.check_config {
        println!("hcpe: config {} is valid", cli.config.display());
        return ExitCode::SUCCESS;
    }
    let log_level = init_tracing(&config.log_level);
    raise_fd_limit();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("hcpe: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Signal handlers are installed before any setup, so a SIGTERM during start-up still cleans up.
    let run = async {
        let shutdown = shutdown_signal()?;
        let opts = hcpe::daemon::RunOptions { config_path: Some(cli.config.clone()), log_level: Some(log_level) };
        hcpe::daemon::run_with(config, opts, shutdown).await
    };
    match runtime.block_on(run) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("hcpe failed: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Logs to stderr with the config's filter (or `RUST_LOG`), and returns the setter a config reload uses to
/// change the filter (refused while `RUST_LOG` is set: the environment wins, as at start).
fn init_tracing(level: &str) -> hcpe::admin::LogLevelSetter {
    use tracing_subscriber::prelude::*;
    use tracing_subscriber::{EnvFilter, reload};
    let from_env = EnvFilter::try_from_default_env().ok();
    let env_set = from_env.is_some();
    let (filter, handle) = reload::Layer::new(from_env.unwrap_or_else(|| EnvFilter::new(level)));
    tracing_subscriber::registry()
        .with(filter)
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())),
        )
        .init();
    std::sync::Arc::new(move |level: &str| {
        if env_set {
            return Err("RUST_LOG is set and overrides log_level".to_owned());
        }
        let filter = EnvFilter::try_new(level).map_err(|e| e.to_string())?;
        handle.reload(filter).map_err(|e| e.to_string())
    })
}

/// Two descriptors per LAN connection (the LAN socket and the MPTCP socket to hag). hcpe has no connection
/// limit of its own (the NAT pool is far larger), so it asks for room for [`WANTED_CONNECTIONS`] and warns
/// below [`MIN_CONNECTIONS`].
const WANTED_CONNECTIONS: u64 = 32_768;
const MIN_CONNECTIONS: u64 = 4_096;

fn raise_fd_limit() {
    match common::process::raise_fd_limit(common::process::fds_for(WANTED_CONNECTIONS, 2)) {
        Ok(l) if l.connections(2) < MIN_CONNECTIONS => tracing::warn!(
            limit = l.now,
            holds = l.connections(2),
            "open-file limit holds few LAN connections; raise LimitNOFILE (systemd) or ulimit -n"
        ),
        Ok(l) => tracing::debug!(before = l.before, now = l.now, holds = l.connections(2), "open-file limit"),
        Err(e) => tracing::warn!(error = %e, "cannot read or raise the open-file limit"),
    }
}

fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM"),
            _ = int.recv() => tracing::info!("SIGINT"),
        }
    })
}
