//! Test support shared by the workspace's tests; only `[dev-dependencies]` name this crate, so none of it is
//! compiled into a daemon.
//!
//! - [`netns`]: run a test body in a fresh, anonymous network namespace; MPTCP sockets and connected pairs on
//!   loopback; waiting for a path-manager event.
//! - [`admin`]: one request through an admin router without a socket, and the check that every operation of an
//!   OpenAPI document is routed.
//! - [`prometheus`]: a strict parser of the Prometheus text format, to prove `/metrics` output is accepted.

pub mod admin;
pub mod netns;
pub mod prometheus;
