//! The success path of one connection once the destination is connected: the client's early bytes on to
//! the destination, the Convert success reply (with the destination's first bytes when they come soon), then
//! the relay until either side ends or the admin API closes it, and the accounting.

use std::io;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use common::convert::Message;
use common::relay::{self, RelayEnd};
use common::stream::SharedStream;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tracing::{debug, info};

use crate::config::Limits;
use crate::connections::Connection;
use crate::stats::Stats;

/// Forwards the client data that came with its message (`early`), answers the client with `reply` (the
/// bare Convert header, or one with the Supported TCP Extensions when the client sent an Info TLV too; with
/// the destination's first bytes when they come soon), relays until either side ends (or the admin API
/// closes the connection), and counts it all.
pub(crate) async fn relay_to(
    stats: &Stats,
    limits: &Limits,
    conn: &Connection,
    (mut client, reply): (SharedStream, &Message),
    mut server: TcpStream,
    early: &[u8],
    started: Instant,
) {
    let answered = async {
        // Kernel workaround (see `await_tfo_handshake`): a reply written before the TFO handshake completes
        // would stay queued on the MPTCP socket and the CPE would wait for ever.
        common::mptcp::await_tfo_handshake(&client, limits.connect_timeout).await?;
        server.write_all(early).await?;
        // A client that sent nothing yet may be waiting for the reply before it does: answer at once.
        let wait = if early.is_empty() { Duration::ZERO } else { REPLY_WAIT };
        answer_with_first_bytes(&mut client, reply, &mut server, &conn.counters, wait).await
    };
    if let Err(e) = answered.await {
        stats.relay_errors.fetch_add(1, Relaxed);
        info!(error = %e, "connection lost right after connect");
        return;
    }
    stats.relayed.fetch_add(1, Relaxed);
    stats.bytes_up.fetch_add(early.len() as u64, Relaxed);
    debug!(early_bytes = early.len(), connect_ms = started.elapsed().as_millis() as u64, "relaying");

    let counters = &conn.counters;
    let result = tokio::select! {
        r = relay::relay(client, server, limits.idle_timeout, counters) => Some(r),
        () = conn.close.cancelled() => None,
    };
    let (up, down) = (counters.a_to_b.load(Relaxed), counters.b_to_a.load(Relaxed));
    stats.bytes_up.fetch_add(up, Relaxed);
    stats.bytes_down.fetch_add(down, Relaxed);
    if let Some(cpe) = conn.cpe.get() {
        stats.cpe_relayed(cpe, up + early.len() as u64, down);
    }
    let secs = started.elapsed().as_secs_f64();
    match result {
        None => info!(up, down, secs, "closed through the admin API"),
        Some(Ok(outcome)) => {
            if outcome.end == RelayEnd::IdleTimeout {
                stats.idle_timeouts.fetch_add(1, Relaxed);
            }
            info!(up, down, secs, end = ?outcome.end, "relay done");
        }
        Some(Err(e)) => {
            stats.relay_errors.fetch_add(1, Relaxed);
            info!(up, down, secs, error = %e, "relay done with an error");
        }
    }
}

/// How long the success reply waits for the destination's first bytes, to leave in the same write.
const REPLY_WAIT: Duration = Duration::from_millis(100);

/// Sends the success reply together with the destination's first bytes when they arrive within `wait`
/// (client bytes go on to the destination meanwhile), else alone when it passes or either side closes.
/// hag waits ([`REPLY_WAIT`]) only when the client's first bytes came with its Convert message: the
/// destination then has something to answer, and the client is not waiting for the reply to send it.
///
/// Why: the kernel's MPTCP scheduler gives each write to the subflow with the least queued data per pacing
/// rate, and ignores round-trip times. A reply written alone sits unacknowledged on the fast subflow for one
/// round trip, so the answer right behind it would go out on an idle slow subflow (LTE) and reach the CPE
/// that much later. One write keeps request and answer on the fast subflow.
async fn answer_with_first_bytes(
    client: &mut SharedStream,
    reply: &Message,
    server: &mut TcpStream,
    counters: &relay::RelayCounters,
    wait: Duration,
) -> io::Result<()> {
    let mut out = reply.to_bytes().expect("success replies encode");
    if wait.is_zero() {
        return client.write_all(&out).await;
    }
    let header = out.len();
    out.resize(header + 16 * 1024, 0);
    let mut from_client = vec![0u8; 16 * 1024];
    let deadline = tokio::time::sleep(wait);
    tokio::pin!(deadline);
    let n = loop {
        tokio::select! {
            biased;
            r = server.read(&mut out[header..]) => break r?,
            r = client.read(&mut from_client) => match r? {
                // A half-close stays pending on the socket; the relay sees it again and passes it on.
                0 => break 0,
                n => {
                    server.write_all(&from_client[..n]).await?;
                    counters.a_to_b.fetch_add(n as u64, Relaxed);
                }
            },
            () = &mut deadline => break 0,
        }
    };
    out.truncate(header + n);
    client.write_all(&out).await?;
    counters.b_to_a.fetch_add(n as u64, Relaxed);
    Ok(())
}
