//! hcpe's status page in a browser: Debian's headless Chromium loads hcpe's status page (served by the real hcpe on the
//! testbed, admin API on 127.0.0.1:5126 inside the cpe namespace) during a download through hcpe and hag; the
//! graph updates, and a screenshot lands in `target/screenshots/hcpe-status.png`.
//!
//! "The graph updates" is read from the page's test hooks in the DOM Chromium dumps after running the page for
//! a few seconds of virtual time: `<body data-updates>` counts successful polls of the API, each uplink graph is
//! `<svg data-uplink data-samples data-rx-bps>`. Two loads a few real seconds apart must both have polled
//! several times, the second must draw more points per uplink than the first (hcpe's 1 s rate history grew),
//! and the download must show in the plotted rates. (Virtual time runs far ahead of the real clock, so only
//! the daemon's own history gives true rates here; the page's fallback, rates from successive polls of the
//! connections' byte counters, is for hcpe without a volume tracker and is not what this test looks at.)
//!
//! Chromium runs in its own process group with a fresh profile directory; the group is killed (while its
//! leader is still unreaped, so the id cannot have been reused) and the profile removed, also on failure.
//! Without `/usr/bin/chromium` the test skips, unless `CI` is set, where it fails.

use std::io::Read;
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tests::daemons::{self, HagSpec, HcpeSpec};
use tests::emulator::{LinkConfig, Shape};
use tests::netns::Netns;
use tests::testbed::{Testbed, TestbedConfig, addr};
use tests::traffic::{Client, Server};

const CHROMIUM: &str = "/usr/bin/chromium";

/// Flags for every run: no sandbox (root in a namespace), nothing fetched but the page and its API.
const FLAGS: &[&str] = &[
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
];

/// A Chromium process group of ours; killed as a whole on drop.
struct Browser {
    child: std::process::Child,
}

impl Browser {
    /// Waits up to `timeout` for the leader to exit, without reaping it; true if it exited.
    fn wait_unreaped(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            // SAFETY: zeroed siginfo_t is a valid out-parameter; WNOWAIT leaves the child waitable, so its pid
            // (and with it the process group id) stays ours until `child.wait()`.
            let exited = unsafe {
                let mut info: libc::siginfo_t = std::mem::zeroed();
                let r = libc::waitid(
                    libc::P_PID,
                    self.child.id(),
                    &mut info,
                    libc::WEXITED | libc::WNOWAIT | libc::WNOHANG,
                );
                r == 0 && info.si_pid() != 0
            };
            if exited {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // The leader is unreaped (running or a zombie), so this group id is still the one we created.
        // SAFETY: signalling our own process group.
        unsafe { libc::kill(-(self.child.id() as i32), libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

/// Runs headless Chromium inside `ns` on `url` with `extra` flags and a fresh profile; returns its stdout.
fn chromium(ns: &Netns, url: &str, extra: &[&str]) -> String {
    let profile = tempfile::Builder::new().prefix("hcpe-status-chromium-").tempdir().unwrap();
    let p = profile.path();
    let stderr_path = p.join("stderr.log");
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns.name(), CHROMIUM])
        .args(FLAGS)
        .arg(format!("--user-data-dir={}", p.join("profile").display()))
        .args(extra)
        .arg(url)
        // Caches, crash reports and config under the temp dir too, not in the user's home.
        .env("HOME", p)
        .env("XDG_CONFIG_HOME", p.join("config"))
        .env("XDG_CACHE_HOME", p.join("cache"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&stderr_path).unwrap())
        .process_group(0);
    // SAFETY: prctl is async-signal-safe; runs in the forked child before exec, so Chromium dies with us.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    let mut browser = Browser { child: cmd.spawn().unwrap() };
    let mut out = browser.child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let exited = browser.wait_unreaped(Duration::from_secs(60));
    drop(browser); // kills whatever is left of the group (helpers), then reaps the leader
    let stdout = reader.join().unwrap();
    let stderr = std::fs::read_to_string(&stderr_path).unwrap_or_default();
    assert!(exited, "chromium did not finish within 60 s; stderr:\n{stderr}");
    drop(profile);
    stdout
}

/// The value of attribute `name` inside one start tag's text.
fn attr<'a>(tag: &'a str, name: &str) -> Option<&'a str> {
    let key = format!(" {name}=\"");
    let i = tag.find(&key)? + key.len();
    tag[i..].find('"').map(|j| &tag[i..i + j])
}

/// What one DOM dump says: successful polls, and per uplink graph (name, points drawn, newest rx bit/s).
#[derive(Debug)]
struct PageState {
    updates: u64,
    graphs: Vec<(String, u64, u64)>,
}

fn page_state(dom: &str) -> PageState {
    let body = dom.find("<body").map(|i| &dom[i..]).and_then(|b| b.find('>').map(|j| &b[..j])).unwrap_or("");
    let updates = attr(body, "data-updates").and_then(|v| v.parse().ok()).unwrap_or(0);
    let mut graphs = Vec::new();
    for (i, _) in dom.match_indices("<svg") {
        let tag = &dom[i..i + dom[i..].find('>').unwrap_or(0)];
        if let Some(name) = attr(tag, "data-uplink") {
            let n = |k| attr(tag, k).and_then(|v| v.parse().ok()).unwrap_or(0);
            graphs.push((name.to_string(), n("data-samples"), n("data-rx-bps")));
        }
    }
    PageState { updates, graphs }
}

fn in_ci() -> bool {
    matches!(std::env::var("CI").as_deref(), Ok(v) if !v.is_empty() && v != "false" && v != "0")
}

/// `target/screenshots/` beside the profile directory the test executable runs from.
fn screenshot_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    // target/<profile>/deps/<test> -> target/
    let target = exe.ancestors().nth(3).map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("target"));
    target.join("screenshots")
}

