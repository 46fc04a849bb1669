//! The routing table as rows for `weir routes` and `weir ingress routes`:
//! one per rule and backend. Ingress rules first (hosts in order: exact,
//! wildcard, any host, then the default backend), then each Gateway
//! listener's, by address.
use serde::{Deserialize, Serialize};

use super::{
    hosts::HostTable,
    rule::{Rule, Target},
    streams::StreamMode,
    RouteTable,
};

/// A row of `weir ingress routes` (its shape predates the Gateway API and is kept).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteRow {
    pub host: String,
    pub path: String,
    pub path_type: String,
    pub service: String,
    pub port: u16,
    pub endpoints: usize,
    pub tls_secret: Option<String>,
    pub ingress: String,
}

impl From<RuleRow> for RouteRow {
    fn from(r: RuleRow) -> Self {
        Self {
            host: r.host,
            path: r.path,
            path_type: r.path_type,
            service: r.service,
            port: r.port,
            endpoints: r.endpoints,
            tls_secret: r.tls_secret,
            ingress: r.ingress,
        }
    }
}

/// A row of `weir routes`: one rule (and backend) of either API.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleRow {
    /// The rule host: exact, `*.example.com`, or empty for every host.
    pub host: String,
    /// The path as matched (a Prefix without its trailing slash, `/` for
    /// the root); empty for the default backend.
    pub path: String,
    /// Exact, Prefix, ImplementationSpecific, RegularExpression, or DefaultBackend.
    pub path_type: String,
    /// The backend Service (namespace/name) and its port; empty when the
    /// rule has none (a redirect) or it does not resolve.
    pub service: String,
    pub port: u16,
    /// The endpoints requests go to now (ready ones, or serving-terminating
    /// ones when none is ready).
    pub endpoints: usize,
    /// The kubernetes.io/tls Secret whose certificate serves this host;
    /// None: the default certificate.
    pub tls_secret: Option<String>,
    /// The Ingress that defined the rule (namespace/name); empty for other kinds.
    pub ingress: String,
    /// The Gateway listener (namespace/gateway/listener) and the address it
    /// listens on; empty for Ingress rules.
    pub listener: String,
    pub address: String,
    /// Conditions besides the path: method, headers, query parameters.
    pub conditions: String,
    /// The backend's weight among the rule's backends (1 for Ingress).
    pub weight: u32,
    /// What is done: "forward", "redirect 301 ...", or "500: why".
    pub action: String,
    /// The object and rule that defined it ("HTTPRoute ns/name spec.rules[0]").
    pub origin: String,
}

fn conditions(rule: &Rule) -> String {
    let m = &rule.matcher;
    let mut parts = Vec::new();
    if let Some(method) = &m.method {
        parts.push(format!("method={method}"));
    }
    for (name, v) in &m.headers {
        parts.push(format!("header {name}{}", value_text(v)));
    }
    for (name, v) in &m.query {
        parts.push(format!("query {name}{}", value_text(v)));
    }
    parts.join(" ")
}

fn value_text(v: &super::rule::ValueMatch) -> String {
    match v {
        super::rule::ValueMatch::Exact(s) => format!("={s}"),
        super::rule::ValueMatch::Regex(r) => format!("~{}", r.as_str()),
    }
}

struct Place<'a> {
    table: &'a RouteTable,
    listener: String,
    address: String,
    tls: bool,
}

