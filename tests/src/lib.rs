//! Testbed library for end-to-end tests, benchmarks and the demo: network namespaces with
//! guaranteed cleanup ([`netns`]), and (see the other modules) the hybrid-access topology, a
//! userspace link emulator and traffic tools.
//!
//! Everything runs inside namespaces this process creates; nothing touches the root namespace.

pub mod netns;

pub use netns::{bin_path, ChildGuard, Netns};
