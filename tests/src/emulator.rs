//! Userspace link emulator: bridges two interfaces of a namespace with per-direction rate,
//! delay, jitter, loss, "cut" (blackhole, carrier stays up) and carrier down. Hand-written
//! because this kernel has no netem and no crate does this.
//!
//! Design: one `AF_PACKET` raw socket per interface, opened by a thread that entered the link
//! namespace (the sockets stay in that namespace; the worker threads themselves never enter
//! it, so they do not pin it). One worker thread per direction receives frames on one
//! interface, runs them through the shaping model and sends them out of the other interface
//! when they are due.
//!
//! Invariants:
//! - Frames leave in arrival order (jitter never reorders: a frame is never due before the one
//!   ahead of it), so TCP sees delay variation but no reordering.
//! - Parameters live in atomics ([`LinkEmulator::set`], [`LinkEmulator::cut`], ...) and apply to
//!   the next frame that arrives; frames already queued keep their schedule.
//! - Offloaded super-frames (veth TSO/GSO, up to 64 KiB) are carried whole with their
//!   `virtio_net_hdr` (`PACKET_VNET_HDR`), which also keeps partial checksums valid. Rate and
//!   counters account for their on-wire size (one header per segment). While a direction has
//!   loss or a rate configured, TCP super-frames are split into MTU-sized segments with full
//!   checksums (what the NIC would do), so loss and tail drop hit single segments and segments
//!   are paced one by one; other super-frames are lost whole with the probability that any of
//!   their segments would be. Unshaped directions pass super-frames whole (fast).
//!   [`disable_offloads`] makes the senders segment instead.
//! - The model: arrival -> cut? -> loss? -> tail drop if the rate queue holds more than
//!   `queue_bytes` -> serialization at `rate` -> + delay + jitter -> send.

use crate::netns::Netns;
use std::collections::VecDeque;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Errors of the link emulator.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Opening or configuring a packet socket failed.
    #[error("packet socket on {ifname}: {source}")]
    Socket {
        /// Interface name.
        ifname: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// A namespace operation failed.
    #[error(transparent)]
    Netns(#[from] crate::netns::Error),
}

/// Direction through a link: `Up` is from interface `a` to `b` (in the testbed: cpe -> hag),
/// `Down` the reverse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// a -> b (cpe -> hag).
    Up,
    /// b -> a (hag -> cpe).
    Down,
}

/// Shaping of one direction. `Shape::default()` is an ideal link (no limit, no delay).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Shape {
    /// Rate in bit/s on the wire (Ethernet frames); `None` = unlimited.
    pub rate_bps: Option<u64>,
    /// Fixed one-way delay.
    pub delay: Duration,
    /// Jitter: each frame gets an extra uniform random delay in `[-jitter, +jitter]` (never
    /// below zero total, never reordering).
    pub jitter: Duration,
    /// Loss probability per packet, 0.0..=1.0.
    pub loss: f64,
    /// Limit of the rate queue in bytes (tail drop beyond). `None` = 50 ms at the rate, at
    /// least 256 KiB.
    pub queue_bytes: Option<u64>,
}

impl Default for Shape {
    fn default() -> Self {
        Shape { rate_bps: None, delay: Duration::ZERO, jitter: Duration::ZERO, loss: 0.0, queue_bytes: None }
    }
}

impl Shape {
    /// A link limited to `mbit` Mbit/s.
    pub fn mbit(mbit: f64) -> Shape {
        Shape { rate_bps: Some((mbit * 1e6) as u64), ..Shape::default() }
    }
    /// With a one-way delay in milliseconds.
    pub fn delay_ms(mut self, ms: f64) -> Shape {
        self.delay = Duration::from_secs_f64(ms / 1e3);
        self
    }
    /// With jitter in milliseconds.
    pub fn jitter_ms(mut self, ms: f64) -> Shape {
        self.jitter = Duration::from_secs_f64(ms / 1e3);
        self
    }
    /// With a loss probability (0.01 = 1 %).
    pub fn loss(mut self, p: f64) -> Shape {
        self.loss = p;
        self
    }
    /// With an explicit queue limit in bytes.
    pub fn queue_bytes(mut self, bytes: u64) -> Shape {
        self.queue_bytes = Some(bytes);
        self
    }
}

/// A snapshot of one direction's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// Packets (segments) that arrived at the emulator.
    pub rx_packets: u64,
    /// Bytes (on-wire Ethernet frames) that arrived.
    pub rx_bytes: u64,
    /// Packets delivered out of the other side.
    pub tx_packets: u64,
    /// Bytes delivered.
    pub tx_bytes: u64,
    /// Frames delivered as the emulator handled them: an offloaded super-frame counts once
    /// (equals `tx_packets` when offloads are off).
    pub tx_frames: u64,
    /// Packets dropped by random loss.
    pub drop_loss: u64,
    /// Packets dropped because the link was cut.
    pub drop_cut: u64,
    /// Packets dropped because the rate queue was full.
    pub drop_queue: u64,
    /// Packets that could not be sent (carrier down, socket error).
    pub drop_send: u64,
}

