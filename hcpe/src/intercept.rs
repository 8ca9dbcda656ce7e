//! The TUN driver around [`crate::nat`]: creates the TUN device, binds the local listeners on its addresses,
//! and runs one packet loop per TUN queue (read a batch, NAT it, write it back). Accepted connections come out
//! of [`Interceptor::accept`] together with their original flow.
//!
//! Invariants:
//! - the listeners are bound before the first packet is rewritten towards them;
//! - a NAT entry exists before its SYN is written back, so `accept` always finds the original destination
//!   (unless the entry expired in between, which is reported as an error and the socket is reset);
//! - offload (virtio-net header, GSO/GRO) and multi-queue are used when the kernel accepts them; when it does
//!   not, the device is rebuilt without them and the loop is the same;
//! - with offload a packet is never split, coalesced or copied: a GSO super-packet (up to 64 KiB) is rewritten
//!   in place and written back behind the very virtio-net header it came with, its TCP checksum partial
//!   before and after ([`TcpChecksum::Partial`]). This is what makes the path cost about a sixth of the CPU
//!   per Gbit of the per-segment path (hcpe_bench). An earlier loop split every super-packet with tun-rs's
//!   `recv_multiple` and re-coalesced with its GRO table on write; measured, nothing re-coalesced here (one
//!   write syscall per MTU segment, plus a software checksum per segment);
//! - a packet the kernel refuses on write is counted ([`TunCounters`]), never silently lost.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::Ordering;

use portable_atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tun_rs::{AsyncDevice, DeviceBuilder, VIRTIO_NET_HDR_LEN};

use crate::nat::{DropReason, FamilyConfig, Flow, Nat, NatConfig, NatCounters, TcpChecksum, Timeouts, Verdict};

/// Errors of the interception layer.
#[derive(Debug, thiserror::Error)]
pub enum InterceptError {
    /// The TUN device could not be created or configured.
    #[error("creating TUN device {name}: {source}")]
    Device { name: String, source: io::Error },
    /// A listener on the TUN address could not be bound.
    #[error("binding listener {addr}: {source}")]
    Listen { addr: SocketAddr, source: io::Error },
    /// Neither an IPv4 nor an IPv6 TUN address was configured.
    #[error("the TUN device needs an IPv4 or an IPv6 address")]
    NoAddress,
    /// A fake source pool does not fit in the TUN subnet.
    #[error("TUN subnet {0} leaves no room for fake source addresses")]
    PoolTooSmall(String),
}

/// What the TUN device looks like.
#[derive(Debug, Clone)]
pub struct TunSettings {
    pub name: String,
    /// Address and prefix length; the listener binds here and the fake pool is the rest of the subnet.
    pub ipv4: Option<(Ipv4Addr, u8)>,
    pub ipv6: Option<(Ipv6Addr, u8)>,
    pub mtu: u16,
    /// Port of the local listeners (0 = any free port).
    pub listen_port: u16,
    /// Try virtio-net header offload (GSO/GRO).
    pub offload: bool,
    /// Number of TUN queues (1 = no multi-queue).
    pub queues: usize,
    /// Upper bound on fake source addresses per family.
    pub max_pool_addresses: u32,
    pub timeouts: Timeouts,
}

/// Plain counters of the packet loops (all queues); the daemon logs them at shutdown.
#[derive(Debug, Default)]
pub struct TunCounters {
    /// Reads that returned a packet (a GSO super-packet counts once).
    pub reads: AtomicU64,
    /// Packets handed back to the kernel (refused ones are also in `write_errors`).
    pub writes: AtomicU64,
    /// Writes the kernel refused (the packet is lost; TCP retransmits it).
    pub write_errors: AtomicU64,
    /// Reads that failed with something other than "nothing to read".
    pub read_errors: AtomicU64,
}

/// A running interception: the TUN device with its packet loops, the listeners and the shared NAT.
pub struct Interceptor {
    nat: Arc<Mutex<Nat>>,
    listeners: Vec<TcpListener>,
    accepted: tokio::sync::mpsc::Receiver<io::Result<(TcpStream, SocketAddr)>>,
    tasks: JoinSet<()>,
    tun_counters: Arc<TunCounters>,
    /// Whether GSO/GRO offload is in use.
    pub offload: bool,
    /// Number of TUN queues in use.
    pub queues: usize,
    /// Interface index of the TUN device (routes point here).
    pub ifindex: u32,
}

/// Fake source pool: the addresses after the TUN address, up to the end of its subnet (IPv4 broadcast excluded).
fn pool_v4(addr: Ipv4Addr, prefix: u8, max: u32) -> Option<(IpAddr, u32)> {
    let host_bits = 32 - u32::from(prefix.min(32));
    let mask = if host_bits == 32 { 0 } else { u32::MAX << host_bits };
    let last = (u32::from(addr) & mask) | !mask; // broadcast
    let first = u32::from(addr).checked_add(1)?;
    let size = last.checked_sub(first)?.min(max);
    (size > 0).then_some((IpAddr::V4(Ipv4Addr::from(first)), size))
}

