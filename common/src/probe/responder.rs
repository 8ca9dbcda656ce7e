//! HAG side of health probing: answers authenticated probe requests.
//!
//! [`Responder::handle`] is sans-IO: the caller passes `now`, the datagram's source address and bytes, and a
//! key lookup; it returns the reply bytes to send back to the same source, or `None` (drop silently).
//! [`serve_udp`] is the thin tokio loop that feeds it from a socket.
//!
//! Invariants:
//! - A reply is produced only for a structurally valid request whose MAC verified under the key of the CPE it
//!   names and whose timestamp is within [`ResponderConfig::max_skew`] of `now`; everything else is dropped
//!   and counted in [`ResponderCounters`], never answered (no oracle, no error replies).
//! - A reply is always shorter than the request it answers (see [`super::wire::REPLY_LEN`]).
//! - Each source (IPv4 address, or IPv6 /64) spends one token of a token bucket per datagram, checked
//!   before any MAC work; the table of buckets holds at most `max_sources` entries, the least recently
//!   seen source is evicted first. Eviction can only refill a source's bucket, so a flood of spoofed
//!   sources can at most let other sources send their burst again, never make the table grow.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use portable_atomic::AtomicU64;
use std::time::{Duration, Instant};

use super::wire;

/// The two clocks the responder needs: monotonic for rate limiting, wall clock for timestamp staleness.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Now {
    /// Monotonic time.
    pub mono: Instant,
    /// Wall clock, since the Unix epoch.
    pub unix: Duration,
}

impl Now {
    /// Reads both clocks. The monotonic one comes from tokio, so it follows a paused test clock.
    pub fn system() -> Now {
        Now { mono: tokio::time::Instant::now().into_std(), unix: crate::clock::system_unix() }
    }
}

/// Responder tuning.
#[derive(Debug, Clone, PartialEq)]
pub struct ResponderConfig {
    /// Accepted distance between a request's timestamp and `now`, both ways (same default as the Auth TLV).
    pub max_skew: Duration,
    /// Tokens added per second to each source's bucket. A CPE probes at 5/s per uplink by default; the
    /// headroom covers several CPEs behind one carrier-grade NAT address.
    pub rate_per_sec: f64,
    /// Bucket size: datagrams a source may send at once.
    pub burst: f64,
    /// Most sources tracked at once.
    pub max_sources: usize,
}

impl Default for ResponderConfig {
    fn default() -> Self {
        ResponderConfig { max_skew: Duration::from_secs(30), rate_per_sec: 50.0, burst: 100.0, max_sources: 4096 }
    }
}

/// Live counters, shared with whoever exports metrics (`Arc`, relaxed atomics).
#[derive(Debug, Default)]
pub struct ResponderCounters {
    /// Datagrams handed to [`Responder::handle`].
    pub received: AtomicU64,
    /// Replies produced.
    pub replied: AtomicU64,
    /// Dropped by the per-source rate limit (before any parsing or MAC work).
    pub rate_limited: AtomicU64,
    /// Not a valid probe request (bad magic, version, kind, lengths, ...).
    pub malformed: AtomicU64,
    /// Valid request naming a CPE id with no key.
    pub unknown_cpe: AtomicU64,
    /// MAC did not verify.
    pub bad_mac: AtomicU64,
    /// MAC verified but the timestamp is outside the skew (usually a CPE with a wrong clock).
    pub stale: AtomicU64,
    /// Sources evicted from the full rate-limit table.
    pub evicted_sources: AtomicU64,
}

/// Plain copy of [`ResponderCounters`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ResponderStats {
    pub received: u64,
    pub replied: u64,
    pub rate_limited: u64,
    pub malformed: u64,
    pub unknown_cpe: u64,
    pub bad_mac: u64,
    pub stale: u64,
    pub evicted_sources: u64,
}

impl ResponderCounters {
    pub fn snapshot(&self) -> ResponderStats {
        let r = |c: &AtomicU64| c.load(Ordering::Relaxed);
        ResponderStats {
            received: r(&self.received),
            replied: r(&self.replied),
            rate_limited: r(&self.rate_limited),
            malformed: r(&self.malformed),
            unknown_cpe: r(&self.unknown_cpe),
            bad_mac: r(&self.bad_mac),
            stale: r(&self.stale),
            evicted_sources: r(&self.evicted_sources),
        }
    }
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    last: Instant,
    /// Key of this source in `RateLimiter::lru`.
    touch: u64,
}

