//! Opening MPTCP (or plain TCP) sockets: listeners with a TFO queue, and client connects that put the first
//! bytes into the SYN.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, BorrowedFd};
use std::time::Duration;

use futures::FutureExt as _;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::net::{TcpListener, TcpStream};

use super::congestion::set_congestion_control;
use super::{IPPROTO_MPTCP, sys};

/// How to open a listener.
#[derive(Debug, Clone)]
pub struct ListenOptions {
    pub backlog: u32,
    /// `TCP_FASTOPEN` queue length (pending TFO requests); `None` = no TFO on this listener.
    pub tfo_queue: Option<u32>,
    /// `false` opens a plain TCP listener.
    pub mptcp: bool,
    /// `SO_BINDTODEVICE`.
    pub bind_device: Option<String>,
    /// `TCP_CONGESTION` of the listener, which the connections it accepts take; `None`: the namespace's default.
    pub congestion_control: Option<String>,
}

impl Default for ListenOptions {
    fn default() -> Self {
        ListenOptions { backlog: 1024, tfo_queue: Some(1024), mptcp: true, bind_device: None, congestion_control: None }
    }
}

fn new_socket(addr: &SocketAddr, mptcp: bool) -> io::Result<Socket> {
    let proto = if mptcp { Protocol::from(IPPROTO_MPTCP) } else { Protocol::TCP };
    Socket::new(Domain::for_address(*addr), Type::STREAM, Some(proto)).map_err(|e| {
        if mptcp {
            io::Error::new(e.kind(), format!("cannot create an MPTCP socket ({e}); is net.mptcp.enabled=1?"))
        } else {
            e
        }
    })
}

/// MPTCP listener: `SO_REUSEADDR`, `IPV6_V6ONLY` for IPv6 (v4 and v6 get separate listeners), a TFO queue
/// of `tfo_queue`, non-blocking, registered with the current tokio runtime.
pub fn listen(addr: SocketAddr, backlog: u32, tfo_queue: Option<u32>) -> io::Result<TcpListener> {
    listen_with(addr, &ListenOptions { backlog, tfo_queue, ..ListenOptions::default() })
}

/// [`listen`] with every option.
pub fn listen_with(addr: SocketAddr, opts: &ListenOptions) -> io::Result<TcpListener> {
    let sock = new_socket(&addr, opts.mptcp)?;
    sock.set_reuse_address(true)?;
    if addr.is_ipv6() {
        sock.set_only_v6(true)?;
    }
    if let Some(dev) = &opts.bind_device {
        sock.bind_device(Some(dev.as_bytes()))?;
    }
    if let Some(cc) = &opts.congestion_control {
        set_congestion_control(&sock, cc)?;
    }
    sock.bind(&addr.into())?;
    if let Some(q) = opts.tfo_queue {
        let q = libc::c_int::try_from(q).unwrap_or(libc::c_int::MAX);
        sys::setsockopt_int(sock.as_fd(), libc::IPPROTO_TCP, libc::TCP_FASTOPEN, q)?;
    }
    sock.listen(libc::c_int::try_from(opts.backlog).unwrap_or(libc::c_int::MAX))?;
    sock.set_nonblocking(true)?;
    TcpListener::from_std(sock.into())
}

/// How to open a client connection.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// Local address (and port, 0 = any) to bind before connecting: selects the uplink of the initial subflow.
    pub bind: Option<SocketAddr>,
    /// `SO_BINDTODEVICE`.
    pub bind_device: Option<String>,
    /// `false` = plain TCP (fallback paths).
    pub mptcp: bool,
    /// Put `first_bytes` into the SYN (TCP Fast Open without cookie). Towards a Linux 6.18 MPTCP server this
    /// breaks the server's flow control (module docs of [`crate::mptcp`]); plain TCP is not affected.
    pub fastopen: bool,
    /// Bound on the whole handshake.
    pub timeout: Duration,
    /// `TCP_CONGESTION` (on an MPTCP socket: of every subflow); `None`: the namespace's default.
    pub congestion_control: Option<String>,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        ConnectOptions {
            bind: None,
            bind_device: None,
            mptcp: true,
            fastopen: true,
            timeout: Duration::from_secs(10),
            congestion_control: None,
        }
    }
}

