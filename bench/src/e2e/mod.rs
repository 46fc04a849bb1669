//! Section 2: end to end in network namespaces. weir-tests' sandbox (a node
//! namespace routing for a client pod and two backend pods behind veths)
//! plus an external client behind an uplink veth, with N services
//! programmed, one of which leads to the real backends. The load runs
//! against its ClusterIP and its NodePort (on the node's address) from the
//! client pod, and against the NodePort from the external client. The same
//! topology is programmed three ways: Weir's agent (hooks on the pod devices
//! and the uplink), kube-proxy's iptables rules and its nftables rules
//! (loaded into the node namespace, agent not running). Each (dataplane,
//! size) gets a fresh topology, so no state carries over.
pub mod load;
pub mod server;
pub mod socket_lb;
pub mod uplink;

use std::{net::SocketAddrV4, process::Command, time::Duration};

use anyhow::{bail, Context, Result};
use weir_tests::{manifests::ManifestDir, Agent, Sandbox};

use crate::{
    kubeproxy,
    report::{Plot, Section, Series, Table},
    stats::{ratio, thousands},
    workload::{self, Workload, NODE_IP, TCP_NODE_PORT, TCP_PORT, TCP_TARGET, UDP_NODE_PORT},
    workload::{UDP_PORT, UDP_TARGET},
    Mode,
};
use load::{Outcome, Test};

const BACKENDS: u8 = 2;
pub(crate) const CONCURRENCY: usize = 4;

struct Params {
    sizes: Vec<usize>,
    duration: Duration,
}

