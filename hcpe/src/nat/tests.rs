//! Crafted packets through the NAT: both rewrite directions, checksums checked from scratch by etherparse,
//! expiry, exhaustion, and what is not TCP.

use super::*;
use etherparse::{IpSlice, PacketBuilder, TcpHeaderSlice};

const CLIENT4: &str = "192.168.1.10:40000";
const DEST4: &str = "203.0.113.7:443";
const LISTENER4: &str = "10.255.0.1:7000";
const CLIENT6: &str = "[fd00:1::10]:40000";
const DEST6: &str = "[2001:db8::7]:443";
const LISTENER6: &str = "[fd00:ff::1]:7000";

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

#[derive(Clone, Copy, Default)]
struct Flags {
    syn: bool,
    ack: bool,
    fin: bool,
    rst: bool,
}
const SYN: Flags = Flags { syn: true, ack: false, fin: false, rst: false };
const SYNACK: Flags = Flags { syn: true, ack: true, fin: false, rst: false };
const ACK: Flags = Flags { syn: false, ack: true, fin: false, rst: false };
const FIN: Flags = Flags { syn: false, ack: true, fin: true, rst: false };
const RST: Flags = Flags { syn: false, ack: false, fin: false, rst: true };
const FIN_NO_ACK: Flags = Flags { syn: false, ack: false, fin: true, rst: false };

fn tcp_packet(src: SocketAddr, dst: SocketAddr, f: Flags, payload: &[u8]) -> Vec<u8> {
    let builder = match (src.ip(), dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => PacketBuilder::ipv4(s.octets(), d.octets(), 64),
        (IpAddr::V6(s), IpAddr::V6(d)) => PacketBuilder::ipv6(s.octets(), d.octets(), 64),
        _ => panic!("mixed families"),
    };
    let mut b = builder.tcp(src.port(), dst.port(), 1000, 64000);
    if f.syn {
        b = b.syn();
    }
    if f.ack {
        b = b.ack(5000);
    }
    if f.fin {
        b = b.fin();
    }
    if f.rst {
        b = b.rst();
    }
    let mut out = Vec::new();
    b.write(&mut out, payload).unwrap();
    out
}

/// Source, destination, payload, and whether every checksum is right, recomputed from scratch.
fn inspect(packet: &[u8]) -> (SocketAddr, SocketAddr, Vec<u8>, bool) {
    let ip = IpSlice::from_slice(packet).unwrap();
    let tcp_bytes = ip.payload().payload;
    let tcp = TcpHeaderSlice::from_slice(tcp_bytes).unwrap();
    let payload = &tcp_bytes[tcp.slice().len()..];
    let ok = match &ip {
        IpSlice::Ipv4(v4) => {
            let h = v4.header().to_header();
            h.calc_header_checksum() == h.header_checksum
                && tcp.to_header().calc_checksum_ipv4(&h, payload).unwrap() == tcp.checksum()
        }
        IpSlice::Ipv6(v6) => {
            let h = v6.header().to_header();
            tcp.to_header().calc_checksum_ipv6(&h, payload).unwrap() == tcp.checksum()
        }
    };
    (
        SocketAddr::new(ip.source_addr(), tcp.source_port()),
        SocketAddr::new(ip.destination_addr(), tcp.destination_port()),
        payload.to_vec(),
        ok,
    )
}

fn config(pool4: u32, ports: (u16, u16)) -> NatConfig {
    NatConfig {
        v4: Some(FamilyConfig {
            listener: sa(LISTENER4),
            pool_start: "10.255.0.2".parse().unwrap(),
            pool_size: pool4,
            ports,
        }),
        v6: Some(FamilyConfig {
            listener: sa(LISTENER6),
            pool_start: "fd00:ff::100".parse().unwrap(),
            pool_size: 16,
            ports,
        }),
        first_endpoint: 0,
        timeouts: Timeouts {
            syn: Duration::from_secs(30),
            idle: Duration::from_secs(300),
            closed: Duration::from_secs(10),
        },
    }
}

