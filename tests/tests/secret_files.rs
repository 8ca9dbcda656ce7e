//! Key and token files on disk, as the shipped binaries treat them: one that other users can read stops the
//! daemon at start with a message naming the file and the fix; `secret_files: warn` turns that into a
//! warning; the public example key of `deploy/examples/` is accepted with a warning whatever its mode.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use tests::netns::{Netns, bin_path};

const KEY: &str = "5f3c0d8a9b1e2f4a6c7d8e9f0a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d";

fn write(path: &Path, text: &str, mode: u32) {
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// `bin --config config --check-config`: exit code and stderr.
fn check_config(bin: &str, config: &Path) -> (i32, String) {
    let out =
        Command::new(bin_path(bin)).args(["--config", config.to_str().unwrap(), "--check-config"]).output().unwrap();
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn a_world_readable_key_stops_hag_at_start_naming_the_file_and_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("cpe.key");
    write(&key, KEY, 0o644);
    let config = dir.path().join("hag.yaml");
    std::fs::write(&config, "listen: ['198.18.1.1']\nclients: {cpe-1: {key_file: cpe.key}}\n").unwrap();

    // Started for real (in a namespace of its own), it stops before binding anything.
    let ns = Netns::new("secret").unwrap();
    let mut hag = ns.spawn(bin_path("hag"), &["--config", config.to_str().unwrap()]).unwrap();
    let status = hag.wait_timeout(Duration::from_secs(10)).expect("hag must refuse to start");
    let log = hag.log();
    assert_eq!(status.code(), Some(64), "{log}");
    assert!(log.contains("clients.cpe-1.key_file"), "{log}");
    assert!(log.contains("readable by every user (mode 0644)"), "{log}");
    assert!(log.contains(&format!("chmod 600 {}", key.display())), "{log}");
    assert!(!log.contains(KEY), "the key must not be printed: {log}");

    // Group-readable is refused too; owner-only passes.
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o640)).unwrap();
    let (code, err) = check_config("hag", &config);
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("readable by its group"), "{err}");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    assert_eq!(check_config("hag", &config).0, 0);

    // `secret_files: warn`: accepted, with the same words as a warning.
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let warn = dir.path().join("hag-warn.yaml");
    std::fs::write(&warn, "listen: ['198.18.1.1']\nclients: {cpe-1: {key_file: cpe.key}}\nsecret_files: warn\n")
        .unwrap();
    let (code, err) = check_config("hag", &warn);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("warning: clients.cpe-1.key_file") && err.contains("chmod 600"), "{err}");
}

#[test]
fn hcpe_refuses_a_readable_key_and_token_and_accepts_the_public_example_with_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples");
    let yaml = std::fs::read_to_string(examples.join("hcpe.yaml")).unwrap();
    std::fs::create_dir(dir.path().join("hag-keys")).unwrap();
    let config = dir.path().join("hcpe.yaml");
    std::fs::write(&config, &yaml).unwrap();

    // The shipped example key and token, world-readable as a checkout leaves them: accepted, loudly.
    for f in ["example-cpe.key", "admin.token"] {
        let text = std::fs::read_to_string(examples.join("hag-keys").join(f)).unwrap();
        write(&dir.path().join("hag-keys").join(f), &text, 0o644);
    }
    let (code, err) = check_config("hcpe", &config);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("holds the public example key"), "{err}");
    assert!(err.contains("holds the public example admin token"), "{err}");

    // A real key, world-readable: refused.
    write(&dir.path().join("hag-keys/example-cpe.key"), KEY, 0o644);
    let (code, err) = check_config("hcpe", &config);
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("hag.key_file") && err.contains("chmod 600"), "{err}");
    // A real token, group-readable: refused as well.
    std::fs::set_permissions(dir.path().join("hag-keys/example-cpe.key"), std::fs::Permissions::from_mode(0o600))
        .unwrap();
    write(&dir.path().join("hag-keys/admin.token"), "0123456789abcdef0123456789abcdef", 0o640);
    let (code, err) = check_config("hcpe", &config);
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("admin.token_file") && err.contains("readable by its group"), "{err}");
}
