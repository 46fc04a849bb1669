//! IPv6 packet tests of the XDP program through BPF_PROG_TEST_RUN, as
//! xdp_packet.rs for IPv4: a NodePort to a local backend, a remote backend
//! with SNAT to the node's IPv6 address and FIB forwarding, the reply's
//! reverse NAT, source ranges and reject, with exact output bytes built by
//! etherparse. The FIB lookups run in a namespace of the test's own.
use anyhow::Result;
use aya::programs::{TestRun, TestRunOptions};
use lb_common::{
    ALG_RANDOM, BACKEND_LOCAL, CT_FORWARD, DROP_SOURCE_RANGE, PROTO_TCP, PROTO_UDP, SCOPE_EXTERNAL,
    SNAT_PORT_MAX, SNAT_PORT_MIN, SVC_FLAG_EXTERNAL, SVC_FLAG_SOURCE_RANGES,
};
use weir::{
    dataplane::{loader::xdp_program, Dataplane},
    model::ObjectRef,
    translate::{Backend, Frontend, FrontendKey},
};
use weir_tests::packets::{
    answer6, backend6, hex, v6, FibNs, Pkt6, CLIENT_MAC, NODE2_MAC, NODE_IP6, NODE_MAC,
    UPLINK_CLIENT6,
};

const CLIENT: [u8; 16] = UPLINK_CLIENT6;
const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;
const LB_IP: [u8; 16] = v6(0x200, 1);
const NODE_PORT: u16 = 30080;
const LOCAL_POD: [u8; 16] = v6(0x11, 2);
const REMOTE_POD: [u8; 16] = v6(0x12, 3);

fn local(addr: [u8; 16], port: u16, proto: u8) -> Backend {
    Backend {
        state: BACKEND_LOCAL,
        ..backend6(addr, port, proto)
    }
}

fn frontend(
    addr: [u8; 16],
    port: u16,
    proto: u8,
    flags: u16,
    backends: Vec<Backend>,
) -> (FrontendKey, Frontend) {
    (
        FrontendKey {
            addr: addr.into(),
            port,
            proto,
            scope: SCOPE_EXTERNAL,
        },
        Frontend {
            service: ObjectRef::new("test", "svc6"),
            algorithm: ALG_RANDOM,
            backends,
            flags,
            ..Default::default()
        },
    )
}

fn node_port(proto: u8, backends: Vec<Backend>) -> (FrontendKey, Frontend) {
    frontend(NODE_IP6, NODE_PORT, proto, SVC_FLAG_EXTERNAL, backends)
}

fn dataplane(frontends: Vec<(FrontendKey, Frontend)>) -> Result<Dataplane> {
    weir_tests::packets::ipv6_dataplane(frontends)
}

/// Runs the XDP program on `packet` as received on `ifindex` (0: loopback).
fn run(dp: &mut Dataplane, packet: &[u8], ifindex: u32) -> Result<(u32, Vec<u8>)> {
    let mut out = vec![0u8; packet.len() + 256];
    let ctx: Vec<u8> = [0, packet.len() as u32, 0, ifindex, 0, 0]
        .iter()
        .flat_map(|v| v.to_ne_bytes())
        .collect();
    let mut opts = TestRunOptions::new();
    opts.data_in = Some(packet);
    opts.data_out = Some(&mut out);
    if ifindex != 0 {
        opts.ctx_in = Some(&ctx);
    }
    let result = xdp_program(&mut dp.ebpf).test_run(opts)?;
    out.truncate(result.data_size_out as usize);
    Ok((result.return_value, out))
}

fn run_on(fib: &FibNs, dp: &mut Dataplane, packet: &[u8]) -> Result<(u32, Vec<u8>)> {
    fib.run(|| run(dp, packet, fib.ifindex))
}

#[test]
fn an_ipv6_node_port_flow_to_a_local_backend_is_dnated_and_passed_to_the_stack() -> Result<()> {
    let mut dp = dataplane(vec![node_port(
        PROTO_TCP,
        vec![local(LOCAL_POD, 8080, PROTO_TCP)],
    )])?;
    let syn = Pkt6::tcp(CLIENT, 40000, NODE_IP6, NODE_PORT);
    let (action, out) = run(&mut dp, &syn.build(), 0)?;
    assert_eq!(
        (action, hex(&out)),
        (XDP_PASS, hex(&syn.with_dst(LOCAL_POD, 8080).build()))
    );
    let udp = Pkt6::udp(CLIENT, 33000, NODE_IP6, NODE_PORT);
    let mut dp = dataplane(vec![node_port(
        PROTO_UDP,
        vec![local(LOCAL_POD, 5353, PROTO_UDP)],
    )])?;
    let (action, out) = run(&mut dp, &udp.build(), 0)?;
    assert_eq!(
        (action, hex(&out)),
        (XDP_PASS, hex(&udp.with_dst(LOCAL_POD, 5353).build()))
    );
    Ok(())
}

