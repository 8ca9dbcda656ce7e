//! Volume per uplink: bytes counted from each uplink interface's kernel counters (rtnetlink
//! `IFLA_STATS64`, polled every second), kept in a state file across restarts, a 1 s rate history, and an
//! optional monthly quota. Over quota the uplink drops to the quota's `action` mode through the uplink manager
//! ([`ModeSwitch`], [`super::UplinkControl`] in the daemon) and goes back to its configured mode when the next period
//! starts.
//!
//! Pieces: [`Account`] (sans-IO: counter readings and `now` in, totals, rates and quota events out),
//! [`period_start`] / [`next_period_start`] (pure calendar arithmetic, UTC), the state file ([`StateFile`],
//! written atomically: temp file + rename), and the polling task behind [`VolumeTracker`].
//!
//! Invariants:
//! - only deltas of the kernel counters are counted: the first reading after start is the baseline, and a
//!   counter that went down or an interface that came back with another ifindex is a reset (the new value is
//!   all new traffic), so a recreated interface neither loses nor double-counts the totals;
//! - a quota period runs from `reset_day` 00:00 UTC to the same day of the next month (reset days 1..=28 exist
//!   in every month); without a quota the period is the calendar month;
//! - `over_quota` is set at most once per period (one `uplink over quota` log line and one count per
//!   crossing), is persisted, and is cleared only when a new period starts; while it is set the tracker keeps
//!   asking for the quota mode until the uplink manager accepts it (also after a restart), and asks for the
//!   configured mode once when it is cleared;
//! - the state file is replaced atomically, so a crash leaves the previous or the new version, never a torn
//!   one; it is written every `volume.save_interval`, on a quota event and on shutdown.
//!
//! For operators: the counter of quota crossings is [`VolumeStatus::quota_exceeded_total`] (persisted; the
//! admin API exports it as `hcpe_uplink_quota_exceeded_total`); periods follow UTC, not local time.

use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytesize::ByteSize;
use common::config::ConfigError;
use futures::TryStreamExt as _;
use netlink_packet_route::link::{LinkAttribute, LinkMessage};
use serde::{Deserialize, Serialize};
use time::{Date, Month, OffsetDateTime};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use super::settings::Mode;
use crate::config::Config;

/// Rate samples kept per uplink: 5 minutes of 1 s samples.
pub const HISTORY_LEN: usize = 300;
/// How often the interface counters are read.
pub const POLL_INTERVAL: Duration = Duration::from_secs(1);

// ------------------------------------------------------------------------------------------------
// Config

/// `uplinks[].quota`: a monthly volume limit for one uplink.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuotaFile {
    /// Bytes per period, received plus sent: a number of bytes or a size like `20GiB`, `500MB`.
    pub limit: ByteSize,
    /// Day of the month (1..=28) on which a new period starts, at 00:00 UTC.
    #[serde(default = "default_reset_day")]
    pub reset_day: u8,
    /// Mode the uplink drops to while over quota.
    #[serde(default)]
    pub action: QuotaAction,
}

/// What happens to an uplink over its quota.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum QuotaAction {
    /// Keep the subflow but with the backup flag: used only when nothing else works.
    #[default]
    Backup,
    /// No endpoint at all until the period ends.
    Off,
}

impl QuotaAction {
    /// The uplink mode this action sets.
    pub fn mode(self) -> Mode {
        match self {
            QuotaAction::Backup => Mode::Backup,
            QuotaAction::Off => Mode::Off,
        }
    }
}

/// The top-level `volume:` section.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VolumeFile {
    /// Where the totals are kept across restarts (relative to the config file). Absent: counted in memory
    /// only, so every restart starts from zero and a quota period's volume is forgotten.
    #[serde(default)]
    pub state_file: Option<PathBuf>,
    /// How often the state file is written (also on a quota event and on shutdown).
    #[serde(with = "common::config::duration", default = "default_save_interval")]
    pub save_interval: Duration,
}

impl Default for VolumeFile {
    fn default() -> Self {
        VolumeFile { state_file: None, save_interval: default_save_interval() }
    }
}

fn default_reset_day() -> u8 {
    1
}
fn default_save_interval() -> Duration {
    Duration::from_secs(60)
}

/// Checks `uplinks[index].quota`.
pub fn validate_quota(index: usize, q: &QuotaFile) -> Result<(), ConfigError> {
    if q.limit.as_u64() == 0 {
        return Err(ConfigError::invalid(format!("uplinks[{index}].quota.limit"), "must be more than 0 bytes"));
    }
    if !(1..=28).contains(&q.reset_day) {
        return Err(ConfigError::invalid(
            format!("uplinks[{index}].quota.reset_day"),
            "must be 1..=28 (a day every month has)",
        ));
    }
    Ok(())
}

/// Checks the `volume:` section.
pub fn validate_volume(v: &VolumeFile) -> Result<(), ConfigError> {
    if v.save_interval < Duration::from_secs(1) {
        return Err(ConfigError::invalid("volume.save_interval", "must be at least 1s"));
    }
    if v.state_file.as_ref().is_some_and(|p| p.as_os_str().is_empty()) {
        return Err(ConfigError::invalid("volume.state_file", "must not be empty"));
    }
    Ok(())
}

