//! Prober and responder talking over loopback inside a network namespace private to one test thread
//! (needs root, as CI runs). The namespace dies with its thread, so nothing is left behind even when an
//! assertion fails. Time is tokio's paused clock: the runtime jumps from timer to timer when idle, so the
//! intervals asserted below are virtual and the test takes milliseconds of real time.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::*;

const KEY: &[u8] = b"0123456789abcdef0123456789abcdef";
const MS: Duration = Duration::from_millis(1);

/// Runs `f` on a new thread that first moves into a fresh network namespace with `lo` up.
fn in_private_netns(f: impl FnOnce() + Send + 'static) {
    let result = std::thread::spawn(move || {
        // SAFETY: plain syscall; only this thread changes namespace.
        let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "unshare(CLONE_NEWNET) needs root: {}", std::io::Error::last_os_error());
        set_lo_up();
        f();
    })
    .join();
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}

/// `ip link set lo up` without `ip` (which would run in another process, outside this thread's
/// namespace): SIOCGIFFLAGS / SIOCSIFFLAGS on a throwaway socket.
fn set_lo_up() {
    // SAFETY: ifreq is plain old data; the name is NUL-terminated ("lo\0"), the socket is closed below,
    // and the ioctls only read and write the ifreq we pass.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
        let mut ifr: libc::ifreq = std::mem::zeroed();
        for (dst, src) in ifr.ifr_name.iter_mut().zip(b"lo\0") {
            *dst = *src as libc::c_char;
        }
        let rc = libc::ioctl(fd, libc::SIOCGIFFLAGS as _, &mut ifr);
        assert_eq!(rc, 0, "SIOCGIFFLAGS: {}", std::io::Error::last_os_error());
        ifr.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        let rc = libc::ioctl(fd, libc::SIOCSIFFLAGS as _, &ifr);
        assert_eq!(rc, 0, "SIOCSIFFLAGS: {}", std::io::Error::last_os_error());
        libc::close(fd);
    }
}

/// `ip -6 addr add|del ADDR/128 dev lo` by ioctl (SIOCSIFADDR / SIOCDIFADDR with an in6_ifreq).
fn lo_v6(request: libc::c_ulong, addr: std::net::Ipv6Addr) {
    // SAFETY: in6_ifreq is plain old data, fully initialised; the socket is closed below.
    unsafe {
        let fd = libc::socket(libc::AF_INET6, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
        let ifindex = libc::if_nametoindex(c"lo".as_ptr());
        assert!(ifindex > 0);
        let req = libc::in6_ifreq {
            ifr6_addr: libc::in6_addr { s6_addr: addr.octets() },
            ifr6_prefixlen: 128,
            ifr6_ifindex: ifindex as libc::c_int,
        };
        let rc = libc::ioctl(fd, request as _, &req);
        assert_eq!(rc, 0, "ioctl {request:#x} {addr}: {}", std::io::Error::last_os_error());
        libc::close(fd);
    }
    if request == libc::SIOCSIFADDR {
        // The kernel finishes (skips) duplicate address detection on lo in a work queue, in real time; until
        // then the address is tentative and drops what is sent to it. Under the paused clock that real-time
        // moment would be many virtual seconds, so wait here until a plain bind (which refuses tentative
        // addresses) succeeds.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while std::net::UdpSocket::bind((addr, 0)).is_err() {
            assert!(std::time::Instant::now() < deadline, "{addr} still tentative after 5 s");
            std::thread::sleep(MS);
        }
    }
}

fn paused_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().start_paused(true).build().unwrap()
}

const TARGET: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), DEFAULT_PORT);

async fn start_responder() -> (JoinHandle<std::io::Result<()>>, std::sync::Arc<ResponderCounters>) {
    let socket = UdpSocket::bind(TARGET).await.unwrap();
    let responder = Responder::new(ResponderConfig::default());
    let counters = responder.counters().clone();
    let keys = HashMap::from([("cpe-1".to_owned(), KEY.to_vec())]);
    (tokio::spawn(serve_udp(socket, responder, move |id| keys.get(id).cloned())), counters)
}