/// Per-source token buckets with a bounded, least-recently-seen-evicted table.
#[derive(Debug)]
struct RateLimiter {
    buckets: HashMap<IpAddr, Bucket>,
    /// touch counter -> source; the first entry is the least recently seen source.
    lru: BTreeMap<u64, IpAddr>,
    next_touch: u64,
}

/// IPv4 addresses stand alone; IPv6 sources are grouped by /64 (one subscriber's prefix), so rotating
/// addresses inside a prefix does not buy more tokens. IPv4-mapped IPv6 is treated as IPv4.
fn source_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let bits = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(Ipv6Addr::from(bits))
        }
        v4 => v4,
    }
}

impl RateLimiter {
    fn new() -> Self {
        RateLimiter { buckets: HashMap::new(), lru: BTreeMap::new(), next_touch: 0 }
    }

    /// Takes one token from `src`'s bucket; false when it is empty. Returns also whether a source was evicted.
    fn allow(&mut self, cfg: &ResponderConfig, now: Instant, src: IpAddr) -> (bool, bool) {
        let key = source_key(src);
        let touch = self.next_touch;
        self.next_touch += 1;
        let mut evicted = false;
        let full = !self.buckets.contains_key(&key) && self.buckets.len() >= cfg.max_sources.max(1);
        let oldest = if full { self.lru.pop_first() } else { None };
        if let Some((_, oldest)) = oldest {
            self.buckets.remove(&oldest);
            evicted = true;
        }
        let bucket = self.buckets.entry(key).or_insert(Bucket { tokens: cfg.burst, last: now, touch });
        self.lru.remove(&bucket.touch);
        bucket.touch = touch;
        self.lru.insert(touch, key);
        let elapsed = now.saturating_duration_since(bucket.last).as_secs_f64();
        bucket.last = bucket.last.max(now);
        bucket.tokens = (bucket.tokens + elapsed * cfg.rate_per_sec).min(cfg.burst);
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            (true, evicted)
        } else {
            (false, evicted)
        }
    }
}

/// The sans-IO probe responder.
#[derive(Debug)]
pub struct Responder {
    config: ResponderConfig,
    limiter: RateLimiter,
    counters: Arc<ResponderCounters>,
}

impl Responder {
    pub fn new(config: ResponderConfig) -> Self {
        Responder { config, limiter: RateLimiter::new(), counters: Arc::default() }
    }

    /// The live counters (clone the `Arc` for a metrics exporter).
    pub fn counters(&self) -> &Arc<ResponderCounters> {
        &self.counters
    }

    /// Sources currently tracked by the rate limiter.
    pub fn tracked_sources(&self) -> usize {
        self.limiter.buckets.len()
    }

    /// Handles one datagram from `src`. Returns the reply to send back to the datagram's source address and
    /// port, or `None` to drop it. `key_lookup` maps a CPE id to its key (the Convert Auth key).
    pub fn handle<K, F>(&mut self, now: Now, src: IpAddr, datagram: &[u8], key_lookup: F) -> Option<Vec<u8>>
    where
        K: AsRef<[u8]>,
        F: FnOnce(&str) -> Option<K>,
    {
        let c = &*self.counters;
        bump(&c.received);
        let (allowed, evicted) = self.limiter.allow(&self.config, now.mono, src);
        if evicted {
            bump(&c.evicted_sources);
        }
        if !allowed {
            bump(&c.rate_limited);
            return None;
        }
        let Ok(unverified) = wire::parse_request(datagram) else {
            bump(&c.malformed);
            return None;
        };
        let Some(key) = key_lookup(&unverified.claimed().cpe_id) else {
            bump(&c.unknown_cpe);
            return None;
        };
        let key = key.as_ref();
        let Ok(request) = unverified.verify(key) else {
            bump(&c.bad_mac);
            return None;
        };
        let sent = Duration::from_micros(request.timestamp_us);
        let distance = sent.abs_diff(now.unix);
        if distance > self.config.max_skew {
            bump(&c.stale);
            return None;
        }
        bump(&c.replied);
        Some(request.reply().to_bytes(key))
    }
}

