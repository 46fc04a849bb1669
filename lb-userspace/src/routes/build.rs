//! Model -> routing table. Pure: the cluster state in, a table and the list
//! of what was skipped (each naming its object) out.
use std::{
    collections::{BTreeMap, HashMap},
    net::SocketAddr,
    sync::Arc,
};

use super::{
    matching,
    rule::{Action, Origin, PathMatch, RequestMatch, Rule},
    tls, HostRules, HostTable, RouteTable, Upstream, CONTROLLER,
};
use crate::model::{
    ClusterState, Ingress, IngressBackend, ObjectRef, PathType, Protocol, Service, ServicePortRef,
};

/// What the table depends on besides the cluster state.
#[derive(Clone, Debug, Default)]
pub struct RouteConfig {
    /// This node's name: Services with internalTrafficPolicy Local use only
    /// the endpoints on it (the proxy is a client on this node).
    pub node_name: String,
    /// Where Gateways without spec.addresses listen when there is no pool:
    /// the node's ingress addresses.
    pub gateway_addresses: Vec<std::net::IpAddr>,
    /// --gateway-address-pool: each Gateway without spec.addresses gets one
    /// address of its own from it (the first free one, oldest Gateway first).
    pub gateway_pool: Vec<std::net::IpAddr>,
    /// The pool addresses Gateways had in the last table: each keeps its
    /// own while it stays in the pool (so adding a Gateway moves no other).
    pub gateway_previous: BTreeMap<ObjectRef, std::net::IpAddr>,
}

/// Whether Weir serves `ing`: its class is one whose controller is Weir's,
/// or it has no class and one of Weir's classes is the default.
pub fn selected(state: &ClusterState, ing: &Ingress) -> bool {
    let ours = |c: &&crate::model::IngressClass| c.controller == CONTROLLER;
    match &ing.class_name {
        Some(name) => state.ingress.classes.get(name).filter(ours).is_some(),
        None => state
            .ingress
            .classes
            .values()
            .filter(ours)
            .any(|c| c.is_default),
    }
}

/// (Service, port, whether HTTP/2 in clear is forced: gRPC).
type UpstreamKey = (ObjectRef, ServicePortRef, bool);

struct Builder<'a> {
    state: &'a ClusterState,
    cfg: &'a RouteConfig,
    upstreams: Upstreams,
    table: RouteTable,
    /// The default backend and the Ingress that set it.
    default: Option<(Arc<Upstream>, ObjectRef)>,
}

pub fn build(state: &ClusterState, cfg: &RouteConfig) -> RouteTable {
    let mut b = Builder {
        state,
        cfg,
        upstreams: Upstreams::default(),
        table: RouteTable::default(),
        default: None,
    };
    let mut hosts: BTreeMap<String, Vec<IngressPathRule>> = BTreeMap::new();
    for ing in state.ingress.ingresses.values() {
        if !selected(state, ing) {
            continue;
        }
        b.default_backend(ing);
        b.rules(ing, &mut hosts);
        b.tls(ing);
    }
    let mut ingress = HostTable::new(HostRules::Ingress);
    ingress.default = b.default.take().map(|(upstream, id)| Rule {
        matcher: RequestMatch::path_only(PathMatch::Prefix(String::new())),
        action: Arc::new(Action::forward(upstream, origin(&id))),
    });
    for (host, mut paths) in hosts {
        // Longest path first; at equal length Exact, Prefix, ImplementationSpecific.
        paths.sort_by_key(|p| std::cmp::Reverse((p.key.len(), kind_rank(p.path_type))));
        let rules = ingress.entry(&host);
        for p in paths {
            let path = match p.path_type {
                PathType::Exact => PathMatch::Exact(p.key),
                PathType::Prefix => PathMatch::Prefix(p.key),
                PathType::ImplementationSpecific => PathMatch::StringPrefix(p.key),
            };
            rules.push(Rule {
                matcher: RequestMatch::path_only(path),
                action: Arc::new(Action::forward(p.upstream, origin(&p.ingress))),
            });
        }
    }
    b.table.ingress = ingress;
    super::gateway::build(state, cfg, &mut b.upstreams, &mut b.table);
    b.table
}

fn origin(ingress: &ObjectRef) -> Origin {
    Origin {
        kind: "Ingress",
        object: ingress.clone(),
        rule: None,
    }
}