fn prober_config(key: &[u8]) -> ProberConfig {
    ProberConfig {
        cpe_id: "cpe-1".into(),
        key: key.to_vec(),
        uplink: 1,
        source: IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)),
        device: Some("lo".into()),
        target: TARGET,
        health: HealthConfig::default(),
    }
}

/// Waits (virtual time) until the published state is `want`; returns how long that took.
async fn until_state(rx: &mut watch::Receiver<UplinkHealth>, want: HealthState) -> Duration {
    let start = Instant::now();
    tokio::time::timeout(Duration::from_secs(30), rx.wait_for(|h| h.state == want))
        .await
        .unwrap_or_else(|_| panic!("no {want:?} within 30 s (virtual)"))
        .unwrap();
    start.elapsed()
}

#[test]
fn uplink_goes_up_down_when_the_responder_stops_and_up_again() {
    in_private_netns(|| {
        paused_runtime().block_on(async {
            let (responder, counters) = start_responder().await;
            let prober = Prober::new(prober_config(KEY)).unwrap();
            assert_eq!(prober.local_addr().unwrap().ip(), IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)));
            let mut health = prober.subscribe();
            let carrier = prober.carrier_control();
            let task = tokio::spawn(prober.run());

            // Healthy: probes at 0, 200, 400 ms answered at once (loopback, virtual clock): Up at ~400 ms.
            let took = until_state(&mut health, HealthState::Up).await;
            println!("up after {took:?}");
            assert!(took >= 400 * MS && took <= 450 * MS, "up after {took:?}");
            let h = health.borrow().clone();
            assert!(h.srtt.is_some());
            assert_eq!((h.loss, h.stats.replies), (0.0, 3));
            tokio::time::sleep(Duration::from_secs(2)).await;
            assert_eq!(health.borrow().state, HealthState::Up, "stays up");
            assert_eq!(counters.snapshot().replied, health.borrow().stats.replies);

            // Responder stopped: its port closes (ICMP unreachable, counted as receive errors). Three probes
            // in a row must miss their 200 ms timeout: Down between 600 ms and 800 ms later (where in the
            // probe cycle the stop falls decides which).
            responder.abort();
            assert!(responder.await.unwrap_err().is_cancelled());
            let took = until_state(&mut health, HealthState::Down).await;
            println!("down after {took:?}");
            assert!(took >= 600 * MS && took <= 800 * MS, "down after {took:?}");
            let h = health.borrow().clone();
            assert_eq!(h.loss, 0.0, "the outage is the state, not loss");
            assert!(h.stats.recv_errors > 0, "{h:?}");

            // Responder back: Up after three answered probes, i.e. 400-600 ms later.
            tokio::time::sleep(Duration::from_secs(1)).await;
            assert_eq!(health.borrow().state, HealthState::Down, "stays down while nobody answers");
            let (responder, _) = start_responder().await;
            let took = until_state(&mut health, HealthState::Up).await;
            println!("up again after {took:?}");
            assert!(took >= 400 * MS && took <= 600 * MS, "up again after {took:?}");

            // Carrier loss acts at once, without waiting for probes to miss.
            carrier.send(false).unwrap();
            let took = until_state(&mut health, HealthState::Down).await;
            assert!(took < 10 * MS, "carrier loss took {took:?}");
            assert!(!health.borrow().carrier);
            carrier.send(true).unwrap();
            let took = until_state(&mut health, HealthState::Up).await;
            assert!(took >= 400 * MS && took <= 450 * MS, "up after carrier back: {took:?}");

            // Dropping every receiver stops the prober.
            drop(health);
            task.await.unwrap().unwrap();
            responder.abort();
        });
    });
}

