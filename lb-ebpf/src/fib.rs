//! Forwarding a translated packet straight from XDP: a FIB lookup for its
//! (new) destination gives the egress device and the MAC addresses; the
//! frame leaves through XDP_TX (same device) or bpf_redirect. Anything the
//! lookup cannot resolve (no neighbour entry yet, no route) goes to the
//! stack, which forwards the already translated packet itself.
use core::mem::size_of;

use aya_ebpf::{
    bindings::{bpf_fib_lookup, xdp_action},
    helpers::{bpf_fib_lookup as fib_lookup, bpf_redirect},
    programs::XdpContext,
};

use crate::{
    packet::{Packet, Xdp},
    parse::{ETH_HLEN, IP_DST_OFF, IP_SRC_OFF},
};

const AF_INET: u8 = 2;
const BPF_FIB_LKUP_RET_SUCCESS: i64 = 0;

#[inline(always)]
pub fn forward(ctx: &XdpContext, ifindex: u32) -> u32 {
    forward_or_pass(ctx, ifindex).unwrap_or(xdp_action::XDP_PASS)
}

#[inline(always)]
fn forward_or_pass(ctx: &XdpContext, ifindex: u32) -> Result<u32, i64> {
    let p = Xdp(ctx);
    // SAFETY: an all-zero bpf_fib_lookup is a valid (empty) request.
    let mut params: bpf_fib_lookup = unsafe { core::mem::zeroed() };
    params.family = AF_INET;
    params.l4_protocol = p.load::<u8>(ETH_HLEN + 9)?;
    params.__bindgen_anon_1.tot_len = u16::from_be_bytes(p.load::<[u8; 2]>(ETH_HLEN + 2)?);
    params.ifindex = ifindex;
    params.__bindgen_anon_3.ipv4_src = u32::from_ne_bytes(p.load::<[u8; 4]>(IP_SRC_OFF)?);
    params.__bindgen_anon_4.ipv4_dst = u32::from_ne_bytes(p.load::<[u8; 4]>(IP_DST_OFF)?);
    // SAFETY: params is a valid, writable bpf_fib_lookup of the size given.
    let rc = unsafe {
        fib_lookup(
            ctx.ctx as *mut _,
            &mut params,
            size_of::<bpf_fib_lookup>() as i32,
            0,
        )
    };
    if rc != BPF_FIB_LKUP_RET_SUCCESS {
        return Ok(xdp_action::XDP_PASS);
    }
    let mut macs = [0u8; 12];
    macs[..6].copy_from_slice(&params.dmac);
    macs[6..].copy_from_slice(&params.smac);
    p.store(0, &macs)?;
    if params.ifindex == ifindex {
        return Ok(xdp_action::XDP_TX);
    }
    // SAFETY: helper without memory arguments.
    Ok(unsafe { bpf_redirect(params.ifindex, 0) } as u32)
}
