//! The routing table as rows for `weir ingress routes`: one per path rule
//! (hosts in order: exact, wildcard, any host), then the default backend.
use serde::{Deserialize, Serialize};

use super::{HostRoutes, RouteTable, Upstream};
use crate::model::PathType;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteRow {
    /// The rule host: exact, `*.example.com`, or empty for every host.
    pub host: String,
    /// The path as matched (a Prefix without its trailing slash, `/` for
    /// the root); empty for the default backend.
    pub path: String,
    /// Exact, Prefix, ImplementationSpecific, or DefaultBackend.
    pub path_type: String,
    /// The backend Service (namespace/name) and its port.
    pub service: String,
    pub port: u16,
    /// The endpoints requests go to now (ready ones, or serving-terminating
    /// ones when none is ready).
    pub endpoints: usize,
    /// The kubernetes.io/tls Secret whose certificate serves this host;
    /// None: the default certificate.
    pub tls_secret: Option<String>,
    /// The Ingress that defined the rule (namespace/name).
    pub ingress: String,
}

pub fn path_type_name(t: PathType) -> &'static str {
    match t {
        PathType::Exact => "Exact",
        PathType::Prefix => "Prefix",
        PathType::ImplementationSpecific => "ImplementationSpecific",
    }
}

fn host_rows(out: &mut Vec<RouteRow>, table: &RouteTable, host: &str, routes: &HostRoutes) {
    let tls_secret = (!host.is_empty())
        .then(|| table.cert_secret(host))
        .flatten()
        .map(ToString::to_string);
    for r in &routes.paths {
        out.push(row(
            host,
            if r.key.is_empty() { "/" } else { &r.key },
            path_type_name(r.path_type),
            &r.upstream,
            tls_secret.clone(),
            r.ingress.to_string(),
        ));
    }
}

fn row(
    host: &str,
    path: &str,
    path_type: &str,
    upstream: &Upstream,
    tls_secret: Option<String>,
    ingress: String,
) -> RouteRow {
    RouteRow {
        host: host.into(),
        path: path.into(),
        path_type: path_type.into(),
        service: upstream.service.to_string(),
        port: upstream.port,
        endpoints: upstream.endpoints.len(),
        tls_secret,
        ingress,
    }
}

pub fn rows(table: &RouteTable) -> Vec<RouteRow> {
    let mut out = Vec::new();
    let mut hosts: Vec<_> = table.hosts.iter().collect();
    hosts.sort_by(|a, b| a.0.cmp(b.0));
    for (host, routes) in hosts {
        host_rows(&mut out, table, host, routes);
    }
    let mut wildcards: Vec<_> = table.wildcards.iter().collect();
    wildcards.sort_by(|a, b| a.0.cmp(b.0));
    for (suffix, routes) in wildcards {
        host_rows(&mut out, table, &format!("*.{suffix}"), routes);
    }
    if let Some(routes) = &table.any_host {
        host_rows(&mut out, table, "", routes);
    }
    if let Some((upstream, ingress)) = &table.default_backend {
        out.push(row(
            "",
            "",
            "DefaultBackend",
            upstream,
            None,
            ingress.to_string(),
        ));
    }
    out
}