fn kind_rank(t: PathType) -> u8 {
    match t {
        PathType::Exact => 2,
        PathType::Prefix => 1,
        PathType::ImplementationSpecific => 0,
    }
}

/// An Ingress path while the table is built.
struct IngressPathRule {
    path_type: PathType,
    /// Exact: the path as written; Prefix: without trailing slashes;
    /// ImplementationSpecific: as written.
    key: String,
    upstream: Arc<Upstream>,
    ingress: ObjectRef,
}

impl Builder<'_> {
    /// Records a problem of Ingress `ing` (the message starts with its name).
    fn warn(&mut self, ing: &ObjectRef, msg: String) {
        let detail = msg
            .strip_prefix(&format!("Ingress {ing}: "))
            .unwrap_or(&msg)
            .to_string();
        self.table.problems.push((ing.clone(), detail));
        self.table.warnings.push(msg);
    }

    fn default_backend(&mut self, ing: &Ingress) {
        let Some(backend) = &ing.default_backend else {
            return;
        };
        match self.upstream(&ing.id.namespace, backend) {
            Ok(u) => match &self.default {
                None => self.default = Some((u, ing.id.clone())),
                Some((_, first)) => {
                    let first = first.clone();
                    self.warn(&ing.id, format!(
                        "Ingress {}: spec.defaultBackend: Ingress {first} already sets the default backend; ignored",
                        ing.id
                    ))
                }
            },
            Err(reason) => self.warn(
                &ing.id,
                format!("Ingress {}: spec.defaultBackend: {reason}; skipped", ing.id),
            ),
        }
    }

    fn rules(&mut self, ing: &Ingress, hosts: &mut BTreeMap<String, Vec<IngressPathRule>>) {
        for (i, rule) in ing.rules.iter().enumerate() {
            if !rule.host.is_empty() && !matching::valid_host(&rule.host) {
                self.warn(
                    &ing.id,
                    format!(
                        "Ingress {}: spec.rules[{i}].host: invalid host {:?}; rule skipped",
                        ing.id, rule.host
                    ),
                );
                continue;
            }
            for (j, p) in rule.paths.iter().enumerate() {
                let field = format!("spec.rules[{i}].http.paths[{j}]");
                if !matching::valid_path(&p.path) {
                    self.warn(&ing.id, format!(
                        "Ingress {}: {field}.path: invalid path {:?} (must start with '/'); path skipped",
                        ing.id, p.path
                    ));
                    continue;
                }
                let upstream = match self.upstream(&ing.id.namespace, &p.backend) {
                    Ok(u) => u,
                    Err(reason) => {
                        self.warn(
                            &ing.id,
                            format!(
                                "Ingress {}: {field}.backend: {reason}; path skipped",
                                ing.id
                            ),
                        );
                        continue;
                    }
                };
                let key = match p.path_type {
                    PathType::Prefix => matching::prefix_key(&p.path),
                    PathType::Exact | PathType::ImplementationSpecific => p.path.clone(),
                };
                let routes = hosts.entry(rule.host.clone()).or_default();
                if let Some(other) = routes
                    .iter()
                    .find(|r| r.path_type == p.path_type && r.key == key)
                {
                    let other = other.ingress.clone();
                    self.warn(&ing.id, format!(
                        "Ingress {}: {field}: host {:?} path {:?} ({:?}) is already defined by Ingress {other}; skipped",
                        ing.id, rule.host, p.path, p.path_type
                    ));
                    continue;
                }
                routes.push(IngressPathRule {
                    path_type: p.path_type,
                    key,
                    upstream,
                    ingress: ing.id.clone(),
                });
            }
        }
    }

    fn tls(&mut self, ing: &Ingress) {
        for (i, t) in ing.tls.iter().enumerate() {
            // No secret: these hosts use the default certificate.
            let Some(secret_name) = &t.secret_name else {
                continue;
            };
            let id = ObjectRef::new(&ing.id.namespace, secret_name);
            let Some(secret) = self.state.ingress.tls_secrets.get(&id) else {
                self.warn(&ing.id, format!(
                    "Ingress {}: spec.tls[{i}]: Secret {id} (kubernetes.io/tls) not found; hosts {:?} get the default certificate",
                    ing.id, t.hosts
                ));
                continue;
            };
            let key = match tls::certified_key(&secret.cert_pem, &secret.key_pem) {
                Ok(k) => k,
                Err(e) => {
                    self.warn(&ing.id, format!(
                        "Ingress {}: spec.tls[{i}]: Secret {id}: {e}; hosts {:?} get the default certificate",
                        ing.id, t.hosts
                    ));
                    continue;
                }
            };
            for host in &t.hosts {
                if !self.table.certs.contains_key(host) {
                    self.table.certs.insert(host.clone(), key.clone());
                    self.table.cert_secrets.insert(host.clone(), id.clone());
                }
            }
        }
    }

    /// The upstream for a backend of an Ingress in `namespace`.
    fn upstream(
        &mut self,
        namespace: &str,
        backend: &IngressBackend,
    ) -> Result<Arc<Upstream>, String> {
        self.upstreams.get(
            self.state,
            &self.cfg.node_name,
            ObjectRef::new(namespace, &backend.service),
            &backend.port,
            false,
        )
    }
}

