//! End-to-end tests of the real `hag` binary in network namespaces this test makes:
//!
//! ```text
//!  cli (198.18.1.2, .3 trusted; 2001:db8:1::2) --- hag (198.18.1.1 | 198.18.2.1) --- inet (198.18.2.2)
//! ```
//!
//! The client is a real kernel MPTCP socket with TCP Fast Open (Convert + Auth + data in the SYN); the
//! destination servers run in `inet`. Every test asserts what a CPE would see: the bytes (SHA-256), the
//! RFC 8803 error code, the exit status; and that a well-behaved client keeps being served meanwhile.
//! Namespaces, processes and temp files are removed on drop, also when a test fails.

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::convert::{self, Decoded, ErrorCode, Message, auth};
use common::mptcp::{self, ConnectOptions};
use sha2::{Digest, Sha256};
use tests::netns::{ChildGuard, Netns, bin_path};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Runtime;

const HAG4: &str = "198.18.1.1";
const HAG6: &str = "2001:db8:1::1";
const HAG_OUT4: &str = "198.18.2.1";
const CLI4: &str = "198.18.1.2";
const CLI4_TRUSTED: &str = "198.18.1.3";
const INET4: &str = "198.18.2.2";
const INET6: &str = "2001:db8:2::2";
/// Bulk server: reads `[len u64][seed u64]`, sends `len` pattern bytes of `seed`, hashes what it receives.
const BULK_PORT: u16 = 7000;
/// Echo server.
const ECHO_PORT: u16 = 7001;
const KEY: [u8; 32] = *b"hag e2e test key, 32 bytes long!";
const PER_CPE_LIMIT: usize = 3;
const HEADER_DEADLINE: Duration = Duration::from_secs(1);
const DRAIN_DEADLINE: Duration = Duration::from_secs(2);

fn sock(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse().unwrap(), port)
}
fn hag_addr() -> SocketAddr {
    sock(HAG4, 5124)
}
fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

