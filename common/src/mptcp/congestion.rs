//! The congestion control of the MPTCP connections between hcpe and hag: which algorithm their subflows run
//! (an operator's choice, loss-based by default), the algorithm a connection starts on before it, and starting
//! it afresh on a connection that waited idle.

use std::fmt;
use std::io;
use std::os::fd::AsFd;
use std::sync::Weak;
use std::time::Duration;

use tokio::net::TcpStream;

/// The congestion control the daemons give their MPTCP connections to each other (`congestion_control` in
/// both configurations); every subflow runs it.
///
/// The default is CUBIC, loss-based, whatever the machine's default. Why (measured on the testbed, Linux
/// 6.18, LTE 30 Mbit/s 30 ms with 60 ms of delay variation next to DSL 50 Mbit/s, `BENCHMARKS.md`): with BBR
/// the LTE subflow stalled at 1-2 Mbit/s for a whole transfer in about one run in three. BBR bounds what it
/// has in flight by twice its bandwidth estimate times the minimum round trip it has seen, and that minimum
/// comes from the variation's troughs (about 40 ms) while the smoothed round trip is 130 ms, so the window
/// never covers the path, every sample is window-limited and the estimate cannot grow; the kernel's MPTCP
/// scheduler, which shares data by each subflow's pacing rate, then gives LTE less still, and DSL waits for
/// LTE's late data: 0.79-1.08 x DSL alone in such runs. CUBIC grows its window until the path's queue
/// overflows, whatever the variation: 1.14-1.45 x DSL alone in every run. Its own weakness there: HyStart
/// now and then takes a few milliseconds of jitter for a queue building up and leaves the slow start early
/// (`TcpExtTCPHystartDelayDetect`), and the subflow then takes 2-3 s to reach a fast link's rate. Reno has
/// no HyStart but regrows too slowly after a loss on a fast LTE whose queue is shorter than its
/// bandwidth-delay product.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CongestionControl {
    /// The namespace's default (`net.ipv4.tcp_congestion_control`): nothing is set.
    System,
    /// This algorithm, by its kernel name (`net.ipv4.tcp_available_congestion_control`).
    Named(String),
}

impl Default for CongestionControl {
    fn default() -> Self {
        CongestionControl::Named("cubic".into())
    }
}

impl CongestionControl {
    /// What a daemon runs: the configured algorithm, which must work (an error otherwise), or, where none is
    /// configured, the default where this process can use it and the namespace's default where not, with a
    /// warning (CUBIC is allowed to anyone where it is the machine's default; elsewhere it needs
    /// `CAP_NET_ADMIN`, which hag's service does not have, or a place in
    /// `net.ipv4.tcp_allowed_congestion_control`).
    pub fn resolve(configured: Option<&CongestionControl>, key: &str) -> io::Result<CongestionControl> {
        if let Some(cc) = configured {
            return cc.check().map(|()| cc.clone());
        }
        let default = CongestionControl::default();
        match default.check() {
            Ok(()) => Ok(default),
            Err(e) => {
                tracing::warn!(
                    error = %e,
                    "{key} not set and its default `{default}` cannot be used: the connections run the system's \
                     default (add it to net.ipv4.tcp_allowed_congestion_control, or set {key}: system to keep this)"
                );
                Ok(CongestionControl::System)
            }
        }
    }

    /// What to set on a socket: `None` for the namespace's default.
    pub fn name(&self) -> Option<&str> {
        match self {
            CongestionControl::System => None,
            CongestionControl::Named(n) => Some(n),
        }
    }

    /// Whether this process can give a socket the algorithm (loaded, or loadable, and allowed: one outside
    /// `net.ipv4.tcp_allowed_congestion_control` needs `CAP_NET_ADMIN`). Checked at start, so that a name the
    /// kernel does not have is a start-up error and not a failure of every connection.
    pub fn check(&self) -> io::Result<()> {
        let Some(name) = self.name() else { return Ok(()) };
        let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, Some(socket2::Protocol::TCP))?;
        set_congestion_control(&sock, name).map_err(|e| {
            let available =
                std::fs::read_to_string("/proc/sys/net/ipv4/tcp_available_congestion_control").unwrap_or_default();
            io::Error::new(
                e.kind(),
                format!(
                    "congestion control `{name}`: {e} (this kernel has: {}; a module may add more)",
                    available.trim()
                ),
            )
        })
    }
}

impl fmt::Display for CongestionControl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name().unwrap_or("system"))
    }
}

impl std::str::FromStr for CongestionControl {
    type Err = String;

    /// `system`, or an algorithm's name as the kernel spells it (up to 15 bytes of `a-z0-9_`).
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "system" => Ok(CongestionControl::System),
            n if !n.is_empty()
                && n.len() < 16
                && n.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_') =>
            {
                Ok(CongestionControl::Named(n.to_owned()))
            }
            _ => Err(format!("`{s}` is not a congestion control name (e.g. cubic, bbr, reno) nor `system`")),
        }
    }
}

