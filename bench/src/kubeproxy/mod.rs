//! The same Services and EndpointSlices programmed the way kube-proxy does
//! it: the rule shapes of its iptables mode and its nftables mode
//! (pkg/proxy/iptables and pkg/proxy/nftables), generated from Weir's model.
//! Pure functions from the model to rule text; loading them is `apply`.
//!
//! What is modelled: ClusterIP and NodePort service ports with the
//! endpoints kube-proxy would use (ready ones; serving-terminating when none
//! is ready: Weir's `translate::backends`), masquerade marking for traffic
//! from outside the cluster CIDR, hairpin, and NodePorts. Not modelled
//! (unused by the benchmark): session affinity, LoadBalancer source ranges,
//! externalTrafficPolicy Local, services without endpoints (REJECT).
pub mod iptables;
pub mod nftables;

use std::net::Ipv4Addr;

use weir::{
    model::{ClusterState, Protocol, ServiceType},
    translate::backends,
};

/// kube-proxy's configuration as far as the rules depend on it.
#[derive(Clone, Debug)]
pub struct ProxyConfig {
    /// Traffic from outside this CIDR to a ClusterIP is masqueraded.
    pub cluster_cidr: String,
    /// Addresses that accept NodePort traffic (nftables mode's nodeport-ips;
    /// iptables mode matches `--dst-type LOCAL` instead).
    pub node_ips: Vec<Ipv4Addr>,
}

/// One service port with what kube-proxy programs for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SvcPort {
    pub namespace: String,
    pub name: String,
    /// The port's name (may be empty).
    pub port_name: String,
    pub protocol: Protocol,
    pub cluster_ip: Ipv4Addr,
    pub port: u16,
    pub node_port: Option<u16>,
    /// (address, port) of each endpoint in use.
    pub endpoints: Vec<(Ipv4Addr, u16)>,
}

impl SvcPort {
    /// kube-proxy's ServicePortName: "ns/name:port" ("ns/name" for an unnamed port).
    pub fn port_name_text(&self) -> String {
        if self.port_name.is_empty() {
            format!("{}/{}", self.namespace, self.name)
        } else {
            format!("{}/{}:{}", self.namespace, self.name, self.port_name)
        }
    }

    pub fn proto(&self) -> &'static str {
        match self.protocol {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
        }
    }
}

/// Every TCP/UDP port of every ClusterIP/NodePort service in `state`, in the
/// model's order (namespace, name), with its endpoints.
pub fn service_ports(state: &ClusterState) -> Vec<SvcPort> {
    let mut out = Vec::new();
    let index = weir::model::SliceIndex::new(state);
    for svc in state.services.values() {
        if !matches!(
            svc.service_type,
            ServiceType::ClusterIp | ServiceType::NodePort
        ) || !weir::translate::handles(svc)
        {
            continue;
        }
        // kube-proxy's IPv4 proxier: the Service's IPv4 cluster IP.
        let Some(cluster_ip) = svc.cluster_ips.iter().find_map(|a| match a {
            std::net::IpAddr::V4(a) => Some(*a),
            std::net::IpAddr::V6(_) => None,
        }) else {
            continue;
        };
        let slices = index.of(&svc.id);
        for port in &svc.ports {
            if port.protocol == Protocol::Sctp {
                continue;
            }
            let endpoints = backends(slices, weir::model::Family::V4, port)
                .iter()
                .filter_map(|b| match b.addr {
                    std::net::IpAddr::V4(a) => Some((a, b.port)),
                    std::net::IpAddr::V6(_) => None,
                })
                .collect();
            out.push(SvcPort {
                namespace: svc.id.namespace.to_string(),
                name: svc.id.name.to_string(),
                port_name: port.name.clone(),
                protocol: port.protocol,
                cluster_ip,
                port: port.port,
                node_port: (svc.service_type == ServiceType::NodePort)
                    .then_some(port.node_port)
                    .flatten(),
                endpoints,
            });
        }
    }
    out
}

