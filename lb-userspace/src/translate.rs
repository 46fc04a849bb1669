//! Pure translation: cluster state + node facts -> the frontends and backends
//! the datapath should hold. No I/O; everything here is unit-tested.
use std::{collections::BTreeMap, net::IpAddr, sync::Arc};

use lb_common::{
    ALG_HASH, ALG_MAGLEV, ALG_RANDOM, BACKEND_ACTIVE, BACKEND_LOCAL, BACKEND_TERMINATING,
    SCOPE_EXTERNAL, SCOPE_INTERNAL, SVC_FLAG_DROP_IF_EMPTY, SVC_FLAG_EXTERNAL,
    SVC_FLAG_SOURCE_RANGES,
};

pub use crate::frontend::{Backend, FrontendKey};
use crate::{
    health::ServiceHealth,
    model::{
        ClusterState, EndpointSlice, Family, ObjectRef, Protocol, Service, ServicePort,
        ServiceType, SliceIndex, ZONE_LABEL,
    },
    node_addrs::{node_port_addresses, Chosen, LocalAddresses, NodePortAddress},
    source::convert::DEFAULT_AFFINITY_TIMEOUT,
};

pub const PROXY_NAME_LABEL: &str = "service.kubernetes.io/service-proxy-name";
pub const HEADLESS_LABEL: &str = "service.kubernetes.io/headless";
pub const ALGORITHM_ANNOTATION: &str = "weir.dev/lb-algorithm";
/// The value of `service.kubernetes.io/service-proxy-name` that Weir serves.
pub const PROXY_NAME: &str = "weir";

/// Facts about the node the agent runs on and its configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeFacts {
    pub node_name: String,
    pub default_algorithm: u8,
    /// Addresses NodePorts are served on, given outright; empty means they
    /// are chosen by `nodeport_selection` (see node_addrs).
    pub nodeport_addresses: Vec<IpAddr>,
    /// nodePortAddresses: `primary`, `all` and CIDRs (empty: primary).
    pub nodeport_selection: Vec<NodePortAddress>,
    /// This node's own addresses (uplinks and every device), for NodePorts
    /// and the ingress hand-off when there is no Node object.
    pub local: LocalAddresses,
    /// The apiserver's --service-node-port-range: NodePorts outside it are
    /// not served (the apiserver would have rejected them).
    pub nodeport_range: (u16, u16),
    /// Whether IPv6 frontends are served (`--ipv6`); without, a Service's
    /// IPv6 family is reported and skipped.
    pub ipv6: bool,
}

pub const DEFAULT_NODEPORT_RANGE: (u16, u16) = (30000, 32767);

impl Default for NodeFacts {
    fn default() -> Self {
        Self {
            node_name: String::new(),
            default_algorithm: ALG_RANDOM,
            nodeport_addresses: Vec::new(),
            nodeport_selection: Vec::new(),
            local: LocalAddresses::default(),
            nodeport_range: DEFAULT_NODEPORT_RANGE,
            ipv6: false,
        }
    }
}

/// One frontend to program, with the backends new flows may use.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Frontend {
    pub service: ObjectRef,
    pub port_name: String,
    pub algorithm: u8,
    /// ClientIP session affinity timeout in seconds; 0 without affinity.
    pub affinity_timeout: u32,
    pub backends: Vec<Backend>,
    /// lb_common::SVC_FLAG_* bits.
    pub flags: u16,
    /// Clients allowed with SVC_FLAG_SOURCE_RANGES: (network, prefix), of
    /// the frontend's family.
    pub source_ranges: Vec<(IpAddr, u8)>,
}

/// The whole desired datapath state, plus warnings about what was skipped.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Desired {
    /// Shared with the Service's remembered output (translation.rs), so the
    /// desired state costs a pointer per frontend, not a copy.
    pub frontends: BTreeMap<FrontendKey, Arc<Frontend>>,
    /// healthCheckNodePort -> what it reports (LoadBalancer, externalTrafficPolicy Local).
    pub health_checks: BTreeMap<u16, ServiceHealth>,
    pub warnings: Vec<String>,
    /// The addresses NodePorts are served on and where they came from.
    pub node_ports_on: Chosen,
    /// Service ports with a nodePort, to tell whether an empty
    /// `node_ports_on` leaves anything unserved.
    pub node_ports: usize,
}

