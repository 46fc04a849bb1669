//! The agent's ingress part: starts the embedded proxy and the eBPF
//! hand-off, and on every new cluster state rebuilds the routing table
//! (swapped in whole) and the set of ingress addresses.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr, SocketAddr},
    sync::Arc,
};

use lb_common::ingress::{IngressKey, SOCKET_HTTP, SOCKET_HTTPS, SOCKET_STREAM};

use tracing::{info, warn};

use crate::{
    dataplane::{
        ingress::{keys, IngressError, IngressHandoff},
        Dataplane,
    },
    model::{ClusterState, ObjectRef},
    node_addrs::{primary, Chosen},
    proxy::{self, Listeners, ProxyConfig, ProxyError, SharedTable},
    routes::{build, build::selected, RouteConfig},
    source::ingress_status::Statuses,
    translate::NodeFacts,
};

#[derive(Debug, thiserror::Error)]
pub enum IngressStartError {
    #[error(transparent)]
    Proxy(#[from] ProxyError),
    #[error("the sk_lookup hand-off: {0}")]
    Handoff(#[from] IngressError),
}

#[derive(Clone, Debug)]
pub struct IngressConfig {
    pub proxy: ProxyConfig,
    /// The ports taken over on the ingress addresses.
    pub http_port: u16,
    pub https_port: u16,
    /// Addresses taken over besides the node's own (e.g. LoadBalancer IPs routed to the node).
    pub extra_addresses: Vec<IpAddr>,
    /// --gateway-address-pool: one address each for Gateways without spec.addresses.
    pub gateway_pool: Vec<Ipv4Addr>,
    /// Worker threads of the proxy's runtime.
    pub threads: usize,
}

pub struct Ingress {
    cfg: IngressConfig,
    table: SharedTable,
    handoff: IngressHandoff,
    last_warnings: Vec<String>,
    /// Problems already reported (so each is reported once while it lasts).
    reported: BTreeSet<(ObjectRef, String)>,
    last_addresses: Option<BTreeSet<IpAddr>>,
    /// The hand-off's entries written last (addresses, ports, sockets).
    last_entries: Vec<(IngressKey, u32)>,
    /// The pool address each Gateway has (kept while the Gateway lives).
    gateway_pool_addresses: BTreeMap<ObjectRef, IpAddr>,
}

impl Ingress {
    /// Binds the proxy's listeners, attaches the hand-off with them, and starts serving.
    pub fn start(
        cfg: IngressConfig,
        dataplane: &mut Dataplane,
        metrics: crate::metrics::ProxyMetrics,
    ) -> Result<Self, IngressStartError> {
        let listeners = Listeners::bind(&cfg.proxy)?;
        let mut handoff = IngressHandoff::attach(dataplane)?;
        handoff.set_sockets(&listeners)?;
        let table = proxy::shared_table();
        proxy::start(
            listeners,
            cfg.proxy.clone(),
            table.clone(),
            cfg.threads,
            metrics,
        )?;
        info!(
            http_port = cfg.http_port,
            https_port = cfg.https_port,
            "ingress hand-off attached (sk_lookup)"
        );
        Ok(Self {
            cfg,
            table,
            handoff,
            last_warnings: Vec::new(),
            reported: BTreeSet::new(),
            last_addresses: None,
            last_entries: Vec::new(),
            gateway_pool_addresses: BTreeMap::new(),
        })
    }

    /// The routing table the proxy serves (for `weir ingress routes`).
    pub fn table(&self) -> SharedTable {
        self.table.clone()
    }

    /// The node's primary addresses (its Node object's InternalIP/ExternalIP,
    /// else its uplinks'; IPv6 ones only with --ipv6) and the extra ones.
    pub fn addresses(&self, state: &ClusterState, node: &NodeFacts) -> BTreeSet<IpAddr> {
        let mut set: BTreeSet<IpAddr> = self.cfg.extra_addresses.iter().copied().collect();
        set.extend(
            self.primary(state, node)
                .addresses
                .into_iter()
                .filter(|a| a.is_ipv4() || node.ipv6),
        );
        set
    }

    fn primary(&self, state: &ClusterState, node: &NodeFacts) -> Chosen {
        let object = state.nodes.get(&node.node_name);
        primary(
            &node.node_name,
            object.map(|n| n.addresses.as_slice()),
            &node.local,
        )
    }

    /// What each served Ingress's status.loadBalancer should list:
    /// --ingress-addresses when given (the same on every node, so agents on
    /// several nodes agree), otherwise this node's ingress addresses.
    pub fn statuses(&self, state: &ClusterState, node: &NodeFacts) -> Statuses {
        let addresses: Vec<IpAddr> = if self.cfg.extra_addresses.is_empty() {
            self.addresses(state, node).into_iter().collect()
        } else {
            let set: BTreeSet<IpAddr> = self.cfg.extra_addresses.iter().copied().collect();
            set.into_iter().collect()
        };
        state
            .ingress
            .ingresses
            .values()
            .filter(|i| selected(state, i))
            .map(|i| (i.id.clone(), addresses.clone()))
            .collect()
    }

    /// Applies a new cluster state: a new routing table, and the ingress
    /// addresses. Returns the problems that are new since the last state.
    pub fn apply(&mut self, state: &ClusterState, node: &NodeFacts) -> Vec<(ObjectRef, String)> {
        let addresses = self.addresses(state, node);
        let table = build(
            state,
            &RouteConfig {
                node_name: node.node_name.clone(),
                gateway_addresses: addresses.iter().copied().collect(),
                gateway_pool: self
                    .cfg
                    .gateway_pool
                    .iter()
                    .map(|a| IpAddr::V4(*a))
                    .collect(),
                gateway_previous: self.gateway_pool_addresses.clone(),
            },
        );
        self.gateway_pool_addresses = table
            .gateway_status
            .gateways
            .iter()
            .filter_map(|g| {
                let a: Ipv4Addr = g.addresses.first()?.value.parse().ok()?;
                self.cfg
                    .gateway_pool
                    .contains(&a)
                    .then(|| (ObjectRef::new(&g.namespace, &g.name), IpAddr::V4(a)))
            })
            .collect();
        if table.warnings != self.last_warnings {
            for w in &table.warnings {
                warn!("ingress: {w}");
            }
            self.last_warnings = table.warnings.clone();
        }
        info!(
            hosts = table.ingress.hosts.len() + table.ingress.wildcards.len(),
            certificates = table.certs.len(),
            default_backend = table.ingress.default.is_some(),
            gateway_listeners = table.gateways.len(),
            skipped = table.warnings.len(),
            "ingress routes updated"
        );
        let problems: BTreeSet<(ObjectRef, String)> = table.problems.iter().cloned().collect();
        let new: Vec<(ObjectRef, String)> = problems.difference(&self.reported).cloned().collect();
        self.reported = problems;
        let mut entries = keys(&addresses, self.cfg.http_port, self.cfg.https_port);
        // Gateway listeners take their addresses and ports over from the
        // Ingress rules: HTTP and HTTPS ones to those sockets, TLS and TCP
        // ones to the stream socket.
        let mut gateway_keys: Vec<(SocketAddr, u32)> = table
            .gateways
            .iter()
            .map(|(k, p)| (*k, if p.tls() { SOCKET_HTTPS } else { SOCKET_HTTP }))
            .chain(table.streams.keys().map(|k| (*k, SOCKET_STREAM)))
            .collect();
        gateway_keys.sort();
        for (key, socket) in &gateway_keys {
            let k = IngressKey::new(key.ip(), key.port());
            entries.retain(|(e, _)| *e != k);
            entries.push((k, *socket));
        }
        self.table.store(Arc::new(table));
        if self.last_addresses.as_ref() != Some(&addresses) && addresses.is_empty() {
            warn!(
                "ingress: no address to serve on: {} gives none and --ingress-addresses is \
                 empty; nothing is handed to the proxy until there is one",
                self.primary(state, node).source
            );
        }
        if self.last_addresses.as_ref() != Some(&addresses) || self.last_entries != entries {
            match self.handoff.set_entries(&entries) {
                Ok(()) => {
                    info!(addresses = ?addresses, gateway_listeners = ?gateway_keys, "ingress addresses");
                    self.last_addresses = Some(addresses);
                    self.last_entries = entries;
                }
                Err(e) => warn!(
                    addresses = ?addresses,
                    "ingress addresses (ports {} and {}): {e}; retried with the next state",
                    self.cfg.http_port,
                    self.cfg.https_port
                ),
            }
        }
        new
    }
}

/// --gateway-address-pool: an IPv4 network.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AddressPool {
    pub network: Ipv4Addr,
    pub prefix: u8,
}

impl AddressPool {
    /// Its usable addresses: all of them, less the network and broadcast
    /// addresses of networks larger than /31.
    pub fn addresses(&self) -> Vec<Ipv4Addr> {
        let base = u32::from(self.network);
        let size = 1u64 << (32 - u32::from(self.prefix));
        let (first, last) = if self.prefix <= 30 {
            (1, size - 1)
        } else {
            (0, size)
        };
        (first..last)
            .map(|i| Ipv4Addr::from(base + i as u32))
            .collect()
    }
}

/// Parses "A.B.C.D/N" with 16 <= N <= 32 and no host bits set.
pub fn parse_pool(s: &str) -> Result<AddressPool, String> {
    let (addr, prefix) = s
        .split_once('/')
        .ok_or_else(|| format!("{s:?} is not a CIDR like 198.19.2.0/24"))?;
    let network: Ipv4Addr = addr
        .parse()
        .map_err(|_| format!("{s:?}: {addr:?} is not an IPv4 address"))?;
    let prefix: u8 = prefix
        .parse()
        .ok()
        .filter(|p| (16..=32).contains(p))
        .ok_or_else(|| format!("{s:?}: the prefix must be 16 to 32"))?;
    let masked = crate::node_addrs::network(network.into(), prefix);
    if masked != std::net::IpAddr::V4(network) {
        return Err(format!(
            "{s:?}: host bits are set (the network is {masked}/{prefix})"
        ));
    }
    Ok(AddressPool { network, prefix })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pools_parse_and_list_their_usable_addresses() {
        let p = parse_pool("198.19.2.0/30").unwrap();
        assert_eq!(
            p.addresses(),
            [Ipv4Addr::new(198, 19, 2, 1), Ipv4Addr::new(198, 19, 2, 2)]
        );
        assert_eq!(
            parse_pool("198.19.2.7/32").unwrap().addresses(),
            [Ipv4Addr::new(198, 19, 2, 7)]
        );
        assert_eq!(
            parse_pool("198.19.0.0/16").unwrap().addresses().len(),
            65534
        );
        assert!(parse_pool("198.19.2.1/24")
            .unwrap_err()
            .contains("host bits"));
        assert!(parse_pool("198.19.0.0/8").unwrap_err().contains("16 to 32"));
        assert!(parse_pool("198.19.2.0").is_err());
    }
}
