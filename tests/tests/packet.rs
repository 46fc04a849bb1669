//! Packet tests through BPF_PROG_TEST_RUN: the real tc program with maps
//! programmed by the real sync path; exact output bytes compared with
//! packets built independently by etherparse (checksums included).
use std::net::Ipv4Addr;

use anyhow::{Context, Result};
use aya::programs::{TestRun, TestRunOptions};
use lb_common::{
    flow_hash, AffinityKey, AffinityValue, ALG_HASH, ALG_MAGLEV, ALG_RANDOM, CT_FORWARD, CT_REPLY,
    PROTO_TCP, PROTO_UDP, SCOPE_EXTERNAL,
};
use weir::translate::{Backend, FrontendKey as ServiceKey};
use weir::{
    dataplane::{loader::tc_program, sync::PlanConfig, Dataplane},
    model::ObjectRef,
    translate::Frontend,
};
use weir_tests::packets::{
    answer, backend, ct_key, desired, frag_needed, hex, icmp_error, port_unreachable, FibNs, Pkt,
};

const TC_ACT_OK: u32 = 0;
const VIP: [u8; 4] = [198, 19, 0, 10];
const CLIENT: [u8; 4] = [198, 18, 1, 2];
const B1: [u8; 4] = [198, 18, 1, 11];
const B2: [u8; 4] = [198, 18, 1, 12];

fn frontend(port: u16, proto: u8, algorithm: u8, backends: Vec<Backend>) -> (ServiceKey, Frontend) {
    (
        ServiceKey {
            addr: VIP.into(),
            port,
            proto,
            scope: SCOPE_EXTERNAL,
        },
        Frontend {
            service: ObjectRef::new("test", "svc"),
            algorithm,
            backends,
            ..Default::default()
        },
    )
}

fn dataplane(frontends: Vec<(ServiceKey, Frontend)>) -> Result<Dataplane> {
    let mut dp = Dataplane::load_unpinned(PlanConfig::default())?;
    dp.sync(&desired(frontends))?;
    Ok(dp)
}

/// TCP 80 on the VIP with the single backend B1:8080.
fn one_backend_tcp() -> Result<Dataplane> {
    dataplane(vec![frontend(
        80,
        PROTO_TCP,
        ALG_RANDOM,
        vec![backend(B1, 8080, PROTO_TCP)],
    )])
}

/// UDP 53 on the VIP with the single backend B2:5353.
fn one_backend_udp() -> Result<Dataplane> {
    dataplane(vec![frontend(
        53,
        PROTO_UDP,
        ALG_RANDOM,
        vec![backend(B2, 5353, PROTO_UDP)],
    )])
}

/// Runs the tc program on `packet`; returns the action and the output bytes.
/// In an empty namespace, so that reverse-NATed replies (which the program
/// sends to their device after a FIB lookup) find no route and go to the
/// stack; see a_reply_to_a_node_port_goes_straight_to_the_clients_device.
fn run(dp: &mut Dataplane, packet: &[u8]) -> Result<(u32, Vec<u8>)> {
    run_in(&FibNs::empty()?, dp, packet)
}

fn run_in(fib: &FibNs, dp: &mut Dataplane, packet: &[u8]) -> Result<(u32, Vec<u8>)> {
    let mut out = vec![0u8; packet.len() + 128];
    let mut opts = TestRunOptions::new();
    opts.data_in = Some(packet);
    opts.data_out = Some(&mut out);
    let result = fib.run(|| Ok(tc_program(&mut dp.ebpf).test_run(opts)?))?;
    out.truncate(result.data_size_out as usize);
    Ok((result.return_value, out))
}

/// Asserts the program turns `input` into exactly `expected`.
fn assert_rewrites(dp: &mut Dataplane, input: &Pkt, expected: &Pkt) -> Result<()> {
    let (action, out) = run(dp, &input.build())?;
    assert_eq!(action, TC_ACT_OK);
    assert_eq!(
        hex(&out),
        hex(&expected.build()),
        "input {input:?}, expected {expected:?}"
    );
    Ok(())
}

