//! `testbed`: builds the hybrid-access testbed, prints its namespaces and addresses, and keeps
//! it until Ctrl-C (SIGINT/SIGTERM remove everything). For exploring by hand:
//! `ip netns exec <cpe> bash`, `traffic`, the daemons.
//!
//! ```text
//! testbed --dsl-mbit 50 --dsl-delay-ms 10 --lte-mbit 30 --lte-delay-ms 25
//! ```

use clap::Parser;
use tests::testbed::addr;
use tests::{LinkConfig, Shape, Testbed, TestbedConfig};

#[derive(Parser)]
#[command(about = "Build the lan-cpe-dsl/lte-hag-inet testbed and keep it until Ctrl-C")]
struct Cli {
    /// DSL rate in Mbit/s (both directions); unlimited if absent.
    #[arg(long)]
    dsl_mbit: Option<f64>,
    /// DSL one-way delay in ms.
    #[arg(long, default_value_t = 0.0)]
    dsl_delay_ms: f64,
    /// LTE rate in Mbit/s (both directions); unlimited if absent.
    #[arg(long)]
    lte_mbit: Option<f64>,
    /// LTE one-way delay in ms.
    #[arg(long, default_value_t = 0.0)]
    lte_delay_ms: f64,
    /// LTE jitter in ms.
    #[arg(long, default_value_t = 0.0)]
    lte_jitter_ms: f64,
    /// Do not install default routes in cpe (hcpe will).
    #[arg(long)]
    no_cpe_default_routes: bool,
}

fn shape(mbit: Option<f64>, delay: f64) -> Shape {
    mbit.map(Shape::mbit).unwrap_or_default().delay_ms(delay)
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let tb = Testbed::new(TestbedConfig {
        dsl: LinkConfig::symmetric(shape(cli.dsl_mbit, cli.dsl_delay_ms)),
        lte: LinkConfig {
            seed: 2,
            ..LinkConfig::symmetric(shape(cli.lte_mbit, cli.lte_delay_ms).jitter_ms(cli.lte_jitter_ms))
        },
        cpe_default_routes: !cli.no_cpe_default_routes,
        ..TestbedConfig::default()
    })?;
    let names = tb.namespace_names();
    for (role, name) in ["lan", "cpe", "dsl", "lte", "hag", "inet"].iter().zip(&names) {
        println!("{role:5} {name}");
    }
    for (what, a) in [
        ("lan client", addr::LAN_CLIENT),
        ("cpe dsl", addr::CPE_DSL),
        ("cpe lte", addr::CPE_LTE),
        ("hag service", addr::HAG_SERVICE),
        ("inet server", addr::INET_SERVER),
    ] {
        println!("{what:12} {} {}", a.v4, a.v6);
    }
    println!("ready; Ctrl-C removes everything");
    loop {
        std::thread::sleep(std::time::Duration::from_secs(5));
        let (d, l) = (tb.dsl.counters(tests::Direction::Down), tb.lte.counters(tests::Direction::Down));
        println!("down bytes: dsl {} lte {}", d.tx_bytes, l.tx_bytes);
    }
}
