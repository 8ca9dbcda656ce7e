//! The system check both daemons run (`--check-system`, and at every start): is this host, in the network
//! namespace the daemon runs in, able to carry what the config asks for? Each check is one [`Finding`]:
//! ok, warn (works, but worse or at risk) or fail (the daemon cannot do its job), with the fix spelled out.
//!
//! The pieces here are the checks themselves; each daemon composes its list from its config
//! (`hag::syscheck`, `hcpe::syscheck`). Sysctls are read under a [`Sysctl`] root so that the pure parts can
//! be tested without touching `/proc`; everything under `net.` is per network namespace, so a check in a
//! namespace sees that namespace's values.
//!
//! Invariants: a check never changes the system; a value it cannot read is a warn naming the path, never a
//! panic; every non-ok finding carries a fix.

use std::fmt;
use std::path::PathBuf;

use crate::mptcp::{TfoRole, check_tfo_value};

/// Exit code of `--check-system` when a check failed, and of a daemon that refuses to start for that reason
/// (sysexits `EX_UNAVAILABLE`).
pub const EXIT_SYSTEM: u8 = 69;

/// How a check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// In place.
    Ok,
    /// Works, but worse or at risk; the daemon starts.
    Warn,
    /// The daemon cannot do its job; it refuses to start.
    Fail,
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Level::Ok => "ok",
            Level::Warn => "warn",
            Level::Fail => "FAIL",
        })
    }
}

/// One check's outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// Short stable name (`mptcp`, `ip_forward`, `rp_filter dsl0`, ...).
    pub name: String,
    /// Its outcome.
    pub level: Level,
    /// What was found.
    pub detail: String,
    /// What to do about it (`None` when ok).
    pub fix: Option<String>,
}

impl Finding {
    /// An ok finding.
    pub fn ok(name: impl Into<String>, detail: impl Into<String>) -> Self {
        Finding { name: name.into(), level: Level::Ok, detail: detail.into(), fix: None }
    }
    /// A warning with its fix.
    pub fn warn(name: impl Into<String>, detail: impl Into<String>, fix: impl Into<String>) -> Self {
        Finding { name: name.into(), level: Level::Warn, detail: detail.into(), fix: Some(fix.into()) }
    }
    /// A failure with its fix.
    pub fn fail(name: impl Into<String>, detail: impl Into<String>, fix: impl Into<String>) -> Self {
        Finding { name: name.into(), level: Level::Fail, detail: detail.into(), fix: Some(fix.into()) }
    }
}

/// All findings of one run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// In the order checked.
    pub findings: Vec<Finding>,
}

impl Report {
    /// Whether any check failed.
    pub fn failed(&self) -> bool {
        self.findings.iter().any(|f| f.level == Level::Fail)
    }

    /// Whether any check warned.
    pub fn warned(&self) -> bool {
        self.findings.iter().any(|f| f.level == Level::Warn)
    }

    /// The findings at `level`.
    pub fn at(&self, level: Level) -> impl Iterator<Item = &Finding> {
        self.findings.iter().filter(move |f| f.level == level)
    }

    /// The report as `--check-system` prints it: a line per check, the fix indented under it, a summary.
    pub fn render(&self, daemon: &str) -> String {
        let width = self.findings.iter().map(|f| f.name.len()).max().unwrap_or(0);
        let mut out = String::new();
        for f in &self.findings {
            out.push_str(&format!("{:<4}  {:<width$}  {}\n", f.level.to_string(), f.name, f.detail));
            if let Some(fix) = &f.fix {
                out.push_str(&format!("{:<4}  {:<width$}  fix: {fix}\n", "", ""));
            }
        }
        let (fails, warns) = (self.at(Level::Fail).count(), self.at(Level::Warn).count());
        out.push_str(&match (fails, warns) {
            (0, 0) => format!("{daemon}: system check passed\n"),
            (0, w) => format!("{daemon}: system check passed with {w} warning(s)\n"),
            (f, w) => format!("{daemon}: system check failed: {f} failure(s), {w} warning(s)\n"),
        });
        out
    }

