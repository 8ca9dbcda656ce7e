//! The "system stack" NAT: LAN TCP packets read from the TUN device are rewritten so that the kernel's own
//! TCP terminates them on a local listener bound to the TUN address; the listener's replies get the reverse
//! rewrite and go back to the LAN client. Sans-IO: packets and `now` in, rewritten packets and verdicts out.
//!
//! ```text
//!   LAN -> TUN:   client:cport -> dest:dport      rewritten to   fake:fport -> listener:lport  (written to TUN)
//!   TUN -> LAN:   listener:lport -> fake:fport    rewritten to   dest:dport -> client:cport   (written to TUN)
//! ```
//!
//! Invariants:
//! - one flow <-> one fake endpoint (address from the fake pool x port from the port range); the flow table is
//!   keyed by the fake endpoint (the peer address the listener sees on accept), so [`Nat::lookup`] gives the
//!   original destination to the accept loop;
//! - a rewritten packet always carries valid IPv4 header and TCP checksums (incremental RFC 1624 updates, which
//!   stay valid because we only swap addresses and ports). With TUN offload a packet may be a GSO super-packet
//!   (up to 64 KiB, many segments) whose TCP checksum is still partial ([`TcpChecksum::Partial`]: the field holds
//!   only the pseudo-header sum, the kernel completes it); it is rewritten in place the same way, only the
//!   pseudo-header part (the addresses) is patched, and it stays partial. No packet is ever split or copied;
//! - fake endpoints are handed out round-robin over the whole pool from a start the caller picks (hcpe: at
//!   random, so a restart does not reuse its previous run's endpoints either), so a freed endpoint is reused
//!   as late as possible (the kernel may still hold a TIME_WAIT socket for it); when every endpoint is taken the SYN is
//!   dropped and [`NatCounters::exhausted`] counts it: the pool never runs out silently;
//! - entries expire: after an RST or FINs both ways (`closed_timeout`), before establishment (`syn_timeout`),
//!   and when idle (`idle_timeout`), all driven by [`Nat::expire`] with the caller's clock;
//! - everything that is not TCP over IPv4/IPv6 for a configured family is dropped with a reason, never
//!   forwarded unrewritten.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use etherparse::{IpNumber, IpSlice, TcpHeaderSlice};

#[cfg(test)]
mod tests;

/// Why a packet was not forwarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// Not a parseable IPv4/IPv6 packet (or truncated).
    Malformed,
    /// IP but not TCP (UDP, ICMP, ...): not ours to convert.
    NotTcp,
    /// An IP fragment: policy routing only sends whole TCP segments here; we do not reassemble.
    Fragment,
    /// The address family has no listener configured.
    FamilyDisabled,
    /// A non-SYN segment of a flow we do not know (expired, or from before a restart).
    NoFlow,
    /// A new flow while every fake endpoint is in use.
    Exhausted,
}

/// What the TCP checksum field of a packet holds (the TUN device's virtio-net header says which).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TcpChecksum {
    /// The complete checksum over pseudo-header, TCP header and payload (what a wire packet carries).
    Complete,
    /// CHECKSUM_PARTIAL (virtio-net `NEEDS_CSUM`): the field holds the folded, uncomplemented pseudo-header
    /// sum and whoever transmits the packet sums from `start` to the end over it, storing the result at
    /// `start + offset`. Only the addresses are in it, not the ports. A packet whose `start`/`offset` do not
    /// name its TCP checksum field is dropped as malformed (we would not know what the field holds).
    Partial { start: u16, offset: u16 },
}

/// Outcome of [`Nat::process`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The packet was rewritten in place; write it back into the TUN device.
    Forward,
    /// Do not write the packet anywhere.
    Drop(DropReason),
}

/// One address family's side of the NAT: the listener the kernel terminates flows on, and the fake source
/// endpoints flows are given. The fake addresses must be routed into the TUN device (inside its subnet) and
/// must not include the listener address.
#[derive(Debug, Clone)]
pub struct FamilyConfig {
    /// Address and port of the local listener bound to the TUN address.
    pub listener: SocketAddr,
    /// First fake source address; the pool is `pool_size` consecutive addresses from here.
    pub pool_start: IpAddr,
    /// Number of consecutive fake source addresses.
    pub pool_size: u32,
    /// Fake source ports, inclusive.
    pub ports: (u16, u16),
}

