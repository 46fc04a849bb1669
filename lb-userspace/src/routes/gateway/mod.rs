//! Gateway API -> the shared routing model, and the status of every object
//! involved. Pure: the cluster state in; listeners' rules, statuses and
//! warnings (each naming its object and field) out.
//!
//! The rules, as the spec and the conformance suite have them:
//! - a Gateway is Weir's when its GatewayClass names Weir's controller;
//! - a route attaches to the listeners its parentRef selects (sectionName,
//!   port) that allow its kind and namespace and share a hostname with it;
//! - a request is served by the most specific listener whose hostname
//!   matches its host, then by the most specific route hostname, then by
//!   match precedence: Exact path, longest prefix, method, most headers,
//!   most query parameters, oldest route, route name, rule order;
//! - a backendRef that does not resolve answers 500 for its share.
use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::Duration,
};

mod attach;
mod compile;
mod listeners;

use attach::*;
use compile::*;
use listeners::*;

use http::{HeaderName, HeaderValue, Method};
use rustls::sign::CertifiedKey;

use super::{
    build::{RouteConfig, Upstreams},
    gateway_status::{
        ClassStatus, Condition, GatewayAddressStatus, GatewayStatus, GatewayStatuses,
        ListenerStatus, ParentReference, RouteKind, RouteParentStatus, RouteStatus,
    },
    hosts::hostname_matches,
    matching,
    rule::{
        Action, Backends, Filters, HeaderEdit, Mirror, Origin, PathMatch, PathRewrite, RedirectTo,
        RequestMatch, Rule, Target, ValueMatch, WeightedBackend,
    },
    streams, HostRules, HostTable, ListenerRoutes, RouteTable,
};
use crate::model::{
    gateway::{
        Gateway, GatewayState, HeaderModifier, HttpFilter, HttpMatch, HttpRoute, HttpRouteRule,
        Listener, MatchKind, PathModifier, RouteNamespaces, StreamRoute as StreamRouteObj, GROUP,
    },
    ClusterState, ObjectRef, ServicePortRef,
};

/// The GatewayClass controller name Weir serves.
pub const GATEWAY_CONTROLLER: &str = "weir.dev/gateway-controller";
const HTTP_ROUTE: &str = "HTTPRoute";
const GRPC_ROUTE: &str = "GRPCRoute";

/// A listener while the table is built.
struct ListenerState<'a> {
    listener: &'a Listener,
    /// The certificate of an HTTPS listener.
    cert: Option<Arc<CertifiedKey>>,
    /// Served: a protocol Weir serves, no conflict, its references resolved.
    usable: bool,
    /// TLS and TCP listeners: the routes attached, oldest first.
    streams: Vec<streams::StreamRoute>,
    kinds: Vec<RouteKind>,
    conditions: Vec<Condition>,
    attached: u32,
    table: HostTable,
}

/// A Weir Gateway while the table is built.
struct GatewayBuild<'a> {
    gw: &'a Gateway,
    addresses: Vec<IpAddr>,
    listeners: Vec<ListenerState<'a>>,
}

