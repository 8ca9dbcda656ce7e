//! Raw kernel interface of MPTCP introspection: `repr(C)` mirrors of the uapi structs and the few
//! `getsockopt`/`setsockopt` calls that need them.
//!
//! No crate provides these: `libc` 0.2 has `IPPROTO_MPTCP` and `tcp_info` but neither `SOL_MPTCP` nor
//! `struct mptcp_info` / `mptcp_full_info` / `mptcp_subflow_info` (checked in libc 0.2.191), and socket2 has no
//! generic getsockopt. The mirrors follow `include/uapi/linux/mptcp.h` of Linux 6.18.
//!
//! Invariants: every mirror is plain old data (all-zero and any byte pattern valid), so the kernel may fill
//! any prefix of it — it copies `min(user size, kernel size)` bytes, which keeps older and newer kernels
//! compatible as long as we zero-initialise and look at the returned length. All `unsafe` of the module lives
//! here, each block next to the reason it is sound.

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsRawFd, BorrowedFd};

/// `SOL_MPTCP` from `linux/socket.h`.
pub const SOL_MPTCP: libc::c_int = 284;
/// `MPTCP_INFO` getsockopt: `struct mptcp_info`.
pub const MPTCP_INFO: libc::c_int = 1;
/// `MPTCP_FULL_INFO` getsockopt (Linux 6.5+): `struct mptcp_full_info` with subflow arrays.
pub const MPTCP_FULL_INFO: libc::c_int = 4;
/// `MPTCP_INFO_FLAG_FALLBACK`: the connection fell back to plain TCP.
pub const MPTCP_INFO_FLAG_FALLBACK: u32 = 1 << 0;
/// `MPTCP_INFO_FLAG_REMOTE_KEY_RECEIVED`: the peer's key arrived (MP_CAPABLE handshake completed).
pub const MPTCP_INFO_FLAG_REMOTE_KEY_RECEIVED: u32 = 1 << 1;
/// `TCPI_OPT_SYN_DATA` from `linux/tcp.h`: data in the SYN was acknowledged (client) or received (server).
pub const TCPI_OPT_SYN_DATA: u8 = 32;

/// Mirror of `struct mptcp_info` (Linux 6.18; fields after `csum_enabled` appeared in 6.5 and 6.10).
#[repr(C)]
#[derive(Clone, Copy, Default, Debug)]
pub struct RawMptcpInfo {
    pub subflows: u8,
    pub add_addr_signal: u8,
    pub add_addr_accepted: u8,
    pub subflows_max: u8,
    pub add_addr_signal_max: u8,
    pub add_addr_accepted_max: u8,
    pub flags: u32,
    pub token: u32,
    pub write_seq: u64,
    pub snd_una: u64,
    pub rcv_nxt: u64,
    pub local_addr_used: u8,
    pub local_addr_max: u8,
    pub csum_enabled: u8,
    pub retransmits: u32,
    pub bytes_retrans: u64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub bytes_acked: u64,
    pub subflows_total: u8,
    pub endp_laminar_max: u8,
    pub endp_fullmesh_max: u8,
    pub reserved: u8,
    pub last_data_sent: u32,
    pub last_data_recv: u32,
    pub last_ack_recv: u32,
}

/// Byte offset just past `mptcpi_subflows_total`: a kernel that returns at least this many bytes reports
/// the total subflow count itself.
pub const MPTCP_INFO_LEN_WITH_SUBFLOWS_TOTAL: usize = std::mem::offset_of!(RawMptcpInfo, subflows_total) + 1;
/// Byte offset just past `mptcpi_bytes_acked` (the byte counters, Linux 6.5+).
pub const MPTCP_INFO_LEN_WITH_BYTES: usize =
    std::mem::offset_of!(RawMptcpInfo, bytes_acked) + std::mem::size_of::<u64>();

