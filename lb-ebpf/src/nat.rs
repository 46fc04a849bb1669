//! Address and port rewriting with incremental checksum updates through the
//! tc csum helpers (which also handle CHECKSUM_PARTIAL skbs from local sockets).
use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR},
    programs::TcContext,
};
use lb_common::PROTO_UDP;

use crate::parse::{Flow, IP_CSUM_OFF, IP_DST_OFF, IP_SRC_OFF};

/// Rewrites the destination to `addr:port` (DNAT).
#[inline(always)]
pub fn rewrite_dst(ctx: &TcContext, flow: &Flow, addr: [u8; 4], port: u16) -> Result<(), i64> {
    rewrite(ctx, flow, IP_DST_OFF, flow.daddr, addr, 2, flow.dport, port)
}

/// Rewrites the source to `addr:port` (reverse NAT of a reply).
#[inline(always)]
pub fn rewrite_src(ctx: &TcContext, flow: &Flow, addr: [u8; 4], port: u16) -> Result<(), i64> {
    rewrite(ctx, flow, IP_SRC_OFF, flow.saddr, addr, 0, flow.sport, port)
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn rewrite(
    ctx: &TcContext,
    flow: &Flow,
    addr_off: usize,
    old_addr: [u8; 4],
    new_addr: [u8; 4],
    port_off: usize,
    old_port: u16,
    new_port: u16,
) -> Result<(), i64> {
    // A UDP checksum of 0 means "none" and must stay 0.
    let mangled = if flow.proto == PROTO_UDP {
        BPF_F_MARK_MANGLED_0 as u64
    } else {
        0
    };
    let csum_off = flow.l4_csum_off();
    if old_addr != new_addr {
        let from = u32::from_ne_bytes(old_addr) as u64;
        let to = u32::from_ne_bytes(new_addr) as u64;
        ctx.l4_csum_replace(csum_off, from, to, BPF_F_PSEUDO_HDR as u64 | mangled | 4)?;
        ctx.l3_csum_replace(IP_CSUM_OFF, from, to, 4)?;
        ctx.store(addr_off, &new_addr, 0)?;
    }
    if old_port != new_port {
        let from = u16::from_ne_bytes(old_port.to_be_bytes()) as u64;
        let to = u16::from_ne_bytes(new_port.to_be_bytes()) as u64;
        ctx.l4_csum_replace(csum_off, from, to, mangled | 2)?;
        ctx.store(flow.l4_off + port_off, &new_port.to_be_bytes(), 0)?;
    }
    Ok(())
}
