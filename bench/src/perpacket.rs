//! Section 1: what the datapath costs per packet, through BPF_PROG_TEST_RUN,
//! against a no-op program of the same type, with 1 to 100k services in
//! the maps (programmed by Weir's own translate + sync into unpinned maps).
//!
//! BPF_PROG_TEST_RUN with `repeat` > 1 runs the program again on the packet
//! the previous run left behind, so after the first DNAT the rest would
//! measure something else. Two methods, each applied to Weir and to the
//! no-op alike:
//! - *1 run per call*: K calls, each on a fresh copy of the packet (a new
//!   flow: K different 5-tuples; an established flow: the same 5-tuple
//!   after a first call made it). The kernel times each run; we report the
//!   median. The timer's own cost (tens of ns) is in both numbers.
//! - *repeat R in one call*: for packets the program leaves unchanged: an
//!   established flow to a frontend whose backend is the frontend's own
//!   address and port (the full established path, rewriting bytes to the
//!   same values), and a packet that is not for any service.
//!
//! The maps are dual-stack: every generated frontend also has an IPv6 twin
//! (its IPv4 address embedded in 2001:db8:4::/96, with IPv6 backends), so
//! "N services" is N of each family, and the IPv6 rows take the same paths
//! with Ethernet + IPv6 + TCP packets.
use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::AsFd,
};

use anyhow::Result;
use aya::programs::Xdp;
use lb_common::{BACKEND_ACTIVE, BACKEND_LOCAL, PROTO_TCP, SCOPE_EXTERNAL, SVC_FLAG_EXTERNAL};
use weir::{
    dataplane::{loader::tc_program, sync::PlanConfig, Dataplane},
    model::ObjectRef,
    translate::{Backend, Frontend, FrontendKey as ServiceKey},
};
use weir_tests::packets::{Pkt, Pkt6};

use crate::{
    raw_bpf::{load_noop, test_run, ProgKind},
    report::{Plot, Section, Series, Table},
    stats::{quantile, ratio},
    workload::{self, Workload, NODE_IP, TCP_NODE_PORT, TCP_PORT},
    Mode,
};

/// The XDP program for NodePort traffic from outside, once it exists.
pub const XDP_PROGRAM: &str = "weir_xdp";
/// A frontend whose only backend is itself (for repeated runs), reachable
/// from pods and, as an external IP, from outside.
const SELF_VIP: Ipv4Addr = Ipv4Addr::new(198, 19, 255, 254);
/// An address no service uses.
const NOT_A_SERVICE: Ipv4Addr = Ipv4Addr::new(198, 19, 255, 1);
const POD: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 2);
/// External clients (for NodePort through XDP) live here.
const EXTERNAL: Ipv4Addr = Ipv4Addr::new(198, 18, 200, 2);

/// The IPv6 twin of an IPv4 address of the workload: embedded in
/// 2001:db8:4::/96.
fn twin(a: Ipv4Addr) -> Ipv6Addr {
    let [x, y, z, w] = a.octets();
    Ipv6Addr::new(
        0x2001,
        0xdb8,
        4,
        0,
        0,
        0,
        u16::from_be_bytes([x, y]),
        u16::from_be_bytes([z, w]),
    )
}

fn twin_ip(a: IpAddr) -> IpAddr {
    match a {
        IpAddr::V4(a) => IpAddr::V6(twin(a)),
        v6 => v6,
    }
}

struct Params {
    sizes: Vec<usize>,
    /// Calls for the 1-run-per-call method.
    calls: usize,
    /// Repetitions for the repeat method.
    repeat: u32,
}

fn params(mode: Mode) -> Params {
    match mode {
        Mode::Quick => Params {
            sizes: vec![1, 1_000, 10_000, 100_000],
            calls: 20_000,
            repeat: 200_000,
        },
        Mode::Full => Params {
            sizes: vec![1, 1_000, 10_000, 100_000],
            calls: 100_000,
            repeat: 5_000_000,
        },
    }
}

