//! Multi-node end-to-end tests: two node namespaces and an external client
//! on one lan, an agent per node on shared manifests. Today's datapath DNATs
//! pod-originated traffic on the pod's device and reverse-NATs replies that
//! come back through the uplink, so a client pod reaches backends on other
//! nodes with its own address preserved.
use std::net::Ipv4Addr;

use anyhow::Result;
use weir_tests::{
    cmd::ip,
    echo::{all_ok, Proto},
    manifests::{port, service_with, slice_eps, Port},
    scenario::{backends_of, names, CLUSTER_IP},
    Cluster, EchoReply, EchoServer,
};

const NS: &str = "e2e";

/// Two nodes; pods: client and be1 on node-1, be2 on node-2, both backends
/// serving TCP 8080 and UDP 5353.
fn two_nodes() -> Result<Cluster> {
    let mut c = Cluster::new(2)?;
    c.add_pod(1, "client")?;
    c.add_pod(1, "be1")?;
    c.add_pod(2, "be2")?;
    for be in ["be1", "be2"] {
        c.serve(be, &[(Proto::Tcp, 8080), (Proto::Udp, 5353)])?;
    }
    Ok(c)
}

/// Writes service `svc` with `ports` and `spec` lines, and a slice of be1 and be2.
fn write_service(c: &Cluster, ports: &[Port], spec: &str) -> Result<()> {
    c.manifests.write(
        "svc.yaml",
        &service_with(NS, "svc", CLUSTER_IP, ports, spec, &[]),
    )?;
    c.manifests.write(
        "slice.yaml",
        &slice_eps(NS, "svc-1", "svc", ports, &c.ready_eps(&["be1", "be2"])),
    )
}

/// `count` requests from the client pod that must all succeed.
fn from_client(
    c: &Cluster,
    proto: Proto,
    addr: Ipv4Addr,
    port: u16,
    count: usize,
) -> Result<Vec<EchoReply>> {
    let what = format!("{addr}:{port}/{proto:?}");
    all_ok(c.requests("client", proto, addr, port, count)?, &what)
}

/// Both backends answered, on `target`, and saw the client pod's own address.
fn assert_both_backends_saw_the_client(c: &Cluster, replies: &[EchoReply], target: u16) {
    assert_eq!(backends_of(replies), names(&["be1", "be2"]), "{replies:?}");
    let client = c.pod("client").ip;
    for r in replies {
        assert_eq!(r.port, target, "reply {r:?} from the wrong target port");
        assert_eq!(
            r.peer, client,
            "{} saw {} instead of the client",
            r.backend, r.peer
        );
    }
}

/// Every reply came from `backend` and saw `peer`.
fn assert_all_from(replies: &[EchoReply], backend: &str, peer: Ipv4Addr) {
    assert!(!replies.is_empty());
    for r in replies {
        assert_eq!((r.backend.as_str(), r.peer), (backend, peer), "{r:?}");
    }
}

/// The topology alone, without agents: pods reach pods on other nodes, the
/// external client reaches node addresses on the lan, and its routes to the
/// external range lead to the chosen node.
#[test]
fn topology_routes_pods_across_nodes_and_ext_via_the_chosen_node() -> Result<()> {
    let c = two_nodes()?;
    let (client, be2) = (c.pod("client").ip, c.pod("be2").ip);
    assert_eq!(
        (client, be2),
        (Ipv4Addr::new(198, 18, 11, 2), Ipv4Addr::new(198, 18, 12, 2))
    );
    assert_all_from(&from_client(&c, Proto::Tcp, be2, 8080, 3)?, "be2", client);
    assert_all_from(&from_client(&c, Proto::Udp, be2, 5353, 3)?, "be2", client);

    // An address of the external range on each node's loopback, and a
    // server on each node: which node answers shows where ext's route leads.
    let mut servers = Vec::new();
    for (i, vip) in [(1, "198.19.200.1/32"), (2, "198.19.200.2/32")] {
        let ns = &c.node(i).netns.name;
        ip(&["-n", ns, "addr", "add", vip, "dev", "lo"])?;
        servers.push(EchoServer::start(
            ns,
            &format!("node-{i}"),
            &[(Proto::Tcp, 9000)],
        )?);
    }
    let ask = |addr: Ipv4Addr| {
        all_ok(
            c.ext_requests(Proto::Tcp, addr, 9000, 2)?,
            &format!("{addr}:9000"),
        )
    };
    assert_all_from(&ask(c.node_ip(2))?, "node-2", c.ext_ip());
    // The external range goes via node-1, where only 198.19.200.1 is local.
    assert_all_from(&ask(Ipv4Addr::new(198, 19, 200, 1))?, "node-1", c.ext_ip());
    c.ext_route(Ipv4Addr::new(198, 19, 200, 2), 32, 2)?;
    assert_all_from(&ask(Ipv4Addr::new(198, 19, 200, 2))?, "node-2", c.ext_ip());
    c.ext_route_del(Ipv4Addr::new(198, 19, 200, 2), 32)?;
    c.external_via(2)?;
    assert_all_from(&ask(Ipv4Addr::new(198, 19, 200, 2))?, "node-2", c.ext_ip());
    Ok(())
}

