//! Uplink health probing: the CPE sends authenticated UDP probes through each uplink to the HAG's
//! service port (UDP 5124, beside the Convert listener on TCP 5124); the HAG answers; the CPE turns answers
//! and their absence into a per-uplink up/down verdict with RTT and loss.
//!
//! Layers, each usable alone:
//! - [`wire`]: the datagram codec (sans-IO, checked parse, golden bytes).
//! - [`responder`]: HAG side. [`Responder::handle`] is sans-IO (bytes, source and `now` in, reply bytes out);
//!   [`serve_udp`] is the thin tokio loop around it.
//! - [`health`]: CPE side state machine per uplink, sans-IO ([`Health::on_tick`], [`Health::on_reply`],
//!   [`Health::carrier`]).
//! - [`prober`]: CPE side async driver: a UDP socket bound to the uplink's source address (optionally to its
//!   device), publishing [`UplinkHealth`] on a `tokio::sync::watch` channel.
//!
//! # Use from the daemons
//! ```no_run
//! # async fn demo(keys: std::collections::HashMap<String, Vec<u8>>) -> Result<(), Box<dyn std::error::Error>> {
//! use common::probe::*;
//! // hag: one task per service address.
//! let socket = tokio::net::UdpSocket::bind(("0.0.0.0", DEFAULT_PORT)).await?;
//! let responder = Responder::new(ResponderConfig::default());
//! let counters = responder.counters().clone(); // for /metrics: counters.snapshot()
//! tokio::spawn(serve_udp(socket, responder, move |cpe_id| keys.get(cpe_id).cloned()));
//!
//! // hcpe: one prober per uplink.
//! let prober = Prober::new(ProberConfig {
//!     cpe_id: "cpe-1".into(),
//!     key: b"the CPE's Convert Auth key".to_vec(),
//!     uplink: 0,
//!     source: "192.0.2.10".parse()?,
//!     device: Some("dsl0".into()),
//!     target: "198.51.100.1:5124".parse()?,
//!     health: HealthConfig::default(),
//! })?;
//! let mut health = prober.subscribe(); // health.changed().await wakes on state/carrier/source changes
//! let carrier = prober.carrier_control(); // carrier.send(false) on link down
//! let source = prober.source_control(); // source.send(new_ip) when the uplink is renumbered
//! tokio::spawn(prober.run()); // ends when every receiver is dropped
//! # Ok(()) }
//! ```
//!
//! # Wire format (all integers big-endian)
//! ```text
//! Request (CPE -> HAG), 67..=130 bytes:
//!   0  magic "HP" (0x48 0x50)      2  version = 1      3  kind = 1 (request)
//!   4  seq u32                      8  timestamp u64, sender's wall clock, microseconds since the Unix epoch
//!  16  uplink id u8                17  CPE id length N (1..=64)
//!  18  CPE id, N bytes UTF-8
//!  18+N nonce, 16 random bytes
//!  34+N MAC, 32 bytes = HMAC-SHA256(CPE key, bytes 0 .. 34+N)
//!
//! Reply (HAG -> CPE), always 66 bytes:
//!   0  magic "HP"   2  version = 1   3  kind = 2 (reply)
//!   4  seq u32 (echo)   8  timestamp u64 (echo)   16  uplink id u8 (echo)   17  reserved = 0
//!  18  nonce, 16 bytes (echo of the request's)
//!  34  MAC, 32 bytes = HMAC-SHA256(CPE key, bytes 0 .. 34)
//! ```
//! The key is the same per-CPE key the Convert Auth TLV uses. A probe can never verify as a Convert message
//! or the other way round: a Convert message starts with version 1, a probe with `H`, and both are inside
//! the MAC. The kind byte is inside the MAC too, so a reply cannot be reflected as a request.
//!
//! Invariants:
//! - A reply (66 bytes) is always shorter than the smallest valid request (67 bytes), and the responder only
//!   ever answers a request whose MAC verified: no amplification, no answers to strangers
//!   (compile-time assert in [`wire`], tested).
//! - Parsing never panics on any input (proptest); nothing is trusted before the MAC compared equal in
//!   constant time.
//! - The responder's per-source state is bounded ([`ResponderConfig::max_sources`]).
//! - Replay: the responder keeps no nonce history. A replayed request inside the skew window gets one more
//!   66-byte reply sent to the request's source (rate-limited); the prober only accepts a reply whose seq
//!   and nonce match a probe still outstanding, so replays cannot fake health.

pub mod health;
pub mod prober;
pub mod responder;
pub mod wire;

#[cfg(test)]
mod netns_tests;

pub use health::{Action, Health, HealthConfig, HealthState, StateChange};
pub use prober::{Prober, ProberConfig, ProberStats, UplinkHealth};
pub use responder::{Now, Responder, ResponderConfig, ResponderCounters, ResponderStats, serve_udp};

/// Default UDP port of the probe responder (the HAG's service port).
pub const DEFAULT_PORT: u16 = 5124;

/// Errors of the probing I/O layer (the codec has [`wire::WireError`]).
#[derive(thiserror::Error, Debug)]
pub enum ProbeError {
    /// The prober's configuration cannot work (e.g. source and target of different address families).
    #[error("invalid prober config: {0}")]
    Config(String),
    /// Creating, binding or connecting the probe socket failed.
    #[error("probe socket {what}: {source}")]
    Socket {
        /// Which step failed.
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// The OS random source failed (nonces).
    #[error("random source: {0}")]
    Random(getrandom::Error),
}