/// A chain-name hash: `len` base32 characters of FNV-1a over `text`.
/// (kube-proxy uses SHA-256; only uniqueness matters for the rules' cost.)
pub fn hash(text: &str, len: usize) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let fnv = |seed: u64| {
        text.bytes().fold(0xcbf2_9ce4_8422_2325u64 ^ seed, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        })
    };
    let (a, b) = (fnv(0), fnv(0x9e37_79b9_7f4a_7c15));
    let bits = (u128::from(a) << 64) | u128::from(b);
    (0..len.min(25))
        .map(|i| ALPHABET[((bits >> (5 * i)) & 31) as usize] as char)
        .collect()
}

#[cfg(test)]
pub(crate) mod fixture {
    use weir::model::{
        ClusterState, Endpoint, EndpointPort, EndpointSlice, ObjectRef, Protocol, Service,
        ServicePort, ServiceType,
    };

    use super::ProxyConfig;

    pub fn config() -> ProxyConfig {
        ProxyConfig {
            cluster_cidr: "198.18.0.0/16".into(),
            node_ips: vec!["198.18.0.1".parse().expect("literal")],
        }
    }

    /// Two services with two endpoints each: ns1/a (ClusterIP, TCP 80 ->
    /// 8080) and ns1/b (NodePort 30053, UDP 53 -> 5353).
    pub fn two_by_two() -> ClusterState {
        let mut state = ClusterState::default();
        let mut add = |name: &str,
                       ip: [u8; 4],
                       proto: Protocol,
                       port: u16,
                       target: u16,
                       node_port: Option<u16>,
                       eps: [[u8; 4]; 2]| {
            let id = ObjectRef::new("ns1", name);
            state.services.insert(
                id.clone(),
                std::sync::Arc::new(Service {
                    id: id.clone(),
                    service_type: if node_port.is_some() {
                        ServiceType::NodePort
                    } else {
                        ServiceType::ClusterIp
                    },
                    cluster_ips: vec![ip.into()],
                    ports: vec![ServicePort {
                        name: "p".into(),
                        port,
                        protocol: proto,
                        node_port,
                        app_protocol: None,
                    }],
                    ..Default::default()
                }),
            );
            let slice = ObjectRef::new("ns1", format!("{name}-1"));
            state.slices.insert(
                slice.clone(),
                std::sync::Arc::new(EndpointSlice {
                    id: slice,
                    service_name: name.into(),
                    family: weir::model::Family::V4,
                    ports: vec![EndpointPort {
                        name: "p".into(),
                        port: target,
                        protocol: proto,
                    }],
                    endpoints: eps.iter().map(|a| Endpoint::ready((*a).into())).collect(),
                }),
            );
        };
        add(
            "a",
            [198, 19, 0, 1],
            Protocol::Tcp,
            80,
            8080,
            None,
            [[198, 18, 1, 11], [198, 18, 1, 12]],
        );
        add(
            "b",
            [198, 19, 0, 2],
            Protocol::Udp,
            53,
            5353,
            Some(30053),
            [[198, 18, 1, 13], [198, 18, 1, 14]],
        );
        state
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_ports_carry_their_endpoints_and_node_ports() {
        let ports = service_ports(&fixture::two_by_two());
        assert_eq!(ports.len(), 2);
        assert_eq!(ports[0].port_name_text(), "ns1/a:p");
        assert_eq!(ports[0].node_port, None);
        assert_eq!(ports[1].node_port, Some(30053));
        assert_eq!(
            ports[1].endpoints,
            vec![
                ("198.18.1.13".parse().expect("literal"), 5353),
                ("198.18.1.14".parse().expect("literal"), 5353)
            ]
        );
    }

    #[test]
    fn hashes_are_stable_and_distinct() {
        assert_eq!(hash("ns1/a:p/tcp", 16), hash("ns1/a:p/tcp", 16));
        assert_ne!(hash("ns1/a:p/tcp", 16), hash("ns1/b:p/tcp", 16));
        assert_eq!(hash("x", 8).len(), 8);
    }
}
