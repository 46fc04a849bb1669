//! Test and demo harness: network namespaces wired like a Kubernetes node
//! (a node namespace, pods behind host-side veths) or like a cluster of them
//! with an external client on a shared lan, echo servers that answer with
//! their own name, clients, and the agent as a child process.
//!
//! Network safety: everything lives in namespaces this harness creates and
//! deletes (also on panic, through Drop); addresses come from 198.18.0.0/15;
//! every loop is bounded in count and time.
pub mod agent;
pub mod cgroup;
pub mod cluster;
pub mod cmd;
pub mod demo;
pub mod echo;
pub mod fake_apiserver;
pub mod http;
pub mod http_backend;
pub mod ingress;
pub mod lan;
pub mod load;
pub mod manifests;
pub mod netns;
pub mod nginx;
pub mod node;
pub mod packets;
pub mod prom;
pub mod rng;
pub mod sandbox;
pub mod scenario;
pub mod tag;
pub mod wrk;

pub use agent::Agent;
pub use cluster::Cluster;
pub use echo::{EchoReply, EchoServer};
pub use fake_apiserver::FakeApiserver;
pub use sandbox::{Pod, Sandbox};
