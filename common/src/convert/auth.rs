//! The Auth TLV's cryptography and replay protection (DESIGN §3).
//!
//! Owns: building signed requests, computing and checking the MAC over a raw Convert message, the
//! [`ReplayWindow`], and signing and checking hag's Time TLV. Sans-IO: the caller passes keys, bytes and
//! `now`.
//!
//! Invariants:
//! - The MAC is HMAC-SHA256(key, the whole Convert message with the 32 MAC bytes zeroed); it is checked in
//!   constant time (`hmac`'s `verify_slice`).
//! - The MAC is only ever computed over bytes that [`super::parse`] accepted as exactly one message whose
//!   last TLV is Auth, so the MAC field's position is known and in bounds.
//! - [`ReplayWindow`] never holds more than `max_entries` nonces; when full of live entries it refuses
//!   ([`AuthError::ReplayWindowFull`]) instead of growing.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use super::{Auth, Connect, DecodeError, EncodeError, ErrorCode, HEADER_LEN, Message, Time, Tlv, auth_layout as al};

type HmacSha256 = Hmac<Sha256>;

/// Why a request could not be signed or was not accepted.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum AuthError {
    /// The bytes are not a valid Convert message.
    #[error("malformed Convert message: {0}")]
    Decode(#[from] DecodeError),
    /// The bytes end before the message does.
    #[error("incomplete Convert message")]
    Incomplete,
    /// The bytes continue after the message (pass exactly the message's bytes).
    #[error("bytes after the Convert message")]
    TrailingBytes,
    /// The message's last TLV is not an Auth TLV.
    #[error("no Auth TLV at the end of the message")]
    MissingAuth,
    /// The request could not be encoded (e.g. a CPE id outside 1..=64 bytes).
    #[error("cannot encode request: {0}")]
    Encode(#[from] EncodeError),
    /// The MAC does not match the key.
    #[error("MAC mismatch")]
    BadMac,
    /// The timestamp is older than `now - skew`.
    #[error("timestamp {timestamp} is more than {skew} s before now ({now})")]
    TimestampTooOld { timestamp: u64, now: u64, skew: u64 },
    /// The timestamp is later than `now + skew`.
    #[error("timestamp {timestamp} is more than {skew} s after now ({now})")]
    TimestampInFuture { timestamp: u64, now: u64, skew: u64 },
    /// This nonce was already accepted inside the window.
    #[error("nonce replayed")]
    Replay,
    /// The window holds `max_entries` live nonces; refusing rather than growing.
    #[error("replay window full ({max_entries} live nonces)")]
    ReplayWindowFull { max_entries: usize },
}

impl AuthError {
    /// The RFC 8803 error code to answer with: Not Authorized for authentication failures, Malformed for
    /// unparsable input, Resource Exceeded when the replay window is full.
    pub fn code(&self) -> ErrorCode {
        match self {
            AuthError::Decode(e) => e.code(),
            AuthError::Incomplete | AuthError::TrailingBytes => ErrorCode::MalformedMessage,
            AuthError::ReplayWindowFull { .. } => ErrorCode::ResourceExceeded,
            _ => ErrorCode::NotAuthorized,
        }
    }
}

/// A Convert request (Connect TLV to `remote`, then the Auth TLV) with the MAC filled in.
pub fn signed_request(
    key: &[u8],
    remote: SocketAddr,
    cpe_id: &str,
    timestamp: u64,
    nonce: [u8; 16],
) -> Result<Vec<u8>, AuthError> {
    let message = Message {
        tlvs: vec![
            Tlv::Connect(Connect { remote, options: Vec::new() }),
            Tlv::Auth(Auth { timestamp, nonce, mac: [0; 32], cpe_id: cpe_id.to_owned() }),
        ],
    };
    let mut bytes = message.to_bytes()?;
    sign(key, &mut bytes)?;
    Ok(bytes)
}

/// A hold request (Hold TLV, then the Auth TLV) with the MAC filled in: asks hag to keep the connection
/// open, authenticated, for a Convert message that names the destination later.
pub fn signed_hold(key: &[u8], cpe_id: &str, timestamp: u64, nonce: [u8; 16]) -> Result<Vec<u8>, AuthError> {
    let message = Message {
        tlvs: vec![Tlv::Hold, Tlv::Auth(Auth { timestamp, nonce, mac: [0; 32], cpe_id: cpe_id.to_owned() })],
    };
    let mut bytes = message.to_bytes()?;
    sign(key, &mut bytes)?;
    Ok(bytes)
}

/// Fills in the MAC of the Auth TLV that ends `message` (exactly one encoded Convert message).
pub fn sign(key: &[u8], message: &mut [u8]) -> Result<(), AuthError> {
    let at = mac_offset(message)?;
    let mac = compute_mac(key, message, at);
    message[at..at + al::MAC_LEN].copy_from_slice(&mac);
    Ok(())
}

/// Checks the MAC of `raw_message`, which must be exactly the bytes [`super::decode`] consumed.
pub fn verify_mac(key: &[u8], raw_message: &[u8]) -> Result<(), AuthError> {
    let at = mac_offset(raw_message)?;
    mac_state(key, raw_message, at).verify_slice(&raw_message[at..at + al::MAC_LEN]).map_err(|_| AuthError::BadMac)
}

/// What the Time TLV's MAC covers before the nonce and the time: keeps it apart from every message MAC
/// (a Convert message starts with its version byte, 1).
const TIME_LABEL: &[u8] = b"hag time";

/// hag's clock for the CPE whose request carried `nonce`: `unix_ms`, signed with that CPE's key over
/// [`TIME_LABEL`], the nonce and the time.
pub fn signed_time(key: &[u8], nonce: &[u8; 16], unix_ms: u64) -> Time {
    Time { unix_ms, mac: time_mac(key, nonce, unix_ms).finalize().into_bytes().into() }
}

/// The time in `time` when hag signed it with `key` in answer to the request that carried `nonce`.
pub fn verify_time(key: &[u8], nonce: &[u8; 16], time: &Time) -> Result<u64, AuthError> {
    time_mac(key, nonce, time.unix_ms).verify_slice(&time.mac).map_err(|_| AuthError::BadMac)?;
    Ok(time.unix_ms)
}

fn time_mac(key: &[u8], nonce: &[u8; 16], unix_ms: u64) -> HmacSha256 {
    let mut mac = <HmacSha256 as KeyInit>::new_from_slice(key).expect("HMAC accepts any key length");
    mac.update(TIME_LABEL);
    mac.update(nonce);
    mac.update(&unix_ms.to_be_bytes());
    mac
}

/// 16 random bytes from the OS, for [`signed_request`].
pub fn random_nonce() -> Result<[u8; 16], getrandom::Error> {
    let mut nonce = [0u8; 16];
    getrandom::fill(&mut nonce)?;
    Ok(nonce)
}

fn compute_mac(key: &[u8], message: &[u8], at: usize) -> [u8; 32] {
    mac_state(key, message, at).finalize().into_bytes().into()
}

/// HMAC state fed with `message`, reading the 32 bytes at `at` as zeros (no copy of the message needed).
fn mac_state(key: &[u8], message: &[u8], at: usize) -> HmacSha256 {
    // HMAC takes keys of any length, so this cannot fail.
    let mut mac = <HmacSha256 as KeyInit>::new_from_slice(key).expect("HMAC accepts any key length");
    mac.update(&message[..at]);
    mac.update(&[0u8; al::MAC_LEN]);
    mac.update(&message[at + al::MAC_LEN..]);
    mac
}

/// Offset of the MAC field in `message`, after checking it is exactly one valid message ending in Auth.
fn mac_offset(message: &[u8]) -> Result<usize, AuthError> {
    let (parsed, consumed) = super::parse(message)?.ok_or(AuthError::Incomplete)?;
    if consumed != message.len() {
        return Err(AuthError::TrailingBytes);
    }
    if !matches!(parsed.tlvs.last(), Some(Tlv::Auth(_))) {
        return Err(AuthError::MissingAuth);
    }
    // Walk the (already validated) TLV headers to the start of the last one.
    let mut last = HEADER_LEN;
    let mut offset = HEADER_LEN;
    while let Some(&words) = message.get(offset + 1) {
        last = offset;
        offset += usize::from(words) * 4;
    }
    Ok(last + al::MAC)
}

/// Remembers accepted nonces until their timestamp leaves the skew window (after which a replay fails the
/// timestamp check anyway). Keyed by nonce alone: nonces are 16 random bytes.
///
/// If the caller's clock steps backwards, nonces already expired could be accepted again while their
/// timestamps are inside the window once more; callers pass a wall clock that normally only moves forward.
#[derive(Debug)]
pub struct ReplayWindow {
    skew: u64,
    max_entries: usize,
    /// nonce -> expiry (timestamp + skew)
    seen: HashMap<[u8; 16], u64>,
    /// (expiry, nonce), so expired entries come off the front in O(log n)
    by_expiry: BTreeSet<(u64, [u8; 16])>,
}

impl ReplayWindow {
    /// `skew_secs`: accepted distance between a request's timestamp and `now`, both ways (DESIGN default 30).
    /// `max_entries`: the most nonces held at once.
    pub fn new(skew_secs: u64, max_entries: usize) -> Self {
        ReplayWindow { skew: skew_secs, max_entries, seen: HashMap::new(), by_expiry: BTreeSet::new() }
    }

    /// Accepts `auth` (and remembers its nonce) if its timestamp is within the skew of `now_unix` and its
    /// nonce has not been accepted before. Call only after the MAC checked out, so nobody can fill the
    /// window without a key.
    pub fn check(&mut self, now_unix: u64, auth: &Auth) -> Result<(), AuthError> {
        let (timestamp, now, skew) = (auth.timestamp, now_unix, self.skew);
        if timestamp.saturating_add(skew) < now {
            return Err(AuthError::TimestampTooOld { timestamp, now, skew });
        }
        if timestamp > now.saturating_add(skew) {
            return Err(AuthError::TimestampInFuture { timestamp, now, skew });
        }
        self.expire(now);
        if self.seen.contains_key(&auth.nonce) {
            return Err(AuthError::Replay);
        }
        if self.seen.len() >= self.max_entries {
            return Err(AuthError::ReplayWindowFull { max_entries: self.max_entries });
        }
        let expiry = timestamp.saturating_add(skew);
        self.seen.insert(auth.nonce, expiry);
        self.by_expiry.insert((expiry, auth.nonce));
        Ok(())
    }

    /// Nonces currently remembered.
    pub fn len(&self) -> usize {
        self.seen.len()
    }

    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }

    /// Drops every nonce whose timestamp is now outside the window.
    pub fn expire(&mut self, now_unix: u64) {
        while let Some(&(expiry, nonce)) = self.by_expiry.first() {
            if expiry >= now_unix {
                break;
            }
            self.by_expiry.pop_first();
            self.seen.remove(&nonce);
        }
    }
}