// ------------------------------------------------------------------------------------------------
// Period arithmetic (pure)

/// Start (unix seconds, 00:00 UTC on `reset_day`) of the quota period that contains `now_unix`.
/// `reset_day` must be 1..=28 (clamped otherwise).
pub fn period_start(now_unix: u64, reset_day: u8) -> u64 {
    let day = reset_day.clamp(1, 28);
    let today = OffsetDateTime::from_unix_timestamp(now_unix.min(i64::MAX as u64) as i64)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
        .date();
    let (year, month) = if today.day() >= day {
        (today.year(), today.month())
    } else if today.month() == Month::January {
        (today.year() - 1, Month::December)
    } else {
        (today.year(), today.month().previous())
    };
    unix_midnight(year, month, day)
}

/// Start of the period after the one starting at `start` (the same day of the next month).
pub fn next_period_start(start: u64, reset_day: u8) -> u64 {
    let day = reset_day.clamp(1, 28);
    let d = OffsetDateTime::from_unix_timestamp(start.min(i64::MAX as u64) as i64)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
        .date();
    let (year, month) =
        if d.month() == Month::December { (d.year() + 1, Month::January) } else { (d.year(), d.month().next()) };
    unix_midnight(year, month, day)
}

fn unix_midnight(year: i32, month: Month, day: u8) -> u64 {
    Date::from_calendar_date(year, month, day)
        .map(|d| d.midnight().assume_utc().unix_timestamp().max(0) as u64)
        .unwrap_or(0)
}

// ------------------------------------------------------------------------------------------------
// Accounting (sans-IO)

/// One reading of an interface's counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reading {
    /// The interface's index: another index under the same name is a recreated interface.
    pub ifindex: u32,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
}

/// What one uplink has moved, as persisted in the state file.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Totals {
    /// Bytes received since counting began.
    pub rx_bytes: u64,
    /// Bytes sent since counting began.
    pub tx_bytes: u64,
    /// Received plus sent in the current period.
    pub period_bytes: u64,
    /// Start of the current period (unix seconds); 0 = not known yet.
    pub period_start_unix: u64,
    /// The quota was crossed in this period.
    pub over_quota: bool,
    /// Times the quota was crossed since counting began.
    #[serde(default)]
    pub quota_exceeded: u64,
}

/// A quota event for the driver to act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuotaEvent {
    /// The period's volume reached the limit: switch to the quota mode.
    Exceeded { period_bytes: u64, limit: u64 },
    /// A new period began while over quota: back to the configured mode.
    PeriodReset,
}

/// A 1 s rate sample.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct RateSample {
    pub t_unix_ms: u64,
    pub rx_bps: u64,
    pub tx_bps: u64,
}

/// One uplink's volume as the admin API shows it.
#[derive(Clone, Debug, Serialize)]
pub struct VolumeStatus {
    pub name: String,
    /// Received since counting began (persisted).
    pub rx_bytes: u64,
    /// Sent since counting began (persisted).
    pub tx_bytes: u64,
    /// Received plus sent in the current quota period.
    pub period_bytes: u64,
    pub period_start_unix: u64,
    pub quota_bytes: Option<u64>,
    pub over_quota: bool,
    /// Times this uplink crossed its quota since counting began (a counter for `/metrics`).
    pub quota_exceeded_total: u64,
    /// Bits per second over the last second.
    pub rx_bps: u64,
    pub tx_bps: u64,
    /// 1 s samples, oldest first, at most the last [`HISTORY_LEN`].
    pub history: Vec<RateSample>,
}

/// One uplink's counting and quota state, driven by readings and the wall clock.
#[derive(Debug, Clone)]
pub struct Account {
    pub totals: Totals,
    quota: Option<QuotaFile>,
    last: Option<Reading>,
    history: VecDeque<RateSample>,
}

/// Bytes a counter moved from `last` to `cur`; a decrease is a reset (the counter restarted from 0).
pub fn counter_delta(last: u64, cur: u64) -> u64 {
    if cur >= last { cur - last } else { cur }
}

impl Account {
    /// An account continuing from `totals` (zero for a new uplink). Without a quota now, a saved
    /// `over_quota` is dropped (the quota was removed from the config).
    pub fn new(mut totals: Totals, quota: Option<QuotaFile>) -> Account {
        if quota.is_none() {
            totals.over_quota = false;
        }
        Account { totals, quota, last: None, history: VecDeque::with_capacity(HISTORY_LEN) }
    }

    pub fn quota(&self) -> Option<QuotaFile> {
        self.quota
    }

    fn reset_day(&self) -> u8 {
        self.quota.map_or(1, |q| q.reset_day)
    }

