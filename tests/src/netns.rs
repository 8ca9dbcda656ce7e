//! Network namespaces and child processes for tests, with guaranteed cleanup.
//!
//! Owns: creation and removal of uniquely named network namespaces (`tb-<pid>-<counter>-<role>`),
//! veth pairs between them, addresses/routes/sysctls inside them, child processes started in them,
//! and threads of the test process that temporarily enter them.
//!
//! Invariants:
//! - Nothing here touches the root namespace: every `ip` call is `ip -n <ours>`, every child runs
//!   under `ip netns exec <ours>`, every thread that enters a namespace exits afterwards.
//! - Every namespace and child is in a process-wide registry from creation to removal. Removal
//!   happens on `Drop` (so also on panic unwinding) and, for SIGINT/SIGTERM of the test process,
//!   in a signal watcher thread that kills the children, deletes the namespaces and exits.
//! - Children get `PR_SET_PDEATHSIG(SIGKILL)` from a long-lived spawner thread, so even a
//!   SIGKILLed test process leaves no child behind; namespaces of dead test processes are
//!   removed by the next [`Netns::new`] (`tb-<pid>-...` with a dead pid).
//! - Deleting a namespace removes its veths (and their peers). A namespace stays alive in the
//!   kernel while a socket or thread is still in it, so callers stop emulators and servers
//!   running inside a namespace before it is dropped ([`crate::Testbed`] does that in order).
//!
//! ```no_run
//! use tests::netns::Netns;
//! let a = Netns::new("a").unwrap();
//! let b = Netns::new("b").unwrap();
//! Netns::veth(&a, "eth0", &b, "eth0").unwrap();
//! a.addr("eth0", "198.18.9.1/24").unwrap();
//! b.addr("eth0", "198.18.9.2/24").unwrap();
//! let out = a.exec("ip", &["addr"]).unwrap(); // any command, run inside `a`
//! assert!(out.status.success());
//! let server = b.spawn("sleep", &["60"]).unwrap(); // killed and its log kept on drop
//! println!("{}", server.log());
//! // a thread of this process inside `b` (sockets made there stay in `b`):
//! let n = b.within(|| std::net::TcpListener::bind("198.18.9.2:0").is_ok()).unwrap();
//! assert!(n);
//! ```

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::fs::File;
use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Mutex, Once, OnceLock};
use std::time::{Duration, Instant};

