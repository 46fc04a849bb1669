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
use std::net::{IpAddr, Ipv4Addr};

pub use crate::source::config::NodePortAddress;

/// What the agent knows of this node's addresses.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LocalAddresses {
    /// IPv4 addresses on the `--devices` uplinks, in device order.
    pub uplinks: Vec<Ipv4Addr>,
    /// Every non-loopback IPv4 address in the node's network namespace.
    pub all: Vec<Ipv4Addr>,
}

/// The addresses chosen, and where they came from (for the log and status).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Chosen {
    pub addresses: Vec<Ipv4Addr>,
    /// e.g. "the Node object node-a" or "the uplinks eth0 (no Node object node-a)".
    pub source: String,
}

/// The primary addresses: the Node object's, else the uplinks'.
pub fn primary(
    node_name: &str,
    node_object: Option<&[Ipv4Addr]>,
    local: &LocalAddresses,
) -> Chosen {
    match node_object {
        Some(addrs) if !addrs.is_empty() => Chosen {
            addresses: addrs.to_vec(),
            source: format!("the Node object {node_name}"),
        },
        Some(_) => Chosen {
            addresses: local.uplinks.clone(),
            source: format!(
                "the uplinks' addresses (the Node object {node_name} has no IPv4 InternalIP or ExternalIP)"
            ),
        },
        None => Chosen {
            addresses: local.uplinks.clone(),
            source: format!("the uplinks' addresses (no Node object {node_name})"),
        },
    }
}

/// The addresses NodePorts are served on, by `selection` (empty: primary).
pub fn node_port_addresses(
    selection: &[NodePortAddress],
    node_name: &str,
    node_object: Option<&[Ipv4Addr]>,
    local: &LocalAddresses,
) -> Chosen {
    if selection.is_empty() {
        return primary(node_name, node_object, local);
    }
    let mut out: Vec<Ipv4Addr> = Vec::new();
    let mut push = |a: Ipv4Addr| {
        if !out.contains(&a) {
            out.push(a);
        }
    };
    // Candidates for CIDRs: every address the node has, from either view.
    let known: Vec<Ipv4Addr> = node_object
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
            NodePortAddress::Cidr(cidr) => {
                if let IpAddr::V4(net) = cidr.addr {
                    known
                        .iter()
                        .copied()
                        .filter(|a| in_cidr(*a, net, cidr.prefix))
                        .for_each(&mut push)
                }
            }
        }
    }
    let names: Vec<String> = selection.iter().map(ToString::to_string).collect();
    Chosen {
        addresses: out,
        source: format!("nodePortAddresses {}", names.join(",")),
    }
}

/// Whether `addr` lies in `net`/`prefix`.
pub fn in_cidr(addr: Ipv4Addr, net: Ipv4Addr, prefix: u8) -> bool {
    network(addr, prefix) == network(net, prefix)
}

/// `addr/prefix` with the host bits cleared.
pub fn network(addr: Ipv4Addr, prefix: u8) -> [u8; 4] {
    let mask = u32::MAX
        .checked_shl(32 - u32::from(prefix.min(32)))
        .unwrap_or(0);
    (u32::from(addr) & mask).to_be_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    const NODE: Ipv4Addr = Ipv4Addr::new(198, 18, 100, 11);
    const UPLINK: Ipv4Addr = Ipv4Addr::new(198, 18, 100, 21);
    const OTHER: Ipv4Addr = Ipv4Addr::new(198, 19, 7, 1);

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
}
