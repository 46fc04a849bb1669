//! An external client: a namespace behind an uplink veth of the node
//! (node side `uplink0` 198.18.2.1/24, client 198.18.2.2/24), routing to the
//! node's NodePort address through it. This is the traffic Weir's uplink
//! XDP program handles (`weir_xdp`, which the agent attaches to `--devices`).
use std::net::Ipv4Addr;

use anyhow::{Context, Result};
use weir_tests::{cmd::ip, netns::Netns};

use crate::workload::NODE_IP;

/// The node's side of the uplink (the agent's `--devices`).
pub const UPLINK: &str = "uplink0";
const NODE_SIDE: Ipv4Addr = Ipv4Addr::new(198, 18, 2, 1);
const CLIENT: Ipv4Addr = Ipv4Addr::new(198, 18, 2, 2);

/// Creates the external client's namespace `{tag}-ext` wired to `node`.
pub fn external_client(node: &str, tag: &str) -> Result<Netns> {
    let ns = Netns::create(&format!("{tag}-ext"))?;
    let wire = || -> Result<()> {
        ip(&[
            "-n", node, "link", "add", UPLINK, "type", "veth", "peer", "name", "eth0", "netns",
            &ns.name,
        ])?;
        ip(&[
            "-n",
            node,
            "addr",
            "add",
            &format!("{NODE_SIDE}/24"),
            "dev",
            UPLINK,
        ])?;
        ip(&["-n", node, "link", "set", UPLINK, "up"])?;
        ip(&[
            "-n",
            &ns.name,
            "addr",
            "add",
            &format!("{CLIENT}/24"),
            "dev",
            "eth0",
        ])?;
        ip(&["-n", &ns.name, "link", "set", "eth0", "up"])?;
        let node_ip = format!("{NODE_IP}/32");
        let via = NODE_SIDE.to_string();
        ip(&["-n", &ns.name, "route", "add", &node_ip, "via", &via])?;
        Ok(())
    };
    wire().context("wiring the external client")?;
    Ok(ns)
}
