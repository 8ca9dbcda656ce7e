//! Typed representation of Convert messages with a checked parser and an encoder.
//!
//! Owns: [`Message`], [`Tlv`] and friends, [`decode`]/[`parse`] and [`Message::emit`].
//! Invariants: parsing only reads through bounds-checked accessors and copies at most the message's own
//! bytes; every value [`Message::emit`] accepts parses back to an equal value (checked by the property tests
//! and the fuzz target).

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use super::{ErrorCode, HEADER_LEN, MAGIC, MAX_MESSAGE_LEN, VERSION, auth_layout as al, tlv_type};

/// Connect TLV (type 10): the destination the converter should connect to.
///
/// Wire: type, length, remote port (u16), remote address (16 bytes, IPv4 as `::ffff:a.b.c.d`), then TCP
/// options as kind/length blocks (RFC 8803: no EOL or NOP), zero-padded to a 32-bit boundary.
/// On decode an IPv4-mapped address becomes a [`SocketAddr::V4`]; IPv6 flow info and scope id are not carried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connect {
    pub remote: SocketAddr,
    /// TCP options without the padding; each is `kind, length (>= 2), data`.
    pub options: Vec<u8>,
}

/// Auth TLV (type 192, DESIGN §3); see [`super::auth_layout`] for offsets.
#[derive(Clone, PartialEq, Eq)]
pub struct Auth {
    /// Unix seconds.
    pub timestamp: u64,
    pub nonce: [u8; 16],
    /// HMAC-SHA256 over the whole Convert message with this field zeroed.
    pub mac: [u8; 32],
    /// 1..=64 bytes of UTF-8.
    pub cpe_id: String,
}

impl std::fmt::Debug for Auth {
    // The MAC is not secret, but keeping it out of logs keeps log lines short and uninteresting to replay.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth")
            .field("timestamp", &self.timestamp)
            .field("nonce", &Hex(&self.nonce))
            .field("mac", &Hex(&self.mac[..4]))
            .field("cpe_id", &self.cpe_id)
            .finish()
    }
}

struct Hex<'a>(&'a [u8]);
impl std::fmt::Debug for Hex<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

/// One TLV. Variable-length values are stored without wire padding where padding is unambiguous; where it
/// is not (Cookie, Extended TCP Header, Unknown) the value is exactly the bytes on the wire, so their lengths
/// must keep the TLV 32-bit aligned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tlv {
    /// Type 1, length 1, 16 zero bits: asks the converter which TCP extensions it supports.
    Info,
    /// Type 10, see [`Connect`].
    Connect(Connect),
    /// Type 20: 16 unassigned bits, then the TCP options the server returned in its SYN+ACK.
    /// `options.len()` is a multiple of 4 (TCP options always are).
    ExtendedTcpHeader { options: Vec<u8> },
    /// Type 21: 16 unassigned bits, then one byte per supported TCP option kind, zero-padded.
    /// Kinds 0, 1 and 2 (EOL, NOP, MSS) every TCP has, so RFC 8803 §5.2.4 forbids listing them (and a 0
    /// would be read as padding).
    SupportedTcpExtensions { kinds: Vec<u8> },
    /// Type 22: 16 zero bits, then an opaque cookie; its length is a multiple of 4.
    Cookie(Vec<u8>),
    /// Type 30: error code (u8), then a code-specific value (RFC 8803 §5.2.8) up to the TLV's end. The length
    /// counts words, so a sender's zero padding cannot be told from a value ending in zeros: `value` is every
    /// byte after the code, padding included, and must keep the TLV 32-bit aligned. [`Tlv::error`] pads.
    Error { code: ErrorCode, value: Vec<u8> },
    /// Type 192, see [`Auth`]. Always the last TLV.
    Auth(Auth),
    /// Type 193 (private use), length 1, 16 bits sent as zero and ignored on receipt: "hold this
    /// authenticated connection idle; the Convert message that names its destination follows later". Sent
    /// by hcpe with an Auth TLV to fill its pool of ready connections; hag answers with a bare header (held)
    /// or an Error TLV.
    Hold,
    /// Type 194 (private use), see [`Time`]. Only in hag's Error 32 reply to an authenticated request whose
    /// timestamp was outside the skew.
    Time(Time),
    /// Any other type; `value` is everything after type and length (so `value.len() % 4 == 2`).
    Unknown { kind: u8, value: Vec<u8> },
}