fn pool_v6(addr: Ipv6Addr, prefix: u8, max: u32) -> Option<(IpAddr, u32)> {
    let host_bits = 128 - u32::from(prefix.min(128));
    let mask = if host_bits == 128 { 0 } else { u128::MAX << host_bits };
    let last = (u128::from(addr) & mask) | !mask;
    let first = u128::from(addr).checked_add(1)?;
    let size = u32::try_from(last.checked_sub(first)?.saturating_add(1)).unwrap_or(u32::MAX).min(max);
    (size > 0).then_some((IpAddr::V6(Ipv6Addr::from(first)), size))
}

fn build_device(s: &TunSettings, offload: bool, multi_queue: bool) -> io::Result<AsyncDevice> {
    let mut b = DeviceBuilder::new().name(&s.name).mtu(s.mtu).offload(offload).multi_queue(multi_queue);
    if let Some((a, p)) = s.ipv4 {
        b = b.ipv4(a, p, None);
    }
    if let Some((a, p)) = s.ipv6 {
        b = b.ipv6(a, p);
    }
    b.build_async()
}

fn listener(addr: SocketAddr) -> Result<TcpListener, InterceptError> {
    let err = |source| InterceptError::Listen { addr, source };
    let domain = if addr.is_ipv6() { socket2::Domain::IPV6 } else { socket2::Domain::IPV4 };
    let sock = socket2::Socket::new(domain, socket2::Type::STREAM, Some(socket2::Protocol::TCP)).map_err(err)?;
    // Freebind: the TUN address may still be settling (IPv6) when we bind; packets only come once it is up.
    if addr.is_ipv6() {
        sock.set_only_v6(true).map_err(err)?;
        sock.set_freebind_v6(true).map_err(err)?;
    } else {
        sock.set_freebind_v4(true).map_err(err)?;
    }
    sock.set_reuse_address(true).map_err(err)?;
    sock.set_nonblocking(true).map_err(err)?;
    sock.bind(&addr.into()).map_err(err)?;
    sock.listen(4096).map_err(err)?;
    TcpListener::from_std(sock.into()).map_err(err)
}

/// Loose reverse-path filtering on the TUN device: packets written back towards the client carry the original
/// destination as source, which strict mode would drop because that address routes via an uplink.
fn loosen_rp_filter(name: &str) {
    let path = format!("/proc/sys/net/ipv4/conf/{name}/rp_filter");
    if let Err(e) = std::fs::write(&path, "2") {
        tracing::warn!(%path, error = %e, "could not set loose rp_filter on the TUN device");
    }
}

