//! The agent's ingress part: starts the embedded proxy and the eBPF
//! hand-off, and on every new cluster state rebuilds the routing table
//! (swapped in whole) and the set of ingress addresses.
use std::{collections::BTreeSet, net::Ipv4Addr, sync::Arc};

use tracing::{info, warn};

use crate::{
    dataplane::{
        ingress::{IngressError, IngressHandoff},
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
    pub extra_addresses: Vec<Ipv4Addr>,
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
    last_addresses: Option<BTreeSet<Ipv4Addr>>,
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
        handoff.set_sockets(&listeners.http, &listeners.https)?;
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
        })
    }

    /// The routing table the proxy serves (for `weir ingress routes`).
    pub fn table(&self) -> SharedTable {
        self.table.clone()
    }

    /// The node's primary addresses (its Node object's InternalIP/ExternalIP,
    /// else its uplinks') and the extra ones.
    pub fn addresses(&self, state: &ClusterState, node: &NodeFacts) -> BTreeSet<Ipv4Addr> {
        let mut set: BTreeSet<Ipv4Addr> = self.cfg.extra_addresses.iter().copied().collect();
        set.extend(self.primary(state, node).addresses);
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
        let addresses: Vec<Ipv4Addr> = if self.cfg.extra_addresses.is_empty() {
            self.addresses(state, node).into_iter().collect()
        } else {
            let set: BTreeSet<Ipv4Addr> = self.cfg.extra_addresses.iter().copied().collect();
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
        let table = build(
            state,
            &RouteConfig {
                node_name: node.node_name.clone(),
            },
        );
        if table.warnings != self.last_warnings {
            for w in &table.warnings {
                warn!("ingress: {w}");
            }
            self.last_warnings = table.warnings.clone();
        }
        info!(
            hosts = table.hosts.len() + table.wildcards.len(),
            certificates = table.certs.len(),
            default_backend = table.default_backend.is_some(),
            skipped = table.warnings.len(),
            "ingress routes updated"
        );
        let problems: BTreeSet<(ObjectRef, String)> = table.problems.iter().cloned().collect();
        let new: Vec<(ObjectRef, String)> = problems.difference(&self.reported).cloned().collect();
        self.reported = problems;
        self.table.store(Arc::new(table));
        let addresses = self.addresses(state, node);
        if self.last_addresses.as_ref() != Some(&addresses) && addresses.is_empty() {
            warn!(
                "ingress: no address to serve on: {} gives none and --ingress-addresses is \
                 empty; nothing is handed to the proxy until there is one",
                self.primary(state, node).source
            );
        }
        if self.last_addresses.as_ref() != Some(&addresses) {
            match self
                .handoff
                .set_addresses(&addresses, self.cfg.http_port, self.cfg.https_port)
            {
                Ok(()) => {
                    info!(addresses = ?addresses, "ingress addresses");
                    self.last_addresses = Some(addresses);
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
