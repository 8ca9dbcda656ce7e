//! Testbed library for end-to-end tests, benchmarks and the demo.
//!
//! - [`netns`]: network namespaces, veths, children, with cleanup on drop, panic and SIGINT/SIGTERM.
//! - [`testbed`]: the lan — cpe — dsl/lte — hag — inet topology ([`Testbed`]).
//! - [`emulator`]: the userspace link emulator (rate, delay, jitter, loss, cut, carrier, counters).
//! - [`traffic`]: traffic server/client with SHA-256 verification and progress timelines.
//!
//! Everything runs inside namespaces this process creates; nothing touches the root namespace.

pub mod emulator;
pub mod netns;
pub mod testbed;
pub mod traffic;

pub use emulator::{Direction, LinkConfig, LinkEmulator, Shape};
pub use netns::{bin_path, ChildGuard, Netns};
pub use testbed::{addr, Testbed, TestbedConfig};
pub use traffic::{one_way_probes, Client, Server};
