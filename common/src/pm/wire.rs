//! Sans-IO codec of the kernel's `mptcp_pm` generic netlink family (commands, endpoint attributes, extack).
//!
//! Hand-written on top of netlink-packet-generic's [`GenlFamily`] trait because the `mptcp-pm` crate can only
//! read (it has no ADD_ADDR / DEL_ADDR / SET_LIMITS / SET_FLAGS). Numbers come from the kernel uapi headers
//! `include/uapi/linux/mptcp_pm.h` (generated from `Documentation/netlink/specs/mptcp_pm.yaml`) and
//! `include/uapi/linux/mptcp.h`.
//!
//! Invariants:
//! - Parsing never panics on kernel bytes: attributes are read through `NlasIterator` (length-checked),
//!   unknown attribute types are kept as `Other`, unknown commands as `PmCmd::Other`.
//! - Endpoint ports (`MPTCP_PM_ADDR_ATTR_PORT`) are host byte order on the wire; addresses are network order.
//!   (Event ports are big-endian; that lives in `events.rs`.)
//! - Nested attributes are emitted with `NLA_F_NESTED`, as the kernel's strict validation expects.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use netlink_packet_core::{
    DecodeError, DefaultNla, Emitable, ErrorContext, ErrorMessage, NLA_F_NESTED, NLM_F_ACK_TLVS, NLM_F_CAPPED, Nla,
    NlaBuffer, NlasIterator, Parseable, ParseableParametrized, emit_i32, emit_u16, emit_u32, parse_i32, parse_string,
    parse_u8, parse_u16, parse_u32,
};
use netlink_packet_generic::{GenlFamily, GenlHeader};

use super::{Endpoint, EndpointFlags};

/// Generic netlink family name (`MPTCP_PM_NAME`).
pub const MPTCP_PM_NAME: &str = "mptcp_pm";
/// Family version (`MPTCP_PM_VER`).
pub const MPTCP_PM_VER: u8 = 1;
/// Multicast group carrying connection and subflow events (`MPTCP_PM_EV_GRP_NAME`).
pub const MPTCP_PM_EV_GRP_NAME: &str = "mptcp_pm_events";

// enum { MPTCP_PM_ATTR_* }
const PM_ATTR_ADDR: u16 = 1;
const PM_ATTR_RCV_ADD_ADDRS: u16 = 2;
const PM_ATTR_SUBFLOWS: u16 = 3;
const PM_ATTR_TOKEN: u16 = 4;
const PM_ATTR_LOC_ID: u16 = 5;
const PM_ATTR_ADDR_REMOTE: u16 = 6;

// enum { MPTCP_PM_ADDR_ATTR_* }
const ADDR_ATTR_FAMILY: u16 = 1;
const ADDR_ATTR_ID: u16 = 2;
const ADDR_ATTR_ADDR4: u16 = 3;
const ADDR_ATTR_ADDR6: u16 = 4;
const ADDR_ATTR_PORT: u16 = 5;
const ADDR_ATTR_FLAGS: u16 = 6;
const ADDR_ATTR_IF_IDX: u16 = 7;

/// `struct nlmsghdr` length: what a capped error echoes of the failed request.
const NLMSG_HDRLEN: usize = 16;
// enum nlmsgerr_attrs
const NLMSGERR_ATTR_MSG: u16 = 1;

/// `AF_INET` / `AF_INET6` as the kernel puts them in `MPTCP_PM_ADDR_ATTR_FAMILY`.
pub(crate) const AF_INET: u16 = libc::AF_INET as u16;
pub(crate) const AF_INET6: u16 = libc::AF_INET6 as u16;

/// `MPTCP_PM_CMD_*`: the genl command byte of a request (and of most replies).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PmCmd {
    AddAddr,
    DelAddr,
    GetAddr,
    FlushAddrs,
    SetLimits,
    GetLimits,
    SetFlags,
    /// A command this code does not know (newer kernel, or userspace-PM commands).
    Other(u8),
}