/// Client SYN in; returns the fake endpoint the listener sees.
fn open(nat: &mut Nat, client: &str, dest: &str, now: Instant) -> SocketAddr {
    let mut p = tcp_packet(sa(client), sa(dest), SYN, &[]);
    assert_eq!(nat.process(&mut p, now), Verdict::Forward);
    inspect(&p).0
}

fn roundtrip(client: &str, dest: &str, listener: &str) {
    let mut nat = Nat::new(config(16, (10000, 60000)));
    let now = Instant::now();
    let payload = b"GET / HTTP/1.1\r\nHost: example\r\n\r\n";

    let mut syn = tcp_packet(sa(client), sa(dest), SYN, payload);
    assert_eq!(nat.process(&mut syn, now), Verdict::Forward);
    let (fake, to, body, ok) = inspect(&syn);
    assert!(ok, "checksums valid after client->listener rewrite");
    assert_eq!(to, sa(listener));
    assert_ne!(fake.ip(), sa(listener).ip());
    assert_eq!(body, payload);
    assert_eq!(nat.lookup(fake), Some(Flow { client: sa(client), dest: sa(dest) }));

    let mut reply = tcp_packet(sa(listener), fake, SYNACK, b"HTTP/1.1 200 OK\r\n");
    assert_eq!(nat.process(&mut reply, now), Verdict::Forward);
    let (from, to, body, ok) = inspect(&reply);
    assert!(ok, "checksums valid after listener->client rewrite");
    assert_eq!(from, sa(dest));
    assert_eq!(to, sa(client));
    assert_eq!(body, b"HTTP/1.1 200 OK\r\n");

    // Later segments of the same flow map to the same fake endpoint.
    let mut ack = tcp_packet(sa(client), sa(dest), ACK, &[7; 1400]);
    assert_eq!(nat.process(&mut ack, now), Verdict::Forward);
    let (again, _, _, ok) = inspect(&ack);
    assert!(ok);
    assert_eq!(again, fake);
    assert_eq!(nat.len(), 1);
    assert_eq!(nat.counters().to_listener, 2);
    assert_eq!(nat.counters().to_client, 1);
}

#[test]
fn ipv4_rewrite_both_directions_with_valid_checksums() {
    roundtrip(CLIENT4, DEST4, LISTENER4);
}

#[test]
fn ipv6_rewrite_both_directions_with_valid_checksums() {
    roundtrip(CLIENT6, DEST6, LISTENER6);
}

#[test]
fn ipv4_mapped_peer_is_found() {
    let mut nat = Nat::new(config(16, (10000, 60000)));
    let fake = open(&mut nat, CLIENT4, DEST4, Instant::now());
    let IpAddr::V4(v4) = fake.ip() else { panic!() };
    let mapped = SocketAddr::new(IpAddr::V6(v4.to_ipv6_mapped()), fake.port());
    assert_eq!(nat.lookup(mapped).unwrap().dest, sa(DEST4));
}

#[test]
fn distinct_flows_get_distinct_fake_endpoints() {
    let mut nat = Nat::new(config(4, (10000, 10001)));
    let now = Instant::now();
    let mut seen = std::collections::HashSet::new();
    for port in 0..8u16 {
        let client = format!("192.168.1.10:{}", 40000 + port);
        assert!(seen.insert(open(&mut nat, &client, DEST4, now)));
    }
    assert_eq!(nat.len(), 8);
}

#[test]
fn non_tcp_is_dropped_and_counted() {
    let mut nat = Nat::new(config(16, (10000, 60000)));
    let now = Instant::now();
    let mut udp = Vec::new();
    PacketBuilder::ipv4([192, 168, 1, 10], [8, 8, 8, 8], 64).udp(5353, 53).write(&mut udp, b"q").unwrap();
    let before = udp.clone();
    assert_eq!(nat.process(&mut udp, now), Verdict::Drop(DropReason::NotTcp));
    assert_eq!(udp, before, "dropped packets are left untouched");
    let mut icmp = Vec::new();
    PacketBuilder::ipv6(sa(CLIENT6).ip().to_string().parse::<Ipv6Addr>().unwrap().octets(), [0; 16], 64)
        .icmpv6_echo_request(1, 1)
        .write(&mut icmp, b"ping")
        .unwrap();
    assert_eq!(nat.process(&mut icmp, now), Verdict::Drop(DropReason::NotTcp));
    assert_eq!(nat.process(&mut [0x45, 0, 0], now), Verdict::Drop(DropReason::Malformed));
    assert_eq!(nat.process(&mut [], now), Verdict::Drop(DropReason::Malformed));
    assert_eq!(nat.counters().dropped_not_tcp, 2);
    assert_eq!(nat.counters().dropped_malformed, 2);
    assert!(nat.is_empty());
}

