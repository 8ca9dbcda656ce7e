//! hcpe's admin API on the testbed with the real `hcpe` (uplink manager, admin API on 127.0.0.1:5126 in the
//! cpe namespace) and `hag`: during a download, `GET /api/v1/connections` lists it with two subflows whose
//! local addresses are the DSL and the LTE address; after `PATCH /api/v1/uplinks/lte {"mode":"backup"}` the
//! LTE subflow reports `backup: true` (in hcpe's list and, once the MP_PRIO arrived, in hag's) and LTE's share of the download (the link emulators' byte counters)
//! falls below 1 %; `DELETE` of the connection ends the download and unlists it. `/metrics` scraped on the way
//! is valid Prometheus text and counts the admin mode change; `POST /api/v1/reload` re-reads hcpe's file. The
//! same PATCH during an upload: once what LTE's subflow had queued drained (hcpe is the sender), LTE carries
//! under 1 % of the next 16 MiB.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use serde_json::Value;
use tests::daemons::{self, HCPE_ADMIN_PORT, HagSpec, HcpeSpec, LanDownload};
use tests::emulator::{Direction, Shape};
use tests::netns::ChildGuard;
use tests::testbed::{Testbed, addr};
use tests::traffic::Server;

fn admin_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], HCPE_ADMIN_PORT))
}

struct Api<'a> {
    tb: &'a Testbed,
    token: String,
}

impl Api<'_> {
    fn call(&self, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
        let r = daemons::http(&self.tb.cpe, admin_addr(), method, path, Some(&self.token), body)
            .unwrap_or_else(|e| panic!("{method} {path}: {e:#}"));
        (r.status, r.body)
    }

    fn json(&self, method: &str, path: &str, body: Option<&str>) -> Value {
        let (status, text) = self.call(method, path, body);
        assert_eq!(status, 200, "{method} {path}: {text}");
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{method} {path}: {e}: {text}"))
    }

    /// The one open connection to `dst`, once `pred` holds for it (polled every 50 ms up to `limit`).
    fn wait_connection(
        &self,
        dst: SocketAddr,
        limit: Duration,
        hcpe: &ChildGuard,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        let t0 = Instant::now();
        let mut last = Value::Null;
        while t0.elapsed() < limit {
            let list = daemons::connections(&self.tb.cpe, HCPE_ADMIN_PORT, &self.token).unwrap();
            if let Some(c) = list.as_array().unwrap().iter().find(|c| c["destination"] == dst.to_string()) {
                if pred(c) {
                    return c.clone();
                }
                last = c.clone();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("connection to {dst} not as expected within {limit:?}; last seen:\n{last:#}\n{}", hcpe.log());
    }
}

fn subflow_of(c: &Value, local: IpAddr) -> Option<&Value> {
    c["subflows"].as_array()?.iter().find(|s| daemons::subflow_ip(s, "local") == Some(local))
}

/// Both daemons on the managed testbed (DSL 40 Mbit/s 5 ms, LTE 20 Mbit/s 10 ms) with their admin APIs, a test
/// server behind hag, both uplinks up. Fields drop in order: the daemons before the namespaces.
struct Bed {
    hcpe: ChildGuard,
    _hag: ChildGuard,
    server: Server,
    spec: HcpeSpec,
    dir: tempfile::TempDir,
    tb: Testbed,
}

impl Bed {
    fn start(tag: &str) -> Bed {
        let tb = daemons::managed_testbed(Shape::mbit(40.0).delay_ms(5.0), Shape::mbit(20.0).delay_ms(10.0)).unwrap();
        let dir = daemons::config_dir(tag).unwrap();
        let server = Server::start(&tb.inet, 0).unwrap();
        let hag_spec = HagSpec { v6: false, admin: true, ..HagSpec::default() };
        let _hag = daemons::start_hag(&tb, dir.path(), &hag_spec).unwrap();
        let spec = HcpeSpec { managed: true, admin: true, v6: false, ..HcpeSpec::default() };
        let mut hcpe = daemons::start_hcpe(&tb, dir.path(), &spec).unwrap();
        assert!(hcpe.wait_for_log("admin API started", Duration::from_secs(5)), "{}", hcpe.log());
        daemons::wait_up(&hcpe, 2, Duration::from_secs(10)).unwrap();
        Bed { hcpe, _hag, server, spec, dir, tb }
    }

    fn api(&self) -> Api<'_> {
        Api { tb: &self.tb, token: daemons::admin_token(self.dir.path()).unwrap() }
    }
}

