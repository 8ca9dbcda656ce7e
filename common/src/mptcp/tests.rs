//! Socket tests on loopback, each inside a throwaway network namespace so the TFO sysctl can be set
//! without touching the host.
//!
//! The namespace belongs to one dedicated thread (`unshare(CLONE_NEWNET)` affects only the calling thread),
//! which also runs a current-thread tokio runtime, so every socket of the test is created inside it. The
//! namespace is anonymous: it disappears when the thread has exited and the sockets are closed, also when
//! the test panics. Nothing is named, mounted or left behind. Needs root (CAP_SYS_ADMIN), as the whole suite.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::*;

/// Brings `lo` up in the calling thread's namespace (SIOCGIFFLAGS/SIOCSIFFLAGS; `ip link` would run in a
/// child process, which would not share this thread's namespace).
fn loopback_up() {
    // SAFETY: plain syscalls on a socket we own; `ifreq` is a C struct for which all-zero is valid and the
    // name is NUL-terminated within IFNAMSIZ.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
        let mut req: libc::ifreq = std::mem::zeroed();
        for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
            *dst = *src as libc::c_char;
        }
        assert_eq!(libc::ioctl(fd, libc::SIOCGIFFLAGS, &mut req), 0, "SIOCGIFFLAGS");
        req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        assert_eq!(
            libc::ioctl(fd, libc::SIOCSIFFLAGS, &mut req),
            0,
            "SIOCSIFFLAGS: {}",
            std::io::Error::last_os_error()
        );
        libc::close(fd);
    }
}

/// Runs `body` on a fresh thread inside a new, anonymous network namespace with `lo` up and
/// `net.ipv4.tcp_fastopen = tfo`, on a current-thread tokio runtime.
fn in_netns<F, Fut>(tfo: u32, body: F)
where
    F: FnOnce() -> Fut + Send,
    Fut: std::future::Future<Output = ()>,
{
    std::thread::scope(|s| {
        s.spawn(|| {
            // SAFETY: unshare only changes this thread's namespace membership.
            let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "unshare(CLONE_NEWNET) (tests need root): {}", std::io::Error::last_os_error());
            loopback_up();
            std::fs::write("/proc/sys/net/ipv4/tcp_fastopen", tfo.to_string()).expect("set tcp_fastopen");
            assert_eq!(read_tfo_sysctl(), Ok(tfo), "sysctl must be the namespace's own");
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(body());
        })
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p));
    });
}

const TFO_BOTH: u32 = TFO_CLIENT_ENABLE | TFO_SERVER_ENABLE | TFO_SERVER_COOKIE_NOT_REQUIRED;

fn plain() -> ConnectOptions {
    ConnectOptions { fastopen: false, timeout: Duration::from_secs(5), ..ConnectOptions::default() }
}

async fn pair(listener: &TcpListener, first: &[u8], opts: &ConnectOptions) -> (TcpStream, usize, TcpStream) {
    let addr = listener.local_addr().unwrap();
    let (client, accepted) = tokio::join!(connect_with_data(addr, first, opts), listener.accept());
    let (client, sent) = client.expect("connect");
    (client, sent, accepted.expect("accept").0)
}

#[test]
fn mptcp_connection_reports_token_and_one_subflow() {
    in_netns(TFO_BOTH, || async {
        let listener = listen("127.0.0.1:0".parse().unwrap(), 16, Some(16)).unwrap();
        assert!(is_mptcp_socket(&listener));
        let (mut client, sent, mut server) = pair(&listener, b"", &plain()).await;
        assert_eq!(sent, 0);
        assert!(is_mptcp_socket(&client) && is_mptcp_socket(&server));

        client.write_all(&[7u8; 1000]).await.unwrap();
        let mut buf = [0u8; 1000];
        server.read_exact(&mut buf).await.unwrap();

        let si = info(&server).unwrap().expect("accepted connection is MPTCP");
        let ci = info(&client).unwrap().expect("client connection is MPTCP");
        assert_ne!(si.token, 0);
        assert_ne!(ci.token, 0);
        assert_eq!((si.subflows, ci.subflows), (1, 1));
        assert_eq!(si.flags & sys::MPTCP_INFO_FLAG_REMOTE_KEY_RECEIVED, sys::MPTCP_INFO_FLAG_REMOTE_KEY_RECEIVED);
        assert_eq!(si.bytes_received, 1000);
    });
}

