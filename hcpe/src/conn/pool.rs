//! The pool of ready connections to hag: MPTCP connections opened ahead of demand, authenticated with a hold
//! request (Hold + Auth TLVs, `docs/protocol.md`) and joined over the other uplinks, so that a new LAN
//! connection sends its Convert request and first bytes at once (0-RTT without TCP Fast Open) and starts
//! on every uplink. Design and costs: `docs/zero-rtt.md`.
//!
//! Owns: the ready connections, the pool's target size ([`Sizer`], sans-IO) and the task that keeps the
//! pool filled ([`run`]).
//!
//! Invariants:
//! - A connection is handed out at most once ([`Pool::take`] removes it), and only when it is younger than
//!   `max_age`, hag has not closed it, its initial subflow is on the uplink a new connection would start on
//!   now, and it has a subflow over another uplink whenever another uplink is usable: so a silent cut of its
//!   first uplink never leaves a LAN connection on a connection with no other path (a new connection would
//!   race a second attempt over that uplink instead). With only `standby` uplinks besides the first, the
//!   pool stays empty.
//! - While a probe of the uplink new connections start on is overdue (longer than the race delay), the pool
//!   is left alone: a new connection then races over a second uplink, which a ready connection cannot.
//! - Every ready connection ends in exactly one counter: taken, or retired for one [`Retired`] reason.
//! - The pool never holds more than `max` ready connections plus the ones being opened, and never opens more
//!   than `max` at once; after a failed open it waits (doubling up to [`BACKOFF_MAX`]) before the next.

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;

use portable_atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::convert::{self, Decoded, ErrorCode};
use common::mptcp::{ConnectOptions, connect_with_data};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::Shared;
use crate::config::PoolFile;

/// How often the pool task checks its ready connections (age, hag closing them, uplinks changing).
const SWEEP_EVERY: Duration = Duration::from_millis(500);
/// The target shrinks by one after this long without a miss.
const SHRINK_EVERY: Duration = Duration::from_secs(10);
/// How long a new ready connection may take to be joined over the other uplinks before it is pooled anyway.
const JOIN_WAIT: Duration = Duration::from_secs(1);
/// First wait after a failed open; it doubles up to [`BACKOFF_MAX`] while opens keep failing.
const BACKOFF_MIN: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(60);
/// Wait after hag answered a hold with Unsupported Message (a hag without the Hold TLV).
const UNSUPPORTED_WAIT: Duration = Duration::from_secs(600);

/// One ready connection.
#[derive(Debug)]
pub struct Ready {
    pub stream: TcpStream,
    /// The hag address it is connected to.
    pub hag: SocketAddr,
    /// The uplink of its initial subflow (index into the config's uplinks).
    pub uplink: usize,
    opened: Instant,
}

/// Why a ready connection was closed without being used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retired {
    /// Older than `max_age`.
    Aged,
    /// hag closed it (its hold timeout, a restart) or it failed.
    Closed,
    /// Its initial subflow is on an uplink new connections no longer start on (down, off, a better one back).
    Uplink,
    /// Another uplink is usable but has no subflow on it (not joined yet, or `standby`): a silent cut of its
    /// first uplink would strand it, where a new connection would race over the other uplink.
    Unjoined,
    /// The pool shrank, or hcpe is stopping.
    Surplus,
}

impl Retired {
    pub const ALL: [Retired; 5] =
        [Retired::Aged, Retired::Closed, Retired::Uplink, Retired::Unjoined, Retired::Surplus];

    pub fn as_str(self) -> &'static str {
        match self {
            Retired::Aged => "aged",
            Retired::Closed => "closed",
            Retired::Uplink => "uplink",
            Retired::Unjoined => "unjoined",
            Retired::Surplus => "surplus",
        }
    }
}

/// The pool's counters (`/metrics`).
#[derive(Debug, Default)]
pub struct PoolCounters {
    /// Ready connections opened (hag answered the hold).
    pub opened: AtomicU64,
    /// Opens that failed (connect, hag's Error, timeout).
    pub open_failed: AtomicU64,
    /// LAN connections that got a ready connection.
    pub taken: AtomicU64,
    /// LAN connections that found the pool empty (and connected to hag themselves).
    pub missed: AtomicU64,
    /// LAN connections that left the pool alone because a probe of its uplink was overdue (a silent cut,
    /// maybe): they connected to hag themselves, racing a second attempt over another uplink.
    pub bypassed: AtomicU64,
    /// Taken connections that failed before hag's reply (the LAN connection then connected afresh).
    pub failed_after_take: AtomicU64,
    /// Ready connections closed unused, by [`Retired::ALL`] index.
    pub retired: [AtomicU64; Retired::ALL.len()],
}