impl Interceptor {
    /// Creates the TUN device, binds the listeners and starts the packet loops.
    pub async fn start(s: &TunSettings) -> Result<Interceptor, InterceptError> {
        if s.ipv4.is_none() && s.ipv6.is_none() {
            return Err(InterceptError::NoAddress);
        }
        let queues = s.queues.max(1);
        let attempts = [(s.offload, queues > 1), (false, queues > 1), (s.offload, false), (false, false)];
        let mut last_err = None;
        let mut device = None;
        for (offload, mq) in attempts {
            match build_device(s, offload, mq) {
                Ok(d) => {
                    device = Some((d, mq));
                    break;
                }
                Err(e) => {
                    tracing::info!(offload, multi_queue = mq, error = %e, "TUN device setup failed, falling back");
                    last_err = Some(e);
                }
            }
        }
        let Some((device, mq)) = device else {
            return Err(InterceptError::Device { name: s.name.clone(), source: last_err.expect("tried") });
        };
        let dev_err = |source| InterceptError::Device { name: s.name.clone(), source };
        let ifindex = device.if_index().map_err(dev_err)?;
        let offload = device.tcp_gso();
        loosen_rp_filter(&s.name);

        let mut listeners = Vec::new();
        let mut first = [0u8; 8];
        // Without randomness the round-robin starts at 0; only a restart within a minute can then hit TIME_WAIT.
        let _ = getrandom::fill(&mut first);
        let mut nat_cfg =
            NatConfig { v4: None, v6: None, timeouts: s.timeouts, first_endpoint: u64::from_le_bytes(first) };
        let ports = (1024, 65535);
        if let Some((a, p)) = s.ipv4 {
            let l = listener(SocketAddr::new(a.into(), s.listen_port))?;
            let (pool_start, pool_size) =
                pool_v4(a, p, s.max_pool_addresses).ok_or_else(|| InterceptError::PoolTooSmall(format!("{a}/{p}")))?;
            nat_cfg.v4 =
                Some(FamilyConfig { listener: l.local_addr().map_err(dev_err)?, pool_start, pool_size, ports });
            listeners.push(l);
        }
        if let Some((a, p)) = s.ipv6 {
            let l = listener(SocketAddr::new(a.into(), s.listen_port))?;
            let (pool_start, pool_size) =
                pool_v6(a, p, s.max_pool_addresses).ok_or_else(|| InterceptError::PoolTooSmall(format!("{a}/{p}")))?;
            nat_cfg.v6 =
                Some(FamilyConfig { listener: l.local_addr().map_err(dev_err)?, pool_start, pool_size, ports });
            listeners.push(l);
        }
        let nat = Arc::new(Mutex::new(Nat::new(nat_cfg)));

        let mut tasks = JoinSet::new();
        let mut devices = vec![Arc::new(device)];
        if mq {
            for _ in 1..queues {
                match devices[0].try_clone() {
                    Ok(d) => devices.push(Arc::new(d)),
                    Err(e) => {
                        tracing::info!(error = %e, "extra TUN queue unavailable");
                        break;
                    }
                }
            }
        }
        let queues = devices.len();
        let tun_counters = Arc::new(TunCounters::default());
        for dev in devices {
            let nat = nat.clone();
            let counters = tun_counters.clone();
            let mtu = usize::from(s.mtu);
            tasks.spawn(async move {
                if let Err(e) = packet_loop(dev, nat, mtu, &counters).await {
                    tracing::error!(error = %e, "TUN packet loop stopped");
                }
            });
        }
        {
            let nat = nat.clone();
            tasks.spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs(1));
                loop {
                    tick.tick().await;
                    let n = nat.lock().expect("nat lock").expire(Instant::now());
                    if n > 0 {
                        tracing::trace!(expired = n, "NAT entries expired");
                    }
                }
            });
        }
        // One accept task per listener feeding a channel, so callers have a single `accept`.
        let (tx, accepted) = tokio::sync::mpsc::channel(1024);
        let listeners_for_tasks = std::mem::take(&mut listeners);
        let mut kept = Vec::new();
        for l in listeners_for_tasks {
            let local = l.local_addr().map_err(dev_err)?;
            kept.push(local);
            let tx = tx.clone();
            tasks.spawn(async move {
                loop {
                    let r = l.accept().await;
                    let backoff = r.is_err();
                    if tx.send(r).await.is_err() {
                        return;
                    }
                    if backoff {
                        // EMFILE and friends: don't spin.
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            });
        }
        tracing::info!(name = %s.name, ifindex, offload, queues, listeners = ?kept, "TUN interception up");
        Ok(Interceptor { nat, listeners, accepted, tasks, tun_counters, offload, queues, ifindex })
    }

    /// Next connection accepted on the TUN listeners with the flow the client originally opened.
    /// `Ok((stream, None))` means the NAT entry vanished before accept; the caller should reset the stream.
    pub async fn accept(&mut self) -> io::Result<(TcpStream, Option<Flow>)> {
        let (stream, peer) = self.accepted.recv().await.ok_or_else(|| io::Error::other("interceptor stopped"))??;
        let flow = self.nat.lock().expect("nat lock").lookup(peer);
        Ok((stream, flow))
    }

    /// Current flow count of the NAT table.
    pub fn flows(&self) -> usize {
        self.nat.lock().expect("nat lock").len()
    }

    pub fn counters(&self) -> NatCounters {
        self.nat.lock().expect("nat lock").counters().clone()
    }

    /// The packet loops' counters.
    pub fn tun_counters(&self) -> &TunCounters {
        &self.tun_counters
    }

    /// Shared NAT handle (for the admin API).
    pub fn nat(&self) -> Arc<Mutex<Nat>> {
        self.nat.clone()
    }

    /// Stops the packet loops and closes the device (the kernel removes a non-persistent TUN on close).
    pub async fn shutdown(mut self) {
        tracing::info!(flows = self.flows(), counters = ?self.counters(), "NAT at shutdown");
        tracing::info!(counters = ?self.tun_counters, "TUN at shutdown");
        self.tasks.shutdown().await;
        self.listeners.clear();
    }
}

/// Packets read per wakeup before the NAT lock is taken once for all of them.
const BATCH: usize = 16;
/// `flags` bit of the virtio-net header: the TCP checksum is partial (CHECKSUM_PARTIAL).
const VNET_F_NEEDS_CSUM: u8 = 1;

