//! A table of open items (the daemons' open connections) for the admin APIs: each item gets a sequence
//! number unique within the run and stays listed exactly while its [`Entry`] guard lives.
//!
//! Invariants: an item is listed from [`Table::insert`] until its [`Entry`] is dropped, under the sequence
//! number `insert` handed to the item's constructor; [`Table::snapshot`] lists items oldest first. A panic
//! while the lock is held does not poison the table for everyone else (the map stays consistent: each
//! operation is a single insert, remove or read).

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::Ordering::Relaxed;

use portable_atomic::AtomicU64;
use std::sync::{Arc, Mutex, MutexGuard};

type Map<T> = Arc<Mutex<BTreeMap<u64, Arc<T>>>>;

/// All open items, by sequence number.
pub struct Table<T> {
    next_seq: AtomicU64,
    open: Map<T>,
}

impl<T> Default for Table<T> {
    fn default() -> Self {
        Table { next_seq: AtomicU64::new(0), open: Arc::default() }
    }
}

impl<T> fmt::Debug for Table<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Table").field("open", &self.len()).finish()
    }
}

fn lock<T>(open: &Map<T>) -> MutexGuard<'_, BTreeMap<u64, Arc<T>>> {
    open.lock().unwrap_or_else(|p| p.into_inner())
}

impl<T> Table<T> {
    /// Lists the item `make` builds from its new sequence number; it stays listed until the returned guard
    /// is dropped.
    pub fn insert(&self, make: impl FnOnce(u64) -> T) -> Entry<T> {
        let seq = self.next_seq.fetch_add(1, Relaxed);
        let item = Arc::new(make(seq));
        lock(&self.open).insert(seq, item.clone());
        Entry { open: self.open.clone(), seq, item }
    }

    /// The items open now, oldest first.
    pub fn snapshot(&self) -> Vec<Arc<T>> {
        lock(&self.open).values().cloned().collect()
    }

    /// The open item with this sequence number.
    pub fn get(&self, seq: u64) -> Option<Arc<T>> {
        lock(&self.open).get(&seq).cloned()
    }

    /// The oldest open item for which `pred` holds.
    pub fn find(&self, mut pred: impl FnMut(&T) -> bool) -> Option<Arc<T>> {
        lock(&self.open).values().find(|i| pred(i)).cloned()
    }

    /// Number of open items.
    pub fn len(&self) -> usize {
        lock(&self.open).len()
    }

    /// True when no item is open.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Keeps an item listed; removes it on drop.
pub struct Entry<T> {
    open: Map<T>,
    seq: u64,
    item: Arc<T>,
}

impl<T: fmt::Debug> fmt::Debug for Entry<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Entry").field("seq", &self.seq).field("item", &self.item).finish()
    }
}

impl<T> Entry<T> {
    /// The listed item.
    pub fn conn(&self) -> &Arc<T> {
        &self.item
    }

    /// Its sequence number.
    pub fn seq(&self) -> u64 {
        self.seq
    }
}

impl<T> Drop for Entry<T> {
    fn drop(&mut self) {
        lock(&self.open).remove(&self.seq);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn items_are_listed_oldest_first_while_their_guard_lives() {
        let t = Table::default();
        let entries: Vec<Entry<String>> = (0..12).map(|_| t.insert(|seq| format!("c{seq}"))).collect();
        let names: Vec<String> = t.snapshot().iter().map(|s| s.to_string()).collect();
        let want: Vec<String> = (0..12).map(|i| format!("c{i}")).collect();
        assert_eq!(names, want, "by sequence number, not by string order");
        assert_eq!(t.get(entries[3].seq()).as_deref().map(String::as_str), Some("c3"));
        assert_eq!(t.find(|s| s.ends_with('5')).as_deref().map(String::as_str), Some("c5"));
        let mut entries = entries.into_iter();
        drop(entries.next());
        assert_eq!(t.len(), 11);
        assert!(t.get(0).is_none(), "gone with its guard");
        drop(entries);
        assert!(t.is_empty());
        assert_eq!(t.insert(|seq| seq.to_string()).conn().as_str(), "12", "numbers are not reused");
    }
}
