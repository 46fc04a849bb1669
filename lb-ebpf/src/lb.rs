//! The service load-balancing decision for one packet, shared by the tc and
//! XDP entry points (which differ only in what they do with the verdict).
//! Written once for both address families: each family module (v4.rs,
//! v6.rs) includes this file with its own `fam` (types, maps, parsing).
use lb_common::{
    filter::{filter_bit, Half},
    ServiceValue, BACKEND_LOCAL, CT_REPLY, DROP_NO_ENDPOINT, DROP_NO_LOCAL_ENDPOINT,
    DROP_REWRITE_FAILED, DROP_SNAT_FAILED, DROP_SOURCE_RANGE, EVENT_DROP, EVENT_FLOW,
    SCOPE_EXTERNAL, SCOPE_INTERNAL, SVC_FLAG_DROP_IF_EMPTY, SVC_FLAG_EXTERNAL,
    SVC_FLAG_HAS_INTERNAL, SVC_FLAG_SOURCE_RANGES,
};

use aya_log_ebpf::{debug, info};

pub use crate::verdict::{Action, Hook};
use crate::{addr::Addr as _, maps, packet::Packet};

use super::{
    conntrack::{self, Translation, TRANSLATE_DST, TRANSLATE_SRC},
    events,
    fam::{self, Flow, ServiceKey, BACKENDS, HAIRPIN, SERVICES, ZERO},
    nat, select,
};

/// A drop reason's name, for log messages (the names of DROP_REASON_NAMES;
/// a match, since a table of string pointers cannot be relocated in BPF).
#[inline(always)]
fn reason_name(reason: u32) -> &'static str {
    match reason {
        DROP_NO_ENDPOINT => "no_endpoint",
        DROP_REWRITE_FAILED => "rewrite_failed",
        DROP_SOURCE_RANGE => "source_range",
        DROP_NO_LOCAL_ENDPOINT => "no_local_endpoint",
        DROP_SNAT_FAILED => "snat_failed",
        _ => "other",
    }
}

/// Counts and reports a drop (or reject) of `flow` for `reason`, and logs it
/// when the agent loaded the programs with `--bpf-log` (otherwise the log
/// level is 0 in read-only data, and the verifier removes the log code).
#[inline(always)]
fn dropped(flow: &Flow, service_id: u32, reason: u32) {
    maps::count_drop(reason);
    events::report(flow, EVENT_DROP, reason as u8, service_id, ZERO, 0, 0);
    // aya-log-ebpf 0.2 evaluates its context argument and nothing more.
    info!(
        &(),
        "drop {}: {:i}:{} -> {:i}:{} proto {} service {}",
        reason_name(reason),
        flow.saddr,
        flow.sport,
        flow.daddr,
        flow.dport,
        flow.proto,
        service_id
    );
}

/// Where a packet's path goes next. The path is cut into phases, each a
/// BPF subprogram that entry.rs calls in turn: a program's stack is 512
/// bytes along its whole call chain, and the IPv6 path's phases do not fit
/// in one frame together. `State` carries what they found from one to the
/// next, in the entry point's frame.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Done: act on the packet (after writing the translation, if any).
    Done(Action),
    /// A new flow to the service in `State::svc`: choose a backend.
    New,
    /// Claim an SNAT port towards the chosen backend, then create.
    Claim,
    /// Record the new flow in conntrack.
    Create,
    /// Not TCP or UDP the load balancer parses: perhaps an ICMP error
    /// about a translated flow (icmp.rs).
    Other,
}

/// What the phases found: the packet's flow as parsed, the frontend it is
/// for, and its translation. In per-CPU scratch space (entry.rs).
#[repr(C)]
pub struct State {
    pub flow: Flow,
    pub svc: ServiceValue,
    pub t: Translation,
}

impl State {
    /// Forgets the last packet's translation (the phases set every other
    /// field before they read it).
    #[inline(always)]
    pub fn reset(&mut self) {
        self.t.rewrite = 0;
        self.t.claimed = false;
    }
}

/// SNATed flows on an uplink go straight to their device; the rest to the stack.
#[inline(always)]
fn onward(hook: Hook, snat: bool) -> Step {
    match hook {
        Hook::Uplink { .. } if snat => Step::Done(Action::Forward),
        _ => Step::Done(Action::Pass),
    }
}

