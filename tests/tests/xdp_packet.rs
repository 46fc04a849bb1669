//! Packet tests of the XDP program through BPF_PROG_TEST_RUN: every
//! north-south path (local backend, remote backend with SNAT and FIB
//! forwarding, the reply's reverse NAT, source ranges, reject, traffic
//! policy) with exact output bytes built independently by etherparse.
//! The FIB lookups run in a namespace of the test's own with a veth, a route
//! and permanent neighbour entries, so that they have a fixed answer.
use anyhow::{Context, Result};
use aya::programs::{TestRun, TestRunOptions};
use lb_common::{
    ALG_RANDOM, BACKEND_LOCAL, CT_FORWARD, DROP_NO_LOCAL_ENDPOINT, DROP_SOURCE_RANGE, PROTO_TCP,
    PROTO_UDP, SCOPE_EXTERNAL, SNAT_PORT_MAX, SNAT_PORT_MIN, SVC_FLAG_DROP_IF_EMPTY,
    SVC_FLAG_EXTERNAL, SVC_FLAG_SOURCE_RANGES,
};
use std::net::Ipv4Addr;
use weir::translate::{Backend, FrontendKey as ServiceKey};
use weir::{
    dataplane::{loader::xdp_program, sync::PlanConfig, Dataplane},
    model::ObjectRef,
    translate::Frontend,
};
use weir_tests::packets::{
    answer, backend, ct_key, hex, FibNs, Pkt, CLIENT_MAC, NODE2_MAC, NODE_IP, NODE_MAC,
};

/// The external client, on the uplink's subnet.
const CLIENT: [u8; 4] = weir_tests::packets::UPLINK_CLIENT;

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;

const LB_IP: [u8; 4] = [198, 19, 200, 1];
const CLUSTER_IP: [u8; 4] = [198, 19, 0, 10];
const NODE_PORT: u16 = 30080;
/// A pod on this node and one on the other node.
const LOCAL_POD: [u8; 4] = [198, 18, 11, 2];
const REMOTE_POD: [u8; 4] = [198, 18, 12, 3];

fn local(addr: [u8; 4], port: u16, proto: u8) -> Backend {
    Backend {
        state: BACKEND_LOCAL,
        ..backend(addr, port, proto)
    }
}

fn frontend(
    addr: [u8; 4],
    port: u16,
    proto: u8,
    flags: u16,
    backends: Vec<Backend>,
) -> (ServiceKey, Frontend) {
    (
        ServiceKey {
            addr: addr.into(),
            port,
            proto,
            scope: SCOPE_EXTERNAL,
        },
        Frontend {
            service: ObjectRef::new("test", "svc"),
            algorithm: ALG_RANDOM,
            backends,
            flags,
            ..Default::default()
        },
    )
}

fn node_port(proto: u8, backends: Vec<Backend>) -> (ServiceKey, Frontend) {
    frontend(NODE_IP, NODE_PORT, proto, SVC_FLAG_EXTERNAL, backends)
}

fn dataplane(frontends: Vec<(ServiceKey, Frontend)>) -> Result<Dataplane> {
    let mut dp = Dataplane::load_unpinned(PlanConfig::default())?;
    dp.sync(&weir_tests::packets::desired(frontends))?;
    Ok(dp)
}

/// Runs the XDP program on `packet`, received on `ifindex` when given (else
/// on the loopback device of the calling thread's namespace).
fn run(dp: &mut Dataplane, packet: &[u8], ifindex: Option<u32>) -> Result<(u32, Vec<u8>)> {
    let mut out = vec![0u8; packet.len() + 256];
    // struct xdp_md: data, data_end, data_meta, ingress_ifindex, rx_queue_index, egress_ifindex.
    let ctx: Vec<u8> = [0, packet.len() as u32, 0, ifindex.unwrap_or(0), 0, 0]
        .iter()
        .flat_map(|v| v.to_ne_bytes())
        .collect();
    let mut opts = TestRunOptions::new();
    opts.data_in = Some(packet);
    opts.data_out = Some(&mut out);
    if ifindex.is_some() {
        opts.ctx_in = Some(&ctx);
    }
    let result = xdp_program(&mut dp.ebpf).test_run(opts)?;
    out.truncate(result.data_size_out as usize);
    Ok((result.return_value, out))
}

