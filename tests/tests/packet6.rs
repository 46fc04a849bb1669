//! IPv6 packet tests through BPF_PROG_TEST_RUN: the real tc program with
//! IPv6 frontends programmed by the real sync path; exact output bytes
//! compared with packets built independently by etherparse (checksums
//! included), as packet.rs does for IPv4.
use anyhow::{Context, Result};
use aya::programs::{TestRun, TestRunOptions};
use lb_common::{
    flow_hash6, CtKey6, ALG_HASH, ALG_MAGLEV, ALG_RANDOM, CT_FORWARD, CT_REPLY, PASS_IPV6_EXT,
    PROTO_TCP, PROTO_UDP, SCOPE_EXTERNAL,
};
use weir::{
    dataplane::{loader::tc_program, Dataplane},
    model::ObjectRef,
    translate::{Backend, Frontend, FrontendKey},
};
use weir_tests::packets::{answer6, backend6, hex, icmp6_error, v6, FibNs, Pkt, Pkt6};

const TC_ACT_OK: u32 = 0;
const TC_ACT_REDIRECT: u32 = 7;
const VIP: [u8; 16] = v6(0x19, 0x10);
const CLIENT: [u8; 16] = v6(0x1, 0x2);
const B1: [u8; 16] = v6(0x1, 0x11);
const B2: [u8; 16] = v6(0x1, 0x12);

fn frontend(
    port: u16,
    proto: u8,
    algorithm: u8,
    backends: Vec<Backend>,
) -> (FrontendKey, Frontend) {
    (
        FrontendKey {
            addr: VIP.into(),
            port,
            proto,
            scope: SCOPE_EXTERNAL,
        },
        Frontend {
            service: ObjectRef::new("test", "svc6"),
            algorithm,
            backends,
            ..Default::default()
        },
    )
}

fn dataplane(frontends: Vec<(FrontendKey, Frontend)>) -> Result<Dataplane> {
    weir_tests::packets::ipv6_dataplane(frontends)
}

/// TCP 80 on the VIP with the single backend B1:8080.
fn one_backend_tcp() -> Result<Dataplane> {
    dataplane(vec![frontend(
        80,
        PROTO_TCP,
        ALG_RANDOM,
        vec![backend6(B1, 8080, PROTO_TCP)],
    )])
}

/// UDP 53 on the VIP with the single backend B2:5353.
fn one_backend_udp() -> Result<Dataplane> {
    dataplane(vec![frontend(
        53,
        PROTO_UDP,
        ALG_RANDOM,
        vec![backend6(B2, 5353, PROTO_UDP)],
    )])
}

/// Runs the tc program on `packet` in an empty namespace (replies find no
/// route and go to the stack); returns the action and the output bytes.
fn run(dp: &mut Dataplane, packet: &[u8]) -> Result<(u32, Vec<u8>)> {
    let fib = FibNs::empty()?;
    let mut out = vec![0u8; packet.len() + 128];
    let mut opts = TestRunOptions::new();
    opts.data_in = Some(packet);
    opts.data_out = Some(&mut out);
    let result = fib.run(|| Ok(tc_program(&mut dp.ebpf).test_run(opts)?))?;
    out.truncate(result.data_size_out as usize);
    Ok((result.return_value, out))
}

fn assert_rewrites(dp: &mut Dataplane, input: &Pkt6, expected: &Pkt6) -> Result<()> {
    let (action, out) = run(dp, &input.build())?;
    assert_eq!(action, TC_ACT_OK);
    assert_eq!(
        hex(&out),
        hex(&expected.build()),
        "input {input:?}, expected {expected:?}"
    );
    Ok(())
}

fn ct_key(saddr: [u8; 16], sport: u16, daddr: [u8; 16], dport: u16, proto: u8) -> CtKey6 {
    CtKey6 {
        saddr,
        daddr,
        sport,
        dport,
        proto,
        _pad: [0; 3],
    }
}