/// The appProtocol of Service ports that speak HTTP/2 in clear.
pub const H2C_APP_PROTOCOL: &str = "kubernetes.io/h2c";

/// Upstreams by Service port, shared between all rules of a table (so round
/// robin spans all of them).
#[derive(Default)]
pub struct Upstreams(HashMap<UpstreamKey, Arc<Upstream>>);

impl Upstreams {
    /// The upstream for TCP port `port` of Service `id`; the reason when
    /// there is none. It speaks HTTP/2 in clear when the port's appProtocol is
    /// `kubernetes.io/h2c`, or when `h2c` (gRPC) says so.
    pub fn get(
        &mut self,
        state: &ClusterState,
        node_name: &str,
        id: ObjectRef,
        port: &ServicePortRef,
        h2c: bool,
    ) -> Result<Arc<Upstream>, String> {
        let key = (id.clone(), port.clone(), h2c);
        if let Some(u) = self.0.get(&key) {
            return Ok(u.clone());
        }
        let svc = state
            .services
            .get(&id)
            .ok_or_else(|| format!("Service {id} not found"))?;
        let sp = svc
            .ports
            .iter()
            .filter(|p| p.protocol == Protocol::Tcp)
            .find(|p| match port {
                ServicePortRef::Number(n) => p.port == *n,
                ServicePortRef::Name(name) => &p.name == name,
            })
            .ok_or_else(|| format!("Service {id} has no TCP port {port}"))?;
        let endpoints = endpoints(state, svc, &sp.name, node_name);
        let mut u = Upstream::new(id, sp.port, endpoints);
        u.h2c = h2c || sp.app_protocol.as_deref() == Some(H2C_APP_PROTOCOL);
        let u = Arc::new(u);
        self.0.insert(key, u.clone());
        Ok(u)
    }
}

/// The endpoints of a Service port for the proxy, by the L4 datapath's rules:
/// every slice merged and deduplicated, ready endpoints (serving-terminating
/// ones when none is ready), and with internalTrafficPolicy Local only this
/// node's. The endpoints are those of the Service's primary family (its
/// first cluster IP's), so that a dual-stack pod is not counted twice.
pub fn endpoints(
    state: &ClusterState,
    svc: &Service,
    port_name: &str,
    node_name: &str,
) -> Vec<SocketAddr> {
    let mut seen: BTreeMap<SocketAddr, (bool, bool)> = BTreeMap::new();
    // A headless Service has no primary family: every slice counts.
    let family = (!svc.cluster_ips.is_empty()).then(|| svc.primary_family());
    for slice in state
        .slices_of(&svc.id)
        .filter(|s| family.is_none_or(|f| s.family == f))
    {
        let Some(sp) = slice
            .ports
            .iter()
            .find(|p| p.name == port_name && p.protocol == Protocol::Tcp)
        else {
            continue;
        };
        for ep in &slice.endpoints {
            if svc.internal_policy_local
                && (node_name.is_empty() || ep.node_name.as_deref() != Some(node_name))
            {
                continue;
            }
            seen.entry(SocketAddr::new(ep.address, sp.port))
                .or_insert((ep.ready, ep.serving && ep.terminating));
        }
    }
    let ready: Vec<SocketAddr> = seen
        .iter()
        .filter(|(_, (ready, _))| *ready)
        .map(|(a, _)| *a)
        .collect();
    if !ready.is_empty() {
        return ready;
    }
    seen.iter()
        .filter(|(_, (_, st))| *st)
        .map(|(a, _)| *a)
        .collect()
}
