//! One intercepted LAN connection, from accept to close: Convert request (Connect + Auth + the client's first
//! bytes) to hag over MPTCP with TCP Fast Open, the Convert reply, then the relay; or the configured fallback.
//!
//! Invariants:
//! - a Convert Error reply from hag resets the LAN connection (RST via `SO_LINGER` 0), so a refused
//!   destination looks refused to the client, never like an accepted-then-closed one;
//! - hag unreachable or the exchange failing before any reply byte reached the client triggers the fallback:
//!   `direct` replays the client bytes read so far to the destination over plain TCP, `reject` resets;
//! - no client byte is read before the reply is known except the first batch, which is kept for the replay;
//! - every outcome is counted once in [`ConnCounters`].

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::convert::{self, Decoded};
use common::mptcp::{ConnectOptions, connect_with_data};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
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
    /// Bytes client -> server and server -> client, all connections.
    pub bytes_up: AtomicU64,
    pub bytes_down: AtomicU64,
}

/// What every connection task needs.
#[derive(Debug)]
pub struct Shared {
    pub config: Config,
    pub counters: ConnCounters,
    /// The uplink manager's choice of source address by health; `None`: the first uplink in config order.
    pub sources: Option<crate::uplink::SourceSelector>,
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
    shared.counters.active.fetch_add(1, Relaxed);
    run(client, flow, &shared).instrument(span).await;
    shared.counters.active.fetch_sub(1, Relaxed);
}

async fn run(mut client: TcpStream, flow: Flow, shared: &Shared) {
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

    match exchange(flow, &mut first, &mut client, cfg, shared.sources.as_ref()).await {
        Ok(Reply::Converted(hag, early)) => {
            c.converted.fetch_add(1, Relaxed);
            debug!(first_bytes = first.len(), "converted");
            if !early.is_empty() && client.write_all(&early).await.is_err() {
                return;
            }
            c.bytes_down.fetch_add(early.len() as u64, Relaxed);
            c.bytes_up.fetch_add(first.len() as u64, Relaxed);
            relay(client, hag, cfg.limits.idle_timeout, c).await;
        }
        Ok(Reply::Refused(code)) => {
            c.refused.fetch_add(1, Relaxed);
            info!(?code, "hag refused; resetting client");
            reset(client);
        }
        Err(e) => {
            warn!(error = %e, fallback = ?cfg.fallback, "hag unavailable");
            match cfg.fallback {
                Fallback::Reject => {
                    c.rejected.fetch_add(1, Relaxed);
                    reset(client);
                }
                Fallback::Direct => match direct(flow, &first, cfg).await {
                    Ok(server) => {
                        c.fallback_direct.fetch_add(1, Relaxed);
                        c.bytes_up.fetch_add(first.len() as u64, Relaxed);
                        relay(client, server, cfg.limits.idle_timeout, c).await;
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

/// The hag address to use and the local address to bind: the healthiest uplink by role (uplink manager), else
/// the first uplink (in preference order) with an address of the hag address's family.
fn pick_hag(cfg: &Config, sources: Option<&crate::uplink::SourceSelector>) -> Option<(SocketAddr, IpAddr)> {
    if let Some(sel) = sources {
        return cfg.hag_addresses.iter().find_map(|h| sel.source_for(h.ip()).map(|src| (*h, src)));
    }
    cfg.uplinks
        .iter()
        .find_map(|u| cfg.hag_addresses.iter().find_map(|h| u.source_for(h.ip()).map(|src| (*h, src))))
}

async fn exchange(
    flow: Flow,
    first: &mut Vec<u8>,
    client: &mut TcpStream,
    cfg: &Config,
    sources: Option<&crate::uplink::SourceSelector>,
) -> Result<Reply, ExchangeError> {
    let (hag, source) = pick_hag(cfg, sources).ok_or(ExchangeError::NoRoute)?;
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let nonce = convert::auth::random_nonce().map_err(|e| ExchangeError::Request(e.to_string()))?;
    let mut request = convert::auth::signed_request(&cfg.key.0, flow.dest, &cfg.cpe_id, now, nonce)
        .map_err(|e| ExchangeError::Request(e.to_string()))?;
    request.extend_from_slice(first);
    let io_err = |source| ExchangeError::Io { hag, source };
    let opts = ConnectOptions {
        bind: Some(SocketAddr::new(source, 0)),
        bind_device: None,
        mptcp: true,
        fastopen: cfg.fastopen,
        timeout: cfg.limits.connect_timeout,
    };
    let (mut stream, sent) = connect_with_data(hag, &request, &opts).await.map_err(io_err)?;
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

async fn relay(client: TcpStream, server: TcpStream, idle: Duration, c: &ConnCounters) {
    let counters = common::relay::RelayCounters::default();
    let result = common::relay::relay(client, server, idle, &counters).await;
    let up = counters.a_to_b.load(Relaxed);
    let down = counters.b_to_a.load(Relaxed);
    c.bytes_up.fetch_add(up, Relaxed);
    c.bytes_down.fetch_add(down, Relaxed);
    match result {
        Ok(outcome) => debug!(up, down, ?outcome, "relay done"),
        Err(e) => debug!(up, down, error = %e, "relay ended with an error"),
    }
}
