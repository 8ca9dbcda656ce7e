//! A CPE whose clock is wrong, as routers boot without a real-time clock: hcpe from the shipped example
//! config runs under libfaketime with its wall clock 3 hours behind (its monotonic clock untouched), hag
//! from its example with the right time. hcpe's first signed request is refused for its timestamp with hag's
//! time in a Time TLV; hcpe signs with that time from then on, and a LAN download goes through hag within
//! 5 s of hcpe's start. Replay protection is untouched: hag still takes a nonce once, and still refuses a
//! stale timestamp (telling the time again, for that request only).

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::convert::{ErrorCode, auth};
use tests::daemons::{self, LanDownload};
use tests::testbed::{Testbed, TestbedConfig, addr};
use tests::traffic::Server;

const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";
const BEHIND: Duration = Duration::from_secs(3 * 3600);

fn now() -> Duration {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap()
}

fn key(dir: &Path) -> Vec<u8> {
    let hex = std::fs::read_to_string(dir.join("cpe.key")).unwrap();
    let hex = hex.trim();
    (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap()).collect()
}

#[test]
fn a_cpe_three_hours_behind_gets_a_download_through_hag_within_5_s() {
    assert!(Path::new(LIBFAKETIME).exists(), "needs Debian's faketime package (libfaketime)");
    let tb = Testbed::new(TestbedConfig::default()).unwrap();
    let dir = daemons::config_dir("cpe-clock").unwrap();
    let server = Server::start(&tb.inet, 0).unwrap();
    let dst = SocketAddr::new(addr::INET_SERVER.ip(false), server.port());
    let hag_cfg = daemons::write_config(dir.path(), "hag.yaml", &daemons::example_hag_yaml().unwrap()).unwrap();
    let mut hag = daemons::start(&tb.hag, "hag", &hag_cfg, &["listening"]).unwrap();
    let hcpe_cfg = daemons::write_config(dir.path(), "hcpe.yaml", &daemons::example_hcpe_yaml().unwrap()).unwrap();

    let started = Instant::now();
    let faketime = [("LD_PRELOAD", LIBFAKETIME), ("FAKETIME", "-3h"), ("FAKETIME_DONT_FAKE_MONOTONIC", "1")];
    let mut hcpe = daemons::start_env(&tb.cpe, "hcpe", &hcpe_cfg, &["hcpe ready"], &faketime).unwrap();
    let download = LanDownload::start(&tb, dst, 4 << 20, Duration::from_secs(10)).unwrap();
    let transfer = download.join().unwrap_or_else(|e| panic!("download: {e}\n{}\n{}", hcpe.log(), hag.log()));
    let took = started.elapsed();
    eprintln!("hcpe 3 h behind: a 4 MiB download through hag done {took:?} after hcpe's start");
    assert_eq!(transfer.bytes, 4 << 20);
    assert!(took <= Duration::from_secs(5), "{took:?}\n{}", hcpe.log());
    assert!(hag.wait_for_log("relay done", Duration::from_secs(5)), "the download went through hag:\n{}", hag.log());
    let (hcpe_log, hag_log) = (hcpe.log(), hag.log());
    assert!(hcpe_log.contains("signing with hag's time"), "hcpe learnt hag's time:\n{hcpe_log}");
    assert!(hcpe_log.contains("behind_s=10799") || hcpe_log.contains("behind_s=10800"), "{hcpe_log}");
    assert!(hag_log.contains("told the CPE hag's time"), "{hag_log}");
    assert!(!hcpe_log.contains("hag unavailable"), "no fallback to direct:\n{hcpe_log}");
    // The uplink probes are signed with the same clock: hag's responder takes them.
    assert!(hcpe.wait_for_log(r#"to="up" trial=false source="probes""#, Duration::from_secs(5)), "{}", hcpe.log());

    // The same exchange by hand from the CPE's namespace, to see the bytes.
    let key = key(dir.path());
    let hag_addr = SocketAddr::new(addr::HAG_SERVICE.ip(false), 5124);
    let source = Some(addr::CPE_DSL.ip(false));
    let request =
        |timestamp: u64, nonce: [u8; 16]| auth::signed_request(&key, dst, "example-cpe", timestamp, nonce).unwrap();
    // A stale timestamp: Not Authorized, with hag's time signed for this request's nonce.
    let nonce = auth::random_nonce().unwrap();
    let stale = request((now() - BEHIND).as_secs(), nonce);
    let reply = tests::cpe::exchange(&tb.cpe, hag_addr, source, stale.clone()).unwrap().message;
    assert_eq!(reply.error(), Some(ErrorCode::NotAuthorized));
    let told = auth::verify_time(&key, &nonce, reply.time().expect("a Time TLV")).unwrap();
    let off = Duration::from_millis(told).abs_diff(now());
    assert!(off < Duration::from_secs(2), "hag's time is {off:?} off");
    assert!(auth::verify_time(&key, &[0; 16], reply.time().unwrap()).is_err(), "bound to the request's nonce");
    // Signed with hag's time: relayed; the same bytes again: refused, and no time is told for a replay.
    let fresh = request(told / 1000, auth::random_nonce().unwrap());
    let first = tests::cpe::exchange(&tb.cpe, hag_addr, source, fresh.clone()).unwrap().message;
    assert_eq!(first.error(), None, "{first:?}");
    let replayed = tests::cpe::exchange(&tb.cpe, hag_addr, source, fresh).unwrap().message;
    assert_eq!(replayed.error(), Some(ErrorCode::NotAuthorized));
    assert!(replayed.time().is_none(), "{replayed:?}");
    // The stale request replayed: still refused.
    let again = tests::cpe::exchange(&tb.cpe, hag_addr, source, stale).unwrap().message;
    assert_eq!(again.error(), Some(ErrorCode::NotAuthorized));
    drop(server);
}
