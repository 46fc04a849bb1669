//! Conntrack lifecycle. The kernel refreshes an entry on every packet and
//! marks it closing on FIN or RST; the agent expires entries by protocol and
//! state, as nf_conntrack does for kube-proxy: established TCP after
//! tcpEstablishedTimeout, closing TCP after the close timeout, UDP after
//! udpTimeout. Both directions of a flow share one fate: a flow is closing
//! when either direction saw FIN/RST. The decision is pure and unit-tested.
use std::{collections::HashMap, time::Duration};

use lb_common::{CtKey, CtValue, CT_FLAG_CLOSING, CT_FORWARD, PROTO_UDP};

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

/// The key of the other direction of the flow an entry belongs to.
pub fn partner(key: &CtKey, value: &CtValue) -> CtKey {
    if value.kind == CT_FORWARD {
        // client -> frontend; the reply entry is backend -> client.
        CtKey {
            saddr: value.nat_addr,
            daddr: key.saddr,
            sport: value.nat_port,
            dport: key.sport,
            proto: key.proto,
            _pad: [0; 3],
        }
    } else {
        // backend -> client; the forward entry is client -> frontend.
        CtKey {
            saddr: key.daddr,
            daddr: value.nat_addr,
            sport: key.dport,
            dport: value.nat_port,
            proto: key.proto,
            _pad: [0; 3],
        }
    }
}

/// The entries to delete at `now_ns` (CLOCK_MONOTONIC, as the kernel stamps them).
pub fn expired(entries: &[(CtKey, CtValue)], now_ns: u64, t: &CtTimeouts) -> Vec<CtKey> {
    let by_key: HashMap<CtKey, &CtValue> = entries.iter().map(|(k, v)| (*k, v)).collect();
    entries
        .iter()
        .filter(|(key, value)| {
            let other = by_key.get(&partner(key, value));
            let closing = value.flags & CT_FLAG_CLOSING != 0
                || other.is_some_and(|o| o.flags & CT_FLAG_CLOSING != 0);
            // The flow is as fresh as its most recent direction.
            let last = other.map_or(value.last_seen_ns, |o| {
                o.last_seen_ns.max(value.last_seen_ns)
            });
            let timeout = if key.proto == PROTO_UDP {
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