    /// One log line per non-ok finding (at start), warnings as warnings, failures as errors.
    pub fn log(&self) {
        for f in &self.findings {
            let fix = f.fix.as_deref().unwrap_or("");
            match f.level {
                Level::Ok => tracing::debug!(check = %f.name, detail = %f.detail, "system check ok"),
                Level::Warn => tracing::warn!(check = %f.name, fix, "system check: {}", f.detail),
                Level::Fail => tracing::error!(check = %f.name, fix, "system check: {}", f.detail),
            }
        }
    }
}

/// Reads sysctls under a root (`/proc/sys` on a host; a directory of files in tests).
#[derive(Debug, Clone)]
pub struct Sysctl {
    root: PathBuf,
}

impl Default for Sysctl {
    fn default() -> Self {
        Sysctl { root: PathBuf::from("/proc/sys") }
    }
}

impl Sysctl {
    /// Sysctls under `root` (`net.ipv4.ip_forward` is `root/net/ipv4/ip_forward`).
    pub fn at(root: impl Into<PathBuf>) -> Self {
        Sysctl { root: root.into() }
    }

    /// The file behind a dotted key.
    pub fn path(&self, key: &str) -> PathBuf {
        self.root.join(key.replace('.', "/"))
    }

    /// The trimmed value, or why it cannot be read.
    pub fn read(&self, key: &str) -> Result<String, String> {
        let path = self.path(key);
        std::fs::read_to_string(&path).map(|s| s.trim().to_owned()).map_err(|e| format!("cannot read {key}: {e}"))
    }

    /// The value as a number (decimal or `0x` hex).
    pub fn number(&self, key: &str) -> Result<u64, String> {
        let text = self.read(key)?;
        let parsed = match text.strip_prefix("0x") {
            Some(hex) => u64::from_str_radix(hex, 16),
            None => text.parse(),
        };
        parsed.map_err(|_| format!("{key} holds {text:?}, not a number"))
    }
}

/// Where a per-interface sysctl for an interface name with dots lives: the kernel writes `eth0.7` as
/// `eth0/7` in the dotted form, so the key is built from parts.
fn conf_key(family: &str, iface: &str, item: &str) -> String {
    format!("net.{family}.conf.{}.{item}", iface.replace('.', "/"))
}

/// `net.mptcp.enabled` is 1: without it every MPTCP socket is refused (or silently plain TCP).
pub fn mptcp_enabled(s: &Sysctl) -> Finding {
    match s.number("net.mptcp.enabled") {
        Ok(1) => Finding::ok("mptcp", "net.mptcp.enabled = 1"),
        Ok(v) => Finding::fail(
            "mptcp",
            format!("net.mptcp.enabled = {v}: MPTCP is off in this network namespace"),
            "sysctl -w net.mptcp.enabled=1, and keep it in /etc/sysctl.d/ (the package's 60-*.conf does)",
        ),
        Err(e) => Finding::fail(
            "mptcp",
            format!("{e}: this kernel has no MPTCP (CONFIG_MPTCP, Linux 5.6 or later)"),
            "run a kernel built with CONFIG_MPTCP=y and CONFIG_MPTCP_IPV6=y (Debian's and OpenWrt's 5.15+ kernels are)",
        ),
    }
}

/// The in-kernel path manager is the active one. Both daemons drive MPTCP through it (hcpe adds its uplinks
/// as endpoints; hag accepts joins under its limits). With the userspace path manager `missing` is the level:
/// hcpe cannot add subflows at all (fail), hag relies on a userspace daemon it does not know (warn).
pub fn path_manager(s: &Sysctl, missing: Level) -> Finding {
    // Linux 6.15+ names it; older kernels have only the number (0 kernel, 1 userspace).
    let name = match s.read("net.mptcp.path_manager") {
        Ok(n) => n,
        Err(_) => match s.number("net.mptcp.pm_type") {
            Ok(0) => "kernel".to_owned(),
            Ok(1) => "userspace".to_owned(),
            Ok(v) => format!("pm_type {v}"),
            Err(e) => return Finding::warn("path manager", e, "check that the kernel has MPTCP (see the mptcp check)"),
        },
    };
    if name == "kernel" {
        return Finding::ok("path manager", "net.mptcp.path_manager = kernel");
    }
    let detail = format!("net.mptcp.path_manager = {name}: the in-kernel path manager is not active");
    let fix = "sysctl -w net.mptcp.path_manager=kernel (net.mptcp.pm_type=0 before Linux 6.15)";
    match missing {
        Level::Fail => Finding::fail("path manager", detail, fix),
        _ => Finding::warn("path manager", detail, fix),
    }
}

