//! The IPv4 instance of the load balancer. lb.rs, conntrack.rs, select.rs,
//! nat.rs and entry.rs are written once for both address families and
//! included here and in v6.rs, each time with the family's `fam`: its
//! address type, map types (the same field names in both families), maps,
//! parsing, rewriting and rejection. The included files reach the family
//! only through `super::fam`, so the two instances cannot drift apart.
pub mod fam {
    use lb_common::HAIRPIN_ADDR;

    use crate::{
        maps,
        packet::{Packet, Side},
    };

    pub use crate::maps::{AFFINITY, BACKENDS, CT, SERVICES};
    pub use crate::reject::reject;
    pub use crate::sock::SOCK_REVNAT;
    pub use lb_common::{
        flow_hash,
        sock::{SockRevKey, SockRevValue},
        AffinityKey, CtKey, CtValue, MonitorEvent, ServiceKey,
    };

    pub type Addr = [u8; 4];
    pub type Flow = crate::parse::Flow<Addr>;
    pub const ZERO: Addr = [0; 4];
    pub const HAIRPIN: Addr = HAIRPIN_ADDR;

    #[inline(always)]
    pub fn parse<P: Packet>(p: &P) -> Option<Flow> {
        crate::parse::parse_ipv4(p)
    }

    #[inline(always)]
    pub fn rewrite<P: Packet>(
        p: &P,
        flow: &Flow,
        side: Side,
        addr: Addr,
        port: u16,
    ) -> Result<(), i64> {
        p.rewrite(flow, side, addr, port)
    }

    /// The 32 bits of an address the no-service filter hashes.
    #[inline(always)]
    pub fn filter_addr(a: Addr) -> [u8; 4] {
        a
    }

    #[inline(always)]
    pub fn source_allowed(service_id: u32, client: Addr) -> bool {
        maps::source_allowed(service_id, client)
    }

    #[inline(always)]
    pub fn node_addr(ifindex: u32) -> Option<Addr> {
        maps::node_addr(ifindex)
    }

    /// Where an IP header keeps its addresses and (IPv4) its checksum, and
    /// whether ICMP's checksum covers the IP addresses (ICMPv6's does).
    pub const IP_SRC: usize = crate::parse::IP_SRC_OFF - crate::parse::ETH_HLEN;
    pub const IP_DST: usize = crate::parse::IP_DST_OFF - crate::parse::ETH_HLEN;
    pub const IP_CSUM: Option<usize> = Some(crate::parse::IP_CSUM_OFF - crate::parse::ETH_HLEN);
    pub const ICMP_PSEUDO_HEADER: bool = false;

    #[inline(always)]
    pub fn icmp_error<P: Packet>(p: &P, q: &mut crate::quoted::Quoted<Addr>) -> bool {
        crate::quoted::icmp_error(p, q)
    }
}

#[allow(clippy::duplicate_mod)]
#[path = "conntrack.rs"]
pub mod conntrack;
#[allow(clippy::duplicate_mod)]
#[path = "entry.rs"]
pub mod entry;
#[allow(clippy::duplicate_mod)]
#[path = "events.rs"]
pub mod events;
#[allow(clippy::duplicate_mod)]
#[path = "icmp.rs"]
pub mod icmp;
#[allow(clippy::duplicate_mod)]
#[path = "lb.rs"]
pub mod lb;
#[allow(clippy::duplicate_mod)]
#[path = "nat.rs"]
mod nat;
#[allow(clippy::duplicate_mod)]
#[path = "select.rs"]
pub mod select;
#[allow(clippy::duplicate_mod)]
#[path = "sock_lb.rs"]
pub mod sock;