impl FamilyConfig {
    /// Number of distinct fake endpoints (concurrent flows) this family can hold.
    pub fn capacity(&self) -> u64 {
        let ports = u64::from(self.ports.1.saturating_sub(self.ports.0)) + 1;
        u64::from(self.pool_size) * ports
    }
}

/// How long entries live.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// A flow whose handshake never completed.
    pub syn: Duration,
    /// An established flow with no packet in either direction.
    pub idle: Duration,
    /// After an RST, or after FINs were seen in both directions (covers the last ACK and retransmits).
    pub closed: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts { syn: Duration::from_secs(30), idle: Duration::from_secs(7440), closed: Duration::from_secs(10) }
    }
}

/// NAT configuration; a family left `None` drops its packets.
#[derive(Debug, Clone)]
pub struct NatConfig {
    pub v4: Option<FamilyConfig>,
    pub v6: Option<FamilyConfig>,
    pub timeouts: Timeouts,
    /// Where the round-robin over each pool starts. hcpe picks it at random: a restarted hcpe starting where
    /// the previous run started would hand out the endpoints that still have TIME_WAIT sockets of that run in
    /// the kernel, which drop the new flows' SYNs (the client retries after 1 s, 3 s).
    pub first_endpoint: u64,
}

/// The original flow behind a fake endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Flow {
    /// The LAN client.
    pub client: SocketAddr,
    /// Where the client wanted to go.
    pub dest: SocketAddr,
}

/// Plain counters owned by the NAT; the daemon exports them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NatCounters {
    /// Packets rewritten client -> listener.
    pub to_listener: u64,
    /// Packets rewritten listener -> client.
    pub to_client: u64,
    /// Flows created.
    pub flows_created: u64,
    /// Flows removed by [`Nat::expire`].
    pub flows_expired: u64,
    /// New flows refused because every fake endpoint was in use.
    pub exhausted: u64,
    pub dropped_malformed: u64,
    pub dropped_not_tcp: u64,
    pub dropped_fragment: u64,
    pub dropped_family_disabled: u64,
    pub dropped_no_flow: u64,
}

