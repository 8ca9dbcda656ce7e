//! The hag server: MPTCP listeners (with TCP Fast Open), the accept loops, the per-connection task
//! (Convert message -> auth -> policy -> limits -> connect -> reply -> relay), held connections (a CPE's
//! ready-connection pool: Hold + Auth, the bare header, later the Convert message naming the destination),
//! and graceful shutdown.
//!
//! Invariants:
//! - Every accepted connection holds an `ActiveGuard` for its whole life, so `stats.active` and the total
//!   limit are exact; an authenticated connection also holds a per-CPE [`Slot`] (per-CPE limit), and a held
//!   one a second slot of the per-CPE hold limit until its destination is named.
//! - Only an authenticated CPE can hold a connection past the header deadline, and at most
//!   `max_held_per_cpe` of them, each for at most `hold_timeout`.
//! - A client gets exactly one Convert reply: the success header (then the destination's bytes) or an Error
//!   TLV followed by our FIN. Client bytes that arrived after the Convert message are forwarded before the
//!   relay starts, in order.
//! - The MAC is checked before the nonce enters the replay window, so nobody without a key can fill it.
//! - On shutdown the listeners close first (no new connection), then open connections get up to the drain
//!   deadline; [`Hag::run`] returns after that, whatever is still open.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::convert::{self, ErrorCode, Message, auth::AuthError, auth::ReplayWindow};
use common::mptcp;
use common::stream::SharedStream;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, field, info, info_span, warn};

use crate::answer;
use crate::config::Config;
use crate::connections::{Connection, Connections, Entry};
use crate::live::Settings;
use crate::message::{ReadError, read_convert};
use crate::outbound::{self, Destination, KernelTcp, Plan};
use crate::policy::local_addresses;
use crate::refusal::{Refusal, Replier, close_after};
use crate::request::{self, Ask};
use crate::slots::{ActiveGuard, HeldGuard, Pending, PendingTable, Slot, Slots};
use crate::stats::Stats;