/// Parses an algorithm name as used by the annotation and the `--lb-algorithm` flag.
pub fn parse_algorithm(name: &str) -> Option<u8> {
    match name {
        "random" => Some(ALG_RANDOM),
        "hash" => Some(ALG_HASH),
        "maglev" => Some(ALG_MAGLEV),
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

/// The longest ClientIP affinity timeout the API allows (one day).
pub const MAX_AFFINITY_TIMEOUT: i64 = 86_400;
pub const TOPOLOGY_MODE_ANNOTATION: &str = "service.kubernetes.io/topology-mode";

pub fn translate(state: &ClusterState, node: &NodeFacts) -> Desired {
    let ctx = Context::new(state, node);
    let mut desired = Desired {
        node_ports_on: ctx.node_ports_on.clone(),
        ..Desired::default()
    };
    let index = SliceIndex::new(state);
    for svc in state.services.values() {
        if let Some(out) = service_output(svc, index.of(&svc.id), &ctx) {
            assemble(&mut desired, &svc.id, &out);
        }
    }
    desired
}

/// What the translation of every Service depends on besides the Service and
/// its slices: this node's zone and the addresses NodePorts are served on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Context {
    pub node: NodeFacts,
    pub zone: Option<String>,
    pub node_ports_on: Chosen,
}

impl Context {
    pub fn new(state: &ClusterState, node: &NodeFacts) -> Self {
        let this_node = state.nodes.get(&node.node_name);
        let zone = this_node.and_then(|n| n.labels.get(ZONE_LABEL)).cloned();
        let node_ports_on = if node.nodeport_addresses.is_empty() {
            node_port_addresses(
                &node.nodeport_selection,
                &node.node_name,
                this_node.map(|n| n.addresses.as_slice()),
                &node.local,
            )
        } else {
            Chosen {
                addresses: node.nodeport_addresses.clone(),
                source: "the given addresses".into(),
            }
        };
        Self {
            node: node.clone(),
            zone,
            node_ports_on,
        }
    }
}

/// One step of a Service's translation, in order: a warning, or a frontend
/// it asks for (which it gets unless another Service has the key already).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Item {
    Warning(String),
    Frontend {
        key: FrontendKey,
        frontend: Arc<Frontend>,
        /// Only if the frontend before it was granted (an internal-scope
        /// view exists only beside its external entry).
        if_previous: bool,
    },
}

/// What one Service asks for, before frontends are shared out among Services.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServiceOutput {
    pub items: Vec<Item>,
    pub health: Option<(u16, ServiceHealth)>,
    /// Its ports with a nodePort.
    pub node_ports: usize,
}

impl ServiceOutput {
    /// The frontend keys it asks for.
    pub fn keys(&self) -> impl Iterator<Item = &FrontendKey> {
        self.items.iter().filter_map(|i| match i {
            Item::Frontend { key, .. } => Some(key),
            Item::Warning(_) => None,
        })
    }
}

/// Adds what Service `id` asks for to `desired`: a frontend whose key
/// another Service has already is skipped with a warning naming both.
pub fn assemble(desired: &mut Desired, id: &ObjectRef, out: &ServiceOutput) {
    if let Some((port, h)) = &out.health {
        desired.health_checks.insert(*port, h.clone());
    }
    desired.node_ports += out.node_ports;
    let mut granted = false;
    for item in &out.items {
        match item {
            Item::Warning(w) => desired.warnings.push(w.clone()),
            Item::Frontend {
                key,
                frontend,
                if_previous,
            } => {
                if *if_previous && !granted {
                    continue;
                }
                granted = match desired.frontends.get(key) {
                    Some(other) if other.service != *id => {
                        desired.warnings.push(format!(
                            "Service {id}: frontend {key} is already used by Service {}; skipped",
                            other.service
                        ));
                        false
                    }
                    Some(_) => true,
                    None => {
                        desired.frontends.insert(*key, frontend.clone());
                        true
                    }
                };
            }
        }
    }
}

