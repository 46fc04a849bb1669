//! The benchmark's cluster: N Services with E endpoints each, written as
//! Kubernetes YAML (what the agent reads) and loaded back through Weir's own
//! directory source, so that Weir and the kube-proxy rule generators start
//! from the very same Service/EndpointSlice input.
//!
//! Addresses (all in 198.18.0.0/15): ClusterIPs from 198.19.1.0 up (the port
//! moves on after 65024 services, so 100k services stay distinct), endpoint
//! addresses from 198.18.128.0/17 (the port moves on after 32768), the node
//! at 198.18.0.1 (the gateway address of weir-tests' sandbox). One service,
//! in the middle of the name order, is the *target*: a NodePort service
//! whose endpoints are the real backend pods of the end-to-end topology.
use std::{fmt::Write as _, net::Ipv4Addr, path::Path};

use anyhow::{bail, Context, Result};
use weir::{
    model::{
        ClusterState, Endpoint, EndpointPort, EndpointSlice, Node, ObjectRef, Protocol, Service,
        ServicePort, ServiceType,
    },
    source::dir::DirSource,
    translate::{translate, Desired, NodeFacts},
};
use weir_tests::manifests::{port, service_with, slice, write_atomic};

pub const NAMESPACE: &str = "bench";
pub const NODE_NAME: &str = "node-a";
/// The node's address: NodePorts are served here.
pub const NODE_IP: Ipv4Addr = weir_tests::sandbox::GATEWAY;
/// Pods live in 198.18.0.0/16 (kube-proxy's clusterCIDR: no masquerade for pod traffic).
pub const CLUSTER_CIDR: &str = "198.18.0.0/16";
/// Ports of the target service: TCP 80 -> 8080 (NodePort 30080), UDP 53 -> 5353 (NodePort 30053).
pub const TCP_PORT: u16 = 80;
pub const TCP_TARGET: u16 = 8080;
pub const TCP_NODE_PORT: u16 = 30080;
pub const UDP_PORT: u16 = 53;
pub const UDP_TARGET: u16 = 5353;
pub const UDP_NODE_PORT: u16 = 30053;
/// Services per YAML file.
const PER_FILE: usize = 1000;

/// What to generate.
#[derive(Clone, Debug)]
pub struct Workload {
    pub services: usize,
    pub endpoints: usize,
    /// The target service's endpoints (real pods); empty: generated like the others.
    pub target_endpoints: Vec<Ipv4Addr>,
}

impl Workload {
    pub fn new(services: usize, endpoints: usize) -> Self {
        Self {
            services,
            endpoints,
            target_endpoints: Vec::new(),
        }
    }

    /// Index of the target service: the middle of the name order (the
    /// expected position of a service in kube-proxy's linear chain).
    pub fn target_index(&self) -> usize {
        self.services / 2
    }

    pub fn target_name(&self) -> String {
        service_name(self.target_index())
    }

    pub fn target_ip(&self) -> Ipv4Addr {
        cluster_ip(self.target_index()).0
    }

    /// Writes the manifests (one Node, the services and their slices) into `dir`.
    pub fn write(&self, dir: &Path) -> Result<()> {
        if self.services == 0 || self.endpoints == 0 {
            bail!("a workload needs at least one service and one endpoint");
        }
        write_atomic(&dir.join("node.yaml"), &node_yaml())?;
        let mut text = String::new();
        for i in 0..self.services {
            text.push_str(&self.service_yaml(i));
            if (i + 1) % PER_FILE == 0 || i + 1 == self.services {
                let file = dir.join(format!("services-{:06}.yaml", i / PER_FILE));
                write_atomic(&file, &text)?;
                text.clear();
            }
        }
        Ok(())
    }

