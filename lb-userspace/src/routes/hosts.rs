//! Rules by request host: exact hosts, then wildcards, then rules for every
//! host. The two APIs differ in two ways, kept as settings of the table:
//! an Ingress wildcard covers exactly one label and only the most specific
//! host's rules are tried (then the default backend), while a Gateway API
//! wildcard covers any number of labels and a request that matches none of
//! a host's rules goes on to the next less specific host.
use std::{collections::HashMap, sync::Arc};

use rustls::sign::CertifiedKey;

use super::{
    matching,
    rule::{RequestView, Rule},
};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum HostRules {
    /// Ingress: `*.foo.com` matches `bar.foo.com` only; the most specific host decides.
    #[default]
    Ingress,
    /// Gateway API: `*.foo.com` matches `a.b.foo.com` too (longest suffix
    /// first); hosts are tried from the most specific until a rule matches.
    Gateway,
}

/// The rules of one listener (or of all Ingresses), best first within each host.
#[derive(Debug, Default)]
pub struct HostTable {
    pub hosts: HashMap<String, Vec<Rule>>,
    /// Wildcard hosts by suffix (`*.foo.com` under `foo.com`).
    pub wildcards: HashMap<String, Vec<Rule>>,
    /// Rules without a host.
    pub any_host: Vec<Rule>,
    /// Ingress spec.defaultBackend: requests that match no rule.
    pub default: Option<Rule>,
    pub mode: HostRules,
}

/// The rule a request matched, and the host pattern it was found under
/// (`*.foo.com` for a wildcard, empty for rules without a host).
#[derive(Debug)]
pub struct Routed<'a> {
    pub host: String,
    pub rule: &'a Rule,
    /// The request went to the default backend (no rule matched).
    pub default: bool,
}

impl HostTable {
    pub fn new(mode: HostRules) -> Self {
        Self {
            mode,
            ..Self::default()
        }
    }

    /// The rules to put under `host` (lower case; `*.x` for a wildcard, "" for any).
    pub fn entry(&mut self, host: &str) -> &mut Vec<Rule> {
        if host.is_empty() {
            &mut self.any_host
        } else if let Some(suffix) = matching::wildcard_suffix(host) {
            self.wildcards.entry(suffix.to_string()).or_default()
        } else {
            self.hosts.entry(host.to_string()).or_default()
        }
    }

    pub fn is_empty(&self) -> bool {
        self.hosts.is_empty()
            && self.wildcards.is_empty()
            && self.any_host.is_empty()
            && self.default.is_none()
    }

    /// The host entries that apply to `host`, most specific first.
    fn candidates<'a>(&'a self, host: Option<&str>) -> Vec<(String, &'a [Rule])> {
        let mut out = Vec::new();
        if let Some(host) = host {
            if let Some(r) = self.hosts.get(host) {
                out.push((host.to_string(), r.as_slice()));
            }
            let mut rest = matching::parent_of(host);
            while let Some(suffix) = rest {
                if let Some(r) = self.wildcards.get(suffix) {
                    out.push((format!("*.{suffix}"), r.as_slice()));
                }
                if self.mode == HostRules::Ingress {
                    break;
                }
                rest = matching::parent_of(suffix);
            }
        }
        if !self.any_host.is_empty() {
            out.push((String::new(), self.any_host.as_slice()));
        }
        out
    }

    /// The rule for a request.
    pub fn route<'a>(&'a self, host: Option<&str>, req: &RequestView<'_>) -> Option<Routed<'a>> {
        for (pattern, rules) in self.candidates(host) {
            if let Some(rule) = rules.iter().find(|r| r.matcher.matches(req)) {
                return Some(Routed {
                    host: pattern,
                    rule,
                    default: false,
                });
            }
            if self.mode == HostRules::Ingress {
                break;
            }
        }
        self.default.as_ref().map(|rule| Routed {
            host: String::new(),
            rule,
            default: true,
        })
    }

    /// Every host entry, in display order: exact hosts, wildcards, any host.
    pub fn entries(&self) -> Vec<(String, &[Rule])> {
        let mut exact: Vec<_> = self.hosts.iter().collect();
        exact.sort_by_key(|(h, _)| *h);
        let mut wild: Vec<_> = self.wildcards.iter().collect();
        wild.sort_by_key(|(h, _)| *h);
        let mut out: Vec<(String, &[Rule])> = exact
            .into_iter()
            .map(|(h, r)| (h.clone(), r.as_slice()))
            .collect();
        out.extend(
            wild.into_iter()
                .map(|(h, r)| (format!("*.{h}"), r.as_slice())),
        );
        if !self.any_host.is_empty() {
            out.push((String::new(), self.any_host.as_slice()));
        }
        out
    }
}

