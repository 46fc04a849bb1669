//! `translate::translate` for IPv6 and dual-stack Services: each family's
//! frontends go to that family's endpoints, NodePorts and external
//! addresses follow the families the Service has, source ranges apply per
//! family, and what cannot be served is reported with the Service's name.
use std::net::IpAddr;

use lb_common::{
    BACKEND_ACTIVE, PROTO_TCP, SCOPE_EXTERNAL, SVC_FLAG_EXTERNAL, SVC_FLAG_SOURCE_RANGES,
};
use weir::{
    model::{
        ClusterState, Endpoint, EndpointPort, EndpointSlice, Family, Node, ObjectRef, Protocol,
        Service, ServicePort, ServiceType,
    },
    translate::{translate, Backend, Desired, FrontendKey, NodeFacts},
};

fn ip(s: &str) -> IpAddr {
    s.parse().expect(s)
}

fn service(cluster_ips: &[&str]) -> Service {
    Service {
        id: ObjectRef::new("demo", "web"),
        service_type: ServiceType::ClusterIp,
        cluster_ips: cluster_ips.iter().map(|a| ip(a)).collect(),
        ports: vec![ServicePort {
            name: "http".into(),
            port: 80,
            protocol: Protocol::Tcp,
            node_port: Some(30080),
            app_protocol: None,
        }],
        ..Default::default()
    }
}

fn slice(name: &str, family: Family, addresses: &[&str]) -> EndpointSlice {
    EndpointSlice {
        id: ObjectRef::new("demo", name),
        service_name: "web".into(),
        family,
        ports: vec![EndpointPort {
            name: "http".into(),
            port: 8080,
            protocol: Protocol::Tcp,
        }],
        endpoints: addresses.iter().map(|a| Endpoint::ready(ip(a))).collect(),
    }
}

/// Both families' slices: two IPv4 endpoints and one IPv6 endpoint (the
/// families of a dual-stack Service need not have the same endpoints).
fn slices() -> Vec<EndpointSlice> {
    vec![
        slice("web-v4", Family::V4, &["198.18.1.1", "198.18.1.2"]),
        slice("web-v6", Family::V6, &["2001:db8:1::1"]),
    ]
}

fn node(ipv6: bool) -> NodeFacts {
    NodeFacts {
        node_name: "node-a".into(),
        ipv6,
        ..NodeFacts::default()
    }
}

fn run(svc: Service, node_facts: &NodeFacts) -> Desired {
    let mut state = ClusterState::with_objects([svc], slices());
    state.nodes.insert(
        "node-a".into(),
        Node {
            name: "node-a".into(),
            addresses: vec![ip("198.18.100.1"), ip("2001:db8:100::1")],
            ..Node::default()
        },
    );
    translate(&state, node_facts)
}

fn key(addr: &str, port: u16) -> FrontendKey {
    FrontendKey {
        addr: ip(addr),
        port,
        proto: PROTO_TCP,
        scope: SCOPE_EXTERNAL,
    }
}

fn backend_addrs(d: &Desired, addr: &str, port: u16) -> Vec<IpAddr> {
    d.frontends
        .get(&key(addr, port))
        .unwrap_or_else(|| panic!("no frontend {addr}:{port} in {:#?}", d.frontends.keys()))
        .backends
        .iter()
        .map(|b: &Backend| {
            assert_eq!(
                (b.port, b.proto, b.state),
                (8080, PROTO_TCP, BACKEND_ACTIVE)
            );
            b.addr
        })
        .collect()
}

fn keys(d: &Desired) -> Vec<String> {
    d.frontends.keys().map(|k| k.to_string()).collect()
}

#[test]
fn each_family_of_a_dual_stack_service_goes_to_its_own_endpoints() {
    let d = run(service(&["198.19.0.10", "2001:db8:19::10"]), &node(true));
    assert_eq!(
        backend_addrs(&d, "198.19.0.10", 80),
        [ip("198.18.1.1"), ip("198.18.1.2")]
    );
    assert_eq!(
        backend_addrs(&d, "2001:db8:19::10", 80),
        [ip("2001:db8:1::1")]
    );
    assert!(d.warnings.is_empty(), "{:?}", d.warnings);
}