/// Errors of namespace and process handling.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A command could not be started at all (missing binary, fork failure).
    #[error("cannot run {cmd}: {source}")]
    Spawn {
        /// The command line.
        cmd: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// A command ran but exited unsuccessfully.
    #[error("`{cmd}` failed ({status}): {stderr}")]
    Failed {
        /// The command line.
        cmd: String,
        /// Exit status text.
        status: String,
        /// Its standard error output.
        stderr: String,
    },
    /// Entering a namespace (open or setns) failed.
    #[error("cannot enter namespace {ns}: {source}")]
    Enter {
        /// Namespace name.
        ns: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// A sysctl could not be written.
    #[error("sysctl {key}={value} in {ns}: {source}")]
    Sysctl {
        /// Namespace name.
        ns: String,
        /// Dotted key.
        key: String,
        /// Value written.
        value: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// A closure run inside a namespace panicked.
    #[error("thread inside namespace {0} panicked")]
    ThreadPanicked(String),
    /// A log file could not be created.
    #[error("log file {path}: {source}")]
    Log {
        /// The path.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}

/// Result alias for this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

// ---------------------------------------------------------------------------------------------
// Global registry + signal handling
// ---------------------------------------------------------------------------------------------

#[derive(Default)]
struct Registry {
    namespaces: BTreeSet<String>,
    children: BTreeSet<i32>,
}

fn registry() -> &'static Mutex<Registry> {
    static REG: OnceLock<Mutex<Registry>> = OnceLock::new();
    REG.get_or_init(Default::default)
}

fn lock_registry() -> std::sync::MutexGuard<'static, Registry> {
    registry().lock().unwrap_or_else(|e| e.into_inner())
}

static SIGNAL_PIPE_WR: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(-1);

extern "C" fn on_signal(sig: libc::c_int) {
    // Async-signal-safe: only write(2) the signal number into the self-pipe.
    let fd = SIGNAL_PIPE_WR.load(Ordering::Relaxed);
    if fd >= 0 {
        let b = sig as u8;
        // SAFETY: writing one byte from a valid stack location to a pipe fd.
        unsafe {
            libc::write(fd, (&b as *const u8).cast(), 1);
        }
    }
}

/// Installs the SIGINT/SIGTERM handler once per process. Hand-written (self-pipe + watcher
/// thread) because the workspace has no signal crate and the cleanup needs to run `ip`.
fn install_signal_handler() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let mut fds = [0i32; 2];
        // SAFETY: fds is a valid 2-element array.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            return;
        }
        SIGNAL_PIPE_WR.store(fds[1], Ordering::Relaxed);
        let rd = fds[0];
        std::thread::Builder::new()
            .name("netns-signal-watcher".into())
            .spawn(move || {
                let mut b = 0u8;
                loop {
                    // SAFETY: reading one byte into a valid location.
                    let n = unsafe { libc::read(rd, (&mut b as *mut u8).cast(), 1) };
                    if n == 1 {
                        break;
                    }
                    if n < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                        continue;
                    }
                    return;
                }
                eprintln!("netns: signal {b} received, removing namespaces and children");
                cleanup_all();
                // SAFETY: terminating the process.
                unsafe { libc::_exit(128 + b as i32) };
            })
            .expect("spawn signal watcher");
        for sig in [libc::SIGINT, libc::SIGTERM] {
            // SAFETY: installing a plain handler that only calls write(2).
            unsafe {
                let mut sa: libc::sigaction = std::mem::zeroed();
                sa.sa_sigaction = on_signal as *const () as usize;
                sa.sa_flags = libc::SA_RESTART;
                libc::sigemptyset(&mut sa.sa_mask);
                libc::sigaction(sig, &sa, std::ptr::null_mut());
            }
        }
    });
}

/// Kills every registered child and deletes every registered namespace of this process.
/// Called by the signal watcher; safe to call any time (tests of the cleanup path use it).
pub fn cleanup_all() {
    let (children, namespaces) = {
        let mut reg = lock_registry();
        (std::mem::take(&mut reg.children), std::mem::take(&mut reg.namespaces))
    };
    for pid in &children {
        // SAFETY: signalling a pid we spawned and registered.
        unsafe { libc::kill(*pid, libc::SIGTERM) };
    }
    let deadline = Instant::now() + Duration::from_secs(2);
    for pid in &children {
        while Instant::now() < deadline && pid_alive(*pid) {
            std::thread::sleep(Duration::from_millis(10));
        }
        // SAFETY: as above.
        unsafe { libc::kill(*pid, libc::SIGKILL) };
    }
    for ns in &namespaces {
        let _ = Command::new("ip").args(["netns", "del", ns]).stderr(Stdio::null()).status();
    }
}

fn pid_alive(pid: i32) -> bool {
    // A zombie still "exists" for kill(0); read its state to treat zombies as dead.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => !s.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

/// Removes `tb-<pid>-...` namespaces whose creating process is gone (left by a SIGKILLed run);
/// returns their names. [`Netns::new`] calls it once per process.
pub fn remove_stale_namespaces() -> Vec<String> {
    let mut removed = Vec::new();
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else { return removed };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        let Some(rest) = name.strip_prefix("tb-") else { continue };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<i32>().ok()) else { continue };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = Command::new("ip").args(["netns", "del", name]).stderr(Stdio::null()).status();
            removed.push(name.to_string());
        }
    }
    removed
}