#[test]
fn tcp_to_a_cluster_ip_is_dnated_and_the_reply_reverse_nated() -> Result<()> {
    let mut dp = one_backend_tcp()?;
    let syn = Pkt::tcp(CLIENT, 40000, VIP, 80);
    assert_rewrites(&mut dp, &syn, &syn.with_dst(B1, 8080))?;

    // Both conntrack entries exist and say what to do.
    let fwd = dp
        .maps
        .ct
        .get(&ct_key(CLIENT, 40000, VIP, 80, PROTO_TCP), 0)?;
    assert_eq!(
        (fwd.kind, fwd.nat_addr, fwd.nat_port),
        (CT_FORWARD, B1, 8080)
    );
    let rev = dp
        .maps
        .ct
        .get(&ct_key(B1, 8080, CLIENT, 40000, PROTO_TCP), 0)?;
    assert_eq!((rev.kind, rev.nat_addr, rev.nat_port), (CT_REPLY, VIP, 80));

    let reply = Pkt::tcp(B1, 8080, CLIENT, 40000);
    assert_rewrites(&mut dp, &reply, &reply.with_src(VIP, 80))
}

/// Replies are reverse-NATed from conntrack alone, so they must still be
/// after their service and backend are gone: the no-service filter keeps a
/// removed backend's reply bit while conntrack holds its replies, through
/// syncs and conntrack collections.
#[test]
fn a_reply_after_its_service_was_removed_is_still_reverse_nated() -> Result<()> {
    let mut dp = one_backend_tcp()?;
    let syn = Pkt::tcp(CLIENT, 40100, VIP, 80);
    assert_rewrites(&mut dp, &syn, &syn.with_dst(B1, 8080))?;
    dp.sync(&desired(vec![]))?;
    let (_, out) = run(&mut dp, &syn.build())?;
    assert_eq!(
        hex(&out),
        hex(&syn.build()),
        "the removed frontend still translates"
    );
    let reply = Pkt::tcp(B1, 8080, CLIENT, 40100);
    for _ in 0..3 {
        assert_rewrites(&mut dp, &reply, &reply.with_src(VIP, 80))?;
        let gc = dp.gc_conntrack(&weir::dataplane::ct_gc::CtTimeouts::default())?;
        assert_eq!(gc.removed, 0);
    }
    Ok(())
}

/// The agent collects conntrack on a thread with a handle of its own: it
/// keeps live flows, reports the reply sources they use (for the filter),
/// and removes both entries of an expired flow.
#[test]
fn the_gc_worker_removes_expired_flows_on_its_own_handle() -> Result<()> {
    use weir::dataplane::{ct_gc::CtTimeouts, filter::reply_bit};
    let mut dp = one_backend_tcp()?;
    run(&mut dp, &Pkt::tcp(CLIENT, 40200, VIP, 80).build())?;
    let fwd = ct_key(CLIENT, 40200, VIP, 80, PROTO_TCP);
    let rev = ct_key(B1, 8080, CLIENT, 40200, PROTO_TCP);
    let timeouts = CtTimeouts {
        tcp_established: std::time::Duration::from_secs(30),
        ..CtTimeouts::default()
    };
    let mut worker = dp.ct_gc_worker(timeouts)?;
    assert!(worker.request());
    let live = worker.results.blocking_recv().context("a result")?;
    assert_eq!((live.gc.removed, live.gc.entries), (0, 2));
    assert_eq!(live.reply_bits, [reply_bit(&rev)].into_iter().collect());

    let old = monotonic_ns() - 60_000_000_000;
    for key in [fwd, rev] {
        let mut entry = dp.maps.ct.get(&key, 0)?;
        entry.last_seen_ns = old;
        dp.maps.ct.insert(key, entry, 0)?;
    }
    assert!(worker.request());
    let expired = worker.results.blocking_recv().context("a result")?;
    assert_eq!((expired.gc.removed, expired.gc.entries), (2, 0));
    assert!(expired.reply_bits.is_empty());
    assert!(dp.maps.ct.get(&fwd, 0).is_err() && dp.maps.ct.get(&rev, 0).is_err());
    Ok(())
}