impl Counters {
    /// All drops added up.
    pub fn dropped(&self) -> u64 {
        self.drop_loss + self.drop_cut + self.drop_queue + self.drop_send
    }
    /// Field-wise difference `self - earlier` (counters since a previous snapshot).
    pub fn since(&self, earlier: &Counters) -> Counters {
        Counters {
            rx_packets: self.rx_packets - earlier.rx_packets,
            rx_bytes: self.rx_bytes - earlier.rx_bytes,
            tx_packets: self.tx_packets - earlier.tx_packets,
            tx_bytes: self.tx_bytes - earlier.tx_bytes,
            tx_frames: self.tx_frames - earlier.tx_frames,
            drop_loss: self.drop_loss - earlier.drop_loss,
            drop_cut: self.drop_cut - earlier.drop_cut,
            drop_queue: self.drop_queue - earlier.drop_queue,
            drop_send: self.drop_send - earlier.drop_send,
        }
    }
}

#[derive(Default)]
struct AtomicCounters {
    rx_packets: AtomicU64,
    rx_bytes: AtomicU64,
    tx_packets: AtomicU64,
    tx_bytes: AtomicU64,
    tx_frames: AtomicU64,
    drop_loss: AtomicU64,
    drop_cut: AtomicU64,
    drop_queue: AtomicU64,
    drop_send: AtomicU64,
}

impl AtomicCounters {
    fn snapshot(&self) -> Counters {
        Counters {
            rx_packets: self.rx_packets.load(Ordering::Relaxed),
            rx_bytes: self.rx_bytes.load(Ordering::Relaxed),
            tx_packets: self.tx_packets.load(Ordering::Relaxed),
            tx_bytes: self.tx_bytes.load(Ordering::Relaxed),
            tx_frames: self.tx_frames.load(Ordering::Relaxed),
            drop_loss: self.drop_loss.load(Ordering::Relaxed),
            drop_cut: self.drop_cut.load(Ordering::Relaxed),
            drop_queue: self.drop_queue.load(Ordering::Relaxed),
            drop_send: self.drop_send.load(Ordering::Relaxed),
        }
    }
}

/// Live parameters of one direction (read per frame by the worker).
#[derive(Default)]
struct DirParams {
    rate_bps: AtomicU64,
    delay_ns: AtomicU64,
    jitter_ns: AtomicU64,
    loss_bits: AtomicU64,
    queue_bytes: AtomicU64,
    cut: AtomicBool,
}

impl DirParams {
    fn store(&self, s: &Shape) {
        self.rate_bps.store(s.rate_bps.unwrap_or(0), Ordering::Relaxed);
        self.delay_ns.store(s.delay.as_nanos() as u64, Ordering::Relaxed);
        self.jitter_ns.store(s.jitter.as_nanos() as u64, Ordering::Relaxed);
        self.loss_bits.store(s.loss.clamp(0.0, 1.0).to_bits(), Ordering::Relaxed);
        self.queue_bytes.store(s.queue_bytes.unwrap_or(0), Ordering::Relaxed);
    }
    fn load(&self) -> Shape {
        let rate = self.rate_bps.load(Ordering::Relaxed);
        let q = self.queue_bytes.load(Ordering::Relaxed);
        Shape {
            rate_bps: (rate != 0).then_some(rate),
            delay: Duration::from_nanos(self.delay_ns.load(Ordering::Relaxed)),
            jitter: Duration::from_nanos(self.jitter_ns.load(Ordering::Relaxed)),
            loss: f64::from_bits(self.loss_bits.load(Ordering::Relaxed)),
            queue_bytes: (q != 0).then_some(q),
        }
    }
}

struct DirShared {
    params: DirParams,
    counters: AtomicCounters,
    /// Worker loop iterations, so [`LinkEmulator::cut`] can wait until a cut is in force.
    iterations: AtomicU64,
}

/// Configuration of a link: shape per direction and the RNG seed (loss, jitter).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LinkConfig {
    /// a -> b.
    pub up: Shape,
    /// b -> a.
    pub down: Shape,
    /// Seed for the per-direction random generators (runs are reproducible for a seed).
    pub seed: u64,
}

impl Default for LinkConfig {
    fn default() -> Self {
        LinkConfig { up: Shape::default(), down: Shape::default(), seed: 1 }
    }
}

