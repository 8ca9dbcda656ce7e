//! RFC 8803 conformance of the real hag, byte for byte, in namespaces: the request libconvert (Tessares'
//! client) sends and the reply it gets, the Info TLV, TCP options in the Connect TLV (applied to the SYN
//! toward the destination, or refused with Error 33), the echoed Malformed and Unsupported Message replies,
//! the reset for a total length of zero, Error 97 with the ICMP code and the other connect failures, and
//! the per-source budget of error replies.
//!
//! ```text
//!  cli (198.18.2.2, .3) --- hag (198.18.2.1 | 10.77.2.1) --- srv (10.77.2.2: servers, nft reject, routes)
//! ```

use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::mpsc;
use std::time::Duration;

use tests::netns::{ChildGuard, Netns, bin_path};

const HAG: &str = "198.18.2.1";
const CLI: &str = "198.18.2.2";
const CLI2: &str = "198.18.2.3";
const SRV: &str = "10.77.2.2";
const GREETING: &[u8] = b"hello from the server\n";

struct Bed {
    hag: ChildGuard,
    cli: Netns,
    _hag_ns: Netns,
    srv: Netns,
    _dir: tempfile::TempDir,
}

fn bed() -> Bed {
    let cli = Netns::new("rcli").unwrap();
    let hag_ns = Netns::new("rhag").unwrap();
    let srv = Netns::new("rsrv").unwrap();
    Netns::veth(&cli, "eth0", &hag_ns, "eth0").unwrap();
    Netns::veth(&hag_ns, "eth1", &srv, "eth0").unwrap();
    cli.addr("eth0", &format!("{CLI}/24")).unwrap();
    cli.addr("eth0", &format!("{CLI2}/24")).unwrap();
    hag_ns.addr("eth0", &format!("{HAG}/24")).unwrap();
    hag_ns.addr("eth1", "10.77.2.1/24").unwrap();
    srv.addr("eth0", &format!("{SRV}/24")).unwrap();
    // Everything else hag reaches goes through srv, which answers for 203.0.113.0/24 with ICMP.
    hag_ns.route(&["default", "via", SRV]).unwrap();
    srv.sysctl("net.ipv4.ip_forward", "1").unwrap();
    srv.route(&["prohibit", "203.0.113.0/24"]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let yaml = "trusted_sources: [198.18.2.0/24]\n\
                destinations: {allow: [10.77.2.0/24, 203.0.113.0/24]}\n\
                limits: {connect_timeout: 3s}\n";
    let config = tests::daemons::write_config(dir.path(), "hag.yaml", yaml).unwrap();
    let mut hag = hag_ns.spawn(bin_path("hag"), &["--config", config.to_str().unwrap()]).unwrap();
    assert!(hag.wait_for_log("ready", Duration::from_secs(10)), "hag did not start:\n{}", hag.log());
    Bed { hag, cli, _hag_ns: hag_ns, srv, _dir: dir }
}

fn h(s: &str) -> Vec<u8> {
    let s: String = s.split_whitespace().collect();
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
}

/// How hag ended the exchange.
#[derive(Debug, PartialEq, Eq)]
enum End {
    /// Everything hag sent, then its FIN.
    Closed(Vec<u8>),
    /// Bytes read before hag reset the connection.
    Reset(Vec<u8>),
    /// `want` bytes arrived (hag keeps relaying).
    Open(Vec<u8>),
}

/// Sends `request` from `source` (plain TCP) and reads hag's answer: until it closes, or `want` bytes.
fn exchange(bed: &Bed, source: &str, request: &[u8], want: Option<usize>) -> End {
    let (source, request): (IpAddr, Vec<u8>) = (source.parse().unwrap(), request.to_vec());
    bed.cli
        .within(move || {
            let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
            s.bind(&SocketAddr::new(source, 0).into()).unwrap();
            s.connect(&SocketAddr::new(HAG.parse().unwrap(), 5124).into()).unwrap();
            let mut s = TcpStream::from(s);
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            s.write_all(&request).unwrap();
            let mut got = Vec::new();
            loop {
                if want.is_some_and(|n| got.len() >= n) {
                    return End::Open(got);
                }
                let mut chunk = [0u8; 2048];
                match s.read(&mut chunk) {
                    Ok(0) => return End::Closed(got),
                    Ok(n) => got.extend_from_slice(&chunk[..n]),
                    Err(e) if e.kind() == ErrorKind::ConnectionReset => return End::Reset(got),
                    Err(e) => panic!("reading hag's answer: {e} (after {got:02x?})"),
                }
            }
        })
        .unwrap()
}

/// A server in srv on `port` that greets each connection and reports the TCP options of the SYN it got:
/// (MSS in use, the window scale the client announced, whether SACK was permitted).
fn greeting_server(srv: &Netns, port: u16) -> mpsc::Receiver<(u32, u8, bool)> {
    let listener = srv.within(move || TcpListener::bind((SRV, port))).unwrap().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for mut s in listener.incoming().flatten() {
            let mut info = [0u8; 256];
            let mut len = info.len() as libc::socklen_t;
            // SAFETY: the buffer and its length are passed together.
            unsafe {
                libc::getsockopt(s.as_raw_fd(), libc::IPPROTO_TCP, libc::TCP_INFO, info.as_mut_ptr().cast(), &mut len)
            };
            let mss = socket2::SockRef::from(&s).tcp_mss().unwrap();
            // struct tcp_info: byte 5 tcpi_options, byte 6 snd_wscale (low nibble) and rcv_wscale.
            let _ = tx.send((mss, info[6] & 0x0f, info[5] & 2 != 0));
            let _ = s.write_all(GREETING);
            let mut sink = [0u8; 1024];
            while matches!(s.read(&mut sink), Ok(n) if n > 0) {}
        }
    });
    rx
}