impl From<PmCmd> for u8 {
    fn from(cmd: PmCmd) -> u8 {
        match cmd {
            PmCmd::AddAddr => 1,
            PmCmd::DelAddr => 2,
            PmCmd::GetAddr => 3,
            PmCmd::FlushAddrs => 4,
            PmCmd::SetLimits => 5,
            PmCmd::GetLimits => 6,
            PmCmd::SetFlags => 7,
            PmCmd::Other(c) => c,
        }
    }
}

impl From<u8> for PmCmd {
    fn from(c: u8) -> PmCmd {
        match c {
            1 => PmCmd::AddAddr,
            2 => PmCmd::DelAddr,
            3 => PmCmd::GetAddr,
            4 => PmCmd::FlushAddrs,
            5 => PmCmd::SetLimits,
            6 => PmCmd::GetLimits,
            7 => PmCmd::SetFlags,
            c => PmCmd::Other(c),
        }
    }
}

impl PmCmd {
    /// Name as in the uapi header, for error messages.
    pub fn name(self) -> &'static str {
        match self {
            PmCmd::AddAddr => "ADD_ADDR",
            PmCmd::DelAddr => "DEL_ADDR",
            PmCmd::GetAddr => "GET_ADDR",
            PmCmd::FlushAddrs => "FLUSH_ADDRS",
            PmCmd::SetLimits => "SET_LIMITS",
            PmCmd::GetLimits => "GET_LIMITS",
            PmCmd::SetFlags => "SET_FLAGS",
            PmCmd::Other(_) => "unknown command",
        }
    }
}

/// One `MPTCP_PM_ADDR_ATTR_*` inside a nested `MPTCP_PM_ATTR_ADDR`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AddrAttr {
    Family(u16),
    Id(u8),
    Addr4(Ipv4Addr),
    Addr6(Ipv6Addr),
    /// Host byte order on the wire (the kernel does `htons(nla_get_u16())`).
    Port(u16),
    Flags(u32),
    IfIdx(i32),
    Other(DefaultNla),
}

impl Nla for AddrAttr {
    fn value_len(&self) -> usize {
        match self {
            AddrAttr::Family(_) | AddrAttr::Port(_) => 2,
            AddrAttr::Id(_) => 1,
            AddrAttr::Addr4(_) | AddrAttr::Flags(_) | AddrAttr::IfIdx(_) => 4,
            AddrAttr::Addr6(_) => 16,
            AddrAttr::Other(nla) => nla.value_len(),
        }
    }

    fn kind(&self) -> u16 {
        match self {
            AddrAttr::Family(_) => ADDR_ATTR_FAMILY,
            AddrAttr::Id(_) => ADDR_ATTR_ID,
            AddrAttr::Addr4(_) => ADDR_ATTR_ADDR4,
            AddrAttr::Addr6(_) => ADDR_ATTR_ADDR6,
            AddrAttr::Port(_) => ADDR_ATTR_PORT,
            AddrAttr::Flags(_) => ADDR_ATTR_FLAGS,
            AddrAttr::IfIdx(_) => ADDR_ATTR_IF_IDX,
            AddrAttr::Other(nla) => nla.kind(),
        }
    }

    fn emit_value(&self, buf: &mut [u8]) {
        // `buf` is exactly `value_len()` long, so the emit_* helpers cannot fail.
        match self {
            AddrAttr::Family(v) | AddrAttr::Port(v) => emit_u16(buf, *v).expect("2-byte attribute"),
            AddrAttr::Id(v) => buf[0] = *v,
            AddrAttr::Addr4(a) => buf.copy_from_slice(&a.octets()),
            AddrAttr::Addr6(a) => buf.copy_from_slice(&a.octets()),
            AddrAttr::Flags(v) => emit_u32(buf, *v).expect("4-byte attribute"),
            AddrAttr::IfIdx(v) => emit_i32(buf, *v).expect("4-byte attribute"),
            AddrAttr::Other(nla) => nla.emit_value(buf),
        }
    }
}

