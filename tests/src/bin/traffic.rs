//! `traffic`: the testbed's traffic tools as a command, for use with `ip netns exec` (demo,
//! manual runs). Same protocol and verification as `tests::traffic`.
//!
//! ```text
//! ip netns exec <inet> traffic server --listen [::]:5201
//! ip netns exec <lan>  traffic download --to 198.18.4.2:5201 --bytes 100000000 [--timeline]
//! ip netns exec <lan>  traffic upload   --to 198.18.4.2:5201 --bytes 100000000
//! ip netns exec <lan>  traffic rr       --to 198.18.4.2:5201 --count 1000 --req 100 --resp 1000
//! ip netns exec <lan>  traffic conns    --to 198.18.4.2:5201 --count 100
//! ```
//! Results are one line of `key=value` pairs on stdout; exit 1 with the error on failure.

use clap::{Parser, Subcommand};
use std::net::{SocketAddr, TcpListener};
use std::time::Duration;
use tests::traffic::{Client, RrStats, Server, Transfer};

#[derive(Parser)]
#[command(about = "Testbed traffic server and client (SHA-256 verified bulk, request/response)")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(clap::Args, Clone)]
struct Conn {
    /// Server address.
    #[arg(long)]
    to: SocketAddr,
    /// Local address to bind before connecting.
    #[arg(long)]
    bind: Option<SocketAddr>,
    /// Data stream seed.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// I/O timeout in seconds.
    #[arg(long, default_value_t = 30)]
    timeout: u64,
}

#[derive(Subcommand)]
enum Cmd {
    /// Serve until killed.
    Server {
        #[arg(long, default_value = "[::]:5201")]
        listen: SocketAddr,
    },
    /// Download N bytes and verify them.
    Download {
        #[command(flatten)]
        conn: Conn,
        #[arg(long)]
        bytes: u64,
        /// Also print Mbit/s per 100 ms.
        #[arg(long)]
        timeline: bool,
    },
    /// Upload N bytes; the server verifies them.
    Upload {
        #[command(flatten)]
        conn: Conn,
        #[arg(long)]
        bytes: u64,
        #[arg(long)]
        timeline: bool,
    },
    /// Request/response exchanges on one connection.
    Rr {
        #[command(flatten)]
        conn: Conn,
        #[arg(long, default_value_t = 1000)]
        count: u32,
        #[arg(long, default_value_t = 100)]
        req: u32,
        #[arg(long, default_value_t = 1000)]
        resp: u32,
    },
    /// Short connections, one exchange each.
    Conns {
        #[command(flatten)]
        conn: Conn,
        #[arg(long, default_value_t = 100)]
        count: u32,
        #[arg(long, default_value_t = 100)]
        req: u32,
        #[arg(long, default_value_t = 1000)]
        resp: u32,
    },
}

fn client(c: &Conn) -> Client {
    let mut cl = Client::new(c.to).seed(c.seed).timeout(Duration::from_secs(c.timeout));
    if let Some(b) = c.bind {
        cl = cl.bind(b);
    }
    cl
}

fn print_transfer(what: &str, t: &Transfer, timeline: bool) {
    println!(
        "{what} bytes={} secs={:.3} mbit={:.1} first_byte_ms={:.2} max_gap_ms={:.1} max_stall_ms={} sha256={}",
        t.bytes,
        t.elapsed.as_secs_f64(),
        t.mbit_per_s(),
        t.first_byte.as_secs_f64() * 1e3,
        t.timeline.max_gap.as_secs_f64() * 1e3,
        t.timeline.max_stall().as_millis(),
        t.sha256.iter().map(|b| format!("{b:02x}")).collect::<String>()
    );
    if timeline {
        let v: Vec<String> = t.timeline.mbit_per_s().iter().map(|m| format!("{m:.1}")).collect();
        println!("timeline_mbit_per_100ms={}", v.join(","));
    }
}

fn print_rr(what: &str, r: &RrStats) {
    println!(
        "{what} count={} per_s={:.0} median_ms={:.3} p99_ms={:.3}",
        r.samples.len(),
        r.per_second(),
        r.median().as_secs_f64() * 1e3,
        r.quantile(0.99).as_secs_f64() * 1e3
    );
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().cmd {
        Cmd::Server { listen } => {
            let s = Server::from_listener(TcpListener::bind(listen)?)?;
            println!("listening {}", s.addr());
            s.wait();
        }
        Cmd::Download { conn, bytes, timeline } => {
            print_transfer("download", &client(&conn).download(bytes)?, timeline)
        }
        Cmd::Upload { conn, bytes, timeline } => print_transfer("upload", &client(&conn).upload(bytes)?, timeline),
        Cmd::Rr { conn, count, req, resp } => print_rr("rr", &client(&conn).request_response(count, req, resp)?),
        Cmd::Conns { conn, count, req, resp } => print_rr("conns", &client(&conn).short_connections(count, req, resp)?),
    }
    Ok(())
}
