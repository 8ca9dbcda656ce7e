//! The fuzz targets (`fuzz/`: Convert, Auth and Time TLVs, probe datagrams and hag's responder, hcpe's NAT,
//! admin API bodies), each run for a short while from its seeds by `fuzz/run.sh`: a crash, panic, failed
//! assertion, 10 s input or RSS over 2 GiB fails the test. `FUZZ_SECS` sets the time per target (default
//! 20); longer runs and their results: `fuzz/README.md`, `BENCHMARKS.md`.

use std::path::Path;
use std::process::Command;

#[test]
fn every_fuzz_target_runs_from_its_seeds_without_a_crash() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let secs = std::env::var("FUZZ_SECS").unwrap_or_else(|_| "20".to_owned());
    let out = Command::new("bash").arg(root.join("fuzz/run.sh")).arg(&secs).output().expect("run fuzz/run.sh");
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{stdout}");
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    for target in ["decode", "auth", "probe", "nat", "admin_json"] {
        assert!(stdout.contains(&format!("fuzz {target}: ")), "{target} did not run:\n{stdout}");
    }
}
