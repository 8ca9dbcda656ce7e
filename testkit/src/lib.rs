//! Test support shared by the workspace's tests; only `[dev-dependencies]` name this crate, so none of it is
//! compiled into a daemon.
//!
//! - [`netns`]: run a test body in a fresh, anonymous network namespace; MPTCP sockets and connected pairs on
//!   loopback; waiting for a path-manager event.
//! - [`admin`]: one request through an admin router without a socket, and the check that every operation of an
//!   OpenAPI document is routed.
//! - [`prometheus`]: a strict parser of the Prometheus text format, to prove `/metrics` output is accepted.
//! - [`write_secret`]: a key or token file as the daemons accept it (0600).

pub mod admin;
pub mod netns;
pub mod prometheus;

/// Writes a secret (key or token) file as the daemons require it: readable by its owner only (0600).
pub fn write_secret(path: impl AsRef<std::path::Path>, content: impl AsRef<[u8]>) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let path = path.as_ref();
    let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path)?;
    // An existing file keeps its mode through open: set it.
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    f.write_all(content.as_ref())
}
