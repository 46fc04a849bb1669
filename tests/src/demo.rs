//! `cargo xtask demo`: a sandbox node with a client and three backend pods,
//! the agent on manifests/demo, TCP and UDP traffic to the demo ClusterIP, a
//! table of who answered, `weir service list` and a bpftool dump. Exits
//! non-zero if any request failed. Everything is torn down at the end.
use std::{collections::BTreeMap, net::Ipv4Addr};

use crate::{
    agent::weir_bin,
    cmd::run as output,
    echo::{requests, Proto},
    scenario::{CLUSTER_IP, TIMEOUT},
    Agent, Sandbox,
};
use anyhow::{bail, Result};

const REQUESTS: usize = 30;

pub fn run() -> Result<()> {
    let bin = weir_bin()?;
    println!("Sandbox: node namespace, client 198.18.1.2, backends be1..be3 198.18.1.11-13");
    let sandbox = Sandbox::standard(3)?;
    let _servers = sandbox.start_echo_servers(&[(Proto::Tcp, 8080), (Proto::Udp, 5353)])?;
    let manifests = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests/demo");
    let mut agent = Agent::start(
        &sandbox.node.name,
        &manifests,
        &format!("demo-{}", sandbox.tag),
        &[],
    )?;
    println!(
        "Agent: weir agent --source dir:{} (in the node namespace)",
        manifests.display()
    );
    agent.wait_frontend("198.19.0.10:80/TCP", 3)?;
    agent.wait_frontend("198.19.0.10:53/UDP", 3)?;

    let client = &sandbox.pod("client").netns.name;
    let mut table: BTreeMap<String, [usize; 2]> = BTreeMap::new();
    let mut errors = [0usize; 2];
    let mut wrong_peer = 0;
    for (col, (proto, port)) in [(Proto::Tcp, 80), (Proto::Udp, 53)].into_iter().enumerate() {
        let addr = std::net::SocketAddrV4::new(CLUSTER_IP, port);
        for reply in requests(client, proto, addr, REQUESTS, TIMEOUT)? {
            match reply {
                Ok(r) => {
                    table.entry(r.backend.clone()).or_default()[col] += 1;
                    if r.peer != Ipv4Addr::new(198, 18, 1, 2) {
                        wrong_peer += 1;
                    }
                }
                Err(_) => errors[col] += 1,
            }
        }
    }
    println!("\n{REQUESTS} TCP requests to {CLUSTER_IP}:80 and {REQUESTS} UDP requests to {CLUSTER_IP}:53:");
    println!("{:<10} {:>5} {:>5}", "BACKEND", "TCP", "UDP");
    for (backend, [tcp, udp]) in &table {
        println!("{backend:<10} {tcp:>5} {udp:>5}");
    }
    println!("{:<10} {:>5} {:>5}", "errors", errors[0], errors[1]);

    let bpffs = agent.bpffs.display().to_string();
    println!("\n$ weir service list --bpffs {bpffs}");
    print!(
        "{}",
        output(
            &bin.to_string_lossy(),
            &["service", "list", "--bpffs", &bpffs]
        )
        .unwrap_or_else(|e| format!("{e:#}\n"))
    );
    let services = format!("{bpffs}/{}", lb_common::MAP_SERVICES);
    println!("\n$ bpftool map dump pinned {services}");
    print!(
        "{}",
        output("bpftool", &["map", "dump", "pinned", &services])
            .unwrap_or_else(|e| format!("{e:#}\n"))
    );

    drop(agent);
    drop(sandbox);
    if errors.iter().sum::<usize>() > 0 || wrong_peer > 0 {
        bail!("demo failed: {} TCP and {} UDP requests failed, {wrong_peer} backends saw a rewritten client address", errors[0], errors[1]);
    }
    println!("\ndemo ok: every request answered, every backend saw the client's own address");
    Ok(())
}
