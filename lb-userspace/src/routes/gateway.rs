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
    net::{IpAddr, Ipv4Addr, SocketAddr},
    sync::Arc,
    time::Duration,
};

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
    addresses: Vec<Ipv4Addr>,
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
    let mut taken: BTreeSet<Ipv4Addr> = BTreeSet::new();
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
            if let Ok(a) = v.parse::<Ipv4Addr>() {
                taken.insert(a);
            }
        }
    }
    let mut kept: BTreeMap<&ObjectRef, Ipv4Addr> = BTreeMap::new();
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
                namespace: route.id.namespace.clone(),
                name: route.id.name.clone(),
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
                namespace: route.id.namespace.clone(),
                name: route.id.name.clone(),
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
                .map(|a| SocketAddr::new(IpAddr::V4(*a), l.listener.port))
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
                    let key = SocketAddr::new(IpAddr::V4(*a), l.listener.port);
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
                    let key = SocketAddr::new(IpAddr::V4(*a), l.listener.port);
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
            namespace: g.gw.id.namespace.clone(),
            name: g.gw.id.name.clone(),
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

/// The addresses a Gateway listens on: its spec.addresses (IPv4 only for
/// now), else one address from the pool, else the node's.
fn addresses(
    gw: &Gateway,
    cfg: &RouteConfig,
    taken: &mut BTreeSet<Ipv4Addr>,
    warnings: &mut Vec<String>,
) -> Vec<Ipv4Addr> {
    if !gw.addresses.is_empty() {
        let mut out = Vec::new();
        for (i, (kind, value)) in gw.addresses.iter().enumerate() {
            match (kind.as_str(), value.parse::<Ipv4Addr>()) {
                ("IPAddress", Ok(a)) => out.push(a),
                _ => warnings.push(format!(
                    "spec.addresses[{i}]: {kind} {value:?} is not supported (IPv4 IPAddress only); ignored"
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

/// The protocols Weir's proxy serves on a Gateway listener.
fn served_protocol(protocol: &str) -> bool {
    !route_kinds_of(protocol).is_empty()
}

/// The route kinds a listener protocol carries.
fn route_kinds_of(protocol: &str) -> &'static [&'static str] {
    match protocol {
        "HTTP" | "HTTPS" => &[HTTP_ROUTE, GRPC_ROUTE],
        "TLS" => &["TLSRoute"],
        "TCP" => &["TCPRoute"],
        _ => &[],
    }
}

/// An HTTPS listener's certificate: the first of its certificateRefs that
/// resolves (a kubernetes.io/tls Secret, in another namespace only with a
/// ReferenceGrant), or the reason none does.
fn listener_cert(
    state: &ClusterState,
    gw: &Gateway,
    l: &Listener,
) -> Result<Arc<CertifiedKey>, (&'static str, String)> {
    let Some(tls) = &l.tls else {
        return Err((
            "InvalidCertificateRef",
            "an HTTPS listener needs tls.certificateRefs".into(),
        ));
    };
    if tls.mode != "Terminate" {
        return Err((
            "InvalidCertificateRef",
            format!(
                "tls.mode {} is not served on HTTPS (Terminate is)",
                tls.mode
            ),
        ));
    }
    let mut first_error = (
        "InvalidCertificateRef",
        "tls.certificateRefs is empty".to_string(),
    );
    for (i, r) in tls.certificate_refs.iter().enumerate() {
        let field = format!("tls.certificateRefs[{i}]");
        let ns = r
            .namespace
            .clone()
            .unwrap_or_else(|| gw.id.namespace.clone());
        let id = ObjectRef::new(&ns, &r.name);
        let result = if !(r.group.is_empty() && r.kind == "Secret") {
            Err((
                "InvalidCertificateRef",
                format!("{field}: {}/{} is not a Secret", r.group, r.kind),
            ))
        } else if !state.gateway.reference_allowed(
            "Gateway",
            &gw.id.namespace,
            "",
            "Secret",
            &ns,
            &r.name,
        ) {
            Err((
                "RefNotPermitted",
                format!(
                    "{field}: Secret {id} is in another namespace and no ReferenceGrant allows it"
                ),
            ))
        } else {
            match state.ingress.tls_secrets.get(&id) {
                None => Err((
                    "InvalidCertificateRef",
                    format!("{field}: Secret {id} (kubernetes.io/tls) not found"),
                )),
                Some(secret) => super::tls::certified_key(&secret.cert_pem, &secret.key_pem)
                    .map_err(|e| {
                        (
                            "InvalidCertificateRef",
                            format!("{field}: Secret {id}: {e}"),
                        )
                    }),
            }
        };
        match result {
            Ok(key) => return Ok(key),
            Err(e) if i == 0 => first_error = e,
            Err(_) => {}
        }
    }
    Err(first_error)
}

/// Each listener's state: conflicts, supported kinds, Accepted and ResolvedRefs.
fn listeners<'a>(state: &ClusterState, gw: &'a Gateway) -> Vec<ListenerState<'a>> {
    let generation = gw.meta.generation;
    let mut out = Vec::new();
    for l in &gw.listeners {
        let mut conditions = Vec::new();
        let same_port: Vec<&Listener> = gw
            .listeners
            .iter()
            .filter(|o| o.port == l.port && o.name != l.name)
            .collect();
        let protocol_conflict = same_port.iter().any(|o| o.protocol != l.protocol);
        let hostname_conflict = same_port
            .iter()
            .any(|o| o.protocol == l.protocol && o.hostname == l.hostname);
        let conflict = if protocol_conflict {
            Some((
                "ProtocolConflict",
                format!("another listener on port {} has another protocol", l.port),
            ))
        } else if hostname_conflict {
            Some((
                "HostnameConflict",
                format!("another listener on port {} has the same hostname", l.port),
            ))
        } else {
            None
        };
        conditions.push(match &conflict {
            None => Condition::new(
                "Conflicted",
                false,
                "NoConflicts",
                "no conflicts",
                generation,
            ),
            Some((reason, msg)) => {
                Condition::new("Conflicted", true, reason, msg.clone(), generation)
            }
        });
        let protocol_ok = served_protocol(&l.protocol);
        let hostname_ok = l.hostname.as_deref().is_none_or(matching::valid_host);
        conditions.push(if !protocol_ok {
            Condition::new(
                "Accepted",
                false,
                "UnsupportedProtocol",
                format!(
                    "protocol {} is not served (HTTP, HTTPS, TLS and TCP are)",
                    l.protocol
                ),
                generation,
            )
        } else if !hostname_ok {
            Condition::new(
                "Accepted",
                false,
                "UnsupportedValue",
                "invalid hostname",
                generation,
            )
        } else {
            Condition::new("Accepted", true, "Accepted", "accepted", generation)
        });
        // Route kinds: what the listener allows among what its protocol supports.
        let mut kinds = Vec::new();
        let mut invalid_kinds = Vec::new();
        let carried = route_kinds_of(&l.protocol);
        if l.allowed_routes.kinds.is_empty() {
            for kind in carried {
                kinds.push(RouteKind {
                    group: GROUP.into(),
                    kind: kind.to_string(),
                });
            }
        } else {
            for (group, kind) in &l.allowed_routes.kinds {
                if group == GROUP && carried.contains(&kind.as_str()) {
                    kinds.push(RouteKind {
                        group: group.clone(),
                        kind: kind.clone(),
                    });
                } else {
                    invalid_kinds.push(format!("{group}/{kind}"));
                }
            }
        }
        let terminates = l.protocol == "HTTPS"
            || (l.protocol == "TLS" && l.tls.as_ref().is_some_and(|t| t.mode == "Terminate"));
        let cert = terminates.then(|| listener_cert(state, gw, l));
        conditions.push(match (&cert, invalid_kinds.is_empty()) {
            (Some(Err((reason, msg))), _) => {
                Condition::new("ResolvedRefs", false, reason, msg.clone(), generation)
            }
            (_, false) => Condition::new(
                "ResolvedRefs",
                false,
                "InvalidRouteKinds",
                format!(
                    "route kinds not supported on this listener: {}",
                    invalid_kinds.join(", ")
                ),
                generation,
            ),
            _ => Condition::new(
                "ResolvedRefs",
                true,
                "ResolvedRefs",
                "all references resolved",
                generation,
            ),
        });
        let cert_ok = !matches!(cert, Some(Err(_)));
        out.push(ListenerState {
            listener: l,
            cert: cert.and_then(Result::ok),
            streams: Vec::new(),
            usable: protocol_ok && hostname_ok && conflict.is_none() && cert_ok,
            kinds,
            conditions,
            attached: 0,
            table: HostTable::new(HostRules::Gateway),
        });
    }
    out
}

type Attached = Vec<(usize, Vec<String>)>;

/// Where a route attached: (gateway, listener, effective hostnames).
type AttachedAt = (usize, usize, Vec<String>);

/// What parent status needs to know of a route of any kind.
struct RouteView<'a> {
    kind: &'static str,
    id: &'a ObjectRef,
    generation: i64,
    parent_refs: &'a [crate::model::gateway::ParentRef],
    hostnames: &'a [String],
    /// Every rule was left out.
    none_valid: bool,
    problems: &'a [String],
    unresolved: &'a Option<(&'static str, String)>,
}

/// A route's status for each of its parents that is a Weir Gateway, and the
/// listeners it attaches to: (gateway, listener, effective hostnames).
fn parent_statuses(
    gs: &GatewayState,
    gateways: &mut [GatewayBuild],
    route: &RouteView,
) -> (Vec<RouteParentStatus>, Vec<AttachedAt>) {
    let mut parents = Vec::new();
    let mut out = Vec::new();
    let generation = route.generation;
    for parent in route.parent_refs {
        if parent.group != GROUP || parent.kind != "Gateway" {
            continue;
        }
        let gw_ns = parent
            .namespace
            .clone()
            .unwrap_or_else(|| route.id.namespace.clone());
        let gw_id = ObjectRef::new(&gw_ns, &parent.name);
        let Some(gi) = gateways.iter().position(|g| g.gw.id == gw_id) else {
            // Not a Gateway of Weir's: its controller writes this parent's status.
            continue;
        };
        let g = &mut gateways[gi];
        let (accepted, attached) = attach(gs, route, parent, g);
        let mut conditions = vec![match &accepted {
            Ok(()) if route.none_valid => Condition::new(
                "Accepted",
                false,
                "UnsupportedValue",
                route.problems.join("; "),
                generation,
            ),
            Ok(()) => Condition::new("Accepted", true, "Accepted", "attached", generation),
            Err((reason, msg)) => {
                Condition::new("Accepted", false, reason, msg.clone(), generation)
            }
        }];
        conditions.push(match route.unresolved {
            None => Condition::new(
                "ResolvedRefs",
                true,
                "ResolvedRefs",
                "all references resolved",
                generation,
            ),
            Some((reason, msg)) => {
                Condition::new("ResolvedRefs", false, reason, msg.clone(), generation)
            }
        });
        if !route.problems.is_empty() && !route.none_valid {
            conditions.push(Condition::new(
                "PartiallyInvalid",
                true,
                "UnsupportedValue",
                route.problems.join("; "),
                generation,
            ));
        }
        parents.push(RouteParentStatus {
            parent_ref: ParentReference {
                group: GROUP.into(),
                kind: "Gateway".into(),
                namespace: Some(gw_ns),
                name: parent.name.clone(),
                section_name: parent.section_name.clone(),
                port: parent.port,
            },
            controller_name: GATEWAY_CONTROLLER.into(),
            conditions,
        });
        for (li, hosts) in attached {
            g.listeners[li].attached += 1;
            out.push((gi, li, hosts));
        }
    }
    (parents, out)
}

/// Which listeners of `g` a route's parentRef attaches to, with the
/// effective hostnames on each; or why it attaches to none.
fn attach(
    gs: &GatewayState,
    route: &RouteView,
    parent: &crate::model::gateway::ParentRef,
    g: &GatewayBuild,
) -> (Result<(), (&'static str, String)>, Attached) {
    let selected: Vec<(usize, &ListenerState)> = g
        .listeners
        .iter()
        .enumerate()
        .filter(|(_, l)| {
            parent
                .section_name
                .as_ref()
                .is_none_or(|s| *s == l.listener.name)
        })
        .filter(|(_, l)| parent.port.is_none_or(|p| p == l.listener.port))
        .collect();
    if selected.is_empty() {
        return (
            Err((
                "NoMatchingParent",
                format!(
                    "Gateway {} has no listener{}{}",
                    g.gw.id,
                    parent
                        .section_name
                        .as_ref()
                        .map(|s| format!(" named {s:?}"))
                        .unwrap_or_default(),
                    parent
                        .port
                        .map(|p| format!(" on port {p}"))
                        .unwrap_or_default()
                ),
            )),
            Vec::new(),
        );
    }
    let allowed: Vec<&(usize, &ListenerState)> = selected
        .iter()
        .filter(|(_, l)| l.usable)
        .filter(|(_, l)| {
            l.kinds
                .iter()
                .any(|k| k.group == GROUP && k.kind == route.kind)
        })
        .filter(|(_, l)| {
            namespace_allowed(
                gs,
                &l.listener.allowed_routes.namespaces,
                &g.gw.id.namespace,
                &route.id.namespace,
            )
        })
        .collect();
    if allowed.is_empty() {
        return (
            Err((
                "NotAllowedByListeners",
                format!(
                    "no listener of Gateway {} allows a {} from namespace {}",
                    g.gw.id, route.kind, route.id.namespace
                ),
            )),
            Vec::new(),
        );
    }
    let mut attached = Vec::new();
    for (i, l) in allowed {
        // TCP listeners have no hostnames to intersect.
        let listener_host = match l.listener.protocol.as_str() {
            "TCP" => None,
            _ => l.listener.hostname.as_deref(),
        };
        let hosts = effective_hostnames(listener_host, route.hostnames);
        if !hosts.is_empty() {
            attached.push((*i, hosts));
        }
    }
    if attached.is_empty() {
        return (
            Err((
                "NoMatchingListenerHostname",
                "no hostname of the route matches a listener's hostname".into(),
            )),
            Vec::new(),
        );
    }
    (Ok(()), attached)
}

fn namespace_allowed(
    gs: &GatewayState,
    from: &RouteNamespaces,
    gw_ns: &str,
    route_ns: &str,
) -> bool {
    match from {
        RouteNamespaces::All => true,
        RouteNamespaces::Same => gw_ns == route_ns,
        RouteNamespaces::Selector(sel) => gs
            .namespaces
            .get(route_ns)
            .is_some_and(|labels| sel.matches(labels)),
    }
}

/// The hostnames a route serves on a listener: "" for every host, or the
/// intersection of the listener's hostname and the route's.
pub fn effective_hostnames(listener: Option<&str>, route: &[String]) -> Vec<String> {
    match (listener, route.is_empty()) {
        (None, true) => vec![String::new()],
        (None, false) => route.to_vec(),
        (Some(l), true) => vec![l.to_string()],
        (Some(l), false) => {
            let mut out: Vec<String> = route.iter().filter_map(|r| intersect(l, r)).collect();
            out.sort();
            out.dedup();
            out
        }
    }
}

/// The more specific of two hostnames when one covers the other.
fn intersect(a: &str, b: &str) -> Option<String> {
    if a == b {
        return Some(a.to_string());
    }
    // A wildcard covers an exact name under it, or a longer wildcard under it.
    let covers = |pattern: &str, name: &str| {
        matching::wildcard_suffix(pattern).is_some()
            && hostname_matches(pattern, name.strip_prefix("*.").unwrap_or(name))
    };
    if covers(a, b) {
        Some(b.to_string())
    } else if covers(b, a) {
        Some(a.to_string())
    } else {
        None
    }
}

/// How specific a match is: (Exact path, prefix length, method, headers, query parameters).
type Specificity = (bool, usize, bool, usize, usize);

/// Precedence among rules of one host entry; smaller sorts first: more
/// specific, then the older route, then rule and match order.
type RankKey = (std::cmp::Reverse<Specificity>, usize, usize, usize);

/// A route compiled: its rules (with precedence keys), the first reference
/// that does not resolve, and the parts left out.
struct CompiledRoute {
    rules: Vec<(RankKey, Rule)>,
    unresolved: Option<(&'static str, String)>,
    problems: Vec<String>,
}

fn compile_route(
    state: &ClusterState,
    cfg: &RouteConfig,
    upstreams: &mut Upstreams,
    route: &HttpRoute,
    order: usize,
) -> CompiledRoute {
    let mut out = CompiledRoute {
        rules: Vec::new(),
        unresolved: None,
        problems: Vec::new(),
    };
    for (ri, rule) in route.rules.iter().enumerate() {
        let field = format!("spec.rules[{ri}]");
        let rule_backends = backends(
            state,
            cfg,
            upstreams,
            if route.grpc { GRPC_ROUTE } else { HTTP_ROUTE },
            &route.id.namespace,
            &rule.backend_refs,
            &field,
            &mut out,
        );
        // RequestMirror backends resolve like backendRefs (a bad one is
        // reported and left out; the rule still serves).
        let mirror_refs: Vec<(crate::model::gateway::HttpBackendRef, u32)> = rule
            .filters
            .iter()
            .filter_map(|f| match f {
                HttpFilter::RequestMirror {
                    backend,
                    port,
                    percent,
                } => Some((
                    crate::model::gateway::HttpBackendRef {
                        target: backend.clone(),
                        port: *port,
                        weight: 1,
                        filters: Vec::new(),
                    },
                    *percent,
                )),
                _ => None,
            })
            .collect();
        let refs: Vec<_> = mirror_refs.iter().map(|(r, _)| r.clone()).collect();
        let resolved = backends(
            state,
            cfg,
            upstreams,
            if route.grpc { GRPC_ROUTE } else { HTTP_ROUTE },
            &route.id.namespace,
            &refs,
            &format!("{field}.filters(RequestMirror)"),
            &mut out,
        );
        let mirrors: Vec<Arc<Mirror>> = resolved
            .into_iter()
            .zip(&mirror_refs)
            .filter_map(|(b, (_, percent))| match b.target {
                Target::Upstream(u) => Some(Arc::new(Mirror::new(u, *percent))),
                Target::Invalid(_) => None,
            })
            .collect();
        let compiled = compile_rule(route, ri, rule, &field, rule_backends, mirrors);
        match compiled {
            Ok(rules) => {
                for (mi, (key, r)) in rules.into_iter().enumerate() {
                    out.rules.push(((std::cmp::Reverse(key), order, ri, mi), r));
                }
            }
            Err(problem) => out
                .problems
                .push(format!("{field}: {problem}; rule skipped")),
        }
    }
    out
}

/// The backends of a rule of a `route_kind` route in `route_ns`.
#[allow(clippy::too_many_arguments)]
fn backends(
    state: &ClusterState,
    cfg: &RouteConfig,
    upstreams: &mut Upstreams,
    route_kind: &str,
    route_ns: &str,
    refs: &[crate::model::gateway::HttpBackendRef],
    field: &str,
    out: &mut CompiledRoute,
) -> Vec<WeightedBackend> {
    let gs = &state.gateway;
    let mut list = Vec::new();
    for (bi, b) in refs.iter().enumerate() {
        let bf = format!("{field}.backendRefs[{bi}]");
        let ns = b
            .target
            .namespace
            .clone()
            .unwrap_or_else(|| route_ns.to_string());
        let id = ObjectRef::new(&ns, &b.target.name);
        let resolved: Result<_, (&'static str, String)> = if !(b.target.group.is_empty()
            && b.target.kind == "Service")
        {
            Err((
                "InvalidKind",
                format!(
                    "{bf}: {}/{} is not a supported backend kind (Service)",
                    b.target.group, b.target.kind
                ),
            ))
        } else if !gs.reference_allowed(route_kind, route_ns, "", "Service", &ns, &b.target.name) {
            Err((
                "RefNotPermitted",
                format!(
                    "{bf}: Service {id} is in another namespace and no ReferenceGrant allows it"
                ),
            ))
        } else if let Some(port) = b.port {
            upstreams
                .get(
                    state,
                    &cfg.node_name,
                    id.clone(),
                    &ServicePortRef::Number(port),
                    route_kind == GRPC_ROUTE,
                )
                .map_err(|reason| ("BackendNotFound", format!("{bf}: {reason}")))
        } else {
            Err((
                "UnsupportedValue",
                format!("{bf}.port: missing (a Service backend needs a port)"),
            ))
        };
        let target = match resolved {
            Ok(u) => Target::Upstream(u),
            Err((reason, msg)) => {
                if out.unresolved.is_none() {
                    out.unresolved = Some((reason, msg.clone()));
                }
                Target::Invalid(msg)
            }
        };
        let filters = match filters(&b.filters, &format!("{bf}.filters"), None) {
            Ok(f) => f,
            Err(problem) => {
                out.problems.push(problem.clone());
                list.push(WeightedBackend {
                    target: Target::Invalid(problem),
                    weight: b.weight,
                    filters: Filters::default(),
                });
                continue;
            }
        };
        list.push(WeightedBackend {
            target,
            weight: b.weight,
            filters,
        });
    }
    list
}

/// The rules of one route rule (one per match), each with its precedence
/// key: (Exact, prefix length, method, headers, query parameters).
fn compile_rule(
    route: &HttpRoute,
    ri: usize,
    rule: &HttpRouteRule,
    field: &str,
    backends: Vec<WeightedBackend>,
    mirrors: Vec<Arc<Mirror>>,
) -> Result<Vec<(Specificity, Rule)>, String> {
    let mut matchers = Vec::new();
    for (mi, m) in rule.matches.iter().enumerate() {
        matchers.push(matcher(m, &format!("{field}.matches[{mi}]"))?);
    }
    let prefix_only = rule
        .matches
        .iter()
        .all(|m| m.path_kind == MatchKind::PathPrefix);
    let mut filters = filters(
        &rule.filters,
        &format!("{field}.filters"),
        Some(prefix_only),
    )?;
    filters.mirrors = mirrors;
    let ms = |v: Option<u64>| v.map(Duration::from_millis);
    let action = Arc::new(Action {
        filters,
        backends: Backends::new(backends),
        origin: Origin {
            kind: if route.grpc { GRPC_ROUTE } else { HTTP_ROUTE },
            object: route.id.clone(),
            rule: Some(ri),
        },
        request_timeout: ms(rule.request_timeout_ms),
        backend_timeout: ms(rule.backend_timeout_ms),
        retry: rule.retry.as_ref().map(|r| super::rule::Retry {
            codes: r.codes.clone(),
            attempts: r.attempts,
            backoff: Duration::from_millis(r.backoff_ms),
        }),
    });
    Ok(matchers
        .into_iter()
        .zip(&rule.matches)
        .map(|(matcher, m)| {
            let key = (
                m.path_kind == MatchKind::Exact,
                match m.path_kind {
                    MatchKind::Exact | MatchKind::PathPrefix => m.path.trim_end_matches('/').len(),
                    MatchKind::RegularExpression => 0,
                },
                m.method.is_some(),
                m.headers.len(),
                m.query.len(),
            );
            (
                key,
                Rule {
                    matcher,
                    action: action.clone(),
                },
            )
        })
        .collect())
}

fn anchored(pattern: &str, field: &str) -> Result<regex::Regex, String> {
    regex::Regex::new(&format!("^(?:{pattern})$"))
        .map_err(|e| format!("{field}: invalid regular expression {pattern:?}: {e}"))
}

fn value_match(kind: MatchKind, value: &str, field: &str) -> Result<ValueMatch, String> {
    match kind {
        MatchKind::RegularExpression => anchored(value, field).map(ValueMatch::Regex),
        _ => Ok(ValueMatch::Exact(value.to_string())),
    }
}

fn matcher(m: &HttpMatch, field: &str) -> Result<RequestMatch, String> {
    if !m.path.starts_with('/') && m.path_kind != MatchKind::RegularExpression {
        return Err(format!(
            "{field}.path.value: {:?} must start with '/'",
            m.path
        ));
    }
    let path = match m.path_kind {
        MatchKind::Exact => PathMatch::Exact(m.path.clone()),
        MatchKind::PathPrefix => PathMatch::Prefix(matching::prefix_key(&m.path)),
        MatchKind::RegularExpression => {
            PathMatch::Regex(m.path.clone(), anchored(&m.path, &format!("{field}.path"))?)
        }
    };
    let mut headers = Vec::new();
    for (i, (kind, name, value)) in m.headers.iter().enumerate() {
        let f = format!("{field}.headers[{i}]");
        let name = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| format!("{f}.name: invalid header name {name:?}"))?;
        headers.push((name, value_match(*kind, value, &f)?));
    }
    let mut query = Vec::new();
    for (i, (kind, name, value)) in m.query.iter().enumerate() {
        query.push((
            name.clone(),
            value_match(*kind, value, &format!("{field}.queryParams[{i}]"))?,
        ));
    }
    let method = m
        .method
        .as_ref()
        .map(|s| {
            Method::from_bytes(s.as_bytes())
                .map_err(|_| format!("{field}.method: invalid method {s:?}"))
        })
        .transpose()?;
    Ok(RequestMatch {
        path,
        headers,
        query,
        method,
    })
}

fn header_edit(m: &HeaderModifier, field: &str) -> Result<HeaderEdit, String> {
    let pair =
        |(n, v): &(String, String), what: &str| -> Result<(HeaderName, HeaderValue), String> {
            Ok((
                HeaderName::from_bytes(n.as_bytes())
                    .map_err(|_| format!("{field}.{what}: invalid header name {n:?}"))?,
                HeaderValue::from_str(v)
                    .map_err(|_| format!("{field}.{what}: invalid value for {n}"))?,
            ))
        };
    Ok(HeaderEdit {
        set: m
            .set
            .iter()
            .map(|p| pair(p, "set"))
            .collect::<Result<_, _>>()?,
        add: m
            .add
            .iter()
            .map(|p| pair(p, "add"))
            .collect::<Result<_, _>>()?,
        remove: m
            .remove
            .iter()
            .map(|n| {
                HeaderName::from_bytes(n.as_bytes())
                    .map_err(|_| format!("{field}.remove: invalid header name {n:?}"))
            })
            .collect::<Result<_, _>>()?,
    })
}

fn path_rewrite(
    p: &PathModifier,
    prefix_only: Option<bool>,
    field: &str,
) -> Result<PathRewrite, String> {
    Ok(match p {
        PathModifier::ReplaceFullPath(v) => PathRewrite::Full(v.clone()),
        PathModifier::ReplacePrefixMatch(v) => {
            if prefix_only != Some(true) {
                return Err(format!(
                    "{field}: ReplacePrefixMatch needs every match of the rule to be a PathPrefix"
                ));
            }
            PathRewrite::Prefix(v.clone())
        }
    })
}

/// A rule's (or a backend's) filters. `prefix_only`: whether every match
/// is a PathPrefix (None for backend filters, which cannot rewrite paths).
fn filters(list: &[HttpFilter], field: &str, prefix_only: Option<bool>) -> Result<Filters, String> {
    let mut f = Filters::default();
    for (i, filter) in list.iter().enumerate() {
        let ff = format!("{field}[{i}]");
        let twice = |name: &str| format!("{ff}: a second {name} filter");
        match filter {
            HttpFilter::RequestHeaderModifier(m) => {
                if f.request_headers.is_some() {
                    return Err(twice("RequestHeaderModifier"));
                }
                f.request_headers = Some(header_edit(m, &format!("{ff}.requestHeaderModifier"))?);
            }
            HttpFilter::ResponseHeaderModifier(m) => {
                if f.response_headers.is_some() {
                    return Err(twice("ResponseHeaderModifier"));
                }
                f.response_headers = Some(header_edit(m, &format!("{ff}.responseHeaderModifier"))?);
            }
            HttpFilter::RequestRedirect(r) if prefix_only.is_some() => {
                if f.redirect.is_some() {
                    return Err(twice("RequestRedirect"));
                }
                f.redirect = Some(RedirectTo {
                    scheme: r.scheme.clone(),
                    hostname: r.hostname.clone(),
                    port: r.port,
                    path: r
                        .path
                        .as_ref()
                        .map(|p| {
                            path_rewrite(p, prefix_only, &format!("{ff}.requestRedirect.path"))
                        })
                        .transpose()?,
                    status: r.status_code,
                });
            }
            HttpFilter::UrlRewrite { hostname, path } if prefix_only.is_some() => {
                if f.rewrite_host.is_some() || f.rewrite_path.is_some() {
                    return Err(twice("URLRewrite"));
                }
                f.rewrite_host = hostname.clone();
                f.rewrite_path = path
                    .as_ref()
                    .map(|p| path_rewrite(p, prefix_only, &format!("{ff}.urlRewrite.path")))
                    .transpose()?;
            }
            HttpFilter::RequestRedirect(_) | HttpFilter::UrlRewrite { .. } => {
                return Err(format!(
                    "{ff}: only header modifiers are supported on a backendRef"
                ));
            }
            // Resolved with the backends (`compile_route`).
            HttpFilter::RequestMirror { .. } if prefix_only.is_some() => {}
            HttpFilter::RequestMirror { .. } => {
                return Err(format!(
                    "{ff}: only header modifiers are supported on a backendRef"
                ));
            }
            HttpFilter::Unsupported(kind) => {
                return Err(format!("{ff}.type: filter {kind} is not supported"));
            }
        }
    }
    if f.redirect.is_some() && (f.rewrite_host.is_some() || f.rewrite_path.is_some()) {
        return Err(format!(
            "{field}: RequestRedirect and URLRewrite cannot be combined"
        ));
    }
    Ok(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostnames_intersect_as_the_spec_has_it() {
        let r = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            effective_hostnames(
                Some("very.specific.com"),
                &r(&[
                    "non.matching.com",
                    "*.nonmatchingwildcard.io",
                    "very.specific.com"
                ])
            ),
            ["very.specific.com"]
        );
        assert_eq!(
            effective_hostnames(
                Some("*.wildcard.io"),
                &r(&[
                    "non.matching.com",
                    "wildcard.io",
                    "foo.wildcard.io",
                    "bar.wildcard.io",
                    "foo.bar.wildcard.io"
                ])
            ),
            ["bar.wildcard.io", "foo.bar.wildcard.io", "foo.wildcard.io"]
        );
        assert_eq!(
            effective_hostnames(
                Some("very.specific.com"),
                &r(&["non.matching.com", "*.specific.com"])
            ),
            ["very.specific.com"]
        );
        assert_eq!(
            effective_hostnames(Some("*.anotherwildcard.io"), &r(&["*.anotherwildcard.io"])),
            ["*.anotherwildcard.io"]
        );
        assert_eq!(
            effective_hostnames(Some("*.io"), &r(&["*.wildcard.io"])),
            ["*.wildcard.io"]
        );
        assert!(effective_hostnames(
            Some("very.specific.com"),
            &r(&["specific.but.wrong.com", "wildcard.io"])
        )
        .is_empty());
        assert_eq!(effective_hostnames(None, &[]), [""]);
        assert_eq!(effective_hostnames(Some("a.com"), &[]), ["a.com"]);
    }
}
