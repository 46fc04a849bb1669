//! North-south in the topology kind, k3d and Docker-based clusters have:
//! each node's uplink is a veth whose far side is a port of a Linux bridge
//! (in a namespace of its own) with nothing attached to it. A native-XDP
//! veth drops what it sends with XDP_TX or redirects unless its peer has
//! NAPI, so `--xdp-mode auto` must not pick native there. Every mode is run:
//! auto, generic and off on bare ports, native forced on bare ports (it
//! warns), and auto and native where the port is made able to receive with
//! an XDP program on it (Cilium's kind CI does that; the agent sees it and
//! auto picks native). The XDP program on the far side is the only helper
//! here, and only in the last two, where the real world has one too.
//!
//! Each asserts what the external client gets: the answer of a backend on
//! the other node over TCP and UDP (through SNAT: that backend sees the
//! node's address), a local backend seeing the client's own address, and a
//! reset or port unreachable in well under a second for a Service without
//! endpoints. The directory source has no Node objects here: NodePorts are
//! served on the uplinks' addresses.
use std::{
    net::{Ipv4Addr, SocketAddrV4},
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use weir_tests::{
    cluster::node_ip,
    echo::{all_ok, assert_refused_within, Proto},
    lan::FarSide,
    manifests::{port, service_with, slice_eps, Port},
    scenario::{backends_of, names},
    Cluster,
};

const NS: &str = "e2e";
const CLUSTER_IP: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 10);
const EMPTY_IP: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 11);

fn ports() -> [Port<'static>; 2] {
    [
        port("http", 80, "TCP", 8080).node_port(30080),
        port("dns", 53, "UDP", 5353).node_port(30053),
    ]
}

fn empty_ports() -> [Port<'static>; 2] {
    [
        port("http", 80, "TCP", 8080).node_port(30081),
        port("dns", 53, "UDP", 5353).node_port(30054),
    ]
}

/// Two nodes on a bridge with `far_side` ports and no Node objects; be1 on
/// node-1 and be2 on node-2 behind a NodePort Service, and a NodePort
/// Service without endpoints; agents started with `agent_args`.
fn bridged(far_side: FarSide, agent_args: &[&str]) -> Result<Cluster> {
    let mut c = Cluster::build(2, far_side, false)?;
    c.add_pod(1, "be1")?;
    c.add_pod(2, "be2")?;
    for be in ["be1", "be2"] {
        c.serve(be, &[(Proto::Tcp, 8080), (Proto::Udp, 5353)])?;
    }
    let np = "  type: NodePort\n";
    c.manifests.write(
        "svc.yaml",
        &service_with(NS, "svc", CLUSTER_IP, &ports(), np, &[]),
    )?;
    c.manifests.write(
        "slice.yaml",
        &slice_eps(NS, "svc-1", "svc", &ports(), &c.ready_eps(&["be1", "be2"])),
    )?;
    c.manifests.write(
        "empty.yaml",
        &service_with(NS, "empty", EMPTY_IP, &empty_ports(), np, &[]),
    )?;
    c.start_agents(agent_args)?;
    for node in [1, 2] {
        for frontend in ["30080/TCP", "30053/UDP"] {
            c.agent(node)
                .wait_frontend(&format!("{}:{frontend}", node_ip(node)), 2)?;
        }
        for frontend in ["30081/TCP", "30054/UDP"] {
            c.agent(node)
                .wait_frontend(&format!("{}:{frontend}", node_ip(node)), 0)?;
        }
    }
    Ok(c)
}