/// One listener's rules: requests whose host matches its hostname.
#[derive(Debug)]
pub struct ListenerRoutes {
    /// "namespace/name/listener", for `weir routes` and logs.
    pub name: String,
    /// Lower case; `*.x` for a wildcard; None for every host.
    pub hostname: Option<String>,
    pub port: u16,
    /// An HTTPS listener's certificate (TLS is terminated with it).
    pub cert: Option<Arc<CertifiedKey>>,
    pub table: HostTable,
}

impl ListenerRoutes {
    pub fn accepts(&self, host: Option<&str>) -> bool {
        listener_accepts(self.hostname.as_deref(), host)
    }
}

/// Whether a listener with `hostname` (None: every host) takes `host`.
pub fn listener_accepts(hostname: Option<&str>, host: Option<&str>) -> bool {
    match (hostname, host) {
        (None, _) => true,
        (Some(_), None) => false,
        (Some(pattern), Some(host)) => hostname_matches(pattern, host),
    }
}

/// How specific a hostname is, for most-specific-first orders: exact names,
/// then wildcards, each longer first; None (every host) last.
pub fn specificity(hostname: Option<&str>) -> (u8, usize) {
    match hostname {
        None => (0, 0),
        Some(h) if h.starts_with("*.") => (1, h.len()),
        Some(h) => (2, h.len()),
    }
}

/// Whether `host` matches a Gateway API hostname: exactly, or under a
/// wildcard (`*.x` matches one or more labels before `x`, not `x` itself).
pub fn hostname_matches(pattern: &str, host: &str) -> bool {
    match matching::wildcard_suffix(pattern) {
        Some(suffix) => host
            .strip_suffix(suffix)
            .and_then(|head| head.strip_suffix('.'))
            .is_some_and(|head| !head.is_empty()),
        None => pattern == host,
    }
}

/// The listeners on one address and port: the most specific one whose
/// hostname matches a request's host (or a TLS client's server name) serves it.
#[derive(Debug, Default)]
pub struct PortRoutes {
    pub listeners: Vec<ListenerRoutes>,
}

impl PortRoutes {
    /// Whether the port terminates TLS (its listeners are HTTPS: listeners
    /// of two protocols on one port conflict and are not served).
    pub fn tls(&self) -> bool {
        self.listeners.iter().any(|l| l.cert.is_some())
    }

    /// The certificate for a TLS server name on this port.
    pub fn cert(&self, server_name: Option<&str>) -> Option<&Arc<CertifiedKey>> {
        let name = server_name.map(|n| n.trim_end_matches('.').to_ascii_lowercase());
        self.listener(name.as_deref())?.cert.as_ref()
    }
}

impl PortRoutes {
    pub fn add(&mut self, listener: ListenerRoutes) {
        self.listeners.push(listener);
        self.listeners
            .sort_by_key(|l| std::cmp::Reverse(specificity(l.hostname.as_deref())));
    }

    pub fn listener(&self, host: Option<&str>) -> Option<&ListenerRoutes> {
        self.listeners.iter().find(|l| l.accepts(host))
    }
}
