//! Shared engine of the hybrid-access daemons `hcpe` (CPE side) and `hag` (gateway side).
//!
//! The MPTCP protocol itself is the Linux kernel's. This crate owns everything around it that both daemons
//! need (the layers and the data path: `docs/architecture.md`):
//! - [`convert`]: the RFC 8803 Convert protocol codec with our Auth TLV (sans-IO);
//! - [`mptcp`]: kernel MPTCP sockets (listen, connect, Fast Open) and their introspection (`MPTCP_INFO`,
//!   `MPTCP_FULL_INFO`, per-subflow `sock_diag`);
//! - [`pm`]: the in-kernel path manager over generic netlink (endpoints, limits, subflows, events);
//! - [`probe`]: the UDP path probes (wire format, hag's responder, hcpe's prober, the sans-IO health machine);
//! - [`relay`]: the bidirectional byte relay between a LAN or server socket and an MPTCP one; [`stream`]: a
//!   socket a connection task owns while the admin API may look at it;
//! - [`net`]: rtnetlink helpers for the daemons' routing state (marked policy rules, routes, addresses);
//! - [`admin`]: the admin API pieces both daemons mount (auth, errors, `/metrics`, status, OpenAPI);
//! - [`clock`]: the wall clock a CPE signs with (hag's time, once hag said the system clock is off);
//! - [`config`]: YAML loading with errors that name the field; [`process`]: the open-file limit;
//!   [`syscheck`]: the host checks of `--check-system` and of every start.
//!
//! Protocol code here is sans-IO: no sockets, no clock inside the codecs. Test support lives in the `testkit`
//! crate, which only tests depend on.

pub mod admin;
pub mod clock;
pub mod config;
pub mod convert;
pub mod mptcp;
pub mod net;
pub mod pm;
pub mod probe;
pub mod process;
pub mod relay;
pub mod stream;
pub mod syscheck;