/// What the external client gets from both nodes' NodePorts.
fn assert_served_from_outside(c: &mut Cluster) -> Result<()> {
    for node in [1, 2] {
        for (proto, np, target) in [(Proto::Tcp, 30080, 8080), (Proto::Udp, 30053, 5353)] {
            let what = format!("node-{node}:{np}/{proto:?} from outside");
            let replies = all_ok(c.ext_requests(proto, node_ip(node), np, 24)?, &what)
                .map_err(|e| e.context(c.agent_logs()))?;
            assert_eq!(backends_of(&replies), names(&["be1", "be2"]), "{what}");
            for r in &replies {
                // A local backend sees the client; a remote one the node that SNATed.
                let local = (r.backend == "be1") == (node == 1);
                let expected = if local { c.ext_ip() } else { node_ip(node) };
                assert_eq!((r.port, r.peer), (target, expected), "{what}: {r:?}");
            }
        }
        for (proto, np) in [(Proto::Tcp, 30081), (Proto::Udp, 30054)] {
            let addr = SocketAddrV4::new(node_ip(node), np);
            assert_refused_within(c.ext_ns(), proto, addr, Duration::from_millis(500))
                .with_context(|| format!("node-{node} without endpoints"))?;
        }
    }
    Ok(())
}

/// Each node's `weir status` for its uplink: (mode, reason).
fn uplink_modes(c: &mut Cluster) -> Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    for node in [1, 2] {
        let status = c.agent(node).cli_json(&["status"])?;
        let uplinks = &status["agent"]["uplinks"];
        assert_eq!(uplinks[0]["device"], "eth0", "{status}");
        assert_eq!(uplinks.as_array().map(Vec::len), Some(1), "{status}");
        out.push((
            uplinks[0]["mode"].as_str().unwrap_or_default().to_string(),
            uplinks[0]["reason"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
        ));
    }
    Ok(out)
}

#[test]
fn auto_on_bare_bridge_ports_leaves_the_uplink_to_tc_and_serves_everything() -> Result<()> {
    let mut c = bridged(FarSide::Bare, &[])?;
    assert_served_from_outside(&mut c)?;
    for (mode, reason) in uplink_modes(&mut c)? {
        assert_eq!(mode, "tc", "{reason}");
        assert!(
            reason.contains("veth peer") && reason.contains("another network namespace"),
            "{reason}"
        );
    }
    let log = c.agent_logs();
    assert!(log.contains("tc, not native XDP"), "{log}");
    assert!(
        log.contains("NodePorts served on the uplinks' addresses (no Node object node-1)"),
        "{log}"
    );
    Ok(())
}

#[test]
fn generic_xdp_on_bare_bridge_ports_serves_everything() -> Result<()> {
    let mut c = bridged(FarSide::Bare, &["--xdp-mode=generic"])?;
    assert_served_from_outside(&mut c)?;
    for (mode, reason) in uplink_modes(&mut c)? {
        assert_eq!(
            (mode.as_str(), reason.as_str()),
            ("xdp-generic", "--xdp-mode generic")
        );
    }
    Ok(())
}

#[test]
fn xdp_off_serves_everything_from_tc_including_snat_to_remote_backends() -> Result<()> {
    let mut c = bridged(FarSide::Bare, &["--xdp-mode=off"])?;
    assert_served_from_outside(&mut c)?;
    for (mode, reason) in uplink_modes(&mut c)? {
        assert_eq!(mode, "tc", "{reason}");
        assert!(reason.contains("--xdp-mode off"), "{reason}");
    }
    // No XDP program anywhere, and nothing dropped for want of a SNAT address.
    for node in [1, 2] {
        let status = c.agent(node).cli_json(&["status"])?;
        assert_eq!(status["xdp"], serde_json::json!([]), "{status}");
    }
    for node in [1, 2] {
        let metrics = weir_tests::prom::scrape(&c.node(node).netns.name)?;
        let dropped =
            weir_tests::prom::value(&metrics, "weir_drops_total", &[("reason", "snat_failed")]);
        assert_eq!(dropped, Some(0.0), "node-{node}: {metrics}");
    }
    Ok(())
}

