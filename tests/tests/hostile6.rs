//! Hostile IPv6 input through the real tc and XDP programs
//! (BPF_PROG_TEST_RUN), as hostile.rs does for IPv4: 30,000 generated
//! packets each from a seeded generator (random bytes, truncated frames,
//! bad payload lengths and checksums, extension headers and every next
//! header value, every TCP flag combination, zero UDP checksums), to and
//! from IPv6 frontends (ClusterIP, NodePort, one without endpoints,
//! Maglev, ClientIP affinity) and elsewhere. Asserted for every packet:
//! - the program returns a verdict it may return;
//! - a packet not to a frontend and not from a backend, and every packet
//!   with extension headers, leaves byte-identical and is passed;
//! - a rewritten packet is of the same length and keeps a valid TCP/UDP
//!   checksum where the input had one (computed here with the IPv6
//!   pseudo-header, independently of the datapath);
//! - a reset or ICMPv6 port unreachable the program writes has a valid
//!   checksum.
//!
//! And the fast paths (in place) give the same verdicts and bytes as the
//! helper paths, packet by packet.
use anyhow::Result;
use aya::programs::{TestRun, TestRunOptions};
use lb_common::{ALG_HASH, ALG_MAGLEV, ALG_RANDOM, BACKEND_LOCAL, PROTO_TCP, PROTO_UDP};
use weir::{
    dataplane::{
        loader::{tc_program, xdp_program, LoadOptions},
        sync::PlanConfig,
        Dataplane,
    },
    model::ObjectRef,
    translate::{Backend, Frontend, FrontendKey},
};
use weir_tests::{
    packets::{backend6, hex, v6, FibNs},
    rng::{fold, sum16, Rng},
};

const PACKETS: usize = 30_000;
const VIP: [u8; 16] = v6(0x19, 0x10);
const NODE: [u8; 16] = v6(0x100, 0x11);
const CLIENT: [u8; 16] = v6(0x1, 0x2);
const B1: [u8; 16] = v6(0x1, 0x11);
const B2: [u8; 16] = v6(0x12, 0x3);
const ADDRS: [[u8; 16]; 5] = [VIP, NODE, CLIENT, B1, B2];
const PORTS: [u16; 8] = [80, 81, 82, 53, 8080, 5353, 30080, 40000];
const IPPROTO_ICMPV6: u8 = 58;

/// A well-formed IPv6 TCP/UDP packet without extension headers (what the
/// datapath may translate), by its parts.
struct Parsed {
    proto: u8,
    payload: usize,
    src: [u8; 16],
    dst: [u8; 16],
}

fn parse(p: &[u8]) -> Option<Parsed> {
    if p.len() < 54 || p[12..14] != [0x86, 0xdd] || p[14] >> 4 != 6 {
        return None;
    }
    let proto = p[20];
    let payload = usize::from(u16::from_be_bytes([p[18], p[19]]));
    let l4_min = if proto == PROTO_TCP { 20 } else { 8 };
    let ok =
        (proto == PROTO_TCP || proto == PROTO_UDP) && payload >= l4_min && 54 + payload <= p.len();
    ok.then(|| Parsed {
        proto,
        payload,
        src: p[22..38].try_into().expect("16 bytes"),
        dst: p[38..54].try_into().expect("16 bytes"),
    })
}

/// The checksum of an upper-layer packet `l4` of `next` from `src` to `dst`.
fn l4_sum(src: &[u8; 16], dst: &[u8; 16], next: u8, l4: &[u8]) -> u16 {
    let mut pseudo = Vec::with_capacity(40);
    pseudo.extend_from_slice(src);
    pseudo.extend_from_slice(dst);
    pseudo.extend_from_slice(&(l4.len() as u32).to_be_bytes());
    pseudo.extend_from_slice(&[0, 0, 0, next]);
    fold(sum16(sum16(0, &pseudo), l4))
}

/// Whether the L4 checksum is valid (None: a zero UDP checksum, "none").
fn l4_csum_ok(p: &[u8], q: &Parsed) -> Option<bool> {
    let l4 = &p[54..54 + q.payload];
    if q.proto == PROTO_UDP && l4[6..8] == [0, 0] {
        return None;
    }
    Some(l4_sum(&q.src, &q.dst, q.proto, l4) == 0)
}