    /// Starts a new period when `now_unix` is past the current one (or none is known yet). Periods only move
    /// forward: a clock that went back (a router booting before NTP) keeps counting into the current period
    /// instead of wiping it. A changed `reset_day` starts a new period at once.
    pub fn roll_period(&mut self, now_unix: u64) -> Option<QuotaEvent> {
        let day = self.reset_day();
        let start = period_start(now_unix, day);
        let cur = self.totals.period_start_unix;
        let same_day = cur == 0 || period_start(cur, day) == cur;
        if start == cur || (start < cur && same_day) {
            return None;
        }
        let had_period = self.totals.period_start_unix != 0;
        self.totals.period_start_unix = start;
        self.totals.period_bytes = 0;
        let was_over = std::mem::take(&mut self.totals.over_quota);
        (had_period && was_over).then_some(QuotaEvent::PeriodReset)
    }

    /// Takes one reading (`None`: the interface is missing) made `elapsed` after the previous one.
    /// Returns a quota event when this reading starts a period while over quota or crosses the quota; when
    /// both happen, the crossing (the later one) is returned and the driver reconciles from `over_quota`.
    pub fn observe(&mut self, reading: Option<Reading>, now_unix_ms: u64, elapsed: Duration) -> Option<QuotaEvent> {
        let mut event = self.roll_period(now_unix_ms / 1000);
        let (drx, dtx) = match (self.last, reading) {
            (Some(last), Some(cur)) if last.ifindex == cur.ifindex => {
                (counter_delta(last.rx_bytes, cur.rx_bytes), counter_delta(last.tx_bytes, cur.tx_bytes))
            }
            // Recreated interface: its counters started from zero.
            (Some(_), Some(cur)) => (cur.rx_bytes, cur.tx_bytes),
            // First reading: the baseline (what came before was counted by an earlier run, or never).
            (None, _) | (_, None) => (0, 0),
        };
        if reading.is_some() {
            self.last = reading;
        }
        self.totals.rx_bytes = self.totals.rx_bytes.saturating_add(drx);
        self.totals.tx_bytes = self.totals.tx_bytes.saturating_add(dtx);
        self.totals.period_bytes = self.totals.period_bytes.saturating_add(drx + dtx);
        let secs = elapsed.as_secs_f64();
        let bps = |bytes: u64| if secs > 0.0 { (bytes as f64 * 8.0 / secs).round() as u64 } else { 0 };
        if self.history.len() == HISTORY_LEN {
            self.history.pop_front();
        }
        self.history.push_back(RateSample { t_unix_ms: now_unix_ms, rx_bps: bps(drx), tx_bps: bps(dtx) });
        if let Some(q) = self.quota
            && !self.totals.over_quota
            && self.totals.period_bytes >= q.limit.as_u64()
        {
            self.totals.over_quota = true;
            self.totals.quota_exceeded += 1;
            event = Some(QuotaEvent::Exceeded { period_bytes: self.totals.period_bytes, limit: q.limit.as_u64() });
        }
        event
    }

    /// The status for the admin API.
    pub fn status(&self, name: &str) -> VolumeStatus {
        let last = self.history.back().copied();
        VolumeStatus {
            name: name.to_owned(),
            rx_bytes: self.totals.rx_bytes,
            tx_bytes: self.totals.tx_bytes,
            period_bytes: self.totals.period_bytes,
            period_start_unix: self.totals.period_start_unix,
            quota_bytes: self.quota.map(|q| q.limit.as_u64()),
            over_quota: self.totals.over_quota,
            quota_exceeded_total: self.totals.quota_exceeded,
            rx_bps: last.map_or(0, |s| s.rx_bps),
            tx_bps: last.map_or(0, |s| s.tx_bps),
            history: self.history.iter().copied().collect(),
        }
    }
}

// ------------------------------------------------------------------------------------------------
// State file

/// Errors of the state file. Reading errors make the tracker start from zero (logged), writing errors are
/// logged and retried at the next save.
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    /// The file exists but cannot be read.
    #[error("reading {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    /// The file is not a state file of this version.
    #[error("parsing {path}: {source}")]
    Parse { path: PathBuf, source: serde_json::Error },
    /// The file (or its temporary sibling) cannot be written.
    #[error("writing {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
}

/// The state file's content (JSON).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateFile {
    /// Format version, 1.
    pub version: u32,
    /// Totals per uplink name.
    pub uplinks: BTreeMap<String, Totals>,
}

impl StateFile {
    /// Reads `path`; a missing file is an empty state.
    pub fn load(path: &Path) -> Result<StateFile, VolumeError> {
        let text = match std::fs::read(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(StateFile { version: 1, ..Default::default() });
            }
            Err(source) => return Err(VolumeError::Read { path: path.to_owned(), source }),
        };
        serde_json::from_slice(&text).map_err(|source| VolumeError::Parse { path: path.to_owned(), source })
    }

    /// Replaces `path` atomically: a temporary file in the same directory, synced, renamed over it.
    pub fn save(&self, path: &Path) -> Result<(), VolumeError> {
        let err = |source| VolumeError::Write { path: path.to_owned(), source };
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        std::fs::create_dir_all(dir).map_err(err)?;
        let mut tmp = tempfile::Builder::new().prefix(".volume-").suffix(".tmp").tempfile_in(dir).map_err(err)?;
        serde_json::to_writer_pretty(&mut tmp, self).map_err(|e| err(e.into()))?;
        tmp.as_file().sync_all().map_err(err)?;
        tmp.persist(path).map_err(|e| err(e.error))?;
        Ok(())
    }
}

