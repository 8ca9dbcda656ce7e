//! The real `hag` and `hcpe` daemons on a [`Testbed`]: config writers, starters and a tiny HTTP client for
//! their admin APIs. One place for what every end-to-end test, bench and the demo need, so a config field
//! changes in one file.
//!
//! Invariants:
//! - a config directory holds a fresh random CPE key (`cpe.key`) and admin token (`admin.token`), both 0600,
//!   and is removed when its [`tempfile::TempDir`] drops (also on panic);
//! - a started daemon has logged its ready line before the starter returns; otherwise the starter fails with
//!   the daemon's log in the error;
//! - nothing here touches a namespace other than the testbed's.

use std::io::{Read as _, Write as _};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use crate::emulator::{LinkConfig, Shape};
use crate::netns::{ChildGuard, Netns, bin_path};
use crate::testbed::{Addrs, Testbed, TestbedConfig, addr, ifname};
use crate::traffic::{self, Client, Transfer};

/// The CPE id both generated configs use.
pub const CPE_ID: &str = "testbed-cpe";
/// hag's admin API port (its default) inside the hag namespace.
pub const HAG_ADMIN_PORT: u16 = 5125;
/// hcpe's admin API port (its default) inside the cpe namespace.
pub const HCPE_ADMIN_PORT: u16 = 5126;
/// How long a daemon may take to log its ready line.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// A scratch directory with `cpe.key` (32 random bytes, hex) and `admin.token` (16 random bytes, hex), 0600.
pub fn config_dir(tag: &str) -> anyhow::Result<tempfile::TempDir> {
    let dir = tempfile::Builder::new()
        .prefix(&format!("{tag}-{}-", std::process::id()))
        .tempdir()
        .context("create a config directory")?;
    write_private(&dir.path().join("cpe.key"), &random_hex(32)?)?;
    write_private(&dir.path().join("admin.token"), &random_hex(16)?)?;
    Ok(dir)
}

/// The admin token written into `dir` by [`config_dir`].
pub fn admin_token(dir: &Path) -> anyhow::Result<String> {
    let t = std::fs::read_to_string(dir.join("admin.token")).context("read admin.token")?;
    Ok(t.trim().to_owned())
}

fn random_hex(len: usize) -> anyhow::Result<String> {
    let mut buf = vec![0u8; len];
    std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut buf)).context("read /dev/urandom")?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

/// Writes `text` to `path` readable by the owner only (keys, tokens, configs naming them).
pub fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("write {}", path.display()))?;
    f.write_all(text.as_bytes())?;
    Ok(())
}

/// What the generated hag config says.
#[derive(Debug, Clone)]
pub struct HagSpec {
    /// Also listen on `[::]:5124` and allow the IPv6 server prefix.
    pub v6: bool,
    /// Prefixes denied by policy (inside the allowed server prefix).
    pub deny: Vec<String>,
    /// Serve the admin API on 127.0.0.1:[`HAG_ADMIN_PORT`] with `admin.token`.
    pub admin: bool,
    /// `limits:` section, as a YAML flow mapping.
    pub limits: String,
    /// `log_level:` value.
    pub log_level: String,
    /// Top-level YAML lines appended as they are.
    pub extra_yaml: String,
}

impl Default for HagSpec {
    fn default() -> Self {
        HagSpec {
            v6: true,
            deny: Vec::new(),
            admin: false,
            limits: "{ connect_timeout: 2s, drain_deadline: 1s }".into(),
            log_level: "info".into(),
            extra_yaml: String::new(),
        }
    }
}

