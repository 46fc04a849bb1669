//! The network between nodes and external clients: a namespace holding a
//! Linux bridge, and an `eth0` uplink in each attached namespace whose veth
//! peer is a bridge port. Everything stays inside namespaces the harness owns.
use std::net::Ipv4Addr;

use anyhow::{Context, Result};

use crate::{cmd::ip, netns::Netns};

/// The bridge's name inside the lan namespace.
const BRIDGE: &str = "br0";
/// The name of the uplink in every attached namespace.
pub const UPLINK: &str = "eth0";

/// What is on the far side of each uplink: the bridge port, its veth peer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum FarSide {
    /// Nothing: how kind, k3d and other Docker-based clusters wire nodes.
    /// A native-XDP uplink's XDP_TX and redirected frames are dropped here.
    #[default]
    Bare,
    /// An XDP pass program on the bridge port, as Cilium's kind CI attaches:
    /// the agent sees it and `--xdp-mode auto` picks native XDP.
    XdpPass,
}

pub struct Lan {
    far_side: FarSide,
    /// XDP pass programs on the bridge ports, detached when dropped (before the namespace goes).
    passes: std::sync::Mutex<Vec<weir::dataplane::xdp::PeerPass>>,
    pub netns: Netns,
}

impl Lan {
    /// Namespace `name` with a bridge that forwards at once: no STP, so no
    /// listening/learning delay before a new port passes traffic.
    pub fn create(name: &str, far_side: FarSide) -> Result<Self> {
        let lan = Self {
            far_side,
            passes: Default::default(),
            netns: Netns::create(name)?,
        };
        let ns = lan.netns.name.as_str();
        ip(&[
            "-n",
            ns,
            "link",
            "add",
            BRIDGE,
            "type",
            "bridge",
            "stp_state",
            "0",
            "forward_delay",
            "0",
        ])?;
        ip(&["-n", ns, "link", "set", BRIDGE, "up"])?;
        Ok(lan)
    }

    /// Gives namespace `ns` an uplink `eth0` with `addr`/`prefix`, plugged
    /// into the bridge through port `port` (a name unique on this lan, at
    /// most 15 characters).
    pub fn attach(&self, ns: &str, port: &str, addr: Ipv4Addr, prefix: u8) -> Result<()> {
        let lan = self.netns.name.as_str();
        let cidr = format!("{addr}/{prefix}");
        let steps: [&[&str]; 4] = [
            &[
                "-n", ns, "link", "add", UPLINK, "type", "veth", "peer", "name", port, "netns", lan,
            ],
            &["-n", lan, "link", "set", port, "master", BRIDGE, "up"],
            &["-n", ns, "addr", "add", &cidr, "dev", UPLINK],
            &["-n", ns, "link", "set", UPLINK, "up"],
        ];
        for step in steps {
            ip(step).with_context(|| format!("attaching {ns} to the lan as {port}"))?;
        }
        crate::cmd::full_checksums(ns, UPLINK)?;
        if self.far_side == FarSide::Bare {
            return Ok(());
        }
        let device = port.to_string();
        let pass = self
            .netns
            .run(move || weir::dataplane::xdp::attach_peer_pass(&device))?
            .with_context(|| format!("attaching the XDP pass program to lan port {port}"))?;
        self.passes
            .lock()
            .map_err(|_| anyhow::anyhow!("lan lock poisoned"))?
            .push(pass);
        Ok(())
    }
}