fn generate(r: &mut Rng) -> Vec<u8> {
    if r.chance(5) {
        let n = 14 + r.below(120) as usize;
        let mut p = r.bytes(n);
        p[12..14].copy_from_slice(&[0x86, 0xdd]);
        return p;
    }
    let mut p = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2, 0x86, 0xdd];
    let next = match r.below(20) {
        0 => r.byte(),
        1 => [0, 43, 44, 60][r.below(4) as usize],
        2 => IPPROTO_ICMPV6,
        3..=11 => PROTO_TCP,
        _ => PROTO_UDP,
    };
    let pick = |r: &mut Rng| {
        if r.chance(10) {
            let mut a = r.bytes(16);
            a[0] = 0x20;
            a.try_into().expect("16 bytes")
        } else {
            ADDRS[r.below(5) as usize]
        }
    };
    let (src, dst): ([u8; 16], [u8; 16]) = (pick(r), pick(r));
    let sport =
        PORTS[r.below(8) as usize].wrapping_add(if r.chance(30) { r.byte().into() } else { 0 });
    let dport = if r.chance(10) {
        r.next() as u16
    } else {
        PORTS[r.below(8) as usize]
    };
    // An extension header before TCP/UDP, with the real L4 header behind it.
    let ext = matches!(next, 0 | 43 | 60);
    let proto = if ext {
        if r.chance(50) {
            PROTO_TCP
        } else {
            PROTO_UDP
        }
    } else {
        next
    };
    let mut l4 = match proto {
        PROTO_TCP => {
            let mut t = vec![0u8; 20];
            t[0..2].copy_from_slice(&sport.to_be_bytes());
            t[2..4].copy_from_slice(&dport.to_be_bytes());
            t[4..12].copy_from_slice(&r.bytes(8));
            t[12] = if r.chance(5) { r.byte() } else { 5 << 4 };
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
    let n = r.below(48) as usize;
    l4.extend(r.bytes(n));
    if proto == PROTO_UDP {
        let len = l4.len() as u16;
        l4[4..6].copy_from_slice(&len.to_be_bytes());
    }
    if matches!(proto, PROTO_TCP | PROTO_UDP) {
        let off = if proto == PROTO_TCP { 16 } else { 6 };
        let c = l4_sum(&src, &dst, proto, &l4);
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
    let mut payload = Vec::new();
    if ext {
        payload.extend_from_slice(&[proto, 0, 1, 4, 0, 0, 0, 0]);
    }
    payload.extend(l4);
    let len = if r.chance(5) {
        r.next() as u16
    } else {
        payload.len() as u16
    };
    let mut ip = vec![0x60, 0, 0, 0];
    if r.chance(2) {
        ip[0] = r.byte();
    }
    ip.extend_from_slice(&len.to_be_bytes());
    ip.extend_from_slice(&[next, 64]);
    ip.extend_from_slice(&src);
    ip.extend_from_slice(&dst);
    p.extend(ip);
    p.extend(payload);
    if r.chance(8) {
        let cut = 14 + r.below(p.len() as u64 - 14) as usize;
        p.truncate(cut);
    } else if r.chance(3) {
        let n = r.below(64) as usize;
        p.extend(r.bytes(n));
    }
    p
}

fn frontend(
    addr: [u8; 16],
    port: u16,
    proto: u8,
    alg: u8,
    backends: Vec<Backend>,
) -> (FrontendKey, Frontend) {
    let key = FrontendKey {
        addr: addr.into(),
        port,
        proto,
        scope: lb_common::SCOPE_EXTERNAL,
    };
    let f = Frontend {
        service: ObjectRef::new("hostile6", format!("s{port}")),
        algorithm: alg,
        backends,
        flags: lb_common::SVC_FLAG_EXTERNAL,
        affinity_timeout: if port == 82 { 60 } else { 0 },
        ..Default::default()
    };
    (key, f)
}

fn dataplane(options: &LoadOptions, random: u8) -> Result<Dataplane> {
    let local = |b: Backend| Backend {
        state: BACKEND_LOCAL,
        ..b
    };
    let cfg = PlanConfig {
        ipv6: true,
        ..PlanConfig::default()
    };
    let mut dp = Dataplane::load_unpinned_with(cfg, options)?;
    let both = || {
        vec![
            local(backend6(B1, 8080, PROTO_TCP)),
            backend6(B2, 8080, PROTO_TCP),
        ]
    };
    let frontends = vec![
        frontend(VIP, 80, PROTO_TCP, random, both()),
        frontend(VIP, 81, PROTO_TCP, random, vec![]),
        frontend(VIP, 82, PROTO_TCP, ALG_MAGLEV, both()),
        frontend(
            VIP,
            53,
            PROTO_UDP,
            random,
            vec![local(backend6(B1, 5353, PROTO_UDP))],
        ),
        frontend(VIP, 54, PROTO_UDP, random, vec![]),
        frontend(NODE, 30080, PROTO_TCP, random, both()),
    ];
    dp.sync(&weir_tests::packets::desired(frontends))?;
    Ok(dp)
}

fn run(tc: bool, dp: &mut Dataplane, packet: &[u8]) -> Result<(u32, Vec<u8>)> {
    let mut out = vec![0u8; packet.len() + 256];
    let mut opts = TestRunOptions::new();
    opts.data_in = Some(packet);
    opts.data_out = Some(&mut out);
    let result = if tc {
        tc_program(&mut dp.ebpf).test_run(opts)?
    } else {
        xdp_program(&mut dp.ebpf).test_run(opts)?
    };
    out.truncate(result.data_size_out as usize);
    Ok((result.return_value, out))
}

#[derive(Default, Debug)]
struct Tally {
    refused_by_kernel: usize,
    unchanged: usize,
    rewritten: usize,
    answered: usize,
    dropped: usize,
}

/// Checks one verdict (`passed`: verdicts that hand the packet on;
/// `answers`: those that send a written answer).
fn check(input: &[u8], action: u32, out: &[u8], passed: &[u32], answers: &[u32], t: &mut Tally) {
    let ctx = || format!("action {action}\n in {}\nout {}", hex(input), hex(out));
    let for_service =
        parse(input).is_some_and(|q| [VIP, NODE].contains(&q.dst) || [B1, B2].contains(&q.src));
    if !for_service {
        assert!(
            passed.contains(&action),
            "not for a service, yet not passed: {}",
            ctx()
        );
        assert_eq!(out, input, "not for a service, yet changed: {}", ctx());
        t.unchanged += 1;
        return;
    }
    if !passed.contains(&action) && !answers.contains(&action) {
        t.dropped += 1;
        return;
    }
    if out == input {
        t.unchanged += 1;
        return;
    }
    if answers.contains(&action) && out.len() != input.len() {
        // A reset or port unreachable: check its checksum.
        assert!(out.len() >= 54 && out[12..14] == [0x86, 0xdd], "{}", ctx());
        let src: [u8; 16] = out[22..38].try_into().expect("16 bytes");
        let dst: [u8; 16] = out[38..54].try_into().expect("16 bytes");
        let l4 = &out[54..];
        assert_eq!(
            usize::from(u16::from_be_bytes([out[18], out[19]])),
            l4.len(),
            "{}",
            ctx()
        );
        assert_eq!(
            l4_sum(&src, &dst, out[20], l4),
            0,
            "bad checksum in an answer: {}",
            ctx()
        );
        t.answered += 1;
        return;
    }
    let q = parse(input).expect("checked above");
    let o = parse(out).unwrap_or_else(|| panic!("rewritten into a malformed packet: {}", ctx()));
    assert_eq!(out.len(), input.len(), "{}", ctx());
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
    t.rewritten += 1;
}

/// Runs PACKETS generated packets from `seed` through `each` (false: the
/// kernel refused to run it), at most twice as many tried.
fn packets(seed: u64, mut each: impl FnMut(&[u8]) -> Result<bool>) -> Result<usize> {
    let mut r = Rng(seed);
    let mut ran = 0;
    for _ in 0..2 * PACKETS {
        if ran == PACKETS {
            break;
        }
        if each(&generate(&mut r))? {
            ran += 1;
        }
    }
    Ok(ran)
}

fn fuzz(tc: bool, seed: u64) -> Result<()> {
    let mut dp = dataplane(&LoadOptions::default(), ALG_RANDOM)?;
    let fib = FibNs::empty()?;
    fib.run(|| {
        let mut tally = Tally::default();
        let ran = packets(seed, |packet| {
            let Ok((action, out)) = run(tc, &mut dp, packet) else {
                tally.refused_by_kernel += 1;
                return Ok(false);
            };
            if tc {
                check(packet, action, &out, &[0, 7], &[7], &mut tally);
            } else {
                assert!((1..=4).contains(&action), "XDP verdict {action}");
                check(packet, action, &out, &[2, 4], &[3], &mut tally);
            }
            Ok(true)
        })?;
        println!("{}: {tally:?}", if tc { "tc" } else { "xdp" });
        assert_eq!(ran, PACKETS, "{tally:?}");
        assert!(
            tally.rewritten > 500 && tally.unchanged > 1000 && tally.answered > 10,
            "{tally:?}"
        );
        Ok(())
    })
}

#[test]
fn the_tc_program_survives_hostile_ipv6_packets_and_keeps_checksums() -> Result<()> {
    fuzz(true, 0x6eed_0001)
}

#[test]
fn the_xdp_program_survives_hostile_ipv6_packets_and_keeps_checksums() -> Result<()> {
    fuzz(false, 0x6eed_0002)
}

/// The same packets through a dataplane with the fast paths and one with
/// the helper paths only (hash selection, so both choose alike).
fn same_bytes(tc: bool, seed: u64) -> Result<()> {
    let mut fast = dataplane(&LoadOptions::default(), ALG_HASH)?;
    let helpers = LoadOptions {
        direct_access: false,
        ..Default::default()
    };
    let mut slow = dataplane(&helpers, ALG_HASH)?;
    let fib = FibNs::empty()?;
    fib.run(|| {
        let mut rewritten = 0;
        let ran = packets(seed, |packet| {
            let Ok(a) = run(tc, &mut fast, packet) else {
                return Ok(false);
            };
            let b = run(tc, &mut slow, packet)?;
            assert_eq!((a.0, hex(&a.1)), (b.0, hex(&b.1)), "input {}", hex(packet));
            rewritten += usize::from(a.1 != packet);
            Ok(true)
        })?;
        assert_eq!(ran, PACKETS);
        assert!(rewritten > 500, "{rewritten} rewritten");
        Ok(())
    })
}

#[test]
fn tc_handles_ipv6_the_same_in_place_as_through_the_helpers() -> Result<()> {
    same_bytes(true, 0x6eed_0003)
}

#[test]
fn xdp_handles_ipv6_the_same_in_place_as_through_the_helpers() -> Result<()> {
    same_bytes(false, 0x6eed_0004)
}