impl NatCounters {
    fn count_drop(&mut self, reason: DropReason) {
        match reason {
            DropReason::Malformed => self.dropped_malformed += 1,
            DropReason::NotTcp => self.dropped_not_tcp += 1,
            DropReason::Fragment => self.dropped_fragment += 1,
            DropReason::FamilyDisabled => self.dropped_family_disabled += 1,
            DropReason::NoFlow => self.dropped_no_flow += 1,
            DropReason::Exhausted => self.exhausted += 1,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// SYN seen from the client, no ACK from it yet.
    SynSent,
    Established,
    /// RST seen, or FIN seen both ways.
    Closed,
}

#[derive(Debug, Clone)]
struct Entry {
    flow: Flow,
    state: State,
    fin_from_client: bool,
    fin_from_listener: bool,
    last_seen: Instant,
}

impl Entry {
    fn deadline(&self, t: &Timeouts) -> Instant {
        let ttl = match self.state {
            State::SynSent => t.syn,
            State::Established => t.idle,
            State::Closed => t.closed,
        };
        self.last_seen + ttl
    }

    fn observe(&mut self, from_client: bool, syn: bool, ack: bool, fin: bool, rst: bool, now: Instant) {
        self.last_seen = now;
        if self.state == State::Closed {
            return;
        }
        if rst {
            self.state = State::Closed;
            return;
        }
        if from_client {
            self.fin_from_client |= fin;
            if ack && !syn && self.state == State::SynSent {
                self.state = State::Established;
            }
        } else {
            self.fin_from_listener |= fin;
        }
        if self.fin_from_client && self.fin_from_listener {
            self.state = State::Closed;
        }
    }
}

/// Fake endpoint pool of one family, handed out round-robin.
#[derive(Debug)]
struct Pool {
    cfg: FamilyConfig,
    capacity: u64,
    cursor: u64,
    in_use: u64,
}

impl Pool {
    fn new(cfg: FamilyConfig, first: u64) -> Self {
        let capacity = cfg.capacity();
        Pool { cfg, capacity, cursor: first % capacity, in_use: 0 }
    }

    fn endpoint(&self, index: u64) -> SocketAddr {
        let ports = u64::from(self.cfg.ports.1 - self.cfg.ports.0) + 1;
        // Address-minor order: consecutive flows differ in address first, spreading load across the pool.
        let addr_index = index % u64::from(self.cfg.pool_size);
        let port = self.cfg.ports.0 + (index / u64::from(self.cfg.pool_size) % ports) as u16;
        let ip = match self.cfg.pool_start {
            IpAddr::V4(a) => IpAddr::V4(Ipv4Addr::from(u32::from(a).wrapping_add(addr_index as u32))),
            IpAddr::V6(a) => IpAddr::V6(Ipv6Addr::from(u128::from(a).wrapping_add(u128::from(addr_index)))),
        };
        SocketAddr::new(ip, port)
    }

    /// Next free endpoint after the cursor; `None` when every endpoint is in use.
    fn allocate(&mut self, taken: &HashMap<SocketAddr, Entry>) -> Option<SocketAddr> {
        if self.in_use >= self.capacity {
            return None;
        }
        // At least one endpoint is free, so this loop ends within `capacity` steps.
        loop {
            let candidate = self.endpoint(self.cursor);
            self.cursor = (self.cursor + 1) % self.capacity;
            if !taken.contains_key(&candidate) {
                self.in_use += 1;
                return Some(candidate);
            }
        }
    }
}

/// The NAT state: flow table plus both families' pools.
#[derive(Debug)]
pub struct Nat {
    v4: Option<Pool>,
    v6: Option<Pool>,
    timeouts: Timeouts,
    /// Fake endpoint -> entry. The key is what the listener sees as the peer address.
    by_fake: HashMap<SocketAddr, Entry>,
    /// Original (client, dest) -> fake endpoint.
    by_flow: HashMap<Flow, SocketAddr>,
    counters: NatCounters,
}

/// Where the fields the NAT rewrites sit in their headers: IPv4 (RFC 791), IPv6 (RFC 8200), TCP (RFC 9293,
/// from the start of the TCP header).
mod field {
    use std::ops::Range;

    pub const IPV4_CHECKSUM: Range<usize> = 10..12;
    pub const IPV4_SRC: Range<usize> = 12..16;
    pub const IPV4_DST: Range<usize> = 16..20;
    pub const IPV6_SRC: Range<usize> = 8..24;
    pub const IPV6_DST: Range<usize> = 24..40;
    pub const TCP_SRC_PORT: Range<usize> = 0..2;
    pub const TCP_DST_PORT: Range<usize> = 2..4;
    pub const TCP_CHECKSUM: Range<usize> = 16..18;
}

/// A 16-bit field of `packet`, big-endian.
fn be16(packet: &[u8], at: &std::ops::Range<usize>) -> u16 {
    u16::from_be_bytes([packet[at.start], packet[at.start + 1]])
}

/// Where a parsed packet's headers are, found by parsing once.
struct Layout {
    v6: bool,
    src: SocketAddr,
    dst: SocketAddr,
    /// Offset of the TCP header.
    tcp: usize,
    syn: bool,
    ack: bool,
    fin: bool,
    rst: bool,
}

impl Layout {
    /// The address fields of the IP header.
    fn addresses(&self) -> [std::ops::Range<usize>; 2] {
        if self.v6 { [field::IPV6_SRC, field::IPV6_DST] } else { [field::IPV4_SRC, field::IPV4_DST] }
    }

    /// A field of the TCP header, as a range of the packet.
    fn tcp_field(&self, f: std::ops::Range<usize>) -> std::ops::Range<usize> {
        self.tcp + f.start..self.tcp + f.end
    }
}

/// Checks the IP and TCP headers (etherparse) and records where they are: every field of [`field`] of the
/// packet's family lies inside `packet` afterwards.
fn parse(packet: &[u8]) -> Result<Layout, DropReason> {
    let ip = IpSlice::from_slice(packet).map_err(|_| DropReason::Malformed)?;
    let payload = ip.payload();
    if payload.fragmented {
        return Err(DropReason::Fragment);
    }
    if payload.ip_number != IpNumber::TCP {
        return Err(DropReason::NotTcp);
    }
    let tcp = TcpHeaderSlice::from_slice(payload.payload).map_err(|_| DropReason::Malformed)?;
    let offset = payload.payload.as_ptr() as usize - packet.as_ptr() as usize;
    Ok(Layout {
        v6: matches!(ip, IpSlice::Ipv6(_)),
        src: SocketAddr::new(ip.source_addr(), tcp.source_port()),
        dst: SocketAddr::new(ip.destination_addr(), tcp.destination_port()),
        tcp: offset,
        syn: tcp.syn(),
        ack: tcp.ack(),
        fin: tcp.fin(),
        rst: tcp.rst(),
    })
}

impl Nat {
    pub fn new(config: NatConfig) -> Self {
        Nat {
            v4: config.v4.map(|c| Pool::new(c, config.first_endpoint)),
            v6: config.v6.map(|c| Pool::new(c, config.first_endpoint)),
            timeouts: config.timeouts,
            by_fake: HashMap::new(),
            by_flow: HashMap::new(),
            counters: NatCounters::default(),
        }
    }

    /// Rewrites one IP packet read from the TUN device in place (complete checksums).
    pub fn process(&mut self, packet: &mut [u8], now: Instant) -> Verdict {
        self.process_with(packet, TcpChecksum::Complete, now)
    }

    /// Rewrites one IP packet (or GSO super-packet) in place; `csum` says what its TCP checksum field holds,
    /// and it holds the same kind afterwards.
    pub fn process_with(&mut self, packet: &mut [u8], csum: TcpChecksum, now: Instant) -> Verdict {
        let verdict = self.process_inner(packet, csum, now);
        match verdict {
            Ok(true) => self.counters.to_listener += 1,
            Ok(false) => self.counters.to_client += 1,
            Err(reason) => self.counters.count_drop(reason),
        }
        match verdict {
            Ok(_) => Verdict::Forward,
            Err(reason) => Verdict::Drop(reason),
        }
    }

    /// Ok(true) when rewritten towards the listener, Ok(false) when towards the client.
    fn process_inner(&mut self, packet: &mut [u8], csum: TcpChecksum, now: Instant) -> Result<bool, DropReason> {
        let l = parse(packet)?;
        if let TcpChecksum::Partial { start, offset } = csum
            && (usize::from(start) != l.tcp || usize::from(offset) != field::TCP_CHECKSUM.start)
        {
            return Err(DropReason::Malformed);
        }
        let listener = match (l.v6, &self.v4, &self.v6) {
            (false, Some(p), _) => p.cfg.listener,
            (true, _, Some(p)) => p.cfg.listener,
            _ => return Err(DropReason::FamilyDisabled),
        };
        if l.src == listener {
            // Listener -> fake endpoint: back to the client, appearing to come from the destination.
            let entry = self.by_fake.get_mut(&l.dst).ok_or(DropReason::NoFlow)?;
            entry.observe(false, l.syn, l.ack, l.fin, l.rst, now);
            let flow = entry.flow;
            rewrite(packet, &l, csum, flow.dest, flow.client);
            return Ok(false);
        }
        let key = Flow { client: l.src, dest: l.dst };
        let existing = self.by_flow.get(&key).copied();
        let fake = match existing {
            // A fresh SYN on a tuple whose previous connection closed: a new connection, a new endpoint,
            // so the kernel does not see it as a segment of the old (maybe TIME_WAIT) socket.
            Some(fake) if l.syn && !l.ack && self.by_fake.get(&fake).is_some_and(|e| e.state == State::Closed) => {
                self.remove(fake);
                self.create(key, l.v6, now)?
            }
            Some(fake) => fake,
            None if l.syn && !l.ack && !l.rst => self.create(key, l.v6, now)?,
            None => return Err(DropReason::NoFlow),
        };
        let entry = self.by_fake.get_mut(&fake).expect("by_flow and by_fake agree");
        entry.observe(true, l.syn, l.ack, l.fin, l.rst, now);
        rewrite(packet, &l, csum, fake, listener);
        Ok(true)
    }

    fn create(&mut self, flow: Flow, v6: bool, now: Instant) -> Result<SocketAddr, DropReason> {
        let pool = if v6 { self.v6.as_mut() } else { self.v4.as_mut() }.ok_or(DropReason::FamilyDisabled)?;
        let fake = pool.allocate(&self.by_fake).ok_or(DropReason::Exhausted)?;
        let entry =
            Entry { flow, state: State::SynSent, fin_from_client: false, fin_from_listener: false, last_seen: now };
        self.by_fake.insert(fake, entry);
        self.by_flow.insert(flow, fake);
        self.counters.flows_created += 1;
        Ok(fake)
    }

    fn remove(&mut self, fake: SocketAddr) {
        if let Some(entry) = self.by_fake.remove(&fake) {
            self.by_flow.remove(&entry.flow);
            let pool = if fake.is_ipv6() { self.v6.as_mut() } else { self.v4.as_mut() };
            if let Some(pool) = pool {
                pool.in_use -= 1;
            }
        }
    }

    /// An RST answering `packet` when it is a client segment of a flow we do not know (e.g. opened before a
    /// restart): the client then sees a reset at once instead of retransmitting into silence. `None` for
    /// anything else (RSTs are never answered, known flows and listener packets get nothing).
    pub fn reset_for(&self, packet: &[u8]) -> Option<Vec<u8>> {
        let ip = IpSlice::from_slice(packet).ok()?;
        let payload = ip.payload();
        if payload.fragmented || payload.ip_number != IpNumber::TCP {
            return None;
        }
        let tcp = TcpHeaderSlice::from_slice(payload.payload).ok()?;
        let src = SocketAddr::new(ip.source_addr(), tcp.source_port());
        let dst = SocketAddr::new(ip.destination_addr(), tcp.destination_port());
        let listener = match src {
            SocketAddr::V4(_) => self.v4.as_ref().map(|p| p.cfg.listener),
            SocketAddr::V6(_) => self.v6.as_ref().map(|p| p.cfg.listener),
        }?;
        if tcp.rst() || src == listener || self.by_flow.contains_key(&Flow { client: src, dest: dst }) {
            return None;
        }
        // RFC 9293 3.10.7.1: with ACK set, RST with seq = SEG.ACK; otherwise seq 0, ACK of everything seen.
        let data_len = (payload.payload.len() - tcp.slice().len()) as u32;
        let builder = match (dst.ip(), src.ip()) {
            (IpAddr::V4(d), IpAddr::V4(s)) => etherparse::PacketBuilder::ipv4(d.octets(), s.octets(), 64),
            (IpAddr::V6(d), IpAddr::V6(s)) => etherparse::PacketBuilder::ipv6(d.octets(), s.octets(), 64),
            _ => return None,
        };
        let builder = if tcp.ack() {
            builder.tcp(dst.port(), src.port(), tcp.acknowledgment_number(), 0).rst()
        } else {
            let ack = tcp
                .sequence_number()
                .wrapping_add(data_len)
                .wrapping_add(u32::from(tcp.syn()))
                .wrapping_add(u32::from(tcp.fin()));
            builder.tcp(dst.port(), src.port(), 0, 0).rst().ack(ack)
        };
        let mut out = Vec::with_capacity(60);
        builder.write(&mut out, &[]).ok()?;
        Some(out)
    }

    /// The original flow behind the peer address an accepted listener socket sees.
    pub fn lookup(&self, fake_peer: SocketAddr) -> Option<Flow> {
        self.by_fake.get(&normalize(fake_peer)).map(|e| e.flow)
    }

    /// Removes every entry whose deadline has passed; returns how many.
    pub fn expire(&mut self, now: Instant) -> usize {
        let timeouts = self.timeouts;
        let due: Vec<SocketAddr> =
            self.by_fake.iter().filter(|(_, e)| e.deadline(&timeouts) <= now).map(|(k, _)| *k).collect();
        for fake in &due {
            self.remove(*fake);
        }
        self.counters.flows_expired += due.len() as u64;
        due.len()
    }

    /// Number of flows in the table.
    pub fn len(&self) -> usize {
        self.by_fake.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_fake.is_empty()
    }

    pub fn counters(&self) -> &NatCounters {
        &self.counters
    }
}

/// An IPv4 peer accepted on a dual-stack socket shows up as ::ffff:a.b.c.d.
fn normalize(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), v6.port()),
            None => addr,
        },
        v4 => v4,
    }
}

