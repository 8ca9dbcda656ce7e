//! The hag server in-process on loopback (plain TCP clients, no namespaces): every refusal answers the
//! right RFC 8803 error code, a good client is relayed with its early bytes, limits and counters hold.
//! The real binary with kernel MPTCP and TFO in namespaces is tested in `tests/tests/hag_e2e.rs`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::convert::{self, Decoded, ErrorCode, Message, auth};
use hag::{Config, Hag};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const KEY: &[u8] = b"test key for the hag server flow";

struct Fixture {
    addr: SocketAddr,
    stats: Arc<hag::stats::Stats>,
    connections: Arc<hag::connections::Connections>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    done: tokio::task::JoinHandle<()>,
}

impl Fixture {
    async fn start(extra_limits: &str, trusted: &str) -> Fixture {
        let _ = tracing_subscriber::fmt().with_test_writer().with_env_filter("hag=debug").try_init();
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let dir =
            std::env::temp_dir().join(format!("hag-server-test-{}-{}", std::process::id(), N.fetch_add(1, Relaxed)));
        std::fs::create_dir_all(&dir).unwrap();
        testkit::write_secret(dir.join("cpe.key"), KEY).unwrap();
        let yaml = format!(
            "listen: ['127.0.0.1:0']\n\
             clients: {{cpe-1: {{key_file: cpe.key}}, cpe-2: {{key_file: cpe.key}}}}\n\
             trusted_sources: [{trusted}]\n\
             destinations: {{allow: [127.0.0.2/32]}}\n\
             limits: {{header_deadline: 500ms, connect_timeout: 2s, drain_deadline: 1s {extra_limits}}}\n"
        );
        // Keys are read while loading, so the directory can go before anything can fail.
        let config = Config::from_yaml(&yaml, &dir.join("hag.yaml"));
        let _ = std::fs::remove_dir_all(&dir);
        let config = config.unwrap();
        let hag = Hag::bind(config).unwrap();
        let addr = hag.local_addrs()[0];
        let stats = hag.stats();
        let connections = hag.connections();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let done = tokio::spawn(hag.run(async move {
            let _ = rx.await;
        }));
        Fixture { addr, stats, connections, stop: Some(tx), done }
    }

    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        (&mut self.done).await.unwrap();
    }
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

fn request(dst: SocketAddr, cpe: &str, ts: u64) -> Vec<u8> {
    auth::signed_request(KEY, dst, cpe, ts, auth::random_nonce().unwrap()).unwrap()
}