/// A measured path: name, method and ns per packet at each size.
struct Row {
    path: String,
    method: String,
    kind: ProgKind,
    repeat: bool,
    ns: Vec<(usize, f64)>,
}

pub fn run(mode: Mode) -> Result<Section> {
    let p = params(mode);
    let mut rows: Vec<Row> = Vec::new();
    let mut push = |path: &str, kind, repeat: bool, size, ns| {
        let method = if repeat {
            format!("repeat {}", crate::stats::thousands(f64::from(p.repeat)))
        } else {
            format!("1 run x {} calls", crate::stats::thousands(p.calls as f64))
        };
        match rows
            .iter_mut()
            .find(|r| r.path == path && r.method == method)
        {
            Some(r) => r.ns.push((size, ns)),
            None => rows.push(Row {
                path: path.into(),
                method,
                kind,
                repeat,
                ns: vec![(size, ns)],
            }),
        }
    };
    let mut xdp_present = false;
    let mut skipped = Vec::new();
    for &size in &p.sizes {
        eprintln!("bench: per-packet, {size} services");
        let mut dp = match programmed(size, 0) {
            Ok(dp) => dp,
            Err(e) => {
                eprintln!("bench: per-packet, {size} services do not fit: {e}");
                skipped.push(format!(
                    "{} services: not measured, Weir could not program them: {e}.",
                    crate::stats::thousands(size as f64)
                ));
                continue;
            }
        };
        let w = Workload::new(size, 2);
        let vip = w.target_ip();
        let tc = tc_program(&mut dp.ebpf).fd()?.try_clone()?;
        let tc = tc.as_fd();
        let new_flows: Vec<Vec<u8>> = (0..p.calls)
            .map(|i| flow(POD, i, vip, TCP_PORT).build())
            .collect();
        push(
            "tc ClusterIP, new flow",
            ProgKind::Tc,
            false,
            size,
            per_call(tc, &new_flows)?,
        );
        let est = flow(POD, p.calls + 1, vip, TCP_PORT).build();
        per_call(tc, std::slice::from_ref(&est))?;
        push(
            "tc ClusterIP, established flow",
            ProgKind::Tc,
            false,
            size,
            per_call(tc, &vec![est; p.calls])?,
        );
        let same = Pkt::tcp(POD.octets(), 40000, SELF_VIP.octets(), TCP_PORT).build();
        push(
            "tc ClusterIP, established flow",
            ProgKind::Tc,
            true,
            size,
            repeated(tc, &same, p.repeat)?,
        );
        // The same with the shared service counters (a --max-services beyond
        // PERCPU_STATS_MAX): locked adds instead of per-CPU ones.
        let mut shared = programmed(size, lb_common::PERCPU_STATS_MAX + 1)?;
        let shared_tc = tc_program(&mut shared.ebpf).fd()?.try_clone()?;
        push(
            "tc ClusterIP, established flow, shared counters",
            ProgKind::Tc,
            true,
            size,
            repeated(shared_tc.as_fd(), &same, p.repeat)?,
        );
        drop(shared);
        let other = Pkt::tcp(POD.octets(), 40000, NOT_A_SERVICE.octets(), TCP_PORT).build();
        push(
            "tc, packet for no service",
            ProgKind::Tc,
            true,
            size,
            repeated(tc, &other, p.repeat)?,
        );
        // The same paths for IPv6.
        let vip6 = twin(vip);
        let new_flows: Vec<Vec<u8>> = (0..p.calls)
            .map(|i| flow6(POD, i, vip6, TCP_PORT).build())
            .collect();
        push(
            "tc ClusterIP IPv6, new flow",
            ProgKind::Tc,
            false,
            size,
            per_call(tc, &new_flows)?,
        );
        let est = flow6(POD, p.calls + 1, vip6, TCP_PORT).build();
        per_call(tc, std::slice::from_ref(&est))?;
        push(
            "tc ClusterIP IPv6, established flow",
            ProgKind::Tc,
            false,
            size,
            per_call(tc, &vec![est; p.calls])?,
        );
        let same = Pkt6::tcp(twin(POD).octets(), 40000, twin(SELF_VIP).octets(), TCP_PORT).build();
        push(
            "tc ClusterIP IPv6, established flow",
            ProgKind::Tc,
            true,
            size,
            repeated(tc, &same, p.repeat)?,
        );
        let other = Pkt6::tcp(
            twin(POD).octets(),
            40000,
            twin(NOT_A_SERVICE).octets(),
            TCP_PORT,
        )
        .build();
        push(
            "tc, IPv6 packet for no service",
            ProgKind::Tc,
            true,
            size,
            repeated(tc, &other, p.repeat)?,
        );
        if let Some(xdp) = xdp_fd(&mut dp)? {
            xdp_present = true;
            let xdp = xdp.as_fd();
            let new_flows: Vec<Vec<u8>> = (0..p.calls)
                .map(|i| flow(EXTERNAL, i, NODE_IP, TCP_NODE_PORT).build())
                .collect();
            push(
                "XDP NodePort, new flow",
                ProgKind::Xdp,
                false,
                size,
                per_call(xdp, &new_flows)?,
            );
            let est = flow(EXTERNAL, p.calls + 1, NODE_IP, TCP_NODE_PORT).build();
            per_call(xdp, std::slice::from_ref(&est))?;
            push(
                "XDP NodePort, established flow",
                ProgKind::Xdp,
                false,
                size,
                per_call(xdp, &vec![est; p.calls])?,
            );
            let same = Pkt::tcp(EXTERNAL.octets(), 40000, SELF_VIP.octets(), TCP_PORT).build();
            push(
                "XDP external IP, established flow",
                ProgKind::Xdp,
                true,
                size,
                repeated(xdp, &same, p.repeat)?,
            );
            let other =
                Pkt::tcp(EXTERNAL.octets(), 40000, NOT_A_SERVICE.octets(), TCP_PORT).build();
            push(
                "XDP, packet for no service",
                ProgKind::Xdp,
                true,
                size,
                repeated(xdp, &other, p.repeat)?,
            );
            let same6 = Pkt6::tcp(
                twin(EXTERNAL).octets(),
                40000,
                twin(SELF_VIP).octets(),
                TCP_PORT,
            )
            .build();
            push(
                "XDP external IP IPv6, established flow",
                ProgKind::Xdp,
                true,
                size,
                repeated(xdp, &same6, p.repeat)?,
            );
            let other6 = Pkt6::tcp(
                twin(EXTERNAL).octets(),
                40000,
                twin(NOT_A_SERVICE).octets(),
                TCP_PORT,
            )
            .build();
            push(
                "XDP, IPv6 packet for no service",
                ProgKind::Xdp,
                true,
                size,
                repeated(xdp, &other6, p.repeat)?,
            );
        }
    }
    // The no-op programs, measured the same ways (once: they have no maps).
    let mut noop = std::collections::BTreeMap::new();
    for kind in [ProgKind::Tc, ProgKind::Xdp] {
        let fd = load_noop(kind)?;
        let pkt = Pkt::tcp(POD.octets(), 40000, NOT_A_SERVICE.octets(), TCP_PORT).build();
        let calls: Vec<Vec<u8>> = vec![pkt.clone(); p.calls];
        noop.insert((kind.name(), false), per_call(fd.as_fd(), &calls)?);
        noop.insert((kind.name(), true), repeated(fd.as_fd(), &pkt, p.repeat)?);
    }
    let mut section = section(&p, &rows, &noop, xdp_present);
    section.notes.extend(skipped);
    Ok(section)
}