/// Deterministic pseudo-random bytes (xorshift64*), so both ends can hash the same stream.
struct Pattern(u64);
impl Pattern {
    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            let v = self.0.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

fn pattern_sha(seed: u64, len: usize) -> [u8; 32] {
    let mut p = Pattern(seed);
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut left = len;
    while left > 0 {
        let n = left.min(buf.len());
        p.fill(&mut buf[..n]);
        h.update(&buf[..n]);
        left -= n;
    }
    h.finalize().into()
}

/// A temp directory removed on drop.
struct TempDir(PathBuf);
impl TempDir {
    fn new(tag: &str) -> TempDir {
        static N: AtomicU64 = AtomicU64::new(0);
        let p = std::env::temp_dir().join(format!(
            "hag-e2e-{}-{}-{tag}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// CPE ids the bed's hag knows (all with [`KEY`]); each test uses its own so limits do not interfere.
const CPE_IDS: &[&str] = &["good", "bulk", "limit", "replay", "drain", "hold", "hold-expiry"];
const MAX_HELD_PER_CPE: usize = 2;
const HOLD_TIMEOUT: Duration = Duration::from_secs(2);

fn hag_config(dir: &Path) -> PathBuf {
    testkit::write_secret(dir.join("cpe.key"), KEY).unwrap();
    let clients: Vec<String> = CPE_IDS.iter().map(|id| format!("  {id}: {{key_file: cpe.key}}\n")).collect();
    let yaml = format!(
        "listen: ['{HAG4}', '[{HAG6}]']\n\
         clients:\n{}\
         trusted_sources: [{CLI4_TRUSTED}/32]\n\
         limits:\n  max_connections_per_cpe: {PER_CPE_LIMIT}\n  header_deadline: 1s\n  connect_timeout: 1s\n  \
         drain_deadline: 2s\n  max_held_per_cpe: {MAX_HELD_PER_CPE}\n  hold_timeout: {}ms\n\
         log_level: hag=debug\n",
        clients.concat(),
        HOLD_TIMEOUT.as_millis()
    );
    let path = dir.join("hag.yaml");
    std::fs::write(&path, yaml).unwrap();
    path
}

/// Received by the bulk server: (bytes, SHA-256).
type BulkReport = (u64, [u8; 32]);

/// The three namespaces, the hag, the destination servers and a client runtime living in `cli`.
/// Field order is drop order: runtimes and the hag stop before their namespaces go.
struct Bed {
    client_rt: Runtime,
    _server_rt: Runtime,
    hag: ChildGuard,
    bulk_reports: mpsc::Receiver<BulkReport>,
    _dir: TempDir,
    cli: Netns,
    hag_ns: Netns,
    _inet: Netns,
}

impl Bed {
    fn new() -> Bed {
        Bed::with_hag_tfo(0x203)
    }

    /// A bed whose hag namespace has `net.ipv4.tcp_fastopen = hag_tfo`.
    fn with_hag_tfo(hag_tfo: u32) -> Bed {
        let cli = Netns::new("hcli").unwrap();
        let hag_ns = Netns::new("hag").unwrap();
        let inet = Netns::new("hinet").unwrap();
        Netns::veth(&cli, "eth0", &hag_ns, "eth0").unwrap();
        Netns::veth(&hag_ns, "eth1", &inet, "eth0").unwrap();
        cli.addr("eth0", &format!("{CLI4}/24")).unwrap();
        cli.addr("eth0", &format!("{CLI4_TRUSTED}/24")).unwrap();
        cli.addr("eth0", "2001:db8:1::2/64").unwrap();
        hag_ns.addr("eth0", &format!("{HAG4}/24")).unwrap();
        hag_ns.addr("eth0", &format!("{HAG6}/64")).unwrap();
        hag_ns.addr("eth1", &format!("{HAG_OUT4}/24")).unwrap();
        hag_ns.addr("eth1", "2001:db8:2::1/64").unwrap();
        inet.addr("eth0", &format!("{INET4}/24")).unwrap();
        inet.addr("eth0", &format!("{INET6}/64")).unwrap();
        // SYNs to 198.51.100.0/24 go to inet, which does not forward them: a silent black hole.
        hag_ns.route(&["198.51.100.0/24", "via", INET4]).unwrap();
        // TFO without cookies: client bits in cli, server bits in hag (DESIGN §3).
        cli.sysctl("net.ipv4.tcp_fastopen", "5").unwrap();
        hag_ns.sysctl("net.ipv4.tcp_fastopen", &hag_tfo.to_string()).unwrap();
        for ns in [&cli, &hag_ns, &inet] {
            ns.sysctl("net.mptcp.enabled", "1").unwrap();
        }

        let dir = TempDir::new("bed");
        let config = hag_config(&dir.0);
        let mut hag = hag_ns.spawn(bin_path("hag").to_str().unwrap(), &["--config", config.to_str().unwrap()]).unwrap();
        assert!(hag.wait_for_log("ready", Duration::from_secs(10)), "hag did not start:\n{}", hag.log());

        let server_rt = runtime_in(&inet);
        let (tx, bulk_reports) = mpsc::channel();
        // Spawned, not block_on'd: the listeners must be created on a worker thread, inside `inet`.
        let bind = server_rt.spawn(async move {
            let bulk4 = TcpListener::bind(sock(INET4, BULK_PORT)).await.unwrap();
            let echo4 = TcpListener::bind(sock(INET4, ECHO_PORT)).await.unwrap();
            let echo6 = TcpListener::bind(sock(INET6, ECHO_PORT)).await.unwrap();
            tokio::spawn(bulk_server(bulk4, tx));
            tokio::spawn(echo_server(echo4));
            tokio::spawn(echo_server(echo6));
        });
        server_rt.block_on(bind).unwrap();
        let client_rt = runtime_in(&cli);
        Bed { client_rt, _server_rt: server_rt, hag, bulk_reports, _dir: dir, cli, hag_ns, _inet: inet }
    }

    /// Runs `f` on the client runtime, i.e. with sockets made in the `cli` namespace.
    fn client<T: Send + 'static>(&self, f: impl Future<Output = T> + Send + 'static) -> T {
        self.client_rt.block_on(self.client_rt.spawn(f)).expect("client task panicked")
    }

    /// A new authenticated MPTCP+TFO client is relayed to the echo server, and `session` still echoes.
    fn assert_still_serving(&self, session: &mut Option<EchoSession>) {
        let mut s = session.take().expect("session");
        let s = self.client(async move {
            s.ping(b"still there?").await;
            fresh_echo("good").await;
            s
        });
        *session = Some(s);
        assert!(self.hag_alive(), "hag exited:\n{}", self.hag_log());
    }

    fn hag_alive(&self) -> bool {
        // SAFETY: kill with signal 0 only checks that our child's pid exists.
        unsafe { libc::kill(self.hag.pid() as i32, 0) == 0 }
    }

    fn hag_log(&self) -> String {
        self.hag.log()
    }

    /// Sends `bytes` (from CLI4, MPTCP, TFO) and returns the hag's error code, `None` for success, or
    /// panics when the hag closed without any reply.
    fn error_for(&self, bytes: Vec<u8>) -> Option<u8> {
        let reply = self.client(async move {
            let (mut s, _) = connect(&bytes, mptcp_opts(None)).await.expect("connect to hag");
            read_reply(&mut s).await
        });
        match reply {
            Reply::Message(m, _) => m.error().map(ErrorCode::code),
            Reply::Closed(bytes) => panic!("hag closed without a reply (got {bytes:?})\n{}", self.hag_log()),
        }
    }
}

fn runtime_in(ns: &Netns) -> Runtime {
    // Worker threads are started by `build` from the thread inside `ns`, so they (and their sockets) are in it.
    ns.within(|| tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()).unwrap()
}

async fn echo_server(l: TcpListener) {
    loop {
        let Ok((mut s, _)) = l.accept().await else {
            return;
        };
        tokio::spawn(async move {
            let (mut r, mut w) = s.split();
            let _ = tokio::io::copy(&mut r, &mut w).await;
            let _ = w.shutdown().await;
        });
    }
}

async fn bulk_server(l: TcpListener, reports: mpsc::Sender<BulkReport>) {
    loop {
        let Ok((s, _)) = l.accept().await else { return };
        let reports = reports.clone();
        tokio::spawn(async move {
            let (mut r, mut w) = s.into_split();
            let mut head = [0u8; 16];
            if r.read_exact(&mut head).await.is_err() {
                return;
            }
            let len = u64::from_be_bytes(head[..8].try_into().unwrap());
            let seed = u64::from_be_bytes(head[8..].try_into().unwrap());
            let send = tokio::spawn(async move {
                let mut p = Pattern(seed);
                let mut buf = vec![0u8; 256 * 1024];
                let mut left = len as usize;
                while left > 0 {
                    let n = left.min(buf.len());
                    p.fill(&mut buf[..n]);
                    w.write_all(&buf[..n]).await?;
                    left -= n;
                }
                w.shutdown().await
            });
            let mut h = Sha256::new();
            let mut total = 0u64;
            let mut buf = vec![0u8; 256 * 1024];
            loop {
                match r.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        h.update(&buf[..n]);
                        total += n as u64;
                    }
                }
            }
            let _ = send.await;
            let _ = reports.send((total, h.finalize().into()));
        });
    }
}

fn mptcp_opts(bind: Option<&str>) -> ConnectOptions {
    ConnectOptions {
        bind: bind.map(|ip| sock(ip, 0)),
        bind_device: None,
        mptcp: true,
        fastopen: true,
        timeout: Duration::from_secs(5),
        congestion_control: None,
    }
}

/// Connects to the hag with `first` in the SYN (TFO) and writes whatever the SYN did not carry.
async fn connect(first: &[u8], opts: ConnectOptions) -> io::Result<(TcpStream, usize)> {
    let (mut s, in_syn) = mptcp::connect_with_data(hag_addr(), first, &opts).await?;
    s.write_all(&first[in_syn..]).await?;
    Ok((s, in_syn))
}

fn signed(cpe: &str, dst: SocketAddr) -> Vec<u8> {
    signed_at(cpe, dst, now())
}

fn signed_at(cpe: &str, dst: SocketAddr, ts: u64) -> Vec<u8> {
    auth::signed_request(&KEY, dst, cpe, ts, auth::random_nonce().unwrap()).unwrap()
}

enum Reply {
    /// A Convert reply, and the bytes that followed it.
    Message(Message, Vec<u8>),
    /// EOF (or reset) before a whole reply; what arrived.
    Closed(Vec<u8>),
}

async fn read_reply(s: &mut TcpStream) -> Reply {
    let mut buf = Vec::new();
    loop {
        if let Decoded::Done { message, consumed } = convert::decode(&buf) {
            return Reply::Message(message, buf[consumed..].to_vec());
        }
        let mut chunk = [0u8; 4096];
        let read = tokio::time::timeout(Duration::from_secs(10), s.read(&mut chunk)).await.expect("reply in 10s");
        match read {
            Ok(0) | Err(_) => return Reply::Closed(buf),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// An authenticated relay to the echo server.
struct EchoSession(TcpStream);

impl EchoSession {
    async fn ping(&mut self, msg: &[u8]) {
        self.0.write_all(msg).await.unwrap();
        let mut back = vec![0u8; msg.len()];
        tokio::time::timeout(Duration::from_secs(5), self.0.read_exact(&mut back)).await.expect("echo in 5s").unwrap();
        assert_eq!(back, msg);
    }
}

/// Opens an authenticated MPTCP+TFO relay to the echo server and checks it echoes (also the SYN's data).
async fn fresh_echo(cpe: &'static str) -> EchoSession {
    let mut first = signed(cpe, sock(INET4, ECHO_PORT));
    first.extend_from_slice(b"early");
    let (mut s, _) = connect(&first, mptcp_opts(Some(CLI4))).await.unwrap();
    let Reply::Message(m, got) = read_reply(&mut s).await else { panic!("hag refused a good client ({cpe})") };
    assert_eq!(m, Message::success());
    expect_rest(&mut s, got, b"early").await;
    let mut e = EchoSession(s);
    e.ping(b"ping").await;
    e
}

/// `got` arrived with the reply; reads the rest of `want`.
async fn expect_rest(s: &mut TcpStream, mut got: Vec<u8>, want: &[u8]) {
    assert!(want.starts_with(&got), "{got:?}");
    let mut rest = vec![0u8; want.len() - got.len()];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut rest)).await.expect("echo in 5s").unwrap();
    got.extend(rest);
    assert_eq!(got, want);
}

// ---------------------------------------------------------------------------------------------------------
// MPTCP + TFO, Convert + Auth + data in the SYN, 64 MiB each way intact, socket is MPTCP.
// ---------------------------------------------------------------------------------------------------------

#[test]
fn mptcp_tfo_client_moves_64_mib_each_way_intact() {
    const LEN: usize = 64 << 20;
    let (up_seed, down_seed) = (0x1234_5678_9abc_def1u64, 0x0fed_cba9_8765_4321u64);
    let mut bed = Bed::new();
    let (in_syn, first_len, client_mptcp, syn_acked, down) = bed.client(async move {
        let mut first = signed("bulk", sock(INET4, BULK_PORT));
        first.extend_from_slice(&(LEN as u64).to_be_bytes());
        first.extend_from_slice(&down_seed.to_be_bytes());
        let mut up = Pattern(up_seed);
        let mut early = vec![0u8; 512];
        up.fill(&mut early);
        first.extend_from_slice(&early);
        let (mut s, in_syn) = connect(&first, mptcp_opts(Some(CLI4))).await.unwrap();
        let syn_acked = mptcp::syn_data_acked(&s).unwrap();
        let client_mptcp = mptcp::info(&s).unwrap().is_some();
        let Reply::Message(reply, rest) = read_reply(&mut s).await else { panic!("no reply") };
        assert_eq!(reply, Message::success());
        let (mut r, mut w) = s.into_split();
        let writer = tokio::spawn(async move {
            let mut buf = vec![0u8; 256 * 1024];
            let mut left = LEN - early.len();
            while left > 0 {
                let n = left.min(buf.len());
                up.fill(&mut buf[..n]);
                w.write_all(&buf[..n]).await.unwrap();
                left -= n;
            }
            w.shutdown().await.unwrap();
        });
        let mut h = Sha256::new();
        h.update(&rest);
        let mut total = rest.len();
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            let n = r.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
            total += n;
        }
        writer.await.unwrap();
        let down: [u8; 32] = h.finalize().into();
        (in_syn, first.len(), client_mptcp, syn_acked, (total, down))
    });
    assert_eq!(in_syn, first_len, "the whole Convert message + data rode in the SYN");
    assert!(syn_acked, "the hag acknowledged the SYN data (TFO without cookie)");
    assert!(client_mptcp, "the client socket is MPTCP, not fallback");
    assert_eq!(down.0, LEN, "bytes from the server");
    assert_eq!(down.1, pattern_sha(down_seed, LEN), "server -> client stream intact");
    let (up_len, up_sha) = bed.bulk_reports.recv_timeout(Duration::from_secs(30)).expect("server report");
    assert_eq!(up_len, LEN as u64, "bytes at the server");
    assert_eq!(up_sha, pattern_sha(up_seed, LEN), "client -> server stream intact");

    let status = bed.hag.kill().expect("hag exit status");
    let log = bed.hag_log();
    assert!(status.success(), "hag exit {status:?}\n{log}");
    let relay_line = log.lines().find(|l| l.contains("relay done")).unwrap_or_else(|| panic!("no relay line:\n{log}"));
    assert!(relay_line.contains("tfo=true"), "hag saw the data in the SYN: {relay_line}");
    assert!(!relay_line.contains("fallback"), "the accepted socket is MPTCP: {relay_line}");
    assert!(relay_line.contains("token="), "{relay_line}");
    let stopped = log.lines().find(|l| l.contains("stopped")).unwrap_or_else(|| panic!("no stats line:\n{log}"));
    assert!(stopped.contains(" fallback=0 ") && stopped.contains(" relayed=1 "), "{stopped}");
}

// ---------------------------------------------------------------------------------------------------------
// bad input, one test each; a well-behaved client keeps being served throughout.
// ---------------------------------------------------------------------------------------------------------

/// Runs one bad input against a fresh bed while a good relay is open, asserting the code the client gets.
fn bad_input(expected: ErrorCode, make: impl FnOnce() -> Vec<u8>) {
    let bed = Bed::new();
    let mut session = Some(bed.client(fresh_echo("good")));
    let got = bed.error_for(make());
    assert_eq!(got, Some(expected.code()), "hag log:\n{}", bed.hag_log());
    bed.assert_still_serving(&mut session);
}

fn good_request() -> Vec<u8> {
    signed("good", sock(INET4, ECHO_PORT))
}

#[test]
fn version_2_gets_0() {
    bad_input(ErrorCode::UnsupportedVersion, || {
        let mut m = good_request();
        m[0] = 2;
        m
    });
}

#[test]
fn bad_magic_gets_1() {
    bad_input(ErrorCode::MalformedMessage, || {
        let mut m = good_request();
        m[3] ^= 0xff;
        m
    });
}

#[test]
fn length_field_lying_gets_1() {
    // The total length claims 2 words, but the Connect TLV inside is 5 words long.
    bad_input(ErrorCode::MalformedMessage, || {
        let mut m = good_request();
        m[1] = 2;
        m
    });
}

#[test]
fn garbage_gets_1() {
    bad_input(ErrorCode::MalformedMessage, || b"SSH-2.0-OpenSSH_9.9\r\n".to_vec());
}

#[test]
fn truncated_message_gets_1() {
    let bed = Bed::new();
    let mut session = Some(bed.client(fresh_echo("good")));
    let reply = bed.client(async {
        let m = good_request();
        let (mut s, _) = connect(&m[..m.len() - 9], mptcp_opts(None)).await.unwrap();
        s.shutdown().await.unwrap();
        read_reply(&mut s).await
    });
    match reply {
        Reply::Message(m, _) => assert_eq!(m.error(), Some(ErrorCode::MalformedMessage)),
        Reply::Closed(b) => panic!("closed without reply {b:?}\n{}", bed.hag_log()),
    }
    bed.assert_still_serving(&mut session);
}

#[test]
fn missing_auth_from_untrusted_source_gets_32() {
    bad_input(ErrorCode::NotAuthorized, || Message::connect_request(sock(INET4, ECHO_PORT)).to_bytes().unwrap());
}

#[test]
fn wrong_mac_gets_32() {
    bad_input(ErrorCode::NotAuthorized, || {
        auth::signed_request(b"not the key of cpe good, 32 byte", sock(INET4, ECHO_PORT), "good", now(), [7; 16])
            .unwrap()
    });
}

#[test]
fn timestamp_outside_skew_gets_32() {
    bad_input(ErrorCode::NotAuthorized, || signed_at("good", sock(INET4, ECHO_PORT), now() - 120));
}

#[test]
fn unknown_cpe_id_gets_32() {
    bad_input(ErrorCode::NotAuthorized, || signed("stranger", sock(INET4, ECHO_PORT)));
}

#[test]
fn replayed_nonce_gets_32() {
    let bed = Bed::new();
    let mut session = Some(bed.client(fresh_echo("good")));
    let request = signed("replay", sock(INET4, ECHO_PORT));
    assert_eq!(bed.error_for(request.clone()), None, "first use of the nonce is accepted");
    assert_eq!(bed.error_for(request), Some(32), "replay refused\n{}", bed.hag_log());
    bed.assert_still_serving(&mut session);
}

#[test]
fn destination_loopback_v4_gets_1() {
    // RFC 8803 §5.2.5: a Connect TLV naming a loopback address is malformed.
    bad_input(ErrorCode::MalformedMessage, || signed("good", sock("127.0.0.1", 22)));
}

#[test]
fn destination_private_gets_32() {
    bad_input(ErrorCode::NotAuthorized, || signed("good", sock("10.0.0.1", 80)));
}

#[test]
fn destination_loopback_v6_gets_1() {
    bad_input(ErrorCode::MalformedMessage, || signed("good", sock("::1", 22)));
}

#[test]
fn destination_hag_own_address_gets_32() {
    bad_input(ErrorCode::NotAuthorized, || signed("good", sock(HAG_OUT4, 22)));
    bad_input(ErrorCode::NotAuthorized, || signed("good", sock(HAG4, 5124)));
}

#[test]
fn closed_port_gets_96() {
    bad_input(ErrorCode::ConnectionReset, || signed("good", sock(INET4, 9)));
}

#[test]
fn unroutable_destination_gets_65() {
    // No route on hag itself, so no ICMP message: the converter's Network Failure (97 needs an ICMP
    // destination unreachable, `tests/tests/rfc8803.rs`).
    bad_input(ErrorCode::NetworkFailure, || signed("good", sock("203.0.113.9", 80)));
}

#[test]
fn blackholed_destination_gets_65_after_connect_timeout() {
    bad_input(ErrorCode::NetworkFailure, || signed("good", sock("198.51.100.9", 80)));
}

#[test]
fn ipv6_client_and_destination_are_relayed() {
    let bed = Bed::new();
    bed.client(async {
        let first = signed("good", sock(INET6, ECHO_PORT));
        let (mut s, sent) = mptcp::connect_with_data(sock(HAG6, 5124), &first, &mptcp_opts(None)).await.unwrap();
        assert_eq!(sent, first.len(), "Convert message in the SYN over IPv6 too");
        assert!(mptcp::info(&s).unwrap().is_some(), "MPTCP over IPv6");
        let Reply::Message(m, _) = read_reply(&mut s).await else { panic!("closed") };
        assert_eq!(m, Message::success());
        EchoSession(s).ping(b"over v6").await;
    });
}

#[test]
fn hag_without_server_tfo_bits_warns_and_still_serves_tfo_clients() {
    let mut bed = Bed::with_hag_tfo(1);
    let mptcp_kept = bed.client(async {
        let s = fresh_echo("good").await;
        mptcp::info(&s.0).unwrap().is_some()
    });
    bed.hag.kill();
    let log = bed.hag_log();
    assert!(log.contains("TCP Fast Open is not fully enabled"), "startup warning:\n{log}");
    // Kernel behaviour, reported rather than asserted: SYN data the server does not take made Linux 6.18
    // fall back to plain TCP in our runs.
    eprintln!("MPTCP kept without server TFO: {mptcp_kept}");
}

#[test]
fn silent_client_is_closed_at_the_header_deadline() {
    let bed = Bed::new();
    let mut session = Some(bed.client(fresh_echo("good")));
    let (closed_after, got) = bed.client(async {
        let s = TcpStream::connect(hag_addr()).await.unwrap();
        let t = Instant::now();
        let mut s = s;
        let mut buf = [0u8; 64];
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf)).await.expect("closed in 10s");
        (t.elapsed(), n.unwrap_or(0))
    });
    assert_eq!(got, 0, "closed without a reply");
    assert!(
        closed_after >= HEADER_DEADLINE - Duration::from_millis(100) && closed_after < HEADER_DEADLINE * 3,
        "closed after {closed_after:?}, deadline {HEADER_DEADLINE:?}"
    );
    bed.assert_still_serving(&mut session);
}