/// What Service `svc` (with its EndpointSlices `slices`) asks for; None for
/// a Service this proxy does not serve.
pub fn service_output(
    svc: &Service,
    slices: &[&EndpointSlice],
    ctx: &Context,
) -> Option<ServiceOutput> {
    if svc.service_type == ServiceType::ExternalName || !handles(svc) || svc.cluster_ips.is_empty()
    {
        return None;
    }
    let node = &ctx.node;
    let zone = ctx.zone.as_deref();
    let node_ips = &ctx.node_ports_on.addresses;
    let mut out = ServiceOutput {
        health: health_check(svc, slices, &node.node_name),
        ..ServiceOutput::default()
    };
    let mut warnings: Vec<String> = svc
        .problems
        .iter()
        .map(|p| format!("Service {}: {p}", svc.id))
        .collect();
    let algorithm = algorithm(svc, node, &mut warnings);
    let affinity_timeout = affinity_timeout(svc, &mut warnings);
    // Addresses of a family the Service has no cluster IP of have no
    // endpoints of that family to go to (kube-proxy's proxier of that
    // family does not see the Service).
    let families: Vec<Family> = svc
        .families()
        .filter(|f| {
            let served = *f == Family::V4 || node.ipv6;
            if !served {
                warnings.push(format!(
                    "Service {}: its {f} cluster IP is not served: the agent runs without --ipv6",
                    svc.id
                ));
            }
            served
        })
        .collect();
    let mut served = |field: &str, ips: &[IpAddr]| -> Vec<IpAddr> {
        let (ok, other): (Vec<IpAddr>, Vec<IpAddr>) = ips
            .iter()
            .partition(|a| families.contains(&Family::of(**a)));
        // A family the Service has but this node does not serve was
        // reported above.
        for a in other
            .into_iter()
            .filter(|a| !svc.families().any(|f| f == Family::of(*a)))
        {
            warnings.push(format!(
                "Service {}: {field}: {a} is an {} address but the Service has no {} cluster IP; not served",
                svc.id,
                Family::of(a),
                Family::of(a)
            ));
        }
        ok
    };
    let external_ips = served("spec.externalIPs", &svc.external_ips);
    let load_balancer_ips = if svc.service_type == ServiceType::LoadBalancer {
        served("status.loadBalancer.ingress", &svc.load_balancer_ips)
    } else {
        Vec::new()
    };
    out.items.extend(warnings.into_iter().map(Item::Warning));
    for port in &svc.ports {
        if port.protocol == Protocol::Sctp {
            out.items.push(Item::Warning(format!(
                "Service {}: port {}/SCTP: SCTP is not supported by the datapath; skipped",
                svc.id, port.port
            )));
            continue;
        }
        // Each family's frontends go to that family's endpoints.
        let views: Vec<(Family, Views)> = families
            .iter()
            .map(|f| (*f, Views::new(svc, zone, slices, *f, port, &node.node_name)))
            .collect();
        let views_of = |a: IpAddr| {
            views
                .iter()
                .find(|(f, _)| *f == Family::of(a))
                .map(|(_, v)| v)
        };
        // loadBalancerSourceRanges guard the LoadBalancer IPs, from
        // wherever the client comes (kube-proxy's KUBE-FW chains).
        let mut externals: Vec<(IpAddr, u16, u16)> = Vec::new();
        if matches!(
            svc.service_type,
            ServiceType::NodePort | ServiceType::LoadBalancer
        ) {
            out.node_ports += usize::from(port.node_port.is_some());
            match port.node_port {
                Some(np) if np < node.nodeport_range.0 || np > node.nodeport_range.1 => {
                    out.items.push(Item::Warning(format!(
                        "Service {}: port {}/{}: nodePort {np} is outside the node port range {}-{}; the NodePort is not served",
                        svc.id, port.port, port.protocol, node.nodeport_range.0, node.nodeport_range.1
                    )));
                }
                Some(np) => externals.extend(
                    node_ips
                        .iter()
                        .filter(|ip| families.contains(&Family::of(**ip)))
                        .map(|ip| (*ip, np, 0)),
                ),
                None => {}
            }
        }
        if svc.service_type == ServiceType::LoadBalancer {
            let ranges = if svc.source_ranges.is_empty() {
                0
            } else {
                SVC_FLAG_SOURCE_RANGES
            };
            externals.extend(load_balancer_ips.iter().map(|ip| (*ip, port.port, ranges)));
        }
        externals.extend(external_ips.iter().map(|ip| (*ip, port.port, 0)));
        // Asks for a frontend (granted in `assemble`).
        let mut add = |addr: IpAddr,
                       port_number: u16,
                       scope: u8,
                       backends: &Vec<Backend>,
                       flags: u16,
                       if_previous: bool| {
            let key = FrontendKey {
                addr,
                port: port_number,
                proto: port.protocol.number(),
                scope,
            };
            let frontend = Frontend {
                service: svc.id.clone(),
                port_name: port.name.clone(),
                algorithm,
                affinity_timeout,
                backends: backends.clone(),
                flags,
                source_ranges: if flags & SVC_FLAG_SOURCE_RANGES != 0 {
                    svc.source_ranges
                        .iter()
                        .filter(|(net, _)| Family::of(*net) == Family::of(addr))
                        .copied()
                        .collect()
                } else {
                    Vec::new()
                },
            };
            out.items.push(Item::Frontend {
                key,
                frontend: Arc::new(frontend),
                if_previous,
            });
        };
        // ClusterIPs are only reached from inside the cluster.
        for ip in &svc.cluster_ips {
            if let Some(v) = views_of(*ip) {
                add(*ip, port.port, SCOPE_EXTERNAL, v.internal(svc), 0, false);
            }
        }
        // External frontends: the external view follows externalTrafficPolicy.
        // With Local, pods get their own (internal) view with the cluster-wide
        // endpoints, as kube-proxy short-circuits pod traffic to external
        // addresses to its cluster policy chain.
        for (ip, port_number, ranges) in externals {
            let Some(v) = views_of(ip) else { continue };
            // A source range of another family guards nothing here.
            let ranges = if svc
                .source_ranges
                .iter()
                .any(|(n, _)| Family::of(*n) == Family::of(ip))
            {
                ranges
            } else {
                0
            };
            // externalTrafficPolicy Local with endpoints only elsewhere: drop.
            let drop_if_empty = if svc.external_policy_local && !v.cluster.is_empty() {
                SVC_FLAG_DROP_IF_EMPTY
            } else {
                0
            };
            let flags = SVC_FLAG_EXTERNAL | ranges | drop_if_empty;
            add(
                ip,
                port_number,
                SCOPE_EXTERNAL,
                v.external(svc),
                flags,
                false,
            );
            if svc.external_policy_local {
                add(ip, port_number, SCOPE_INTERNAL, &v.cluster, ranges, true);
            }
        }
    }
    Some(out)
}

