//! Socket-level load balancing end to end: the agent's cgroup sock_addr
//! programs on a cgroup the test makes (a child of the host's cgroup2 mount,
//! never its root), and client processes put into that cgroup by
//! weir-sock-client. What the application sees is asserted: the backend's
//! answer, getpeername and the UDP reply's source showing the service
//! address, ECONNREFUSED at once without endpoints.
use std::{path::Path, time::Duration};

use anyhow::{Context, Result};
use weir_tests::{
    cgroup::{sock_client, TestCgroup},
    echo::Proto,
    manifests::{port, service, slice},
    netns::unique_tag,
    scenario::{Scenario, CLUSTER_IP},
};

const NS: &str = "sock";
const EMPTY_IP: &str = "198.19.0.11";

fn client_bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_weir-sock-client"))
}

/// A sandbox with 3 backends behind CLUSTER_IP (TCP 80, UDP 53), a Service
/// without endpoints at EMPTY_IP, and the agent with `args` (its socket
/// programs on `cgroup`).
fn setup(cgroup: &TestCgroup, mode: &str) -> Result<Scenario> {
    let root = format!("--cgroup-root={}", cgroup.path().display());
    let mode = format!("--socket-lb={mode}");
    let mut s = Scenario::start_with(
        3,
        &[(Proto::Tcp, 8080), (Proto::Udp, 5353)],
        &[&mode, &root],
    )?;
    let ports = [port("tcp", 80, "TCP", 8080), port("udp", 53, "UDP", 5353)];
    let eps: Vec<_> = ["be1", "be2", "be3"]
        .iter()
        .map(|b| (s.backend_ip(b), true))
        .collect();
    s.manifests.write(
        "svc.yaml",
        &format!(
            "{}\n---\n{}\n---\n{}",
            service(NS, "echo", CLUSTER_IP, &ports,),
            slice(NS, "echo-1", "echo", &ports, &eps),
            service(NS, "empty", EMPTY_IP.parse()?, &ports)
        ),
    )?;
    s.agent.wait_frontend(&format!("{CLUSTER_IP}:80/TCP"), 3)?;
    s.agent.wait_frontend(&format!("{CLUSTER_IP}:53/UDP"), 3)?;
    s.agent.wait_frontend(&format!("{EMPTY_IP}:80/TCP"), 0)?;
    Ok(s)
}

fn backend_of(v: &serde_json::Value) -> String {
    v["reply"]
        .as_str()
        .and_then(|r| r.split_whitespace().next())
        .unwrap_or_default()
        .to_string()
}

/// Every request ok, answered by more than one backend, each showing `field` == `shown`.
fn assert_served(replies: &[serde_json::Value], field: &str, shown: &str) {
    assert!(!replies.is_empty());
    let mut backends = std::collections::BTreeSet::new();
    for r in replies {
        assert_eq!(r["ok"], true, "{r}");
        assert_eq!(r[field], shown, "{r}");
        backends.insert(backend_of(r));
    }
    assert!(
        backends.len() > 1,
        "one backend answered everything: {backends:?}"
    );
    assert!(backends.iter().all(|b| b.starts_with("be")), "{backends:?}");
}

fn assert_refused_at_once(replies: &[serde_json::Value]) {
    for r in replies {
        assert_eq!(r["ok"], false, "{r}");
        assert_eq!(r["kind"], "ConnectionRefused", "{r}");
        let micros = r["micros"].as_u64().unwrap_or(u64::MAX);
        assert!(micros < 100_000, "refused after {micros} µs: {r}");
    }
}

