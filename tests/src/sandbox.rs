//! One node namespace with pods behind host-side veths, wired as in
//! `node.rs`; the multi-node topology is `cluster.rs`.
use std::net::Ipv4Addr;

use anyhow::Result;

pub use crate::node::{Pod, GATEWAY, POD_DEVICE_PREFIX};
use crate::{
    netns::{unique_tag, Netns},
    node::{add_pod, make_router},
};

/// The node name the sandbox's pods run on (the agent's default `--hostname-override`).
pub const NODE_NAME: &str = crate::agent::DEFAULT_NODE_NAME;

/// Namespaces are deleted in field order when dropped: pods, then the node.
pub struct Sandbox {
    pub tag: String,
    pub pods: Vec<Pod>,
    pub node: Netns,
}

impl Sandbox {
    /// An empty node namespace that forwards.
    pub fn new() -> Result<Self> {
        let tag = unique_tag();
        let node = Netns::create(&format!("{tag}-node"))?;
        make_router(&node.name, &[])?;
        Ok(Self {
            tag,
            pods: Vec::new(),
            node,
        })
    }

    /// A node with a client pod (198.18.1.2) and `backends` backend pods be1.. (198.18.1.11..).
    pub fn standard(backends: u8) -> Result<Self> {
        let mut sb = Self::new()?;
        sb.add_pod("client", Ipv4Addr::new(198, 18, 1, 2))?;
        for i in 1..=backends {
            sb.add_pod(&format!("be{i}"), Ipv4Addr::new(198, 18, 1, 10 + i))?;
        }
        Ok(sb)
    }

    pub fn add_pod(&mut self, name: &str, ip_addr: Ipv4Addr) -> Result<&Pod> {
        let ns_name = format!("{}-{name}", self.tag);
        let pod = add_pod(&self.node.name, NODE_NAME, &ns_name, name, ip_addr)?;
        self.pods.push(pod);
        Ok(self.pods.last().expect("just pushed"))
    }

    pub fn pod(&self, name: &str) -> &Pod {
        self.pods
            .iter()
            .find(|p| p.name == name)
            .unwrap_or_else(|| panic!("no pod {name} in the sandbox"))
    }

    /// Starts an echo server on `ports` in every backend pod (be1, be2, ...).
    pub fn start_echo_servers(
        &self,
        ports: &[(crate::echo::Proto, u16)],
    ) -> Result<Vec<crate::EchoServer>> {
        self.pods
            .iter()
            .filter(|p| p.name.starts_with("be"))
            .map(|p| crate::EchoServer::start(&p.netns.name, &p.name, ports))
            .collect()
    }

    /// Removes a pod (its namespace and veth).
    pub fn remove_pod(&mut self, name: &str) {
        self.pods.retain(|p| p.name != name);
    }
}
