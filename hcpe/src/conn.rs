//! One intercepted LAN connection, from accept to close: Convert request (Connect + Auth + the client's first
//! bytes) to hag over MPTCP with TCP Fast Open, the Convert reply, then the relay; or the configured fallback.
//! Also the table of open connections ([`Connections`]) that the admin API lists and closes.
//!
//! Invariants:
//! - a Convert Error reply from hag resets the LAN connection (RST via `SO_LINGER` 0), so a refused
//!   destination looks refused to the client, never like an accepted-then-closed one;
//! - hag unreachable or the exchange failing before any reply byte reached the client triggers the fallback:
//!   `direct` replays the client bytes read so far to the destination over plain TCP, `reject` resets;
//! - no client byte is read before the reply is known except the first batch, which is kept for the replay;
//! - every outcome is counted once in [`ConnCounters`];
//! - a connection is listed in [`Connections`] exactly while its task runs (the [`Entry`] guard removes it on
//!   drop); its byte counters are live, and are added to [`ConnCounters`] once when it ends, however it ends;
//!   cancelling [`Connection::close`] (admin `DELETE`) ends the task, which drops both sockets.

use std::io;
use std::net::SocketAddr;
use std::ops::Deref;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::uplink::Attempt;
use common::admin::table::{self, Table};
use common::admin::{ConnId, HasConnId};
use common::convert::{self, Decoded};
use common::mptcp::{ConnectOptions, connect_with_data};
use common::relay::RelayCounters;
use common::stream::SharedStream;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, warn};

use crate::config::{Config, Fallback};
use crate::nat::Flow;

/// Largest first batch of client bytes sent along with the Convert request.
const FIRST_BYTES_MAX: usize = 1200;
/// Client bytes forwarded to hag before its reply, kept for a direct replay; past it the client waits.
const REPLAY_MAX: usize = 256 * 1024;

/// Outcome counters of all connections; the admin API exports them.
#[derive(Debug, Default)]
pub struct ConnCounters {
    /// LAN connections accepted on the TUN listeners.
    pub accepted: AtomicU64,
    /// Connections currently open.
    pub active: AtomicU64,
    /// Converted through hag (success reply).
    pub converted: AtomicU64,
    /// hag answered with an Error TLV; the client was reset.
    pub refused: AtomicU64,
    /// Carried directly because hag was unreachable (`fallback: direct`).
    pub fallback_direct: AtomicU64,
    /// Reset because hag was unreachable (`fallback: reject`) or the direct attempt failed.
    pub rejected: AtomicU64,
    /// Accepted but without a NAT entry (expired before accept): reset.
    pub orphaned: AtomicU64,
    /// Bytes client -> server and server -> client, all connections (added when a connection ends).
    pub bytes_up: AtomicU64,
    pub bytes_down: AtomicU64,
    /// hag's Error replies by code (index as in [`ERROR_CODES`]); their sum is `refused`.
    pub refused_by_code: [AtomicU64; ERROR_CODES.len()],
    /// Convert exchanges with hag that failed (before the fallback), by [`ExchangeError::kind`] (index as in
    /// [`EXCHANGE_FAILURES`]).
    pub exchange_failed: [AtomicU64; EXCHANGE_FAILURES.len()],
    /// Closed through the admin API (`DELETE /api/v1/connections/{id}`).
    pub closed_by_admin: AtomicU64,
    /// Connections to hag whose first attempt was slow, so a second one started over another uplink.
    pub races: AtomicU64,
    /// Races the second attempt won (the first uplink was slow or dead).
    pub races_won_second: AtomicU64,
}

/// The Convert error codes counted one by one (RFC 8803 §4.2.9); any other code counts as the last.
pub const ERROR_CODES: [convert::ErrorCode; 11] = [
    convert::ErrorCode::UnsupportedVersion,
    convert::ErrorCode::MalformedMessage,
    convert::ErrorCode::UnsupportedMessage,
    convert::ErrorCode::MissingCookie,
    convert::ErrorCode::NotAuthorized,
    convert::ErrorCode::UnsupportedTcpOption,
    convert::ErrorCode::ResourceExceeded,
    convert::ErrorCode::NetworkFailure,
    convert::ErrorCode::ConnectionReset,
    convert::ErrorCode::DestinationUnreachable,
    convert::ErrorCode::Unknown(255),
];

