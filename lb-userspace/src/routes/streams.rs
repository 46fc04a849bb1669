//! Byte-stream listeners of the shared model (Gateway API TLS and TCP
//! listeners): which route a connection takes, by the listener it reached
//! and, for TLS, its server name; then weighted backends, spliced.
use std::sync::Arc;

use rustls::sign::CertifiedKey;

use super::{
    hosts::{hostname_matches, listener_accepts, specificity},
    rule::{Backends, Origin},
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StreamMode {
    /// Every connection goes to the route's backends as it is.
    Tcp,
    /// The TLS bytes go to the backend untouched, chosen by the ClientHello's server name.
    TlsPassthrough,
    /// The proxy terminates TLS and sends the plain bytes to the backend.
    TlsTerminate,
}

#[derive(Debug)]
pub struct StreamRoute {
    /// The hostnames it serves on its listener (empty: every name).
    pub hostnames: Vec<String>,
    pub backends: Backends,
    pub origin: Origin,
}

impl StreamRoute {
    /// How well the route's hostnames match `name`: exact, then the longest
    /// wildcard, then a route without hostnames; None when it does not match.
    fn match_specificity(&self, name: Option<&str>) -> Option<(u8, usize)> {
        if self.hostnames.is_empty() {
            return Some((0, 0));
        }
        let name = name?;
        self.hostnames
            .iter()
            .filter(|h| hostname_matches(h, name))
            .map(|h| {
                if h.starts_with("*.") {
                    (1, h.len())
                } else {
                    (2, h.len())
                }
            })
            .max()
    }
}

#[derive(Debug)]
pub struct StreamListener {
    /// "namespace/gateway/listener".
    pub name: String,
    /// Lower case; `*.x` for a wildcard; None for every name (TCP: always None).
    pub hostname: Option<String>,
    pub mode: StreamMode,
    /// TlsTerminate: the certificate.
    pub cert: Option<Arc<CertifiedKey>>,
    /// Oldest first: on equal hostnames the oldest route wins.
    pub routes: Vec<StreamRoute>,
}

impl StreamListener {
    /// The route for a connection with TLS server name `name` (TCP: the oldest route).
    pub fn route(&self, name: Option<&str>) -> Option<&StreamRoute> {
        let mut best: Option<(&StreamRoute, (u8, usize))> = None;
        for r in &self.routes {
            if let Some(s) = r.match_specificity(name) {
                if best.is_none_or(|(_, b)| s > b) {
                    best = Some((r, s));
                }
            }
        }
        best.map(|(r, _)| r)
    }
}

/// The stream listeners on one address and port.
#[derive(Debug, Default)]
pub struct StreamPort {
    pub listeners: Vec<StreamListener>,
}

impl StreamPort {
    pub fn add(&mut self, l: StreamListener) {
        self.listeners.push(l);
        self.listeners
            .sort_by_key(|l| std::cmp::Reverse(specificity(l.hostname.as_deref())));
    }

    /// The listener for a connection with TLS server name `name` (lower case).
    pub fn listener(&self, name: Option<&str>) -> Option<&StreamListener> {
        self.listeners
            .iter()
            .find(|l| listener_accepts(l.hostname.as_deref(), name))
    }

    /// How connections to this port are handled (one mode per port: listeners
    /// of different protocols on a port conflict and are not served).
    pub fn mode(&self) -> Option<StreamMode> {
        self.listeners.first().map(|l| l.mode)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ObjectRef;

    fn route(name: &str, hostnames: &[&str]) -> StreamRoute {
        StreamRoute {
            hostnames: hostnames.iter().map(|h| h.to_string()).collect(),
            backends: Backends::default(),
            origin: Origin {
                kind: "TLSRoute",
                object: ObjectRef::new("ns", name),
                rule: None,
            },
        }
    }

    #[test]
    fn the_most_specific_hostname_wins_then_the_oldest_route() {
        let l = StreamListener {
            name: "ns/gw/tls".into(),
            hostname: Some("*.example.com".into()),
            mode: StreamMode::TlsPassthrough,
            cert: None,
            routes: vec![
                route("old-any", &[]),
                route("wild", &["*.example.com"]),
                route("exact", &["abc.example.com"]),
                route("exact-newer", &["abc.example.com"]),
            ],
        };
        let pick = |n: Option<&str>| l.route(n).map(|r| &*r.origin.object.name);
        assert_eq!(pick(Some("abc.example.com")), Some("exact"));
        assert_eq!(pick(Some("x.example.com")), Some("wild"));
        assert_eq!(pick(None), Some("old-any"));
        let mut port = StreamPort::default();
        port.add(l);
        assert!(port.listener(Some("abc.example.com")).is_some());
        assert!(port.listener(Some("abc.example.org")).is_none());
        assert!(port.listener(None).is_none());
    }
}