fn rule_rows(out: &mut Vec<RuleRow>, place: &Place, host: &str, rule: &Rule, default: bool) {
    let tls_secret = (place.tls && !host.is_empty())
        .then(|| place.table.cert_secret(host))
        .flatten()
        .map(ToString::to_string);
    let action = &rule.action;
    let base = RuleRow {
        host: host.into(),
        path: if default {
            String::new()
        } else {
            rule.matcher.path.text()
        },
        path_type: if default {
            "DefaultBackend".into()
        } else {
            rule.matcher.path.kind().into()
        },
        service: String::new(),
        port: 0,
        endpoints: 0,
        tls_secret,
        ingress: if action.origin.kind == "Ingress" {
            action.origin.object.to_string()
        } else {
            String::new()
        },
        listener: place.listener.clone(),
        address: place.address.clone(),
        conditions: conditions(rule),
        weight: 0,
        action: String::new(),
        origin: action.origin.to_string(),
    };
    if let Some(r) = &action.filters.redirect {
        out.push(RuleRow {
            action: format!(
                "redirect {}{}{}",
                r.status,
                r.hostname
                    .as_ref()
                    .map(|h| format!(" host {h}"))
                    .unwrap_or_default(),
                r.scheme
                    .as_ref()
                    .map(|s| format!(" scheme {s}"))
                    .unwrap_or_default()
            ),
            ..base
        });
        return;
    }
    if action.backends.entries.is_empty() {
        out.push(RuleRow {
            action: "500: no backend".into(),
            ..base
        });
        return;
    }
    for b in &action.backends.entries {
        let mut row = RuleRow {
            weight: b.weight,
            ..base.clone()
        };
        match &b.target {
            Target::Upstream(u) => {
                row.service = u.service.to_string();
                row.port = u.port;
                row.endpoints = u.endpoints.len();
                row.action = "forward".into();
            }
            Target::Invalid(why) => row.action = format!("500: {why}"),
        }
        out.push(row);
    }
}

fn table_rows(out: &mut Vec<RuleRow>, place: &Place, hosts: &HostTable) {
    for (host, rules) in hosts.entries() {
        for rule in rules {
            rule_rows(out, place, &host, rule, false);
        }
    }
    if let Some(rule) = &hosts.default {
        rule_rows(out, place, "", rule, true);
    }
}

/// The Ingress rules only (`weir ingress routes`).
pub fn rows(table: &RouteTable) -> Vec<RouteRow> {
    ingress_rows(table)
        .into_iter()
        .map(RouteRow::from)
        .collect()
}

fn ingress_rows(table: &RouteTable) -> Vec<RuleRow> {
    let mut out = Vec::new();
    let place = Place {
        table,
        listener: String::new(),
        address: String::new(),
        tls: true,
    };
    table_rows(&mut out, &place, &table.ingress);
    out
}

/// Every rule, Ingress and Gateway API (`weir routes`).
pub fn all_rows(table: &RouteTable) -> Vec<RuleRow> {
    let mut out = ingress_rows(table);
    let mut addrs: Vec<_> = table.gateways.keys().collect();
    addrs.sort();
    for addr in addrs {
        for l in &table.gateways[addr].listeners {
            let place = Place {
                table,
                listener: l.name.clone(),
                address: addr.to_string(),
                tls: false,
            };
            table_rows(&mut out, &place, &l.table);
        }
    }
    let mut addrs: Vec<_> = table.streams.keys().collect();
    addrs.sort();
    for addr in addrs {
        for l in &table.streams[addr].listeners {
            for r in &l.routes {
                for b in &r.backends.entries {
                    let (service, port, endpoints, action) = match &b.target {
                        Target::Upstream(u) => (
                            u.service.to_string(),
                            u.port,
                            u.endpoints.len(),
                            "forward".to_string(),
                        ),
                        Target::Invalid(why) => (String::new(), 0, 0, format!("closed: {why}")),
                    };
                    out.push(RuleRow {
                        host: r.hostnames.join(","),
                        path: String::new(),
                        path_type: match l.mode {
                            StreamMode::Tcp => "TCP",
                            StreamMode::TlsPassthrough => "TLSPassthrough",
                            StreamMode::TlsTerminate => "TLSTerminate",
                        }
                        .into(),
                        service,
                        port,
                        endpoints,
                        tls_secret: None,
                        ingress: String::new(),
                        listener: l.name.clone(),
                        address: addr.to_string(),
                        conditions: String::new(),
                        weight: b.weight,
                        action,
                        origin: r.origin.to_string(),
                    });
                }
            }
        }
    }
    out
}
