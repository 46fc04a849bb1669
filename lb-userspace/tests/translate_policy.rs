//! `translate::translate`: traffic policies, terminating fallback, topology
//! hints, NodePort/LoadBalancer/externalIP frontends, frontend conflicts,
//! session affinity, and the YAML validation of the fields behind them.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
};

use lb_common::{
    ALG_MAGLEV, ALG_RANDOM, BACKEND_ACTIVE, BACKEND_LOCAL, BACKEND_TERMINATING, PROTO_TCP,
    SCOPE_EXTERNAL, SCOPE_INTERNAL, SVC_FLAG_DROP_IF_EMPTY, SVC_FLAG_EXTERNAL,
    SVC_FLAG_SOURCE_RANGES,
};
use weir::translate::{Backend, FrontendKey as ServiceKey};
use weir::{
    model::{
        ClusterState, Endpoint, EndpointPort, EndpointSlice, Node, ObjectRef, Protocol, Service,
        ServicePort, ServiceType, ZONE_LABEL,
    },
    source::parse::{parse_documents, DocumentError, Object},
    translate::{translate, Desired, NodeFacts, ALGORITHM_ANNOTATION, TOPOLOGY_MODE_ANNOTATION},
};

// ---- builders ---------------------------------------------------------------

const CLUSTER_IP: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 10);
const OTHER_CLUSTER_IP: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 11);
const NODE_A_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 5);
const NODE_A_IP2: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 6);
const NODE_B_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 7);
const EXTERNAL_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 200, 1);
const LB_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 201, 1);
const NODE_PORT: u16 = 30080;
const THIS_NODE: &str = "node-a";
const OTHER_NODE: &str = "node-b";
const THIS_ZONE: &str = "zone-a";
const OTHER_ZONE: &str = "zone-b";

fn ep_ip(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 1, last)
}

/// A ClusterIP service with one TCP port "http" 80.
fn svc(ns: &str, name: &str, ip: Ipv4Addr) -> Service {
    Service {
        id: ObjectRef::new(ns, name),
        service_type: ServiceType::ClusterIp,
        cluster_ips: vec![ip.into()],
        ports: vec![ServicePort {
            name: "http".into(),
            port: 80,
            protocol: Protocol::Tcp,
            node_port: None,
            app_protocol: None,
        }],
        ..Default::default()
    }
}

fn echo() -> Service {
    svc("demo", "echo", CLUSTER_IP)
}

/// echo as a NodePort service (nodePort 30080).
fn echo_node_port() -> Service {
    let mut s = echo();
    s.service_type = ServiceType::NodePort;
    s.ports[0].node_port = Some(NODE_PORT);
    s
}

/// echo as a LoadBalancer service (nodePort 30080, ingress LB_IP).
fn echo_load_balancer() -> Service {
    let mut s = echo_node_port();
    s.service_type = ServiceType::LoadBalancer;
    s.load_balancer_ips = vec![LB_IP.into()];
    s
}

/// A slice of `service` in namespace demo with port "http" 8080/TCP.
fn slice(name: &str, service: &str) -> EndpointSlice {
    EndpointSlice {
        id: ObjectRef::new("demo", name),
        service_name: service.into(),
        family: weir::model::Family::V4,
        ports: vec![EndpointPort {
            name: "http".into(),
            port: 8080,
            protocol: Protocol::Tcp,
        }],
        endpoints: vec![],
    }
}

fn endpoint(last: u8, node: Option<&str>) -> Endpoint {
    Endpoint {
        address: ep_ip(last).into(),
        ready: true,
        serving: true,
        terminating: false,
        node_name: node.map(Into::into),
        zone: None,
        hint_zones: None,
    }
}

trait SliceExt {
    fn with(self, ep: Endpoint) -> Self;
    /// Ready, on `node`.
    fn ready_on(self, last: u8, node: &str) -> Self;
    /// Terminating but still serving, on `node`.
    fn terminating_on(self, last: u8, node: &str) -> Self;
    /// Terminating and no longer serving, on `node`.
    fn dead_on(self, last: u8, node: &str) -> Self;
    /// Ready, with hints.forZones = `zones` (None: no hints).
    fn hinted(self, last: u8, zones: Option<&[&str]>) -> Self;
}

impl SliceExt for EndpointSlice {
    fn with(mut self, ep: Endpoint) -> Self {
        self.endpoints.push(ep);
        self
    }
    fn ready_on(self, last: u8, node: &str) -> Self {
        self.with(endpoint(last, Some(node)))
    }
    fn terminating_on(self, last: u8, node: &str) -> Self {
        self.with(Endpoint {
            ready: false,
            serving: true,
            terminating: true,
            ..endpoint(last, Some(node))
        })
    }
    fn dead_on(self, last: u8, node: &str) -> Self {
        self.with(Endpoint {
            ready: false,
            serving: false,
            terminating: true,
            ..endpoint(last, Some(node))
        })
    }
    fn hinted(self, last: u8, zones: Option<&[&str]>) -> Self {
        self.with(Endpoint {
            hint_zones: zones.map(|z| z.iter().map(|s| (*s).into()).collect()),
            ..endpoint(last, Some(OTHER_NODE))
        })
    }
}

fn node(name: &str, zone: Option<&str>, addresses: &[Ipv4Addr]) -> Node {
    let mut labels = BTreeMap::new();
    labels.insert("kubernetes.io/hostname".to_string(), name.to_string());
    if let Some(zone) = zone {
        labels.insert(ZONE_LABEL.to_string(), zone.to_string());
    }
    Node {
        name: name.into(),
        labels,
        addresses: addresses.iter().map(|a| (*a).into()).collect(),
    }
}

/// This node (zone-a, 198.18.0.5 and .6) and another (zone-b, 198.18.0.7).
fn default_nodes() -> Vec<Node> {
    vec![
        node(THIS_NODE, Some(THIS_ZONE), &[NODE_A_IP, NODE_A_IP2]),
        node(OTHER_NODE, Some(OTHER_ZONE), &[NODE_B_IP]),
    ]
}

