//! Socket-level load balancing of one family's frontends (see sock.rs for
//! the hooks): the same lookup and backend choice as the packet path
//! (lb::service, select::backend_id), with the socket's cookie for the
//! source port. Included by v4.rs and v6.rs.
use lb_common::{
    sock::{SOCK_STAT_REFUSED, SOCK_STAT_TRANSLATED},
    ALG_HASH, ALG_RANDOM, DROP_NO_ENDPOINT, EVENT_SOCK_FLOW, EVENT_SOCK_REFUSED, PROTO_UDP,
    SVC_FLAG_SOURCE_RANGES,
};

use crate::{
    maps,
    sock::{bump, Call, Verdict},
};

use super::{
    events,
    fam::{Addr, Flow, SockRevKey, SockRevValue, BACKENDS, SOCK_REVNAT, ZERO},
    lb::{self, Hook},
    select,
};

/// Reports a socket-level event to `weir monitor`, with the socket's netns
/// cookie; the socket has no source port yet (its cookie stood in for it).
#[inline(always)]
fn report(call: &Call, flow: &Flow, kind: u8, service_id: u32, nat_addr: Addr, nat_port: u16) {
    let reason = if kind == EVENT_SOCK_REFUSED {
        DROP_NO_ENDPOINT as u8
    } else {
        0
    };
    let shown = Flow { sport: 0, ..*flow };
    events::report(
        &shown,
        kind,
        reason,
        service_id,
        nat_addr,
        nat_port,
        call.netns_cookie,
    );
}

/// connect and sendmsg: the destination, if it is a frontend, becomes a
/// backend. No usable endpoint: the call fails at once with ECONNREFUSED.
/// Left to the packet path (tc on the pod's device): services with
/// loadBalancerSourceRanges, which need the client's address, and, for
/// sockets of pods, services with ClientIP affinity, which is per pod
/// address (here the address is not known yet; the host is one client),
/// and UDP (see below).
#[inline(always)]
pub fn translate(call: &Call, daddr: Addr, dport: u16) -> Verdict<Addr> {
    let flow = Flow {
        l4_off: 0,
        proto: call.proto,
        // The client address is not known before the socket is bound: the
        // node counts as one client (ClientIP affinity); the socket cookie
        // stands in for the source port, so hash and Maglev spread sockets.
        saddr: ZERO,
        daddr,
        sport: call.cookie as u16,
        dport,
        tcp_flags: 0,
    };
    let Some(mut svc) = lb::service(&flow, Hook::Pod) else {
        return Verdict::Keep;
    };
    if svc.flags & SVC_FLAG_SOURCE_RANGES != 0 || (svc.affinity_timeout != 0 && !call.host) {
        return Verdict::Keep;
    }
    if call.proto == PROTO_UDP && !call.host {
        // A pod's UDP socket stays on tc's path, whose conntrack moves a
        // flow off a removed backend at once; a connected socket translated
        // here would keep a dead backend, and the agent can end sockets only
        // in its own network namespace (bpf_sock_destroy needs kfunc calls,
        // which aya 0.14 cannot relocate).
        return Verdict::Keep;
    }
    if call.sendmsg && svc.algorithm == ALG_RANDOM {
        // An unconnected socket's datagrams to one service stay on one
        // backend (the cookie picks it), as conntrack keeps a UDP flow on one.
        svc.algorithm = ALG_HASH;
    }
    if svc.count == 0 {
        maps::count_drop(DROP_NO_ENDPOINT);
        bump(SOCK_STAT_REFUSED);
        report(call, &flow, EVENT_SOCK_REFUSED, svc.id, ZERO, 0);
        return Verdict::Refuse;
    }
    let Some(backend_id) = select::backend_id(&svc, &flow) else {
        return Verdict::Keep;
    };
    // SAFETY: the value is copied out at once.
    let Some(backend) = (unsafe { BACKENDS.get(backend_id).copied() }) else {
        return Verdict::Keep;
    };
    let value = SockRevValue {
        addr: flow.daddr,
        port: flow.dport,
        _pad: 0,
        service_id: svc.id,
    };
    let _ = SOCK_REVNAT.insert(key(call.cookie, backend.addr, backend.port), value, 0);
    maps::count(svc.id, 0, !call.sendmsg);
    bump(SOCK_STAT_TRANSLATED);
    if maps::trace_flows() {
        report(
            call,
            &flow,
            EVENT_SOCK_FLOW,
            svc.id,
            backend.addr,
            backend.port,
        );
    }
    Verdict::Send(backend.addr, backend.port)
}

/// recvmsg and getpeername: the service address a translated socket asked
/// for, if `addr`:`port` is the backend it was sent to.
#[inline(always)]
pub fn restore(cookie: u64, addr: Addr, port: u16) -> Option<(Addr, u16)> {
    // SAFETY: the value is copied out at once.
    let v = unsafe { SOCK_REVNAT.get(key(cookie, addr, port)).copied() }?;
    Some((v.addr, v.port))
}

#[inline(always)]
fn key(cookie: u64, backend_addr: Addr, backend_port: u16) -> SockRevKey {
    // Zeroed, then filled: the IPv6 key has padding the literal cannot name.
    // SAFETY: the key is plain integers; all zero is a valid value.
    let mut key: SockRevKey = unsafe { core::mem::zeroed() };
    key.cookie = cookie;
    key.backend_addr = backend_addr;
    key.backend_port = backend_port;
    key
}
