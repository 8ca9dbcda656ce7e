//! Reading a client's Convert message off its connection: bytes until one whole message parses, telling an
//! early close, a truncated message and bytes that are not a Convert message apart.

use std::io;

use common::convert::{self, Message};
use common::stream::SharedStream;
use tokio::io::AsyncReadExt;

/// Read buffer for the Convert message; a whole message is at most 1020 bytes, the rest is client data.
const HEADER_BUF: usize = 16 * 1024;

pub(crate) enum ReadError {
    /// EOF or an IO error before the message was complete.
    Closed(Option<io::Error>),
    /// The bytes are not a valid Convert message; the bytes received, at most one message's worth.
    Invalid(convert::DecodeError, Vec<u8>),
    /// EOF before the message was complete; the bytes received.
    Truncated(Vec<u8>),
}

/// Reads until one whole Convert message is buffered. Returns it, the buffer, and the message's length
/// (the rest of the buffer is client data that came with it).
pub(crate) async fn read_convert(client: &mut SharedStream) -> Result<(Message, Vec<u8>, usize), ReadError> {
    let mut buf = vec![0u8; HEADER_BUF];
    let mut filled = 0;
    loop {
        let n = match client.read(&mut buf[filled..]).await {
            Ok(0) if filled == 0 => return Err(ReadError::Closed(None)),
            Ok(0) => return Err(ReadError::Truncated(buf[..filled].to_vec())),
            Ok(n) => n,
            Err(e) => return Err(ReadError::Closed(Some(e))),
        };
        filled += n;
        match convert::parse(&buf[..filled]) {
            Ok(Some((message, consumed))) => {
                buf.truncate(filled);
                return Ok((message, buf, consumed));
            }
            Ok(None) => {
                // A message is at most MAX_MESSAGE_LEN < HEADER_BUF bytes, so the parser decides before the
                // buffer fills; this only guards against a parser bug.
                if filled == buf.len() {
                    return Err(ReadError::Closed(None));
                }
            }
            // A wrong first byte is only an unsupported *version* if the rest is a Convert header; text or
            // noise is malformed (RFC 8803 error 1), so wait for the magic before choosing the code.
            Err(convert::DecodeError::UnsupportedVersion(_)) if filled < convert::HEADER_LEN => {}
            Err(convert::DecodeError::UnsupportedVersion(_)) if buf[2..4] != convert::MAGIC.to_be_bytes() => {
                return Err(ReadError::Invalid(convert::DecodeError::BadMagic, received(&buf[..filled])));
            }
            Err(e) => return Err(ReadError::Invalid(e, received(&buf[..filled]))),
        }
    }
}

/// The bytes that make up the rejected message: as many as its total length says (the rest is client
/// data), at most [`convert::MAX_MESSAGE_LEN`].
fn received(buf: &[u8]) -> Vec<u8> {
    let total = buf.get(1).map_or(buf.len(), |words| usize::from(*words) * 4);
    buf[..buf.len().min(total.max(convert::HEADER_LEN)).min(convert::MAX_MESSAGE_LEN)].to_vec()
}
