//! Socket-level load balancing (cgroup v2 sock_addr hooks): a connect() or
//! sendmsg() to a service frontend is sent straight to a backend chosen by
//! the same code as the packet path (lb::service, select::backend_id), and
//! recvmsg()/getpeername() show the service address again. Packets of such
//! sockets carry the backend's address from the start, so the tc and XDP
//! programs see no frontend in them and never translate them twice.
use aya_ebpf::{
    btf_maps::{LruHashMap, PerCpuArray},
    helpers::{bpf_get_netns_cookie, bpf_get_socket_cookie, bpf_set_retval},
    macros::btf_map,
    programs::SockAddrContext,
};
use lb_common::{
    sock::{
        SockRevKey, SockRevValue, MAX_SOCK_REVNAT, SOCK_LB_HOST_ONLY, SOCK_STATS,
        SOCK_STAT_REFUSED, SOCK_STAT_TRANSLATED,
    },
    ALG_HASH, ALG_RANDOM, DROP_NO_ENDPOINT, EVENT_SOCK_FLOW, EVENT_SOCK_REFUSED, PROTO_TCP,
    PROTO_UDP, SVC_FLAG_SOURCE_RANGES,
};

use crate::{
    maps,
    v4::{
        fam::{self, Flow, BACKENDS},
        lb::{self, Hook},
        select,
    },
};

#[btf_map(name = "SOCK_REVNAT_V1")]
pub static SOCK_REVNAT: LruHashMap<SockRevKey, SockRevValue, { MAX_SOCK_REVNAT as usize }> =
    LruHashMap::new();

#[btf_map(name = "SOCK_STATS_V1")]
pub static SOCK_STATS_MAP: PerCpuArray<u64, { SOCK_STATS as usize }> = PerCpuArray::new();

/// Which sockets are translated (lb_common::sock::SOCK_LB_*); set at load time.
#[unsafe(no_mangle)]
static SOCK_LB_MODE: u32 = lb_common::sock::SOCK_LB_ALL;
/// The host's network namespace cookie, for host-only mode; set at load time.
#[unsafe(no_mangle)]
static HOST_NETNS_COOKIE: u64 = 0;

/// The cgroup sock_addr verdicts.
const ALLOW: i32 = 1;
const REJECT: i32 = 0;
const ECONNREFUSED: i32 = 111;

#[inline(always)]
fn bump(stat: u32) {
    if let Some(c) = SOCK_STATS_MAP.get_ptr_mut(stat) {
        // SAFETY: a per-CPU slot.
        unsafe { *c += 1 };
    }
}

/// Whether the socket belongs to the host's network namespace.
#[inline(always)]
fn in_host_netns(ctx: &SockAddrContext) -> bool {
    // SAFETY: a read of a load-time global; volatile so the loaded value is used.
    let host = unsafe { core::ptr::read_volatile(&HOST_NETNS_COOKIE) };
    // SAFETY: the helper takes the program's context.
    host != 0 && unsafe { bpf_get_netns_cookie(ctx.sock_addr.cast()) == host }
}

#[inline(always)]
fn in_scope(host: bool) -> bool {
    // SAFETY: a read of a load-time global; volatile so the loaded value is used.
    let mode = unsafe { core::ptr::read_volatile(&SOCK_LB_MODE) };
    mode != SOCK_LB_HOST_ONLY || host
}

/// Reports a socket-level event to `weir monitor`, with the socket's netns cookie.
#[inline(always)]
fn report(
    ctx: &SockAddrContext,
    flow: &Flow,
    kind: u8,
    service_id: u32,
    nat_addr: [u8; 4],
    nat_port: u16,
) {
    let reason = if kind == EVENT_SOCK_REFUSED {
        DROP_NO_ENDPOINT as u8
    } else {
        0
    };
    let mut e = fam::event(flow, kind, reason, service_id, nat_addr, nat_port);
    // SAFETY: the helper takes the program's context.
    e.netns_cookie = unsafe { bpf_get_netns_cookie(ctx.sock_addr.cast()) };
    // The socket has no source port yet; the cookie stood in for it.
    e.sport = 0;
    maps::report(e);
}