/// A TCP SYN of flow number `i` from around `src` (source port and address vary).
fn flow(src: Ipv4Addr, i: usize, dst: Ipv4Addr, dport: u16) -> Pkt {
    let src = Ipv4Addr::from(u32::from(src) + (i / 50_000) as u32);
    Pkt::tcp(
        src.octets(),
        10_000 + (i % 50_000) as u16,
        dst.octets(),
        dport,
    )
}

/// flow(), for IPv6: the twins of its addresses.
fn flow6(src: Ipv4Addr, i: usize, dst: Ipv6Addr, dport: u16) -> Pkt6 {
    let v4 = flow(src, i, Ipv4Addr::UNSPECIFIED, dport);
    Pkt6::tcp(
        twin(Ipv4Addr::from(v4.src)).octets(),
        v4.sport,
        dst.octets(),
        dport,
    )
}

/// Maps holding `size` generated services (2 endpoints each) as Weir's
/// `translate` makes them, plus the frontend that is its own backend; the
/// capacities are raised to fit (as `--max-services`/`--max-backends` do).
/// `size` services programmed, with at least `min_services` of map capacity.
fn programmed(size: usize, min_services: u32) -> Result<Dataplane> {
    let w = Workload::new(size, 2);
    let mut desired = workload::desired(&w.state());
    desired.frontends.insert(
        ServiceKey {
            addr: SELF_VIP.into(),
            port: TCP_PORT,
            proto: PROTO_TCP,
            scope: SCOPE_EXTERNAL,
        },
        Frontend {
            service: ObjectRef::new(workload::NAMESPACE, "self"),
            backends: vec![Backend {
                addr: SELF_VIP.into(),
                port: TCP_PORT,
                proto: PROTO_TCP,
                state: BACKEND_ACTIVE | BACKEND_LOCAL,
            }],
            // Reachable from outside (an external IP) with a local backend,
            // so that XDP's established path passes it on unchanged too.
            flags: SVC_FLAG_EXTERNAL,
            ..Default::default()
        }
        .into(),
    );
    // Every frontend's IPv6 twin, with the twins of its backends.
    let twins: Vec<(ServiceKey, std::sync::Arc<Frontend>)> = desired
        .frontends
        .iter()
        .map(|(k, f)| {
            let mut f = (**f).clone();
            for b in &mut f.backends {
                b.addr = twin_ip(b.addr);
            }
            let k = ServiceKey {
                addr: twin_ip(k.addr),
                ..*k
            };
            (k, f.into())
        })
        .collect();
    desired.frontends.extend(twins);
    let defaults = PlanConfig::default();
    let frontends = desired.frontends.len() as u32;
    let slots: u32 = desired
        .frontends
        .values()
        .map(|f| f.backends.len() as u32)
        .sum();
    let cfg = PlanConfig {
        max_services: defaults.max_services.max(frontends + 16).max(min_services),
        max_backends: defaults.max_backends.max(slots + 16),
        max_slots: defaults.max_slots.max(slots + 16),
        ipv6: true,
        ..defaults
    };
    let mut dp = Dataplane::load_unpinned(cfg)?;
    let stats = dp.sync(&desired)?;
    anyhow::ensure!(
        stats.skipped == 0,
        "{} frontends did not fit in the maps",
        stats.skipped
    );
    Ok(dp)
}

