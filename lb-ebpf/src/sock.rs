//! Socket-level load balancing (cgroup v2 sock_addr hooks): a connect() or
//! sendmsg() to a service frontend is sent straight to a backend chosen by
//! the same code as the packet path (sock_lb.rs, per family), and
//! recvmsg()/getpeername() show the service address again. Packets of such
//! sockets carry the backend's address from the start, so the tc and XDP
//! programs see no frontend in them and never translate them twice.
//!
//! The AF_INET6 hooks serve IPv6 frontends, and IPv4 frontends a
//! dual-stack socket reaches through an IPv4-mapped address
//! (::ffff:a.b.c.d, as Java and Node.js clients connect): those take the
//! IPv4 path and get a mapped backend address.
use aya_ebpf::{
    btf_maps::{LruHashMap, PerCpuArray},
    helpers::{bpf_get_netns_cookie, bpf_get_socket_cookie, bpf_set_retval},
    macros::btf_map,
    programs::SockAddrContext,
};
use lb_common::{
    sock::{
        SockRevKey, SockRevKey6, SockRevValue, SockRevValue6, MAX_SOCK_REVNAT, SOCK_LB_HOST_ONLY,
        SOCK_STATS,
    },
    PROTO_TCP, PROTO_UDP,
};

use crate::{
    addr::{bytes6, words6},
    v4, v6,
};

#[btf_map(name = "SOCK_REVNAT_V1")]
pub static SOCK_REVNAT: LruHashMap<SockRevKey, SockRevValue, { MAX_SOCK_REVNAT as usize }> =
    LruHashMap::new();

#[btf_map(name = "SOCK_REVNAT6_V1")]
pub static SOCK_REVNAT6: LruHashMap<SockRevKey6, SockRevValue6, { MAX_SOCK_REVNAT as usize }> =
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

/// The IPv4-mapped IPv6 prefix ::ffff:0:0/96, as the first three words of
/// user_ip6 (network order in memory).
const MAPPED: [u32; 3] = [0, 0, u32::from_be(0xffff)];

#[inline(always)]
pub fn bump(stat: u32) {
    if let Some(c) = SOCK_STATS_MAP.get_ptr_mut(stat) {
        // SAFETY: a per-CPU slot.
        unsafe { *c += 1 };
    }
}

/// The system call being translated.
pub struct Call {
    pub proto: u8,
    /// The socket's cookie.
    pub cookie: u64,
    /// The socket's network namespace cookie.
    pub netns_cookie: u64,
    /// Whether the socket is in the host's network namespace.
    pub host: bool,
    /// sendmsg (an unconnected send) rather than connect.
    pub sendmsg: bool,
}

/// What a family's translation decided for the destination.
pub enum Verdict<A> {
    /// Not a frontend, or left to the packet path.
    Keep,
    /// Send to this backend (address, host-order port).
    Send(A, u16),
    /// A frontend without endpoints: ECONNREFUSED.
    Refuse,
}

/// The call for `ctx`, if its socket is one socket LB translates.
#[inline(always)]
fn call(ctx: &SockAddrContext, sendmsg: bool) -> Option<Call> {
    let sa = ctx.sock_addr;
    // SAFETY: the context is valid for the program's run; protocol is readable.
    let proto = unsafe { (*sa).protocol } as u8;
    if proto != PROTO_TCP && proto != PROTO_UDP {
        return None;
    }
    // SAFETY: the helpers take the program's context.
    let netns_cookie = unsafe { bpf_get_netns_cookie(sa.cast()) };
    // SAFETY: reads of load-time globals; volatile so the loaded values are used.
    let (host_cookie, mode) = unsafe {
        (
            core::ptr::read_volatile(&HOST_NETNS_COOKIE),
            core::ptr::read_volatile(&SOCK_LB_MODE),
        )
    };
    let host = host_cookie != 0 && netns_cookie == host_cookie;
    if mode == SOCK_LB_HOST_ONLY && !host {
        return None;
    }
    Some(Call {
        proto,
        // SAFETY: the helper takes the program's context.
        cookie: unsafe { bpf_get_socket_cookie(sa.cast()) },
        netns_cookie,
        host,
        sendmsg,
    })
}

/// Acts on a verdict: rewrites the destination with `write`, or fails the
/// call with ECONNREFUSED.
#[inline(always)]
fn apply<A>(verdict: Verdict<A>, write: impl FnOnce(A, u16)) -> i32 {
    match verdict {
        Verdict::Keep => ALLOW,
        Verdict::Send(addr, port) => {
            write(addr, port);
            ALLOW
        }
        Verdict::Refuse => {
            // SAFETY: sets this hook's return value for the system call.
            unsafe { bpf_set_retval(-ECONNREFUSED) };
            REJECT
        }
    }
}