#[test]
fn udp_is_dnated_with_a_correct_checksum() -> Result<()> {
    let mut dp = one_backend_udp()?;
    let query = Pkt::udp(CLIENT, 33000, VIP, 53);
    assert_rewrites(&mut dp, &query, &query.with_dst(B2, 5353))?;
    let answer = Pkt::udp(B2, 5353, CLIENT, 33000);
    assert_rewrites(&mut dp, &answer, &answer.with_src(VIP, 53))
}

#[test]
fn a_zero_udp_checksum_stays_zero() -> Result<()> {
    let mut dp = one_backend_udp()?;
    let query = Pkt::udp(CLIENT, 33001, VIP, 53);
    let mut input = query.build();
    let off = query.l4_csum_offset();
    input[off..off + 2].copy_from_slice(&[0, 0]);
    let mut expected = query.with_dst(B2, 5353).build();
    expected[off..off + 2].copy_from_slice(&[0, 0]);
    let (action, out) = run(&mut dp, &input)?;
    assert_eq!(action, TC_ACT_OK);
    assert_eq!(hex(&out), hex(&expected));
    Ok(())
}

#[test]
fn ip_options_do_not_confuse_the_l4_offset() -> Result<()> {
    let mut dp = one_backend_tcp()?;
    let syn = Pkt {
        ip_options: true,
        ..Pkt::tcp(CLIENT, 40001, VIP, 80)
    };
    assert_rewrites(&mut dp, &syn, &syn.with_dst(B1, 8080))
}

#[test]
fn traffic_that_is_not_for_a_frontend_passes_unchanged() -> Result<()> {
    let mut dp = one_backend_tcp()?;
    for pkt in [
        Pkt::tcp(CLIENT, 40002, VIP, 81),              // other port
        Pkt::udp(CLIENT, 40002, VIP, 80),              // other protocol
        Pkt::tcp(CLIENT, 40002, [198, 19, 0, 11], 80), // other address
        Pkt {
            more_fragments: true,
            ..Pkt::tcp(CLIENT, 40003, VIP, 80)
        }, // a fragment
    ] {
        assert_rewrites(&mut dp, &pkt, &pkt)?;
    }
    Ok(())
}

#[test]
fn a_total_length_beyond_the_frame_or_short_of_the_headers_is_left_untouched() -> Result<()> {
    let mut dp = one_backend_tcp()?;
    let good = Pkt::tcp(CLIENT, 40004, VIP, 80).build();
    let tot_len = u16::from_be_bytes([good[16], good[17]]);
    for bogus in [tot_len + 1, 20 + 19, 1] {
        let mut p = good.clone();
        p[16..18].copy_from_slice(&bogus.to_be_bytes());
        let (action, out) = run(&mut dp, &p)?;
        assert_eq!(
            (action, hex(&out)),
            (TC_ACT_OK, hex(&p)),
            "total length {bogus}"
        );
    }
    Ok(())
}

const TC_ACT_REDIRECT: u32 = 7;

/// Ethernet (node -> pod) + IPv4 (id 0, DF, TTL 64) from `src` to `dst`, as the reject path writes them.
#[test]
fn a_tcp_syn_to_a_frontend_without_backends_is_answered_with_a_reset() -> Result<()> {
    let mut dp = dataplane(vec![frontend(80, PROTO_TCP, ALG_RANDOM, vec![])])?;
    // The SYN carries seq 1000 and 16 bytes: RST+ACK with ack = 1000 + 16 + 1 (RFC 793).
    let (action, out) = run(&mut dp, &Pkt::tcp(CLIENT, 40004, VIP, 80).build())?;
    assert_eq!(
        action, TC_ACT_REDIRECT,
        "the reset goes back out of the device it came in on"
    );
    let mut expected = Vec::new();
    answer(VIP, CLIENT, etherparse::IpNumber::TCP)
        .tcp(80, 40004, 0, 0)
        .rst()
        .ack(1017)
        .write(&mut expected, &[])?;
    assert_eq!(hex(&out), hex(&expected));
    Ok(())
}

