//! Helpers for tests against the real kernel.
//!
//!
//! [`in_new_netns`] runs the body on a new thread that first calls `unshare(CLONE_NEWNET)`: only that thread
//! moves into the new, anonymous namespace. The namespace is referenced by that thread and by the sockets made
//! in it; the body's tokio runtime (and with it every socket) is dropped before the thread returns, so when
//! the thread exits the last reference goes and the kernel destroys the namespace with its endpoints. Nothing
//! is mounted or named, so there is nothing to clean up, also when the body panics.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use futures::StreamExt as _;

use common::pm::{PmEvent, PmEvents};

fn netns_inode() -> std::path::PathBuf {
    std::fs::read_link("/proc/thread-self/ns/net").expect("read /proc/thread-self/ns/net")
}

/// Run `body` on its own thread, in a new network namespace, on a current-thread tokio runtime. Needs root.
pub fn in_new_netns<F, Fut>(body: F)
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = ()>,
{
    let parent_ns = netns_inode();
    let parent = parent_ns.clone();
    let thread = std::thread::spawn(move || {
        // SAFETY: unshare takes no pointers; CLONE_NEWNET moves only the calling thread.
        let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "unshare(CLONE_NEWNET) (tests need root): {}", io::Error::last_os_error());
        assert_ne!(netns_inode(), parent, "the test thread must be in a namespace of its own");
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime");
        rt.block_on(body());
        drop(rt); // closes every socket of the body before the thread (the namespace's last user) exits
    });
    if let Err(panic) = thread.join() {
        std::panic::resume_unwind(panic);
    }
    assert_eq!(netns_inode(), parent_ns, "the test's own thread never left its namespace");
}

/// `ip link set lo up` in the current namespace (a new namespace's loopback starts down).
pub fn loopback_up() {
    // SAFETY: plain ioctls on a socket we own, with a zeroed, NUL-terminated ifreq.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        assert!(fd >= 0, "socket: {}", io::Error::last_os_error());
        let mut ifr: libc::ifreq = std::mem::zeroed();
        for (dst, src) in ifr.ifr_name.iter_mut().zip(b"lo\0") {
            *dst = *src as libc::c_char;
        }
        assert_eq!(libc::ioctl(fd, libc::SIOCGIFFLAGS, &mut ifr), 0, "SIOCGIFFLAGS: {}", io::Error::last_os_error());
        ifr.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        assert_eq!(libc::ioctl(fd, libc::SIOCSIFFLAGS, &ifr), 0, "SIOCSIFFLAGS: {}", io::Error::last_os_error());
        libc::close(fd);
    }
}

/// A non-blocking MPTCP stream socket for `addr`'s family.
pub fn mptcp_socket(addr: SocketAddr) -> socket2::Socket {
    let s =
        socket2::Socket::new(socket2::Domain::for_address(addr), socket2::Type::STREAM, Some(socket2::Protocol::MPTCP))
            .expect("MPTCP socket (kernel with MPTCP)");
    s.set_nonblocking(true).unwrap();
    s
}

/// Next path-manager event that `want` accepts (10 s at most), or a panic listing what came instead.
pub async fn wait_for(events: &mut PmEvents, what: &str, mut want: impl FnMut(&PmEvent) -> bool) -> PmEvent {
    let mut seen = Vec::new();
    let found = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(ev) = events.next().await {
            let ev = ev.expect("event stream error");
            if want(&ev) {
                return Some(ev);
            }
            seen.push(ev);
        }
        None
    })
    .await;
    match found {
        Ok(Some(ev)) => ev,
        _ => panic!("no {what} event; saw {seen:#?}"),
    }
}

/// An MPTCP connection over loopback: the listener on 127.0.0.1 (kept, since joining subflows need it), the
/// client (bound to `client_ip` if given) and the accepted server side, after one round trip so that both
/// sides are fully established (the client then opens its extra subflows).
pub struct MptcpPair {
    pub listener: tokio::net::TcpListener,
    pub server_addr: SocketAddr,
    pub client: tokio::net::TcpStream,
    pub server: tokio::net::TcpStream,
}

/// Makes an [`MptcpPair`]; panics on any failure.
pub async fn mptcp_pair(client_ip: Option<std::net::IpAddr>) -> MptcpPair {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let listen_on: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let ls = mptcp_socket(listen_on);
    ls.bind(&listen_on.into()).unwrap();
    ls.listen(16).unwrap();
    let listener = tokio::net::TcpListener::from_std(ls.into()).unwrap();
    let server_addr = listener.local_addr().unwrap();
    let cs = mptcp_socket(server_addr);
    if let Some(ip) = client_ip {
        cs.bind(&SocketAddr::new(ip, 0).into()).unwrap();
    }
    match cs.connect(&server_addr.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => panic!("connect: {e}"),
    }
    let mut client = tokio::net::TcpStream::from_std(cs.into()).unwrap();
    let (mut server, _) = listener.accept().await.unwrap();
    client.write_all(b"ping").await.unwrap();
    let mut buf = [0u8; 4];
    server.read_exact(&mut buf).await.unwrap();
    server.write_all(&buf).await.unwrap();
    client.read_exact(&mut buf).await.unwrap();
    MptcpPair { listener, server_addr, client, server }
}
