//! Hostile input through the real tc and XDP programs (BPF_PROG_TEST_RUN):
//! 100,000 generated packets each, from a seeded generator: random bytes,
//! truncated and oversized headers, IP options, fragments, bad lengths and
//! checksums, every protocol number and every TCP flag combination, to and
//! from frontends (ClusterIP, NodePort, one without endpoints, Maglev,
//! ClientIP affinity) and elsewhere. Conntrack and affinity fill up as the
//! packets go. Asserted for every packet:
//! - the program returns a verdict it may return (never XDP_ABORTED);
//! - a packet not to a frontend and not from a backend leaves byte-identical
//!   and is passed;
//! - a rewritten packet is well formed, of the same length, and keeps valid
//!   IPv4 and TCP/UDP checksums where the input had them (computed here,
//!   independently of the datapath); a zero UDP checksum stays zero;
//! - a reset or port unreachable the program writes has valid checksums.
//!
//! BPF_PROG_TEST_RUN itself refuses some inputs for tc (an IPv6 ethertype
//! with less than an IPv6 header: about 2.5%); those are counted and more
//! are generated until 100,000 ran through each program.
use anyhow::Result;
use aya::programs::{TestRun, TestRunOptions};
use lb_common::{
    ALG_HASH, ALG_MAGLEV, ALG_RANDOM, BACKEND_LOCAL, PROTO_TCP, PROTO_UDP, SCOPE_EXTERNAL,
    SVC_FLAG_EXTERNAL,
};
use weir::translate::{Backend, FrontendKey as ServiceKey};
use weir::{
    dataplane::{
        loader::{tc_program, xdp_program, LoadOptions},
        sync::PlanConfig,
        Dataplane,
    },
    model::ObjectRef,
    translate::Frontend,
};
use weir_tests::{
    packets::{backend, hex, FibNs},
    rng::{fold, sum16, Rng},
};

const PACKETS: usize = 100_000;
const VIP: [u8; 4] = [198, 19, 0, 10];
const NODE: [u8; 4] = [198, 18, 100, 11];
const CLIENT: [u8; 4] = [198, 18, 1, 2];
const B1: [u8; 4] = [198, 18, 1, 11];
const B2: [u8; 4] = [198, 18, 12, 3];
const ADDRS: [[u8; 4]; 5] = [VIP, NODE, CLIENT, B1, B2];
const PORTS: [u16; 8] = [80, 81, 82, 53, 8080, 5353, 30080, 40000];

/// A well-formed, unfragmented IPv4 TCP/UDP packet's parts, by offsets.
struct Parsed {
    ihl: usize,
    tot_len: usize,
    proto: u8,
    src: [u8; 4],
    dst: [u8; 4],
}

fn parse(p: &[u8]) -> Option<Parsed> {
    if p.len() < 34 || p[12..14] != [0x08, 0x00] || p[14] >> 4 != 4 {
        return None;
    }
    let ihl = usize::from(p[14] & 0x0f) * 4;
    let tot_len = usize::from(u16::from_be_bytes([p[16], p[17]]));
    let frag = u16::from_be_bytes([p[20], p[21]]);
    let proto = p[23];
    let l4_min = if proto == PROTO_TCP { 20 } else { 8 };
    let ok = ihl >= 20
        && tot_len >= ihl + l4_min
        && 14 + tot_len <= p.len()
        && frag & 0x3fff == 0
        && (proto == PROTO_TCP || proto == PROTO_UDP);
    ok.then(|| Parsed {
        ihl,
        tot_len,
        proto,
        src: [p[26], p[27], p[28], p[29]],
        dst: [p[30], p[31], p[32], p[33]],
    })
}

fn ip_csum_ok(p: &[u8], ihl: usize) -> bool {
    fold(sum16(0, &p[14..14 + ihl])) == 0
}

