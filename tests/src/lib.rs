//! Testbed library for end-to-end tests, benchmarks and the demo.
//!
//! - [`netns`]: network namespaces, veths, children, with cleanup on drop, panic and
//!   SIGINT/SIGTERM ([`Netns`], [`ChildGuard`], [`bin_path`]).
//! - [`testbed`]: the lan — cpe — dsl/lte — hag — inet topology ([`Testbed`], addresses in
//!   [`testbed::addr`], interface names in [`testbed::ifname`]).
//! - [`emulator`]: the userspace link emulator (rate, delay, jitter, loss, cut, carrier,
//!   counters per direction), driven live through [`Testbed::dsl`] / [`Testbed::lte`].
//! - [`daemons`]: config writers and starters for the real `hag` and `hcpe`, and a tiny HTTP client for
//!   their admin APIs.
//! - [`cpe`]: a CPE without hcpe: an authenticated Convert request over MPTCP to hag, its reply read whole.
//! - [`traffic`]: traffic server/client with SHA-256 verification, request/response, progress
//!   timelines and one-way delay probes.
//!
//! Everything runs inside namespaces this process creates; nothing touches the root namespace.
//! Namespaces, veths, routes and sysctls are set with iproute2 (`ip -n <ns> ...`), which is
//! what an operator would type and keeps this crate independent of the daemons' netlink code.
//!
//! A typical end-to-end test:
//!
//! ```no_run
//! use std::net::SocketAddr;
//! use std::time::Duration;
//! use tests::{addr, bin_path, Client, Direction, LinkConfig, Server, Shape, Testbed, TestbedConfig};
//!
//! let tb = Testbed::new(TestbedConfig {
//!     dsl: LinkConfig::symmetric(Shape::mbit(50.0).delay_ms(10.0)),
//!     lte: LinkConfig { seed: 2, ..LinkConfig::symmetric(Shape::mbit(30.0).delay_ms(25.0)) },
//!     ..TestbedConfig::default()
//! })
//! .unwrap();
//! let server = Server::start(&tb.inet, 0).unwrap();
//! // Daemons: spawn them inside their namespace; the guard kills them and prints their log if
//! // the test fails.
//! let mut hag = tb.hag.spawn(bin_path("hag"), &["--config", "/path/to/generated.yaml"]).unwrap();
//! assert!(hag.wait_for_log("listening", Duration::from_secs(10)), "{}", hag.log());
//! // Traffic from the client namespace, verified end to end.
//! let dst = SocketAddr::new(addr::INET_SERVER.ip(false), server.port());
//! let t = tb.lan.within(move || Client::new(dst).download(50_000_000)).unwrap().unwrap();
//! println!("{:.1} Mbit/s, longest stall {:?}", t.mbit_per_s(), t.timeline.max_stall());
//! // Which uplink carried what; failures while traffic flows.
//! println!("{:?}", tb.dsl.counters(Direction::Down));
//! tb.dsl.cut();
//! tb.dsl.restore();
//! ```

pub mod cpe;
pub mod daemons;
pub mod emulator;
pub mod netns;
pub mod testbed;
pub mod traffic;

pub use emulator::{Direction, LinkConfig, LinkEmulator, Shape};
pub use netns::{ChildGuard, Netns, bin_path};
pub use testbed::{Testbed, TestbedConfig, addr};
pub use traffic::{Client, Server, one_way_probes};
