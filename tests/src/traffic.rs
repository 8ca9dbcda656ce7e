//! Traffic tools: a server (run it in `inet`) and a client (run it in `lan`) for bulk
//! download/upload of deterministic pseudo-random data verified by SHA-256 on both ends, many
//! request/response exchanges on one connection or on many short connections, and a progress
//! timeline (bytes per 100 ms) for stall measurements. Blocking std sockets, one thread per
//! connection: simple and plenty fast for a testbed.
//!
//! Protocol (client first): a 32-byte request `"TRF1" op u8 [0;3] size u64 seed u64 resp u32
//! count u32` (big-endian). Ops:
//! - download: server sends `size` bytes of `stream(seed)` then the SHA-256 of what it sent; a non-zero
//!   `resp` paces it at that many kbit/s (a video stream: a write every 10 ms).
//! - upload: client sends `size` bytes of `stream(seed)`; server answers the SHA-256 of what
//!   it received and one byte: 1 if it equals `stream(seed)`, else 0.
//! - rr: `count` times: client sends `size` bytes, server answers `resp` bytes.
//!
//! Invariant: a [`Transfer`] is only returned `Ok` if the receiver's hash equals the sender's
//! and the data equals the deterministic stream; otherwise the error says where it differed.
//!
//! ```no_run
//! use tests::traffic::{Client, Server};
//! # let tb = tests::testbed::Testbed::new(Default::default()).unwrap();
//! let server = Server::start(&tb.inet, 0).unwrap(); // dual-stack [::]:<free port>
//! let dst = std::net::SocketAddr::new(tests::testbed::addr::INET_SERVER.ip(false), server.port());
//! let t = tb.lan.within(move || Client::new(dst).download(10_000_000)).unwrap().unwrap();
//! println!("{:.1} Mbit/s, max stall {:?}", t.mbit_per_s(), t.timeline.max_stall());
//! ```

use crate::netns::Netns;
use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Errors of the traffic tools.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Socket error (connect, read, write, timeout).
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The OS error.
        source: std::io::Error,
    },
    /// The peer closed before the expected number of bytes.
    #[error("connection closed after {got} of {want} bytes")]
    Short {
        /// Bytes received.
        got: u64,
        /// Bytes expected.
        want: u64,
    },
    /// Received data differs from the deterministic stream.
    #[error("data corrupted: first difference at byte {offset}")]
    Corrupt {
        /// Offset of the first differing byte.
        offset: u64,
    },
    /// The two ends computed different SHA-256 digests.
    #[error("SHA-256 mismatch: sender {sender}, receiver {receiver}")]
    HashMismatch {
        /// Hex digest at the sender.
        sender: String,
        /// Hex digest at the receiver.
        receiver: String,
    },
    /// The server rejected the request or answered garbage.
    #[error("protocol: {0}")]
    Protocol(String),
    /// Namespace handling failed.
    #[error(transparent)]
    Netns(#[from] crate::netns::Error),
}

fn io(what: &'static str) -> impl FnOnce(std::io::Error) -> Error {
    move |source| Error::Io { what, source }
}

const MAGIC: &[u8; 4] = b"TRF1";
const OP_DOWNLOAD: u8 = 1;
const OP_UPLOAD: u8 = 2;
const OP_RR: u8 = 3;
const CHUNK: usize = 256 * 1024;

// ---------------------------------------------------------------------------------------------
// Deterministic data
// ---------------------------------------------------------------------------------------------