/// Labels of [`ConnCounters::exchange_failed`], in index order.
pub const EXCHANGE_FAILURES: [&str; 6] = ["no_route", "request", "io", "closed", "malformed", "timeout"];

impl ConnCounters {
    /// Counts an Error reply of hag.
    pub fn refused_with(&self, code: convert::ErrorCode) {
        self.refused.fetch_add(1, Relaxed);
        let i = ERROR_CODES.iter().position(|c| *c == code).unwrap_or(ERROR_CODES.len() - 1);
        self.refused_by_code[i].fetch_add(1, Relaxed);
    }
}

/// One open LAN connection, as the admin API shows it (RFC 6897 CONNID: the MPTCP token of its hag connection).
#[derive(Debug)]
pub struct Connection {
    /// Unique within this run; names connections without an MPTCP token (`tcp-<seq>`).
    pub seq: u64,
    /// The LAN client.
    pub client: SocketAddr,
    /// Where the client wanted to go.
    pub destination: SocketAddr,
    /// When it was accepted (wall clock, for display).
    pub accepted_at: SystemTime,
    /// When it was accepted (monotonic, for ages).
    pub accepted: Instant,
    /// The uplink whose address the connection to hag was bound to (its initial subflow); set when the
    /// bound address is a configured one.
    pub uplink_initial: OnceLock<String>,
    /// Local MPTCP token of the connection to hag, set once hag accepted it; `None` inside when that
    /// connection is plain TCP.
    pub token: OnceLock<Option<u32>>,
    /// Carried directly to the destination (`fallback: direct`), not through hag.
    pub direct: OnceLock<()>,
    /// Bytes client -> server (`a_to_b`) and back (`b_to_a`), live.
    pub counters: RelayCounters,
    /// The hag socket once relaying through hag, for `MPTCP_FULL_INFO` (subflows); a weak handle, not a
    /// duplicate fd (see `common::stream`), so upgrading fails once the relay closed it.
    pub hag: OnceLock<Weak<TcpStream>>,
    /// Cancelled to close the connection from outside (admin `DELETE`).
    pub close: CancellationToken,
}

impl Connection {
    /// The connection is not (or no longer) carried as MPTCP to hag: carried directly, or the hag connection
    /// fell back to plain TCP. Unknown while the exchange with hag runs: `false`.
    pub fn fallback(&self) -> bool {
        self.direct.get().is_some() || matches!(self.token.get(), Some(None))
    }
}

/// All open connections (the table logic is `common::admin::table`; this adds how an hcpe connection starts).
#[derive(Debug, Default)]
pub struct Connections(Table<Connection>);

/// Keeps a connection listed; removes it on drop.
pub type Entry = table::Entry<Connection>;

impl Connections {
    /// Registers a connection; it stays listed until the returned guard is dropped.
    pub fn insert(&self, client: SocketAddr, destination: SocketAddr) -> Entry {
        self.0.insert(|seq| Connection {
            seq,
            client,
            destination,
            accepted_at: SystemTime::now(),
            accepted: Instant::now(),
            uplink_initial: OnceLock::new(),
            token: OnceLock::new(),
            direct: OnceLock::new(),
            counters: RelayCounters::default(),
            hag: OnceLock::new(),
            close: CancellationToken::new(),
        })
    }
}

impl Deref for Connections {
    type Target = Table<Connection>;

    fn deref(&self) -> &Table<Connection> {
        &self.0
    }
}

impl HasConnId for Connection {
    fn conn_id(&self) -> ConnId {
        ConnId::new(self.token.get(), self.seq)
    }
}

/// What every connection task needs.
#[derive(Debug)]
pub struct Shared {
    pub config: Config,
    pub counters: ConnCounters,
    /// The uplink manager's choice of source address by health; `None`: the first uplink in config order.
    pub sources: Option<crate::uplink::SourceSelector>,
    /// Open connections (admin API).
    pub connections: Arc<Connections>,
}

