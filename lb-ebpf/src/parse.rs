//! Packet parsing: Ethernet + IPv4 + TCP/UDP headers.
//!
//! Two ways to read the same bytes: in place (direct packet access), when an
//! IPv4 header without options and the L4 header are in the packet's linear
//! part, which is almost every packet; and through the load helpers for the
//! rest (IP options, headers beyond the linear part). Both feed the same
//! checks, so they decide alike; the packet tests run both on one input.
use lb_common::{PROTO_TCP, PROTO_UDP};

use crate::packet::Packet;

pub const ETH_HLEN: usize = 14;
pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86dd;
pub const IP_CSUM_OFF: usize = ETH_HLEN + 10;
pub const IP_SRC_OFF: usize = ETH_HLEN + 12;
pub const IP_DST_OFF: usize = ETH_HLEN + 16;
/// Where the L4 header starts after an IPv4 header without options.
pub const L4_OFF: usize = ETH_HLEN + 20;
/// The headers of a UDP packet without IP options.
pub const UDP_HEADERS: usize = L4_OFF + 8;
/// The headers of a TCP packet without IP options, up to its checksum.
pub const TCP_HEADERS: usize = L4_OFF + 18;

/// Whether the fast paths read and write packets in place; the agent turns
/// them off only to test that both paths produce the same bytes.
#[unsafe(no_mangle)]
static DIRECT_ACCESS: u8 = 1;

#[inline(always)]
pub fn direct_access() -> bool {
    // SAFETY: a read of a global; volatile so the load-time value is used.
    unsafe { core::ptr::read_volatile(&DIRECT_ACCESS) != 0 }
}

/// The parts of a packet the load balancer looks at, for addresses `A` of
/// either family ([u8; 4] or [u8; 16]). Ports in host order. The addresses
/// come first, at 8-byte aligned offsets, so that they move in word loads.
#[derive(Clone, Copy, Default)]
#[repr(C, align(8))]
pub struct Flow<A = [u8; 4]> {
    pub saddr: A,
    pub daddr: A,
    pub l4_off: usize,
    pub proto: u8,
    pub sport: u16,
    pub dport: u16,
    /// TCP flags (0 for UDP).
    pub tcp_flags: u8,
}

impl<A> Flow<A> {
    /// Offset of the L4 checksum field.
    #[inline(always)]
    pub fn l4_csum_off(&self) -> usize {
        self.l4_off + if self.proto == PROTO_TCP { 16 } else { 6 }
    }
}

/// What the Ethernet and IPv4 headers say about a packet worth looking at.
struct Ip {
    proto: u8,
    /// IPv4 header length in bytes.
    ihl: usize,
    saddr: [u8; 4],
    daddr: [u8; 4],
}

/// Checks the first 34 bytes of `h` (Ethernet and the fixed IPv4 header) of
/// a packet of `len` bytes: an unfragmented IPv4 TCP or UDP packet whose
/// total length is sane, or None.
#[inline(always)]
fn ip_header<const N: usize>(h: &[u8; N], len: usize) -> Option<Ip> {
    if u16::from_be_bytes([h[12], h[13]]) != ETH_P_IP {
        return None;
    }
    let ver_ihl = h[ETH_HLEN];
    let ihl = ((ver_ihl & 0x0f) as usize) * 4;
    if ver_ihl >> 4 != 4 || ihl < 20 {
        return None;
    }
    // Fragments (MF set or an offset) are left alone: later fragments carry
    // no ports, so translating only the first would split the datagram.
    if u16::from_be_bytes([h[ETH_HLEN + 6], h[ETH_HLEN + 7]]) & 0x3fff != 0 {
        return None;
    }
    let proto = h[ETH_HLEN + 9];
    if proto != PROTO_TCP && proto != PROTO_UDP {
        return None;
    }
    // A total length that cannot hold the headers, or claims more than the
    // frame has: a bogus packet the stack drops; leave it untouched. (0 is
    // what BIG TCP puts in a GSO packet over 64 KiB: the length is unknown.)
    let tot_len = u16::from_be_bytes([h[ETH_HLEN + 2], h[ETH_HLEN + 3]]) as usize;
    let l4_min = if proto == PROTO_TCP { 20 } else { 8 };
    if tot_len != 0 && (tot_len < ihl + l4_min || ETH_HLEN + tot_len > len) {
        return None;
    }
    Some(Ip {
        proto,
        ihl,
        saddr: [h[26], h[27], h[28], h[29]],
        daddr: [h[30], h[31], h[32], h[33]],
    })
}

#[inline(always)]
fn flow(ip: Ip, ports: [u8; 4], tcp_flags: u8) -> Flow {
    Flow {
        l4_off: ETH_HLEN + ip.ihl,
        proto: ip.proto,
        saddr: ip.saddr,
        daddr: ip.daddr,
        sport: u16::from_be_bytes([ports[0], ports[1]]),
        dport: u16::from_be_bytes([ports[2], ports[3]]),
        tcp_flags,
    }
}

/// Parses an unfragmented IPv4 TCP or UDP packet; anything else is None.
#[inline(always)]
pub fn parse_ipv4<P: Packet>(p: &P) -> Option<Flow> {
    let len = p.len() as usize;
    if direct_access() {
        if let Some(h) = p.head::<UDP_HEADERS>() {
            // SAFETY: head checked that the bytes are in the packet; nothing
            // writes the packet while the reference lives.
            let h = unsafe { &*h };
            let ip = ip_header(h, len)?;
            if ip.ihl == 20 {
                if ip.proto == PROTO_UDP {
                    return Some(flow(ip, [h[34], h[35], h[36], h[37]], 0));
                }
                if let Some(t) = p.head::<TCP_HEADERS>() {
                    // SAFETY: as above.
                    let t = unsafe { &*t };
                    return Some(flow(ip, [t[34], t[35], t[36], t[37]], t[L4_OFF + 13]));
                }
            }
        }
    }
    let h: [u8; L4_OFF] = p.load(0).ok()?;
    let ip = ip_header(&h, len)?;
    let l4_off = ETH_HLEN + ip.ihl;
    let ports: [u8; 4] = p.load(l4_off).ok()?;
    let tcp_flags = if ip.proto == PROTO_TCP {
        p.load::<u8>(l4_off + 13).ok()?
    } else {
        0
    };
    Some(flow(ip, ports, tcp_flags))
}