#[test]
fn status_page_graph_updates_live_during_a_download() {
    if !Path::new(CHROMIUM).is_file() {
        assert!(!in_ci(), "{CHROMIUM} is missing (Debian package `chromium`; .ci/run installs it)");
        eprintln!("skipped: {CHROMIUM} not found (apt-get install chromium); set CI=true to make this a failure");
        return;
    }
    let tb = Testbed::new(TestbedConfig {
        dsl: LinkConfig::symmetric(Shape::mbit(30.0).delay_ms(8.0)),
        lte: LinkConfig { seed: 2, ..LinkConfig::symmetric(Shape::mbit(15.0).delay_ms(20.0)) },
        ..TestbedConfig::default()
    })
    .unwrap();
    let dir = daemons::config_dir("status-page").unwrap();
    let server = Server::start(&tb.inet, 0).unwrap();
    let _hag = daemons::start_hag(&tb, dir.path(), &HagSpec::default()).unwrap();
    let hcpe =
        daemons::start_hcpe(&tb, dir.path(), &HcpeSpec { managed: true, admin: true, ..HcpeSpec::default() }).unwrap();
    daemons::wait_up(&hcpe, 2, Duration::from_secs(10)).unwrap();
    let token = daemons::admin_token(dir.path()).unwrap();
    let admin = SocketAddr::from(([127, 0, 0, 1], daemons::HCPE_ADMIN_PORT));

    // The page needs no token; it comes with a CSP that lets it load nothing from elsewhere.
    let deadline = Instant::now() + Duration::from_secs(10);
    let page = loop {
        match daemons::http(&tb.cpe, admin, "GET", "/", None, None) {
            Ok(r) if r.status == 200 => break r,
            r => assert!(Instant::now() < deadline, "GET / without a token: {r:?}\n{}", hcpe.log()),
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(page.body.contains("data-updates"), "not the status page: {}", &page.body[..page.body.len().min(300)]);
    let headers = page.headers.to_ascii_lowercase();
    assert!(headers.contains("content-type: text/html"), "{}", page.headers);
    assert!(headers.contains("content-security-policy: default-src 'none'"), "{}", page.headers);

    // A download much longer than the test needs; it is ended by cutting both links once the pictures are taken.
    let dst = SocketAddr::new(addr::INET_SERVER.ip(false), server.port());
    let download = tb.lan.thread(move || Client::new(dst).timeout(Duration::from_secs(3)).download(2 << 30)).unwrap();
    std::thread::sleep(Duration::from_secs(4)); // some history to draw

    let r = daemons::http(&tb.cpe, admin, "GET", "/api/v1/uplinks", Some(&token), None).unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    let uplinks: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    let names: Vec<String> =
        uplinks.as_array().unwrap().iter().map(|u| u["name"].as_str().unwrap_or_default().to_string()).collect();
    assert!(!names.is_empty(), "no uplinks: {uplinks}");
    // hcpe with an uplink manager runs the volume tracker: the graphs are seeded from its 1 s history
    assert!(uplinks.as_array().unwrap().iter().all(|u| u["volume"]["history"].is_array()), "no volume: {uplinks}");

    let url = format!("http://{admin}/#token={token}");
    let dump = |budget_ms: u64| {
        let dom = chromium(&tb.cpe, &url, &["--dump-dom", &format!("--virtual-time-budget={budget_ms}")]);
        let st = page_state(&dom);
        eprintln!("page after {budget_ms} ms of virtual time: {st:?}");
        assert!(!download.is_finished(), "the download ended early:\n{}", hcpe.log());
        (st, dom)
    };
    let (first, dom1) = dump(4000);
    std::thread::sleep(Duration::from_secs(3));
    let (second, dom2) = dump(4000);

    for (st, dom) in [(&first, &dom1), (&second, &dom2)] {
        assert!(st.updates >= 3, "the page polled the API {} times in 4 s:\n{dom}", st.updates);
        let drawn: Vec<&str> = st.graphs.iter().map(|g| g.0.as_str()).collect();
        assert_eq!(drawn, names, "one graph per uplink, in the API's order");
    }
    for (a, b) in first.graphs.iter().zip(&second.graphs) {
        assert!(a.1 >= 3, "{}: only {} points after 4 s of history", a.0, a.1);
        assert!(b.1 >= a.1 + 2, "{}: {} points, 3 s later still {}", a.0, a.1, b.1);
    }
    let rx_max = second.graphs.iter().map(|g| g.2).max().unwrap_or(0);
    assert!(rx_max > 1_000_000, "the download does not show in the graph: newest rx {rx_max} bit/s");

    let shots = screenshot_dir();
    std::fs::create_dir_all(&shots).unwrap();
    let screenshot = |name: &str| {
        let png = shots.join(name);
        let _ = std::fs::remove_file(&png);
        chromium(
            &tb.cpe,
            &url,
            &[&format!("--screenshot={}", png.display()), "--window-size=1280,900", "--virtual-time-budget=3000"],
        );
        let len = std::fs::metadata(&png).map(|m| m.len()).unwrap_or(0);
        assert!(len > 10_000, "screenshot {} is {len} bytes", png.display());
        eprintln!("screenshot: {} ({len} bytes)", png.display());
    };
    screenshot("hcpe-status.png");

    // UDP to hag dropped while the download runs: health comes from the subflows, and each uplink card says so.
    for rule in [
        "add table inet probefilter",
        "add chain inet probefilter input { type filter hook input priority 0 ; }",
        "add rule inet probefilter input udp dport 5124 drop",
    ] {
        let args: Vec<&str> = rule.split(' ').collect();
        tb.hag.exec_ok("nft", &args).unwrap_or_else(|e| panic!("nft {rule}: {e}"));
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while !hcpe.log().contains("health from subflows") {
        assert!(Instant::now() < deadline, "no switch to subflow health:\n{}", hcpe.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    let (_, dom) = dump(2000);
    let badge = "<span class=\"badge source\">probes unanswered: health from subflows</span>";
    assert_eq!(dom.matches(badge).count(), names.len(), "a visible badge per uplink:\n{dom}");
    screenshot("hcpe-status-subflows.png");

    // The token travelled in the URL fragment and the Authorization header only: hcpe never logs it.
    assert!(!hcpe.log().contains(&token), "hcpe logged the admin token");

    // End the download: the client times out once nothing arrives.
    tb.dsl.cut();
    tb.lte.cut();
    let _ = download.join();
}