impl<'de> serde::Deserialize<'de> for CongestionControl {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Gives the socket the congestion control `name` (`TCP_CONGESTION`; on an MPTCP socket every subflow,
/// present and future, takes it: `mptcp_setsockopt_sol_tcp_congestion`).
pub fn set_congestion_control(fd: &impl AsFd, name: &str) -> io::Result<()> {
    socket2::SockRef::from(fd).set_tcp_congestion(name.as_bytes())
}

/// Starts a connection's congestion control afresh, as on a new connection: for one that waited idle before
/// its first transfer (a ready connection of a CPE's pool). Returns whether it did.
///
/// Why (Linux 6.18, BBR, `bbr_update_min_rtt` in `net/ipv4/tcp_bbr.c`): BBR's minimum round trip expires
/// 10 s after it was last lowered, and BBR then keeps 4 packets in flight for 200 ms and a round trip
/// (ProbeRTT). Nothing refreshes it on an idle connection, so one that waited `w` seconds enters ProbeRTT
/// `10 - w` seconds into its first transfer, where a new connection would first do so 10 s in. Measured on
/// the testbed after a 3 s wait: DSL (50 Mbit/s) all but stopped for 0.25 s 6.6 s into every 8.5 s
/// transfer, 3 % of it.
///
/// Mechanism: `TCP_CONGESTION` re-initializes the algorithm only when the name changes
/// (`tcp_set_congestion_control`), so the socket goes to `reno` and back; on an MPTCP socket each setting
/// reaches every subflow (`mptcp_setsockopt_sol_tcp_congestion`). Nothing is changed where the algorithm is
/// reno already, or is not in `net.ipv4.tcp_allowed_congestion_control` (the namespace's default always
/// is): a process without `CAP_NET_ADMIN` could not set it back.
pub fn restart_congestion_control(fd: &impl AsFd) -> io::Result<bool> {
    let sock = socket2::SockRef::from(fd);
    let raw = sock.tcp_congestion()?;
    let name = raw.split(|b| *b == 0).next().unwrap_or_default();
    let allowed = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_allowed_congestion_control")?;
    if name.is_empty() || name == b"reno" || !allowed.split_whitespace().any(|a| a.as_bytes() == name) {
        return Ok(false);
    }
    sock.set_tcp_congestion(b"reno")?;
    sock.set_tcp_congestion(name)?;
    Ok(true)
}

/// The first seconds of a connection on another algorithm than the one it runs after (`congestion_control_start`
/// in hag's config, off unless set): from the start of its transfer the connection runs `algorithm` for
/// `duration`, then the algorithm it ran before (`congestion_control`).
///
/// What BBR then CUBIC does for downloads (measured on the testbed, Linux 6.18, `BENCHMARKS.md`): CUBIC's slow
/// start ends at HyStart's first sign of a queue, a round trip an eighth above its minimum
/// (`TcpExtTCPHystartDelayDetect`), and an LTE link's few milliseconds of jitter look like one; the subflow
/// then grows about 5 % per round trip and takes 2-3 s to reach a 30-60 Mbit/s link's rate (`good` and `rural`
/// rows at 0.86-0.94 x the two links' sum in about one run in three). HyStart's thresholds are the
/// `tcp_cubic` module's, for every socket of the host. BBR's start ends on a bandwidth estimate that stopped
/// growing, not on delay, but BBR alone stalls for good on a path with much delay variation
/// ([`CongestionControl`]). Three seconds of BBR find each subflow's rate; CUBIC then continues from the window
/// BBR left (`tcp_reinit_congestion_control` keeps `snd_cwnd`; BBR leaves `snd_ssthresh` unset, so CUBIC's
/// own slow start and HyStart go on from there) and copes with the jitter from then on. Its cost, and why it is
/// not the default: a DSL cut within the phase leaves the download without data for longer (437 against
/// 407 ms on average over 50 runs each, a 100 ms stall of 400 ms or more in 24 of them against 5;
/// `tests/tests/uplink_failover.rs`, `BENCHMARKS.md`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartPhase {
    /// The algorithm of the first phase, by its kernel name.
    pub algorithm: String,
    /// How long it runs; zero turns the phase off.
    pub duration: Duration,
}

impl StartPhase {
    /// What a daemon runs: `None` where no phase is configured or its duration is zero; a configured
    /// algorithm must work (an error otherwise).
    pub fn resolve(configured: Option<&StartPhase>) -> io::Result<Option<StartPhase>> {
        let Some(phase) = configured.filter(|p| !p.duration.is_zero()) else { return Ok(None) };
        CongestionControl::Named(phase.algorithm.clone()).check()?;
        Ok(Some(phase.clone()))
    }

    /// Gives the connection the phase's algorithm and returns the one to give it back when the phase ends,
    /// `None` where it runs the phase's algorithm already.
    pub fn begin(&self, fd: &impl AsFd) -> io::Result<Option<Vec<u8>>> {
        let sock = socket2::SockRef::from(fd);
        let raw = sock.tcp_congestion()?;
        let running = raw.split(|b| *b == 0).next().unwrap_or_default();
        if running.is_empty() || running == self.algorithm.as_bytes() {
            return Ok(None);
        }
        let running = running.to_vec();
        sock.set_tcp_congestion(self.algorithm.as_bytes())?;
        Ok(Some(running))
    }

    /// Runs `work` (the connection's relay) and, `duration` into it, gives the connection behind `stream` the
    /// algorithm `then` back ([`StartPhase::begin`]'s answer). A connection closed before that is left alone.
    pub async fn run<T>(&self, work: impl Future<Output = T>, stream: Weak<TcpStream>, then: Vec<u8>) -> T {
        let handover = async {
            tokio::time::sleep(self.duration).await;
            if let Some(s) = stream.upgrade()
                && let Err(e) = socket2::SockRef::from(&*s).set_tcp_congestion(&then)
            {
                tracing::debug!(error = %e, "could not end the connection's start phase");
            }
            std::future::pending::<()>().await;
        };
        tokio::pin!(work);
        tokio::select! {
            out = &mut work => out,
            () = handover => unreachable!("the handover never completes"),
        }
    }
}
