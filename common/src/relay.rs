//! Bidirectional byte relay between two streams (LAN TCP <-> MPTCP on hcpe, MPTCP <-> server TCP on hag).
//!
//! What holds:
//! - Both directions are copied concurrently in one task, each through its own buffer ([`DEFAULT_BUFFER`]).
//! - Half-close: EOF read from one side becomes `shutdown(Write)` on the other, and the opposite direction keeps
//!   running until it sees EOF too. The relay ends normally when both directions are shut down.
//! - Idle timeout: the relay ends when no byte moved in either direction for `idle_timeout`.
//! - [`RelayCounters`] are updated after every write, so an admin API holding an `Arc` of them reads live
//!   values; they count bytes written to the destination side.
//!
//! Hand-written instead of `tokio::io::copy_bidirectional_with_sizes`: that function has the same half-close
//! behaviour but neither live counters nor an idle timeout, and both need to see each transfer.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::Ordering;

use portable_atomic::AtomicU64;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// Per-direction buffer size. 128 KiB keeps syscalls per byte low at multi-Gbit/s without much memory per
/// connection (2 x 128 KiB).
pub const DEFAULT_BUFFER: usize = 128 * 1024;

/// Live byte counters of one relay, shareable (`Arc<RelayCounters>`) with whoever reports them.
#[derive(Debug, Default)]
pub struct RelayCounters {
    /// Bytes read from `a` and written to `b`.
    pub a_to_b: AtomicU64,
    /// Bytes read from `b` and written to `a`.
    pub b_to_a: AtomicU64,
}

impl RelayCounters {
    /// Current values `(a_to_b, b_to_a)`.
    pub fn snapshot(&self) -> (u64, u64) {
        (self.a_to_b.load(Ordering::Relaxed), self.b_to_a.load(Ordering::Relaxed))
    }
}

/// Why a relay ended without an I/O error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayEnd {
    /// Both sides sent EOF and both shutdowns were passed on.
    Closed,
    /// Nothing moved for the idle timeout.
    IdleTimeout,
}

/// Result of a relay: bytes each way (this relay's own, also when the counters were pre-loaded) and how it
/// ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RelayOutcome {
    pub a_to_b: u64,
    pub b_to_a: u64,
    pub end: RelayEnd,
}

/// One side of the relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    A,
    B,
}

/// A relay that stopped on an I/O error. The byte counts up to that point are in the counters and here.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// Reading from a side failed (e.g. connection reset by that peer).
    #[error("relay: reading from side {side:?} failed after {a_to_b}/{b_to_a} bytes: {source}")]
    Read { side: Side, a_to_b: u64, b_to_a: u64, source: io::Error },
    /// Writing or shutting down towards a side failed.
    #[error("relay: writing to side {side:?} failed after {a_to_b}/{b_to_a} bytes: {source}")]
    Write { side: Side, a_to_b: u64, b_to_a: u64, source: io::Error },
}

impl RelayError {
    /// The underlying I/O error.
    pub fn io_error(&self) -> &io::Error {
        match self {
            RelayError::Read { source, .. } | RelayError::Write { source, .. } => source,
        }
    }
}

/// Relays between `a` and `b` until both directions closed, an error, or `idle_timeout` without traffic.
pub async fn relay<A, B>(
    a: A,
    b: B,
    idle_timeout: Duration,
    counters: &RelayCounters,
) -> Result<RelayOutcome, RelayError>
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    relay_with_buffer(a, b, idle_timeout, counters, DEFAULT_BUFFER).await
}

