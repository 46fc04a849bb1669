//! North-south end to end: two nodes with their own pods, an external client
//! on the lan (a bridge with bare ports, as in kind), an agent per node with
//! generic XDP on its uplink. NodePort, LoadBalancer
//! and external IPs from outside, traffic policies, source ranges, reject.
use std::{
    net::{Ipv4Addr, SocketAddrV4},
    time::{Duration, Instant},
};

use anyhow::Result;
use weir_tests::{
    cluster::node_ip,
    echo::{all_ok, assert_refused_within, error_kind, requests, Proto},
    http::get,
    manifests::{port, service_with, slice_eps, Port},
    scenario::{backends_of, names, CLUSTER_IP},
    Cluster, EchoReply,
};

const NS: &str = "e2e";
const LB_IP: Ipv4Addr = Ipv4Addr::new(198, 19, 200, 1);
const EXTERNAL_IP: Ipv4Addr = Ipv4Addr::new(198, 19, 200, 2);
const HEALTH_PORT: u16 = 32000;
/// The nodes' uplinks hang on bare bridge ports (as in kind), where native
/// XDP would lose what it sends: these tests run the XDP program in generic
/// mode; tests/bridged.rs runs every mode.
const XDP: &[&str] = &["--xdp-mode=generic"];

/// Two nodes; be1 on node-1 and be2 on node-2, serving TCP 8080 and UDP 5353.
fn two_nodes() -> Result<Cluster> {
    let mut c = Cluster::new(2)?;
    c.add_pod(1, "be1")?;
    c.add_pod(2, "be2")?;
    for be in ["be1", "be2"] {
        c.serve(be, &[(Proto::Tcp, 8080), (Proto::Udp, 5353)])?;
    }
    Ok(c)
}

fn ports() -> [Port<'static>; 2] {
    [
        port("http", 80, "TCP", 8080).node_port(30080),
        port("dns", 53, "UDP", 5353).node_port(30053),
    ]
}

/// Service `svc` with `spec` lines, `tail` appended (e.g. a status), and its
/// endpoints on `pods`.
fn write(c: &Cluster, spec: &str, tail: &str, pods: &[&str]) -> Result<()> {
    let ports = ports();
    let svc = service_with(NS, "svc", CLUSTER_IP, &ports, spec, &[]) + tail;
    c.manifests.write("svc.yaml", &svc)?;
    c.manifests.write(
        "slice.yaml",
        &slice_eps(NS, "svc-1", "svc", &ports, &c.ready_eps(pods)),
    )
}

fn lb_status(ip: Ipv4Addr) -> String {
    format!("status:\n  loadBalancer:\n    ingress: [{{ip: {ip}}}]\n")
}

/// `count` requests from the external client that must all succeed.
fn from_outside(
    c: &Cluster,
    proto: Proto,
    addr: Ipv4Addr,
    port: u16,
    count: usize,
) -> Result<Vec<EchoReply>> {
    let what = format!("{addr}:{port}/{proto:?} from outside");
    all_ok(c.ext_requests(proto, addr, port, count)?, &what)
}

/// The node each backend pod runs on.
fn node_of(backend: &str) -> u8 {
    if backend == "be1" {
        1
    } else {
        2
    }
}