#[test]
fn host_processes_reach_cluster_ips_over_tcp_and_udp_and_see_the_service_address() -> Result<()> {
    let cgroup = TestCgroup::create(&unique_tag())?;
    let s = setup(&cgroup, "all")?;
    s.agent.clear_conntrack()?;
    let node = s.sandbox.node.name.clone();
    let bin = client_bin();
    let cg = Some(cgroup.path());
    let tcp = sock_client(bin, cg, &node, "tcp", &format!("{CLUSTER_IP}:80"), 12)?;
    assert_served(&tcp, "peer", &format!("{CLUSTER_IP}:80"));
    let udp = sock_client(bin, cg, &node, "udp", &format!("{CLUSTER_IP}:53"), 12)?;
    assert_served(&udp, "peer", &format!("{CLUSTER_IP}:53"));
    let sendto = sock_client(
        bin,
        cg,
        &node,
        "udp-sendto",
        &format!("{CLUSTER_IP}:53"),
        12,
    )?;
    assert_served(&sendto, "from", &format!("{CLUSTER_IP}:53"));

    // No endpoints: refused at connect (TCP and connected UDP) and at send.
    for mode in ["tcp", "udp", "udp-sendto"] {
        let port = if mode == "tcp" { 80 } else { 53 };
        let r = sock_client(bin, cg, &node, mode, &format!("{EMPTY_IP}:{port}"), 3)?;
        assert_refused_at_once(&r);
    }

    // The same client outside the cgroup has no socket LB: the node
    // namespace has no route to the service range, so nothing reaches it.
    let outside = sock_client(bin, None, &node, "tcp", &format!("{CLUSTER_IP}:80"), 1)?;
    assert_eq!(outside[0]["kind"], "NetworkUnreachable", "{}", outside[0]);

    // Socket-level flows leave no conntrack entry: the packets carry the
    // backend's address from the start, so tc never translates them again.
    let ct = s.agent.cli_json(&["bpf", "ct", "list"])?;
    assert_eq!(ct, serde_json::json!([]), "socket-level flows in conntrack");

    // 36 translations and 9 refusals, on /metrics.
    let metrics = weir_tests::http::get(
        &node,
        std::net::SocketAddrV4::new(std::net::Ipv4Addr::LOCALHOST, 10249),
        "/metrics",
    )?;
    let value = |name: &str| {
        weir_tests::prom::samples(&metrics.body, name)
            .first()
            .map(|s| s.1)
    };
    assert_eq!(
        value("weir_socket_lb_translations_total"),
        Some(36.0),
        "{}",
        metrics.body
    );
    assert_eq!(
        value("weir_socket_lb_refusals_total"),
        Some(9.0),
        "{}",
        metrics.body
    );
    let status = s.agent.cli_json(&["status"])?;
    assert_eq!(status["agent"]["socket_lb"]["mode"], "all", "{status}");
    assert_eq!(
        status["agent"]["socket_lb"]["cgroup"],
        cgroup.path().display().to_string(),
        "{status}"
    );
    let text = s.agent.cli(&["status"])?;
    assert!(
        text.contains(&format!("Sock LB:  all on {}", cgroup.path().display())),
        "{text}"
    );
    Ok(())
}

/// Dual-stack applications (Java, Node.js, Go with "tcp" on "[::]") open
/// AF_INET6 sockets and reach IPv4 services through IPv4-mapped addresses:
/// connect6 and sendmsg6 translate those with the IPv4 maps, and
/// getpeername6 and recvmsg6 show the mapped service address. This needs no
/// --ipv6: it is how an IPv4 cluster's host processes often connect.
#[test]
fn dual_stack_sockets_reach_ipv4_cluster_ips_through_mapped_addresses() -> Result<()> {
    let cgroup = TestCgroup::create(&unique_tag())?;
    let s = setup(&cgroup, "all")?;
    s.agent.clear_conntrack()?;
    let node = s.sandbox.node.name.clone();
    let (bin, cg) = (client_bin(), Some(cgroup.path()));
    let mapped = |ip: &dyn std::fmt::Display, port: u16| format!("[::ffff:{ip}]:{port}");
    let tcp = sock_client(bin, cg, &node, "tcp", &mapped(&CLUSTER_IP, 80), 12)?;
    assert_served(&tcp, "peer", &mapped(&CLUSTER_IP, 80));
    let udp = sock_client(bin, cg, &node, "udp", &mapped(&CLUSTER_IP, 53), 12)?;
    assert_served(&udp, "peer", &mapped(&CLUSTER_IP, 53));
    let sendto = sock_client(bin, cg, &node, "udp-sendto", &mapped(&CLUSTER_IP, 53), 12)?;
    assert_served(&sendto, "from", &mapped(&CLUSTER_IP, 53));
    for mode in ["tcp", "udp", "udp-sendto"] {
        let port = if mode == "tcp" { 80 } else { 53 };
        let r = sock_client(bin, cg, &node, mode, &mapped(&EMPTY_IP, port), 3)?;
        assert_refused_at_once(&r);
    }
    let ct = s.agent.cli_json(&["bpf", "ct", "list"])?;
    assert_eq!(ct, serde_json::json!([]), "socket-level flows in conntrack");
    Ok(())
}