/// [`relay`] with an explicit per-direction buffer size.
pub async fn relay_with_buffer<A, B>(
    mut a: A,
    mut b: B,
    idle_timeout: Duration,
    counters: &RelayCounters,
    buffer: usize,
) -> Result<RelayOutcome, RelayError>
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let mut ab = Direction::new(buffer, Side::A, Side::B);
    let mut ba = Direction::new(buffer, Side::B, Side::A);
    let mut last_activity = Instant::now();
    let mut idle: Pin<Box<Sleep>> = Box::pin(tokio::time::sleep_until(last_activity + idle_timeout));

    std::future::poll_fn(|cx| {
        let mut moved = false;
        let res_ab = ab.poll(cx, &mut a, &mut b, &counters.a_to_b, &mut moved);
        let res_ba = ba.poll(cx, &mut b, &mut a, &counters.b_to_a, &mut moved);
        let counts = |ab: &Direction, ba: &Direction| (ab.moved, ba.moved);
        for res in [res_ab, res_ba] {
            if let Poll::Ready(Err(e)) = res {
                let (a_to_b, b_to_a) = counts(&ab, &ba);
                return Poll::Ready(Err(e.into_error(a_to_b, b_to_a)));
            }
        }
        let (a_to_b, b_to_a) = counts(&ab, &ba);
        if ab.finished && ba.finished {
            return Poll::Ready(Ok(RelayOutcome { a_to_b, b_to_a, end: RelayEnd::Closed }));
        }
        if moved {
            last_activity = Instant::now();
        }
        // The timer is only re-armed when it fires early, not on every transfer (that would cost a
        // timer-wheel update per read).
        while idle.as_mut().poll(cx).is_ready() {
            let deadline = last_activity + idle_timeout;
            if deadline <= Instant::now() {
                return Poll::Ready(Ok(RelayOutcome { a_to_b, b_to_a, end: RelayEnd::IdleTimeout }));
            }
            idle.as_mut().reset(deadline);
        }
        Poll::Pending
    })
    .await
}

/// Failure inside one direction, before the byte counts are attached.
enum DirError {
    Read(Side, io::Error),
    Write(Side, io::Error),
}

impl DirError {
    fn into_error(self, a_to_b: u64, b_to_a: u64) -> RelayError {
        match self {
            DirError::Read(side, source) => RelayError::Read { side, a_to_b, b_to_a, source },
            DirError::Write(side, source) => RelayError::Write { side, a_to_b, b_to_a, source },
        }
    }
}

/// State of one copy direction: read into `buf`, write `buf[pos..cap]` out, pass EOF on as a shutdown.
struct Direction {
    buf: Box<[u8]>,
    pos: usize,
    cap: usize,
    read_eof: bool,
    need_flush: bool,
    finished: bool,
    moved: u64,
    from: Side,
    to: Side,
}

impl Direction {
    fn new(size: usize, from: Side, to: Side) -> Self {
        Direction {
            buf: vec![0; size.max(1)].into_boxed_slice(),
            pos: 0,
            cap: 0,
            read_eof: false,
            need_flush: false,
            finished: false,
            moved: 0,
            from,
            to,
        }
    }

    /// Reads into the free tail `buf[cap..]`; EOF sets `read_eof`.
    fn fill<R: AsyncRead + Unpin>(
        &mut self,
        cx: &mut Context<'_>,
        reader: &mut R,
        moved: &mut bool,
    ) -> Poll<Result<(), DirError>> {
        let mut rb = ReadBuf::new(&mut self.buf[self.cap..]);
        ready!(Pin::new(&mut *reader).poll_read(cx, &mut rb)).map_err(|e| DirError::Read(self.from, e))?;
        let n = rb.filled().len();
        if n == 0 {
            self.read_eof = true;
        } else {
            self.cap += n;
            *moved = true;
        }
        Poll::Ready(Ok(()))
    }