impl LinkConfig {
    /// The same shape both ways.
    pub fn symmetric(shape: Shape) -> LinkConfig {
        LinkConfig { up: shape, down: shape, ..LinkConfig::default() }
    }
}

/// A running emulator between interfaces `a` and `b` of one namespace. Stops on drop (drop it
/// before the namespace).
pub struct LinkEmulator {
    ns: String,
    if_a: String,
    dirs: [Arc<DirShared>; 2],
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for LinkEmulator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LinkEmulator").field("ns", &self.ns).field("if_a", &self.if_a).finish()
    }
}

impl LinkEmulator {
    /// Starts bridging `if_a` <-> `if_b` of `ns` (both must exist and be up).
    pub fn start(ns: &Netns, if_a: &str, if_b: &str, cfg: LinkConfig) -> Result<LinkEmulator, Error> {
        let (sa, sb) = ns.within(|| -> Result<(OwnedFd, OwnedFd), Error> {
            Ok((open_packet_socket(if_a)?, open_packet_socket(if_b)?))
        })??;
        let sa = Arc::new(sa);
        let sb = Arc::new(sb);
        let mk = |s: &Shape| {
            let d = DirShared {
                params: DirParams::default(),
                counters: AtomicCounters::default(),
                iterations: AtomicU64::new(0),
            };
            d.params.store(s);
            Arc::new(d)
        };
        let dirs = [mk(&cfg.up), mk(&cfg.down)];
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for (i, (rx, tx)) in [(sa.clone(), sb.clone()), (sb, sa)].into_iter().enumerate() {
            let shared = dirs[i].clone();
            let stop = stop.clone();
            let seed = cfg.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(i as u64 + 1);
            let name = format!("emu-{}-{}", ns.name(), if i == 0 { "up" } else { "down" });
            threads.push(
                std::thread::Builder::new()
                    .name(name)
                    .spawn(move || worker(&rx, &tx, &shared, &stop, seed))
                    .expect("spawn emulator thread"),
            );
        }
        Ok(LinkEmulator { ns: ns.name().to_string(), if_a: if_a.to_string(), dirs, stop, threads })
    }

    fn dir(&self, d: Direction) -> &DirShared {
        &self.dirs[match d {
            Direction::Up => 0,
            Direction::Down => 1,
        }]
    }

    /// Changes one direction's shape, live (applies to frames arriving from now on).
    pub fn set(&self, d: Direction, shape: Shape) {
        self.dir(d).params.store(&shape);
    }

    /// Changes both directions' shapes, live.
    pub fn set_both(&self, shape: Shape) {
        self.set(Direction::Up, shape);
        self.set(Direction::Down, shape);
    }

    /// The current shape of a direction.
    pub fn shape(&self, d: Direction) -> Shape {
        self.dir(d).params.load()
    }

    /// Blackholes the link both ways: every frame is silently dropped, also those already
    /// queued, carrier stays up (the realistic DSL failure: nothing tells the endpoints). When
    /// this returns, nothing more gets through.
    pub fn cut(&self) {
        for d in &self.dirs {
            d.params.cut.store(true, Ordering::SeqCst);
        }
        // Wait until each worker has started a new loop iteration: sends of an iteration that
        // read the flag before it was set are over by then.
        let seen: Vec<u64> = self.dirs.iter().map(|d| d.iterations.load(Ordering::SeqCst)).collect();
        let deadline = Instant::now() + Duration::from_millis(200);
        while Instant::now() < deadline
            && self.dirs.iter().zip(&seen).any(|(d, &k)| d.iterations.load(Ordering::SeqCst) <= k)
        {
            std::thread::sleep(Duration::from_micros(200));
        }
    }

    /// Cuts (`true`) or restores one direction only (an asymmetric failure). Unlike
    /// [`cut`](Self::cut) it does not wait for frames in flight.
    pub fn set_cut(&self, d: Direction, cut: bool) {
        self.dir(d).params.cut.store(cut, Ordering::SeqCst);
    }

    /// Undoes [`cut`](Self::cut).
    pub fn restore(&self) {
        for d in &self.dirs {
            d.params.cut.store(false, Ordering::Relaxed);
        }
    }

    /// Whether the link is cut.
    pub fn is_cut(&self) -> bool {
        self.dirs[0].params.cut.load(Ordering::Relaxed)
    }

