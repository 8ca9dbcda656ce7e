//! `hag --check-system` and `hcpe --check-system` as shipped, each in a network namespace set up to break
//! (or satisfy) one check: the exit code, the verdict line and the fix named. And the daemons refuse to start
//! on a failed check with the same message.
//!
//! Not set up here: a clock that is not synchronised (the clock is not per namespace; the check's wording is
//! covered by `common::syscheck`'s unit tests).

use std::path::{Path, PathBuf};
use std::time::Duration;

use tests::netns::{Netns, bin_path};

/// The shipped example configs, with their key files, in a scratch directory; `edit` changes the text.
struct Configs {
    dir: tempfile::TempDir,
}

impl Configs {
    fn new() -> Self {
        let dir = tempfile::Builder::new().prefix("check-system-").tempdir().unwrap();
        let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples");
        std::fs::create_dir(dir.path().join("hag-keys")).unwrap();
        for f in ["hag.yaml", "hcpe.yaml", "hag-keys/example-cpe.key", "hag-keys/admin.token"] {
            std::fs::copy(examples.join(f), dir.path().join(f)).unwrap();
        }
        Configs { dir }
    }

    /// Writes `daemon`.yaml with `from` replaced by `to` under a new name, and returns its path.
    fn edited(&self, daemon: &str, from: &str, to: &str) -> PathBuf {
        let text = std::fs::read_to_string(self.dir.path().join(format!("{daemon}.yaml"))).unwrap();
        assert!(text.contains(from), "{from:?} not in the example {daemon}.yaml");
        let path = self.dir.path().join(format!("{daemon}-edited.yaml"));
        std::fs::write(&path, text.replace(from, to)).unwrap();
        path
    }

    fn path(&self, daemon: &str) -> PathBuf {
        self.dir.path().join(format!("{daemon}.yaml"))
    }
}

/// A namespace in which hcpe's checks all pass (forwarding on) unless a test changes something.
fn namespace(role: &str) -> Netns {
    let ns = Netns::new(role).unwrap();
    ns.sysctl("net.ipv4.ip_forward", "1").unwrap();
    ns.sysctl("net.ipv6.conf.all.forwarding", "1").unwrap();
    ns
}

/// Runs `prefix... <daemon> --config <config> --check-system` in `ns`: exit code and stdout.
fn check(ns: &Netns, prefix: &[&str], daemon: &str, config: &Path) -> (i32, String) {
    let bin = bin_path(daemon).to_str().unwrap().to_owned();
    let mut argv: Vec<String> = prefix.iter().map(|s| s.to_string()).collect();
    argv.extend([bin, "--config".to_owned(), config.to_str().unwrap().to_owned(), "--check-system".to_owned()]);
    let (cmd, args) = (argv[0].clone(), &argv[1..]);
    let out = ns.exec(&cmd, args).unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    eprintln!(
        "[{daemon} {}] exit {:?}\n{stdout}{}",
        prefix.join(" "),
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), stdout)
}

/// The report's line for check `name`, e.g. `warn  fastopen ...`.
fn line<'a>(report: &'a str, name: &str) -> &'a str {
    report
        .lines()
        .find(|l| l.get(6..).is_some_and(|rest| rest.starts_with(&format!("{name} "))))
        .unwrap_or_else(|| panic!("no `{name}` check in:\n{report}"))
}

fn level(report: &str, name: &str) -> String {
    line(report, name)[..4].trim().to_owned()
}

#[test]
fn everything_in_place_passes_for_both_daemons() {
    let c = Configs::new();
    let ns = namespace("chk-ok");
    for daemon in ["hag", "hcpe"] {
        let (code, out) = check(&ns, &[], daemon, &c.path(daemon));
        assert_eq!(code, 0, "{out}");
        assert!(!out.contains("FAIL"), "{out}");
        assert!(out.contains(&format!("{daemon}: system check passed")), "{out}");
    }
}

