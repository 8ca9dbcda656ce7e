//! Shared engine of the hybrid-access daemons `hcpe` (CPE side) and `hag` (gateway side).
//!
//! The MPTCP protocol itself is the Linux kernel's. This crate owns everything around it that both daemons
//! need: the RFC 8803 Convert protocol codec with our Auth TLV ([`convert`]), kernel MPTCP sockets and their
//! introspection ([`mptcp`]), the bidirectional relay ([`relay`]), config helpers ([`config`]) and process setup
//! ([`process`]: the open-file limit).
//! Protocol code here is sans-IO: no sockets, no clock inside the codecs.

pub mod admin;
pub mod config;
pub mod convert;
pub mod mptcp;
pub mod net;
pub mod pm;
pub mod probe;
pub mod process;
pub mod relay;
pub mod stream;
#[doc(hidden)]
pub mod testutil;
