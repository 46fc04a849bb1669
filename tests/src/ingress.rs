//! Ingress test helpers: manifests (IngressClass, Ingress, Node, TLS
//! Secret) and curl run from a pod's namespace.
use std::{fmt::Write as _, net::Ipv4Addr, process::Command};

use anyhow::{bail, Context, Result};

use crate::netns;

/// Weir's IngressClass, optionally the default class.
pub fn ingress_class(name: &str, default: bool) -> String {
    let annotations = if default {
        "  annotations: {ingressclass.kubernetes.io/is-default-class: \"true\"}\n"
    } else {
        ""
    };
    format!(
        "apiVersion: networking.k8s.io/v1\nkind: IngressClass\nmetadata:\n  name: {name}\n{annotations}spec:\n  controller: weir.dev/ingress-controller\n"
    )
}

/// The agent's Node (node-a in the harness) with one InternalIP.
pub fn node(name: &str, ip: Ipv4Addr) -> String {
    format!(
        "apiVersion: v1\nkind: Node\nmetadata:\n  name: {name}\nstatus:\n  addresses:\n    - {{type: InternalIP, address: \"{ip}\"}}\n"
    )
}

/// An Ingress with `spec` (YAML lines indented two spaces).
pub fn ingress(ns: &str, name: &str, spec: &str) -> String {
    format!(
        "apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata:\n  name: {name}\n  namespace: {ns}\nspec:\n{spec}"
    )
}

/// A `backend:` value for service `svc` port `port`.
pub fn backend(svc: &str, port: u16) -> String {
    format!("{{service: {{name: {svc}, port: {{number: {port}}}}}}}")
}

/// A kubernetes.io/tls Secret from PEM text.
pub fn tls_secret(ns: &str, name: &str, cert_pem: &str, key_pem: &str) -> String {
    let indent = |s: &str| {
        s.lines().fold(String::new(), |mut out, l| {
            let _ = writeln!(out, "    {l}");
            out
        })
    };
    format!(
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: {name}\n  namespace: {ns}\ntype: kubernetes.io/tls\nstringData:\n  tls.crt: |\n{}  tls.key: |\n{}",
        indent(cert_pem),
        indent(key_pem)
    )
}

/// What curl reported.
#[derive(Debug, Clone)]
pub struct Curl {
    pub status: u16,
    /// "1.1" or "2".
    pub http_version: String,
    pub body: String,
}

impl Curl {
    pub fn json(&self) -> Result<serde_json::Value> {
        serde_json::from_str(&self.body).with_context(|| format!("not JSON: {:?}", self.body))
    }

    /// The backend that answered (from the test backend's JSON).
    pub fn backend(&self) -> Result<String> {
        Ok(self.json()?["backend"]
            .as_str()
            .context("no backend in the answer")?
            .to_string())
    }
}

/// Runs curl in namespace `ns` with `args` (a URL among them). Fails when
/// curl cannot complete the exchange (connection refused, TLS failure).
pub fn curl(ns: &str, args: &[&str]) -> Result<Curl> {
    let out = Command::new("nsenter")
        .arg(format!("--net={}", netns::path(ns).display()))
        .args([
            "--",
            "curl",
            "-sS",
            "--max-time",
            "5",
            "-w",
            "\n%{http_code} %{http_version}",
        ])
        .args(args)
        .output()
        .context("running curl (cargo xtask setup installs it)")?;
    if !out.status.success() {
        bail!(
            "curl {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, tail) = text.rsplit_once('\n').context("no status from curl")?;
    let (status, version) = tail.split_once(' ').context("no status from curl")?;
    Ok(Curl {
        status: status.parse().context("status")?,
        http_version: version.to_string(),
        body: body.to_string(),
    })
}
