//! The tc and XDP paths of one family (see v4.rs): the phases of lb.rs,
//! then pass, forward, drop or reject.
//!
//! Each phase is a BPF subprogram of its own (not inlined), called in turn
//! from here with the path's `State` in per-CPU scratch space
//! (maps::scratch): a program's stack is 512 bytes along its whole call
//! chain, and inlined into one function the phases' stack slots add up past
//! that for IPv6. So the chain is this small frame plus one phase's (and
//! the log's, with --bpf-log). Subprograms take the context pointer itself
//! (what the verifier tracks across calls) and a pointer to the state.
use aya_ebpf::{
    bindings::{__sk_buff, xdp_action, xdp_md, TC_ACT_OK, TC_ACT_SHOT},
    helpers::bpf_redirect,
    programs::{TcContext, XdpContext},
};

use crate::{
    fib, maps,
    packet::{Tc, Xdp},
    reject::Rejected,
    verdict::{Action, Hook},
};

use super::{
    fam,
    icmp::{self, Towards},
    lb::{self, State, Step},
};

/// The hook of a tc program: a pod device (`uplink` 0) or an uplink.
#[inline(always)]
fn tc_hook(uplink: u32) -> Hook {
    if uplink == 0 {
        Hook::Pod
    } else {
        Hook::Uplink {
            ifindex: uplink,
            xdp: false,
        }
    }
}

/// Parses a tc packet into `st` and decides; not TCP or UDP: Other.
#[inline(never)]
fn tc_decide(skb: *mut __sk_buff, uplink: u32, st: &mut State) -> Step {
    let ctx = TcContext::new(skb);
    let p = Tc(&ctx);
    let Some(flow) = fam::parse(&p) else {
        return Step::Other;
    };
    st.flow = flow;
    lb::decide(&p, tc_hook(uplink), st)
}

#[inline(never)]
fn choose(uplink: u32, xdp: bool, st: &mut State) -> Step {
    let hook = if xdp {
        Hook::Uplink {
            ifindex: uplink,
            xdp,
        }
    } else {
        tc_hook(uplink)
    };
    lb::choose(hook, st)
}

#[inline(never)]
fn claim(st: &mut State) -> Step {
    lb::claim(st)
}

#[inline(never)]
fn tc_create(skb: *mut __sk_buff, uplink: u32, st: &State) -> Step {
    let ctx = TcContext::new(skb);
    lb::create(&Tc(&ctx), tc_hook(uplink), st)
}

#[inline(never)]
fn tc_translate(skb: *mut __sk_buff, st: &State) -> bool {
    let ctx = TcContext::new(skb);
    lb::translate(&Tc(&ctx), st)
}

/// A tc packet that is not TCP or UDP: an ICMP error about a tracked flow
/// is translated (icmp.rs), in two phases.
#[inline(never)]
fn tc_icmp_find(skb: *mut __sk_buff) -> Towards {
    icmp::find(&Tc(&TcContext::new(skb)))
}

#[inline(never)]
fn tc_icmp_to_client(skb: *mut __sk_buff) -> Action {
    icmp::to_client(&Tc(&TcContext::new(skb)))
}

#[inline(never)]
fn tc_icmp_to_backend(skb: *mut __sk_buff) -> Action {
    icmp::to_backend(&Tc(&TcContext::new(skb)))
}

#[inline(always)]
fn tc_other(skb: *mut __sk_buff) -> Action {
    match tc_icmp_find(skb) {
        Towards::Nowhere => Action::Pass,
        Towards::Client => tc_icmp_to_client(skb),
        Towards::Backend => tc_icmp_to_backend(skb),
    }
}

/// A translated tc packet straight to its egress device (fib.rs).
#[inline(never)]
fn tc_forward(skb: *mut __sk_buff) -> i32 {
    fib::tc_forward(&TcContext::new(skb))
}

/// Answers a tc packet for a frontend without endpoints.
#[inline(never)]
fn tc_reject(skb: *mut __sk_buff, st: &State) -> i32 {
    let ctx = TcContext::new(skb);
    match fam::reject(&Tc(&ctx), &st.flow) {
        // Back out of the device it came in on.
        // SAFETY: the skb pointer is valid for the program's run.
        Rejected::Answered => unsafe { bpf_redirect((*skb).ifindex, 0) as i32 },
        Rejected::Ignored => TC_ACT_OK as i32,
        Rejected::Failed => TC_ACT_SHOT as i32,
    }
}

/// The phases after `decide` for a new flow, and the translation: the
/// action left to take.
#[inline(always)]
fn finish(
    mut step: Step,
    st: &mut State,
    create: impl FnOnce(&State) -> Step,
    translate: impl FnOnce(&State) -> bool,
    uplink: u32,
    xdp: bool,
) -> Action {
    if step == Step::New {
        step = choose(uplink, xdp, st);
    }
    if step == Step::Claim {
        step = claim(st);
    }
    if step == Step::Create {
        step = create(st);
    }
    let Step::Done(action) = step else {
        return Action::Pass;
    };
    let translated = matches!(action, Action::Pass | Action::Forward) && st.t.rewrite != 0;
    if translated && !translate(st) {
        return Action::Pass;
    }
    action
}