/// Why the Convert exchange did not produce a usable hag connection (fallback applies).
#[derive(Debug, thiserror::Error)]
pub enum ExchangeError {
    /// No uplink has an address of a hag address's family.
    #[error("no uplink can reach any hag address")]
    NoRoute,
    /// Building the signed request failed.
    #[error("building the Convert request: {0}")]
    Request(String),
    /// Connecting or talking to hag failed.
    #[error("hag {hag}: {source}")]
    Io { hag: SocketAddr, source: io::Error },
    /// hag closed before a whole reply arrived.
    #[error("hag {0} closed before replying")]
    Closed(SocketAddr),
    /// hag's reply did not parse.
    #[error("hag {hag} sent a malformed reply ({code:?})")]
    Malformed { hag: SocketAddr, code: convert::ErrorCode },
    /// No reply in time.
    #[error("hag {0} did not reply in time")]
    Timeout(SocketAddr),
}

impl ExchangeError {
    /// Metric label ([`EXCHANGE_FAILURES`]).
    pub fn kind(&self) -> &'static str {
        match self {
            ExchangeError::NoRoute => "no_route",
            ExchangeError::Request(_) => "request",
            ExchangeError::Io { .. } => "io",
            ExchangeError::Closed(_) => "closed",
            ExchangeError::Malformed { .. } => "malformed",
            ExchangeError::Timeout(_) => "timeout",
        }
    }
}

/// Result of a successful exchange.
enum Reply {
    /// Success: the stream to hag plus server bytes that came right after the reply header.
    Converted(TcpStream, Vec<u8>),
    /// hag refused with this error code.
    Refused(convert::ErrorCode),
}

/// Resets `stream`: linger 0 then close sends an RST instead of a FIN.
pub fn reset(stream: TcpStream) {
    let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
    drop(stream);
}

/// Handles one accepted LAN connection to its end.
pub async fn handle(client: TcpStream, flow: Flow, shared: Arc<Shared>) {
    let span = tracing::info_span!("conn", client = %flow.client, dest = %flow.dest);
    let c = &shared.counters;
    c.active.fetch_add(1, Relaxed);
    let entry = shared.connections.insert(flow.client, flow.dest);
    let conn = entry.conn().clone();
    async {
        tokio::select! {
            () = run(client, flow, &shared, &conn) => {}
            () = conn.close.cancelled() => {
                c.closed_by_admin.fetch_add(1, Relaxed);
                info!(
                    up = conn.counters.a_to_b.load(Relaxed),
                    down = conn.counters.b_to_a.load(Relaxed),
                    "closed through the admin API"
                );
            }
        }
    }
    .instrument(span)
    .await;
    c.bytes_up.fetch_add(conn.counters.a_to_b.load(Relaxed), Relaxed);
    c.bytes_down.fetch_add(conn.counters.b_to_a.load(Relaxed), Relaxed);
    drop(entry);
    c.active.fetch_sub(1, Relaxed);
}

async fn run(mut client: TcpStream, flow: Flow, shared: &Shared, conn: &Connection) {
    let cfg = &shared.config;
    let c = &shared.counters;
    let _ = client.set_nodelay(true);
    // Whatever the client already sent rides in the SYN; do not wait for more.
    let mut first = vec![0u8; FIRST_BYTES_MAX];
    let n = match client.try_read(&mut first) {
        Ok(n) => n,
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
        Err(e) => {
            debug!(error = %e, "client read failed");
            return;
        }
    };
    first.truncate(n);

    match exchange(flow, &mut first, &mut client, shared, conn).await {
        Ok(Reply::Converted(hag, early)) => {
            c.converted.fetch_add(1, Relaxed);
            // Listed by token, with subflows, only once it relays: a failed exchange leaves no fd behind that
            // would keep hag's end of it open.
            let _ = conn.token.set(common::mptcp::info(&hag).ok().flatten().map(|i| i.token));
            let hag = SharedStream::new(hag);
            let _ = conn.hag.set(hag.downgrade());
            debug!(first_bytes = first.len(), "converted");
            conn.counters.a_to_b.fetch_add(first.len() as u64, Relaxed);
            if !early.is_empty() && client.write_all(&early).await.is_err() {
                return;
            }
            conn.counters.b_to_a.fetch_add(early.len() as u64, Relaxed);
            relay(client, hag, cfg.limits.idle_timeout, &conn.counters).await;
        }
        Ok(Reply::Refused(code)) => {
            c.refused_with(code);
            info!(?code, "hag refused; resetting client");
            reset(client);
        }
        Err(e) => {
            c.exchange_failed[EXCHANGE_FAILURES.iter().position(|k| *k == e.kind()).unwrap_or(0)].fetch_add(1, Relaxed);
            warn!(error = %e, fallback = ?cfg.fallback, "hag unavailable");
            match cfg.fallback {
                Fallback::Reject => {
                    c.rejected.fetch_add(1, Relaxed);
                    reset(client);
                }
                Fallback::Direct => match direct(flow, &first, cfg).await {
                    Ok(server) => {
                        c.fallback_direct.fetch_add(1, Relaxed);
                        let _ = conn.direct.set(());
                        conn.counters.a_to_b.fetch_add(first.len() as u64, Relaxed);
                        relay(client, server, cfg.limits.idle_timeout, &conn.counters).await;
                    }
                    Err(e) => {
                        c.rejected.fetch_add(1, Relaxed);
                        info!(error = %e, "direct connection failed; resetting client");
                        reset(client);
                    }
                },
            }
        }
    }
}

