//! CPE side async driver: one [`Prober`] per uplink owns a UDP socket bound to the uplink's source address
//! (and, optionally, to its device with SO_BINDTODEVICE) and connected to the HAG's probe port, drives a
//! [`Health`] state machine with it, and publishes [`UplinkHealth`] on a `tokio::sync::watch` channel.
//!
//! Invariants:
//! - A reply counts only if its MAC verifies with this CPE's key, it names this uplink, and its seq and
//!   nonce match a probe this prober sent and still remembers (the last [`NONCE_MEMORY`] probes).
//! - The watch value is refreshed after every event (fresh RTT and loss for metrics), but receivers are
//!   woken only when `state` or `carrier` changes, so `changed()` means "the verdict moved".
//! - Socket errors that concern one datagram (ICMP unreachable, no route, address gone) never stop the
//!   prober: an unsent or unanswered probe simply becomes a miss. Every send error is of that kind.
//! - The socket is bound with IP_FREEBIND, so a source address that is not (yet, or any more) on the
//!   interface still binds; probes then fail to send and count as misses until the address is there.
//!   When the uplink is renumbered, the new address goes through [`Prober::source_control`]: the socket
//!   is replaced, the health state and its counters carry on.
//! - Time comes from tokio's clock, so tests run it under a paused clock.

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::UdpSocket;
use tokio::sync::watch;

use super::ProbeError;
use super::health::{Action, Health, HealthConfig, HealthState};
use super::responder::is_transient;
use super::wire::{self, NONCE_LEN, REPLY_LEN, Request};

/// How many recent probes' nonces are remembered to match replies.
pub const NONCE_MEMORY: usize = 64;

/// What a prober needs to know about its uplink and the HAG.
#[derive(Clone)]
pub struct ProberConfig {
    /// This CPE's id, as the HAG knows it (1..=64 bytes).
    pub cpe_id: String,
    /// This CPE's key (the Convert Auth key).
    pub key: Vec<u8>,
    /// Uplink id carried in the probes (echoed back; distinguishes uplinks in captures and logs).
    pub uplink: u8,
    /// Source address of the uplink. May be unspecified (0.0.0.0 / ::) when `device` is set.
    pub source: IpAddr,
    /// Interface to bind to with SO_BINDTODEVICE (needs CAP_NET_RAW), so probes leave through this uplink
    /// whatever the routing table says.
    pub device: Option<String>,
    /// The HAG's probe address (service address, UDP [`super::DEFAULT_PORT`]).
    pub target: SocketAddr,
    pub health: HealthConfig,
}

impl std::fmt::Debug for ProberConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProberConfig")
            .field("cpe_id", &self.cpe_id)
            .field("key", &"<redacted>")
            .field("uplink", &self.uplink)
            .field("source", &self.source)
            .field("device", &self.device)
            .field("target", &self.target)
            .field("health", &self.health)
            .finish()
    }
}

/// Counters of one prober.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProberStats {
    /// Probes handed to the socket successfully.
    pub sent: u64,
    /// Probes the socket refused (no route, address gone, ...); each becomes a miss.
    pub send_errors: u64,
    /// Authenticated replies that matched an outstanding probe in time.
    pub replies: u64,
    /// Authentic replies that came after their probe's timeout, or duplicates.
    pub late_replies: u64,
    /// Datagrams that were not a valid reply to us (malformed, bad MAC, wrong uplink, unknown nonce).
    pub bad_replies: u64,
    /// Times the socket was re-bound to a new source address.
    pub rebinds: u64,
    /// Receive errors reported by the socket (e.g. ICMP port unreachable from the HAG).
    pub recv_errors: u64,
}

/// The published view of one uplink.
#[derive(Debug, Clone, PartialEq)]
pub struct UplinkHealth {
    pub state: HealthState,
    /// Carrier as last told through [`Prober::carrier_control`].
    pub carrier: bool,
    /// Source address the probes are sent from.
    pub source: IpAddr,
    /// Smoothed RTT (RFC 6298); `None` before the first reply.
    pub srtt: Option<Duration>,
    pub rttvar: Duration,
    /// RTT of the latest answered probe, in time or late.
    pub latest_rtt: Option<Duration>,
    /// Round-trip samples since start: a new one arrived when this grew.
    pub rtt_samples: u64,
    /// Send times of the probes not answered yet (outstanding or timed out) that may still be: lower bounds of
    /// the round trip ([`Health::unanswered`](super::Health::unanswered)).
    pub unanswered: Vec<Instant>,
    /// Missed fraction of the last `loss_window` probes resolved while the path was up.
    pub loss: f64,
    /// How many resolved probes `loss` is over (fewer than `loss_window` just after start or an outage).
    pub loss_probes: usize,
    /// When the oldest of those probes was sent.
    pub loss_since: Option<Instant>,
    /// When `state` last changed (tokio clock, as a std `Instant`).
    pub last_change: Instant,
    pub stats: ProberStats,
}

