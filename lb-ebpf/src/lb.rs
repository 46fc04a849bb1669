//! The service load-balancing decision for one packet, shared by the tc and
//! XDP entry points (which differ only in what they do with the verdict).
use lb_common::{
    filter::{filter_bit, Half},
    MonitorEvent, ServiceKey, ServiceValue, BACKEND_LOCAL, CT_REPLY, DROP_NO_ENDPOINT,
    DROP_NO_LOCAL_ENDPOINT, DROP_REWRITE_FAILED, DROP_SNAT_FAILED, DROP_SOURCE_RANGE, EVENT_DROP,
    EVENT_FLOW, HAIRPIN_ADDR, SCOPE_EXTERNAL, SCOPE_INTERNAL, SVC_FLAG_DROP_IF_EMPTY,
    SVC_FLAG_EXTERNAL, SVC_FLAG_HAS_INTERNAL, SVC_FLAG_SOURCE_RANGES,
};

use aya_log_ebpf::{debug, info};

use crate::{
    conntrack::{self, Nat},
    maps::{self, BACKENDS, SERVICES},
    nat,
    packet::Packet,
    parse::{parse_ipv4, Flow},
    select,
};

/// Where the program runs.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    /// tc ingress on pod devices: every frontend, the internal view first;
    /// SNAT only for hairpin flows.
    Pod,
    /// An uplink (by ifindex), in XDP or, for what XDP leaves to it, tc:
    /// external frontends only, their external view; flows to remote
    /// backends are SNATed to the node's address.
    Uplink { ifindex: u32, xdp: bool },
}

/// What to do with the packet.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Hand it to the stack (translated or not).
    Pass,
    /// Translated: send it straight to its egress device (fib.rs): an
    /// SNATed flow from an uplink, or a reverse-NATed reply. XDP undoes the
    /// translation with the verdict's flow and leaves the packet to tc when
    /// the FIB has no neighbour entry yet.
    Forward,
    /// No usable endpoint: answer with a TCP RST or ICMP port unreachable.
    Reject,
    /// Drop it (counted and reported already).
    Drop,
}

/// The action and the packet's flow as it arrived. A struct, not an enum
/// with the flow in some variants: a variant without it would leave the
/// flow's registers undefined, and LLVM may copy those, which the verifier
/// rejects. The flow is all zero when the packet was not parsed.
pub struct Verdict {
    pub action: Action,
    pub flow: Flow,
}

impl Verdict {
    #[inline(always)]
    fn new(action: Action, flow: Flow) -> Self {
        Self { action, flow }
    }
}

#[inline(always)]
pub fn event(
    flow: &Flow,
    kind: u8,
    reason: u8,
    service_id: u32,
    nat_addr: [u8; 4],
    nat_port: u16,
) -> MonitorEvent {
    MonitorEvent {
        saddr: flow.saddr,
        daddr: flow.daddr,
        nat_addr,
        sport: flow.sport,
        dport: flow.dport,
        nat_port,
        proto: flow.proto,
        kind,
        reason,
        _pad: [0; 3],
        service_id,
        _pad2: 0,
        netns_cookie: 0,
    }
}

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
    maps::report(event(flow, EVENT_DROP, reason as u8, service_id, [0; 4], 0));
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

#[inline(always)]
pub fn process<P: Packet>(p: &P, hook: Hook) -> Verdict {
    match decide(p, hook) {
        Ok(v) => v,
        Err(e) => {
            maps::count_drop(DROP_REWRITE_FAILED);
            info!(&(), "rewrite failed (helper returned {}); packet passed", e);
            Verdict::new(Action::Pass, Flow::default())
        }
    }
}

/// SNATed flows on an uplink go straight to their device; the rest to the stack.
#[inline(always)]
fn onward(hook: Hook, snat: bool, flow: Flow) -> Verdict {
    match hook {
        Hook::Uplink { .. } if snat => Verdict::new(Action::Forward, flow),
        _ => Verdict::new(Action::Pass, flow),
    }
}

