//! Probe datagram codec (layout in the [`super`] module header). Sans-IO and checked: [`parse_request`] and [`parse_reply`] validate
//! every length before any field is read, so nothing after it can panic; an authenticated value only comes
//! out of [`Unverified::verify`], after the MAC compared equal in constant time.

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// First two bytes of every probe datagram: "HP". Its first byte is never 1, so a probe can never be
/// mistaken for a Convert message (version 1 first) keyed with the same per-CPE key, and vice versa.
pub const MAGIC: [u8; 2] = *b"HP";
/// The only format version defined.
pub const VERSION: u8 = 1;
/// Length of the CPE id field is 1..=this (same rule as the Convert Auth TLV).
pub const MAX_ID_LEN: usize = 64;
/// Length of the nonce field.
pub const NONCE_LEN: usize = 16;
/// Length of the HMAC-SHA256 field.
pub const MAC_LEN: usize = 32;
/// Fixed part of a request (everything but the CPE id bytes).
const REQUEST_FIXED: usize = 18 + NONCE_LEN + MAC_LEN;
/// Shortest valid request (a 1-byte CPE id).
pub const MIN_REQUEST_LEN: usize = REQUEST_FIXED + 1;
/// Longest valid request (a 64-byte CPE id). A receive buffer of this size plus one detects oversize input.
pub const MAX_REQUEST_LEN: usize = REQUEST_FIXED + MAX_ID_LEN;
/// Every reply has exactly this length, which is less than [`MIN_REQUEST_LEN`]: no amplification.
pub const REPLY_LEN: usize = 18 + NONCE_LEN + MAC_LEN;

const _: () = assert!(REPLY_LEN < MIN_REQUEST_LEN, "a reply must never be larger than any request");

/// Byte offsets shared by both kinds.
mod off {
    pub const VERSION: usize = 2;
    pub const KIND: usize = 3;
    pub const SEQ: usize = 4;
    pub const TIMESTAMP: usize = 8;
    pub const UPLINK: usize = 16;
    /// Request: CPE id length. Reply: reserved (zero).
    pub const ID_LEN: usize = 17;
    pub const ID: usize = 18;
}

/// The kind byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// CPE -> HAG.
    Request,
    /// HAG -> CPE.
    Reply,
}

impl Kind {
    pub const fn code(self) -> u8 {
        match self {
            Kind::Request => 1,
            Kind::Reply => 2,
        }
    }
}

/// Why bytes are not a probe datagram, or a probe could not be built.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum WireError {
    /// Shorter than the fixed part of its kind.
    #[error("truncated probe datagram ({len} bytes)")]
    Truncated { len: usize },
    /// The first two bytes are not [`MAGIC`].
    #[error("not a probe datagram (bad magic)")]
    BadMagic,
    /// A version other than [`VERSION`].
    #[error("unsupported probe version {0}")]
    UnsupportedVersion(u8),
    /// A kind byte that is neither request nor reply.
    #[error("unknown probe kind {0}")]
    UnknownKind(u8),
    /// The kind byte is valid but not the one the caller parses.
    #[error("unexpected probe kind {0:?}")]
    UnexpectedKind(Kind),
    /// CPE id length outside 1..=64.
    #[error("CPE id length {0} outside 1..=64")]
    BadIdLength(usize),
    /// CPE id bytes are not UTF-8.
    #[error("CPE id is not UTF-8")]
    IdNotUtf8,
    /// The datagram is longer or shorter than its own length fields say.
    #[error("probe datagram is {actual} bytes, its fields say {expected}")]
    LengthMismatch { expected: usize, actual: usize },
    /// The MAC does not match the key.
    #[error("probe MAC mismatch")]
    BadMac,
}

/// A probe request as sent by a CPE's prober.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// Prober's sequence number (wraps).
    pub seq: u32,
    /// Sender's wall clock, microseconds since the Unix epoch; the responder checks it for staleness.
    pub timestamp_us: u64,
    /// Which of the CPE's uplinks sent it (opaque to the responder; echoed).
    pub uplink: u8,
    /// The CPE's id, which selects its key at the responder.
    pub cpe_id: String,
    /// Random per probe; echoed in the reply, so a reply answers exactly one request.
    pub nonce: [u8; NONCE_LEN],
}

/// A probe reply: an echo of the request's fields, MAC'd with the same CPE key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reply {
    pub seq: u32,
    pub timestamp_us: u64,
    pub uplink: u8,
    pub nonce: [u8; NONCE_LEN],
}