#[test]
fn tcp_to_an_ipv6_cluster_ip_is_dnated_and_the_reply_reverse_nated() -> Result<()> {
    let mut dp = one_backend_tcp()?;
    let syn = Pkt6::tcp(CLIENT, 40000, VIP, 80);
    assert_rewrites(&mut dp, &syn, &syn.with_dst(B1, 8080))?;
    // Both directions are in CT6_V1.
    let fwd = dp
        .maps
        .ct6
        .get(&ct_key(CLIENT, 40000, VIP, 80, PROTO_TCP), 0)?;
    assert_eq!(
        (fwd.kind, fwd.nat_addr, fwd.nat_port),
        (CT_FORWARD, B1, 8080)
    );
    let rev = dp
        .maps
        .ct6
        .get(&ct_key(B1, 8080, CLIENT, 40000, PROTO_TCP), 0)?;
    assert_eq!((rev.kind, rev.nat_addr, rev.nat_port), (CT_REPLY, VIP, 80));
    // `weir bpf ct list` and `weir bpf lb list` show the addresses readably.
    let rows = weir::inspect::ct_rows(&dp.maps);
    let row = rows
        .iter()
        .find(|r| r.kind == "forward")
        .context("a forward row")?;
    assert_eq!(
        (row.tuple.as_str(), row.nat.as_str()),
        (
            "[2001:db8:0:1::2]:40000 -> [2001:db8:0:19::10]:80/TCP",
            "[2001:db8:0:1::11]:8080"
        )
    );
    let lb = weir::inspect::lb_tables(&dp.maps);
    assert_eq!(lb.frontends[0].frontend, "[2001:db8:0:19::10]:80/TCP");
    assert_eq!(lb.backends[0].backend, "[2001:db8:0:1::11]:8080/TCP");
    assert_eq!(lb.revnat[0].frontend, "[2001:db8:0:19::10]:80");
    // A second packet of the flow takes the established path.
    assert_rewrites(&mut dp, &syn, &syn.with_dst(B1, 8080))?;
    // The backend's answer gets the frontend back as its source.
    let reply = Pkt6::tcp(B1, 8080, CLIENT, 40000);
    assert_rewrites(&mut dp, &reply, &reply.with_src(VIP, 80))?;
    Ok(())
}

#[test]
fn udp_to_an_ipv6_cluster_ip_is_dnated_and_answered_from_the_frontend() -> Result<()> {
    let mut dp = one_backend_udp()?;
    let query = Pkt6::udp(CLIENT, 33000, VIP, 53);
    assert_rewrites(&mut dp, &query, &query.with_dst(B2, 5353))?;
    let answer = Pkt6::udp(B2, 5353, CLIENT, 33000);
    assert_rewrites(&mut dp, &answer, &answer.with_src(VIP, 53))?;
    Ok(())
}

#[test]
fn hash_and_maglev_pick_ipv6_backends_by_the_flow_and_spread_them() -> Result<()> {
    let backends = vec![backend6(B1, 8080, PROTO_TCP), backend6(B2, 8080, PROTO_TCP)];
    let mut hash = dataplane(vec![frontend(80, PROTO_TCP, ALG_HASH, backends.clone())])?;
    let mut maglev = dataplane(vec![frontend(80, PROTO_TCP, ALG_MAGLEV, backends)])?;
    let mut seen = std::collections::BTreeSet::new();
    for sport in 41000..41040u16 {
        let syn = Pkt6::tcp(CLIENT, sport, VIP, 80);
        // The hash algorithm's choice, predicted from the shared flow hash
        // (slots 1 and 2 hold the backends in order).
        let h = flow_hash6(CLIENT, VIP, sport, 80, PROTO_TCP);
        let want = if h.is_multiple_of(2) { B1 } else { B2 };
        assert_rewrites(&mut hash, &syn, &syn.with_dst(want, 8080))?;
        let (_, out) = run(&mut maglev, &syn.build())?;
        let dst: [u8; 16] = out[38..54].try_into()?;
        assert!(dst == B1 || dst == B2, "maglev sent {sport} to {dst:?}");
        // The same flow always gets the same backend.
        let (_, again) = run(&mut maglev, &syn.build())?;
        assert_eq!(hex(&out), hex(&again));
        seen.insert(dst);
    }
    assert_eq!(seen.len(), 2, "40 flows all went to one backend");
    Ok(())
}