/// A Connect TLV for `dst:port` with `options` (already padded), in a message with nothing else.
fn connect(dst: [u8; 4], port: u16, options: &str) -> Vec<u8> {
    let options = h(options);
    let tlv_words = (20 + options.len()) / 4;
    let mut m = vec![1, (1 + tlv_words) as u8, 0x22, 0x63, 10, tlv_words as u8];
    m.extend_from_slice(&port.to_be_bytes());
    m.extend_from_slice(&[0; 10]);
    m.extend_from_slice(&[0xff, 0xff]);
    m.extend_from_slice(&dst);
    m.extend_from_slice(&options);
    m
}

fn with_reply(reply: &str, rest: &[u8]) -> Vec<u8> {
    [h(reply), rest.to_vec()].concat()
}

#[test]
fn replies_are_the_rfcs_byte_for_byte() {
    let bed = bed();
    let syns = greeting_server(&bed.srv, 8080);

    // libconvert's request for 10.77.2.2:8080 (its recorded bytes, with the address and port of this bed) and
    // the reply it accepts: the bare header, then the server's bytes.
    let libconvert = h("01 06 22 63 0a 05 1f 90 00 00 00 00 00 00 00 00 00 00 ff ff 0a 4d 02 02");
    let end = exchange(&bed, CLI, &libconvert, Some(4 + GREETING.len()));
    assert_eq!(end, End::Open(with_reply("01 01 22 63", GREETING)), "{}", bed.hag.log());
    let (_, default_shift, _) = syns.recv_timeout(Duration::from_secs(5)).unwrap();

    // Info alone: the Supported TCP Extensions (window scale, SACK, timestamps, MPTCP), then FIN.
    let supported = "01 03 22 63 15 02 00 00 03 04 08 1e";
    assert_eq!(exchange(&bed, CLI, &h("01 02 22 63 01 01 00 00"), None), End::Closed(h(supported)));
    // Info with a Connect: the same TLV in the success reply, then the server's bytes.
    let mut both = libconvert.clone();
    both.extend(h("01 01 00 00"));
    both[1] += 1;
    let end = exchange(&bed, CLI, &both, Some(12 + GREETING.len()));
    assert_eq!(end, End::Open(with_reply(supported, GREETING)));
    syns.recv_timeout(Duration::from_secs(5)).unwrap();

    // TCP options the kernel can send as asked: MSS 1000, window scale 2, SACK permitted.
    let options = connect([10, 77, 2, 2], 8080, "02 04 03 e8 03 03 02 04 02 00 00 00");
    let end = exchange(&bed, CLI, &options, Some(4 + GREETING.len()));
    assert_eq!(end, End::Open(with_reply("01 01 22 63", GREETING)));
    let (mss, shift, sack) = syns.recv_timeout(Duration::from_secs(5)).unwrap();
    assert!(mss <= 1000, "the server's MSS toward hag is {mss}: the SYN did not carry MSS 1000");
    assert_eq!(shift, 2, "the SYN's window scale (hag's default is {default_shift})");
    assert_ne!(default_shift, 2);
    assert!(sack);
    // Options it cannot: a TFO cookie request and MD5 (kind 19): Error 33 listing both kinds.
    let end = exchange(
        &bed,
        CLI,
        &connect([10, 77, 2, 2], 8080, "22 02 13 12 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00"),
        None,
    );
    assert_eq!(end, End::Closed(h("01 03 22 63 1e 02 21 22 13 00 00 00")));

    // Malformed: a NOP among the Connect options. The reply echoes the message after one zero byte, and the
    // message ends in zero bytes.
    let bad = connect([10, 77, 2, 2], 8080, "01 00 00 00");
    let end = exchange(&bed, CLI, &bad, None);
    assert_eq!(end, End::Closed([h("01 09 22 63 1e 08 01 00"), bad.clone()].concat()));
    // A loopback destination is malformed too (RFC 8803 §5.2.5), not a policy refusal.
    let loopback = connect([127, 0, 0, 1], 80, "");
    assert_eq!(exchange(&bed, CLI, &loopback, None), End::Closed([h("01 08 22 63 1e 07 01 00"), loopback].concat()));
    // Unsupported Message: a TLV type nobody assigned, and one only a converter sends (Error), each echoed.
    for tlv in ["c8 01 00 00", "1e 01 01 00"] {
        let mut m = libconvert.clone();
        m.extend(h(tlv));
        m[1] += 1;
        assert_eq!(exchange(&bed, CLI, &m, None), End::Closed([h("01 09 22 63 1e 08 02 00"), m].concat()), "{tlv}");
    }
    // A total length of zero: a reset, no reply.
    assert_eq!(exchange(&bed, CLI, &h("01 00 22 63"), None), End::Reset(Vec::new()));
    let log = bed.hag.log();
    assert!(log.contains("refused with a reset"), "{log}");
}