#[test]
fn tfo_first_bytes_ride_in_the_syn_v4_and_v6() {
    in_netns(TFO_BOTH, || async {
        for addr in ["127.0.0.1:0", "[::1]:0"] {
            let listener = listen(addr.parse().unwrap(), 16, Some(16)).unwrap();
            let first = b"convert header + auth + client bytes";
            let (client, sent, mut server) = pair(&listener, first, &ConnectOptions::default()).await;
            assert_eq!(sent, first.len(), "{addr}: all first bytes in the SYN");
            let mut got = vec![0u8; first.len()];
            server.read_exact(&mut got).await.unwrap();
            assert_eq!(&got, first);
            assert!(syn_data_acked(&server).unwrap(), "{addr}: server saw data in the SYN");
            assert!(syn_data_acked(&client).unwrap(), "{addr}: client saw its SYN data acked");
            assert!(info(&server).unwrap().is_some(), "{addr}: TFO connection is still MPTCP");
        }
    });
}

#[test]
fn tfo_declined_by_server_still_delivers_the_bytes() {
    // Server without 0x200: the SYN data is not accepted; the kernel retransmits it after the handshake.
    in_netns(TFO_CLIENT_ENABLE | TFO_SERVER_ENABLE, || async {
        assert!(check_tfo_sysctl(TfoRole::Server).unwrap_err().contains("lacks bit 0x200"));
        let listener = listen("127.0.0.1:0".parse().unwrap(), 16, Some(16)).unwrap();
        let (client, sent, mut server) = pair(&listener, b"hello", &ConnectOptions::default()).await;
        assert_eq!(sent, 5, "kernel took the bytes");
        let mut got = [0u8; 5];
        server.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"hello");
        assert!(!syn_data_acked(&client).unwrap());
    });
}

#[test]
fn tfo_client_disabled_falls_back_to_a_normal_connect() {
    in_netns(TFO_SERVER_ENABLE | TFO_SERVER_COOKIE_NOT_REQUIRED, || async {
        let err = check_tfo_sysctl(TfoRole::Client).unwrap_err();
        assert!(err.contains("lacks bit 0x1") && err.contains("tcp_fastopen=515"), "{err}");
        assert_eq!(check_tfo_sysctl(TfoRole::Server), Ok(()));
        let listener = listen("127.0.0.1:0".parse().unwrap(), 16, Some(16)).unwrap();
        let (mut client, sent, mut server) = pair(&listener, b"abc", &ConnectOptions::default()).await;
        assert_eq!(sent, 0, "nothing went in the SYN");
        client.write_all(b"abc").await.unwrap();
        let mut got = [0u8; 3];
        server.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"abc");
        assert!(info(&server).unwrap().is_some());
    });
}

#[test]
fn full_info_lists_the_subflow_addresses_and_bytes() {
    in_netns(TFO_BOTH, || async {
        let listener = listen("127.0.0.1:0".parse().unwrap(), 16, Some(16)).unwrap();
        let laddr = listener.local_addr().unwrap();
        let (mut client, _, mut server) = pair(&listener, b"", &plain()).await;
        let data = vec![0x5au8; 100_000];
        client.write_all(&data).await.unwrap();
        let mut got = vec![0u8; data.len()];
        server.read_exact(&mut got).await.unwrap();
        server.write_all(b"k").await.unwrap();
        client.read_exact(&mut [0u8; 1]).await.unwrap();

        let cf = full_info(&client).unwrap().expect("client is MPTCP");
        assert_eq!(cf.subflows.len(), 1);
        assert_eq!(cf.info.subflows, 1);
        let sf = &cf.subflows[0];
        assert_eq!(sf.local, Some(client.local_addr().unwrap()));
        assert_eq!(sf.remote, Some(laddr));
        assert!(sf.bytes_sent >= 100_000, "acked {}", sf.bytes_sent);
        assert!(sf.rtt > Duration::ZERO);
        assert_eq!(sf.tcp_state, 1, "TCP_ESTABLISHED");

        let sfull = full_info(&server).unwrap().expect("server is MPTCP");
        assert_eq!(sfull.info.token, info(&server).unwrap().unwrap().token);
        let ss = &sfull.subflows[0];
        assert_eq!((ss.local, ss.remote), (Some(laddr), Some(client.local_addr().unwrap())));
        assert!(ss.bytes_received >= 100_000, "received {}", ss.bytes_received);
    });
}