/// Mirror of `struct mptcp_subflow_info`: subflow id, then `struct mptcp_subflow_addrs`, two unions each as
/// wide as `__kernel_sockaddr_storage` (128 bytes, 8-byte aligned, hence the padding after `id`).
/// The addresses are kept as bytes and decoded by [`sockaddr_from_bytes`], which needs no `unsafe`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct RawSubflowInfo {
    pub id: u32,
    pub _pad: u32,
    pub local: [u8; 128],
    pub remote: [u8; 128],
}

impl Default for RawSubflowInfo {
    fn default() -> Self {
        RawSubflowInfo { id: 0, _pad: 0, local: [0; 128], remote: [0; 128] }
    }
}

/// Mirror of `struct mptcp_full_info`. `subflow_info` and `tcp_info` are user-space addresses of arrays of
/// `size_arrays_user` elements each, which the kernel fills.
#[repr(C)]
#[derive(Clone, Copy, Default, Debug)]
pub struct RawFullInfo {
    pub size_tcpinfo_kernel: u32,
    pub size_tcpinfo_user: u32,
    pub size_sfinfo_kernel: u32,
    pub size_sfinfo_user: u32,
    pub num_subflows: u32,
    pub size_arrays_user: u32,
    pub subflow_info: u64,
    pub tcp_info: u64,
    pub mptcp_info: RawMptcpInfo,
}

// Layout checks against the C definitions (sizes and offsets from the 6.18 uapi header).
const _: () = {
    assert!(std::mem::size_of::<RawMptcpInfo>() == 96);
    assert!(std::mem::offset_of!(RawMptcpInfo, bytes_retrans) == 48);
    assert!(std::mem::offset_of!(RawMptcpInfo, subflows_total) == 80);
    assert!(std::mem::size_of::<RawSubflowInfo>() == 264);
    assert!(std::mem::offset_of!(RawFullInfo, mptcp_info) == 40);
};

/// Marker for types the kernel may overwrite with arbitrary bytes.
///
/// # Safety
/// Implementors are `repr(C)` structs of integers/byte arrays only: every byte pattern is a valid value.
pub unsafe trait Pod: Copy {}
// SAFETY: integer and byte-array fields only.
unsafe impl Pod for RawMptcpInfo {}
// SAFETY: integer and byte-array fields only.
unsafe impl Pod for RawSubflowInfo {}
// SAFETY: integer fields and a nested Pod struct only.
unsafe impl Pod for RawFullInfo {}
// SAFETY: libc's tcp_info is a repr(C) struct of integers.
unsafe impl Pod for libc::tcp_info {}
// SAFETY: plain integer.
unsafe impl Pod for libc::c_int {}