#[test]
fn node_ports_from_outside_reach_local_backends_directly_and_remote_ones_through_snat() -> Result<()>
{
    let mut c = two_nodes()?;
    write(&c, "  type: NodePort\n", "", &["be1", "be2"])?;
    c.start_agents(XDP)?;
    for node in [1, 2] {
        c.agent(node)
            .wait_frontend(&format!("{}:30080/TCP", node_ip(node)), 2)?;
        c.agent(node)
            .wait_frontend(&format!("{}:30053/UDP", node_ip(node)), 2)?;
    }
    for node in [1, 2] {
        for (proto, np, target) in [(Proto::Tcp, 30080, 8080), (Proto::Udp, 30053, 5353)] {
            let replies = from_outside(&c, proto, node_ip(node), np, 24)?;
            assert_eq!(
                backends_of(&replies),
                names(&["be1", "be2"]),
                "node-{node} {proto:?}"
            );
            for r in &replies {
                // A local backend sees the client; a remote one the node that SNATed.
                let expected = if node_of(&r.backend) == node {
                    c.ext_ip()
                } else {
                    node_ip(node)
                };
                assert_eq!((r.port, r.peer), (target, expected), "node-{node} {r:?}");
            }
        }
    }
    // Both agents report generic XDP on their uplink.
    for node in [1, 2] {
        let status = weir_status(&mut c, node)?;
        assert_eq!(
            status["xdp"],
            serde_json::json!([{"device": "eth0", "mode": "generic"}]),
            "{status}"
        );
    }
    Ok(())
}

fn weir_status(c: &mut Cluster, node: u8) -> Result<serde_json::Value> {
    let bpffs = c.agent(node).bpffs.to_string_lossy().into_owned();
    let out = weir_tests::cmd::run(
        &weir_tests::agent::weir_bin()?.to_string_lossy(),
        &["status", "-o", "json", "--bpffs", &bpffs],
    )?;
    Ok(serde_json::from_str(&out)?)
}

#[test]
fn load_balancer_and_external_ips_serve_outside_clients_over_tcp_and_udp() -> Result<()> {
    let mut c = two_nodes()?;
    let spec = format!("  type: LoadBalancer\n  externalIPs: [{EXTERNAL_IP}]\n");
    write(&c, &spec, &lb_status(LB_IP), &["be1", "be2"])?;
    c.start_agents(XDP)?;
    c.agent(1).wait_frontend(&format!("{LB_IP}:80/TCP"), 2)?;
    c.agent(1)
        .wait_frontend(&format!("{EXTERNAL_IP}:53/UDP"), 2)?;
    for ip in [LB_IP, EXTERNAL_IP] {
        for (proto, p) in [(Proto::Tcp, 80), (Proto::Udp, 53)] {
            let replies = from_outside(&c, proto, ip, p, 24)?;
            assert_eq!(
                backends_of(&replies),
                names(&["be1", "be2"]),
                "{ip} {proto:?}"
            );
        }
    }
    Ok(())
}

