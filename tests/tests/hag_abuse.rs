//! The real hag against a hostile or careless peer, in namespaces:
//! - its destination policy over every address form: an authenticated CPE asks for each form of a denied
//!   destination and must get Error 32 (not authorized) before hag opens anything, or Error 1 for the
//!   loopback, multicast and broadcast addresses RFC 8803 forbids; a permitted destination in the same run
//!   is relayed, so the refusals are the policy's;
//! - a slow-header flood from one address (500 connections sending a byte a second) is bounded per source:
//!   a CPE at another address completes 100 connections meanwhile, hag's memory stays bounded, and the slow
//!   connections are closed at the header deadline.
//!
//! ```text
//!  cli (198.18.1.2 CPE, 198.18.1.3 flood; an echo server on .2:7000) --- hag (198.18.1.1, wildcard listeners)
//! ```

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use common::convert::{Message, auth};
use tests::netns::{ChildGuard, Netns, bin_path};

const HAG: &str = "198.18.1.1";
const CLI: &str = "198.18.1.2";
const FLOOD: &str = "198.18.1.3";
const HEADER_DEADLINE: Duration = Duration::from_secs(2);
const KEY: [u8; 32] = [0x42; 32];

struct Bed {
    hag: ChildGuard,
    cli: Netns,
    hag_ns: Netns,
    _dir: tempfile::TempDir,
}

