//! Why a connection is refused, the RFC 8803 reply each refusal gets (§5.2.8: an Error TLV whose value the
//! code defines, or a reset where §5.1 asks for one), and the way a refused or answered-and-done
//! connection is closed so that the client can read what it was sent.
//!
//! Invariants:
//! - A request whose MAC checks out but whose timestamp is outside the skew gets Not Authorized with a Time
//!   TLV: hag's clock, signed for that request's nonce (`common::clock`).
//! - Malformed Message (1) and Unsupported Message (2) echo the message that caused them (as received, cut
//!   to what one reply carries); Not Authorized, Resource Exceeded and Network Failure carry zero;
//!   Destination Unreachable the ICMP code; Unsupported TCP Option the option kinds.
//! - A source gets at most a burst of Error replies and then a few a second ([`ErrorReplyLimiter`]); past
//!   that, and for a total length of zero, the connection is reset without a reply.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::convert::{self, ErrorCode, Message};
use common::stream::SharedStream;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tracing::{info, warn};

use crate::outbound::{BadDestination, Failure};
use crate::ratelimit::{ErrorReplyLimiter, LogLimiter};
use crate::stats::Stats;

/// How long a refused client gets to read its Error reply and close, before we drop the socket.
const REJECT_LINGER: Duration = Duration::from_secs(2);
/// Most bytes read (and discarded) from a refused client while it lingers.
const REJECT_DRAIN_MAX: usize = 256 * 1024;
/// Error replies one source address may get at once, and per second after that.
const ERROR_REPLY_BURST: u32 = 64;
const ERROR_REPLIES_PER_SECOND: u32 = 16;

/// Why a connection was refused, for the log; [`Refusal::reply`] goes on the wire. `received` is the
/// client's message as it arrived (for the echo of codes 1 and 2).
#[derive(Debug, thiserror::Error)]
pub(crate) enum Refusal {
    #[error("bad Convert message: {error}")]
    Decode { error: convert::DecodeError, received: Vec<u8> },
    #[error("TLV type {kind} is not one a client sends to a converter")]
    Unsupported { kind: u8, received: Vec<u8> },
    #[error("the Convert message asks for nothing (no Connect, Info or Hold TLV)")]
    NoRequest { received: Vec<u8> },
    #[error("client closed after {} bytes, before its Convert message was complete", .0.len())]
    Truncated(Vec<u8>),
    #[error("authentication failed: {0}")]
    Auth(#[from] convert::auth::AuthError),
    /// A valid MAC and a timestamp outside the skew: answered with hag's time in a Time TLV.
    #[error("authentication failed: {error}; told the CPE hag's time")]
    Stale { error: convert::auth::AuthError, time: convert::Time },
    #[error("unknown CPE id")]
    UnknownCpe,
    #[error("no Auth TLV from an untrusted source")]
    MissingAuth,
    #[error("destination {dst} is {why}, which a Connect TLV must not name")]
    BadDestination { dst: SocketAddr, why: BadDestination, received: Vec<u8> },
    #[error("destination {dst} denied: {why}")]
    Policy { dst: IpAddr, why: crate::policy::Denied },
    #[error("TCP options of kinds {0:?} in the Connect TLV cannot be honoured")]
    UnsupportedOptions(Vec<u8>),
    #[error("too many connections in total ({0})")]
    TotalLimit(usize),
    #[error("too many connections for this CPE ({0})")]
    CpeLimit(usize),
    #[error("too many held connections for this CPE ({0})")]
    HeldLimit(usize),
    #[error("a hold request must carry an Auth TLV and no Connect TLV")]
    BadHold { received: Vec<u8> },
    #[error("the message on a held connection holds again or names another CPE")]
    BadHeldMessage { received: Vec<u8> },
    #[error("connecting to the destination: {0}")]
    Connect(Failure),
}

impl Refusal {
    /// The reply, or `None` when the connection is to be reset instead (a total length of zero, RFC 8803
    /// §5.1).
    pub(crate) fn reply(&self) -> Option<Message> {
        use ErrorCode::*;
        Some(match self {
            Refusal::Decode { error: convert::DecodeError::ZeroTotalLength, .. } => return None,
            Refusal::Decode { error, received } if error.code() == MalformedMessage => {
                Message::echo_reply(MalformedMessage, received)
            }
            Refusal::Decode { error, .. } => Message::error_reply(error.code()),
            Refusal::Unsupported { received, .. } => Message::echo_reply(UnsupportedMessage, received),
            Refusal::NoRequest { received }
            | Refusal::Truncated(received)
            | Refusal::BadDestination { received, .. }
            | Refusal::BadHold { received }
            | Refusal::BadHeldMessage { received } => Message::echo_reply(MalformedMessage, received),
            Refusal::Auth(e) => Message::error_reply(e.code()),
            Refusal::Stale { time, .. } => {
                let mut reply = Message::error_reply(NotAuthorized);
                reply.tlvs.push(convert::Tlv::Time(time.clone()));
                reply
            }
            Refusal::UnknownCpe | Refusal::MissingAuth | Refusal::Policy { .. } => Message::error_reply(NotAuthorized),
            Refusal::UnsupportedOptions(kinds) => Message::unsupported_options_reply(kinds),
            Refusal::TotalLimit(_) | Refusal::CpeLimit(_) | Refusal::HeldLimit(_) => {
                Message::error_reply(ResourceExceeded)
            }
            Refusal::Connect(failure) => failure.reply(),
        })
    }

