//! The agent's health endpoints as a load balancer or kubelet sees them:
//! /healthz and /livez, and a healthCheckNodePort that fails when only
//! terminating endpoints remain on the node (Kubernetes e2e: "health check
//! node port should fail when only terminating endpoints remain").
use std::net::SocketAddrV4;

use anyhow::Result;
use weir_tests::{
    echo::Proto,
    http::get,
    manifests::{port, service_with, slice_eps, Ep},
    sandbox::GATEWAY,
    scenario::{Scenario, CLUSTER_IP},
};

const NS: &str = "health";

#[test]
fn healthz_and_the_health_check_node_port_follow_local_endpoints() -> Result<()> {
    let mut s = Scenario::start(2, &[(Proto::Tcp, 8080)])?;
    let client = s.sandbox.pod("client").netns.name.clone();
    let ports = [port("http", 80, "TCP", 8080).node_port(30080)];
    let spec =
        "  type: LoadBalancer\n  externalTrafficPolicy: Local\n  healthCheckNodePort: 32000\n";
    s.manifests.write(
        "svc.yaml",
        &service_with(NS, "shop", CLUSTER_IP, &ports, spec, &[]),
    )?;
    let (b1, b2) = (s.backend_ip("be1"), s.backend_ip("be2"));
    s.manifests.write(
        "slice.yaml",
        &slice_eps(
            NS,
            "shop-1",
            "shop",
            &ports,
            &[Ep::ready(b1, "node-a"), Ep::ready(b2, "node-a")],
        ),
    )?;
    s.agent.wait_frontend("198.19.0.10:80/TCP", 2)?;

    // The node's address as pods see it; the agent listens on all node addresses.
    let healthz = get(&client, SocketAddrV4::new(GATEWAY, 10256), "/healthz")?;
    assert_eq!(healthz.status, 200, "{healthz:?}");
    assert!(!healthz.json()?["lastUpdated"]
        .as_str()
        .unwrap_or_default()
        .is_empty());
    assert_eq!(
        get(&client, SocketAddrV4::new(GATEWAY, 10256), "/livez")?.status,
        200
    );

    let hc = SocketAddrV4::new(GATEWAY, 32000);
    let ok = get(&client, hc, "/")?;
    assert_eq!(ok.status, 200, "{ok:?}");
    assert_eq!(ok.json()?["localEndpoints"], 2);
    assert_eq!(
        ok.json()?["service"],
        serde_json::json!({"namespace": NS, "name": "shop"})
    );
    assert_eq!(ok.header("x-load-balancing-endpoint-weight"), Some("2"));

    // Only terminating endpoints remain on this node: the health check fails.
    s.manifests.write(
        "slice.yaml",
        &slice_eps(
            NS,
            "shop-1",
            "shop",
            &ports,
            &[Ep::terminating(b1, "node-a"), Ep::ready(b2, "node-b")],
        ),
    )?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    let failing = loop {
        let r = get(&client, hc, "/")?;
        if r.status == 503 || std::time::Instant::now() > deadline {
            break r;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    assert_eq!(failing.status, 503, "{failing:?}");
    assert_eq!(failing.json()?["localEndpoints"], 0);

    // The service gone: its health check port closes.
    s.manifests.remove("svc.yaml")?;
    s.agent
        .wait_for("no services", std::time::Duration::from_secs(15), |rows| {
            rows.is_empty()
        })?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    while get(&client, hc, "/").is_ok() {
        assert!(
            std::time::Instant::now() < deadline,
            "the health check port stayed open"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    Ok(())
}