impl Request {
    /// Encoded length.
    pub fn buffer_len(&self) -> usize {
        REQUEST_FIXED + self.cpe_id.len()
    }

    /// The signed datagram.
    pub fn to_bytes(&self, key: &[u8]) -> Result<Vec<u8>, WireError> {
        let n = self.cpe_id.len();
        if !(1..=MAX_ID_LEN).contains(&n) {
            return Err(WireError::BadIdLength(n));
        }
        let mut out = Vec::with_capacity(self.buffer_len());
        header(&mut out, Kind::Request, self.seq, self.timestamp_us, self.uplink);
        out.push(n as u8); // n <= 64
        out.extend_from_slice(self.cpe_id.as_bytes());
        out.extend_from_slice(&self.nonce);
        append_mac(key, &mut out);
        debug_assert_eq!(out.len(), self.buffer_len());
        Ok(out)
    }

    /// The reply that answers this request.
    pub fn reply(&self) -> Reply {
        Reply { seq: self.seq, timestamp_us: self.timestamp_us, uplink: self.uplink, nonce: self.nonce }
    }
}

impl Reply {
    /// Encoded length (always [`REPLY_LEN`]).
    pub const fn buffer_len(&self) -> usize {
        REPLY_LEN
    }

    /// The signed datagram.
    pub fn to_bytes(&self, key: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(REPLY_LEN);
        header(&mut out, Kind::Reply, self.seq, self.timestamp_us, self.uplink);
        out.push(0); // reserved
        out.extend_from_slice(&self.nonce);
        append_mac(key, &mut out);
        debug_assert_eq!(out.len(), REPLY_LEN);
        out
    }
}

fn header(out: &mut Vec<u8>, kind: Kind, seq: u32, timestamp_us: u64, uplink: u8) {
    out.extend_from_slice(&MAGIC);
    out.push(VERSION);
    out.push(kind.code());
    out.extend_from_slice(&seq.to_be_bytes());
    out.extend_from_slice(&timestamp_us.to_be_bytes());
    out.push(uplink);
}

fn mac_state(key: &[u8], signed: &[u8]) -> HmacSha256 {
    // HMAC takes keys of any length, so this cannot fail.
    let mut mac = <HmacSha256 as KeyInit>::new_from_slice(key).expect("HMAC accepts any key length");
    mac.update(signed);
    mac
}

fn append_mac(key: &[u8], out: &mut Vec<u8>) {
    let tag = mac_state(key, out).finalize().into_bytes();
    out.extend_from_slice(&tag);
}

/// A structurally valid datagram whose MAC has not been checked yet. The claimed fields may be read (to
/// find the key), but only [`Unverified::verify`] yields them as trusted.
#[derive(Debug, Clone)]
pub struct Unverified<'a, T> {
    claimed: T,
    signed: &'a [u8],
    mac: &'a [u8],
}

impl<T> Unverified<'_, T> {
    /// The fields as the sender claims them. Not authenticated.
    pub fn claimed(&self) -> &T {
        &self.claimed
    }

    /// Checks the MAC with `key` in constant time (`hmac`'s `verify_slice`).
    pub fn verify(self, key: &[u8]) -> Result<T, WireError> {
        mac_state(key, self.signed).verify_slice(self.mac).map_err(|_| WireError::BadMac)?;
        Ok(self.claimed)
    }
}

/// Reads and checks the common header; returns the kind.
pub fn peek_kind(buf: &[u8]) -> Result<Kind, WireError> {
    if buf.len() < off::ID {
        return Err(WireError::Truncated { len: buf.len() });
    }
    if buf[..2] != MAGIC {
        return Err(WireError::BadMagic);
    }
    if buf[off::VERSION] != VERSION {
        return Err(WireError::UnsupportedVersion(buf[off::VERSION]));
    }
    match buf[off::KIND] {
        1 => Ok(Kind::Request),
        2 => Ok(Kind::Reply),
        k => Err(WireError::UnknownKind(k)),
    }
}

fn fixed_fields(buf: &[u8]) -> (u32, u64, u8) {
    let seq = u32::from_be_bytes(buf[off::SEQ..off::SEQ + 4].try_into().expect("4 bytes"));
    let ts = u64::from_be_bytes(buf[off::TIMESTAMP..off::TIMESTAMP + 8].try_into().expect("8 bytes"));
    (seq, ts, buf[off::UPLINK])
}

