//! One uplink's accounting, sans-IO: counter readings and `now` in; totals, rates and quota events out.

use std::collections::VecDeque;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::calendar::period_start;
use crate::uplink::settings::Mode;
use crate::uplink::settings::QuotaFile;

/// Rate samples kept per uplink: 5 minutes of 1 s samples.
pub const HISTORY_LEN: usize = 300;

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
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct RateSample {
    pub t_unix_ms: u64,
    pub rx_bps: u64,
    pub tx_bps: u64,
}

/// One uplink's volume as the admin API shows it.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
#[schema(as = Volume)]
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

/// The mode to ask for, if any: the quota mode while over quota and not yet in force; the configured mode
/// once over quota ends while the quota mode is in force; nothing otherwise (an admin's later change stands).
pub fn quota_target(over_quota: bool, enforced: bool, quota_mode: Option<Mode>, configured: Mode) -> Option<Mode> {
    match (over_quota, enforced, quota_mode) {
        (true, false, Some(m)) => Some(m),
        (false, true, _) => Some(configured),
        _ => None,
    }
}
