//! Conntrack entries: a forward entry pins a flow to its backend, a reply
//! entry drives reverse NAT of the backend's answers.
use aya_ebpf::{bindings::BPF_NOEXIST, helpers::bpf_ktime_get_ns};
use lb_common::{
    flow_hash, Backend, CtKey, CtValue, CT_FLAG_CLOSING, CT_FORWARD, CT_REPLY, SNAT_PORT_MAX,
    SNAT_PORT_MIN, SNAT_PORT_TRIES,
};

const TCP_FIN: u8 = 0x01;
const TCP_RST: u8 = 0x04;
const TCP_SYN: u8 = 0x02;
const TCP_ACK: u8 = 0x10;

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

/// The entry of `key`, in the map. A reference rather than a copy: an
/// Option of a copied value leaves the value's registers undefined when it
/// is None, and LLVM may spill those, which the verifier rejects.
#[inline(always)]
pub fn lookup(key: &CtKey) -> Option<&'static CtValue> {
    // SAFETY: map values stay valid for the program's run (RCU); callers
    // copy the value before using it.
    unsafe { CT.get(key) }
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

/// A SYN on a flow that already closed: the client reuses the port for a new
/// connection, which gets a new backend and a fresh entry (nf_conntrack does
/// the same). Otherwise it would inherit the closing mark and be expired
/// while in use.
#[inline(always)]
pub fn reopens(ct: &CtValue, flow: &Flow) -> bool {
    ct.kind == CT_FORWARD
        && ct.flags & CT_FLAG_CLOSING != 0
        && flow.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN
}

/// How stale an entry's timestamp may get before a packet writes it again
/// (ns); set by the agent at load time from its conntrack timeouts.
#[unsafe(no_mangle)]
static CT_REFRESH_NS: u64 = lb_common::DEFAULT_CT_REFRESH_NS;

#[inline(always)]
fn refresh_ns() -> u64 {
    // SAFETY: a read of a global; volatile so the load-time value is used.
    unsafe { core::ptr::read_volatile(&CT_REFRESH_NS) }
}

/// Refreshes an entry for a packet of `flow`, marking it closing on FIN/RST.
/// An established flow's packets do not write the map each time (a map
/// update costs more than the rest of the path): only when the timestamp is
/// older than the refresh interval, or the flow starts closing.
#[inline(always)]
pub fn touch(key: &CtKey, mut value: CtValue, flow: &Flow) {
    let ts = now();
    let flags = value.flags | closing(flow);
    if flags == value.flags && ts.wrapping_sub(value.last_seen_ns) < refresh_ns() {
        return;
    }
    value.last_seen_ns = ts;
    value.flags = flags;
    let _ = CT.insert(key, value, 0);
}

/// The translation a new flow gets: the backend as destination and, with
/// SNAT, a new source address and port.
pub struct Nat {
    pub backend_id: u32,
    pub backend: Backend,
    /// `[0; 4]` without SNAT.
    pub snat_addr: [u8; 4],
    pub snat_port: u16,
}

/// The reply entry of `flow` translated by `nat`: keyed by the backend's
/// tuple towards the (translated) source; restores the frontend as source
/// and, with SNAT, the client as destination.
#[inline(always)]
fn reply(flow: &Flow, service_id: u32, nat: &Nat, ts: u64) -> (CtKey, CtValue) {
    let snat = nat.snat_addr != [0; 4];
    let key = CtKey {
        saddr: nat.backend.addr,
        daddr: if snat { nat.snat_addr } else { flow.saddr },
        sport: nat.backend.port,
        dport: if snat { nat.snat_port } else { flow.sport },
        proto: flow.proto,
        _pad: [0; 3],
    };
    let value = CtValue {
        backend_id: nat.backend_id,
        service_id,
        nat_addr: flow.daddr,
        nat_port: flow.dport,
        kind: CT_REPLY,
        flags: 0,
        last_seen_ns: ts,
        snat_addr: if snat { flow.saddr } else { [0; 4] },
        snat_port: if snat { flow.sport } else { 0 },
        _pad: 0,
    };
    (key, value)
}

/// Finds a free SNAT port for `flow` towards `nat.backend` from
/// `nat.snat_addr` and claims it by creating the reply entry (BPF_NOEXIST, so
/// two CPUs never take the same port). Tries SNAT_PORT_TRIES ports from a
/// flow-hash start in SNAT_PORT_MIN..=SNAT_PORT_MAX.
#[inline(always)]
pub fn claim_snat_port(flow: &Flow, service_id: u32, nat: &mut Nat) -> bool {
    let range = (SNAT_PORT_MAX - SNAT_PORT_MIN) as u32 + 1;
    let h = flow_hash(flow.saddr, flow.daddr, flow.sport, flow.dport, flow.proto);
    let ts = now();
    for i in 0..SNAT_PORT_TRIES {
        nat.snat_port = SNAT_PORT_MIN + (h.wrapping_add(i.wrapping_mul(7919)) % range) as u16;
        let (key, value) = reply(flow, service_id, nat, ts);
        if CT.insert(&key, value, BPF_NOEXIST as u64).is_ok() {
            return true;
        }
    }
    false
}

/// Records a new flow from `flow`'s client translated by `nat`; with
/// `reply_claimed` its reply entry exists already (claim_snat_port).
#[inline(always)]
pub fn create(flow: &Flow, service_id: u32, nat: &Nat, reply_claimed: bool) {
    let ts = now();
    let fwd = CtValue {
        backend_id: nat.backend_id,
        service_id,
        nat_addr: nat.backend.addr,
        nat_port: nat.backend.port,
        kind: CT_FORWARD,
        flags: closing(flow),
        last_seen_ns: ts,
        snat_addr: nat.snat_addr,
        snat_port: nat.snat_port,
        _pad: 0,
    };
    let _ = CT.insert(key(flow), fwd, 0);
    if !reply_claimed {
        let (key, value) = reply(flow, service_id, nat, ts);
        let _ = CT.insert(key, value, 0);
    }
}
