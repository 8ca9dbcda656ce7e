//! hcpe's pool of ready connections (`docs/zero-rtt.md`) on the testbed, daemons as shipped (the uplink
//! manager in charge, LTE `adaptive`, the pool at its defaults): a LAN connection taken onto a ready
//! connection gets its download over both uplinks from its first 100 ms; an upload on a ready connection that
//! waited gets hag's full receive window at once (`hag/src/server.rs`, `HELD_RECEIVE_WINDOW`); a silent DSL cut never leaves a new
//! LAN connection on a ready connection whose only subflow was DSL, and the first one after the cut succeeds
//! within the uplink manager's bound (1 s).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tests::daemons::{self, HagSpec, HcpeSpec, LanDownload};
use tests::emulator::{Direction, Shape};
use tests::netns::ChildGuard;
use tests::testbed::{Testbed, addr};
use tests::traffic::{Client, Server};

struct Bed {
    hcpe: ChildGuard,
    _hag: ChildGuard,
    server: Server,
    token: String,
    _dir: tempfile::TempDir,
    tb: Testbed,
}

impl Bed {
    /// DSL 50 Mbit/s 10 ms, LTE 30 Mbit/s 25 ms one-way; hag with its admin API, hcpe managed with LTE
    /// `adaptive` and its admin API; returns once both uplinks are up and the pool had time to fill.
    fn new(tag: &str) -> Bed {
        let tb = daemons::managed_testbed(Shape::mbit(50.0).delay_ms(10.0), Shape::mbit(30.0).delay_ms(25.0)).unwrap();
        let dir = daemons::config_dir(&format!("ready-pool-{tag}")).unwrap();
        let server = Server::start(&tb.inet, 0).unwrap();
        let hag =
            daemons::start_hag(&tb, dir.path(), &HagSpec { v6: false, admin: true, ..HagSpec::default() }).unwrap();
        let spec =
            HcpeSpec { managed: true, lte_mode: "adaptive".into(), v6: false, admin: true, ..HcpeSpec::default() };
        let hcpe = daemons::start_hcpe(&tb, dir.path(), &spec).unwrap();
        daemons::wait_up(&hcpe, 2, Duration::from_secs(10)).unwrap();
        let token = daemons::admin_token(dir.path()).unwrap();
        let bed = Bed { hcpe, _hag: hag, server, token, _dir: dir, tb };
        let deadline = Instant::now() + Duration::from_secs(10);
        while bed.pool("hcpe_pool_ready", &[]) < 4.0 {
            assert!(Instant::now() < deadline, "the pool did not fill:\n{}", bed.hcpe.log());
            std::thread::sleep(Duration::from_millis(50));
        }
        bed
    }

    fn dst(&self) -> SocketAddr {
        SocketAddr::new(addr::INET_SERVER.ip(false), self.server.port())
    }

    fn pool(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        daemons::metric(&self.tb.cpe, daemons::HCPE_ADMIN_PORT, &self.token, name, labels).unwrap()
    }

    fn taken(&self) -> f64 {
        self.pool("hcpe_pool_connections_total", &[("event", "taken")])
    }
}

#[test]
fn a_ready_connection_downloads_over_both_uplinks_from_its_first_100_ms() {
    let bed = Bed::new("both");
    let taken = bed.taken();
    let down = |tb: &Testbed| (tb.dsl.counters(Direction::Down).tx_bytes, tb.lte.counters(Direction::Down).tx_bytes);
    let (dsl0, lte0) = down(&bed.tb);
    let download = LanDownload::start(&bed.tb, bed.dst(), 1 << 20, Duration::from_secs(10)).unwrap();
    let window = download.started + Duration::from_millis(100);
    std::thread::sleep(window.saturating_duration_since(Instant::now()));
    let (dsl1, lte1) = down(&bed.tb);
    let transfer = download.join().unwrap_or_else(|e| panic!("download failed: {e}\n{}", bed.hcpe.log()));
    let (dsl_bytes, lte_bytes) = (dsl1 - dsl0, lte1 - lte0);
    eprintln!(
        "first 100 ms: DSL delivered {dsl_bytes} B, LTE {lte_bytes} B; first byte after {:?}, whole MiB in {:?}",
        transfer.first_byte, transfer.elapsed
    );
    assert_eq!(transfer.bytes, 1 << 20);
    assert_eq!(bed.taken(), taken + 1.0, "the download was not carried on a ready connection");
    // Probe replies are about 100 bytes every 200 ms: kilobytes are the download's.
    assert!(dsl_bytes > 8 << 10 && lte_bytes > 8 << 10, "DSL {dsl_bytes} B, LTE {lte_bytes} B in the first 100 ms");
}

/// The largest receive buffer (`ss` `skmem` `rb`) among hag's MPTCP sockets to CPEs.
fn hag_largest_receive_buffer(tb: &Testbed) -> u64 {
    let out = tb.hag.exec_ok("ss", &["-nmMH", "state", "established", "( sport = :5124 )"]).unwrap_or_default();
    out.split(|c: char| c == ',' || c == '(' || c.is_whitespace())
        .filter_map(|field| field.strip_prefix("rb")?.parse().ok())
        .max()
        .unwrap_or(0)
}

