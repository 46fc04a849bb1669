//! Weir's kernel programs. Entry points stay thin; the logic lives in modules.
#![no_std]
#![no_main]

mod conntrack;
mod fib;
mod ingress;
mod lb;
mod maps;
mod nat;
mod packet;
mod parse;
mod reject;
mod select;
mod sock;

use aya_ebpf::{
    bindings::{xdp_action, TC_ACT_OK, TC_ACT_SHOT},
    helpers::bpf_redirect,
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
};
use lb::{Action, Hook};
use packet::{Tc, Xdp};
use reject::Rejected;

/// tc ingress on pod devices (what pods send): service DNAT and reverse NAT
/// of replies.
#[classifier]
pub fn weir_tc_ingress(ctx: TcContext) -> i32 {
    tc(&ctx, Hook::Pod)
}

/// tc ingress on uplinks: what the XDP program leaves to the stack (replies
/// to pods, flows whose next hop has no neighbour entry yet), and all of
/// north-south when XDP is off.
#[classifier]
pub fn weir_tc_uplink(ctx: TcContext) -> i32 {
    // SAFETY: the skb pointer is valid for the program's run.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    tc(
        &ctx,
        Hook::Uplink {
            ifindex,
            xdp: false,
        },
    )
}

#[inline(always)]
fn tc(ctx: &TcContext, hook: Hook) -> i32 {
    let p = Tc(ctx);
    let v = lb::process(&p, hook);
    match v.action {
        Action::Pass => TC_ACT_OK as i32,
        Action::Forward => fib::tc_forward(ctx),
        Action::Drop => TC_ACT_SHOT as i32,
        Action::Reject => match reject::reject(&p, &v.flow) {
            // Back out of the device it came in on.
            // SAFETY: the skb pointer is valid for the program's run.
            Rejected::Answered => unsafe { bpf_redirect((*ctx.skb.skb).ifindex, 0) as i32 },
            Rejected::Ignored => TC_ACT_OK as i32,
            Rejected::Failed => TC_ACT_SHOT as i32,
        },
    }
}

/// XDP on uplinks: NodePort, LoadBalancer and external IP traffic from
/// external clients, before the stack spends anything on it.
#[xdp]
pub fn weir_xdp(ctx: XdpContext) -> u32 {
    let p = Xdp(&ctx);
    let ifindex = ctx.ingress_ifindex() as u32;
    let v = lb::process(&p, Hook::Uplink { ifindex, xdp: true });
    match v.action {
        Action::Pass => xdp_action::XDP_PASS,
        Action::Drop => xdp_action::XDP_DROP,
        Action::Forward => match fib::xdp_forward(&ctx, ifindex) {
            Some(action) => action,
            // No neighbour entry yet: tc on the uplink translates the packet
            // again from conntrack and lets the kernel resolve the neighbour.
            None => match lb::undo(&p, &v.flow) {
                Ok(()) => xdp_action::XDP_PASS,
                Err(_) => xdp_action::XDP_DROP,
            },
        },
        Action::Reject => match reject::reject(&p, &v.flow) {
            Rejected::Answered => xdp_action::XDP_TX,
            Rejected::Ignored => xdp_action::XDP_PASS,
            Rejected::Failed => xdp_action::XDP_DROP,
        },
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
    sock::translate(&ctx, false)
}

/// cgroup sendmsg4: unconnected UDP sends to a frontend.
#[aya_ebpf::macros::cgroup_sock_addr(sendmsg4)]
pub fn weir_sock_sendmsg4(ctx: aya_ebpf::programs::SockAddrContext) -> i32 {
    sock::translate(&ctx, true)
}

/// cgroup recvmsg4: UDP replies show the service address they were sent to.
#[aya_ebpf::macros::cgroup_sock_addr(recvmsg4)]
pub fn weir_sock_recvmsg4(ctx: aya_ebpf::programs::SockAddrContext) -> i32 {
    sock::restore(&ctx)
}

/// cgroup getpeername4: a translated socket's peer is the service address.
#[aya_ebpf::macros::cgroup_sock_addr(getpeername4)]
pub fn weir_sock_getpeername4(ctx: aya_ebpf::programs::SockAddrContext) -> i32 {
    sock::restore(&ctx)
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