/// Sends `bytes`, returns the reply message (or None when the hag closed without one) and the stream.
async fn exchange(hag: SocketAddr, bytes: &[u8]) -> (Option<Message>, Vec<u8>, TcpStream) {
    let mut s = TcpStream::connect(hag).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let mut buf = Vec::new();
    loop {
        if let Decoded::Done { message, consumed } = convert::decode(&buf) {
            return (Some(message), buf[consumed..].to_vec(), s);
        }
        let mut chunk = [0u8; 4096];
        match tokio::time::timeout(Duration::from_secs(5), s.read(&mut chunk)).await.expect("reply in time") {
            Ok(0) | Err(_) => return (None, buf, s),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

async fn error_of(hag: SocketAddr, bytes: &[u8]) -> Option<u8> {
    let (reply, _, _) = exchange(hag, bytes).await;
    reply.and_then(|m| m.error()).map(ErrorCode::code)
}

/// An echo server on 127.0.0.2 that first says "hello".
async fn echo_server() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.2:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = l.accept().await.unwrap();
            tokio::spawn(async move {
                s.write_all(b"hello").await.unwrap();
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    addr
}

async fn assert_good_client(hag: SocketAddr, dst: SocketAddr) {
    let mut bytes = request(dst, "cpe-1", now());
    bytes.extend_from_slice(b"early");
    let (reply, mut rest, mut s) = exchange(hag, &bytes).await;
    assert_eq!(reply, Some(Message::success()));
    while rest.len() < 10 {
        let mut chunk = [0u8; 64];
        let n = s.read(&mut chunk).await.unwrap();
        assert!(n > 0, "closed early, got {rest:?}");
        rest.extend_from_slice(&chunk[..n]);
    }
    assert_eq!(&rest, b"helloearly", "server greeting then the client's early bytes echoed");
    s.write_all(b" more").await.unwrap();
    s.shutdown().await.unwrap();
    let mut tail = Vec::new();
    s.read_to_end(&mut tail).await.unwrap();
    assert_eq!(tail, b" more");
}

#[tokio::test]
async fn good_client_is_relayed_with_early_bytes() {
    let dst = echo_server().await;
    let f = Fixture::start("", "").await;
    assert_good_client(f.addr, dst).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let s = f.stats.snapshot();
    assert_eq!((s.accepted, s.relayed, s.fallback), (1, 1, 1), "{s}");
    assert_eq!(s.bytes_up, 10, "{s}");
    assert_eq!(s.bytes_down, 15, "{s}");
    f.stop().await;
}

#[tokio::test]
async fn open_relays_are_listed_with_cpe_destination_and_live_counters() {
    let dst = echo_server().await;
    let f = Fixture::start("", "").await;
    let mut bytes = request(dst, "cpe-1", now());
    bytes.extend_from_slice(b"early");
    let (reply, mut echoed, mut s) = exchange(f.addr, &bytes).await;
    assert_eq!(reply, Some(Message::success()));
    s.write_all(b"12345").await.unwrap();
    while echoed.len() < 15 {
        let mut chunk = [0u8; 64];
        let n = s.read(&mut chunk).await.unwrap();
        echoed.extend_from_slice(&chunk[..n]);
    }
    let open = f.connections.snapshot();
    assert_eq!(open.len(), 1);
    let c = &open[0];
    assert_eq!(c.cpe.get().map(String::as_str), Some("cpe-1"));
    assert_eq!(c.dst.get(), Some(&dst));
    assert_eq!(c.token.get(), Some(&None), "plain TCP client: no MPTCP token");
    assert_eq!(c.counters.b_to_a.load(Relaxed), 10 + 5, "hello + early + 12345 echoed, live");
    assert!(c.client.upgrade().is_some(), "the table can reach the open client socket");
    drop(open);
    drop(s);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(f.connections.is_empty(), "closed relays leave the table");
    f.stop().await;
}

#[tokio::test]
async fn every_bad_input_gets_its_error_code() {
    let dst = echo_server().await;
    let f = Fixture::start("", "").await;
    let good = request(dst, "cpe-1", now());
    let closed: SocketAddr = "127.0.0.2:1".parse().unwrap();

    let mut v2 = good.clone();
    v2[0] = 2;
    assert_eq!(error_of(f.addr, &v2).await, Some(0), "version 2");
    let mut magic = good.clone();
    magic[2] = 0x99;
    assert_eq!(error_of(f.addr, &magic).await, Some(1), "bad magic");
    let mut lying = good.clone();
    lying[1] = 2; // total length says 8 bytes, but the Connect TLV inside is 20
    assert_eq!(error_of(f.addr, &lying).await, Some(1), "length field lying");
    assert_eq!(error_of(f.addr, b"GET / HTTP/1.1\r\n\r\n").await, Some(1), "text garbage");
    let mut s = TcpStream::connect(f.addr).await.unwrap();
    s.write_all(&good[..good.len() - 7]).await.unwrap();
    s.shutdown().await.unwrap();
    let mut reply = Vec::new();
    s.read_to_end(&mut reply).await.unwrap();
    assert_eq!(
        convert::decode(&reply),
        Decoded::Done {
            message: Message::echo_reply(ErrorCode::MalformedMessage, &good[..good.len() - 7]),
            consumed: reply.len()
        },
        "truncated, echoed"
    );
    assert_eq!(error_of(f.addr, &[1, 3, 0x22, 0x63, 0, 0, 0, 0, 0, 0, 0, 0]).await, Some(1), "garbage TLV");

    let no_auth = Message::connect_request(dst).to_bytes().unwrap();
    assert_eq!(error_of(f.addr, &no_auth).await, Some(32), "no Auth TLV, untrusted");
    let mut bad_mac = good.clone();
    let last = bad_mac.len() - 40;
    bad_mac[last] ^= 1;
    assert_eq!(error_of(f.addr, &bad_mac).await, Some(32), "wrong MAC");
    assert_eq!(error_of(f.addr, &request(dst, "cpe-1", now() - 300)).await, Some(32), "old timestamp");
    assert_eq!(error_of(f.addr, &request(dst, "cpe-1", now() + 300)).await, Some(32), "future timestamp");
    assert_eq!(error_of(f.addr, &request(dst, "cpe-9", now())).await, Some(32), "unknown CPE");
    let (reply, _, _) = exchange(f.addr, &good).await;
    assert_eq!(reply, Some(Message::success()));
    assert_eq!(error_of(f.addr, &good).await, Some(32), "replayed nonce");

    for denied in ["10.0.0.1:80", "[fd00::9]:80", "[::ffff:10.0.0.1]:80", "0.0.0.0:80"] {
        let d: SocketAddr = denied.parse().unwrap();
        assert_eq!(error_of(f.addr, &request(d, "cpe-1", now())).await, Some(32), "policy {denied}");
    }
    // Loopback addresses are malformed requests (RFC 8803), unless the operator allows them (the fixture
    // allows 127.0.0.2 for its echo server).
    for malformed in ["127.0.0.1:80", "[::1]:80", &f.addr.to_string()] {
        let d: SocketAddr = malformed.parse().unwrap();
        assert_eq!(error_of(f.addr, &request(d, "cpe-1", now())).await, Some(1), "{malformed}");
    }
    assert_eq!(error_of(f.addr, &request(closed, "cpe-1", now())).await, Some(96), "closed port");

    let s = f.stats.snapshot();
    assert_eq!(s.auth_failures, 6, "{s}");
    assert_eq!(s.policy_denied, 4, "{s}");
    assert_good_client(f.addr, dst).await;
    f.stop().await;
}

#[tokio::test]
async fn silent_client_is_closed_at_the_header_deadline() {
    let f = Fixture::start("", "").await;
    let mut s = TcpStream::connect(f.addr).await.unwrap();
    let mut buf = [0u8; 16];
    let t = std::time::Instant::now();
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await.unwrap().unwrap_or(0);
    assert_eq!(n, 0, "closed without a reply");
    assert!(t.elapsed() >= Duration::from_millis(400), "closed after {:?}, deadline is 500ms", t.elapsed());
    assert_eq!(f.stats.header_timeouts.load(Relaxed), 1);
    f.stop().await;
}

#[tokio::test]
async fn per_cpe_and_total_limits_answer_64() {
    let dst = echo_server().await;
    let f = Fixture::start(", max_connections_per_cpe: 2, max_connections: 3", "").await;
    let mut held = Vec::new();
    for _ in 0..2 {
        let (reply, _, s) = exchange(f.addr, &request(dst, "cpe-1", now())).await;
        assert_eq!(reply, Some(Message::success()));
        held.push(s);
    }
    assert_eq!(error_of(f.addr, &request(dst, "cpe-1", now())).await, Some(64), "third of cpe-1");
    let (reply, _, s) = exchange(f.addr, &request(dst, "cpe-2", now())).await;
    assert_eq!(reply, Some(Message::success()), "another CPE is not limited by cpe-1");
    held.push(s);
    assert_eq!(error_of(f.addr, &request(dst, "cpe-2", now())).await, Some(64), "fourth in total");
    drop(held);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_good_client(f.addr, dst).await;
    f.stop().await;
}

#[tokio::test]
async fn trusted_source_may_omit_auth() {
    let dst = echo_server().await;
    let f = Fixture::start("", "127.0.0.0/8").await;
    let (reply, rest, _s) = exchange(f.addr, &Message::connect_request(dst).to_bytes().unwrap()).await;
    assert_eq!(reply, Some(Message::success()));
    assert!(b"hello".starts_with(&rest));
    // A trusted source that sends a bad Auth TLV is still refused.
    assert_eq!(error_of(f.addr, &request(dst, "cpe-9", now())).await, Some(32));
    f.stop().await;
}

#[tokio::test]
async fn shutdown_drains_open_relays_until_the_deadline() {
    let dst = echo_server().await;
    let f = Fixture::start("", "").await;
    let (reply, _, s) = exchange(f.addr, &request(dst, "cpe-1", now())).await;
    assert_eq!(reply, Some(Message::success()));
    let addr = f.addr;
    let t = std::time::Instant::now();
    f.stop().await;
    let waited = t.elapsed();
    assert!(waited >= Duration::from_millis(900) && waited < Duration::from_secs(3), "drained for {waited:?}");
    assert!(TcpStream::connect(addr).await.is_err(), "listener closed");
    drop(s);
}

#[tokio::test]
async fn idle_relay_is_closed_and_counted() {
    let dst = echo_server().await;
    let f = Fixture::start(", idle_timeout: 300ms", "").await;
    let (reply, mut rest, mut s) = exchange(f.addr, &request(dst, "cpe-1", now())).await;
    assert_eq!(reply, Some(Message::success()));
    let read = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest)).await;
    assert!(read.is_ok(), "the hag closed the idle relay");
    assert_eq!(rest, b"hello", "what the server sent before going idle");
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(f.stats.idle_timeouts.load(Relaxed), 1);
    f.stop().await;
}
