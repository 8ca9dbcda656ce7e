//! hcpe, the CPE daemon: intercepts LAN TCP on a TUN device, terminates it in the kernel through a small
//! userspace NAT ([`nat`]), and carries every connection to hag as one MPTCP connection with the Convert protocol.
//!
//! Modules: [`daemon`] (start, serve, stop), [`intercept`] (the TUN device and the interception routing),
//! [`nat`] (sans-IO address rewriting), [`conn`] (one LAN connection: the exchange with hag, the relay, the
//! fallback), [`uplink`] (health, endpoints and routing of each uplink; volume and quotas), [`quic`]
//! (`block_quic`), [`admin`] (admin REST API and status page), [`config`] (YAML file and its validation).
//! The layers and the data path: `docs/architecture.md`.

pub mod admin;
pub mod config;
pub mod conn;
pub mod daemon;
pub mod intercept;
pub mod nat;
pub mod quic;
pub mod syscheck;
pub mod uplink;