    /// Carrier: `false` sets interface `a` (the cpe-facing one) down, so its peer reports
    /// NO-CARRIER; `true` brings it back. The far end (`b`'s peer) notices nothing.
    pub fn set_carrier(&self, up: bool) -> Result<(), Error> {
        let out = std::process::Command::new("ip")
            .args(["-n", &self.ns, "link", "set", "dev", &self.if_a, if up { "up" } else { "down" }])
            .output()
            .map_err(|source| crate::netns::Error::Spawn { cmd: "ip link set".into(), source })?;
        if !out.status.success() {
            return Err(crate::netns::Error::Failed {
                cmd: format!("ip -n {} link set {}", self.ns, self.if_a),
                status: out.status.to_string(),
                stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            }
            .into());
        }
        Ok(())
    }

    /// Counters of one direction since start.
    pub fn counters(&self, d: Direction) -> Counters {
        self.dir(d).counters.snapshot()
    }
}

impl Drop for LinkEmulator {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Packet sockets
// ---------------------------------------------------------------------------------------------

const SOL_PACKET: i32 = 263;
const PACKET_ADD_MEMBERSHIP: i32 = 1;
const PACKET_MR_PROMISC: u16 = 1;
const PACKET_VNET_HDR: i32 = 15;
const PACKET_IGNORE_OUTGOING: i32 = 23;
const PACKET_OUTGOING: u8 = 4;
/// `struct virtio_net_hdr` (without num_buffers), prepended by `PACKET_VNET_HDR`.
const VNET_HDR_LEN: usize = 10;
const VIRTIO_NET_HDR_GSO_NONE: u8 = 0;

fn setsockopt_int(fd: RawFd, level: i32, name: i32, v: i32) -> std::io::Result<()> {
    // SAFETY: passing a valid int pointer and its size.
    let r =
        unsafe { libc::setsockopt(fd, level, name, (&v as *const i32).cast(), size_of::<i32>() as libc::socklen_t) };
    if r == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) }
}

/// Opens a raw packet socket bound to `ifname` in the calling thread's namespace.
fn open_packet_socket(ifname: &str) -> Result<OwnedFd, Error> {
    let err = |source| Error::Socket { ifname: ifname.to_string(), source };
    let cname = std::ffi::CString::new(ifname).map_err(|e| err(std::io::Error::other(e)))?;
    // SAFETY: valid C string.
    let ifindex = unsafe { libc::if_nametoindex(cname.as_ptr()) };
    if ifindex == 0 {
        return Err(err(std::io::Error::last_os_error()));
    }
    // Protocol 0 until bound, so no frames of other interfaces are queued meanwhile.
    // SAFETY: plain socket(2).
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(err(std::io::Error::last_os_error()));
    }
    // SAFETY: fd is a fresh, owned descriptor.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let raw = fd.as_raw_fd();
    setsockopt_int(raw, SOL_PACKET, PACKET_VNET_HDR, 1).map_err(err)?;
    setsockopt_int(raw, SOL_PACKET, PACKET_IGNORE_OUTGOING, 1).map_err(err)?;
    let _ = setsockopt_int(raw, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, 8 << 20);
    let _ = setsockopt_int(raw, libc::SOL_SOCKET, libc::SO_SNDBUFFORCE, 8 << 20);
    // SAFETY: zeroed sockaddr_ll is valid; fields set below.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = (libc::ETH_P_ALL as u16).to_be();
    sll.sll_ifindex = ifindex as i32;
    // SAFETY: binding with a correctly sized sockaddr_ll.
    let r =
        unsafe { libc::bind(raw, (&sll as *const libc::sockaddr_ll).cast(), size_of::<libc::sockaddr_ll>() as u32) };
    if r != 0 {
        return Err(err(std::io::Error::last_os_error()));
    }
    #[repr(C)]
    struct PacketMreq {
        mr_ifindex: i32,
        mr_type: u16,
        mr_alen: u16,
        mr_address: [u8; 8],
    }
    let mreq = PacketMreq { mr_ifindex: ifindex as i32, mr_type: PACKET_MR_PROMISC, mr_alen: 0, mr_address: [0; 8] };
    // SAFETY: valid packet_mreq pointer and size.
    let r = unsafe {
        libc::setsockopt(
            raw,
            SOL_PACKET,
            PACKET_ADD_MEMBERSHIP,
            (&mreq as *const PacketMreq).cast(),
            size_of::<PacketMreq>() as u32,
        )
    };
    if r != 0 {
        return Err(err(std::io::Error::last_os_error()));
    }
    Ok(fd)
}

// ---------------------------------------------------------------------------------------------
// Worker
// ---------------------------------------------------------------------------------------------

/// splitmix64: small, seedable, good enough for loss and jitter.
struct Rng(u64);
impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

struct Queued {
    due: Instant,
    frame: Vec<u8>,
    segs: u64,
    wire: u64,
}

