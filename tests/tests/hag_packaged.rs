//! hag run the way its Debian package and unit run it, in the testbed: the shipped config under an
//! `/etc/hag`-like root (`hag.yaml` root:hag 0640, `hag-keys/` root:hag 0750, each key 0600 owned by the daemon's
//! user), started through `setpriv` as an unprivileged user with the unit's capabilities (none: an empty
//! bounding set, no new privileges), with hcpe from its shipped example as the CPE, run as its unit runs it too
//! (its own user, CAP_NET_ADMIN and CAP_NET_RAW only).
//!
//! It tells systemd's notify socket when it is ready and when it reloads; it relays the CPE's connections; a
//! SIGHUP after a second CPE's key was added serves that CPE at once, without a restart, while a download
//! started before the reload goes on to its last byte. hcpe reloads on SIGHUP too, and runs its part
//! without complaint.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::os::unix::fs::{PermissionsExt, chown};
use std::path::Path;
use std::time::Duration;

use common::convert::Message;
use tests::daemons::{self, LanDownload};
use tests::emulator::{LinkConfig, Shape};
use tests::netns::{ChildGuard, Netns, bin_path};
use tests::testbed::{Testbed, TestbedConfig, addr};
use tests::traffic::Server;

/// The daemon's user and group: a number no account on the machine uses, so nothing in /etc changes.
const UID: u32 = 64_917;
const GID: u32 = 64_917;
/// hcpe's user and group, the same way.
const HCPE_UID: u32 = 64_918;
/// The second CPE's key, added by the reload.
const KEY2: [u8; 32] = [0x5a; 32];

fn set_mode(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// Writes a secret as the package's postinst does: 0600, owned by the daemon's user.
fn secret(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
    chown(path, Some(UID), Some(GID)).unwrap();
    set_mode(path, 0o600);
}

/// `/etc/hag` as the package lays it out under `root`, with `deploy/examples/hag.yaml` as shipped (its key and
/// token paths are the package's `hag-keys/...`) and the CPE key hcpe's config uses.
fn package_layout(root: &Path, cpe_key_hex: &str) -> std::path::PathBuf {
    set_mode(root, 0o755);
    let etc = root.join("etc/hag");
    let keys = etc.join("hag-keys");
    std::fs::create_dir_all(&keys).unwrap();
    set_mode(&root.join("etc"), 0o755);
    set_mode(&etc, 0o755);
    chown(&keys, Some(0), Some(GID)).unwrap();
    set_mode(&keys, 0o750);
    secret(&keys.join("example-cpe.key"), cpe_key_hex);
    secret(&keys.join("admin.token"), "0123456789abcdef0123456789abcdef");
    let config = etc.join("hag.yaml");
    std::fs::write(&config, daemons::example_config("hag.yaml").unwrap()).unwrap();
    chown(&config, Some(0), Some(GID)).unwrap();
    set_mode(&config, 0o640);
    config
}

/// hag through `setpriv`: the unit's user, no capability in any set, no new privileges; systemd's notify
/// socket played by `notify` (a datagram socket the daemon's user may write to).
fn start_unprivileged(ns: &Netns, config: &Path, notify: &Path) -> ChildGuard {
    let (uid, gid) = (format!("--reuid={UID}"), format!("--regid={GID}"));
    let hag = bin_path("hag");
    let args = [
        uid.as_str(),
        gid.as_str(),
        "--clear-groups",
        "--no-new-privs",
        "--inh-caps=-all",
        "--bounding-set=-all",
        "--",
        hag.to_str().unwrap(),
        "--config",
        config.to_str().unwrap(),
    ];
    let mut child = ns.spawn_env("setpriv", &args, &[("NOTIFY_SOCKET", notify.to_str().unwrap())]).unwrap();
    assert!(child.wait_for_log("admin API listening", Duration::from_secs(10)), "hag did not start:\n{}", child.log());
    child
}

/// hcpe as its unit runs it: its own user, with CAP_NET_ADMIN and CAP_NET_RAW as ambient capabilities and
/// nothing else in any set; its config directory (key, token, volume state) owned by that user.
fn start_hcpe_unprivileged(ns: &Netns, dir: &Path, config: &Path) -> ChildGuard {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        chown(entry.path(), Some(HCPE_UID), Some(HCPE_UID)).unwrap();
    }
    chown(dir, Some(HCPE_UID), Some(HCPE_UID)).unwrap();
    let (uid, gid) = (format!("--reuid={HCPE_UID}"), format!("--regid={HCPE_UID}"));
    let hcpe = bin_path("hcpe");
    let args = [
        uid.as_str(),
        gid.as_str(),
        "--clear-groups",
        "--no-new-privs",
        "--inh-caps=-all,+net_admin,+net_raw",
        "--ambient-caps=-all,+net_admin,+net_raw",
        "--bounding-set=-all,+net_admin,+net_raw",
        "--",
        hcpe.to_str().unwrap(),
        "--config",
        config.to_str().unwrap(),
    ];
    let tun = std::fs::metadata("/dev/net/tun").map(|m| m.permissions().mode() & 0o666).unwrap_or(0);
    assert_eq!(
        tun, 0o666,
        "/dev/net/tun has mode {tun:o}: hcpe runs as its own user and needs the 0666 Debian's udev gives it \
         (chmod 0666 /dev/net/tun; .ci/run does)"
    );
    let mut child = ns.spawn("setpriv", &args).unwrap();
    for line in ["hcpe ready", "uplink manager started"] {
        assert!(child.wait_for_log(line, Duration::from_secs(10)), "hcpe did not log `{line}`:\n{}", child.log());
    }
    child
}