/// The path manager's `subflows` limit allows joins: with 0, a CPE's second uplink can never join.
pub fn subflow_limit(subflows: Result<u32, String>) -> Finding {
    let fix = "ip mptcp limits set subflows 8 add_addr_accepted 8 (per network namespace; at boot, e.g. in the unit)";
    match subflows {
        Ok(0) => {
            Finding::fail("mptcp limits", "ip mptcp limits: subflows 0, no CPE uplink beyond the first can join", fix)
        }
        Ok(1) => Finding::warn("mptcp limits", "ip mptcp limits: subflows 1, a CPE with three uplinks loses one", fix),
        Ok(n) => Finding::ok("mptcp limits", format!("ip mptcp limits: subflows {n}")),
        Err(e) => Finding::warn("mptcp limits", format!("cannot read the MPTCP limits: {e}"), fix),
    }
}

/// The path manager's limits as [`subflow_limit`] wants them, read over generic netlink.
pub fn read_subflow_limit() -> Result<u32, String> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
    rt.block_on(async {
        let pm = crate::pm::PathManager::connect().await.map_err(|e| e.to_string())?;
        pm.limits().await.map(|l| l.subflows).map_err(|e| e.to_string())
    })
}

/// A daemon without `CAP_NET_ADMIN` (hag's service) can give its connections `algorithm`: the kernel has it
/// and `net.ipv4.tcp_allowed_congestion_control` lists it, or it is the machine's default. `key` is the
/// config key that names it, `otherwise` what the daemon does when it cannot.
pub fn congestion_control_allowed(s: &Sysctl, key: &str, algorithm: &str, otherwise: &str) -> Finding {
    let name = format!("{key} {algorithm}");
    let has = |k: &str| s.read(k).is_ok_and(|v| v.split_whitespace().any(|a| a == algorithm));
    if has("net.ipv4.tcp_allowed_congestion_control") || has("net.ipv4.tcp_congestion_control") {
        return Finding::ok(name, format!("{algorithm} is in net.ipv4.tcp_allowed_congestion_control"));
    }
    let fix = format!(
        "modprobe tcp_{algorithm} and add {algorithm} to net.ipv4.tcp_allowed_congestion_control (at boot: \
         /etc/modules-load.d/ and /etc/sysctl.d/)"
    );
    let detail = match has("net.ipv4.tcp_available_congestion_control") {
        true => format!(
            "{algorithm} is not in net.ipv4.tcp_allowed_congestion_control, so a daemon without CAP_NET_ADMIN \
             cannot use it: {otherwise}"
        ),
        false => format!("this kernel has no {algorithm} loaded: {otherwise}"),
    };
    Finding::warn(name, detail, fix)
}

/// `net.ipv4.tcp_fastopen` has the bits `role` needs (only when Fast Open is configured on).
pub fn fastopen(s: &Sysctl, role: TfoRole) -> Finding {
    match s.number("net.ipv4.tcp_fastopen") {
        Ok(v) => match check_tfo_value(role, v as u32) {
            Ok(()) => Finding::ok("fastopen", format!("net.ipv4.tcp_fastopen = 0x{v:x}")),
            Err(why) => {
                let (detail, fix) = why.split_once("; ").unwrap_or((&why, "see docs/troubleshooting.md"));
                Finding::warn("fastopen", format!("{detail}: Convert messages in the SYN lose 0-RTT"), fix)
            }
        },
        Err(e) => Finding::warn("fastopen", e, "sysctl -w net.ipv4.tcp_fastopen=0x603"),
    }
}