#[test]
fn silent_blackhole_is_detected_like_a_dead_responder() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    in_private_netns(|| {
        paused_runtime().block_on(async {
            // The responder keeps running but answers nothing while `blackhole` is set: no ICMP, no reply,
            // just silence, as on a DSL line that stops forwarding with carrier up.
            let blackhole = Arc::new(AtomicBool::new(false));
            let socket = UdpSocket::bind(TARGET).await.unwrap();
            let responder = Responder::new(ResponderConfig::default());
            let counters = responder.counters().clone();
            let hole = blackhole.clone();
            let lookup = move |id: &str| (id == "cpe-1" && !hole.load(Ordering::Relaxed)).then_some(KEY);
            let responder = tokio::spawn(serve_udp(socket, responder, lookup));
            let prober = Prober::new(prober_config(KEY)).unwrap();
            let mut health = prober.subscribe();
            let task = tokio::spawn(prober.run());
            until_state(&mut health, HealthState::Up).await;
            tokio::time::sleep(Duration::from_millis(1100)).await; // off the probe grid

            blackhole.store(true, Ordering::Relaxed);
            let took = until_state(&mut health, HealthState::Down).await;
            println!("blackhole: down after {took:?}");
            assert!(took >= 500 * MS && took <= 800 * MS, "down after {took:?}");
            assert_eq!(health.borrow().stats.recv_errors, 0, "silence, not ICMP");

            blackhole.store(false, Ordering::Relaxed);
            let took = until_state(&mut health, HealthState::Up).await;
            println!("blackhole lifted: up after {took:?}");
            assert!(took >= 400 * MS && took <= 600 * MS, "up after {took:?}");
            assert!(counters.snapshot().unknown_cpe >= 3);

            drop(health);
            task.await.unwrap().unwrap();
            responder.abort();
        });
    });
}

#[test]
fn wrong_key_is_never_answered_and_the_uplink_goes_down() {
    in_private_netns(|| {
        paused_runtime().block_on(async {
            let (responder, counters) = start_responder().await;
            let prober = Prober::new(prober_config(b"a key the responder does not know")).unwrap();
            let mut health = prober.subscribe();
            let task = tokio::spawn(prober.run());
            // No RTT sample: each probe waits timeout_max (1 s); probes at 0, 200, 400 -> Down at 1.4 s.
            let took = until_state(&mut health, HealthState::Down).await;
            assert!(took >= 1400 * MS && took <= 1450 * MS, "down after {took:?}");
            let s = counters.snapshot();
            assert!(s.bad_mac >= 3 && s.replied == 0, "{s:?}");
            drop(health);
            task.await.unwrap().unwrap();
            responder.abort();
        });
    });
}

#[test]
fn renumbered_uplink_is_rebound_and_recovers_without_a_restart() {
    in_private_netns(|| {
        paused_runtime().block_on(async {
            let old: std::net::Ipv6Addr = "fd00::2".parse().unwrap();
            let new: std::net::Ipv6Addr = "fd00::3".parse().unwrap();
            lo_v6(libc::SIOCSIFADDR, old);
            let target = SocketAddr::new(IpAddr::V6(std::net::Ipv6Addr::LOCALHOST), DEFAULT_PORT);
            let socket = UdpSocket::bind(target).await.unwrap();
            let keys = HashMap::from([("cpe-1".to_owned(), KEY.to_vec())]);
            let responder = tokio::spawn(serve_udp(socket, Responder::new(ResponderConfig::default()), move |id| {
                keys.get(id).cloned()
            }));
            let config = ProberConfig { source: IpAddr::V6(old), target, ..prober_config(KEY) };
            let prober = Prober::new(config).unwrap();
            let mut health = prober.subscribe();
            let source = prober.source_control();
            let task = tokio::spawn(prober.run());
            until_state(&mut health, HealthState::Up).await;

            // The modem renumbers: the old address goes away. Probes from it fail, the uplink goes Down.
            lo_v6(libc::SIOCSIFADDR, new);
            lo_v6(libc::SIOCDIFADDR, old);
            let took = until_state(&mut health, HealthState::Down).await;
            assert!(took <= 1000 * MS, "down after {took:?}");

            // The uplink manager learns the new address: same prober, new socket, Up after 3 probes.
            source.send(IpAddr::V6(new)).unwrap();
            let took = until_state(&mut health, HealthState::Up).await;
            assert!(took >= 400 * MS && took <= 600 * MS, "up after rebind: {took:?}");
            let h = health.borrow().clone();
            assert_eq!((h.source, h.stats.rebinds), (IpAddr::V6(new), 1));
            assert!(h.stats.replies >= 6, "{h:?}");
            println!("after renumbering: {:?}", h.stats);

            drop(health);
            task.await.unwrap().unwrap();
            responder.abort();
        });
    });
}

