//! Many sequential MPTCP + TCP Fast Open connections through the testbed (cpe -> dsl emulator -> hag), each
//! one the hcpe/hag exchange in miniature: the client puts a request into the SYN
//! ([`common::mptcp::connect_with_data`]), the server reads it and answers with a 4-byte header at once (as
//! hag does), the client must read that header. Every connection must get its header.
//!
//! The server applies [`common::mptcp::await_tfo_handshake`] before its reply, the workaround for the kernel
//! stall it documents: without it (`TFO_NO_WORKAROUND=1`) most replies are never sent — every one with 5 ms
//! link delay — and `ss -M` in hag shows the reply on the MPTCP socket's write queue while the subflow has
//! sent nothing (`TFO_SS=1` prints that for the first stalls).
//!
//! Knobs of the first test for investigation: `TFO_N` connections, `TFO_DELAY_MS` one-way delay on both
//! links, `TFO_JOIN=1` adds an LTE `subflow` endpoint in cpe (second subflow).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::mptcp::{self, ConnectOptions};
use tests::emulator::{LinkConfig, Shape};
use tests::testbed::{Testbed, TestbedConfig, addr};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const PORT: u16 = 7443;

/// What the server did, per test.
#[derive(Debug, Default)]
struct ServerCounters {
    /// Requests read whole.
    read: AtomicUsize,
    /// Connections accepted before the third ACK (the workaround waited).
    waited: AtomicUsize,
    /// Replies written.
    replied: AtomicUsize,
}
const REQUEST_LEN: usize = 120;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// The server: per connection read the whole request, reply with a 4-byte header, then echo until EOF.
fn serve(stop: Arc<AtomicBool>, counters: Arc<ServerCounters>) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async move {
        let l = mptcp::listen(SocketAddr::new(addr::HAG_SERVICE.v4.into(), PORT), 1024, Some(1024)).unwrap();
        while !stop.load(Ordering::Relaxed) {
            let Ok(Ok((mut s, _))) = tokio::time::timeout(Duration::from_millis(200), l.accept()).await else {
                continue;
            };
            let counters = counters.clone();
            tokio::spawn(async move {
                let mut req = vec![0u8; REQUEST_LEN];
                if s.read_exact(&mut req).await.is_err() {
                    return;
                }
                counters.read.fetch_add(1, Ordering::Relaxed);
                if std::env::var("TFO_NO_WORKAROUND").is_err()
                    && mptcp::await_tfo_handshake(&s, Duration::from_secs(3)).await.unwrap()
                {
                    counters.waited.fetch_add(1, Ordering::Relaxed);
                }
                if s.write_all(b"RPLY").await.is_err() {
                    return;
                }
                counters.replied.fetch_add(1, Ordering::Relaxed);
                let mut buf = [0u8; 4096];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
}

#[derive(Debug, Default)]
struct Outcome {
    ok: usize,
    /// Header not read within 2 s by the readiness-driven read.
    stalled: Vec<String>,
}

async fn run_clients(n: usize, hag_ns: String, counters: Arc<ServerCounters>) -> Outcome {
    let dst = SocketAddr::new(addr::HAG_SERVICE.v4.into(), PORT);
    let opts = ConnectOptions {
        bind: Some(SocketAddr::new(addr::CPE_DSL.v4.into(), 0)),
        timeout: Duration::from_secs(3),
        ..ConnectOptions::default()
    };
    let request = vec![0x5au8; REQUEST_LEN];
    let mut out = Outcome::default();
    for i in 0..n {
        let (mut s, sent) = mptcp::connect_with_data(dst, &request, &opts).await.expect("connect");
        if sent < request.len() {
            s.write_all(&request[sent..]).await.unwrap();
        }
        let mut hdr = [0u8; 4];
        match tokio::time::timeout(Duration::from_secs(2), s.read_exact(&mut hdr)).await {
            Ok(Ok(_)) => {
                assert_eq!(&hdr, b"RPLY");
                out.ok += 1;
            }
            res => {
                let acked = mptcp::syn_data_acked(&s).ok();
                let info = mptcp::info(&s).map(|i| i.map(|i| (i.subflows, i.flags, i.snd_una, i.rcv_nxt)));
                if std::env::var("TFO_SS").is_ok() && out.stalled.len() < 2 {
                    let port = s.local_addr().unwrap().port().to_string();
                    let f = format!("sport = :{port} or dport = :{port}");
                    let c = std::process::Command::new("ss").args(["-tmiMnoe", &f]).output().unwrap();
                    let h = std::process::Command::new("ip")
                        .args(["netns", "exec", &hag_ns, "ss", "-tmiMnoe", &f])
                        .output()
                        .unwrap();
                    println!(
                        "stall #{i} read={} replied={}\ncpe ss:\n{}\nhag ss:\n{}",
                        counters.read.load(Ordering::Relaxed),
                        counters.replied.load(Ordering::Relaxed),
                        String::from_utf8_lossy(&c.stdout),
                        String::from_utf8_lossy(&h.stdout)
                    );
                }
                let mut peek = [0u8; 4];
                let readable = s.try_read(&mut peek);
                out.stalled.push(format!(
                    "#{i}: {res:?} sent={sent} syn_data_acked={acked:?} info={info:?} try_read={readable:?} local={:?}",
                    s.local_addr()
                ));
            }
        }
        drop(s);
    }
    out
}

/// 2000 connections without link delay: most are accepted before the third ACK (the server's reply races it).
#[test]
fn sequential_mptcp_tfo_connections_all_get_the_reply() {
    run_case(env_or("TFO_N", 2000), env_or("TFO_DELAY_MS", 0.0), env_or("TFO_JOIN", 0) == 1);
}

/// 5 ms one-way delay and a second subflow endpoint: every connection is accepted before the third ACK.
#[test]
fn mptcp_tfo_with_link_delay_and_second_subflow_all_get_the_reply() {
    run_case(200, 5.0, true);
}

fn run_case(n: usize, delay: f64, join: bool) {
    let shape = Shape::default().delay_ms(delay);
    let tb = Testbed::new(TestbedConfig {
        dsl: LinkConfig::symmetric(shape),
        lte: LinkConfig { seed: 2, ..LinkConfig::symmetric(shape) },
        ..TestbedConfig::default()
    })
    .unwrap();
    if join {
        tb.cpe.exec_ok("ip", &["mptcp", "limits", "set", "subflows", "2", "add_addr_accepted", "2"]).unwrap();
        tb.hag.exec_ok("ip", &["mptcp", "limits", "set", "subflows", "2", "add_addr_accepted", "2"]).unwrap();
        tb.cpe
            .exec_ok("ip", &["mptcp", "endpoint", "add", &addr::CPE_LTE.v4.to_string(), "dev", "lte0", "subflow"])
            .unwrap();
    }
    let stop = Arc::new(AtomicBool::new(false));
    let counters = Arc::new(ServerCounters::default());
    let server = {
        let (stop, counters) = (stop.clone(), counters.clone());
        tb.hag.thread(move || serve(stop, counters)).unwrap()
    };
    std::thread::sleep(Duration::from_millis(300));
    let t0 = Instant::now();
    let hag_ns = tb.hag.name().to_string();
    let client_counters = counters.clone();
    let out = tb
        .cpe
        .within(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(run_clients(n, hag_ns, client_counters))
        })
        .unwrap();
    let elapsed = t0.elapsed();
    let nstat = |ns: &tests::Netns| ns.exec_ok("nstat", &["-az"]).unwrap_or_default();
    let pick = |s: String| {
        s.lines()
            .filter(|l| (l.contains("MPTcp") || l.contains("FastOpen")) && !l.trim_end().ends_with(" 0 0.0"))
            .map(|l| l.split_whitespace().take(2).collect::<Vec<_>>().join("="))
            .collect::<Vec<_>>()
            .join(" ")
    };
    println!(
        "server: {} requests read, {} replies written, {} accepted before the third ACK (workaround waited)",
        counters.read.load(Ordering::Relaxed),
        counters.replied.load(Ordering::Relaxed),
        counters.waited.load(Ordering::Relaxed)
    );
    println!(
        "{n} connections (delay {delay} ms, join {join}) in {elapsed:?}: {} ok, {} stalled",
        out.ok,
        out.stalled.len()
    );
    println!("cpe: {}", pick(nstat(&tb.cpe)));
    println!("hag: {}", pick(nstat(&tb.hag)));
    for s in out.stalled.iter().take(10) {
        println!("{s}");
    }
    stop.store(true, Ordering::Relaxed);
    server.join().unwrap();
    assert!(out.stalled.is_empty(), "{} of {n} connections never got the reply", out.stalled.len());
}