#[test]
fn a_udp_datagram_to_a_frontend_without_backends_gets_port_unreachable() -> Result<()> {
    let mut dp = dataplane(vec![frontend(53, PROTO_UDP, ALG_RANDOM, vec![])])?;
    let query = Pkt::udp(CLIENT, 33002, VIP, 53).build();
    let (action, out) = run(&mut dp, &query)?;
    assert_eq!(action, TC_ACT_REDIRECT);
    // ICMP quotes the original IP header and the first 8 bytes after it.
    let quoted = &query[14..14 + 28];
    let mut expected = Vec::new();
    answer(VIP, CLIENT, etherparse::IpNumber::ICMP)
        .icmpv4(etherparse::Icmpv4Type::DestinationUnreachable(
            etherparse::icmpv4::DestUnreachableHeader::Port,
        ))
        .write(&mut expected, quoted)?;
    assert_eq!(hex(&out), hex(&expected));
    Ok(())
}

#[test]
fn a_reset_is_never_answered_with_a_reset() -> Result<()> {
    let mut dp = dataplane(vec![frontend(80, PROTO_TCP, ALG_RANDOM, vec![])])?;
    let mut rst = Vec::new();
    etherparse::PacketBuilder::ethernet2(
        weir_tests::packets::MAC_POD,
        weir_tests::packets::MAC_NODE,
    )
    .ipv4(CLIENT, VIP, 64)
    .tcp(40005, 80, 5, 0)
    .rst()
    .write(&mut rst, &[])?;
    let (action, out) = run(&mut dp, &rst)?;
    assert_eq!((action, hex(&out)), (TC_ACT_OK, hex(&rst)));
    Ok(())
}

#[test]
fn an_established_flow_stays_on_its_backend() -> Result<()> {
    let backends = (1..=8)
        .map(|i| backend([198, 18, 2, i], 8080, PROTO_TCP))
        .collect();
    let mut dp = dataplane(vec![frontend(80, PROTO_TCP, ALG_RANDOM, backends)])?;
    let syn = Pkt::tcp(CLIENT, 40005, VIP, 80).build();
    let (_, first) = run(&mut dp, &syn)?;
    for _ in 0..20 {
        assert_eq!(
            run(&mut dp, &syn)?.1,
            first,
            "the flow moved to another backend"
        );
    }
    Ok(())
}

#[test]
fn a_flow_whose_backend_was_removed_moves_to_a_remaining_one() -> Result<()> {
    let mut dp = one_backend_tcp()?;
    let syn = Pkt::tcp(CLIENT, 40006, VIP, 80);
    assert_rewrites(&mut dp, &syn, &syn.with_dst(B1, 8080))?;
    dp.sync(&desired(vec![frontend(
        80,
        PROTO_TCP,
        ALG_RANDOM,
        vec![backend(B2, 8080, PROTO_TCP)],
    )]))?;
    assert_rewrites(&mut dp, &syn, &syn.with_dst(B2, 8080))
}

#[test]
fn the_hash_algorithm_picks_the_backend_the_flow_hash_predicts() -> Result<()> {
    let addrs: Vec<[u8; 4]> = (1..=5).map(|i| [198, 18, 3, i]).collect();
    let backends: Vec<Backend> = addrs.iter().map(|a| backend(*a, 8080, PROTO_TCP)).collect();
    let mut dp = dataplane(vec![frontend(80, PROTO_TCP, ALG_HASH, backends)])?;
    let mut seen = std::collections::BTreeSet::new();
    for sport in 41000..41040u16 {
        let syn = Pkt::tcp(CLIENT, sport, VIP, 80);
        let slot = flow_hash(CLIENT, VIP, sport, 80, PROTO_TCP) % 5;
        let want = addrs[slot as usize];
        assert_rewrites(&mut dp, &syn, &syn.with_dst(want, 8080))?;
        seen.insert(want);
    }
    assert_eq!(
        seen.len(),
        5,
        "40 flows should reach all 5 backends: {:?}",
        seen.iter().map(|a| Ipv4Addr::from(*a)).collect::<Vec<_>>()
    );
    Ok(())
}

#[test]
fn the_helper_reports_the_udp_checksum_offset() {
    // Guards the test helper itself: the checksum offset it reports holds the checksum.
    let pkt = Pkt::udp(CLIENT, 1, VIP, 2);
    let bytes = pkt.build();
    let off = pkt.l4_csum_offset();
    let sum = u16::from_be_bytes([bytes[off], bytes[off + 1]]);
    let udp = etherparse::SlicedPacket::from_ethernet(&bytes).expect("parses");
    let Some(etherparse::TransportSlice::Udp(u)) = udp.transport else {
        panic!("not UDP")
    };
    assert_eq!(sum, u.checksum());
}

