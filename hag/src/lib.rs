//! hag: the hybrid access gateway daemon as a library, so tests and benches reach every part.
//!
//! A CPE opens a kernel MPTCP connection and sends an RFC 8803 Convert message first (in the SYN when both
//! sides enable TCP Fast Open, which hcpe leaves off by default: see `common::mptcp`); the hag reads it,
//! authenticates the CPE (Auth TLV), checks the destination policy, connects plain TCP to the destination,
//! answers with a Convert header or an Error TLV, and relays. The layers and the data path:
//! `docs/architecture.md`.
//!
//! Modules: [`daemon`] (start, serve, stop), [`server`] (listeners, the per-connection task, holds,
//! draining), `message` (reading the Convert message), `request` (what it asks for), `outbound` (the
//! destination side: address classes, TCP options, connect and its ICMP error), `refusal` (Error replies
//! and closing), `answer` (success reply and relay), `slots` (per-CPE bounds),
//! [`admin`] (admin REST API), [`config`] (YAML file and its validation), [`connections`] (table of open
//! connections), [`policy`] (destination policy), [`probe`] (the UDP probe responder), [`stats`] (counters),
//! [`ratelimit`] (log line limiter).

pub mod admin;
mod answer;
pub mod config;
pub mod connections;
pub mod daemon;
pub mod live;
mod message;
mod outbound;
pub mod policy;
pub mod probe;
pub mod ratelimit;
mod refusal;
mod request;
pub mod server;
mod slots;
pub mod stats;
pub mod syscheck;

pub use config::Config;
pub use server::{Hag, StartError};