#[test]
fn host_only_leaves_pods_to_tc_and_all_translates_their_tcp_sockets_at_connect() -> Result<()> {
    for (mode, pod_flows_in_conntrack) in [("host-only", true), ("all", false)] {
        let cgroup = TestCgroup::create(&unique_tag())?;
        let s = setup(&cgroup, mode)?;
        s.agent.clear_conntrack()?;
        let client = s.sandbox.pod("client").netns.name.clone();
        let cg = Some(cgroup.path());
        let r = sock_client(
            client_bin(),
            cg,
            &client,
            "tcp",
            &format!("{CLUSTER_IP}:80"),
            12,
        )?;
        assert_served(&r, "peer", &format!("{CLUSTER_IP}:80"));
        let ct = s.agent.cli_json(&["bpf", "ct", "list"])?;
        let entries = ct.as_array().map_or(0, Vec::len);
        assert_eq!(
            entries > 0,
            pod_flows_in_conntrack,
            "--socket-lb={mode}: conntrack after pod connects: {ct}"
        );
        // A pod's UDP stays on tc's path in both modes (conntrack moves it
        // off a removed backend; the agent can end only its own namespace's
        // sockets), and still shows the service address.
        s.agent.clear_conntrack()?;
        let r = sock_client(
            client_bin(),
            cg,
            &client,
            "udp",
            &format!("{CLUSTER_IP}:53"),
            6,
        )?;
        for v in &r {
            assert_eq!(v["ok"], true, "{v}");
            assert_eq!(v["peer"], format!("{CLUSTER_IP}:53"), "{v}");
        }
        let ct = s.agent.cli_json(&["bpf", "ct", "list"])?;
        assert!(
            ct.as_array().is_some_and(|a| !a.is_empty()),
            "--socket-lb={mode}: pod UDP: {ct}"
        );
        // The host namespace is translated in both modes.
        let node = s.sandbox.node.name.clone();
        let r = sock_client(
            client_bin(),
            cg,
            &node,
            "tcp",
            &format!("{CLUSTER_IP}:80"),
            12,
        )?;
        assert_served(&r, "peer", &format!("{CLUSTER_IP}:80"));
    }
    Ok(())
}