/// Runs the program on `packet` as received on the uplink, in its namespace.
fn run_on(fib: &FibNs, dp: &mut Dataplane, packet: &[u8]) -> Result<(u32, Vec<u8>)> {
    fib.run(|| run(dp, packet, Some(fib.ifindex)))
}

/// A NodePort on the uplink with one backend on the other node (so flows
/// are SNATed to the node's address), for `proto` to `port`.
fn remote_node_port(uplink: &FibNs, proto: u8, port: u16) -> Result<Dataplane> {
    let mut dp = dataplane(vec![node_port(
        proto,
        vec![backend(REMOTE_POD, port, proto)],
    )])?;
    dp.maps.node_addrs.insert(uplink.ifindex, NODE_IP, 0)?;
    Ok(dp)
}

fn drops(dp: &Dataplane, reason: u32) -> u64 {
    dp.maps.drops(reason)
}

#[test]
fn a_node_port_flow_to_a_local_backend_is_dnated_and_passed_to_the_stack() -> Result<()> {
    let mut dp = dataplane(vec![node_port(
        PROTO_TCP,
        vec![local(LOCAL_POD, 8080, PROTO_TCP)],
    )])?;
    let syn = Pkt::tcp(CLIENT, 40000, NODE_IP, NODE_PORT);
    let (action, out) = run(&mut dp, &syn.build(), None)?;
    // The backend sees the real client: no SNAT for a local backend.
    assert_eq!(
        (action, hex(&out)),
        (XDP_PASS, hex(&syn.with_dst(LOCAL_POD, 8080).build()))
    );
    let fwd = dp
        .maps
        .ct
        .get(&ct_key(CLIENT, 40000, NODE_IP, NODE_PORT, PROTO_TCP), 0)?;
    assert_eq!((fwd.kind, fwd.snat_addr), (CT_FORWARD, [0; 4]));
    Ok(())
}

#[test]
fn udp_checksums_are_updated_in_software_and_a_zero_checksum_stays_zero() -> Result<()> {
    let mut dp = dataplane(vec![node_port(
        PROTO_UDP,
        vec![local(LOCAL_POD, 5353, PROTO_UDP)],
    )])?;
    let dgram = Pkt::udp(CLIENT, 33000, NODE_IP, NODE_PORT);
    let (action, out) = run(&mut dp, &dgram.build(), None)?;
    assert_eq!(
        (action, hex(&out)),
        (XDP_PASS, hex(&dgram.with_dst(LOCAL_POD, 5353).build()))
    );

    let other = Pkt::udp(CLIENT, 33001, NODE_IP, NODE_PORT);
    let mut no_csum = other.build();
    let off = other.l4_csum_offset();
    no_csum[off..off + 2].copy_from_slice(&[0, 0]);
    let (_, out) = run(&mut dp, &no_csum, None)?;
    let mut expected = other.with_dst(LOCAL_POD, 5353).build();
    expected[off..off + 2].copy_from_slice(&[0, 0]);
    assert_eq!(hex(&out), hex(&expected));
    Ok(())
}

#[test]
fn a_remote_backend_gets_the_flow_snated_to_the_node_and_forwarded_by_xdp() -> Result<()> {
    let uplink = FibNs::with_uplink()?;
    let mut dp = remote_node_port(&uplink, PROTO_TCP, 8080)?;
    let syn = Pkt::tcp(CLIENT, 40001, NODE_IP, NODE_PORT).with_macs(CLIENT_MAC, NODE_MAC);
    let (action, out) = run_on(&uplink, &mut dp, &syn.build())?;
    let fwd = dp
        .maps
        .ct
        .get(&ct_key(CLIENT, 40001, NODE_IP, NODE_PORT, PROTO_TCP), 0)?;
    assert_eq!(fwd.snat_addr, NODE_IP);
    let port = fwd.snat_port;
    assert!((SNAT_PORT_MIN..=SNAT_PORT_MAX).contains(&port), "{port}");
    // From the node's address and an SNAT port to the pod, out of the same
    // device towards the other node (the FIB's next hop).
    let expected = Pkt::tcp(NODE_IP, port, REMOTE_POD, 8080).with_macs(NODE_MAC, NODE2_MAC);
    assert_eq!((action, hex(&out)), (XDP_TX, hex(&expected.build())));

    // The next packet of the flow takes the same translation.
    let (action, again) = run_on(&uplink, &mut dp, &syn.build())?;
    assert_eq!((action, hex(&again)), (XDP_TX, hex(&expected.build())));

    // The reply is turned back into one from the frontend to the client.
    let reply = Pkt::tcp(REMOTE_POD, 8080, NODE_IP, port).with_macs(NODE2_MAC, NODE_MAC);
    let (action, out) = run_on(&uplink, &mut dp, &reply.build())?;
    let to_client = Pkt::tcp(NODE_IP, NODE_PORT, CLIENT, 40001).with_macs(NODE_MAC, CLIENT_MAC);
    assert_eq!((action, hex(&out)), (XDP_TX, hex(&to_client.build())));
    Ok(())
}