#[test]
fn truncated_tcp_is_malformed_not_a_panic() {
    let mut nat = Nat::new(config(16, (10000, 60000)));
    let full = tcp_packet(sa(CLIENT4), sa(DEST4), SYN, b"abc");
    for cut in 0..full.len() {
        let mut p = full[..cut].to_vec();
        assert_ne!(nat.process(&mut p, Instant::now()), Verdict::Forward, "cut at {cut}");
    }
}

#[test]
fn fragments_are_dropped() {
    let mut nat = Nat::new(config(16, (10000, 60000)));
    let mut p = tcp_packet(sa(CLIENT4), sa(DEST4), SYN, b"abc");
    p[6] |= 0x20; // more fragments
    assert_eq!(nat.process(&mut p, Instant::now()), Verdict::Drop(DropReason::Fragment));
}

#[test]
fn family_without_listener_is_dropped() {
    let mut cfg = config(16, (10000, 60000));
    cfg.v6 = None;
    let mut nat = Nat::new(cfg);
    let mut p = tcp_packet(sa(CLIENT6), sa(DEST6), SYN, &[]);
    assert_eq!(nat.process(&mut p, Instant::now()), Verdict::Drop(DropReason::FamilyDisabled));
}

#[test]
fn unknown_flow_without_syn_is_dropped() {
    let mut nat = Nat::new(config(16, (10000, 60000)));
    let now = Instant::now();
    let mut p = tcp_packet(sa(CLIENT4), sa(DEST4), ACK, b"data");
    assert_eq!(nat.process(&mut p, now), Verdict::Drop(DropReason::NoFlow));
    let mut p = tcp_packet(sa(LISTENER4), sa("10.255.0.9:12345"), ACK, b"data");
    assert_eq!(nat.process(&mut p, now), Verdict::Drop(DropReason::NoFlow));
    assert_eq!(nat.counters().dropped_no_flow, 2);
    assert!(nat.is_empty());
}

#[test]
fn exhaustion_is_counted_and_recovers_after_expiry() {
    // 2 addresses x 2 ports = 4 concurrent flows.
    let mut nat = Nat::new(config(2, (10000, 10001)));
    let t0 = Instant::now();
    for port in 0..4u16 {
        open(&mut nat, &format!("192.168.1.10:{}", 40000 + port), DEST4, t0);
    }
    let mut p = tcp_packet(sa("192.168.1.10:41000"), sa(DEST4), SYN, &[]);
    assert_eq!(nat.process(&mut p, t0), Verdict::Drop(DropReason::Exhausted));
    assert_eq!(nat.counters().exhausted, 1);
    assert_eq!(nat.len(), 4);
    // IPv6 has its own pool.
    open(&mut nat, CLIENT6, DEST6, t0);

    // Half-open flows expire after the SYN timeout; then there is room again.
    assert_eq!(nat.expire(t0 + Duration::from_secs(29)), 0);
    assert_eq!(nat.expire(t0 + Duration::from_secs(31)), 5);
    assert!(nat.is_empty());
    let mut p = tcp_packet(sa("192.168.1.10:41000"), sa(DEST4), SYN, &[]);
    assert_eq!(nat.process(&mut p, t0 + Duration::from_secs(32)), Verdict::Forward);
}

