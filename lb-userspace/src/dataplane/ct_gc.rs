//! Conntrack lifecycle. The kernel refreshes an entry on every packet and
//! marks it closing on FIN or RST; the agent expires entries by protocol and
//! state, as nf_conntrack does for kube-proxy: established TCP after
//! tcpEstablishedTimeout, closing TCP after the close timeout, UDP after
//! udpTimeout. Both directions of a flow share one fate: a flow is closing
//! when either direction saw FIN/RST. The decision is pure and unit-tested.
use std::{collections::HashMap, hash::Hash, net::IpAddr, time::Duration};

use lb_common::{CtKey, CtKey6, CtValue, CtValue6, CT_FLAG_CLOSING, CT_FORWARD, PROTO_UDP};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CtTimeouts {
    pub tcp_established: Duration,
    pub tcp_closing: Duration,
    pub udp: Duration,
}

impl Default for CtTimeouts {
    fn default() -> Self {
        Self {
            tcp_established: Duration::from_secs(24 * 3600),
            tcp_closing: Duration::from_secs(10),
            udp: Duration::from_secs(30),
        }
    }
}

impl CtTimeouts {
    /// How stale the kernel lets an entry's timestamp get before a packet
    /// writes it again: an eighth of the shortest timeout, at most 1 s, so
    /// that an active flow is never taken for an idle one.
    pub fn refresh(&self) -> Duration {
        let shortest = self.tcp_established.min(self.tcp_closing).min(self.udp);
        (shortest / 8).min(Duration::from_nanos(lb_common::DEFAULT_CT_REFRESH_NS))
    }
}

/// What one garbage collection found: entries removed, entries left, capacity.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CtGc {
    pub removed: usize,
    pub entries: usize,
    pub capacity: usize,
}

/// From this fill level (percent) on the conntrack map counts as full. It is
/// an LRU map: a full map does not refuse new flows, it evicts the least
/// recently used ones, which breaks them, so the agent must say so early.
pub const CT_FULL_PERCENT: usize = 90;

impl CtGc {
    pub fn is_full(&self) -> bool {
        self.capacity > 0 && self.entries * 100 >= self.capacity * CT_FULL_PERCENT
    }
}

/// A conntrack key of either family (CT_V2 or CT6_V1) and what the agent
/// reads of its value: the two families' types have the same fields.
pub trait CtEntry: Copy + Eq + Hash + aya::Pod {
    type Value: Copy + aya::Pod;
    /// The key of the other direction of the flow the entry belongs to.
    fn partner(&self, value: &Self::Value) -> Self;
    fn proto(&self) -> u8;
    /// The packets' source: for a reply entry, the backend.
    fn source(&self) -> (IpAddr, u16);
    /// The packets' destination.
    fn destination(&self) -> (IpAddr, u16);
    fn flags(value: &Self::Value) -> u8;
    fn kind(value: &Self::Value) -> u8;
    fn last_seen_ns(value: &Self::Value) -> u64;
    /// The value's translation (backend or frontend) and ids.
    fn nat(value: &Self::Value) -> (IpAddr, u16);
    fn ids(value: &Self::Value) -> (u32, u32);
}

macro_rules! ct_entry {
    ($key:ty, $value:ty) => {
        impl CtEntry for $key {
            type Value = $value;
            fn partner(&self, value: &$value) -> Self {
                if value.kind == CT_FORWARD {
                    // client -> frontend; the reply entry is backend -> client.
                    Self {
                        saddr: value.nat_addr,
                        daddr: self.saddr,
                        sport: value.nat_port,
                        dport: self.sport,
                        proto: self.proto,
                        _pad: [0; 3],
                    }
                } else {
                    // backend -> client; the forward entry is client -> frontend.
                    Self {
                        saddr: self.daddr,
                        daddr: value.nat_addr,
                        sport: self.dport,
                        dport: value.nat_port,
                        proto: self.proto,
                        _pad: [0; 3],
                    }
                }
            }
            fn proto(&self) -> u8 {
                self.proto
            }
            fn source(&self) -> (IpAddr, u16) {
                (IpAddr::from(self.saddr), self.sport)
            }
            fn destination(&self) -> (IpAddr, u16) {
                (IpAddr::from(self.daddr), self.dport)
            }
            fn nat(value: &$value) -> (IpAddr, u16) {
                (IpAddr::from(value.nat_addr), value.nat_port)
            }
            /// (service id, backend id)
            fn ids(value: &$value) -> (u32, u32) {
                (value.service_id, value.backend_id)
            }
            fn flags(value: &$value) -> u8 {
                value.flags
            }
            fn kind(value: &$value) -> u8 {
                value.kind
            }
            fn last_seen_ns(value: &$value) -> u64 {
                value.last_seen_ns
            }
        }
    };
}

ct_entry!(CtKey, CtValue);
ct_entry!(CtKey6, CtValue6);

/// The key of the other direction of the flow an entry belongs to.
pub fn partner<K: CtEntry>(key: &K, value: &K::Value) -> K {
    key.partner(value)
}

/// The entries to delete at `now_ns` (CLOCK_MONOTONIC, as the kernel stamps them).
pub fn expired<K: CtEntry>(entries: &[(K, K::Value)], now_ns: u64, t: &CtTimeouts) -> Vec<K> {
    let by_key: HashMap<K, &K::Value> = entries.iter().map(|(k, v)| (*k, v)).collect();
    entries
        .iter()
        .filter(|(key, value)| {
            let other = by_key.get(&key.partner(value));
            let closing = K::flags(value) & CT_FLAG_CLOSING != 0
                || other.is_some_and(|o| K::flags(o) & CT_FLAG_CLOSING != 0);
            // The flow is as fresh as its most recent direction.
            let seen = K::last_seen_ns(value);
            let last = other.map_or(seen, |o| K::last_seen_ns(o).max(seen));
            let timeout = if key.proto() == PROTO_UDP {
                t.udp
            } else if closing {
                t.tcp_closing
            } else {
                t.tcp_established
            };
            now_ns.saturating_sub(last) > timeout.as_nanos() as u64
        })
        .map(|(k, _)| *k)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::{CtGc, CtTimeouts};
    use std::time::Duration;

    #[test]
    fn the_refresh_interval_is_an_eighth_of_the_shortest_timeout_at_most_a_second() {
        assert_eq!(CtTimeouts::default().refresh(), Duration::from_secs(1));
        let short = CtTimeouts {
            udp: Duration::from_secs(1),
            tcp_closing: Duration::from_secs(2),
            ..CtTimeouts::default()
        };
        assert_eq!(short.refresh(), Duration::from_millis(125));
    }

    #[test]
    fn the_map_is_full_from_ninety_percent() {
        let gc = |entries| CtGc {
            removed: 0,
            entries,
            capacity: 1000,
        };
        assert!(!gc(899).is_full());
        assert!(gc(900).is_full());
        assert!(gc(1000).is_full());
        let no_capacity = CtGc {
            capacity: 0,
            ..gc(0)
        };
        assert!(!no_capacity.is_full());
    }
}
