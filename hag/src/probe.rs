//! hag's uplink probe responder: answers the CPEs' authenticated UDP health probes on the UDP port of every
//! listen address (beside the Convert listener on the same TCP port), keyed like the Auth TLV. A wildcard
//! listen address (`0.0.0.0`, `[::]`) answers on every local address, each reply from the address its probe
//! was sent to.
//!
//! The codec, the MAC check, the per-source rate limit and the "reply never larger than the request" rule
//! all live in `common::probe`; this file only binds the sockets and hands them the CPE key lookup (which
//! reads the running config, so a reload's new key answers at once).
//!
//! Invariants:
//! - one responder task per bound service address; they end with the [`ProbeResponders`] value (abort on drop);
//! - a CPE unknown to the config gets no answer (the lookup returns `None`).

use std::net::SocketAddr;
use std::sync::Arc;

use common::probe::{Responder, ResponderConfig, ResponderCounters, serve_udp};
use tokio::net::UdpSocket;
use tokio::task::JoinHandle;
use tracing::{info, warn};

/// The running responders; dropping this stops them.
#[derive(Debug)]
pub struct ProbeResponders {
    tasks: Vec<JoinHandle<()>>,
    /// Counters per bound address (for /metrics).
    pub counters: Vec<(SocketAddr, Arc<ResponderCounters>)>,
}

impl Drop for ProbeResponders {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Binds UDP on each of `addrs` and answers probes there. An address that cannot be bound is logged and
/// skipped: the Convert service works without probes, only the CPEs' health verdicts suffer.
pub async fn start<F>(addrs: &[SocketAddr], keys: F) -> ProbeResponders
where
    F: Fn(&str) -> Option<Vec<u8>> + Clone + Send + 'static,
{
    let mut out = ProbeResponders { tasks: Vec::new(), counters: Vec::new() };
    for addr in addrs {
        let socket = match bind(*addr) {
            Ok(s) => s,
            Err(e) => {
                warn!(%addr, error = %e, "probe responder: cannot bind UDP; CPE health probes go unanswered");
                continue;
            }
        };
        let responder = Responder::new(ResponderConfig::default());
        out.counters.push((*addr, responder.counters().clone()));
        let keys = keys.clone();
        let addr = *addr;
        out.tasks.push(tokio::spawn(async move {
            if let Err(e) = serve_udp(socket, responder, keys).await {
                warn!(%addr, error = %e, "probe responder stopped");
            }
        }));
        info!(%addr, "probe responder listening (UDP)");
    }
    out
}

fn bind(addr: SocketAddr) -> std::io::Result<UdpSocket> {
    let domain = socket2::Domain::for_address(addr);
    let s = socket2::Socket::new(domain, socket2::Type::DGRAM, Some(socket2::Protocol::UDP))?;
    if addr.is_ipv6() {
        // Same as the TCP listeners: a `[::]` address serves IPv6 only, `0.0.0.0` serves IPv4.
        s.set_only_v6(true)?;
    }
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    UdpSocket::from_std(s.into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use common::probe::{HealthConfig, HealthState, Prober, ProberConfig};

    /// A prober on loopback with the right key comes Up against the responder; with a wrong key it does not.
    #[tokio::test]
    async fn answers_known_cpe_only() {
        let keys = |id: &str| (id == "cpe-1").then(|| b"0123456789abcdef0123".to_vec());
        // Port 0 for the test: find the bound port from a first bind, then reuse it.
        let probe_sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = probe_sock.local_addr().unwrap();
        drop(probe_sock);
        let responders = start(&[addr], keys).await;
        assert_eq!(responders.counters.len(), 1);
        let health = HealthConfig { interval: std::time::Duration::from_millis(20), ..HealthConfig::default() };
        let mk = |key: &[u8]| {
            Prober::new(ProberConfig {
                cpe_id: "cpe-1".into(),
                key: key.to_vec(),
                uplink: 0,
                source: "127.0.0.1".parse().unwrap(),
                device: None,
                target: addr,
                health: health.clone(),
            })
            .unwrap()
        };
        let good = mk(b"0123456789abcdef0123");
        let bad = mk(b"not the key at all!!");
        let (mut good_rx, mut bad_rx) = (good.subscribe(), bad.subscribe());
        tokio::spawn(good.run());
        tokio::spawn(bad.run());
        let up =
            tokio::time::timeout(std::time::Duration::from_secs(5), good_rx.wait_for(|h| h.state == HealthState::Up))
                .await
                // Drop the `Ref` at once: it holds the channel's read lock, and the prober's next publish would
                // block this single-threaded runtime.
                .is_ok_and(|r| r.is_ok());
        assert!(up, "prober with the right key never came up");
        let down =
            tokio::time::timeout(std::time::Duration::from_secs(5), bad_rx.wait_for(|h| h.state == HealthState::Down))
                .await
                .is_ok_and(|r| r.is_ok());
        assert!(down, "prober with a wrong key was not declared down");
        assert!(responders.counters[0].1.snapshot().bad_mac > 0);
    }
}