impl PoolCounters {
    fn retire(&self, why: Retired) {
        let i = Retired::ALL.iter().position(|r| *r == why).expect("listed");
        self.retired[i].fetch_add(1, Relaxed);
    }
}

/// The pool's target size: `min` when idle, one more for each miss up to `max`, one less after each
/// [`SHRINK_EVERY`] without a miss. Sans-IO: the caller passes `now`.
#[derive(Debug, Clone)]
pub struct Sizer {
    settings: PoolFile,
    target: usize,
    /// Last miss or shrink step.
    last_change: Instant,
}

impl Sizer {
    pub fn new(settings: PoolFile, now: Instant) -> Self {
        Sizer { settings, target: settings.min, last_change: now }
    }

    pub fn target(&self) -> usize {
        self.target
    }

    /// A LAN connection found the pool empty.
    pub fn on_miss(&mut self, now: Instant) {
        self.target = (self.target + 1).min(self.settings.max);
        self.last_change = now;
    }

    /// Shrinks after quiet periods; returns the target.
    pub fn tick(&mut self, now: Instant) -> usize {
        while self.target > self.settings.min && now.duration_since(self.last_change) >= SHRINK_EVERY {
            self.target -= 1;
            self.last_change += SHRINK_EVERY;
        }
        self.target
    }

    /// New settings (a reload): the target moves inside the new bounds.
    pub fn apply(&mut self, settings: PoolFile) {
        self.settings = settings;
        self.target = self.target.clamp(settings.min, settings.max);
    }
}

#[derive(Debug)]
struct State {
    ready: VecDeque<Ready>,
    opening: usize,
    sizer: Sizer,
    /// No open before this (after failures)...
    backoff_until: Option<Instant>,
    backoff: Duration,
    /// ...unless new connections now start on another uplink than the one the last failure was on.
    failed_on: Option<usize>,
}

/// The pool; shared by the connection tasks (which take) and the pool task (which fills and sweeps).
#[derive(Debug)]
pub struct Pool {
    state: Mutex<State>,
    wake: Notify,
    pub counters: PoolCounters,
}

/// A snapshot for the admin API and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolStatus {
    pub ready: usize,
    pub opening: usize,
    pub target: usize,
    pub settings: PoolFile,
}