/// The hag address to use and the attempts to reach it: the healthiest uplink by role (uplink manager) and its
/// race partner, else the first uplink (in preference order) with an address of the hag address's family.
fn plan(cfg: &Config, sources: Option<&crate::uplink::SourceSelector>) -> Option<(SocketAddr, Vec<Attempt>)> {
    if let Some(sel) = sources {
        return cfg
            .hag_addresses
            .iter()
            .find_map(|h| Some((*h, sel.attempts_for(h.ip()))).filter(|(_, a)| !a.is_empty()));
    }
    cfg.uplinks.iter().enumerate().find_map(|(uplink, u)| {
        cfg.hag_addresses
            .iter()
            .find_map(|h| Some((*h, vec![Attempt { uplink, source: u.source_for(h.ip())?, srtt: None }])))
    })
}

/// Runs `first`; when it has not completed after `delay` (or failed before), also `second`; the first to
/// connect wins and the other is dropped with its socket (a SYN still unanswered leaves no trace at hag: its
/// late SYN-ACK meets a reset). Returns the outcome, which attempt it is (0 or 1), and whether the second
/// attempt started. Both failing returns the first attempt's error.
async fn race<T>(
    first: impl Future<Output = io::Result<T>>,
    second: Option<(Duration, impl Future<Output = io::Result<T>>)>,
) -> (io::Result<T>, usize, bool) {
    tokio::pin!(first);
    let Some((delay, second)) = second else { return (first.await, 0, false) };
    let first_err = tokio::select! {
        r = &mut first => match r {
            Ok(s) => return (Ok(s), 0, false),
            Err(e) => Some(e),
        },
        () = tokio::time::sleep(delay) => None,
    };
    tokio::pin!(second);
    let (r, winner) = match first_err {
        Some(e) => match second.await {
            Ok(s) => (Ok(s), 1),
            Err(_) => (Err(e), 0),
        },
        None => tokio::select! {
            r = &mut first => match r {
                Ok(s) => (Ok(s), 0),
                Err(e) => match second.await {
                    Ok(s) => (Ok(s), 1),
                    Err(_) => (Err(e), 0),
                },
            },
            r = &mut second => match r {
                Ok(s) => (Ok(s), 1),
                Err(_) => (first.await, 0),
            },
        },
    };
    (r, winner, true)
}