/// SYN, SYN-ACK, ACK: the flow is established and lives for the idle timeout.
fn establish(nat: &mut Nat, now: Instant) -> SocketAddr {
    let fake = open(nat, CLIENT4, DEST4, now);
    let mut p = tcp_packet(sa(LISTENER4), fake, SYNACK, &[]);
    assert_eq!(nat.process(&mut p, now), Verdict::Forward);
    let mut p = tcp_packet(sa(CLIENT4), sa(DEST4), ACK, &[]);
    assert_eq!(nat.process(&mut p, now), Verdict::Forward);
    fake
}

#[test]
fn established_flow_expires_when_idle_and_traffic_extends_it() {
    let mut nat = Nat::new(config(16, (10000, 60000)));
    let t0 = Instant::now();
    let fake = establish(&mut nat, t0);
    assert_eq!(nat.expire(t0 + Duration::from_secs(200)), 0, "established outlives the SYN timeout");
    let mut p = tcp_packet(sa(LISTENER4), fake, ACK, b"more");
    assert_eq!(nat.process(&mut p, t0 + Duration::from_secs(250)), Verdict::Forward);
    assert_eq!(nat.expire(t0 + Duration::from_secs(500)), 0, "traffic restarted the idle clock");
    assert_eq!(nat.expire(t0 + Duration::from_secs(551)), 1);
    assert_eq!(nat.lookup(fake), None);
    assert_eq!(nat.counters().flows_expired, 1);
}

#[test]
fn fin_both_ways_expires_after_closed_timeout() {
    let mut nat = Nat::new(config(16, (10000, 60000)));
    let t0 = Instant::now();
    let fake = establish(&mut nat, t0);
    let mut p = tcp_packet(sa(CLIENT4), sa(DEST4), FIN, &[]);
    assert_eq!(nat.process(&mut p, t0), Verdict::Forward);
    assert_eq!(nat.expire(t0 + Duration::from_secs(11)), 0, "half-closed is still open");
    let mut p = tcp_packet(sa(LISTENER4), fake, FIN, &[]);
    assert_eq!(nat.process(&mut p, t0 + Duration::from_secs(12)), Verdict::Forward);
    // The last ACK still gets through, then the entry goes after the closed timeout.
    let mut p = tcp_packet(sa(CLIENT4), sa(DEST4), ACK, &[]);
    assert_eq!(nat.process(&mut p, t0 + Duration::from_secs(12)), Verdict::Forward);
    assert_eq!(nat.expire(t0 + Duration::from_secs(21)), 0);
    assert_eq!(nat.expire(t0 + Duration::from_secs(23)), 1);
    assert!(nat.is_empty());
}

#[test]
fn rst_expires_after_closed_timeout_and_rst_is_forwarded() {
    let mut nat = Nat::new(config(16, (10000, 60000)));
    let t0 = Instant::now();
    let fake = establish(&mut nat, t0);
    let mut p = tcp_packet(sa(LISTENER4), fake, RST, &[]);
    assert_eq!(nat.process(&mut p, t0), Verdict::Forward);
    let (from, to, _, ok) = inspect(&p);
    assert!(ok);
    assert_eq!((from, to), (sa(DEST4), sa(CLIENT4)));
    assert_eq!(nat.expire(t0 + Duration::from_secs(11)), 1);
}

#[test]
fn new_syn_on_closed_tuple_gets_a_new_endpoint() {
    let mut nat = Nat::new(config(16, (10000, 60000)));
    let t0 = Instant::now();
    let fake = establish(&mut nat, t0);
    let mut p = tcp_packet(sa(CLIENT4), sa(DEST4), RST, &[]);
    assert_eq!(nat.process(&mut p, t0), Verdict::Forward);
    let second = open(&mut nat, CLIENT4, DEST4, t0);
    assert_ne!(second, fake);
    assert_eq!(nat.lookup(fake), None);
    assert_eq!(nat.len(), 1);
    // A retransmitted SYN of a live flow keeps its endpoint.
    assert_eq!(open(&mut nat, CLIENT4, DEST4, t0), second);
    assert_eq!(nat.len(), 1);
}

