//! End-to-end ClusterIP tests in network namespaces: the real agent, the real
//! tc program on host-side veths, real TCP/UDP clients and servers. They
//! mirror the Kubernetes e2e Services cases (test/e2e/network/service.go).
use std::net::Ipv4Addr;

use anyhow::Result;
use weir_tests::{
    echo::Proto,
    manifests::{port, service, slice},
    scenario::{backends_of, names, Scenario, CLUSTER_IP},
};

const NS: &str = "e2e";
const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 2);

fn ready(ips: &[Ipv4Addr]) -> Vec<(Ipv4Addr, bool)> {
    ips.iter().map(|ip| (*ip, true)).collect()
}

/// Every reply came from `port` and saw the client's own address.
fn assert_served(replies: &[weir_tests::EchoReply], port: u16) {
    for r in replies {
        assert_eq!(r.port, port, "reply {r:?} from the wrong target port");
        assert_eq!(
            r.peer, CLIENT_IP,
            "backend {} saw {} instead of the client address",
            r.backend, r.peer
        );
    }
}

#[test]
fn serves_a_basic_endpoint_over_tcp_and_udp_from_merged_slices() -> Result<()> {
    let mut s = Scenario::start(3, &[(Proto::Tcp, 8080), (Proto::Udp, 5353)])?;
    let ports = [port("http", 80, "TCP", 8080), port("dns", 53, "UDP", 5353)];
    let (b1, b2, b3) = (
        s.backend_ip("be1"),
        s.backend_ip("be2"),
        s.backend_ip("be3"),
    );
    s.manifests
        .write("svc.yaml", &service(NS, "echo", CLUSTER_IP, &ports))?;
    // Two slices that overlap in be2: merged and deduplicated.
    s.manifests.write(
        "slice-a.yaml",
        &slice(NS, "echo-a", "echo", &ports, &ready(&[b1, b2])),
    )?;
    s.manifests.write(
        "slice-b.yaml",
        &slice(NS, "echo-b", "echo", &ports, &ready(&[b2, b3])),
    )?;
    let row = s.agent.wait_frontend("198.19.0.10:80/TCP", 3)?;
    assert_eq!(
        row.backends
            .iter()
            .map(|b| b.address.as_str())
            .collect::<Vec<_>>(),
        ["198.18.1.11", "198.18.1.12", "198.18.1.13"]
    );
    s.agent.wait_frontend("198.19.0.10:53/UDP", 3)?;

    let tcp = s.send_ok(Proto::Tcp, 80, 30)?;
    assert_served(&tcp, 8080);
    assert_eq!(backends_of(&tcp), names(&["be1", "be2", "be3"]));
    let udp = s.send_ok(Proto::Udp, 53, 30)?;
    assert_served(&udp, 5353);
    assert_eq!(backends_of(&udp), names(&["be1", "be2", "be3"]));
    Ok(())
}

#[test]
fn serves_multiport_endpoints() -> Result<()> {
    let mut s = Scenario::start(2, &[(Proto::Tcp, 8080), (Proto::Tcp, 8081)])?;
    let ports = [
        port("http", 80, "TCP", 8080),
        port("metrics", 81, "TCP", 8081),
    ];
    let eps = ready(&[s.backend_ip("be1"), s.backend_ip("be2")]);
    s.manifests
        .write("svc.yaml", &service(NS, "multi", CLUSTER_IP, &ports))?;
    s.manifests
        .write("slice.yaml", &slice(NS, "multi-1", "multi", &ports, &eps))?;
    s.agent.wait_frontend("198.19.0.10:80/TCP", 2)?;
    s.agent.wait_frontend("198.19.0.10:81/TCP", 2)?;
    let on_80 = s.send_ok(Proto::Tcp, 80, 12)?;
    assert_served(&on_80, 8080);
    let on_81 = s.send_ok(Proto::Tcp, 81, 12)?;
    assert_served(&on_81, 8081);
    assert_eq!(backends_of(&on_81), names(&["be1", "be2"]));
    Ok(())
}

