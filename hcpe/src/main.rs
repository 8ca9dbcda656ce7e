//! `hcpe --config FILE [--check-config]`: parse the CLI, load and validate the config (exit 64 naming the
//! field when it is bad), start tracing, run the daemon until SIGTERM/SIGINT.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use common::config::EXIT_BAD_CONFIG;
use common::syscheck::EXIT_SYSTEM;
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
    /// Check this host for what the config needs (MPTCP, path manager, TUN, forwarding, rp_filter, nftables,
    /// Fast Open, open files, clock), print ok/warn/FAIL with the fix for each, and exit: 0 without a
    /// failure, 69 with one. hcpe runs the same checks at every start and refuses to start on a failure.
    #[arg(long)]
    check_system: bool,
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
    if cli.check_config && !cli.check_system {
        println!("hcpe: config {} is valid", cli.config.display());
        return ExitCode::SUCCESS;
    }
    let report = hcpe::syscheck::run(&config);
    if cli.check_system {
        print!("{}", report.render("hcpe"));
        return if report.failed() { ExitCode::from(EXIT_SYSTEM) } else { ExitCode::SUCCESS };
    }
    let log_level = common::process::init_tracing(&config.log_level);
    report.log();
    if report.failed() {
        eprint!("{}", report.render("hcpe"));
        tracing::error!("the system check failed; not starting (run hcpe --check-system for the list)");
        return ExitCode::from(EXIT_SYSTEM);
    }
    // Two descriptors per LAN connection (the LAN socket and the MPTCP socket to hag). hcpe has no connection
    // limit of its own (the NAT pool is far larger): room for 32,768, a warning below 4,096.
    common::process::ensure_fd_limit(hcpe::syscheck::FD_CONNECTIONS.0, 2, hcpe::syscheck::FD_CONNECTIONS.1);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("hcpe: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Signal handlers are installed before any setup, so a SIGTERM during start-up still cleans up.
    let run = async {
        let shutdown = common::process::shutdown_signal()?;
        let opts = hcpe::daemon::RunOptions { config_path: Some(cli.config.clone()), log_level: Some(log_level) };
        hcpe::daemon::run(config, opts, shutdown).await
    };
    match runtime.block_on(run) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("hcpe failed: {e:#}");
            ExitCode::FAILURE
        }
    }
}