/// Time TLV (type 194, private use; `docs/protocol.md`, "A CPE whose clock is wrong"): hag's clock, signed
/// with the CPE's key over the nonce of the request it answers, so that only that CPE can use it and only
/// for that request.
///
/// Wire: type, length 11, 16 bits sent as zero and ignored on receipt, Unix time in milliseconds (u64),
/// HMAC-SHA256 (32 bytes, see [`super::auth::signed_time`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Time {
    pub unix_ms: u64,
    pub mac: [u8; 32],
}

/// A Convert message: the fixed header (implicit) and its TLVs in order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Message {
    pub tlvs: Vec<Tlv>,
}

/// Result of [`decode`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded {
    /// The bytes so far are a valid beginning; call again with more.
    NeedMore,
    /// A whole message; `consumed` bytes belong to it, anything after is client data.
    Done { message: Message, consumed: usize },
    /// The peer must be sent this error code and the connection closed.
    Error(ErrorCode),
}

/// Why a message was rejected; [`DecodeError::code`] is what goes on the wire.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// The first byte is not [`VERSION`].
    #[error("unsupported Convert version {0}")]
    UnsupportedVersion(u8),
    /// Bytes 2-3 are not the magic number 0x2263.
    #[error("bad magic number")]
    BadMagic,
    /// The total length is 0 words, which cannot even hold the header (RFC 8803 §5.1: answered with a reset,
    /// not an Error TLV).
    #[error("total length is zero")]
    ZeroTotalLength,
    /// A TLV of type 0, which the IANA registry reserves.
    #[error("TLV at offset {offset} has the reserved type 0")]
    ReservedTlvType { offset: usize },
    /// A TLV says its length is 0 words.
    #[error("TLV at offset {offset} has length zero")]
    ZeroTlvLength { offset: usize },
    /// A TLV runs past the total length of the message.
    #[error("TLV at offset {offset} runs past the end of the message")]
    TlvOverrun { offset: usize },
    /// A TLV's length does not fit its type (Info and Hold must be 1 word, Connect at least 5, Auth exactly
    /// its id).
    #[error("TLV type {kind} at offset {offset} has a bad length")]
    BadTlvLength { kind: u8, offset: usize },
    /// Connect TLV options are not kind/length blocks followed by zero padding.
    #[error("malformed TCP options in the Connect TLV at offset {offset}")]
    BadTcpOptions { offset: usize },
    /// Supported TCP Extensions lists kind 1 or 2, or kind 0 before other kinds.
    #[error("option kind 0, 1 or 2 inside the Supported TCP Extensions TLV at offset {offset}")]
    BaseOptionKind { offset: usize },
    /// The Auth TLV's id length is outside 1..=64 or does not match the TLV length, or its padding is not zero.
    #[error("Auth TLV at offset {offset}: bad CPE id length or padding")]
    BadCpeIdLength { offset: usize },
    /// The Auth TLV's CPE id is not UTF-8.
    #[error("Auth TLV at offset {offset}: CPE id is not UTF-8")]
    CpeIdNotUtf8 { offset: usize },
    /// Another TLV follows the Auth TLV.
    #[error("TLV at offset {offset} follows the Auth TLV, which must be last")]
    AuthNotLast { offset: usize },
}

impl DecodeError {
    /// The RFC 8803 error code to answer with.
    pub fn code(&self) -> ErrorCode {
        match self {
            DecodeError::UnsupportedVersion(_) => ErrorCode::UnsupportedVersion,
            _ => ErrorCode::MalformedMessage,
        }
    }
}

