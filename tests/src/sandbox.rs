//! A node namespace with pods behind host-side veths, routed like a CNI does
//! it: each pod has a /32 and a default route to a gateway address that every
//! host-side device holds; the node has a /32 route per pod and forwards.
use std::net::Ipv4Addr;

use anyhow::{Context, Result};

use crate::{
    cmd::{ip, run},
    netns::{unique_tag, Netns},
};

/// The gateway address pods route through (held by every host-side device).
pub const GATEWAY: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
/// Prefix of host-side pod devices; the agent is started with `--pod-devices lxc*`.
pub const POD_DEVICE_PREFIX: &str = "lxc";

pub struct Pod {
    pub name: String,
    pub ip: Ipv4Addr,
    /// The host-side device in the node namespace.
    pub device: String,
    pub netns: Netns,
}

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
        run(
            "ip",
            &[
                "netns",
                "exec",
                &node.name,
                "sysctl",
                "-qw",
                "net.ipv4.ip_forward=1",
                "net.ipv4.conf.all.rp_filter=0",
                "net.ipv4.conf.default.rp_filter=0",
            ],
        )?;
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
        let netns = Netns::create(&format!("{}-{name}", self.tag))?;
        let device = format!("{POD_DEVICE_PREFIX}{name}");
        let node = self.node.name.as_str();
        let (addr, gw) = (format!("{ip_addr}/32"), GATEWAY.to_string());
        let setup = || -> Result<()> {
            ip(&[
                "-n",
                node,
                "link",
                "add",
                &device,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                &netns.name,
            ])?;
            ip(&["-n", node, "link", "set", &device, "up"])?;
            ip(&[
                "-n",
                node,
                "addr",
                "add",
                &format!("{gw}/32"),
                "dev",
                &device,
            ])?;
            ip(&["-n", node, "route", "add", &addr, "dev", &device])?;
            ip(&["-n", &netns.name, "link", "set", "eth0", "up"])?;
            ip(&["-n", &netns.name, "addr", "add", &addr, "dev", "eth0"])?;
            ip(&[
                "-n",
                &netns.name,
                "route",
                "add",
                &format!("{gw}/32"),
                "dev",
                "eth0",
                "scope",
                "link",
            ])?;
            ip(&[
                "-n",
                &netns.name,
                "route",
                "add",
                "default",
                "via",
                &gw,
                "dev",
                "eth0",
            ])?;
            Ok(())
        };
        setup().with_context(|| format!("wiring pod {name}"))?;
        self.pods.push(Pod {
            name: name.to_string(),
            ip: ip_addr,
            device,
            netns,
        });
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
