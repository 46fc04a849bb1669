//! Weir's kernel programs. Entry points stay thin; the logic lives in modules.
#![no_std]
#![no_main]

mod conntrack;
mod ingress;
mod lb;
mod maps;
mod nat;
mod parse;
mod reject;
mod select;

use aya_ebpf::{macros::classifier, programs::TcContext};

/// tc ingress on pod devices (what pods send) and uplinks: service DNAT and
/// reverse NAT of replies.
#[classifier]
pub fn weir_tc_ingress(ctx: TcContext) -> i32 {
    lb::tc_ingress(&ctx)
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
