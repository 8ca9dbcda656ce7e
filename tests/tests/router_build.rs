//! The router build, as `docs/install.md` gives it: hcpe built with the `router` profile (size over speed,
//! fat LTO, one codegen unit, abort on panic, stripped) must fit in 4 MiB; and the same build linked
//! statically must run `--version` and `--check-config` in an empty root (a chroot holding only the binary,
//! its config and key files: no libc, no /proc, no /dev), which is what a musl userland such as OpenWrt
//! x86/64 offers a binary that brings everything itself. Only the x86_64 glibc target is installed here, so
//! the static build links glibc statically (about 0.8 MB more than the dynamic one; a musl build for a
//! router is the dynamic size plus musl's ~0.1 MB).
//!
//! The builds go to `target/static` so they neither wait for nor disturb the build the suite runs in.

use std::path::{Path, PathBuf};
use std::process::Command;

/// What hcpe may weigh on a router's flash.
const HCPE_MAX_BYTES: u64 = 4 << 20;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Builds hcpe with the router profile, linked statically or not; returns the binary.
fn router_build(statically: bool) -> PathBuf {
    let target_dir = workspace().join("target/static");
    let mut cmd = Command::new("cargo");
    cmd.current_dir(workspace())
        .args(["build", "--profile", "router", "-p", "hcpe"])
        .env("CARGO_TARGET_DIR", &target_dir);
    if statically {
        // An explicit target keeps the flag off build scripts and proc macros, which must stay dynamic.
        cmd.args(["--target", "x86_64-unknown-linux-gnu"])
            .env("CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUSTFLAGS", "-C target-feature=+crt-static");
    }
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "router build failed:\n{}", String::from_utf8_lossy(&out.stderr));
    let dir = if statically { target_dir.join("x86_64-unknown-linux-gnu/router") } else { target_dir.join("router") };
    dir.join("hcpe")
}

/// A chroot with only `/<bin>`, `/<bin>.yaml` and the key files that config names; runs `/<bin> args`.
fn run_in_empty_root(binary: &Path, name: &str, args: &[&str]) -> (bool, String) {
    let root = tempfile::Builder::new().prefix("empty-root-").tempdir().unwrap();
    std::fs::copy(binary, root.path().join(name)).unwrap();
    let examples = workspace().join("deploy/examples");
    std::fs::copy(examples.join(format!("{name}.yaml")), root.path().join(format!("{name}.yaml"))).unwrap();
    std::fs::create_dir(root.path().join("hag-keys")).unwrap();
    for f in ["example-cpe.key", "admin.token"] {
        std::fs::copy(examples.join("hag-keys").join(f), root.path().join("hag-keys").join(f)).unwrap();
    }
    let listing: Vec<String> = walk(root.path());
    let out = Command::new("chroot").arg(root.path()).arg(format!("/{name}")).args(args).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    eprintln!("chroot {listing:?}: /{name} {}\n{text}", args.join(" "));
    (out.status.success(), text)
}

fn walk(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        out.push(e.file_name().to_string_lossy().into_owned());
        if e.path().is_dir() {
            out.extend(walk(&e.path()).into_iter().map(|n| format!("{}/{n}", e.file_name().to_string_lossy())));
        }
    }
    out.sort();
    out
}

#[test]
fn router_build_fits_and_runs_static_in_an_empty_root() {
    if unsafe { libc::geteuid() } != 0 {
        assert!(std::env::var_os("CI").is_none(), "CI runs as root");
        eprintln!("skipped: chroot needs root");
        return;
    }
    let mib = |bytes: u64| bytes as f64 / (1 << 20) as f64;
    let router = router_build(false);
    let size = std::fs::metadata(&router).unwrap().len();
    eprintln!("hcpe, router profile: {size} bytes ({:.2} MiB)", mib(size));
    assert!(size <= HCPE_MAX_BYTES, "hcpe is {size} bytes, over {HCPE_MAX_BYTES}");

    let binary = router_build(true);
    let size = std::fs::metadata(&binary).unwrap().len();
    eprintln!("hcpe, router profile, static: {size} bytes ({:.2} MiB)", mib(size));
    let ldd = Command::new("ldd").arg(&binary).output().unwrap();
    let ldd = format!("{}{}", String::from_utf8_lossy(&ldd.stdout), String::from_utf8_lossy(&ldd.stderr));
    assert!(ldd.contains("statically linked") || ldd.contains("not a dynamic executable"), "{ldd}");
    let (ok, text) = run_in_empty_root(&binary, "hcpe", &["--version"]);
    assert!(ok && text.starts_with("hcpe "), "hcpe --version in an empty root: {text}");
    let (ok, text) = run_in_empty_root(&binary, "hcpe", &["--config", "/hcpe.yaml", "--check-config"]);
    assert!(ok && text.contains("is valid"), "hcpe --check-config in an empty root: {text}");
}