/// IPv4 (and, when `v6`, IPv6) forwarding is on: hcpe receives LAN packets routed to its TUN device.
pub fn ip_forward(s: &Sysctl, v6: bool) -> Vec<Finding> {
    let mut out = Vec::new();
    out.push(match s.number("net.ipv4.ip_forward") {
        Ok(1) => Finding::ok("ip_forward", "net.ipv4.ip_forward = 1"),
        Ok(v) => Finding::fail(
            "ip_forward",
            format!("net.ipv4.ip_forward = {v}: LAN packets are never routed into the TUN device"),
            "sysctl -w net.ipv4.ip_forward=1, and keep it in /etc/sysctl.d/",
        ),
        Err(e) => Finding::fail("ip_forward", e, "sysctl -w net.ipv4.ip_forward=1"),
    });
    if v6 {
        out.push(match s.number("net.ipv6.conf.all.forwarding") {
            Ok(1) => Finding::ok("ip6 forwarding", "net.ipv6.conf.all.forwarding = 1"),
            Ok(v) => Finding::warn(
                "ip6 forwarding",
                format!("net.ipv6.conf.all.forwarding = {v}: LAN IPv6 connections are not intercepted"),
                "sysctl -w net.ipv6.conf.all.forwarding=1, or leave tun.ipv6 out",
            ),
            Err(e) => Finding::warn("ip6 forwarding", e, "sysctl -w net.ipv6.conf.all.forwarding=1"),
        });
    }
    out
}

/// Reverse-path filtering on an uplink is not strict. The kernel uses the larger of `all` and the interface's
/// value; strict (1) drops a reply that arrives on an uplink other than the one the main table routes its
/// source through, which is exactly what a second uplink carries.
pub fn rp_filter(s: &Sysctl, iface: &str) -> Finding {
    let name = format!("rp_filter {iface}");
    let all = s.number("net.ipv4.conf.all.rp_filter");
    let own = s.number(&conf_key("ipv4", iface, "rp_filter"));
    match (all, own) {
        (Ok(all), Ok(own)) => {
            let effective = all.max(own);
            if effective == 1 {
                Finding::warn(
                    name,
                    format!(
                        "strict reverse-path filter (all = {all}, {iface} = {own}): replies on this uplink may be dropped"
                    ),
                    format!("sysctl -w net.ipv4.conf.all.rp_filter=2 net.ipv4.conf.{iface}.rp_filter=2 (loose)"),
                )
            } else {
                Finding::ok(name, format!("rp_filter = {effective} (all = {all}, {iface} = {own})"))
            }
        }
        (_, Err(_)) => Finding::ok(name, format!("{iface} does not exist now; run the check again once it is up")),
        (Err(e), _) => Finding::warn(name, e, "check /proc/sys/net/ipv4/conf/all/rp_filter"),
    }
}

/// The open-file limit can cover `connections` relays at `fds_per_connection` descriptors each: the soft limit
/// is raised at start up to the hard limit, so only a hard limit below the need is worth a warning.
pub fn fd_limit(connections: u64, fds_per_connection: u64, what: &str) -> Finding {
    let need = crate::process::fds_for(connections, fds_per_connection);
    match rlimit::getrlimit(rlimit::Resource::NOFILE) {
        Ok((soft, hard)) if hard >= need => {
            Finding::ok("open files", format!("limit {soft} (hard {hard}) covers {need} for {connections} {what}"))
        }
        Ok((soft, hard)) => Finding::warn(
            "open files",
            format!(
                "hard limit {hard} (soft {soft}) holds about {} {what}, the config allows {connections}",
                hard.saturating_sub(crate::process::FD_RESERVE) / fds_per_connection.max(1)
            ),
            format!("LimitNOFILE={need} in the unit (or ulimit -n {need}), or lower the connection limit"),
        ),
        Err(e) => Finding::warn("open files", format!("cannot read RLIMIT_NOFILE: {e}"), "check ulimit -n"),
    }
}

/// `/dev/net/tun` opens read-write (hcpe's interception device).
pub fn tun_device() -> Finding {
    let path = "/dev/net/tun";
    match std::fs::OpenOptions::new().read(true).write(true).open(path) {
        Ok(_) => Finding::ok("tun", format!("{path} opens")),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Finding::fail(
            "tun",
            format!("{path} does not exist: this kernel or container has no TUN device"),
            "modprobe tun (CONFIG_TUN; OpenWrt: kmod-tun), or pass /dev/net/tun into the container",
        ),
        Err(e) => Finding::fail(
            "tun",
            format!("cannot open {path}: {e}"),
            "run with CAP_NET_ADMIN (the unit grants it) and access to /dev/net/tun",
        ),
    }
}