/// Connects to `dst`, with TFO putting as much of `first_bytes` as fits into the SYN.
///
/// Returns the connected stream and how many leading bytes of `first_bytes` the kernel already took (sent in
/// the SYN, or retransmitted by the kernel after the handshake if the server declined SYN data). The caller
/// writes `first_bytes[n..]` itself. `n` is 0 without TFO, with empty `first_bytes`, when the namespace has TFO
/// client support switched off (`EOPNOTSUPP`, then a normal connect is made), or when the kernel wanted a
/// cookie round trip first (`EINPROGRESS` with nothing queued).
///
/// Mechanism: `TCP_FASTOPEN_NO_COOKIE` on the socket, then `sendto(first_bytes, MSG_FASTOPEN, dst)` on the
/// unconnected non-blocking socket; this starts the handshake and returns the byte count queued in the SYN.
pub async fn connect_with_data(
    dst: SocketAddr,
    first_bytes: &[u8],
    opts: &ConnectOptions,
) -> io::Result<(TcpStream, usize)> {
    let sock = new_socket(&dst, opts.mptcp)?;
    sock.set_nonblocking(true)?;
    if let Some(dev) = &opts.bind_device {
        sock.bind_device(Some(dev.as_bytes()))?;
    }
    if let Some(bind) = opts.bind {
        sock.bind(&bind.into())?;
    }
    if let Some(cc) = &opts.congestion_control {
        set_congestion_control(&sock, cc)?;
    }
    let dst_addr = socket2::SockAddr::from(dst);
    let mut sent = 0;
    let mut connecting = false;
    if opts.fastopen && !first_bytes.is_empty() {
        sys::setsockopt_int(sock.as_fd(), libc::IPPROTO_TCP, libc::TCP_FASTOPEN_NO_COOKIE, 1)?;
        match sock.send_to_with_flags(first_bytes, &dst_addr, libc::MSG_FASTOPEN) {
            Ok(n) => {
                sent = n;
                connecting = true;
            }
            Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => connecting = true,
            Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => {
                tracing::debug!(%dst, "TCP Fast Open client disabled in this namespace (net.ipv4.tcp_fastopen & 1 == 0)");
            }
            Err(e) => return Err(e),
        }
    }
    if !connecting {
        match sock.connect(&dst_addr) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
            Err(e) => return Err(e),
        }
    }
    let stream = TcpStream::from_std(std::net::TcpStream::from(sock))?;
    match tokio::time::timeout(opts.timeout, stream.writable()).await {
        Ok(ready) => ready?,
        Err(_) => {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("connect to {dst} timed out after {:?}", opts.timeout),
            ));
        }
    }
    if let Some(e) = stream.take_error()? {
        return Err(e);
    }
    // Writable without an error means established; peer_addr() confirms it (ENOTCONN otherwise).
    stream.peer_addr()?;
    Ok((stream, sent))
}

/// `TCP_SYN_RECV` of `include/net/tcp_states.h` (`tcpi_state`).
const TCP_SYN_RECV: u8 = 3;

