//! Conntrack entries: a forward entry pins a flow to its backend, a reply
//! entry drives reverse NAT of the backend's answers.
use aya_ebpf::helpers::bpf_ktime_get_ns;
use lb_common::{Backend, CtKey, CtValue, CT_FLAG_CLOSING, CT_FORWARD, CT_REPLY};

const TCP_FIN: u8 = 0x01;
const TCP_RST: u8 = 0x04;

use crate::{maps::CT, parse::Flow};

#[inline(always)]
pub fn key(flow: &Flow) -> CtKey {
    CtKey {
        saddr: flow.saddr,
        daddr: flow.daddr,
        sport: flow.sport,
        dport: flow.dport,
        proto: flow.proto,
        _pad: [0; 3],
    }
}

#[inline(always)]
pub fn now() -> u64 {
    // SAFETY: helper without preconditions.
    unsafe { bpf_ktime_get_ns() }
}

#[inline(always)]
pub fn lookup(key: &CtKey) -> Option<CtValue> {
    // SAFETY: the value is copied out at once.
    unsafe { CT.get(key).copied() }
}

/// FIN or RST: the flow is closing.
#[inline(always)]
fn closing(flow: &Flow) -> u8 {
    if flow.tcp_flags & (TCP_FIN | TCP_RST) != 0 {
        CT_FLAG_CLOSING
    } else {
        0
    }
}

/// Refreshes an entry for a packet of `flow`, marking it closing on FIN/RST.
#[inline(always)]
pub fn touch(key: &CtKey, mut value: CtValue, flow: &Flow) {
    value.last_seen_ns = now();
    value.flags |= closing(flow);
    let _ = CT.insert(key, value, 0);
}

/// Records a new flow from `flow`'s client to `backend` of service `service_id`.
#[inline(always)]
pub fn create(flow: &Flow, service_id: u32, backend_id: u32, backend: &Backend) {
    let ts = now();
    let fwd = CtValue {
        backend_id,
        service_id,
        nat_addr: backend.addr,
        nat_port: backend.port,
        kind: CT_FORWARD,
        flags: closing(flow),
        last_seen_ns: ts,
    };
    let _ = CT.insert(key(flow), fwd, 0);
    let reply_key = CtKey {
        saddr: backend.addr,
        daddr: flow.saddr,
        sport: backend.port,
        dport: flow.sport,
        proto: flow.proto,
        _pad: [0; 3],
    };
    let reply = CtValue {
        backend_id,
        service_id,
        nat_addr: flow.daddr,
        nat_port: flow.dport,
        kind: CT_REPLY,
        flags: 0,
        last_seen_ns: ts,
    };
    let _ = CT.insert(reply_key, reply, 0);
}