#[test]
fn connections_list_subflows_and_patch_to_backup_moves_the_download_to_dsl() {
    let bed = Bed::start("hcpe-admin");
    let (tb, dir, spec, server, hcpe) = (&bed.tb, &bed.dir, &bed.spec, &bed.server, &bed.hcpe);
    let api = bed.api();
    let (dsl_ip, lte_ip) = (IpAddr::V4(addr::CPE_DSL.v4), IpAddr::V4(addr::CPE_LTE.v4));

    // Both uplinks up and active before the download.
    let ups = api.json("GET", "/api/v1/uplinks", None);
    assert_eq!(ups[1]["name"], "lte");
    assert_eq!((ups[1]["mode"].as_str(), ups[1]["state"].as_str()), (Some("active"), Some("up")), "{ups:#}");
    assert!(ups[1]["rtt_ms"].as_f64().is_some_and(|r| r > 0.0), "{ups:#}");

    // Reload re-reads the file hcpe started with: unchanged = no change; a new log level applies live; an
    // invalid file is refused naming the field and the running config stays.
    let reload = api.json("POST", "/api/v1/reload", None);
    assert_eq!(reload["changed"], serde_json::json!([]), "{reload:#}");
    let yaml = daemons::hcpe_yaml(spec);
    daemons::write_config(dir.path(), "hcpe.yaml", &yaml.replace("log_level: hcpe=debug", "log_level: hcpe=info"))
        .unwrap();
    let reload = api.json("POST", "/api/v1/reload", None);
    assert_eq!(reload["applied"], serde_json::json!(["log_level"]), "{reload:#}");
    daemons::write_config(dir.path(), "hcpe.yaml", &yaml.replace("mode: active", "mode: sometimes")).unwrap();
    let (status, body) = api.call("POST", "/api/v1/reload", None);
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("uplinks[0].mode"), "{body}");
    daemons::write_config(dir.path(), "hcpe.yaml", &yaml).unwrap();

    const SIZE: u64 = 400 << 20;
    let dst = SocketAddr::new(addr::INET_SERVER.ip(false), server.port());
    let download = LanDownload::start(tb, dst, SIZE, Duration::from_secs(10)).unwrap();
    let wait_progress = |n: u64| download.wait_for(n, Duration::from_secs(60), "download", hcpe);
    wait_progress(1 << 20);

    // Two subflows: DSL (initial) and LTE, neither backup.
    let c = api.wait_connection(dst, Duration::from_secs(5), hcpe, |c| {
        subflow_of(c, dsl_ip).is_some() && subflow_of(c, lte_ip).is_some()
    });
    let subflows = c["subflows"].as_array().unwrap();
    assert_eq!(subflows.len(), 2, "{c:#}");
    let id = c["id"].as_str().unwrap().to_owned();
    assert_eq!(id.len(), 8, "MPTCP token as the id: {c:#}");
    assert_eq!(format!("{:08x}", c["token"].as_u64().unwrap()), id);
    assert_eq!(c["uplink_initial"], "dsl", "{c:#}");
    assert_eq!(c["fallback"], false);
    assert_eq!(c["client"].as_str().unwrap().parse::<SocketAddr>().unwrap().ip(), addr::LAN_CLIENT.ip(false));
    for s in subflows {
        assert_eq!(
            s["remote"].as_str().unwrap().parse::<SocketAddr>().unwrap().ip(),
            addr::HAG_SERVICE.ip(false),
            "{s}"
        );
        assert_eq!(s["backup"], false, "{c:#}");
    }
    let by_id = api.json("GET", &format!("/api/v1/connections/{id}"), None);
    assert_eq!(by_id["id"], id.as_str());

    // LTE carries a real share while active (so the < 1 % below is the PATCH's doing).
    let share = |from: u64, to: u64| {
        wait_progress(from);
        let (d1, l1) = (tb.dsl.counters(Direction::Down).tx_bytes, tb.lte.counters(Direction::Down).tx_bytes);
        wait_progress(to);
        let (d2, l2) = (tb.dsl.counters(Direction::Down).tx_bytes, tb.lte.counters(Direction::Down).tx_bytes);
        let (dsl, lte) = (d2 - d1, l2 - l1);
        lte as f64 / (dsl + lte).max(1) as f64
    };
    let p = download.bytes();
    let active_share = share(p, p + (8 << 20));

    let patched = Instant::now();
    let up = api.json("PATCH", "/api/v1/uplinks/lte", Some(r#"{"mode":"backup"}"#));
    assert_eq!(up["mode"], "backup", "{up:#}");
    assert_eq!(up["endpoint"]["backup"], true, "{up:#}");
    let c = api.wait_connection(dst, Duration::from_secs(3), hcpe, |c| {
        subflow_of(c, lte_ip).is_some_and(|s| s["backup"] == true)
    });
    let flagged = patched.elapsed();
    let dsl_sf = subflow_of(&c, dsl_ip).expect("DSL subflow stays");
    assert_eq!(dsl_sf["backup"], false, "{c:#}");
    assert_eq!(subflow_of(&c, lte_ip).unwrap()["backup_local"], true, "hcpe asked for backup (MP_PRIO): {c:#}");
    // The MP_PRIO reached hag: its own list flags the subflow from the LTE address as backup, DSL's not.
    let token = daemons::admin_token(dir.path()).unwrap();
    let hag_subflows = || {
        let conns = daemons::connections(&tb.hag, daemons::HAG_ADMIN_PORT, &token).unwrap();
        let conn = conns.as_array().unwrap().iter().find(|c| c["destination"] == dst.to_string()).cloned();
        conn.unwrap_or_else(|| panic!("hag lists the download: {conns:#}"))
    };
    let backup_of = |conn: &serde_json::Value, ip: std::net::IpAddr| {
        conn["subflows"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| daemons::subflow_ip(s, "remote") == Some(ip))
            .map(|s| s["backup"].clone())
    };
    let mut hag_conn = hag_subflows();
    while backup_of(&hag_conn, lte_ip) != Some(serde_json::Value::Bool(true))
        && patched.elapsed() < Duration::from_secs(3)
    {
        std::thread::sleep(Duration::from_millis(20));
        hag_conn = hag_subflows();
    }
    let hag_flagged = patched.elapsed();
    let hag_backup = |ip| backup_of(&hag_conn, ip);
    assert_eq!(hag_backup(lte_ip), Some(serde_json::Value::Bool(true)), "hag's LTE subflow: {hag_conn:#}");
    assert_eq!(hag_backup(dsl_ip), Some(serde_json::Value::Bool(false)), "hag's DSL subflow: {hag_conn:#}");

    // In flight data drains for a moment; then LTE's share of the next 16 MiB.
    std::thread::sleep(Duration::from_millis(300));
    let p = download.bytes();
    let backup_share = share(p, p + (16 << 20));

    let text = api.call("GET", "/metrics", None).1;
    let families = testkit::prometheus::parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    let fam = |n: &str| families.iter().find(|f| f.name == n).unwrap_or_else(|| panic!("no {n}"));
    assert_eq!(fam("hcpe_uplink_mode_changes_total").value(&[("reason", "admin")]), Some(1.0));
    assert_eq!(fam("hcpe_uplink_mode").value(&[("uplink", "lte"), ("mode", "backup")]), Some(1.0));
    assert_eq!(fam("hcpe_connections_open").value(&[]), Some(1.0));
    let dsl_rx = fam("hcpe_uplink_bytes_total").value(&[("uplink", "dsl"), ("direction", "rx")]).unwrap_or(0.0);
    assert!(dsl_rx > f64::from(1u32 << 20), "volume tracker counts DSL's bytes: {dsl_rx}");
    assert!(fam("hcpe_uplink_rtt_seconds").value(&[("uplink", "lte")]).is_some_and(|r| r > 0.0));

    // DELETE closes it: the download ends early and the connection is unlisted.
    let (status, body) = api.call("DELETE", &format!("/api/v1/connections/{id}"), None);
    assert_eq!(status, 204, "{body}");
    let result = download.join();
    assert!(result.is_err(), "the download was cut short by DELETE: {:?}", result.map(|t| t.bytes));
    let t = Instant::now();
    while api.json("GET", "/api/v1/connections", None) != serde_json::json!([]) {
        assert!(t.elapsed() < Duration::from_secs(3), "still listed after DELETE");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(api.call("GET", &format!("/api/v1/connections/{id}"), None).0, 404);
    let text = api.call("GET", "/metrics", None).1;
    let families = testkit::prometheus::parse(&text).unwrap();
    let closed = families.iter().find(|f| f.name == "hcpe_connections_closed_by_admin_total").unwrap();
    assert_eq!(closed.value(&[]), Some(1.0));

    eprintln!(
        "hcpe admin: LTE share active {:.1} %, after PATCH to backup {:.3} %; LTE subflow flagged backup {flagged:?} \
         after the PATCH (hcpe), {hag_flagged:?} (hag)",
        active_share * 100.0,
        backup_share * 100.0
    );
    assert!(active_share > 0.15, "LTE carried only {:.1} % while active", active_share * 100.0);
    assert!(backup_share < 0.01, "LTE carried {:.2} % after PATCH to backup", backup_share * 100.0);
}

#[test]
fn patch_to_backup_moves_an_upload_to_dsl() {
    // An upload's sender is hcpe. Its MPTCP connections hold a 4 MiB send buffer, and the kernel's scheduler
    // hands most of it to the subflows' own queues, so what LTE's subflow queued before the PATCH still leaves
    // on LTE (Linux 6.18: the subflows' `tcp_notsent_lowat` does not bound that queue); after it, nothing new.
    let bed = Bed::start("hcpe-admin-up");
    let (tb, server, hcpe) = (&bed.tb, &bed.server, &bed.hcpe);
    let api = bed.api();
    let (dsl_ip, lte_ip) = (IpAddr::V4(addr::CPE_DSL.v4), IpAddr::V4(addr::CPE_LTE.v4));

    let dst = SocketAddr::new(addr::INET_SERVER.ip(false), server.port());
    let upload = LanDownload::start_upload(tb, dst, 400 << 20, Duration::from_secs(10)).unwrap();
    let wait_progress = |n: u64| upload.wait_for(n, Duration::from_secs(60), "upload", hcpe);
    wait_progress(1 << 20);
    let c = api.wait_connection(dst, Duration::from_secs(5), hcpe, |c| {
        subflow_of(c, dsl_ip).is_some() && subflow_of(c, lte_ip).is_some()
    });
    let lte_up = || tb.lte.counters(Direction::Up).tx_bytes;
    let share = |from: u64, to: u64| {
        wait_progress(from);
        let (d1, l1) = (tb.dsl.counters(Direction::Up).tx_bytes, lte_up());
        wait_progress(to);
        let (d2, l2) = (tb.dsl.counters(Direction::Up).tx_bytes, lte_up());
        let (dsl, lte) = (d2 - d1, l2 - l1);
        lte as f64 / (dsl + lte).max(1) as f64
    };
    let p = upload.bytes();
    let active_share = share(p + (4 << 20), p + (12 << 20));

    let patched = Instant::now();
    let up = api.json("PATCH", "/api/v1/uplinks/lte", Some(r#"{"mode":"backup"}"#));
    assert_eq!(up["mode"], "backup", "{up:#}");
    // LTE's queue drains: LTE's bytes per 100 ms until two in a row are under 10 kB.
    let (mut tail, mut last) = (Vec::new(), lte_up());
    while tail.len() < 2 || tail[tail.len() - 2..].iter().any(|kb| *kb >= 10) {
        assert!(patched.elapsed() < Duration::from_secs(5), "LTE still sends, kB per 100 ms: {tail:?}");
        std::thread::sleep(Duration::from_millis(100));
        let now = lte_up();
        tail.push((now - last) / 1000);
        last = now;
    }
    let drained = patched.elapsed();
    let p = upload.bytes();
    let backup_share = share(p, p + (16 << 20));
    eprintln!(
        "hcpe admin, upload: LTE share active {:.1} %, after PATCH to backup and LTE's queue drained {:.3} %; LTE \
         kB per 100 ms after the PATCH {tail:?}, drained after {drained:?}",
        active_share * 100.0,
        backup_share * 100.0,
    );
    assert!(active_share > 0.15, "LTE carried only {:.1} % while active", active_share * 100.0);
    assert!(backup_share < 0.01, "LTE carried {:.2} % after PATCH to backup", backup_share * 100.0);
    // The client's thread ends before the testbed goes.
    let (status, body) = api.call("DELETE", &format!("/api/v1/connections/{}", c["id"].as_str().unwrap()), None);
    assert_eq!(status, 204, "{body}");
    assert!(upload.join().is_err(), "the upload was cut short by DELETE");
}