/// hag's config text for `spec`.
pub fn hag_yaml(spec: &HagSpec) -> String {
    // Wildcard listeners, as deploy/examples/hag.yaml ships: hag serves (and answers probes) on every address.
    let mut listen = vec!["'0.0.0.0:5124'".to_owned()];
    let mut allow = vec!["198.18.4.0/24".to_owned()];
    if spec.v6 {
        listen.push("'[::]:5124'".into());
        allow.push("'2001:2:0:4::/64'".into());
    }
    let mut y = format!(
        "listen: [{}]\n\
         clients:\n  {CPE_ID}: {{ key_file: cpe.key }}\n\
         destinations:\n  allow: [{}]\n  deny: [{}]\n\
         limits: {}\n\
         log_level: {}\n",
        listen.join(", "),
        allow.join(", "),
        spec.deny.join(", "),
        spec.limits,
        spec.log_level,
    );
    if spec.admin {
        y.push_str(&format!("admin: {{ listen: ['127.0.0.1:{HAG_ADMIN_PORT}'], token_file: admin.token }}\n"));
    }
    y.push_str(&spec.extra_yaml);
    // `TESTBED_HAG_YAML=text`: more top-level keys for every generated hag config, to run a test with a setting
    // it does not choose (`congestion_control_start: {algorithm: bbr, duration: 3s}`).
    if let Ok(extra) = std::env::var("TESTBED_HAG_YAML") {
        y.push_str(&extra);
        y.push('\n');
    }
    y
}

/// What the generated hcpe config says.
#[derive(Debug, Clone)]
pub struct HcpeSpec {
    /// `fallback:` (`direct` or `reject`).
    pub fallback: String,
    /// `tun.offload`; `None` leaves hcpe's default.
    pub offload: Option<bool>,
    /// `hag.fastopen`.
    pub fastopen: bool,
    /// `hag.pool`, as a YAML flow mapping; `None` leaves hcpe's default (a pool of ready connections).
    pub pool: Option<String>,
    /// Uplinks with roles, modes, gateways and the `probe` section: the uplink manager also owns per-uplink
    /// routing. Without it the uplinks carry addresses only (probes on their defaults, source routing left to
    /// the testbed), and tests usually add [`static_endpoints`] as well.
    pub managed: bool,
    /// `mode:` of the DSL uplink (managed only).
    pub dsl_mode: String,
    /// `mode:` of the LTE uplink (managed only).
    pub lte_mode: String,
    /// Give the uplinks (and hence the TUN) IPv6 addresses too.
    pub v6: bool,
    /// Serve the admin API on 127.0.0.1:[`HCPE_ADMIN_PORT`] with `admin.token`.
    pub admin: bool,
    /// `limits:` section, as a YAML flow mapping.
    pub limits: String,
    /// `probe:` section (managed only), as a YAML flow mapping.
    pub probe: String,
    /// Extra keys inside each uplink's flow mapping, e.g. `quota: {..}` (DSL, LTE); empty for none.
    pub uplink_extra: [String; 2],
    /// `log_level:` value.
    pub log_level: String,
    /// Top-level YAML lines appended as they are.
    pub extra_yaml: String,
}

impl Default for HcpeSpec {
    fn default() -> Self {
        HcpeSpec {
            fallback: "reject".into(),
            offload: None,
            fastopen: false,
            pool: None,
            managed: false,
            dsl_mode: "active".into(),
            lte_mode: "active".into(),
            v6: true,
            admin: false,
            limits: "{ connect_timeout: 3s, reply_timeout: 3s }".into(),
            probe: "{ interval: 200ms, down_after: 3, up_after: 3 }".into(),
            uplink_extra: [String::new(), String::new()],
            log_level: "hcpe=debug".into(),
            extra_yaml: String::new(),
        }
    }
}