/// Whether the L4 checksum (over the IP payload) is valid; a zero UDP
/// checksum counts as "none" (Some(true) means valid, None means absent).
fn l4_csum_ok(p: &[u8], q: &Parsed) -> Option<bool> {
    let l4 = &p[14 + q.ihl..14 + q.tot_len];
    if q.proto == PROTO_UDP && l4[6..8] == [0, 0] {
        return None;
    }
    let mut pseudo = Vec::with_capacity(12);
    pseudo.extend_from_slice(&q.src);
    pseudo.extend_from_slice(&q.dst);
    pseudo.extend_from_slice(&[0, q.proto]);
    pseudo.extend_from_slice(&(l4.len() as u16).to_be_bytes());
    Some(fold(sum16(sum16(0, &pseudo), l4)) == 0)
}

/// One generated packet.
fn generate(r: &mut Rng) -> Vec<u8> {
    if r.chance(5) {
        let n = r.below(120) as usize;
        return r.bytes(n);
    }
    let mut p = Vec::new();
    p.extend_from_slice(&[0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2]);
    let ethertype: [u8; 2] = match r.below(20) {
        0 => [0x86, 0xdd],
        1 => [0x08, 0x06],
        2 => [r.byte(), r.byte()],
        _ => [0x08, 0x00],
    };
    p.extend_from_slice(&ethertype);
    let proto = match r.below(10) {
        0 => r.byte(),
        1..=5 => PROTO_TCP,
        _ => PROTO_UDP,
    };
    let options = if r.chance(10) {
        r.below(11) as usize * 4
    } else {
        0
    };
    let ihl_field = if r.chance(3) {
        r.byte() & 0x0f
    } else {
        (5 + options / 4) as u8
    };
    let version = if r.chance(2) { r.byte() >> 4 } else { 4 };
    let src = if r.chance(10) {
        [r.byte(); 4]
    } else {
        ADDRS[r.below(5) as usize]
    };
    let dst = if r.chance(10) {
        [r.byte(); 4]
    } else {
        ADDRS[r.below(5) as usize]
    };
    let sport =
        PORTS[r.below(8) as usize].wrapping_add(if r.chance(30) { r.byte().into() } else { 0 });
    let dport = if r.chance(10) {
        r.next() as u16
    } else {
        PORTS[r.below(8) as usize]
    };
    let payload_len = r.below(48) as usize;
    let mut l4 = match proto {
        PROTO_TCP => {
            let mut t = vec![0u8; 20];
            t[0..2].copy_from_slice(&sport.to_be_bytes());
            t[2..4].copy_from_slice(&dport.to_be_bytes());
            t[4..12].copy_from_slice(&r.bytes(8));
            t[12] = if r.chance(5) { r.byte() } else { 5 << 4 };
            // Every flag combination, SYN-heavy so that flows get created.
            t[13] = if r.chance(40) { 0x02 } else { r.byte() };
            t[14..16].copy_from_slice(&[0xff, 0xff]);
            t
        }
        PROTO_UDP => {
            let mut u = vec![0u8; 8];
            u[0..2].copy_from_slice(&sport.to_be_bytes());
            u[2..4].copy_from_slice(&dport.to_be_bytes());
            u
        }
        _ => {
            let n = r.below(24) as usize;
            r.bytes(n)
        }
    };
    l4.extend(r.bytes(payload_len));
    if proto == PROTO_UDP {
        let len = if r.chance(5) {
            r.next() as u16
        } else {
            l4.len() as u16
        };
        l4[4..6].copy_from_slice(&len.to_be_bytes());
    }
    let tot_len = 20 + options + l4.len();
    let mut ip = vec![0u8; 20];
    ip[0] = (version << 4) | ihl_field;
    let tot = if r.chance(5) {
        r.next() as u16
    } else {
        tot_len as u16
    };
    ip[2..4].copy_from_slice(&tot.to_be_bytes());
    ip[4..6].copy_from_slice(&r.bytes(2));
    let frag: u16 = match r.below(20) {
        0 => 0x2000,                     // more fragments
        1 => (r.next() as u16) & 0x1fff, // an offset
        2 => r.next() as u16,            // anything
        _ => 0x4000,                     // DF
    };
    ip[6..8].copy_from_slice(&frag.to_be_bytes());
    ip[8] = if r.chance(3) { r.below(2) as u8 } else { 64 };
    ip[9] = proto;
    ip[12..16].copy_from_slice(&src);
    ip[16..20].copy_from_slice(&dst);
    ip.extend(r.bytes(options));
    let csum = fold(sum16(0, &ip));
    ip[10..12].copy_from_slice(&csum.to_be_bytes());
    if r.chance(5) {
        ip[10] ^= 1 << r.below(8);
    }
    if matches!(proto, PROTO_TCP | PROTO_UDP) {
        let off = if proto == PROTO_TCP { 16 } else { 6 };
        let mut pseudo = Vec::new();
        pseudo.extend_from_slice(&src);
        pseudo.extend_from_slice(&dst);
        pseudo.extend_from_slice(&[0, proto]);
        pseudo.extend_from_slice(&(l4.len() as u16).to_be_bytes());
        let c = fold(sum16(sum16(0, &pseudo), &l4));
        let c = if proto == PROTO_UDP && c == 0 {
            0xffff
        } else {
            c
        };
        l4[off..off + 2].copy_from_slice(&c.to_be_bytes());
        match r.below(20) {
            0 => l4[off] ^= 0x10,
            1 if proto == PROTO_UDP => l4[off..off + 2].copy_from_slice(&[0, 0]),
            _ => {}
        }
    }
    p.extend(ip);
    p.extend(l4);
    if r.chance(8) {
        let cut = r.below(p.len() as u64) as usize;
        p.truncate(cut);
    } else if r.chance(3) {
        let n = r.below(64) as usize;
        p.extend(r.bytes(n));
    }
    p
}