fn cluster(services: Vec<Service>, slices: Vec<EndpointSlice>, nodes: Vec<Node>) -> ClusterState {
    ClusterState {
        nodes: nodes.into_iter().map(|n| (n.name.clone(), n)).collect(),
        ..ClusterState::with_objects(services, slices)
    }
}

fn facts() -> NodeFacts {
    NodeFacts {
        node_name: THIS_NODE.into(),
        ..Default::default()
    }
}

/// Translates on node-a with the default nodes.
fn run(services: Vec<Service>, slices: Vec<EndpointSlice>) -> Desired {
    translate(&cluster(services, slices, default_nodes()), &facts())
}

fn ext(ip: Ipv4Addr, port: u16) -> ServiceKey {
    ServiceKey {
        addr: ip.into(),
        port,
        proto: PROTO_TCP,
        scope: SCOPE_EXTERNAL,
    }
}

fn int(ip: Ipv4Addr, port: u16) -> ServiceKey {
    ServiceKey {
        scope: SCOPE_INTERNAL,
        ..ext(ip, port)
    }
}

fn active(last: u8) -> Backend {
    Backend {
        addr: ep_ip(last).into(),
        port: 8080,
        proto: PROTO_TCP,
        state: BACKEND_ACTIVE,
    }
}

fn terminating(last: u8) -> Backend {
    Backend {
        state: BACKEND_TERMINATING,
        ..active(last)
    }
}

fn keys(d: &Desired) -> BTreeSet<ServiceKey> {
    d.frontends.keys().copied().collect()
}

fn set<const N: usize>(keys: [ServiceKey; N]) -> BTreeSet<ServiceKey> {
    keys.into_iter().collect()
}

/// The backends of the frontend at `key`; panics when there is none.
/// The backends of a frontend, without the BACKEND_LOCAL bit (these tests
/// are about which endpoints are chosen; locality has its own test).
fn backends_of(d: &Desired, key: ServiceKey) -> Vec<Backend> {
    d.frontends
        .get(&key)
        .unwrap_or_else(|| panic!("no frontend {key:?} in {:#?}", d.frontends))
        .backends
        .iter()
        .map(|b| Backend {
            state: b.state & !BACKEND_LOCAL,
            ..*b
        })
        .collect()
}

fn no_warnings(d: &Desired) {
    assert!(
        d.warnings.is_empty(),
        "unexpected warnings: {:?}",
        d.warnings
    );
}

// ---- internalTrafficPolicy: Local ---------------------------------------------

#[test]
fn internal_policy_local_keeps_only_endpoints_on_this_node() {
    let mut service = echo();
    service.internal_policy_local = true;
    let d = run(
        vec![service],
        vec![
            slice("echo-1", "echo")
                .ready_on(1, THIS_NODE)
                .ready_on(2, OTHER_NODE)
                // An endpoint without nodeName is never local.
                .with(endpoint(4, None)),
            slice("echo-2", "echo").ready_on(3, THIS_NODE),
        ],
    );
    no_warnings(&d);
    // Only the ClusterIP frontend, and no internal-scope entry for it.
    assert_eq!(keys(&d), set([ext(CLUSTER_IP, 80)]));
    assert_eq!(
        backends_of(&d, ext(CLUSTER_IP, 80)),
        vec![active(1), active(3)]
    );
}

#[test]
fn internal_policy_local_without_local_endpoint_has_no_backends() {
    let mut service = echo();
    service.internal_policy_local = true;
    let slices = vec![slice("echo-1", "echo")
        .ready_on(1, OTHER_NODE)
        .ready_on(2, OTHER_NODE)];
    let d = run(vec![service.clone()], slices.clone());
    // The frontend exists (so the datapath rejects) but has no backend.
    assert_eq!(keys(&d), set([ext(CLUSTER_IP, 80)]));
    assert_eq!(backends_of(&d, ext(CLUSTER_IP, 80)), vec![]);

    // Without a node name nothing is local either.
    let d = translate(
        &cluster(vec![service], slices, default_nodes()),
        &NodeFacts::default(),
    );
    assert_eq!(backends_of(&d, ext(CLUSTER_IP, 80)), vec![]);
}

#[test]
fn internal_policy_local_has_its_own_terminating_fallback() {
    let slices = vec![slice("echo-1", "echo")
        .terminating_on(1, THIS_NODE)
        .terminating_on(2, THIS_NODE)
        // Terminating and not serving: never used.
        .dead_on(3, THIS_NODE)
        // Ready, but on another node.
        .ready_on(4, OTHER_NODE)];
    let mut local = echo();
    local.internal_policy_local = true;
    let d = run(vec![local], slices.clone());
    assert_eq!(
        backends_of(&d, ext(CLUSTER_IP, 80)),
        vec![terminating(1), terminating(2)]
    );

    // With policy Cluster the ready remote endpoint wins over them.
    let d = run(vec![echo()], slices);
    assert_eq!(backends_of(&d, ext(CLUSTER_IP, 80)), vec![active(4)]);
}

#[test]
fn internal_policy_local_ready_local_endpoint_beats_local_terminating_ones() {
    let mut service = echo();
    service.internal_policy_local = true;
    let d = run(
        vec![service],
        vec![slice("echo-1", "echo")
            .terminating_on(1, THIS_NODE)
            .ready_on(2, THIS_NODE)
            .ready_on(3, OTHER_NODE)],
    );
    assert_eq!(backends_of(&d, ext(CLUSTER_IP, 80)), vec![active(2)]);
}

// ---- terminating fallback (cluster-wide) ---------------------------------------

#[test]
fn without_ready_endpoints_serving_terminating_ones_are_used() {
    let d = run(
        vec![echo()],
        vec![
            slice("echo-1", "echo")
                .terminating_on(1, THIS_NODE)
                .dead_on(2, OTHER_NODE)
                .terminating_on(3, OTHER_NODE),
            slice("echo-2", "echo").dead_on(4, THIS_NODE),
        ],
    );
    no_warnings(&d);
    assert_eq!(
        backends_of(&d, ext(CLUSTER_IP, 80)),
        vec![terminating(1), terminating(3)]
    );
}