/// Why a value cannot be encoded.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum EncodeError {
    /// A TLV longer than 255 words.
    #[error("TLV type {kind} would be {len} bytes, more than 1020")]
    TlvTooLong { kind: u8, len: usize },
    /// The whole message longer than 255 words.
    #[error("message would be {len} bytes, more than 1020")]
    MessageTooLong { len: usize },
    /// Connect options must be kind/length blocks (kind >= 2, length >= 2) exactly filling the field.
    #[error("Connect TLV options are not well-formed kind/length blocks")]
    BadTcpOptions,
    /// Kinds 0, 1 and 2 cannot be listed in Supported TCP Extensions.
    #[error("option kind 0, 1 or 2 in Supported TCP Extensions")]
    BaseOptionKind,
    /// Cookie / Extended TCP Header / Error / Unknown values must keep the TLV 32-bit aligned by themselves.
    #[error("value of TLV type {kind} does not fill whole 32-bit words")]
    Unaligned { kind: u8 },
    /// An `Unknown` TLV of type 0, which the IANA registry reserves.
    #[error("TLV type 0 is reserved")]
    ReservedTlvType,
    /// An `Unknown` TLV with a type this codec parses into a named variant.
    #[error("TLV type {kind} must be encoded with its own variant")]
    KnownKindAsUnknown { kind: u8 },
    /// CPE id length outside 1..=64 bytes.
    #[error("CPE id is {len} bytes, must be 1..=64")]
    BadCpeId { len: usize },
    /// An Auth TLV that is not the last TLV.
    #[error("the Auth TLV must be the last TLV")]
    AuthNotLast,
}

/// Stateless, incremental decode: call with everything received so far.
pub fn decode(buf: &[u8]) -> Decoded {
    match parse(buf) {
        Ok(None) => Decoded::NeedMore,
        Ok(Some((message, consumed))) => Decoded::Done { message, consumed },
        Err(e) => Decoded::Error(e.code()),
    }
}

/// Like [`decode`] but says why a message was rejected (for logs and counters).
/// `Ok(None)` means "need more bytes"; errors in the header are reported as soon as the byte arrives.
pub fn parse(buf: &[u8]) -> Result<Option<(Message, usize)>, DecodeError> {
    let Some(&version) = buf.first() else { return Ok(None) };
    if version != VERSION {
        return Err(DecodeError::UnsupportedVersion(version));
    }
    if buf.get(1) == Some(&0) {
        return Err(DecodeError::ZeroTotalLength);
    }
    let magic = MAGIC.to_be_bytes();
    for (got, want) in buf.iter().skip(2).take(2).zip(magic) {
        if *got != want {
            return Err(DecodeError::BadMagic);
        }
    }
    let Some(&words) = buf.get(1) else { return Ok(None) };
    let total = usize::from(words) * 4;
    let Some(msg) = buf.get(..total) else { return Ok(None) };

    let mut tlvs: Vec<Tlv> = Vec::new();
    let mut offset = HEADER_LEN;
    while let Some(rest) = msg.get(offset..).filter(|r| !r.is_empty()) {
        // Every TLV is whole words and so is the message, so `rest` holds at least type and length.
        let (kind, words) = match rest {
            [kind, words, ..] => (*kind, *words),
            _ => return Err(DecodeError::TlvOverrun { offset }),
        };
        if words == 0 {
            return Err(DecodeError::ZeroTlvLength { offset });
        }
        if kind == 0 {
            return Err(DecodeError::ReservedTlvType { offset });
        }
        if matches!(tlvs.last(), Some(Tlv::Auth(_))) {
            return Err(DecodeError::AuthNotLast { offset });
        }
        let len = usize::from(words) * 4;
        let Some(bytes) = rest.get(..len) else { return Err(DecodeError::TlvOverrun { offset }) };
        tlvs.push(parse_tlv(kind, bytes, offset)?);
        offset += len;
    }
    Ok(Some((Message { tlvs }, total)))
}