/// CLOCK_MONOTONIC in nanoseconds: the clock bpf_ktime_get_ns reads.
fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the provided timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn with_affinity(mut f: (ServiceKey, Frontend), seconds: u32) -> (ServiceKey, Frontend) {
    f.1.affinity_timeout = seconds;
    f
}

#[test]
fn session_affinity_sends_every_new_flow_of_a_client_to_one_backend() -> Result<()> {
    let backends = (1..=8)
        .map(|i| backend([198, 18, 2, i], 8080, PROTO_TCP))
        .collect();
    let mut dp = dataplane(vec![with_affinity(
        frontend(80, PROTO_TCP, ALG_RANDOM, backends),
        60,
    )])?;
    let mut seen = std::collections::BTreeSet::new();
    for sport in 44000..44020u16 {
        let (_, out) = run(&mut dp, &Pkt::tcp(CLIENT, sport, VIP, 80).build())?;
        seen.insert(out[30..34].to_vec()); // destination address
    }
    assert_eq!(
        seen.len(),
        1,
        "20 flows of one client went to {} backends",
        seen.len()
    );
    let entry = dp.maps.affinity.get(
        &AffinityKey {
            service_id: 1,
            client: CLIENT,
        },
        0,
    )?;
    let backend = dp.maps.backends.get(&entry.backend_id, 0)?;
    assert_eq!(seen.into_iter().next().unwrap(), backend.addr.to_vec());
    Ok(())
}

#[test]
fn an_expired_affinity_entry_is_not_used() -> Result<()> {
    // Hash picks a predictable backend; an affinity entry overrides it until it expires.
    let backends = vec![backend(B1, 8080, PROTO_TCP), backend(B2, 8080, PROTO_TCP)];
    let mut dp = dataplane(vec![with_affinity(
        frontend(80, PROTO_TCP, ALG_HASH, backends),
        1,
    )])?;
    let sport = (45000..46000u16)
        .find(|p| flow_hash(CLIENT, VIP, *p, 80, PROTO_TCP).is_multiple_of(2))
        .expect("a port hashing to B1");
    let b2_id = dp
        .programmed()
        .services
        .values()
        .next()
        .expect("one service")
        .backend_ids[1];
    let key = AffinityKey {
        service_id: 1,
        client: CLIENT,
    };

    dp.maps.affinity.insert(
        key,
        AffinityValue {
            backend_id: b2_id,
            _pad: 0,
            last_used_ns: monotonic_ns(),
        },
        0,
    )?;
    let syn = Pkt::tcp(CLIENT, sport, VIP, 80);
    assert_rewrites(&mut dp, &syn, &syn.with_dst(B2, 8080))?;

    dp.maps
        .ct
        .remove(&ct_key(CLIENT, sport, VIP, 80, PROTO_TCP))?;
    let stale = monotonic_ns() - 2_000_000_000;
    dp.maps.affinity.insert(
        key,
        AffinityValue {
            backend_id: b2_id,
            _pad: 0,
            last_used_ns: stale,
        },
        0,
    )?;
    assert_rewrites(&mut dp, &syn, &syn.with_dst(B1, 8080))
}

#[test]
fn maglev_picks_the_backend_its_table_predicts() -> Result<()> {
    let addrs: Vec<[u8; 4]> = (1..=5).map(|i| [198, 18, 4, i]).collect();
    let backends: Vec<Backend> = addrs.iter().map(|a| backend(*a, 8080, PROTO_UDP)).collect();
    let table = weir::maglev::table(&backends, lb_common::DEFAULT_MAGLEV_M);
    let mut dp = dataplane(vec![frontend(53, PROTO_UDP, ALG_MAGLEV, backends)])?;
    for sport in 46000..46040u16 {
        let pkt = Pkt::udp(CLIENT, sport, VIP, 53);
        let h = flow_hash(CLIENT, VIP, sport, 53, PROTO_UDP) % lb_common::DEFAULT_MAGLEV_M;
        let want = addrs[table[h as usize] as usize];
        assert_rewrites(&mut dp, &pkt, &pkt.with_dst(want, 8080))?;
    }
    Ok(())
}