// ------------------------------------------------------------------------------------------------
// Driver

/// What the tracker needs from the uplink manager: switch an uplink's mode for the quota. The daemon passes
/// [`super::UplinkControl`]; tests can pass a recorder.
pub trait ModeSwitch: Send + Sync + 'static {
    /// Sets `uplink`'s mode (reason: quota).
    fn set_mode<'a>(
        &'a self,
        uplink: &'a str,
        mode: Mode,
    ) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + 'a>>;
}

impl ModeSwitch for super::UplinkControl {
    fn set_mode<'a>(
        &'a self,
        uplink: &'a str,
        mode: Mode,
    ) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + 'a>> {
        Box::pin(async move {
            super::UplinkControl::set_mode(self, uplink, mode, super::ModeReason::Quota)
                .await
                .map(|_previous| ())
                .map_err(|e| e.to_string())
        })
    }
}

/// One uplink as the driver sees it.
#[derive(Debug)]
struct Tracked {
    name: String,
    interface: String,
    configured: Mode,
    /// The quota mode is in force (asked for and accepted).
    enforced: bool,
    /// Warned about a failing mode switch since the last success.
    warned: bool,
}

/// Cheap handle for the admin API.
#[derive(Clone, Debug)]
pub struct VolumeHandle {
    accounts: Arc<Mutex<Vec<(String, Account)>>>,
}

impl VolumeHandle {
    /// Every uplink's volume now, in config order.
    pub fn snapshot(&self) -> Vec<VolumeStatus> {
        self.accounts.lock().expect("not poisoned").iter().map(|(n, a)| a.status(n)).collect()
    }
}

/// The running volume tracker.
#[derive(Debug)]
pub struct VolumeTracker {
    handle: VolumeHandle,
    task: Option<JoinHandle<()>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

fn now_unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

impl VolumeTracker {
    /// Loads the state file and starts polling the uplinks' counters every second. Over-quota uplinks from the
    /// state file get their quota mode at once (through `control`, reason `quota`). Never fails: a broken state
    /// file is logged and counting starts from zero (the file is replaced at the next save).
    pub fn start(cfg: &Config, control: super::UplinkControl) -> VolumeTracker {
        Self::start_with(cfg, Arc::new(control))
    }

    /// [`VolumeTracker::start`] with any [`ModeSwitch`].
    pub fn start_with(cfg: &Config, switch: Arc<dyn ModeSwitch>) -> VolumeTracker {
        let state_path = cfg.volume.state_file.clone();
        let state = match &state_path {
            Some(p) => StateFile::load(p).unwrap_or_else(|e| {
                warn!(error = %e, "volume state file unusable: counting starts from zero");
                StateFile::default()
            }),
            None => StateFile::default(),
        };
        if state_path.is_none() && cfg.uplinks.iter().any(|u| u.quota.is_some()) {
            warn!("uplink quota without volume.state_file: a restart forgets the period's volume");
        }
        let accounts: Vec<(String, Account)> = cfg
            .uplinks
            .iter()
            .map(|u| (u.name.clone(), Account::new(state.uplinks.get(&u.name).copied().unwrap_or_default(), u.quota)))
            .collect();
        let tracked = cfg
            .uplinks
            .iter()
            .map(|u| Tracked {
                name: u.name.clone(),
                interface: u.interface.clone(),
                configured: u.mode,
                enforced: false,
                warned: false,
            })
            .collect();
        let handle = VolumeHandle { accounts: Arc::new(Mutex::new(accounts)) };
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel();
        let driver =
            Driver { handle: handle.clone(), tracked, switch, state_path, save_interval: cfg.volume.save_interval };
        let task = tokio::spawn(driver.run(stop_rx));
        VolumeTracker { handle, task: Some(task), stop: Some(stop_tx) }
    }

    /// The handle the admin API reads.
    pub fn handle(&self) -> VolumeHandle {
        self.handle.clone()
    }

