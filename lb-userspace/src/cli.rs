//! `weir service list`: every frontend with its backends, read from the
//! pinned maps (like `cilium service list`).
use std::fmt::Write as _;

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
        .map(|(key, svc)| ServiceRow {
            id: svc.value.id,
            frontend: key.to_string(),
            address: key.addr.to_string(),
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
                        address: b.addr.to_string(),
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

/// Cuts `s` to `width` characters, marking a cut with '…'.
pub fn truncate(s: &str, width: usize) -> String {
    if s.chars().count() <= width {
        return s.to_string();
    }
    let mut out: String = s.chars().take(width.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// A table whose lines fit `max_width` characters: columns as wide as their
/// widest cell, and while the total is too wide, the widest column shrinks
/// (never below its header) and its long cells are cut with '…'.
pub fn fit_table(headers: &[&str], rows: &[Vec<String>], max_width: usize) -> String {
    let n = headers.len();
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let min: Vec<usize> = headers.iter().map(|h| h.chars().count().max(3)).collect();
    while widths.iter().sum::<usize>() + n.saturating_sub(1) > max_width {
        let Some((i, _)) = widths
            .iter()
            .enumerate()
            .filter(|(i, w)| **w > min[*i])
            .max_by_key(|(_, w)| **w)
        else {
            break;
        };
        widths[i] -= 1;
    }
    let mut out = String::new();
    let line = |out: &mut String, cells: &mut dyn Iterator<Item = &str>| {
        let mut text = String::new();
        for (i, (cell, w)) in cells.zip(&widths).enumerate() {
            if i > 0 {
                text.push(' ');
            }
            let _ = write!(text, "{:<w$}", truncate(cell, *w), w = *w);
        }
        let _ = writeln!(out, "{}", text.trim_end());
    };
    line(&mut out, &mut headers.iter().copied());
    for row in rows {
        line(&mut out, &mut row.iter().map(String::as_str));
    }
    out
}

/// The table form of `weir ingress routes`.
pub fn routes_table(rows: &[crate::routes::rows::RouteRow]) -> String {
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            let default = r.path_type == "DefaultBackend";
            vec![
                if r.host.is_empty() { "*" } else { &r.host }.to_string(),
                if default { "*" } else { &r.path }.to_string(),
                match r.path_type.as_str() {
                    "ImplementationSpecific" => "ImplSpec",
                    "DefaultBackend" => "default",
                    other => other,
                }
                .to_string(),
                format!("{}:{}", r.service, r.port),
                r.endpoints.to_string(),
                r.tls_secret.as_deref().map_or_else(
                    || "-".to_string(),
                    |s| s.rsplit('/').next().unwrap_or(s).to_string(),
                ),
            ]
        })
        .collect();
    fit_table(
        &["HOST", "PATH", "TYPE", "BACKEND", "EPS", "TLS"],
        &cells,
        80,
    )
}

/// The table form of `weir routes`: every rule, with where it listens and who defined it.
pub fn all_routes_table(rows: &[crate::routes::rows::RuleRow]) -> String {
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            let default = r.path_type == "DefaultBackend";
            let path = if default {
                "*".to_string()
            } else {
                match r.path_type.as_str() {
                    "Exact" => format!("={}", r.path),
                    "RegularExpression" => format!("~{}", r.path),
                    "TCP" | "TLSPassthrough" | "TLSTerminate" => format!("({})", r.path_type),
                    _ => r.path.clone(),
                }
            };
            let matches = if r.conditions.is_empty() {
                path
            } else {
                format!("{path} {}", r.conditions)
            };
            let to = if r.action == "forward" {
                format!("{}:{} ({}) w{}", r.service, r.port, r.endpoints, r.weight)
            } else {
                r.action.clone()
            };
            vec![
                if r.address.is_empty() {
                    "ingress".to_string()
                } else {
                    r.address.clone()
                },
                if r.host.is_empty() { "*" } else { &r.host }.to_string(),
                matches,
                to,
                r.origin.clone(),
            ]
        })
        .collect();
    fit_table(&["LISTENER", "HOST", "MATCH", "TO", "FROM"], &cells, 120)
}

/// The table form of `weir gateway status`: one line per object and condition.
pub fn gateway_status_table(s: &crate::routes::gateway_status::GatewayStatuses) -> String {
    use crate::routes::gateway_status::Condition;
    let mut cells: Vec<Vec<String>> = Vec::new();
    let mut push = |object: String, extra: String, conditions: &[Condition]| {
        let text = conditions
            .iter()
            .map(|c| format!("{}={}({})", c.kind, c.status, c.reason))
            .collect::<Vec<_>>()
            .join(" ");
        cells.push(vec![object, extra, text]);
    };
    for c in &s.classes {
        push(
            format!("GatewayClass {}", c.name),
            String::new(),
            &c.conditions,
        );
    }
    for g in &s.gateways {
        let addresses = g
            .addresses
            .iter()
            .map(|a| a.value.as_str())
            .collect::<Vec<_>>()
            .join(",");
        push(
            format!("Gateway {}/{}", g.namespace, g.name),
            addresses,
            &g.conditions,
        );
        for l in &g.listeners {
            push(
                format!("  listener {}", l.name),
                format!("{} routes", l.attached_routes),
                &l.conditions,
            );
        }
    }
    for r in &s.routes {
        for p in &r.parents {
            push(
                format!("{} {}/{}", r.kind, r.namespace, r.name),
                format!(
                    "-> {}/{}{}",
                    p.parent_ref.namespace.as_deref().unwrap_or(&r.namespace),
                    p.parent_ref.name,
                    p.parent_ref
                        .section_name
                        .as_ref()
                        .map(|s| format!("/{s}"))
                        .unwrap_or_default()
                ),
                &p.conditions,
            );
        }
    }
    fit_table(&["OBJECT", "DETAIL", "CONDITIONS"], &cells, 160)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fit_table_shrinks_the_widest_columns_to_80() {
        let long = "a-very-long-host-name.with.many.labels.example.com".to_string();
        let rows = vec![vec![
            long.clone(),
            "/api/v1/some/long/path/prefix".into(),
            "Prefix".into(),
            "default/backend-service-with-a-long-name:8080".into(),
        ]];
        let t = fit_table(&["HOST", "PATH", "TYPE", "BACKEND"], &rows, 80);
        for l in t.lines() {
            assert!(l.chars().count() <= 80, "{l:?}");
        }
        assert!(t.contains('…'));
        assert!(t.lines().nth(1).unwrap().contains("Prefix"));
        // A table that fits is left alone.
        let t = fit_table(&["A", "B"], &[vec!["x".into(), "y".into()]], 80);
        assert_eq!(t, "A B\nx y\n");
    }
}
