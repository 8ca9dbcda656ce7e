//! Bench (not a test): `cargo bench -p hag --bench relay`.
//!
//! Prints, from one run on loopback in the current namespace:
//! - goodput of one download relayed by the hag (client -MPTCP-> hag -TCP-> server) against two baselines
//!   measured in the same run: the same download over plain TCP directly, and through a plain TCP copy proxy
//!   (tokio `copy_bidirectional`), as ratios;
//! - new relayed connections per second (Convert + Auth + connect + reply + close), against direct TCP
//!   connections per second.
//!
//! The hag runs in-process on its own runtime (2 workers), clients and server on another. TFO is whatever the
//! namespace's sysctl allows (the root namespace is usually client-only, so the Convert message goes after the
//! handshake here; the e2e tests cover TFO). The hag's counters at the end show how many clients fell back.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::convert::{Message, auth};
use common::mptcp::{self, ConnectOptions};
use hag::{Config, Hag};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Runtime;

const KEY: &[u8] = b"bench key, not hex, 32 bytes ...";
const BULK: u64 = 2 << 30;
const CPS_SECS: f64 = 3.0;
const CPS_PARALLEL: usize = 8;

fn runtime(threads: usize) -> Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(threads).enable_all().build().unwrap()
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

/// Sends BULK bytes to every connection, then closes.
async fn download_server() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = l.accept().await.unwrap();
            tokio::spawn(async move {
                let buf = vec![0x5au8; 256 * 1024];
                let mut left = BULK;
                while left > 0 {
                    let n = left.min(buf.len() as u64) as usize;
                    if s.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                    left -= n as u64;
                }
                let _ = s.shutdown().await;
            });
        }
    });
    addr
}

/// Accepts and closes at once (for connection rate).
async fn close_server() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (s, _) = l.accept().await.unwrap();
            drop(s);
        }
    });
    addr
}

/// A copy proxy to `dst` (tokio `copy_bidirectional`): the baseline relay without Convert; its listener is
/// plain TCP or MPTCP.
async fn copy_proxy(dst: SocketAddr, mptcp_listener: bool) -> SocketAddr {
    let l = if mptcp_listener {
        mptcp::listen("127.0.0.1:0".parse().unwrap(), 1024, None).unwrap()
    } else {
        TcpListener::bind("127.0.0.1:0").await.unwrap()
    };
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut a, _) = l.accept().await.unwrap();
            tokio::spawn(async move {
                let mut b = TcpStream::connect(dst).await.unwrap();
                let _ = tokio::io::copy_bidirectional(&mut a, &mut b).await;
            });
        }
    });
    addr
}

async fn drain(mut s: TcpStream, skip_reply: bool) -> u64 {
    let mut buf = vec![0u8; 256 * 1024];
    let mut total = 0u64;
    let mut header = if skip_reply { 4 } else { 0 };
    loop {
        let n = s.read(&mut buf).await.unwrap();
        if n == 0 {
            return total;
        }
        let h = header.min(n);
        header -= h;
        total += (n - h) as u64;
    }
}

/// TFO only when this namespace lets the server side take SYN data without a cookie: on Linux 6.18 an MPTCP
/// client whose SYN data the server does not take ends up as a plain TCP (fallback) connection.
fn tfo() -> bool {
    static TFO: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *TFO.get_or_init(|| {
        let server = mptcp::check_tfo_sysctl(mptcp::TfoRole::Server);
        let client = mptcp::check_tfo_sysctl(mptcp::TfoRole::Client);
        if let Err(e) = server.as_ref().and(client.as_ref()) {
            println!("(no TCP Fast Open in this run: {e})");
        }
        server.is_ok() && client.is_ok()
    })
}

fn mptcp_opts() -> ConnectOptions {
    ConnectOptions { fastopen: tfo(), timeout: Duration::from_secs(5), ..ConnectOptions::default() }
}

async fn via_hag(hag: SocketAddr, dst: SocketAddr, mptcp: bool) -> TcpStream {
    let req = auth::signed_request(KEY, dst, "bench", now(), auth::random_nonce().unwrap()).unwrap();
    let (mut s, sent) = mptcp::connect_with_data(hag, &req, &ConnectOptions { mptcp, ..mptcp_opts() }).await.unwrap();
    s.write_all(&req[sent..]).await.unwrap();
    s
}

fn gbit(bytes: u64, secs: f64) -> f64 {
    bytes as f64 * 8.0 / secs / 1e9
}

async fn timed_download(connect: impl Future<Output = TcpStream>, skip_reply: bool) -> f64 {
    let t = Instant::now();
    let s = connect.await;
    let n = drain(s, skip_reply).await;
    assert_eq!(n, BULK, "short download");
    gbit(n, t.elapsed().as_secs_f64())
}

