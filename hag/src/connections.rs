//! Table of the hag's open connections, for the admin API (`/api/v1/connections`) and logs: who (peer, CPE
//! id), where to (destination), the MPTCP token (the connection id of RFC 6897's CONNID), live byte counters,
//! and a weak handle on the client socket so `common::mptcp::full_info` can list the subflows (no extra fd:
//! see `common::stream`).
//!
//! Invariants: an entry exists exactly while its connection task runs (the [`Entry`] guard removes it on
//! drop); [`Connection::id`] is the table's sequence number; fields learned later (CPE id, destination, token) are set at most once. Cancelling
//! [`Connection::close`] ends the connection's task (the server selects on it), which drops both sockets.

use std::net::SocketAddr;
use std::ops::Deref;
use std::sync::atomic::AtomicBool;
use std::sync::{OnceLock, Weak};
use std::time::{Instant, SystemTime};

use common::admin::table::{self, Table};
use common::admin::{ConnId, HasConnId};
use common::relay::RelayCounters;
use tokio_util::sync::CancellationToken;

/// One open connection.
#[derive(Debug)]
pub struct Connection {
    /// Unique within this hag's run.
    pub id: u64,
    /// The CPE's address.
    pub peer: SocketAddr,
    /// When it was accepted (wall clock, for display).
    pub accepted_at: SystemTime,
    /// When it was accepted (monotonic, for ages).
    pub accepted: Instant,
    /// MPTCP token; `None` inside when the client is plain TCP (fallback).
    pub token: OnceLock<Option<u32>>,
    /// Authenticated CPE id (unset for trusted clients without Auth).
    pub cpe: OnceLock<String>,
    /// Destination from the Connect TLV, once it passed the policy.
    pub dst: OnceLock<SocketAddr>,
    /// Held idle for a CPE's ready-connection pool (a Hold TLV was accepted and no destination named yet).
    pub held: AtomicBool,
    /// Bytes client -> destination (`a_to_b`) and back (`b_to_a`), live while relaying.
    pub counters: RelayCounters,
    /// The client socket, for `MPTCP_FULL_INFO` (subflows); upgrading fails once the task closed it.
    pub client: Weak<tokio::net::TcpStream>,
    /// Cancelled to close the connection from outside (admin API `DELETE`): the task stops relaying and
    /// drops both sockets.
    pub close: CancellationToken,
}

/// All open connections (the table logic is `common::admin::table`; this adds how a hag connection starts).
#[derive(Debug, Default)]
pub struct Connections(Table<Connection>);

/// Keeps a connection listed; removes it on drop.
pub type Entry = table::Entry<Connection>;

impl Connections {
    /// Registers a connection; it stays listed until the returned guard is dropped.
    pub fn insert(&self, peer: SocketAddr, client: Weak<tokio::net::TcpStream>) -> Entry {
        self.0.insert(|id| Connection {
            id,
            peer,
            accepted_at: SystemTime::now(),
            accepted: Instant::now(),
            token: OnceLock::new(),
            cpe: OnceLock::new(),
            dst: OnceLock::new(),
            held: AtomicBool::new(false),
            counters: RelayCounters::default(),
            client,
            close: CancellationToken::new(),
        })
    }
}

impl Deref for Connections {
    type Target = Table<Connection>;

    fn deref(&self) -> &Table<Connection> {
        &self.0
    }
}

impl HasConnId for Connection {
    fn conn_id(&self) -> ConnId {
        ConnId::new(self.token.get(), self.id)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[test]
    fn entries_live_as_long_as_their_guard() {
        let t = Arc::new(Connections::default());
        let peer: SocketAddr = "192.0.2.1:4000".parse().unwrap();
        let a = t.insert(peer, Weak::new());
        let b = t.insert(peer, Weak::new());
        a.conn().cpe.set("cpe-1".into()).unwrap();
        assert!(a.conn().cpe.set("other".into()).is_err(), "set once");
        let ids: Vec<u64> = t.snapshot().iter().map(|c| c.id).collect();
        assert_eq!(ids, vec![a.conn().id, b.conn().id]);
        drop(a);
        assert_eq!(t.len(), 1);
        assert_eq!(t.snapshot()[0].id, b.conn().id);
        assert_eq!(b.conn().conn_id(), ConnId::Seq(b.conn().id), "no token yet");
        b.conn().token.set(Some(0xab)).unwrap();
        assert_eq!(b.conn().conn_id(), ConnId::Token(0xab));
        drop(b);
        assert!(t.is_empty());
    }
}