    /// Stops polling and writes the state file.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }
}

struct Driver {
    handle: VolumeHandle,
    tracked: Vec<Tracked>,
    switch: Arc<dyn ModeSwitch>,
    state_path: Option<PathBuf>,
    save_interval: Duration,
}

impl Driver {
    async fn run(mut self, mut stop: tokio::sync::oneshot::Receiver<()>) {
        let rtnl = match rtnetlink::new_connection() {
            Ok((conn, handle, _)) => {
                tokio::spawn(conn);
                Some(handle)
            }
            Err(e) => {
                warn!(error = %e, "volume: no rtnetlink socket: uplink volume is not counted");
                None
            }
        };
        // Over quota in the state file and still in that period: the quota mode again, before any traffic.
        {
            let now = now_unix_ms() / 1000;
            let mut accounts = self.handle.accounts.lock().expect("not poisoned");
            for (name, a) in accounts.iter_mut() {
                a.roll_period(now);
                if a.totals.over_quota {
                    info!(uplink = %name, period_bytes = a.totals.period_bytes, "uplink still over quota (state file)");
                }
            }
        }
        self.reconcile().await;
        let mut tick = tokio::time::interval(POLL_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_poll = Instant::now();
        let mut last_save = Instant::now();
        loop {
            tokio::select! {
                _ = &mut stop => break,
                _ = tick.tick() => {}
            }
            let mut readings = Vec::with_capacity(self.tracked.len());
            for t in &self.tracked {
                readings.push(match &rtnl {
                    Some(h) => read_counters(h, &t.interface).await,
                    None => None,
                });
            }
            let now = Instant::now();
            let elapsed = now - last_poll;
            last_poll = now;
            let now_ms = now_unix_ms();
            let mut events = Vec::new();
            {
                let mut accounts = self.handle.accounts.lock().expect("not poisoned");
                for (i, (name, a)) in accounts.iter_mut().enumerate() {
                    if let Some(ev) = a.observe(readings[i], now_ms, elapsed) {
                        let action = a.quota().map_or("none", |q| q.action.mode().as_str());
                        events.push((i, name.clone(), ev, action));
                    }
                }
            }
            for (i, name, ev, action) in &events {
                match ev {
                    QuotaEvent::Exceeded { period_bytes, limit } => warn!(
                        uplink = %name,
                        period_bytes,
                        quota_bytes = limit,
                        action,
                        "uplink over quota"
                    ),
                    QuotaEvent::PeriodReset => info!(
                        uplink = %name,
                        mode = self.tracked[*i].configured.as_str(),
                        "uplink quota period reset: back to the configured mode"
                    ),
                }
            }
            self.reconcile().await;
            if !events.is_empty() || last_save.elapsed() >= self.save_interval {
                self.save().await;
                last_save = Instant::now();
            }
        }
        self.save().await;
        debug!("volume tracker stopped");
    }

    /// Asks the uplink manager for the mode each uplink's quota state wants, where it is not in force yet.
    async fn reconcile(&mut self) {
        let wants: Vec<(bool, Option<Mode>)> = {
            let accounts = self.handle.accounts.lock().expect("not poisoned");
            accounts.iter().map(|(_, a)| (a.totals.over_quota, a.quota().map(|q| q.action.mode()))).collect()
        };
        for (t, (over, quota_mode)) in self.tracked.iter_mut().zip(wants) {
            let Some(target) = quota_target(over, t.enforced, quota_mode, t.configured) else { continue };
            match self.switch.set_mode(&t.name, target).await {
                Ok(()) => {
                    t.enforced = over;
                    t.warned = false;
                }
                Err(e) => {
                    if !std::mem::replace(&mut t.warned, true) {
                        warn!(uplink = %t.name, mode = target.as_str(), error = %e, "quota: cannot switch the uplink's mode (retrying every second)");
                    }
                }
            }
        }
    }

    async fn save(&self) {
        let Some(path) = self.state_path.clone() else { return };
        let state = {
            let accounts = self.handle.accounts.lock().expect("not poisoned");
            StateFile { version: 1, uplinks: accounts.iter().map(|(n, a)| (n.clone(), a.totals)).collect() }
        };
        match tokio::task::spawn_blocking(move || state.save(&path)).await {
            Ok(Ok(())) => debug!("volume state saved"),
            Ok(Err(e)) => warn!(error = %e, "saving the volume state"),
            Err(e) => warn!(error = %e, "saving the volume state"),
        }
    }
}

/// The mode to ask for, if any: the quota mode while over quota and not yet in force; the configured mode
/// once over quota ends while the quota mode is in force; nothing otherwise (an admin's later change stands).
pub fn quota_target(over_quota: bool, enforced: bool, quota_mode: Option<Mode>, configured: Mode) -> Option<Mode> {
    match (over_quota, enforced, quota_mode) {
        (true, false, Some(m)) => Some(m),
        (false, true, _) => Some(configured),
        _ => None,
    }
}

/// The interface's 64-bit byte counters, or `None` when it is missing or has none.
async fn read_counters(handle: &rtnetlink::Handle, interface: &str) -> Option<Reading> {
    let msg: LinkMessage = handle.link().get().match_name(interface.to_owned()).execute().try_next().await.ok()??;
    msg.attributes.iter().find_map(|a| match a {
        LinkAttribute::Stats64(s) => {
            Some(Reading { ifindex: msg.header.index, rx_bytes: s.rx_bytes, tx_bytes: s.tx_bytes })
        }
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::uplink::settings::tests::{BASE, parse_in_dir};
    use proptest::prelude::*;

    fn unix(y: i32, m: u8, d: u8, h: u8, min: u8, sec: u8) -> u64 {
        let date = Date::from_calendar_date(y, Month::try_from(m).unwrap(), d).unwrap();
        date.with_hms(h, min, sec).unwrap().assume_utc().unix_timestamp() as u64
    }

    #[test]
    fn period_start_table() {
        let cases = [
            // (now, reset_day, expected start)
            (unix(2026, 3, 15, 12, 0, 0), 1, unix(2026, 3, 1, 0, 0, 0)),
            (unix(2026, 3, 1, 0, 0, 0), 1, unix(2026, 3, 1, 0, 0, 0)),
            (unix(2026, 2, 28, 23, 59, 59), 1, unix(2026, 2, 1, 0, 0, 0)),
            (unix(2026, 3, 14, 23, 59, 59), 15, unix(2026, 2, 15, 0, 0, 0)),
            (unix(2026, 3, 15, 0, 0, 0), 15, unix(2026, 3, 15, 0, 0, 0)),
            (unix(2026, 1, 10, 8, 0, 0), 15, unix(2025, 12, 15, 0, 0, 0)),
            (unix(2026, 3, 1, 0, 0, 0), 28, unix(2026, 2, 28, 0, 0, 0)),
            (unix(2024, 2, 29, 12, 0, 0), 28, unix(2024, 2, 28, 0, 0, 0)),
            (unix(2024, 3, 27, 12, 0, 0), 28, unix(2024, 2, 28, 0, 0, 0)),
        ];
        for (now, day, want) in cases {
            assert_eq!(period_start(now, day), want, "now={now} reset_day={day}");
        }
    }

    #[test]
    fn next_period_table() {
        assert_eq!(next_period_start(unix(2025, 12, 15, 0, 0, 0), 15), unix(2026, 1, 15, 0, 0, 0));
        assert_eq!(next_period_start(unix(2026, 1, 28, 0, 0, 0), 28), unix(2026, 2, 28, 0, 0, 0));
        assert_eq!(next_period_start(unix(2026, 2, 1, 0, 0, 0), 1), unix(2026, 3, 1, 0, 0, 0));
    }

    proptest! {
        // From 1970-02-01: the first month's period would start before the epoch (a router with an unset
        // clock gets period 0 there, and periods only move forward once the clock is right).
        #[test]
        fn every_instant_lies_in_exactly_one_monthly_period(now in 2_678_400u64..4_102_444_800, day in 1u8..=28) {
            let start = period_start(now, day);
            let next = next_period_start(start, day);
            prop_assert!(start <= now && now < next, "{start} <= {now} < {next}");
            prop_assert_eq!(period_start(start, day), start);
            prop_assert_eq!(period_start(next - 1, day), start);
            prop_assert_eq!(period_start(next, day), next);
            let len_days = (next - start) / 86_400;
            prop_assert!((28..=31).contains(&len_days), "period of {len_days} days");
            prop_assert_eq!((next - start) % 86_400, 0);
            let d = OffsetDateTime::from_unix_timestamp(start as i64).unwrap();
            prop_assert_eq!((d.day(), d.hour(), d.minute(), d.second()), (day, 0, 0, 0));
        }
    }

    fn r(ifindex: u32, rx: u64, tx: u64) -> Option<Reading> {
        Some(Reading { ifindex, rx_bytes: rx, tx_bytes: tx })
    }

    const T0: u64 = 1_775_000_000_000; // 2026-03-31 (ms)
    const S: Duration = Duration::from_secs(1);

    fn quota(limit: u64, action: QuotaAction) -> Option<QuotaFile> {
        Some(QuotaFile { limit: ByteSize(limit), reset_day: 1, action })
    }

    #[test]
    fn counts_deltas_from_the_first_reading_and_survives_counter_resets() {
        let mut a = Account::new(Totals { rx_bytes: 500, tx_bytes: 50, ..Default::default() }, None);
        a.observe(r(7, 1_000_000, 9_000), T0, S); // baseline: bytes before the start are not ours
        assert_eq!((a.totals.rx_bytes, a.totals.tx_bytes), (500, 50));
        a.observe(r(7, 1_001_000, 9_100), T0 + 1000, S);
        assert_eq!((a.totals.rx_bytes, a.totals.tx_bytes), (1_500, 150));
        // Counter went down (driver reload): the new value is new traffic.
        a.observe(r(7, 300, 9_200), T0 + 2000, S);
        assert_eq!((a.totals.rx_bytes, a.totals.tx_bytes), (1_800, 250));
        // Interface gone for a while: nothing counted, the last reading is kept.
        a.observe(None, T0 + 3000, S);
        assert_eq!((a.totals.rx_bytes, a.totals.tx_bytes), (1_800, 250));
        // Recreated with another index and counters already above the old ones: all of it is new.
        a.observe(r(9, 5_000, 10_000), T0 + 4000, S);
        assert_eq!((a.totals.rx_bytes, a.totals.tx_bytes), (6_800, 10_250));
        assert_eq!(a.totals.period_bytes, (6_800 - 500) + (10_250 - 50), "everything counted since the start");
        assert_eq!(counter_delta(10, 4), 4);
        assert_eq!(counter_delta(4, 10), 6);
    }

    #[test]
    fn rates_and_history_of_300_samples() {
        let mut a = Account::new(Totals::default(), None);
        a.observe(r(1, 0, 0), T0, S);
        a.observe(r(1, 125_000, 250_000), T0 + 1000, S);
        let st = a.status("lte");
        assert_eq!((st.rx_bps, st.tx_bps), (1_000_000, 2_000_000));
        a.observe(r(1, 250_000, 250_000), T0 + 1500, Duration::from_millis(500));
        assert_eq!(a.status("lte").rx_bps, 2_000_000, "bits over the time the reading covers");
        for i in 0..400u64 {
            a.observe(r(1, 250_000, 250_000), T0 + 2000 + i * 1000, S);
        }
        let st = a.status("lte");
        assert_eq!(st.history.len(), HISTORY_LEN);
        assert_eq!(st.history.last().unwrap().t_unix_ms, T0 + 2000 + 399 * 1000);
        assert_eq!(st.history.first().unwrap().t_unix_ms, T0 + 2000 + 100 * 1000);
        assert_eq!((st.rx_bps, st.tx_bps), (0, 0));
    }

    #[test]
    fn quota_is_crossed_once_per_period_and_cleared_by_the_next_period() {
        let mut a = Account::new(Totals::default(), quota(10_000, QuotaAction::Backup));
        assert_eq!(a.observe(r(1, 0, 0), T0, S), None);
        assert_eq!(a.observe(r(1, 6_000, 0), T0 + 1000, S), None);
        assert_eq!(
            a.observe(r(1, 9_000, 1_500), T0 + 2000, S),
            Some(QuotaEvent::Exceeded { period_bytes: 10_500, limit: 10_000 })
        );
        assert_eq!(a.observe(r(1, 20_000, 1_500), T0 + 3000, S), None, "logged and counted once");
        let st = a.status("lte");
        assert!(st.over_quota);
        assert_eq!((st.quota_bytes, st.quota_exceeded_total, st.period_bytes), (Some(10_000), 1, 21_500));
        // T0 is 2026-03-31: the next reading on April 1st starts a new period.
        let april = unix(2026, 4, 1, 0, 0, 1) * 1000;
        assert_eq!(a.observe(r(1, 20_100, 1_500), april, S), Some(QuotaEvent::PeriodReset));
        let st = a.status("lte");
        assert!(!st.over_quota);
        assert_eq!((st.period_bytes, st.period_start_unix), (100, unix(2026, 4, 1, 0, 0, 0)));
        assert_eq!((st.rx_bytes, st.tx_bytes), (20_100, 1_500), "totals go on across periods");
        assert_eq!(st.quota_exceeded_total, 1);
    }

    #[test]
    fn a_restart_continues_the_period_or_forgets_an_old_one() {
        let start = period_start(T0 / 1000, 1);
        let saved = Totals {
            rx_bytes: 9_000,
            tx_bytes: 1_000,
            period_bytes: 10_000,
            period_start_unix: start,
            over_quota: true,
            quota_exceeded: 1,
        };
        let mut a = Account::new(saved, quota(10_000, QuotaAction::Off));
        assert_eq!(a.roll_period(T0 / 1000), None);
        assert!(a.totals.over_quota, "same period: still over quota");
        assert_eq!(a.observe(r(3, 77, 77), T0, S), None, "no second crossing");
        let older = Totals { period_start_unix: period_start(T0 / 1000 - 40 * 86_400, 1), ..saved };
        let mut a = Account::new(older, quota(10_000, QuotaAction::Off));
        assert_eq!(a.roll_period(T0 / 1000), Some(QuotaEvent::PeriodReset));
        assert!(!a.totals.over_quota);
        assert_eq!(a.totals.period_bytes, 0);
        // The clock goes back (before NTP): the period and its volume stay.
        let mut a = Account::new(saved, quota(10_000, QuotaAction::Off));
        assert_eq!(a.observe(r(3, 0, 0), 86_400_000, S), None);
        assert_eq!((a.totals.period_start_unix, a.totals.period_bytes, a.totals.over_quota), (start, 10_000, true));
        // Quota removed from the config: not over quota any more.
        assert!(!Account::new(saved, None).status("lte").over_quota);
        let mut fresh = Account::new(Totals::default(), None);
        assert_eq!(fresh.roll_period(T0 / 1000), None, "a first period is no reset");
        assert_eq!(fresh.totals.period_start_unix, start);
    }

    #[test]
    fn state_file_round_trip_and_atomic_replace() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/volume.json");
        assert_eq!(StateFile::load(&path).unwrap().uplinks.len(), 0, "missing file = empty state");
        let mut st = StateFile { version: 1, uplinks: BTreeMap::new() };
        st.uplinks.insert(
            "lte".into(),
            Totals {
                rx_bytes: 1,
                tx_bytes: 2,
                period_bytes: 3,
                period_start_unix: 4,
                over_quota: true,
                quota_exceeded: 5,
            },
        );
        st.save(&path).unwrap();
        st.uplinks.get_mut("lte").unwrap().rx_bytes = 10;
        st.save(&path).unwrap();
        assert_eq!(StateFile::load(&path).unwrap(), st);
        let names: Vec<_> =
            std::fs::read_dir(dir.path().join("sub")).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, vec![std::ffi::OsString::from("volume.json")], "no temporary file left");
        std::fs::write(&path, "{ not json").unwrap();
        assert!(matches!(StateFile::load(&path), Err(VolumeError::Parse { .. })));
    }

    #[test]
    fn quota_and_volume_config() {
        let (_d, c) = parse_in_dir(BASE);
        let c = c.unwrap();
        assert_eq!((c.uplinks[1].quota, &c.volume), (None, &VolumeFile::default()));
        let text = BASE
            .replace("interface: lte0", "interface: lte0\n    quota: { limit: 20GiB, reset_day: 15, action: off }")
            + "volume: { state_file: state/volume.json, save_interval: 30s }\n";
        let (d, c) = parse_in_dir(&text);
        let c = c.unwrap();
        assert_eq!(
            c.uplinks[1].quota,
            Some(QuotaFile { limit: ByteSize(20 << 30), reset_day: 15, action: QuotaAction::Off })
        );
        assert_eq!(c.volume.state_file, Some(d.path().join("state/volume.json")), "relative to the config file");
        assert_eq!(c.volume.save_interval, Duration::from_secs(30));
        let text = BASE.replace("interface: lte0", "interface: lte0\n    quota: { limit: 5000000 }");
        let q = parse_in_dir(&text).1.unwrap().uplinks[1].quota.unwrap();
        assert_eq!((q.limit.as_u64(), q.reset_day, q.action), (5_000_000, 1, QuotaAction::Backup));
        assert_eq!(QuotaAction::Off.mode(), Mode::Off);
    }

    #[test]
    fn quota_errors_name_the_field() {
        let lte = |q: &str| BASE.replace("interface: lte0", &format!("interface: lte0\n    quota: {q}"));
        let cases = [
            (lte("{ limit: 0 }"), "uplinks[1].quota.limit"),
            (lte("{ limit: lots }"), "uplinks[1].quota.limit"),
            (lte("{ limit: 1GB, reset_day: 29 }"), "uplinks[1].quota.reset_day"),
            (lte("{ limit: 1GB, reset_day: 0 }"), "uplinks[1].quota.reset_day"),
            (lte("{ limit: 1GB, action: standby }"), "uplinks[1].quota.action"),
            (lte("{ reset_day: 3 }"), "uplinks[1].quota.limit"),
            (format!("{BASE}volume: {{ save_interval: 10ms }}\n"), "volume.save_interval"),
            (format!("{BASE}volume: {{ statefile: x }}\n"), "volume.statefile"),
        ];
        for (text, field) in cases {
            let e = parse_in_dir(&text).1.unwrap_err();
            assert_eq!(e.field(), Some(field), "{e}");
        }
    }

    #[test]
    fn quota_mode_while_over_and_the_configured_mode_after() {
        let (b, a) = (Some(Mode::Backup), Mode::Active);
        assert_eq!(quota_target(true, false, b, a), Some(Mode::Backup), "crossed: switch");
        assert_eq!(quota_target(true, true, b, a), None, "in force: leave it (also an admin's change)");
        assert_eq!(quota_target(false, true, b, a), Some(Mode::Active), "new period: back to the config");
        assert_eq!(quota_target(false, false, b, a), None, "under quota: never touch the mode");
        assert_eq!(quota_target(true, false, None, a), None, "no quota configured");
    }

    /// Records the modes asked for.
    #[derive(Default)]
    struct Recorder(Mutex<Vec<(String, Mode)>>, tokio::sync::Notify);

    impl ModeSwitch for Recorder {
        fn set_mode<'a>(
            &'a self,
            uplink: &'a str,
            mode: Mode,
        ) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + 'a>> {
            self.0.lock().unwrap().push((uplink.to_owned(), mode));
            self.1.notify_one();
            Box::pin(async { Ok(()) })
        }
    }