async fn rate<F, Fut>(make: F) -> f64
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send,
{
    let make = Arc::new(make);
    let done = Arc::new(AtomicU64::new(0));
    let t = Instant::now();
    let deadline = t + Duration::from_secs_f64(CPS_SECS);
    let mut tasks = Vec::new();
    for _ in 0..CPS_PARALLEL {
        let (make, done) = (make.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            while Instant::now() < deadline {
                make().await;
                done.fetch_add(1, Relaxed);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    done.load(Relaxed) as f64 / t.elapsed().as_secs_f64()
}

fn main() {
    let dir = std::env::temp_dir().join(format!("hag-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    testkit::write_secret(dir.join("bench.key"), KEY).unwrap();
    let yaml = "listen: ['127.0.0.1:0']\nclients: {bench: {key_file: bench.key}}\n\
                destinations: {allow: [127.0.0.0/8]}\nlimits: {max_connections_per_cpe: 100000}\nlog_level: warn\n";
    let config = Config::from_yaml(yaml, &dir.join("hag.yaml")).unwrap();
    let _ = std::fs::remove_dir_all(&dir);

    let hag_rt = runtime(2);
    let (hag_addr, stats, stop) = hag_rt.block_on(async {
        let hag = Hag::bind(config).unwrap();
        let (addr, stats) = (hag.local_addrs()[0], hag.stats());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(hag.run(async move {
            let _ = rx.await;
        }));
        (addr, stats, tx)
    });

    let rt = runtime(2);
    rt.block_on(async move {
        let bulk = download_server().await;
        let closer = close_server().await;
        let proxy = copy_proxy(bulk, false).await;
        let mproxy = copy_proxy(bulk, true).await;
        let mptcp_to = |addr: SocketAddr| async move {
            let opts = ConnectOptions { fastopen: false, ..mptcp_opts() };
            mptcp::connect_with_data(addr, &[], &opts).await.unwrap().0
        };

        // Warm up (page cache of buffers, first-connection costs), then alternate to spread noise.
        let _ = timed_download(async { TcpStream::connect(bulk).await.unwrap() }, false).await;
        let (mut direct, mut copy, mut hag, mut hag_tcp) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let mut mcopy = Vec::new();
        for _ in 0..3 {
            direct.push(timed_download(async { TcpStream::connect(bulk).await.unwrap() }, false).await);
            copy.push(timed_download(async { TcpStream::connect(proxy).await.unwrap() }, false).await);
            hag.push(timed_download(via_hag(hag_addr, bulk, true), true).await);
            hag_tcp.push(timed_download(via_hag(hag_addr, bulk, false), true).await);
            mcopy.push(timed_download(mptcp_to(mproxy), false).await);
        }
        let best = |v: &[f64]| v.iter().cloned().fold(0.0, f64::max);
        let (d, c, h, ht) = (best(&direct), best(&copy), best(&hag), best(&hag_tcp));
        let mc = best(&mcopy);
        println!("relay goodput, one {} MiB download over loopback (best of 3):", BULK >> 20);
        println!("  direct plain TCP                 {d:7.2} Gbit/s");
        println!("  plain TCP copy proxy (baseline)  {c:7.2} Gbit/s");
        println!("  hag (MPTCP in, TCP out)          {h:7.2} Gbit/s");
        println!("  hag, plain TCP client (fallback) {ht:7.2} Gbit/s");
        println!("  MPTCP-in copy proxy              {mc:7.2} Gbit/s");
        println!("  ratio hag / copy proxy           {:7.2}", h / c);
        println!("  ratio hag TCP-in / copy proxy    {:7.2}", ht / c);
        println!("  ratio hag / MPTCP-in copy proxy  {:7.2}", h / mc);
        println!("  ratio hag / direct               {:7.2}", h / d);

        // Each client reads until the server side closed first, so TIME_WAIT lands on the server side and the
        // client's ephemeral ports do not run out (same for both measurements).
        let direct_cps = rate(move || async move {
            let mut s = TcpStream::connect(closer).await.unwrap();
            let mut rest = Vec::new();
            let _ = s.read_to_end(&mut rest).await;
        })
        .await;
        let hag_cps = rate(move || async move {
            let mut s = via_hag(hag_addr, closer, true).await;
            let mut reply = [0u8; 4];
            s.read_exact(&mut reply).await.unwrap();
            assert_eq!(&reply, &Message::success().to_bytes().unwrap()[..]);
            let mut rest = Vec::new();
            let _ = s.read_to_end(&mut rest).await;
        })
        .await;
        println!("new connections per second ({CPS_PARALLEL} in parallel, {CPS_SECS} s):");
        println!("  direct TCP connect               {direct_cps:9.0} /s");
        println!("  hag (MPTCP + Convert + Auth)     {hag_cps:9.0} /s");
        println!("  ratio                            {:9.2}", hag_cps / direct_cps);
    });
    let s = stats.snapshot();
    println!("hag counters: {s}");
    let _ = stop.send(());
}
