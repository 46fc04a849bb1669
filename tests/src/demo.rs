//! `cargo xtask demo`: the card's whole job in two minutes. Two nodes whose
//! uplinks hang on a Linux bridge (as kind wires them), an external client
//! on the bridge, pods on both nodes, an agent per node reading a manifest
//! directory with no Node objects (NodePorts and the ingress are served on
//! the uplinks' addresses). It shows, in one table:
//! - ClusterIP over TCP and UDP from a pod;
//! - a NodePort from the external client to backends that all run on the
//!   other node (XDP: DNAT + SNAT + XDP_TX, with the uplink's mode printed);
//! - an Ingress host/path route through the embedded proxy.
//!
//! Then `weir service list` and a BTF `bpftool map dump`. Exits non-zero if
//! any request failed. Everything is torn down at the end (Drop).
//!
//! The bridge ports run an XDP pass program, as Cilium's kind CI attaches
//! one: that is what lets a veth deliver native XDP frames, and the agent
//! sees it and picks native XDP (without it, `--xdp-mode auto` leaves the
//! uplink to tc; tests/bridged.rs runs both).
use std::{collections::BTreeMap, net::Ipv4Addr, time::Duration};

use anyhow::{bail, Context, Result};

use crate::{
    cluster::{node_ip, Cluster},
    cmd::run as run_cmd,
    echo::{EchoReply, Proto},
    http_backend::HttpBackend,
    ingress::{curl, ingress, ingress_class},
    lan::FarSide,
    manifests::{port, service_with, slice_eps},
};

const NS: &str = "demo";
const ECHO_IP: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 10);
const REMOTE_IP: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 11);
const WEB_IP: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 12);
const NODE_PORT: u16 = 30080;
const HOST: &str = "demo.example";
const REQUESTS: usize = 30;

/// One row of the table.
struct Row {
    what: String,
    ok: usize,
    sent: usize,
    answered: BTreeMap<String, usize>,
    /// What the backends saw as the client, when it matters.
    note: String,
}

impl Row {
    fn of(what: String, replies: Vec<Result<EchoReply>>, peer: Ipv4Addr, peer_is: &str) -> Row {
        let sent = replies.len();
        let mut answered = BTreeMap::new();
        let mut wrong = 0;
        for r in replies.iter().flatten() {
            *answered.entry(r.backend.clone()).or_insert(0) += 1;
            wrong += usize::from(r.peer != peer);
        }
        let ok = replies.iter().flatten().count() - wrong;
        let note = if wrong == 0 {
            format!("backends saw {peer} ({peer_is})")
        } else {
            format!("{wrong} backends saw another client address than {peer}")
        };
        Row {
            what,
            ok,
            sent,
            answered,
            note,
        }
    }
}

pub fn run() -> Result<()> {
    println!("Two nodes on a bridge (198.18.100.0/24), an external client 198.18.100.100,");
    println!("pods: client and be1 on node-1, be2 and be3 on node-2; no Node objects.");
    let mut c = Cluster::build(2, FarSide::XdpPass, false)?;
    c.add_pod(1, "client")?;
    c.add_pod(1, "be1")?;
    c.add_pod(2, "be2")?;
    c.add_pod(2, "be3")?;
    for be in ["be1", "be2", "be3"] {
        c.serve(be, &[(Proto::Tcp, 8080), (Proto::Udp, 5353)])?;
    }
    let _web: Vec<HttpBackend> = ["be1", "be2"]
        .iter()
        .map(|be| HttpBackend::start(&c.pod(be).netns.name, be, 8081))
        .collect::<Result<_>>()?;
    write_manifests(&c)?;
    c.start_agents(&["--ingress"])?;
    c.wait_frontend(&format!("{ECHO_IP}:80/TCP"), 3)?;
    c.wait_frontend(&format!("{ECHO_IP}:53/UDP"), 3)?;
    c.agent(1)
        .wait_frontend(&format!("{}:{NODE_PORT}/TCP", node_ip(1)), 2)?;
    let status = c.agent(1).cli_json(&["status"])?;
    let uplink = &status["agent"]["uplinks"][0];
    println!(
        "Agents: weir agent --source dir:... --devices=eth0 --ingress (one per node)\nnode-1 uplink eth0: {} ({})",
        uplink["mode"].as_str().unwrap_or("?"),
        uplink["reason"].as_str().unwrap_or("?")
    );

    let client = c.pod("client").ip;
    let mut rows = Vec::new();
    for (proto, port) in [(Proto::Tcp, 80), (Proto::Udp, 53)] {
        rows.push(Row::of(
            format!("ClusterIP {ECHO_IP}:{port}/{proto:?} from pod client"),
            c.requests("client", proto, ECHO_IP, port, REQUESTS)?,
            client,
            "the pod",
        ));
    }
    rows.push(Row::of(
        format!("NodePort {}:{NODE_PORT}/Tcp from outside", node_ip(1)),
        c.ext_requests(Proto::Tcp, node_ip(1), NODE_PORT, REQUESTS)?,
        node_ip(1),
        "node-1, which SNATed to node-2's backends",
    ));
    rows.push(ingress_row(&c)?);

    println!("\n{:<58} {:>7}  ANSWERED BY", "REQUEST", "OK/SENT");
    for r in &rows {
        let by: Vec<String> = r.answered.iter().map(|(b, n)| format!("{b} {n}")).collect();
        println!(
            "{:<58} {:>3}/{:<3}  {}",
            r.what,
            r.ok,
            r.sent,
            by.join(", ")
        );
        println!("{:<58}           {}", "", r.note);
    }

    println!("\n$ weir service list   (node-1)");
    print!("{}", c.agent(1).cli(&["service", "list"])?);
    let services = c.agent(1).bpffs.join(lb_common::MAP_SERVICES);
    let services = services.to_string_lossy();
    println!("\n$ bpftool map dump pinned {services}   (first entry)");
    let dump = run_cmd("bpftool", &["map", "dump", "pinned", &services])
        .unwrap_or_else(|e| format!("{e:#}\n"));
    let first: Vec<&str> = dump.lines().take_while(|l| *l != "    },{").collect();
    println!("{}\n    }}, ...]", first.join("\n"));

    let failed: usize = rows.iter().map(|r| r.sent - r.ok).sum();
    if failed > 0 {
        bail!(
            "demo failed: {failed} requests failed or reached a backend with the wrong client address\n{}",
            c.agent_logs()
        );
    }
    println!("\ndemo ok: every request answered, every backend saw the client address it should");
    Ok(())
}

