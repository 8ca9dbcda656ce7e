//! One intercepted LAN connection, from accept to close: the Convert request with the client's first bytes to
//! hag over MPTCP, on a ready connection from the [`pool`] (Connect) or a new one (Connect + Auth, in the SYN
//! with `hag.fastopen`, off by default), the Convert reply, then the relay; or the configured fallback. Talking to hag is `to_hag`'s, deciding on its reply the sans-IO
//! `reply`'s. Also the table of open connections ([`Connections`]) that the admin API lists and closes.
//!
//! Invariants:
//! - a Convert Error reply from hag resets the LAN connection (RST via `SO_LINGER` 0), so a refused
//!   destination looks refused to the client, never like an accepted-then-closed one;
//! - hag unreachable or the exchange failing before any reply byte reached the client triggers the fallback:
//!   `direct` replays the client bytes read so far to the destination over plain TCP, `reject` resets;
//! - every client byte sent to hag before its reply is known is also kept (up to `reply::REPLAY_MAX`, then the
//!   client waits), so the direct fallback replays exactly what the client sent;
//! - every outcome is counted once in [`ConnCounters`];
//! - a connection is listed in [`Connections`] exactly while its task runs (the [`Entry`] guard removes it on
//!   drop); its byte counters are live, and are added to [`ConnCounters`] once when it ends, however it ends;
//!   cancelling [`Connection::close`] (admin `DELETE`) ends the task, which drops both sockets.

use std::io;
use std::net::SocketAddr;
use std::ops::Deref;
use std::sync::atomic::Ordering::Relaxed;

use portable_atomic::AtomicU64;
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, Instant, SystemTime};

use common::admin::table::{self, Table};
use common::admin::{ConnId, HasConnId};
use common::convert;
use common::mptcp::{ConnectOptions, connect_with_data};
use common::relay::RelayCounters;
use common::stream::SharedStream;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, warn};

use crate::config::{Config, Fallback};
use crate::nat::Flow;
use crate::uplink::Attempt;
use reply::Reply;

pub mod pool;
mod reply;
#[cfg(test)]
mod tests;
mod to_hag;

pub use to_hag::ExchangeError;

/// Largest first batch of client bytes sent along with the Convert request.
pub(super) const FIRST_BYTES_MAX: usize = 1200;

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
    /// Carried on a ready connection from the pool (no handshake to hag when it started).
    pub ready: OnceLock<()>,
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
            ready: OnceLock::new(),
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
    /// Ready connections to hag (empty, and never filled, with `hag.pool.max: 0`).
    pub pool: Arc<pool::Pool>,
    /// The interception's NAT, for its flow table in `/metrics` (`None` where no TUN device runs).
    pub nat: Option<Arc<std::sync::Mutex<crate::nat::Nat>>>,
    /// What the MPTCP connections to hag run: `hag.congestion_control` as resolved at start
    /// ([`common::mptcp::CongestionControl::resolve`]); `None`: the namespace's default.
    pub congestion_control: Option<String>,
}

/// The hag address to use and the attempts to reach it: the healthiest uplink by role (uplink manager) and its
/// race partner, else the first uplink (in preference order) with an address of the hag address's family.
pub(crate) fn plan(
    cfg: &Config,
    sources: Option<&crate::uplink::SourceSelector>,
) -> Option<(SocketAddr, Vec<Attempt>)> {
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

/// hag refused the request signed with `nonce` (sent at `sent`) for its timestamp and answered with `time`:
/// when the Time TLV is hag's for that request (signed with our key over that nonce), the signing clock
/// takes hag's time and the caller may sign again. False when it is not (then it is just a refusal).
pub(crate) fn learn_hag_time(key: &[u8], nonce: &[u8; 16], time: &convert::Time, sent: Instant) -> bool {
    let Ok(ms) = convert::auth::verify_time(key, nonce, time) else {
        warn!("hag refused our timestamp with a Time TLV that does not verify; ignored");
        return false;
    };
    match common::clock::CLOCK.learn(Duration::from_millis(ms), sent) {
        common::clock::Learnt::Offset { behind_ms } => warn!(
            behind_s = behind_ms as f64 / 1000.0,
            "the system clock is off from hag's beyond its skew: signing with hag's time until they agree"
        ),
        common::clock::Learnt::SystemAgrees => {
            info!("hag refused our timestamp, yet the system clock agrees with hag's time now")
        }
    }
    true
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
    // Whatever the client already sent goes with the request (in the SYN with `fastopen`); do not wait for more.
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

    match to_hag::exchange(flow, &mut first, &mut client, shared, conn).await {
        Ok((hag, Reply::Converted { early })) => {
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
        Ok((_, reply @ (Reply::Refused(_) | Reply::Stale(_)))) => {
            let code = match reply {
                Reply::Refused(code) => code,
                _ => convert::ErrorCode::NotAuthorized,
            };
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

/// `fallback: direct`: plain TCP to the destination from the primary uplink, replaying the first bytes.
async fn direct(flow: Flow, first: &[u8], cfg: &Config) -> io::Result<TcpStream> {
    let bind = cfg.uplinks.iter().find_map(|u| u.source_for(flow.dest.ip())).map(|ip| SocketAddr::new(ip, 0));
    let opts = ConnectOptions {
        bind,
        mptcp: false,
        fastopen: false,
        timeout: cfg.limits.connect_timeout,
        ..Default::default()
    };
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
