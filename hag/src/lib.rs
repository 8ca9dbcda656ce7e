//! hag: the hybrid access gateway daemon as a library, so tests and benches reach every part.
//!
//! A CPE opens a kernel MPTCP connection (TCP Fast Open, Convert message in the SYN); the hag reads the RFC
//! 8803 Convert message, authenticates the CPE (Auth TLV), checks the destination policy, connects plain TCP
//! to the destination, answers with a Convert header or an Error TLV, and relays.
//!
//! Modules: [`admin`] (admin REST API), [`config`] (YAML file and its validation), [`connections`] (table of open connections),
//! [`policy`] (destination policy), [`server`] (listeners, per-connection task, shutdown), [`stats`]
//! (counters), [`ratelimit`] (log line limiter).

pub mod admin;
pub mod config;
pub mod connections;
pub mod policy;
pub mod probe;
pub mod ratelimit;
pub mod server;
pub mod stats;

pub use config::Config;
pub use server::{Hag, StartError, shutdown_signal};