#[test]
fn a_remote_ipv6_backend_gets_the_flow_snated_to_the_node_and_forwarded_by_xdp() -> Result<()> {
    let uplink = FibNs::with_uplink6()?;
    let mut dp = dataplane(vec![node_port(
        PROTO_TCP,
        vec![backend6(REMOTE_POD, 8080, PROTO_TCP)],
    )])?;
    dp.maps.node_addrs6.insert(uplink.ifindex, NODE_IP6, 0)?;
    let syn = Pkt6::tcp(CLIENT, 40001, NODE_IP6, NODE_PORT).with_macs(CLIENT_MAC, NODE_MAC);
    let (action, out) = run_on(&uplink, &mut dp, &syn.build())?;
    let key = lb_common::CtKey6 {
        saddr: CLIENT,
        daddr: NODE_IP6,
        sport: 40001,
        dport: NODE_PORT,
        proto: PROTO_TCP,
        _pad: [0; 3],
    };
    let fwd = dp.maps.ct6.get(&key, 0)?;
    assert_eq!((fwd.kind, fwd.snat_addr), (CT_FORWARD, NODE_IP6));
    let port = fwd.snat_port;
    assert!((SNAT_PORT_MIN..=SNAT_PORT_MAX).contains(&port), "{port}");
    // From the node's address and an SNAT port to the pod, out of the same
    // device towards the other node (the FIB's next hop).
    let expected = Pkt6::tcp(NODE_IP6, port, REMOTE_POD, 8080).with_macs(NODE_MAC, NODE2_MAC);
    assert_eq!((action, hex(&out)), (XDP_TX, hex(&expected.build())));
    let (action, again) = run_on(&uplink, &mut dp, &syn.build())?;
    assert_eq!((action, hex(&again)), (XDP_TX, hex(&expected.build())));
    // The reply is turned back into one from the frontend to the client.
    let reply = Pkt6::tcp(REMOTE_POD, 8080, NODE_IP6, port).with_macs(NODE2_MAC, NODE_MAC);
    let (action, out) = run_on(&uplink, &mut dp, &reply.build())?;
    let to_client = Pkt6::tcp(NODE_IP6, NODE_PORT, CLIENT, 40001).with_macs(NODE_MAC, CLIENT_MAC);
    assert_eq!((action, hex(&out)), (XDP_TX, hex(&to_client.build())));
    Ok(())
}

#[test]
fn an_ipv6_client_outside_the_source_ranges_is_dropped_and_counted() -> Result<()> {
    let (key, mut lb) = frontend(
        LB_IP,
        80,
        PROTO_TCP,
        SVC_FLAG_EXTERNAL | SVC_FLAG_SOURCE_RANGES,
        vec![local(LOCAL_POD, 8080, PROTO_TCP)],
    );
    lb.source_ranges = vec![("2001:db8:0:50::".parse()?, 64)];
    let mut dp = dataplane(vec![(key, lb)])?;
    let outside = Pkt6::tcp(CLIENT, 40002, LB_IP, 80).build();
    let (action, out) = run(&mut dp, &outside, 0)?;
    assert_eq!((action, hex(&out)), (XDP_DROP, hex(&outside)));
    assert_eq!(dp.maps.drops(DROP_SOURCE_RANGE), 1);
    let inside = Pkt6::tcp(v6(0x50, 7), 40002, LB_IP, 80);
    let (action, out) = run(&mut dp, &inside.build(), 0)?;
    assert_eq!(
        (action, hex(&out)),
        (XDP_PASS, hex(&inside.with_dst(LOCAL_POD, 8080).build()))
    );
    assert_eq!(dp.maps.drops(DROP_SOURCE_RANGE), 1);
    Ok(())
}

#[test]
fn an_ipv6_node_port_without_endpoints_answers_with_a_reset_from_xdp() -> Result<()> {
    let mut dp = dataplane(vec![node_port(PROTO_TCP, vec![])])?;
    let syn = Pkt6::tcp(CLIENT, 40003, NODE_IP6, NODE_PORT);
    let (action, out) = run(&mut dp, &syn.build(), 0)?;
    let mut expected = Vec::new();
    answer6(NODE_IP6, CLIENT)
        .tcp(NODE_PORT, 40003, 0, 0)
        .rst()
        .ack(1017)
        .write(&mut expected, &[])?;
    assert_eq!((action, hex(&out)), (XDP_TX, hex(&expected)));
    Ok(())
}