#[test]
fn terminating_endpoints_are_not_used_while_one_is_ready() {
    let d = run(
        vec![echo()],
        vec![slice("echo-1", "echo")
            .terminating_on(1, THIS_NODE)
            .ready_on(2, OTHER_NODE)
            .terminating_on(3, OTHER_NODE)],
    );
    assert_eq!(backends_of(&d, ext(CLUSTER_IP, 80)), vec![active(2)]);
}

#[test]
fn not_serving_terminating_endpoints_are_never_used() {
    let d = run(
        vec![echo()],
        vec![slice("echo-1", "echo")
            .dead_on(1, THIS_NODE)
            .dead_on(2, OTHER_NODE)],
    );
    assert_eq!(keys(&d), set([ext(CLUSTER_IP, 80)]));
    assert_eq!(backends_of(&d, ext(CLUSTER_IP, 80)), vec![]);
}

// ---- topology -------------------------------------------------------------------

fn prefer_close() -> Service {
    let mut s = echo();
    s.traffic_distribution = Some("PreferClose".into());
    s
}

fn topology_auto() -> Service {
    let mut s = echo();
    s.annotations
        .insert(TOPOLOGY_MODE_ANNOTATION.into(), "Auto".into());
    s
}

/// Three endpoints: two hinted for this zone, one for the other.
fn hinted_slice() -> EndpointSlice {
    slice("echo-1", "echo")
        .hinted(1, Some(&[THIS_ZONE]))
        .hinted(2, Some(&[OTHER_ZONE]))
        .hinted(3, Some(&[OTHER_ZONE, THIS_ZONE]))
}

const ALL: [u8; 3] = [1, 2, 3];

fn actives(lasts: &[u8]) -> Vec<Backend> {
    lasts.iter().map(|l| active(*l)).collect()
}

#[test]
fn topology_keeps_endpoints_hinted_for_this_zone() {
    for service in [prefer_close(), topology_auto()] {
        let d = run(vec![service], vec![hinted_slice()]);
        no_warnings(&d);
        assert_eq!(backends_of(&d, ext(CLUSTER_IP, 80)), actives(&[1, 3]));
    }
}

#[test]
fn topology_uses_all_endpoints_when_one_lacks_hints() {
    for service in [prefer_close(), topology_auto()] {
        let d = run(vec![service.clone()], vec![hinted_slice().hinted(4, None)]);
        assert_eq!(backends_of(&d, ext(CLUSTER_IP, 80)), actives(&[1, 2, 3, 4]));
        // An empty forZones list counts as no hints.
        let d = run(vec![service], vec![hinted_slice().hinted(4, Some(&[]))]);
        assert_eq!(backends_of(&d, ext(CLUSTER_IP, 80)), actives(&[1, 2, 3, 4]));
    }
}

#[test]
fn topology_uses_all_endpoints_when_no_hint_names_this_zone() {
    for service in [prefer_close(), topology_auto()] {
        let d = run(
            vec![service],
            vec![slice("echo-1", "echo")
                .hinted(1, Some(&[OTHER_ZONE]))
                .hinted(2, Some(&["zone-c"]))],
        );
        assert_eq!(backends_of(&d, ext(CLUSTER_IP, 80)), actives(&[1, 2]));
    }
}

#[test]
fn topology_uses_all_endpoints_when_the_node_has_no_zone() {
    for service in [prefer_close(), topology_auto()] {
        // The Node object has no zone label.
        let state = cluster(
            vec![service.clone()],
            vec![hinted_slice()],
            vec![node(THIS_NODE, None, &[NODE_A_IP])],
        );
        let d = translate(&state, &facts());
        assert_eq!(backends_of(&d, ext(CLUSTER_IP, 80)), actives(&ALL));
        // No Node object at all.
        let state = cluster(vec![service], vec![hinted_slice()], vec![]);
        let d = translate(&state, &facts());
        assert_eq!(backends_of(&d, ext(CLUSTER_IP, 80)), actives(&ALL));
    }
}

#[test]
fn hints_are_ignored_without_prefer_close_or_auto() {
    let mut other_distribution = echo();
    other_distribution.traffic_distribution = Some("SomethingElse".into());
    let mut disabled = echo();
    disabled
        .annotations
        .insert(TOPOLOGY_MODE_ANNOTATION.into(), "Disabled".into());
    for service in [echo(), other_distribution, disabled] {
        let d = run(vec![service], vec![hinted_slice()]);
        assert_eq!(backends_of(&d, ext(CLUSTER_IP, 80)), actives(&ALL));
    }
}

#[test]
fn topology_applies_to_external_frontends_with_policy_cluster() {
    let mut service = prefer_close();
    service.external_ips = vec![EXTERNAL_IP.into()];
    let d = run(vec![service], vec![hinted_slice()]);
    assert_eq!(keys(&d), set([ext(CLUSTER_IP, 80), ext(EXTERNAL_IP, 80)]));
    assert_eq!(backends_of(&d, ext(EXTERNAL_IP, 80)), actives(&[1, 3]));
}

// ---- NodePort / LoadBalancer / externalIPs ---------------------------------------

/// Endpoint 1 on this node, 2 on the other.
fn two_node_slice() -> EndpointSlice {
    slice("echo-1", "echo")
        .ready_on(1, THIS_NODE)
        .ready_on(2, OTHER_NODE)
}

#[test]
fn node_port_frontends_on_this_nodes_addresses() {
    let d = run(vec![echo_node_port()], vec![two_node_slice()]);
    no_warnings(&d);
    // Not on node-b's address.
    assert_eq!(
        keys(&d),
        set([
            ext(CLUSTER_IP, 80),
            ext(NODE_A_IP, NODE_PORT),
            ext(NODE_A_IP2, NODE_PORT),
        ])
    );
    for key in keys(&d) {
        assert_eq!(backends_of(&d, key), actives(&[1, 2]), "{key:?}");
        let frontend = &d.frontends[&key];
        assert_eq!(frontend.service, ObjectRef::new("demo", "echo"));
        assert_eq!(frontend.port_name, "http");
    }
}

