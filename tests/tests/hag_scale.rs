//! DESIGN §5 "Scale": hag holds 10,000 concurrent relayed connections on this 2-core machine without errors.
//!
//! The real `hag` on the testbed; from the cpe namespace, 10,000 authenticated kernel MPTCP connections
//! (Convert Connect + Auth, then data) to an echo server in inet, all open at once. Every one gets the success
//! reply and its echo, hag's `/metrics` shows 10,000 open, a second round of echoes proves all of them still
//! relay, and after the client closes them hag's open count returns to 0 with no warning in its log.
//! `HAG_SCALE_CONNECTIONS` changes the count (e.g. 1000 for a quick local run). Where the hard open-file limit
//! is 20,000 and cannot be raised (containers without CAP_SYS_RESOURCE), no process can hold 10,000 relays
//! (20,000 sockets plus its own descriptors); the test then runs the most that fit and says so.

use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::mptcp::{ConnectOptions, connect_with_data};
use tests::daemons::{self, HagSpec};
use tests::testbed::{Testbed, TestbedConfig, addr};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

/// Connections being set up at once (the rest wait): a CPE's burst, not a SYN flood.
const SETUP_CONCURRENCY: usize = 256;
const ECHO_PORT: u16 = 7007;

/// 10,000, or as many as the hard open-file limit lets one process relay (two descriptors each, plus
/// [`common::process::FD_RESERVE`]) when that is lower and cannot be raised (no CAP_SYS_RESOURCE).
fn connections() -> usize {
    if let Some(n) = std::env::var("HAG_SCALE_CONNECTIONS").ok().and_then(|v| v.parse().ok()) {
        return n;
    }
    let (_, hard) = rlimit::getrlimit(rlimit::Resource::NOFILE).unwrap();
    let fits = (hard.saturating_sub(common::process::FD_RESERVE + 50) / 2) as usize;
    if fits < 10_000 {
        eprintln!(
            "hard open-file limit {hard}: a process here holds at most {fits} relays (2 descriptors each); \
             testing {fits} instead of 10,000"
        );
    }
    fits.min(10_000)
}

/// hag's `connections_open` gauge, read through its admin API.
fn hag_open(tb: &Testbed, token: &str) -> f64 {
    let api = SocketAddr::from(([127, 0, 0, 1], daemons::HAG_ADMIN_PORT));
    let r = daemons::http(&tb.hag, api, "GET", "/metrics", Some(token), None).unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    let families = testkit::prometheus::parse(&r.body).unwrap();
    let open = families.iter().find(|f| f.name.ends_with("connections_open")).expect("a connections_open gauge");
    open.samples[0].value
}

/// One echo round on `s`: write `tag`, read it back.
async fn echo(s: &mut TcpStream, tag: &[u8; 8]) -> std::io::Result<()> {
    s.write_all(tag).await?;
    let mut back = [0u8; 8];
    s.read_exact(&mut back).await?;
    if &back != tag {
        return Err(std::io::Error::other("echo mismatch"));
    }
    Ok(())
}

/// Opens connection `i` through hag to the echo server and checks the Convert success reply and one echo.
async fn open(i: usize, hag: SocketAddr, dst: SocketAddr, key: &[u8]) -> std::io::Result<TcpStream> {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
    let mut nonce = [0u8; 16];
    nonce[..8].copy_from_slice(&(i as u64).to_be_bytes());
    nonce[8..].copy_from_slice(&(std::process::id() as u64 ^ now).to_be_bytes());
    let req =
        common::convert::auth::signed_request(key, dst, daemons::CPE_ID, now, nonce).map_err(std::io::Error::other)?;
    let opts = ConnectOptions {
        bind: Some(SocketAddr::new(addr::CPE_DSL.v4.into(), 0)),
        fastopen: false,
        timeout: Duration::from_secs(10),
        ..Default::default()
    };
    let (mut s, sent) = connect_with_data(hag, &req, &opts).await?;
    s.write_all(&req[sent..]).await?;
    let mut reply = [0u8; 4];
    s.read_exact(&mut reply).await?;
    if reply != [0x01, 0x01, 0x22, 0x63] {
        return Err(std::io::Error::other(format!("Convert reply {reply:02x?}")));
    }
    echo(&mut s, &(i as u64).to_be_bytes()).await?;
    Ok(s)
}

