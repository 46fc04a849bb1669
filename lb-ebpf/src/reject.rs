//! Rejecting traffic to a frontend without usable endpoints, as kube-proxy
//! does: a TCP segment is answered with a RST, a UDP datagram with an ICMP
//! port unreachable. The packet is rewritten in place into the answer; the
//! caller sends it back out of the device it came in on.
use lb_common::PROTO_TCP;

use crate::{
    packet::Packet,
    parse::{Flow, ETH_HLEN},
};

const TCP_RST: u8 = 0x04;
const TCP_SYN: u8 = 0x02;
const TCP_FIN: u8 = 0x01;
const TCP_ACK: u8 = 0x10;
const IP_HLEN: usize = 20;
const IPPROTO_ICMP: u8 = 1;

/// What became of a packet to reject.
pub enum Rejected {
    /// Rewritten into the answer: send it back where it came from.
    Answered,
    /// Nothing to answer (a reset, or a datagram with IP options): leave it.
    Ignored,
    /// The packet could not be rewritten: drop it.
    Failed,
}

/// Turns the packet into its rejection.
// The decision and the rewrite return separately (no Result<bool, _>): the
// BPF backend otherwise reads the undefined bool of an Err, and the verifier
// refuses the program.
#[inline(always)]
pub fn reject<P: Packet>(ctx: &P, flow: &Flow) -> Rejected {
    if !answerable(ctx, flow) {
        return Rejected::Ignored;
    }
    let rewritten = if flow.proto == PROTO_TCP {
        tcp_rst(ctx, flow)
    } else {
        icmp_unreachable(ctx, flow)
    };
    match rewritten {
        Ok(()) => Rejected::Answered,
        Err(_) => Rejected::Failed,
    }
}

/// A reset is never answered; a datagram with IP options is left to time out
/// (its quote would need more care).
#[inline(always)]
fn answerable<P: Packet>(ctx: &P, flow: &Flow) -> bool {
    if flow.proto == PROTO_TCP {
        not_a_reset(ctx, flow)
    } else {
        flow.l4_off == ETH_HLEN + IP_HLEN
    }
}

/// Whether the TCP segment of `flow` is not itself a reset.
#[inline(always)]
pub fn not_a_reset<P: Packet, A>(ctx: &P, flow: &Flow<A>) -> bool {
    ctx.load::<u8>(flow.l4_off + 13)
        .is_ok_and(|flags| flags & TCP_RST == 0)
}

/// One's-complement sum of big-endian 16-bit words.
#[inline(always)]
pub fn sum_words(bytes: &[u8], mut acc: u32) -> u32 {
    let mut i = 0;
    while i + 1 < bytes.len() {
        acc += u16::from_be_bytes([bytes[i], bytes[i + 1]]) as u32;
        i += 2;
    }
    acc
}

#[inline(always)]
pub fn fold(mut acc: u32) -> u16 {
    acc = (acc & 0xffff) + (acc >> 16);
    acc = (acc & 0xffff) + (acc >> 16);
    !(acc as u16)
}

/// The answer's Ethernet header: the addresses of `macs` (the packet's
/// destination and source) swapped, and `ethertype`. The ethertype is
/// written too: after a prepend the header is new memory.
#[inline(always)]
pub fn write_eth<P: Packet>(ctx: &P, macs: [u8; 12], ethertype: [u8; 2]) -> Result<(), i64> {
    let mut eth = [0u8; 14];
    eth[..6].copy_from_slice(&macs[6..12]);
    eth[6..12].copy_from_slice(&macs[..6]);
    eth[12..].copy_from_slice(&ethertype);
    ctx.store(0, &eth)
}

/// Ethernet with the addresses swapped + an IPv4 header from `src` to `dst`.
#[inline(always)]
fn write_eth_ip<P: Packet>(
    ctx: &P,
    macs: [u8; 12],
    proto: u8,
    total_len: u16,
    src: [u8; 4],
    dst: [u8; 4],
) -> Result<(), i64> {
    write_eth(ctx, macs, [0x08, 0x00])?;
    let len = total_len.to_be_bytes();
    let mut ip = [
        0x45, 0, len[0], len[1], 0, 0, 0x40, 0, 64, proto, 0, 0, src[0], src[1], src[2], src[3],
        dst[0], dst[1], dst[2], dst[3],
    ];
    let csum = fold(sum_words(&ip, 0)).to_be_bytes();
    ip[10] = csum[0];
    ip[11] = csum[1];
    ctx.store(ETH_HLEN, &ip)
}