#[test]
fn connections_over_the_per_cpe_limit_get_64() {
    let bed = Bed::new();
    let mut session = Some(bed.client(fresh_echo("good")));
    let (held, over) = bed.client(async {
        let mut held = Vec::new();
        for _ in 0..PER_CPE_LIMIT {
            held.push(fresh_echo("limit").await);
        }
        let (mut s, _) = connect(&signed("limit", sock(INET4, ECHO_PORT)), mptcp_opts(None)).await.unwrap();
        (held, read_reply(&mut s).await)
    });
    match over {
        Reply::Message(m, _) => assert_eq!(m.error(), Some(ErrorCode::ResourceExceeded), "{}", bed.hag_log()),
        Reply::Closed(b) => panic!("closed without reply {b:?}"),
    }
    bed.assert_still_serving(&mut session);
    // Once one closes, the CPE may connect again.
    bed.client(async move {
        let mut held = held;
        drop(held.pop());
        tokio::time::sleep(Duration::from_millis(300)).await;
        fresh_echo("limit").await;
        held
    });
}

// ---------------------------------------------------------------------------------------------------------
// the success reply leaves with the destination's first bytes, or alone when the destination is silent.
// ---------------------------------------------------------------------------------------------------------

#[test]
fn success_reply_leaves_with_the_destinations_first_bytes() {
    let bed = Bed::new();
    let (with_answer, silent, waiting) = bed.client(async {
        // The echo server answers the request's bytes at once: one write, header and answer.
        let mut first = signed("good", sock(INET4, ECHO_PORT));
        first.extend_from_slice(b"question");
        let (mut s, _) = connect(&first, mptcp_opts(Some(CLI4))).await.unwrap();
        let Reply::Message(m, rest) = read_reply(&mut s).await else { panic!("closed") };
        assert_eq!(m, Message::success());
        // Bytes the bulk server does not answer (it waits for a 16-byte header): the reply goes alone once the
        // wait is over.
        let t = Instant::now();
        let mut first = signed("good", sock(INET4, BULK_PORT));
        first.extend_from_slice(b"four");
        let (mut quiet, _) = connect(&first, mptcp_opts(Some(CLI4))).await.unwrap();
        let Reply::Message(m2, rest2) = read_reply(&mut quiet).await else { panic!("closed") };
        assert_eq!((m2, rest2), (Message::success(), Vec::new()));
        let silent = t.elapsed();
        // No client bytes with the message: the client may be waiting for the reply, which comes at once.
        let t = Instant::now();
        let (mut bare, _) = connect(&signed("good", sock(INET4, ECHO_PORT)), mptcp_opts(Some(CLI4))).await.unwrap();
        let Reply::Message(m3, _) = read_reply(&mut bare).await else { panic!("closed") };
        assert_eq!(m3, Message::success());
        let waiting = t.elapsed();
        EchoSession(bare).ping(b"after the reply").await;
        (rest, silent, waiting)
    });
    assert_eq!(with_answer, b"question", "the answer came in the reply's segment");
    assert!(silent >= Duration::from_millis(90) && silent < Duration::from_secs(1), "silent reply after {silent:?}");
    assert!(waiting < Duration::from_millis(90), "reply to a client without bytes after {waiting:?}");
}