#[test]
fn connect_failures_carry_what_the_network_said() {
    let bed = bed();
    // Port 8081: srv's firewall answers with ICMP port unreachable; 8082: nothing listens, a reset.
    bed.srv
        .exec_ok(
            "nft",
            &["add table inet t; add chain inet t in { type filter hook input priority 0; }; \
               add rule inet t in tcp dport 8081 reject with icmp type port-unreachable"],
        )
        .unwrap();
    let cases = [
        (connect([10, 77, 2, 2], 8081, ""), "01 02 22 63 1e 01 61 03", "ICMP port unreachable: 97, code 3"),
        (connect([203, 0, 113, 9], 80, ""), "01 02 22 63 1e 01 61 0d", "ICMP administratively prohibited: 97, code 13"),
        (connect([10, 77, 2, 2], 8082, ""), "01 02 22 63 1e 01 60 00", "a reset from the destination: 96"),
    ];
    for (request, reply, what) in cases {
        assert_eq!(exchange(&bed, CLI, &request, None), End::Closed(h(reply)), "{what}\n{}", bed.hag.log());
    }
    // No IPv6 route on hag: a local failure, the converter's Network Failure (65).
    let mut v6 = connect([0; 4], 80, "");
    v6[8..24].copy_from_slice(&"2001:db8:99::1".parse::<std::net::Ipv6Addr>().unwrap().octets());
    assert_eq!(exchange(&bed, CLI, &v6, None), End::Closed(h("01 02 22 63 1e 01 41 00")), "{}", bed.hag.log());
}

#[test]
fn error_replies_are_rate_limited_per_source() {
    let bed = bed();
    let noise = h("01 02 22 63 00 00 00 00");
    let malformed = [h("01 04 22 63 1e 03 01 00"), noise.clone()].concat();
    let ends: Vec<End> = (0..80).map(|_| exchange(&bed, CLI, &noise, None)).collect();
    let answered = ends.iter().filter(|e| **e == End::Closed(malformed.clone())).count();
    let reset = ends.iter().filter(|e| **e == End::Reset(Vec::new())).count();
    assert_eq!(answered + reset, 80, "{ends:?}");
    // 64 at once, and a few more refilled while the 80 ran.
    assert!((64..80).contains(&answered), "{answered} answered, {reset} reset");
    // Another source has its own budget.
    assert_eq!(exchange(&bed, CLI2, &noise, None), End::Closed(malformed));
    let log = bed.hag.log();
    assert!(log.contains("over the error reply budget"), "{log}");
}
