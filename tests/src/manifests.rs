//! Writing Service and EndpointSlice manifests for the agent's directory
//! source. Files are written atomically (temp file + rename) so the agent
//! never reads half a file.
use std::{
    fmt::Write as _,
    net::Ipv4Addr,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result};

/// A service port: (name, port, protocol, targetPort).
pub struct Port<'a> {
    pub name: &'a str,
    pub port: u16,
    pub protocol: &'a str,
    pub target: u16,
}

pub fn port<'a>(name: &'a str, port: u16, protocol: &'a str, target: u16) -> Port<'a> {
    Port {
        name,
        port,
        protocol,
        target,
    }
}

pub fn service(ns: &str, name: &str, cluster_ip: Ipv4Addr, ports: &[Port]) -> String {
    let mut y = format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: {ns}\nspec:\n  clusterIP: {cluster_ip}\n  ports:\n"
    );
    for p in ports {
        let _ = writeln!(
            y,
            "    - {{name: {:?}, port: {}, protocol: {}, targetPort: {}}}",
            p.name, p.port, p.protocol, p.target
        );
    }
    y
}

/// An endpoint: address and readiness.
pub fn slice(
    ns: &str,
    name: &str,
    service: &str,
    ports: &[Port],
    endpoints: &[(Ipv4Addr, bool)],
) -> String {
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
    for (addr, ready) in endpoints {
        let _ = writeln!(
            y,
            "  - {{addresses: [\"{addr}\"], conditions: {{ready: {ready}}}, nodeName: node-a}}"
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
