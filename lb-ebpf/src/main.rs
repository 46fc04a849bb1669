//! Weir's kernel programs. Entry points stay thin; the logic lives in modules.
#![no_std]
#![no_main]
// Locked adds for the shared service counters (maps.rs).
#![feature(core_intrinsics)]
#![allow(internal_features)]

mod addr;
mod fib;
mod ingress;
mod maps;
mod packet;
mod parse;
mod parse6;
mod quoted;
mod reject;
mod reject6;
mod sock;
mod time;
mod v4;
mod v6;
mod verdict;

use aya_ebpf::{
    bindings::xdp_action,
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
};
use packet::{Packet, Tc, Xdp};
use parse::ETH_P_IPV6;

/// Whether the frame carries IPv6 (its ethertype); everything else takes
/// the IPv4 path, which passes what is not IPv4.
#[inline(always)]
fn is_ipv6<P: Packet>(p: &P) -> bool {
    let ethertype = match p.head::<14>() {
        // SAFETY: head checked that the bytes are in the packet.
        Some(h) => unsafe { [(*h)[12], (*h)[13]] },
        None => match p.load::<[u8; 2]>(12) {
            Ok(t) => t,
            Err(_) => return false,
        },
    };
    u16::from_be_bytes(ethertype) == ETH_P_IPV6
}

/// tc ingress on pod devices (what pods send): service DNAT and reverse NAT
/// of replies.
#[classifier]
pub fn weir_tc_ingress(ctx: TcContext) -> i32 {
    tc(&ctx, 0)
}

/// tc ingress on uplinks: what the XDP program leaves to the stack (replies
/// to pods, flows whose next hop has no neighbour entry yet), and all of
/// north-south when XDP is off.
#[classifier]
pub fn weir_tc_uplink(ctx: TcContext) -> i32 {
    // SAFETY: the skb pointer is valid for the program's run.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    tc(&ctx, ifindex)
}

/// tc on a pod device (`uplink` 0) or on uplink `uplink`.
#[inline(always)]
fn tc(ctx: &TcContext, uplink: u32) -> i32 {
    if is_ipv6(&Tc(ctx)) {
        v6::entry::tc(ctx.skb.skb, uplink)
    } else {
        v4::entry::tc(ctx.skb.skb, uplink)
    }
}

/// XDP on uplinks: NodePort, LoadBalancer and external IP traffic from
/// external clients, before the stack spends anything on it.
#[xdp]
pub fn weir_xdp(ctx: XdpContext) -> u32 {
    let ifindex = ctx.ingress_ifindex() as u32;
    if is_ipv6(&Xdp(&ctx)) {
        v6::entry::xdp(ctx.ctx, ifindex)
    } else {
        v4::entry::xdp(ctx.ctx, ifindex)
    }
}

/// For the far side of a veth uplink: a veth delivers frames sent into it
/// with XDP_TX or bpf_redirect only when its peer runs an XDP program (the
/// frames wait in the peer's ring until its NAPI is kicked, which only an
/// XDP program does). This one passes everything.
#[xdp]
pub fn weir_xdp_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

/// cgroup connect4: socket-level load balancing of TCP connects and
/// connected UDP sockets (sock.rs).
#[aya_ebpf::macros::cgroup_sock_addr(connect4)]
pub fn weir_sock_connect4(ctx: aya_ebpf::programs::SockAddrContext) -> i32 {
    sock::translate4(&ctx, false)
}

/// cgroup sendmsg4: unconnected UDP sends to a frontend.
#[aya_ebpf::macros::cgroup_sock_addr(sendmsg4)]
pub fn weir_sock_sendmsg4(ctx: aya_ebpf::programs::SockAddrContext) -> i32 {
    sock::translate4(&ctx, true)
}

/// cgroup recvmsg4: UDP replies show the service address they were sent to.
#[aya_ebpf::macros::cgroup_sock_addr(recvmsg4)]
pub fn weir_sock_recvmsg4(ctx: aya_ebpf::programs::SockAddrContext) -> i32 {
    sock::restore4(&ctx)
}

/// cgroup getpeername4: a translated socket's peer is the service address.
#[aya_ebpf::macros::cgroup_sock_addr(getpeername4)]
pub fn weir_sock_getpeername4(ctx: aya_ebpf::programs::SockAddrContext) -> i32 {
    sock::restore4(&ctx)
}

/// cgroup connect6: the same for AF_INET6 sockets (IPv6 frontends, and
/// IPv4 frontends through IPv4-mapped addresses).
#[aya_ebpf::macros::cgroup_sock_addr(connect6)]
pub fn weir_sock_connect6(ctx: aya_ebpf::programs::SockAddrContext) -> i32 {
    sock::translate6(&ctx, false)
}

/// cgroup sendmsg6.
#[aya_ebpf::macros::cgroup_sock_addr(sendmsg6)]
pub fn weir_sock_sendmsg6(ctx: aya_ebpf::programs::SockAddrContext) -> i32 {
    sock::translate6(&ctx, true)
}

/// cgroup recvmsg6.
#[aya_ebpf::macros::cgroup_sock_addr(recvmsg6)]
pub fn weir_sock_recvmsg6(ctx: aya_ebpf::programs::SockAddrContext) -> i32 {
    sock::restore6(&ctx)
}

/// cgroup getpeername6.
#[aya_ebpf::macros::cgroup_sock_addr(getpeername6)]
pub fn weir_sock_getpeername6(ctx: aya_ebpf::programs::SockAddrContext) -> i32 {
    sock::restore6(&ctx)
}

/// sk_lookup in the node's network namespace: the ingress hand-off to the
/// embedded L7 proxy.
#[aya_ebpf::macros::sk_lookup]
pub fn weir_ingress_lookup(ctx: aya_ebpf::programs::SkLookupContext) -> u32 {
    ingress::lookup(&ctx)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