#[test]
fn two_clients_with_the_same_port_get_different_snat_ports() -> Result<()> {
    let uplink = FibNs::with_uplink()?;
    let mut dp = remote_node_port(&uplink, PROTO_UDP, 5353)?;
    let mut ports = std::collections::BTreeSet::new();
    for client in [
        [198, 18, 100, 100],
        [198, 18, 100, 101],
        [198, 18, 100, 102],
    ] {
        let p = Pkt::udp(client, 5000, NODE_IP, NODE_PORT).with_macs(CLIENT_MAC, NODE_MAC);
        let (action, out) = run_on(&uplink, &mut dp, &p.build())?;
        assert_eq!(action, XDP_TX);
        // The SNAT port is the translated packet's source port.
        ports.insert(u16::from_be_bytes([out[34], out[35]]));
    }
    assert_eq!(ports.len(), 3, "{ports:?}");
    Ok(())
}

#[test]
fn a_client_outside_the_source_ranges_is_dropped_and_counted() -> Result<()> {
    let (key, mut lb) = frontend(
        LB_IP,
        80,
        PROTO_TCP,
        SVC_FLAG_EXTERNAL | SVC_FLAG_SOURCE_RANGES,
        vec![local(LOCAL_POD, 8080, PROTO_TCP)],
    );
    lb.source_ranges = vec![(Ipv4Addr::new(198, 18, 50, 0).into(), 24)];
    let mut dp = dataplane(vec![(key, lb)])?;
    let outside = Pkt::tcp(CLIENT, 40002, LB_IP, 80).build();
    let (action, out) = run(&mut dp, &outside, None)?;
    assert_eq!((action, hex(&out)), (XDP_DROP, hex(&outside)));
    assert_eq!(drops(&dp, DROP_SOURCE_RANGE), 1);

    let inside = Pkt::tcp([198, 18, 50, 7], 40002, LB_IP, 80);
    let (action, out) = run(&mut dp, &inside.build(), None)?;
    assert_eq!(
        (action, hex(&out)),
        (XDP_PASS, hex(&inside.with_dst(LOCAL_POD, 8080).build()))
    );
    assert_eq!(drops(&dp, DROP_SOURCE_RANGE), 1);
    Ok(())
}

#[test]
fn a_node_port_without_endpoints_rejects_from_xdp() -> Result<()> {
    let mut dp = dataplane(vec![
        node_port(PROTO_TCP, vec![]),
        node_port(PROTO_UDP, vec![]),
    ])?;
    let (action, out) = run(
        &mut dp,
        &Pkt::tcp(CLIENT, 40003, NODE_IP, NODE_PORT).build(),
        None,
    )?;
    // The SYN carries seq 1000 and 16 bytes: RST+ACK with ack 1017, sent back
    // out of the device it came in on.
    let mut rst = Vec::new();
    answer(NODE_IP, CLIENT, etherparse::IpNumber::TCP)
        .tcp(NODE_PORT, 40003, 0, 0)
        .rst()
        .ack(1017)
        .write(&mut rst, &[])?;
    assert_eq!((action, hex(&out)), (XDP_TX, hex(&rst)));

    let query = Pkt::udp(CLIENT, 33003, NODE_IP, NODE_PORT).build();
    let (action, out) = run(&mut dp, &query, None)?;
    let mut unreachable = Vec::new();
    answer(NODE_IP, CLIENT, etherparse::IpNumber::ICMP)
        .icmpv4(etherparse::Icmpv4Type::DestinationUnreachable(
            etherparse::icmpv4::DestUnreachableHeader::Port,
        ))
        .write(&mut unreachable, &query[14..14 + 28])?;
    assert_eq!((action, hex(&out)), (XDP_TX, hex(&unreachable)));
    Ok(())
}