fn frontend(
    addr: [u8; 4],
    port: u16,
    proto: u8,
    alg: u8,
    backends: Vec<Backend>,
) -> (ServiceKey, Frontend) {
    let key = ServiceKey {
        addr: addr.into(),
        port,
        proto,
        scope: SCOPE_EXTERNAL,
    };
    let f = Frontend {
        service: ObjectRef::new("hostile", format!("s{port}")),
        algorithm: alg,
        backends,
        flags: SVC_FLAG_EXTERNAL,
        affinity_timeout: if port == 82 { 60 } else { 0 },
        ..Default::default()
    };
    (key, f)
}

fn dataplane() -> Result<Dataplane> {
    dataplane_with(&LoadOptions::default(), ALG_RANDOM)
}

/// The frontends above, loaded with `options`; `random` is the algorithm
/// of the frontends that use random selection in the main tests (hash,
/// to compare two dataplanes packet by packet).
fn dataplane_with(options: &LoadOptions, random: u8) -> Result<Dataplane> {
    let local = |b: Backend| Backend {
        state: BACKEND_LOCAL,
        ..b
    };
    let mut dp = Dataplane::load_unpinned_with(PlanConfig::default(), options)?;
    let frontends = vec![
        frontend(
            VIP,
            80,
            PROTO_TCP,
            random,
            vec![
                local(backend(B1, 8080, PROTO_TCP)),
                backend(B2, 8080, PROTO_TCP),
            ],
        ),
        frontend(VIP, 81, PROTO_TCP, random, vec![]),
        frontend(
            VIP,
            82,
            PROTO_TCP,
            ALG_MAGLEV,
            vec![backend(B1, 8080, PROTO_TCP), backend(B2, 8080, PROTO_TCP)],
        ),
        frontend(
            VIP,
            53,
            PROTO_UDP,
            random,
            vec![local(backend(B1, 5353, PROTO_UDP))],
        ),
        frontend(
            NODE,
            30080,
            PROTO_TCP,
            random,
            vec![
                local(backend(B1, 8080, PROTO_TCP)),
                backend(B2, 8080, PROTO_TCP),
            ],
        ),
    ];
    dp.sync(&weir_tests::packets::desired(frontends))?;
    Ok(dp)
}