pub fn build(
    state: &ClusterState,
    cfg: &RouteConfig,
    upstreams: &mut Upstreams,
    table: &mut RouteTable,
) {
    let gs = &state.gateway;
    let mut statuses = GatewayStatuses::default();
    let ours: BTreeSet<&str> = gs
        .classes
        .values()
        .filter(|c| c.controller == GATEWAY_CONTROLLER)
        .map(|c| {
            statuses.classes.push(ClassStatus {
                name: c.name.clone(),
                conditions: vec![Condition::new(
                    "Accepted",
                    true,
                    "Accepted",
                    "Weir serves this class",
                    c.meta.generation,
                )],
            });
            c.name.as_str()
        })
        .collect();
    let mut gateways: Vec<GatewayBuild> = Vec::new();
    let mut taken: BTreeSet<IpAddr> = BTreeSet::new();
    let mut by_age: Vec<&Gateway> = gs
        .gateways
        .values()
        .filter(|g| ours.contains(g.class_name.as_str()))
        .collect();
    by_age.sort_by(|a, b| (&a.meta.creation, &a.id).cmp(&(&b.meta.creation, &b.id)));
    // Explicit addresses first, so the pool never hands one out twice; then
    // the pool addresses Gateways already had.
    for gw in &by_age {
        for (_, v) in &gw.addresses {
            if let Ok(a) = v.parse::<IpAddr>() {
                taken.insert(a);
            }
        }
    }
    let mut kept: BTreeMap<&ObjectRef, IpAddr> = BTreeMap::new();
    for gw in by_age.iter().filter(|g| g.addresses.is_empty()) {
        if let Some(a) = cfg.gateway_previous.get(&gw.id) {
            if cfg.gateway_pool.contains(a) && taken.insert(*a) {
                kept.insert(&gw.id, *a);
            }
        }
    }
    for gw in by_age {
        let mut warnings = Vec::new();
        let addresses = match kept.get(&gw.id) {
            Some(a) => vec![*a],
            None => addresses(gw, cfg, &mut taken, &mut warnings),
        };
        for w in warnings {
            table.warnings.push(format!("Gateway {}: {w}", gw.id));
        }
        gateways.push(GatewayBuild {
            gw,
            addresses,
            listeners: listeners(state, gw),
        });
    }

    // Routes, oldest first (the precedence order among routes).
    let mut routes: Vec<&HttpRoute> = gs
        .http_routes
        .values()
        .chain(gs.grpc_routes.values())
        .collect();
    routes.sort_by(|a, b| (&a.meta.creation, &a.id).cmp(&(&b.meta.creation, &b.id)));
    let mut entries: BTreeMap<(usize, usize, String), Vec<(RankKey, Rule)>> = BTreeMap::new();
    for (order, route) in routes.iter().enumerate() {
        let kind = if route.grpc { GRPC_ROUTE } else { HTTP_ROUTE };
        let compiled = compile_route(state, cfg, upstreams, route, order);
        for problem in &compiled.problems {
            table
                .warnings
                .push(format!("{kind} {}: {problem}", route.id));
        }
        let view = RouteView {
            kind,
            id: &route.id,
            generation: route.meta.generation,
            parent_refs: &route.parent_refs,
            hostnames: &route.hostnames,
            none_valid: compiled.rules.is_empty() && !route.rules.is_empty(),
            problems: &compiled.problems,
            unresolved: &compiled.unresolved,
        };
        let (parents, attached) = parent_statuses(gs, &mut gateways, &view);
        for (gi, li, hosts) in attached {
            for host in hosts {
                let list = entries.entry((gi, li, host)).or_default();
                list.extend(compiled.rules.iter().cloned());
            }
        }
        if !parents.is_empty() {
            statuses.routes.push(RouteStatus {
                kind: kind.into(),
                namespace: route.id.namespace.to_string(),
                name: route.id.name.to_string(),
                parents,
            });
        }
    }
    // TCPRoutes and TLSRoutes, oldest first too.
    let mut streams: Vec<&StreamRouteObj> = gs.stream_routes.values().collect();
    streams.sort_by(|a, b| (&a.meta.creation, &a.id).cmp(&(&b.meta.creation, &b.id)));
    for route in streams {
        let kind = route.kind.kind();
        let mut unresolved = None;
        let mut problems = Vec::new();
        let mut rule_backends = Vec::new();
        for (ri, refs) in route.rules.iter().enumerate() {
            let field = format!("spec.rules[{ri}]");
            let mut out = CompiledRoute {
                rules: Vec::new(),
                unresolved: None,
                problems: Vec::new(),
            };
            let list = backends(
                state,
                cfg,
                upstreams,
                kind,
                &route.id.namespace,
                refs,
                &field,
                &mut out,
            );
            unresolved = unresolved.or(out.unresolved);
            problems.extend(out.problems);
            rule_backends.push((ri, list));
        }
        for problem in &problems {
            table
                .warnings
                .push(format!("{kind} {}: {problem}", route.id));
        }
        let view = RouteView {
            kind,
            id: &route.id,
            generation: route.meta.generation,
            parent_refs: &route.parent_refs,
            hostnames: &route.hostnames,
            none_valid: false,
            problems: &problems,
            unresolved: &unresolved,
        };
        let (parents, attached) = parent_statuses(gs, &mut gateways, &view);
        for (gi, li, hosts) in attached {
            // The first rule's backends carry the traffic (a route of bytes
            // has nothing to tell its rules apart by).
            let Some((ri, list)) = rule_backends.first() else {
                continue;
            };
            let hostnames = hosts.into_iter().filter(|h| !h.is_empty()).collect();
            gateways[gi].listeners[li]
                .streams
                .push(streams::StreamRoute {
                    hostnames,
                    backends: Backends::new(
                        list.iter()
                            .map(|b| WeightedBackend {
                                target: match &b.target {
                                    Target::Upstream(u) => Target::Upstream(u.clone()),
                                    Target::Invalid(w) => Target::Invalid(w.clone()),
                                },
                                weight: b.weight,
                                filters: Filters::default(),
                            })
                            .collect(),
                    ),
                    origin: Origin {
                        kind,
                        object: route.id.clone(),
                        rule: Some(*ri),
                    },
                });
        }
        if !parents.is_empty() {
            statuses.routes.push(RouteStatus {
                kind: kind.into(),
                namespace: route.id.namespace.to_string(),
                name: route.id.name.to_string(),
                parents,
            });
        }
    }
    for ((gi, li, host), mut rules) in entries {
        rules.sort_by_key(|r| r.0);
        gateways[gi].listeners[li]
            .table
            .entry(&host)
            .extend(rules.into_iter().map(|(_, r)| r));
    }

    // An address and port serve one Gateway: the oldest (Gateways are in
    // age order); a younger one's listener there is PortUnavailable.
    let mut port_owners: HashMap<SocketAddr, ObjectRef> = HashMap::new();
    for g in gateways {
        let generation = g.gw.meta.generation;
        let programmed = !g.addresses.is_empty();
        let mut listener_statuses = Vec::new();
        for mut l in g.listeners {
            let keys: Vec<SocketAddr> = g
                .addresses
                .iter()
                .map(|a| SocketAddr::new(*a, l.listener.port))
                .collect();
            let taken = keys.iter().find_map(|k| {
                port_owners
                    .get(k)
                    .filter(|o| **o != g.gw.id)
                    .map(|o| (*k, o.clone()))
            });
            if let (true, Some((key, other))) = (l.usable, taken) {
                l.usable = false;
                if let Some(c) = l.conditions.iter_mut().find(|c| c.kind == "Accepted") {
                    *c = Condition::new(
                        "Accepted",
                        false,
                        "PortUnavailable",
                        format!("{key} is already served by Gateway {other}"),
                        generation,
                    );
                }
            }
            if l.usable {
                for k in keys {
                    port_owners.entry(k).or_insert_with(|| g.gw.id.clone());
                }
            }
            let mut conditions = l.conditions;
            conditions.push(Condition::new(
                "Programmed",
                l.usable && programmed,
                if l.usable && programmed {
                    "Programmed"
                } else {
                    "Invalid"
                },
                if !programmed {
                    "the Gateway has no address"
                } else if l.usable {
                    "served by the embedded proxy"
                } else {
                    "not served (see Accepted, ResolvedRefs and Conflicted)"
                },
                generation,
            ));
            listener_statuses.push(ListenerStatus {
                name: l.listener.name.clone(),
                supported_kinds: l.kinds,
                attached_routes: l.attached,
                conditions,
            });
            let stream_mode = match l.listener.protocol.as_str() {
                "TCP" => Some(streams::StreamMode::Tcp),
                "TLS" if l.cert.is_some() => Some(streams::StreamMode::TlsTerminate),
                "TLS" => Some(streams::StreamMode::TlsPassthrough),
                _ => None,
            };
            if let (true, Some(mode)) = (l.usable, stream_mode) {
                let mut routes = l.streams;
                for (i, a) in g.addresses.iter().enumerate() {
                    let key = SocketAddr::new(*a, l.listener.port);
                    // Each address gets the routes; the last takes them over.
                    let routes = if i + 1 == g.addresses.len() {
                        std::mem::take(&mut routes)
                    } else {
                        routes.iter().map(copy_stream_route).collect()
                    };
                    table
                        .streams
                        .entry(key)
                        .or_default()
                        .add(streams::StreamListener {
                            name: format!("{}/{}", g.gw.id, l.listener.name),
                            hostname: match mode {
                                streams::StreamMode::Tcp => None,
                                _ => l.listener.hostname.clone(),
                            },
                            mode,
                            cert: l.cert.clone(),
                            routes,
                        });
                }
            } else if l.usable {
                for a in &g.addresses {
                    let key = SocketAddr::new(*a, l.listener.port);
                    table.gateways.entry(key).or_default().add(ListenerRoutes {
                        name: format!("{}/{}", g.gw.id, l.listener.name),
                        hostname: l.listener.hostname.clone(),
                        port: l.listener.port,
                        cert: l.cert.clone(),
                        table: clone_table(&l.table),
                    });
                }
            }
        }
        statuses.gateways.push(GatewayStatus {
            namespace: g.gw.id.namespace.to_string(),
            name: g.gw.id.name.to_string(),
            addresses: g
                .addresses
                .iter()
                .map(|a| GatewayAddressStatus {
                    kind: "IPAddress".into(),
                    value: a.to_string(),
                })
                .collect(),
            conditions: vec![
                Condition::new("Accepted", true, "Accepted", "Weir serves this Gateway", generation),
                if programmed {
                    Condition::new("Programmed", true, "Programmed", "listening", generation)
                } else {
                    Condition::new(
                        "Programmed",
                        false,
                        "AddressNotAssigned",
                        "no address: set spec.addresses, --gateway-address-pool, or give the node an address",
                        generation,
                    )
                },
            ],
            listeners: listener_statuses,
        });
    }
    table.gateway_status = statuses;
}

