//! The IPv6 instance of the load balancer (see v4.rs): the same logic over
//! 16-byte addresses, the IPv6 maps (SERVICES6_V1, ...), parse6.rs, the
//! checksum updates without an IP checksum, and reject6.rs.
pub mod fam {
    use lb_common::HAIRPIN_ADDR6;

    use crate::{
        maps,
        packet::{Packet, Side},
    };

    pub use crate::maps::{
        AFFINITY6 as AFFINITY, BACKENDS6 as BACKENDS, CT6 as CT, SERVICES6 as SERVICES,
    };
    pub use crate::reject6::reject;
    pub use crate::sock::SOCK_REVNAT6 as SOCK_REVNAT;
    pub use lb_common::sock::{SockRevKey6 as SockRevKey, SockRevValue6 as SockRevValue};
    pub use lb_common::{
        flow_hash6 as flow_hash, AffinityKey6 as AffinityKey, CtKey6 as CtKey, CtValue6 as CtValue,
        MonitorEvent6 as MonitorEvent, ServiceKey6 as ServiceKey,
    };

    pub type Addr = [u8; 16];
    pub type Flow = crate::parse::Flow<Addr>;
    pub const ZERO: Addr = [0; 16];
    pub const HAIRPIN: Addr = HAIRPIN_ADDR6;

    #[inline(always)]
    pub fn parse<P: Packet>(p: &P) -> Option<Flow> {
        crate::parse6::parse_ipv6(p)
    }

    #[inline(always)]
    pub fn rewrite<P: Packet>(
        p: &P,
        flow: &Flow,
        side: Side,
        addr: Addr,
        port: u16,
    ) -> Result<(), i64> {
        p.rewrite6(flow, side, addr, port)
    }

    /// The 32 bits of an address the no-service filter hashes.
    #[inline(always)]
    pub fn filter_addr(a: Addr) -> [u8; 4] {
        lb_common::filter::fold6(a)
    }

    #[inline(always)]
    pub fn source_allowed(service_id: u32, client: Addr) -> bool {
        maps::source_allowed6(service_id, client)
    }

    #[inline(always)]
    pub fn node_addr(ifindex: u32) -> Option<Addr> {
        maps::node_addr6(ifindex)
    }

    /// Where an IP header keeps its addresses and (IPv4) its checksum, and
    /// whether ICMP's checksum covers the IP addresses (ICMPv6's does).
    pub const IP_SRC: usize = crate::parse6::IP6_SRC_OFF - crate::parse::ETH_HLEN;
    pub const IP_DST: usize = crate::parse6::IP6_DST_OFF - crate::parse::ETH_HLEN;
    pub const IP_CSUM: Option<usize> = None;
    pub const ICMP_PSEUDO_HEADER: bool = true;

    #[inline(always)]
    pub fn icmp_error<P: Packet>(p: &P, q: &mut crate::quoted::Quoted<Addr>) -> bool {
        crate::quoted::icmp6_error(p, q)
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