/// The XDP program's fd, loading it if the object has one.
fn xdp_fd(dp: &mut Dataplane) -> Result<Option<aya::programs::ProgramFd>> {
    let Some(prog) = dp.ebpf.program_mut(XDP_PROGRAM) else {
        return Ok(None);
    };
    let xdp: &mut Xdp = prog.try_into()?;
    if xdp.fd().is_err() {
        xdp.load()?;
    }
    Ok(Some(xdp.fd()?.try_clone()?))
}

/// Median kernel time of one run per call over `packets`.
fn per_call(prog: std::os::fd::BorrowedFd<'_>, packets: &[Vec<u8>]) -> Result<f64> {
    let mut out = vec![0u8; 2048];
    let mut ns = Vec::with_capacity(packets.len());
    for pkt in packets {
        let (_, d) = test_run(prog, pkt, &mut out, 1)?;
        ns.push(f64::from(d));
    }
    Ok(quantile(&mut ns, 0.5))
}

/// Kernel time per run for `repeat` runs in one call (best of three calls).
fn repeated(prog: std::os::fd::BorrowedFd<'_>, packet: &[u8], repeat: u32) -> Result<f64> {
    let mut out = vec![0u8; 2048];
    let mut best = f64::MAX;
    for _ in 0..3 {
        let (_, d) = test_run(prog, packet, &mut out, repeat)?;
        best = best.min(f64::from(d));
    }
    Ok(best)
}