/// hcpe's config text for `spec`.
pub fn hcpe_yaml(spec: &HcpeSpec) -> String {
    let uplink = |name: &str, dev: &str, role: &str, mode: &str, local: Addrs, gw: Addrs, extra: &str| {
        let mut fields = vec![format!("name: {name}"), format!("interface: {dev}")];
        let gw4 = if spec.managed { format!(", gateway: {}", gw.v4) } else { String::new() };
        let gw6 = if spec.managed { format!(", gateway: '{}'", gw.v6) } else { String::new() };
        if spec.managed {
            fields.push(format!("role: {role}"));
            fields.push(format!("mode: {mode}"));
        }
        fields.push(format!("ipv4: {{ address: {}{gw4} }}", local.v4));
        if spec.v6 {
            fields.push(format!("ipv6: {{ address: '{}'{gw6} }}", local.v6));
        }
        if !extra.is_empty() {
            fields.push(extra.to_owned());
        }
        format!("  - {{ {} }}\n", fields.join(", "))
    };
    let mut tun = vec!["name: hcpe0".to_owned(), "queues: 2".to_owned()];
    if let Some(o) = spec.offload {
        tun.push(format!("offload: {o}"));
    }
    let mut y = format!(
        "lan_interfaces: [{lan}]\n\
         tun: {{ {tun} }}\n\
         hag:\n  addresses: ['{hag4}']\n  cpe_id: {CPE_ID}\n  key_file: cpe.key\n  fastopen: {tfo}\n{pool}\
         uplinks:\n{dsl}{lte}\
         fallback: {fallback}\n\
         limits: {limits}\n\
         log_level: {lvl}\n",
        lan = ifname::CPE_LAN,
        tun = tun.join(", "),
        hag4 = addr::HAG_SERVICE.v4,
        tfo = spec.fastopen,
        pool = spec.pool.as_ref().map(|p| format!("  pool: {p}\n")).unwrap_or_default(),
        dsl =
            uplink("dsl", ifname::DSL, "primary", &spec.dsl_mode, addr::CPE_DSL, addr::HAG_DSL, &spec.uplink_extra[0]),
        lte = uplink(
            "lte",
            ifname::LTE,
            "secondary",
            &spec.lte_mode,
            addr::CPE_LTE,
            addr::HAG_LTE,
            &spec.uplink_extra[1]
        ),
        fallback = spec.fallback,
        limits = spec.limits,
        lvl = spec.log_level,
    );
    if spec.managed {
        y.push_str(&format!("probe: {}\n", spec.probe));
    }
    if spec.admin {
        y.push_str(&format!("admin: {{ listen: ['127.0.0.1:{HCPE_ADMIN_PORT}'], token_file: admin.token }}\n"));
    }
    y.push_str(&spec.extra_yaml);
    y
}

/// `deploy/examples/NAME` as shipped.
pub fn example_config(name: &str) -> anyhow::Result<String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples").join(name);
    std::fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))
}

/// `text` with each `(from, to)` replaced; fails naming the first `from` the text does not hold, so an edit of an
/// example that a test can no longer substitute shows up as that, not as a daemon that cannot start.
fn substitute(text: &str, what: &str, pairs: &[(&str, String)]) -> anyhow::Result<String> {
    let mut out = text.to_owned();
    for (from, to) in pairs {
        if !out.contains(from) {
            bail!("{what} no longer contains `{from}`: update the substitution in tests/src/daemons.rs");
        }
        out = out.replace(from, to);
    }
    Ok(out)
}

/// `deploy/examples/hag.yaml` for the testbed: only the key and token paths change (the files [`config_dir`]
/// made); the listeners stay the shipped wildcards, the CPE id stays `example-cpe`.
pub fn example_hag_yaml() -> anyhow::Result<String> {
    let text = example_config("hag.yaml")?;
    substitute(
        &text,
        "deploy/examples/hag.yaml",
        &[
            ("key_file: hag-keys/example-cpe.key", "key_file: cpe.key".into()),
            ("token_file: hag-keys/admin.token", "token_file: admin.token".into()),
        ],
    )
}