fn word(seed: u64, idx: u64) -> u64 {
    let mut z = seed ^ idx.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Fills `buf` with bytes `offset..offset+buf.len()` of the pseudo-random stream for `seed`.
pub fn fill(seed: u64, offset: u64, buf: &mut [u8]) {
    let mut pos = 0usize;
    let mut off = offset;
    // Unaligned head.
    while pos < buf.len() && off & 7 != 0 {
        buf[pos] = word(seed, off / 8).to_le_bytes()[(off % 8) as usize];
        pos += 1;
        off += 1;
    }
    let mut chunks = buf[pos..].chunks_exact_mut(8);
    let mut idx = off / 8;
    for c in &mut chunks {
        c.copy_from_slice(&word(seed, idx).to_le_bytes());
        idx += 1;
    }
    let rem = chunks.into_remainder();
    if !rem.is_empty() {
        let w = word(seed, idx).to_le_bytes();
        let n = rem.len();
        rem.copy_from_slice(&w[..n]);
    }
}

/// SHA-256 of the first `len` bytes of the stream for `seed`.
pub fn stream_sha256(seed: u64, len: u64) -> [u8; 32] {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    let mut off = 0;
    while off < len {
        let n = (len - off).min(CHUNK as u64) as usize;
        fill(seed, off, &mut buf[..n]);
        h.update(&buf[..n]);
        off += n as u64;
    }
    h.finalize().into()
}

fn hex(d: &[u8]) -> String {
    d.iter().map(|b| format!("{b:02x}")).collect()
}

// ---------------------------------------------------------------------------------------------
// Timeline
// ---------------------------------------------------------------------------------------------

/// Bytes received per interval (100 ms by default) from the start of a transfer, plus the
/// longest gap between two reads while data was still expected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timeline {
    /// Bucket width.
    pub interval: Duration,
    /// Bytes per bucket; bucket `i` covers `[i*interval, (i+1)*interval)` after the start.
    pub buckets: Vec<u64>,
    /// Longest time between two successive reads that returned data (or from the start to the
    /// first data), measured exactly.
    pub max_gap: Duration,
}

impl Timeline {
    fn new(interval: Duration) -> Timeline {
        Timeline { interval, buckets: Vec::new(), max_gap: Duration::ZERO }
    }

    fn record(&mut self, since_start: Duration, bytes: u64) {
        let i = (since_start.as_nanos() / self.interval.as_nanos().max(1)) as usize;
        if self.buckets.len() <= i {
            self.buckets.resize(i + 1, 0);
        }
        self.buckets[i] += bytes;
    }

    /// Longest run of empty buckets between the first and the last non-empty bucket, as a
    /// duration (bucket granularity). 0 if data flowed in every interval.
    pub fn max_stall(&self) -> Duration {
        let first = self.buckets.iter().position(|&b| b > 0);
        let last = self.buckets.iter().rposition(|&b| b > 0);
        let (Some(first), Some(last)) = (first, last) else { return Duration::ZERO };
        let mut best = 0u32;
        let mut run = 0u32;
        for &b in &self.buckets[first..=last] {
            if b == 0 {
                run += 1;
                best = best.max(run);
            } else {
                run = 0;
            }
        }
        self.interval * best
    }

    /// Per-bucket rates in Mbit/s.
    pub fn mbit_per_s(&self) -> Vec<f64> {
        self.buckets.iter().map(|&b| b as f64 * 8.0 / self.interval.as_secs_f64() / 1e6).collect()
    }
}

/// Result of a bulk transfer.
#[derive(Debug, Clone)]
pub struct Transfer {
    /// Payload bytes moved.
    pub bytes: u64,
    /// From connect to the last byte (and verification) done.
    pub elapsed: Duration,
    /// Time from starting the connect to the first payload byte received (downloads) or to the
    /// connection being established (uploads).
    pub first_byte: Duration,
    /// SHA-256 both ends agreed on.
    pub sha256: [u8; 32],
    /// Receive (download) or send (upload) progress.
    pub timeline: Timeline,
}

impl Transfer {
    /// Goodput over the whole transfer in Mbit/s.
    pub fn mbit_per_s(&self) -> f64 {
        self.bytes as f64 * 8.0 / self.elapsed.as_secs_f64() / 1e6
    }
}

/// Latency statistics of request/response exchanges.
#[derive(Debug, Clone)]
pub struct RrStats {
    /// Time of each exchange (request sent .. full response received), in order. For
    /// [`Client::short_connections`] it includes the connect.
    pub samples: Vec<Duration>,
    /// Wall time of the whole run.
    pub elapsed: Duration,
}

