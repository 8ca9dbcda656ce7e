//! The README's demo command works: `demo --quick` (the same steps as the
//! full demo with small transfers, including the DSL cut) exits 0, prints the aggregation line and
//! the SHA-256 verification of the download that crossed the cut, and leaves no namespace behind.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn readme_demo_quick_runs_clean() {
    let demo = tests::bin_path("demo");
    let out_path = std::env::temp_dir().join(format!("demo-smoke-{}.out", std::process::id()));
    let out = std::fs::File::create(&out_path).unwrap();
    let mut child = Command::new(&demo)
        .arg("--quick")
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break Some(s);
        }
        if Instant::now() > deadline {
            // SIGINT: the demo's own cleanup path (children killed, namespaces deleted).
            // SAFETY: signalling our own child by pid.
            unsafe { libc::kill(pid as i32, libc::SIGINT) };
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let text = std::fs::read_to_string(&out_path).unwrap_or_default();
    let _ = std::fs::remove_file(&out_path);
    println!("{text}");
    assert!(status.is_some(), "demo --quick did not finish within 120 s");
    assert!(status.unwrap().success(), "demo --quick failed: {status:?}");
    assert!(text.contains("x the best single link"), "no aggregation line");
    assert!(text.contains("DSL cut at"), "no DSL cut");
    assert!(text.contains("SHA-256 ok: "), "no verified download across the cut");
    assert!(text.contains("client saw no reset"), "no failover summary");
    assert!(text.contains("nothing left behind"), "no clean teardown");

    let listed = Command::new("ip").args(["netns", "list"]).output().unwrap();
    let ours = format!("tb-{pid}-");
    let left: Vec<_> =
        String::from_utf8_lossy(&listed.stdout).lines().filter(|l| l.starts_with(&ours)).map(str::to_owned).collect();
    assert!(left.is_empty(), "demo left namespaces: {left:?}");
}