#[test]
fn nodeport_addresses_replace_the_node_addresses() {
    let only = Ipv4Addr::new(198, 18, 0, 100);
    let node_facts = NodeFacts {
        nodeport_addresses: vec![only.into()],
        ..facts()
    };
    let state = cluster(
        vec![echo_node_port()],
        vec![two_node_slice()],
        default_nodes(),
    );
    let d = translate(&state, &node_facts);
    assert_eq!(keys(&d), set([ext(CLUSTER_IP, 80), ext(only, NODE_PORT)]));
}

#[test]
fn node_port_without_a_node_object_or_uplink_address_has_only_the_cluster_ip() {
    let state = cluster(vec![echo_node_port()], vec![two_node_slice()], vec![]);
    let d = translate(&state, &facts());
    assert_eq!(keys(&d), set([ext(CLUSTER_IP, 80)]));
    // Nothing to serve the NodePort on: the agent warns about it.
    assert!(d.node_ports_on.addresses.is_empty());
    assert_eq!(d.node_ports, 1);
    assert!(
        d.node_ports_on.source.contains("no Node object"),
        "{}",
        d.node_ports_on.source
    );
}

#[test]
fn node_port_without_a_node_object_is_served_on_the_uplink_addresses() {
    let uplink = Ipv4Addr::new(198, 18, 100, 21);
    let node_facts = NodeFacts {
        local: weir::node_addrs::LocalAddresses {
            uplinks: vec![uplink.into()],
            all: vec![uplink.into(), Ipv4Addr::new(198, 19, 9, 1).into()],
        },
        ..facts()
    };
    let state = cluster(vec![echo_node_port()], vec![two_node_slice()], vec![]);
    let d = translate(&state, &node_facts);
    assert_eq!(keys(&d), set([ext(CLUSTER_IP, 80), ext(uplink, NODE_PORT)]));
    // With a Node object, its addresses win (nftables mode's "primary").
    let d = translate(
        &cluster(
            vec![echo_node_port()],
            vec![two_node_slice()],
            default_nodes(),
        ),
        &node_facts,
    );
    assert!(!keys(&d).contains(&ext(uplink, NODE_PORT)));
    // "all" serves every address of the node.
    let all = NodeFacts {
        nodeport_selection: vec![weir::node_addrs::NodePortAddress::All],
        ..node_facts
    };
    let d = translate(&state, &all);
    assert!(keys(&d).contains(&ext(Ipv4Addr::new(198, 19, 9, 1), NODE_PORT)));
}

#[test]
fn load_balancer_frontends_on_ingress_ips_with_the_service_port() {
    let d = run(vec![echo_load_balancer()], vec![two_node_slice()]);
    no_warnings(&d);
    assert_eq!(
        keys(&d),
        set([
            ext(CLUSTER_IP, 80),
            ext(NODE_A_IP, NODE_PORT),
            ext(NODE_A_IP2, NODE_PORT),
            ext(LB_IP, 80),
        ])
    );
    assert_eq!(backends_of(&d, ext(LB_IP, 80)), actives(&[1, 2]));
}

#[test]
fn external_ips_get_frontends_for_every_type() {
    let mut cluster_ip = echo();
    cluster_ip.external_ips = vec![EXTERNAL_IP.into()];
    let d = run(vec![cluster_ip], vec![two_node_slice()]);
    no_warnings(&d);
    assert_eq!(keys(&d), set([ext(CLUSTER_IP, 80), ext(EXTERNAL_IP, 80)]));
    assert_eq!(backends_of(&d, ext(EXTERNAL_IP, 80)), actives(&[1, 2]));

    let mut node_port = echo_node_port();
    node_port.external_ips = vec![EXTERNAL_IP.into()];
    let d = run(vec![node_port], vec![two_node_slice()]);
    assert_eq!(
        keys(&d),
        set([
            ext(CLUSTER_IP, 80),
            ext(NODE_A_IP, NODE_PORT),
            ext(NODE_A_IP2, NODE_PORT),
            ext(EXTERNAL_IP, 80),
        ])
    );

    let mut lb = echo_load_balancer();
    lb.external_ips = vec![EXTERNAL_IP.into()];
    let d = run(vec![lb], vec![two_node_slice()]);
    assert_eq!(
        keys(&d),
        set([
            ext(CLUSTER_IP, 80),
            ext(NODE_A_IP, NODE_PORT),
            ext(NODE_A_IP2, NODE_PORT),
            ext(LB_IP, 80),
            ext(EXTERNAL_IP, 80),
        ])
    );
}

#[test]
fn cluster_ip_service_with_a_node_port_gets_no_node_port_frontend() {
    let mut service = echo();
    service.ports[0].node_port = Some(NODE_PORT);
    let d = run(vec![service], vec![two_node_slice()]);
    no_warnings(&d);
    assert_eq!(keys(&d), set([ext(CLUSTER_IP, 80)]));
}

/// NodePort + LoadBalancer + externalIP, all on one service.
fn everything(external_local: bool, internal_local: bool) -> Service {
    let mut s = echo_load_balancer();
    s.external_ips = vec![EXTERNAL_IP.into()];
    s.external_policy_local = external_local;
    s.internal_policy_local = internal_local;
    s
}

const EXTERNALS: [(Ipv4Addr, u16); 4] = [
    (NODE_A_IP, NODE_PORT),
    (NODE_A_IP2, NODE_PORT),
    (LB_IP, 80),
    (EXTERNAL_IP, 80),
];

#[test]
fn external_policy_local_external_frontends_use_local_endpoints_pods_cluster_wide() {
    let d = run(vec![everything(true, false)], vec![two_node_slice()]);
    no_warnings(&d);
    let mut expected = set([ext(CLUSTER_IP, 80)]);
    for (ip, port) in EXTERNALS {
        expected.insert(ext(ip, port));
        expected.insert(int(ip, port));
    }
    assert_eq!(keys(&d), expected);
    // The ClusterIP follows internalTrafficPolicy (Cluster).
    assert_eq!(backends_of(&d, ext(CLUSTER_IP, 80)), actives(&[1, 2]));
    for (ip, port) in EXTERNALS {
        assert_eq!(backends_of(&d, ext(ip, port)), actives(&[1]), "{ip}:{port}");
        assert_eq!(
            backends_of(&d, int(ip, port)),
            actives(&[1, 2]),
            "{ip}:{port}"
        );
    }
}