/// `getsockopt(fd, level, name, value)`; returns how many bytes the kernel wrote.
pub fn getsockopt_into<T: Pod>(
    fd: BorrowedFd<'_>,
    level: libc::c_int,
    name: libc::c_int,
    value: &mut T,
) -> io::Result<usize> {
    let mut len = std::mem::size_of::<T>() as libc::socklen_t;
    // SAFETY: `value` is a valid, writable `T` of `len` bytes; `T: Pod` so any bytes the kernel writes
    // form a valid `T`; the kernel writes at most `len` bytes and reports the count in `len`.
    let rc = unsafe { libc::getsockopt(fd.as_raw_fd(), level, name, (value as *mut T).cast(), &mut len) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(len as usize)
}

/// `setsockopt(fd, level, name, &int)` for the integer options socket2 does not wrap (TFO ones, `SO_RCVLOWAT`).
pub fn setsockopt_int(fd: BorrowedFd<'_>, level: libc::c_int, name: libc::c_int, value: libc::c_int) -> io::Result<()> {
    // SAFETY: passes a pointer to a live c_int and its exact size; the kernel only reads it.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Result of [`full_info_raw`]: the header (with `num_subflows` = the real count, possibly more than the
/// arrays hold) and the filled array prefixes.
pub struct RawFull {
    pub header: RawFullInfo,
    pub mptcp_info_len: usize,
    pub subflows: Vec<(RawSubflowInfo, libc::tcp_info)>,
}

/// `getsockopt(MPTCP_FULL_INFO)` with room for `capacity` subflows.
pub fn full_info_raw(fd: BorrowedFd<'_>, capacity: usize) -> io::Result<RawFull> {
    let mut sf = vec![RawSubflowInfo::default(); capacity];
    // SAFETY: libc::tcp_info is Pod (see above), so all-zero is a valid value.
    let mut tcp: Vec<libc::tcp_info> = vec![unsafe { std::mem::zeroed() }; capacity];
    let mut header = RawFullInfo {
        size_tcpinfo_user: std::mem::size_of::<libc::tcp_info>() as u32,
        size_sfinfo_user: std::mem::size_of::<RawSubflowInfo>() as u32,
        size_arrays_user: capacity as u32,
        subflow_info: sf.as_mut_ptr() as u64,
        tcp_info: tcp.as_mut_ptr() as u64,
        ..RawFullInfo::default()
    };
    // The kernel writes through the two array addresses: at most `size_arrays_user` elements of
    // `size_*_user` bytes each, which are exactly the two live Vecs above (they outlive the call).
    let len = getsockopt_into(fd, SOL_MPTCP, MPTCP_FULL_INFO, &mut header)?;
    let mptcp_info_len = len.saturating_sub(std::mem::offset_of!(RawFullInfo, mptcp_info));
    let filled = (header.num_subflows as usize).min(capacity);
    let subflows = sf.into_iter().zip(tcp).take(filled).collect();
    Ok(RawFull { header, mptcp_info_len, subflows })
}

/// Decodes a `struct sockaddr_in`/`sockaddr_in6` held in `__kernel_sockaddr_storage` bytes: family in host
/// order at 0, port in network order at 2, then the address (IPv4 at 4; IPv6 flowinfo at 4, address at 8,
/// scope id at 24). `None` for any other family (e.g. an all-zero, unfilled entry).
pub fn sockaddr_from_bytes(b: &[u8; 128]) -> Option<SocketAddr> {
    let family = u16::from_ne_bytes([b[0], b[1]]);
    let port = u16::from_be_bytes([b[2], b[3]]);
    match libc::c_int::from(family) {
        libc::AF_INET => {
            let ip = Ipv4Addr::new(b[4], b[5], b[6], b[7]);
            Some(SocketAddr::V4(SocketAddrV4::new(ip, port)))
        }
        libc::AF_INET6 => {
            let flowinfo = u32::from_be_bytes([b[4], b[5], b[6], b[7]]);
            let mut octets = [0u8; 16];
            octets.copy_from_slice(&b[8..24]);
            let scope = u32::from_ne_bytes([b[24], b[25], b[26], b[27]]);
            Some(SocketAddr::V6(SocketAddrV6::new(Ipv6Addr::from(octets), port, flowinfo, scope)))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sockaddr_bytes_decode_v4_v6_and_reject_empty() {
        let mut b = [0u8; 128];
        b[..2].copy_from_slice(&(libc::AF_INET as u16).to_ne_bytes());
        b[2..4].copy_from_slice(&5124u16.to_be_bytes());
        b[4..8].copy_from_slice(&[192, 0, 2, 7]);
        assert_eq!(sockaddr_from_bytes(&b), Some("192.0.2.7:5124".parse().unwrap()));

        let mut b = [0u8; 128];
        b[..2].copy_from_slice(&(libc::AF_INET6 as u16).to_ne_bytes());
        b[2..4].copy_from_slice(&443u16.to_be_bytes());
        b[8..24].copy_from_slice(&"2001:db8::1".parse::<Ipv6Addr>().unwrap().octets());
        assert_eq!(sockaddr_from_bytes(&b), Some("[2001:db8::1]:443".parse().unwrap()));

        assert_eq!(sockaddr_from_bytes(&[0u8; 128]), None);
    }
}