/// `Uid` and `CapEff`/`CapBnd` of a process, from /proc.
fn credentials(pid: u32) -> (String, String, String) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field =
        |name: &str| status.lines().find_map(|l| l.strip_prefix(name)).map(|v| v.trim().to_owned()).unwrap_or_default();
    (field("Uid:"), field("CapEff:"), field("CapBnd:"))
}

/// A CPE other than hcpe: a Convert request from the CPE's DSL address signed with `KEY2` as `cpe-2`. Returns
/// hag's reply, and on success whether the destination echoed.
fn second_cpe(ns: &Netns, dst: SocketAddr) -> (Message, bool) {
    let hag = SocketAddr::new(addr::HAG_SERVICE.v4.into(), 5124);
    let source = Some(addr::CPE_DSL.v4.into());
    let reply = tests::cpe::convert_request(ns, hag, source, (&KEY2, "cpe-2"), dst).unwrap();
    if reply.message.error().is_some() {
        return (reply.message, false);
    }
    const HELLO: &[u8] = b"hello through a reloaded hag";
    let (mut s, mut echoed) = (reply.stream, reply.rest);
    s.write_all(HELLO).unwrap();
    while echoed.len() < HELLO.len() {
        let mut chunk = [0u8; 64];
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => echoed.extend_from_slice(&chunk[..n]),
        }
    }
    (reply.message, echoed == HELLO)
}