#[test]
fn external_traffic_policy_local_keeps_the_client_address_and_reports_health() -> Result<()> {
    let mut c = two_nodes()?;
    let spec = format!(
        "  type: LoadBalancer\n  externalTrafficPolicy: Local\n  healthCheckNodePort: {HEALTH_PORT}\n"
    );
    write(&c, &spec, &lb_status(LB_IP), &["be1", "be2"])?;
    c.start_agents(XDP)?;
    for node in [1, 2] {
        c.agent(node)
            .wait_frontend(&format!("{}:30080/TCP", node_ip(node)), 1)?;
    }
    // Each node serves its own endpoint only, and the pod sees the client.
    for node in [1, 2] {
        let be = format!("be{node}");
        for (proto, np) in [(Proto::Tcp, 30080), (Proto::Udp, 30053)] {
            for r in from_outside(&c, proto, node_ip(node), np, 10)? {
                assert_eq!(
                    (r.backend.as_str(), r.peer),
                    (be.as_str(), c.ext_ip()),
                    "{r:?}"
                );
            }
        }
        c.ext_route(LB_IP, 32, node)?;
        for r in from_outside(&c, Proto::Tcp, LB_IP, 80, 10)? {
            assert_eq!(
                (r.backend.as_str(), r.peer),
                (be.as_str(), c.ext_ip()),
                "{r:?}"
            );
        }
        let health = get(
            c.ext_ns(),
            SocketAddrV4::new(node_ip(node), HEALTH_PORT),
            "/",
        )?;
        assert_eq!(health.status, 200, "node-{node}: {health:?}");
        assert_eq!(
            health.json()?["localEndpoints"],
            1,
            "node-{node}: {health:?}"
        );
    }

    // be1 goes away: node-1 has no local endpoint left. Its health check
    // fails and it drops external traffic (no reset: the load balancer must
    // see a dead node, not a refusing one), while node-2 still serves.
    write(&c, &spec, &lb_status(LB_IP), &["be2"])?;
    let node1_health = SocketAddrV4::new(node_ip(1), HEALTH_PORT);
    let deadline = Instant::now() + Duration::from_secs(10);
    let failing = loop {
        let r = get(c.ext_ns(), node1_health, "/")?;
        if r.status == 503 || Instant::now() > deadline {
            break r;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(failing.status, 503, "{failing:?}");
    assert_eq!(failing.json()?["localEndpoints"], 0);
    let dropped = requests(
        c.ext_ns(),
        Proto::Tcp,
        SocketAddrV4::new(node_ip(1), 30080),
        1,
        Duration::from_secs(1),
    )?;
    let err = dropped[0].as_ref().expect_err("node-1 must not answer");
    assert_eq!(
        error_kind(err),
        Some(std::io::ErrorKind::TimedOut),
        "dropped, not refused: {err:#}"
    );
    from_outside(&c, Proto::Tcp, node_ip(2), 30080, 5)?;
    Ok(())
}

#[test]
fn source_ranges_admit_listed_clients_and_drops_show_in_monitor() -> Result<()> {
    let mut c = two_nodes()?;
    let guarded =
        |range: &str| format!("  type: LoadBalancer\n  loadBalancerSourceRanges: [{range}]\n");
    write(
        &c,
        &guarded("198.18.50.0/24"),
        &lb_status(LB_IP),
        &["be1", "be2"],
    )?;
    c.start_agents(XDP)?;
    c.agent(1).wait_frontend(&format!("{LB_IP}:80/TCP"), 2)?;

    let monitor = c.agent(1).monitor(Some(1), 10, &[])?;
    let refused = requests(
        c.ext_ns(),
        Proto::Tcp,
        SocketAddrV4::new(LB_IP, 80),
        1,
        Duration::from_secs(1),
    )?;
    assert!(refused[0].is_err(), "{:?}", refused[0]);
    let event = monitor.events()?.into_iter().next().unwrap_or_default();
    assert_eq!(event["event"], "drop", "{event}");
    assert_eq!(event["reason"], "source_range", "{event}");

    // The client's range is added: it gets in.
    write(
        &c,
        &guarded("198.18.100.0/24"),
        &lb_status(LB_IP),
        &["be1", "be2"],
    )?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = c.ext_requests(Proto::Tcp, LB_IP, 80, 1)?;
        if r[0].is_ok() {
            break;
        }
        assert!(Instant::now() < deadline, "still refused: {:?}", r[0]);
        std::thread::sleep(Duration::from_millis(100));
    }
    from_outside(&c, Proto::Tcp, LB_IP, 80, 10)?;
    Ok(())
}

#[test]
fn a_service_without_endpoints_rejects_outside_clients_at_once() -> Result<()> {
    let mut c = two_nodes()?;
    write(&c, "  type: NodePort\n", "", &[])?;
    c.start_agents(XDP)?;
    c.agent(1)
        .wait_frontend(&format!("{}:30080/TCP", node_ip(1)), 0)?;
    c.agent(1)
        .wait_frontend(&format!("{}:30053/UDP", node_ip(1)), 0)?;
    for (proto, np) in [(Proto::Tcp, 30080), (Proto::Udp, 30053)] {
        // A reset or port unreachable, not a timeout (the bound).
        let addr = SocketAddrV4::new(node_ip(1), np);
        assert_refused_within(c.ext_ns(), proto, addr, Duration::from_secs(1))?;
    }
    Ok(())
}
