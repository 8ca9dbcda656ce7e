//! Talking to hag for one LAN connection: a ready connection from the pool when one fits, else the planned
//! attempts ([`super::plan`]), racing a slow first attempt against a second uplink ([`race`]);
//! then the Convert exchange itself ([`exchange`]): the request with the client's first bytes, then hag's
//! reply, decided by [`super::reply::ReplyReader`].

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use common::convert;
use common::mptcp::{ConnectOptions, connect_with_data};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tracing::debug;

use super::pool::Ready;
use super::reply::{NoReply, Reply, ReplyReader};
use super::{Connection, Shared};
use crate::config::Config;
use crate::nat::Flow;
use crate::uplink::Attempt;

/// How long a request on a ready connection waits for the client's first bytes to go with it (a client that
/// speaks first sends them right behind its handshake; a server-first protocol loses this much once).
const FIRST_BYTES_WAIT: Duration = Duration::from_millis(10);

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
    /// Metric label ([`EXCHANGE_FAILURES`](super::EXCHANGE_FAILURES)).
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

/// Runs `first`; when it has not completed after `delay` (or failed before), also `second`; the first to
/// connect wins and the other is dropped with its socket (a SYN still unanswered leaves no trace at hag: its
/// late SYN-ACK meets a reset). Returns the outcome, which attempt it is (0 or 1), and whether the second
/// attempt started. Both failing returns the first attempt's error.
pub(super) async fn race<T>(
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

/// The Convert exchange: on a ready connection from the pool when one fits, else over the planned attempts.
/// On return `first` holds every client byte sent to hag, for a direct replay.
///
/// An MPTCP connection that hag accepted offers [`common::mptcp::RECEIVE_WINDOW`] before the first byte of
/// the download. The kernel's autotuning sizes the window from what arrived during the slowest subflow's last
/// round trip, so it grows one such round trip after the need. When a slower path starts carrying (an
/// `overflow` or `adaptive` uplink promoted) and whenever that path recovers a loss, the data hag sent on the
/// fast path arrives ahead of the slow path's and waits in the receive buffer; a window that fitted the fast
/// path alone then stops hag's sender on both paths. Measured on the testbed, LTE (30 Mbit/s, 60 ms) joining
/// a download on DSL (50 Mbit/s, 8 ms): hcpe's buffer at 1.8 MB with 840 KB waiting in it while hag's DSL
/// subflow had nothing left to send, for about a second at the join and at each of LTE's loss recoveries.
/// Memory is taken only by data waiting here: out of order, or unread because the LAN client reads slower than
/// the uplinks deliver (then up to this window per connection, where autotuning would have stayed lower).
///
/// For the same reason in the other direction it holds a send buffer of [`common::mptcp::SEND_BUFFER`] with at
/// most [`common::mptcp::SEND_UNSENT`] of it not yet sent ([`common::mptcp::hold_send_buffer`]): what an
/// upload sent on the fast path stays there until the slow path's bytes before it have arrived.
pub(super) async fn exchange(
    flow: Flow,
    first: &mut Vec<u8>,
    client: &mut TcpStream,
    shared: &Shared,
    conn: &Connection,
) -> Result<(TcpStream, Reply), ExchangeError> {
    let done = exchange_on_some_connection(flow, first, client, shared, conn).await;
    if let Ok((stream, Reply::Converted { .. })) = &done
        && common::mptcp::is_mptcp_socket(stream)
    {
        use common::mptcp::{RECEIVE_WINDOW, SEND_BUFFER, SEND_UNSENT};
        if let Err(e) = common::mptcp::raise_receive_window(stream, RECEIVE_WINDOW) {
            debug!(error = %e, "could not raise the connection's receive window");
        }
        if let Err(e) = common::mptcp::hold_send_buffer(stream, SEND_BUFFER, SEND_UNSENT) {
            debug!(error = %e, "could not set the connection's send buffer");
        }
    }
    done
}

async fn exchange_on_some_connection(
    flow: Flow,
    first: &mut Vec<u8>,
    client: &mut TcpStream,
    shared: &Shared,
    conn: &Connection,
) -> Result<(TcpStream, Reply), ExchangeError> {
    if let Some(ready) = shared.pool.take(shared) {
        match on_ready(ready, flow, first, client, shared, conn).await {
            // hag closed or the connection failed before any reply: a ready connection hag closes (its hold
            // timeout, a restart) had no request read from it, so a new connection may carry the bytes. Only a
            // hag that dies between forwarding them and its reply (at most 100 ms) lets them arrive twice.
            Err(e @ (ExchangeError::Closed(_) | ExchangeError::Io { .. })) => {
                shared.pool.counters.failed_after_take.fetch_add(1, Relaxed);
                debug!(error = %e, "ready connection failed before hag's reply; connecting afresh");
            }
            done => return done,
        }
    }
    fresh(flow, first, client, shared, conn).await
}

/// The Convert exchange on a ready connection: the bare Connect request (the connection was authenticated
/// when it was made ready) with `first`, then hag's reply.
async fn on_ready(
    ready: Ready,
    flow: Flow,
    first: &mut Vec<u8>,
    client: &mut TcpStream,
    shared: &Shared,
    conn: &Connection,
) -> Result<(TcpStream, Reply), ExchangeError> {
    let Ready { mut stream, hag, uplink, .. } = ready;
    if first.is_empty() {
        // Most protocols have the client speak first (HTTP, TLS): its first bytes, just behind the handshake,
        // then leave in the request's own write. Two writes within a round trip would go out on different
        // subflows (the kernel's scheduler ignores round-trip times), the second on the slower one.
        if tokio::time::timeout(FIRST_BYTES_WAIT, client.readable()).await.is_ok() {
            let mut buf = vec![0u8; super::FIRST_BYTES_MAX];
            if let Ok(n) = client.try_read(&mut buf) {
                first.extend_from_slice(&buf[..n]);
            }
        }
    }
    let mut request =
        convert::Message::connect_request(flow.dest).to_bytes().map_err(|e| ExchangeError::Request(e.to_string()))?;
    request.extend_from_slice(first);
    // The connection waited idle since its handshake: its congestion control starts afresh, as a new
    // connection's would ([`common::mptcp::restart_congestion_control`]).
    if let Err(e) = common::mptcp::restart_congestion_control(&stream) {
        debug!(error = %e, "could not restart the ready connection's congestion control");
    }
    stream.write_all(&request).await.map_err(|source| ExchangeError::Io { hag, source })?;
    let reply = await_reply(&mut stream, hag, first, client, &shared.config).await?;
    if let Some(u) = shared.config.uplinks.get(uplink) {
        let _ = conn.uplink_initial.set(u.name.clone());
    }
    let _ = conn.ready.set(());
    Ok((stream, reply))
}

/// The Convert exchange over the planned attempts ([`fresh_once`]). When hag refuses the request's
/// timestamp and says its time, the signing clock learns it and the request goes once more.
async fn fresh(
    flow: Flow,
    first: &mut Vec<u8>,
    client: &mut TcpStream,
    shared: &Shared,
    conn: &Connection,
) -> Result<(TcpStream, Reply), ExchangeError> {
    let new_nonce = || convert::auth::random_nonce().map_err(|e| ExchangeError::Request(e.to_string()));
    let (nonce, sent) = (new_nonce()?, Instant::now());
    let (stream, reply) = fresh_once(flow, first, client, shared, conn, nonce).await?;
    let Reply::Stale(time) = &reply else { return Ok((stream, reply)) };
    if !super::learn_hag_time(&shared.config.key.0, &nonce, time, sent) {
        return Ok((stream, Reply::Refused(convert::ErrorCode::NotAuthorized)));
    }
    drop(stream);
    match fresh_once(flow, first, client, shared, conn, new_nonce()?).await? {
        (stream, Reply::Stale(_)) => Ok((stream, Reply::Refused(convert::ErrorCode::NotAuthorized))),
        done => Ok(done),
    }
}

/// One Convert exchange over the planned attempts: connect (racing when the first is slow), send the
/// request signed with `nonce` and [`common::clock`]'s time, with `first` (the client bytes read so far),
/// and wait for hag's reply.
async fn fresh_once(
    flow: Flow,
    first: &mut Vec<u8>,
    client: &mut TcpStream,
    shared: &Shared,
    conn: &Connection,
    nonce: [u8; 16],
) -> Result<(TcpStream, Reply), ExchangeError> {
    let cfg = &shared.config;
    let (hag, attempts) = super::plan(cfg, shared.sources.as_ref()).ok_or(ExchangeError::NoRoute)?;
    let now = common::clock::unix_now().as_secs();
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
        congestion_control: shared.congestion_control.clone(),
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
    let reply = await_reply(&mut stream, hag, first, client, cfg).await?;
    Ok((stream, reply))
}

/// Waits for hag's reply on `stream` (the request is sent) while the client's further bytes flow on to hag;
/// `first` (the client bytes in the request) then holds every client byte sent to hag.
async fn await_reply(
    stream: &mut TcpStream,
    hag: SocketAddr,
    first: &mut Vec<u8>,
    client: &mut TcpStream,
    cfg: &Config,
) -> Result<Reply, ExchangeError> {
    let io_err = |source| ExchangeError::Io { hag, source };
    let mut reader = ReplyReader::new(std::mem::take(first));
    let wait = async {
        let mut chunk = vec![0u8; 16 * 1024];
        let mut from_client = vec![0u8; 16 * 1024];
        loop {
            tokio::select! {
                r = stream.read(&mut chunk) => {
                    let n = r.map_err(io_err)?;
                    if let Some(done) = reader.on_hag(&chunk[..n]) {
                        return done.map_err(|no| match no {
                            NoReply::Closed => ExchangeError::Closed(hag),
                            NoReply::Malformed(code) => ExchangeError::Malformed { hag, code },
                        });
                    }
                }
                r = client.read(&mut from_client), if reader.wants_client() => {
                    let n = r.unwrap_or(0);
                    reader.on_client(&from_client[..n]);
                    if n > 0 {
                        stream.write_all(&from_client[..n]).await.map_err(io_err)?;
                    }
                }
            }
        }
    };
    let reply = tokio::time::timeout(cfg.limits.reply_timeout, wait).await;
    *first = reader.into_sent();
    reply.map_err(|_| ExchangeError::Timeout(hag))?
}