#[test]
fn unprivileged_hag_relays_and_a_sighup_adds_a_cpe_while_relays_go_on() {
    let tb = Testbed::new(TestbedConfig {
        dsl: LinkConfig::symmetric(Shape::mbit(40.0).delay_ms(5.0)),
        lte: LinkConfig { seed: 2, ..LinkConfig::symmetric(Shape::mbit(20.0).delay_ms(10.0)) },
        ..TestbedConfig::default()
    })
    .unwrap();
    let server = Server::start(&tb.inet, 0).unwrap();
    let dst = SocketAddr::new(addr::INET_SERVER.v4.into(), server.port());
    let echo = SocketAddr::new(addr::INET_SERVER.v4.into(), 7777);
    tests::cpe::echo_server(&tb.inet, echo).unwrap();

    let dir = daemons::config_dir("hag-packaged").unwrap();
    let cpe_key = std::fs::read_to_string(dir.path().join("cpe.key")).unwrap();
    let root = tempfile::Builder::new().prefix("hag-package-root-").tempdir().unwrap();
    let config = package_layout(root.path(), &cpe_key);
    // systemd's side of Type=notify: the datagrams hag sends to $NOTIFY_SOCKET.
    let notify_path = root.path().join("notify.sock");
    let notify = std::os::unix::net::UnixDatagram::bind(&notify_path).unwrap();
    set_mode(&notify_path, 0o777);
    notify.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let next_state = || {
        let mut buf = [0u8; 256];
        let n = notify.recv(&mut buf).expect("a notify datagram from hag");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    let mut hag = start_unprivileged(&tb.hag, &config, &notify_path);
    assert_eq!(next_state().trim(), "READY=1", "readiness once listeners and admin API are up");
    let (uid, cap_eff, cap_bnd) = credentials(hag.pid());
    assert!(uid.split_whitespace().all(|u| u == UID.to_string()), "hag runs as {uid}");
    assert_eq!((cap_eff.as_str(), cap_bnd.as_str()), ("0000000000000000", "0000000000000000"));

    let hcpe_cfg = daemons::write_config(dir.path(), "hcpe.yaml", &daemons::example_hcpe_yaml().unwrap()).unwrap();
    let mut hcpe = start_hcpe_unprivileged(&tb.cpe, dir.path(), &hcpe_cfg);
    let (uid, cap_eff, _) = credentials(hcpe.pid());
    assert!(uid.split_whitespace().all(|u| u == HCPE_UID.to_string()), "hcpe runs as {uid}");
    assert_eq!(cap_eff, "0000000000003000", "hcpe's effective capabilities: CAP_NET_ADMIN and CAP_NET_RAW only");
    daemons::wait_up(&hcpe, 2, Duration::from_secs(5)).unwrap();

    // A download through hcpe and the unprivileged hag, running across the reload.
    const SIZE: u64 = 24 << 20;
    let download = LanDownload::start(&tb, dst, SIZE, Duration::from_secs(10)).unwrap();
    download.wait_for(2 << 20, Duration::from_secs(10), "the download before the reload", &hcpe);

    // cpe-2 is unknown: refused.
    let (reply, _) = second_cpe(&tb.cpe, echo);
    assert!(reply.error().is_some(), "an unknown CPE must be refused: {reply:?}");

    // The operator adds cpe-2's key and reloads (what `systemctl reload hag` sends).
    secret(&config.parent().unwrap().join("hag-keys/cpe-2.key"), &hex(&KEY2));
    let text = std::fs::read_to_string(&config).unwrap();
    let added = text.replace(
        "    key_file: hag-keys/example-cpe.key\n",
        "    key_file: hag-keys/example-cpe.key\n  cpe-2:\n    key_file: hag-keys/cpe-2.key\n",
    );
    assert_ne!(added, text, "the example's clients section changed shape");
    std::fs::write(&config, added).unwrap();
    let at_reload = download.bytes();
    hag.signal(libc::SIGHUP);
    assert!(hag.wait_for_log("config reloaded", Duration::from_secs(5)), "no reload:\n{}", hag.log());
    assert_eq!(
        (next_state().trim().to_owned(), next_state().trim().to_owned()),
        ("RELOADING=1".into(), "READY=1".into())
    );
    let log = hag.log();
    let reloaded = log.lines().find(|l| l.contains("config reloaded")).unwrap();
    assert!(reloaded.contains(r#"applied=["clients"]"#), "{reloaded}");
    assert!(reloaded.contains("restart_required=[]"), "{reloaded}");

    let (reply, echoed) = second_cpe(&tb.cpe, echo);
    assert!(reply.error().is_none(), "cpe-2 refused after the reload: {reply:?}\n{}", hag.log());
    assert!(echoed, "cpe-2's relay did not echo");

    // hcpe answers SIGHUP the same way (what its unit's and procd's reload send).
    let text = std::fs::read_to_string(&hcpe_cfg).unwrap();
    std::fs::write(&hcpe_cfg, text.replace("    min: 4\n", "    min: 2\n")).unwrap();
    hcpe.signal(libc::SIGHUP);
    assert!(hcpe.wait_for_log("config reloaded", Duration::from_secs(5)), "no reload:\n{}", hcpe.log());
    let log = hcpe.log();
    let reloaded = log.lines().find(|l| l.contains("config reloaded")).unwrap();
    assert!(reloaded.contains(r#"applied=["hag.pool"]"#), "{reloaded}");

    let hcpe_log = hcpe.log();
    // Nothing it needed was denied (the start-up system check judges the host: left out).
    let complaints: Vec<&str> = hcpe_log
        .lines()
        .filter(|l| (l.contains(" WARN ") || l.contains(" ERROR ")) && !l.contains("common::syscheck"))
        .collect();
    assert!(complaints.is_empty(), "hcpe without root complained: {complaints:#?}");

    let transfer = download.join().unwrap_or_else(|e| panic!("download across the reload: {e}\n{}", hag.log()));
    assert_eq!(transfer.bytes, SIZE);
    assert!(transfer.bytes > at_reload, "the download went on after the reload");
    assert!(hag.try_wait().is_none(), "hag restarted or died:\n{}", hag.log());
    eprintln!("reload at {at_reload} of {SIZE} bytes; download intact at {:.1} Mbit/s", transfer.mbit_per_s());
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
