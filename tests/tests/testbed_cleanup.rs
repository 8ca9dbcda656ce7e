//! A test that panics midway, or whose process gets SIGTERM or SIGKILL, leaves no namespace,
//! veth or process behind. The failing test runs in a child process: this test binary re-run
//! with `--ignored --exact child_helper` and an environment variable naming the mode.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use tests::{Server, Testbed, TestbedConfig};

const MODE: &str = "TB_CLEANUP_MODE";
const MARK: &str = "TB_CLEANUP_MARK";

/// Runs only as the child of the tests below: builds a testbed with a child process and a
/// server thread, reports what it made, then fails the way the parent asked.
#[test]
#[ignore = "helper: run in a child process by the cleanup tests"]
fn child_helper() {
    let mode = std::env::var(MODE).expect("run by the cleanup tests");
    let mark = std::env::var(MARK).expect("marker");
    let tb = Testbed::new(TestbedConfig::default()).unwrap();
    let _srv = Server::start(&tb.inet, 0).unwrap();
    let sleeper = tb.hag.spawn("sleep", &[mark.as_str()]).unwrap();
    println!("READY {} {}", sleeper.pid(), tb.namespace_names().join(" "));
    match mode.as_str() {
        "panic" => {
            std::thread::sleep(Duration::from_millis(100));
            panic!("deliberate panic midway through a test");
        }
        _ => std::thread::sleep(Duration::from_secs(60)), // the parent signals us
    }
}

struct Leftovers {
    namespaces: Vec<String>,
    processes: Vec<String>,
    root_links: Vec<String>,
}

fn leftovers(child_pid: u32, mark: &str, names: &[String]) -> Leftovers {
    let list = String::from_utf8(Command::new("ip").args(["netns", "list"]).output().unwrap().stdout).unwrap();
    let prefix = format!("tb-{child_pid}-");
    let namespaces = list
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(&prefix) || names.iter().any(|m| m == n))
        .map(String::from)
        .collect();
    let mut processes = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(cmd) = std::fs::read(e.path().join("cmdline")) {
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            if cmd.contains(mark) {
                processes.push(format!("{}: {cmd}", e.file_name().to_string_lossy()));
            }
        }
    }
    // Our veths never live in the root namespace; a leaked peer would show its netns there.
    let links = String::from_utf8(Command::new("ip").args(["-o", "link"]).output().unwrap().stdout).unwrap();
    let root_links = links.lines().filter(|l| l.contains(&prefix)).map(String::from).collect();
    Leftovers { namespaces, processes, root_links }
}

fn run_child(mode: &str, signal: Option<i32>) {
    let mark = format!("3600.{}{}", std::process::id(), mode.len()); // unique `sleep` argument
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--ignored", "--exact", "child_helper", "--nocapture", "--test-threads=1"])
        .env(MODE, mode)
        .env(MARK, &mark)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let child_pid = child.id();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let ready = loop {
        match lines.next() {
            // The harness prints "test child_helper ... " before our line, without a newline.
            Some(Ok(l)) if l.contains("READY ") => break l[l.find("READY ").expect("found")..].to_string(),
            Some(_) => continue,
            None => panic!("child exited before building its testbed"),
        }
    };
    let mut parts = ready.split_whitespace().skip(1);
    let sleeper: i32 = parts.next().unwrap().parse().unwrap();
    let names: Vec<String> = parts.map(String::from).collect();
    assert_eq!(names.len(), 6);
    assert!(std::path::Path::new(&format!("/proc/{sleeper}")).exists());
    if let Some(sig) = signal {
        // SAFETY: signalling the child process we spawned, by pid.
        unsafe { libc::kill(child_pid as i32, sig) };
    }
    let t0 = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if t0.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            panic!("child did not exit");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    drop(lines);
    if signal == Some(libc::SIGKILL) {
        // Nothing runs in a SIGKILLed process: children die by PDEATHSIG, and the next
        // testbed user removes the namespaces of dead test processes.
        let t = Instant::now();
        while std::path::Path::new(&format!("/proc/{sleeper}/cmdline")).exists() && t.elapsed() < Duration::from_secs(5)
        {
            std::thread::sleep(Duration::from_millis(20));
        }
        let removed = tests::netns::remove_stale_namespaces();
        println!("SIGKILL: stale namespaces removed afterwards: {}", removed.len());
    }
    let left = leftovers(child_pid, &mark, &names);
    println!(
        "{mode}: child {child_pid} exited ({status}) after {:?}; namespaces left {:?}, processes left {:?}, root links {:?}",
        t0.elapsed(),
        left.namespaces,
        left.processes,
        left.root_links
    );
    assert!(!status.success(), "the child test must have failed");
    assert!(left.namespaces.is_empty(), "namespaces left behind: {:?}", left.namespaces);
    assert!(left.processes.is_empty(), "processes left behind: {:?}", left.processes);
    assert!(left.root_links.is_empty(), "links left behind: {:?}", left.root_links);
}

#[test]
fn panic_midway_leaves_nothing_behind() {
    run_child("panic", None);
}

#[test]
fn sigterm_leaves_nothing_behind() {
    run_child("sigterm", Some(libc::SIGTERM));
}

#[test]
fn sigint_leaves_nothing_behind() {
    run_child("sigint!", Some(libc::SIGINT));
}

#[test]
fn sigkill_leaves_no_process_and_stale_namespaces_are_removed() {
    run_child("sigkill--", Some(libc::SIGKILL));
}
