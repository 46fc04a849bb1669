//! The ingress hand-off (sk_lookup in the node's network namespace): a TCP
//! connection to an ingress address on an ingress port is given to the
//! embedded proxy's listening socket, whatever address that socket is bound
//! to. Everything else goes on to the normal socket lookup.
use aya_ebpf::{
    bindings::sk_action::SK_PASS,
    btf_maps::{HashMap, SockMap},
    macros::btf_map,
    programs::SkLookupContext,
};
use lb_common::ingress::{IngressKey, MAX_INGRESS_ADDRS, SOCKETS};

#[btf_map(name = "INGRESS_ADDRS_V1")]
static INGRESS_ADDRS: HashMap<IngressKey, u32, { MAX_INGRESS_ADDRS as usize }> = HashMap::new();

#[btf_map(name = "INGRESS_SOCKETS_V1")]
static INGRESS_SOCKETS: SockMap<{ SOCKETS as usize }> = SockMap::new();

const AF_INET: u32 = 2;
const IPPROTO_TCP: u32 = 6;

#[inline(always)]
pub fn lookup(ctx: &SkLookupContext) -> u32 {
    // SAFETY: the kernel passes a valid bpf_sk_lookup for the program's run.
    let l = unsafe { &*ctx.lookup };
    if l.family != AF_INET || l.protocol != IPPROTO_TCP {
        return SK_PASS;
    }
    let key = IngressKey {
        // local_ip4 is in network byte order: its in-memory bytes are the address.
        addr: l.local_ip4.to_ne_bytes(),
        port: l.local_port as u16,
        _pad: 0,
    };
    // SAFETY: a read of a map value the program does not keep.
    if let Some(index) = unsafe { INGRESS_ADDRS.get(&key) } {
        // No socket (the proxy is gone): the normal lookup answers (RST).
        let _ = INGRESS_SOCKETS.redirect_sk_lookup(ctx, *index, 0);
    }
    SK_PASS
}