/// `bytes` is the whole TLV (type and length included), a non-zero multiple of 4 long.
fn parse_tlv(kind: u8, bytes: &[u8], offset: usize) -> Result<Tlv, DecodeError> {
    let bad_len = DecodeError::BadTlvLength { kind, offset };
    let after = |n: usize| bytes.get(n..).unwrap_or_default();
    Ok(match kind {
        tlv_type::INFO => {
            if bytes.len() != 4 {
                return Err(bad_len);
            }
            Tlv::Info
        }
        tlv_type::CONNECT => {
            let (Some(port), Some(addr)) = (bytes.get(2..4), bytes.get(4..20)) else { return Err(bad_len) };
            let port = u16::from_be_bytes([port[0], port[1]]);
            let mut a = [0u8; 16];
            a.copy_from_slice(addr);
            let ip6 = Ipv6Addr::from(a);
            let ip = match ip6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => IpAddr::V6(ip6),
            };
            let options = tcp_options_without_padding(after(20)).ok_or(DecodeError::BadTcpOptions { offset })?.to_vec();
            Tlv::Connect(Connect { remote: SocketAddr::new(ip, port), options })
        }
        tlv_type::EXTENDED_TCP_HEADER => Tlv::ExtendedTcpHeader { options: after(4).to_vec() },
        tlv_type::SUPPORTED_TCP_EXTENSIONS => {
            let kinds = trim_trailing_zeros(after(4));
            if kinds.iter().any(|k| *k <= 2) {
                return Err(DecodeError::BaseOptionKind { offset });
            }
            Tlv::SupportedTcpExtensions { kinds: kinds.to_vec() }
        }
        tlv_type::COOKIE => Tlv::Cookie(after(4).to_vec()),
        tlv_type::ERROR => {
            let code = ErrorCode::from_code(bytes.get(2).copied().unwrap_or_default());
            Tlv::Error { code, value: after(3).to_vec() }
        }
        tlv_type::AUTH => Tlv::Auth(parse_auth(bytes, offset)?),
        tlv_type::TIME => {
            let (Some(ms), Some(mac), 44) = (bytes.get(4..12), bytes.get(12..44), bytes.len()) else {
                return Err(bad_len);
            };
            let mut unix_ms = [0u8; 8];
            unix_ms.copy_from_slice(ms);
            let mut m = [0u8; 32];
            m.copy_from_slice(mac);
            Tlv::Time(Time { unix_ms: u64::from_be_bytes(unix_ms), mac: m })
        }
        tlv_type::HOLD => {
            if bytes.len() != 4 {
                return Err(bad_len);
            }
            Tlv::Hold
        }
        _ => Tlv::Unknown { kind, value: after(2).to_vec() },
    })
}

fn parse_auth(bytes: &[u8], offset: usize) -> Result<Auth, DecodeError> {
    let bad_len = DecodeError::BadCpeIdLength { offset };
    let Some(&id_len) = bytes.get(al::ID_LEN) else {
        return Err(DecodeError::BadTlvLength { kind: tlv_type::AUTH, offset });
    };
    let id_len = usize::from(id_len);
    if !(1..=al::MAX_ID_LEN).contains(&id_len) || bytes.len() != pad4(al::ID + id_len) {
        return Err(bad_len);
    }
    let id = &bytes[al::ID..al::ID + id_len];
    if bytes[al::ID + id_len..].iter().any(|b| *b != 0) {
        return Err(bad_len);
    }
    let cpe_id = std::str::from_utf8(id).map_err(|_| DecodeError::CpeIdNotUtf8 { offset })?.to_owned();
    let mut timestamp = [0u8; 8];
    timestamp.copy_from_slice(&bytes[al::TIMESTAMP..al::TIMESTAMP + 8]);
    let mut nonce = [0u8; 16];
    nonce.copy_from_slice(&bytes[al::NONCE..al::NONCE + al::NONCE_LEN]);
    let mut mac = [0u8; 32];
    mac.copy_from_slice(&bytes[al::MAC..al::MAC + al::MAC_LEN]);
    Ok(Auth { timestamp: u64::from_be_bytes(timestamp), nonce, mac, cpe_id })
}

/// The options part of a Connect TLV's option field, or `None` if it is not kind/length blocks (kind >= 2,
/// length >= 2) followed only by zero padding. A 0 byte where a kind is expected starts the padding.
fn tcp_options_without_padding(field: &[u8]) -> Option<&[u8]> {
    let mut pos = 0;
    while let Some(&kind) = field.get(pos) {
        match kind {
            0 => {
                let (options, padding) = field.split_at(pos);
                return padding.iter().all(|b| *b == 0).then_some(options);
            }
            1 => return None,
            _ => {
                let len = usize::from(*field.get(pos + 1)?);
                if len < 2 || pos + len > field.len() {
                    return None;
                }
                pos += len;
            }
        }
    }
    Some(field)
}