#[test]
fn a_fin_marks_the_flow_closing_in_conntrack() -> Result<()> {
    let mut dp = one_backend_tcp()?;
    run(&mut dp, &Pkt::tcp(CLIENT, 47000, VIP, 80).build())?;
    let key = ct_key(CLIENT, 47000, VIP, 80, PROTO_TCP);
    assert_eq!(
        dp.maps.ct.get(&key, 0)?.flags & lb_common::CT_FLAG_CLOSING,
        0
    );
    let mut fin = Vec::new();
    etherparse::PacketBuilder::ethernet2(
        weir_tests::packets::MAC_POD,
        weir_tests::packets::MAC_NODE,
    )
    .ipv4(CLIENT, VIP, 64)
    .tcp(47000, 80, 1001, 64240)
    .fin()
    .ack(1)
    .write(&mut fin, &[])?;
    let (_, out) = run(&mut dp, &fin)?;
    assert_eq!(
        &out[30..34],
        &B1,
        "the FIN is translated like the rest of the flow"
    );
    assert_eq!(
        dp.maps.ct.get(&key, 0)?.flags & lb_common::CT_FLAG_CLOSING,
        lb_common::CT_FLAG_CLOSING
    );
    Ok(())
}

/// An established flow's packet leaves its conntrack entry alone while the
/// timestamp is fresh (no map write per packet) and refreshes it once it is
/// older than the refresh interval (1 s with the default timeouts), so an
/// active flow never looks idle to the garbage collector.
#[test]
fn an_established_packet_refreshes_conntrack_only_when_the_timestamp_is_stale() -> Result<()> {
    let mut dp = one_backend_tcp()?;
    let syn = Pkt::tcp(CLIENT, 47002, VIP, 80);
    run(&mut dp, &syn.build())?;
    let key = ct_key(CLIENT, 47002, VIP, 80, PROTO_TCP);
    let created = dp.maps.ct.get(&key, 0)?.last_seen_ns;

    let (_, out) = run(&mut dp, &syn.build())?;
    assert_eq!(&out[30..34], &B1, "the packet is translated");
    assert_eq!(
        dp.maps.ct.get(&key, 0)?.last_seen_ns,
        created,
        "a fresh entry was written again"
    );

    let mut entry = dp.maps.ct.get(&key, 0)?;
    let stale = monotonic_ns() - 2_000_000_000;
    entry.last_seen_ns = stale;
    dp.maps.ct.insert(key, entry, 0)?;
    let before = monotonic_ns();
    let (_, out) = run(&mut dp, &syn.build())?;
    assert_eq!(&out[30..34], &B1, "the packet is translated");
    let refreshed = dp.maps.ct.get(&key, 0)?.last_seen_ns;
    assert!(
        refreshed >= before,
        "a stale entry was not refreshed: {stale} -> {refreshed}, packet at {before}"
    );
    Ok(())
}

/// A client that reuses the port of a closed connection opens a new flow: a
/// SYN on a closing entry is a new flow (counted, backend chosen anew) whose
/// entry is no longer closing, so it is not expired while in use.
#[test]
fn a_syn_on_a_closed_flow_starts_a_new_one() -> Result<()> {
    let mut dp = one_backend_tcp()?;
    let syn = Pkt::tcp(CLIENT, 47001, VIP, 80).build();
    run(&mut dp, &syn)?;
    let mut fin = Vec::new();
    etherparse::PacketBuilder::ethernet2(
        weir_tests::packets::MAC_POD,
        weir_tests::packets::MAC_NODE,
    )
    .ipv4(CLIENT, VIP, 64)
    .tcp(47001, 80, 1001, 64240)
    .fin()
    .ack(1)
    .write(&mut fin, &[])?;
    run(&mut dp, &fin)?;
    let key = ct_key(CLIENT, 47001, VIP, 80, PROTO_TCP);
    let closing = |dp: &Dataplane| -> Result<u8> {
        Ok(dp.maps.ct.get(&key, 0)?.flags & lb_common::CT_FLAG_CLOSING)
    };
    assert_eq!(closing(&dp)?, lb_common::CT_FLAG_CLOSING);
    let id = dp.maps.services.iter().next().context("service")??.1.id;
    assert_eq!(dp.maps.service_stats(id).flows, 1);

    let (_, out) = run(&mut dp, &syn)?;
    assert_eq!(&out[30..34], &B1, "the new SYN is translated");
    assert_eq!(
        closing(&dp)?,
        0,
        "the reopened flow is still marked closing"
    );
    assert_eq!(
        dp.maps.service_stats(id).flows,
        2,
        "the SYN was not a new flow"
    );
    Ok(())
}