/// The port of a sock_addr context (user_port: network order, low 16 bits).
#[inline(always)]
fn port(ctx: &SockAddrContext) -> u16 {
    // SAFETY: the context is valid for the program's run; user_port is readable.
    u16::from_be(unsafe { (*ctx.sock_addr).user_port } as u16)
}

#[inline(always)]
fn set_port(ctx: &SockAddrContext, port: u16) {
    // SAFETY: connect/sendmsg/recvmsg/getpeername may write user_port.
    unsafe { (*ctx.sock_addr).user_port = u32::from(port.to_be()) };
}

/// user_ip6, word by word (the context allows 4-byte accesses).
#[inline(always)]
fn ip6(ctx: &SockAddrContext) -> [u32; 4] {
    let sa = ctx.sock_addr;
    // SAFETY: the context is valid for the program's run; user_ip6 is readable.
    unsafe {
        let w = core::ptr::addr_of!((*sa).user_ip6);
        [
            core::ptr::read_volatile(&(*w)[0]),
            core::ptr::read_volatile(&(*w)[1]),
            core::ptr::read_volatile(&(*w)[2]),
            core::ptr::read_volatile(&(*w)[3]),
        ]
    }
}

#[inline(always)]
fn set_ip6_word(ctx: &SockAddrContext, i: usize, word: u32) {
    let sa = ctx.sock_addr;
    // SAFETY: the AF_INET6 hooks may write user_ip6, word by word; i < 4.
    unsafe {
        let w = core::ptr::addr_of_mut!((*sa).user_ip6);
        core::ptr::write_volatile(&mut (*w)[i & 3], word);
    }
}

/// connect4 and sendmsg4.
#[inline(always)]
pub fn translate4(ctx: &SockAddrContext, sendmsg: bool) -> i32 {
    let Some(call) = call(ctx, sendmsg) else {
        return ALLOW;
    };
    // SAFETY: the context is valid for the program's run; user_ip4 is readable.
    let ip = unsafe { (*ctx.sock_addr).user_ip4 };
    let verdict = v4::sock::translate(&call, ip.to_ne_bytes(), port(ctx));
    apply(verdict, |addr, port| {
        // SAFETY: connect4/sendmsg4 may write the destination.
        unsafe { (*ctx.sock_addr).user_ip4 = u32::from_ne_bytes(addr) };
        set_port(ctx, port);
    })
}

/// connect6 and sendmsg6: IPv6 frontends, and IPv4 ones through mapped addresses.
#[inline(always)]
pub fn translate6(ctx: &SockAddrContext, sendmsg: bool) -> i32 {
    let Some(call) = call(ctx, sendmsg) else {
        return ALLOW;
    };
    let w = ip6(ctx);
    if w[..3] == MAPPED {
        let verdict = v4::sock::translate(&call, w[3].to_ne_bytes(), port(ctx));
        return apply(verdict, |addr, port| {
            set_ip6_word(ctx, 3, u32::from_ne_bytes(addr));
            set_port(ctx, port);
        });
    }
    let verdict = v6::sock::translate(&call, bytes6(w), port(ctx));
    apply(verdict, |addr, port| {
        set_ip6_words(ctx, addr);
        set_port(ctx, port);
    })
}

#[inline(always)]
fn set_ip6_words(ctx: &SockAddrContext, addr: [u8; 16]) {
    let w = words6(&addr);
    let mut i = 0;
    while i < 4 {
        set_ip6_word(ctx, i, w[i]);
        i += 1;
    }
}

/// recvmsg4 and getpeername4: a backend address a translated socket sees
/// becomes the service address it asked for.
#[inline(always)]
pub fn restore4(ctx: &SockAddrContext) -> i32 {
    // SAFETY: the context is valid for the program's run; user_ip4 is readable.
    let ip = unsafe { (*ctx.sock_addr).user_ip4 };
    // SAFETY: the helper takes the program's context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.sock_addr.cast()) };
    if let Some((addr, port)) = v4::sock::restore(cookie, ip.to_ne_bytes(), port(ctx)) {
        // SAFETY: recvmsg4/getpeername4 may write the address.
        unsafe { (*ctx.sock_addr).user_ip4 = u32::from_ne_bytes(addr) };
        set_port(ctx, port);
    }
    ALLOW
}

/// recvmsg6 and getpeername6.
#[inline(always)]
pub fn restore6(ctx: &SockAddrContext) -> i32 {
    let w = ip6(ctx);
    // SAFETY: the helper takes the program's context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.sock_addr.cast()) };
    if w[..3] == MAPPED {
        if let Some((addr, port)) = v4::sock::restore(cookie, w[3].to_ne_bytes(), port(ctx)) {
            set_ip6_word(ctx, 3, u32::from_ne_bytes(addr));
            set_port(ctx, port);
        }
    } else if let Some((addr, port)) = v6::sock::restore(cookie, bytes6(w), port(ctx)) {
        set_ip6_words(ctx, addr);
        set_port(ctx, port);
    }
    ALLOW
}
