//! Per-key bounds held by RAII guards: [`Slots`] counts a CPE's open (or held) connections, or a source
//! address's connections, against a limit, [`Slot`] gives one back on drop; [`HeldGuard`] marks a connection
//! held for a CPE's pool while it lives; [`ActiveGuard`] counts an open connection; [`PendingTable`] bounds the
//! connections of a source address that have not delivered their Convert message yet.
//!
//! Invariant: a count goes up only through [`Slots::acquire`] below its limit and down only when that
//! acquire's [`Slot`] drops, so counts are exact however a connection task ends; zero counts are removed.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};

use tokio_util::sync::CancellationToken;

use crate::connections::Connection;
use crate::stats::Stats;

/// Per-key counts of something bounded (open connections per CPE, held connections per CPE, connections per
/// trusted source address).
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

/// Holds one slot of the total connection count.
pub(crate) struct ActiveGuard {
    stats: Arc<Stats>,
    /// Connections open including this one, when it was accepted.
    pub(crate) open: u64,
}

impl ActiveGuard {
    pub(crate) fn new(stats: Arc<Stats>) -> Self {
        let open = stats.active.fetch_add(1, Relaxed) + 1;
        ActiveGuard { stats, open }
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.stats.active.fetch_sub(1, Relaxed);
    }
}

/// The connections of each source address that have not delivered a whole Convert message yet, oldest first,
/// each with the token that closes it. Over the per-source limit the *oldest* is closed, not the newest: a
/// slow-header flood holds old connections, while a CPE's (or many CPEs' behind one NAT address) new
/// connections deliver their message within a round trip, so they get through.
#[derive(Debug, Default, Clone)]
pub(crate) struct PendingTable(Arc<Mutex<PendingInner>>);

#[derive(Debug, Default)]
struct PendingInner {
    next: u64,
    by_source: HashMap<String, VecDeque<(u64, CancellationToken)>>,
}

impl PendingTable {
    /// Registers a new connection of `source` that `evict` closes; when the source has `limit` pending
    /// already, its oldest is closed to make room. Returns the guard, and whether one was closed.
    pub(crate) fn admit(
        &self,
        source: &str,
        limit: usize,
        evict: CancellationToken,
        stats: &Arc<Stats>,
    ) -> (Pending, bool) {
        let mut inner = self.0.lock().expect("pending table poisoned");
        let id = inner.next;
        inner.next += 1;
        let queue = inner.by_source.entry(source.to_owned()).or_default();
        let mut evicted = false;
        while queue.len() >= limit.max(1) {
            if let Some((_, oldest)) = queue.pop_front() {
                oldest.cancel();
                stats.pending_evicted.fetch_add(1, Relaxed);
                evicted = true;
            }
        }
        queue.push_back((id, evict));
        stats.pending.fetch_add(1, Relaxed);
        let pending = Pending { table: self.clone(), source: source.to_owned(), id, stats: stats.clone() };
        (pending, evicted)
    }
}

/// A connection that has not delivered a whole Convert message yet: its place in its source's queue of the
/// [`PendingTable`], and the `pending` gauge, while it lives.
pub(crate) struct Pending {
    table: PendingTable,
    source: String,
    id: u64,
    stats: Arc<Stats>,
}

impl Drop for Pending {
    fn drop(&mut self) {
        self.stats.pending.fetch_sub(1, Relaxed);
        let mut inner = self.table.0.lock().expect("pending table poisoned");
        if let Some(queue) = inner.by_source.get_mut(&self.source) {
            queue.retain(|(id, _)| *id != self.id);
            if queue.is_empty() {
                inner.by_source.remove(&self.source);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn over_the_limit_the_oldest_pending_connection_of_that_source_goes() {
        let (table, stats) = (PendingTable::default(), Arc::new(Stats::default()));
        let tokens: Vec<CancellationToken> = (0..3).map(|_| CancellationToken::new()).collect();
        let (a, evicted_a) = table.admit("192.0.2.1", 2, tokens[0].clone(), &stats);
        let (b, _) = table.admit("192.0.2.1", 2, tokens[1].clone(), &stats);
        let (other, _) = table.admit("192.0.2.2", 2, CancellationToken::new(), &stats);
        assert!(!evicted_a);
        // A third from the same address: the first is closed, not the newcomer.
        let (c, evicted) = table.admit("192.0.2.1", 2, tokens[2].clone(), &stats);
        assert!(evicted && tokens[0].is_cancelled() && !tokens[1].is_cancelled() && !tokens[2].is_cancelled());
        assert_eq!(stats.pending_evicted.load(Relaxed), 1);
        // A connection that delivered its message leaves the queue: it can no longer be chosen.
        drop(b);
        let (d, evicted) = table.admit("192.0.2.1", 2, CancellationToken::new(), &stats);
        assert!(!evicted && !tokens[1].is_cancelled());
        drop((a, c, d, other));
        assert_eq!(stats.pending.load(Relaxed), 0);
        assert!(table.0.lock().unwrap().by_source.is_empty());
    }
}
