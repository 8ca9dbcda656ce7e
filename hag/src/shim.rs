//! TEMPORARY stand-ins for `common::mptcp` and `common::relay` until they land; same signatures as the
//! contract. Removed as soon as the real modules are in.
#![allow(dead_code)]

pub mod mptcp {
    use std::io;
    use std::net::SocketAddr;
    use std::os::fd::AsFd;

    pub enum TfoRole {
        Client,
        Server,
    }
    pub struct MptcpInfo {
        pub token: u32,
    }
    pub fn check_tfo_sysctl(_role: TfoRole) -> Result<(), String> {
        Ok(())
    }
    pub fn info(_fd: &impl AsFd) -> io::Result<Option<MptcpInfo>> {
        Ok(None)
    }
    pub fn listen(addr: SocketAddr, backlog: u32, _tfo: Option<u32>) -> io::Result<tokio::net::TcpListener> {
        use socket2::{Domain, Protocol, Socket, Type};
        let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::from(libc::IPPROTO_MPTCP)))?;
        s.set_reuse_address(true)?;
        if addr.is_ipv6() {
            s.set_only_v6(true)?;
        }
        s.set_nonblocking(true)?;
        s.bind(&addr.into())?;
        s.listen(backlog as i32)?;
        tokio::net::TcpListener::from_std(s.into())
    }
}

pub mod relay {
    use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
    use std::time::Duration;
    use tokio::io::{AsyncRead, AsyncWrite};

    #[derive(Default)]
    pub struct RelayCounters {
        pub a_to_b: AtomicU64,
        pub b_to_a: AtomicU64,
    }
    #[derive(Debug)]
    pub struct RelayOutcome;
    #[derive(Debug, thiserror::Error)]
    pub enum RelayError {
        #[error("idle for {idle:?}")]
        IdleTimeout { idle: Duration },
        #[error("io: {0}")]
        Io(#[from] std::io::Error),
    }
    pub async fn relay<A, B>(mut a: A, mut b: B, _idle: Duration, c: &RelayCounters) -> Result<RelayOutcome, RelayError>
    where
        A: AsyncRead + AsyncWrite + Unpin,
        B: AsyncRead + AsyncWrite + Unpin,
    {
        let (x, y) = tokio::io::copy_bidirectional(&mut a, &mut b).await?;
        c.a_to_b.fetch_add(x, Relaxed);
        c.b_to_a.fetch_add(y, Relaxed);
        Ok(RelayOutcome)
    }
}
