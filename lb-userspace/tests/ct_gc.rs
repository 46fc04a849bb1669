//! Conntrack expiry decisions.
use std::time::Duration;

use lb_common::{CtKey, CtValue, CT_FLAG_CLOSING, CT_FORWARD, CT_REPLY, PROTO_TCP, PROTO_UDP};
use weir::dataplane::ct_gc::{expired, partner, CtTimeouts};

const CLIENT: [u8; 4] = [198, 18, 1, 2];
const VIP: [u8; 4] = [198, 19, 0, 10];
const BACKEND: [u8; 4] = [198, 18, 1, 11];
const S: u64 = 1_000_000_000;

/// Both entries of one flow client:40000 -> VIP:80 served by BACKEND:8080.
fn flow(proto: u8, sport: u16, fwd: (u64, u8), rev: (u64, u8)) -> [(CtKey, CtValue); 2] {
    let fk = CtKey {
        saddr: CLIENT,
        daddr: VIP,
        sport,
        dport: 80,
        proto,
        _pad: [0; 3],
    };
    let rk = CtKey {
        saddr: BACKEND,
        daddr: CLIENT,
        sport: 8080,
        dport: sport,
        proto,
        _pad: [0; 3],
    };
    let value = |kind, nat_addr, nat_port, (seen, flags): (u64, u8)| CtValue {
        backend_id: 1,
        service_id: 1,
        nat_addr,
        nat_port,
        kind,
        flags,
        last_seen_ns: seen,
        snat_addr: [0; 4],
        snat_port: 0,
        _pad: 0,
    };
    [
        (fk, value(CT_FORWARD, BACKEND, 8080, fwd)),
        (rk, value(CT_REPLY, VIP, 80, rev)),
    ]
}

fn timeouts() -> CtTimeouts {
    CtTimeouts {
        tcp_established: Duration::from_secs(3600),
        tcp_closing: Duration::from_secs(10),
        udp: Duration::from_secs(30),
    }
}

#[test]
fn the_partner_of_each_direction_is_the_other() {
    let [(fk, fv), (rk, rv)] = flow(PROTO_TCP, 40000, (0, 0), (0, 0));
    assert_eq!(partner(&fk, &fv), rk);
    assert_eq!(partner(&rk, &rv), fk);
}

#[test]
fn udp_flows_expire_after_the_udp_timeout() {
    let entries = flow(PROTO_UDP, 40000, (100 * S, 0), (100 * S, 0));
    assert!(expired(&entries, 129 * S, &timeouts()).is_empty());
    assert_eq!(expired(&entries, 131 * S, &timeouts()).len(), 2);
}

#[test]
fn established_tcp_lives_until_the_established_timeout() {
    let entries = flow(PROTO_TCP, 40000, (100 * S, 0), (100 * S, 0));
    assert!(expired(&entries, (100 + 3599) * S, &timeouts()).is_empty());
    assert_eq!(expired(&entries, (100 + 3601) * S, &timeouts()).len(), 2);
}

#[test]
fn a_fin_or_rst_in_either_direction_expires_both_after_the_close_timeout() {
    for (fwd_flags, rev_flags) in [(CT_FLAG_CLOSING, 0), (0, CT_FLAG_CLOSING)] {
        let entries = flow(PROTO_TCP, 40000, (100 * S, fwd_flags), (100 * S, rev_flags));
        assert!(expired(&entries, 109 * S, &timeouts()).is_empty());
        assert_eq!(
            expired(&entries, 111 * S, &timeouts()).len(),
            2,
            "flags {fwd_flags}/{rev_flags}"
        );
    }
}

#[test]
fn a_flow_is_as_fresh_as_its_most_recent_direction() {
    // Only the server talks (a download): the client's direction is old but the flow lives.
    let entries = flow(PROTO_UDP, 40000, (0, 0), (100 * S, 0));
    assert!(expired(&entries, 120 * S, &timeouts()).is_empty());
}

#[test]
fn other_flows_are_untouched() {
    let mut entries = flow(PROTO_UDP, 40000, (0, 0), (0, 0)).to_vec();
    entries.extend(flow(PROTO_UDP, 40001, (100 * S, 0), (100 * S, 0)));
    let gone = expired(&entries, 110 * S, &timeouts());
    assert_eq!(gone.len(), 2);
    assert!(gone.iter().all(|k| k.sport == 40000 || k.dport == 40000));
}