impl RrStats {
    /// The q-quantile (0.5 = median) of the samples.
    pub fn quantile(&self, q: f64) -> Duration {
        if self.samples.is_empty() {
            return Duration::ZERO;
        }
        let mut s = self.samples.clone();
        s.sort();
        s[((s.len() - 1) as f64 * q.clamp(0.0, 1.0)).round() as usize]
    }
    /// The median.
    pub fn median(&self) -> Duration {
        self.quantile(0.5)
    }
    /// Exchanges per second.
    pub fn per_second(&self) -> f64 {
        self.samples.len() as f64 / self.elapsed.as_secs_f64()
    }
}

// ---------------------------------------------------------------------------------------------
// Client
// ---------------------------------------------------------------------------------------------

/// A traffic client. Sockets are created in the calling thread's namespace: call it inside
/// [`Netns::within`] / [`Netns::thread`].
#[derive(Debug, Clone)]
pub struct Client {
    server: SocketAddr,
    seed: u64,
    timeout: Duration,
    interval: Duration,
    bind: Option<SocketAddr>,
    progress: Option<Arc<AtomicU64>>,
    mptcp: bool,
    pace_kbit: u32,
    congestion: Option<String>,
}

impl Client {
    /// A client for `server` with seed 1, 30 s I/O timeout, 100 ms timeline buckets.
    pub fn new(server: SocketAddr) -> Client {
        Client {
            server,
            seed: 1,
            timeout: Duration::from_secs(30),
            interval: Duration::from_millis(100),
            bind: None,
            progress: None,
            mptcp: false,
            pace_kbit: 0,
            congestion: None,
        }
    }
    /// Downloads come paced at `mbit` Mbit/s (the server writes every 10 ms), like a video stream.
    pub fn paced(mut self, mbit: f64) -> Client {
        self.pace_kbit = (mbit * 1000.0) as u32;
        self
    }
    /// Connect with a kernel MPTCP socket instead of TCP (a baseline without hcpe/hag).
    pub fn mptcp(mut self) -> Client {
        self.mptcp = true;
        self
    }
    /// Congestion control of the client's socket (`TCP_CONGESTION`; one outside the namespace's allowed list
    /// needs `CAP_NET_ADMIN`, which the tests have as root).
    pub fn congestion(mut self, name: Option<String>) -> Client {
        self.congestion = name;
        self
    }
    /// Seed of the data stream.
    pub fn seed(mut self, seed: u64) -> Client {
        self.seed = seed;
        self
    }
    /// Read/write/connect timeout (a stall longer than this fails the transfer).
    pub fn timeout(mut self, t: Duration) -> Client {
        self.timeout = t;
        self
    }
    /// Timeline bucket width.
    pub fn interval(mut self, t: Duration) -> Client {
        self.interval = t;
        self
    }
    /// Binds the local end before connecting (source address selection).
    pub fn bind(mut self, local: SocketAddr) -> Client {
        self.bind = Some(local);
        self
    }
    /// A counter the client keeps updated with payload bytes moved so far, so another thread
    /// can act mid-transfer (e.g. cut a link at 30 %).
    pub fn progress(mut self, counter: Arc<AtomicU64>) -> Client {
        self.progress = Some(counter);
        self
    }

    fn connect(&self) -> Result<TcpStream, Error> {
        let s = if self.bind.is_none() && !self.mptcp && self.congestion.is_none() {
            TcpStream::connect_timeout(&self.server, self.timeout).map_err(io("connect"))?
        } else {
            let domain = if self.server.is_ipv4() { socket2::Domain::IPV4 } else { socket2::Domain::IPV6 };
            let proto = self.mptcp.then_some(socket2::Protocol::MPTCP);
            let sock = socket2::Socket::new(domain, socket2::Type::STREAM, proto).map_err(io("socket"))?;
            if let Some(local) = self.bind {
                sock.bind(&local.into()).map_err(io("bind"))?;
            }
            if let Some(cc) = &self.congestion {
                sock.set_tcp_congestion(cc.as_bytes()).map_err(io("congestion control"))?;
            }
            sock.connect_timeout(&self.server.into(), self.timeout).map_err(io("connect"))?;
            sock.into()
        };
        s.set_read_timeout(Some(self.timeout)).map_err(io("set timeout"))?;
        s.set_write_timeout(Some(self.timeout)).map_err(io("set timeout"))?;
        s.set_nodelay(true).map_err(io("nodelay"))?;
        Ok(s)
    }