    fn is_auth_failure(&self) -> bool {
        matches!(self, Refusal::UnknownCpe | Refusal::MissingAuth | Refusal::Stale { .. })
            || matches!(self, Refusal::Auth(e) if e.code() == ErrorCode::NotAuthorized)
    }
}

/// Sends the replies of refused connections: counts them, keeps within each source's error budget and the
/// log's, and closes the connections.
pub(crate) struct Replier {
    stats: Arc<Stats>,
    /// Log lines for authentication failures and other floods.
    log: Mutex<LogLimiter>,
    /// Error replies per source address (RFC 8803 §5.2.5: rate-limited).
    budget: Mutex<ErrorReplyLimiter>,
}

impl Replier {
    pub(crate) fn new(stats: Arc<Stats>) -> Self {
        Replier {
            stats,
            log: Mutex::new(LogLimiter::new(20, Duration::from_secs(10))),
            budget: Mutex::new(ErrorReplyLimiter::new(ERROR_REPLY_BURST, ERROR_REPLIES_PER_SECOND)),
        }
    }

    /// Whether a line of a flood may be logged now (`Some(lines suppressed since the last one)`).
    pub(crate) fn log_allowed(&self) -> Option<u64> {
        self.log.lock().expect("log limiter poisoned").allow(Instant::now())
    }

    /// Sends the reply for `why` (or resets), counts it, and closes as [`close_after`] does; `handshake`:
    /// how long to wait for a Fast Open handshake to complete before writing.
    pub(crate) async fn reject(&self, client: SharedStream, peer: SocketAddr, why: Refusal, handshake: Duration) {
        let stats = &self.stats;
        let Some(reply) = why.reply() else {
            stats.reset_zero_length.fetch_add(1, Relaxed);
            info!("refused with a reset: {why}");
            return reset(client);
        };
        let code = reply.error().unwrap_or(ErrorCode::Unknown(255));
        let allowed = self.budget.lock().expect("error reply limiter poisoned").allow(peer.ip(), Instant::now());
        if !allowed {
            stats.error_replies_limited.fetch_add(1, Relaxed);
            if let Some(suppressed) = self.log_allowed() {
                warn!(code = code.code(), suppressed, "refused with a reset, over the error reply budget: {why}");
            }
            return reset(client);
        }
        stats.error_sent(code);
        if matches!(why, Refusal::Policy { .. }) {
            stats.policy_denied.fetch_add(1, Relaxed);
        }
        if why.is_auth_failure() {
            stats.auth_failures.fetch_add(1, Relaxed);
            if let Some(suppressed) = self.log_allowed() {
                warn!(code = code.code(), suppressed, "refused: {why}");
            }
        } else {
            info!(code = code.code(), "refused: {why}");
        }
        close_after(client, &reply, handshake).await;
    }
}

/// Writes `reply` (an Error TLV, or the answer to an Info TLV), closes our side and lets the client read it
/// before the socket goes: closing with unread input would send a reset that can destroy the reply in flight.
pub(crate) async fn close_after(mut client: SharedStream, reply: &Message, handshake: Duration) {
    let bytes = reply.to_bytes().expect("replies are built to encode");
    let linger = async {
        common::mptcp::await_tfo_handshake(&client, handshake).await?;
        client.write_all(&bytes).await?;
        client.shutdown().await?;
        let mut sink = [0u8; 4096];
        let mut drained = 0;
        while drained < REJECT_DRAIN_MAX {
            match client.read(&mut sink).await? {
                0 => break,
                n => drained += n,
            }
        }
        io::Result::Ok(())
    };
    let _ = tokio::time::timeout(REJECT_LINGER, linger).await;
}

/// Closes with a reset: linger on, zero seconds.
fn reset(client: SharedStream) {
    let _ = socket2::SockRef::from(&*client).set_linger(Some(Duration::ZERO));
    drop(client);
}