#[test]
fn external_policy_local_without_local_endpoint_rejects_external_clients_only() {
    let d = run(
        vec![everything(true, false)],
        vec![slice("echo-1", "echo")
            .ready_on(2, OTHER_NODE)
            .ready_on(3, OTHER_NODE)],
    );
    for (ip, port) in EXTERNALS {
        assert_eq!(backends_of(&d, ext(ip, port)), vec![], "{ip}:{port}");
        assert_eq!(
            backends_of(&d, int(ip, port)),
            actives(&[2, 3]),
            "{ip}:{port}"
        );
    }
    assert_eq!(backends_of(&d, ext(CLUSTER_IP, 80)), actives(&[2, 3]));
}

#[test]
fn external_policy_local_has_its_own_terminating_fallback() {
    let d = run(
        vec![everything(true, false)],
        vec![slice("echo-1", "echo")
            .terminating_on(1, THIS_NODE)
            .ready_on(2, OTHER_NODE)],
    );
    for (ip, port) in EXTERNALS {
        assert_eq!(backends_of(&d, ext(ip, port)), vec![terminating(1)]);
        assert_eq!(backends_of(&d, int(ip, port)), actives(&[2]));
    }
}

#[test]
fn external_policy_cluster_has_no_internal_scope_entries() {
    for internal_local in [false, true] {
        let d = run(
            vec![everything(false, internal_local)],
            vec![two_node_slice()],
        );
        no_warnings(&d);
        let mut expected = set([ext(CLUSTER_IP, 80)]);
        for (ip, port) in EXTERNALS {
            expected.insert(ext(ip, port));
        }
        assert_eq!(keys(&d), expected);
        assert!(keys(&d).iter().all(|k| k.scope == SCOPE_EXTERNAL));
        for (ip, port) in EXTERNALS {
            assert_eq!(backends_of(&d, ext(ip, port)), actives(&[1, 2]));
        }
        let cluster_ip_backends = if internal_local {
            actives(&[1])
        } else {
            actives(&[1, 2])
        };
        assert_eq!(backends_of(&d, ext(CLUSTER_IP, 80)), cluster_ip_backends);
    }
}

/// kube-proxy short-circuits pod traffic to external destinations of an
/// externalTrafficPolicy: Local service to the cluster-wide endpoints, even
/// when internalTrafficPolicy is Local too (`UsesClusterEndpoints`: "Even if
/// the external traffic policy is Local, we need Cluster endpoints to
/// implement short circuiting").
#[test]
fn both_policies_local_internal_scope_entries_are_still_cluster_wide() {
    let d = run(vec![everything(true, true)], vec![two_node_slice()]);
    let mut expected = set([ext(CLUSTER_IP, 80)]);
    for (ip, port) in EXTERNALS {
        expected.insert(ext(ip, port));
        expected.insert(int(ip, port));
    }
    assert_eq!(keys(&d), expected);
    assert_eq!(backends_of(&d, ext(CLUSTER_IP, 80)), actives(&[1]));
    for (ip, port) in EXTERNALS {
        assert_eq!(backends_of(&d, ext(ip, port)), actives(&[1]), "{ip}:{port}");
        assert_eq!(
            backends_of(&d, int(ip, port)),
            actives(&[1, 2]),
            "{ip}:{port}"
        );
    }
}

// ---- type changes -----------------------------------------------------------------

#[test]
fn type_changes_give_exactly_the_frontends_of_the_current_type() {
    let with_external_ip = |mut s: Service| {
        s.external_ips = vec![EXTERNAL_IP.into()];
        s
    };
    let cluster_ip = with_external_ip(echo());
    let node_port = with_external_ip(echo_node_port());
    let load_balancer = with_external_ip(echo_load_balancer());
    // A type change to ExternalName may leave the old fields behind; the type decides.
    let mut external_name = load_balancer.clone();
    external_name.service_type = ServiceType::ExternalName;

    let base = set([ext(CLUSTER_IP, 80), ext(EXTERNAL_IP, 80)]);
    let mut with_node_ports = base.clone();
    with_node_ports.extend([ext(NODE_A_IP, NODE_PORT), ext(NODE_A_IP2, NODE_PORT)]);
    let mut with_lb = with_node_ports.clone();
    with_lb.insert(ext(LB_IP, 80));

    let steps = [
        (cluster_ip.clone(), base.clone()),
        (node_port, with_node_ports),
        (load_balancer, with_lb),
        (external_name, BTreeSet::new()),
        (cluster_ip, base),
    ];
    for (service, expected) in steps {
        let service_type = service.service_type;
        let d = run(vec![service], vec![two_node_slice()]);
        no_warnings(&d);
        assert_eq!(keys(&d), expected, "{service_type:?}");
    }
}

// ---- frontend conflicts -------------------------------------------------------------

/// Two services with the same external IP and port. The first by
/// namespace/name is "a-team/zeta" (namespace sorts before name).
fn claimants(first_local: bool, second_local: bool) -> (Service, Service, Vec<EndpointSlice>) {
    let mut first = svc("a-team", "zeta", CLUSTER_IP);
    first.external_ips = vec![EXTERNAL_IP.into()];
    first.external_policy_local = first_local;
    let mut second = svc("b-team", "alpha", OTHER_CLUSTER_IP);
    second.external_ips = vec![EXTERNAL_IP.into()];
    second.external_policy_local = second_local;
    let slices = vec![
        EndpointSlice {
            id: ObjectRef::new("a-team", "zeta-1"),
            ..slice("", "zeta")
        }
        .ready_on(1, THIS_NODE)
        .ready_on(2, OTHER_NODE),
        EndpointSlice {
            id: ObjectRef::new("b-team", "alpha-1"),
            ..slice("", "alpha")
        }
        .ready_on(3, THIS_NODE)
        .ready_on(4, OTHER_NODE),
    ];
    (first, second, slices)
}