/// The first phase, for a parsed packet: no service at all, a reply of a
/// tracked flow, a packet of an established flow, a drop by source range,
/// or a new flow.
#[inline(always)]
pub fn decide<P: Packet>(p: &P, hook: Hook, st: &mut State) -> Step {
    let flow = &st.flow;
    // Neither to a frontend nor from a backend: no lookup can match.
    let to_frontend = maps::filter_has(filter_bit(
        Half::Frontend,
        fam::filter_addr(flow.daddr),
        flow.dport,
        flow.proto,
    ));
    if !to_frontend
        && !maps::filter_has(filter_bit(
            Half::Reply,
            fam::filter_addr(flow.saddr),
            flow.sport,
            flow.proto,
        ))
    {
        return Step::Done(Action::Pass);
    }
    let ct_key = conntrack::key(flow);
    let existing = conntrack::lookup(&ct_key).filter(|ct| !conntrack::reopens(ct, flow));
    if let Some(ct) = existing {
        if ct.kind == CT_REPLY {
            let snat = !ct.snat_addr.is_zero();
            if matches!(hook, Hook::Uplink { xdp: true, .. }) && !snat {
                // A reply to a pod on this node: tc on the uplink translates
                // it and hands it to the pod's device.
                return Step::Done(Action::Pass);
            }
            conntrack::touch(&ct_key, ct, flow);
            // The frontend as source; with SNAT the client as destination.
            st.t.src_addr = ct.nat_addr;
            st.t.src_port = ct.nat_port;
            st.t.rewrite = TRANSLATE_SRC;
            if snat {
                st.t.dst_addr = ct.snat_addr;
                st.t.dst_port = ct.snat_port;
                st.t.rewrite |= TRANSLATE_DST;
            }
            return Step::Done(Action::Forward);
        }
    }
    if !to_frontend {
        return Step::Done(Action::Pass);
    }
    let Some(svc) = service(flow, hook) else {
        return Step::Done(Action::Pass);
    };
    if svc.flags & SVC_FLAG_SOURCE_RANGES != 0 && !fam::source_allowed(svc.id, flow.saddr) {
        dropped(flow, svc.id, DROP_SOURCE_RANGE);
        return Step::Done(Action::Drop);
    }
    if let Some(ct) = existing {
        // An established flow keeps its backend while both it and the
        // service it was chosen for still exist.
        if ct.service_id == svc.id {
            // SAFETY: a map value, read while the program runs (RCU).
            if let Some(backend) = unsafe { BACKENDS.get(ct.backend_id) } {
                conntrack::touch(&ct_key, ct, flow);
                maps::count(svc.id, p.len(), false);
                st.t.dst_addr = backend.addr;
                st.t.dst_port = backend.port;
                st.t.rewrite = TRANSLATE_DST;
                let snat = !ct.snat_addr.is_zero();
                if snat {
                    st.t.src_addr = ct.snat_addr;
                    st.t.src_port = ct.snat_port;
                    st.t.rewrite |= TRANSLATE_SRC;
                }
                return onward(hook, snat);
            }
        }
    }
    st.svc = svc;
    Step::New
}

/// A new flow to `st.svc`: its backend, and whether it needs SNAT.
#[inline(always)]
pub fn choose(hook: Hook, st: &mut State) -> Step {
    let (flow, svc) = (&st.flow, &st.svc);
    if svc.count == 0 {
        if svc.flags & SVC_FLAG_DROP_IF_EMPTY != 0 {
            dropped(flow, svc.id, DROP_NO_LOCAL_ENDPOINT);
            return Step::Done(Action::Drop);
        }
        dropped(flow, svc.id, DROP_NO_ENDPOINT);
        return Step::Done(Action::Reject);
    }
    let Some(backend_id) = select::backend_id(svc, flow) else {
        return Step::Done(Action::Pass);
    };
    // SAFETY: a map value, read while the program runs (RCU).
    let Some(backend) = (unsafe { BACKENDS.get(backend_id) }) else {
        return Step::Done(Action::Pass);
    };
    st.t.backend_id = backend_id;
    st.t.backend_state = backend.state;
    st.t.dst_addr = backend.addr;
    st.t.dst_port = backend.port;
    st.t.rewrite = TRANSLATE_DST;
    match hook {
        Hook::Uplink { ifindex, .. } if backend.state & BACKEND_LOCAL == 0 => {
            let Some(addr) = fam::node_addr(ifindex) else {
                dropped(flow, svc.id, DROP_SNAT_FAILED);
                return Step::Done(Action::Drop);
            };
            st.t.src_addr = addr;
            st.t.rewrite |= TRANSLATE_SRC;
            Step::Claim
        }
        Hook::Pod if backend.addr.same(&flow.saddr) => {
            // Hairpin: the pod reached its own service and got itself.
            st.t.src_addr = HAIRPIN;
            st.t.src_port = flow.sport;
            st.t.rewrite |= TRANSLATE_SRC;
            Step::Create
        }
        _ => Step::Create,
    }
}