#[test]
fn plain_tcp_peers_read_as_not_mptcp() {
    in_netns(TFO_BOTH, || async {
        // Plain TCP client -> MPTCP listener: the accepted socket is TCP.
        let listener = listen("127.0.0.1:0".parse().unwrap(), 16, Some(16)).unwrap();
        let opts = ConnectOptions { mptcp: false, ..plain() };
        let (client, _, server) = pair(&listener, b"", &opts).await;
        assert!(!is_mptcp_socket(&server) && !is_mptcp_socket(&client));
        assert_eq!(info(&server).unwrap(), None);
        assert_eq!(full_info(&server).unwrap(), None);
        assert_eq!(info(&client).unwrap(), None);

        // MPTCP client -> plain TCP listener: the socket stays MPTCP but the connection fell back.
        let tcp =
            listen_with("127.0.0.1:0".parse().unwrap(), &ListenOptions { mptcp: false, ..Default::default() }).unwrap();
        let (client, _, _server) = pair(&tcp, b"", &plain()).await;
        assert!(is_mptcp_socket(&client));
        assert_eq!(info(&client).unwrap(), None);
        assert_eq!(full_info(&client).unwrap(), None);
    });
}

#[test]
fn connect_binds_address_and_device() {
    in_netns(TFO_BOTH, || async {
        let listener = listen("127.0.0.1:0".parse().unwrap(), 16, Some(16)).unwrap();
        let opts = ConnectOptions {
            bind: Some("127.0.0.2:0".parse().unwrap()),
            bind_device: Some("lo".into()),
            ..ConnectOptions::default()
        };
        let (client, sent, server) = pair(&listener, b"x", &opts).await;
        assert_eq!(sent, 1);
        assert_eq!(client.local_addr().unwrap().ip(), "127.0.0.2".parse::<std::net::IpAddr>().unwrap());
        assert_eq!(server.peer_addr().unwrap(), client.local_addr().unwrap());
    });
}

#[test]
fn connect_errors_refused_and_timeout() {
    in_netns(TFO_BOTH, || async {
        // Refused: nothing listens (port of a listener we just closed).
        let port = listen("127.0.0.1:0".parse().unwrap(), 1, None).unwrap().local_addr().unwrap().port();
        let dst: SocketAddr = ([127, 0, 0, 1], port).into();
        for opts in [plain(), ConnectOptions::default()] {
            let err = connect_with_data(dst, b"x", &opts).await.unwrap_err();
            assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused, "{err}");
        }
        // Timeout: a listener with a full accept queue drops further SYNs.
        let listener = listen("127.0.0.1:0".parse().unwrap(), 0, None).unwrap();
        let dst = listener.local_addr().unwrap();
        let mut held = Vec::new();
        let opts = ConnectOptions { timeout: Duration::from_millis(300), ..plain() };
        let err = loop {
            match connect_with_data(dst, b"", &opts).await {
                Ok((s, _)) => held.push(s),
                Err(e) => break e,
            }
            assert!(held.len() < 8, "SYNs never dropped");
        };
        assert_eq!(err.kind(), std::io::ErrorKind::TimedOut, "{err}");
    });
}

#[test]
fn first_bytes_larger_than_the_syn_are_split_and_the_rest_is_the_callers() {
    in_netns(TFO_BOTH, || async {
        let listener = listen("127.0.0.1:0".parse().unwrap(), 16, Some(16)).unwrap();
        let first: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let (mut client, sent, mut server) = pair(&listener, &first, &ConnectOptions::default()).await;
        assert!(sent > 0 && sent < first.len(), "SYN carries a prefix only, got {sent}");
        client.write_all(&first[sent..]).await.unwrap();
        let mut got = vec![0u8; first.len()];
        server.read_exact(&mut got).await.unwrap();
        assert!(got == first, "prefix from the SYN + rest from the caller arrive in order");
    });
}

#[test]
fn raise_receive_window_grows_the_buffer_and_leaves_the_low_water_mark_at_one() {
    in_netns(0, || async {
        let listener = listen("127.0.0.1:0".parse().unwrap(), 16, None).unwrap();
        let (_client, _, server) = pair(&listener, b"", &plain()).await;
        let sock = socket2::SockRef::from(&server);
        let before = sock.recv_buffer_size().unwrap();
        raise_receive_window(&server, 2 << 20).unwrap();
        let after = sock.recv_buffer_size().unwrap();
        let mut lowat: libc::c_int = 0;
        sys::getsockopt_into(server.as_fd(), libc::SOL_SOCKET, libc::SO_RCVLOWAT, &mut lowat).unwrap();
        assert!(after >= 2 << 20 && after > before, "receive buffer {before} -> {after}");
        assert_eq!(lowat, 1);
    });
}