/// `deploy/examples/hcpe.yaml` for the testbed: the LAN interface, hag's service addresses, the uplinks'
/// addresses and gateways, and the key, token and state file paths change; nothing else.
pub fn example_hcpe_yaml() -> anyhow::Result<String> {
    use addr::*;
    let text = example_config("hcpe.yaml")?;
    substitute(
        &text,
        "deploy/examples/hcpe.yaml",
        &[
            ("lan_interfaces: [br-lan]", format!("lan_interfaces: [{}]", ifname::CPE_LAN)),
            (
                "addresses: [192.0.2.1, \"2001:db8::1\"]",
                format!("addresses: ['{}', '{}']", HAG_SERVICE.v4, HAG_SERVICE.v6),
            ),
            ("key_file: hag-keys/example-cpe.key", "key_file: cpe.key".into()),
            ("interface: dsl0", format!("interface: {}", ifname::DSL)),
            ("interface: lte0", format!("interface: {}", ifname::LTE)),
            (
                "{ address: 198.51.100.2, gateway: 198.51.100.1 }",
                format!("{{ address: {}, gateway: {} }}", CPE_DSL.v4, HAG_DSL.v4),
            ),
            (
                "{ address: \"2001:db8:10::2\", gateway: \"2001:db8:10::1\" }",
                format!("{{ address: '{}', gateway: '{}' }}", CPE_DSL.v6, HAG_DSL.v6),
            ),
            ("{ address: auto, gateway: 203.0.113.1 }", format!("{{ address: auto, gateway: {} }}", HAG_LTE.v4)),
            ("state_file: /var/lib/hcpe/volume.json", "state_file: volume.json".into()),
            ("token_file: hag-keys/admin.token", "token_file: admin.token".into()),
        ],
    )
}

/// [`example_hcpe_yaml`] with the LTE uplink's `mode:` line (the example's only one) set to `mode`.
pub fn example_hcpe_yaml_lte_mode(mode: &str) -> anyhow::Result<String> {
    let yaml = example_hcpe_yaml()?;
    let key = "\n    mode: ";
    let (Some(at), None) = (yaml.find(key), yaml.rfind(key).filter(|r| Some(*r) != yaml.find(key))) else {
        bail!("deploy/examples/hcpe.yaml should have exactly one `mode:` line (LTE's): update tests/src/daemons.rs");
    };
    let end = yaml[at + 1..].find('\n').map_or(yaml.len(), |e| at + 1 + e);
    Ok(format!("{}{key}{mode}{}", &yaml[..at], &yaml[end..]))
}

/// Starts hag and then hcpe from the shipped example configs ([`example_hag_yaml`], [`example_hcpe_yaml`]),
/// written into `dir` (a [`config_dir`]: its `cpe.key` and `admin.token` serve both), and waits for their
/// ready lines (hag: listeners and admin API; hcpe: ready and uplink manager).
pub fn start_examples(tb: &Testbed, dir: &Path) -> anyhow::Result<(ChildGuard, ChildGuard)> {
    start_configs(tb, dir, &example_hag_yaml()?, &example_hcpe_yaml()?)
}

/// [`start_examples`] with the config texts given (an example with a further edit).
pub fn start_configs(
    tb: &Testbed,
    dir: &Path,
    hag_yaml: &str,
    hcpe_yaml: &str,
) -> anyhow::Result<(ChildGuard, ChildGuard)> {
    let hag = start(&tb.hag, "hag", &write_config(dir, "hag.yaml", hag_yaml)?, &["listening", "admin API listening"])?;
    let hcpe_cfg = write_config(dir, "hcpe.yaml", hcpe_yaml)?;
    let hcpe = start(&tb.cpe, "hcpe", &hcpe_cfg, &["hcpe ready", "uplink manager started"])?;
    Ok((hag, hcpe))
}

/// A plain TCP download of `size` bytes from the CPE namespace to `dst` over one uplink alone (its source
/// address `src` picks the link through the testbed's policy rules): the single-link baseline of a run.
pub fn single_link(tb: &Testbed, dst: SocketAddr, src: IpAddr, size: u64) -> anyhow::Result<Transfer> {
    let bind = SocketAddr::new(src, 0);
    Ok(tb.cpe.within(move || Client::new(dst).bind(bind).timeout(Duration::from_secs(30)).download(size))??)
}