/// Answers probes on `socket` until a fatal socket error. Transient errors (ICMP-reported unreachable
/// peers, a full send buffer) are logged at debug level and skipped. Run it in its own task; counters stay
/// readable through the `Arc` from [`Responder::counters`] taken before the call.
///
/// Each reply leaves from the exact address the request was sent to (IP_PKTINFO / IPV6_PKTINFO through
/// `quinn-udp`): on a wildcard socket the routing table would otherwise pick the source, and a CPE's
/// prober, connected to the service address, would never see the reply.
pub async fn serve_udp<K, F>(
    socket: tokio::net::UdpSocket,
    mut responder: Responder,
    mut key_lookup: F,
) -> std::io::Result<()>
where
    K: AsRef<[u8]>,
    F: FnMut(&str) -> Option<K>,
{
    use quinn_udp::{RecvMeta, Transmit, UdpSocketState};
    use tokio::io::Interest;

    let state = UdpSocketState::new((&socket).into())?;
    // Room for a whole GRO batch; each datagram in it is `stride` bytes (the last may be shorter).
    let mut buf = vec![0u8; state.gro_segments() * 65_536];
    loop {
        let mut meta = [RecvMeta::default()];
        let received = socket
            .async_io(Interest::READABLE, || {
                state.recv((&socket).into(), &mut [std::io::IoSliceMut::new(&mut buf)], &mut meta)
            })
            .await;
        match received {
            Ok(_) => {}
            Err(e) if is_transient(&e) => {
                tracing::debug!(error = %e, "probe responder: recv");
                continue;
            }
            Err(e) => return Err(e),
        }
        let meta = meta[0];
        let peer = SocketAddr::new(meta.addr.ip().to_canonical(), meta.addr.port());
        for datagram in buf[..meta.len].chunks(meta.stride.max(1)) {
            let Some(reply) = responder.handle(Now::system(), peer.ip(), datagram, &mut key_lookup) else {
                continue;
            };
            let transmit = Transmit {
                destination: meta.addr,
                ecn: None,
                contents: &reply,
                segment_size: None,
                src_ip: meta.dst_ip,
            };
            let sent = socket.async_io(Interest::WRITABLE, || state.try_send((&socket).into(), &transmit)).await;
            if let Err(e) = sent {
                if !is_transient(&e) {
                    return Err(e);
                }
                tracing::debug!(error = %e, %peer, "probe responder: send");
            }
        }
    }
}