    /// The same cluster as `write` produces, built in memory (for the
    /// benchmarks that do not measure reading YAML).
    pub fn state(&self) -> ClusterState {
        let mut state = ClusterState::default();
        state.nodes.insert(
            NODE_NAME.into(),
            Node {
                name: NODE_NAME.into(),
                addresses: vec![NODE_IP.into()],
                ..Default::default()
            },
        );
        for i in 0..self.services {
            let name = service_name(i);
            let id = ObjectRef::new(NAMESPACE, &name);
            let (ip, svc_port) = cluster_ip(i);
            let target = i == self.target_index();
            let sp = |n: &str, port, protocol, node_port| ServicePort {
                name: n.into(),
                port,
                protocol,
                node_port,
                app_protocol: None,
            };
            let ports = if target {
                vec![
                    sp("tcp", TCP_PORT, Protocol::Tcp, Some(TCP_NODE_PORT)),
                    sp("udp", UDP_PORT, Protocol::Udp, Some(UDP_NODE_PORT)),
                ]
            } else {
                vec![sp("http", svc_port, Protocol::Tcp, None)]
            };
            state.services.insert(
                id.clone(),
                std::sync::Arc::new(Service {
                    id,
                    service_type: if target {
                        ServiceType::NodePort
                    } else {
                        ServiceType::ClusterIp
                    },
                    cluster_ips: vec![ip.into()],
                    ports,
                    ..Default::default()
                }),
            );
            for (n, (slice_ports, addrs)) in self.slices(i).into_iter().enumerate() {
                let slice_id = ObjectRef::new(NAMESPACE, format!("{name}-{}", n + 1));
                state.slices.insert(
                    slice_id.clone(),
                    std::sync::Arc::new(EndpointSlice {
                        id: slice_id,
                        service_name: name.clone(),
                        family: weir::model::Family::V4,
                        ports: slice_ports,
                        endpoints: addrs
                            .into_iter()
                            .map(|address| Endpoint {
                                address: address.into(),
                                ready: true,
                                serving: true,
                                terminating: false,
                                node_name: Some(NODE_NAME.into()),
                                zone: None,
                                hint_zones: None,
                            })
                            .collect(),
                    }),
                );
            }
        }
        state
    }

    /// The EndpointSlices of service `i`: (ports, addresses) each.
    fn slices(&self, i: usize) -> Vec<(Vec<EndpointPort>, Vec<Ipv4Addr>)> {
        let ep = |name: &str, port, protocol| EndpointPort {
            name: name.into(),
            port,
            protocol,
        };
        if i == self.target_index() {
            let addrs = if self.target_endpoints.is_empty() {
                (0..self.endpoints)
                    .map(|e| endpoint(i * self.endpoints + e).0)
                    .collect()
            } else {
                self.target_endpoints.clone()
            };
            let ports = vec![
                ep("tcp", TCP_TARGET, Protocol::Tcp),
                ep("udp", UDP_TARGET, Protocol::Udp),
            ];
            return vec![(ports, addrs)];
        }
        // Generated endpoints differ in port too, so a service gets one slice
        // per distinct target port (as the EndpointSlice controller does).
        let mut by_port: std::collections::BTreeMap<u16, Vec<Ipv4Addr>> = Default::default();
        for e in 0..self.endpoints {
            let (addr, p) = endpoint(i * self.endpoints + e);
            by_port.entry(p).or_default().push(addr);
        }
        by_port
            .into_iter()
            .map(|(p, addrs)| (vec![ep("http", p, Protocol::Tcp)], addrs))
            .collect()
    }

    fn service_yaml(&self, i: usize) -> String {
        let name = service_name(i);
        let (ip, svc_port) = cluster_ip(i);
        let mut y = String::new();
        if i == self.target_index() {
            let ports = [
                port("tcp", TCP_PORT, "TCP", TCP_TARGET).node_port(TCP_NODE_PORT),
                port("udp", UDP_PORT, "UDP", UDP_TARGET).node_port(UDP_NODE_PORT),
            ];
            y.push_str("---\n");
            y.push_str(&service_with(
                NAMESPACE,
                &name,
                ip,
                &ports,
                "  type: NodePort\n",
                &[],
            ));
        } else {
            // One port whose targetPort is named, so that slices may differ in port.
            let _ = write!(
                y,
                "---\napiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: {NAMESPACE}\nspec:\n  clusterIP: {ip}\n  ports:\n    - {{name: \"http\", port: {svc_port}, protocol: TCP, targetPort: http}}\n"
            );
        }
        for (n, (slice_ports, addrs)) in self.slices(i).into_iter().enumerate() {
            let ports: Vec<_> = slice_ports
                .iter()
                .map(|p| port(&p.name, 0, protocol_name(p.protocol), p.port))
                .collect();
            let eps: Vec<(Ipv4Addr, bool)> = addrs.into_iter().map(|a| (a, true)).collect();
            y.push_str("---\n");
            y.push_str(&slice(
                NAMESPACE,
                &format!("{name}-{}", n + 1),
                &name,
                &ports,
                &eps,
            ));
        }
        y
    }
}