fn params(mode: Mode) -> Params {
    match mode {
        Mode::Quick => Params {
            sizes: vec![1, 1_000, 10_000],
            duration: Duration::from_secs(2),
        },
        Mode::Full => Params {
            sizes: vec![1, 1_000, 10_000],
            // 4 tests x 3 frontends x 3 dataplanes x 3 sizes: 108 figures.
            duration: Duration::from_secs(5),
        },
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dataplane {
    Weir,
    /// Weir with `--socket-lb=all` (only in the socket LB rows).
    WeirSocketLb,
    Iptables,
    Nftables,
}

impl Dataplane {
    pub const ALL: [Dataplane; 3] = [Dataplane::Weir, Dataplane::Iptables, Dataplane::Nftables];

    pub fn name(self) -> &'static str {
        match self {
            Dataplane::Weir => "Weir",
            Dataplane::WeirSocketLb => "Weir with socket LB",
            Dataplane::Iptables => "kube-proxy iptables",
            Dataplane::Nftables => "kube-proxy nftables",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Frontend {
    ClusterIp,
    NodePort,
    /// The NodePort from a client outside the node, through the uplink.
    NodePortExternal,
}

impl Frontend {
    const ALL: [Frontend; 3] = [
        Frontend::ClusterIp,
        Frontend::NodePort,
        Frontend::NodePortExternal,
    ];

    fn name(self) -> &'static str {
        match self {
            Frontend::ClusterIp => "ClusterIP",
            Frontend::NodePort => "NodePort (from a pod)",
            Frontend::NodePortExternal => "NodePort (from outside)",
        }
    }

    fn addr(self, w: &Workload, test: Test) -> SocketAddrV4 {
        let udp = test.udp();
        match (self, udp) {
            (Frontend::ClusterIp, false) => SocketAddrV4::new(w.target_ip(), TCP_PORT),
            (Frontend::ClusterIp, true) => SocketAddrV4::new(w.target_ip(), UDP_PORT),
            (Frontend::NodePort | Frontend::NodePortExternal, false) => {
                SocketAddrV4::new(NODE_IP, TCP_NODE_PORT)
            }
            (Frontend::NodePort | Frontend::NodePortExternal, true) => {
                SocketAddrV4::new(NODE_IP, UDP_NODE_PORT)
            }
        }
    }
}

/// One measurement.
struct Cell {
    dataplane: Dataplane,
    size: usize,
    frontend: Frontend,
    test: Test,
    outcome: Outcome,
}

pub fn run(mode: Mode) -> Result<Section> {
    let p = params(mode);
    let mut cells = Vec::new();
    for &size in &p.sizes {
        for dataplane in Dataplane::ALL {
            eprintln!(
                "bench: end to end, {} with {size} services",
                dataplane.name()
            );
            let run = Programmed::start(dataplane, size)
                .with_context(|| format!("{} with {size} services", dataplane.name()))?;
            for frontend in Frontend::ALL {
                for test in Test::ALL {
                    let addr = frontend.addr(&run.workload, test);
                    let client = match frontend {
                        Frontend::NodePortExternal => &run.external,
                        _ => &run.client,
                    };
                    let received = || run.received();
                    let outcome =
                        load::run(client, test, addr, CONCURRENCY, p.duration, &received)?;
                    if outcome.per_second == 0.0 {
                        // Reported as "failed" in the tables; the run goes on.
                        eprintln!(
                            "bench: {} {} {}: nothing got through ({} errors)",
                            dataplane.name(),
                            frontend.name(),
                            test.name(),
                            outcome.errors
                        );
                    }
                    cells.push(Cell {
                        dataplane,
                        size,
                        frontend,
                        test,
                        outcome,
                    });
                }
            }
        }
    }
    let direct = direct_baseline(p.duration)?;
    let sock = socket_lb::run(&p.sizes, p.duration)?;
    let mut section = section(&p, &cells, &direct);
    section.tables.insert(
        2,
        (
            "Socket LB (`--socket-lb=all`): through the ClusterIP from a pod and from the \
             node's own network namespace, beside Weir's tc path (which has no hook for the \
             host's own sockets: its host rows fail) and kube-proxy (OUTPUT hooks):"
                .into(),
            sock,
        ),
    );
    Ok(section)
}

/// A sandbox with servers and one dataplane programmed; torn down on drop
/// (fields drop in order: agent, manifests, servers, namespaces).
struct Programmed {
    _agent: Option<Agent>,
    _manifests: ManifestDir,
    _servers: Vec<server::Servers>,
    _sandbox: Sandbox,
    _external: weir_tests::netns::Netns,
    client: String,
    external: String,
    /// The node's network namespace (the host's, for the socket LB rows).
    node: String,
    workload: Workload,
}

impl Programmed {
    /// Stream datagrams all backends received so far.
    fn received(&self) -> u64 {
        self._servers.iter().map(server::Servers::received).sum()
    }

    fn start(dataplane: Dataplane, size: usize) -> Result<Self> {
        Self::start_with(dataplane, size, None)
    }

    /// As `start`; Weir with socket LB attaches its socket programs to `cgroup`.
    fn start_with(
        dataplane: Dataplane,
        size: usize,
        cgroup: Option<&std::path::Path>,
    ) -> Result<Self> {
        let sandbox = Sandbox::standard(BACKENDS)?;
        tune_client(&sandbox)?;
        let external_ns = uplink::external_client(&sandbox.node.name, &sandbox.tag)?;
        sysctl(&external_ns.name, CLIENT_SYSCTLS)?;
        let servers = backends(&sandbox)?;
        let workload = Workload {
            target_endpoints: sandbox
                .pods
                .iter()
                .filter(|p| p.name.starts_with("be"))
                .map(|p| p.ip)
                .collect(),
            ..Workload::new(size, 2)
        };
        let manifests = ManifestDir::new(&format!("{}-bench", sandbox.tag))?;
        let node = sandbox.node.name.clone();
        let mut agent = None;
        match dataplane {
            Dataplane::Weir | Dataplane::WeirSocketLb => {
                workload.write(&manifests.path)?;
                let expected = workload::desired(&workload.state()).frontends.len();
                let devices = format!("--devices={}", uplink::UPLINK);
                let mut args = vec![devices];
                if let (Dataplane::WeirSocketLb, Some(cgroup)) = (dataplane, cgroup) {
                    args.push("--socket-lb=all".into());
                    args.push(format!("--cgroup-root={}", cgroup.display()));
                }
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                let mut a = Agent::start(&node, &manifests.path, &sandbox.tag, &args)?;
                a.wait_for(
                    &format!("{expected} frontends"),
                    Duration::from_secs(300),
                    |rows| rows.len() >= expected,
                )?;
                a.wait_attached("lxcclient")?;
                a.wait_attached(uplink::UPLINK)?;
                agent = Some(a);
            }
            Dataplane::Iptables | Dataplane::Nftables => {
                let state = workload.state();
                let cfg = workload::proxy_config();
                let (file, text, cmd): (_, _, &[&str]) = if dataplane == Dataplane::Iptables {
                    (
                        "rules.iptables",
                        kubeproxy::iptables::rules(&state, &cfg),
                        &["iptables-restore"],
                    )
                } else {
                    (
                        "rules.nft",
                        kubeproxy::nftables::rules(&state, &cfg),
                        &["nft", "-f"],
                    )
                };
                let path = manifests.path.join(file);
                std::fs::write(&path, text)?;
                in_node(&node, cmd, &path)?;
            }
        }
        let client = sandbox.pod("client").netns.name.clone();
        let external = external_ns.name.clone();
        Ok(Self {
            node,
            _agent: agent,
            _manifests: manifests,
            _servers: servers,
            _sandbox: sandbox,
            _external: external_ns,
            client,
            external,
            workload,
        })
    }
}

/// Bench servers on the target port in every backend pod.
fn backends(sandbox: &Sandbox) -> Result<Vec<server::Servers>> {
    sandbox
        .pods
        .iter()
        .filter(|p| p.name.starts_with("be"))
        .map(|p| server::Servers::start(&p.netns.name, TCP_TARGET, UDP_TARGET, 2 * CONCURRENCY + 2))
        .collect()
}

/// Many short connections from one client: a wide port range and reuse of
/// TIME_WAIT ports (sysctls of the client pod's own namespace).
fn tune_client(sandbox: &Sandbox) -> Result<()> {
    sysctl(&sandbox.pod("client").netns.name, CLIENT_SYSCTLS)
}

pub(crate) const CLIENT_SYSCTLS: &[&str] = &[
    "net.ipv4.ip_local_port_range=10000 65000",
    "net.ipv4.tcp_tw_reuse=1",
];

pub(crate) fn sysctl(ns: &str, settings: &[&str]) -> Result<()> {
    let out = Command::new("nsenter")
        .arg(format!("--net={}", weir_tests::netns::path(ns).display()))
        .args(["--", "sysctl", "-qw"])
        .args(settings)
        .output()?;
    if !out.status.success() {
        bail!("sysctl in {ns}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

/// Runs `cmd FILE` (iptables-restore reads stdin) in the node namespace.
fn in_node(node: &str, cmd: &[&str], file: &std::path::Path) -> Result<()> {
    let mut c = Command::new("nsenter");
    c.arg(format!("--net={}", weir_tests::netns::path(node).display()))
        .arg("--")
        .args(cmd);
    if cmd[0] == "iptables-restore" {
        c.stdin(std::fs::File::open(file)?);
    } else {
        c.arg(file);
    }
    let out = c
        .output()
        .with_context(|| format!("running {}", cmd.join(" ")))?;
    if !out.status.success() {
        bail!(
            "{} failed: {}",
            cmd.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// The client straight to one backend pod (no service, nothing programmed):
/// what the namespaces and veths cost without any load balancer.
fn direct_baseline(duration: Duration) -> Result<Vec<(Test, Outcome)>> {
    eprintln!("bench: end to end, direct to a pod (no service)");
    let sandbox = Sandbox::standard(1)?;
    tune_client(&sandbox)?;
    let servers = backends(&sandbox)?;
    let received = || servers.iter().map(server::Servers::received).sum();
    let client = sandbox.pod("client").netns.name.clone();
    let be = sandbox.pod("be1").ip;
    let mut out = Vec::new();
    for test in Test::ALL {
        let port = if test.udp() { UDP_TARGET } else { TCP_TARGET };
        out.push((
            test,
            load::run(
                &client,
                test,
                SocketAddrV4::new(be, port),
                CONCURRENCY,
                duration,
                &received,
            )?,
        ));
    }
    Ok(out)
}

/// Which build of the agent the harness runs ($WEIR_BIN or the debug build).
pub fn agent_build() -> String {
    match weir_tests::agent::weir_bin() {
        Ok(p) if p.to_string_lossy().contains("/release/") => "release build".into(),
        Ok(p) => format!("{}, not a release build", p.display()),
        Err(_) => "not found".into(),
    }
}

fn find(cells: &[Cell], d: Dataplane, size: usize, f: Frontend, t: Test) -> Option<&Outcome> {
    cells
        .iter()
        .find(|c| c.dataplane == d && c.size == size && c.frontend == f && c.test == t)
        .map(|c| &c.outcome)
}

fn section(p: &Params, cells: &[Cell], direct: &[(Test, Outcome)]) -> Section {
    let mut rate = Table::new(&[
        "frontend",
        "test",
        "services",
        "Weir",
        "iptables",
        "nftables",
        "Weir / iptables",
        "Weir / nftables",
    ]);
    let mut latency = Table::new(&[
        "frontend",
        "test",
        "services",
        "Weir p50 / p99",
        "iptables p50 / p99",
        "nftables p50 / p99",
    ]);
    let us = |o: Option<&Outcome>| match o {
        Some(o) if o.p50_us == 0.0 && o.per_second > 0.0 => "-".into(),
        Some(o) if o.per_second > 0.0 => format!("{:.0} / {:.0} µs", o.p50_us, o.p99_us),
        Some(_) => "failed".into(),
        None => "-".into(),
    };
    let rate_text = |o: Option<&Outcome>| match o {
        Some(o) if o.per_second > 0.0 => thousands(o.per_second),
        Some(o) => format!("failed ({} errors)", o.errors),
        None => "-".into(),
    };
    let per_s = |o: Option<&Outcome>| o.map_or(0.0, |o| o.per_second);
    let mut errors = 0;
    for f in Frontend::ALL {
        for t in Test::ALL {
            if t == Test::UdpStream {
                // One-way: there is no transaction to time.
                for &size in &p.sizes {
                    let [w, i, n] = Dataplane::ALL.map(|d| find(cells, d, size, f, t));
                    rate.row(vec![
                        f.name().into(),
                        t.name().into(),
                        thousands(size as f64),
                        rate_text(w),
                        rate_text(i),
                        rate_text(n),
                        ratio(per_s(w), per_s(i)),
                        ratio(per_s(w), per_s(n)),
                    ]);
                }
                continue;
            }
            for &size in &p.sizes {
                let [w, i, n] = Dataplane::ALL.map(|d| find(cells, d, size, f, t));
                let (rw, ri, rn) = (per_s(w), per_s(i), per_s(n));
                rate.row(vec![
                    f.name().into(),
                    t.name().into(),
                    thousands(size as f64),
                    rate_text(w),
                    rate_text(i),
                    rate_text(n),
                    ratio(rw, ri),
                    ratio(rw, rn),
                ]);
                latency.row(vec![
                    f.name().into(),
                    t.name().into(),
                    thousands(size as f64),
                    us(w),
                    us(i),
                    us(n),
                ]);
            }
        }
    }
    for c in cells {
        errors += c.outcome.errors;
    }
    let mut base = Table::new(&["test", "rate", "p50 / p99"]);
    for (t, o) in direct {
        let latency = if *t == Test::UdpStream {
            "-".to_string()
        } else {
            format!("{:.0} / {:.0} µs", o.p50_us, o.p99_us)
        };
        base.row(vec![t.name().into(), thousands(o.per_second), latency]);
    }
    let series = |f: Frontend, t: Test| {
        Dataplane::ALL
            .iter()
            .map(|&d| Series {
                name: format!("{} ({})", d.name(), f.name()),
                points: p
                    .sizes
                    .iter()
                    .filter_map(|&s| find(cells, d, s, f, t).map(|o| (s as f64, o.per_second)))
                    .collect(),
            })
            .collect::<Vec<_>>()
    };
    let mut crr = series(Frontend::ClusterIp, Test::TcpCrr);
    crr.extend(series(Frontend::NodePort, Test::TcpCrr));
    crr.extend(series(Frontend::NodePortExternal, Test::TcpCrr));
    let mut udp = series(Frontend::ClusterIp, Test::UdpStream);
    udp.extend(series(Frontend::NodePort, Test::UdpStream));
    udp.extend(series(Frontend::NodePortExternal, Test::UdpStream));
    Section {
        title: "2. End to end in network namespaces".into(),
        intro: format!(
            "A node namespace routing for a client pod and {BACKENDS} backend pods over veths \
             (weir-tests' sandbox). N services are programmed; one of them, in the middle of \
             kube-proxy's chain order, leads to the two backends, which run small TCP and UDP \
             servers (a fixed pool of threads each). The client runs {CONCURRENCY} threads for \
             {secs} s per figure: *new TCP connections/s* (connect, one request, answer, \
             close), *requests/s on kept-alive TCP* (one connection per thread), *UDP \
             requests/s* (request and answer: two packets through the load balancer), \
             *UDP packets/s received, one way* (each thread sends 16-byte datagrams on one \
             flow as fast as it can; the figure is what the backends' servers counted, so \
             packets dropped anywhere on the way do not count), and the p50/p99 latency of \
             the transactions. ClusterIP: the service address; NodePort: the node's address \
             198.18.0.1 and the nodePort, from the client pod, and from a client outside \
             the node, in a namespace behind the node's uplink veth (`uplink0`). Weir: the \
             agent ({agent}) with `--devices=uplink0`, so it has tc on the pod devices and \
             `weir_xdp` on the uplink (the from-outside rows). \
             kube-proxy: its rules (bench/src/kubeproxy/) \
             loaded into the node namespace, agent not running. Everything shares the \
             machine's cores: the client, the servers and the kernel's forwarding.",
            secs = p.duration.as_secs(),
            agent = agent_build(),
        ),
        tables: vec![
            ("Rates (higher is better):".into(), rate),
            ("Latency of the same transactions (lower is better):".into(), latency),
            (
                "For scale: the client straight to one backend pod (no service, nothing programmed):"
                    .into(),
                base,
            ),
        ],
        notes: vec![format!("Failed transactions over the whole section: {errors}.")],
        plots: vec![
            Plot {
                file: "e2e-connections.png".into(),
                title: "New TCP connections/s against services programmed".into(),
                x_label: "services".into(),
                y_label: "connections/s".into(),
                log_x: true,
                series: crr,
            },
            Plot {
                file: "e2e-udp.png".into(),
                title: "UDP packets/s received (one way) against services programmed".into(),
                x_label: "services".into(),
                y_label: "packets/s".into(),
                log_x: true,
                series: udp,
            },
        ],
    }
}