#[test]
fn a_tcp_syn_to_an_ipv6_frontend_without_backends_is_answered_with_a_reset() -> Result<()> {
    let mut dp = dataplane(vec![frontend(80, PROTO_TCP, ALG_RANDOM, vec![])])?;
    let (action, out) = run(&mut dp, &Pkt6::tcp(CLIENT, 40004, VIP, 80).build())?;
    assert_eq!(action, TC_ACT_REDIRECT);
    // seq 1000 with 16 bytes and SYN: RST+ACK with ack 1017 (RFC 793).
    let mut expected = Vec::new();
    answer6(VIP, CLIENT)
        .tcp(80, 40004, 0, 0)
        .rst()
        .ack(1017)
        .write(&mut expected, &[])?;
    assert_eq!(hex(&out), hex(&expected));
    Ok(())
}

#[test]
fn a_udp_datagram_to_an_ipv6_frontend_without_backends_gets_icmpv6_port_unreachable() -> Result<()>
{
    let mut dp = dataplane(vec![frontend(53, PROTO_UDP, ALG_RANDOM, vec![])])?;
    let query = Pkt6::udp(CLIENT, 33002, VIP, 53).build();
    let (action, out) = run(&mut dp, &query)?;
    assert_eq!(action, TC_ACT_REDIRECT);
    // The quote: the original IPv6 header and the 8 bytes after it.
    let quoted = &query[14..14 + 48];
    let mut expected = Vec::new();
    answer6(VIP, CLIENT)
        .icmpv6(etherparse::Icmpv6Type::DestinationUnreachable(
            etherparse::icmpv6::DestUnreachableCode::Port,
        ))
        .write(&mut expected, quoted)?;
    assert_eq!(hex(&out), hex(&expected));
    Ok(())
}

#[test]
fn ipv6_packets_with_extension_headers_pass_untouched_and_are_counted() -> Result<()> {
    let mut dp = one_backend_tcp()?;
    let passed =
        |dp: &Dataplane| -> Result<u64> { Ok(dp.maps.passed.get(&PASS_IPV6_EXT, 0)?.iter().sum()) };
    let before = passed(&dp)?;
    let packet = Pkt6 {
        hop_by_hop: true,
        ..Pkt6::tcp(CLIENT, 40010, VIP, 80)
    }
    .build();
    // The hop-by-hop header is really there, and etherparse reads the TCP
    // header behind it.
    assert_eq!(packet[14 + 6], 0);
    let parsed = etherparse::SlicedPacket::from_ethernet(&packet)?;
    assert!(matches!(
        parsed.transport,
        Some(etherparse::TransportSlice::Tcp(_))
    ));
    let (action, out) = run(&mut dp, &packet)?;
    assert_eq!(action, TC_ACT_OK);
    assert_eq!(hex(&out), hex(&packet));
    assert_eq!(passed(&dp)? - before, 1);
    // Nothing was tracked for it.
    assert!(dp
        .maps
        .ct6
        .get(&ct_key(CLIENT, 40010, VIP, 80, PROTO_TCP), 0)
        .is_err());
    Ok(())
}

#[test]
fn ipv4_and_ipv6_frontends_work_side_by_side() -> Result<()> {
    let v4_vip = [198, 19, 0, 10];
    let v4_backend = [198, 18, 1, 11];
    let mut frontends = vec![frontend(
        80,
        PROTO_TCP,
        ALG_RANDOM,
        vec![backend6(B1, 8080, PROTO_TCP)],
    )];
    frontends.push((
        FrontendKey {
            addr: v4_vip.into(),
            port: 80,
            proto: PROTO_TCP,
            scope: SCOPE_EXTERNAL,
        },
        Frontend {
            service: ObjectRef::new("test", "svc4"),
            backends: vec![weir_tests::packets::backend(v4_backend, 8080, PROTO_TCP)],
            ..Default::default()
        },
    ));
    let mut dp = dataplane(frontends)?;
    let syn6 = Pkt6::tcp(CLIENT, 40020, VIP, 80);
    assert_rewrites(&mut dp, &syn6, &syn6.with_dst(B1, 8080))?;
    let syn4 = Pkt::tcp([198, 18, 1, 2], 40020, v4_vip, 80);
    let (action, out) = run(&mut dp, &syn4.build())?;
    assert_eq!(action, TC_ACT_OK);
    assert_eq!(hex(&out), hex(&syn4.with_dst(v4_backend, 8080).build()));
    // Service ids are unique across the families.
    let ids: Vec<u32> = dp
        .programmed()
        .services
        .values()
        .map(|s| s.value.id)
        .collect();
    assert_eq!(ids.len(), 2);
    assert_ne!(ids[0], ids[1]);
    let stats = dp.maps.service_stats(
        dp.programmed()
            .services
            .iter()
            .find(|(k, _)| k.addr.is_ipv6())
            .context("the IPv6 frontend")?
            .1
            .value
            .id,
    );
    assert_eq!((stats.flows, stats.packets), (1, 1));
    Ok(())
}