fn protocol_name(p: Protocol) -> &'static str {
    match p {
        Protocol::Tcp => "TCP",
        Protocol::Udp => "UDP",
        Protocol::Sctp => "SCTP",
    }
}

/// "svc-000042": zero-padded so that the name order is the index order.
pub fn service_name(i: usize) -> String {
    format!("svc-{i:06}")
}

/// ClusterIP and port of service `i`.
pub fn cluster_ip(i: usize) -> (Ipv4Addr, u16) {
    const SPAN: usize = 65024;
    let base = u32::from(Ipv4Addr::new(198, 19, 1, 0));
    let ip = Ipv4Addr::from(base + (i % SPAN) as u32);
    (ip, TCP_PORT + (i / SPAN) as u16)
}

/// Address and port of generated endpoint `j`.
pub fn endpoint(j: usize) -> (Ipv4Addr, u16) {
    const SPAN: usize = 32768;
    let base = u32::from(Ipv4Addr::new(198, 18, 128, 0));
    let ip = Ipv4Addr::from(base + (j % SPAN) as u32);
    (ip, TCP_TARGET + (j / SPAN) as u16)
}

fn node_yaml() -> String {
    format!(
        "apiVersion: v1\nkind: Node\nmetadata:\n  name: {NODE_NAME}\nstatus:\n  addresses:\n    - {{type: InternalIP, address: \"{NODE_IP}\"}}\n"
    )
}

/// Reads the directory through Weir's directory source; fails on any invalid document.
pub fn load(dir: &Path) -> Result<ClusterState> {
    let loaded = DirSource::new(dir)
        .load()
        .with_context(|| format!("reading {}", dir.display()))?;
    if let Some(e) = loaded.errors.first() {
        bail!("generated manifest is invalid: {e}");
    }
    Ok(loaded.state)
}

/// The node the agent would run on.
pub fn node_facts() -> NodeFacts {
    NodeFacts {
        node_name: NODE_NAME.into(),
        ..Default::default()
    }
}

/// kube-proxy's configuration on the bench node.
pub fn proxy_config() -> crate::kubeproxy::ProxyConfig {
    crate::kubeproxy::ProxyConfig {
        cluster_cidr: CLUSTER_CIDR.into(),
        node_ips: vec![NODE_IP],
    }
}

/// Weir's translation of `state` for the bench node.
pub fn desired(state: &ClusterState) -> Desired {
    translate(state, &node_facts())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_stay_distinct_and_in_the_benchmark_range() {
        assert_eq!(cluster_ip(0), (Ipv4Addr::new(198, 19, 1, 0), 80));
        assert_eq!(cluster_ip(65024), (Ipv4Addr::new(198, 19, 1, 0), 81));
        assert_eq!(cluster_ip(65023).0, Ipv4Addr::new(198, 19, 254, 255));
        assert_eq!(endpoint(32768), (Ipv4Addr::new(198, 18, 128, 0), 8081));
        assert_eq!(endpoint(32767).0, Ipv4Addr::new(198, 18, 255, 255));
    }

    #[test]
    fn a_written_workload_loads_back_into_the_frontends_weir_programs() -> Result<()> {
        let dir = weir_tests::manifests::ManifestDir::new("bench-unit-workload")?;
        let w = Workload {
            target_endpoints: vec![Ipv4Addr::new(198, 18, 1, 11)],
            ..Workload::new(5, 3)
        };
        w.write(&dir.path)?;
        let state = load(&dir.path)?;
        assert_eq!(state.services.len(), 5);
        assert_eq!(state, w.state(), "YAML and the in-memory model agree");
        let d = desired(&state);
        // 4 generated services, the target's two ClusterIP ports and two NodePorts.
        assert_eq!(d.frontends.len(), 4 + 2 + 2, "{:?}", d.warnings);
        assert!(d.frontends.values().all(|f| !f.backends.is_empty()));
        Ok(())
    }
}