/// An SNATed new flow: a free source port, claimed by its reply entry.
#[inline(always)]
pub fn claim(st: &mut State) -> Step {
    if conntrack::claim_snat_port(&st.flow, st.svc.id, &mut st.t) {
        Step::Create
    } else {
        dropped(&st.flow, st.svc.id, DROP_SNAT_FAILED);
        Step::Done(Action::Drop)
    }
}

/// Records the new flow and counts it.
#[inline(always)]
pub fn create<P: Packet>(p: &P, hook: Hook, st: &State) -> Step {
    let (flow, svc, t) = (&st.flow, &st.svc, &st.t);
    conntrack::create(flow, svc.id, t);
    maps::count(svc.id, p.len(), true);
    debug!(
        &(),
        "new flow {:i}:{} -> {:i}:{} proto {}: backend {:i}:{} (service {})",
        flow.saddr,
        flow.sport,
        flow.daddr,
        flow.dport,
        flow.proto,
        t.dst_addr,
        t.dst_port,
        svc.id
    );
    if maps::trace_flows() {
        events::report(flow, EVENT_FLOW, 0, svc.id, t.dst_addr, t.dst_port, 0);
    }
    onward(hook, t.snat())
}

/// Writes the translation into the packet. A failed write is counted; the
/// packet is passed as it is then.
#[inline(always)]
pub fn translate<P: Packet>(p: &P, st: &State) -> bool {
    let (flow, t) = (&st.flow, &st.t);
    let mut written = Ok(());
    if t.rewrite & TRANSLATE_DST != 0 {
        written = nat::rewrite_dst(p, flow, t.dst_addr, t.dst_port);
    }
    if written.is_ok() && t.rewrite & TRANSLATE_SRC != 0 {
        written = nat::rewrite_src(p, flow, t.src_addr, t.src_port);
    }
    match written {
        Ok(()) => true,
        Err(e) => {
            maps::count_drop(DROP_REWRITE_FAILED);
            info!(&(), "rewrite failed (helper returned {}); packet passed", e);
            false
        }
    }
}

/// The frontend `flow` is addressed to. Pods (tc) use the internal scope
/// where the external entry says there is one; external clients (XDP) see
/// the external view of external frontends.
#[inline(always)]
pub fn service(flow: &Flow, hook: Hook) -> Option<ServiceValue> {
    // Zeroed, then filled: the IPv6 key has padding the literal cannot name.
    // SAFETY: the key is plain integers; all zero is a valid value.
    let mut key: ServiceKey = unsafe { core::mem::zeroed() };
    key.addr = flow.daddr;
    key.port = flow.dport;
    key.proto = flow.proto;
    key.scope = SCOPE_EXTERNAL;
    // SAFETY: the value is copied out at once.
    let v = unsafe { SERVICES.get(key).copied() }?;
    match hook {
        Hook::Pod if v.flags & SVC_FLAG_HAS_INTERNAL != 0 => {
            key.scope = SCOPE_INTERNAL;
            // SAFETY: the value is copied out at once.
            Some(unsafe { SERVICES.get(key).copied() }.unwrap_or(v))
        }
        Hook::Uplink { .. } if v.flags & SVC_FLAG_EXTERNAL == 0 => None,
        _ => Some(v),
    }
}

/// Restores the addresses and ports `flow` arrived with (XDP, when the
/// translated packet cannot be forwarded from there).
#[inline(always)]
pub fn undo<P: Packet>(p: &P, flow: &Flow) -> Result<(), i64> {
    let now = fam::parse(p).ok_or(-1i64)?;
    nat::rewrite_dst(p, &now, flow.daddr, flow.dport)?;
    nat::rewrite_src(p, &now, flow.saddr, flow.sport)
}