/// connect4 and sendmsg4 (`sendmsg`): the destination, if it is a frontend,
/// becomes a backend. No usable endpoint: the call fails at once with
/// ECONNREFUSED. Left to the packet path (tc on the pod's device): services
/// with loadBalancerSourceRanges, which need the client's address, and,
/// for sockets of pods, services with ClientIP affinity, which is per pod
/// address (here the address is not known yet; the host is one client), and
/// UDP (see below).
#[inline(always)]
pub fn translate(ctx: &SockAddrContext, sendmsg: bool) -> i32 {
    let sa = ctx.sock_addr;
    // SAFETY: the context is valid for the program's run; these fields are readable.
    let (ip, port, proto) = unsafe { ((*sa).user_ip4, (*sa).user_port, (*sa).protocol) };
    let proto = proto as u8;
    let host = in_host_netns(ctx);
    if (proto != PROTO_TCP && proto != PROTO_UDP) || !in_scope(host) {
        return ALLOW;
    }
    // SAFETY: the helper takes the program's context.
    let cookie = unsafe { bpf_get_socket_cookie(sa.cast()) };
    let flow = Flow {
        l4_off: 0,
        proto,
        // The client address is not known before the socket is bound: the
        // node counts as one client (ClientIP affinity); the socket cookie
        // stands in for the source port, so hash and Maglev spread sockets.
        saddr: [0; 4],
        daddr: ip.to_ne_bytes(),
        sport: cookie as u16,
        dport: u16::from_be(port as u16),
        tcp_flags: 0,
    };
    let Some(mut svc) = lb::service(&flow, Hook::Pod) else {
        return ALLOW;
    };
    if svc.flags & SVC_FLAG_SOURCE_RANGES != 0 || (svc.affinity_timeout != 0 && !host) {
        return ALLOW;
    }
    if proto == PROTO_UDP && !host {
        // A pod's UDP socket stays on tc's path, whose conntrack moves a
        // flow off a removed backend at once; a connected socket translated
        // here would keep a dead backend, and the agent can end sockets only
        // in its own network namespace (bpf_sock_destroy needs kfunc calls,
        // which aya 0.14 cannot relocate).
        return ALLOW;
    }
    if sendmsg && svc.algorithm == ALG_RANDOM {
        // An unconnected socket's datagrams to one service stay on one
        // backend (the cookie picks it), as conntrack keeps a UDP flow on one.
        svc.algorithm = ALG_HASH;
    }
    if svc.count == 0 {
        maps::count_drop(DROP_NO_ENDPOINT);
        bump(SOCK_STAT_REFUSED);
        report(ctx, &flow, EVENT_SOCK_REFUSED, svc.id, [0; 4], 0);
        // SAFETY: sets this hook's return value for the system call.
        unsafe { bpf_set_retval(-ECONNREFUSED) };
        return REJECT;
    }
    let Some(backend_id) = select::backend_id(&svc, &flow) else {
        return ALLOW;
    };
    // SAFETY: the value is copied out at once.
    let Some(backend) = (unsafe { BACKENDS.get(backend_id).copied() }) else {
        return ALLOW;
    };
    let key = SockRevKey {
        cookie,
        backend_addr: backend.addr,
        backend_port: backend.port,
        _pad: 0,
    };
    let value = SockRevValue {
        addr: flow.daddr,
        port: flow.dport,
        _pad: 0,
        service_id: svc.id,
    };
    let _ = SOCK_REVNAT.insert(key, value, 0);
    // SAFETY: connect4/sendmsg4 may write the destination.
    unsafe {
        (*sa).user_ip4 = u32::from_ne_bytes(backend.addr);
        (*sa).user_port = u32::from(backend.port.to_be());
    }
    maps::count(svc.id, 0, !sendmsg);
    bump(SOCK_STAT_TRANSLATED);
    if maps::trace_flows() {
        report(
            ctx,
            &flow,
            EVENT_SOCK_FLOW,
            svc.id,
            backend.addr,
            backend.port,
        );
    }
    ALLOW
}

/// recvmsg4 and getpeername4: a backend address a translated socket sees
/// becomes the service address it asked for.
#[inline(always)]
pub fn restore(ctx: &SockAddrContext) -> i32 {
    let sa = ctx.sock_addr;
    // SAFETY: the context is valid for the program's run.
    let (ip, port) = unsafe { ((*sa).user_ip4, (*sa).user_port) };
    // SAFETY: the helper takes the program's context.
    let cookie = unsafe { bpf_get_socket_cookie(sa.cast()) };
    let key = SockRevKey {
        cookie,
        backend_addr: ip.to_ne_bytes(),
        backend_port: u16::from_be(port as u16),
        _pad: 0,
    };
    // SAFETY: the value is copied out at once.
    if let Some(v) = unsafe { SOCK_REVNAT.get(key).copied() } {
        // SAFETY: recvmsg4/getpeername4 may write the address.
        unsafe {
            (*sa).user_ip4 = u32::from_ne_bytes(v.addr);
            (*sa).user_port = u32::from(v.port.to_be());
        }
    }
    ALLOW
}
