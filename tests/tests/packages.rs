//! The Debian packages as an operator gets them: built with cargo-deb from the release binaries, installed
//! on this machine with `dpkg -i`, checked (the config as installed, the secrets the postinst made, the units
//! through `systemd-analyze verify` and `security`), then purged, leaving nothing under `/etc`, `/usr` and
//! `/var/lib`.
//!
//! It changes the machine (a package, a system user, files under /etc), so it runs only where that is
//! expected: as root, with cargo-deb installed (`.ci/run` installs it), and never over an installation of
//! hag or hcpe that it did not make. Without cargo-deb it is skipped on a developer machine and fails in CI.

use std::collections::BTreeSet;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const PACKAGES: [&str; 2] = ["hag", "hcpe"];

fn run(cmd: &str, args: &[&str]) -> Output {
    let out = Command::new(cmd).args(args).output().unwrap_or_else(|e| panic!("cannot run {cmd}: {e}"));
    eprintln!(
        "$ {cmd} {}\n{}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn run_ok(cmd: &str, args: &[&str]) -> String {
    let out = run(cmd, args);
    assert!(out.status.success(), "{cmd} {} failed: {:?}", args.join(" "), out.status);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn have(cmd: &str, arg: &str) -> bool {
    Command::new(cmd).arg(arg).output().is_ok_and(|o| o.status.success())
}

fn installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("installed"))
}

/// Every path under the trees a package may touch.
fn snapshot() -> BTreeSet<PathBuf> {
    fn walk(dir: &Path, out: &mut BTreeSet<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else { return };
        for e in entries.flatten() {
            let path = e.path();
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                walk(&path, out);
            }
            out.insert(path);
        }
    }
    let mut out = BTreeSet::new();
    for root in ["/etc", "/usr", "/var/lib"] {
        walk(Path::new(root), &mut out);
    }
    out
}

/// Purges both packages when dropped, so a failed check does not leave them installed.
struct Purge;
impl Drop for Purge {
    fn drop(&mut self) {
        let _ = Command::new("dpkg").args(["--purge", PACKAGES[0], PACKAGES[1]]).output();
    }
}

/// `systemd-analyze security`'s overall exposure for a unit file (0 safest, 10 exposed).
fn exposure(unit: &str) -> f64 {
    let text = run_ok("systemd-analyze", &["security", "--offline=true", "--no-pager", unit]);
    let line = text.lines().find(|l| l.contains("Overall exposure level")).expect("an overall exposure line");
    let value = line.split(": ").nth(1).and_then(|rest| rest.split_whitespace().next()).expect("a score");
    value.parse().unwrap()
}

#[test]
fn debian_packages_install_verify_and_purge_clean() {
    let ci = std::env::var_os("CI").is_some();
    let missing: Vec<&str> = [("cargo-deb", "--version"), ("dpkg", "--version"), ("systemd-analyze", "--version")]
        .into_iter()
        .filter(|(cmd, arg)| !have(cmd, arg))
        .map(|(cmd, _)| cmd)
        .collect();
    if !missing.is_empty() || unsafe { libc::geteuid() } != 0 {
        assert!(!ci, "CI must run this test as root with {missing:?} installed (.ci/run installs cargo-deb)");
        eprintln!("skipped: needs root and {missing:?}");
        return;
    }
    for p in PACKAGES {
        assert!(!installed(p), "{p} is installed on this machine already: this test will not touch it");
    }
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = tempfile::tempdir().unwrap();
    let mut debs = Vec::new();
    for p in PACKAGES {
        // The binaries the README's build command made, stripped into the package.
        let printed = Command::new("cargo")
            .current_dir(&workspace)
            .args(["deb", "-p", p, "--no-build", "--strip", "-o"])
            .arg(out.path())
            .output()
            .unwrap();
        assert!(printed.status.success(), "cargo deb -p {p}: {}", String::from_utf8_lossy(&printed.stderr));
        let deb = String::from_utf8_lossy(&printed.stdout).trim().lines().last().unwrap().to_owned();
        let size = std::fs::metadata(&deb).unwrap().len();
        eprintln!("{deb}: {size} bytes");
        debs.push(deb);
    }

    let before = snapshot();
    let _purge = Purge;
    run_ok("dpkg", &["-i", &debs[0], &debs[1]]);

    for p in PACKAGES {
        let config = format!("/etc/{p}/{p}.yaml");
        // The config as installed is valid (its key and token files exist: the postinst made them).
        let checked = run_ok(&format!("/usr/bin/{p}"), &["--config", &config, "--check-config"]);
        assert!(checked.contains("is valid"), "{checked}");
        assert!(run_ok(&format!("/usr/bin/{p}"), &["--version"]).starts_with(p));
        let conffiles = run_ok("dpkg-query", &["-W", "-f=${Conffiles}", p]);
        assert!(conffiles.contains(&config), "{config} is not a conffile: {conffiles}");
        assert!(conffiles.contains(&format!("/etc/sysctl.d/60-{p}.conf")), "{conffiles}");
        let uid = run_ok("id", &["-u", p]).trim().parse::<u32>().unwrap();
        for secret in ["example-cpe.key", "admin.token"] {
            let path = format!("/etc/{p}/hag-keys/{secret}");
            let meta = std::fs::metadata(&path).unwrap();
            assert_eq!(meta.permissions().mode() & 0o777, 0o600, "{path}");
            assert_eq!(meta.uid(), uid, "{path} belongs to the daemon's user");
            assert_eq!(meta.len(), 64, "{path}: 32 random bytes in hex");
        }
        // The example key shipped in the repository is public: the installed one is not it.
        let shipped = std::fs::read_to_string(workspace.join("deploy/examples/hag-keys/example-cpe.key")).unwrap();
        let made = std::fs::read_to_string(format!("/etc/{p}/hag-keys/example-cpe.key")).unwrap();
        assert_ne!(shipped.trim(), made.trim());
    }
    let units: Vec<String> = PACKAGES.iter().map(|p| format!("/usr/lib/systemd/system/{p}.service")).collect();
    let verify = run("systemd-analyze", &["verify", &units[0], &units[1]]);
    assert!(verify.status.success(), "systemd-analyze verify: {}", String::from_utf8_lossy(&verify.stderr));
    let (hag, hcpe) = (exposure(&units[0]), exposure(&units[1]));
    eprintln!("systemd-analyze security: hag {hag}, hcpe {hcpe}");
    assert!(hag <= 2.0, "hag's unit exposure {hag} is above 2.0");
    assert!(hcpe <= 3.0, "hcpe's unit exposure {hcpe} is above 3.0");

    run_ok("dpkg", &["--purge", "hcpe", "hag"]);
    let after = snapshot();
    let left: Vec<&PathBuf> = after.difference(&before).collect();
    assert!(left.is_empty(), "left behind after the purge: {left:?}");
    for p in PACKAGES {
        assert!(!installed(p));
        assert!(!run("getent", &["passwd", p]).status.success(), "user {p} left behind");
    }
}