#[test]
fn cluster_ip_reaches_backends_on_both_nodes_without_snat() -> Result<()> {
    let mut c = two_nodes()?;
    let ports = [port("http", 80, "TCP", 8080), port("dns", 53, "UDP", 5353)];
    write_service(&c, &ports, "")?;
    c.start_agents(&[])?;
    c.wait_frontend("198.19.0.10:80/TCP", 2)?;
    c.wait_frontend("198.19.0.10:53/UDP", 2)?;

    let tcp = from_client(&c, Proto::Tcp, CLUSTER_IP, 80, 30)?;
    assert_both_backends_saw_the_client(&c, &tcp, 8080);
    let udp = from_client(&c, Proto::Udp, CLUSTER_IP, 53, 30)?;
    assert_both_backends_saw_the_client(&c, &udp, 5353);
    Ok(())
}

/// Each agent runs as its own node (--hostname-override) and serves
/// NodePorts on that node's address only, taken from its Node object.
#[test]
fn each_agent_serves_node_ports_on_its_own_node_address() -> Result<()> {
    let mut c = two_nodes()?;
    let ports = [port("http", 80, "TCP", 8080).node_port(30080)];
    write_service(&c, &ports, "  type: NodePort\n")?;
    c.start_agents(&[])?;
    for (node, own, other) in [
        (1, "198.18.100.11", "198.18.100.12"),
        (2, "198.18.100.12", "198.18.100.11"),
    ] {
        let row = c
            .agent(node)
            .wait_frontend(&format!("{own}:30080/TCP"), 2)?;
        let mut addrs: Vec<&str> = row.backends.iter().map(|b| b.address.as_str()).collect();
        addrs.sort();
        assert_eq!(
            addrs,
            ["198.18.11.3", "198.18.12.2"],
            "node-{node}: {row:?}"
        );
        let rows = c
            .agent(node)
            .programmed()
            .map(|p| weir::cli::service_rows(&p))?;
        assert!(
            rows.iter().all(|r| !r.frontend.starts_with(other)),
            "node-{node} serves node {other}'s NodePort: {rows:?}"
        );
    }
    Ok(())
}

/// The reply's source becomes the node's own address:nodePort at tc ingress
/// (on node-1's eth0 for be2, on lxcbe1 for be1). Through the stack's input
/// path it would be dropped as a martian (fib_validate_source), so tc sends
/// reverse-NATed replies straight to the client's device.
#[test]
fn node_port_on_the_client_node_address_reaches_backends_on_both_nodes() -> Result<()> {
    let mut c = two_nodes()?;
    let ports = [port("http", 80, "TCP", 8080).node_port(30080)];
    write_service(&c, &ports, "  type: NodePort\n")?;
    c.start_agents(&[])?;
    c.agent(1).wait_frontend("198.18.100.11:30080/TCP", 2)?;
    let replies = from_client(&c, Proto::Tcp, c.node_ip(1), 30080, 20)?;
    assert_both_backends_saw_the_client(&c, &replies, 8080);
    Ok(())
}