/// Kernel workaround for accepted TCP Fast Open MPTCP connections; call it between `accept` and the first
/// write. Returns whether it had to wait.
///
/// The bug (seen on Linux 6.18, reproduced by `tests/tests/mptcp_tfo_many.rs`): a listener accepts a TFO
/// connection as soon as the SYN with data arrives, while the initial subflow is still in `SYN_RECV`. Bytes
/// written then are queued on the MPTCP socket (its `write_seq` moves, `ss -M` shows them) but cannot go to a
/// subflow that is not established, and the client's third ACK (MP_CAPABLE, no DSS) establishes the subflow
/// without pushing that queue. The bytes stay unsent until something else pushes (the next write, an
/// incoming DATA_ACK): a reply-then-wait protocol stalls for ever. Waiting here until the initial subflow has
/// left `SYN_RECV` makes the first write go out at once, at the same moment the kernel could have sent it
/// anyway. Afterwards `TCP_NODELAY` is re-applied, which makes the kernel push whatever was queued meanwhile
/// (`mptcp_check_and_set_pending`), so a write racing with this call is not stranded either. Plain TCP and
/// connections accepted without SYN data return `Ok(false)` at once. The wait is bounded by `limit` (then
/// `TimedOut`).
///
/// How it waits: the subflow's state change on the third ACK wakes the MPTCP socket's wait queue (the
/// subflow shares it), which epoll reports as an event. A duplicate of the fd gets its own tokio
/// registration, so that waiting for that edge (and clearing readiness in between) leaves the stream's own
/// readiness alone; the state (`TCP_INFO`) is re-read after every event, and at least every millisecond in
/// case no event comes. A 1 ms timer alone cost 1-2 ms per connection (tokio's timer granularity), more than
/// the whole handshake on a short path.
pub async fn await_tfo_handshake(stream: &TcpStream, limit: Duration) -> io::Result<bool> {
    fn in_syn_recv(fd: BorrowedFd<'_>) -> io::Result<bool> {
        // SAFETY: libc::tcp_info is plain old data (integers only), so all-zero is a valid value.
        let mut ti: libc::tcp_info = unsafe { std::mem::zeroed() };
        sys::getsockopt_into(fd, libc::IPPROTO_TCP, libc::TCP_INFO, &mut ti)?;
        Ok(ti.tcpi_state == TCP_SYN_RECV)
    }
    if !in_syn_recv(stream.as_fd())? {
        return Ok(false);
    }
    let deadline = tokio::time::Instant::now() + limit;
    // SAFETY: the `AsyncFd` owns the duplicate, which stays open (and the same fd) until the `AsyncFd` drops.
    let events = unsafe { AsyncFd::register_with_interest(stream.as_fd().try_clone_to_owned()?, Interest::WRITABLE) }
        .map_err(|e| e.into_parts().1)?;
    loop {
        // Clear the readiness first, then look: a state change after the look raises a new edge.
        if let Some(mut guard) = events.writable().now_or_never().transpose()? {
            guard.clear_ready();
        }
        if !in_syn_recv(stream.as_fd())? {
            break;
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("TFO handshake not completed within {limit:?}"),
            ));
        }
        tokio::select! {
            r = events.writable() => drop(r?),
            () = tokio::time::sleep(Duration::from_millis(1)) => {}
        }
    }
    drop(events);
    push_pending(stream)?;
    Ok(true)
}

/// Makes the kernel push bytes queued on an MPTCP socket that no subflow has taken yet, by re-applying
/// `TCP_NODELAY` (the MPTCP setsockopt path schedules a push when it is set); the Nagle setting is unchanged.
pub fn push_pending(stream: &TcpStream) -> io::Result<()> {
    let nodelay = stream.nodelay()?;
    stream.set_nodelay(true)?;
    if !nodelay {
        stream.set_nodelay(false)?;
    }
    Ok(())
}

