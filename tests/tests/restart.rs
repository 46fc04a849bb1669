//! Restart safety: the datapath keeps serving while the agent is killed and
//! restarted (links and maps are pinned; a new agent takes over the links and
//! restores ids from the maps), and `weir uninstall` removes everything.
use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader, Write},
    net::{SocketAddr, SocketAddrV4, TcpStream, UdpSocket},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use weir_tests::{
    agent::weir_bin,
    cluster::node_ip,
    cmd::run,
    echo::{requests, Proto},
    load::{Load, MAX_RUN},
    manifests::{port, service, service_with, slice, slice_eps},
    netns::enter,
    scenario::{Scenario, CLUSTER_IP, TIMEOUT},
    Cluster,
};

const NS: &str = "restart";

fn setup() -> Result<Scenario> {
    let mut s = Scenario::start(3, &[(Proto::Tcp, 8080), (Proto::Udp, 5353)])?;
    let ports = [port("http", 80, "TCP", 8080), port("dns", 53, "UDP", 5353)];
    let eps: Vec<_> = ["be1", "be2", "be3"]
        .iter()
        .map(|b| (s.backend_ip(b), true))
        .collect();
    s.manifests
        .write("svc.yaml", &service(NS, "steady", CLUSTER_IP, &ports))?;
    s.manifests
        .write("slice.yaml", &slice(NS, "steady-1", "steady", &ports, &eps))?;
    s.agent.wait_frontend("198.19.0.10:80/TCP", 3)?;
    s.agent.wait_frontend("198.19.0.10:53/UDP", 3)?;
    Ok(s)
}

#[test]
fn connections_survive_five_sigkills_of_the_agent() -> Result<()> {
    let mut s = setup()?;
    let client = s.sandbox.pod("client").netns.name.clone();
    let ids_before = s.agent.programmed()?;
    let load = Load::start(
        &client,
        SocketAddrV4::new(CLUSTER_IP, 80),
        SocketAddrV4::new(CLUSTER_IP, 53),
    );
    let mut ready_after = Vec::new();
    for _ in 0..5 {
        std::thread::sleep(Duration::from_millis(400));
        s.agent.kill();
        std::thread::sleep(Duration::from_millis(300));
        ready_after.push(s.agent.start_again_synced()?);
    }
    std::thread::sleep(Duration::from_millis(400));
    let tally = load.finish()?;
    println!("restart: {tally:?}, ready after {ready_after:?}");
    assert_eq!(
        tally.failed(),
        0,
        "requests failed across restarts: {tally:?}"
    );
    assert!(tally.least_ok() >= 20, "too little load ran: {tally:?}");

    // Ids came back from the maps: the same services and backends, the same ids.
    let ids_after = s.agent.programmed()?;
    assert!(
        ids_after.same_entries(&ids_before),
        "ids changed across restarts"
    );
    assert!(
        s.agent.log_text().contains("took over the pinned link"),
        "a restarted agent attached anew"
    );
    assert!(
        !s.agent.log_text().contains("recreated"),
        "a plain restart recreated a map:\n{}",
        s.agent.log_text()
    );
    Ok(())
}

/// Each pinned link under `bpffs/links`, with its link id and the id of the
/// program it runs.
fn link_programs(bpffs: &std::path::Path) -> Result<BTreeMap<String, (u64, u64)>> {
    let mut links = BTreeMap::new();
    for entry in std::fs::read_dir(bpffs.join("links"))? {
        let path = entry?.path();
        let out = run(
            "bpftool",
            &["-j", "link", "show", "pinned", &path.to_string_lossy()],
        )?;
        let v: serde_json::Value = serde_json::from_str(&out)?;
        let id = |field: &str| {
            v[field]
                .as_u64()
                .with_context(|| format!("{field} of {out}"))
        };
        let name = path.file_name().context("name")?.to_string_lossy();
        links.insert(name.into_owned(), (id("id")?, id("prog_id")?));
    }
    Ok(links)
}

/// NodePort from outside the cluster (XDP on the uplink, SNAT to a remote
/// backend) while node-1's agent is killed and restarted five times. Each
/// new agent loads its programs anew and swaps them into the pinned links
/// (bpf_link_update), which is exactly how an upgrade replaces a running
/// build: the links stay, the programs change, and no flow notices.
/// The uplinks hang on bare bridge ports (as in kind): generic XDP there,
/// and tc for `--xdp-mode auto` (which will not use native XDP on them).
#[test]
fn node_port_flows_from_outside_survive_five_sigkills_and_program_swaps() -> Result<()> {
    node_port_flows_survive_restarts("generic", true)
}