fn trim_trailing_zeros(b: &[u8]) -> &[u8] {
    let end = b.iter().rposition(|x| *x != 0).map_or(0, |i| i + 1);
    &b[..end]
}

const fn pad4(n: usize) -> usize {
    n.div_ceil(4) * 4
}

impl Tlv {
    /// An Error TLV whose value is `value` zero-padded to the TLV's 32-bit boundary.
    pub fn error(code: ErrorCode, value: &[u8]) -> Tlv {
        let mut value = value.to_vec();
        value.resize(pad4(3 + value.len()) - 3, 0);
        Tlv::Error { code, value }
    }

    /// The TLV type code on the wire.
    pub fn kind(&self) -> u8 {
        match self {
            Tlv::Info => tlv_type::INFO,
            Tlv::Connect(_) => tlv_type::CONNECT,
            Tlv::ExtendedTcpHeader { .. } => tlv_type::EXTENDED_TCP_HEADER,
            Tlv::SupportedTcpExtensions { .. } => tlv_type::SUPPORTED_TCP_EXTENSIONS,
            Tlv::Cookie(_) => tlv_type::COOKIE,
            Tlv::Error { .. } => tlv_type::ERROR,
            Tlv::Auth(_) => tlv_type::AUTH,
            Tlv::Hold => tlv_type::HOLD,
            Tlv::Time(_) => tlv_type::TIME,
            Tlv::Unknown { kind, .. } => *kind,
        }
    }

    fn unpadded_len(&self) -> usize {
        match self {
            Tlv::Info | Tlv::Hold => 4,
            Tlv::Time(_) => 44,
            Tlv::Connect(c) => 20 + c.options.len(),
            Tlv::ExtendedTcpHeader { options } => 4 + options.len(),
            Tlv::SupportedTcpExtensions { kinds } => 4 + kinds.len(),
            Tlv::Cookie(v) => 4 + v.len(),
            Tlv::Error { value, .. } => 3 + value.len(),
            Tlv::Auth(a) => al::ID + a.cpe_id.len(),
            Tlv::Unknown { value, .. } => 2 + value.len(),
        }
    }

    /// Bytes this TLV takes on the wire, padding included.
    pub fn buffer_len(&self) -> usize {
        pad4(self.unpadded_len())
    }

    fn check(&self) -> Result<(), EncodeError> {
        let kind = self.kind();
        let len = self.buffer_len();
        if len > 255 * 4 {
            return Err(EncodeError::TlvTooLong { kind, len });
        }
        match self {
            Tlv::Connect(c) if tcp_options_without_padding(&c.options) != Some(&c.options[..]) => {
                return Err(EncodeError::BadTcpOptions);
            }
            Tlv::SupportedTcpExtensions { kinds } if kinds.iter().any(|k| *k <= 2) => {
                return Err(EncodeError::BaseOptionKind);
            }
            Tlv::ExtendedTcpHeader { .. } | Tlv::Cookie(_) | Tlv::Error { .. } | Tlv::Unknown { .. }
                if self.unpadded_len() & 3 != 0 =>
            {
                return Err(EncodeError::Unaligned { kind });
            }
            Tlv::Unknown { kind: 0, .. } => return Err(EncodeError::ReservedTlvType),
            Tlv::Unknown { kind, .. } if tlv_type::is_known(*kind) => {
                return Err(EncodeError::KnownKindAsUnknown { kind: *kind });
            }
            Tlv::Auth(a) if !(1..=al::MAX_ID_LEN).contains(&a.cpe_id.len()) => {
                return Err(EncodeError::BadCpeId { len: a.cpe_id.len() });
            }
            _ => {}
        }
        Ok(())
    }

