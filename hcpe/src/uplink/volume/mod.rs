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
//!
//! Modules: `settings` (the `quota` and `volume:` config sections), `calendar` (quota periods),
//! `account` (sans-IO accounting), `state` (the state file); this file is the polling task.

mod account;
mod calendar;
mod settings;
mod state;
#[cfg(test)]
mod tests;

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use super::settings::Mode;
use super::settings::Uplink;

pub use account::{
    Account, HISTORY_LEN, QuotaEvent, RateSample, Reading, Totals, VolumeStatus, counter_delta, quota_target,
};
pub use calendar::{next_period_start, period_start};
pub use settings::{VolumeFile, validate_volume};
pub use state::{StateFile, VolumeError};

/// How often the interface counters are read.
pub const POLL_INTERVAL: Duration = Duration::from_secs(1);

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
    pub fn start(volume: &VolumeFile, uplinks: &[Uplink], control: super::UplinkControl) -> VolumeTracker {
        Self::start_with(volume, uplinks, Arc::new(control))
    }

    /// [`VolumeTracker::start`] with any [`ModeSwitch`].
    pub fn start_with(volume: &VolumeFile, uplinks: &[Uplink], switch: Arc<dyn ModeSwitch>) -> VolumeTracker {
        let state_path = volume.state_file.clone();
        let state = match &state_path {
            Some(p) => StateFile::load(p).unwrap_or_else(|e| {
                warn!(error = %e, "volume state file unusable: counting starts from zero");
                StateFile::default()
            }),
            None => StateFile::default(),
        };
        if state_path.is_none() && uplinks.iter().any(|u| u.quota.is_some()) {
            warn!("uplink quota without volume.state_file: a restart forgets the period's volume");
        }
        let accounts: Vec<(String, Account)> = uplinks
            .iter()
            .map(|u| (u.name.clone(), Account::new(state.uplinks.get(&u.name).copied().unwrap_or_default(), u.quota)))
            .collect();
        let tracked = uplinks
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
            Driver { handle: handle.clone(), tracked, switch, state_path, save_interval: volume.save_interval };
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
                    Some(h) => crate::uplink::links::byte_counters(h, &t.interface)
                        .await
                        .map(|(ifindex, rx_bytes, tx_bytes)| Reading { ifindex, rx_bytes, tx_bytes }),
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