#[test]
fn serves_the_same_port_over_tcp_and_udp_to_different_targets() -> Result<()> {
    let mut s = Scenario::start(2, &[(Proto::Tcp, 5300), (Proto::Udp, 5353)])?;
    let ports = [
        port("dns-tcp", 53, "TCP", 5300),
        port("dns-udp", 53, "UDP", 5353),
    ];
    let eps = ready(&[s.backend_ip("be1"), s.backend_ip("be2")]);
    s.manifests
        .write("svc.yaml", &service(NS, "dns", CLUSTER_IP, &ports))?;
    s.manifests
        .write("slice.yaml", &slice(NS, "dns-1", "dns", &ports, &eps))?;
    s.agent.wait_frontend("198.19.0.10:53/TCP", 2)?;
    s.agent.wait_frontend("198.19.0.10:53/UDP", 2)?;
    assert_served(&s.send_ok(Proto::Tcp, 53, 10)?, 5300);
    assert_served(&s.send_ok(Proto::Udp, 53, 10)?, 5353);
    Ok(())
}

#[test]
fn follows_ports_added_and_removed_while_running() -> Result<()> {
    let mut s = Scenario::start(2, &[(Proto::Tcp, 8080), (Proto::Tcp, 8081)])?;
    let eps = ready(&[s.backend_ip("be1"), s.backend_ip("be2")]);
    let first = [port("a", 80, "TCP", 8080)];
    s.manifests
        .write("svc.yaml", &service(NS, "ports", CLUSTER_IP, &first))?;
    s.manifests
        .write("slice.yaml", &slice(NS, "ports-1", "ports", &first, &eps))?;
    s.agent.wait_frontend("198.19.0.10:80/TCP", 2)?;
    assert_served(&s.send_ok(Proto::Tcp, 80, 5)?, 8080);
    s.assert_no_answer(Proto::Tcp, 81, 2)?;

    let both = [port("a", 80, "TCP", 8080), port("b", 81, "TCP", 8081)];
    s.manifests
        .write("slice.yaml", &slice(NS, "ports-1", "ports", &both, &eps))?;
    s.manifests
        .write("svc.yaml", &service(NS, "ports", CLUSTER_IP, &both))?;
    s.agent.wait_frontend("198.19.0.10:81/TCP", 2)?;
    assert_served(&s.send_ok(Proto::Tcp, 81, 5)?, 8081);
    assert_served(&s.send_ok(Proto::Tcp, 80, 5)?, 8080);

    let second = [port("b", 81, "TCP", 8081)];
    s.manifests
        .write("svc.yaml", &service(NS, "ports", CLUSTER_IP, &second))?;
    s.agent.wait_for(
        "port 80 removed",
        std::time::Duration::from_secs(15),
        |rows| rows.len() == 1 && rows[0].frontend == "198.19.0.10:81/TCP",
    )?;
    s.assert_no_answer(Proto::Tcp, 80, 2)?;
    assert_served(&s.send_ok(Proto::Tcp, 81, 5)?, 8081);
    Ok(())
}

#[test]
fn works_after_the_service_is_deleted_and_recreated() -> Result<()> {
    let mut s = Scenario::start(3, &[(Proto::Tcp, 8080)])?;
    let ports = [port("http", 80, "TCP", 8080)];
    let eps = ready(&[
        s.backend_ip("be1"),
        s.backend_ip("be2"),
        s.backend_ip("be3"),
    ]);
    let write = |s: &Scenario| -> Result<()> {
        s.manifests
            .write("svc.yaml", &service(NS, "again", CLUSTER_IP, &ports))?;
        s.manifests
            .write("slice.yaml", &slice(NS, "again-1", "again", &ports, &eps))
    };
    write(&s)?;
    s.agent.wait_frontend("198.19.0.10:80/TCP", 3)?;
    assert_eq!(
        backends_of(&s.send_ok(Proto::Tcp, 80, 20)?),
        names(&["be1", "be2", "be3"])
    );

    s.manifests.remove("svc.yaml")?;
    s.manifests.remove("slice.yaml")?;
    s.agent
        .wait_for("no services", std::time::Duration::from_secs(15), |rows| {
            rows.is_empty()
        })?;
    // No orphans: backends went with the service.
    let programmed = s.agent.programmed()?;
    assert!(
        programmed.backends.is_empty(),
        "orphan backends left: {:?}",
        programmed.backends
    );
    s.assert_no_answer(Proto::Tcp, 80, 2)?;

    write(&s)?;
    s.agent.wait_frontend("198.19.0.10:80/TCP", 3)?;
    let replies = s.send_ok(Proto::Tcp, 80, 20)?;
    assert_served(&replies, 8080);
    assert_eq!(backends_of(&replies), names(&["be1", "be2", "be3"]));
    Ok(())
}

