//! `weir service list`: every frontend with its backends, read from the
//! pinned maps (like `cilium service list`).
use std::{fmt::Write as _, net::Ipv4Addr};

use lb_common::SCOPE_INTERNAL;
use serde::Serialize;

use crate::{dataplane::sync::Programmed, model::Protocol, translate::algorithm_name};

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct BackendRow {
    pub id: u32,
    pub address: String,
    pub port: u16,
    pub protocol: String,
    pub state: String,
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct ServiceRow {
    pub id: u32,
    pub frontend: String,
    pub address: String,
    pub port: u16,
    pub protocol: String,
    pub scope: String,
    pub algorithm: String,
    /// ClientIP session affinity timeout in seconds; 0 without affinity.
    pub affinity_timeout: u32,
    pub backends: Vec<BackendRow>,
}

fn protocol(n: u8) -> String {
    Protocol::name_of(n)
}

fn state_name(s: u8) -> String {
    crate::inspect::backend_state(s).into()
}

/// One row per frontend, ordered by id.
pub fn service_rows(p: &Programmed) -> Vec<ServiceRow> {
    let mut rows: Vec<ServiceRow> = p
        .services
        .iter()
        .map(|(key, svc)| {
            let addr = Ipv4Addr::from(key.addr);
            ServiceRow {
                id: svc.value.id,
                frontend: format!("{addr}:{}/{}", key.port, protocol(key.proto)),
                address: addr.to_string(),
                port: key.port,
                protocol: protocol(key.proto),
                scope: if key.scope == SCOPE_INTERNAL {
                    "internal"
                } else {
                    "external"
                }
                .into(),
                algorithm: algorithm_name(svc.value.algorithm).into(),
                affinity_timeout: svc.value.affinity_timeout,
                backends: svc
                    .backend_ids
                    .iter()
                    .map(|id| match p.backends.get(id) {
                        Some(b) => BackendRow {
                            id: *id,
                            address: Ipv4Addr::from(b.addr).to_string(),
                            port: b.port,
                            protocol: protocol(b.proto),
                            state: state_name(b.state),
                        },
                        None => BackendRow {
                            id: *id,
                            address: "?".into(),
                            port: 0,
                            protocol: "?".into(),
                            state: "missing".into(),
                        },
                    })
                    .collect(),
            }
        })
        .collect();
    rows.sort_by_key(|r| r.id);
    rows
}

/// The table form of `weir service list`.
pub fn service_table(rows: &[ServiceRow]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<5} {:<24} {:<9} {:<7} BACKENDS",
        "ID", "FRONTEND", "SCOPE", "ALG"
    );
    for row in rows {
        let mut backends = row.backends.iter().map(|b| {
            format!(
                "{} {}:{}/{} ({})",
                b.id, b.address, b.port, b.protocol, b.state
            )
        });
        let first = backends.next().unwrap_or_else(|| "(none: rejected)".into());
        let _ = writeln!(
            out,
            "{:<5} {:<24} {:<9} {:<7} {first}",
            row.id, row.frontend, row.scope, row.algorithm
        );
        for b in backends {
            let _ = writeln!(out, "{:<5} {:<24} {:<9} {:<7} {b}", "", "", "", "");
        }
    }
    out
}
