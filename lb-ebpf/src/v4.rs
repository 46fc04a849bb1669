//! The IPv4 instance of the load balancer. lb.rs, conntrack.rs, select.rs,
//! nat.rs and entry.rs are written once for both address families and
//! included here and in v6.rs, each time with the family's `fam`: its
//! address type, map types (the same field names in both families), maps,
//! parsing, rewriting and rejection. The included files reach the family
//! only through `super::fam`, so the two instances cannot drift apart.
pub mod fam {
    use lb_common::{MonitorEvent, HAIRPIN_ADDR};

    use crate::{
        maps,
        packet::{Packet, Side},
    };

    pub use crate::maps::{AFFINITY, BACKENDS, CT, SERVICES};
    pub use crate::reject::reject;
    pub use lb_common::{flow_hash, AffinityKey, Backend, CtKey, CtValue, ServiceKey};

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

    #[inline(always)]
    pub fn event(
        flow: &Flow,
        kind: u8,
        reason: u8,
        service_id: u32,
        nat_addr: Addr,
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

    /// Reports a datapath event to `weir monitor`.
    #[inline(always)]
    pub fn report(
        flow: &Flow,
        kind: u8,
        reason: u8,
        service_id: u32,
        nat_addr: Addr,
        nat_port: u16,
    ) {
        maps::report(event(flow, kind, reason, service_id, nat_addr, nat_port));
    }
}

#[allow(clippy::duplicate_mod)]
#[path = "conntrack.rs"]
pub mod conntrack;
#[allow(clippy::duplicate_mod)]
#[path = "entry.rs"]
pub mod entry;
#[allow(clippy::duplicate_mod)]
#[path = "lb.rs"]
pub mod lb;
#[allow(clippy::duplicate_mod)]
#[path = "nat.rs"]
mod nat;
#[allow(clippy::duplicate_mod)]
#[path = "select.rs"]
pub mod select;