/// The reply of a NodePort flow gets the node's own address as its source.
/// The stack's input path would drop that as a martian, so tc sends it
/// straight to the client's device (FIB lookup + redirect) instead.
#[test]
fn a_reply_to_a_node_port_goes_straight_to_the_clients_device() -> Result<()> {
    use weir_tests::packets::{CLIENT_MAC, NODE_IP, NODE_MAC, UPLINK_CLIENT};
    let fib = FibNs::with_uplink()?;
    let (mut key, f) = frontend(
        30080,
        PROTO_TCP,
        ALG_RANDOM,
        vec![backend(B1, 8080, PROTO_TCP)],
    );
    key.addr = NODE_IP.into();
    let mut dp = dataplane(vec![(key, f)])?;
    let syn = Pkt::tcp(UPLINK_CLIENT, 40010, NODE_IP, 30080);
    let (action, out) = run_in(&fib, &mut dp, &syn.build())?;
    assert_eq!(
        (action, hex(&out)),
        (TC_ACT_OK, hex(&syn.with_dst(B1, 8080).build()))
    );

    let reply = Pkt::tcp(B1, 8080, UPLINK_CLIENT, 40010);
    let (action, out) = run_in(&fib, &mut dp, &reply.build())?;
    let expected = Pkt::tcp(NODE_IP, 30080, UPLINK_CLIENT, 40010).with_macs(NODE_MAC, CLIENT_MAC);
    assert_eq!(
        (action, hex(&out)),
        (TC_ACT_REDIRECT, hex(&expected.build()))
    );
    Ok(())
}

/// A router between the node and the client.
const ROUTER: [u8; 4] = [198, 18, 9, 9];

/// The IP packet of `p` (no Ethernet header), its first `n` bytes.
fn quote(p: &Pkt, n: usize) -> Vec<u8> {
    let b = p.build();
    b[14..n.saturating_add(14).min(b.len())].to_vec()
}

/// Path MTU discovery through a service, towards the client: a router's
/// "fragmentation needed" about a translated packet (client -> backend)
/// reaches the client quoting the packet the client sent (client ->
/// frontend), whole (its TCP checksum updated too) or only its first 8
/// bytes of TCP, as routers quote; every checksum is etherparse's.
#[test]
fn an_icmp_error_about_a_translated_packet_reaches_the_client_as_it_sent_it() -> Result<()> {
    let mut dp = one_backend_tcp()?;
    let syn = Pkt::tcp(CLIENT, 40000, VIP, 80);
    assert_rewrites(&mut dp, &syn, &syn.with_dst(B1, 8080))?;
    let sent = syn.with_dst(B1, 8080);
    for n in [usize::MAX, 28] {
        let error = icmp_error(ROUTER, CLIENT, frag_needed(), &quote(&sent, n));
        let expected = icmp_error(ROUTER, CLIENT, frag_needed(), &quote(&syn, n));
        let (action, out) = run(&mut dp, &error)?;
        assert_eq!(action, TC_ACT_OK);
        assert_eq!(hex(&out), hex(&expected), "quoting {n} bytes");
    }
    Ok(())
}