/// The async prober of one uplink.
#[derive(Debug)]
pub struct Prober {
    config: ProberConfig,
    socket: UdpSocket,
    health: Health,
    stats: ProberStats,
    nonces: VecDeque<(u32, [u8; NONCE_LEN])>,
    tx: watch::Sender<UplinkHealth>,
    carrier_tx: watch::Sender<bool>,
    carrier_rx: watch::Receiver<bool>,
    source_tx: watch::Sender<IpAddr>,
    source_rx: watch::Receiver<IpAddr>,
}

fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

fn socket_err(what: &'static str) -> impl FnOnce(std::io::Error) -> ProbeError {
    move |source| ProbeError::Socket { what, source }
}

/// A non-blocking UDP socket bound to `source` (port chosen by the kernel, IP_FREEBIND), optionally to
/// `device`, and connected to `target` so only the HAG's datagrams are received.
fn probe_socket(source: IpAddr, device: Option<&str>, target: SocketAddr) -> Result<std::net::UdpSocket, ProbeError> {
    if source.is_ipv4() != target.is_ipv4() {
        return Err(ProbeError::Config(format!("source {source} and target {target} are of different families")));
    }
    let socket = Socket::new(Domain::for_address(target), Type::DGRAM.cloexec(), Some(Protocol::UDP))
        .map_err(socket_err("create"))?;
    if let Some(dev) = device {
        socket.bind_device(Some(dev.as_bytes())).map_err(socket_err("SO_BINDTODEVICE"))?;
    }
    if source.is_ipv4() {
        socket.set_freebind_v4(true).map_err(socket_err("IP_FREEBIND"))?;
    } else {
        socket.set_freebind_v6(true).map_err(socket_err("IPV6_FREEBIND"))?;
    }
    socket.bind(&SocketAddr::new(source, 0).into()).map_err(socket_err("bind"))?;
    socket.connect(&target.into()).map_err(socket_err("connect"))?;
    socket.set_nonblocking(true).map_err(socket_err("set non-blocking"))?;
    Ok(socket.into())
}

impl Prober {
    /// Opens the socket. Must be called inside a tokio runtime.
    pub fn new(config: ProberConfig) -> Result<Prober, ProbeError> {
        let n = config.cpe_id.len();
        if !(1..=wire::MAX_ID_LEN).contains(&n) {
            return Err(ProbeError::Config(format!("CPE id length {n} outside 1..=64")));
        }
        let std_socket = probe_socket(config.source, config.device.as_deref(), config.target)?;
        let socket = UdpSocket::from_std(std_socket).map_err(socket_err("register with tokio"))?;
        let health = Health::new(config.health.clone(), now());
        let (carrier_tx, carrier_rx) = watch::channel(true);
        let (source_tx, source_rx) = watch::channel(config.source);
        let (tx, _) = watch::channel(Self::view(&health, config.source, ProberStats::default()));
        Ok(Prober {
            config,
            socket,
            health,
            stats: ProberStats::default(),
            nonces: VecDeque::new(),
            tx,
            carrier_tx,
            carrier_rx,
            source_tx,
            source_rx,
        })
    }

    /// A receiver of this uplink's health. [`Prober::run`] returns once every receiver is dropped, so take
    /// one before running.
    pub fn subscribe(&self) -> watch::Receiver<UplinkHealth> {
        self.tx.subscribe()
    }

    /// Sender for the carrier state (from the rtnetlink link events): `send(false)` makes the uplink Down
    /// at once and pauses probing; `send(true)` resumes.
    pub fn carrier_control(&self) -> watch::Sender<bool> {
        self.carrier_tx.clone()
    }

    /// Sender for the uplink's source address (from the rtnetlink address events): a new value re-binds
    /// the probe socket to it, keeping the health state. A rebind that fails (e.g. an address of the other
    /// family) is logged and the old socket kept.
    pub fn source_control(&self) -> watch::Sender<IpAddr> {
        self.source_tx.clone()
    }