fn bed(yaml: &str) -> Bed {
    let cli = Netns::new("pcli").unwrap();
    let hag_ns = Netns::new("phag").unwrap();
    Netns::veth(&cli, "eth0", &hag_ns, "eth0").unwrap();
    cli.addr("eth0", &format!("{CLI}/24")).unwrap();
    cli.addr("eth0", &format!("{FLOOD}/24")).unwrap();
    hag_ns.addr("eth0", &format!("{HAG}/24")).unwrap();
    hag_ns.addr("eth0", "2001:db8:1::1/64").unwrap();
    let dir = tempfile::tempdir().unwrap();
    tests::daemons::write_private(&dir.path().join("cpe.key"), &hex(&KEY)).unwrap();
    let config = tests::daemons::write_config(dir.path(), "hag.yaml", yaml).unwrap();
    let mut hag = hag_ns.spawn(bin_path("hag"), &["--config", config.to_str().unwrap()]).unwrap();
    assert!(hag.wait_for_log("ready", Duration::from_secs(10)), "hag did not start:\n{}", hag.log());
    Bed { hag, cli, hag_ns, _dir: dir }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// hag's answer to an authenticated Convert request for `dst`, sent over MPTCP from `cli`.
fn ask(cli: &Netns, dst: SocketAddr) -> Message {
    let hag = SocketAddr::new(HAG.parse().unwrap(), 5124);
    tests::cpe::convert_request(cli, hag, None, (&KEY, "cpe-1"), dst).unwrap().message
}

fn assert_refused(bed: &Bed, dst: &str, form: &str) {
    assert_refused_with(bed, dst, form, 32);
}

fn assert_refused_with(bed: &Bed, dst: &str, form: &str, expected: u8) {
    let dst: SocketAddr = dst.parse().unwrap();
    let reply = ask(&bed.cli, dst);
    let code = reply.error().map(|c| c.code());
    assert_eq!(code, Some(expected), "{form} ({dst}): expected Error {expected}, got {reply:?}\n{}", bed.hag.log());
}

#[test]
fn every_address_form_of_a_denied_destination_is_refused() {
    let bed = bed("clients: {cpe-1: {key_file: cpe.key}}\nlimits: {connect_timeout: 2s}\n");
    // A permitted destination first: the server in `cli`, reached back over the veth.
    let server = bed.cli.within(|| TcpListener::bind((CLI, 7000)).unwrap()).unwrap();
    let reply = ask(&bed.cli, format!("{CLI}:7000").parse().unwrap());
    assert!(reply.error().is_none(), "a permitted destination must be relayed: {reply:?}\n{}", bed.hag.log());
    drop(server);

    for (dst, form) in [
        ("10.1.2.3:80", "private IPv4"),
        ("[::ffff:10.1.2.3]:80", "IPv4-mapped private"),
        ("[::127.0.0.1]:80", "IPv4-compatible loopback"),
        ("[::10.1.2.3]:80", "IPv4-compatible private"),
        ("[64:ff9b::7f00:1]:80", "NAT64 (64:ff9b::/96) of loopback"),
        ("[64:ff9b::a01:203]:80", "NAT64 of a private address"),
        ("[64:ff9b:1::a01:203]:80", "local-use NAT64 (64:ff9b:1::/48)"),
        ("[2002:7f00:1::1]:80", "6to4 of loopback"),
        ("[2002:a01:203::1]:80", "6to4 of a private address"),
        ("[2001:0:4136:e378:8000:63bf:3fff:fdd2]:80", "Teredo"),
        ("0.0.0.0:80", "IPv4 unspecified"),
        ("[::]:80", "IPv6 unspecified"),
        ("[::ffff:0.0.0.0]:80", "IPv4-mapped unspecified"),
        ("203.0.113.9:0", "port 0"),
        ("198.18.1.1:5124", "hag's own service address"),
        ("[2001:db8:1::1]:80", "hag's own IPv6 address"),
        ("[::ffff:198.18.1.1]:80", "hag's own address, IPv4-mapped"),
        ("[2002:c612:101::1]:80", "6to4 of hag's own address"),
    ] {
        assert_refused(&bed, dst, form);
    }
    // The classes RFC 8803 §5.2.5 forbids in a Connect TLV are malformed requests (1), not policy refusals.
    for (dst, form) in [
        ("127.0.0.1:80", "IPv4 loopback"),
        ("[::1]:80", "IPv6 loopback"),
        ("[::ffff:127.0.0.1]:80", "IPv4-mapped loopback"),
        ("255.255.255.255:80", "broadcast"),
        ("224.0.0.1:80", "IPv4 multicast"),
        ("[ff02::1]:80", "IPv6 multicast"),
    ] {
        assert_refused_with(&bed, dst, form, 1);
    }

    // An address hag gets after it started is its own too.
    bed.hag_ns.addr("eth0", "198.18.1.77/32").unwrap();
    assert_refused(&bed, "198.18.1.77:80", "an address added to hag after start");
    assert_refused(&bed, "[64:ff9b::c612:14d]:80", "NAT64 of the address added after start");
    let log = bed.hag.log();
    assert!(log.contains("one of the hag's own addresses"), "{log}");
    assert!(log.contains("which is denied"), "the embedded form is named in the log:\n{log}");
}

/// hag's memory stays under this during the flood (measured 9 to 12 MiB at the peak; the bound leaves room for
/// allocator and runtime growth, not for per-connection buffering of the flood).
const RSS_BOUND: u64 = 64 << 20;

#[test]
fn a_slow_header_flood_from_one_address_does_not_starve_a_cpe() {
    const SLOW: usize = 500;
    let yaml = format!(
        "clients: {{cpe-1: {{key_file: cpe.key}}}}\nlimits: {{header_deadline: {}s, max_pending_per_source: 64}}\n",
        HEADER_DEADLINE.as_secs()
    );
    let mut bed = bed(&yaml);
    tests::cpe::echo_server(&bed.cli, format!("{CLI}:7000").parse().unwrap()).unwrap();
    let rss_before = bed.hag.rss();

    // The flood: plain TCP from FLOOD, each connection sending one byte a second and never a whole message.
    let started = Instant::now();
    let slow: Vec<TcpStream> = bed
        .cli
        .within(|| {
            (0..SLOW)
                .map(|_| {
                    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
                    s.bind(&SocketAddr::new(FLOOD.parse().unwrap(), 0).into()).unwrap();
                    s.connect(&SocketAddr::new(HAG.parse().unwrap(), 5124).into()).unwrap();
                    TcpStream::from(s)
                })
                .collect()
        })
        .unwrap();
    // What the slow ones send, a byte a second: a well-formed request, so only the deadline stops them.
    let dst: SocketAddr = format!("{CLI}:7000").parse().unwrap();
    let request = auth::signed_request(&KEY, dst, "cpe-1", 0, [7; 16]).unwrap();
    let trickle = std::thread::spawn(move || {
        // Writes the request's next byte each second on each connection until hag has closed it; returns when
        // each connection was seen closed (a failed write or an EOF), relative to the start of the flood.
        let mut closed_at: Vec<Option<Duration>> = vec![None; slow.len()];
        let mut round = 0;
        for s in &slow {
            s.set_nonblocking(true).unwrap();
        }
        while closed_at.iter().any(Option::is_none) && started.elapsed() < HEADER_DEADLINE * 4 {
            for (i, mut s) in slow.iter().enumerate() {
                if closed_at[i].is_some() {
                    continue;
                }
                let mut probe = [0u8; 64];
                let gone = match s.read(&mut probe) {
                    Ok(0) => true,
                    Ok(_) => false,
                    Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
                };
                if gone || s.write_all(&request[round..=round]).is_err() {
                    closed_at[i] = Some(started.elapsed());
                }
            }
            round += 1;
            std::thread::sleep(Duration::from_secs(1));
        }
        closed_at
    });

    // Meanwhile the CPE at the other address: 100 connections, each relayed and echoing.
    let hag = SocketAddr::new(HAG.parse().unwrap(), 5124);
    let mut rss_peak = 0;
    for i in 0..100 {
        let mut reply = tests::cpe::convert_request(&bed.cli, hag, Some(CLI.parse().unwrap()), (&KEY, "cpe-1"), dst)
            .unwrap_or_else(|e| panic!("CPE connection {i} during the flood: {e}\n{}", bed.hag.log()));
        assert!(reply.message.error().is_none(), "CPE connection {i} refused: {:?}", reply.message);
        reply.stream.write_all(b"ping").unwrap();
        let mut echo = reply.rest;
        while echo.len() < 4 {
            let mut b = [0u8; 16];
            let n = reply.stream.read(&mut b).unwrap();
            assert!(n > 0, "CPE connection {i}: no echo");
            echo.extend_from_slice(&b[..n]);
        }
        rss_peak = rss_peak.max(bed.hag.rss());
    }
    let cpe_done = started.elapsed();

    let closed_at = trickle.join().unwrap();
    let open = closed_at.iter().filter(|c| c.is_none()).count();
    assert_eq!(open, 0, "{open} slow connections still open after {:?}", HEADER_DEADLINE * 4);
    let latest = closed_at.iter().flatten().max().copied().unwrap();
    eprintln!(
        "flood of {SLOW}: CPE's 100 connections done after {cpe_done:?}; last slow connection closed after \
         {latest:?}; hag RSS {} KiB before, peak {} KiB",
        rss_before >> 10,
        rss_peak >> 10
    );
    // Each was closed as a newer one came (the oldest go over the per-source limit) or at the header
    // deadline, seen within the trickle's one-second rounds.
    let mut by_second = std::collections::BTreeMap::new();
    for c in closed_at.iter().flatten() {
        *by_second.entry(c.as_secs()).or_insert(0) += 1;
    }
    assert!(
        latest <= HEADER_DEADLINE + Duration::from_secs(2),
        "a slow connection lived {latest:?}; closed by second of the flood: {by_second:?}\n{}",
        bed.hag.log()
    );
    assert!(rss_peak < RSS_BOUND, "hag's RSS reached {rss_peak} bytes during the flood");

    bed.hag.signal(libc::SIGTERM);
    bed.hag.wait_timeout(Duration::from_secs(10));
    let log = bed.hag.log();
    let stopped = log.lines().find(|l| l.contains("stopped")).unwrap_or_default().to_owned();
    let count = |key: &str| -> u64 {
        stopped.split_whitespace().find_map(|kv| kv.strip_prefix(key)).and_then(|v| v.parse().ok()).unwrap_or(0)
    };
    assert_eq!(count("pending_evicted="), (SLOW - 64) as u64, "{stopped}");
    assert_eq!(count("header_timeouts="), 64, "{stopped}");
}
