//! RFC 8803 "0-RTT TCP Convert" protocol codec, plus our private Auth TLV (type 192, DESIGN §3) and Hold TLV
//! (type 193, `docs/protocol.md`).
//!
//! Sans-IO: bytes in, values out; no sockets and no clock here (the replay window in [`auth`] takes `now`
//! from its caller). The layout of each TLV is documented on [`Tlv`]; where DESIGN and RFC 8803 differ, see
//! `NOTES.md` next to this file.
//!
//! Invariants:
//! - [`decode`] never panics and never allocates more than the message it was given, which is at most
//!   [`MAX_MESSAGE_LEN`] bytes (the total length is a u8 count of 32-bit words).
//! - A decoded [`Message`] is plain data: after the checked parse nothing that reads it can panic.
//! - Whatever [`Message::emit`] accepts decodes back to an equal value. The encoder rejects values that
//!   could not survive the trip (for example an Error value that does not fill its last word) with an [`EncodeError`].
//! - A decoded message whose last TLV is not the Auth TLV never contains an Auth TLV (Auth must be last).

pub mod auth;
mod replies;
mod wire;

pub use replies::ErrorCode;
pub use wire::{Auth, Connect, DecodeError, Decoded, EncodeError, Message, Time, Tlv, decode, parse};

/// The only protocol version defined by RFC 8803.
pub const VERSION: u8 = 1;
/// Magic number of the Convert fixed header (8803 in decimal).
pub const MAGIC: u16 = 0x2263;
/// IANA-assigned TCP port of a Transport Converter.
pub const DEFAULT_PORT: u16 = 5124;
/// The total length is a u8 count of 32-bit words, header included.
pub const MAX_MESSAGE_LEN: usize = 255 * 4;
/// Length of the Convert fixed header.
pub const HEADER_LEN: usize = 4;

/// TLV type codes (IANA "Convert TLVs" registry, plus our private-use Auth TLV).
pub mod tlv_type {
    pub const INFO: u8 = 1;
    pub const CONNECT: u8 = 10;
    pub const EXTENDED_TCP_HEADER: u8 = 20;
    pub const SUPPORTED_TCP_EXTENSIONS: u8 = 21;
    pub const COOKIE: u8 = 22;
    pub const ERROR: u8 = 30;
    /// Private use (192-255 in the IANA registry); layout fixed by DESIGN §3.
    pub const AUTH: u8 = 192;
    /// Private use: hcpe's ready-connection pool (`docs/protocol.md`, "Hold TLV").
    pub const HOLD: u8 = 193;
    /// Private use: hag's clock for a CPE whose timestamp was refused (`docs/protocol.md`).
    pub const TIME: u8 = 194;

    /// True for every type this codec parses into a dedicated [`super::Tlv`] variant.
    pub const fn is_known(kind: u8) -> bool {
        matches!(
            kind,
            INFO | CONNECT | EXTENDED_TCP_HEADER | SUPPORTED_TCP_EXTENSIONS | COOKIE | ERROR | AUTH | HOLD | TIME
        )
    }
}

/// Byte offsets inside the Auth TLV (DESIGN §3), relative to the TLV's first byte.
pub mod auth_layout {
    pub const TIMESTAMP: usize = 4;
    pub const NONCE: usize = 12;
    pub const NONCE_LEN: usize = 16;
    pub const MAC: usize = 28;
    pub const MAC_LEN: usize = 32;
    pub const ID_LEN: usize = 60;
    pub const ID: usize = 61;
    /// CPE ids are 1..=64 bytes of UTF-8.
    pub const MAX_ID_LEN: usize = 64;
}

#[cfg(test)]
mod tests;