/// The address as it sits in its header: the first 4 (IPv4) or all 16 bytes (no allocation: this runs for
/// every packet).
fn ip_octets(ip: IpAddr) -> ([u8; 16], usize) {
    let mut out = [0u8; 16];
    match ip {
        IpAddr::V4(a) => {
            out[..4].copy_from_slice(&a.octets());
            (out, 4)
        }
        IpAddr::V6(a) => (a.octets(), 16),
    }
}

/// Sets source and destination (address and port) and patches the checksums incrementally. A partial TCP
/// checksum is the uncomplemented pseudo-header sum S, so with HC = ~S the RFC 1624 update gives
/// S' = ~checksum_replace(~S, m, m'); the ports are not in it.
fn rewrite(packet: &mut [u8], l: &Layout, csum: TcpChecksum, src: SocketAddr, dst: SocketAddr) {
    let partial = matches!(csum, TcpChecksum::Partial { .. });
    let tcp_csum_at = l.tcp_field(field::TCP_CHECKSUM);
    let stored = be16(packet, &tcp_csum_at);
    let mut tcp_csum = if partial { !stored } else { stored };
    // IPv6 has no header checksum.
    let mut ip_csum = (!l.v6).then(|| be16(packet, &field::IPV4_CHECKSUM));

    let [src_at, dst_at] = l.addresses();
    for (at, (bytes, n)) in [(src_at, ip_octets(src.ip())), (dst_at, ip_octets(dst.ip()))] {
        let (old, new) = (&packet[at.clone()], &bytes[..n]);
        // The addresses are in the TCP pseudo-header, and (IPv4) in the IP header checksum.
        tcp_csum = checksum_replace(tcp_csum, old, new);
        if let Some(c) = &mut ip_csum {
            *c = checksum_replace(*c, old, new);
        }
        packet[at].copy_from_slice(new);
    }
    for (at, port) in [(l.tcp_field(field::TCP_SRC_PORT), src.port()), (l.tcp_field(field::TCP_DST_PORT), dst.port())] {
        let new = port.to_be_bytes();
        if !partial {
            tcp_csum = checksum_replace(tcp_csum, &packet[at.clone()], &new);
        }
        packet[at].copy_from_slice(&new);
    }
    let stored = if partial { !tcp_csum } else { tcp_csum };
    packet[tcp_csum_at].copy_from_slice(&stored.to_be_bytes());
    if let Some(c) = ip_csum {
        packet[field::IPV4_CHECKSUM].copy_from_slice(&c.to_be_bytes());
    }
}

/// Incremental Internet checksum update, RFC 1624 eqn. 3: HC' = ~(~HC + ~m + m'), over equal-length,
/// even-length `old`/`new`. Hand-written: etherparse only computes checksums from scratch, which would cost
/// a pass over the payload of every packet.
fn checksum_replace(checksum: u16, old: &[u8], new: &[u8]) -> u16 {
    debug_assert_eq!(old.len(), new.len());
    let mut sum = u32::from(!checksum);
    for (o, n) in old.chunks_exact(2).zip(new.chunks_exact(2)) {
        sum += u32::from(!u16::from_be_bytes([o[0], o[1]]));
        sum += u32::from(u16::from_be_bytes([n[0], n[1]]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}