/// A backend's own "port unreachable" about a UDP datagram: the client
/// sees it come from the frontend, about the datagram it sent, with the
/// quoted UDP checksum updated.
#[test]
fn a_backends_port_unreachable_comes_from_the_frontend() -> Result<()> {
    let mut dp = one_backend_udp()?;
    let dgram = Pkt::udp(CLIENT, 40000, VIP, 53);
    assert_rewrites(&mut dp, &dgram, &dgram.with_dst(B2, 5353))?;
    let sent = dgram.with_dst(B2, 5353);
    let error = icmp_error(B2, CLIENT, port_unreachable(), &quote(&sent, usize::MAX));
    let expected = icmp_error(VIP, CLIENT, port_unreachable(), &quote(&dgram, usize::MAX));
    let (action, out) = run(&mut dp, &error)?;
    assert_eq!(action, TC_ACT_OK);
    assert_eq!(hex(&out), hex(&expected));
    Ok(())
}

/// Towards the backend: a router's "fragmentation needed" about a reply
/// (frontend -> client, as the client's path saw it) goes to the backend
/// that sent it, quoting backend -> client.
#[test]
fn an_icmp_error_about_a_reply_goes_to_the_backend_that_sent_it() -> Result<()> {
    let mut dp = one_backend_tcp()?;
    let syn = Pkt::tcp(CLIENT, 40000, VIP, 80);
    assert_rewrites(&mut dp, &syn, &syn.with_dst(B1, 8080))?;
    let reply = Pkt::tcp(VIP, 80, CLIENT, 40000);
    let error = icmp_error(ROUTER, VIP, frag_needed(), &quote(&reply, usize::MAX));
    let sent = reply.with_src(B1, 8080);
    let expected = icmp_error(ROUTER, B1, frag_needed(), &quote(&sent, usize::MAX));
    let (action, out) = run(&mut dp, &error)?;
    assert_eq!(action, TC_ACT_OK);
    assert_eq!(hex(&out), hex(&expected));
    Ok(())
}

/// ICMP errors about flows conntrack does not know, and other ICMP, pass
/// byte for byte.
#[test]
fn icmp_about_untracked_flows_passes_unchanged() -> Result<()> {
    let mut dp = one_backend_tcp()?;
    let other = Pkt::tcp(CLIENT, 40001, B1, 8080);
    for error in [
        icmp_error(ROUTER, CLIENT, frag_needed(), &quote(&other, usize::MAX)),
        icmp_error(
            ROUTER,
            CLIENT,
            etherparse::Icmpv4Type::EchoRequest(etherparse::IcmpEchoHeader { id: 1, seq: 1 }),
            b"ping",
        ),
    ] {
        let (action, out) = run(&mut dp, &error)?;
        assert_eq!(action, TC_ACT_OK);
        assert_eq!(hex(&out), hex(&error));
    }
    Ok(())
}

/// Service counters are per CPU up to PERCPU_STATS_MAX service ids; beyond
/// (a larger --max-services) they are one array shared by all CPUs, so the
/// cap costs 96 MiB once rather than per CPU, and STATS_V1 keeps one entry.
/// Either way a flow's packets count where /metrics reads them.
#[test]
fn beyond_the_per_cpu_limit_service_counters_are_one_shared_array() -> Result<()> {
    use lb_common::{MAX_SERVICES, PERCPU_STATS_MAX};
    for (max_services, shared) in [(MAX_SERVICES, false), (PERCPU_STATS_MAX + 1, true)] {
        let cfg = PlanConfig {
            max_services,
            ..Default::default()
        };
        let ids = cfg.service_ids() + 1;
        let mut dp = Dataplane::load_unpinned(cfg)?;
        dp.sync(&desired(vec![frontend(
            80,
            PROTO_TCP,
            ALG_RANDOM,
            vec![backend(B1, 8080, PROTO_TCP)],
        )]))?;
        let syn = Pkt::tcp(CLIENT, 47100, VIP, 80);
        for _ in 0..3 {
            assert_rewrites(&mut dp, &syn, &syn.with_dst(B1, 8080))?;
        }
        let (_, svc) = dp.maps.frontends()[0];
        let stats = dp.maps.service_stats(svc.id);
        assert_eq!(
            (stats.flows, stats.packets),
            (1, 3),
            "max_services {max_services}"
        );
        let (per_cpu, one_array) = if shared { (1, ids) } else { (ids, 1) };
        assert_eq!(dp.maps.stats.len(), per_cpu, "max_services {max_services}");
        assert_eq!(
            dp.maps.stats_shared.len(),
            one_array,
            "max_services {max_services}"
        );
    }
    Ok(())
}