/// What the virtio-net header in front of each packet says about its TCP checksum. The header (10 bytes,
/// host byte order, `struct virtio_net_hdr` of linux/virtio_net.h) is read by hand because tun-rs keeps its
/// decoder doc-hidden; everything but the checksum fields is written back untouched.
fn vnet_checksum(hdr: &[u8]) -> TcpChecksum {
    if hdr[0] & VNET_F_NEEDS_CSUM == 0 {
        return TcpChecksum::Complete;
    }
    TcpChecksum::Partial { start: u16::from_ne_bytes([hdr[6], hdr[7]]), offset: u16::from_ne_bytes([hdr[8], hdr[9]]) }
}

/// One TUN queue: wait until readable, read up to [`BATCH`] packets without blocking, rewrite them under one
/// NAT lock, write each back. With offload every read is one whole packet behind its virtio-net header,
/// often a GSO super-packet of up to 64 KiB: it is rewritten in place and written back as it came (same
/// header, checksum still partial), so the kernel segments it only if it ever has to. Nothing is split,
/// coalesced or allocated per packet.
async fn packet_loop(
    dev: Arc<AsyncDevice>,
    nat: Arc<Mutex<Nat>>,
    mtu: usize,
    counters: &TunCounters,
) -> io::Result<()> {
    let hdr = if dev.tcp_gso() { VIRTIO_NET_HDR_LEN } else { 0 };
    let buf_len = if hdr > 0 { hdr + 65535 } else { mtu.max(1280) + 64 };
    let mut bufs: Vec<Vec<u8>> = vec![vec![0u8; buf_len]; BATCH];
    let mut sizes = [0usize; BATCH];
    let mut forward = [false; BATCH];
    let mut resets: Vec<Vec<u8>> = Vec::new();
    loop {
        let mut n = 0;
        while n < BATCH {
            let r = if n == 0 { dev.recv(&mut bufs[0]).await } else { dev.try_recv(&mut bufs[n]) };
            match r {
                Ok(len) if len > hdr => {
                    sizes[n] = len;
                    n += 1;
                }
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.raw_os_error() == Some(libc::EBADFD) || e.raw_os_error() == Some(libc::EBADF) => {
                    return Err(e);
                }
                Err(e) => {
                    counters.read_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(error = %e, "TUN read");
                    break;
                }
            }
        }
        counters.reads.fetch_add(n as u64, Ordering::Relaxed);
        {
            let now = Instant::now();
            let mut nat = nat.lock().expect("nat lock");
            for i in 0..n {
                let (head, packet) = bufs[i][..sizes[i]].split_at_mut(hdr);
                let csum = if hdr > 0 { vnet_checksum(head) } else { TcpChecksum::Complete };
                forward[i] = match nat.process_with(packet, csum, now) {
                    Verdict::Forward => true,
                    Verdict::Drop(DropReason::NoFlow) => {
                        if let Some(mut rst) = nat.reset_for(packet) {
                            // Rare (flows unknown after a restart): a complete checksum, empty virtio header.
                            rst.splice(0..0, std::iter::repeat_n(0u8, hdr));
                            resets.push(rst);
                        }
                        false
                    }
                    Verdict::Drop(_) => false,
                };
            }
        }
        for i in (0..n).filter(|&i| forward[i]) {
            if let Err(e) = dev.send(&bufs[i][..sizes[i]]).await {
                let errors = counters.write_errors.fetch_add(1, Ordering::Relaxed);
                if errors.is_power_of_two() || errors == 0 {
                    tracing::warn!(error = %e, errors = errors + 1, len = sizes[i], "TUN write refused, packet lost");
                }
                if e.raw_os_error() == Some(libc::EBADFD) || e.raw_os_error() == Some(libc::EBADF) {
                    return Err(e);
                }
            }
        }
        counters.writes.fetch_add(forward[..n].iter().filter(|f| **f).count() as u64, Ordering::Relaxed);
        for rst in resets.drain(..) {
            let _ = dev.send(&rst).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v4_pool_is_the_rest_of_the_subnet_without_broadcast() {
        let (start, size) = pool_v4("10.255.0.1".parse().unwrap(), 24, u32::MAX).unwrap();
        assert_eq!(start, "10.255.0.2".parse::<IpAddr>().unwrap());
        assert_eq!(size, 253); // .2 ..= .254
        assert_eq!(pool_v4("10.255.0.1".parse().unwrap(), 24, 16).unwrap().1, 16);
        assert!(pool_v4("10.255.0.1".parse().unwrap(), 31, u32::MAX).is_none());
    }

    #[test]
    fn v6_pool_is_capped() {
        let (start, size) = pool_v6("fd00::1".parse().unwrap(), 64, 256).unwrap();
        assert_eq!(start, "fd00::2".parse::<IpAddr>().unwrap());
        assert_eq!(size, 256);
        assert_eq!(pool_v6("fd00::1".parse().unwrap(), 126, 256).unwrap().1, 2);
    }
}
