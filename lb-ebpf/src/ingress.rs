//! The ingress hand-off (sk_lookup in the node's network namespace): a TCP
//! connection to an ingress address on an ingress port is given to the
//! embedded proxy's listening socket, whatever address that socket is bound
//! to, for IPv4 and IPv6 addresses alike. Everything else goes on to the
//! normal socket lookup.
use aya_ebpf::{
    bindings::sk_action::SK_PASS,
    btf_maps::{HashMap, SockMap},
    macros::btf_map,
    programs::SkLookupContext,
};
use lb_common::ingress::{IngressKey, MAX_INGRESS_ADDRS, SOCKETS, SOCKETS_IPV6};

#[btf_map(name = "INGRESS_ADDRS_V1")]
static INGRESS_ADDRS: HashMap<IngressKey, u32, { MAX_INGRESS_ADDRS as usize }> = HashMap::new();

#[btf_map(name = "INGRESS_SOCKETS_V1")]
static INGRESS_SOCKETS: SockMap<{ SOCKETS as usize }> = SockMap::new();

const AF_INET: u32 = 2;
const AF_INET6: u32 = 10;
const IPPROTO_TCP: u32 = 6;

#[inline(always)]
pub fn lookup(ctx: &SkLookupContext) -> u32 {
    // SAFETY: the kernel passes a valid bpf_sk_lookup for the program's run.
    let l = unsafe { &*ctx.lookup };
    if l.protocol != IPPROTO_TCP {
        return SK_PASS;
    }
    // local_ip4/local_ip6 are in network byte order: their in-memory bytes
    // are the address. IPv4 is keyed as ::ffff:a.b.c.d.
    // Every address word is loaded, each at a constant offset of the
    // context, before the family picks: loaded in the branches, LLVM merges
    // the two families' loads into one through a moved context pointer,
    // which the verifier refuses. Volatile, so no load is merged or dropped.
    // SAFETY: reads of fields of the valid context.
    let (ip4, ip6) = unsafe {
        (
            core::ptr::read_volatile(&l.local_ip4),
            [
                core::ptr::read_volatile(&l.local_ip6[0]),
                core::ptr::read_volatile(&l.local_ip6[1]),
                core::ptr::read_volatile(&l.local_ip6[2]),
                core::ptr::read_volatile(&l.local_ip6[3]),
            ],
        )
    };
    let (words, sockets) = match l.family {
        AF_INET => ([0, 0, u32::from_be(0xffff), ip4], 0),
        AF_INET6 => (ip6, SOCKETS_IPV6),
        _ => return SK_PASS,
    };
    let key = IngressKey {
        addr: crate::addr::bytes6(words),
        port: l.local_port as u16,
        _pad: 0,
    };
    // SAFETY: a read of a map value the program does not keep.
    if let Some(index) = unsafe { INGRESS_ADDRS.get(&key) } {
        // The family's own socket. None (the proxy is gone, or the host has
        // no IPv6 loopback to bind): the normal lookup answers (RST).
        let _ = INGRESS_SOCKETS.redirect_sk_lookup(ctx, *index + sockets, 0);
    }
    SK_PASS
}