#[test]
fn freed_endpoints_are_reused_last() {
    let mut nat = Nat::new(config(2, (10000, 10003)));
    let t0 = Instant::now();
    let first = open(&mut nat, "192.168.1.10:40000", DEST4, t0);
    nat.expire(t0 + Duration::from_secs(60));
    let mut seen = vec![];
    for port in 1..8u16 {
        seen.push(open(&mut nat, &format!("192.168.1.10:{}", 40000 + port), DEST4, t0 + Duration::from_secs(60)));
    }
    assert!(!seen.contains(&first), "all 7 other endpoints come before the freed one");
}

#[test]
fn checksum_replace_matches_full_recompute_on_edge_values() {
    // Words that sum to the 0xffff/0x0000 boundary exercise end-around carry.
    for (old, new) in [([0xff, 0xff], [0x00, 0x00]), ([0x00, 0x00], [0xff, 0xff]), ([0x12, 0x34], [0xed, 0xcb])] {
        let mut p = tcp_packet(sa(CLIENT4), sa(DEST4), ACK, &[old[0], old[1]]);
        let at = p.len() - 2;
        let tcp_at = 20;
        let csum = u16::from_be_bytes([p[tcp_at + 16], p[tcp_at + 17]]);
        let updated = checksum_replace(csum, &old, &new);
        p[at..].copy_from_slice(&new);
        p[tcp_at + 16..tcp_at + 18].copy_from_slice(&updated.to_be_bytes());
        assert!(inspect(&p).3, "{old:?} -> {new:?}");
    }
}

#[test]
fn unknown_client_segment_gets_an_rst_from_the_destination() {
    let mut nat = Nat::new(config(16, (10000, 60000)));
    let now = Instant::now();
    let mut p = tcp_packet(sa(CLIENT4), sa(DEST4), ACK, b"data");
    assert_eq!(nat.process(&mut p, now), Verdict::Drop(DropReason::NoFlow));
    let rst = nat.reset_for(&p).expect("an RST for an unknown flow");
    let (from, to, body, ok) = inspect(&rst);
    assert!(ok, "valid checksums");
    assert_eq!((from, to), (sa(DEST4), sa(CLIENT4)));
    assert!(body.is_empty());
    let tcp = TcpHeaderSlice::from_slice(IpSlice::from_slice(&rst).unwrap().payload().payload).unwrap();
    assert!(tcp.rst());
    assert_eq!(tcp.sequence_number(), 5000, "seq = the segment's ACK number");

    // IPv6, no ACK flag: RST+ACK acknowledging the segment.
    let p6 = tcp_packet(sa(CLIENT6), sa(DEST6), FIN_NO_ACK, b"xy");
    let rst6 = nat.reset_for(&p6).unwrap();
    let tcp6 = TcpHeaderSlice::from_slice(IpSlice::from_slice(&rst6).unwrap().payload().payload).unwrap();
    assert!(tcp6.rst() && tcp6.ack());
    assert_eq!(tcp6.acknowledgment_number(), 1000 + 2 + 1);
    assert!(inspect(&rst6).3);

    // Never for an RST, a known flow, or the listener's own packets.
    assert!(nat.reset_for(&tcp_packet(sa(CLIENT4), sa(DEST4), RST, &[])).is_none());
    let fake = open(&mut nat, CLIENT4, DEST4, now);
    assert!(nat.reset_for(&tcp_packet(sa(CLIENT4), sa(DEST4), ACK, &[])).is_none());
    assert!(nat.reset_for(&tcp_packet(sa(LISTENER4), fake, ACK, &[])).is_none());
    let mut udp = Vec::new();
    PacketBuilder::ipv4([192, 168, 1, 10], [8, 8, 8, 8], 64).udp(5353, 53).write(&mut udp, b"q").unwrap();
    assert!(nat.reset_for(&udp).is_none());
}

/// Folded 16-bit one's complement sum (no final complement).
fn ones_sum(chunks: &[&[u8]]) -> u16 {
    let mut sum: u64 = 0;
    for c in chunks {
        for pair in c.chunks(2) {
            sum += u64::from(u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]));
        }
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// Offset of the TCP header and the pseudo-header sum of `packet`.
fn pseudo(packet: &[u8]) -> (usize, u16) {
    let ip = IpSlice::from_slice(packet).unwrap();
    let tcp_len = ip.payload().payload.len();
    let off = packet.len() - tcp_len;
    let sum = match ip.source_addr() {
        IpAddr::V4(_) => ones_sum(&[&packet[12..20], &[0, 6], &(tcp_len as u16).to_be_bytes()]),
        IpAddr::V6(_) => ones_sum(&[&packet[8..40], &(tcp_len as u32).to_be_bytes(), &[0, 0, 0, 6]]),
    };
    (off, sum)
}