// ---------------------------------------------------------------------------------------------------------
// held connections (Hold + Auth): bounded per CPE, used later without a new handshake, closed when unused.
// ---------------------------------------------------------------------------------------------------------

/// A signed hold request of `cpe`, sent without TFO (as hcpe's pool does); returns the socket after the
/// reply, and the reply.
async fn hold(cpe: &str) -> (TcpStream, Reply) {
    let request = auth::signed_hold(&KEY, cpe, now(), auth::random_nonce().unwrap()).unwrap();
    let opts = ConnectOptions { fastopen: false, ..mptcp_opts(Some(CLI4)) };
    let (mut s, _) = connect(&request, opts).await.unwrap();
    let reply = read_reply(&mut s).await;
    (s, reply)
}

#[test]
fn held_connections_are_bounded_per_cpe_and_carry_a_later_request() {
    let bed = Bed::new();
    let mut session = Some(bed.client(fresh_echo("good")));
    let (mut held, over) = bed.client(async {
        let mut held = Vec::new();
        for _ in 0..MAX_HELD_PER_CPE {
            let (s, reply) = hold("hold").await;
            let Reply::Message(m, rest) = reply else { panic!("hold closed without a reply") };
            assert_eq!((m, rest), (Message::success(), Vec::new()), "held: bare header, nothing after it");
            held.push(s);
        }
        (held, hold("hold").await.1)
    });
    match over {
        Reply::Message(m, _) => assert_eq!(m.error(), Some(ErrorCode::ResourceExceeded), "{}", bed.hag_log()),
        Reply::Closed(b) => panic!("closed without reply {b:?}"),
    }
    assert!(bed.hag_log().contains("too many held connections for this CPE (2)"), "{}", bed.hag_log());
    bed.assert_still_serving(&mut session);

    // A held connection carries a plain Connect (no Auth: the connection is authenticated) and the first
    // bytes, well after the header deadline; its hold slot is free again at once.
    std::thread::sleep(HEADER_DEADLINE + Duration::from_millis(200));
    let s = held.pop().unwrap();
    let held_again = bed.client(async move {
        let mut s = s;
        let mut first = Message::connect_request(sock(INET4, ECHO_PORT)).to_bytes().unwrap();
        first.extend_from_slice(b"pooled");
        s.write_all(&first).await.unwrap();
        let Reply::Message(m, rest) = read_reply(&mut s).await else { panic!("held connection closed") };
        assert_eq!(m, Message::success());
        expect_rest(&mut s, rest, b"pooled").await;
        EchoSession(s).ping(b"and more").await;
        hold("hold").await
    });
    assert!(matches!(held_again.1, Reply::Message(ref m, _) if *m == Message::success()), "slot not given back");

    // A hold must be authenticated and name no destination; a held connection cannot hold again.
    let trusted_hold = bed.client(async {
        let bytes = Message { tlvs: vec![convert::Tlv::Hold] }.to_bytes().unwrap();
        let opts = ConnectOptions { fastopen: false, ..mptcp_opts(Some(CLI4_TRUSTED)) };
        let (mut s, _) = connect(&bytes, opts).await.unwrap();
        read_reply(&mut s).await
    });
    assert!(matches!(trusted_hold, Reply::Message(ref m, _) if m.error() == Some(ErrorCode::MalformedMessage)));
    let s = held.pop().unwrap();
    let twice = bed.client(async move {
        let mut s = s;
        let again = auth::signed_hold(&KEY, "hold", now(), auth::random_nonce().unwrap()).unwrap();
        s.write_all(&again).await.unwrap();
        read_reply(&mut s).await
    });
    assert!(matches!(twice, Reply::Message(ref m, _) if m.error() == Some(ErrorCode::MalformedMessage)));
    bed.assert_still_serving(&mut session);
    drop(held_again);
}