/// Writes `yaml` as `dir/name` (0600: it names the key).
pub fn write_config(dir: &Path, name: &str, yaml: &str) -> anyhow::Result<PathBuf> {
    let path = dir.join(name);
    write_private(&path, yaml)?;
    Ok(path)
}

/// Starts `bin --config cfg` in `ns` and waits for each of `ready` in its log, in order.
pub fn start(ns: &Netns, bin: &str, cfg: &Path, ready: &[&str]) -> anyhow::Result<ChildGuard> {
    start_env(ns, bin, cfg, ready, &[])
}

/// [`start`] with extra environment variables (e.g. `RUST_LOG`).
pub fn start_env(
    ns: &Netns,
    bin: &str,
    cfg: &Path,
    ready: &[&str],
    env: &[(&str, &str)],
) -> anyhow::Result<ChildGuard> {
    let cfg = cfg.to_str().context("config path is not UTF-8")?;
    let mut child = ns.spawn_env(bin_path(bin), &["--config", cfg], env)?;
    for line in ready {
        if !child.wait_for_log(line, READY_TIMEOUT) {
            bail!("{bin} did not log `{line}` within {READY_TIMEOUT:?}:\n{}", child.log());
        }
    }
    Ok(child)
}

/// Writes hag's config for `spec` into `dir` and starts hag in the testbed's hag namespace.
pub fn start_hag(tb: &Testbed, dir: &Path, spec: &HagSpec) -> anyhow::Result<ChildGuard> {
    let cfg = write_config(dir, "hag.yaml", &hag_yaml(spec))?;
    let ready: &[&str] = if spec.admin { &["listening", "admin API listening"] } else { &["listening"] };
    start(&tb.hag, "hag", &cfg, ready)
}

/// Writes hcpe's config for `spec` into `dir` and starts hcpe in the testbed's cpe namespace; with
/// `spec.managed` it also waits for the uplink manager.
pub fn start_hcpe(tb: &Testbed, dir: &Path, spec: &HcpeSpec) -> anyhow::Result<ChildGuard> {
    let cfg = write_config(dir, "hcpe.yaml", &hcpe_yaml(spec))?;
    let ready: &[&str] = if spec.managed { &["hcpe ready", "uplink manager started"] } else { &["hcpe ready"] };
    start(&tb.cpe, "hcpe", &cfg, ready)
}

/// MPTCP limits on both ends and subflow endpoints for the LTE addresses, so a connection from the DSL address
/// gets a second subflow over LTE (for runs where hcpe's uplink manager does not own the endpoints).
pub fn static_endpoints(tb: &Testbed) -> anyhow::Result<()> {
    tb.cpe.ip(&["mptcp", "limits", "set", "subflows", "2", "add_addr_accepted", "2"])?;
    let (l4, l6) = (addr::CPE_LTE.v4.to_string(), addr::CPE_LTE.v6.to_string());
    tb.cpe.ip(&["mptcp", "endpoint", "add", &l4, "dev", ifname::LTE, "subflow"])?;
    tb.cpe.ip(&["mptcp", "endpoint", "add", &l6, "dev", ifname::LTE, "subflow"])?;
    tb.hag.ip(&["mptcp", "limits", "set", "subflows", "2", "add_addr_accepted", "2"])?;
    Ok(())
}

/// The testbed the managed-hcpe tests share: DSL and LTE shaped alike both ways (LTE's emulator on seed 2), and
/// hag accepting 4 subflows and 4 ADD_ADDRs per connection (hcpe's uplink manager adds the endpoints).
pub fn managed_testbed(dsl: Shape, lte: Shape) -> anyhow::Result<Testbed> {
    let tb = Testbed::new(TestbedConfig {
        dsl: LinkConfig::symmetric(dsl),
        lte: LinkConfig { seed: 2, ..LinkConfig::symmetric(lte) },
        ..TestbedConfig::default()
    })?;
    tb.hag.ip(&["mptcp", "limits", "set", "subflows", "4", "add_addr_accepted", "4"])?;
    Ok(tb)
}