/// A copy of a stream route for another address (backends rotate per copy).
fn copy_stream_route(r: &streams::StreamRoute) -> streams::StreamRoute {
    streams::StreamRoute {
        hostnames: r.hostnames.clone(),
        backends: Backends::new(
            r.backends
                .entries
                .iter()
                .map(|b| WeightedBackend {
                    target: match &b.target {
                        Target::Upstream(u) => Target::Upstream(u.clone()),
                        Target::Invalid(w) => Target::Invalid(w.clone()),
                    },
                    weight: b.weight,
                    filters: Filters::default(),
                })
                .collect(),
        ),
        origin: r.origin.clone(),
    }
}

/// A copy of a listener's rules for each of its addresses (rules share their actions).
fn clone_table(t: &HostTable) -> HostTable {
    HostTable {
        hosts: t.hosts.clone(),
        wildcards: t.wildcards.clone(),
        any_host: t.any_host.clone(),
        default: t.default.clone(),
        mode: t.mode,
    }
}

/// The addresses a Gateway listens on: its spec.addresses (IPv4 or IPv6),
/// else one address from the pool, else the node's.
fn addresses(
    gw: &Gateway,
    cfg: &RouteConfig,
    taken: &mut BTreeSet<IpAddr>,
    warnings: &mut Vec<String>,
) -> Vec<IpAddr> {
    if !gw.addresses.is_empty() {
        let mut out = Vec::new();
        for (i, (kind, value)) in gw.addresses.iter().enumerate() {
            match (kind.as_str(), value.parse::<IpAddr>()) {
                ("IPAddress", Ok(a)) => out.push(a),
                _ => warnings.push(format!(
                    "spec.addresses[{i}]: {kind} {value:?} is not supported (IPAddress only); ignored"
                )),
            }
        }
        return out;
    }
    if !cfg.gateway_pool.is_empty() {
        return match cfg.gateway_pool.iter().find(|a| !taken.contains(a)) {
            Some(a) => {
                taken.insert(*a);
                vec![*a]
            }
            None => {
                warnings.push(
                    "the --gateway-address-pool is exhausted; the Gateway gets no address".into(),
                );
                Vec::new()
            }
        };
    }
    cfg.gateway_addresses.clone()
}
