//! Which of this node's addresses serve NodePorts and the ingress hand-off.
//! Pure: the agent gathers the facts (its Node object, the addresses on its
//! uplinks and on every device), this module decides.
//!
//! kube-proxy's rules: `nodePortAddresses` (and `--nodeport-addresses`) holds
//! CIDRs or the keywords `primary` and `all`; empty means `primary`, as in
//! kube-proxy's nftables mode. `primary` is the Node object's InternalIP and
//! ExternalIP. Without a Node object for this node (the directory source is
//! often used with none), `primary` is the addresses of the `--devices`
//! uplinks, as kube-proxy falls back to the node's own addresses.
use std::net::IpAddr;

use crate::model::Family;
pub use crate::source::config::NodePortAddress;

/// What the agent knows of this node's addresses.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LocalAddresses {
    /// Addresses (both families, no IPv6 link-local) on the `--devices`
    /// uplinks, in device order.
    pub uplinks: Vec<IpAddr>,
    /// Every address of the node's network namespace that is neither
    /// loopback nor IPv6 link-local.
    pub all: Vec<IpAddr>,
}

/// The addresses chosen, and where they came from (for the log and status).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Chosen {
    pub addresses: Vec<IpAddr>,
    /// e.g. "the Node object node-a" or "the uplinks eth0 (no Node object node-a)".
    pub source: String,
}

/// The primary addresses, per family: the Node object's addresses of that
/// family, else the uplinks' (as kube-proxy's proxier of each family takes
/// the node IP of its family).
pub fn primary(node_name: &str, node_object: Option<&[IpAddr]>, local: &LocalAddresses) -> Chosen {
    let of = |addrs: &[IpAddr], family: Family| -> Vec<IpAddr> {
        addrs
            .iter()
            .copied()
            .filter(|a| Family::of(*a) == family)
            .collect()
    };
    let mut addresses = Vec::new();
    let mut from_uplinks = Vec::new();
    for family in [Family::V4, Family::V6] {
        let from_node = of(node_object.unwrap_or_default(), family);
        if from_node.is_empty() {
            let up = of(&local.uplinks, family);
            if !up.is_empty() {
                from_uplinks.push(family);
            }
            addresses.extend(up);
        } else {
            addresses.extend(from_node);
        }
    }
    let source = match (node_object, from_uplinks.as_slice()) {
        (None, _) => format!("the uplinks' addresses (no Node object {node_name})"),
        (Some(_), []) => format!("the Node object {node_name}"),
        (Some(addrs), families) => {
            let names: Vec<&str> = families.iter().map(|f| f.api_name()).collect();
            let which = names.join(" and ");
            if addrs.is_empty() {
                format!(
                    "the uplinks' addresses (the Node object {node_name} has no InternalIP or ExternalIP)"
                )
            } else {
                format!(
                    "the Node object {node_name}, and the uplinks' {which} addresses (it has no {which} InternalIP or ExternalIP)"
                )
            }
        }
    };
    Chosen { addresses, source }
}

/// The addresses NodePorts are served on, by `selection` (empty: primary).
pub fn node_port_addresses(
    selection: &[NodePortAddress],
    node_name: &str,
    node_object: Option<&[IpAddr]>,
    local: &LocalAddresses,
) -> Chosen {
    if selection.is_empty() {
        return primary(node_name, node_object, local);
    }
    let mut out: Vec<IpAddr> = Vec::new();
    let mut push = |a: IpAddr| {
        if !out.contains(&a) {
            out.push(a);
        }
    };
    // Candidates for CIDRs: every address the node has, from either view.
    let known: Vec<IpAddr> = node_object
        .unwrap_or_default()
        .iter()
        .chain(&local.all)
        .chain(&local.uplinks)
        .copied()
        .collect();
    for entry in selection {
        match entry {
            NodePortAddress::Primary => primary(node_name, node_object, local)
                .addresses
                .into_iter()
                .for_each(&mut push),
            NodePortAddress::All => known.iter().copied().for_each(&mut push),
            NodePortAddress::Cidr(cidr) => known
                .iter()
                .copied()
                .filter(|a| in_cidr(*a, cidr.addr, cidr.prefix))
                .for_each(&mut push),
        }
    }
    let names: Vec<String> = selection.iter().map(ToString::to_string).collect();
    Chosen {
        addresses: out,
        source: format!("nodePortAddresses {}", names.join(",")),
    }
}

/// Whether `addr` lies in `net`/`prefix` (never across families).
pub fn in_cidr(addr: IpAddr, net: IpAddr, prefix: u8) -> bool {
    Family::of(addr) == Family::of(net) && network(addr, prefix) == network(net, prefix)
}

