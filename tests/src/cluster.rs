//! Several nodes and an external client on one lan, for north-south and
//! cross-node tests:
//!
//! ```text
//!   ext 198.18.100.100 ──┐
//!   node-1 198.18.100.11 ─┼─ br0 (lan namespace)     node-i pods: 198.18.(10+i).0/24
//!   node-2 198.18.100.12 ─┘                          ext: 198.19.200.0/24 via node-1
//! ```
//!
//! Each node namespace is wired like the sandbox's (`node.rs`: forwarding,
//! pods behind `lxc<pod>` veths) and routes the other nodes' pod /24s via
//! their uplink addresses, as a flat-network CNI does. One agent per node
//! (`--hostname-override=node-i --devices=eth0 --pod-devices=lxc*`, its own
//! pins) reads one shared manifest directory, which holds a Node object per
//! node with its uplink address (the address NodePorts are served on), unless
//! built without. The bridge ports are bare unless asked (`lan::FarSide`).
use std::net::{Ipv4Addr, SocketAddrV4};

use anyhow::{bail, Context, Result};

use crate::{
    agent::Agent,
    cmd::ip,
    echo::{requests, EchoReply, EchoServer, Proto},
    lan::{FarSide, Lan, UPLINK},
    manifests::{self, Ep, ManifestDir},
    netns::{unique_tag, Netns},
    node::{add_pod, make_router, Pod},
    scenario::TIMEOUT,
};

/// Most nodes a cluster may have: node pod ranges 198.18.(10+i).0/24 stay
/// clear of the lan 198.18.100.0/24.
pub const MAX_NODES: u8 = 20;
/// The lan's prefix length.
pub const LAN_PREFIX: u8 = 24;
/// The external client's address on the lan.
pub const EXT_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 100, 100);
/// LoadBalancer and external IPs for tests: the external client routes this
/// /24 via node-1 until told otherwise (`external_via`, `ext_route`).
pub const EXTERNAL_NET: Ipv4Addr = Ipv4Addr::new(198, 19, 200, 0);
pub const EXTERNAL_PREFIX: u8 = 24;

/// Node `i`'s uplink address, 198.18.100.(10+i) (nodes count from 1).
pub fn node_ip(i: u8) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 100, 10 + i)
}

/// Node `i`'s pod range, 198.18.(10+i).0/24.
pub fn pod_net(i: u8) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 10 + i, 0)
}

/// Node `i`'s name, as agents (`--hostname-override`) and EndpointSlices (`nodeName`) use it.
pub fn node_name(i: u8) -> String {
    format!("node-{i}")
}

pub struct ClusterNode {
    /// 1-based.
    pub index: u8,
    pub name: String,
    /// The uplink (`eth0`) address.
    pub ip: Ipv4Addr,
    pub netns: Netns,
}

/// Dropped in field order: agents, manifests, echo servers, pods, then nodes,
/// the external client and the lan (deleting a namespace deletes its links).
pub struct Cluster {
    pub tag: String,
    /// Index i-1 holds node i's agent, once started.
    agents: Vec<Option<Agent>>,
    pub manifests: ManifestDir,
    /// Echo servers with the pod they serve in.
    servers: Vec<(String, EchoServer)>,
    pods: Vec<Pod>,
    nodes: Vec<ClusterNode>,
    ext: Netns,
    _lan: Lan,
}

impl Cluster {
    /// `nodes` nodes (node-1..), the external client and the lan, with no
    /// pods and no agents; the manifest directory holds the Node objects.
    /// The uplinks' far sides are bare bridge ports, as in kind.
    pub fn new(nodes: u8) -> Result<Self> {
        Self::build(nodes, FarSide::Bare, true)
    }