#[inline(always)]
fn decide<P: Packet>(p: &P, hook: Hook) -> Result<Verdict, i64> {
    let Some(flow) = parse_ipv4(p) else {
        return Ok(Verdict::new(Action::Pass, Flow::default()));
    };
    // Neither to a frontend nor from a backend: no lookup can match.
    let to_frontend = maps::filter_has(filter_bit(
        Half::Frontend,
        flow.daddr,
        flow.dport,
        flow.proto,
    ));
    if !to_frontend
        && !maps::filter_has(filter_bit(Half::Reply, flow.saddr, flow.sport, flow.proto))
    {
        return Ok(Verdict::new(Action::Pass, flow));
    }
    let ct_key = conntrack::key(&flow);
    let existing = conntrack::lookup(&ct_key).filter(|ct| !conntrack::reopens(ct, &flow));
    if let Some(&ct) = existing {
        if ct.kind == CT_REPLY {
            let snat = ct.snat_addr != [0; 4];
            if matches!(hook, Hook::Uplink { xdp: true, .. }) && !snat {
                // A reply to a pod on this node: tc on the uplink translates
                // it and hands it to the pod's device.
                return Ok(Verdict::new(Action::Pass, flow));
            }
            conntrack::touch(&ct_key, ct, &flow);
            nat::rewrite_src(p, &flow, ct.nat_addr, ct.nat_port)?;
            if snat {
                nat::rewrite_dst(p, &flow, ct.snat_addr, ct.snat_port)?;
            }
            return Ok(Verdict::new(Action::Forward, flow));
        }
    }
    if !to_frontend {
        return Ok(Verdict::new(Action::Pass, flow));
    }
    let Some(svc) = service(&flow, hook) else {
        return Ok(Verdict::new(Action::Pass, flow));
    };
    if svc.flags & SVC_FLAG_SOURCE_RANGES != 0 && !maps::source_allowed(svc.id, flow.saddr) {
        dropped(&flow, svc.id, DROP_SOURCE_RANGE);
        return Ok(Verdict::new(Action::Drop, flow));
    }
    if let Some(&ct) = existing {
        // An established flow keeps its backend while both it and the
        // service it was chosen for still exist.
        if ct.service_id == svc.id {
            // SAFETY: the value is copied out at once.
            if let Some(backend) = unsafe { BACKENDS.get(ct.backend_id).copied() } {
                conntrack::touch(&ct_key, ct, &flow);
                maps::count(svc.id, p.len(), false);
                nat::rewrite_dst(p, &flow, backend.addr, backend.port)?;
                let snat = ct.snat_addr != [0; 4];
                if snat {
                    nat::rewrite_src(p, &flow, ct.snat_addr, ct.snat_port)?;
                }
                return Ok(onward(hook, snat, flow));
            }
        }
    }
    if svc.count == 0 {
        if svc.flags & SVC_FLAG_DROP_IF_EMPTY != 0 {
            dropped(&flow, svc.id, DROP_NO_LOCAL_ENDPOINT);
            return Ok(Verdict::new(Action::Drop, flow));
        }
        dropped(&flow, svc.id, DROP_NO_ENDPOINT);
        return Ok(Verdict::new(Action::Reject, flow));
    }
    let Some(backend_id) = select::backend_id(&svc, &flow) else {
        return Ok(Verdict::new(Action::Pass, flow));
    };
    // SAFETY: the value is copied out at once.
    let Some(backend) = (unsafe { BACKENDS.get(backend_id).copied() }) else {
        return Ok(Verdict::new(Action::Pass, flow));
    };
    let mut nat = Nat {
        backend_id,
        backend,
        snat_addr: [0; 4],
        snat_port: 0,
    };
    let mut claimed = false;
    match hook {
        Hook::Uplink { ifindex, .. } if backend.state & BACKEND_LOCAL == 0 => {
            let Some(addr) = maps::node_addr(ifindex) else {
                dropped(&flow, svc.id, DROP_SNAT_FAILED);
                return Ok(Verdict::new(Action::Drop, flow));
            };
            nat.snat_addr = addr;
            if !conntrack::claim_snat_port(&flow, svc.id, &mut nat) {
                dropped(&flow, svc.id, DROP_SNAT_FAILED);
                return Ok(Verdict::new(Action::Drop, flow));
            }
            claimed = true;
        }
        Hook::Pod if backend.addr == flow.saddr => {
            // Hairpin: the pod reached its own service and got itself.
            nat.snat_addr = HAIRPIN_ADDR;
            nat.snat_port = flow.sport;
        }
        _ => {}
    }
    conntrack::create(&flow, svc.id, &nat, claimed);
    maps::count(svc.id, p.len(), true);
    debug!(
        &(),
        "new flow {:i}:{} -> {:i}:{} proto {}: backend {:i}:{} (service {})",
        flow.saddr,
        flow.sport,
        flow.daddr,
        flow.dport,
        flow.proto,
        backend.addr,
        backend.port,
        svc.id
    );
    if maps::trace_flows() {
        maps::report(event(
            &flow,
            EVENT_FLOW,
            0,
            svc.id,
            backend.addr,
            backend.port,
        ));
    }
    nat::rewrite_dst(p, &flow, backend.addr, backend.port)?;
    let snat = nat.snat_addr != [0; 4];
    if snat {
        nat::rewrite_src(p, &flow, nat.snat_addr, nat.snat_port)?;
    }
    Ok(onward(hook, snat, flow))
}

/// The frontend `flow` is addressed to. Pods (tc) use the internal scope
/// where the external entry says there is one; external clients (XDP) see
/// the external view of external frontends.
#[inline(always)]
pub fn service(flow: &Flow, hook: Hook) -> Option<ServiceValue> {
    let mut key = ServiceKey {
        addr: flow.daddr,
        port: flow.dport,
        proto: flow.proto,
        scope: SCOPE_EXTERNAL,
    };
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
    let now = parse_ipv4(p).ok_or(-1i64)?;
    nat::rewrite_dst(p, &now, flow.daddr, flow.dport)?;
    nat::rewrite_src(p, &now, flow.saddr, flow.sport)
}