/// The whole tc path of one family: `uplink` is 0 on pod devices.
#[inline(always)]
pub fn tc(skb: *mut __sk_buff, uplink: u32) -> i32 {
    let Some(st) = maps::scratch::<State>() else {
        return TC_ACT_OK as i32;
    };
    st.reset();
    let step = tc_decide(skb, uplink, st);
    if step == Step::Other {
        return match tc_other(skb) {
            Action::Drop => TC_ACT_SHOT as i32,
            _ => TC_ACT_OK as i32,
        };
    }
    let create = |st: &State| tc_create(skb, uplink, st);
    let translate = |st: &State| tc_translate(skb, st);
    match finish(step, st, create, translate, uplink, false) {
        Action::Pass => TC_ACT_OK as i32,
        Action::Drop => TC_ACT_SHOT as i32,
        Action::Forward => tc_forward(skb),
        Action::Reject => tc_reject(skb, st),
    }
}

/// Parses an XDP frame into `st` and decides (as `tc_decide`).
#[inline(never)]
fn xdp_decide(md: *mut xdp_md, ifindex: u32, st: &mut State) -> Step {
    let ctx = XdpContext::new(md);
    let p = Xdp(&ctx);
    let Some(flow) = fam::parse(&p) else {
        return Step::Other;
    };
    st.flow = flow;
    lb::decide(&p, Hook::Uplink { ifindex, xdp: true }, st)
}

#[inline(never)]
fn xdp_create(md: *mut xdp_md, ifindex: u32, st: &State) -> Step {
    let ctx = XdpContext::new(md);
    lb::create(&Xdp(&ctx), Hook::Uplink { ifindex, xdp: true }, st)
}

#[inline(never)]
fn xdp_translate(md: *mut xdp_md, st: &State) -> bool {
    let ctx = XdpContext::new(md);
    lb::translate(&Xdp(&ctx), st)
}

/// A translated frame straight to its egress device, or None when the FIB
/// cannot resolve it yet.
#[inline(never)]
fn xdp_forward(md: *mut xdp_md, ifindex: u32) -> u32 {
    fib::xdp_forward(&XdpContext::new(md), ifindex).unwrap_or(u32::MAX)
}

/// Undoes the translation, for tc on the uplink to translate the packet
/// again from conntrack while the kernel resolves the neighbour.
#[inline(never)]
fn xdp_undo(md: *mut xdp_md, st: &State) -> u32 {
    let ctx = XdpContext::new(md);
    match lb::undo(&Xdp(&ctx), &st.flow) {
        Ok(()) => xdp_action::XDP_PASS,
        Err(_) => xdp_action::XDP_DROP,
    }
}

/// A frame that is not TCP or UDP (as tc_other).
#[inline(never)]
fn xdp_icmp_find(md: *mut xdp_md) -> Towards {
    icmp::find(&Xdp(&XdpContext::new(md)))
}

#[inline(never)]
fn xdp_icmp_to_client(md: *mut xdp_md) -> Action {
    icmp::to_client(&Xdp(&XdpContext::new(md)))
}

#[inline(never)]
fn xdp_icmp_to_backend(md: *mut xdp_md) -> Action {
    icmp::to_backend(&Xdp(&XdpContext::new(md)))
}

#[inline(always)]
fn xdp_other(md: *mut xdp_md) -> Action {
    match xdp_icmp_find(md) {
        Towards::Nowhere => Action::Pass,
        Towards::Client => xdp_icmp_to_client(md),
        Towards::Backend => xdp_icmp_to_backend(md),
    }
}

/// Answers a frame for a frontend without endpoints.
#[inline(never)]
fn xdp_reject(md: *mut xdp_md, st: &State) -> u32 {
    let ctx = XdpContext::new(md);
    match fam::reject(&Xdp(&ctx), &st.flow) {
        Rejected::Answered => xdp_action::XDP_TX,
        Rejected::Ignored => xdp_action::XDP_PASS,
        Rejected::Failed => xdp_action::XDP_DROP,
    }
}

/// The whole XDP path of one family.
#[inline(always)]
pub fn xdp(md: *mut xdp_md, ifindex: u32) -> u32 {
    let Some(st) = maps::scratch::<State>() else {
        return xdp_action::XDP_PASS;
    };
    st.reset();
    let step = xdp_decide(md, ifindex, st);
    if step == Step::Other {
        return match xdp_other(md) {
            Action::Drop => xdp_action::XDP_DROP,
            _ => xdp_action::XDP_PASS,
        };
    }
    let create = |st: &State| xdp_create(md, ifindex, st);
    let translate = |st: &State| xdp_translate(md, st);
    match finish(step, st, create, translate, ifindex, true) {
        Action::Pass => xdp_action::XDP_PASS,
        Action::Drop => xdp_action::XDP_DROP,
        Action::Forward => match xdp_forward(md, ifindex) {
            u32::MAX => xdp_undo(md, st),
            action => action,
        },
        Action::Reject => xdp_reject(md, st),
    }
}