#[test]
fn hold_send_buffer_sets_the_size_and_the_unsent_limit() {
    in_netns(0, || async {
        let listener = listen("127.0.0.1:0".parse().unwrap(), 16, None).unwrap();
        let (client, _, _server) = pair(&listener, b"", &plain()).await;
        let sock = socket2::SockRef::from(&client);
        hold_send_buffer(&client, 2 << 20, 128 << 10).unwrap();
        let mut lowat: libc::c_int = 0;
        sys::getsockopt_into(client.as_fd(), libc::IPPROTO_TCP, libc::TCP_NOTSENT_LOWAT, &mut lowat).unwrap();
        // The kernel doubles the size for its bookkeeping.
        assert!(sock.send_buffer_size().unwrap() >= 2 << 20, "{}", sock.send_buffer_size().unwrap());
        assert_eq!(lowat, 128 << 10);
    });
}

#[test]
fn restart_congestion_control_leaves_the_connection_on_its_algorithm() {
    in_netns(0, || async {
        let listener = listen("127.0.0.1:0".parse().unwrap(), 16, None).unwrap();
        let (client, _, _server) = pair(&listener, b"", &plain()).await;
        let sock = socket2::SockRef::from(&client);
        let before = sock.tcp_congestion().unwrap();
        let restarted = restart_congestion_control(&client).unwrap();
        assert_eq!(sock.tcp_congestion().unwrap(), before);
        // Through reno and back: not for reno itself (the namespace's default is always allowed).
        let name = before.split(|b| *b == 0).next().unwrap().to_vec();
        assert_eq!(restarted, name != b"reno", "{}", String::from_utf8_lossy(&name));
    });
}

/// BBR's bandwidth estimate (`TCP_CC_INFO`, `struct tcp_bbr_info`), in bytes per second.
fn bbr_bandwidth(fd: &impl AsFd) -> u64 {
    use std::os::fd::AsRawFd;
    let mut info = [0u32; 5];
    let mut len = std::mem::size_of_val(&info) as libc::socklen_t;
    // SAFETY: `info` is a writable buffer of `len` bytes; the kernel writes at most that and reports the count.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_fd().as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_CC_INFO,
            info.as_mut_ptr().cast(),
            &mut len,
        )
    };
    assert_eq!(rc, 0, "TCP_CC_INFO: {}", std::io::Error::last_os_error());
    (u64::from(info[1]) << 32) | u64::from(info[0])
}