#[test]
fn native_xdp_forced_on_bare_bridge_ports_warns_that_it_may_lose_frames() -> Result<()> {
    let mut c = Cluster::build(2, FarSide::Bare, false)?;
    c.start_agents(&["--xdp-mode=native"])?;
    let deadline = Instant::now() + Duration::from_secs(15);
    for node in [1, 2] {
        let warning = format!("native XDP as asked, but its veth peer node-{node} (in another");
        while !c.agent(node).log_text().contains(&warning) {
            assert!(Instant::now() < deadline, "{}", c.agent_logs());
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    for (mode, reason) in uplink_modes(&mut c)? {
        assert_eq!(
            (mode.as_str(), reason.as_str()),
            ("xdp-native", "--xdp-mode native")
        );
    }
    Ok(())
}

#[test]
fn native_xdp_where_the_bridge_ports_run_an_xdp_program_serves_everything() -> Result<()> {
    let mut c = bridged(FarSide::XdpPass, &["--xdp-mode=native"])?;
    assert_served_from_outside(&mut c)?;
    for (mode, reason) in uplink_modes(&mut c)? {
        assert_eq!(
            (mode.as_str(), reason.as_str()),
            ("xdp-native", "--xdp-mode native")
        );
    }
    assert!(!c.agent_logs().contains("native XDP as asked"));
    Ok(())
}

#[test]
fn auto_picks_native_xdp_where_the_bridge_ports_run_an_xdp_program() -> Result<()> {
    let mut c = bridged(FarSide::XdpPass, &[])?;
    assert_served_from_outside(&mut c)?;
    for (mode, reason) in uplink_modes(&mut c)? {
        assert_eq!(mode, "xdp-native", "{reason}");
        assert!(reason.contains("runs a native XDP program"), "{reason}");
    }
    Ok(())
}

#[test]
fn ingress_without_a_node_object_is_served_on_the_uplink_address_from_outside() -> Result<()> {
    ingress_from_outside(FarSide::Bare, "--xdp-mode=auto")
}

#[test]
fn ingress_from_outside_with_generic_xdp() -> Result<()> {
    ingress_from_outside(FarSide::Bare, "--xdp-mode=generic")
}

#[test]
fn ingress_from_outside_with_xdp_off() -> Result<()> {
    ingress_from_outside(FarSide::Bare, "--xdp-mode=off")
}

#[test]
fn ingress_from_outside_with_native_xdp_where_the_ports_run_an_xdp_program() -> Result<()> {
    ingress_from_outside(FarSide::XdpPass, "--xdp-mode=native")
}

/// The ingress served on each node's uplink address (no Node object) from
/// the external client, with the uplinks' far side and XDP mode given.
fn ingress_from_outside(far_side: FarSide, xdp_mode: &str) -> Result<()> {
    use weir_tests::{
        http_backend::HttpBackend,
        ingress::{curl, ingress, ingress_class},
    };
    let mut c = Cluster::build(2, far_side, false)?;
    c.add_pod(1, "be1")?;
    c.add_pod(2, "be2")?;
    let _web: Vec<HttpBackend> = ["be1", "be2"]
        .iter()
        .map(|be| HttpBackend::start(&c.pod(be).netns.name, be, 8081))
        .collect::<Result<_>>()?;
    let ports = [port("http", 80, "TCP", 8081)];
    let rule = "  ingressClassName: weir\n  rules:\n  - host: web.example\n    http:\n      paths:\n      - path: /app\n        pathType: Prefix\n        backend: {service: {name: web, port: {number: 80}}}\n";
    c.manifests.write(
        "web.yaml",
        &format!(
            "{}\n---\n{}\n---\n{}\n---\n{}",
            service_with(NS, "web", CLUSTER_IP, &ports, "", &[]),
            slice_eps(NS, "web-1", "web", &ports, &c.ready_eps(&["be1", "be2"])),
            ingress_class("weir", false),
            ingress(NS, "web", rule)
        ),
    )?;
    c.start_agents(&["--ingress", xdp_mode])?;
    c.wait_frontend(&format!("{CLUSTER_IP}:80/TCP"), 2)?;
    for node in [1, 2] {
        let url = format!("http://{}/app/x", node_ip(node));
        let get = || curl(c.ext_ns(), &["-H", "Host: web.example", &url]);
        let deadline = Instant::now() + Duration::from_secs(15);
        while !get().is_ok_and(|r| r.status == 200) {
            assert!(Instant::now() < deadline, "{}", c.agent_logs());
            std::thread::sleep(Duration::from_millis(100));
        }
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..20 {
            let r = get()?;
            assert_eq!(r.status, 200, "{r:?}");
            assert_eq!(r.json()?["path"], "/app/x", "{r:?}");
            seen.insert(r.backend()?);
        }
        assert_eq!(seen, names(&["be1", "be2"]), "node-{node}");
        // Another path has no route: the proxy's 404, not a dead port.
        let other = curl(
            c.ext_ns(),
            &[
                "-H",
                "Host: web.example",
                &format!("http://{}/other", node_ip(node)),
            ],
        )?;
        assert_eq!(other.status, 404);
    }
    let log = c.agent(1).log_text();
    assert!(
        log.contains("ingress addresses addresses={198.18.100.11}"),
        "{log}"
    );
    Ok(())
}

#[test]
fn a_missing_uplink_is_named_attached_when_it_appears_and_the_rest_keeps_serving() -> Result<()> {
    use weir_tests::cmd::ip;
    let mut c = bridged(FarSide::Bare, &["--devices=up9"])?;
    let wait_log = |c: &mut Cluster, needle: &str| -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(15);
        while !c.agent(1).log_text().contains(needle) {
            anyhow::ensure!(
                Instant::now() < deadline,
                "no {needle:?} in\n{}",
                c.agent_logs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    };
    wait_log(&mut c, "uplink named in --devices does not exist")?;
    let status = c.agent(1).cli_json(&["status"])?;
    let missing = &status["agent"]["uplinks"][1];
    assert_eq!(
        (&missing["device"], &missing["mode"]),
        (&"up9".into(), &"missing".into()),
        "{status}"
    );
    assert_served_from_outside(&mut c)?;

    // It appears (a veth whose peer stays in the node's namespace): attached.
    let node = c.node(1).netns.name.clone();
    ip(&[
        "-n", &node, "link", "add", "up9", "type", "veth", "peer", "name", "up9p",
    ])?;
    ip(&["-n", &node, "addr", "add", "198.18.101.1/24", "dev", "up9"])?;
    ip(&["-n", &node, "link", "set", "up9", "up"])?;
    ip(&["-n", &node, "link", "set", "up9p", "up"])?;
    wait_log(&mut c, "uplink appeared")?;
    c.agent(1).wait_attached("up9")?;
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let status = c.agent(1).cli_json(&["status"])?;
        let up9 = status["agent"]["uplinks"]
            .as_array()
            .and_then(|u| u.iter().find(|u| u["device"] == "up9").cloned());
        let mode = up9.as_ref().map(|u| u["mode"].clone());
        if mode == Some("tc".into()) {
            let reason = up9.map(|u| u["reason"].to_string()).unwrap_or_default();
            assert!(
                reason.contains("its veth peer up9p runs no native XDP program"),
                "{reason}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "{status}");
        std::thread::sleep(Duration::from_millis(50));
    }
    // Its address serves the NodePort too (no Node object: the uplinks' addresses).
    c.agent(1).wait_frontend("198.18.101.1:30080/TCP", 2)?;

    // It vanishes: named again, and eth0 keeps serving.
    ip(&["-n", &node, "link", "del", "up9"])?;
    let deadline = Instant::now() + Duration::from_secs(15);
    while c
        .agent(1)
        .log_text()
        .matches("uplink named in --devices does not exist")
        .count()
        < 2
    {
        assert!(Instant::now() < deadline, "{}", c.agent_logs());
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_served_from_outside(&mut c)
}