#[test]
fn node_port_flows_from_outside_survive_restarts_with_the_uplink_on_tc() -> Result<()> {
    node_port_flows_survive_restarts("auto", false)
}

fn node_port_flows_survive_restarts(xdp_mode: &str, xdp: bool) -> Result<()> {
    let mut c = Cluster::new(2)?;
    c.add_pod(1, "be1")?;
    c.add_pod(2, "be2")?;
    for be in ["be1", "be2"] {
        c.serve(be, &[(Proto::Tcp, 8080), (Proto::Udp, 5353)])?;
    }
    let ports = [
        port("http", 80, "TCP", 8080).node_port(30080),
        port("dns", 53, "UDP", 5353).node_port(30053),
    ];
    c.manifests.write(
        "svc.yaml",
        &service_with(NS, "np", CLUSTER_IP, &ports, "  type: NodePort\n", &[]),
    )?;
    c.manifests.write(
        "slice.yaml",
        &slice_eps(NS, "np-1", "np", &ports, &c.ready_eps(&["be1", "be2"])),
    )?;
    c.start_agents(&[&format!("--xdp-mode={xdp_mode}")])?;
    let node = node_ip(1);
    c.agent(1).wait_frontend(&format!("{node}:30080/TCP"), 2)?;
    c.agent(1).wait_frontend(&format!("{node}:30053/UDP"), 2)?;
    let links_before = link_programs(&c.agent(1).bpffs)?;
    assert_eq!(
        links_before.keys().any(|l| l.starts_with("xdp_")),
        xdp,
        "XDP link on the uplink with --xdp-mode={xdp_mode}: {links_before:?}"
    );
    assert!(
        links_before.keys().any(|l| l.starts_with("tc_eth0")),
        "no tc link on the uplink: {links_before:?}"
    );

    let load = Load::start(
        c.ext_ns(),
        SocketAddrV4::new(node, 30080),
        SocketAddrV4::new(node, 30053),
    );
    let mut ready_after = Vec::new();
    for _ in 0..5 {
        std::thread::sleep(Duration::from_millis(400));
        c.agent(1).kill();
        std::thread::sleep(Duration::from_millis(300));
        ready_after.push(c.agent(1).start_again_synced()?);
    }
    std::thread::sleep(Duration::from_millis(400));
    let tally = load.finish()?;
    println!("node port restarts (--xdp-mode={xdp_mode}): {tally:?}, ready after {ready_after:?}");
    assert_eq!(
        tally.failed(),
        0,
        "requests failed across restarts: {tally:?}\n{}",
        c.agent_logs()
    );
    assert!(tally.least_ok() >= 20, "too little load ran: {tally:?}");

    // The same links, each running a program loaded by the last agent.
    let links_after = link_programs(&c.agent(1).bpffs)?;
    assert_eq!(
        links_after.keys().collect::<Vec<_>>(),
        links_before.keys().collect::<Vec<_>>()
    );
    for (name, (link, prog)) in &links_before {
        let (link_after, prog_after) = links_after[name];
        assert_eq!(link_after, *link, "{name} is a new link");
        assert_ne!(prog_after, *prog, "{name} still runs the first program");
    }

    // Uninstall leaves nothing: no XDP program on the node's devices, and
    // every program the links ran is unloaded (so no tc attachment is left
    // either; this bpftool does not list TCX attachments itself).
    let node_ns = c.node(1).netns.name.clone();
    let xdp_on_devices = || -> Result<usize> {
        let out = run(
            "ip",
            &["netns", "exec", &node_ns, "bpftool", "-j", "net", "show"],
        )?;
        let v: serde_json::Value = serde_json::from_str(&out)?;
        Ok(v[0]["xdp"].as_array().map_or(0, Vec::len))
    };
    assert_eq!(
        xdp_on_devices()?,
        usize::from(xdp),
        "XDP on the uplink before uninstall"
    );
    c.agent(1).stop();
    let bpffs = c.agent(1).bpffs.clone();
    run(
        &weir_bin()?.to_string_lossy(),
        &["uninstall", "--bpffs", &bpffs.to_string_lossy()],
    )?;
    assert!(!bpffs.exists(), "pins left behind");
    assert_eq!(xdp_on_devices()?, 0, "XDP left on the uplink");
    let deadline = Instant::now() + Duration::from_secs(10);
    for (name, (_, prog)) in &links_after {
        while run("bpftool", &["prog", "show", "id", &prog.to_string()]).is_ok() {
            assert!(
                Instant::now() < deadline,
                "{name}'s program {prog} still loaded"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    Ok(())
}

#[test]
fn a_stopped_agent_leaves_the_datapath_serving_and_uninstall_removes_it() -> Result<()> {
    let mut s = setup()?;
    let client = s.sandbox.pod("client").netns.name.clone();
    s.agent.stop();
    let served = requests(
        &client,
        Proto::Tcp,
        SocketAddrV4::new(CLUSTER_IP, 80),
        10,
        TIMEOUT,
    )?;
    assert!(
        served.iter().all(Result::is_ok),
        "the datapath stopped with the agent: {served:?}"
    );

    // Kernel object ids behind the pins, to check afterwards that they are gone.
    let id_of = |kind: &str, path: &std::path::Path| -> Result<u64> {
        let out = run(
            "bpftool",
            &["-j", kind, "show", "pinned", &path.to_string_lossy()],
        )?;
        let v: serde_json::Value = serde_json::from_str(&out)?;
        v["id"].as_u64().context("id")
    };
    let link_pins: Vec<_> = std::fs::read_dir(s.agent.bpffs.join("links"))?
        .flatten()
        .map(|e| e.path())
        .collect();
    assert_eq!(
        link_pins.len(),
        4,
        "one pinned link per pod device: {link_pins:?}"
    );
    let links = link_pins
        .iter()
        .map(|p| id_of("link", p))
        .collect::<Result<Vec<_>>>()?;
    let maps = lb_common::ALL_MAPS
        .iter()
        .map(|m| id_of("map", &s.agent.bpffs.join(m)))
        .collect::<Result<Vec<_>>>()?;

    let bpffs = s.agent.bpffs.display().to_string();
    let out = run(
        &weir_bin()?.to_string_lossy(),
        &["uninstall", "--bpffs", &bpffs],
    )?;
    assert!(out.contains("removed"), "{out}");
    assert!(!s.agent.bpffs.exists(), "pins left behind");
    // The kernel frees unreferenced objects asynchronously: wait (bounded) until every id is gone.
    let deadline = Instant::now() + Duration::from_secs(10);
    for (kind, ids) in [("link", &links), ("map", &maps)] {
        for id in ids {
            while run("bpftool", &[kind, "show", "id", &id.to_string()]).is_ok() {
                assert!(
                    Instant::now() < deadline,
                    "{kind} {id} still exists after uninstall"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
    let after = requests(
        &client,
        Proto::Tcp,
        SocketAddrV4::new(CLUSTER_IP, 80),
        2,
        Duration::from_millis(500),
    )?;
    assert!(
        after.iter().all(Result::is_err),
        "the ClusterIP still answers after uninstall: {after:?}"
    );
    Ok(())
}

#[test]
fn a_udp_flow_moves_to_another_backend_when_its_backend_is_removed() -> Result<()> {
    let mut s = setup()?;
    let client = s.sandbox.pod("client").netns.name.clone();
    let vip = SocketAddrV4::new(CLUSTER_IP, 53);
    // One socket, one 5-tuple, as a resolver talking to a DNS service.
    let (tx, rx) = std::sync::mpsc::channel::<(Instant, Result<String>)>();
    let stop = Arc::new(AtomicBool::new(false));
    let sender = {
        let stop = stop.clone();
        std::thread::spawn(move || -> Result<()> {
            enter(&client)?;
            let socket = UdpSocket::bind("0.0.0.0:0")?;
            socket.connect(vip)?;
            socket.set_read_timeout(Some(Duration::from_millis(200)))?;
            let start = Instant::now();
            while !stop.load(Ordering::Relaxed) && start.elapsed() < MAX_RUN {
                let mut buf = [0u8; 256];
                let r = socket
                    .send(b"q")
                    .and_then(|_| socket.recv(&mut buf))
                    .map_err(anyhow::Error::from)
                    .and_then(|n| {
                        Ok(std::str::from_utf8(&buf[..n])?
                            .split_whitespace()
                            .next()
                            .unwrap_or_default()
                            .to_string())
                    });
                let _ = tx.send((Instant::now(), r));
                std::thread::sleep(Duration::from_millis(20));
            }
            Ok(())
        })
    };
    let first = rx.recv_timeout(Duration::from_secs(5))?.1?;
    // Remove the endpoint this flow uses.
    let ports = [port("http", 80, "TCP", 8080), port("dns", 53, "UDP", 5353)];
    let rest: Vec<_> = ["be1", "be2", "be3"]
        .iter()
        .filter(|b| **b != first)
        .map(|b| (s.backend_ip(b), true))
        .collect();
    s.manifests.write(
        "slice.yaml",
        &slice(NS, "steady-1", "steady", &ports, &rest),
    )?;
    let removed_at = Instant::now();
    s.agent.wait_frontend("198.19.0.10:53/UDP", 2)?;
    let moved_at = loop {
        let (at, r) = rx.recv_timeout(Duration::from_secs(5))?;
        if let Ok(backend) = r {
            if backend != first {
                break at;
            }
        }
        assert!(
            removed_at.elapsed() < Duration::from_secs(10),
            "the flow never left {first}"
        );
    };
    stop.store(true, Ordering::Relaxed);
    let _ = sender.join();
    let took = moved_at.saturating_duration_since(removed_at);
    println!("udp flow moved off {first} {took:?} after the endpoint was removed");
    assert!(
        took < Duration::from_secs(1),
        "the flow stayed on the removed endpoint for {took:?}"
    );
    Ok(())
}

#[test]
fn closed_and_idle_flows_leave_conntrack_while_open_ones_stay() -> Result<()> {
    let args = [
        "--conntrack-udp-timeout=1s",
        "--conntrack-tcp-close-timeout=1s",
        "--conntrack-gc-interval=200ms",
    ];
    let mut s = Scenario::start_with(1, &[(Proto::Tcp, 8080), (Proto::Udp, 5353)], &args)?;
    let ports = [port("http", 80, "TCP", 8080), port("dns", 53, "UDP", 5353)];
    s.manifests
        .write("svc.yaml", &service(NS, "aging", CLUSTER_IP, &ports))?;
    s.manifests.write(
        "slice.yaml",
        &slice(
            NS,
            "aging-1",
            "aging",
            &ports,
            &[(s.backend_ip("be1"), true)],
        ),
    )?;
    s.agent.wait_frontend("198.19.0.10:80/TCP", 1)?;
    let client = s.sandbox.pod("client").netns.name.clone();

    // An open TCP stream, held for the whole test.
    let (open_tx, open_rx) = std::sync::mpsc::channel::<u16>();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let holder = std::thread::spawn(move || -> Result<()> {
        enter(&client)?;
        let conn = TcpStream::connect_timeout(
            &SocketAddr::V4(SocketAddrV4::new(CLUSTER_IP, 80)),
            TIMEOUT,
        )?;
        open_tx.send(conn.local_addr()?.port())?;
        let _ = done_rx.recv_timeout(Duration::from_secs(30));
        drop(conn);
        Ok(())
    });
    let open_port = open_rx.recv_timeout(Duration::from_secs(5))?;
    // Closed TCP connections and a UDP exchange.
    s.send_ok(Proto::Tcp, 80, 3)?;
    s.send_ok(Proto::Udp, 53, 1)?;
    let entries = |s: &Scenario| -> Result<Vec<lb_common::CtKey>> {
        Ok(weir::dataplane::maps::Maps::open_pinned(&s.agent.bpffs)?
            .ct
            .keys()
            .filter_map(Result::ok)
            .collect())
    };
    assert!(entries(&s)?.len() >= 10, "5 flows, 2 entries each");

    // Within a few GC rounds only the open stream's two entries are left.
    let deadline = Instant::now() + Duration::from_secs(10);
    let left = loop {
        let left = entries(&s)?;
        if left.len() == 2 || Instant::now() > deadline {
            break left;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let _ = done_tx.send(());
    let _ = holder.join();
    assert_eq!(left.len(), 2, "{left:?}");
    assert!(
        left.iter()
            .all(|k| k.sport == open_port || k.dport == open_port),
        "{left:?}"
    );
    Ok(())
}

/// Bytes of a CT_V1 entry as an older build wrote them: the key, and the
/// value without the SNAT fields that CT_V2 appended.
fn ct_v1_entry(key: &lb_common::CtKey, value: &lb_common::CtValue) -> (Vec<u8>, Vec<u8>) {
    let mut k = Vec::new();
    k.extend_from_slice(&key.saddr);
    k.extend_from_slice(&key.daddr);
    k.extend_from_slice(&key.sport.to_ne_bytes());
    k.extend_from_slice(&key.dport.to_ne_bytes());
    k.extend_from_slice(&[key.proto, 0, 0, 0]);
    let mut v = Vec::new();
    v.extend_from_slice(&value.backend_id.to_ne_bytes());
    v.extend_from_slice(&value.service_id.to_ne_bytes());
    v.extend_from_slice(&value.nat_addr);
    v.extend_from_slice(&value.nat_port.to_ne_bytes());
    v.extend_from_slice(&[value.kind, value.flags]);
    v.extend_from_slice(&value.last_seen_ns.to_ne_bytes());
    (k, v)
}

fn hex_args(bytes: &[u8]) -> Vec<String> {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn pins_of_another_layout_are_recreated_with_their_entries_and_old_versions_migrated() -> Result<()>
{
    let mut s = setup()?;
    let client = s.sandbox.pod("client").netns.name.clone();
    let ids_before = s.agent.programmed()?;
    // A live TCP connection whose conntrack entries must survive the resize.
    let (go, wait) = std::sync::mpsc::channel::<()>();
    let stream = std::thread::spawn(move || -> Result<(String, String)> {
        enter(&client)?;
        let vip = SocketAddr::V4(SocketAddrV4::new(CLUSTER_IP, 80));
        let mut conn = TcpStream::connect_timeout(&vip, TIMEOUT)?;
        conn.set_read_timeout(Some(TIMEOUT))?;
        let mut reader = BufReader::new(conn.try_clone()?);
        let mut greeting = String::new();
        reader.read_line(&mut greeting)?;
        wait.recv_timeout(MAX_RUN)?;
        writeln!(conn, "1")?;
        let mut line = String::new();
        reader.read_line(&mut line)?;
        Ok((greeting, line))
    });
    let deadline = Instant::now() + Duration::from_secs(5);
    while ct_len(&s)? < 2 {
        assert!(
            Instant::now() < deadline,
            "the connection made no conntrack entries"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let ct_pin = s.agent.bpffs.join(lb_common::MAP_CT);
    let ct_capacity = aya::maps::MapInfo::from_pin(&ct_pin)?.max_entries();
    s.agent.kill();

    // An older build's conntrack pin with one flow in it.
    let key = lb_common::CtKey {
        saddr: [198, 18, 99, 1],
        daddr: [198, 19, 0, 99],
        sport: 40000u16.to_be(),
        dport: 80u16.to_be(),
        proto: 6,
        _pad: [0; 3],
    };
    let value = lb_common::CtValue {
        backend_id: 7,
        service_id: 3,
        nat_addr: [198, 19, 0, 99],
        nat_port: 80u16.to_be(),
        kind: 0,
        flags: 0,
        // Fresh, so that the agent's first conntrack GC keeps it.
        last_seen_ns: weir::inspect::monotonic_ns(),
        snat_addr: [0; 4],
        snat_port: 0,
        _pad: 0,
    };
    let v1 = s.agent.bpffs.join("CT_V1");
    let v1_path = v1.to_string_lossy().into_owned();
    run(
        "bpftool",
        &[
            "map", "create", &v1_path, "type", "lru_hash", "key", "16", "value", "24", "entries",
            "64", "name", "CT_V1",
        ],
    )?;
    let (k, v) = ct_v1_entry(&key, &value);
    let mut update = vec!["map", "update", "pinned", &v1_path, "key", "hex"]
        .into_iter()
        .map(String::from)
        .collect::<Vec<_>>();
    update.extend(hex_args(&k));
    update.extend(["value".into(), "hex".into()]);
    update.extend(hex_args(&v));
    run(
        "bpftool",
        &update.iter().map(String::as_str).collect::<Vec<_>>(),
    )?;

    // The next agent is configured with other capacities.
    s.agent.set_extra(&[
        "--conntrack-min=300000",
        "--conntrack-max-per-core=1",
        "--max-services=1000",
    ]);
    let synced_before = s.agent.log_text().matches(" synced").count();
    s.agent.start_again()?;
    let deadline = Instant::now() + Duration::from_secs(15);
    while s.agent.log_text().matches(" synced").count() <= synced_before {
        if Instant::now() > deadline {
            bail!(
                "the agent did not sync after the restart; log:\n{}",
                s.agent.log_text()
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let log = s.agent.log_text();
    for expected in [
        format!("map CT_V2: pinned map differs (capacity {ct_capacity} (want 300000)); recreated"),
        "map SERVICES_V1: pinned map differs (capacity 131072 (want 2000)); recreated".into(),
        "map CT_V1: pin of an older layout, not used by this build; removed".into(),
        "map CT_V2: 1 entries carried over from the old CT_V1 (0 did not fit)".into(),
    ] {
        assert!(
            log.contains(&expected),
            "no {expected:?} in the log:\n{log}"
        );
    }
    assert!(!v1.exists(), "the CT_V1 pin is still there");
    assert_eq!(
        aya::maps::MapInfo::from_pin(&ct_pin)?.max_entries(),
        300_000
    );
    let maps = weir::dataplane::maps::Maps::open_pinned(&s.agent.bpffs)?;
    assert_eq!(maps.ct.get(&key, 0)?, value, "the CT_V1 entry as CT_V2");
    // Service and backend ids came through the resize, and so did the flow.
    assert!(
        s.agent.programmed()?.same_entries(&ids_before),
        "ids changed across the resize"
    );
    go.send(())?;
    let (greeting, line) = stream
        .join()
        .map_err(|_| anyhow::anyhow!("stream thread panicked"))??;
    let backend = greeting.split_whitespace().next().context("greeting")?;
    assert_eq!(
        line.trim(),
        format!("{backend} 1"),
        "the live connection broke"
    );
    Ok(())
}

fn ct_len(s: &Scenario) -> Result<usize> {
    let maps = weir::dataplane::maps::Maps::open_pinned(&s.agent.bpffs)?;
    Ok(maps.ct.keys().filter_map(Result::ok).count())
}

#[test]
fn a_restarted_agent_prunes_what_went_away_while_it_was_down_and_keeps_the_rest() -> Result<()> {
    let mut s = setup()?;
    let ports = [port("http", 80, "TCP", 8080)];
    let gone_ip = std::net::Ipv4Addr::new(198, 19, 0, 11);
    s.manifests
        .write("gone.yaml", &service(NS, "gone", gone_ip, &ports))?;
    s.manifests.write(
        "gone-slice.yaml",
        &slice(NS, "gone-1", "gone", &ports, &[(s.backend_ip("be3"), true)]),
    )?;
    s.agent.wait_frontend("198.19.0.11:80/TCP", 1)?;
    let before = s.agent.programmed()?;
    assert_eq!(before.services.len(), 3);

    s.agent.kill();
    s.manifests.remove("gone.yaml")?;
    s.manifests.remove("gone-slice.yaml")?;
    s.agent.start_again_synced()?;

    let after = s.agent.programmed()?;
    let steady = |p: &weir::dataplane::sync::Programmed| {
        p.services
            .iter()
            .filter(|(k, _)| k.addr == std::net::IpAddr::from(CLUSTER_IP))
            .map(|(k, v)| (*k, v.value.id, v.backend_ids.clone()))
            .collect::<Vec<_>>()
    };
    assert_eq!(after.services.len(), 2, "{after:?}");
    assert!(
        after
            .services
            .keys()
            .all(|k| k.addr != std::net::IpAddr::from(gone_ip)),
        "the removed service is still programmed"
    );
    assert_eq!(steady(&after), steady(&before), "the kept services changed");
    let replies = requests(
        &s.sandbox.pod("client").netns.name,
        Proto::Tcp,
        SocketAddrV4::new(gone_ip, 80),
        2,
        Duration::from_millis(500),
    )?;
    assert!(
        replies.iter().all(Result::is_err),
        "the removed service still answers: {replies:?}"
    );
    Ok(())
}