#[test]
fn removed_and_unready_endpoints_get_no_new_flows() -> Result<()> {
    let mut s = Scenario::start(3, &[(Proto::Tcp, 8080), (Proto::Udp, 5353)])?;
    let ports = [port("http", 80, "TCP", 8080), port("dns", 53, "UDP", 5353)];
    let (b1, b2, b3) = (
        s.backend_ip("be1"),
        s.backend_ip("be2"),
        s.backend_ip("be3"),
    );
    s.manifests
        .write("svc.yaml", &service(NS, "shrink", CLUSTER_IP, &ports))?;
    s.manifests.write(
        "slice.yaml",
        &slice(NS, "shrink-1", "shrink", &ports, &ready(&[b1, b2, b3])),
    )?;
    s.agent.wait_frontend("198.19.0.10:80/TCP", 3)?;
    assert_eq!(
        backends_of(&s.send_ok(Proto::Tcp, 80, 30)?),
        names(&["be1", "be2", "be3"])
    );

    // be3 removed from the slice.
    s.manifests.write(
        "slice.yaml",
        &slice(NS, "shrink-1", "shrink", &ports, &ready(&[b1, b2])),
    )?;
    s.agent.wait_frontend("198.19.0.10:80/TCP", 2)?;
    assert_eq!(
        backends_of(&s.send_ok(Proto::Tcp, 80, 30)?),
        names(&["be1", "be2"])
    );
    assert_eq!(
        backends_of(&s.send_ok(Proto::Udp, 53, 30)?),
        names(&["be1", "be2"])
    );

    // be2 stays in the slice but is not ready.
    s.manifests.write(
        "slice.yaml",
        &slice(NS, "shrink-1", "shrink", &ports, &[(b1, true), (b2, false)]),
    )?;
    s.agent.wait_frontend("198.19.0.10:80/TCP", 1)?;
    assert_eq!(
        backends_of(&s.send_ok(Proto::Tcp, 80, 20)?),
        names(&["be1"])
    );
    Ok(())
}

#[test]
fn attaches_to_pod_devices_created_after_start() -> Result<()> {
    let mut s = Scenario::start(2, &[(Proto::Tcp, 8080)])?;
    let ports = [port("http", 80, "TCP", 8080)];
    let eps = ready(&[s.backend_ip("be1"), s.backend_ip("be2")]);
    s.manifests
        .write("svc.yaml", &service(NS, "late", CLUSTER_IP, &ports))?;
    s.manifests
        .write("slice.yaml", &slice(NS, "late-1", "late", &ports, &eps))?;
    s.agent.wait_frontend("198.19.0.10:80/TCP", 2)?;

    let late_ip = Ipv4Addr::new(198, 18, 1, 50);
    s.sandbox.add_pod("late", late_ip)?;
    s.agent.wait_attached("lxclate")?;
    let replies: Vec<_> = s
        .send("late", Proto::Tcp, CLUSTER_IP, 80, 10)?
        .into_iter()
        .collect::<Result<_>>()?;
    for r in &replies {
        assert_eq!(
            r.peer, late_ip,
            "backend saw {} instead of the new pod's address",
            r.peer
        );
    }
    assert_eq!(backends_of(&replies), names(&["be1", "be2"]));
    Ok(())
}

/// Hairpin (the e2e "should allow pods to hairpin back to themselves through
/// services"): a pod that reaches its own service and is chosen as the
/// backend gets its answer. Its request arrives from the hairpin address
/// (169.254.42.1), since a packet from its own address would be martian.
#[test]
fn a_pod_reaching_its_own_service_gets_the_answer_from_itself() -> Result<()> {
    let mut s = Scenario::start(1, &[(Proto::Tcp, 8080), (Proto::Udp, 5353)])?;
    let ports = [port("http", 80, "TCP", 8080), port("dns", 53, "UDP", 5353)];
    let b1 = s.backend_ip("be1");
    s.manifests
        .write("svc.yaml", &service(NS, "echo", CLUSTER_IP, &ports))?;
    s.manifests.write(
        "slice.yaml",
        &slice(NS, "echo-a", "echo", &ports, &ready(&[b1])),
    )?;
    s.agent.wait_frontend("198.19.0.10:80/TCP", 1)?;
    s.agent.wait_frontend("198.19.0.10:53/UDP", 1)?;
    for (proto, port) in [(Proto::Tcp, 80), (Proto::Udp, 53)] {
        for r in s.send("be1", proto, CLUSTER_IP, port, 5)? {
            let r = r?;
            assert_eq!(r.backend, "be1");
            assert_eq!(r.peer, Ipv4Addr::new(169, 254, 42, 1), "{proto:?}");
        }
    }
    Ok(())
}