/// `addr/prefix` with the host bits cleared.
pub fn network(addr: IpAddr, prefix: u8) -> IpAddr {
    match addr {
        IpAddr::V4(a) => {
            let mask = u32::MAX
                .checked_shl(32 - u32::from(prefix.min(32)))
                .unwrap_or(0);
            IpAddr::from((u32::from(a) & mask).to_be_bytes())
        }
        IpAddr::V6(a) => {
            let mask = u128::MAX
                .checked_shl(128 - u32::from(prefix.min(128)))
                .unwrap_or(0);
            IpAddr::from((u128::from(a) & mask).to_be_bytes())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    const NODE: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 18, 100, 11));
    const UPLINK: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 18, 100, 21));
    const OTHER: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 19, 7, 1));
    const NODE6: IpAddr = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0x100, 0, 0, 0, 0, 11));
    const UPLINK6: IpAddr = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0x100, 0, 0, 0, 0, 21));

    fn local() -> LocalAddresses {
        LocalAddresses {
            uplinks: vec![UPLINK],
            all: vec![UPLINK, OTHER],
        }
    }

    #[test]
    fn primary_is_the_node_objects_addresses_else_the_uplinks() {
        let with = node_port_addresses(&[], "node-a", Some(&[NODE]), &local());
        assert_eq!(with.addresses, vec![NODE]);
        assert_eq!(with.source, "the Node object node-a");
        let without = node_port_addresses(&[], "node-a", None, &local());
        assert_eq!(without.addresses, vec![UPLINK]);
        assert!(
            without.source.contains("no Node object node-a"),
            "{}",
            without.source
        );
        let empty = node_port_addresses(&[], "node-a", Some(&[]), &local());
        assert_eq!(empty.addresses, vec![UPLINK]);
        let nothing = node_port_addresses(&[], "node-a", None, &LocalAddresses::default());
        assert!(nothing.addresses.is_empty());
    }

    #[test]
    fn keywords_and_cidrs_select_among_every_address_the_node_has() {
        let sel = |s: &str| -> Vec<NodePortAddress> {
            s.split(',').map(|e| e.parse().expect(e)).collect()
        };
        assert_eq!(
            sel("all,primary,198.19.0.0/16")[2].to_string(),
            "198.19.0.0/16"
        );
        let all = node_port_addresses(&sel("all"), "n", Some(&[NODE]), &local());
        assert_eq!(all.addresses, vec![NODE, UPLINK, OTHER]);
        let cidr = node_port_addresses(&sel("198.19.0.0/16"), "n", Some(&[NODE]), &local());
        assert_eq!(cidr.addresses, vec![OTHER]);
        assert_eq!(cidr.source, "nodePortAddresses 198.19.0.0/16");
        let mixed = node_port_addresses(&sel("primary,198.19.0.0/16"), "n", None, &local());
        assert_eq!(mixed.addresses, vec![UPLINK, OTHER]);
        let none = node_port_addresses(&sel("203.0.113.0/24"), "n", Some(&[NODE]), &local());
        assert!(none.addresses.is_empty());
    }

    #[test]
    fn primary_is_chosen_per_family() {
        let local = LocalAddresses {
            uplinks: vec![UPLINK, UPLINK6],
            all: vec![UPLINK, UPLINK6, OTHER],
        };
        // A dual-stack Node object: both of its addresses.
        let both = node_port_addresses(&[], "n", Some(&[NODE, NODE6]), &local);
        assert_eq!(both.addresses, vec![NODE, NODE6]);
        assert_eq!(both.source, "the Node object n");
        // An IPv4-only Node object on a dual-stack node: IPv6 from the uplinks.
        let v4 = node_port_addresses(&[], "n", Some(&[NODE]), &local);
        assert_eq!(v4.addresses, vec![NODE, UPLINK6]);
        assert!(
            v4.source.contains("uplinks' IPv6 addresses"),
            "{}",
            v4.source
        );
        let none = node_port_addresses(&[], "n", None, &local);
        assert_eq!(none.addresses, vec![UPLINK, UPLINK6]);
        // CIDRs never match across families.
        let sel: Vec<NodePortAddress> = vec!["2001:db8:100::/48".parse().unwrap()];
        let cidr = node_port_addresses(&sel, "n", Some(&[NODE, NODE6]), &local);
        assert_eq!(cidr.addresses, vec![NODE6, UPLINK6]);
        assert_eq!(
            network("2001:db8:100::15".parse().unwrap(), 64),
            "2001:db8:100::".parse::<IpAddr>().unwrap()
        );
        assert!(!in_cidr(NODE, "::".parse().unwrap(), 0));
    }
}