fn assert_conflict_warnings(d: &Desired) {
    assert!(!d.warnings.is_empty(), "expected a conflict warning");
    for w in &d.warnings {
        assert!(w.contains("a-team/zeta"), "{w}");
        assert!(w.contains("b-team/alpha"), "{w}");
        assert!(w.contains(&EXTERNAL_IP.to_string()), "{w}");
    }
}

#[test]
fn first_service_keeps_a_contested_frontend() {
    let (first, second, slices) = claimants(false, false);
    // Given in the reverse order: the order of the input does not matter.
    let d = run(vec![second, first], slices);
    assert_eq!(d.warnings.len(), 1, "{:?}", d.warnings);
    assert_conflict_warnings(&d);
    assert_eq!(
        keys(&d),
        set([
            ext(CLUSTER_IP, 80),
            ext(OTHER_CLUSTER_IP, 80),
            ext(EXTERNAL_IP, 80)
        ])
    );
    let contested = &d.frontends[&ext(EXTERNAL_IP, 80)];
    assert_eq!(contested.service, ObjectRef::new("a-team", "zeta"));
    assert_eq!(backends_of(&d, ext(EXTERNAL_IP, 80)), actives(&[1, 2]));
    // The other service's other frontends are still programmed.
    let other = &d.frontends[&ext(OTHER_CLUSTER_IP, 80)];
    assert_eq!(other.service, ObjectRef::new("b-team", "alpha"));
    assert_eq!(backends_of(&d, ext(OTHER_CLUSTER_IP, 80)), actives(&[3, 4]));
}

#[test]
fn first_service_with_policy_local_keeps_both_scopes() {
    for second_local in [false, true] {
        let (first, second, slices) = claimants(true, second_local);
        let d = run(vec![first, second], slices);
        assert_conflict_warnings(&d);
        assert_eq!(
            keys(&d),
            set([
                ext(CLUSTER_IP, 80),
                ext(OTHER_CLUSTER_IP, 80),
                ext(EXTERNAL_IP, 80),
                int(EXTERNAL_IP, 80),
            ])
        );
        for key in [ext(EXTERNAL_IP, 80), int(EXTERNAL_IP, 80)] {
            assert_eq!(
                d.frontends[&key].service,
                ObjectRef::new("a-team", "zeta"),
                "{key:?}"
            );
        }
        assert_eq!(backends_of(&d, ext(EXTERNAL_IP, 80)), actives(&[1]));
        assert_eq!(backends_of(&d, int(EXTERNAL_IP, 80)), actives(&[1, 2]));
        assert_eq!(backends_of(&d, ext(OTHER_CLUSTER_IP, 80)), actives(&[3, 4]));
    }
}

/// The service that lost the SCOPE_EXTERNAL entry must not get a
/// SCOPE_INTERNAL one on the same frontend: pods would reach its backends
/// through the other service's address.
#[test]
fn losing_service_with_policy_local_gets_no_internal_entry_on_the_contested_frontend() {
    let (first, second, slices) = claimants(false, true);
    let d = run(vec![first, second], slices);
    assert_conflict_warnings(&d);
    assert_eq!(
        keys(&d),
        set([
            ext(CLUSTER_IP, 80),
            ext(OTHER_CLUSTER_IP, 80),
            ext(EXTERNAL_IP, 80)
        ])
    );
    assert_eq!(
        d.frontends[&ext(EXTERNAL_IP, 80)].service,
        ObjectRef::new("a-team", "zeta")
    );
}

// ---- session affinity ----------------------------------------------------------------

fn with_affinity(name: &str, last_octet: u8, timeout: Option<i64>) -> Service {
    let mut s = svc("demo", name, Ipv4Addr::new(198, 19, 0, last_octet));
    s.session_affinity_timeout = timeout;
    s
}

fn affinity_of(d: &Desired, last_octet: u8) -> u32 {
    d.frontends[&ext(Ipv4Addr::new(198, 19, 0, last_octet), 80)].affinity_timeout
}

#[test]
fn affinity_timeout_is_passed_through() {
    let d = run(
        vec![
            with_affinity("thirty", 30, Some(30)),
            with_affinity("none", 31, None),
            with_affinity("one", 32, Some(1)),
            with_affinity("day", 33, Some(86_400)),
        ],
        vec![],
    );
    no_warnings(&d);
    assert_eq!(affinity_of(&d, 30), 30);
    assert_eq!(affinity_of(&d, 31), 0);
    assert_eq!(affinity_of(&d, 32), 1);
    assert_eq!(affinity_of(&d, 33), 86_400);
}

#[test]
fn affinity_timeout_applies_to_every_frontend_of_the_service() {
    let mut service = everything(true, false);
    service.session_affinity_timeout = Some(30);
    let d = run(vec![service], vec![two_node_slice()]);
    assert_eq!(d.frontends.len(), 9);
    for (key, frontend) in &d.frontends {
        assert_eq!(frontend.affinity_timeout, 30, "{key:?}");
    }
}

#[test]
fn out_of_range_affinity_timeout_warns_and_uses_the_default() {
    let d = run(
        vec![
            with_affinity("zero", 40, Some(0)),
            with_affinity("negative", 41, Some(-5)),
            with_affinity("too-long", 42, Some(86_401)),
            with_affinity("fine", 43, Some(30)),
            with_affinity("plain", 44, None),
        ],
        vec![],
    );
    assert_eq!(d.warnings.len(), 3, "{:?}", d.warnings);
    for (name, value) in [("zero", "0"), ("negative", "-5"), ("too-long", "86401")] {
        let w = d
            .warnings
            .iter()
            .find(|w| w.contains(&format!("demo/{name}")))
            .unwrap_or_else(|| panic!("no warning for demo/{name}: {:?}", d.warnings));
        assert!(w.contains(value), "{w}");
        assert!(w.contains("10800"), "{w}");
    }
    assert_eq!(affinity_of(&d, 40), 10_800);
    assert_eq!(affinity_of(&d, 41), 10_800);
    assert_eq!(affinity_of(&d, 42), 10_800);
    // Other services are unaffected.
    assert_eq!(affinity_of(&d, 43), 30);
    assert_eq!(affinity_of(&d, 44), 0);
}