async fn exchange(
    flow: Flow,
    first: &mut Vec<u8>,
    client: &mut TcpStream,
    shared: &Shared,
    conn: &Connection,
) -> Result<Reply, ExchangeError> {
    let cfg = &shared.config;
    let (hag, attempts) = plan(cfg, shared.sources.as_ref()).ok_or(ExchangeError::NoRoute)?;
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let nonce = convert::auth::random_nonce().map_err(|e| ExchangeError::Request(e.to_string()))?;
    let mut request = convert::auth::signed_request(&cfg.key.0, flow.dest, &cfg.cpe_id, now, nonce)
        .map_err(|e| ExchangeError::Request(e.to_string()))?;
    request.extend_from_slice(first);
    let io_err = |source| ExchangeError::Io { hag, source };
    let opts = |a: &Attempt, fastopen: bool| ConnectOptions {
        bind: Some(SocketAddr::new(a.source, 0)),
        bind_device: None,
        mptcp: true,
        fastopen,
        timeout: cfg.limits.connect_timeout,
    };
    let first_opts = opts(&attempts[0], cfg.fastopen);
    // The second attempt sends the request after its handshake, never in its SYN: should both SYNs reach hag,
    // only the winner's request is ever read.
    let second_opts = attempts.get(1).map(|a| opts(a, false));
    let second = second_opts
        .as_ref()
        .zip(cfg.race.delay(attempts[0].srtt))
        .map(|(o, delay)| (delay, connect_with_data(hag, &[], o)));
    let delay = second.as_ref().map(|(d, _)| *d);
    let (connected, winner, raced) = race(connect_with_data(hag, &request, &first_opts), second).await;
    if raced {
        shared.counters.races.fetch_add(1, Relaxed);
        if winner == 1 {
            shared.counters.races_won_second.fetch_add(1, Relaxed);
        }
        debug!(?delay, winner, "raced the connection to hag over a second uplink");
    }
    let (mut stream, sent) = connected.map_err(io_err)?;
    let won = &attempts[winner];
    if let Some(sel) = &shared.sources {
        // MPTCP_INFO answers only for a connection that negotiated MPTCP: none means it fell back to plain TCP
        // at the handshake (the MPTCP option stripped on the way, most likely).
        sel.report_connect(won.uplink, common::mptcp::info(&stream).ok().flatten().is_some());
    }
    if let Some(u) = cfg.uplinks.get(won.uplink) {
        let _ = conn.uplink_initial.set(u.name.clone());
    }
    let _ = stream.set_nodelay(true);
    if sent < request.len() {
        stream.write_all(&request[sent..]).await.map_err(io_err)?;
    }
    // Client bytes keep flowing to hag while we wait for the reply (and are kept in `first` for a direct
    // replay): waiting for the reply first deadlocks when hag's reply sits unsent until hag writes again,
    // which happens with TFO on kernel MPTCP when the client had not sent anything yet.
    let mut buf = Vec::with_capacity(4096);
    let mut client_open = true;
    let read_reply = async {
        let mut chunk = vec![0u8; 16 * 1024];
        let mut from_client = vec![0u8; 16 * 1024];
        loop {
            match convert::decode(&buf) {
                Decoded::Done { message, consumed } => {
                    if let Some(code) = message.error() {
                        return Ok(Reply::Refused(code));
                    }
                    let early = buf.split_off(consumed);
                    return Ok(Reply::Converted(stream, early));
                }
                Decoded::Error(code) => return Err(ExchangeError::Malformed { hag, code }),
                Decoded::NeedMore => {}
            }
            let room = client_open && first.len() < REPLAY_MAX;
            tokio::select! {
                r = stream.read(&mut chunk) => {
                    let n = r.map_err(io_err)?;
                    if n == 0 {
                        return Err(ExchangeError::Closed(hag));
                    }
                    buf.extend_from_slice(&chunk[..n]);
                }
                // Diagnostic + safety net: a reply that is readable without a readiness event.
                _ = tokio::time::sleep(Duration::from_millis(200)) => match stream.try_read(&mut chunk) {
                    Ok(0) => return Err(ExchangeError::Closed(hag)),
                    Ok(n) => {
                        warn!(bytes = n, "hag reply was readable without a wakeup");
                        buf.extend_from_slice(&chunk[..n]);
                    }
                    Err(_) => {}
                },
                r = client.read(&mut from_client), if room => match r {
                    Ok(0) | Err(_) => client_open = false,
                    Ok(n) => {
                        first.extend_from_slice(&from_client[..n]);
                        stream.write_all(&from_client[..n]).await.map_err(io_err)?;
                    }
                },
            }
        }
    };
    tokio::time::timeout(cfg.limits.reply_timeout, read_reply).await.map_err(|_| ExchangeError::Timeout(hag))?
}

/// `fallback: direct`: plain TCP to the destination from the primary uplink, replaying the first bytes.
async fn direct(flow: Flow, first: &[u8], cfg: &Config) -> io::Result<TcpStream> {
    let bind = cfg.uplinks.iter().find_map(|u| u.source_for(flow.dest.ip())).map(|ip| SocketAddr::new(ip, 0));
    let opts =
        ConnectOptions { bind, bind_device: None, mptcp: false, fastopen: false, timeout: cfg.limits.connect_timeout };
    let (mut stream, _) = connect_with_data(flow.dest, &[], &opts).await?;
    let _ = stream.set_nodelay(true);
    stream.write_all(first).await?;
    Ok(stream)
}