impl<'a, T: AsRef<[u8]> + ?Sized> Parseable<NlaBuffer<&'a T>> for AddrAttr {
    fn parse(buf: &NlaBuffer<&'a T>) -> Result<Self, DecodeError> {
        let v = buf.value();
        Ok(match buf.kind() {
            ADDR_ATTR_FAMILY => AddrAttr::Family(parse_u16(v).context("MPTCP_PM_ADDR_ATTR_FAMILY")?),
            ADDR_ATTR_ID => AddrAttr::Id(parse_u8(v).context("MPTCP_PM_ADDR_ATTR_ID")?),
            ADDR_ATTR_ADDR4 => AddrAttr::Addr4(parse_in4(v).context("MPTCP_PM_ADDR_ATTR_ADDR4")?),
            ADDR_ATTR_ADDR6 => AddrAttr::Addr6(parse_in6(v).context("MPTCP_PM_ADDR_ATTR_ADDR6")?),
            ADDR_ATTR_PORT => AddrAttr::Port(parse_u16(v).context("MPTCP_PM_ADDR_ATTR_PORT")?),
            ADDR_ATTR_FLAGS => AddrAttr::Flags(parse_u32(v).context("MPTCP_PM_ADDR_ATTR_FLAGS")?),
            ADDR_ATTR_IF_IDX => AddrAttr::IfIdx(parse_i32(v).context("MPTCP_PM_ADDR_ATTR_IF_IDX")?),
            _ => AddrAttr::Other(DefaultNla::parse(buf)?),
        })
    }
}

/// One top-level `MPTCP_PM_ATTR_*` of a command or its reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PmAttr {
    /// `MPTCP_PM_ATTR_ADDR`: the endpoint, nested.
    Addr(Vec<AddrAttr>),
    /// `MPTCP_PM_ATTR_RCV_ADD_ADDRS`: limit on ADD_ADDRs accepted from the peer.
    RcvAddAddrs(u32),
    /// `MPTCP_PM_ATTR_SUBFLOWS`: limit on additional subflows per connection.
    Subflows(u32),
    /// `MPTCP_PM_ATTR_TOKEN` (userspace PM only).
    Token(u32),
    /// `MPTCP_PM_ATTR_LOC_ID` (userspace PM only).
    LocId(u8),
    /// `MPTCP_PM_ATTR_ADDR_REMOTE`, nested (userspace PM only).
    AddrRemote(Vec<AddrAttr>),
    Other(DefaultNla),
}

impl Nla for PmAttr {
    fn value_len(&self) -> usize {
        match self {
            PmAttr::Addr(a) | PmAttr::AddrRemote(a) => a.as_slice().buffer_len(),
            PmAttr::RcvAddAddrs(_) | PmAttr::Subflows(_) | PmAttr::Token(_) => 4,
            PmAttr::LocId(_) => 1,
            PmAttr::Other(nla) => nla.value_len(),
        }
    }

    fn kind(&self) -> u16 {
        match self {
            PmAttr::Addr(_) => PM_ATTR_ADDR | NLA_F_NESTED,
            PmAttr::RcvAddAddrs(_) => PM_ATTR_RCV_ADD_ADDRS,
            PmAttr::Subflows(_) => PM_ATTR_SUBFLOWS,
            PmAttr::Token(_) => PM_ATTR_TOKEN,
            PmAttr::LocId(_) => PM_ATTR_LOC_ID,
            PmAttr::AddrRemote(_) => PM_ATTR_ADDR_REMOTE | NLA_F_NESTED,
            PmAttr::Other(nla) => nla.kind(),
        }
    }

    fn emit_value(&self, buf: &mut [u8]) {
        match self {
            PmAttr::Addr(a) | PmAttr::AddrRemote(a) => a.as_slice().emit(buf),
            PmAttr::RcvAddAddrs(v) | PmAttr::Subflows(v) | PmAttr::Token(v) => {
                emit_u32(buf, *v).expect("4-byte attribute")
            }
            PmAttr::LocId(v) => buf[0] = *v,
            PmAttr::Other(nla) => nla.emit_value(buf),
        }
    }
}