    fn request(&self, s: &mut TcpStream, op: u8, size: u64, resp: u32, count: u32) -> Result<(), Error> {
        let mut h = [0u8; 32];
        h[..4].copy_from_slice(MAGIC);
        h[4] = op;
        h[8..16].copy_from_slice(&size.to_be_bytes());
        h[16..24].copy_from_slice(&self.seed.to_be_bytes());
        h[24..28].copy_from_slice(&resp.to_be_bytes());
        h[28..32].copy_from_slice(&count.to_be_bytes());
        s.write_all(&h).map_err(io("send request"))
    }

    /// Downloads `bytes` from the server, verifying content and SHA-256.
    pub fn download(&self, bytes: u64) -> Result<Transfer, Error> {
        let start = Instant::now();
        let mut s = self.connect()?;
        self.request(&mut s, OP_DOWNLOAD, bytes, self.pace_kbit, 0)?;
        let mut tl = Timeline::new(self.interval);
        let mut h = Sha256::new();
        let mut buf = vec![0u8; CHUNK];
        let mut expect = vec![0u8; CHUNK];
        let mut got = 0u64;
        let mut last = start;
        let mut first_byte = None;
        while got < bytes {
            let want = (bytes - got).min(CHUNK as u64) as usize;
            let n = s.read(&mut buf[..want]).map_err(io("receive data"))?;
            if n == 0 {
                return Err(Error::Short { got, want: bytes });
            }
            let now = Instant::now();
            first_byte.get_or_insert(now - start);
            tl.max_gap = tl.max_gap.max(now - last);
            last = now;
            tl.record(now - start, n as u64);
            fill(self.seed, got, &mut expect[..n]);
            if buf[..n] != expect[..n] {
                let i = buf[..n].iter().zip(&expect[..n]).position(|(a, b)| a != b).unwrap_or(0);
                return Err(Error::Corrupt { offset: got + i as u64 });
            }
            h.update(&buf[..n]);
            got += n as u64;
            if let Some(p) = &self.progress {
                p.store(got, Ordering::Relaxed);
            }
        }
        let mut trailer = [0u8; 32];
        s.read_exact(&mut trailer).map_err(io("receive digest"))?;
        let mine: [u8; 32] = h.finalize().into();
        if mine != trailer {
            return Err(Error::HashMismatch { sender: hex(&trailer), receiver: hex(&mine) });
        }
        Ok(Transfer {
            bytes,
            elapsed: start.elapsed(),
            first_byte: first_byte.unwrap_or_default(),
            sha256: mine,
            timeline: tl,
        })
    }

    /// Uploads `bytes` to the server; the server verifies content and returns its SHA-256.
    pub fn upload(&self, bytes: u64) -> Result<Transfer, Error> {
        let start = Instant::now();
        let mut s = self.connect()?;
        let first_byte = start.elapsed();
        self.request(&mut s, OP_UPLOAD, bytes, 0, 0)?;
        let mut tl = Timeline::new(self.interval);
        let mut h = Sha256::new();
        let mut buf = vec![0u8; CHUNK];
        let mut sent = 0u64;
        let mut last = start;
        while sent < bytes {
            let n = (bytes - sent).min(CHUNK as u64) as usize;
            fill(self.seed, sent, &mut buf[..n]);
            h.update(&buf[..n]);
            let mut off = 0;
            while off < n {
                let w = s.write(&buf[off..n]).map_err(io("send data"))?;
                if w == 0 {
                    return Err(Error::Short { got: sent, want: bytes });
                }
                let now = Instant::now();
                tl.max_gap = tl.max_gap.max(now - last);
                last = now;
                tl.record(now - start, w as u64);
                off += w;
                sent += w as u64;
                if let Some(p) = &self.progress {
                    p.store(sent, Ordering::Relaxed);
                }
            }
        }
        let mut reply = [0u8; 33];
        s.read_exact(&mut reply).map_err(io("receive digest"))?;
        let mine: [u8; 32] = h.finalize().into();
        if reply[..32] != mine {
            return Err(Error::HashMismatch { sender: hex(&mine), receiver: hex(&reply[..32]) });
        }
        if reply[32] != 1 {
            return Err(Error::Protocol("server says the upload differs from the stream".into()));
        }
        Ok(Transfer { bytes, elapsed: start.elapsed(), first_byte, sha256: mine, timeline: tl })
    }

