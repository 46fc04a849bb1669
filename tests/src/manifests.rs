//! Writing Service and EndpointSlice manifests for the agent's directory
//! source. Files are written atomically (temp file + rename) so the agent
//! never reads half a file.
use std::{
    fmt::Write as _,
    net::Ipv4Addr,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result};

/// A service port: (name, port, protocol, targetPort), optionally a nodePort.
#[derive(Clone, Copy, Debug)]
pub struct Port<'a> {
    pub name: &'a str,
    pub port: u16,
    pub protocol: &'a str,
    pub target: u16,
    pub node_port: Option<u16>,
}

pub fn port<'a>(name: &'a str, port: u16, protocol: &'a str, target: u16) -> Port<'a> {
    Port {
        name,
        port,
        protocol,
        target,
        node_port: None,
    }
}

impl Port<'_> {
    pub fn node_port(self, node_port: u16) -> Self {
        Self {
            node_port: Some(node_port),
            ..self
        }
    }
}

/// A ClusterIP service.
pub fn service(ns: &str, name: &str, cluster_ip: Ipv4Addr, ports: &[Port]) -> String {
    service_with(ns, name, cluster_ip, ports, "", &[])
}

/// A service with extra `spec` lines (each indented two spaces, e.g.
/// "  type: NodePort\n") and annotations.
pub fn service_with(
    ns: &str,
    name: &str,
    cluster_ip: Ipv4Addr,
    ports: &[Port],
    spec: &str,
    annotations: &[(&str, &str)],
) -> String {
    let mut y =
        format!("apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: {ns}\n");
    if !annotations.is_empty() {
        y.push_str("  annotations:\n");
        for (k, v) in annotations {
            let _ = writeln!(y, "    {k}: {v:?}");
        }
    }
    let _ = write!(y, "spec:\n  clusterIP: {cluster_ip}\n{spec}  ports:\n");
    for p in ports {
        let node_port = p
            .node_port
            .map(|n| format!(", nodePort: {n}"))
            .unwrap_or_default();
        let _ = writeln!(
            y,
            "    - {{name: {:?}, port: {}, protocol: {}, targetPort: {}{node_port}}}",
            p.name, p.port, p.protocol, p.target
        );
    }
    y
}

/// A Node with one InternalIP. An agent running as `name` serves NodePorts
/// on that address (translate: the node's own addresses, filtered by
/// `--nodeport-addresses`).
pub fn node(name: &str, internal_ip: Ipv4Addr) -> String {
    format!(
        "apiVersion: v1\nkind: Node\nmetadata:\n  name: {name}\nstatus:\n  addresses: [{{type: InternalIP, address: {internal_ip}}}]\n"
    )
}

/// An endpoint with its conditions and node.
#[derive(Clone, Copy, Debug)]
pub struct Ep<'a> {
    pub addr: Ipv4Addr,
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
    pub node: &'a str,
}

impl<'a> Ep<'a> {
    pub fn ready(addr: Ipv4Addr, node: &'a str) -> Self {
        Self {
            addr,
            ready: true,
            serving: true,
            terminating: false,
            node,
        }
    }

    /// Serving but terminating (and so not ready), as during a rolling update.
    pub fn terminating(addr: Ipv4Addr, node: &'a str) -> Self {
        Self {
            addr,
            ready: false,
            serving: true,
            terminating: true,
            node,
        }
    }
}

/// An EndpointSlice whose endpoints are all on node-a: (address, ready).
pub fn slice(
    ns: &str,
    name: &str,
    service: &str,
    ports: &[Port],
    endpoints: &[(Ipv4Addr, bool)],
) -> String {
    let eps: Vec<Ep> = endpoints
        .iter()
        .map(|(addr, ready)| Ep {
            addr: *addr,
            ready: *ready,
            serving: *ready,
            terminating: false,
            node: "node-a",
        })
        .collect();
    slice_eps(ns, name, service, ports, &eps)
}

/// An EndpointSlice with full endpoint conditions.
pub fn slice_eps(ns: &str, name: &str, service: &str, ports: &[Port], endpoints: &[Ep]) -> String {
    let mut y = format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}\n  namespace: {ns}\n  labels:\n    kubernetes.io/service-name: {service}\naddressType: IPv4\nports:\n"
    );
    for p in ports {
        let _ = writeln!(
            y,
            "  - {{name: {:?}, port: {}, protocol: {}}}",
            p.name, p.target, p.protocol
        );
    }
    y.push_str("endpoints:\n");
    for e in endpoints {
        let _ = writeln!(
            y,
            "  - {{addresses: [\"{}\"], conditions: {{ready: {}, serving: {}, terminating: {}}}, nodeName: {}}}",
            e.addr, e.ready, e.serving, e.terminating, e.node
        );
    }
    y
}

/// A directory of manifests, removed on drop.
pub struct ManifestDir {
    pub path: PathBuf,
}

impl ManifestDir {
    pub fn new(tag: &str) -> Result<Self> {
        let path = std::env::temp_dir().join(format!("weir-test-{tag}"));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(Self { path })
    }

    pub fn write(&self, file: &str, yaml: &str) -> Result<()> {
        write_atomic(&self.path.join(file), yaml)
    }

    pub fn remove(&self, file: &str) -> Result<()> {
        std::fs::remove_file(self.path.join(file)).with_context(|| format!("removing {file}"))
    }
}

impl Drop for ManifestDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

pub fn write_atomic(path: &Path, text: &str) -> Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))
}