impl<'a, T: AsRef<[u8]> + ?Sized> Parseable<NlaBuffer<&'a T>> for PmAttr {
    fn parse(buf: &NlaBuffer<&'a T>) -> Result<Self, DecodeError> {
        let v = buf.value();
        Ok(match buf.kind() {
            PM_ATTR_ADDR => PmAttr::Addr(parse_addr_attrs(v).context("MPTCP_PM_ATTR_ADDR")?),
            PM_ATTR_RCV_ADD_ADDRS => PmAttr::RcvAddAddrs(parse_u32(v).context("MPTCP_PM_ATTR_RCV_ADD_ADDRS")?),
            PM_ATTR_SUBFLOWS => PmAttr::Subflows(parse_u32(v).context("MPTCP_PM_ATTR_SUBFLOWS")?),
            PM_ATTR_TOKEN => PmAttr::Token(parse_u32(v).context("MPTCP_PM_ATTR_TOKEN")?),
            PM_ATTR_LOC_ID => PmAttr::LocId(parse_u8(v).context("MPTCP_PM_ATTR_LOC_ID")?),
            PM_ATTR_ADDR_REMOTE => PmAttr::AddrRemote(parse_addr_attrs(v).context("MPTCP_PM_ATTR_ADDR_REMOTE")?),
            _ => PmAttr::Other(DefaultNla::parse(buf)?),
        })
    }
}

fn parse_addr_attrs(buf: &[u8]) -> Result<Vec<AddrAttr>, DecodeError> {
    NlasIterator::new(buf).map(|nla| nla.and_then(|nla| AddrAttr::parse(&nla))).collect()
}

fn parse_in4(v: &[u8]) -> Result<Ipv4Addr, DecodeError> {
    let b: [u8; 4] = v.try_into().map_err(|_| DecodeError::invalid_ip_address(v.len()))?;
    Ok(Ipv4Addr::from(b))
}

fn parse_in6(v: &[u8]) -> Result<Ipv6Addr, DecodeError> {
    let b: [u8; 16] = v.try_into().map_err(|_| DecodeError::invalid_ip_address(v.len()))?;
    Ok(Ipv6Addr::from(b))
}

/// The payload (after the genl header) of one `mptcp_pm` command message or reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PmMessage {
    pub cmd: PmCmd,
    pub attrs: Vec<PmAttr>,
}

impl PmMessage {
    pub fn new(cmd: PmCmd, attrs: Vec<PmAttr>) -> Self {
        PmMessage { cmd, attrs }
    }

    /// The first nested endpoint (`MPTCP_PM_ATTR_ADDR`) of a reply, if any.
    pub fn addr(&self) -> Option<&[AddrAttr]> {
        self.attrs.iter().find_map(|a| match a {
            PmAttr::Addr(v) => Some(v.as_slice()),
            _ => None,
        })
    }
}

impl GenlFamily for PmMessage {
    fn family_name() -> &'static str {
        MPTCP_PM_NAME
    }

    fn command(&self) -> u8 {
        self.cmd.into()
    }

    fn version(&self) -> u8 {
        MPTCP_PM_VER
    }
}

impl Emitable for PmMessage {
    fn buffer_len(&self) -> usize {
        self.attrs.as_slice().buffer_len()
    }

    fn emit(&self, buffer: &mut [u8]) {
        self.attrs.as_slice().emit(buffer)
    }
}

impl ParseableParametrized<[u8], GenlHeader> for PmMessage {
    fn parse_with_param(buf: &[u8], header: GenlHeader) -> Result<Self, DecodeError> {
        let attrs = NlasIterator::new(buf)
            .map(|nla| nla.and_then(|nla| PmAttr::parse(&nla)))
            .collect::<Result<Vec<_>, _>>()
            .context("mptcp_pm message attributes")?;
        Ok(PmMessage { cmd: header.cmd.into(), attrs })
    }
}