    /// As `new`, with `far_side` on every bridge port, and Node objects
    /// only when `node_objects` (the directory source often has none).
    pub fn build(nodes: u8, far_side: FarSide, node_objects: bool) -> Result<Self> {
        if !(1..=MAX_NODES).contains(&nodes) {
            bail!("a cluster has 1 to {MAX_NODES} nodes, not {nodes}");
        }
        let tag = unique_tag();
        let lan = Lan::create(&format!("{tag}-lan"), far_side)?;
        let ext = Netns::create(&format!("{tag}-ext"))?;
        lan.attach(&ext.name, "ext", EXT_IP, LAN_PREFIX)?;
        let mut members = Vec::new();
        for i in 1..=nodes {
            let name = node_name(i);
            let netns = Netns::create(&format!("{tag}-{name}"))?;
            lan.attach(&netns.name, &name, node_ip(i), LAN_PREFIX)?;
            make_router(&netns.name, &[UPLINK])?;
            members.push(ClusterNode {
                index: i,
                name,
                ip: node_ip(i),
                netns,
            });
        }
        for node in &members {
            for other in members.iter().filter(|o| o.index != node.index) {
                let net = format!("{}/24", pod_net(other.index));
                let via = other.ip.to_string();
                ip(&[
                    "-n",
                    &node.netns.name,
                    "route",
                    "add",
                    &net,
                    "via",
                    &via,
                    "dev",
                    UPLINK,
                ])
                .with_context(|| format!("routing {net} on {}", node.name))?;
            }
        }
        let manifests = ManifestDir::new(&tag)?;
        for node in members.iter().filter(|_| node_objects) {
            manifests.write(
                &format!("{}.yaml", node.name),
                &manifests::node(&node.name, node.ip),
            )?;
        }
        let cluster = Self {
            tag,
            agents: members.iter().map(|_| None).collect(),
            manifests,
            servers: Vec::new(),
            pods: Vec::new(),
            nodes: members,
            ext,
            _lan: lan,
        };
        cluster.external_via(1)?;
        Ok(cluster)
    }

    pub fn nodes(&self) -> &[ClusterNode] {
        &self.nodes
    }

    /// Node `i` (1-based); panics if there is none.
    pub fn node(&self, i: u8) -> &ClusterNode {
        self.nodes
            .get(usize::from(i).wrapping_sub(1))
            .unwrap_or_else(|| panic!("no node {i} in a cluster of {}", self.nodes.len()))
    }

    /// Node `i`'s uplink address.
    pub fn node_ip(&self, i: u8) -> Ipv4Addr {
        self.node(i).ip
    }

    pub fn ext_ip(&self) -> Ipv4Addr {
        EXT_IP
    }

    /// The external client's namespace.
    pub fn ext_ns(&self) -> &str {
        &self.ext.name
    }

    /// Routes `dst`/`prefix` (e.g. a LoadBalancer IP /32, or a /24) from the
    /// external client via node `node`, replacing any route to it.
    pub fn ext_route(&self, dst: Ipv4Addr, prefix: u8, node: u8) -> Result<()> {
        let (net, via) = (format!("{dst}/{prefix}"), self.node_ip(node).to_string());
        ip(&[
            "-n",
            &self.ext.name,
            "route",
            "replace",
            &net,
            "via",
            &via,
            "dev",
            UPLINK,
        ])
        .map(drop)
        .with_context(|| format!("routing {net} on ext via node {node}"))
    }

    /// Removes the external client's route to `dst`/`prefix`.
    pub fn ext_route_del(&self, dst: Ipv4Addr, prefix: u8) -> Result<()> {
        let net = format!("{dst}/{prefix}");
        ip(&["-n", &self.ext.name, "route", "del", &net]).map(drop)
    }

    /// Sends the external client's traffic for EXTERNAL_NET via node `node`.
    pub fn external_via(&self, node: u8) -> Result<()> {
        self.ext_route(EXTERNAL_NET, EXTERNAL_PREFIX, node)
    }

    /// Adds pod `name` (unique in the cluster, at most 12 characters) on node
    /// `node`, with the lowest free address of the node's pod range from .2.
    pub fn add_pod(&mut self, node: u8, name: &str) -> Result<&Pod> {
        if self.pods.iter().any(|p| p.name == name) {
            bail!("pod {name} exists already");
        }
        let net = pod_net(node).octets();
        let Some(addr) = (2..=254)
            .map(|h| Ipv4Addr::new(net[0], net[1], net[2], h))
            .find(|a| self.pods.iter().all(|p| p.ip != *a))
        else {
            bail!("no free pod address on node {node}");
        };
        let n = self.node(node);
        let ns_name = format!("{}-pod-{name}", self.tag);
        let pod = add_pod(&n.netns.name, &n.name, &ns_name, name, addr)?;
        self.pods.push(pod);
        Ok(self.pods.last().expect("just pushed"))
    }

    /// Pod `name`; panics if there is none.
    pub fn pod(&self, name: &str) -> &Pod {
        self.pods
            .iter()
            .find(|p| p.name == name)
            .unwrap_or_else(|| panic!("no pod {name} in the cluster"))
    }

