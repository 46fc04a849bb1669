//! ICMP errors as the load balancer sees them: an error (destination
//! unreachable, packet too big, time exceeded, parameter problem) and the
//! start of the packet it quotes, which carries that packet's addresses and
//! ports. Parsed for IPv4 (ICMP) and IPv6 (ICMPv6, without extension
//! headers in either header), through the load helpers: errors are rare,
//! so they take no fast path.
use lb_common::{PROTO_TCP, PROTO_UDP};

use crate::{
    packet::Packet,
    parse::{Flow, ETH_HLEN, ETH_P_IP, ETH_P_IPV6, IP_DST_OFF, IP_SRC_OFF},
    parse6::{IP6_DST_OFF, IP6_SRC_OFF, L4_OFF6},
};

const PROTO_ICMP: u8 = 1;
const PROTO_ICMPV6: u8 = 58;

/// Where an ICMP error's parts are (offsets from the frame's start) and
/// the tuple of the packet it quotes.
#[derive(Clone, Copy)]
pub struct Quoted<A> {
    /// The error's own addresses.
    pub saddr: A,
    pub daddr: A,
    /// The ICMP header (its checksum at +2).
    pub icmp: usize,
    /// The quoted IP header.
    pub inner_ip: usize,
    /// The quoted packet's addresses and ports; `l4_off` is its L4 header.
    pub inner: Flow<A>,
}

/// Fills the quoted packet's tuple into `q` (its addresses set already):
/// false unless it is TCP or UDP with its ports quoted.
#[inline(always)]
fn inner<P: Packet, A: Copy>(p: &P, q: &mut Quoted<A>, l4_off: usize, proto: u8) -> bool {
    if proto != PROTO_TCP && proto != PROTO_UDP {
        return false;
    }
    let Ok(ports) = p.load::<[u8; 4]>(l4_off) else {
        return false;
    };
    q.inner.l4_off = l4_off;
    q.inner.proto = proto;
    q.inner.sport = u16::from_be_bytes([ports[0], ports[1]]);
    q.inner.dport = u16::from_be_bytes([ports[2], ports[3]]);
    q.inner.tcp_flags = 0;
    true
}

/// An IPv4 ICMP error (types 3, 11, 12) about an IPv4 TCP or UDP packet,
/// parsed into `q` (per-CPU scratch space: the IPv6 one would crowd the
/// stack); false for anything else.
#[inline(always)]
pub fn icmp_error<P: Packet>(p: &P, q: &mut Quoted<[u8; 4]>) -> bool {
    let Ok(h) = p.load::<[u8; ETH_HLEN + 20]>(0) else {
        return false;
    };
    let ihl = ((h[ETH_HLEN] & 0x0f) as usize) * 4;
    if u16::from_be_bytes([h[12], h[13]]) != ETH_P_IP
        || h[ETH_HLEN] >> 4 != 4
        || ihl < 20
        || h[ETH_HLEN + 9] != PROTO_ICMP
        || u16::from_be_bytes([h[ETH_HLEN + 6], h[ETH_HLEN + 7]]) & 0x3fff != 0
    {
        return false;
    }
    let icmp = ETH_HLEN + ihl;
    if !matches!(p.load::<u8>(icmp), Ok(3 | 11 | 12)) {
        return false;
    }
    let inner_ip = icmp + 8;
    let Ok(ih) = p.load::<[u8; 20]>(inner_ip) else {
        return false;
    };
    let inner_ihl = ((ih[0] & 0x0f) as usize) * 4;
    // A later fragment carries no ports.
    if ih[0] >> 4 != 4 || inner_ihl < 20 || u16::from_be_bytes([ih[6], ih[7]]) & 0x1fff != 0 {
        return false;
    }
    let (src, dst) = (IP_SRC_OFF, IP_DST_OFF);
    q.saddr = [h[src], h[src + 1], h[src + 2], h[src + 3]];
    q.daddr = [h[dst], h[dst + 1], h[dst + 2], h[dst + 3]];
    q.icmp = icmp;
    q.inner_ip = inner_ip;
    q.inner.saddr = [ih[12], ih[13], ih[14], ih[15]];
    q.inner.daddr = [ih[16], ih[17], ih[18], ih[19]];
    inner(p, q, inner_ip + inner_ihl, ih[9])
}

/// An ICMPv6 error (types 1 to 4) about an IPv6 TCP or UDP packet (as
/// icmp_error).
#[inline(always)]
pub fn icmp6_error<P: Packet>(p: &P, q: &mut Quoted<[u8; 16]>) -> bool {
    let Ok(h) = p.load::<[u8; ETH_HLEN + 8]>(0) else {
        return false;
    };
    if u16::from_be_bytes([h[12], h[13]]) != ETH_P_IPV6
        || h[ETH_HLEN] >> 4 != 6
        || h[ETH_HLEN + 6] != PROTO_ICMPV6
    {
        return false;
    }
    let icmp = L4_OFF6;
    if !matches!(p.load::<u8>(icmp), Ok(1..=4)) {
        return false;
    }
    let inner_ip = icmp + 8;
    let Ok(ih) = p.load::<[u8; 8]>(inner_ip) else {
        return false;
    };
    if ih[0] >> 4 != 6 {
        return false;
    }
    let addrs = (
        p.load(IP6_SRC_OFF),
        p.load(IP6_DST_OFF),
        p.load(inner_ip + IP6_SRC_OFF - ETH_HLEN),
        p.load(inner_ip + IP6_DST_OFF - ETH_HLEN),
    );
    let (Ok(s), Ok(d), Ok(is), Ok(id)) = addrs else {
        return false;
    };
    (q.saddr, q.daddr, q.inner.saddr, q.inner.daddr) = (s, d, is, id);
    q.icmp = icmp;
    q.inner_ip = inner_ip;
    inner(p, q, inner_ip + 40, ih[6])
}