/// What the kernel hands over with CHECKSUM_PARTIAL: the field holds the pseudo-header sum only.
fn make_partial(packet: &mut [u8]) -> TcpChecksum {
    let (off, sum) = pseudo(packet);
    packet[off + 16..off + 18].copy_from_slice(&sum.to_be_bytes());
    TcpChecksum::Partial { start: off as u16, offset: 16 }
}

/// What the transmitter of a CHECKSUM_PARTIAL packet does: sum from csum_start to the end, complement, store.
fn complete(packet: &mut [u8]) {
    let (off, _) = pseudo(packet);
    let c = !ones_sum(&[&packet[off..]]);
    packet[off + 16..off + 18].copy_from_slice(&c.to_be_bytes());
}

fn partial_super_packet_roundtrip(client: &str, dest: &str, listener: &str) {
    let mut nat = Nat::new(config(16, (10000, 60000)));
    let now = Instant::now();
    let mut syn = tcp_packet(sa(client), sa(dest), SYN, &[]);
    let csum = make_partial(&mut syn);
    assert_eq!(nat.process_with(&mut syn, csum, now), Verdict::Forward);
    let (off, pseudo_after) = pseudo(&syn);
    assert_eq!(&syn[off + 16..off + 18], &pseudo_after.to_be_bytes(), "still partial: the new pseudo-header sum");
    complete(&mut syn);
    let (fake, to, _, ok) = inspect(&syn);
    assert!(ok, "completed checksum valid after client->listener rewrite");
    assert_eq!(to, sa(listener));

    // A 60000-byte GSO super-packet from the listener, rewritten in one piece.
    let body: Vec<u8> = (0..60_000u32).map(|i| (i * 7 + 3) as u8).collect();
    let mut data = tcp_packet(sa(listener), fake, ACK, &body);
    let csum = make_partial(&mut data);
    assert_eq!(nat.process_with(&mut data, csum, now), Verdict::Forward);
    complete(&mut data);
    let (from, to, got, ok) = inspect(&data);
    assert!(ok, "completed checksum valid after listener->client rewrite");
    assert_eq!((from, to), (sa(dest), sa(client)));
    assert_eq!(got, body);
}

#[test]
fn ipv4_partial_checksum_super_packets_are_rewritten_in_place() {
    partial_super_packet_roundtrip(CLIENT4, DEST4, LISTENER4);
}

#[test]
fn ipv6_partial_checksum_super_packets_are_rewritten_in_place() {
    partial_super_packet_roundtrip(CLIENT6, DEST6, LISTENER6);
}

#[test]
fn partial_checksum_elsewhere_than_the_tcp_field_is_malformed() {
    let mut nat = Nat::new(config(16, (10000, 60000)));
    let mut syn = tcp_packet(sa(CLIENT4), sa(DEST4), SYN, &[]);
    let verdict = nat.process_with(&mut syn, TcpChecksum::Partial { start: 20, offset: 6 }, Instant::now());
    assert_eq!(verdict, Verdict::Drop(DropReason::Malformed));
    assert!(nat.is_empty());
}

#[test]
fn the_round_robin_starts_where_the_caller_says() {
    let mut cfg = config(4, (2000, 2001));
    cfg.first_endpoint = 8 + 5;
    let mut nat = Nat::new(cfg);
    let now = Instant::now();
    // Capacity 4 addresses x 2 ports = 8: index 13 % 8 = 5 is the second port of the second address.
    assert_eq!(open(&mut nat, "192.168.1.10:40000", "203.0.113.5:443", now), sa("10.255.0.3:2001"));
    assert_eq!(open(&mut nat, "192.168.1.10:40001", "203.0.113.5:443", now), sa("10.255.0.4:2001"));
}