#[test]
fn unused_held_connection_is_closed_at_the_hold_timeout() {
    let bed = Bed::new();
    let (closed_after, got) = bed.client(async {
        let (mut s, reply) = hold("hold-expiry").await;
        assert!(matches!(reply, Reply::Message(ref m, _) if *m == Message::success()));
        let t = Instant::now();
        let mut buf = [0u8; 64];
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf)).await.expect("closed in 10s");
        (t.elapsed(), n.unwrap_or(0))
    });
    assert_eq!(got, 0, "closed without another reply");
    assert!(
        closed_after >= HOLD_TIMEOUT - Duration::from_millis(100) && closed_after < HOLD_TIMEOUT * 2,
        "closed after {closed_after:?}, hold timeout {HOLD_TIMEOUT:?}"
    );
}

// ---------------------------------------------------------------------------------------------------------
// a plain-TCP client from a trusted prefix without an Auth TLV works end to end.
// ---------------------------------------------------------------------------------------------------------

#[test]
fn trusted_plain_tcp_client_without_auth_is_relayed() {
    let mut bed = Bed::new();
    bed.client(async {
        let opts = ConnectOptions { mptcp: false, fastopen: false, ..mptcp_opts(Some(CLI4_TRUSTED)) };
        let mut first = Message::connect_request(sock(INET4, ECHO_PORT)).to_bytes().unwrap();
        first.extend_from_slice(b"hi");
        let (mut s, _) = connect(&first, opts).await.unwrap();
        assert!(mptcp::info(&s).unwrap().is_none(), "plain TCP");
        let Reply::Message(m, rest) = read_reply(&mut s).await else { panic!("closed") };
        assert_eq!(m, Message::success());
        expect_rest(&mut s, rest, b"hi").await;
        let mut e = EchoSession(s);
        e.ping(b"trusted and plain").await;
    });
    // The same request from the untrusted address is refused.
    let untrusted = bed.error_for(Message::connect_request(sock(INET4, ECHO_PORT)).to_bytes().unwrap());
    assert_eq!(untrusted, Some(32));
    bed.hag.kill();
    let log = bed.hag_log();
    let stopped = log.lines().find(|l| l.contains("stopped")).unwrap_or_else(|| panic!("no stats:\n{log}"));
    assert!(stopped.contains(" fallback=1 "), "the plain TCP client was counted as fallback: {stopped}");
}

