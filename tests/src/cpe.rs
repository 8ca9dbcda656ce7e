//! A CPE as the tests play it without hcpe: an authenticated RFC 8803 Convert request over a kernel MPTCP
//! connection to hag, from inside a namespace, with hag's reply read whole.

use std::io::{Read as _, Write as _};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::time::Duration;

use anyhow::bail;

use crate::netns::Netns;

/// What hag answered a Convert request: its reply, the bytes that came after it, and the open stream.
pub struct ConvertReply {
    /// hag's Convert reply (success header, or an Error TLV).
    pub message: common::convert::Message,
    /// Destination bytes that arrived with the reply.
    pub rest: Vec<u8>,
    /// The MPTCP connection to hag, for the relay that follows a success.
    pub stream: TcpStream,
}

/// An authenticated Convert request as a CPE makes it: an MPTCP connection from `ns` (bound to `source` when
/// given) to hag at `hag`, the Connect TLV for `dst` signed with `key` as `cpe`, and hag's reply read whole.
pub fn convert_request(
    ns: &Netns,
    hag: SocketAddr,
    source: Option<IpAddr>,
    (key, cpe): (&[u8], &str),
    dst: SocketAddr,
) -> anyhow::Result<ConvertReply> {
    use common::convert::auth;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs();
    let request = auth::signed_request(key, dst, cpe, now, auth::random_nonce()?)?;
    exchange(ns, hag, source, request)
}

/// `request` (any bytes) over an MPTCP connection from `ns` (bound to `source` when given) to hag at `hag`,
/// and hag's reply read whole.
pub fn exchange(ns: &Netns, hag: SocketAddr, source: Option<IpAddr>, request: Vec<u8>) -> anyhow::Result<ConvertReply> {
    use common::convert::{self, Decoded};
    use socket2::{Domain, Protocol, Socket, Type};
    ns.within(move || {
        let s =
            Socket::new(Domain::for_address(hag), Type::STREAM, Some(Protocol::from(common::mptcp::IPPROTO_MPTCP)))?;
        if let Some(ip) = source {
            s.bind(&SocketAddr::new(ip, 0).into())?;
        }
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        s.connect(&hag.into())?;
        let mut stream = TcpStream::from(s);
        stream.write_all(&request)?;
        let mut buf = Vec::new();
        loop {
            if let Decoded::Done { message, consumed } = convert::decode(&buf) {
                return Ok(ConvertReply { message, rest: buf[consumed..].to_vec(), stream });
            }
            let mut chunk = [0u8; 512];
            let n = stream.read(&mut chunk)?;
            if n == 0 {
                bail!("hag closed without a reply (got {buf:02x?})");
            }
            buf.extend_from_slice(&chunk[..n]);
        }
    })?
}

/// An echo server in `ns` on `addr`, a thread per connection, for the life of the test process: the
/// destination a test CPE asks hag for.
pub fn echo_server(ns: &Netns, addr: SocketAddr) -> anyhow::Result<()> {
    let listener = ns.within(move || std::net::TcpListener::bind(addr))??;
    std::thread::spawn(move || {
        for mut s in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = s.read(&mut buf) {
                    if n == 0 || s.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
    Ok(())
}