    /// The bound local address of the probe socket.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.socket.local_addr()
    }

    fn view(health: &Health, source: IpAddr, stats: ProberStats) -> UplinkHealth {
        UplinkHealth {
            state: health.state(),
            carrier: health.carrier_up(),
            source,
            srtt: health.srtt(),
            rttvar: health.rttvar(),
            latest_rtt: health.latest_rtt(),
            rtt_samples: health.rtt_samples(),
            unanswered: health.unanswered(),
            loss: health.loss(),
            loss_probes: health.loss_probes(),
            loss_since: health.loss_since(),
            last_change: health.last_change(),
            stats,
        }
    }

    fn publish(&self) {
        let fresh = Self::view(&self.health, self.config.source, self.stats);
        self.tx.send_if_modified(|cur| {
            let wake = cur.state != fresh.state || cur.carrier != fresh.carrier || cur.source != fresh.source;
            *cur = fresh;
            wake
        });
    }

    /// Probes until every [`UplinkHealth`] receiver is dropped (or the task is aborted).
    pub async fn run(self) -> Result<(), ProbeError> {
        use tracing::Instrument;
        let span = tracing::info_span!("prober", uplink = self.config.uplink, target = %self.config.target);
        self.run_inner().instrument(span).await
    }

    async fn run_inner(mut self) -> Result<(), ProbeError> {
        // One byte more than a reply, so an oversize datagram shows as a length mismatch.
        let mut buf = [0u8; REPLY_LEN + 1];
        loop {
            let deadline = self.health.next_deadline();
            let sleep = async move {
                match deadline {
                    Some(d) => tokio::time::sleep_until(tokio::time::Instant::from_std(d)).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = sleep => {
                    let actions = self.health.on_tick(now());
                    self.perform(actions).await?;
                }
                r = self.socket.recv(&mut buf) => match r {
                    Ok(n) => self.on_datagram(&buf[..n]),
                    Err(e) if is_transient(&e) => {
                        self.stats.recv_errors += 1;
                        tracing::debug!(error = %e, "probe recv");
                    }
                    Err(e) => return Err(ProbeError::Socket { what: "recv", source: e }),
                },
                r = self.carrier_rx.changed() => {
                    // Cannot fail: `self` holds a sender.
                    if r.is_ok() {
                        let up = *self.carrier_rx.borrow_and_update();
                        let actions = self.health.carrier(now(), up);
                        self.perform(actions).await?;
                    }
                }
                r = self.source_rx.changed() => {
                    if r.is_ok() {
                        let source = *self.source_rx.borrow_and_update();
                        self.rebind(source);
                    }
                }
                () = self.tx.closed() => return Ok(()),
            }
            self.publish();
        }
    }

    fn rebind(&mut self, source: IpAddr) {
        if source == self.config.source {
            return;
        }
        let socket = probe_socket(source, self.config.device.as_deref(), self.config.target)
            .and_then(|s| UdpSocket::from_std(s).map_err(socket_err("register with tokio")));
        match socket {
            Ok(socket) => {
                tracing::info!(old = %self.config.source, new = %source, "probe source address changed");
                self.socket = socket;
                self.config.source = source;
                self.stats.rebinds += 1;
            }
            Err(e) => tracing::warn!(%source, error = %e, "cannot re-bind probe socket; keeping the old one"),
        }
    }

    async fn perform(&mut self, actions: Vec<Action>) -> Result<(), ProbeError> {
        for action in actions {
            match action {
                Action::SendProbe { seq } => self.send_probe(seq).await?,
                Action::StateChanged(c) => {
                    tracing::info!(from = c.from.as_str(), to = c.to.as_str(), "uplink health changed");
                }
            }
        }
        Ok(())
    }

    async fn send_probe(&mut self, seq: u32) -> Result<(), ProbeError> {
        let mut nonce = [0u8; NONCE_LEN];
        getrandom::fill(&mut nonce).map_err(ProbeError::Random)?;
        let request = Request {
            seq,
            // hag's responder drops probes outside its skew: sign with the clock hag's Time TLV corrected.
            timestamp_us: u64::try_from(crate::clock::unix_now().as_micros()).unwrap_or(u64::MAX),
            uplink: self.config.uplink,
            cpe_id: self.config.cpe_id.clone(),
            nonce,
        };
        // The id length was checked in `new`.
        let Ok(bytes) = request.to_bytes(&self.config.key) else { return Ok(()) };
        if self.nonces.len() == NONCE_MEMORY {
            self.nonces.pop_front();
        }
        self.nonces.push_back((seq, nonce));
        // Any send error (no route, source address gone: EINVAL/EADDRNOTAVAIL, ...) concerns this probe
        // only; it becomes a miss when its timeout passes.
        match self.socket.send(&bytes).await {
            Ok(_) => self.stats.sent += 1,
            Err(e) => {
                self.stats.send_errors += 1;
                tracing::debug!(error = %e, seq, "probe send");
            }
        }
        Ok(())
    }

    fn on_datagram(&mut self, datagram: &[u8]) {
        let reply = match wire::parse_reply(datagram).and_then(|u| u.verify(&self.config.key)) {
            Ok(r) => r,
            Err(_) => {
                self.stats.bad_replies += 1;
                return;
            }
        };
        let ours = reply.uplink == self.config.uplink
            && self.nonces.iter().any(|(seq, nonce)| *seq == reply.seq && *nonce == reply.nonce);
        if !ours {
            self.stats.bad_replies += 1;
            return;
        }
        let (counted, actions) = self.health.on_reply(now(), reply.seq);
        if counted {
            self.stats.replies += 1;
        } else {
            self.stats.late_replies += 1;
        }
        for a in actions {
            if let Action::StateChanged(c) = a {
                tracing::info!(from = c.from.as_str(), to = c.to.as_str(), "uplink health changed");
            }
        }
    }
}
