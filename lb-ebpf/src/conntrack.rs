//! Conntrack entries: a forward entry pins a flow to its backend, a reply
//! entry drives reverse NAT of the backend's answers.
use aya_ebpf::bindings::BPF_NOEXIST;
use lb_common::{
    CT_FLAG_CLOSING, CT_FORWARD, CT_REPLY, SNAT_PORT_MAX, SNAT_PORT_MIN, SNAT_PORT_TRIES,
};

const TCP_FIN: u8 = 0x01;
const TCP_RST: u8 = 0x04;
const TCP_SYN: u8 = 0x02;
const TCP_ACK: u8 = 0x10;

pub use crate::time::now;

use super::fam::{flow_hash, Addr, CtKey, CtValue, Flow, CT, ZERO};

/// The key of a tuple. Built on a zeroed key rather than with `_pad: [0; 3]`:
/// LLVM turns that 3-byte array into a call to memset, in every packet's path.
#[inline(always)]
pub fn tuple(saddr: Addr, daddr: Addr, sport: u16, dport: u16, proto: u8) -> CtKey {
    // SAFETY: the key is plain integers; all zero is a valid value.
    let mut k: CtKey = unsafe { core::mem::zeroed() };
    k.saddr = saddr;
    k.daddr = daddr;
    k.sport = sport;
    k.dport = dport;
    k.proto = proto;
    k
}

#[inline(always)]
pub fn key(flow: &Flow) -> CtKey {
    tuple(flow.saddr, flow.daddr, flow.sport, flow.dport, flow.proto)
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

use crate::time::refresh_ns;

/// Refreshes an entry for a packet of `flow`, marking it closing on FIN/RST.
/// An established flow's packets do not write the map each time (a map
/// update costs more than the rest of the path): only when the timestamp is
/// older than the refresh interval, or the flow starts closing, and then in
/// place (the lookup already marked the entry recently used).
#[inline(always)]
pub fn touch(key: &CtKey, value: &CtValue, flow: &Flow) {
    let ts = now();
    let flags = value.flags | closing(flow);
    if flags == value.flags && ts.wrapping_sub(value.last_seen_ns) < refresh_ns() {
        return;
    }
    if let Some(entry) = CT.get_ptr_mut(key) {
        // SAFETY: a map value, valid for the program's run; a racing CPU
        // writes the same fields with as fresh a time.
        unsafe {
            (*entry).last_seen_ns = ts;
            (*entry).flags = flags;
        }
    }
}

/// A packet's translation: the new destination and source, which of them
/// are written (`rewrite`, TRANSLATE_* bits), and for a new flow the
/// backend chosen. Carried between the phases of a packet's path (lb.rs).
#[derive(Clone, Copy, Default)]
#[repr(C)]
pub struct Translation {
    pub dst_addr: Addr,
    /// The SNAT (or hairpin) source of a new flow; for a reply, the client.
    pub src_addr: Addr,
    pub dst_port: u16,
    pub src_port: u16,
    pub backend_id: u32,
    pub rewrite: u8,
    /// A new flow's backend's state bits (lb_common::BACKEND_*).
    pub backend_state: u8,
    /// A new flow's reply entry exists already (claim_snat_port made it).
    pub claimed: bool,
}

pub const TRANSLATE_DST: u8 = 1;
pub const TRANSLATE_SRC: u8 = 2;

impl Translation {
    /// Whether the source is rewritten too (SNAT, hairpin, or a reply to
    /// an SNATed flow).
    #[inline(always)]
    pub fn snat(&self) -> bool {
        self.rewrite & TRANSLATE_SRC != 0
    }
}

/// The reply entry of `flow` translated by `t`: keyed by the backend's
/// tuple towards the (translated) source; restores the frontend as source
/// and, with SNAT, the client as destination.
#[inline(always)]
fn reply(flow: &Flow, service_id: u32, t: &Translation, ts: u64) -> (CtKey, CtValue) {
    let snat = t.snat();
    let key = tuple(
        t.dst_addr,
        if snat { t.src_addr } else { flow.saddr },
        t.dst_port,
        if snat { t.src_port } else { flow.sport },
        flow.proto,
    );
    let value = CtValue {
        backend_id: t.backend_id,
        service_id,
        nat_addr: flow.daddr,
        nat_port: flow.dport,
        kind: CT_REPLY,
        flags: 0,
        last_seen_ns: ts,
        snat_addr: if snat { flow.saddr } else { ZERO },
        snat_port: if snat { flow.sport } else { 0 },
        _pad: 0,
    };
    (key, value)
}

/// Finds a free SNAT port for `flow` towards the backend of `t` from
/// `t.src_addr` and claims it by creating the reply entry (BPF_NOEXIST, so
/// two CPUs never take the same port). Tries SNAT_PORT_TRIES ports from a
/// flow-hash start in SNAT_PORT_MIN..=SNAT_PORT_MAX.
#[inline(always)]
pub fn claim_snat_port(flow: &Flow, service_id: u32, t: &mut Translation) -> bool {
    let range = (SNAT_PORT_MAX - SNAT_PORT_MIN) as u32 + 1;
    let h = flow_hash(flow.saddr, flow.daddr, flow.sport, flow.dport, flow.proto);
    let ts = now();
    for i in 0..SNAT_PORT_TRIES {
        t.src_port = SNAT_PORT_MIN + (h.wrapping_add(i.wrapping_mul(7919)) % range) as u16;
        let (key, value) = reply(flow, service_id, t, ts);
        if CT.insert(&key, value, BPF_NOEXIST as u64).is_ok() {
            t.claimed = true;
            return true;
        }
    }
    false
}

/// Records a new flow from `flow`'s client translated by `t`; with
/// `t.claimed` its reply entry exists already (claim_snat_port).
#[inline(always)]
pub fn create(flow: &Flow, service_id: u32, t: &Translation) {
    let ts = now();
    let fwd = CtValue {
        backend_id: t.backend_id,
        service_id,
        nat_addr: t.dst_addr,
        nat_port: t.dst_port,
        kind: CT_FORWARD,
        flags: closing(flow),
        last_seen_ns: ts,
        snat_addr: if t.snat() { t.src_addr } else { ZERO },
        snat_port: if t.snat() { t.src_port } else { 0 },
        _pad: 0,
    };
    let _ = CT.insert(key(flow), fwd, 0);
    if !t.claimed {
        let (key, value) = reply(flow, service_id, t, ts);
        let _ = CT.insert(key, value, 0);
    }
}