fn expect_kind(buf: &[u8], want: Kind) -> Result<(), WireError> {
    let kind = peek_kind(buf)?;
    if kind != want {
        return Err(WireError::UnexpectedKind(kind));
    }
    Ok(())
}

/// Checked parse of a whole request datagram (no bytes before or after it).
pub fn parse_request(buf: &[u8]) -> Result<Unverified<'_, Request>, WireError> {
    expect_kind(buf, Kind::Request)?;
    let n = usize::from(buf[off::ID_LEN]);
    if !(1..=MAX_ID_LEN).contains(&n) {
        return Err(WireError::BadIdLength(n));
    }
    let expected = REQUEST_FIXED + n;
    if buf.len() != expected {
        return Err(WireError::LengthMismatch { expected, actual: buf.len() });
    }
    let cpe_id = std::str::from_utf8(&buf[off::ID..off::ID + n]).map_err(|_| WireError::IdNotUtf8)?;
    let (seq, timestamp_us, uplink) = fixed_fields(buf);
    let nonce_at = off::ID + n;
    let nonce = buf[nonce_at..nonce_at + NONCE_LEN].try_into().expect("16 bytes");
    let mac_at = nonce_at + NONCE_LEN;
    Ok(Unverified {
        claimed: Request { seq, timestamp_us, uplink, cpe_id: cpe_id.to_owned(), nonce },
        signed: &buf[..mac_at],
        mac: &buf[mac_at..],
    })
}

