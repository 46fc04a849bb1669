//! Pure translation: cluster state + node facts -> the frontends and backends
//! the datapath should hold. No I/O; everything here is unit-tested.
use std::collections::{BTreeMap, BTreeSet};

use lb_common::{
    Backend, ServiceKey, ALG_HASH, ALG_MAGLEV, ALG_RANDOM, BACKEND_ACTIVE, BACKEND_TERMINATING,
    SCOPE_EXTERNAL,
};

use crate::model::{
    ClusterState, EndpointSlice, ObjectRef, Protocol, Service, ServicePort, ServiceType,
};

pub const PROXY_NAME_LABEL: &str = "service.kubernetes.io/service-proxy-name";
pub const HEADLESS_LABEL: &str = "service.kubernetes.io/headless";
pub const ALGORITHM_ANNOTATION: &str = "weir.dev/lb-algorithm";
/// The value of `service.kubernetes.io/service-proxy-name` that Weir serves.
pub const PROXY_NAME: &str = "weir";

/// Facts about the node the agent runs on and its configuration.
#[derive(Clone, Debug)]
pub struct NodeFacts {
    pub node_name: String,
    pub default_algorithm: u8,
}

impl Default for NodeFacts {
    fn default() -> Self {
        Self {
            node_name: String::new(),
            default_algorithm: ALG_RANDOM,
        }
    }
}

/// One frontend to program, with the backends new flows may use.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frontend {
    pub service: ObjectRef,
    pub port_name: String,
    pub algorithm: u8,
    pub backends: Vec<Backend>,
}

/// The whole desired datapath state, plus warnings about what was skipped.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Desired {
    pub frontends: BTreeMap<ServiceKey, Frontend>,
    pub warnings: Vec<String>,
}

/// Parses an algorithm name as used by the annotation and the `--lb-algorithm` flag.
pub fn parse_algorithm(name: &str) -> Option<u8> {
    match name {
        "random" => Some(ALG_RANDOM),
        "hash" => Some(ALG_HASH),
        _ => None,
    }
}

/// The name of an algorithm, as the annotation spells it.
pub fn algorithm_name(algorithm: u8) -> &'static str {
    match algorithm {
        ALG_HASH => "hash",
        ALG_MAGLEV => "maglev",
        _ => "random",
    }
}

/// Whether kube-proxy semantics say this proxy handles the service.
pub fn handles(svc: &Service) -> bool {
    if svc.labels.contains_key(HEADLESS_LABEL) {
        return false;
    }
    match svc.labels.get(PROXY_NAME_LABEL) {
        Some(name) => name == PROXY_NAME,
        None => true,
    }
}

pub fn translate(state: &ClusterState, node: &NodeFacts) -> Desired {
    let mut desired = Desired::default();
    for svc in state.services.values() {
        if svc.service_type == ServiceType::ExternalName
            || !handles(svc)
            || svc.cluster_ips.is_empty()
        {
            continue;
        }
        let algorithm = match svc.annotations.get(ALGORITHM_ANNOTATION) {
            None => node.default_algorithm,
            Some(name) => parse_algorithm(name).unwrap_or_else(|| {
                desired.warnings.push(format!(
                    "Service {}: annotation {ALGORITHM_ANNOTATION}: unknown algorithm {name:?} (random or hash); using the default ({})",
                    svc.id,
                    algorithm_name(node.default_algorithm)
                ));
                node.default_algorithm
            }),
        };
        let slices: Vec<&EndpointSlice> = state.slices_of(&svc.id).collect();
        for port in &svc.ports {
            if port.protocol == Protocol::Sctp {
                desired.warnings.push(format!(
                    "Service {}: port {}/SCTP: SCTP is not supported by the datapath; skipped",
                    svc.id, port.port
                ));
                continue;
            }
            let backends = backends(&slices, port);
            for ip in &svc.cluster_ips {
                let key = ServiceKey {
                    addr: ip.octets(),
                    port: port.port,
                    proto: port.protocol.number(),
                    scope: SCOPE_EXTERNAL,
                };
                desired.frontends.insert(
                    key,
                    Frontend {
                        service: svc.id.clone(),
                        port_name: port.name.clone(),
                        algorithm,
                        backends: backends.clone(),
                    },
                );
            }
        }
    }
    desired
}

/// The backends of one service port: endpoints of every slice (merged and
/// deduplicated) whose slice port has the service port's name and protocol.
/// Ready endpoints are used; when none is ready, serving-and-terminating ones
/// (KEP-1669), as kube-proxy does.
pub fn backends(slices: &[&EndpointSlice], port: &ServicePort) -> Vec<Backend> {
    let mut ready = BTreeSet::new();
    let mut terminating = BTreeSet::new();
    for slice in slices {
        let Some(slice_port) = slice
            .ports
            .iter()
            .find(|p| p.name == port.name && p.protocol == port.protocol)
        else {
            continue;
        };
        for ep in &slice.endpoints {
            let backend = |state| Backend {
                addr: ep.address.octets(),
                port: slice_port.port,
                proto: port.protocol.number(),
                state,
            };
            if ep.ready {
                ready.insert(backend(BACKEND_ACTIVE));
            } else if ep.serving && ep.terminating {
                terminating.insert(backend(BACKEND_TERMINATING));
            }
        }
    }
    if ready.is_empty() {
        terminating.into_iter().collect()
    } else {
        ready.into_iter().collect()
    }
}