/// Why the hag could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address from `listen`.
        addr: SocketAddr,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The host's interface addresses (for the destination policy) could not be read.
    #[error("cannot read the host's interface addresses: {0}")]
    LocalAddresses(#[source] io::Error),
    /// `congestion_control` names an algorithm this kernel does not have, or this process may not use.
    #[error("congestion_control")]
    CongestionControl(#[source] io::Error),
    /// `congestion_control_start.algorithm` names an algorithm this kernel does not have, or this process may
    /// not use.
    #[error("congestion_control_start")]
    CongestionControlStart(#[source] io::Error),
}

/// State every connection task shares.
struct Shared {
    /// The running config and destination policy; a reload swaps them.
    settings: Arc<Settings>,
    stats: Arc<Stats>,
    connections: Arc<Connections>,
    replay: Mutex<ReplayWindow>,
    /// Open connections per CPE id.
    per_cpe: Slots,
    /// Held (idle, pooled) connections per CPE id.
    held_per_cpe: Slots,
    /// Connections without a whole Convert message yet, per source address, oldest first.
    pending: PendingTable,
    /// Open connections per trusted source address (clients without an Auth TLV have no CPE id).
    per_trusted_source: Slots,
    /// Refusals: their replies, error budget and log lines.
    replier: Replier,
    /// The TCP options this host's connecting sockets can send, read at start.
    kernel: KernelTcp,
    /// The algorithm the MPTCP connections from CPEs start their transfers on, if any.
    start_phase: Option<mptcp::StartPhase>,
}

/// A bound, not yet running hag.
pub struct Hag {
    shared: Arc<Shared>,
    listeners: Vec<TcpListener>,
}

impl Hag {
    /// Binds every listen address (MPTCP, TFO) and learns the host's own addresses for the policy.
    /// Must be called inside a tokio runtime.
    pub fn bind(config: Config) -> Result<Hag, StartError> {
        let tfo = (config.limits.tfo_queue > 0).then_some(config.limits.tfo_queue);
        if tfo.is_some()
            && let Err(missing) = mptcp::check_tfo_sysctl(mptcp::TfoRole::Server)
        {
            warn!(
                "TCP Fast Open is not fully enabled for the server side: {missing}; CPEs sending the Convert \
                 message in the SYN lose 0-RTT (and on Linux 6.18 their MPTCP connections fall back to TCP)"
            );
        }
        let cc = mptcp::CongestionControl::resolve(config.congestion_control.as_ref(), "congestion_control")
            .map_err(StartError::CongestionControl)?;
        let start_phase = mptcp::StartPhase::resolve(config.congestion_control_start.as_ref())
            .map_err(StartError::CongestionControlStart)?;
        let opts = mptcp::ListenOptions {
            backlog: config.limits.backlog,
            tfo_queue: tfo,
            congestion_control: cc.name().map(str::to_owned),
            ..Default::default()
        };
        let mut listeners = Vec::new();
        for &addr in &config.listen {
            let l = mptcp::listen_with(addr, &opts).map_err(|source| StartError::Listen { addr, source })?;
            info!(
                %addr,
                local = ?l.local_addr().ok(),
                tfo_queue = ?tfo,
                congestion_control = %cc,
                start = ?start_phase.as_ref().map(|p| format!("{} for {:?}", p.algorithm, p.duration)),
                "listening (MPTCP)"
            );
            listeners.push(l);
        }
        let mut own = local_addresses().map_err(StartError::LocalAddresses)?;
        own.extend(config.listen.iter().map(|a| a.ip()).filter(|ip| !ip.is_unspecified()));
        debug!(?own, "own addresses, denied as destinations unless allowed");
        let stats = Arc::new(Stats::default());
        let kernel = KernelTcp::read();
        debug!(?kernel, supported = ?kernel.supported_kinds(), "TCP options a Connect TLV may ask for");
        let replay = ReplayWindow::new(config.limits.auth_skew.as_secs().max(1), config.limits.replay_entries);
        Ok(Hag {
            shared: Arc::new(Shared {
                settings: Arc::new(Settings::new(config, own)),
                stats: stats.clone(),
                connections: Arc::new(Connections::default()),
                replay: Mutex::new(replay),
                per_cpe: Slots::default(),
                held_per_cpe: Slots::default(),
                pending: PendingTable::default(),
                per_trusted_source: Slots::default(),
                replier: Replier::new(stats.clone()),
                kernel,
                start_phase,
            }),
            listeners,
        })
    }

    /// The running config; [`Settings::apply`] reloads it.
    pub fn settings(&self) -> Arc<Settings> {
        self.shared.settings.clone()
    }

    /// The bound addresses (useful when a listen port was 0).
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.listeners.iter().filter_map(|l| l.local_addr().ok()).collect()
    }

    /// The live counters.
    pub fn stats(&self) -> Arc<Stats> {
        self.shared.stats.clone()
    }

    /// The open connections (peer, CPE, destination, token, live counters).
    pub fn connections(&self) -> Arc<Connections> {
        self.shared.connections.clone()
    }

    /// Serves until `shutdown` completes, then stops accepting and drains open connections for up to the
    /// configured drain deadline.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        // Uplink health probes from the CPEs arrive on the UDP side of each service address.
        let settings = self.shared.settings.clone();
        let keys = move |id: &str| settings.get().config.clients.get(id).map(|k| k.expose().to_vec());
        let _probes = crate::probe::start(&self.local_addrs(), keys).await;
        *self.shared.stats.probes.lock().expect("probe list poisoned") = _probes.counters.clone();
        let cancel = CancellationToken::new();
        let tracker = TaskTracker::new();
        let mut accept_loops = Vec::new();
        for listener in self.listeners {
            let (shared, cancel, tracker2) = (self.shared.clone(), cancel.clone(), tracker.clone());
            accept_loops.push(tokio::spawn(accept_loop(listener, shared, cancel, tracker2)));
        }
        shutdown.await;
        cancel.cancel();
        for l in accept_loops {
            let _ = l.await;
        }
        tracker.close();
        let open = self.shared.stats.active.load(Relaxed);
        let drain = self.shared.settings.get().config.limits.drain_deadline;
        info!(open, ?drain, "shutting down: listeners closed, draining open connections");
        if tokio::time::timeout(drain, tracker.wait()).await.is_err() {
            warn!(
                open = self.shared.stats.active.load(Relaxed),
                "drain deadline passed; closing the remaining connections"
            );
        }
        info!(stats = %self.shared.stats.snapshot(), "stopped");
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, cancel: CancellationToken, tracker: TaskTracker) {
    loop {
        let accepted = tokio::select! {
            _ = cancel.cancelled() => return,
            a = listener.accept() => a,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // EMFILE/ENFILE/ENOBUFS: back off instead of spinning; the kernel keeps the backlog.
                warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        shared.stats.accepted.fetch_add(1, Relaxed);
        let limit = shared.settings.get().config.limits.max_pending_per_source;
        let source = peer.ip().to_canonical().to_string();
        let evict = CancellationToken::new();
        let (pending, evicted) = shared.pending.admit(&source, limit, evict.clone(), &shared.stats);
        if evicted && let Some(suppressed) = shared.replier.log_allowed() {
            warn!(%peer, limit, suppressed, "this address has too many connections without a Convert message: closing its oldest");
        }
        let guard = ActiveGuard::new(shared.stats.clone());
        let stream = SharedStream::new(stream);
        let entry = shared.connections.insert(peer, stream.downgrade());
        let close = entry.conn().close.clone();
        let span = info_span!(
            "conn",
            %peer,
            cpe = field::Empty,
            dst = field::Empty,
            token = field::Empty,
            tfo = field::Empty
        );
        let task = serve(shared.clone(), stream, peer, guard, pending, entry);
        // Closed from outside (admin API) before relaying; while relaying, `serve` itself stops the relay
        // and does the accounting (polled first, so it wins when both are ready).
        tracker.spawn(
            async move {
                tokio::select! {
                    biased;
                    () = task => {}
                    () = close.cancelled() => info!("closed through the admin API before relaying"),
                    () = evict.cancelled() => debug!("closed: the oldest of its address's connections without a Convert message"),
                }
            }
            .instrument(span),
        );
    }
}

/// Answers `why` as [`Replier::reject`] does.
async fn reject(shared: &Shared, client: SharedStream, peer: SocketAddr, why: Refusal) {
    let handshake = shared.settings.get().config.limits.connect_timeout;
    shared.replier.reject(client, peer, why, handshake).await;
}

/// The whole life of one accepted connection: its Convert message (after a hold, if it asked for one),
/// admission and the connection to the destination (any refusal answered with an Error TLV), then the relay.
async fn serve(
    shared: Arc<Shared>,
    mut client: SharedStream,
    peer: SocketAddr,
    active: ActiveGuard,
    pending: Pending,
    entry: Entry,
) {
    let started = Instant::now();
    let conn = entry.conn();
    note_transport(&shared, &client, conn);
    let max = shared.settings.get().config.limits.max_connections;
    if active.open > max as u64 {
        return reject(&shared, client, peer, Refusal::TotalLimit(max)).await;
    }
    let header = read_header(&shared, &mut client).await;
    drop(pending);
    let (mut message, mut buf, mut consumed) = match header {
        Ok(m) => m,
        Err(Some(refusal)) => return reject(&shared, client, peer, refusal).await,
        Err(None) => return,
    };
    let admitted = match request::ask(&message, &buf[..consumed]) {
        Err(refusal) => Err(refusal),
        Ok(Ask::Hold) => match hold(&shared, peer, conn, &mut client, &message, &buf[..consumed]).await {
            Ok(Some((slot, ask, next))) => {
                (message, buf, consumed) = next;
                Ok((slot, ask))
            }
            Ok(None) => return,
            Err(refusal) => Err(refusal),
        },
        Ok(ask) => admit(&shared, peer, conn, &message, &buf[..consumed]).map(|slot| (slot, ask)),
    };
    let (cpe_slot, ask) = match admitted {
        Ok(admitted) => admitted,
        Err(refusal) => return reject(&shared, client, peer, refusal).await,
    };
    let Some(connect) = message.connect().filter(|_| ask != Ask::Info) else {
        shared.stats.info_answered.fetch_add(1, Relaxed);
        debug!("answered an Info TLV with the supported TCP extensions");
        let reply = Message::supported_extensions(&shared.kernel.supported_kinds());
        return close_after(client, &reply, shared.settings.get().config.limits.connect_timeout).await;
    };
    let server = match open(&shared, conn, connect, &buf[..consumed]).await {
        Ok(server) => server,
        Err(refusal) => return reject(&shared, client, peer, refusal).await,
    };
    let limits = shared.settings.get().config.limits.clone();
    // An Info TLV next to the Connect TLV is answered in the success reply.
    let mut reply = Message::success();
    if message.tlvs.iter().any(|t| matches!(t, convert::Tlv::Info)) {
        reply = Message::supported_extensions(&shared.kernel.supported_kinds());
    }
    let handover = shared.start_phase.as_ref().and_then(|phase| match phase.begin(&client) {
        Ok(then) => then.map(|then| (phase, client.downgrade(), then)),
        Err(e) => {
            debug!(error = %e, "could not start the connection on its start phase's algorithm");
            None
        }
    });
    let relay = answer::relay_to(&shared.stats, &limits, conn, (client, &reply), server, &buf[consumed..], started);
    match handover {
        Some((phase, stream, then)) => phase.run(relay, stream, then).await,
        None => relay.await,
    }
    drop(cpe_slot);
}

/// Records whether the client speaks MPTCP (its token names the connection) and whether its SYN carried data.
fn note_transport(shared: &Shared, client: &SharedStream, conn: &Connection) {
    let span = tracing::Span::current();
    match mptcp::info(client) {
        Ok(Some(i)) => {
            span.record("token", field::display(format_args!("{:08x}", i.token)));
            let _ = conn.token.set(Some(i.token));
        }
        Ok(None) => {
            shared.stats.fallback.fetch_add(1, Relaxed);
            span.record("token", "fallback");
            let _ = conn.token.set(None);
        }
        Err(e) => debug!(error = %e, "MPTCP_INFO failed"),
    }
    if let Ok(syn_data) = mptcp::syn_data_acked(client) {
        span.record("tfo", syn_data);
    }
    let _ = client.set_nodelay(true);
}

/// The client's Convert message within the header deadline: the message, the buffer and the message's length
/// in it (the rest is client data that came with it). `Err(Some)`: answer with that refusal; `Err(None)`: the
/// client gave up or is too slow, close without an answer.
async fn read_header(shared: &Shared, client: &mut SharedStream) -> Result<(Message, Vec<u8>, usize), Option<Refusal>> {
    let deadline = shared.settings.get().config.limits.header_deadline;
    match tokio::time::timeout(deadline, read_convert(client)).await {
        Ok(Ok(m)) => Ok(m),
        Err(_) => {
            shared.stats.header_timeouts.fetch_add(1, Relaxed);
            info!(?deadline, "no Convert message within the deadline; closing");
            Err(None)
        }
        Ok(Err(ReadError::Closed(e))) => {
            shared.stats.closed_before_header.fetch_add(1, Relaxed);
            debug!(error = ?e, "client went away before its Convert message was complete");
            Err(None)
        }
        Ok(Err(ReadError::Invalid(error, received))) => Err(Some(Refusal::Decode { error, received })),
        // Half-closed mid-message: it can still read our verdict.
        Ok(Err(ReadError::Truncated(received))) => Err(Some(Refusal::Truncated(received))),
    }
}

/// Checks the destination (the address classes RFC 8803 forbids, then the policy) and the Connect TLV's TCP
/// options, and connects to it. `received`: the message, for the echo of a Malformed reply.
async fn open(
    shared: &Shared,
    conn: &Connection,
    connect: &convert::Connect,
    received: &[u8],
) -> Result<TcpStream, Refusal> {
    let dst = connect.remote;
    tracing::Span::current().record("dst", field::display(dst));
    let live = shared.settings.get();
    if !live.policy.allows_explicitly(dst.ip()) {
        Destination::check(dst.ip()).map_err(|why| Refusal::BadDestination {
            dst,
            why,
            received: received.to_vec(),
        })?;
    }
    if dst.port() == 0 {
        return Err(Refusal::Policy { dst: dst.ip(), why: crate::policy::Denied::PortZero });
    }
    live.policy.check(dst.ip()).map_err(|why| Refusal::Policy { dst: dst.ip(), why })?;
    let plan = Plan::from_options(&connect.options, &shared.kernel).map_err(Refusal::UnsupportedOptions)?;
    let server = outbound::connect(dst, &plan, live.config.limits.connect_timeout).await.map_err(Refusal::Connect)?;
    let _ = conn.dst.set(dst);
    Ok(server)
}

/// The next message on a held connection, what it asks, and the CPE's connection slot, once the hold ends well.
type Held = (Option<Slot>, Ask, (Message, Vec<u8>, usize));

/// A hold request (Hold + Auth, no Connect): admits the CPE, takes one of its held slots, answers with the
/// bare header and waits up to the hold timeout for the Convert message that names the destination.
/// `Ok(None)`: the CPE closed the connection unused, or the hold timed out (closed without an answer).
async fn hold(
    shared: &Arc<Shared>,
    peer: SocketAddr,
    conn: &Connection,
    client: &mut SharedStream,
    message: &Message,
    raw: &[u8],
) -> Result<Option<Held>, Refusal> {
    let limits = shared.settings.get().config.limits.clone();
    let Some(cpe) = message.auth().map(|a| a.cpe_id.clone()).filter(|_| message.connect().is_none()) else {
        return Err(Refusal::BadHold { received: raw.to_vec() });
    };
    let cpe_slot = admit(shared, peer, conn, message, raw)?;
    let held_slot = shared
        .held_per_cpe
        .acquire(&cpe, limits.max_held_per_cpe)
        .ok_or(Refusal::HeldLimit(limits.max_held_per_cpe))?;
    let _held = HeldGuard::new(&shared.stats, conn);
    let reply = Message::success().to_bytes().expect("bare header encodes");
    let answered = async {
        common::mptcp::await_tfo_handshake(client, limits.connect_timeout).await?;
        client.write_all(&reply).await
    };
    if let Err(e) = answered.await {
        shared.stats.holds_closed.fetch_add(1, Relaxed);
        debug!(error = %e, "held connection lost before its answer");
        return Ok(None);
    }
    shared.stats.holds_accepted.fetch_add(1, Relaxed);
    debug!("holding the connection for the CPE's pool");
    let next = match tokio::time::timeout(limits.hold_timeout, read_convert(client)).await {
        Ok(Ok(next)) => next,
        Err(_) => {
            shared.stats.holds_expired.fetch_add(1, Relaxed);
            debug!(timeout = ?limits.hold_timeout, "held connection not used in time; closing");
            return Ok(None);
        }
        Ok(Err(ReadError::Closed(_))) => {
            shared.stats.holds_closed.fetch_add(1, Relaxed);
            debug!("the CPE closed its held connection");
            return Ok(None);
        }
        Ok(Err(ReadError::Invalid(error, received))) => return Err(Refusal::Decode { error, received }),
        Ok(Err(ReadError::Truncated(received))) => return Err(Refusal::Truncated(received)),
    };
    drop(held_slot);
    shared.stats.holds_used.fetch_add(1, Relaxed);
    // A held connection offers its full window as soon as it is used: on Linux 6.18 the kernel's autotuning
    // stays at its initial 128 KiB buffer for as long as the connection was held
    // ([`mptcp::raise_receive_window`]).
    if matches!(conn.token.get(), Some(Some(_)))
        && let Err(e) = mptcp::raise_receive_window(client, mptcp::RECEIVE_WINDOW)
    {
        debug!(error = %e, "could not raise the held connection's receive buffer");
    }
    // It waited idle since its handshake: its congestion control starts afresh, as a new connection's would
    // ([`mptcp::restart_congestion_control`]).
    if let Err(e) = mptcp::restart_congestion_control(client) {
        debug!(error = %e, "could not restart the held connection's congestion control");
    }
    let (message, buf, consumed) = &next;
    let received = &buf[..*consumed];
    let ask = request::ask(message, received)?;
    // The connection is authenticated already; an Auth TLV on it must still check out and name the same CPE.
    if ask == Ask::Hold || message.auth().is_some_and(|a| a.cpe_id != cpe) {
        return Err(Refusal::BadHeldMessage { received: received.to_vec() });
    }
    if message.auth().is_some() {
        authenticate(shared, message, received)?;
    }
    Ok(Some((cpe_slot, ask, next)))
}

/// Authentication and per-CPE admission; records the CPE on the connection. Returns the per-CPE slot for
/// authenticated clients.
fn admit(
    shared: &Arc<Shared>,
    peer: SocketAddr,
    conn: &Connection,
    message: &Message,
    raw: &[u8],
) -> Result<Option<Slot>, Refusal> {
    let Some(auth) = message.auth() else {
        let live = shared.settings.get();
        if !live.config.is_trusted(peer.ip()) {
            return Err(Refusal::MissingAuth);
        }
        // Without a CPE id, a trusted client is bounded per source address like a CPE is per id.
        let limit = live.config.limits.max_connections_per_cpe;
        let source = peer.ip().to_canonical().to_string();
        return shared.per_trusted_source.acquire(&source, limit).map(Some).ok_or(Refusal::CpeLimit(limit));
    };
    tracing::Span::current().record("cpe", auth.cpe_id.as_str());
    authenticate(shared, message, raw)?;
    let limit = shared.settings.get().config.limits.max_connections_per_cpe;
    let slot = shared.per_cpe.acquire(&auth.cpe_id, limit).ok_or(Refusal::CpeLimit(limit))?;
    let _ = conn.cpe.set(auth.cpe_id.clone());
    shared.stats.cpe_admitted(&auth.cpe_id);
    Ok(Some(slot))
}

/// Checks the Auth TLV of `message` (`raw`: its bytes): a configured CPE, its MAC, then the replay window.
fn authenticate(shared: &Shared, message: &Message, raw: &[u8]) -> Result<(), Refusal> {
    let auth = message.auth().ok_or(Refusal::MissingAuth)?;
    let live = shared.settings.get();
    let key = live.config.clients.get(&auth.cpe_id).ok_or(Refusal::UnknownCpe)?;
    let verified = convert::auth::verify_mac(key.expose(), raw).and_then(|()| {
        shared.replay.lock().expect("replay window poisoned").check(common::clock::system_unix().as_secs(), auth)
    });
    match verified {
        Ok(()) => Ok(()),
        // The CPE holds the key and only its clock is off: tell it ours, for this request only.
        Err(error @ (AuthError::TimestampTooOld { .. } | AuthError::TimestampInFuture { .. })) => {
            shared.stats.cpe_auth_failed(&auth.cpe_id);
            let ms = u64::try_from(common::clock::system_unix().as_millis()).unwrap_or(u64::MAX);
            Err(Refusal::Stale { error, time: convert::auth::signed_time(key.expose(), &auth.nonce, ms) })
        }
        Err(e) => {
            if e.code() == ErrorCode::NotAuthorized {
                shared.stats.cpe_auth_failed(&auth.cpe_id);
            }
            Err(e.into())
        }
    }
}
