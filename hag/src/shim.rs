//! TEMPORARY stand-in for `common::relay` until they land; same signatures as the
//! contract. Removed as soon as the real modules are in.
#![allow(dead_code)]

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