#[derive(Default, Debug)]
struct Tally {
    /// Inputs BPF_PROG_TEST_RUN itself refused (e.g. an IPv6 ethertype
    /// with less than an IPv6 header): the program never ran.
    refused_by_kernel: usize,
    unchanged: usize,
    rewritten: usize,
    answered: usize,
    dropped: usize,
}

/// Checks one verdict; `passed`/`answers` are the verdicts that hand the
/// (possibly rewritten) packet on / send a written answer.
fn check(
    input: &[u8],
    action: u32,
    out: &[u8],
    passed: &[u32],
    answers: &[u32],
    drop: u32,
    tally: &mut Tally,
) {
    let ctx = || format!("action {action}\n in {input:02x?}\nout {out:02x?}");
    let for_service =
        parse(input).is_some_and(|q| [VIP, NODE].contains(&q.dst) || [B1, B2].contains(&q.src));
    if !for_service {
        assert!(
            passed.contains(&action),
            "not for a service, yet not passed: {}",
            ctx()
        );
        assert_eq!(out, input, "not for a service, yet changed: {}", ctx());
        tally.unchanged += 1;
        return;
    }
    if action == drop {
        tally.dropped += 1;
        return;
    }
    if out == input {
        assert!(passed.contains(&action), "{}", ctx());
        tally.unchanged += 1;
        return;
    }
    let o = parse(out).unwrap_or_else(|| panic!("rewritten into a malformed packet: {}", ctx()));
    if answers.contains(&action) && out.len() != input.len() {
        // A reset or port unreachable the program wrote.
        assert!(
            ip_csum_ok(out, o.ihl),
            "bad IPv4 checksum in an answer: {}",
            ctx()
        );
        assert_ne!(
            l4_csum_ok(out, &o),
            Some(false),
            "bad checksum in an answer: {}",
            ctx()
        );
        tally.answered += 1;
        return;
    }
    let q = parse(input).unwrap_or_else(|| panic!("a malformed packet was rewritten: {}", ctx()));
    assert_eq!(out.len(), input.len(), "{}", ctx());
    if ip_csum_ok(input, q.ihl) {
        assert!(ip_csum_ok(out, o.ihl), "{}", ctx());
    }
    match l4_csum_ok(input, &q) {
        Some(true) => assert_eq!(
            l4_csum_ok(out, &o),
            Some(true),
            "L4 checksum broken: {}",
            ctx()
        ),
        None => assert_eq!(
            l4_csum_ok(out, &o),
            None,
            "zero UDP checksum not kept: {}",
            ctx()
        ),
        Some(false) => {}
    }
    if answers.contains(&action) {
        tally.answered += 1;
    } else {
        tally.rewritten += 1;
    }
}

fn run(prog_tc: bool, dp: &mut Dataplane, packet: &[u8]) -> Result<(u32, Vec<u8>)> {
    let mut out = vec![0u8; packet.len() + 256];
    let mut opts = TestRunOptions::new();
    opts.data_in = Some(packet);
    opts.data_out = Some(&mut out);
    let result = if prog_tc {
        tc_program(&mut dp.ebpf).test_run(opts)?
    } else {
        xdp_program(&mut dp.ebpf).test_run(opts)?
    };
    out.truncate(result.data_size_out as usize);
    Ok((result.return_value, out))
}

