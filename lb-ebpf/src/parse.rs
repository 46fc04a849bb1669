//! Packet parsing: Ethernet + IPv4 + TCP/UDP headers.
use lb_common::{PROTO_TCP, PROTO_UDP};

use crate::packet::Packet;

pub const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
pub const IP_CSUM_OFF: usize = ETH_HLEN + 10;
pub const IP_SRC_OFF: usize = ETH_HLEN + 12;
pub const IP_DST_OFF: usize = ETH_HLEN + 16;

/// The parts of a packet the load balancer looks at. Ports in host order.
#[derive(Clone, Copy)]
pub struct Flow {
    pub l4_off: usize,
    pub proto: u8,
    pub saddr: [u8; 4],
    pub daddr: [u8; 4],
    pub sport: u16,
    pub dport: u16,
    /// TCP flags (0 for UDP).
    pub tcp_flags: u8,
}

impl Flow {
    /// Offset of the L4 checksum field.
    #[inline(always)]
    pub fn l4_csum_off(&self) -> usize {
        self.l4_off + if self.proto == PROTO_TCP { 16 } else { 6 }
    }
}

/// Parses an unfragmented IPv4 TCP or UDP packet; anything else is None.
#[inline(always)]
pub fn parse_ipv4<P: Packet>(ctx: &P) -> Option<Flow> {
    let ethertype = u16::from_be(ctx.load::<u16>(12).ok()?);
    if ethertype != ETH_P_IP {
        return None;
    }
    let ver_ihl: u8 = ctx.load(ETH_HLEN).ok()?;
    let ihl = ((ver_ihl & 0x0f) as usize) * 4;
    if ver_ihl >> 4 != 4 || ihl < 20 {
        return None;
    }
    // Fragments (MF set or an offset) are left alone: later fragments carry
    // no ports, so translating only the first would split the datagram.
    let frag = u16::from_be(ctx.load::<u16>(ETH_HLEN + 6).ok()?);
    if frag & 0x3fff != 0 {
        return None;
    }
    let proto: u8 = ctx.load(ETH_HLEN + 9).ok()?;
    if proto != PROTO_TCP && proto != PROTO_UDP {
        return None;
    }
    // A total length that cannot hold the headers, or claims more than the
    // frame has: a bogus packet the stack drops; leave it untouched. (0 is
    // what BIG TCP puts in a GSO packet over 64 KiB: the length is unknown.)
    let tot_len = u16::from_be(ctx.load::<u16>(ETH_HLEN + 2).ok()?) as usize;
    let l4_min = if proto == PROTO_TCP { 20 } else { 8 };
    if tot_len != 0 && (tot_len < ihl + l4_min || ETH_HLEN + tot_len > ctx.len() as usize) {
        return None;
    }
    let saddr: [u8; 4] = ctx.load(IP_SRC_OFF).ok()?;
    let daddr: [u8; 4] = ctx.load(IP_DST_OFF).ok()?;
    let l4_off = ETH_HLEN + ihl;
    let ports: [u8; 4] = ctx.load(l4_off).ok()?;
    let tcp_flags = if proto == PROTO_TCP {
        ctx.load::<u8>(l4_off + 13).ok()?
    } else {
        0
    };
    Some(Flow {
        l4_off,
        proto,
        saddr,
        daddr,
        sport: u16::from_be_bytes([ports[0], ports[1]]),
        dport: u16::from_be_bytes([ports[2], ports[3]]),
        tcp_flags,
    })
}