// ---- algorithm --------------------------------------------------------------------------

#[test]
fn maglev_annotation_selects_maglev_on_every_frontend() {
    let mut service = everything(true, false);
    service
        .annotations
        .insert(ALGORITHM_ANNOTATION.into(), "maglev".into());
    let d = run(
        vec![service, svc("demo", "plain", OTHER_CLUSTER_IP)],
        vec![],
    );
    no_warnings(&d);
    for (key, frontend) in &d.frontends {
        let expected = if frontend.service.name == "plain".into() {
            ALG_RANDOM
        } else {
            ALG_MAGLEV
        };
        assert_eq!(frontend.algorithm, expected, "{key:?}");
    }

    // Maglev as the node default.
    let node_facts = NodeFacts {
        default_algorithm: ALG_MAGLEV,
        ..facts()
    };
    let d = translate(&cluster(vec![echo()], vec![], default_nodes()), &node_facts);
    assert_eq!(d.frontends[&ext(CLUSTER_IP, 80)].algorithm, ALG_MAGLEV);
}

// ---- YAML validation of the policy fields --------------------------------------------------

const FILE: &str = "cluster/policy.yaml";

fn service_yaml(spec_extra: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Service
metadata:
  name: echo
  namespace: demo
spec:
  type: LoadBalancer
  clusterIP: 198.19.0.10
  ports:
  - name: http
    port: 80
    nodePort: 30080
{spec_extra}"#
    )
}

fn one_error(text: &str) -> DocumentError {
    let (objects, mut errors) = parse_documents(FILE, text);
    assert!(objects.is_empty(), "{objects:#?}");
    assert_eq!(errors.len(), 1, "expected exactly one error: {errors:#?}");
    errors.remove(0)
}

fn only_service(text: &str) -> Service {
    let (objects, errors) = parse_documents(FILE, text);
    assert!(errors.is_empty(), "unexpected errors: {errors:#?}");
    match objects.as_slice() {
        [Object::Service(s)] => s.clone(),
        other => panic!("expected one Service, got {other:#?}"),
    }
}

#[test]
fn unknown_policy_values_are_errors_naming_the_field() {
    for (extra, field, value) in [
        (
            "  externalTrafficPolicy: Sometimes\n",
            "spec.externalTrafficPolicy",
            "Sometimes",
        ),
        (
            "  internalTrafficPolicy: Nearby\n",
            "spec.internalTrafficPolicy",
            "Nearby",
        ),
        (
            "  sessionAffinity: Sticky\n",
            "spec.sessionAffinity",
            "Sticky",
        ),
        ("  externalIPs: [\"nope\"]\n", "spec.externalIPs[0]", "nope"),
        (
            "  externalIPs: [198.18.200.1, nope]\n",
            "spec.externalIPs[1]",
            "nope",
        ),
    ] {
        let error = one_error(&service_yaml(extra));
        assert_eq!(error.field.as_deref(), Some(field), "{error}");
        assert_eq!(
            error.object.as_deref(),
            Some("Service demo/echo"),
            "{error}"
        );
        assert_eq!(error.file, FILE);
        assert_eq!(error.document, 0);
        assert!(error.reason.contains(value), "{error}");
    }
}

#[test]
fn valid_policy_fields_are_converted() {
    let service = only_service(&service_yaml(
        r#"  externalTrafficPolicy: Local
  internalTrafficPolicy: Local
  trafficDistribution: PreferClose
  sessionAffinity: ClientIP
  externalIPs: [198.18.200.1]
status:
  loadBalancer:
    ingress:
    - ip: 198.18.201.1
    - hostname: lb.example.com
"#,
    ));
    assert_eq!(service.service_type, ServiceType::LoadBalancer);
    assert!(service.external_policy_local);
    assert!(service.internal_policy_local);
    assert_eq!(service.traffic_distribution.as_deref(), Some("PreferClose"));
    // ClientIP without sessionAffinityConfig: the API default.
    assert_eq!(service.session_affinity_timeout, Some(10_800));
    assert_eq!(service.external_ips, vec![EXTERNAL_IP]);
    assert_eq!(service.load_balancer_ips, vec![LB_IP]);
    assert_eq!(service.ports[0].node_port, Some(NODE_PORT));
}

#[test]
fn load_balancer_ingress_becomes_load_balancer_ips() {
    let service = only_service(&service_yaml(
        "status:\n  loadBalancer:\n    ingress: [{ip: 198.18.200.1}]\n",
    ));
    assert_eq!(service.load_balancer_ips, vec![EXTERNAL_IP]);
}

#[test]
fn policy_defaults_and_explicit_affinity_timeout() {
    let service = only_service(&service_yaml(""));
    assert!(!service.external_policy_local);
    assert!(!service.internal_policy_local);
    assert_eq!(service.session_affinity_timeout, None);
    assert!(service.external_ips.is_empty());
    assert!(service.load_balancer_ips.is_empty());

    let service = only_service(&service_yaml(
        "  sessionAffinity: ClientIP\n  sessionAffinityConfig:\n    clientIP:\n      timeoutSeconds: 60\n",
    ));
    assert_eq!(service.session_affinity_timeout, Some(60));
}

#[test]
fn node_addresses_are_internal_and_external_ips_only() {
    let text = r#"apiVersion: v1
kind: Node
metadata:
  name: node-a
  labels:
    topology.kubernetes.io/zone: zone-a
status:
  addresses:
  - type: InternalIP
    address: 198.18.0.5
  - type: Hostname
    address: node-a
"#;
    let (objects, errors) = parse_documents(FILE, text);
    assert!(errors.is_empty(), "{errors:#?}");
    match objects.as_slice() {
        [Object::Node(n)] => {
            assert_eq!(n.name, "node-a");
            assert_eq!(n.addresses, vec![NODE_A_IP]);
            assert_eq!(n.labels.get(ZONE_LABEL).map(String::as_str), Some("zone-a"));
        }
        other => panic!("expected one Node, got {other:#?}"),
    }
}