/// Relays until both sides closed (or idle, or an error); `counters` hold the connection's totals.
async fn relay<S>(client: TcpStream, server: S, idle: Duration, counters: &RelayCounters)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let result = common::relay::relay(client, server, idle, counters).await;
    let up = counters.a_to_b.load(Relaxed);
    let down = counters.b_to_a.load(Relaxed);
    match result {
        Ok(outcome) => debug!(up, down, ?outcome, "relay done"),
        Err(e) => debug!(up, down, error = %e, "relay ended with an error"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_are_listed_while_their_guard_lives_and_found_by_token() {
        let t = Arc::new(Connections::default());
        let (client, dest) = ("192.168.1.2:40000".parse().unwrap(), "198.18.4.2:80".parse().unwrap());
        let a = t.insert(client, dest);
        let b = t.insert(client, dest);
        a.conn().token.set(Some(7)).unwrap();
        b.conn().token.set(None).unwrap();
        assert!(b.conn().fallback(), "plain TCP to hag");
        assert!(!a.conn().fallback());
        assert_eq!(t.by_conn_id(ConnId::Token(7)).map(|c| c.seq), Some(a.conn().seq));
        assert!(t.by_conn_id(ConnId::Token(8)).is_none());
        assert_eq!(b.conn().conn_id(), ConnId::Seq(b.conn().seq), "plain TCP: named by its number");
        let seqs: Vec<u64> = t.snapshot().iter().map(|c| c.seq).collect();
        assert_eq!(seqs, [a.conn().seq, b.conn().seq]);
        drop(a);
        assert_eq!(t.len(), 1);
        assert!(t.by_conn_id(ConnId::Token(7)).is_none(), "gone with its guard");
        drop(b);
        assert!(t.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_first_attempt_is_raced_and_the_first_to_connect_wins() {
        use tokio::time::{Instant, sleep};
        let ms = Duration::from_millis;
        let after = |d: Duration, r: io::Result<u8>| async move {
            sleep(d).await;
            r
        };
        let failed = || Err(io::Error::from(io::ErrorKind::TimedOut));
        // Fast enough: no second attempt.
        let t = Instant::now();
        let (r, w, raced) = race(after(ms(50), Ok(1)), Some((ms(150), after(ms(10), Ok(2))))).await;
        assert_eq!((r.unwrap(), w, raced, t.elapsed()), (1, 0, false, ms(50)));
        // A dead first uplink: the second starts at 150 ms and wins 40 ms later.
        let t = Instant::now();
        let (r, w, raced) = race(after(ms(5000), failed()), Some((ms(150), after(ms(40), Ok(2))))).await;
        assert_eq!((r.unwrap(), w, raced, t.elapsed()), (2, 1, true, ms(190)));
        // A slow first that still beats the second.
        let (r, w, raced) = race(after(ms(200), Ok(1)), Some((ms(150), after(ms(100), Ok(2))))).await;
        assert_eq!((r.unwrap(), w, raced), (1, 0, true));
        // The first fails at once (no route): the second starts without waiting.
        let t = Instant::now();
        let (r, w, _) = race(after(ms(1), failed()), Some((ms(150), after(ms(40), Ok(2))))).await;
        assert_eq!((r.unwrap(), w, t.elapsed()), (2, 1, ms(41)));
        // Both fail: the first attempt's error.
        let (r, w, _) =
            race(after(ms(300), failed()), Some((ms(150), after(ms(10), Err(io::Error::other("x")))))).await;
        assert_eq!((r.unwrap_err().kind(), w), (io::ErrorKind::TimedOut, 0));
        // No partner: the first alone.
        let (r, w, raced) = race(after(ms(500), Ok(1)), None::<(Duration, std::future::Ready<io::Result<u8>>)>).await;
        assert_eq!((r.unwrap(), w, raced), (1, 0, false));
    }

    #[test]
    fn refusals_are_counted_by_code() {
        let c = ConnCounters::default();
        c.refused_with(convert::ErrorCode::NotAuthorized);
        c.refused_with(convert::ErrorCode::Unknown(200));
        assert_eq!(c.refused.load(Relaxed), 2);
        let at = |code| ERROR_CODES.iter().position(|x| *x == code).unwrap();
        assert_eq!(c.refused_by_code[at(convert::ErrorCode::NotAuthorized)].load(Relaxed), 1);
        assert_eq!(c.refused_by_code[ERROR_CODES.len() - 1].load(Relaxed), 1, "unassigned codes share the last slot");
    }
}