/// What to put in `MPTCP_PM_ATTR_ADDR` to create `ep`: family, address, and whatever optional fields are set.
pub fn endpoint_attrs(ep: &Endpoint) -> Vec<AddrAttr> {
    let mut v = addr_attrs(ep.addr);
    if let Some(id) = ep.id {
        v.push(AddrAttr::Id(id));
    }
    if let Some(port) = ep.port {
        v.push(AddrAttr::Port(port));
    }
    v.push(AddrAttr::Flags(ep.flags.bits()));
    if let Some(ifindex) = ep.ifindex {
        // The kernel stores an s32; ifindexes are positive, so this cast is lossless for real ones.
        v.push(AddrAttr::IfIdx(ifindex as i32));
    }
    v
}

/// Family plus address: how the kernel looks an endpoint up by address (SET_FLAGS, DEL_ADDR of id 0).
pub fn addr_attrs(addr: IpAddr) -> Vec<AddrAttr> {
    match addr {
        IpAddr::V4(a) => vec![AddrAttr::Family(AF_INET), AddrAttr::Addr4(a)],
        IpAddr::V6(a) => vec![AddrAttr::Family(AF_INET6), AddrAttr::Addr6(a)],
    }
}

/// Decode one endpoint as GET_ADDR reports it. The kernel always sends family, port, id and flags; the
/// address attribute matching the family; IF_IDX only when non-zero. Port 0 means "no port".
pub fn endpoint_from_attrs(attrs: &[AddrAttr]) -> Result<Endpoint, DecodeError> {
    let mut family = None;
    let mut id = None;
    let mut addr4 = None;
    let mut addr6 = None;
    let mut port = None;
    let mut flags = 0;
    let mut ifindex = None;
    for a in attrs {
        match a {
            AddrAttr::Family(f) => family = Some(*f),
            AddrAttr::Id(i) => id = Some(*i),
            AddrAttr::Addr4(a) => addr4 = Some(*a),
            AddrAttr::Addr6(a) => addr6 = Some(*a),
            AddrAttr::Port(p) => port = Some(*p).filter(|p| *p != 0),
            AddrAttr::Flags(f) => flags = *f,
            AddrAttr::IfIdx(i) => ifindex = u32::try_from(*i).ok().filter(|i| *i != 0),
            AddrAttr::Other(_) => {}
        }
    }
    let addr = match family {
        Some(AF_INET) => IpAddr::V4(addr4.ok_or("endpoint of family AF_INET without MPTCP_PM_ADDR_ATTR_ADDR4")?),
        Some(AF_INET6) => IpAddr::V6(addr6.ok_or("endpoint of family AF_INET6 without MPTCP_PM_ADDR_ATTR_ADDR6")?),
        Some(f) => return Err(DecodeError::from(format!("endpoint with unknown address family {f}"))),
        None => return Err(DecodeError::from("endpoint without MPTCP_PM_ADDR_ATTR_FAMILY")),
    };
    Ok(Endpoint { addr, id, flags: EndpointFlags::from_bits(flags), ifindex, port })
}