/// The `nft` tool runs (hcpe's `block_quic` installs its rule with it).
pub fn nft_tool() -> Finding {
    match std::process::Command::new("nft").arg("--version").output() {
        Ok(o) if o.status.success() => Finding::ok("nftables", String::from_utf8_lossy(&o.stdout).trim().to_owned()),
        Ok(o) => Finding::fail(
            "nftables",
            format!("`nft --version` failed ({}): block_quic cannot install its rule", o.status),
            "install nftables (Debian: nftables; OpenWrt: nftables-json), or set block_quic: false",
        ),
        Err(e) => Finding::fail(
            "nftables",
            format!("cannot run nft: {e}; block_quic cannot install its rule"),
            "install nftables (Debian: nftables; OpenWrt: nftables-json), or set block_quic: false",
        ),
    }
}

/// What `adjtimex` says of the clock: synchronised or not. The Auth TLV and the probes carry timestamps that
/// the other side accepts only within its skew, so a CPE whose clock drifts is refused.
pub fn clock(skew_hint: &str) -> Finding {
    // SAFETY: adjtimex with modes 0 only reads; the struct is plain data, zeroed.
    let (state, status) = unsafe {
        let mut t: libc::timex = std::mem::zeroed();
        let state = libc::adjtimex(&mut t);
        (state, t.status)
    };
    if state < 0 {
        return Finding::warn(
            "clock",
            format!("cannot ask the kernel about the clock: {}", std::io::Error::last_os_error()),
            "run an NTP client (systemd-timesyncd, chrony; OpenWrt: sysntpd)",
        );
    }
    if state == libc::TIME_ERROR || status & libc::STA_UNSYNC != 0 {
        return Finding::warn(
            "clock",
            format!("the kernel reports the clock as not synchronised: {skew_hint}"),
            "run an NTP client (systemd-timesyncd, chrony; OpenWrt: sysntpd) and let it sync",
        );
    }
    Finding::ok("clock", "synchronised (adjtimex)")
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Tree(tempfile::TempDir);
    impl Tree {
        fn new(values: &[(&str, &str)]) -> Self {
            let dir = tempfile::tempdir().unwrap();
            for (key, value) in values {
                let s = Sysctl::at(dir.path());
                let path = s.path(key);
                std::fs::create_dir_all(path.parent().unwrap()).unwrap();
                std::fs::write(path, format!("{value}\n")).unwrap();
            }
            Tree(dir)
        }
        fn sysctl(&self) -> Sysctl {
            Sysctl::at(self.0.path())
        }
    }

    #[test]
    fn mptcp_off_or_absent_fails_with_the_fix() {
        let t = Tree::new(&[("net.mptcp.enabled", "0")]);
        let f = mptcp_enabled(&t.sysctl());
        assert_eq!(f.level, Level::Fail);
        assert!(f.fix.unwrap().contains("net.mptcp.enabled=1"));
        let f = mptcp_enabled(&Tree::new(&[]).sysctl());
        assert_eq!(f.level, Level::Fail);
        assert!(f.detail.contains("CONFIG_MPTCP"), "{}", f.detail);
        assert_eq!(mptcp_enabled(&Tree::new(&[("net.mptcp.enabled", "1")]).sysctl()).level, Level::Ok);
    }

    #[test]
    fn path_manager_by_name_or_number() {
        let kernel = Tree::new(&[("net.mptcp.path_manager", "kernel")]);
        assert_eq!(path_manager(&kernel.sysctl(), Level::Fail).level, Level::Ok);
        let old_user = Tree::new(&[("net.mptcp.pm_type", "1")]);
        assert_eq!(path_manager(&old_user.sysctl(), Level::Fail).level, Level::Fail);
        assert_eq!(path_manager(&old_user.sysctl(), Level::Warn).level, Level::Warn);
        assert_eq!(path_manager(&Tree::new(&[("net.mptcp.pm_type", "0")]).sysctl(), Level::Fail).level, Level::Ok);
    }

    #[test]
    fn strict_rp_filter_warns_whichever_side_sets_it() {
        let t = Tree::new(&[("net.ipv4.conf.all.rp_filter", "0"), ("net.ipv4.conf.dsl0.rp_filter", "1")]);
        assert_eq!(rp_filter(&t.sysctl(), "dsl0").level, Level::Warn);
        let t = Tree::new(&[("net.ipv4.conf.all.rp_filter", "1"), ("net.ipv4.conf.dsl0.rp_filter", "2")]);
        assert_eq!(rp_filter(&t.sysctl(), "dsl0").level, Level::Ok, "max(1, 2) = 2 is loose");
        let t = Tree::new(&[("net.ipv4.conf.all.rp_filter", "1")]);
        assert_eq!(rp_filter(&t.sysctl(), "wwan0").level, Level::Ok, "absent interface: checked when it appears");
    }

    #[test]
    fn forwarding_and_fastopen() {
        let t = Tree::new(&[("net.ipv4.ip_forward", "0"), ("net.ipv6.conf.all.forwarding", "0")]);
        let f = ip_forward(&t.sysctl(), true);
        assert_eq!((f[0].level, f[1].level), (Level::Fail, Level::Warn));
        let t = Tree::new(&[("net.ipv4.tcp_fastopen", "1")]);
        assert_eq!(fastopen(&t.sysctl(), TfoRole::Client).level, Level::Ok);
        let f = fastopen(&t.sysctl(), TfoRole::Server);
        assert_eq!(f.level, Level::Warn);
        assert!(f.fix.unwrap().contains("net.ipv4.tcp_fastopen=515"));
    }

    #[test]
    fn congestion_control_allowed_to_an_unprivileged_daemon() {
        let t = Tree::new(&[
            ("net.ipv4.tcp_available_congestion_control", "reno cubic bbr"),
            ("net.ipv4.tcp_allowed_congestion_control", "reno cubic"),
            ("net.ipv4.tcp_congestion_control", "cubic"),
        ]);
        assert_eq!(congestion_control_allowed(&t.sysctl(), "k", "cubic", "x").level, Level::Ok);
        let f = congestion_control_allowed(&t.sysctl(), "k", "bbr", "starts without it");
        assert_eq!(f.level, Level::Warn);
        assert!(
            f.detail.contains("not in net.ipv4.tcp_allowed") && f.detail.contains("starts without it"),
            "{}",
            f.detail
        );
        let t = Tree::new(&[
            ("net.ipv4.tcp_available_congestion_control", "reno bbr"),
            ("net.ipv4.tcp_allowed_congestion_control", "reno"),
            ("net.ipv4.tcp_congestion_control", "bbr"),
        ]);
        assert_eq!(congestion_control_allowed(&t.sysctl(), "k", "bbr", "x").level, Level::Ok, "the default");
        let f = congestion_control_allowed(&t.sysctl(), "k", "cubic", "x");
        assert!(f.detail.contains("no cubic loaded"), "{}", f.detail);
    }

    #[test]
    fn subflow_limits() {
        assert_eq!(subflow_limit(Ok(0)).level, Level::Fail);
        assert_eq!(subflow_limit(Ok(1)).level, Level::Warn);
        assert_eq!(subflow_limit(Ok(2)).level, Level::Ok);
    }

    #[test]
    fn report_renders_every_fix_and_a_verdict() {
        let r = Report {
            findings: vec![
                Finding::ok("mptcp", "net.mptcp.enabled = 1"),
                Finding::warn("clock", "not synchronised", "run NTP"),
                Finding::fail("tun", "missing", "modprobe tun"),
            ],
        };
        let text = r.render("hcpe");
        assert!(r.failed() && r.warned());
        assert!(text.contains("FAIL  tun    missing\n"), "{text}");
        assert!(text.contains("fix: modprobe tun"), "{text}");
        assert!(text.ends_with("hcpe: system check failed: 1 failure(s), 1 warning(s)\n"), "{text}");
        let ok = Report { findings: vec![Finding::ok("mptcp", "on")] };
        assert!(ok.render("hag").ends_with("hag: system check passed\n"));
    }
}