/// Raises an MPTCP socket's receive buffer so that it can offer at least `window` bytes of receive window,
/// and leaves the kernel's receive buffer autotuning on. For a connection that waited idle before its bulk
/// transfer, such as a held connection of a CPE's pool.
///
/// Why (Linux 6.18, `mptcp_rcv_space_adjust` in `net/mptcp/protocol.c`): the MPTCP socket sizes its receive
/// buffer from the largest receive-side RTT estimate of its subflows, caches that estimate, and does not
/// look again until that much time has passed. After an idle period the peer's first full-sized segment
/// echoes the last timestamp it had from us, from before the idle time, so the subflow's first RTT sample is
/// the idle time itself. TCP replaces it with the next, real sample one round trip later, but the MPTCP
/// socket has cached it by then: its buffer stays at its initial size (128 KiB, about 80 KB of window) for
/// as long as the connection was idle. An upload on a connection held for 5 s then runs at window / RTT
/// for its first 5 s. `SO_RCVBUF` would avoid that but locks the buffer for good and is capped by
/// `net.core.rmem_max`.
///
/// Mechanism: `SO_RCVLOWAT` on an MPTCP socket raises the socket's and its subflows' receive buffers (and the
/// subflows' window clamps) to fit the low-water mark without locking them (`mptcp_set_rcvlowat`,
/// `net/mptcp/sockopt.c`); setting the mark back to 1 restores the wakeups and leaves the buffers where they
/// are. The kernel caps the mark at half of `net.ipv4.tcp_rmem[2]`, the most autotuning could reach anyway.
/// Memory is only used by data the application has not read yet.
pub fn raise_receive_window(fd: &impl AsFd, window: u32) -> io::Result<()> {
    let fd = fd.as_fd();
    let window = libc::c_int::try_from(window).unwrap_or(libc::c_int::MAX);
    sys::setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_RCVLOWAT, window)?;
    sys::setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_RCVLOWAT, 1)
}

/// Gives an MPTCP connection that sends a send buffer of `size` bytes that does not shrink or wait for
/// autotuning, and keeps what it holds that is not sent yet under `unsent` bytes.
///
/// Why (Linux 6.18, `__mptcp_sync_sndbuf` in `net/mptcp/protocol.h`): an MPTCP socket's send buffer is the
/// sum of its subflows' autotuned ones, each sized from that subflow's own congestion window. Data the fast
/// path delivered after a byte still travelling on a slow path is not acknowledged at the connection level
/// until that byte arrives, and it stays in the send buffer meanwhile: DSL at 50 Mbit/s behind an LTE
/// round trip of 400 ms holds 2.5 MB that no subflow's autotuning counts. Measured on the testbed (uploads,
/// LTE 30 Mbit/s with 60 ms of jitter): the connection's buffer full (`ss -tmM`: `w` = `tb`), DSL stalling
/// for 0.3-0.6 s at a time; with a 4 MiB buffer DSL ran without a stall.
///
/// Mechanism: `SO_SNDBUFFORCE` (needs `CAP_NET_ADMIN`, which hcpe has) locks the size, which MPTCP hands to
/// the subflows. Without the capability nothing is changed and the error returned: plain `SO_SNDBUF` is
/// capped by `net.core.wmem_max` (208 KiB on a stock Debian) and would lock a buffer smaller than
/// autotuning's. `TCP_NOTSENT_LOWAT` on the
/// MPTCP socket (`mptcp_stream_memory_free`) then bounds the data the application may queue before the
/// subflows take it, so the larger buffer holds data in flight or waiting for a slow path, not a backlog.
pub fn hold_send_buffer(fd: &impl AsFd, size: u32, unsent: u32) -> io::Result<()> {
    let fd = fd.as_fd();
    let size = libc::c_int::try_from(size).unwrap_or(libc::c_int::MAX);
    sys::setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_SNDBUFFORCE, size)?;
    let unsent = libc::c_int::try_from(unsent).unwrap_or(libc::c_int::MAX);
    sys::setsockopt_int(fd, libc::IPPROTO_TCP, libc::TCP_NOTSENT_LOWAT, unsent)
}

/// Whether data in the SYN made it: on a client, the server acknowledged the SYN data; on an accepted
/// socket, the SYN carried data (`TCPI_OPT_SYN_DATA` of the initial subflow's `TCP_INFO`).
pub fn syn_data_acked(fd: &impl AsFd) -> io::Result<bool> {
    // SAFETY: libc::tcp_info is plain old data (integers only), so all-zero is a valid value.
    let mut ti: libc::tcp_info = unsafe { std::mem::zeroed() };
    sys::getsockopt_into(fd.as_fd(), libc::IPPROTO_TCP, libc::TCP_INFO, &mut ti)?;
    Ok(ti.tcpi_options & sys::TCPI_OPT_SYN_DATA != 0)
}