fn section(
    p: &Params,
    rows: &[Row],
    noop: &std::collections::BTreeMap<(&str, bool), f64>,
    xdp_present: bool,
) -> Section {
    let mut table = Table::new(&[
        "path",
        "method",
        "services",
        "Weir ns/packet",
        "no-op ns/packet",
        "ratio to no-op",
        "Weir minus no-op",
    ]);
    let mut series = Vec::new();
    for r in rows {
        let base = noop.get(&(r.kind.name(), r.repeat)).copied().unwrap_or(0.0);
        for &(size, ns) in &r.ns {
            table.row(vec![
                r.path.clone(),
                r.method.clone(),
                crate::stats::thousands(size as f64),
                format!("{ns:.0}"),
                format!("{base:.0}"),
                ratio(ns, base),
                format!("{:.0}", ns - base),
            ]);
        }
        series.push(Series {
            name: format!("{} ({})", r.path, r.method),
            points: r.ns.iter().map(|&(s, ns)| (s as f64, ns)).collect(),
        });
    }
    for (kind, repeat) in [("tc", false), ("tc", true), ("xdp", true)] {
        if let Some(&ns) = noop.get(&(kind, repeat)) {
            let method = if repeat { "repeat" } else { "1 run per call" };
            series.push(Series {
                name: format!("no-op {kind} ({method})"),
                points: p.sizes.iter().map(|&s| (s as f64, ns)).collect(),
            });
        }
    }
    if !xdp_present {
        for path in ["XDP NodePort, new flow", "XDP NodePort, established flow"] {
            table.row(vec![
                path.into(),
                "-".into(),
                "-".into(),
                format!("not yet: this build has no `{XDP_PROGRAM}` program"),
                format!("{:.0}", noop.get(&("xdp", false)).copied().unwrap_or(0.0)),
                "-".into(),
                "-".into(),
            ]);
        }
    }
    Section {
        title: "1. Datapath cost per packet (BPF_PROG_TEST_RUN)".into(),
        intro: format!(
            "Weir's programs run on one TCP SYN (Ethernet + IPv4 + TCP, 70 bytes; the IPv6 \
             rows Ethernet + IPv6 + TCP, 90 bytes) through \
             BPF_PROG_TEST_RUN, with N generated dual-stack ClusterIP services of 2 endpoints \
             each (N frontends of each family) \
             written by Weir's `translate` and `Dataplane::sync` into private maps, sized as \
             `--max-services`/`--max-backends` would size them to fit. The no-op is a \
             two-instruction program of the same type (`return TC_ACT_OK` / `XDP_PASS`), \
             timed the same way, so the ratio is what Weir adds to an empty hook.\n\n\
             *1 run per call*: {calls} calls, each on a fresh packet (new flow: a new 5-tuple \
             per call; established: the same 5-tuple after a first call created it); the \
             median of the kernel's per-run time, which includes the kernel timer's own cost \
             in both columns. *repeat*: one call running the program {repeat} times on the \
             same buffer (best of 3), used only where the program leaves the packet as it \
             found it: an established flow to a frontend whose backend is its own address \
             and port (the established path's parse, filter, conntrack, service and backend \
             lookups and counters; the rewrite finds nothing to change and writes nothing), \
             and a packet for no service.",
            calls = crate::stats::thousands(p.calls as f64),
            repeat = crate::stats::thousands(f64::from(p.repeat)),
        ),
        tables: vec![(String::new(), table)],
        notes: Vec::new(),
        plots: vec![Plot {
            file: "perpacket.png".into(),
            title: "Per-packet cost against services programmed".into(),
            x_label: "services".into(),
            y_label: "ns per packet".into(),
            log_x: true,
            series,
        }],
    }
}