#[test]
fn socket_links_survive_restarts_and_uninstall_leaves_no_cgroup_attachment() -> Result<()> {
    let cgroup = TestCgroup::create(&unique_tag())?;
    let mut s = setup(&cgroup, "all")?;
    let node = s.sandbox.node.name.clone();
    let cg = Some(cgroup.path());
    let addr = format!("{CLUSTER_IP}:80");
    let attached = |path: &Path| -> Result<usize> {
        let out = weir_tests::cmd::run(
            "bpftool",
            &["-j", "cgroup", "show", &path.display().to_string()],
        )?;
        let v: serde_json::Value =
            serde_json::from_str(if out.trim().is_empty() { "[]" } else { &out })?;
        Ok(v.as_array().map_or(0, Vec::len))
    };
    assert_eq!(
        attached(cgroup.path())?,
        lb_common::sock::PROGRAMS.len(),
        "{}",
        s.agent.log_text()
    );
    for _ in 0..2 {
        s.agent.kill();
        // While no agent runs, the pinned links keep translating.
        let r = sock_client(client_bin(), cg, &node, "tcp", &addr, 3)?;
        assert_served_or_one(&r, &addr);
        s.agent.start_again_synced()?;
        assert_eq!(
            attached(cgroup.path())?,
            lb_common::sock::PROGRAMS.len(),
            "{}",
            s.agent.log_text()
        );
    }
    assert!(s
        .agent
        .log_text()
        .contains("taken_over=[\"weir_sock_connect4\""));
    let r = sock_client(client_bin(), cg, &node, "tcp", &addr, 12)?;
    assert_served(&r, "peer", &addr);

    s.agent.stop();
    weir_tests::cmd::run(
        &weir_tests::agent::weir_bin()?.to_string_lossy(),
        &["uninstall", "--bpffs", &s.agent.bpffs.to_string_lossy()],
    )?;
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while attached(cgroup.path())? != 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "socket programs left on the cgroup"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// A few requests: all ok and showing the service address (too few to ask for several backends).
fn assert_served_or_one(replies: &[serde_json::Value], addr: &str) {
    for r in replies {
        assert_eq!(r["ok"], true, "{r}");
        assert_eq!(r["peer"], addr, "{r}");
    }
}

#[test]
fn a_cgroup_root_that_is_missing_or_not_cgroup2_stops_the_agent_with_its_path() -> Result<()> {
    for (root, says) in [
        (
            "/nonexistent/weir-cgroup",
            "--cgroup-root /nonexistent/weir-cgroup: ",
        ),
        ("/proc", "not a cgroup v2 directory"),
    ] {
        let out = std::process::Command::new(weir_tests::agent::weir_bin()?)
            .args(["agent", "--source=dir:/nonexistent", "--socket-lb=all"])
            .arg(format!("--cgroup-root={root}"))
            .arg("--bpffs=/sys/fs/bpf/weir-test-never-created")
            .output()?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{stderr}");
        assert!(stderr.contains(says), "{stderr}");
        assert!(!Path::new("/sys/fs/bpf/weir-test-never-created").exists());
    }
    Ok(())
}

/// Both an AF_INET socket and an AF_INET6 one reaching the service through
/// its IPv4-mapped address (sock_diag dumps both families).
#[test]
fn a_connected_udp_socket_moves_to_a_surviving_backend_within_a_second_of_its_removal() -> Result<()>
{
    for service in [
        format!("{CLUSTER_IP}:53"),
        format!("[::ffff:{CLUSTER_IP}]:53"),
    ] {
        connected_udp_socket_moves(&service).with_context(|| service.clone())?;
    }
    Ok(())
}

fn connected_udp_socket_moves(service_addr: &str) -> Result<()> {
    use std::io::BufRead;
    let cgroup = TestCgroup::create(&unique_tag())?;
    let s = setup(&cgroup, "all")?;
    let ns = weir_tests::netns::path(&s.sandbox.node.name);
    // 3 s of sends, every 20 ms, on one connected socket while it works.
    let mut child = std::process::Command::new(client_bin())
        .arg(cgroup.path())
        .arg(ns)
        .args(["udp-stream", service_addr, "150"])
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    let stdout = child.stdout.take().expect("piped");
    let (tx, rx) = std::sync::mpsc::channel::<serde_json::Value>();
    let reader = std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if let Ok(v) = serde_json::from_str(&line) {
                let _ = tx.send(v);
            }
        }
    });
    let next = || rx.recv_timeout(Duration::from_secs(5));
    let first = next()?;
    assert_eq!(first["ok"], true, "{first}");
    let dead = backend_of(&first);
    // Keep talking to it for a while: the socket stays on its backend.
    for _ in 0..10 {
        let v = next()?;
        assert_eq!(
            backend_of(&v),
            dead,
            "a connected socket changed backend by itself: {v}"
        );
    }
    // Remove that endpoint from the slice; the pod keeps serving, so only
    // ending the socket can move the client.
    let ports = [port("tcp", 80, "TCP", 8080), port("udp", 53, "UDP", 5353)];
    let eps: Vec<_> = ["be1", "be2", "be3"]
        .iter()
        .filter(|b| **b != dead)
        .map(|b| (s.backend_ip(b), true))
        .collect();
    let removed_at = std::time::Instant::now();
    s.manifests.write(
        "svc.yaml",
        &format!(
            "{}\n---\n{}\n---\n{}",
            service(NS, "echo", CLUSTER_IP, &ports),
            slice(NS, "echo-1", "echo", &ports, &eps),
            service(NS, "empty", EMPTY_IP.parse()?, &ports)
        ),
    )?;
    let moved = loop {
        let v = next()?;
        let b = backend_of(&v);
        if v["ok"] == true && b != dead {
            break (removed_at.elapsed(), b);
        }
        assert!(
            removed_at.elapsed() < Duration::from_secs(3),
            "still on {dead}: {v}"
        );
    };
    let _ = child.kill();
    let _ = child.wait();
    let _ = reader.join();
    println!(
        "moved from {dead} to {} {:?} after the slice changed",
        moved.1, moved.0
    );
    assert!(moved.0 < Duration::from_secs(1), "took {:?}", moved.0);
    assert!(
        s.agent
            .log_text()
            .contains("ended sockets connected to backends that went away"),
        "{}",
        s.agent.log_text()
    );
    Ok(())
}

#[test]
fn weir_monitor_shows_socket_translations_and_refusals_with_the_netns_cookie() -> Result<()> {
    let cgroup = TestCgroup::create(&unique_tag())?;
    let s = setup(&cgroup, "all")?;
    let node = s.sandbox.node.name.clone();
    // 3 translations and 2 refusals: 5 events.
    let monitor = s.agent.monitor(Some(5), 15, &["--flows"])?;
    let cg = Some(cgroup.path());
    sock_client(
        client_bin(),
        cg,
        &node,
        "tcp",
        &format!("{CLUSTER_IP}:80"),
        3,
    )?;
    sock_client(client_bin(), cg, &node, "tcp", &format!("{EMPTY_IP}:80"), 2)?;
    let events = monitor.events()?;
    let of = |kind: &str| -> Vec<&serde_json::Value> {
        events.iter().filter(|e| e["event"] == kind).collect()
    };
    let (flows, refused) = (of("sock-flow"), of("sock-refused"));
    assert_eq!((flows.len(), refused.len()), (3, 2), "{events:?}");
    let cookie = &flows[0]["netns_cookie"];
    assert!(cookie.as_u64().is_some_and(|c| c > 0), "{events:?}");
    for e in &flows {
        assert!(
            e["tuple"]
                .as_str()
                .unwrap_or_default()
                .contains(&format!("-> {CLUSTER_IP}:80/TCP")),
            "{e}"
        );
        assert!(
            e["backend"]
                .as_str()
                .unwrap_or_default()
                .starts_with("198.18.1.1"),
            "{e}"
        );
        assert_eq!(&e["netns_cookie"], cookie, "{e}");
    }
    for e in &refused {
        assert_eq!(e["reason"], "no_endpoint", "{e}");
        assert!(
            e["tuple"]
                .as_str()
                .unwrap_or_default()
                .contains(&format!("-> {EMPTY_IP}:80/TCP")),
            "{e}"
        );
    }
    Ok(())
}

