//! Forwarding a translated packet straight to its egress device: a FIB
//! lookup for its (new) destination gives the device and the MAC addresses.
//!
//! XDP uses it for SNATed flows (XDP_TX on the same device, else
//! bpf_redirect). tc uses it for reverse-NATed replies: their new source is
//! the frontend, often one of the node's own addresses (a NodePort), which
//! the stack's input path would drop as a martian source, so they must not
//! go through it. Whatever the lookup cannot resolve goes to the stack.
use core::{mem::size_of, ptr};

use aya_ebpf::{
    bindings::{bpf_fib_lookup, xdp_action, TC_ACT_OK},
    helpers::{bpf_fib_lookup as fib_lookup, bpf_redirect, bpf_redirect_neigh},
    programs::{TcContext, XdpContext},
};

use crate::{
    addr::words6,
    packet::{Packet, Tc, Xdp},
    parse::{ETH_HLEN, ETH_P_IPV6, IP_DST_OFF, IP_SRC_OFF},
    parse6::{IP6_DST_OFF, IP6_HLEN, IP6_SRC_OFF},
};

const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;
const BPF_FIB_LKUP_RET_SUCCESS: i64 = 0;
const BPF_FIB_LKUP_RET_NO_NEIGH: i64 = 7;

/// The lookup request for the IPv4 or IPv6 packet in `p`, received on
/// `ifindex`, with its length for the MTU check.
#[inline(always)]
fn request<P: Packet>(p: &P, ifindex: u32) -> Result<bpf_fib_lookup, i64> {
    // SAFETY: an all-zero bpf_fib_lookup is a valid (empty) request.
    let mut params: bpf_fib_lookup = unsafe { core::mem::zeroed() };
    params.ifindex = ifindex;
    if u16::from_be_bytes(p.load::<[u8; 2]>(12)?) == ETH_P_IPV6 {
        params.family = AF_INET6;
        params.l4_protocol = p.load::<u8>(ETH_HLEN + 6)?;
        params.__bindgen_anon_3.ipv6_src = words6(&p.load::<[u8; 16]>(IP6_SRC_OFF)?);
        params.__bindgen_anon_4.ipv6_dst = words6(&p.load::<[u8; 16]>(IP6_DST_OFF)?);
    } else {
        params.family = AF_INET;
        params.l4_protocol = p.load::<u8>(ETH_HLEN + 9)?;
        params.__bindgen_anon_3.ipv4_src = u32::from_ne_bytes(p.load::<[u8; 4]>(IP_SRC_OFF)?);
        params.__bindgen_anon_4.ipv4_dst = u32::from_ne_bytes(p.load::<[u8; 4]>(IP_DST_OFF)?);
    }
    Ok(params)
}

/// The IP packet's length, for the FIB's MTU check (XDP frames are never
/// GSO, so their length is what goes on the wire).
#[inline(always)]
fn ip_len<P: Packet>(p: &P, family: u8) -> Result<u16, i64> {
    if family == AF_INET6 {
        let payload = u16::from_be_bytes(p.load::<[u8; 2]>(ETH_HLEN + 4)?);
        Ok(payload.saturating_add(IP6_HLEN as u16))
    } else {
        Ok(u16::from_be_bytes(p.load::<[u8; 2]>(ETH_HLEN + 2)?))
    }
}

/// Writes the looked-up MAC addresses into the Ethernet header.
#[inline(always)]
fn set_macs<P: Packet>(p: &P, params: &bpf_fib_lookup) -> Result<(), i64> {
    let mut macs = [0u8; 12];
    macs[..6].copy_from_slice(&params.dmac);
    macs[6..].copy_from_slice(&params.smac);
    p.store(0, &macs)
}

/// The XDP action that sends the packet on, or None when the FIB cannot
/// resolve it (no route, no neighbour entry yet).
#[inline(always)]
pub fn xdp_forward(ctx: &XdpContext, ifindex: u32) -> Option<u32> {
    let p = Xdp(ctx);
    let mut params = request(&p, ifindex).ok()?;
    // The MTU check needs the packet's length.
    if let Ok(len) = ip_len(&p, params.family) {
        params.__bindgen_anon_1.tot_len = len;
    }
    // SAFETY: params is a valid, writable bpf_fib_lookup of the size given.
    let rc = unsafe {
        fib_lookup(
            ctx.ctx as *mut _,
            &mut params,
            size_of::<bpf_fib_lookup>() as i32,
            0,
        )
    };
    if rc != BPF_FIB_LKUP_RET_SUCCESS || set_macs(&p, &params).is_err() {
        return None;
    }
    if params.ifindex == ifindex {
        return Some(xdp_action::XDP_TX);
    }
    // SAFETY: helper without memory arguments.
    Some(unsafe { bpf_redirect(params.ifindex, 0) as u32 })
}

#[inline(always)]
pub fn tc_forward(ctx: &TcContext) -> i32 {
    let p = Tc(ctx);
    // SAFETY: the skb pointer is valid for the program's run.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    let Ok(mut params) = request(&p, ifindex) else {
        return TC_ACT_OK as i32;
    };
    // SAFETY: params is a valid, writable bpf_fib_lookup of the size given.
    let rc = unsafe {
        fib_lookup(
            ctx.skb.skb as *mut _,
            &mut params,
            size_of::<bpf_fib_lookup>() as i32,
            0,
        )
    };
    match rc {
        BPF_FIB_LKUP_RET_SUCCESS if set_macs(&p, &params).is_ok() => {
            // SAFETY: helper without memory arguments.
            unsafe { bpf_redirect(params.ifindex, 0) as i32 }
        }
        // The kernel resolves the neighbour and fills in the addresses.
        // SAFETY: a null neighbour means "use the FIB's next hop".
        BPF_FIB_LKUP_RET_NO_NEIGH => unsafe {
            bpf_redirect_neigh(params.ifindex, ptr::null_mut(), 0, 0) as i32
        },
        _ => TC_ACT_OK as i32,
    }
}