#[test]
fn external_policy_local_without_local_endpoints_drops() -> Result<()> {
    let mut dp = dataplane(vec![frontend(
        NODE_IP,
        NODE_PORT,
        PROTO_TCP,
        SVC_FLAG_EXTERNAL | SVC_FLAG_DROP_IF_EMPTY,
        vec![],
    )])?;
    let syn = Pkt::tcp(CLIENT, 40004, NODE_IP, NODE_PORT).build();
    let (action, out) = run(&mut dp, &syn, None)?;
    assert_eq!((action, hex(&out)), (XDP_DROP, hex(&syn)));
    assert_eq!(drops(&dp, DROP_NO_LOCAL_ENDPOINT), 1);
    Ok(())
}

#[test]
fn cluster_ips_and_other_traffic_are_left_to_the_stack() -> Result<()> {
    let mut dp = dataplane(vec![frontend(
        CLUSTER_IP,
        80,
        PROTO_TCP,
        0,
        vec![local(LOCAL_POD, 8080, PROTO_TCP)],
    )])?;
    for p in [
        Pkt::tcp(CLIENT, 40005, CLUSTER_IP, 80),
        Pkt::tcp(CLIENT, 40005, NODE_IP, 22),
        Pkt::udp(CLIENT, 40005, LOCAL_POD, 53),
    ] {
        let bytes = p.build();
        let (action, out) = run(&mut dp, &bytes, None)?;
        assert_eq!((action, hex(&out)), (XDP_PASS, hex(&bytes)), "{p:?}");
    }
    Ok(())
}

#[test]
fn without_a_node_address_for_the_device_a_remote_flow_is_dropped_not_leaked() -> Result<()> {
    let mut dp = dataplane(vec![node_port(
        PROTO_TCP,
        vec![backend(REMOTE_POD, 8080, PROTO_TCP)],
    )])?;
    let syn = Pkt::tcp(CLIENT, 40006, NODE_IP, NODE_PORT).build();
    let (action, _) = run(&mut dp, &syn, None).context("run")?;
    assert_eq!(action, XDP_DROP);
    assert_eq!(drops(&dp, lb_common::DROP_SNAT_FAILED), 1);
    Ok(())
}

/// ICMP errors of an SNATed NodePort flow, through XDP: a router's
/// "fragmentation needed" about the translated packet (node:port -> remote
/// pod) comes to the node's address and goes on to the client, quoting
/// what the client sent; the client's own about the reply it got (node
/// port -> client) goes to the remote pod, quoting pod -> node:port. Both
/// are passed to the stack, which routes them.
#[test]
fn icmp_errors_of_a_snated_flow_are_translated_both_ways_in_xdp() -> Result<()> {
    use weir_tests::packets::{frag_needed, icmp_error};
    const ROUTER: [u8; 4] = [198, 18, 9, 9];
    let quote = |p: Pkt| p.build()[14..].to_vec();
    let uplink = FibNs::with_uplink()?;
    let mut dp = remote_node_port(&uplink, PROTO_TCP, 8080)?;
    let syn = Pkt::tcp(CLIENT, 40001, NODE_IP, NODE_PORT);
    let (action, _) = run_on(&uplink, &mut dp, &syn.build())?;
    assert_eq!(action, XDP_TX);
    let port = dp
        .maps
        .ct
        .get(&ct_key(CLIENT, 40001, NODE_IP, NODE_PORT, PROTO_TCP), 0)?
        .snat_port;

    let sent = Pkt::tcp(NODE_IP, port, REMOTE_POD, 8080);
    let error = icmp_error(ROUTER, NODE_IP, frag_needed(), &quote(sent));
    let expected = icmp_error(ROUTER, CLIENT, frag_needed(), &quote(syn));
    let (action, out) = run_on(&uplink, &mut dp, &error)?;
    assert_eq!(
        (action, hex(&out)),
        (XDP_PASS, hex(&expected)),
        "to the client"
    );

    let reply = Pkt::tcp(NODE_IP, NODE_PORT, CLIENT, 40001);
    let error = icmp_error(CLIENT, NODE_IP, frag_needed(), &quote(reply));
    let from_pod = Pkt::tcp(REMOTE_POD, 8080, NODE_IP, port);
    let expected = icmp_error(CLIENT, REMOTE_POD, frag_needed(), &quote(from_pod));
    let (action, out) = run_on(&uplink, &mut dp, &error)?;
    assert_eq!(
        (action, hex(&out)),
        (XDP_PASS, hex(&expected)),
        "to the backend"
    );
    Ok(())
}
