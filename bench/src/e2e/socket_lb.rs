//! Section 2's socket LB rows: new TCP connections/s and kept-alive
//! requests/s through the ClusterIP from a pod and from the node's own
//! network namespace, with Weir's tc path, Weir with socket LB
//! (`--socket-lb=all`), and kube-proxy's iptables and nftables modes (their
//! OUTPUT hooks serve the host namespace). For socket LB the benchmark
//! process joins a cgroup of its own (a child of the cgroup2 mount, never
//! its root) where the agent's socket programs are attached, and leaves it
//! afterwards. The node gets a default route via its uplink for these rows,
//! as real nodes have: kube-proxy's OUTPUT hooks translate only packets that
//! could be routed.
use std::{net::SocketAddrV4, path::Path, time::Duration};

use anyhow::{Context, Result};
use weir_tests::cgroup::{cgroup2_root, TestCgroup};

use super::{
    load::{self, Outcome, Test},
    Dataplane, Programmed, CONCURRENCY,
};
use crate::{
    report::Table,
    stats::{ratio, thousands},
    workload::TCP_PORT,
};

/// The dataplanes of these rows, in column order.
const PLANES: [Dataplane; 4] = [
    Dataplane::Weir,
    Dataplane::WeirSocketLb,
    Dataplane::Iptables,
    Dataplane::Nftables,
];
const TESTS: [Test; 2] = [Test::TcpCrr, Test::TcpRr];

/// Moves this process into `dir` (a cgroup v2 directory).
fn join(dir: &Path) -> Result<()> {
    std::fs::write(dir.join("cgroup.procs"), std::process::id().to_string())
        .with_context(|| format!("joining {}", dir.display()))
}

/// This process's cgroup v2 directory now.
fn own_cgroup() -> Result<std::path::PathBuf> {
    let text = std::fs::read_to_string("/proc/self/cgroup")?;
    let rel = text
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .context("no cgroup v2 line in /proc/self/cgroup")?;
    Ok(cgroup2_root()?.join(rel.trim_start_matches('/')))
}

struct Cell {
    plane: Dataplane,
    size: usize,
    host: bool,
    test: Test,
    outcome: Outcome,
}

/// Measures every (size, dataplane, client, test) and returns the table.
pub fn run(sizes: &[usize], duration: Duration) -> Result<Table> {
    let mut cells = Vec::new();
    for &size in sizes {
        for plane in PLANES {
            eprintln!(
                "bench: socket LB rows, {} with {size} services",
                plane.name()
            );
            let cgroup = match plane {
                Dataplane::WeirSocketLb => {
                    Some(TestCgroup::create(&weir_tests::netns::unique_tag())?)
                }
                _ => None,
            };
            let run = Programmed::start_with(plane, size, cgroup.as_ref().map(|c| c.path()))?;
            // A node has a default route (here: its uplink). kube-proxy's
            // OUTPUT hooks need one: without a route, connect() fails before
            // netfilter sees the packet.
            weir_tests::cmd::ip(&[
                "-n",
                &run.node,
                "route",
                "replace",
                "default",
                "dev",
                super::uplink::UPLINK,
            ])?;
            let home = own_cgroup()?;
            if let Some(c) = &cgroup {
                join(c.path())?;
            }
            let measured = (|| -> Result<()> {
                for host in [false, true] {
                    let ns = if host { &run.node } else { &run.client };
                    for test in TESTS {
                        let addr = SocketAddrV4::new(run.workload.target_ip(), TCP_PORT);
                        let outcome = load::run(ns, test, addr, CONCURRENCY, duration, &|| 0)?;
                        cells.push(Cell {
                            plane,
                            size,
                            host,
                            test,
                            outcome,
                        });
                    }
                }
                Ok(())
            })();
            if cgroup.is_some() {
                join(&home)?;
            }
            measured?;
            drop(run);
        }
    }
    let mut table = Table::new(&[
        "from",
        "test",
        "services",
        "Weir tc",
        "Weir socket LB",
        "iptables",
        "nftables",
        "socket LB / tc",
        "socket LB / iptables",
        "socket LB / nftables",
    ]);
    let rate = |o: Option<&Outcome>| match o {
        Some(o) if o.per_second > 0.0 => thousands(o.per_second),
        Some(o) => format!("failed ({} errors)", o.errors),
        None => "-".into(),
    };
    for host in [false, true] {
        for test in TESTS {
            for &size in sizes {
                let [tc, sock, ipt, nft] = PLANES.map(|p| {
                    cells
                        .iter()
                        .find(|c| {
                            c.plane == p && c.size == size && c.host == host && c.test == test
                        })
                        .map(|c| &c.outcome)
                });
                let per_s = |o: Option<&Outcome>| o.map_or(0.0, |o| o.per_second);
                table.row(vec![
                    if host { "the host" } else { "a pod" }.into(),
                    test.name().into(),
                    thousands(size as f64),
                    rate(tc),
                    rate(sock),
                    rate(ipt),
                    rate(nft),
                    ratio(per_s(sock), per_s(tc)),
                    ratio(per_s(sock), per_s(ipt)),
                    ratio(per_s(sock), per_s(nft)),
                ]);
            }
        }
    }
    Ok(table)
}
