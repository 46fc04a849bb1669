//! Packet parsing for IPv6: Ethernet + the fixed IPv6 header + TCP/UDP.
//!
//! Only packets whose next header is TCP or UDP are for the load balancer.
//! A packet with extension headers (hop-by-hop options, routing, fragment,
//! destination options, ...) is passed untouched and counted
//! (PASSED_V1[PASS_IPV6_EXT]): the ports may sit behind headers the
//! datapath does not walk, and a fragment's later parts carry none at all,
//! so translating the first would split the datagram. ICMPv6 (neighbour
//! discovery among it) is not for the load balancer and passes uncounted.
//!
//! As for IPv4, headers are read in place when the linear part holds them,
//! through the load helpers otherwise; both feed the same checks.
use lb_common::{PASS_IPV6_EXT, PROTO_TCP, PROTO_UDP};

use crate::{
    maps,
    packet::Packet,
    parse::{direct_access, Flow, ETH_HLEN, ETH_P_IPV6},
};

pub const IP6_HLEN: usize = 40;
pub const IP6_SRC_OFF: usize = ETH_HLEN + 8;
pub const IP6_DST_OFF: usize = ETH_HLEN + 24;
/// Where the L4 header starts (no extension headers).
pub const L4_OFF6: usize = ETH_HLEN + IP6_HLEN;
/// The headers of a UDP packet.
pub const UDP6_HEADERS: usize = L4_OFF6 + 8;
/// The headers of a TCP packet, up to its checksum.
pub const TCP6_HEADERS: usize = L4_OFF6 + 18;

pub type Flow6 = Flow<[u8; 16]>;

/// Next-header values of IPv6 extension headers (RFC 8200 and the IANA
/// registry): a packet with one is passed and counted.
#[inline(always)]
fn is_extension(next: u8) -> bool {
    matches!(
        next,
        0 | 43 | 44 | 50 | 51 | 60 | 135 | 139 | 140 | 253 | 254
    )
}

/// Checks the first 22 bytes of `h` (Ethernet and the IPv6 header up to its
/// addresses) of a packet of `len` bytes: an IPv6 TCP or UDP packet without
/// extension headers whose payload length is sane, or None.
#[inline(always)]
fn ip6_header<const N: usize>(h: &[u8; N], len: usize) -> Option<u8> {
    if u16::from_be_bytes([h[12], h[13]]) != ETH_P_IPV6 || h[ETH_HLEN] >> 4 != 6 {
        return None;
    }
    let next = h[ETH_HLEN + 6];
    if next != PROTO_TCP && next != PROTO_UDP {
        if is_extension(next) {
            maps::count_passed(PASS_IPV6_EXT);
        }
        return None;
    }
    // A payload length that cannot hold the L4 header, or claims more than
    // the frame has: a bogus packet the stack drops; leave it untouched. (0
    // is what BIG TCP uses with a jumbo option, which is an extension
    // header, so it does not get here.)
    let payload = u16::from_be_bytes([h[ETH_HLEN + 4], h[ETH_HLEN + 5]]) as usize;
    let l4_min = if next == PROTO_TCP { 20 } else { 8 };
    if payload < l4_min || L4_OFF6 + payload > len {
        return None;
    }
    Some(next)
}

#[inline(always)]
fn addr<const N: usize>(h: &[u8; N], off: usize) -> [u8; 16] {
    let mut a = [0u8; 16];
    let mut i = 0;
    while i < 16 {
        a[i] = h[off + i];
        i += 1;
    }
    a
}

#[inline(always)]
fn flow<const N: usize>(h: &[u8; N], proto: u8, ports: [u8; 4], tcp_flags: u8) -> Flow6 {
    Flow {
        l4_off: L4_OFF6,
        proto,
        saddr: addr(h, IP6_SRC_OFF),
        daddr: addr(h, IP6_DST_OFF),
        sport: u16::from_be_bytes([ports[0], ports[1]]),
        dport: u16::from_be_bytes([ports[2], ports[3]]),
        tcp_flags,
    }
}

/// Parses an IPv6 TCP or UDP packet without extension headers; anything
/// else is None.
#[inline(always)]
pub fn parse_ipv6<P: Packet>(p: &P) -> Option<Flow6> {
    let len = p.len() as usize;
    if direct_access() {
        if let Some(h) = p.head::<UDP6_HEADERS>() {
            // SAFETY: head checked that the bytes are in the packet; nothing
            // writes the packet while the reference lives.
            let h = unsafe { &*h };
            let proto = ip6_header(h, len)?;
            let l4 = L4_OFF6;
            if proto == PROTO_UDP {
                return Some(flow(h, proto, [h[l4], h[l4 + 1], h[l4 + 2], h[l4 + 3]], 0));
            }
            if let Some(t) = p.head::<TCP6_HEADERS>() {
                // SAFETY: as above.
                let t = unsafe { &*t };
                let ports = [t[l4], t[l4 + 1], t[l4 + 2], t[l4 + 3]];
                return Some(flow(t, proto, ports, t[l4 + 13]));
            }
        }
    }
    // The helper path: the fixed header's fields first, the addresses
    // straight into the flow (a copy of all 54 bytes would not fit the stack).
    let h: [u8; ETH_HLEN + 8] = p.load(0).ok()?;
    let proto = ip6_header(&h, len)?;
    let ports: [u8; 4] = p.load(L4_OFF6).ok()?;
    let tcp_flags = if proto == PROTO_TCP {
        p.load::<u8>(L4_OFF6 + 13).ok()?
    } else {
        0
    };
    Some(Flow {
        l4_off: L4_OFF6,
        proto,
        saddr: p.load(IP6_SRC_OFF).ok()?,
        daddr: p.load(IP6_DST_OFF).ok()?,
        sport: u16::from_be_bytes([ports[0], ports[1]]),
        dport: u16::from_be_bytes([ports[2], ports[3]]),
        tcp_flags,
    })
}
