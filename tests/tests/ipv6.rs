//! End-to-end IPv6 and dual-stack tests in network namespaces: the real
//! agent (with --ipv6) on a directory source, the real tc program on the
//! pods' host-side veths, real TCP clients and servers. The pods are
//! dual-stack, as a dual-stack CNI wires them; the servers are the pods'
//! own (a test helper listening on the pod's IPv6 address, as a real
//! workload would). What is asserted is what the client sees: the backend
//! that answered, the address it saw, and a refused connection.
use std::{
    io::{Read, Write},
    net::{Ipv6Addr, SocketAddr, TcpListener, TcpStream},
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use weir_tests::{
    echo::Proto,
    netns::in_netns,
    node::add_pod_ipv6,
    scenario::{backends_of, names, Scenario},
};

const VIP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0x19, 0, 0, 0, 0x10);
const EMPTY_VIP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0x19, 0, 0, 0, 0x11);

fn pod6(last: u16) -> Ipv6Addr {
    Ipv6Addr::new(0x2001, 0xdb8, 0, 1, 0, 0, 0, last)
}

/// A TCP server on `addr:port` in namespace `ns` that answers every
/// connection with "NAME PEER" and closes it; it stops after a minute.
fn serve6(ns: &str, name: &str, addr: Ipv6Addr, port: u16) -> Result<()> {
    let name = name.to_string();
    let listener = in_netns(ns, move || {
        TcpListener::bind(SocketAddr::new(addr.into(), port))
    })??;
    listener.set_nonblocking(true)?;
    std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            match listener.accept() {
                Ok((mut s, peer)) => {
                    let _ = s.write_all(format!("{name} {}\n", peer.ip()).as_bytes());
                }
                Err(_) => std::thread::sleep(Duration::from_millis(5)),
            }
        }
    });
    Ok(())
}

/// One TCP request from namespace `ns` to `addr:port`: the answering
/// backend and the address it saw.
fn request6(ns: &str, addr: Ipv6Addr, port: u16) -> Result<(String, String)> {
    let reply = in_netns(ns, move || -> Result<String> {
        let mut s = TcpStream::connect_timeout(
            &SocketAddr::new(addr.into(), port),
            Duration::from_secs(2),
        )?;
        s.set_read_timeout(Some(Duration::from_secs(2)))?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(out)
    })??;
    let (name, peer) = reply
        .trim()
        .split_once(' ')
        .with_context(|| format!("reply {reply:?}"))?;
    Ok((name.to_string(), peer.to_string()))
}

