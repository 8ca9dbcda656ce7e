//! Per-key bounds held by RAII guards: [`Slots`] counts a CPE's open (or held) connections, or a source
//! address's connections, against a limit, [`Slot`] gives one back on drop; [`HeldGuard`] marks a connection
//! held for a CPE's pool while it lives; [`Pending`] marks one that has not delivered its Convert message yet.
//!
//! Invariant: a count goes up only through [`Slots::acquire`] below its limit and down only when that
//! acquire's [`Slot`] drops, so counts are exact however a connection task ends; zero counts are removed.

use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};

use crate::connections::Connection;
use crate::stats::Stats;

/// Per-key counts of something bounded (open connections per CPE, held connections per CPE, pending
/// connections per source address, connections per trusted source address).
#[derive(Debug, Default, Clone)]
pub(crate) struct Slots(Arc<Mutex<HashMap<String, usize>>>);

impl Slots {
    /// One slot for `cpe` if it has fewer than `limit`.
    pub(crate) fn acquire(&self, cpe: &str, limit: usize) -> Option<Slot> {
        let mut map = self.0.lock().expect("slot map poisoned");
        let n = map.entry(cpe.to_owned()).or_insert(0);
        if *n >= limit {
            if *n == 0 {
                map.remove(cpe);
            }
            return None;
        }
        *n += 1;
        Some(Slot { slots: self.clone(), cpe: cpe.to_owned() })
    }
}

/// Holds one of a CPE's [`Slots`]; gives it back on drop.
pub(crate) struct Slot {
    slots: Slots,
    cpe: String,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut map = self.slots.0.lock().expect("slot map poisoned");
        if let Some(n) = map.get_mut(&self.cpe) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.cpe);
            }
        }
    }
}

/// Marks a connection held (admin API, `held` gauge) while it lives.
pub(crate) struct HeldGuard<'a> {
    stats: &'a Stats,
    conn: &'a Connection,
}

impl<'a> HeldGuard<'a> {
    pub(crate) fn new(stats: &'a Stats, conn: &'a Connection) -> Self {
        stats.held.fetch_add(1, Relaxed);
        conn.held.store(true, Relaxed);
        HeldGuard { stats, conn }
    }
}

impl Drop for HeldGuard<'_> {
    fn drop(&mut self) {
        self.stats.held.fetch_sub(1, Relaxed);
        self.conn.held.store(false, Relaxed);
    }
}

/// A connection that has not delivered a whole Convert message yet: one of its source's pending slots, and
/// the `pending` gauge, while it lives.
pub(crate) struct Pending {
    _slot: Slot,
    stats: Arc<Stats>,
}

impl Pending {
    /// Takes one of `source`'s pending slots if it has fewer than `limit`.
    pub(crate) fn acquire(slots: &Slots, source: &str, limit: usize, stats: &Arc<Stats>) -> Option<Self> {
        let slot = slots.acquire(source, limit)?;
        stats.pending.fetch_add(1, Relaxed);
        Some(Pending { _slot: slot, stats: stats.clone() })
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        self.stats.pending.fetch_sub(1, Relaxed);
    }
}
