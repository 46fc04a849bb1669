//! End to end with the Kubernetes source: the real agent (`--source kube`)
//! in a sandbox node namespace, the fake apiserver listening on loopback
//! inside that namespace, real TCP/UDP traffic from a client pod to the
//! ClusterIP. Needs root (network namespaces, eBPF).
use std::{
    collections::BTreeSet,
    net::{Ipv4Addr, SocketAddrV4},
    time::Duration,
};

use anyhow::{bail, Result};
use serde_json::{json, Value};
use weir_tests::{
    echo::{requests, Proto},
    fake_apiserver::Kind,
    scenario::CLUSTER_IP,
    Agent, EchoReply, EchoServer, FakeApiserver, Sandbox,
};

const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 2);

/// Dropped in field order: agent, apiserver, servers, then the namespaces.
struct KubeScenario {
    agent: Agent,
    api: FakeApiserver,
    _servers: Vec<EchoServer>,
    sandbox: Sandbox,
}

impl KubeScenario {
    fn start(backends: u8) -> Result<Self> {
        let sandbox = Sandbox::standard(backends)?;
        let servers = sandbox.start_echo_servers(&[(Proto::Tcp, 8080), (Proto::Udp, 5353)])?;
        // The agent runs in the node namespace: so does the apiserver it talks to.
        let api = FakeApiserver::start_in_netns(&sandbox.node.name)?;
        let master = format!("--master={}", api.url());
        let agent = Agent::start_source(
            &sandbox.node.name,
            "kube",
            &sandbox.tag,
            &[&master, "--min-sync-period=100ms"],
        )?;
        Ok(Self {
            agent,
            api,
            _servers: servers,
            sandbox,
        })
    }

    fn ip(&self, pod: &str) -> String {
        self.sandbox.pod(pod).ip.to_string()
    }

    /// `count` requests from the client to the ClusterIP, all of which must succeed.
    fn send_ok(&self, proto: Proto, port: u16, count: usize) -> Result<Vec<EchoReply>> {
        requests(
            &self.sandbox.pod("client").netns.name,
            proto,
            SocketAddrV4::new(CLUSTER_IP, port),
            count,
            Duration::from_secs(2),
        )?
        .into_iter()
        .enumerate()
        .map(|(i, r)| match r {
            Ok(reply) => Ok(reply),
            Err(e) => bail!("request {i} to {CLUSTER_IP}:{port}/{proto:?} failed: {e}"),
        })
        .collect()
    }
}

fn service() -> Value {
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "echo", "namespace": "e2e"},
        "spec": {"clusterIP": CLUSTER_IP.to_string(), "ports": [
            {"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080},
            {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 5353},
        ]},
    })
}

fn slice(endpoints: &[String]) -> Value {
    json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "echo-1", "namespace": "e2e",
                     "labels": {"kubernetes.io/service-name": "echo"}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"},
                  {"name": "dns", "port": 5353, "protocol": "UDP"}],
        "endpoints": endpoints.iter().map(|a| json!({
            "addresses": [a], "conditions": {"ready": true}, "nodeName": "node-a",
        })).collect::<Vec<_>>(),
    })
}

fn backends(replies: &[EchoReply]) -> BTreeSet<String> {
    for r in replies {
        assert_eq!(r.peer, CLIENT_IP, "backend {} saw {}", r.backend, r.peer);
    }
    replies.iter().map(|r| r.backend.clone()).collect()
}

fn names(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| s.to_string()).collect()
}

#[test]
fn serves_the_cluster_ip_from_the_apiserver_through_changes_and_an_outage() -> Result<()> {
    let mut s = KubeScenario::start(3)?;
    s.api
        .apply(json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-a"}}))?;
    s.api.apply(service())?;
    s.api
        .apply(slice(&[s.ip("be1"), s.ip("be2"), s.ip("be3")]))?;

    s.agent.wait_frontend("198.19.0.10:80/TCP", 3)?;
    s.agent.wait_frontend("198.19.0.10:53/UDP", 3)?;
    let tcp = s.send_ok(Proto::Tcp, 80, 30)?;
    assert!(tcp.iter().all(|r| r.port == 8080));
    assert_eq!(backends(&tcp), names(&["be1", "be2", "be3"]));
    let udp = s.send_ok(Proto::Udp, 53, 30)?;
    assert!(udp.iter().all(|r| r.port == 5353));
    assert_eq!(backends(&udp), names(&["be1", "be2", "be3"]));

    // be3 leaves the EndpointSlice: it gets no new flows.
    s.api.apply(slice(&[s.ip("be1"), s.ip("be2")]))?;
    s.agent.wait_frontend("198.19.0.10:80/TCP", 2)?;
    s.agent.wait_frontend("198.19.0.10:53/UDP", 2)?;
    assert_eq!(
        backends(&s.send_ok(Proto::Tcp, 80, 30)?),
        names(&["be1", "be2"])
    );
    assert_eq!(
        backends(&s.send_ok(Proto::Udp, 53, 30)?),
        names(&["be1", "be2"])
    );

    // The apiserver goes away: the datapath keeps serving the last state.
    s.api.go_down()?;
    assert_eq!(
        backends(&s.send_ok(Proto::Tcp, 80, 20)?),
        names(&["be1", "be2"])
    );
    // be3 comes back while the apiserver is down; the agent catches up when it returns.
    s.api
        .apply(slice(&[s.ip("be1"), s.ip("be2"), s.ip("be3")]))?;
    s.api.come_back()?;
    s.agent.wait_frontend("198.19.0.10:80/TCP", 3)?;
    assert_eq!(
        backends(&s.send_ok(Proto::Tcp, 80, 30)?),
        names(&["be1", "be2", "be3"])
    );

    // The service is deleted: its frontends go.
    s.api.delete(Kind::Service, "e2e", "echo")?;
    s.agent
        .wait_for("no frontends", Duration::from_secs(15), |rows| {
            rows.is_empty()
        })?;
    Ok(())
}