#[test]
fn restart_congestion_control_starts_bbr_over() {
    // On plain TCP, where TCP_CC_INFO shows BBR's state; an MPTCP socket passes the same two settings to each
    // subflow. BBR must be the namespace's default (a new namespace takes the machine's).
    in_netns(0, || async {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (mut server, _) = listener.accept().await.unwrap();
        let name = socket2::SockRef::from(&client).tcp_congestion().unwrap();
        if !name.starts_with(b"bbr\0") {
            eprintln!("skipped: the default congestion control is {}", String::from_utf8_lossy(&name));
            return;
        }
        client.write_all(&vec![0u8; 1 << 20]).await.unwrap();
        server.read_exact(&mut vec![0u8; 1 << 20]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(bbr_bandwidth(&client) > 0, "a transfer gives BBR a bandwidth estimate");
        assert!(restart_congestion_control(&client).unwrap());
        assert_eq!(bbr_bandwidth(&client), 0, "started over");
        assert_eq!(socket2::SockRef::from(&client).tcp_congestion().unwrap(), name);
    });
}

/// The congestion control a socket runs, by name.
fn cc(s: &TcpStream) -> String {
    let name = socket2::SockRef::from(s).tcp_congestion().unwrap();
    String::from_utf8_lossy(name.split(|b| *b == 0).next().unwrap()).into_owned()
}

#[test]
fn both_ends_of_an_mptcp_connection_run_the_congestion_control_they_are_given() {
    in_netns(0, || async {
        let reno = Some("reno".to_owned());
        let opts = ListenOptions { tfo_queue: None, congestion_control: reno.clone(), ..ListenOptions::default() };
        let listener = listen_with("127.0.0.1:0".parse().unwrap(), &opts).unwrap();
        let (client, _, server) = pair(&listener, b"", &ConnectOptions { congestion_control: reno, ..plain() }).await;
        assert!(info(&client).unwrap().is_some(), "an MPTCP connection");
        // The accepted connection takes the listener's.
        assert_eq!((cc(&client), cc(&server)), ("reno".to_owned(), "reno".to_owned()));
        // A name the kernel does not have is an error at start, with what it has.
        let missing = CongestionControl::Named("nosuchcc".into()).check().unwrap_err().to_string();
        assert!(missing.contains("nosuchcc") && missing.contains("reno"), "{missing}");
        CongestionControl::System.check().unwrap();
        CongestionControl::Named("reno".into()).check().unwrap();
        // Configured: it must work. Not configured: CUBIC where this process may use it (root may), else the
        // system's.
        assert!(CongestionControl::resolve(Some(&CongestionControl::Named("nosuchcc".into())), "k").is_err());
        let reno = CongestionControl::Named("reno".into());
        assert_eq!(CongestionControl::resolve(Some(&reno), "k").unwrap(), reno);
        let available = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_available_congestion_control").unwrap();
        let expected = match available.split_whitespace().any(|a| a == "cubic") {
            true => CongestionControl::default(),
            false => CongestionControl::System,
        };
        assert_eq!(CongestionControl::resolve(None, "k").unwrap(), expected);
    });
}

#[test]
fn a_start_phase_runs_its_algorithm_then_gives_the_connection_its_own_back() {
    in_netns(0, || async {
        let available = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_available_congestion_control").unwrap();
        let Some(other) = available.split_whitespace().find(|a| *a != "reno").map(str::to_owned) else {
            eprintln!("skipped: this kernel has only reno");
            return;
        };
        let reno = Some("reno".to_owned());
        let opts = ListenOptions { tfo_queue: None, congestion_control: reno.clone(), ..ListenOptions::default() };
        let listener = listen_with("127.0.0.1:0".parse().unwrap(), &opts).unwrap();
        let phase = StartPhase { algorithm: other.clone(), duration: Duration::from_millis(200) };

        let (_client, _, server) =
            pair(&listener, b"", &ConnectOptions { congestion_control: reno.clone(), ..plain() }).await;
        let server = std::sync::Arc::new(server);
        let then = phase.begin(&*server).unwrap();
        assert_eq!(then.as_deref(), Some(&b"reno"[..]));
        assert_eq!(cc(&server), other);
        assert_eq!(phase.begin(&*server).unwrap(), None, "it runs the phase's algorithm already");
        let seen = phase
            .run(
                async {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    let during = cc(&server);
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    (during, cc(&server))
                },
                std::sync::Arc::downgrade(&server),
                then.unwrap(),
            )
            .await;
        assert_eq!(seen, (other.clone(), "reno".to_owned()));

        // A transfer that ends within the phase ends at once, and its connection is left as it is.
        let (_client, _, server) = pair(&listener, b"", &ConnectOptions { congestion_control: reno, ..plain() }).await;
        let server = std::sync::Arc::new(server);
        let then = phase.begin(&*server).unwrap().unwrap();
        let started = std::time::Instant::now();
        phase.run(async {}, std::sync::Arc::downgrade(&server), then).await;
        assert!(started.elapsed() < Duration::from_millis(150), "{:?}", started.elapsed());
        assert_eq!(cc(&server), other);

        // Configured: its algorithm must work; a zero duration, or none configured, is no phase.
        let missing = StartPhase { algorithm: "nosuchcc".into(), duration: Duration::from_secs(3) };
        assert!(StartPhase::resolve(Some(&missing)).is_err());
        let off = StartPhase { duration: Duration::ZERO, ..missing.clone() };
        assert_eq!(StartPhase::resolve(Some(&off)).unwrap(), None);
        assert_eq!(StartPhase::resolve(None).unwrap(), None);
        assert_eq!(StartPhase::resolve(Some(&phase)).unwrap(), Some(phase));
    });
}

#[test]
fn congestion_control_names_parse() {
    assert_eq!("system".parse(), Ok(CongestionControl::System));
    assert_eq!("cubic".parse(), Ok(CongestionControl::Named("cubic".into())));
    assert_eq!(CongestionControl::default().name(), Some("cubic"));
    for bad in ["", "Cubic", "bbr ", "a_name_far_too_long", "../x"] {
        assert!(bad.parse::<CongestionControl>().is_err(), "{bad:?}");
    }
}