/// Checked parse of a whole reply datagram. The reserved byte is ignored (it is covered by the MAC).
pub fn parse_reply(buf: &[u8]) -> Result<Unverified<'_, Reply>, WireError> {
    expect_kind(buf, Kind::Reply)?;
    if buf.len() != REPLY_LEN {
        return Err(WireError::LengthMismatch { expected: REPLY_LEN, actual: buf.len() });
    }
    let (seq, timestamp_us, uplink) = fixed_fields(buf);
    let nonce = buf[off::ID..off::ID + NONCE_LEN].try_into().expect("16 bytes");
    let mac_at = off::ID + NONCE_LEN;
    Ok(Unverified { claimed: Reply { seq, timestamp_us, uplink, nonce }, signed: &buf[..mac_at], mac: &buf[mac_at..] })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const KEY: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn h(s: &str) -> Vec<u8> {
        hex::decode(s.replace([' ', '\n'], "")).unwrap()
    }

    fn request() -> Request {
        Request {
            seq: 0x0102_0304,
            timestamp_us: 0x0005_f5e1_0000_0001,
            uplink: 7,
            cpe_id: "cpe-1".into(),
            nonce: *b"NNNNNNNNNNNNNNNN",
        }
    }

    // MACs computed outside this crate with Python's hmac module:
    // hmac.new(KEY, bytes.fromhex(<everything before the MAC>), hashlib.sha256).hexdigest()
    const REQUEST_GOLDEN: &str = "4850 01 01 01020304 0005f5e100000001 07 05 6370652d31
        4e4e4e4e4e4e4e4e4e4e4e4e4e4e4e4e
        REQMAC";
    const REPLY_GOLDEN: &str = "4850 01 02 01020304 0005f5e100000001 07 00
        4e4e4e4e4e4e4e4e4e4e4e4e4e4e4e4e
        REPMAC";
    const REQUEST_MAC: &str = "bbbe37a9601f413d6faa7aa09e04586901357865e66c758f9462dd9395837c12";
    const REPLY_MAC: &str = "97fac3adb9ba5705ba71508fe3802e2ac8f51b14251c9e3fc213914326b090cd";

    #[test]
    fn request_golden_bytes() {
        let bytes = h(&REQUEST_GOLDEN.replace("REQMAC", REQUEST_MAC));
        assert_eq!(bytes.len(), 71);
        assert_eq!(request().to_bytes(KEY).unwrap(), bytes);
        let parsed = parse_request(&bytes).unwrap();
        assert_eq!(parsed.claimed(), &request());
        assert_eq!(parsed.verify(KEY).unwrap(), request());
    }

    #[test]
    fn reply_golden_bytes() {
        let bytes = h(&REPLY_GOLDEN.replace("REPMAC", REPLY_MAC));
        assert_eq!(bytes.len(), REPLY_LEN);
        let reply = request().reply();
        assert_eq!(reply.to_bytes(KEY), bytes);
        assert_eq!(parse_reply(&bytes).unwrap().verify(KEY).unwrap(), reply);
    }

    #[test]
    fn wrong_key_or_flipped_bit_fails_the_mac() {
        let bytes = request().to_bytes(KEY).unwrap();
        assert_eq!(parse_request(&bytes).unwrap().verify(b"another key").unwrap_err(), WireError::BadMac);
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0x01;
            // Either the structure check or the MAC catches every single-bit change.
            let ok = parse_request(&b).and_then(|u| u.verify(KEY)).is_ok();
            assert!(!ok, "bit flip at byte {i} went unnoticed");
        }
    }

    #[test]
    fn structural_errors_are_named() {
        let good = request().to_bytes(KEY).unwrap();
        assert_eq!(parse_request(&good[..10]).unwrap_err(), WireError::Truncated { len: 10 });
        let mut b = good.clone();
        b[0] = 1; // a Convert message starts with version 1
        assert_eq!(parse_request(&b).unwrap_err(), WireError::BadMagic);
        let mut b = good.clone();
        b[2] = 2;
        assert_eq!(parse_request(&b).unwrap_err(), WireError::UnsupportedVersion(2));
        let mut b = good.clone();
        b[3] = 9;
        assert_eq!(parse_request(&b).unwrap_err(), WireError::UnknownKind(9));
        let mut b = good.clone();
        b[17] = 0;
        assert_eq!(parse_request(&b).unwrap_err(), WireError::BadIdLength(0));
        let mut b = good.clone();
        b[17] = 65;
        assert_eq!(parse_request(&b).unwrap_err(), WireError::BadIdLength(65));
        let mut b = good.clone();
        b.push(0);
        assert_eq!(parse_request(&b).unwrap_err(), WireError::LengthMismatch { expected: 71, actual: 72 });
        let mut b = good.clone();
        b[18] = 0xff;
        assert_eq!(parse_request(&b).unwrap_err(), WireError::IdNotUtf8);
        assert_eq!(parse_reply(&good).unwrap_err(), WireError::UnexpectedKind(Kind::Request));
        let reply = request().reply().to_bytes(KEY);
        assert_eq!(parse_request(&reply).unwrap_err(), WireError::UnexpectedKind(Kind::Reply));
    }

    #[test]
    fn cpe_id_length_is_enforced_when_encoding() {
        let mut r = request();
        r.cpe_id = String::new();
        assert_eq!(r.to_bytes(KEY).unwrap_err(), WireError::BadIdLength(0));
        r.cpe_id = "x".repeat(65);
        assert_eq!(r.to_bytes(KEY).unwrap_err(), WireError::BadIdLength(65));
        r.cpe_id = "x".repeat(64);
        assert_eq!(r.to_bytes(KEY).unwrap().len(), MAX_REQUEST_LEN);
    }

    fn arb_request() -> impl Strategy<Value = Request> {
        (any::<u32>(), any::<u64>(), any::<u8>(), "[a-z0-9.-]{1,64}", any::<[u8; 16]>())
            .prop_map(|(seq, timestamp_us, uplink, cpe_id, nonce)| Request { seq, timestamp_us, uplink, cpe_id, nonce })
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
            let _ = peek_kind(&bytes);
            if let Ok(u) = parse_request(&bytes) {
                prop_assert_eq!(u.claimed().buffer_len(), bytes.len());
                let _ = u.verify(KEY);
            }
            if let Ok(u) = parse_reply(&bytes) {
                let _ = u.verify(KEY);
            }
        }

        #[test]
        fn headers_that_look_right_never_panic(id_len in any::<u8>(), kind in 0u8..4, tail in prop::collection::vec(any::<u8>(), 0..140)) {
            let mut bytes = vec![b'H', b'P', VERSION, kind, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1, 3, id_len];
            bytes.extend_from_slice(&tail);
            let _ = parse_request(&bytes).map(|u| u.verify(KEY));
            let _ = parse_reply(&bytes).map(|u| u.verify(KEY));
        }

        #[test]
        fn round_trip_and_reply_never_larger_than_request(r in arb_request()) {
            let bytes = r.to_bytes(KEY).unwrap();
            prop_assert_eq!(bytes.len(), r.buffer_len());
            prop_assert_eq!(parse_request(&bytes).unwrap().verify(KEY).unwrap(), r.clone());
            let reply = r.reply().to_bytes(KEY);
            prop_assert!(reply.len() < bytes.len(), "reply {} >= request {}", reply.len(), bytes.len());
            prop_assert_eq!(parse_reply(&reply).unwrap().verify(KEY).unwrap(), r.reply());
        }
    }
}
