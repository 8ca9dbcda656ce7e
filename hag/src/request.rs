//! What a client's Convert message asks the converter for (RFC 8803 §5.2.2: which TLVs a client sends),
//! decided before anything else is done for it.

use common::convert::{Message, Tlv};

use crate::refusal::Refusal;

/// What a valid client message asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ask {
    /// A connection to the destination in its Connect TLV (an Info TLV beside it is answered in the reply).
    Connect,
    /// Only the Supported TCP Extensions (an Info TLV without a Connect TLV).
    Info,
    /// Hold the connection for a later message (our Hold TLV, with an Auth TLV).
    Hold,
}

/// The request in `message` (`received`: its bytes). A TLV of a type the registry does not assign, or one
/// only a converter sends (Extended TCP Header, Supported TCP Extensions, Error), is an Unsupported
/// Message (2); a message that asks for nothing is Malformed (1). A Cookie TLV is accepted and ignored: this
/// converter never asks for one (Missing Cookie, 3, is never sent).
pub(crate) fn ask(message: &Message, received: &[u8]) -> Result<Ask, Refusal> {
    let unsupported = message.tlvs.iter().find(|t| {
        matches!(
            t,
            Tlv::Unknown { .. }
                | Tlv::ExtendedTcpHeader { .. }
                | Tlv::SupportedTcpExtensions { .. }
                | Tlv::Error { .. }
        )
    });
    if let Some(tlv) = unsupported {
        return Err(Refusal::Unsupported { kind: tlv.kind(), received: received.to_vec() });
    }
    if message.hold() {
        Ok(Ask::Hold)
    } else if message.connect().is_some() {
        Ok(Ask::Connect)
    } else if message.tlvs.iter().any(|t| matches!(t, Tlv::Info)) {
        Ok(Ask::Info)
    } else {
        Err(Refusal::NoRequest { received: received.to_vec() })
    }
}