/// The human-readable message of an extended ACK (`NLMSGERR_ATTR_MSG`), if the kernel sent one.
///
/// `outer_flags` are the flags of the NLMSG_ERROR message itself: `NLM_F_CAPPED` says the echoed request
/// is cut to its 16-byte header, `NLM_F_ACK_TLVS` says TLVs follow it.
pub fn extack_message(outer_flags: u16, err: &ErrorMessage) -> Option<String> {
    if outer_flags & NLM_F_ACK_TLVS == 0 {
        return None;
    }
    let echoed = &err.header;
    let skip = if outer_flags & NLM_F_CAPPED != 0 {
        NLMSG_HDRLEN
    } else {
        let len = u32::from_ne_bytes(echoed.get(..4)?.try_into().ok()?) as usize;
        len.checked_add(3)? & !3
    };
    let tlvs = echoed.get(skip..)?;
    NlasIterator::new(tlvs).filter_map(Result::ok).find(|nla| nla.kind() == NLMSGERR_ATTR_MSG).and_then(|nla| {
        let s = parse_string(nla.value()).ok()?;
        let s = s.trim_end_matches('\0').to_owned();
        (!s.is_empty()).then_some(s)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_core::{NLM_F_REQUEST, NetlinkBuffer};

    fn emit(m: &PmMessage) -> Vec<u8> {
        let mut buf = vec![0u8; m.buffer_len()];
        m.emit(&mut buf);
        buf
    }

    fn parse(cmd: u8, bytes: &[u8]) -> PmMessage {
        PmMessage::parse_with_param(bytes, GenlHeader { cmd, version: MPTCP_PM_VER }).unwrap()
    }

    #[test]
    fn add_addr_ipv4_golden_bytes() {
        let ep = Endpoint {
            addr: "10.0.0.1".parse().unwrap(),
            id: Some(5),
            flags: EndpointFlags::SUBFLOW | EndpointFlags::BACKUP,
            ifindex: Some(3),
            port: None,
        };
        let msg = PmMessage::new(PmCmd::AddAddr, vec![PmAttr::Addr(endpoint_attrs(&ep))]);
        #[rustfmt::skip]
        let expected: Vec<u8> = [
            [0x2c, 0x00, 0x01, 0x80], // MPTCP_PM_ATTR_ADDR | NLA_F_NESTED, len 44
            [0x06, 0x00, 0x01, 0x00], [0x02, 0x00, 0x00, 0x00], // FAMILY = AF_INET (+2 pad)
            [0x08, 0x00, 0x03, 0x00], [10, 0, 0, 1],           // ADDR4
            [0x05, 0x00, 0x02, 0x00], [0x05, 0x00, 0x00, 0x00], // ID = 5 (+3 pad)
            [0x08, 0x00, 0x06, 0x00], 6u32.to_ne_bytes(),       // FLAGS = subflow|backup
            [0x08, 0x00, 0x07, 0x00], 3i32.to_ne_bytes(),       // IF_IDX = 3
        ].concat();
        assert_eq!(emit(&msg), expected);
        assert_eq!(u8::from(msg.cmd), 1);
        // And back: the same bytes parse to the same endpoint.
        let back = parse(1, &expected);
        assert_eq!(back, msg);
        assert_eq!(endpoint_from_attrs(back.addr().unwrap()).unwrap(), ep);
    }

    #[test]
    fn get_addr_reply_ipv6_parses_as_the_kernel_fills_it() {
        // mptcp_nl_fill_addr order: FAMILY, PORT (host order), ID, FLAGS, IF_IDX (if set), ADDR6.
        let v6: Ipv6Addr = "2001:db8::7".parse().unwrap();
        #[rustfmt::skip]
        let bytes: Vec<u8> = [
            &[0x40, 0x00, 0x01, 0x80][..], // nested ADDR, 4 + 60 bytes
            &[0x06, 0x00, 0x01, 0x00], &AF_INET6.to_ne_bytes(), &[0, 0],
            &[0x06, 0x00, 0x05, 0x00], &5124u16.to_ne_bytes(), &[0, 0],
            &[0x05, 0x00, 0x02, 0x00, 0x09, 0, 0, 0],
            &[0x08, 0x00, 0x06, 0x00], &(1u32 | 0x20).to_ne_bytes(), // signal + a flag newer than this code
            &[0x14, 0x00, 0x04, 0x00], &v6.octets(),
            &[0x08, 0x00, 0x63, 0x00, 1, 2, 3, 4], // an attribute type from the future
        ].concat();
        let msg = parse(1, &bytes);
        assert_eq!(msg.cmd, PmCmd::AddAddr);
        let ep = endpoint_from_attrs(msg.addr().unwrap()).unwrap();
        assert_eq!(
            ep,
            Endpoint {
                addr: IpAddr::V6(v6),
                id: Some(9),
                flags: EndpointFlags::from_bits(0x21),
                ifindex: None,
                port: Some(5124),
            }
        );
        assert!(ep.flags.contains(EndpointFlags::SIGNAL));
        assert_eq!(ep.flags.bits(), 0x21, "unknown flag bits are kept");
    }

    #[test]
    fn limits_golden_bytes() {
        let msg = PmMessage::new(PmCmd::SetLimits, vec![PmAttr::RcvAddAddrs(2), PmAttr::Subflows(4)]);
        #[rustfmt::skip]
        let expected: Vec<u8> = [
            [0x08, 0x00, 0x02, 0x00], 2u32.to_ne_bytes(),
            [0x08, 0x00, 0x03, 0x00], 4u32.to_ne_bytes(),
        ].concat();
        assert_eq!(emit(&msg), expected);
        assert_eq!(parse(6, &expected).attrs, msg.attrs);
    }

    #[test]
    fn truncated_or_garbage_attributes_are_errors_not_panics() {
        // Nested ADDR claiming 44 bytes with only 8 present.
        assert!(
            PmMessage::parse_with_param(&[0x2c, 0, 1, 0x80, 6, 0, 1, 0], GenlHeader { cmd: 1, version: 1 }).is_err()
        );
        // ADDR4 of 3 bytes.
        let bad = [0x0c, 0, 1, 0x80, 0x07, 0, 3, 0, 1, 2, 3, 0];
        assert!(PmMessage::parse_with_param(&bad, GenlHeader { cmd: 1, version: 1 }).is_err());
        // An endpoint without its address.
        assert!(endpoint_from_attrs(&[AddrAttr::Family(AF_INET), AddrAttr::Id(1)]).is_err());
    }

    fn error_message(flags: u16, echoed: Vec<u8>) -> (u16, ErrorMessage) {
        let mut e = ErrorMessage::default();
        e.code = std::num::NonZeroI32::new(-libc::EINVAL);
        e.header = echoed;
        (flags, e)
    }

    fn msg_tlv(text: &str) -> Vec<u8> {
        let mut v = text.as_bytes().to_vec();
        v.push(0);
        let len = 4 + v.len();
        let mut out = vec![0u8; 4];
        out[..2].copy_from_slice(&(len as u16).to_ne_bytes());
        out[2..4].copy_from_slice(&NLMSGERR_ATTR_MSG.to_ne_bytes());
        out.extend_from_slice(&v);
        out.resize((out.len() + 3) & !3, 0);
        out
    }

    #[test]
    fn extack_message_capped_and_uncapped() {
        let mut request = vec![0u8; 16 + 4 + 8];
        NetlinkBuffer::new(&mut request[..]).set_length(28);
        NetlinkBuffer::new(&mut request[..]).set_flags(NLM_F_REQUEST);

        // Capped: only the 16-byte header is echoed.
        let mut echoed = request[..16].to_vec();
        echoed.extend(msg_tlv("address not found"));
        let (f, e) = error_message(NLM_F_CAPPED | NLM_F_ACK_TLVS, echoed);
        assert_eq!(extack_message(f, &e).as_deref(), Some("address not found"));

        // Uncapped: the whole 28-byte request, then the TLVs.
        let mut echoed = request.clone();
        echoed.extend(msg_tlv("limit greater than maximum (8)"));
        let (f, e) = error_message(NLM_F_ACK_TLVS, echoed);
        assert_eq!(extack_message(f, &e).as_deref(), Some("limit greater than maximum (8)"));

        // No TLV flag: nothing, even if bytes follow.
        let (f, e) = error_message(NLM_F_CAPPED, request.clone());
        assert_eq!(extack_message(f, &e), None);
        // A lying length must not panic.
        let mut bogus = request;
        bogus[..4].copy_from_slice(&u32::MAX.to_ne_bytes());
        let (f, e) = error_message(NLM_F_ACK_TLVS, bogus);
        assert_eq!(extack_message(f, &e), None);
    }
}
