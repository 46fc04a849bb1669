//! `weir monitor` events of one family's flows (MONITOR_V1): MonitorEvent
//! for IPv4, MonitorEvent6 for IPv6, with the same field names, written in
//! place in the ring buffer (an IPv6 event on the stack would not fit the
//! IPv6 path's 512 bytes). Included by v4.rs and v6.rs.
use crate::maps::MONITOR;

use super::fam::{Addr, Flow, MonitorEvent};

/// Reports a datapath event (`netns_cookie` 0) or a socket event (the
/// calling socket's network namespace). A full ring buffer loses the
/// event, never the packet.
#[inline(always)]
pub fn report(
    flow: &Flow,
    kind: u8,
    reason: u8,
    service_id: u32,
    nat_addr: Addr,
    nat_port: u16,
    netns_cookie: u64,
) {
    let Some(mut entry) = MONITOR.reserve_untyped::<MonitorEvent>(0) else {
        return;
    };
    let e = entry.as_mut_ptr();
    // SAFETY: `e` points at the reserved record, sized and aligned for a
    // MonitorEvent; every field is written before it is submitted.
    unsafe {
        (*e).saddr = flow.saddr;
        (*e).daddr = flow.daddr;
        (*e).nat_addr = nat_addr;
        (*e).sport = flow.sport;
        (*e).dport = flow.dport;
        (*e).nat_port = nat_port;
        (*e).proto = flow.proto;
        (*e).kind = kind;
        (*e).reason = reason;
        (*e)._pad = Default::default();
        (*e).service_id = service_id;
        (*e)._pad2 = Default::default();
        (*e).netns_cookie = netns_cookie;
    }
    entry.submit(0);
}