#[test]
fn an_upload_on_a_ready_connection_that_waited_gets_hags_full_receive_window() {
    let bed = Bed::new("upload");
    // Linux 6.18 leaves an MPTCP socket's receive buffer at its initial 128 KiB for about as long as the
    // connection was idle before its first bulk bytes: this wait makes that longer than `EARLY`.
    std::thread::sleep(Duration::from_secs(3));
    const EARLY: Duration = Duration::from_millis(1500);
    let taken = bed.taken();
    let dst = bed.dst();
    let size = 24u64 << 20;
    let started = Instant::now();
    let upload = bed.tb.lan.thread(move || Client::new(dst).timeout(Duration::from_secs(20)).upload(size)).unwrap();
    let mut early = 0;
    while !upload.is_finished() && started.elapsed() < EARLY {
        early = early.max(hag_largest_receive_buffer(&bed.tb));
        std::thread::sleep(Duration::from_millis(50));
    }
    let transfer = upload.join().unwrap().unwrap_or_else(|e| panic!("upload failed: {e}\n{}", bed.hcpe.log()));
    eprintln!(
        "upload of {size} B in {:?}; hag's largest receive buffer in its first {EARLY:?}: {early} B",
        transfer.elapsed
    );
    assert_eq!(transfer.bytes, size);
    assert_eq!(bed.taken(), taken + 1.0, "the upload was not carried on a ready connection");
    assert!(early >= 4 << 20, "hag's receive buffer was {early} B in the upload's first {EARLY:?}");
}

#[test]
fn a_silent_dsl_cut_strands_no_connection_on_a_ready_one() {
    let bed = Bed::new("cut");
    let dst = bed.dst();
    let dsl_ip = addr::CPE_DSL.v4;
    let taken_before = bed.taken();
    let cut = Instant::now();
    bed.tb.dsl.cut();
    // A new connection every 100 ms for 2 s, each a 256 KiB download.
    let attempts: Vec<_> = (0..20u32)
        .map(|i| {
            let start = cut + Duration::from_millis(100) * i;
            std::thread::sleep(start.saturating_duration_since(Instant::now()));
            bed.tb
                .lan
                .thread(move || {
                    let began = cut.elapsed();
                    let r = Client::new(dst).seed(u64::from(i)).timeout(Duration::from_secs(5)).download(256 << 10);
                    // (success, its first byte and its end, both after the cut)
                    (r.as_ref().is_ok(), r.map(|t| began + t.first_byte).ok(), cut.elapsed())
                })
                .unwrap()
        })
        .collect();
    // Meanwhile: every connection hcpe carries on a ready connection, with the local addresses of its subflows.
    let mut seen: HashMap<String, Vec<Vec<String>>> = HashMap::new();
    while attempts.iter().any(|a| !a.is_finished()) {
        let conns = daemons::connections(&bed.tb.cpe, daemons::HCPE_ADMIN_PORT, &bed.token).unwrap();
        for c in conns.as_array().unwrap().iter().filter(|c| c["ready"] == true) {
            let locals = c["subflows"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|f| daemons::subflow_ip(f, "local").map(|ip| ip.to_string()))
                .collect();
            seen.entry(c["id"].as_str().unwrap().to_owned()).or_default().push(locals);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let results: Vec<(bool, Option<Duration>, Duration)> = attempts.into_iter().map(|a| a.join().unwrap()).collect();
    let failed = results.iter().filter(|r| !r.0).count();
    // Judged like `uplink_failover`'s new connections: when the first one got through (its first byte), not
    // when its 256 KiB were done, which adds 0.2-0.35 s of transfer over LTE to the uplink manager's verdict.
    let first_ok = results.iter().filter_map(|r| r.1).min();
    let taken = bed.taken() - taken_before;
    let bypassed = bed.pool("hcpe_pool_connections_total", &[("event", "bypassed")]);
    let done: Vec<String> = results.iter().map(|r| format!("{:.0}", r.2.as_secs_f64() * 1e3)).collect();
    eprintln!(
        "after the cut: first byte of a successful connection {first_ok:?}, {failed} of 20 failed, {taken} on ready connections, \
         {bypassed} bypassed the pool, {} seen through the API; done at (ms after the cut): {}",
        seen.len(),
        done.join(" ")
    );
    let stranded: Vec<_> = seen
        .iter()
        .filter(|(_, views)| views.iter().any(|v| !v.is_empty() && v.iter().all(|ip| *ip == dsl_ip.to_string())))
        .collect();
    assert!(stranded.is_empty(), "ready connections with DSL subflows only: {stranded:?}\n{}", bed.hcpe.log());
    assert!(taken >= 1.0, "no connection after the cut was carried on a ready connection");
    let first_ok = first_ok.unwrap_or_else(|| panic!("no connection succeeded:\n{}", bed.hcpe.log()));
    assert!(first_ok <= Duration::from_secs(1), "first byte of a successful connection {first_ok:?} after the cut");
    assert_eq!(failed, 0, "{}", bed.hcpe.log());
}
