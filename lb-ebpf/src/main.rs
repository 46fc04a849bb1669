//! Weir's kernel programs. Entry points stay thin; the logic lives in modules.
#![no_std]
#![no_main]

mod conntrack;
mod fib;
mod lb;
mod maps;
mod nat;
mod packet;
mod parse;
mod reject;
mod select;

use aya_ebpf::{
    bindings::{xdp_action, TC_ACT_OK, TC_ACT_SHOT},
    helpers::bpf_redirect,
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
};
use lb::{Hook, Verdict};
use packet::{Tc, Xdp};

/// tc ingress on pod devices (what pods send) and uplinks: service DNAT and
/// reverse NAT of replies.
#[classifier]
pub fn weir_tc_ingress(ctx: TcContext) -> i32 {
    let p = Tc(&ctx);
    match lb::process(&p, Hook::Tc) {
        Verdict::Pass => TC_ACT_OK as i32,
        Verdict::Forward => fib::tc_forward(&ctx),
        Verdict::Drop => TC_ACT_SHOT as i32,
        Verdict::Reject(flow) => match reject::reject(&p, &flow) {
            // Back out of the device it came in on.
            // SAFETY: the skb pointer is valid for the program's run.
            Ok(true) => unsafe { bpf_redirect((*ctx.skb.skb).ifindex, 0) as i32 },
            Ok(false) => TC_ACT_OK as i32,
            Err(_) => TC_ACT_SHOT as i32,
        },
    }
}

/// XDP on uplinks: NodePort, LoadBalancer and external IP traffic from
/// external clients, before the stack spends anything on it.
#[xdp]
pub fn weir_xdp(ctx: XdpContext) -> u32 {
    let p = Xdp(&ctx);
    let ifindex = ctx.ingress_ifindex() as u32;
    match lb::process(&p, Hook::Xdp(ifindex)) {
        Verdict::Pass => xdp_action::XDP_PASS,
        Verdict::Drop => xdp_action::XDP_DROP,
        Verdict::Forward => fib::xdp_forward(&ctx, ifindex),
        Verdict::Reject(flow) => match reject::reject(&p, &flow) {
            Ok(true) => xdp_action::XDP_TX,
            Ok(false) => xdp_action::XDP_PASS,
            Err(_) => xdp_action::XDP_DROP,
        },
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