impl Pool {
    pub fn new(settings: PoolFile) -> Self {
        Pool {
            state: Mutex::new(State {
                ready: VecDeque::new(),
                opening: 0,
                sizer: Sizer::new(settings, Instant::now()),
                backoff_until: None,
                backoff: BACKOFF_MIN,
                failed_on: None,
            }),
            wake: Notify::new(),
            counters: PoolCounters::default(),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("pool state poisoned")
    }

    pub fn status(&self) -> PoolStatus {
        let st = self.state();
        PoolStatus {
            ready: st.ready.len(),
            opening: st.opening,
            target: st.sizer.target(),
            settings: st.sizer.settings,
        }
    }

    /// New settings from a reload; `max: 0` empties the pool.
    pub fn apply(&self, settings: PoolFile) {
        let surplus: Vec<Ready> = {
            let mut st = self.state();
            st.sizer.apply(settings);
            let keep = settings.max;
            let n = st.ready.len().saturating_sub(keep);
            st.ready.drain(..n).collect()
        };
        for _ in surplus {
            self.counters.retire(Retired::Surplus);
        }
        self.wake.notify_one();
    }

    /// A ready connection fit to carry a new LAN connection now, or `None` (a miss: the pool grows).
    pub fn take(&self, shared: &Shared) -> Option<Ready> {
        let now = Instant::now();
        if !self.state().sizer.settings.enabled() {
            return None;
        }
        if let Some(sel) = &shared.sources
            && let Some((_, attempts)) = super::plan(&shared.config, Some(sel))
            && let Some(after) = shared.config.race.delay(attempts[0].srtt)
            && attempts.len() > 1
            && sel.probe_overdue(attempts[0].uplink, after)
        {
            self.counters.bypassed.fetch_add(1, Relaxed);
            return None;
        }
        let mut st = self.state();
        let max_age = st.sizer.settings.max_age;
        while let Some(ready) = st.ready.pop_front() {
            match fit(&ready, shared, now, max_age) {
                Ok(()) => {
                    drop(st);
                    self.counters.taken.fetch_add(1, Relaxed);
                    self.wake.notify_one();
                    return Some(ready);
                }
                Err(why) => self.counters.retire(why),
            }
        }
        if st.sizer.settings.enabled() {
            st.sizer.on_miss(now);
            self.counters.missed.fetch_add(1, Relaxed);
            drop(st);
            self.wake.notify_one();
        }
        None
    }

    /// Retires what no longer fits, shrinks after quiet periods, and says how many to open now.
    fn sweep(&self, shared: &Shared) -> usize {
        let now = Instant::now();
        let mut st = self.state();
        let max_age = st.sizer.settings.max_age;
        let target = st.sizer.tick(now);
        let mut kept = VecDeque::with_capacity(st.ready.len());
        while let Some(ready) = st.ready.pop_front() {
            // A young unjoined connection may still be joining.
            match fit(&ready, shared, now, max_age) {
                Ok(()) => kept.push_back(ready),
                Err(Retired::Unjoined) if now.duration_since(ready.opened) < JOIN_WAIT * 2 => kept.push_back(ready),
                Err(why) => self.counters.retire(why),
            }
        }
        while kept.len() > target {
            kept.pop_front();
            self.counters.retire(Retired::Surplus);
        }
        st.ready = kept;
        let initial = initial_uplink(shared);
        if st.failed_on.is_some() && initial != st.failed_on {
            // The uplink the opens failed on is no longer where connections start (down, say): try the new one.
            st.backoff_until = None;
            st.backoff = BACKOFF_MIN;
            st.failed_on = None;
        }
        if st.backoff_until.is_some_and(|t| now < t) || !worth_opening(shared) {
            return 0;
        }
        let n = target.saturating_sub(st.ready.len() + st.opening);
        st.opening += n;
        n
    }

    fn opened(&self, uplink: Option<usize>, result: Result<Ready, OpenError>) {
        let mut st = self.state();
        st.opening -= 1;
        match result {
            Ok(ready) => {
                st.backoff = BACKOFF_MIN;
                st.backoff_until = None;
                st.failed_on = None;
                self.counters.opened.fetch_add(1, Relaxed);
                if st.ready.len() < st.sizer.settings.max {
                    st.ready.push_back(ready);
                } else {
                    self.counters.retire(Retired::Surplus);
                }
            }
            Err(e) => {
                self.counters.open_failed.fetch_add(1, Relaxed);
                let wait = match e {
                    OpenError::Refused(ErrorCode::UnsupportedMessage) => UNSUPPORTED_WAIT,
                    _ => st.backoff,
                };
                // Several opens failing together (hag down) back off once, not once each.
                if st.backoff_until.is_none_or(|t| t < Instant::now()) {
                    st.failed_on = uplink;
                    st.backoff_until = Some(Instant::now() + wait);
                    st.backoff = (st.backoff * 2).min(BACKOFF_MAX);
                    match e {
                        OpenError::Refused(ErrorCode::UnsupportedMessage) => warn!(
                            retry_in = ?wait,
                            "hag does not hold connections (a hag without the Hold TLV?): no ready connections, \
                             new connections connect to hag themselves"
                        ),
                        _ => info!(error = %e, retry_in = ?wait, "could not open a ready connection to hag"),
                    }
                }
            }
        }
    }

    /// Closes every ready connection (hcpe is stopping).
    fn clear(&self) {
        let all: Vec<Ready> = self.state().ready.drain(..).collect();
        for _ in all {
            self.counters.retire(Retired::Surplus);
        }
    }
}

/// Whether `ready` may carry a new LAN connection now.
fn fit(ready: &Ready, shared: &Shared, now: Instant, max_age: Duration) -> Result<(), Retired> {
    if now.duration_since(ready.opened) >= max_age {
        return Err(Retired::Aged);
    }
    // hag never sends on a held connection: anything readable is its close (or an error).
    let mut byte = [0u8; 1];
    match ready.stream.try_read(&mut byte) {
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
        _ => return Err(Retired::Closed),
    }
    if let Some(sel) = &shared.sources {
        let fit = sel.ready_fit(ready.hag.ip(), ready.uplink);
        if !fit.initial {
            return Err(Retired::Uplink);
        }
        let joined = || common::mptcp::info(&ready.stream).ok().flatten().map_or(0, |i| i.extra_subflows);
        if !fit.worth_pooling() || (fit.usable_others > 0 && joined() == 0) {
            return Err(Retired::Unjoined);
        }
    }
    Ok(())
}

/// The uplink a new connection would start on now.
fn initial_uplink(shared: &Shared) -> Option<usize> {
    super::plan(&shared.config, shared.sources.as_ref()).map(|(_, attempts)| attempts[0].uplink)
}

/// Whether a ready connection opened now would be worth keeping ([`crate::uplink::ReadyFit::worth_pooling`]).
fn worth_opening(shared: &Shared) -> bool {
    let Some(sel) = &shared.sources else { return true };
    super::plan(&shared.config, Some(sel))
        .is_some_and(|(hag, attempts)| sel.ready_fit(hag.ip(), attempts[0].uplink).worth_pooling())
}

/// Why a ready connection could not be opened.
#[derive(Debug, thiserror::Error)]
enum OpenError {
    #[error("no uplink can reach any hag address")]
    NoRoute,
    #[error("building the hold request: {0}")]
    Request(String),
    #[error("hag {hag}: {source}")]
    Io { hag: SocketAddr, source: io::Error },
    #[error("hag refused the hold with error {}", .0.code())]
    Refused(ErrorCode),
    #[error("hag sent a malformed answer to the hold")]
    Malformed,
    #[error("hag did not answer the hold in time")]
    Timeout,
    /// hag refused the timestamp and said its time, which the signing clock took: ask again.
    #[error("hag refused the hold's timestamp and said its time")]
    Stale,
}

/// Opens one ready connection ([`open_once`]); when hag refused the hold's timestamp and said its time, the
/// signing clock learns it and the hold is asked once more.
async fn open(shared: &Shared) -> Result<Ready, OpenError> {
    let nonce = || convert::auth::random_nonce().map_err(|e| OpenError::Request(e.to_string()));
    match open_once(shared, nonce()?).await {
        Err(OpenError::Stale) => {}
        done => return done,
    }
    match open_once(shared, nonce()?).await {
        Err(OpenError::Stale) => Err(OpenError::Refused(ErrorCode::NotAuthorized)),
        done => done,
    }
}

/// Opens one ready connection: connect over the best uplink, send the hold request (signed with `nonce` and
/// [`common::clock`]'s time), read hag's answer, and give the other uplinks a moment to join.
async fn open_once(shared: &Shared, nonce: [u8; 16]) -> Result<Ready, OpenError> {
    let cfg = &shared.config;
    let (hag, attempts) = super::plan(cfg, shared.sources.as_ref()).ok_or(OpenError::NoRoute)?;
    let first = attempts[0];
    let now = common::clock::unix_now().as_secs();
    let sent = Instant::now();
    let request = convert::auth::signed_hold(&cfg.key.0, &cfg.cpe_id, now, nonce)
        .map_err(|e| OpenError::Request(e.to_string()))?;
    let io_err = |source| OpenError::Io { hag, source };
    // Never in the SYN: the kernel bug `hag.fastopen` documents would follow the connection for its life.
    let opts = ConnectOptions {
        bind: Some(SocketAddr::new(first.source, 0)),
        bind_device: None,
        mptcp: true,
        fastopen: false,
        timeout: cfg.limits.connect_timeout,
        congestion_control: shared.congestion_control.clone(),
    };
    let (mut stream, _) = connect_with_data(hag, &[], &opts).await.map_err(io_err)?;
    let mptcp = common::mptcp::info(&stream).ok().flatten().is_some();
    if let Some(sel) = &shared.sources {
        sel.report_connect(first.uplink, mptcp);
    }
    let _ = stream.set_nodelay(true);
    let answer = async {
        stream.write_all(&request).await.map_err(io_err)?;
        let mut buf = Vec::with_capacity(convert::MAX_MESSAGE_LEN);
        let mut chunk = [0u8; 64];
        loop {
            match convert::decode(&buf) {
                Decoded::Done { message, consumed } if consumed == buf.len() => return Ok(message),
                Decoded::NeedMore => {}
                Decoded::Done { .. } | Decoded::Error(_) => return Err(OpenError::Malformed),
            }
            // Read no further than the answer's end: hag sends nothing after it until the request.
            let want = if buf.len() < convert::HEADER_LEN { convert::HEADER_LEN - buf.len() } else { chunk.len() };
            let n = stream.read(&mut chunk[..want]).await.map_err(io_err)?;
            if n == 0 {
                return Err(OpenError::Io { hag, source: io::ErrorKind::UnexpectedEof.into() });
            }
            buf.extend_from_slice(&chunk[..n]);
        }
    };
    match tokio::time::timeout(cfg.limits.reply_timeout, answer).await {
        Err(_) => return Err(OpenError::Timeout),
        Ok(Err(e)) => return Err(e),
        Ok(Ok(message)) => match (message.error(), message.time()) {
            (None, _) => {}
            (Some(ErrorCode::NotAuthorized), Some(time)) if super::learn_hag_time(&cfg.key.0, &nonce, time, sent) => {
                return Err(OpenError::Stale);
            }
            (Some(code), _) => return Err(OpenError::Refused(code)),
        },
    }
    let joins = shared.sources.as_ref().map_or(0, |s| s.ready_fit(hag.ip(), first.uplink).joins);
    if mptcp && joins > 0 {
        let deadline = Instant::now() + JOIN_WAIT;
        while common::mptcp::info(&stream).ok().flatten().is_some_and(|i| usize::from(i.extra_subflows) < joins)
            && Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    Ok(Ready { stream, hag, uplink: first.uplink, opened: Instant::now() })
}

/// Keeps the pool filled until `stop`, then closes every ready connection.
pub async fn run(pool: Arc<Pool>, shared: Arc<Shared>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(SWEEP_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            () = pool.wake.notified() => {}
            _ = tick.tick() => {}
        }
        for _ in 0..pool.sweep(&shared) {
            let (pool, shared) = (pool.clone(), shared.clone());
            tokio::spawn(async move {
                let uplink = initial_uplink(&shared);
                let result = open(&shared).await;
                if let Err(e) = &result {
                    debug!(error = %e, "ready connection not opened");
                }
                pool.opened(uplink, result);
            });
        }
    }
    pool.clear();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(min: usize, max: usize) -> PoolFile {
        PoolFile { min, max, max_age: Duration::from_secs(60) }
    }

    #[test]
    fn target_grows_by_one_per_miss_up_to_max() {
        let t0 = Instant::now();
        let mut s = Sizer::new(settings(4, 6), t0);
        assert_eq!(s.target(), 4);
        for _ in 0..5 {
            s.on_miss(t0);
        }
        assert_eq!(s.target(), 6);
    }

    #[test]
    fn target_shrinks_one_step_per_quiet_period_down_to_min() {
        let t0 = Instant::now();
        let mut s = Sizer::new(settings(2, 32), t0);
        for _ in 0..10 {
            s.on_miss(t0);
        }
        assert_eq!(s.tick(t0 + SHRINK_EVERY / 2), 12, "not before a whole quiet period");
        assert_eq!(s.tick(t0 + SHRINK_EVERY * 3), 9);
        // A miss restarts the quiet period.
        s.on_miss(t0 + SHRINK_EVERY * 3);
        assert_eq!(s.tick(t0 + SHRINK_EVERY * 4 - Duration::from_millis(1)), 10);
        assert_eq!(s.tick(t0 + SHRINK_EVERY * 100), 2);
    }

    #[test]
    fn a_reload_moves_the_target_inside_the_new_bounds() {
        let t0 = Instant::now();
        let mut s = Sizer::new(settings(4, 32), t0);
        s.apply(settings(8, 16));
        assert_eq!(s.target(), 8);
        s.apply(settings(0, 0));
        assert_eq!(s.target(), 0);
        s.on_miss(t0);
        assert_eq!(s.target(), 0, "an empty pool stays empty");
    }
}