/// Errors a UDP socket reports about one peer or one moment, not about itself.
pub(crate) fn is_transient(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        ConnectionRefused
            | ConnectionReset
            | HostUnreachable
            | NetworkUnreachable
            | NetworkDown
            | AddrNotAvailable
            | WouldBlock
            | Interrupted
            | PermissionDenied
    ) || matches!(e.raw_os_error(), Some(libc::ENOBUFS | libc::EMSGSIZE | libc::ENONET))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe::wire::{REPLY_LEN, Request, parse_reply};
    use std::collections::HashMap;

    const KEY: &[u8] = b"0123456789abcdef0123456789abcdef";
    const SRC: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1));

    fn keys() -> HashMap<String, Vec<u8>> {
        HashMap::from([("cpe-1".to_owned(), KEY.to_vec())])
    }

    fn at(base: Instant, ms: u64) -> Now {
        Now {
            mono: base + Duration::from_millis(ms),
            unix: Duration::from_secs(1_800_000_000) + Duration::from_millis(ms),
        }
    }

    fn request(seq: u32, now: Now) -> Request {
        Request {
            seq,
            timestamp_us: now.unix.as_micros() as u64,
            uplink: 1,
            cpe_id: "cpe-1".into(),
            nonce: [seq as u8; 16],
        }
    }

    #[test]
    fn valid_request_gets_a_smaller_authenticated_echo() {
        let base = Instant::now();
        let mut r = Responder::new(ResponderConfig::default());
        let keys = keys();
        let req = request(42, at(base, 0));
        let bytes = req.to_bytes(KEY).unwrap();
        let reply = r.handle(at(base, 5), SRC, &bytes, |id| keys.get(id)).expect("a reply");
        assert_eq!(reply.len(), REPLY_LEN);
        assert!(reply.len() < bytes.len(), "reply must not be larger than the request");
        let parsed = parse_reply(&reply).unwrap().verify(KEY).unwrap();
        assert_eq!(parsed, req.reply());
        assert_eq!(r.counters().snapshot(), ResponderStats { received: 1, replied: 1, ..Default::default() });
    }

    #[test]
    fn unknown_cpe_bad_mac_stale_and_garbage_are_dropped_and_counted() {
        let base = Instant::now();
        let mut r = Responder::new(ResponderConfig::default());
        let keys = keys();
        let now = at(base, 0);

        let mut other = request(1, now);
        other.cpe_id = "cpe-2".into();
        assert!(r.handle(now, SRC, &other.to_bytes(KEY).unwrap(), |id| keys.get(id)).is_none());

        let forged = request(2, now).to_bytes(b"not the key").unwrap();
        assert!(r.handle(now, SRC, &forged, |id| keys.get(id)).is_none());

        let old = request(3, at(base, 0)).to_bytes(KEY).unwrap();
        let late = Now { mono: now.mono, unix: now.unix + Duration::from_secs(31) };
        assert!(r.handle(late, SRC, &old, |id| keys.get(id)).is_none());
        let early = Now { mono: now.mono, unix: now.unix - Duration::from_secs(31) };
        assert!(r.handle(early, SRC, &old, |id| keys.get(id)).is_none());
        let within = Now { mono: now.mono, unix: now.unix + Duration::from_secs(29) };
        assert!(r.handle(within, SRC, &old, |id| keys.get(id)).is_some());

        assert!(r.handle(now, SRC, b"GET / HTTP/1.0\r\n\r\n", |id| keys.get(id)).is_none());
        // A reply sent to the responder is not answered either (no reflection loops).
        let reply = request(4, now).reply().to_bytes(KEY);
        assert!(r.handle(now, SRC, &reply, |id| keys.get(id)).is_none());

        assert_eq!(
            r.counters().snapshot(),
            ResponderStats {
                received: 7,
                replied: 1,
                unknown_cpe: 1,
                bad_mac: 1,
                stale: 2,
                malformed: 2,
                ..Default::default()
            }
        );
    }

    #[test]
    fn rate_limit_per_source_with_refill() {
        let base = Instant::now();
        let cfg = ResponderConfig { rate_per_sec: 10.0, burst: 5.0, ..Default::default() };
        let mut r = Responder::new(cfg);
        let keys = keys();
        let now = at(base, 0);
        let bytes = request(1, now).to_bytes(KEY).unwrap();
        let answered = (0..20).filter(|_| r.handle(now, SRC, &bytes, |id| keys.get(id)).is_some()).count();
        assert_eq!(answered, 5, "burst");
        // Another source has its own bucket.
        let other: IpAddr = "198.51.100.9".parse().unwrap();
        assert!(r.handle(now, other, &bytes, |id| keys.get(id)).is_some());
        // 300 ms later, 3 more tokens.
        let later = at(base, 300);
        let answered = (0..20).filter(|_| r.handle(later, SRC, &bytes, |id| keys.get(id)).is_some()).count();
        assert_eq!(answered, 3, "refill at 10/s");
        assert_eq!(r.counters().snapshot().rate_limited, 15 + 17);
    }

    #[test]
    fn ipv6_sources_share_a_bucket_per_64() {
        let base = Instant::now();
        let cfg = ResponderConfig { rate_per_sec: 1.0, burst: 2.0, ..Default::default() };
        let mut r = Responder::new(cfg);
        let keys = keys();
        let now = at(base, 0);
        let bytes = request(1, now).to_bytes(KEY).unwrap();
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2::ffff".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert!(r.handle(now, a, &bytes, |id| keys.get(id)).is_some());
        assert!(r.handle(now, b, &bytes, |id| keys.get(id)).is_some());
        assert!(r.handle(now, b, &bytes, |id| keys.get(id)).is_none(), "same /64 shares the bucket");
        assert!(r.handle(now, c, &bytes, |id| keys.get(id)).is_some(), "another /64 has its own");
        assert_eq!(r.tracked_sources(), 2);
    }

    #[test]
    fn source_table_is_bounded_and_evicts_the_least_recently_seen() {
        let base = Instant::now();
        let cfg = ResponderConfig { rate_per_sec: 0.0, burst: 1.0, max_sources: 3, ..Default::default() };
        let mut r = Responder::new(cfg);
        let keys = keys();
        let now = at(base, 0);
        let bytes = request(1, now).to_bytes(KEY).unwrap();
        let ip = |i: u8| IpAddr::V4(std::net::Ipv4Addr::new(203, 0, 113, i));
        for i in 1..=3 {
            assert!(r.handle(now, ip(i), &bytes, |id| keys.get(id)).is_some());
        }
        // Source 1 is seen again (and refused: its one token is spent), so 2 is now the oldest.
        assert!(r.handle(now, ip(1), &bytes, |id| keys.get(id)).is_none());
        for i in 4..=100 {
            r.handle(now, ip(i), &bytes, |id| keys.get(id));
            assert!(r.tracked_sources() <= 3);
        }
        assert_eq!(r.counters().snapshot().evicted_sources, 97);
        // Everything but the last three was evicted, so source 1 starts with a fresh bucket.
        assert!(r.handle(now, ip(1), &bytes, |id| keys.get(id)).is_some());
    }

    proptest::proptest! {
        /// Without the key nobody gets an answer, whatever they send; and nothing panics.
        #[test]
        fn arbitrary_datagrams_are_never_answered(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200)) {
            let mut r = Responder::new(ResponderConfig::default());
            let keys = keys();
            proptest::prop_assert!(r.handle(at(Instant::now(), 0), SRC, &bytes, |id| keys.get(id)).is_none());
        }
    }

    #[test]
    fn ipv4_mapped_ipv6_counts_as_ipv4() {
        assert_eq!(source_key("::ffff:192.0.2.1".parse().unwrap()), SRC);
    }
}

