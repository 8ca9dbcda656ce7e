//! hcpe, the CPE daemon: intercepts LAN TCP on a TUN device, terminates it in the kernel through a small
//! userspace NAT ([`nat`]), and carries every connection to hag as one MPTCP connection with the Convert protocol.

pub mod admin;
pub mod config;
pub mod conn;
pub mod daemon;
pub mod intercept;
pub mod nat;
pub mod quic;
pub mod uplink;