/// Offsets in an Ethernet frame carrying TCP: (IP header, TCP header, payload, IPv6?).
/// `None` for anything else (VLAN tags, IPv6 extension headers, non-TCP).
fn tcp_offsets(eth: &[u8]) -> Option<(usize, usize, usize, bool)> {
    if eth.len() < 14 {
        return None;
    }
    let ethertype = u16::from_be_bytes([eth[12], eth[13]]);
    let l3 = 14;
    let (l4, v6) = match ethertype {
        0x0800 => {
            let ihl = usize::from(*eth.get(l3)? & 0x0f) * 4;
            if ihl < 20 || *eth.get(l3 + 9)? != 6 {
                return None;
            }
            (l3 + ihl, false)
        }
        0x86dd => {
            if *eth.get(l3 + 6)? != 6 {
                return None;
            }
            (l3 + 40, true)
        }
        _ => return None,
    };
    let doff = usize::from(*eth.get(l4 + 12)? >> 4) * 4;
    if doff < 20 || eth.len() < l4 + doff {
        return None;
    }
    Some((l3, l4, l4 + doff, v6))
}

/// (segments, on-wire bytes) of a frame with its vnet header.
fn wire_size(frame: &[u8]) -> (u64, u64) {
    let eth = &frame[VNET_HDR_LEN..];
    let len = eth.len() as u64;
    let gso_type = frame[1] & !VIRTIO_NET_HDR_GSO_ECN;
    let gso_size = u64::from(u16::from_le_bytes([frame[4], frame[5]]));
    if gso_type == VIRTIO_NET_HDR_GSO_NONE || gso_size == 0 {
        return (1, len);
    }
    let hdr_len = match tcp_offsets(eth) {
        Some((_, _, payload, _)) => payload as u64,
        None => u64::from(u16::from_le_bytes([frame[2], frame[3]])),
    };
    if hdr_len == 0 || hdr_len >= len {
        return (1, len);
    }
    let segs = (len - hdr_len).div_ceil(gso_size).max(1);
    (segs, len + (segs - 1) * hdr_len)
}

const VIRTIO_NET_HDR_GSO_TCPV4: u8 = 1;
const VIRTIO_NET_HDR_GSO_TCPV6: u8 = 4;
const VIRTIO_NET_HDR_GSO_ECN: u8 = 0x80;

fn csum_add(mut sum: u32, data: &[u8]) -> u32 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [b] = chunks.remainder() {
        sum += u32::from(*b) << 8;
    }
    sum
}