#[cfg(test)]
mod bench {
    use super::*;
    use crate::probe::wire::Request;

    /// `cargo test --release -p common --lib probe::responder::bench -- --ignored --nocapture`: responder
    /// cost per probe, printed against the same run's baseline of one bare HMAC-SHA256 over a request.
    #[test]
    #[ignore = "benchmark; prints numbers"]
    fn handle_cost_against_one_hmac() {
        use hmac::{Hmac, KeyInit, Mac};
        const N: u32 = 200_000;
        let key = [7u8; 32];
        let mut r = Responder::new(ResponderConfig { rate_per_sec: 1e12, burst: 1e12, ..Default::default() });
        let base = Instant::now();
        let now = Now { mono: base, unix: Duration::from_secs(1_800_000_000) };
        let req = Request {
            seq: 1,
            timestamp_us: now.unix.as_micros() as u64,
            uplink: 0,
            cpe_id: "cpe-00001".into(),
            nonce: [1; 16],
        };
        let bytes = req.to_bytes(&key).unwrap();
        let src = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1));

        let t = Instant::now();
        let mut sink = 0u8;
        for _ in 0..N {
            let mut m = <Hmac<sha2::Sha256> as KeyInit>::new_from_slice(&key).unwrap();
            m.update(&bytes);
            sink ^= m.finalize().into_bytes()[0];
        }
        let hmac = t.elapsed() / N;
        let t = Instant::now();
        for _ in 0..N {
            sink ^= r.handle(now, src, &bytes, |_| Some(&key[..])).unwrap()[0];
        }
        let handle = t.elapsed() / N;
        println!(
            "one HMAC: {hmac:?}; Responder::handle (parse, 2 HMACs, rate limit): {handle:?} = {:.1}x; {:.0} probes/s/core ({sink})",
            handle.as_secs_f64() / hmac.as_secs_f64(),
            1.0 / handle.as_secs_f64()
        );
    }
}