    #[tokio::test]
    async fn tracker_reapplies_a_persisted_quota_mode_and_saves_on_shutdown() {
        let now = now_unix_ms() / 1000;
        let text = BASE.replace("interface: lte0", "interface: lte0\n    quota: { limit: 1MiB, action: off }")
            + "volume: { state_file: volume.json }\n";
        let (d, c) = parse_in_dir(&text);
        let c = c.unwrap();
        let over = Totals {
            rx_bytes: 2 << 20,
            tx_bytes: 0,
            period_bytes: 2 << 20,
            period_start_unix: period_start(now, 1),
            over_quota: true,
            quota_exceeded: 1,
        };
        let mut st = StateFile { version: 1, uplinks: BTreeMap::new() };
        st.uplinks.insert("lte".into(), over);
        st.save(&d.path().join("volume.json")).unwrap();

        let rec = Arc::new(Recorder::default());
        let tracker = VolumeTracker::start_with(&c, rec.clone());
        // Event, not time: the quota mode is asked for before the first poll.
        tokio::time::timeout(Duration::from_secs(30), rec.1.notified()).await.expect("quota mode asked for");
        let snap = tracker.handle().snapshot();
        assert_eq!(snap.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(), ["dsl", "lte"]);
        assert!(snap[1].over_quota && !snap[0].over_quota);
        assert_eq!((snap[1].rx_bytes, snap[1].quota_bytes, snap[1].quota_exceeded_total), (2 << 20, Some(1 << 20), 1));
        assert_eq!(*rec.0.lock().unwrap(), vec![("lte".to_owned(), Mode::Off)]);
        tracker.shutdown().await;
        let saved = StateFile::load(&d.path().join("volume.json")).unwrap();
        assert_eq!(saved.uplinks["lte"].rx_bytes, 2 << 20);
        assert!(saved.uplinks["lte"].over_quota);
        assert!(saved.uplinks.contains_key("dsl"));
    }
}
