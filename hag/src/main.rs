//! `hag --config FILE [--check-config]`: parse the CLI, load and validate the config (exit 64 naming the
//! field when it is bad), start tracing and the runtime, serve (and the admin API, if configured) until
//! SIGTERM/SIGINT, stop the admin API, drain, exit 0.

use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use common::config::EXIT_BAD_CONFIG;
use tracing_subscriber::EnvFilter;

/// Hybrid access gateway: accepts MPTCP connections from CPEs (RFC 8803 Convert) and relays them to TCP.
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    /// YAML config file.
    #[arg(long, value_name = "FILE")]
    config: PathBuf,
    /// Validate the config and exit: 0 when valid, 64 (naming the field) when not.
    #[arg(long)]
    check_config: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match hag::Config::from_file(&cli.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("hag: bad config {}: {e}", cli.config.display());
            return ExitCode::from(EXIT_BAD_CONFIG as u8);
        }
    };
    if cli.check_config {
        println!("hag: config {} is valid", cli.config.display());
        return ExitCode::SUCCESS;
    }
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&config.log_level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    // Two descriptors per relay (MPTCP side and destination side).
    let max = config.limits.max_connections as u64;
    match common::process::raise_fd_limit(common::process::fds_for(max, 2)) {
        Ok(l) if !l.sufficient() => tracing::warn!(
            limit = l.now,
            holds = l.connections(2),
            max_connections = max,
            "open-file limit is below what limits.max_connections needs; raise LimitNOFILE (systemd) or ulimit -n"
        ),
        Ok(l) => tracing::debug!(before = l.before, now = l.now, "open-file limit"),
        Err(e) => tracing::warn!(error = %e, "cannot read or raise the open-file limit"),
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the runtime");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        let hag = match hag::Hag::bind(config.clone()) {
            Ok(h) => h,
            Err(e) => {
                tracing::error!("{e}");
                return ExitCode::FAILURE;
            }
        };
        let stop = tokio_util::sync::CancellationToken::new();
        let admin_stop = stop.clone();
        let admin = match hag::admin::start(&config, &hag, async move { admin_stop.cancelled().await }) {
            Ok(a) => a,
            Err(e) => {
                tracing::error!("{e}");
                return ExitCode::FAILURE;
            }
        };
        tracing::info!(addrs = ?hag.local_addrs(), admin = ?admin.as_ref().map(|a| &a.addrs), "ready");
        let signals = async {
            if let Err(e) = hag::shutdown_signal().await {
                tracing::error!(error = %e, "cannot install signal handlers; stopping");
            }
            stop.cancel();
        };
        hag.run(signals).await;
        if let Some(admin) = admin {
            match admin.task.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!("{e}"),
                Err(e) => tracing::warn!(error = %e, "admin API task failed"),
            }
        }
        ExitCode::SUCCESS
    })
}