/// Generates packets from `seed` and hands each to `each` until PACKETS
/// ran (`each` returns false for one the kernel refused to run), at most
/// twice as many; returns how many ran.
fn hostile_packets(seed: u64, mut each: impl FnMut(&[u8]) -> Result<bool>) -> Result<usize> {
    let mut r = Rng(seed);
    let mut ran = 0;
    for _ in 0..2 * PACKETS {
        if ran == PACKETS {
            break;
        }
        let packet = generate(&mut r);
        // The kernel refuses test runs shorter than an Ethernet header.
        if packet.len() >= 14 && each(&packet)? {
            ran += 1;
        }
    }
    Ok(ran)
}

fn fuzz(tc: bool, seed: u64) -> Result<Tally> {
    let mut dp = dataplane()?;
    let fib = FibNs::empty()?;
    fib.run(|| {
        let mut tally = Tally::default();
        let ran = hostile_packets(seed, |packet| {
            let Ok((action, out)) = run(tc, &mut dp, packet) else {
                tally.refused_by_kernel += 1;
                return Ok(false);
            };
            if tc {
                // TC_ACT_OK, TC_ACT_SHOT, TC_ACT_REDIRECT.
                check(packet, action, &out, &[0, 7], &[7], 2, &mut tally);
            } else {
                // XDP_DROP 1, XDP_PASS 2, XDP_TX 3, XDP_REDIRECT 4; never XDP_ABORTED (0).
                assert!((1..=4).contains(&action), "XDP verdict {action}");
                check(packet, action, &out, &[2, 4], &[3], 1, &mut tally);
            }
            Ok(true)
        })?;
        println!("{}: {tally:?}", if tc { "tc" } else { "xdp" });
        assert_eq!(ran, PACKETS, "{tally:?}");
        // Every kind of outcome was exercised, and the kernel refused few inputs.
        assert!(
            tally.rewritten > 1000 && tally.unchanged > 1000 && tally.answered > 10,
            "{tally:?}"
        );
        assert!(tally.refused_by_kernel < PACKETS / 20, "{tally:?}");
        Ok(tally)
    })
}

#[test]
fn the_tc_program_survives_hostile_packets_and_keeps_checksums() -> Result<()> {
    fuzz(true, 0x5eed_0001).map(drop)
}

#[test]
fn the_xdp_program_survives_hostile_packets_and_keeps_checksums() -> Result<()> {
    fuzz(false, 0x5eed_0002).map(drop)
}

/// The fast paths (headers read and, in XDP, rewritten in place) against the
/// helper paths (bpf_skb_load_bytes/bpf_xdp_load_bytes and friends), which
/// a load-time switch turns on instead: the same hostile packets through two
/// dataplanes that differ only in that, with hash selection so that both
/// choose alike; every verdict and every output byte must match.
fn same_bytes(tc: bool, seed: u64) -> Result<()> {
    let mut fast = dataplane_with(&LoadOptions::default(), ALG_HASH)?;
    let helpers = LoadOptions {
        direct_access: false,
        ..Default::default()
    };
    let mut slow = dataplane_with(&helpers, ALG_HASH)?;
    let fib = FibNs::empty()?;
    fib.run(|| {
        let mut rewritten = 0;
        let ran = hostile_packets(seed, |packet| {
            let Ok(a) = run(tc, &mut fast, packet) else {
                return Ok(false);
            };
            let b = run(tc, &mut slow, packet)?;
            assert_eq!((a.0, hex(&a.1)), (b.0, hex(&b.1)), "input {}", hex(packet));
            rewritten += usize::from(a.1 != packet);
            Ok(true)
        })?;
        println!(
            "{}: {ran} packets, {rewritten} rewritten or answered",
            if tc { "tc" } else { "xdp" }
        );
        assert_eq!(ran, PACKETS);
        assert!(rewritten > 1000, "{rewritten} rewritten");
        Ok(())
    })
}

#[test]
fn tc_reads_the_same_in_place_as_through_the_helpers() -> Result<()> {
    same_bytes(true, 0x5eed_0003)
}

#[test]
fn xdp_reads_and_rewrites_the_same_in_place_as_through_the_helpers() -> Result<()> {
    same_bytes(false, 0x5eed_0004)
}