#[test]
fn pods_sockets_to_services_with_client_ip_affinity_are_left_to_tc() -> Result<()> {
    use weir_tests::manifests::service_with;
    let cgroup = TestCgroup::create(&unique_tag())?;
    let s = setup(&cgroup, "all")?;
    let ports = [port("tcp", 80, "TCP", 8080)];
    let eps: Vec<_> = ["be1", "be2", "be3"]
        .iter()
        .map(|b| (s.backend_ip(b), true))
        .collect();
    let sticky = "198.19.0.12";
    s.manifests.write(
        "sticky.yaml",
        &format!(
            "{}\n---\n{}",
            service_with(
                NS,
                "sticky",
                sticky.parse()?,
                &ports,
                "  sessionAffinity: ClientIP\n",
                &[]
            ),
            slice(NS, "sticky-1", "sticky", &ports, &eps)
        ),
    )?;
    let mut agent = s.agent;
    agent.wait_frontend(&format!("{sticky}:80/TCP"), 3)?;
    agent.clear_conntrack()?;
    let cg = Some(cgroup.path());
    let pod = s.sandbox.pod("client").netns.name.clone();
    let r = sock_client(client_bin(), cg, &pod, "tcp", &format!("{sticky}:80"), 6)?;
    // Affinity is per pod address: one backend for all, through tc (conntrack).
    let backends: std::collections::BTreeSet<String> = r.iter().map(backend_of).collect();
    assert_eq!(backends.len(), 1, "{r:?}");
    let ct = agent.cli_json(&["bpf", "ct", "list"])?;
    assert!(ct.as_array().is_some_and(|a| !a.is_empty()), "{ct}");
    // The host's sockets are translated at connect (the node is one client).
    agent.clear_conntrack()?;
    let node = s.sandbox.node.name.clone();
    let r = sock_client(client_bin(), cg, &node, "tcp", &format!("{sticky}:80"), 6)?;
    let backends: std::collections::BTreeSet<String> = r.iter().map(backend_of).collect();
    assert_eq!(backends.len(), 1, "{r:?}");
    assert_eq!(
        agent.cli_json(&["bpf", "ct", "list"])?,
        serde_json::json!([])
    );
    Ok(())
}

#[test]
fn host_processes_reach_node_ports_and_external_ips_too() -> Result<()> {
    use weir_tests::manifests::service_with;
    let cgroup = TestCgroup::create(&unique_tag())?;
    let root = format!("--cgroup-root={}", cgroup.path().display());
    // No Node object and no --devices: "all" serves NodePorts on the node's
    // own addresses (198.18.0.1, its side of every pod device).
    let mut s = Scenario::start_with(
        2,
        &[(Proto::Tcp, 8080)],
        &["--socket-lb=all", &root, "--nodeport-addresses=all"],
    )?;
    let ports = [port("tcp", 80, "TCP", 8080).node_port(30080)];
    let eps: Vec<_> = ["be1", "be2"]
        .iter()
        .map(|b| (s.backend_ip(b), true))
        .collect();
    let spec = "  type: NodePort\n  externalIPs: [198.19.7.7]\n";
    s.manifests.write(
        "np.yaml",
        &format!(
            "{}\n---\n{}",
            service_with(NS, "np", CLUSTER_IP, &ports, spec, &[]),
            slice(NS, "np-1", "np", &ports, &eps)
        ),
    )?;
    s.agent.wait_frontend("198.18.0.1:30080/TCP", 2)?;
    s.agent.wait_frontend("198.19.7.7:80/TCP", 2)?;
    let node = s.sandbox.node.name.clone();
    for addr in ["198.18.0.1:30080", "198.19.7.7:80"] {
        let r = sock_client(client_bin(), Some(cgroup.path()), &node, "tcp", addr, 12)?;
        assert_served(&r, "peer", addr);
    }
    Ok(())
}