/// The backends of one service port and family: cluster-wide (with
/// topology) and this node's.
struct Views {
    cluster: Vec<Backend>,
    local: Vec<Backend>,
}

impl Views {
    fn new(
        svc: &Service,
        zone: Option<&str>,
        slices: &[&EndpointSlice],
        family: Family,
        port: &ServicePort,
        node_name: &str,
    ) -> Self {
        let candidates = candidates(slices, family, port, node_name);
        Self {
            cluster: apply_topology(svc, zone, pick(candidates.iter())),
            local: pick(candidates.iter().filter(|c| c.local))
                .into_iter()
                .map(|c| c.backend)
                .collect(),
        }
    }

    /// What pods get: internalTrafficPolicy.
    fn internal(&self, svc: &Service) -> &Vec<Backend> {
        if svc.internal_policy_local {
            &self.local
        } else {
            &self.cluster
        }
    }

    /// What external clients get: externalTrafficPolicy.
    fn external(&self, svc: &Service) -> &Vec<Backend> {
        if svc.external_policy_local {
            &self.local
        } else {
            &self.cluster
        }
    }
}

/// A LoadBalancer service with externalTrafficPolicy Local and a
/// healthCheckNodePort reports its ready endpoints on this node (kube-proxy
/// counts ready ones only, so a node with only terminating endpoints fails).
fn health_check(
    svc: &Service,
    slices: &[&EndpointSlice],
    node_name: &str,
) -> Option<(u16, ServiceHealth)> {
    if svc.service_type != ServiceType::LoadBalancer || !svc.external_policy_local {
        return None;
    }
    let port = svc.health_check_node_port?;
    // A dual-stack pod is in a slice of each family: count the family with
    // the most, not both.
    let local = |family: Family| {
        slices
            .iter()
            .filter(|s| s.family == family)
            .flat_map(|s| &s.endpoints)
            .filter(|e| {
                e.ready && !node_name.is_empty() && e.node_name.as_deref() == Some(node_name)
            })
            .map(|e| e.address)
            .collect::<std::collections::BTreeSet<IpAddr>>()
            .len()
    };
    Some((
        port,
        ServiceHealth {
            service: svc.id.clone(),
            local_endpoints: local(Family::V4).max(local(Family::V6)),
        },
    ))
}

fn algorithm(svc: &Service, node: &NodeFacts, warnings: &mut Vec<String>) -> u8 {
    match svc.annotations.get(ALGORITHM_ANNOTATION) {
        None => node.default_algorithm,
        Some(name) => parse_algorithm(name).unwrap_or_else(|| {
            warnings.push(format!(
                "Service {}: annotation {ALGORITHM_ANNOTATION}: unknown algorithm {name:?} (random, hash or maglev); using the default ({})",
                svc.id,
                algorithm_name(node.default_algorithm)
            ));
            node.default_algorithm
        }),
    }
}

