//! The service load-balancing decision for one packet.
use aya_ebpf::{bindings::TC_ACT_OK, programs::TcContext};
use lb_common::{
    MonitorEvent, ServiceKey, ServiceValue, CT_REPLY, DROP_NO_ENDPOINT, DROP_REWRITE_FAILED,
    EVENT_DROP, EVENT_FLOW, SCOPE_EXTERNAL, SCOPE_INTERNAL,
};

use crate::{
    conntrack,
    maps::{self, BACKENDS, SERVICES},
    nat,
    parse::{parse_ipv4, Flow},
    reject, select,
};

/// What to do with the packet after processing.
enum Verdict {
    Pass,
    /// No usable endpoint: the flow and the service id.
    Reject(Flow, u32),
}

#[inline(always)]
fn event(
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
    }
}

#[inline(always)]
pub fn tc_ingress(ctx: &TcContext) -> i32 {
    match process(ctx) {
        Ok(Verdict::Reject(flow, service_id)) => {
            maps::report(event(
                &flow,
                EVENT_DROP,
                DROP_NO_ENDPOINT as u8,
                service_id,
                [0; 4],
                0,
            ));
            reject::reject(ctx, &flow)
        }
        Ok(Verdict::Pass) => TC_ACT_OK as i32,
        Err(_) => {
            maps::count_drop(DROP_REWRITE_FAILED);
            TC_ACT_OK as i32
        }
    }
}

#[inline(always)]
fn process(ctx: &TcContext) -> Result<Verdict, i64> {
    let Some(flow) = parse_ipv4(ctx) else {
        return Ok(Verdict::Pass);
    };
    let ct_key = conntrack::key(&flow);
    let existing = conntrack::lookup(&ct_key);
    if let Some(ct) = existing {
        if ct.kind == CT_REPLY {
            conntrack::touch(&ct_key, ct, &flow);
            nat::rewrite_src(ctx, &flow, ct.nat_addr, ct.nat_port)?;
            return Ok(Verdict::Pass);
        }
    }
    let Some(svc) = service(&flow) else {
        return Ok(Verdict::Pass);
    };
    if let Some(ct) = existing {
        // An established flow keeps its backend while both it and the
        // service it was chosen for still exist.
        if ct.service_id == svc.id {
            // SAFETY: the value is copied out at once.
            if let Some(backend) = unsafe { BACKENDS.get(ct.backend_id).copied() } {
                conntrack::touch(&ct_key, ct, &flow);
                maps::count(svc.id, ctx.len(), false);
                nat::rewrite_dst(ctx, &flow, backend.addr, backend.port)?;
                return Ok(Verdict::Pass);
            }
        }
    }
    if svc.count == 0 {
        maps::count_drop(DROP_NO_ENDPOINT);
        return Ok(Verdict::Reject(flow, svc.id));
    }
    let Some(backend_id) = select::backend_id(&svc, &flow) else {
        return Ok(Verdict::Pass);
    };
    // SAFETY: the value is copied out at once.
    let Some(backend) = (unsafe { BACKENDS.get(backend_id).copied() }) else {
        return Ok(Verdict::Pass);
    };
    conntrack::create(&flow, svc.id, backend_id, &backend);
    maps::count(svc.id, ctx.len(), true);
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
    nat::rewrite_dst(ctx, &flow, backend.addr, backend.port)?;
    Ok(Verdict::Pass)
}

/// The frontend `flow` is addressed to, seen from a pod: internal scope first.
#[inline(always)]
fn service(flow: &Flow) -> Option<ServiceValue> {
    let mut key = ServiceKey {
        addr: flow.daddr,
        port: flow.dport,
        proto: flow.proto,
        scope: SCOPE_INTERNAL,
    };
    // SAFETY: values are copied out at once.
    if let Some(v) = unsafe { SERVICES.get(key).copied() } {
        return Some(v);
    }
    key.scope = SCOPE_EXTERNAL;
    unsafe { SERVICES.get(key).copied() }
}