    pub fn pods(&self) -> &[Pod] {
        &self.pods
    }

    /// Removes pod `name`: its echo servers, namespace and veth.
    pub fn remove_pod(&mut self, name: &str) {
        self.stop_serving(name);
        self.pods.retain(|p| p.name != name);
    }

    /// Starts an echo server in pod `name` on `ports` (it answers with the pod's name).
    pub fn serve(&mut self, name: &str, ports: &[(Proto, u16)]) -> Result<()> {
        let server = EchoServer::start(&self.pod(name).netns.name, name, ports)?;
        self.servers.push((name.to_string(), server));
        Ok(())
    }

    /// Stops the echo servers of pod `name`.
    pub fn stop_serving(&mut self, name: &str) {
        self.servers.retain(|(pod, _)| pod != name);
    }

    /// Ready endpoints for `pods`, each on its own node (for manifests::slice_eps).
    pub fn ready_eps(&self, pods: &[&str]) -> Vec<Ep<'_>> {
        pods.iter()
            .map(|name| {
                let pod = self.pod(name);
                Ep::ready(pod.ip, &pod.node)
            })
            .collect()
    }

    /// Starts the agent of every node not running one, each with `extra` flags.
    pub fn start_agents(&mut self, extra: &[&str]) -> Result<()> {
        for i in 1..=self.nodes.len() as u8 {
            if self.agents[usize::from(i - 1)].is_none() {
                self.start_agent(i, extra)?;
            }
        }
        Ok(())
    }

    /// Starts node `i`'s agent on the shared manifests, attached to its
    /// uplink and pod devices, with pins under TEST_BPFFS_PREFIX + tag-node-i.
    /// Stop, kill and start it again through `agent(i)`.
    pub fn start_agent(&mut self, i: u8, extra: &[&str]) -> Result<&mut Agent> {
        let node = self.node(i);
        if self.agents[usize::from(i - 1)].is_some() {
            bail!("node {i} has an agent already");
        }
        let devices = format!("--devices={UPLINK}");
        let mut args = vec![devices.as_str()];
        args.extend_from_slice(extra);
        let source = format!("dir:{}", self.manifests.path.display());
        let agent = Agent::new(
            &node.netns.name,
            &source,
            &format!("{}-{}", self.tag, node.name),
            &args,
        )
        .with_hostname(&node.name)
        .started()?;
        Ok(self.agents[usize::from(i - 1)].insert(agent))
    }

    /// Node `i`'s agent; panics if it was never started.
    pub fn agent(&mut self, i: u8) -> &mut Agent {
        self.agents
            .get_mut(usize::from(i).wrapping_sub(1))
            .and_then(Option::as_mut)
            .unwrap_or_else(|| panic!("node {i} has no agent"))
    }

    /// Waits until every running agent has frontend `addr:port/PROTO` with
    /// `backends` backends. Agents attach devices before they program maps,
    /// so traffic may flow once this returns.
    pub fn wait_frontend(&mut self, frontend: &str, backends: usize) -> Result<()> {
        for agent in self.agents.iter_mut().flatten() {
            if agent.is_running() {
                agent
                    .wait_frontend(frontend, backends)
                    .with_context(|| format!("on {}", agent.hostname()))?;
            }
        }
        Ok(())
    }

    /// `count` requests (each a new connection or socket) from pod `from` to `addr:port`.
    pub fn requests(
        &self,
        from: &str,
        proto: Proto,
        addr: Ipv4Addr,
        port: u16,
        count: usize,
    ) -> Result<Vec<Result<EchoReply>>> {
        let ns = &self.pod(from).netns.name;
        requests(ns, proto, SocketAddrV4::new(addr, port), count, TIMEOUT)
    }

    /// `count` requests from the external client to `addr:port`.
    pub fn ext_requests(
        &self,
        proto: Proto,
        addr: Ipv4Addr,
        port: u16,
        count: usize,
    ) -> Result<Vec<Result<EchoReply>>> {
        let addr = SocketAddrV4::new(addr, port);
        requests(&self.ext.name, proto, addr, count, TIMEOUT)
    }

    /// Every agent's log, for failure messages.
    pub fn agent_logs(&self) -> String {
        self.agents
            .iter()
            .flatten()
            .map(|a| format!("--- agent {} ---\n{}", a.hostname(), a.log_text()))
            .collect()
    }
}
