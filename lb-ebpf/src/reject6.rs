//! Rejecting IPv6 traffic to a frontend without usable endpoints: a TCP
//! segment is answered with a RST, a UDP datagram with an ICMPv6
//! destination unreachable, code 4 (port unreachable), as for IPv4
//! (reject.rs). The packet is rewritten in place into the answer.
use lb_common::PROTO_TCP;

use crate::{
    packet::Packet,
    parse::ETH_HLEN,
    parse6::{Flow6, IP6_HLEN, L4_OFF6},
    reject::{fold, not_a_reset, rst_segment, sum_words, write_eth, Rejected},
};

const IPPROTO_ICMPV6: u8 = 58;
/// What an ICMPv6 error quotes of the packet: its IPv6 header and the first
/// 8 bytes after it (the ports), as the IPv4 answer does. RFC 4443 allows
/// up to the minimum MTU; the ports are what the sender matches on.
const QUOTE: usize = IP6_HLEN + 8;

/// Turns the packet into its rejection (see reject::reject).
#[inline(always)]
pub fn reject<P: Packet>(ctx: &P, flow: &Flow6) -> Rejected {
    let rewritten = if flow.proto == PROTO_TCP {
        if !not_a_reset(ctx, flow) {
            return Rejected::Ignored;
        }
        tcp_rst(ctx, flow)
    } else {
        icmp6_unreachable(ctx, flow)
    };
    match rewritten {
        Ok(()) => Rejected::Answered,
        Err(_) => Rejected::Failed,
    }
}

/// The pseudo-header sum (RFC 8200 section 8.1) of `len` bytes of `next`
/// from `src` to `dst`.
#[inline(always)]
fn pseudo(src: &[u8; 16], dst: &[u8; 16], len: u32, next: u8) -> u32 {
    sum_words(dst, sum_words(src, len + next as u32))
}

/// Ethernet with the addresses swapped + an IPv6 header from `src` to `dst`.
#[inline(always)]
fn write_eth_ip6<P: Packet>(
    ctx: &P,
    macs: [u8; 12],
    next: u8,
    payload_len: u16,
    src: [u8; 16],
    dst: [u8; 16],
) -> Result<(), i64> {
    write_eth(ctx, macs, [0x86, 0xdd])?;
    let len = payload_len.to_be_bytes();
    let mut ip = [0u8; IP6_HLEN];
    ip[0] = 0x60;
    ip[4] = len[0];
    ip[5] = len[1];
    ip[6] = next;
    ip[7] = 64;
    ip[8..24].copy_from_slice(&src);
    ip[24..40].copy_from_slice(&dst);
    ctx.store(ETH_HLEN, &ip)
}

#[inline(always)]
fn tcp_rst<P: Packet>(ctx: &P, flow: &Flow6) -> Result<(), i64> {
    let hdr: [u8; 20] = ctx.load(flow.l4_off)?;
    let payload = u16::from_be(ctx.load::<u16>(ETH_HLEN + 4)?) as u32;
    let mut tcp = rst_segment(&hdr, payload, flow);
    let macs: [u8; 12] = ctx.load(0)?;
    ctx.resize(L4_OFF6 + 20)?;
    write_eth_ip6(ctx, macs, PROTO_TCP, 20, flow.daddr, flow.saddr)?;
    let sum = pseudo(&flow.daddr, &flow.saddr, 20, PROTO_TCP);
    let csum = fold(sum_words(&tcp, sum)).to_be_bytes();
    tcp[16] = csum[0];
    tcp[17] = csum[1];
    ctx.store(L4_OFF6, &tcp)
}

/// ICMPv6 destination unreachable (port) quoting the IPv6 header and 8 bytes.
#[inline(always)]
fn icmp6_unreachable<P: Packet>(ctx: &P, flow: &Flow6) -> Result<(), i64> {
    let macs: [u8; 12] = ctx.load(0)?;
    let quoted: [u8; QUOTE] = ctx.load(ETH_HLEN)?;
    // Room for the new IPv6 and ICMPv6 headers, as for IPv4.
    let _ = ctx.prepend(IP6_HLEN + 8);
    ctx.resize(L4_OFF6 + 8 + QUOTE)?;
    let len = (8 + QUOTE) as u16;
    write_eth_ip6(ctx, macs, IPPROTO_ICMPV6, len, flow.daddr, flow.saddr)?;
    let mut icmp = [0u8; 8 + QUOTE];
    icmp[0] = 1; // destination unreachable
    icmp[1] = 4; // port unreachable
    icmp[8..].copy_from_slice(&quoted);
    let sum = pseudo(&flow.daddr, &flow.saddr, len as u32, IPPROTO_ICMPV6);
    let csum = fold(sum_words(&icmp, sum)).to_be_bytes();
    icmp[2] = csum[0];
    icmp[3] = csum[1];
    ctx.store(L4_OFF6, &icmp)
}