    /// Drives this direction as far as it can go without blocking. `Ready(Ok)` once finished (EOF passed on),
    /// `Pending` while waiting on either stream.
    fn poll<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        reader: &mut R,
        writer: &mut W,
        counter: &AtomicU64,
        moved: &mut bool,
    ) -> Poll<Result<(), DirError>>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        if self.finished {
            return Poll::Ready(Ok(()));
        }
        // Bounded so one busy direction cannot starve the other or the timer inside one poll.
        for _ in 0..32 {
            if self.pos == self.cap && !self.read_eof {
                self.pos = 0;
                self.cap = 0;
                match self.fill(cx, reader, moved) {
                    Poll::Ready(r) => r?,
                    Poll::Pending => {
                        // Nothing new to read: push out what the writer may be holding back.
                        if self.need_flush {
                            ready!(Pin::new(&mut *writer).poll_flush(cx)).map_err(|e| DirError::Write(self.to, e))?;
                            self.need_flush = false;
                        }
                        return Poll::Pending;
                    }
                }
            }
            while self.pos < self.cap {
                let n = match Pin::new(&mut *writer).poll_write(cx, &self.buf[self.pos..self.cap]) {
                    Poll::Ready(r) => r.map_err(|e| DirError::Write(self.to, e))?,
                    Poll::Pending => {
                        // While the writer is full, top the buffer up so the next write is larger.
                        if !self.read_eof
                            && self.cap < self.buf.len()
                            && let Poll::Ready(r) = self.fill(cx, reader, moved)
                        {
                            r?;
                        }
                        return Poll::Pending;
                    }
                };
                if n == 0 {
                    let e = io::Error::new(io::ErrorKind::WriteZero, "write returned 0 bytes");
                    return Poll::Ready(Err(DirError::Write(self.to, e)));
                }
                self.pos += n;
                self.moved += n as u64;
                self.need_flush = true;
                counter.fetch_add(n as u64, Ordering::Relaxed);
                *moved = true;
            }
            if self.read_eof {
                match ready!(Pin::new(&mut *writer).poll_shutdown(cx)) {
                    Ok(()) => {}
                    // The peer is already gone for writing: nothing left to tell it.
                    Err(e) if e.kind() == io::ErrorKind::NotConnected => {}
                    Err(e) => return Poll::Ready(Err(DirError::Write(self.to, e))),
                }
                self.finished = true;
                return Poll::Ready(Ok(()));
            }
        }
        // Budget used up while data kept flowing: yield, but ask to be polled again right away.
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, duplex};

    const LONG: Duration = Duration::from_secs(3600);

    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
    }

    #[tokio::test]
    async fn copies_both_ways_and_ends_when_both_close() {
        let (a_app, a_relay) = duplex(64 * 1024);
        let (b_app, b_relay) = duplex(64 * 1024);
        let counters = Arc::new(RelayCounters::default());
        let c2 = counters.clone();
        let task = tokio::spawn(async move { relay(a_relay, b_relay, LONG, &c2).await });

        let up = pattern(3_000_000, 1);
        let down = pattern(2_000_000, 2);
        let (mut a_rd, mut a_wr) = tokio::io::split(a_app);
        let (mut b_rd, mut b_wr) = tokio::io::split(b_app);
        let (up2, down2) = (up.clone(), down.clone());
        let a_send = tokio::spawn(async move {
            a_wr.write_all(&up2).await.unwrap();
            a_wr.shutdown().await.unwrap();
        });
        let b_send = tokio::spawn(async move {
            b_wr.write_all(&down2).await.unwrap();
            b_wr.shutdown().await.unwrap();
        });
        let mut at_b = Vec::new();
        let mut at_a = Vec::new();
        let (r1, r2) = tokio::join!(b_rd.read_to_end(&mut at_b), a_rd.read_to_end(&mut at_a));
        r1.unwrap();
        r2.unwrap();
        a_send.await.unwrap();
        b_send.await.unwrap();
        assert!(at_b == up, "a->b bytes intact");
        assert!(at_a == down, "b->a bytes intact");

        let out = task.await.unwrap().unwrap();
        assert_eq!(out, RelayOutcome { a_to_b: 3_000_000, b_to_a: 2_000_000, end: RelayEnd::Closed });
        assert_eq!(counters.snapshot(), (3_000_000, 2_000_000));
    }

    /// EOF from `closer` is passed on as EOF to the other side, and the other direction keeps working.
    async fn half_close(close_a_first: bool) {
        let (a_app, a_relay) = duplex(1024);
        let (b_app, b_relay) = duplex(1024);
        let counters = Arc::new(RelayCounters::default());
        let c2 = counters.clone();
        let task = tokio::spawn(async move { relay(a_relay, b_relay, LONG, &c2).await });
        let (mut closer, mut other) = if close_a_first { (a_app, b_app) } else { (b_app, a_app) };

        closer.write_all(b"request").await.unwrap();
        closer.shutdown().await.unwrap();
        let mut got = Vec::new();
        other.read_to_end(&mut got).await.unwrap(); // returns only because EOF was passed on
        assert_eq!(got, b"request");

        // The reverse direction is still open: a long answer after the half-close arrives in full.
        let answer = pattern(500_000, 9);
        let answer2 = answer.clone();
        let writer = tokio::spawn(async move {
            other.write_all(&answer2).await.unwrap();
            other.shutdown().await.unwrap();
            other
        });
        let mut back = Vec::new();
        closer.read_to_end(&mut back).await.unwrap();
        assert!(back == answer);
        drop(writer.await.unwrap());

        let out = task.await.unwrap().unwrap();
        assert_eq!(out.end, RelayEnd::Closed);
        let (fwd, rev) = if close_a_first { (out.a_to_b, out.b_to_a) } else { (out.b_to_a, out.a_to_b) };
        assert_eq!((fwd, rev), (7, 500_000));
    }

    #[tokio::test]
    async fn half_close_from_a_keeps_b_to_a_running() {
        half_close(true).await;
    }

    #[tokio::test]
    async fn half_close_from_b_keeps_a_to_b_running() {
        half_close(false).await;
    }

    #[tokio::test(start_paused = true)]
    async fn idle_timeout_counts_from_the_last_byte_either_way() {
        let (mut a_app, a_relay) = duplex(1024);
        let (mut b_app, b_relay) = duplex(1024);
        let counters = Arc::new(RelayCounters::default());
        let c2 = counters.clone();
        let start = Instant::now();
        let task = tokio::spawn(async move { relay(a_relay, b_relay, Duration::from_secs(30), &c2).await });

        // Traffic every 20 s, alternating direction, keeps it alive past several idle periods.
        let mut buf = [0u8; 4];
        for i in 0..6 {
            tokio::time::sleep(Duration::from_secs(20)).await;
            if i % 2 == 0 {
                a_app.write_all(b"ping").await.unwrap();
                b_app.read_exact(&mut buf).await.unwrap();
            } else {
                b_app.write_all(b"pong").await.unwrap();
                a_app.read_exact(&mut buf).await.unwrap();
            }
            assert!(!task.is_finished(), "closed while traffic flowed (round {i})");
            assert_eq!(counters.snapshot(), (4 * (i / 2 + 1), 4 * u64::div_ceil(i, 2)), "counters are live");
        }
        let last = Instant::now();
        let out = task.await.unwrap().unwrap();
        assert_eq!(out, RelayOutcome { a_to_b: 12, b_to_a: 12, end: RelayEnd::IdleTimeout });
        let idle_for = Instant::now() - last;
        // One idle period after the last byte (the timer wheel rounds up to the next millisecond).
        assert!(idle_for >= Duration::from_secs(30) && idle_for < Duration::from_millis(30_010), "{idle_for:?}");
        assert!(last - start >= Duration::from_secs(120));
    }

    #[tokio::test(start_paused = true)]
    async fn idle_timeout_also_applies_after_a_half_close() {
        let (mut a_app, a_relay) = duplex(1024);
        let (_b_app, b_relay) = duplex(1024);
        let counters = RelayCounters::default();
        let relay_fut = relay(a_relay, b_relay, Duration::from_secs(10), &counters);
        let client = async {
            a_app.shutdown().await.unwrap();
            a_app // keep it open for reading
        };
        let (out, _a) = tokio::join!(relay_fut, client);
        assert_eq!(out.unwrap().end, RelayEnd::IdleTimeout);
    }

    /// Bench, not a test: `cargo test --release -p common --lib relay_goodput -- --ignored --nocapture`.
    /// sender =MPTCP=> relay -TCP-> sink over loopback, 1 GiB one way; prints relay goodput against
    /// tokio's copy_bidirectional_with_sizes (same buffer size) in the same run.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore]
    async fn relay_goodput_vs_copy_bidirectional() {
        use crate::mptcp;
        const TOTAL: u64 = 1 << 30;
        async fn run(ours: bool) -> f64 {
            let front = mptcp::listen("127.0.0.1:0".parse().unwrap(), 16, None).unwrap();
            let back = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let (faddr, baddr) = (front.local_addr().unwrap(), back.local_addr().unwrap());
            let sink = tokio::spawn(async move {
                let (mut s, _) = back.accept().await.unwrap();
                let mut buf = vec![0u8; DEFAULT_BUFFER];
                let mut n = 0u64;
                loop {
                    let r = s.read(&mut buf).await.unwrap();
                    if r == 0 {
                        break n;
                    }
                    n += r as u64;
                }
            });
            let relay_task = tokio::spawn(async move {
                let (a, _) = front.accept().await.unwrap();
                assert!(mptcp::info(&a).unwrap().is_some());
                let b = tokio::net::TcpStream::connect(baddr).await.unwrap();
                if ours {
                    relay(a, b, LONG, &RelayCounters::default()).await.unwrap();
                } else {
                    let (mut a, mut b) = (a, b);
                    tokio::io::copy_bidirectional_with_sizes(&mut a, &mut b, DEFAULT_BUFFER, DEFAULT_BUFFER)
                        .await
                        .unwrap();
                }
            });
            let opts = mptcp::ConnectOptions { fastopen: false, ..Default::default() };
            let (mut src, _) = mptcp::connect_with_data(faddr, b"", &opts).await.unwrap();
            let start = std::time::Instant::now();
            let chunk = vec![0xa5u8; DEFAULT_BUFFER];
            let mut left = TOTAL;
            while left > 0 {
                let n = left.min(chunk.len() as u64) as usize;
                src.write_all(&chunk[..n]).await.unwrap();
                left -= n as u64;
            }
            src.shutdown().await.unwrap();
            assert_eq!(sink.await.unwrap(), TOTAL);
            let secs = start.elapsed().as_secs_f64();
            drop(src);
            relay_task.await.unwrap();
            TOTAL as f64 * 8.0 / secs / 1e9
        }
        let base = run(false).await;
        let ours = run(true).await;
        let base2 = run(false).await;
        let ours2 = run(true).await;
        println!(
            "relay goodput MPTCP->TCP loopback: relay {ours:.2}/{ours2:.2} Gbit/s, copy_bidirectional {base:.2}/{base2:.2} Gbit/s, ratio {:.2}",
            (ours + ours2) / (base + base2)
        );
    }

    #[tokio::test]
    async fn reset_on_one_side_is_an_error_with_counts() {
        let (mut a_app, a_relay) = duplex(1024);
        let (b_app, b_relay) = duplex(1024);
        let counters = RelayCounters::default();
        let relay_fut = relay(a_relay, b_relay, LONG, &counters);
        let driver = async move {
            let mut b_app = b_app;
            a_app.write_all(b"hi").await.unwrap();
            let mut buf = [0u8; 2];
            b_app.read_exact(&mut buf).await.unwrap();
            drop(b_app); // the B peer vanishes: writes towards B fail
            a_app.write_all(b"more").await.unwrap();
            a_app
        };
        let (res, _a) = tokio::join!(relay_fut, driver);
        match res.unwrap_err() {
            RelayError::Write { side: Side::B, a_to_b: 2, .. } => {}
            other => panic!("unexpected: {other:?}"),
        }
    }
}