/// YAML in, frontends out: a NodePort service with externalTrafficPolicy
/// Local on the node the YAML describes.
#[test]
fn parsed_objects_translate_to_the_expected_frontends() {
    let text = format!(
        r#"{}---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: echo-1
  namespace: demo
  labels:
    kubernetes.io/service-name: echo
addressType: IPv4
ports:
- name: http
  port: 8080
  protocol: TCP
endpoints:
- addresses: [198.18.1.1]
  nodeName: node-a
- addresses: [198.18.1.2]
  nodeName: node-b
---
apiVersion: v1
kind: Node
metadata:
  name: node-a
status:
  addresses:
  - type: InternalIP
    address: 198.18.0.5
  - type: Hostname
    address: node-a
"#,
        service_yaml("  externalTrafficPolicy: Local\n")
    );
    let (objects, errors) = parse_documents(FILE, &text);
    assert!(errors.is_empty(), "{errors:#?}");
    let mut state = ClusterState::default();
    for object in objects {
        match object {
            Object::Service(s) => {
                state.services.insert(s.id.clone(), std::sync::Arc::new(s));
            }
            Object::EndpointSlice(s) => {
                state.slices.insert(s.id.clone(), std::sync::Arc::new(s));
            }
            Object::Node(n) => {
                state.nodes.insert(n.name.clone(), n);
            }
            _ => {}
        }
    }
    let d = translate(&state, &facts());
    no_warnings(&d);
    // No ingress IPs in the status: only the ClusterIP and the NodePort.
    assert_eq!(
        keys(&d),
        set([
            ext(CLUSTER_IP, 80),
            ext(NODE_A_IP, NODE_PORT),
            int(NODE_A_IP, NODE_PORT),
        ])
    );
    assert_eq!(backends_of(&d, ext(CLUSTER_IP, 80)), actives(&[1, 2]));
    assert_eq!(backends_of(&d, ext(NODE_A_IP, NODE_PORT)), actives(&[1]));
    assert_eq!(backends_of(&d, int(NODE_A_IP, NODE_PORT)), actives(&[1, 2]));
}

// ---- north-south: locality, flags, source ranges, NodePort range ------------

#[test]
fn endpoints_on_this_node_are_marked_local() {
    let d = run(vec![echo_node_port()], vec![two_node_slice()]);
    let b = &d.frontends[&ext(NODE_A_IP, NODE_PORT)].backends;
    assert_eq!(
        b.iter().map(|b| (b.addr, b.state)).collect::<Vec<_>>(),
        vec![
            (ep_ip(1).into(), BACKEND_LOCAL),
            (ep_ip(2).into(), BACKEND_ACTIVE)
        ]
    );
    let d = run(
        vec![echo()],
        vec![slice("echo-1", "echo").terminating_on(1, THIS_NODE)],
    );
    assert_eq!(
        d.frontends[&ext(CLUSTER_IP, 80)].backends[0].state,
        BACKEND_LOCAL | BACKEND_TERMINATING
    );
}

#[test]
fn external_frontends_are_flagged_for_xdp_and_cluster_ips_are_not() {
    let d = run(vec![everything(false, false)], vec![two_node_slice()]);
    assert_eq!(d.frontends[&ext(CLUSTER_IP, 80)].flags, 0);
    for (ip, port) in EXTERNALS {
        assert_eq!(
            d.frontends[&ext(ip, port)].flags,
            SVC_FLAG_EXTERNAL,
            "{ip}:{port}"
        );
    }
}

#[test]
fn external_policy_local_drops_on_a_node_without_local_endpoints_but_rejects_with_none_at_all() {
    let elsewhere = slice("echo-1", "echo").ready_on(2, OTHER_NODE);
    let d = run(vec![everything(true, false)], vec![elsewhere]);
    for (ip, port) in EXTERNALS {
        assert_eq!(
            d.frontends[&ext(ip, port)].flags,
            SVC_FLAG_EXTERNAL | SVC_FLAG_DROP_IF_EMPTY,
            "{ip}:{port}"
        );
        // Pods still reach the endpoints elsewhere and are never dropped.
        assert_eq!(
            d.frontends[&int(ip, port)].flags & SVC_FLAG_DROP_IF_EMPTY,
            0
        );
    }
    let d = run(vec![everything(true, false)], vec![]);
    for (ip, port) in EXTERNALS {
        assert_eq!(
            d.frontends[&ext(ip, port)].flags,
            SVC_FLAG_EXTERNAL,
            "{ip}:{port}"
        );
    }
}

#[test]
fn source_ranges_guard_only_the_load_balancer_ips_in_both_views() {
    let mut s = everything(true, false);
    s.source_ranges = vec![(Ipv4Addr::new(198, 18, 100, 0).into(), 24)];
    let d = run(vec![s], vec![two_node_slice()]);
    no_warnings(&d);
    for key in [ext(LB_IP, 80), int(LB_IP, 80)] {
        let f = &d.frontends[&key];
        assert_ne!(f.flags & SVC_FLAG_SOURCE_RANGES, 0, "{key:?}");
        assert_eq!(
            f.source_ranges,
            vec![(Ipv4Addr::new(198, 18, 100, 0).into(), 24)]
        );
    }
    for key in [
        ext(NODE_A_IP, NODE_PORT),
        ext(EXTERNAL_IP, 80),
        ext(CLUSTER_IP, 80),
    ] {
        let f = &d.frontends[&key];
        assert_eq!(f.flags & SVC_FLAG_SOURCE_RANGES, 0, "{key:?}");
        assert!(f.source_ranges.is_empty());
    }
}

#[test]
fn a_node_port_outside_the_range_is_reported_and_the_rest_served() {
    let mut s = echo_load_balancer();
    s.ports[0].node_port = Some(29999);
    let d = run(vec![s], vec![two_node_slice()]);
    assert_eq!(d.warnings.len(), 1, "{:?}", d.warnings);
    assert!(
        d.warnings[0].contains("demo/echo") && d.warnings[0].contains("nodePort 29999"),
        "{}",
        d.warnings[0]
    );
    assert_eq!(keys(&d), set([ext(CLUSTER_IP, 80), ext(LB_IP, 80)]));
}