// ---------------------------------------------------------------------------------------------------------
// config errors exit 64 naming the field; the shipped example checks out.
// ---------------------------------------------------------------------------------------------------------

fn run_hag(args: &[&str]) -> (i32, String) {
    let out = std::process::Command::new(bin_path("hag")).args(args).output().unwrap();
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn bad_configs_exit_64_naming_the_field() {
    let dir = TempDir::new("cfg");
    std::fs::write(dir.0.join("k"), KEY).unwrap();
    let cases = [
        ("unknown key", "listen: ['127.0.0.1']\nlimits: {idle_timout: 5s}\n", "limits.idle_timout"),
        ("bad address", "listen: ['127.0.0.1', '300.1.2.3']\n", "listen[1]"),
        ("missing key file", "clients: {cpe-x: {key_file: nowhere.key}}\n", "clients.cpe-x.key_file"),
        ("bad prefix", "trusted_sources: [10.0.0.0/40]\n", "trusted_sources[0]"),
    ];
    for (what, yaml, field) in cases {
        let path = dir.0.join("hag.yaml");
        std::fs::write(&path, yaml).unwrap();
        for check in [true, false] {
            let mut args = vec!["--config", path.to_str().unwrap()];
            if check {
                args.push("--check-config");
            }
            let (code, stderr) = run_hag(&args);
            assert_eq!(code, 64, "{what} (check={check}): {stderr}");
            assert!(stderr.contains(&format!("{field}: ")), "{what}: stderr must name `{field}`: {stderr}");
        }
    }
    let (code, stderr) = run_hag(&["--config", dir.0.join("absent.yaml").to_str().unwrap(), "--check-config"]);
    assert_eq!(code, 64, "{stderr}");
}

#[test]
fn shipped_example_passes_check_config() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples/hag.yaml");
    let (code, stderr) = run_hag(&["--config", example.to_str().unwrap(), "--check-config"]);
    assert_eq!(code, 0, "{stderr}");
}