#[test]
fn hag_holds_ten_thousand_concurrent_relays() {
    let n = connections();
    // The client and the echo server both live in this process: two descriptors per connection here too.
    let fds = common::process::raise_fd_limit(common::process::fds_for(n as u64, 2) + 40).unwrap();
    assert!(fds.sufficient(), "this test needs {} descriptors: {fds:?}", fds.wanted);

    let tb = Testbed::new(TestbedConfig::default()).unwrap();
    let dir = daemons::config_dir("hag-scale").unwrap();
    let spec = HagSpec {
        v6: false,
        admin: true,
        limits: format!(
            "{{ max_connections: {n}, max_connections_per_cpe: {n}, connect_timeout: 5s, drain_deadline: 1s }}"
        ),
        ..HagSpec::default()
    };
    let mut hag = daemons::start_hag(&tb, dir.path(), &spec).unwrap();
    let token = daemons::admin_token(dir.path()).unwrap();
    let key = common::config::read_secret_key("key", &dir.path().join("cpe.key"), common::config::SecretFiles::Refuse)
        .unwrap();

    // Echo server in inet: one task per connection, until the test ends.
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tb
        .inet
        .thread(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async move {
                let l = TcpListener::bind((addr::INET_SERVER.v4, ECHO_PORT)).await.unwrap();
                let mut tasks = JoinSet::new();
                tokio::pin!(stop_rx);
                loop {
                    tokio::select! {
                        _ = &mut stop_rx => break,
                        Ok((mut s, _)) = l.accept() => {
                            tasks.spawn(async move {
                                let (mut r, mut w) = s.split();
                                let _ = tokio::io::copy(&mut r, &mut w).await;
                            });
                        }
                        Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
                    }
                }
            });
        })
        .unwrap();
    std::thread::sleep(Duration::from_millis(100));

    let hag_addr = SocketAddr::new(addr::HAG_SERVICE.v4.into(), common::convert::DEFAULT_PORT);
    let dst = SocketAddr::new(addr::INET_SERVER.v4.into(), ECHO_PORT);
    let (opened_tx, opened_rx) = std::sync::mpsc::channel::<()>();
    let (close_tx, close_rx) = std::sync::mpsc::channel::<()>();
    let client = tb
        .cpe
        .thread(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async move {
                let t = Instant::now();
                let key = std::sync::Arc::new(key);
                let mut streams = Vec::with_capacity(n);
                let mut setup = JoinSet::new();
                let mut errors = Vec::new();
                let mut next = 0;
                while streams.len() + errors.len() < n {
                    while next < n && setup.len() < SETUP_CONCURRENCY {
                        let key = key.clone();
                        setup.spawn(async move { (next, open(next, hag_addr, dst, &key).await) });
                        next += 1;
                    }
                    match setup.join_next().await.expect("tasks pending") {
                        Ok((_, Ok(s))) => streams.push(s),
                        Ok((i, Err(e))) => errors.push(format!("connection {i}: {e}")),
                        Err(e) => errors.push(format!("task: {e}")),
                    }
                }
                let opened_in = t.elapsed();
                opened_tx.send(()).unwrap();
                // The test reads hag's gauge now; then a second echo round on every connection.
                close_rx.recv().unwrap();
                let t = Instant::now();
                let mut round = JoinSet::new();
                for (i, mut s) in streams.into_iter().enumerate() {
                    round.spawn(async move {
                        let r = echo(&mut s, &(!(i as u64)).to_be_bytes()).await;
                        (i, r, s)
                    });
                }
                let mut kept = Vec::with_capacity(n);
                let mut second_errors = Vec::new();
                while let Some(r) = round.join_next().await {
                    match r {
                        Ok((_, Ok(()), s)) => kept.push(s),
                        Ok((i, Err(e), _)) => second_errors.push(format!("connection {i}, second round: {e}")),
                        Err(e) => second_errors.push(format!("task: {e}")),
                    }
                }
                let second_in = t.elapsed();
                drop(kept);
                (opened_in, errors, second_in, second_errors)
            })
        })
        .unwrap();

    opened_rx.recv_timeout(Duration::from_secs(300)).expect("the client finished opening");
    let open_now = hag_open(&tb, &token);
    close_tx.send(()).unwrap();
    let (opened_in, errors, second_in, second_errors) = client.join().unwrap();
    eprintln!(
        "{n} connections opened in {opened_in:.1?} ({:.0}/s), hag reported {open_now} open; second echo round \
         over all of them in {second_in:.1?}",
        n as f64 / opened_in.as_secs_f64()
    );
    assert!(errors.is_empty(), "{} of {n} failed to open, first: {:?}\n{}", errors.len(), errors.first(), hag.log());
    assert_eq!(open_now, n as f64, "hag's open connections while all were up");
    assert!(
        second_errors.is_empty(),
        "{} failed the second round, first: {:?}",
        second_errors.len(),
        second_errors.first()
    );

    // Closed by the client: hag's count returns to zero.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut open_after = hag_open(&tb, &token);
    while open_after > 0.0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
        open_after = hag_open(&tb, &token);
    }
    assert_eq!(open_after, 0.0, "hag still counts open connections after the client closed them all");
    let _ = stop_tx.send(());
    server.join().unwrap();
    hag.signal(libc::SIGTERM);
    assert!(hag.wait_timeout(Duration::from_secs(5)).is_some_and(|s| s.success()), "{}", hag.log());
    let log = hag.log();
    // The start-up system check judges the host (its clock, its sysctls), not the load: left out.
    let warnings: Vec<&str> = log
        .lines()
        .filter(|l| (l.contains("WARN") || l.contains("ERROR")) && !l.contains("common::syscheck"))
        .collect();
    assert!(warnings.is_empty(), "hag logged {} warnings/errors, first: {:?}", warnings.len(), warnings.first());
}
