//! The replies a converter sends and the requests a client builds: [`ErrorCode`] and the constructors of
//! [`Message`] that give each Error code the value RFC 8803 §5.2.8 defines for it.

use std::net::SocketAddr;

use super::{Connect, HEADER_LEN, MAX_MESSAGE_LEN, Message, Tlv, VERSION};

/// RFC 8803 error codes (IANA "Convert Errors"). Unassigned codes are kept as [`ErrorCode::Unknown`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// 0: the version in the fixed header is not supported.
    UnsupportedVersion,
    /// 1: the message cannot be parsed and validated.
    MalformedMessage,
    /// 2: a message type (TLV) is not supported.
    UnsupportedMessage,
    /// 3: the converter requires a Cookie TLV.
    MissingCookie,
    /// 32: the client is not authorized (our Auth TLV failed, or the destination policy denied it).
    NotAuthorized,
    /// 33: a TCP option in the Connect TLV is not supported.
    UnsupportedTcpOption,
    /// 64: the converter lacks resources (limits).
    ResourceExceeded,
    /// 65: the converter could not reach the destination for a network reason (or timed out).
    NetworkFailure,
    /// 96: the destination reset the connection (refused).
    ConnectionReset,
    /// 97: the destination is unreachable.
    DestinationUnreachable,
    /// Any code this crate has no name for.
    Unknown(u8),
}

impl ErrorCode {
    pub fn code(self) -> u8 {
        match self {
            ErrorCode::UnsupportedVersion => 0,
            ErrorCode::MalformedMessage => 1,
            ErrorCode::UnsupportedMessage => 2,
            ErrorCode::MissingCookie => 3,
            ErrorCode::NotAuthorized => 32,
            ErrorCode::UnsupportedTcpOption => 33,
            ErrorCode::ResourceExceeded => 64,
            ErrorCode::NetworkFailure => 65,
            ErrorCode::ConnectionReset => 96,
            ErrorCode::DestinationUnreachable => 97,
            ErrorCode::Unknown(c) => c,
        }
    }

    /// Named variant for every assigned code, so `from_code(c).code() == c` for all `c`.
    pub fn from_code(code: u8) -> Self {
        match code {
            0 => ErrorCode::UnsupportedVersion,
            1 => ErrorCode::MalformedMessage,
            2 => ErrorCode::UnsupportedMessage,
            3 => ErrorCode::MissingCookie,
            32 => ErrorCode::NotAuthorized,
            33 => ErrorCode::UnsupportedTcpOption,
            64 => ErrorCode::ResourceExceeded,
            65 => ErrorCode::NetworkFailure,
            96 => ErrorCode::ConnectionReset,
            97 => ErrorCode::DestinationUnreachable,
            c => ErrorCode::Unknown(c),
        }
    }
}

impl Message {
    /// The converter's success reply: a bare header, `01 01 22 63`.
    pub fn success() -> Message {
        Message::default()
    }

    /// A reply carrying one Error TLV with the value RFC 8803 §5.2.8 gives `code` when the converter has
    /// nothing to add: the versions we support for Unsupported Version (0), zero otherwise (for Resource
    /// Exceeded and Network Failure, zero means "wait the default delay"). The codes whose value carries
    /// more have their own constructors: [`Message::echo_reply`], [`Message::unsupported_options_reply`],
    /// [`Message::unreachable_reply`].
    pub fn error_reply(code: ErrorCode) -> Message {
        let value = if code == ErrorCode::UnsupportedVersion { VERSION } else { 0 };
        Message::error_with(code, &[value])
    }

    /// A reply carrying one Error TLV with `value`, zero-padded.
    pub fn error_with(code: ErrorCode, value: &[u8]) -> Message {
        Message { tlvs: vec![Tlv::error(code, value)] }
    }

    /// Malformed Message (1) or Unsupported Message (2), whose value is one zero byte and then the message
    /// that triggered the error (RFC 8803 §5.2.8: "shifted by one byte to keep the original alignment"), cut
    /// to what fits in one message.
    pub fn echo_reply(code: ErrorCode, received: &[u8]) -> Message {
        let fits = MAX_MESSAGE_LEN - HEADER_LEN - 4;
        let mut value = Vec::with_capacity(1 + received.len().min(fits));
        value.push(0);
        value.extend_from_slice(&received[..received.len().min(fits)]);
        Message::error_with(code, &value)
    }

    /// Unsupported TCP Option (33): the value lists the kinds of the options that cannot be honoured.
    pub fn unsupported_options_reply(kinds: &[u8]) -> Message {
        Message::error_with(ErrorCode::UnsupportedTcpOption, kinds)
    }

    /// Destination Unreachable (97): the value echoes the Code field of the ICMP message received.
    pub fn unreachable_reply(icmp_code: u8) -> Message {
        Message::error_with(ErrorCode::DestinationUnreachable, &[icmp_code])
    }

    /// The answer to an Info TLV: the TCP option kinds the converter honours in a Connect TLV.
    pub fn supported_extensions(kinds: &[u8]) -> Message {
        Message { tlvs: vec![Tlv::SupportedTcpExtensions { kinds: kinds.to_vec() }] }
    }

    /// A client request: one Connect TLV without TCP options.
    pub fn connect_request(remote: SocketAddr) -> Message {
        Message { tlvs: vec![Tlv::Connect(Connect { remote, options: Vec::new() })] }
    }
}