#[test]
fn a_single_stack_ipv6_service_has_only_ipv6_frontends() {
    let mut svc = service(&["2001:db8:19::11"]);
    svc.service_type = ServiceType::NodePort;
    let d = run(svc, &node(true));
    // The NodePort is served on the node's IPv6 address only: the Service
    // has no IPv4 endpoints to send the IPv4 address's clients to.
    assert_eq!(
        keys(&d),
        ["[2001:db8:19::11]:80/TCP", "[2001:db8:100::1]:30080/TCP"]
    );
    assert_eq!(
        backend_addrs(&d, "2001:db8:100::1", 30080),
        [ip("2001:db8:1::1")]
    );
    let f = &d.frontends[&key("2001:db8:100::1", 30080)];
    assert_eq!(f.flags & SVC_FLAG_EXTERNAL, SVC_FLAG_EXTERNAL);
}

#[test]
fn node_ports_and_external_ips_follow_the_services_families() {
    let mut svc = service(&["198.19.0.12"]);
    svc.service_type = ServiceType::NodePort;
    svc.external_ips = vec![ip("198.18.9.1"), ip("2001:db8:9::1")];
    let d = run(svc, &node(true));
    assert_eq!(
        keys(&d),
        [
            "198.18.9.1:80/TCP",
            "198.18.100.1:30080/TCP",
            "198.19.0.12:80/TCP"
        ]
    );
    assert_eq!(
        d.warnings,
        ["Service demo/web: spec.externalIPs: 2001:db8:9::1 is an IPv6 address but the Service has no IPv6 cluster IP; not served"]
    );
}

#[test]
fn source_ranges_guard_only_the_frontends_of_their_family() {
    let mut svc = service(&["198.19.0.13", "2001:db8:19::13"]);
    svc.service_type = ServiceType::LoadBalancer;
    svc.load_balancer_ips = vec![ip("198.18.200.1"), ip("2001:db8:200::1")];
    svc.source_ranges = vec![(ip("198.18.50.0"), 24), (ip("2001:db8:50::"), 48)];
    let d = run(svc.clone(), &node(true));
    let v4 = &d.frontends[&key("198.18.200.1", 80)];
    let v6 = &d.frontends[&key("2001:db8:200::1", 80)];
    assert_ne!(v4.flags & SVC_FLAG_SOURCE_RANGES, 0);
    assert_eq!(v4.source_ranges, [(ip("198.18.50.0"), 24)]);
    assert_ne!(v6.flags & SVC_FLAG_SOURCE_RANGES, 0);
    assert_eq!(v6.source_ranges, [(ip("2001:db8:50::"), 48)]);
    // Ranges of one family only: the other family's clients are not
    // filtered (kube-proxy's proxier of that family sees no ranges).
    svc.source_ranges = vec![(ip("198.18.50.0"), 24)];
    let d = run(svc, &node(true));
    let v6 = &d.frontends[&key("2001:db8:200::1", 80)];
    assert_eq!(v6.flags & SVC_FLAG_SOURCE_RANGES, 0);
    assert!(v6.source_ranges.is_empty());
}

#[test]
fn without_ipv6_the_ipv4_family_is_served_and_the_other_reported() {
    let d = run(service(&["2001:db8:19::14", "198.19.0.14"]), &node(false));
    assert_eq!(keys(&d), ["198.19.0.14:80/TCP"]);
    assert_eq!(
        d.warnings,
        ["Service demo/web: its IPv6 cluster IP is not served: the agent runs without --ipv6"]
    );
}

#[test]
fn what_the_source_skipped_is_reported_with_the_services_name() {
    let mut svc = service(&["198.19.0.15"]);
    svc.problems = vec![
        "spec.clusterIPs[1]: 198.19.0.16 is an IPv4 address but spec.ipFamilies[1] is \"IPv6\"; that address is not served".into(),
    ];
    let d = run(svc, &node(true));
    assert_eq!(keys(&d), ["198.19.0.15:80/TCP"]);
    assert_eq!(
        d.warnings,
        ["Service demo/web: spec.clusterIPs[1]: 198.19.0.16 is an IPv4 address but spec.ipFamilies[1] is \"IPv6\"; that address is not served"]
    );
}