#[test]
fn mptcp_off_fails_names_the_fix_and_the_daemons_refuse_to_start() {
    let c = Configs::new();
    let ns = namespace("chk-mptcp");
    ns.sysctl("net.mptcp.enabled", "0").unwrap();
    for daemon in ["hag", "hcpe"] {
        let (code, out) = check(&ns, &[], daemon, &c.path(daemon));
        assert_eq!(code, 69, "{out}");
        assert_eq!(level(&out, "mptcp"), "FAIL");
        assert!(out.contains("fix: sysctl -w net.mptcp.enabled=1"), "{out}");
        assert!(out.contains(&format!("{daemon}: system check failed")), "{out}");
        // Started for real, the daemon stops before binding anything, with the same report on stderr.
        let mut child = ns.spawn(bin_path(daemon), &["--config", c.path(daemon).to_str().unwrap()]).unwrap();
        let status = child.wait_timeout(Duration::from_secs(20)).expect("the daemon should refuse to start");
        assert_eq!(status.code(), Some(69), "{}", child.log());
        let log = child.log();
        assert!(log.contains("fix: sysctl -w net.mptcp.enabled=1"), "{log}");
        assert!(log.contains("not starting"), "{log}");
    }
}

#[test]
fn userspace_path_manager_fails_hcpe_and_warns_hag() {
    let c = Configs::new();
    let ns = namespace("chk-pm");
    ns.sysctl("net.mptcp.path_manager", "userspace").unwrap();
    let (code, out) = check(&ns, &[], "hcpe", &c.path("hcpe"));
    assert_eq!((code, level(&out, "path manager").as_str()), (69, "FAIL"), "{out}");
    assert!(out.contains("net.mptcp.path_manager=kernel"), "{out}");
    let (code, out) = check(&ns, &[], "hag", &c.path("hag"));
    assert_eq!((code, level(&out, "path manager").as_str()), (0, "warn"), "{out}");
}

#[test]
fn a_subflow_limit_of_zero_fails_hag() {
    let c = Configs::new();
    let ns = namespace("chk-lim");
    ns.ip(&["mptcp", "limits", "set", "subflows", "0", "add_addr_accepted", "0"]).unwrap();
    let (code, out) = check(&ns, &[], "hag", &c.path("hag"));
    assert_eq!((code, level(&out, "mptcp limits").as_str()), (69, "FAIL"), "{out}");
    assert!(out.contains("ip mptcp limits set subflows 8"), "{out}");
    ns.ip(&["mptcp", "limits", "set", "subflows", "4"]).unwrap();
    let (code, out) = check(&ns, &[], "hag", &c.path("hag"));
    assert_eq!((code, level(&out, "mptcp limits").as_str()), (0, "ok"), "{out}");
}

#[test]
fn forwarding_off_fails_hcpe() {
    let c = Configs::new();
    let ns = namespace("chk-fwd");
    ns.sysctl("net.ipv4.ip_forward", "0").unwrap();
    ns.sysctl("net.ipv6.conf.all.forwarding", "0").unwrap();
    let (code, out) = check(&ns, &[], "hcpe", &c.path("hcpe"));
    assert_eq!((code, level(&out, "ip_forward").as_str()), (69, "FAIL"), "{out}");
    assert_eq!(level(&out, "ip6 forwarding"), "warn");
    assert!(out.contains("fix: sysctl -w net.ipv4.ip_forward=1"), "{out}");
}

#[test]
fn strict_rp_filter_on_an_uplink_warns() {
    let c = Configs::new();
    let ns = namespace("chk-rpf");
    ns.ip(&["link", "add", "dsl0", "type", "veth", "peer", "name", "dsl0-peer"]).unwrap();
    ns.sysctl("net.ipv4.conf.all.rp_filter", "0").unwrap();
    ns.sysctl("net.ipv4.conf.dsl0.rp_filter", "1").unwrap();
    let (code, out) = check(&ns, &[], "hcpe", &c.path("hcpe"));
    assert_eq!((code, level(&out, "rp_filter dsl0").as_str()), (0, "warn"), "{out}");
    assert!(out.contains("net.ipv4.conf.dsl0.rp_filter=2"), "{out}");
    ns.sysctl("net.ipv4.conf.dsl0.rp_filter", "2").unwrap();
    let (_, out) = check(&ns, &[], "hcpe", &c.path("hcpe"));
    assert_eq!(level(&out, "rp_filter dsl0"), "ok", "{out}");
}