#[test]
fn prober_rejects_mismatched_families_and_bad_ids() {
    paused_runtime().block_on(async {
        let mut c = prober_config(KEY);
        c.device = None;
        c.source = "::1".parse().unwrap();
        assert!(matches!(Prober::new(c).unwrap_err(), ProbeError::Config(_)));
        let mut c = prober_config(KEY);
        c.device = None;
        c.cpe_id = String::new();
        assert!(matches!(Prober::new(c).unwrap_err(), ProbeError::Config(_)));
    });
}

/// A responder on a wildcard socket (`0.0.0.0`, `[::]`, as hag's example config listens) answers from the
/// address each probe was sent to. The routing table would pick 127.0.0.1 / ::1 as the reply's source, which
/// the prober (connected to the service address) drops: the uplink would never come up.
#[test]
fn wildcard_responder_answers_from_the_probed_address() {
    in_private_netns(|| {
        paused_runtime().block_on(async {
            let service6: std::net::Ipv6Addr = "fd00::5124".parse().unwrap();
            lo_v6(libc::SIOCSIFADDR, service6);
            let keys = HashMap::from([("cpe-1".to_owned(), KEY.to_vec())]);
            let v4 = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, DEFAULT_PORT)).await.unwrap();
            let v6 = socket2::Socket::new(socket2::Domain::IPV6, socket2::Type::DGRAM, None).unwrap();
            v6.set_only_v6(true).unwrap();
            v6.set_nonblocking(true).unwrap();
            v6.bind(&SocketAddr::new(std::net::Ipv6Addr::UNSPECIFIED.into(), DEFAULT_PORT).into()).unwrap();
            let v6 = UdpSocket::from_std(v6.into()).unwrap();
            let responders: Vec<_> = [v4, v6]
                .into_iter()
                .map(|socket| {
                    let keys = keys.clone();
                    tokio::spawn(serve_udp(socket, Responder::new(ResponderConfig::default()), move |id| {
                        keys.get(id).cloned()
                    }))
                })
                .collect();
            let probes = [
                (IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)), IpAddr::V4(Ipv4Addr::new(127, 0, 0, 5))),
                (IpAddr::V6(std::net::Ipv6Addr::LOCALHOST), IpAddr::V6(service6)),
            ];
            for (source, target) in probes {
                let config = ProberConfig {
                    source,
                    device: None,
                    target: SocketAddr::new(target, DEFAULT_PORT),
                    ..prober_config(KEY)
                };
                let prober = Prober::new(config).unwrap();
                let mut health = prober.subscribe();
                let task = tokio::spawn(prober.run());
                let took = until_state(&mut health, HealthState::Up).await;
                assert!(took <= 450 * MS, "{target}: up after {took:?}");
                assert_eq!(health.borrow().stats.bad_replies, 0, "{target}");
                drop(health);
                task.await.unwrap().unwrap();
            }
            for r in responders {
                r.abort();
            }
        });
    });
}