    /// `count` request/response exchanges of `req`/`resp` bytes on one connection.
    pub fn request_response(&self, count: u32, req: u32, resp: u32) -> Result<RrStats, Error> {
        let start = Instant::now();
        let mut s = self.connect()?;
        self.request(&mut s, OP_RR, u64::from(req), resp, count)?;
        let mut samples = Vec::with_capacity(count as usize);
        let mut q = vec![0u8; req as usize];
        fill(self.seed, 0, &mut q);
        let mut r = vec![0u8; resp as usize];
        for _ in 0..count {
            let t = Instant::now();
            s.write_all(&q).map_err(io("send request"))?;
            s.read_exact(&mut r).map_err(io("receive response"))?;
            samples.push(t.elapsed());
        }
        Ok(RrStats { samples, elapsed: start.elapsed() })
    }

    /// `count` short connections, each: connect, one `req`/`resp` exchange, close. Samples
    /// include the connect (time from connect start to the full response).
    pub fn short_connections(&self, count: u32, req: u32, resp: u32) -> Result<RrStats, Error> {
        let start = Instant::now();
        let mut samples = Vec::with_capacity(count as usize);
        let mut q = vec![0u8; req as usize];
        fill(self.seed, 0, &mut q);
        let mut r = vec![0u8; resp as usize];
        for _ in 0..count {
            let t = Instant::now();
            let mut s = self.connect()?;
            // Header and request in one write, so it can ride in a TFO SYN.
            let mut h = Vec::with_capacity(32 + q.len());
            h.extend_from_slice(MAGIC);
            h.extend_from_slice(&[OP_RR, 0, 0, 0]);
            h.extend_from_slice(&u64::from(req).to_be_bytes());
            h.extend_from_slice(&self.seed.to_be_bytes());
            h.extend_from_slice(&resp.to_be_bytes());
            h.extend_from_slice(&1u32.to_be_bytes());
            h.extend_from_slice(&q);
            s.write_all(&h).map_err(io("send request"))?;
            s.read_exact(&mut r).map_err(io("receive response"))?;
            samples.push(t.elapsed());
        }
        Ok(RrStats { samples, elapsed: start.elapsed() })
    }
}

// ---------------------------------------------------------------------------------------------
// Server
// ---------------------------------------------------------------------------------------------

#[derive(Default)]
struct ServerShared {
    stop: AtomicBool,
    connections: AtomicU64,
    errors: Mutex<Vec<String>>,
    open: Mutex<Vec<(TcpStream, JoinHandle<()>)>>,
}

/// A traffic server: accepts any number of connections, one thread each. Stops on drop
/// (closing its connections); drop it before its namespace.
pub struct Server {
    addr: SocketAddr,
    shared: Arc<ServerShared>,
    accept: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server").field("addr", &self.addr).finish()
    }
}

