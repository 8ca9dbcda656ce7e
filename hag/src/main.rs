//! `hag --config FILE [--check-config]`: parse the CLI, load and validate the config (exit 64 naming the
//! field when it is bad), start tracing, run the daemon ([`hag::daemon::run`]) until SIGTERM/SIGINT,
//! reloading the config on SIGHUP.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use common::config::EXIT_BAD_CONFIG;
use common::syscheck::EXIT_SYSTEM;

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
    /// Check this host for what the config needs (MPTCP, path manager, Fast Open, open files, clock), print
    /// ok/warn/FAIL with the fix for each, and exit: 0 without a failure, 69 with one. hag runs the same
    /// checks at every start and refuses to start on a failure.
    #[arg(long)]
    check_system: bool,
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
    if cli.check_config && !cli.check_system {
        println!("hag: config {} is valid", cli.config.display());
        return ExitCode::SUCCESS;
    }
    let report = hag::syscheck::run(&config);
    if cli.check_system {
        print!("{}", report.render("hag"));
        return if report.failed() { ExitCode::from(EXIT_SYSTEM) } else { ExitCode::SUCCESS };
    }
    let log_level = common::process::init_tracing(&config.log_level);
    report.log();
    if report.failed() {
        eprint!("{}", report.render("hag"));
        tracing::error!("the system check failed; not starting (run hag --check-system for the list)");
        return ExitCode::from(EXIT_SYSTEM);
    }
    // Two descriptors per relay (MPTCP side and destination side), for every connection the config allows.
    let max = config.limits.max_connections as u64;
    common::process::ensure_fd_limit(max, 2, max);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("hag: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Signal handlers are installed before any setup, so a SIGTERM during start-up still stops cleanly.
    let run = async {
        let shutdown = common::process::shutdown_signal()?;
        let opts = hag::daemon::RunOptions { config_path: Some(cli.config.clone()), log_level: Some(log_level) };
        hag::daemon::run(config, opts, shutdown).await
    };
    match runtime.block_on(run) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("hag failed: {e:#}");
            ExitCode::FAILURE
        }
    }
}