/// How many health verdicts going to `state` (`up`, `down`) the hcpe log holds.
pub fn verdicts(hcpe: &ChildGuard, state: &str) -> usize {
    let (quoted, bare) = (format!("to=\"{state}\""), format!("to={state}"));
    hcpe.log()
        .lines()
        .filter(|l| l.contains("uplink health changed") && (l.contains(&quoted) || l.contains(&bare)))
        .count()
}

/// Waits until the hcpe log holds `n` verdicts going to up.
pub fn wait_up(hcpe: &ChildGuard, n: usize, timeout: Duration) -> anyhow::Result<()> {
    let deadline = std::time::Instant::now() + timeout;
    while std::time::Instant::now() < deadline {
        if verdicts(hcpe, "up") >= n {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("uplinks did not come up within {timeout:?}:\n{}", hcpe.log())
}

/// A download (or, [`LanDownload::start_upload`], an upload) from the LAN client to `dst` on its own thread, with
/// the bytes moved so far: what the failover tests watch while they cut and restore links.
pub struct LanDownload {
    progress: Arc<AtomicU64>,
    /// When the download thread was started.
    pub started: Instant,
    thread: JoinHandle<Result<Transfer, traffic::Error>>,
}

impl LanDownload {
    /// Starts downloading `size` bytes from `dst` in the lan namespace (`client_timeout`: the client's idle limit).
    pub fn start(tb: &Testbed, dst: SocketAddr, size: u64, client_timeout: Duration) -> anyhow::Result<LanDownload> {
        let progress = Arc::new(AtomicU64::new(0));
        let p = progress.clone();
        let thread = tb.lan.thread(move || Client::new(dst).timeout(client_timeout).progress(p).download(size))?;
        Ok(LanDownload { progress, started: Instant::now(), thread })
    }

    /// The same for an upload of `size` bytes to `dst`: [`LanDownload::bytes`] counts what the client wrote.
    pub fn start_upload(
        tb: &Testbed,
        dst: SocketAddr,
        size: u64,
        client_timeout: Duration,
    ) -> anyhow::Result<LanDownload> {
        let progress = Arc::new(AtomicU64::new(0));
        let p = progress.clone();
        let thread = tb.lan.thread(move || Client::new(dst).timeout(client_timeout).progress(p).upload(size))?;
        Ok(LanDownload { progress, started: Instant::now(), thread })
    }

    /// Bytes read so far.
    pub fn bytes(&self) -> u64 {
        self.progress.load(Ordering::Relaxed)
    }

    /// Waits (polling every 5 ms) until `n` bytes were read; panics with `hcpe`'s log, saying `{what} does not
    /// progress`, once `limit` has passed since the start.
    pub fn wait_for(&self, n: u64, limit: Duration, what: &str, hcpe: &ChildGuard) {
        while self.bytes() < n {
            assert!(self.started.elapsed() < limit, "{what} does not progress:\n{}", hcpe.log());
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Waits for the end of the download.
    pub fn join(self) -> Result<Transfer, traffic::Error> {
        self.thread.join().expect("download thread panicked")
    }
}

/// A response of [`http`].
#[derive(Debug, Clone)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: String,
    pub body: String,
}

/// One HTTP/1.1 request from inside `ns` (`Connection: close`), for the daemons' admin APIs.
/// Hand-written: a dozen lines against loopback do not justify an HTTP client crate in the test harness.
pub fn http(
    ns: &Netns,
    to: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> anyhow::Result<HttpResponse> {
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {to}\r\nConnection: close\r\n");
    if let Some(t) = token {
        req.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    let body = body.unwrap_or("");
    if !body.is_empty() || matches!(method, "POST" | "PATCH" | "PUT") {
        req.push_str(&format!("Content-Type: application/json\r\nContent-Length: {}\r\n", body.len()));
    }
    req.push_str("\r\n");
    req.push_str(body);
    let raw = ns.within(move || -> std::io::Result<Vec<u8>> {
        let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(5))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        s.write_all(req.as_bytes())?;
        let mut out = Vec::new();
        s.read_to_end(&mut out)?;
        Ok(out)
    })??;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, rest) = text.split_once("\r\n\r\n").context("no end of HTTP headers")?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("bad status line: {head}"))?;
    let body =
        if head.to_ascii_lowercase().contains("transfer-encoding: chunked") { dechunk(rest)? } else { rest.to_owned() };
    Ok(HttpResponse { status, headers: head.to_owned(), body })
}

/// `GET /api/v1/connections` from the admin API on 127.0.0.1:`port` inside `ns` (hag's or hcpe's), parsed.
pub fn connections(ns: &Netns, port: u16, token: &str) -> anyhow::Result<serde_json::Value> {
    let api = SocketAddr::from(([127, 0, 0, 1], port));
    let r = http(ns, api, "GET", "/api/v1/connections", Some(token), None)?;
    if r.status != 200 {
        bail!("GET /api/v1/connections: {} {}", r.status, r.body);
    }
    serde_json::from_str(&r.body).with_context(|| format!("connections are not JSON: {}", r.body))
}

/// One sample of `GET /metrics` from the admin API on 127.0.0.1:`port` inside `ns`: family `name`, the sample
/// with exactly `labels`.
pub fn metric(ns: &Netns, port: u16, token: &str, name: &str, labels: &[(&str, &str)]) -> anyhow::Result<f64> {
    let api = SocketAddr::from(([127, 0, 0, 1], port));
    let r = http(ns, api, "GET", "/metrics", Some(token), None)?;
    if r.status != 200 {
        bail!("GET /metrics: {} {}", r.status, r.body);
    }
    let families = testkit::prometheus::parse(&r.body).map_err(|e| anyhow::anyhow!("bad /metrics: {e}"))?;
    families
        .iter()
        .find(|f| f.name == name)
        .and_then(|f| f.value(labels))
        .with_context(|| format!("no sample {name}{labels:?} in /metrics"))
}

/// The IP of a connection's subflow as the admin API lists it: `side` is `"local"` or `"remote"`.
pub fn subflow_ip(subflow: &serde_json::Value, side: &str) -> Option<IpAddr> {
    subflow[side].as_str().and_then(|a| a.parse::<SocketAddr>().ok()).map(|a| a.ip())
}

fn dechunk(mut s: &str) -> anyhow::Result<String> {
    let mut out = String::new();
    loop {
        let (size, rest) = s.split_once("\r\n").context("truncated chunk size")?;
        let n = usize::from_str_radix(size.trim(), 16).context("bad chunk size")?;
        if n == 0 {
            return Ok(out);
        }
        out.push_str(rest.get(..n).context("truncated chunk")?);
        s = rest.get(n + 2..).context("truncated chunk end")?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configs_name_every_section_the_daemons_need() {
        let y = hcpe_yaml(&HcpeSpec { managed: true, admin: true, lte_mode: "backup".into(), ..HcpeSpec::default() });
        for needle in
            ["role: secondary", "mode: backup", "gateway: 198.18.3.1", "probe: {", "admin: {", "fastopen: false"]
        {
            assert!(y.contains(needle), "{needle} missing in\n{y}");
        }
        let y = hcpe_yaml(&HcpeSpec::default());
        assert!(!y.contains("probe") && !y.contains("gateway"), "{y}");
        let h = hag_yaml(&HagSpec { deny: vec!["198.18.4.3/32".into()], ..HagSpec::default() });
        assert!(h.contains("deny: [198.18.4.3/32]") && h.contains("2001:2:0:4::/64"), "{h}");
    }

    #[test]
    fn chunked_bodies_are_joined() {
        assert_eq!(dechunk("4\r\nabcd\r\n2\r\nef\r\n0\r\n\r\n").unwrap(), "abcdef");
    }
}
