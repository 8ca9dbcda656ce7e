//! Waiting for hag's Convert reply, sans-IO: bytes from hag and from the LAN client in, the reply (or why
//! there is none) out. The connection task does the reading and writing (`super::to_hag`).
//!
//! While the reply is incomplete, the client's bytes keep flowing to hag: waiting for the reply first
//! deadlocks when hag's reply sits unsent until hag writes again (seen with TCP Fast Open on kernel MPTCP
//! when the client had sent nothing yet). Every client byte sent to hag is also kept, up to [`REPLAY_MAX`],
//! so that `fallback: direct` can replay it to the destination should hag fail; past that the client is not
//! read until the reply is known (TCP flow control holds it).

use common::convert::{self, Decoded, ErrorCode};

/// Client bytes forwarded to hag before its reply, kept for a direct replay; past it the client waits.
pub const REPLAY_MAX: usize = 256 * 1024;

/// hag's reply, once whole.
#[derive(Debug, PartialEq, Eq)]
pub enum Reply {
    /// Success; `early`: server bytes that came right after the reply header.
    Converted { early: Vec<u8> },
    /// hag refused with this error code.
    Refused(ErrorCode),
    /// hag refused the request's timestamp (Not Authorized) and said what time it is (Time TLV, not yet
    /// verified).
    Stale(convert::Time),
}

/// Why no reply came.
#[derive(Debug, PartialEq, Eq)]
pub enum NoReply {
    /// hag closed before a whole reply arrived.
    Closed,
    /// The reply does not parse.
    Malformed(ErrorCode),
}

/// The state of one wait for a reply.
#[derive(Debug)]
pub struct ReplyReader {
    from_hag: Vec<u8>,
    sent: Vec<u8>,
    client_open: bool,
}

impl ReplyReader {
    /// `sent`: the client bytes that already went to hag with the request.
    pub fn new(sent: Vec<u8>) -> Self {
        ReplyReader { from_hag: Vec::new(), sent, client_open: true }
    }

    /// Bytes read from hag (empty: hag closed). `Some` once the reply is whole or cannot be.
    pub fn on_hag(&mut self, bytes: &[u8]) -> Option<Result<Reply, NoReply>> {
        if bytes.is_empty() {
            return Some(Err(NoReply::Closed));
        }
        self.from_hag.extend_from_slice(bytes);
        match convert::decode(&self.from_hag) {
            Decoded::NeedMore => None,
            Decoded::Error(code) => Some(Err(NoReply::Malformed(code))),
            Decoded::Done { message, consumed } => Some(Ok(match (message.error(), message.time()) {
                (Some(ErrorCode::NotAuthorized), Some(time)) => Reply::Stale(time.clone()),
                (Some(code), _) => Reply::Refused(code),
                (None, _) => Reply::Converted { early: self.from_hag.split_off(consumed) },
            })),
        }
    }

    /// Whether to read the client now: it is still open and the replay buffer has room.
    pub fn wants_client(&self) -> bool {
        self.client_open && self.sent.len() < REPLAY_MAX
    }

    /// Bytes read from the client (empty: it closed, or reading failed); the caller sends them to hag.
    pub fn on_client(&mut self, bytes: &[u8]) {
        if bytes.is_empty() {
            self.client_open = false;
        }
        self.sent.extend_from_slice(bytes);
    }

    /// Every client byte sent to hag so far, for a direct replay.
    pub fn into_sent(self) -> Vec<u8> {
        self.sent
    }
}

#[cfg(test)]
mod tests {
    use common::convert::Message;

    use super::*;

    #[test]
    fn a_reply_split_anywhere_is_whole_once_its_last_byte_came() {
        let header = Message::success().to_bytes().unwrap();
        let mut wire = header.clone();
        wire.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
        for cut in 1..wire.len() {
            let mut r = ReplyReader::new(Vec::new());
            let (a, b) = wire.split_at(cut);
            let done = match r.on_hag(a) {
                None => {
                    assert!(cut < header.len(), "whole header at {cut} but no reply");
                    r.on_hag(b)
                }
                done => {
                    assert!(cut >= header.len(), "a reply from {cut} bytes of a {}-byte header", header.len());
                    done
                }
            };
            // The server bytes that came with the completing read are handed over, not lost.
            let end = if cut < header.len() { wire.len() } else { cut };
            let early = wire[header.len()..end].to_vec();
            assert_eq!(done, Some(Ok(Reply::Converted { early })), "cut at {cut}");
        }
    }

    #[test]
    fn an_error_reply_is_a_refusal_and_garbage_is_malformed() {
        let refusal = Message::error_reply(ErrorCode::NotAuthorized).to_bytes().unwrap();
        let reply = ReplyReader::new(Vec::new()).on_hag(&refusal);
        assert_eq!(reply, Some(Ok(Reply::Refused(ErrorCode::NotAuthorized))));
        let mut garbage = Message::success().to_bytes().unwrap();
        garbage[0] = 9; // version 9
        assert!(matches!(ReplyReader::new(Vec::new()).on_hag(&garbage), Some(Err(NoReply::Malformed(_)))));
        assert_eq!(ReplyReader::new(Vec::new()).on_hag(&[]), Some(Err(NoReply::Closed)));
        // Not Authorized with hag's time: the request's timestamp was refused, to be learnt from.
        let time = convert::auth::signed_time(b"key", &[1; 16], 1_800_000_000_000);
        let mut stale = Message::error_reply(ErrorCode::NotAuthorized);
        stale.tlvs.push(convert::Tlv::Time(time.clone()));
        let reply = ReplyReader::new(Vec::new()).on_hag(&stale.to_bytes().unwrap());
        assert_eq!(reply, Some(Ok(Reply::Stale(time))));
    }

    #[test]
    fn client_bytes_are_kept_for_the_replay_until_the_buffer_is_full_or_the_client_closed() {
        let mut r = ReplyReader::new(b"GET /".to_vec());
        assert!(r.wants_client());
        r.on_client(b" HTTP/1.1\r\n");
        r.on_client(&vec![b'x'; REPLAY_MAX]);
        assert!(!r.wants_client(), "full: the client waits for the reply");
        let sent = r.into_sent();
        assert!(sent.starts_with(b"GET / HTTP/1.1\r\n") && sent.len() == 16 + REPLAY_MAX);
        let mut r = ReplyReader::new(Vec::new());
        r.on_client(&[]);
        assert!(!r.wants_client(), "closed");
    }
}