/// Ingress host/path route: the external client to node-1's address on :80,
/// handed to the embedded proxy by sk_lookup. Retried until the route is in
/// (the proxy reads the same directory), then REQUESTS/3 requests.
fn ingress_row(c: &Cluster) -> Result<Row> {
    let url = format!("http://{}/app/hello", node_ip(1));
    let host = format!("Host: {HOST}");
    let get = || curl(c.ext_ns(), &["-H", &host, &url]);
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while !get().is_ok_and(|r| r.status == 200) {
        if std::time::Instant::now() > deadline {
            bail!("the ingress route never answered 200\n{}", c.agent_logs());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let sent = REQUESTS / 3;
    let mut answered = BTreeMap::new();
    let mut ok = 0;
    for _ in 0..sent {
        if let Ok(r) = get() {
            if r.status == 200 {
                ok += 1;
                *answered.entry(r.backend()?).or_insert(0) += 1;
            }
        }
    }
    Ok(Row {
        what: format!("Ingress http://{HOST}/app/... via {}:80", node_ip(1)),
        ok,
        sent,
        answered,
        note: "through the embedded proxy (sk_lookup hand-off)".into(),
    })
}

fn write_manifests(c: &Cluster) -> Result<()> {
    let m = &c.manifests;
    let echo_ports = [port("http", 80, "TCP", 8080), port("dns", 53, "UDP", 5353)];
    m.write(
        "echo.yaml",
        &format!(
            "{}\n---\n{}",
            service_with(NS, "echo", ECHO_IP, &echo_ports, "", &[]),
            slice_eps(
                NS,
                "echo-1",
                "echo",
                &echo_ports,
                &c.ready_eps(&["be1", "be2", "be3"])
            )
        ),
    )?;
    let np_ports = [port("http", 80, "TCP", 8080).node_port(NODE_PORT)];
    m.write(
        "remote.yaml",
        &format!(
            "{}\n---\n{}",
            service_with(
                NS,
                "remote",
                REMOTE_IP,
                &np_ports,
                "  type: NodePort\n",
                &[]
            ),
            slice_eps(
                NS,
                "remote-1",
                "remote",
                &np_ports,
                &c.ready_eps(&["be2", "be3"])
            )
        ),
    )?;
    let web_ports = [port("http", 80, "TCP", 8081)];
    let rule = format!(
        "  ingressClassName: weir\n  rules:\n  - host: {HOST}\n    http:\n      paths:\n      - path: /app\n        pathType: Prefix\n        backend: {{service: {{name: web, port: {{number: 80}}}}}}\n"
    );
    m.write(
        "web.yaml",
        &format!(
            "{}\n---\n{}\n---\n{}\n---\n{}",
            service_with(NS, "web", WEB_IP, &web_ports, "", &[]),
            slice_eps(
                NS,
                "web-1",
                "web",
                &web_ports,
                &c.ready_eps(&["be1", "be2"])
            ),
            ingress_class("weir", false),
            ingress(NS, "web", &rule)
        ),
    )
    .context("writing the demo's manifests")
}