// ---------------------------------------------------------------------------------------------
// Spawner thread: children get PDEATHSIG tied to a thread that lives as long as the process.
// ---------------------------------------------------------------------------------------------

type SpawnJob = (Command, mpsc::Sender<std::io::Result<Child>>);

fn spawn_via_spawner(cmd: Command) -> std::io::Result<Child> {
    static TX: OnceLock<Mutex<mpsc::Sender<SpawnJob>>> = OnceLock::new();
    let tx = TX.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnJob>();
        std::thread::Builder::new()
            .name("netns-spawner".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    let _ = reply.send(cmd.spawn());
                }
            })
            .expect("spawn spawner thread");
        Mutex::new(tx)
    });
    let (rtx, rrx) = mpsc::channel();
    tx.lock().unwrap_or_else(|e| e.into_inner()).send((cmd, rtx)).map_err(std::io::Error::other)?;
    rrx.recv().map_err(std::io::Error::other)?
}

// ---------------------------------------------------------------------------------------------
// Netns
// ---------------------------------------------------------------------------------------------

fn cmd_line(cmd: &str, args: &[&str]) -> String {
    std::iter::once(cmd).chain(args.iter().copied()).collect::<Vec<_>>().join(" ")
}

fn check(cmd: String, out: Output) -> Result<String> {
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(Error::Failed {
            cmd,
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

/// A network namespace owned by this test process; deleted on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates `tb-<pid>-<counter>-<role>` with `lo` up. `role` should be short (e.g. "cpe").
    pub fn new(role: &str) -> Result<Netns> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        install_signal_handler();
        static STALE: Once = Once::new();
        STALE.call_once(|| {
            remove_stale_namespaces();
        });
        let name = format!("tb-{}-{}-{}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed), role);
        // Register before creating so a signal arriving in between still removes it.
        lock_registry().namespaces.insert(name.clone());
        let ns = Netns { name };
        let out = Command::new("ip")
            .args(["netns", "add", &ns.name])
            .output()
            .map_err(|source| Error::Spawn { cmd: "ip netns add".into(), source })?;
        check(format!("ip netns add {}", ns.name), out)?;
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// The namespace's name (for `ip netns exec`, `ip -n`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs `cmd args` inside the namespace (`ip netns exec`), waiting for it; any exit status.
    pub fn exec<S: AsRef<OsStr>>(&self, cmd: &str, args: &[S]) -> Result<Output> {
        Command::new("ip")
            .args(["netns", "exec", &self.name, cmd])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(|source| Error::Spawn { cmd: cmd.to_string(), source })
    }

    /// Like [`exec`](Self::exec) but fails on a non-zero exit; returns stdout.
    pub fn exec_ok(&self, cmd: &str, args: &[&str]) -> Result<String> {
        let out = self.exec(cmd, args)?;
        check(format!("[{}] {}", self.name, cmd_line(cmd, args)), out)
    }

    /// Runs `ip -n <ns> args...`, failing on a non-zero exit; returns stdout.
    pub fn ip(&self, args: &[&str]) -> Result<String> {
        let out = Command::new("ip")
            .args(["-n", &self.name])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(|source| Error::Spawn { cmd: "ip".into(), source })?;
        check(format!("ip -n {} {}", self.name, args.join(" ")), out)
    }

    /// Starts `cmd args` inside the namespace in the background. Its stdout and stderr go to a
    /// log file; the returned guard kills it (SIGTERM, then SIGKILL after 5 s) on drop and
    /// prints the log if the dropping thread is panicking.
    /// `cmd` may be a `&str` or a path (e.g. [`bin_path`]`("hag")`).
    pub fn spawn<C: AsRef<OsStr>, S: AsRef<OsStr>>(&self, cmd: C, args: &[S]) -> Result<ChildGuard> {
        self.spawn_env(cmd, args, &[])
    }

    /// [`spawn`](Self::spawn) with extra environment variables.
    pub fn spawn_env<C: AsRef<OsStr>, S: AsRef<OsStr>>(
        &self,
        cmd: C,
        args: &[S],
        env: &[(&str, &str)],
    ) -> Result<ChildGuard> {
        static N: AtomicU64 = AtomicU64::new(0);
        let cmd_os = cmd.as_ref();
        let cmd_string = cmd_os.to_string_lossy().into_owned();
        let cmd = cmd_string.as_str();
        let dir = log_dir();
        let base = Path::new(cmd).file_name().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        let path = dir.join(format!("{}-{}-{}.log", self.name, base, N.fetch_add(1, Ordering::Relaxed)));
        let log = File::create(&path).map_err(|source| Error::Log { path: path.clone(), source })?;
        let log2 = log.try_clone().map_err(|source| Error::Log { path: path.clone(), source })?;
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(cmd_os).args(args).stdin(Stdio::null()).stdout(log).stderr(log2);
        for (k, v) in env {
            c.env(k, v);
        }
        // SAFETY: prctl is async-signal-safe; runs in the forked child before exec.
        unsafe {
            c.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let argv: Vec<String> = args.iter().map(|a| a.as_ref().to_string_lossy().into_owned()).collect();
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        let desc = format!("[{}] {}", self.name, cmd_line(cmd, &argv));
        let mut reg = lock_registry();
        let child = spawn_via_spawner(c).map_err(|source| Error::Spawn { cmd: desc.clone(), source })?;
        reg.children.insert(child.id() as i32);
        drop(reg);
        Ok(ChildGuard { child: Some(child), desc, log_path: path, grace: Duration::from_secs(5) })
    }

    /// Runs `f` on a new thread that has entered this namespace; returns its result. Sockets
    /// created by `f` belong to this namespace even if used elsewhere afterwards.
    pub fn within<T: Send, F: FnOnce() -> T + Send>(&self, f: F) -> Result<T> {
        std::thread::scope(|s| {
            s.spawn(|| {
                enter(&self.name)?;
                Ok(f())
            })
            .join()
            .map_err(|_| Error::ThreadPanicked(self.name.clone()))?
        })
    }

    /// Starts a thread inside this namespace running `f` (e.g. a server loop). The thread should
    /// end before the namespace is dropped, or the namespace lives on until it does.
    pub fn thread<T: Send + 'static, F: FnOnce() -> T + Send + 'static>(
        &self,
        f: F,
    ) -> Result<std::thread::JoinHandle<T>> {
        let file = open_ns(&self.name)?;
        let name = self.name.clone();
        Ok(std::thread::Builder::new()
            .name(format!("in-{}", self.name))
            .spawn(move || {
                // SAFETY: setns on a valid namespace fd for this thread only.
                if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    panic!("setns into {name}: {}", std::io::Error::last_os_error());
                }
                drop(file);
                f()
            })
            .expect("spawn thread"))
    }

    /// Creates a veth pair `a:ifa <-> b:ifb` (created directly inside the two namespaces) and
    /// brings both ends up. Removed together with either namespace.
    pub fn veth(a: &Netns, ifa: &str, b: &Netns, ifb: &str) -> Result<()> {
        a.ip(&["link", "add", "name", ifa, "type", "veth", "peer", "name", ifb, "netns", &b.name])?;
        a.ip(&["link", "set", "dev", ifa, "up"])?;
        b.ip(&["link", "set", "dev", ifb, "up"])?;
        Ok(())
    }

    /// Adds an address (`"198.18.1.1/24"` or `"2001:2::1/64"`; IPv6 without DAD so it is usable
    /// at once).
    pub fn addr(&self, dev: &str, cidr: &str) -> Result<()> {
        if cidr.contains(':') {
            self.ip(&["-6", "addr", "add", cidr, "dev", dev, "nodad"]).map(drop)
        } else {
            self.ip(&["addr", "add", cidr, "dev", dev]).map(drop)
        }
    }

    /// Adds a route: `route(&["default", "via", "198.18.1.1"])` or with `"table", "100"`.
    /// The family is picked from the addresses in `spec`.
    pub fn route(&self, spec: &[&str]) -> Result<()> {
        let v6 = spec.iter().any(|s| s.contains(':'));
        let mut args = vec![if v6 { "-6" } else { "-4" }, "route", "add"];
        args.extend_from_slice(spec);
        self.ip(&args).map(drop)
    }

    /// Adds a policy rule: `rule(&["from", "198.18.2.2", "lookup", "100"])`.
    pub fn rule(&self, spec: &[&str]) -> Result<()> {
        let v6 = spec.iter().any(|s| s.contains(':'));
        let mut args = vec![if v6 { "-6" } else { "-4" }, "rule", "add"];
        args.extend_from_slice(spec);
        self.ip(&args).map(drop)
    }

    /// Sets a sysctl inside this namespace, e.g. `sysctl("net.ipv4.ip_forward", "1")`.
    pub fn sysctl(&self, key: &str, value: &str) -> Result<()> {
        let path = format!("/proc/sys/{}", key.replace('.', "/"));
        self.within(|| std::fs::write(&path, value))?.map_err(|source| Error::Sysctl {
            ns: self.name.clone(),
            key: key.into(),
            value: value.into(),
            source,
        })
    }

    /// Reads a sysctl inside this namespace.
    pub fn sysctl_get(&self, key: &str) -> Result<String> {
        let path = format!("/proc/sys/{}", key.replace('.', "/"));
        self.within(|| std::fs::read_to_string(&path))?.map(|s| s.trim().to_string()).map_err(|source| Error::Sysctl {
            ns: self.name.clone(),
            key: key.into(),
            value: String::new(),
            source,
        })
    }

    /// Sets a link up or down (`ip link set dev up|down`).
    pub fn link_set(&self, dev: &str, up: bool) -> Result<()> {
        self.ip(&["link", "set", "dev", dev, if up { "up" } else { "down" }]).map(drop)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).stderr(Stdio::null()).status();
        lock_registry().namespaces.remove(&self.name);
    }
}

fn open_ns(name: &str) -> Result<File> {
    File::open(format!("/run/netns/{name}")).map_err(|source| Error::Enter { ns: name.into(), source })
}

/// Moves the *calling thread* into namespace `name` (by name, as listed by `ip netns list`).
/// Only for threads that end afterwards (a thread pool thread would stay in the namespace).
pub fn enter(name: &str) -> Result<()> {
    let f = open_ns(name)?;
    // SAFETY: setns on a valid namespace fd; affects only this thread.
    if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(Error::Enter { ns: name.into(), source: std::io::Error::last_os_error() });
    }
    Ok(())
}

/// Directory for child logs of this process (`$TMPDIR/tb-logs-<pid>`).
pub fn log_dir() -> PathBuf {
    let d = std::env::temp_dir().join(format!("tb-logs-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&d);
    d
}

// ---------------------------------------------------------------------------------------------
// ChildGuard
// ---------------------------------------------------------------------------------------------

/// A background process inside a namespace. Killed by pid on drop; its combined stdout/stderr
/// is in [`log_path`](Self::log_path), printed to stderr (and kept) if dropped during a panic,
/// deleted otherwise.
#[derive(Debug)]
pub struct ChildGuard {
    child: Option<Child>,
    desc: String,
    log_path: PathBuf,
    grace: Duration,
}

impl ChildGuard {
    /// Process id (the command itself: `ip netns exec` execs it).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// The process's resident memory in bytes (`VmRSS`), or 0 once it is gone.
    pub fn rss(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        let kb: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        kb * 1024
    }

    /// The process's open file descriptors, or 0 once it is gone.
    pub fn open_fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid())).map_or(0, Iterator::count)
    }

    /// Path of the log file.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// The log so far.
    pub fn log(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = File::open(&self.log_path) {
            let _ = f.read_to_string(&mut s);
        }
        s
    }

    /// Prints the log so far to stderr (shown in the test output if the test fails).
    pub fn print_log(&self) {
        eprintln!(
            "----- log of {} ({}) -----\n{}\n----- end of log -----",
            self.desc,
            self.log_path.display(),
            self.log()
        );
    }

    /// Waits until the log contains `needle` (e.g. "listening"); false on timeout or exit.
    pub fn wait_for_log(&mut self, needle: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.log().contains(needle) {
                return true;
            }
            if self.try_wait().is_some() {
                return self.log().contains(needle);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// Sets how long [`kill`](Self::kill)/drop waits after SIGTERM before SIGKILL (default 5 s).
    pub fn set_grace(&mut self, grace: Duration) {
        self.grace = grace;
    }

    /// Exit status if it has exited.
    pub fn try_wait(&mut self) -> Option<std::process::ExitStatus> {
        self.child.as_mut().and_then(|c| c.try_wait().ok().flatten())
    }

    /// Sends a signal (e.g. `libc::SIGHUP`) to the process.
    pub fn signal(&mut self, sig: i32) {
        if self.try_wait().is_some() {
            return;
        }
        if let Some(c) = &self.child {
            // SAFETY: signalling our own, not yet reaped child by pid.
            unsafe { libc::kill(c.id() as i32, sig) };
        }
    }

    /// Waits for exit up to `timeout`.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.try_wait() {
                return Some(s);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGTERM, wait up to the grace period, then SIGKILL; returns the exit status.
    pub fn kill(&mut self) -> Option<std::process::ExitStatus> {
        let child = self.child.as_mut()?;
        let status = match child.try_wait() {
            Ok(Some(s)) => Some(s),
            _ => {
                // SAFETY: signalling our own, not yet reaped child by pid.
                unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
                match self.wait_timeout(self.grace) {
                    Some(s) => Some(s),
                    None => {
                        let child = self.child.as_mut()?;
                        let _ = child.kill();
                        child.wait().ok()
                    }
                }
            }
        };
        if let Some(c) = &self.child {
            lock_registry().children.remove(&(c.id() as i32));
        }
        status
    }

    /// Human-readable description (namespace and command line).
    pub fn describe(&self) -> &str {
        &self.desc
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            self.print_log();
        } else {
            // Kept only when it may explain a failure.
            let _ = std::fs::remove_file(&self.log_path);
            if let Some(dir) = self.log_path.parent() {
                let _ = std::fs::remove_dir(dir); // only succeeds once empty
            }
        }
    }
}

/// Path of a workspace binary (`hag`, `hcpe`, `traffic`...) in the same target profile directory
/// as the running test executable (`target/<profile>/<name>`). Panics with instructions if it
/// has not been built.
pub fn bin_path(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    // Test executables live in target/<profile>/deps/; bins in target/<profile>/.
    let mut dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir.pop();
    }
    let p = dir.join(name);
    if !p.is_file() {
        panic!(
            "binary `{name}` not found at {}: run `cargo build --release --workspace --bins` \
             (or without --release for a debug test run) before the tests",
            p.display()
        );
    }
    p
}

/// A scratch directory for a daemon's generated config and key files, removed on drop (also on panic).
/// `cpe.key` inside it holds `key_hex`, the shared secret the generated hcpe and hag configs point at.
pub fn config_dir(tag: &str, key_hex: &str) -> std::io::Result<tempfile::TempDir> {
    let dir = tempfile::Builder::new().prefix(&format!("{tag}-{}-", std::process::id())).tempdir()?;
    testkit::write_secret(dir.path().join("cpe.key"), key_hex)?;
    Ok(dir)
}