#[test]
fn block_quic_without_nft_fails_hcpe() {
    let c = Configs::new();
    let ns = namespace("chk-nft");
    let config = c.edited("hcpe", "block_quic: false", "block_quic: true");
    let (code, out) = check(&ns, &["env", "PATH=/nonexistent"], "hcpe", &config);
    assert_eq!((code, level(&out, "nftables").as_str()), (69, "FAIL"), "{out}");
    assert!(out.contains("install nftables"), "{out}");
    let have_nft = std::process::Command::new("nft").arg("--version").output().is_ok_and(|o| o.status.success());
    if have_nft {
        let (code, out) = check(&ns, &[], "hcpe", &config);
        assert_eq!((code, level(&out, "nftables").as_str()), (0, "ok"), "{out}");
    } else {
        assert!(std::env::var_os("CI").is_none(), "CI installs nftables");
    }
    let (_, out) = check(&ns, &[], "hcpe", &c.path("hcpe"));
    assert!(!out.contains("nftables"), "no nft check with block_quic off:\n{out}");
}

#[test]
fn fastopen_bits_are_checked_only_when_fastopen_is_on() {
    let c = Configs::new();
    let ns = namespace("chk-tfo");
    ns.sysctl("net.ipv4.tcp_fastopen", "0").unwrap();
    let (_, out) = check(&ns, &[], "hcpe", &c.path("hcpe"));
    assert!(!out.contains("fastopen"), "fastopen is off in the example:\n{out}");
    let config = c.edited("hcpe", "fastopen: false", "fastopen: true");
    let (code, out) = check(&ns, &[], "hcpe", &config);
    assert_eq!((code, level(&out, "fastopen").as_str()), (0, "warn"), "{out}");
    assert!(out.contains("net.ipv4.tcp_fastopen=1"), "{out}");
    // hag: the example's tfo_queue is on, so the server bits are checked.
    let (_, out) = check(&ns, &[], "hag", &c.path("hag"));
    assert_eq!(level(&out, "fastopen"), "warn", "{out}");
    ns.sysctl("net.ipv4.tcp_fastopen", "0x203").unwrap();
    let (_, out) = check(&ns, &[], "hag", &c.path("hag"));
    assert_eq!(level(&out, "fastopen"), "ok", "{out}");
}

#[test]
fn a_low_open_file_limit_warns_with_the_unit_setting() {
    let c = Configs::new();
    let ns = namespace("chk-nofile");
    let (code, out) = check(&ns, &["prlimit", "--nofile=1024:1024", "--"], "hag", &c.path("hag"));
    assert_eq!((code, level(&out, "open files").as_str()), (0, "warn"), "{out}");
    assert!(out.contains("LimitNOFILE=40256"), "20,000 connections x 2 + 256:\n{out}");
}

#[test]
fn a_missing_tun_device_fails_hcpe() {
    let c = Configs::new();
    let ns = namespace("chk-tun");
    // A private mount namespace where /dev/net is an empty tmpfs: no TUN device to open.
    let hcpe = bin_path("hcpe");
    let script = format!(
        "mount -t tmpfs none /dev/net && exec {} --config {} --check-system",
        hcpe.display(),
        c.path("hcpe").display()
    );
    let out = ns.exec("unshare", &["--mount", "--propagation", "private", "sh", "-c", &script]).unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(69), "{stdout}");
    assert_eq!(level(&stdout, "tun"), "FAIL");
    assert!(stdout.contains("modprobe tun"), "{stdout}");
}
