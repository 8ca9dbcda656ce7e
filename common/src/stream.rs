//! [`SharedStream`]: a connected socket that a connection task reads and writes while an admin API may look at
//! it (`MPTCP_FULL_INFO`, `TCP_INFO`) through a [`Weak`] handle, without a second file descriptor.
//!
//! Why: a table of open connections needs the client socket's fd for subflow listings. A `dup` costs a third
//! descriptor per relay (two are unavoidable), which on a host with a 20,000-descriptor hard limit means
//! 6,600 relays instead of 9,900. A raw fd number is not enough either: once the task closes the socket the
//! number may name another socket. The table keeps a [`Weak`]; upgrading it keeps the socket open for the
//! moment of the lookup, and fails once the task dropped its stream.
//!
//! Invariants: all I/O goes through tokio's `&self` readiness API (`poll_read_ready` + `try_read`, the same
//! path tokio's own borrowed split halves use), so sharing the `Arc` never blocks or reorders I/O; shutdown
//! of the write side is `shutdown(SHUT_WR)` on the socket, as for a `TcpStream`.

use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// A connected stream shared between its connection task (I/O) and observers holding a [`Weak`].
#[derive(Debug, Clone)]
pub struct SharedStream(Arc<TcpStream>);

impl SharedStream {
    /// Wraps `stream`.
    pub fn new(stream: TcpStream) -> Self {
        SharedStream(Arc::new(stream))
    }

    /// A handle that does not keep the socket open.
    pub fn downgrade(&self) -> Weak<TcpStream> {
        Arc::downgrade(&self.0)
    }
}

impl std::ops::Deref for SharedStream {
    type Target = TcpStream;
    fn deref(&self) -> &TcpStream {
        &self.0
    }
}

impl AsFd for SharedStream {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

impl AsyncRead for SharedStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        loop {
            ready!(self.0.poll_read_ready(cx))?;
            let unfilled = buf.initialize_unfilled();
            match self.0.try_read(unfilled) {
                Ok(n) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                // Readiness was stale; `try_read` cleared it, so the next poll registers the waker.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl AsyncWrite for SharedStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.0.poll_write_ready(cx))?;
            match self.0.try_write(data) {
                Ok(n) => return Poll::Ready(Ok(n)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match socket2::SockRef::from(&*self.0).shutdown(std::net::Shutdown::Write) {
            // Already shut down or reset by the peer: nothing left to close.
            Err(e) if e.kind() == io::ErrorKind::NotConnected => Poll::Ready(Ok(())),
            r => Poll::Ready(r),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn relays_both_ways_half_closes_and_the_weak_handle_dies_with_the_stream() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let client = tokio::spawn(async move {
            let mut c = TcpStream::connect(addr).await.unwrap();
            c.write_all(&vec![7u8; 1 << 20]).await.unwrap();
            c.shutdown().await.unwrap();
            let mut back = Vec::new();
            c.read_to_end(&mut back).await.unwrap();
            back
        });
        let (s, _) = l.accept().await.unwrap();
        let mut s = SharedStream::new(s);
        let weak = s.downgrade();
        // An observer can look at the socket while the task does I/O.
        assert!(weak.upgrade().is_some_and(|t| t.peer_addr().is_ok()));
        let mut got = Vec::new();
        s.read_to_end(&mut got).await.unwrap();
        assert_eq!(got.len(), 1 << 20);
        s.write_all(b"done").await.unwrap();
        s.shutdown().await.unwrap();
        drop(s);
        assert!(weak.upgrade().is_none(), "the socket closes with the task's stream");
        assert_eq!(client.await.unwrap(), b"done");
    }
}