impl Server {
    /// Listens on `[::]:port` (dual-stack: IPv4 and IPv6) inside `ns`; port 0 picks a free one.
    pub fn start(ns: &Netns, port: u16) -> Result<Server, Error> {
        Server::bind(ns, SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, port)))
    }

    /// Listens on `addr` inside `ns`.
    pub fn bind(ns: &Netns, addr: SocketAddr) -> Result<Server, Error> {
        let l = ns.within(|| TcpListener::bind(addr))?.map_err(io("listen"))?;
        Server::from_listener(l)
    }

    /// Listens on `addr` inside `ns` with a kernel MPTCP socket (accepts MPTCP and TCP).
    pub fn bind_mptcp(ns: &Netns, addr: SocketAddr) -> Result<Server, Error> {
        Server::bind_with(ns, addr, true, None)
    }

    /// Listens on `addr` inside `ns`, with kernel MPTCP or plain TCP, its connections on congestion control `cc`
    /// (accepted sockets take the listener's).
    pub fn bind_with(ns: &Netns, addr: SocketAddr, mptcp: bool, cc: Option<&str>) -> Result<Server, Error> {
        let l = ns
            .within(|| -> std::io::Result<TcpListener> {
                let domain = if addr.is_ipv4() { socket2::Domain::IPV4 } else { socket2::Domain::IPV6 };
                let proto = mptcp.then_some(socket2::Protocol::MPTCP);
                let s = socket2::Socket::new(domain, socket2::Type::STREAM, proto)?;
                if let Some(cc) = cc {
                    s.set_tcp_congestion(cc.as_bytes())?;
                }
                s.set_reuse_address(true)?;
                s.bind(&addr.into())?;
                s.listen(1024)?;
                Ok(s.into())
            })?
            .map_err(io("listen"))?;
        Server::from_listener(l)
    }

    /// Serves on an existing listener (the `traffic` binary uses this after `ip netns exec`).
    pub fn from_listener(l: TcpListener) -> Result<Server, Error> {
        let addr = l.local_addr().map_err(io("local addr"))?;
        l.set_nonblocking(true).map_err(io("nonblocking"))?;
        let shared = Arc::new(ServerShared::default());
        let sh = shared.clone();
        let accept = std::thread::Builder::new()
            .name("traffic-accept".into())
            .spawn(move || accept_loop(l, sh))
            .expect("spawn accept thread");
        Ok(Server { addr, shared, accept: Some(accept) })
    }

    /// Local address (with the actual port).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
    /// Local port.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }
    /// Connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.shared.connections.load(Ordering::Relaxed)
    }
    /// Errors seen by connection handlers (e.g. an upload that did not match the stream).
    pub fn errors(&self) -> Vec<String> {
        self.shared.errors.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
    /// Blocks until stopped (for the `traffic` binary).
    pub fn wait(mut self) {
        if let Some(a) = self.accept.take() {
            let _ = a.join();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        if let Some(a) = self.accept.take() {
            let _ = a.join();
        }
        let open = std::mem::take(&mut *self.shared.open.lock().unwrap_or_else(|e| e.into_inner()));
        for (s, _) in &open {
            let _ = s.shutdown(Shutdown::Both);
        }
        for (_, t) in open {
            let _ = t.join();
        }
    }
}

fn accept_loop(l: TcpListener, sh: Arc<ServerShared>) {
    while !sh.stop.load(Ordering::Relaxed) {
        match l.accept() {
            Ok((s, peer)) => {
                sh.connections.fetch_add(1, Ordering::Relaxed);
                let _ = s.set_nonblocking(false);
                let _ = s.set_nodelay(true);
                let _ = s.set_read_timeout(Some(Duration::from_secs(60)));
                let Ok(clone) = s.try_clone() else { continue };
                let sh2 = sh.clone();
                let t = std::thread::spawn(move || {
                    if let Err(e) = serve(s) {
                        let benign = matches!(&e, Error::Io { source, .. }
                            if source.kind() == std::io::ErrorKind::UnexpectedEof);
                        if !benign {
                            sh2.errors.lock().unwrap_or_else(|e| e.into_inner()).push(format!("{peer}: {e}"));
                        }
                    }
                });
                let mut open = sh.open.lock().unwrap_or_else(|e| e.into_inner());
                open.retain(|(_, t)| !t.is_finished());
                open.push((clone, t));
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                let mut pfd =
                    libc::pollfd { fd: std::os::fd::AsRawFd::as_raw_fd(&l), events: libc::POLLIN, revents: 0 };
                // SAFETY: one valid pollfd.
                unsafe { libc::poll(&mut pfd, 1, 50) };
            }
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}

fn serve(mut s: TcpStream) -> Result<(), Error> {
    let mut h = [0u8; 32];
    s.read_exact(&mut h).map_err(io("read request"))?;
    if &h[..4] != MAGIC {
        return Err(Error::Protocol("bad magic".into()));
    }
    let op = h[4];
    let size = u64::from_be_bytes(h[8..16].try_into().expect("8 bytes"));
    let seed = u64::from_be_bytes(h[16..24].try_into().expect("8 bytes"));
    let resp = u32::from_be_bytes(h[24..28].try_into().expect("4 bytes"));
    let count = u32::from_be_bytes(h[28..32].try_into().expect("4 bytes"));
    let mut buf = vec![0u8; CHUNK];
    match op {
        OP_DOWNLOAD => {
            let mut hs = Sha256::new();
            let mut off = 0u64;
            // Paced: 10 ms worth of bytes per write, each at its time.
            let pace_kbit = u64::from(resp);
            let step = if pace_kbit > 0 { (pace_kbit * 1000 / 8 / 100).clamp(1, CHUNK as u64) } else { CHUNK as u64 };
            let start = Instant::now();
            while off < size {
                if pace_kbit > 0 {
                    let due = start + Duration::from_secs_f64(off as f64 * 8.0 / (pace_kbit as f64 * 1000.0));
                    std::thread::sleep(due.saturating_duration_since(Instant::now()));
                }
                let n = (size - off).min(step) as usize;
                fill(seed, off, &mut buf[..n]);
                hs.update(&buf[..n]);
                s.write_all(&buf[..n]).map_err(io("send data"))?;
                off += n as u64;
            }
            let d: [u8; 32] = hs.finalize().into();
            s.write_all(&d).map_err(io("send digest"))?;
        }
        OP_UPLOAD => {
            let mut hs = Sha256::new();
            let mut expect = vec![0u8; CHUNK];
            let mut got = 0u64;
            let mut same = true;
            while got < size {
                let want = (size - got).min(CHUNK as u64) as usize;
                let n = s.read(&mut buf[..want]).map_err(io("receive data"))?;
                if n == 0 {
                    return Err(Error::Short { got, want: size });
                }
                fill(seed, got, &mut expect[..n]);
                same &= buf[..n] == expect[..n];
                hs.update(&buf[..n]);
                got += n as u64;
            }
            let d: [u8; 32] = hs.finalize().into();
            let mut reply = [0u8; 33];
            reply[..32].copy_from_slice(&d);
            reply[32] = u8::from(same);
            s.write_all(&reply).map_err(io("send digest"))?;
            if !same {
                return Err(Error::Protocol("upload differs from the stream".into()));
            }
        }
        OP_RR => {
            let mut q = vec![0u8; size as usize];
            let mut r = vec![0u8; resp as usize];
            fill(seed, 0, &mut r);
            for _ in 0..count {
                s.read_exact(&mut q).map_err(io("read request"))?;
                s.write_all(&r).map_err(io("send response"))?;
            }
        }
        other => return Err(Error::Protocol(format!("unknown op {other}"))),
    }
    // Wait for the client's close so our FIN is not followed by an RST.
    let _ = s.shutdown(Shutdown::Write);
    let _ = s.read(&mut buf[..1]);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// One-way delay probes
// ---------------------------------------------------------------------------------------------

/// Result of [`one_way_probes`]: per probe, the one-way delay or `None` if it never arrived.
#[derive(Debug, Clone)]
pub struct Probes {
    /// Delay of probe `i`, in sending order.
    pub delays: Vec<Option<Duration>>,
}

impl Probes {
    /// Delays of the probes that arrived, sorted.
    pub fn received(&self) -> Vec<Duration> {
        let mut v: Vec<Duration> = self.delays.iter().flatten().copied().collect();
        v.sort();
        v
    }
    /// Fraction of probes lost.
    pub fn loss(&self) -> f64 {
        if self.delays.is_empty() {
            return 0.0;
        }
        1.0 - self.received().len() as f64 / self.delays.len() as f64
    }
    /// The q-quantile of the received delays (0.5 = median); `None` if none arrived.
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        let v = self.received();
        (!v.is_empty()).then(|| v[((v.len() - 1) as f64 * q.clamp(0.0, 1.0)).round() as usize])
    }
    /// The median one-way delay.
    pub fn median(&self) -> Option<Duration> {
        self.quantile(0.5)
    }
}

fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: valid timespec pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Sends `count` UDP probes every `interval` from `from` (optionally bound to `src`) to `dst` in
/// `to`, and measures each one's one-way delay with the shared monotonic clock (both ends are
/// in this process). Waits `grace` after the last probe for stragglers.
pub fn one_way_probes(
    from: &Netns,
    src: Option<SocketAddr>,
    to: &Netns,
    dst: SocketAddr,
    count: u32,
    interval: Duration,
    grace: Duration,
) -> Result<Probes, Error> {
    let rx = to.within(|| std::net::UdpSocket::bind(dst))?.map_err(io("bind probe receiver"))?;
    let dst = SocketAddr::new(dst.ip(), rx.local_addr().map_err(io("local addr"))?.port());
    let any: SocketAddr = if dst.is_ipv4() {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let tx = from.within(|| std::net::UdpSocket::bind(src.unwrap_or(any)))?.map_err(io("bind probe sender"))?;
    rx.set_read_timeout(Some(Duration::from_millis(20))).map_err(io("set timeout"))?;
    let done = Arc::new(AtomicBool::new(false));
    let done2 = done.clone();
    let receiver = std::thread::spawn(move || {
        let mut delays = vec![None; count as usize];
        let mut buf = [0u8; 64];
        while !done2.load(Ordering::Relaxed) {
            if let Ok(n) = rx.recv(&mut buf) {
                let now = monotonic_ns();
                if n >= 12 {
                    let seq = u32::from_be_bytes(buf[..4].try_into().expect("4")) as usize;
                    let sent = u64::from_be_bytes(buf[4..12].try_into().expect("8"));
                    if seq < delays.len() {
                        delays[seq] = Some(Duration::from_nanos(now.saturating_sub(sent)));
                    }
                }
            }
        }
        delays
    });
    let start = Instant::now();
    for i in 0..count {
        let due = start + interval * i;
        if let Some(d) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(d);
        }
        let mut p = [0u8; 40];
        p[..4].copy_from_slice(&i.to_be_bytes());
        p[4..12].copy_from_slice(&monotonic_ns().to_be_bytes());
        let _ = tx.send_to(&p, dst);
    }
    std::thread::sleep(grace);
    done.store(true, Ordering::Relaxed);
    let delays = receiver.join().map_err(|_| Error::Protocol("probe receiver panicked".into()))?;
    Ok(Probes { delays })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fill_is_position_addressable() {
        let mut whole = vec![0u8; 1000];
        fill(7, 0, &mut whole);
        for (off, len) in [(0, 1), (3, 17), (8, 8), (13, 500), (999, 1)] {
            let mut part = vec![0u8; len];
            fill(7, off as u64, &mut part);
            assert_eq!(part, whole[off..off + len], "offset {off} len {len}");
        }
        let mut other = vec![0u8; 1000];
        fill(8, 0, &mut other);
        assert_ne!(whole, other);
    }

    #[test]
    fn stream_sha256_matches_chunked_fill() {
        let mut all = vec![0u8; CHUNK + 123];
        fill(3, 0, &mut all);
        let d: [u8; 32] = Sha256::digest(&all).into();
        assert_eq!(stream_sha256(3, all.len() as u64), d);
    }

    #[test]
    fn timeline_stall_is_longest_empty_run_between_data() {
        let mut t = Timeline::new(Duration::from_millis(100));
        t.record(Duration::from_millis(50), 10);
        t.record(Duration::from_millis(450), 10); // buckets 1,2,3 empty
        t.record(Duration::from_millis(650), 10); // bucket 5 empty
        assert_eq!(t.buckets, vec![10, 0, 0, 0, 10, 0, 10]);
        assert_eq!(t.max_stall(), Duration::from_millis(300));
    }

    #[test]
    fn loopback_download_upload_rr() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let server = Server::from_listener(l).unwrap();
        let c = Client::new(server.addr()).seed(9);
        let d = c.download(3_000_000).unwrap();
        assert_eq!(d.sha256, stream_sha256(9, 3_000_000));
        let u = c.upload(2_000_001).unwrap();
        assert_eq!(u.sha256, stream_sha256(9, 2_000_001));
        let rr = c.request_response(50, 100, 1000).unwrap();
        assert_eq!(rr.samples.len(), 50);
        let sc = c.short_connections(20, 64, 64).unwrap();
        assert_eq!(sc.samples.len(), 20);
        assert!(server.errors().is_empty(), "{:?}", server.errors());
        assert_eq!(server.connections(), 3 + 20);
    }
}