/// A router between the node and the client.
const ROUTER: [u8; 16] = v6(0x9, 0x9);

fn quote(p: &Pkt6) -> Vec<u8> {
    p.build()[14..].to_vec()
}

fn too_big() -> etherparse::Icmpv6Type {
    etherparse::Icmpv6Type::PacketTooBig { mtu: 1280 }
}

/// Path MTU discovery through an IPv6 service, both ways: a router's
/// "packet too big" about a translated packet reaches the client quoting
/// the packet it sent (client -> frontend); one about a reply (frontend ->
/// client) goes to the backend that sent it, quoting backend -> client. The
/// ICMPv6 checksum (over the pseudo-header too) and the quoted TCP checksum
/// are etherparse's.
#[test]
fn icmpv6_packet_too_big_is_translated_towards_the_client_and_the_backend() -> Result<()> {
    let mut dp = one_backend_tcp()?;
    let syn = Pkt6::tcp(CLIENT, 40000, VIP, 80);
    assert_rewrites(&mut dp, &syn, &syn.with_dst(B1, 8080))?;

    let error = icmp6_error(ROUTER, CLIENT, too_big(), &quote(&syn.with_dst(B1, 8080)));
    let expected = icmp6_error(ROUTER, CLIENT, too_big(), &quote(&syn));
    let (action, out) = run(&mut dp, &error)?;
    assert_eq!(action, TC_ACT_OK);
    assert_eq!(hex(&out), hex(&expected), "towards the client");

    let reply = Pkt6::tcp(VIP, 80, CLIENT, 40000);
    let error = icmp6_error(ROUTER, VIP, too_big(), &quote(&reply));
    let expected = icmp6_error(ROUTER, B1, too_big(), &quote(&reply.with_src(B1, 8080)));
    let (action, out) = run(&mut dp, &error)?;
    assert_eq!(action, TC_ACT_OK);
    assert_eq!(hex(&out), hex(&expected), "towards the backend");

    // About a flow conntrack does not know: untouched.
    let other = icmp6_error(
        ROUTER,
        CLIENT,
        too_big(),
        &quote(&Pkt6::tcp(CLIENT, 1, B1, 8080)),
    );
    let (_, out) = run(&mut dp, &other)?;
    assert_eq!(hex(&out), hex(&other));
    Ok(())
}

/// A backend's own ICMPv6 "port unreachable" about a UDP datagram comes to
/// the client from the frontend.
#[test]
fn an_ipv6_backends_port_unreachable_comes_from_the_frontend() -> Result<()> {
    let mut dp = one_backend_udp()?;
    let query = Pkt6::udp(CLIENT, 33000, VIP, 53);
    assert_rewrites(&mut dp, &query, &query.with_dst(B2, 5353))?;
    let unreachable = || {
        etherparse::Icmpv6Type::DestinationUnreachable(
            etherparse::icmpv6::DestUnreachableCode::Port,
        )
    };
    let error = icmp6_error(B2, CLIENT, unreachable(), &quote(&query.with_dst(B2, 5353)));
    let expected = icmp6_error(VIP, CLIENT, unreachable(), &quote(&query));
    let (action, out) = run(&mut dp, &error)?;
    assert_eq!(action, TC_ACT_OK);
    assert_eq!(hex(&out), hex(&expected));
    Ok(())
}
