//! Backend selection for a new flow: returns a slot in 1..=count.
use aya_ebpf::helpers::bpf_get_prandom_u32;
use lb_common::{flow_hash, ServiceValue, ALG_HASH};

use crate::parse::Flow;

#[inline(always)]
pub fn slot(svc: &ServiceValue, flow: &Flow) -> u32 {
    let r = if svc.algorithm == ALG_HASH {
        flow_hash(flow.saddr, flow.daddr, flow.sport, flow.dport, flow.proto)
    } else {
        // SAFETY: helper without preconditions.
        unsafe { bpf_get_prandom_u32() }
    };
    r % svc.count + 1
}
