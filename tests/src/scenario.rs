//! The standard end-to-end setup: a sandbox with a client and N backend pods
//! running echo servers, a manifest directory, and the agent.
use std::{
    collections::BTreeSet,
    net::{Ipv4Addr, SocketAddrV4},
    time::Duration,
};

use anyhow::{bail, Result};

use crate::{
    echo::{all_ok, requests, Proto},
    manifests::ManifestDir,
    Agent, EchoReply, EchoServer, Sandbox,
};

pub const CLUSTER_IP: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 10);
pub const TIMEOUT: Duration = Duration::from_secs(2);

/// Dropped in field order: agent, manifests, servers, then the namespaces.
pub struct Scenario {
    pub agent: Agent,
    pub manifests: ManifestDir,
    pub servers: Vec<EchoServer>,
    pub sandbox: Sandbox,
}

impl Scenario {
    /// `backends` pods named be1.. each serving `ports`, and an agent on an empty manifest directory.
    pub fn start(backends: u8, ports: &[(Proto, u16)]) -> Result<Self> {
        Self::start_with(backends, ports, &[])
    }

    /// As `start`, with extra agent flags (small capacities, short timeouts).
    pub fn start_with(backends: u8, ports: &[(Proto, u16)], agent_args: &[&str]) -> Result<Self> {
        let sandbox = Sandbox::standard(backends)?;
        let servers = sandbox.start_echo_servers(ports)?;
        let manifests = ManifestDir::new(&sandbox.tag)?;
        let agent = Agent::start(
            &sandbox.node.name,
            &manifests.path,
            &sandbox.tag,
            agent_args,
        )?;
        Ok(Self {
            agent,
            manifests,
            servers,
            sandbox,
        })
    }

    pub fn backend_ip(&self, name: &str) -> Ipv4Addr {
        self.sandbox.pod(name).ip
    }

    /// `count` requests from pod `from` to `addr:port`.
    pub fn send(
        &self,
        from: &str,
        proto: Proto,
        addr: Ipv4Addr,
        port: u16,
        count: usize,
    ) -> Result<Vec<Result<EchoReply>>> {
        requests(
            &self.sandbox.pod(from).netns.name,
            proto,
            SocketAddrV4::new(addr, port),
            count,
            TIMEOUT,
        )
    }

    /// `count` requests from the client that must all succeed.
    pub fn send_ok(&self, proto: Proto, port: u16, count: usize) -> Result<Vec<EchoReply>> {
        all_ok(
            self.send("client", proto, CLUSTER_IP, port, count)?,
            &format!("{CLUSTER_IP}:{port}/{proto:?}"),
        )
    }

    /// Fails unless every one of `count` requests fails (nothing answers).
    pub fn assert_no_answer(&self, proto: Proto, port: u16, count: usize) -> Result<()> {
        for (i, r) in self
            .send("client", proto, CLUSTER_IP, port, count)?
            .into_iter()
            .enumerate()
        {
            if let Ok(reply) = r {
                bail!("request {i} to {CLUSTER_IP}:{port}/{proto:?} was answered by {reply:?}; expected no answer");
            }
        }
        Ok(())
    }
}

/// The set of backend names that answered.
pub fn backends_of(replies: &[EchoReply]) -> BTreeSet<String> {
    replies.iter().map(|r| r.backend.clone()).collect()
}

pub fn names(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| s.to_string()).collect()
}