fn csum_fold(mut sum: u32) -> u16 {
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Splits an offloaded TCP super-frame (with vnet header) into MTU-sized frames with complete
/// checksums and an empty vnet header, as the NIC would have: so loss hits single segments.
/// `None` if the frame is not a TCP super-frame this understands (then it stays whole).
fn segment(frame: &[u8]) -> Option<Vec<Vec<u8>>> {
    let gso_type = frame[1] & !VIRTIO_NET_HDR_GSO_ECN;
    if gso_type != VIRTIO_NET_HDR_GSO_TCPV4 && gso_type != VIRTIO_NET_HDR_GSO_TCPV6 {
        return None;
    }
    let mss = usize::from(u16::from_le_bytes([frame[4], frame[5]]));
    let eth = &frame[VNET_HDR_LEN..];
    let (l3, l4, payload_off, v6) = tcp_offsets(eth)?;
    if mss == 0 || v6 != (gso_type == VIRTIO_NET_HDR_GSO_TCPV6) {
        return None;
    }
    let payload = &eth[payload_off..];
    if payload.is_empty() {
        return None;
    }
    let n = payload.len().div_ceil(mss);
    let seq0 = u32::from_be_bytes(eth[l4 + 4..l4 + 8].try_into().ok()?);
    let id0 = u16::from_be_bytes([eth[l3 + 4], eth[l3 + 5]]);
    let flags0 = eth[l4 + 13];
    let tcp_hlen = payload_off - l4;
    let mut out = Vec::with_capacity(n);
    for (i, chunk) in payload.chunks(mss).enumerate() {
        let mut f = Vec::with_capacity(VNET_HDR_LEN + payload_off + chunk.len());
        f.extend_from_slice(&[0u8; VNET_HDR_LEN]);
        f.extend_from_slice(&eth[..payload_off]);
        f.extend_from_slice(chunk);
        let e = &mut f[VNET_HDR_LEN..];
        let tcp_len = tcp_hlen + chunk.len();
        if v6 {
            e[l3 + 4..l3 + 6].copy_from_slice(&(tcp_len as u16).to_be_bytes());
        } else {
            let ihl = l4 - l3;
            e[l3 + 2..l3 + 4].copy_from_slice(&((ihl + tcp_len) as u16).to_be_bytes());
            e[l3 + 4..l3 + 6].copy_from_slice(&id0.wrapping_add(i as u16).to_be_bytes());
            e[l3 + 10..l3 + 12].copy_from_slice(&[0, 0]);
            let c = csum_fold(csum_add(0, &e[l3..l4]));
            e[l3 + 10..l3 + 12].copy_from_slice(&c.to_be_bytes());
        }
        let seq = seq0.wrapping_add((i * mss) as u32);
        e[l4 + 4..l4 + 8].copy_from_slice(&seq.to_be_bytes());
        let mut flags = flags0;
        if i + 1 < n {
            flags &= !(0x01 | 0x08); // FIN, PSH only on the last segment
        }
        if i > 0 {
            flags &= !0x80; // CWR only on the first
        }
        e[l4 + 13] = flags;
        e[l4 + 16..l4 + 18].copy_from_slice(&[0, 0]);
        let mut sum = if v6 {
            let mut s = csum_add(0, &e[l3 + 8..l3 + 40]);
            s = csum_add(s, &(tcp_len as u32).to_be_bytes());
            s + 6
        } else {
            let s = csum_add(0, &e[l3 + 12..l3 + 20]);
            s + 6 + tcp_len as u32
        };
        sum = csum_add(sum, &e[l4..]);
        let c = csum_fold(sum);
        e[l4 + 16..l4 + 18].copy_from_slice(&c.to_be_bytes());
        out.push(f);
    }
    Some(out)
}

fn worker(rx: &OwnedFd, tx: &OwnedFd, shared: &DirShared, stop: &AtomicBool, seed: u64) {
    // Precise wakeups for the delay queue.
    // SAFETY: prctl on the calling thread.
    unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1u64) };
    let mut rng = Rng(seed);
    let mut queue: VecDeque<Queued> = VecDeque::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut link_free_at = Instant::now();
    let mut last_due = Instant::now();
    let c = &shared.counters;
    let p = &shared.params;
    while !stop.load(Ordering::Relaxed) {
        shared.iterations.fetch_add(1, Ordering::SeqCst);
        let now = Instant::now();
        while queue.front().is_some_and(|q| q.due <= now) {
            let q = queue.pop_front().expect("front exists");
            if p.cut.load(Ordering::SeqCst) {
                // Cut means nothing gets through, also what was already in flight.
                c.drop_cut.fetch_add(q.segs, Ordering::Relaxed);
                continue;
            }
            // SAFETY: sending an owned buffer on a bound packet socket.
            let r = unsafe { libc::send(tx.as_raw_fd(), q.frame.as_ptr().cast(), q.frame.len(), 0) };
            if r < 0 {
                c.drop_send.fetch_add(q.segs, Ordering::Relaxed);
            } else {
                c.tx_packets.fetch_add(q.segs, Ordering::Relaxed);
                c.tx_bytes.fetch_add(q.wire, Ordering::Relaxed);
                c.tx_frames.fetch_add(1, Ordering::Relaxed);
            }
        }
        let timeout = match queue.front() {
            Some(q) => q.due.saturating_duration_since(Instant::now()),
            None => Duration::from_millis(20),
        };
        let ts = libc::timespec { tv_sec: timeout.as_secs() as i64, tv_nsec: timeout.subsec_nanos() as i64 };
        let mut pfd = libc::pollfd { fd: rx.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        // SAFETY: one valid pollfd, valid timespec, no signal mask.
        let n = unsafe { libc::ppoll(&mut pfd, 1, &ts, std::ptr::null()) };
        if n <= 0 {
            continue;
        }
        for _ in 0..256 {
            // SAFETY: zeroed sockaddr_ll is valid.
            let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            let mut fromlen = size_of::<libc::sockaddr_ll>() as libc::socklen_t;
            // SAFETY: receiving into an owned buffer with its length.
            let r = unsafe {
                libc::recvfrom(
                    rx.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    libc::MSG_DONTWAIT | libc::MSG_TRUNC,
                    (&mut from as *mut libc::sockaddr_ll).cast(),
                    &mut fromlen,
                )
            };
            if r < 0 {
                break; // EAGAIN, or ENETDOWN while the carrier is down (reported once)
            }
            let len = r as usize;
            if from.sll_pkttype == PACKET_OUTGOING || len <= VNET_HDR_LEN {
                continue;
            }
            if len > buf.len() {
                c.rx_packets.fetch_add(1, Ordering::Relaxed);
                c.drop_send.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            let arrival = Instant::now();
            let frame = &buf[..len];
            let (segs, wire) = wire_size(frame);
            c.rx_packets.fetch_add(segs, Ordering::Relaxed);
            c.rx_bytes.fetch_add(wire, Ordering::Relaxed);
            if p.cut.load(Ordering::Relaxed) {
                c.drop_cut.fetch_add(segs, Ordering::Relaxed);
                continue;
            }
            let s = p.load();
            // On a lossy or rate-limited direction, super-frames are split so loss and tail
            // drop hit single segments and the serialization paces segments like a real link.
            let split = s.loss > 0.0 || s.rate_bps.is_some();
            let units = if split && segs > 1 { segment(frame) } else { None };
            let units = units.unwrap_or_else(|| vec![frame.to_vec()]);
            for unit in units {
                let (segs, wire) = wire_size(&unit);
                if s.loss > 0.0 {
                    // A (remaining) super-frame is lost if any of its segments would be.
                    let p_frame = 1.0 - (1.0 - s.loss).powi(segs as i32);
                    if rng.unit() < p_frame {
                        c.drop_loss.fetch_add(segs, Ordering::Relaxed);
                        continue;
                    }
                }
                let mut ready = arrival;
                if let Some(rate) = s.rate_bps {
                    let start = link_free_at.max(arrival);
                    let backlog_bytes = (start - arrival).as_secs_f64() * rate as f64 / 8.0;
                    let limit = s.queue_bytes.unwrap_or(((rate as f64 / 8.0 * 0.05) as u64).max(256 * 1024));
                    if backlog_bytes > limit as f64 {
                        c.drop_queue.fetch_add(segs, Ordering::Relaxed);
                        continue;
                    }
                    link_free_at = start + Duration::from_secs_f64(wire as f64 * 8.0 / rate as f64);
                    ready = link_free_at;
                }
                let mut due = ready + s.delay;
                if !s.jitter.is_zero() {
                    let j = s.jitter.as_secs_f64() * (2.0 * rng.unit() - 1.0);
                    due = if j >= 0.0 {
                        due + Duration::from_secs_f64(j)
                    } else {
                        due.checked_sub(Duration::from_secs_f64(-j)).unwrap_or(due).max(ready)
                    };
                }
                due = due.max(last_due);
                last_due = due;
                queue.push_back(Queued { due, frame: unit, segs, wire });
            }
        }
    }
}

/// Disables TSO, GSO and GRO on `dev` inside `ns` (ethtool ioctl; no ethtool binary needed), so
/// the emulator sees MTU-sized frames and drops single segments.
pub fn disable_offloads(ns: &Netns, dev: &str) -> Result<(), Error> {
    const ETHTOOL_STSO: u32 = 0x1f;
    const ETHTOOL_SGSO: u32 = 0x24;
    const ETHTOOL_SGRO: u32 = 0x2c;
    #[repr(C)]
    struct EthtoolValue {
        cmd: u32,
        data: u32,
    }
    #[repr(C)]
    struct Ifreq {
        name: [u8; 16],
        data: *mut EthtoolValue,
        _pad: [u8; 16],
    }
    let dev = dev.to_string();
    ns.within(move || -> Result<(), Error> {
        let err = |source| Error::Socket { ifname: dev.clone(), source };
        // SAFETY: plain socket(2).
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(err(std::io::Error::last_os_error()));
        }
        // SAFETY: fresh owned fd.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        for cmd in [ETHTOOL_STSO, ETHTOOL_SGSO, ETHTOOL_SGRO] {
            let mut v = EthtoolValue { cmd, data: 0 };
            let mut ifr = Ifreq { name: [0; 16], data: &mut v, _pad: [0; 16] };
            let n = dev.len().min(15);
            ifr.name[..n].copy_from_slice(&dev.as_bytes()[..n]);
            // SAFETY: SIOCETHTOOL with a valid ifreq pointing at a valid ethtool_value.
            let r = unsafe { libc::ioctl(fd.as_raw_fd(), libc::SIOCETHTOOL, &mut ifr) };
            if r != 0 {
                return Err(err(std::io::Error::last_os_error()));
            }
        }
        Ok(())
    })?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_size_counts_one_header_per_segment() {
        let payload = vec![0u8; 3000];
        let mut f = super_frame(false, &payload, 1448);
        let len = (f.len() - VNET_HDR_LEN) as u64; // 14 + 20 + 20 + 3000
        // 3000 payload bytes -> 3 segments, 2 extra copies of the 54 header bytes.
        assert_eq!(wire_size(&f), (3, len + 2 * 54));
        f[1] = VIRTIO_NET_HDR_GSO_NONE;
        assert_eq!(wire_size(&f), (1, len));
    }

    /// A TCP super-frame as veth hands it over: vnet header with GSO, one big IP packet whose
    /// TCP checksum is not final.
    fn super_frame(v6: bool, payload: &[u8], mss: u16) -> Vec<u8> {
        use etherparse::PacketBuilder;
        let b = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]);
        let b = if v6 {
            b.ipv6(
                [0x20, 1, 0, 2, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 2],
                [0x20, 1, 0, 2, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 1],
                64,
            )
        } else {
            b.ipv4([198, 18, 2, 2], [198, 18, 2, 1], 64)
        };
        let b = b.tcp(40000, 5124, 1_000_000, 500).ack(77).psh().fin();
        let mut eth = Vec::new();
        b.write(&mut eth, payload).unwrap();
        eth[14 + if v6 { 40 } else { 20 } + 16] ^= 0x5a; // partial checksum: garbage here
        let mut f = vec![0u8; VNET_HDR_LEN];
        f[0] = 1; // NEEDS_CSUM
        f[1] = if v6 { VIRTIO_NET_HDR_GSO_TCPV6 } else { VIRTIO_NET_HDR_GSO_TCPV4 };
        f[4..6].copy_from_slice(&mss.to_le_bytes());
        f.extend_from_slice(&eth);
        f
    }

    #[test]
    fn segmentation_makes_valid_tcp_segments() {
        use etherparse::{SlicedPacket, TransportSlice};
        let payload: Vec<u8> = (0..3500u32).map(|i| (i * 7) as u8).collect();
        for v6 in [false, true] {
            let f = super_frame(v6, &payload, 1448);
            assert_eq!(wire_size(&f).0, 3);
            let segs = segment(&f).expect("TCP super-frame");
            assert_eq!(segs.len(), 3);
            let mut joined = Vec::new();
            for (i, s) in segs.iter().enumerate() {
                assert_eq!(s[..VNET_HDR_LEN], [0; VNET_HDR_LEN], "plain frames, no offload left");
                assert_eq!(wire_size(s), (1, (s.len() - VNET_HDR_LEN) as u64));
                let p = SlicedPacket::from_ethernet(&s[VNET_HDR_LEN..]).unwrap();
                let Some(etherparse::NetSlice::Ipv4(_) | etherparse::NetSlice::Ipv6(_)) = &p.net else { panic!() };
                let Some(TransportSlice::Tcp(tcp)) = &p.transport else { panic!("no tcp") };
                assert_eq!(tcp.sequence_number(), 1_000_000 + (i as u32) * 1448);
                assert_eq!(tcp.fin(), i == 2, "FIN only on the last segment");
                assert_eq!(tcp.psh(), i == 2);
                assert!(tcp.ack());
                let ok = match &p.net {
                    Some(etherparse::NetSlice::Ipv4(ip)) => {
                        let h = ip.header().to_header();
                        assert_eq!(h.header_checksum, h.calc_header_checksum(), "IPv4 header checksum");
                        tcp.to_header().calc_checksum_ipv4(&h, tcp.payload()).unwrap()
                    }
                    Some(etherparse::NetSlice::Ipv6(ip)) => {
                        tcp.to_header().calc_checksum_ipv6(&ip.header().to_header(), tcp.payload()).unwrap()
                    }
                    _ => unreachable!(),
                };
                assert_eq!(tcp.checksum(), ok, "TCP checksum of segment {i} (v6={v6})");
                joined.extend_from_slice(tcp.payload());
            }
            assert_eq!(joined, payload);
        }
    }

    #[test]
    fn garbage_frames_never_panic() {
        let mut r = Rng(5);
        for i in 0..20_000 {
            let len = VNET_HDR_LEN + 1 + (r.next_u64() % 200) as usize;
            let mut f: Vec<u8> = (0..len).map(|_| r.next_u64() as u8).collect();
            f[1] = [0, 1, 4, 0x81, 5][i % 5];
            if i % 3 == 0 && len > VNET_HDR_LEN + 14 {
                // Plausible ethertypes to get deeper into the parser.
                let et: [u8; 2] = if i % 2 == 0 { [0x08, 0] } else { [0x86, 0xdd] };
                f[VNET_HDR_LEN + 12..VNET_HDR_LEN + 14].copy_from_slice(&et);
            }
            let _ = wire_size(&f);
            if let Some(segs) = segment(&f) {
                assert!(!segs.is_empty());
            }
        }
    }

    #[test]
    fn rng_unit_is_uniform_enough() {
        let mut r = Rng(42);
        let n = 100_000;
        let below = (0..n).filter(|_| r.unit() < 0.1).count();
        assert!((9_000..11_000).contains(&below), "{below}");
    }

    #[test]
    fn shape_roundtrips_through_atomics() {
        let p = DirParams::default();
        let s = Shape::mbit(50.0).delay_ms(20.0).jitter_ms(2.0).loss(0.01).queue_bytes(100_000);
        p.store(&s);
        assert_eq!(p.load(), s);
        p.store(&Shape::default());
        assert_eq!(p.load(), Shape::default());
    }
}