const SERVICE: &str = "\
apiVersion: v1
kind: Service
metadata: {name: web, namespace: e2e}
spec:
  clusterIPs: [198.19.0.10, \"2001:db8:0:19::10\"]
  ipFamilies: [IPv4, IPv6]
  ipFamilyPolicy: RequireDualStack
  ports: [{name: http, port: 80, protocol: TCP, targetPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: empty, namespace: e2e}
spec:
  clusterIPs: [\"2001:db8:0:19::11\"]
  ipFamilies: [IPv6]
  ports: [{name: http, port: 80, protocol: TCP, targetPort: 8080}]
";

/// The two families of `web` have different endpoints: both backends over
/// IPv4, only be1 over IPv6.
fn slices() -> String {
    format!(
        "\
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: web-v4, namespace: e2e, labels: {{kubernetes.io/service-name: web}}}}
addressType: IPv4
ports: [{{name: http, port: 8080, protocol: TCP}}]
endpoints:
- addresses: [198.18.1.11]
- addresses: [198.18.1.12]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: web-v6, namespace: e2e, labels: {{kubernetes.io/service-name: web}}}}
addressType: IPv6
ports: [{{name: http, port: 8080, protocol: TCP}}]
endpoints:
- addresses: [\"{}\"]
",
        pod6(0x11)
    )
}

#[test]
fn a_dual_stack_service_serves_each_family_from_its_own_endpoints() -> Result<()> {
    let mut s = Scenario::start_with(2, &[(Proto::Tcp, 8080)], &["--ipv6"])?;
    for (pod, last) in [("client", 2), ("be1", 0x11), ("be2", 0x12)] {
        add_pod_ipv6(&s.sandbox.node.name, s.sandbox.pod(pod), pod6(last))?;
    }
    for (pod, last) in [("be1", 0x11), ("be2", 0x12)] {
        serve6(&s.sandbox.pod(pod).netns.name, pod, pod6(last), 8080)?;
    }
    s.manifests.write("svc.yaml", SERVICE)?;
    s.manifests.write("slices.yaml", &slices())?;
    s.agent.wait_frontend("[2001:db8:0:19::10]:80/TCP", 1)?;
    s.agent.wait_frontend("198.19.0.10:80/TCP", 2)?;
    let client = s.sandbox.pod("client").netns.name.clone();
    // Over IPv6: always be1, which sees the client's own IPv6 address;
    // `weir monitor --flows` shows each new flow with IPv6 addresses.
    let monitor = s.agent.monitor(Some(10), 15, &["--flows"])?;
    for _ in 0..10 {
        let (backend, peer) = request6(&client, VIP6, 80)?;
        assert_eq!(backend, "be1");
        assert_eq!(peer, pod6(2).to_string());
    }
    let flows = monitor.events()?;
    assert_eq!(flows.len(), 10, "{flows:?}");
    for f in &flows {
        let tuple = f["tuple"].as_str().unwrap_or_default();
        assert_eq!(f["event"], "flow", "{f}");
        assert!(tuple.starts_with(&format!("[{}]:", pod6(2))), "{f}");
        assert!(tuple.ends_with(&format!("-> [{VIP6}]:80/TCP")), "{f}");
        assert_eq!(f["backend"], format!("[{}]:8080", pod6(0x11)), "{f}");
    }
    // Over IPv4 the same Service spreads over both backends.
    let v4 = s.send_ok(Proto::Tcp, 80, 30)?;
    assert_eq!(backends_of(&v4), names(&["be1", "be2"]));
    // An IPv6 frontend without endpoints refuses at once (a RST from tc).
    let monitor = s.agent.monitor(Some(1), 10, &[])?;
    let started = Instant::now();
    let refused = request6(&client, EMPTY_VIP6, 80).expect_err("no endpoints");
    let kind = refused
        .downcast_ref::<std::io::Error>()
        .map(std::io::Error::kind);
    assert_eq!(
        kind,
        Some(std::io::ErrorKind::ConnectionRefused),
        "{refused:#}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    let drops = monitor.events()?;
    assert_eq!(drops.len(), 1, "{drops:?}");
    assert_eq!(drops[0]["event"], "drop", "{drops:?}");
    assert_eq!(drops[0]["reason"], "no_endpoint", "{drops:?}");
    let tuple = drops[0]["tuple"].as_str().unwrap_or_default();
    assert!(
        tuple.ends_with(&format!("-> [{EMPTY_VIP6}]:80/TCP")),
        "{drops:?}"
    );
    Ok(())
}

#[test]
fn without_ipv6_a_dual_stack_service_is_served_over_ipv4_and_its_ipv6_side_reported() -> Result<()>
{
    let mut s = Scenario::start(2, &[(Proto::Tcp, 8080)])?;
    s.manifests.write("svc.yaml", SERVICE)?;
    s.manifests.write("slices.yaml", &slices())?;
    s.agent.wait_frontend("198.19.0.10:80/TCP", 2)?;
    let v4 = s.send_ok(Proto::Tcp, 80, 20)?;
    assert_eq!(backends_of(&v4), names(&["be1", "be2"]));
    let deadline = Instant::now() + Duration::from_secs(10);
    while !s.agent.log_text().contains(
        "Service e2e/web: its IPv6 cluster IP is not served: the agent runs without --ipv6",
    ) {
        assert!(Instant::now() < deadline, "log:\n{}", s.agent.log_text());
        std::thread::sleep(Duration::from_millis(50));
    }
    let rows = s.agent.programmed()?;
    assert!(rows.services.keys().all(|k| k.addr.is_ipv4()), "{rows:?}");
    Ok(())
}

/// A TCP and UDP service on one IPv6 cluster IP, for socket LB.
const SOCK_VIP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0x19, 0, 0, 0, 0x20);

const SOCK_SERVICE: &str = "\
apiVersion: v1
kind: Service
metadata: {name: sock, namespace: e2e}
spec:
  clusterIPs: [\"2001:db8:0:19::20\"]
  ipFamilies: [IPv6]
  ports:
  - {name: tcp, port: 80, protocol: TCP, targetPort: 8080}
  - {name: udp, port: 53, protocol: UDP, targetPort: 5353}
";

fn sock_slice() -> String {
    format!(
        "\
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: sock-v6, namespace: e2e, labels: {{kubernetes.io/service-name: sock}}}}
addressType: IPv6
ports: [{{name: tcp, port: 8080, protocol: TCP}}, {{name: udp, port: 5353, protocol: UDP}}]
endpoints:
- addresses: [\"{}\"]
- addresses: [\"{}\"]
",
        pod6(0x11),
        pod6(0x12)
    )
}

/// A UDP server on `addr:port` in namespace `ns` answering every datagram
/// with "NAME PEER"; it stops after a minute.
fn serve6_udp(ns: &str, name: &str, addr: Ipv6Addr, port: u16) -> Result<()> {
    let name = name.to_string();
    let socket = in_netns(ns, move || {
        std::net::UdpSocket::bind(SocketAddr::new(addr.into(), port))
    })??;
    socket.set_read_timeout(Some(Duration::from_millis(200)))?;
    std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut buf = [0u8; 1500];
        while Instant::now() < deadline {
            if let Ok((_, peer)) = socket.recv_from(&mut buf) {
                let _ = socket.send_to(format!("{name} {}", peer.ip()).as_bytes(), peer);
            }
        }
    });
    Ok(())
}

/// Socket LB for IPv6 (connect6, sendmsg6, recvmsg6, getpeername6): a
/// process of the node reaches an IPv6 cluster IP, which nothing else on
/// the node routes, over TCP, connected UDP and unconnected UDP; the
/// backends see the node's own address, and the application sees the
/// service address as its peer and as the source of UDP replies.
#[test]
fn host_processes_reach_an_ipv6_cluster_ip_through_socket_lb() -> Result<()> {
    use weir_tests::cgroup::{sock_client, TestCgroup};
    let cgroup = TestCgroup::create(&weir_tests::netns::unique_tag())?;
    let root = format!("--cgroup-root={}", cgroup.path().display());
    let mut s = Scenario::start_with(
        2,
        &[(Proto::Tcp, 8080)],
        &["--ipv6", "--socket-lb=all", &root],
    )?;
    for (pod, last) in [("client", 2), ("be1", 0x11), ("be2", 0x12)] {
        add_pod_ipv6(&s.sandbox.node.name, s.sandbox.pod(pod), pod6(last))?;
    }
    for (pod, last) in [("be1", 0x11), ("be2", 0x12)] {
        let ns = s.sandbox.pod(pod).netns.name.clone();
        serve6(&ns, pod, pod6(last), 8080)?;
        serve6_udp(&ns, pod, pod6(last), 5353)?;
    }
    s.manifests.write("svc.yaml", SERVICE)?;
    s.manifests.write("sock.yaml", SOCK_SERVICE)?;
    s.manifests
        .write("slices.yaml", &format!("{}---\n{}", slices(), sock_slice()))?;
    s.agent.wait_frontend("[2001:db8:0:19::20]:80/TCP", 2)?;
    s.agent.wait_frontend("[2001:db8:0:19::20]:53/UDP", 2)?;
    s.agent.wait_frontend("[2001:db8:0:19::11]:80/TCP", 0)?;
    s.agent.clear_conntrack()?;
    let node = s.sandbox.node.name.clone();
    let bin = std::path::Path::new(env!("CARGO_BIN_EXE_weir-sock-client"));
    let cg = Some(cgroup.path());
    for (mode, port, field) in [
        ("tcp", 80, "peer"),
        ("udp", 53, "peer"),
        ("udp-sendto", 53, "from"),
    ] {
        let service = SocketAddr::new(SOCK_VIP6.into(), port).to_string();
        let replies = sock_client(bin, cg, &node, mode, &service, 12)?;
        let mut backends = std::collections::BTreeSet::new();
        for r in &replies {
            assert_eq!(r["ok"], true, "{mode}: {r}");
            assert_eq!(r[field], service, "{mode}: {r}");
            let reply = r["reply"].as_str().unwrap_or_default();
            let (backend, seen) = reply.split_once(' ').unwrap_or_default();
            assert_eq!(seen, weir_tests::node::GATEWAY6.to_string(), "{mode}: {r}");
            backends.insert(backend.to_string());
        }
        assert_eq!(backends, names(&["be1", "be2"]), "{mode}");
    }
    // Without endpoints the connect fails at once.
    let empty = SocketAddr::new(EMPTY_VIP6.into(), 80).to_string();
    for r in sock_client(bin, cg, &node, "tcp", &empty, 3)? {
        assert_eq!(r["kind"], "ConnectionRefused", "{r}");
        assert!(r["micros"].as_u64().unwrap_or(u64::MAX) < 100_000, "{r}");
    }
    // The same client outside the cgroup has no route to the service range.
    let outside = sock_client(bin, None, &node, "tcp", &format!("[{SOCK_VIP6}]:80"), 1)?;
    assert_eq!(outside[0]["ok"], false, "{}", outside[0]);
    // Socket-level flows leave no conntrack entry.
    let ct = s.agent.cli_json(&["bpf", "ct", "list"])?;
    assert_eq!(ct, serde_json::json!([]), "socket-level flows in conntrack");
    Ok(())
}

/// An extra IPv6 ingress address (--ingress-addresses), on the node's lo.
const INGRESS_EXTRA6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0x99, 0, 0, 0, 1);

/// GET http://ADDR/ with Host v6.example from `ns`, retried for up to 15 s
/// until it answers 200 (the agent applies the manifests asynchronously).
fn ingress_get(ns: &str, url: &str) -> Result<serde_json::Value> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let r = weir_tests::ingress::curl(ns, &["-H", "Host: v6.example", url]);
        match r {
            Ok(c) if c.status == 200 => return c.json(),
            other if Instant::now() > deadline => anyhow::bail!("{url}: {other:?}"),
            _ => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// The ingress proxy on IPv6: the hand-off (sk_lookup) takes connections
/// to the node's IPv6 InternalIP and to an extra IPv6 ingress address, the
/// proxy routes them to the IPv6 endpoints of a single-stack IPv6 Service,
/// and X-Forwarded-For carries the IPv6 client. The same dual-stack
/// listener takes IPv4 connections, whose client shows as plain IPv4.
#[test]
fn the_ingress_proxy_takes_ipv6_connections_and_routes_to_ipv6_endpoints() -> Result<()> {
    use weir_tests::{http_backend::HttpBackend, ingress::ingress_class};
    let extra = format!("--ingress-addresses={INGRESS_EXTRA6}");
    let s = Scenario::start_with(1, &[], &["--ipv6", "--ingress", &extra])?;
    for (pod, last) in [("client", 2), ("be1", 0x11)] {
        add_pod_ipv6(&s.sandbox.node.name, s.sandbox.pod(pod), pod6(last))?;
    }
    weir_tests::cmd::ip(&[
        "-n",
        &s.sandbox.node.name,
        "-6",
        "addr",
        "add",
        &format!("{INGRESS_EXTRA6}/128"),
        "dev",
        "lo",
    ])?;
    let _backend = HttpBackend::start_on(
        &s.sandbox.pod("be1").netns.name,
        "be1",
        SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), 8080),
    )?;
    let gateway6 = weir_tests::node::GATEWAY6;
    let m = &s.manifests;
    m.write("class.yaml", &ingress_class("weir", false))?;
    m.write(
        "node.yaml",
        &format!(
            "apiVersion: v1\nkind: Node\nmetadata: {{name: node-a}}\nstatus:\n  addresses:\n    \
             - {{type: InternalIP, address: 198.18.0.1}}\n    - {{type: InternalIP, address: \"{gateway6}\"}}\n"
        ),
    )?;
    m.write(
        "svc.yaml",
        &format!(
            "\
apiVersion: v1
kind: Service
metadata: {{name: web6, namespace: e2e}}
spec:
  clusterIPs: [\"2001:db8:0:19::30\"]
  ipFamilies: [IPv6]
  ports: [{{name: http, port: 80, protocol: TCP, targetPort: 8080}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: web6-1, namespace: e2e, labels: {{kubernetes.io/service-name: web6}}}}
addressType: IPv6
ports: [{{name: http, port: 8080, protocol: TCP}}]
endpoints:
- addresses: [\"{}\"]
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {{name: web6, namespace: e2e}}
spec:
  ingressClassName: weir
  rules:
  - host: v6.example
    http: {{paths: [{{path: /, pathType: Prefix, backend: {{service: {{name: web6, port: {{number: 80}}}}}}}}]}}
",
            pod6(0x11)
        ),
    )?;
    let client = s.sandbox.pod("client").netns.name.clone();
    for addr in [gateway6, INGRESS_EXTRA6] {
        let seen = ingress_get(&client, &format!("http://[{addr}]/v6"))
            .with_context(|| format!("agent log:\n{}", s.agent.log_text()))?;
        assert_eq!(seen["backend"], "be1", "{addr}: {seen}");
        assert_eq!(seen["path"], "/v6", "{addr}: {seen}");
        assert_eq!(
            seen["headers"]["x-forwarded-for"],
            pod6(2).to_string(),
            "{addr}: {seen}"
        );
    }
    // IPv4 to the node's IPv4 InternalIP: the same listener, the client as
    // IPv4 (not ::ffff:...), routed to the same IPv6 endpoint.
    let seen = ingress_get(&client, "http://198.18.0.1/v4")?;
    assert_eq!(seen["backend"], "be1", "{seen}");
    assert_eq!(seen["headers"]["x-forwarded-for"], "198.18.1.2", "{seen}");
    Ok(())
}