/// The reset answering a TCP segment whose header is `hdr` and whose L4
/// part (header and data) is `l4_len` bytes, from its destination port back
/// to its source port, without a checksum. RFC 793: with ACK in the segment,
/// SEQ=SEG.ACK; else SEQ=0, ACK=SEG.SEQ+SEG.LEN.
#[inline(always)]
pub fn rst_segment<A>(hdr: &[u8; 20], l4_len: u32, flow: &Flow<A>) -> [u8; 20] {
    let flags = hdr[13];
    let seq = u32::from_be_bytes([hdr[4], hdr[5], hdr[6], hdr[7]]);
    let ack = u32::from_be_bytes([hdr[8], hdr[9], hdr[10], hdr[11]]);
    let doff = ((hdr[12] >> 4) as u32) * 4;
    let mut seg_len = l4_len.saturating_sub(doff);
    if flags & TCP_SYN != 0 {
        seg_len += 1;
    }
    if flags & TCP_FIN != 0 {
        seg_len += 1;
    }
    let (rst_seq, rst_ack, rst_flags) = if flags & TCP_ACK != 0 {
        (ack, 0, TCP_RST)
    } else {
        (0, seq.wrapping_add(seg_len), TCP_RST | TCP_ACK)
    };
    let (sp, dp, s, a) = (
        flow.dport.to_be_bytes(),
        flow.sport.to_be_bytes(),
        rst_seq.to_be_bytes(),
        rst_ack.to_be_bytes(),
    );
    [
        sp[0], sp[1], dp[0], dp[1], s[0], s[1], s[2], s[3], a[0], a[1], a[2], a[3], 0x50,
        rst_flags, 0, 0, 0, 0, 0, 0,
    ]
}

#[inline(always)]
fn tcp_rst<P: Packet>(ctx: &P, flow: &Flow) -> Result<(), i64> {
    let hdr: [u8; 20] = ctx.load(flow.l4_off)?;
    let ip_len = u16::from_be(ctx.load::<u16>(ETH_HLEN + 2)?) as u32;
    let ihl = (flow.l4_off - ETH_HLEN) as u32;
    let mut tcp = rst_segment(&hdr, ip_len.saturating_sub(ihl), flow);
    let macs: [u8; 12] = ctx.load(0)?;
    ctx.resize(ETH_HLEN + IP_HLEN + 20)?;
    write_eth_ip(ctx, macs, PROTO_TCP, 40, flow.daddr, flow.saddr)?;
    let pseudo = sum_words(&flow.daddr, sum_words(&flow.saddr, PROTO_TCP as u32 + 20));
    let csum = fold(sum_words(&tcp, pseudo)).to_be_bytes();
    tcp[16] = csum[0];
    tcp[17] = csum[1];
    ctx.store(ETH_HLEN + IP_HLEN, &tcp)?;
    Ok(())
}

/// ICMP destination unreachable (port) quoting the IP header and 8 bytes.
#[inline(always)]
fn icmp_unreachable<P: Packet>(ctx: &P, flow: &Flow) -> Result<(), i64> {
    let macs: [u8; 12] = ctx.load(0)?;
    let quoted: [u8; 28] = ctx.load(ETH_HLEN)?;
    // Room for the new IP and ICMP headers: in front where the frame has
    // headroom (XDP; a short datagram has no tailroom to grow into there),
    // which leaves the quote in place; else by growing the tail.
    let _ = ctx.prepend(IP_HLEN + 8);
    ctx.resize(ETH_HLEN + IP_HLEN + 8 + 28)?;
    write_eth_ip(
        ctx,
        macs,
        IPPROTO_ICMP,
        (IP_HLEN + 8 + 28) as u16,
        flow.daddr,
        flow.saddr,
    )?;
    let mut icmp = [0u8; 36];
    icmp[0] = 3; // destination unreachable
    icmp[1] = 3; // port unreachable
    icmp[8..].copy_from_slice(&quoted);
    let csum = fold(sum_words(&icmp, 0)).to_be_bytes();
    icmp[2] = csum[0];
    icmp[3] = csum[1];
    ctx.store(ETH_HLEN + IP_HLEN, &icmp)?;
    Ok(())
}