fn affinity_timeout(svc: &Service, warnings: &mut Vec<String>) -> u32 {
    match svc.session_affinity_timeout {
        None => 0,
        Some(t) if (1..=MAX_AFFINITY_TIMEOUT).contains(&t) => t as u32,
        Some(t) => {
            warnings.push(format!(
                "Service {}: sessionAffinityConfig.clientIP.timeoutSeconds: {t} is out of range 1-{MAX_AFFINITY_TIMEOUT}; using the default ({DEFAULT_AFFINITY_TIMEOUT})",
                svc.id
            ));
            DEFAULT_AFFINITY_TIMEOUT as u32
        }
    }
}

/// An endpoint of one service port, with what endpoint selection needs to know.
#[derive(Clone, Debug)]
struct Candidate {
    backend: Backend,
    local: bool,
    ready: bool,
    serving_terminating: bool,
    hint_zones: Option<std::sync::Arc<[std::sync::Arc<str>]>>,
}

/// The endpoints of one service port and family: from every slice of that
/// family (merged, deduplicated by address; the first slice wins) whose
/// slice port has the service port's name and protocol.
fn candidates(
    slices: &[&EndpointSlice],
    family: Family,
    port: &ServicePort,
    node_name: &str,
) -> Vec<Candidate> {
    let mut seen = BTreeMap::new();
    for slice in slices.iter().filter(|s| s.family == family) {
        let Some(slice_port) = slice
            .ports
            .iter()
            .find(|p| p.name == port.name && p.protocol == port.protocol)
        else {
            continue;
        };
        for ep in &slice.endpoints {
            let local = !node_name.is_empty() && ep.node_name.as_deref() == Some(node_name);
            let backend = Backend {
                addr: ep.address,
                port: slice_port.port,
                proto: port.protocol.number(),
                state: if local { BACKEND_LOCAL } else { BACKEND_ACTIVE },
            };
            seen.entry((backend.addr, backend.port))
                .or_insert_with(|| Candidate {
                    backend,
                    local,
                    ready: ep.ready,
                    serving_terminating: ep.serving && ep.terminating,
                    hint_zones: ep.hint_zones.clone(),
                });
        }
    }
    seen.into_values().collect()
}

/// Ready endpoints; when none is ready, serving-and-terminating ones (KEP-1669).
fn pick<'a>(candidates: impl Iterator<Item = &'a Candidate> + Clone) -> Vec<Candidate> {
    let ready: Vec<Candidate> = candidates.clone().filter(|c| c.ready).cloned().collect();
    if !ready.is_empty() {
        return ready;
    }
    candidates
        .filter(|c| c.serving_terminating)
        .map(|c| Candidate {
            backend: Backend {
                state: c.backend.state | BACKEND_TERMINATING,
                ..c.backend
            },
            ..c.clone()
        })
        .collect()
}

/// Topology-aware routing (PreferClose, or topology-mode Auto/hints): keep the
/// endpoints hinted for this node's zone, but only when every endpoint has
/// hints and at least one names the zone; otherwise all (kube-proxy's rule).
fn apply_topology(svc: &Service, zone: Option<&str>, endpoints: Vec<Candidate>) -> Vec<Backend> {
    let wanted = svc.traffic_distribution.as_deref() == Some("PreferClose")
        || matches!(
            svc.annotations
                .get(TOPOLOGY_MODE_ANNOTATION)
                .map(String::as_str),
            Some("Auto" | "auto")
        );
    let all = || endpoints.iter().map(|c| c.backend).collect();
    let Some(zone) = zone.filter(|_| wanted) else {
        return all();
    };
    if endpoints
        .iter()
        .any(|c| c.hint_zones.as_ref().is_none_or(|z| z.is_empty()))
    {
        return all();
    }
    let close: Vec<Backend> = endpoints
        .iter()
        .filter(|c| {
            c.hint_zones
                .as_ref()
                .is_some_and(|z| z.iter().any(|h| **h == *zone))
        })
        .map(|c| c.backend)
        .collect();
    if close.is_empty() {
        all()
    } else {
        close
    }
}

/// The backends of one service port and family, cluster-wide and without
/// topology: ready endpoints, or serving-and-terminating ones when none is
/// ready.
pub fn backends(slices: &[&EndpointSlice], family: Family, port: &ServicePort) -> Vec<Backend> {
    pick(candidates(slices, family, port, "").iter())
        .into_iter()
        .map(|c| c.backend)
        .collect()
}