    /// Appends exactly `buffer_len()` bytes; `check` must have passed.
    fn emit_unchecked(&self, out: &mut Vec<u8>) {
        let start = out.len();
        let len = self.buffer_len();
        out.push(self.kind());
        out.push((len / 4) as u8);
        match self {
            Tlv::Info | Tlv::Hold => out.extend_from_slice(&[0, 0]),
            Tlv::Time(t) => {
                out.extend_from_slice(&[0, 0]);
                out.extend_from_slice(&t.unix_ms.to_be_bytes());
                out.extend_from_slice(&t.mac);
            }
            Tlv::Connect(c) => {
                out.extend_from_slice(&c.remote.port().to_be_bytes());
                let ip6 = match c.remote.ip() {
                    IpAddr::V4(v4) => v4.to_ipv6_mapped(),
                    IpAddr::V6(v6) => v6,
                };
                out.extend_from_slice(&ip6.octets());
                out.extend_from_slice(&c.options);
            }
            Tlv::ExtendedTcpHeader { options: v } | Tlv::SupportedTcpExtensions { kinds: v } | Tlv::Cookie(v) => {
                out.extend_from_slice(&[0, 0]);
                out.extend_from_slice(v);
            }
            Tlv::Error { code, value } => {
                out.push(code.code());
                out.extend_from_slice(value);
            }
            Tlv::Auth(a) => {
                out.extend_from_slice(&[0, 0]);
                out.extend_from_slice(&a.timestamp.to_be_bytes());
                out.extend_from_slice(&a.nonce);
                out.extend_from_slice(&a.mac);
                out.push(a.cpe_id.len() as u8);
                out.extend_from_slice(a.cpe_id.as_bytes());
            }
            Tlv::Unknown { value, .. } => out.extend_from_slice(value),
        }
        out.resize(start + len, 0);
    }
}

impl Message {
    /// Bytes the message takes on the wire (header included), whether or not it is encodable.
    pub fn buffer_len(&self) -> usize {
        HEADER_LEN + self.tlvs.iter().map(Tlv::buffer_len).sum::<usize>()
    }

    /// Appends exactly `buffer_len()` bytes, or nothing when the message cannot be encoded.
    pub fn emit(&self, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        let len = self.buffer_len();
        for (i, tlv) in self.tlvs.iter().enumerate() {
            tlv.check()?;
            if matches!(tlv, Tlv::Auth(_)) && i + 1 != self.tlvs.len() {
                return Err(EncodeError::AuthNotLast);
            }
        }
        if len > MAX_MESSAGE_LEN {
            return Err(EncodeError::MessageTooLong { len });
        }
        out.reserve(len);
        out.push(VERSION);
        out.push((len / 4) as u8);
        out.extend_from_slice(&MAGIC.to_be_bytes());
        for tlv in &self.tlvs {
            tlv.emit_unchecked(out);
        }
        Ok(())
    }

    pub fn to_bytes(&self) -> Result<Vec<u8>, EncodeError> {
        let mut out = Vec::with_capacity(self.buffer_len().min(MAX_MESSAGE_LEN));
        self.emit(&mut out)?;
        Ok(out)
    }

    /// The first Connect TLV.
    pub fn connect(&self) -> Option<&Connect> {
        self.tlvs.iter().find_map(|t| match t {
            Tlv::Connect(c) => Some(c),
            _ => None,
        })
    }

    /// The Auth TLV (decoded messages have at most one, and it is last).
    pub fn auth(&self) -> Option<&Auth> {
        self.tlvs.iter().find_map(|t| match t {
            Tlv::Auth(a) => Some(a),
            _ => None,
        })
    }

    /// The Time TLV (hag's clock, in its reply to a stale timestamp).
    pub fn time(&self) -> Option<&Time> {
        self.tlvs.iter().find_map(|t| match t {
            Tlv::Time(t) => Some(t),
            _ => None,
        })
    }

    /// Whether the message carries a Hold TLV (a request to hold the connection for a later Connect).
    pub fn hold(&self) -> bool {
        self.tlvs.iter().any(|t| matches!(t, Tlv::Hold))
    }

    /// The code of the first Error TLV.
    pub fn error(&self) -> Option<ErrorCode> {
        self.error_tlv().map(|(code, _)| code)
    }

    /// The code and value (padding included) of the first Error TLV.
    pub fn error_tlv(&self) -> Option<(ErrorCode, &[u8])> {
        self.tlvs.iter().find_map(|t| match t {
            Tlv::Error { code, value } => Some((*code, &value[..])),
            _ => None,
        })
    }
}