// ---------------------------------------------------------------------------------------------------------
// SIGTERM with open relays: exit 0 within the drain deadline.
// ---------------------------------------------------------------------------------------------------------

#[test]
fn sigterm_with_open_relays_exits_0_within_the_drain_deadline() {
    let mut bed = Bed::new();
    let sessions = bed.client(async {
        let mut v = Vec::new();
        for _ in 0..3 {
            v.push(fresh_echo("drain").await);
        }
        v
    });
    let t = Instant::now();
    bed.hag.signal(libc::SIGTERM);
    let status = bed.hag.wait_timeout(DRAIN_DEADLINE + Duration::from_secs(3));
    let took = t.elapsed();
    let status = status.unwrap_or_else(|| panic!("hag still running {took:?} after SIGTERM\n{}", bed.hag_log()));
    assert!(status.success(), "exit status {status:?}\n{}", bed.hag_log());
    assert!(took < DRAIN_DEADLINE + Duration::from_secs(1), "took {took:?}, drain deadline {DRAIN_DEADLINE:?}");
    // New connections are refused once it stopped accepting.
    let refused = bed.client(async { TcpStream::connect(hag_addr()).await.is_err() });
    assert!(refused, "the hag still accepts after SIGTERM");
    drop(sessions);
    let _ = &bed.cli;
    let _ = &bed.hag_ns;
}
