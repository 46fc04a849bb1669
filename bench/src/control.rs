//! Section 3: the control plane. (a) From reading S services x 10 endpoints
//! to everything programmed: Weir (read the YAML, translate, write the maps)
//! against `iptables-restore` and `nft -f` of kube-proxy's rules for the same
//! input, each in a fresh network namespace. (b) From one EndpointSlice
//! change to its map write, as the agent does it (find what changed, translate
//! the Services it touches, plan and write only their frontends; formerly: translate everything, plan
//! the difference, write it). (c) The real agent's memory at that scale.
use std::{
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use weir::{
    dataplane::{sync::PlanConfig, Dataplane},
    model::{ClusterState, ObjectRef},
    translate::translate,
    translation::{Changed, Translation},
};
use weir_tests::{manifests::ManifestDir, netns::Netns, Agent};

use crate::{
    kubeproxy,
    report::{Plot, Section, Series, Table},
    stats::{quantile, ratio, thousands},
    workload::{self, Workload},
    Mode,
};

const ENDPOINTS: usize = 10;

/// The backend capacity for `services` x ENDPOINTS endpoints: the next power
/// of two with room to spare, never below Weir's default. The library and the
/// agent (`--max-backends`) get the same; the other capacities keep their
/// defaults (slots: 262,144; services: 65,536).
fn backend_capacity(services: usize) -> u32 {
    let needed = (services * ENDPOINTS + 16) as u32;
    needed
        .next_power_of_two()
        .max(PlanConfig::default().max_backends)
}

/// Weir's map capacities for `services` services.
fn plan_config(services: usize) -> PlanConfig {
    PlanConfig {
        max_backends: backend_capacity(services),
        ..PlanConfig::default()
    }
}

struct Params {
    sizes: Vec<usize>,
    changes: usize,
    /// The most time the changes may take (fewer are measured if they are slow).
    budget: Duration,
}

fn params(mode: Mode) -> Params {
    match mode {
        Mode::Quick => Params {
            // nft -f of 10k x 10 takes minutes with nftables 1.0.6: --full only.
            sizes: vec![100, 1_000, 3_000],
            changes: 200,
            budget: Duration::from_secs(60),
        },
        Mode::Full => Params {
            sizes: vec![100, 1_000, 10_000],
            changes: 1_000,
            budget: Duration::from_secs(900),
        },
    }
}

/// Seconds each step of programming one size took.
#[derive(Default)]
struct Programming {
    read: f64,
    translate: f64,
    maps: f64,
    iptables: f64,
    nft: f64,
    rules_iptables: usize,
    rules_nft: usize,
}

impl Programming {
    fn weir(&self) -> f64 {
        self.read + self.translate + self.maps
    }
}

pub fn run(mode: Mode) -> Result<Section> {
    let p = params(mode);
    let mut rows = Vec::new();
    for &size in &p.sizes {
        eprintln!("bench: control plane, programming {size} services x {ENDPOINTS} endpoints");
        rows.push((size, programming(size)?));
    }
    let largest = *p.sizes.last().unwrap_or(&1);
    eprintln!(
        "bench: control plane, {} EndpointSlice changes at {largest} services",
        p.changes
    );
    let latencies = change_latency(largest, p.changes, p.budget)?;
    let agent_size = largest;
    eprintln!("bench: control plane, agent memory at {agent_size} services");
    let memory = agent_memory(agent_size)?;
    Ok(section(&p, &rows, latencies, memory, largest, agent_size))
}

fn programming(size: usize) -> Result<Programming> {
    let w = Workload::new(size, ENDPOINTS);
    let dir = ManifestDir::new(&format!("bench-{}-cp{size}", std::process::id()))?;
    w.write(&dir.path)?;
    let mut out = Programming::default();
    let t = Instant::now();
    let state = workload::load(&dir.path)?;
    out.read = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let desired = translate(&state, &workload::node_facts());
    out.translate = t.elapsed().as_secs_f64();
    let mut dp = Dataplane::load_unpinned(plan_config(size))?;
    let t = Instant::now();
    let stats = dp.sync(&desired)?;
    out.maps = t.elapsed().as_secs_f64();
    if stats.skipped > 0 {
        bail!("{} frontends did not fit in the maps", stats.skipped);
    }
    drop(dp);

    let cfg = workload::proxy_config();
    let ipt = kubeproxy::iptables::rules(&state, &cfg);
    out.rules_iptables = ipt.lines().filter(|l| l.starts_with("-A ")).count();
    out.iptables = load_rules(
        &dir.path.join("rules.iptables"),
        &ipt,
        &["iptables-restore"],
    )?;
    let nft = kubeproxy::nftables::rules(&state, &cfg);
    out.rules_nft = nft.lines().filter(|l| l.starts_with("add ")).count();
    out.nft = load_rules(&dir.path.join("rules.nft"), &nft, &["nft", "-f"])?;
    Ok(out)
}

/// Runs `program args... FILE` (stdin from FILE for iptables-restore) in a
/// fresh namespace; returns its wall time in seconds.
fn load_rules(file: &Path, text: &str, command: &[&str]) -> Result<f64> {
    std::fs::write(file, text).with_context(|| format!("writing {}", file.display()))?;
    let ns = Netns::create(&format!("{}-cp", weir_tests::netns::unique_tag()))?;
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--net={}", ns.path().display()))
        .arg("--")
        .args(command);
    if command[0] == "iptables-restore" {
        cmd.stdin(std::fs::File::open(file)?);
    } else {
        cmd.arg(file).stdin(Stdio::null());
    }
    let t = Instant::now();
    let out = cmd
        .output()
        .with_context(|| format!("running {}", command.join(" ")))?;
    let elapsed = t.elapsed().as_secs_f64();
    if !out.status.success() {
        bail!(
            "{} failed: {}",
            command.join(" "),
            String::from_utf8_lossy(&out.stderr)
                .lines()
                .take(5)
                .collect::<Vec<_>>()
                .join("; ")
        );
    }
    Ok(elapsed)
}

/// Milliseconds from changing one EndpointSlice to the maps written, `changes`
/// times, along the agent's path: the changes found by comparing the new
/// state with the last one, the Services they touch translated again, only
/// their frontends planned and written.
fn change_latency(size: usize, changes: usize, budget: Duration) -> Result<Vec<f64>> {
    let w = Workload::new(size, ENDPOINTS);
    let mut state = w.state();
    let facts = workload::node_facts();
    let mut dp = Dataplane::load_unpinned(plan_config(size))?;
    let mut translation = Translation::default();
    let mut before = ClusterState::default();
    translation.update(&before, &state, &facts, &state.changes_since(&before));
    dp.sync(translation.desired())?;
    before = state.clone();
    let mut ms = Vec::with_capacity(changes);
    let deadline = Instant::now() + budget;
    for c in 0..changes {
        if Instant::now() > deadline {
            break;
        }
        // A different service each time: its first endpoint moves to a new pod address.
        let i = (c * 7919) % size;
        let id = ObjectRef::new(
            workload::NAMESPACE,
            format!("{}-1", workload::service_name(i)),
        );
        let Some(slice) = state.slices.get_mut(&id) else {
            bail!("no slice {id}");
        };
        // A new object, as a source makes for a changed slice.
        if let Some(ep) = std::sync::Arc::make_mut(slice).endpoints.first_mut() {
            ep.address = std::net::Ipv4Addr::from(
                u32::from(std::net::Ipv4Addr::new(198, 18, 64, 0)) + c as u32,
            )
            .into();
        }
        let t = Instant::now();
        let found = state.changes_since(&before);
        let stats = match translation.update(&before, &state, &facts, &found) {
            Changed::All => dp.sync(translation.desired())?,
            Changed::Keys(keys) => dp.sync_changes(translation.desired(), &keys)?,
        };
        ms.push(t.elapsed().as_secs_f64() * 1e3);
        if stats.ops == 0 {
            bail!("an endpoint change wrote nothing");
        }
        // The agent keeps the last state as it came (an Arc): no copy is timed.
        before.slices.insert(id.clone(), state.slices[&id].clone());
    }
    Ok(ms)
}

/// The memory of the real agent (the release `weir` binary) holding `size`
/// services: (seconds from start to all programmed, VmRSS kB, VmHWM kB).
fn agent_memory(size: usize) -> Result<(f64, u64, u64)> {
    let w = Workload::new(size, ENDPOINTS);
    let tag = format!("bench{}", std::process::id());
    let dir = ManifestDir::new(&format!("{tag}-agent"))?;
    w.write(&dir.path)?;
    let expected = workload::desired(&w.state()).frontends.len();
    let ns = Netns::create(&format!("{}-agent", weir_tests::netns::unique_tag()))?;
    let t = Instant::now();
    let max_backends = format!("--max-backends={}", backend_capacity(size));
    let mut agent = Agent::start(&ns.name, &dir.path, &tag, &[&max_backends])?;
    agent.wait_for(
        &format!("{expected} frontends"),
        Duration::from_secs(300),
        |rows| rows.len() >= expected,
    )?;
    let ready = t.elapsed().as_secs_f64();
    let pid = agent_pid(&agent.bpffs).context("finding the agent's pid")?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    let memory = (ready, kb("VmRSS:"), kb("VmHWM:"));
    drop(agent);
    drop(ns);
    Ok(memory)
}

/// The pid of the agent whose command line names `bpffs`.
fn agent_pid(bpffs: &Path) -> Option<u32> {
    let needle = format!("--bpffs={}", bpffs.display());
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        let is_agent = args.first()?.ends_with(b"weir") && args.contains(&needle.as_bytes());
        is_agent.then_some(pid)
    })
}

fn section(
    p: &Params,
    rows: &[(usize, Programming)],
    mut latencies: Vec<f64>,
    memory: (f64, u64, u64),
    largest: usize,
    agent_size: usize,
) -> Section {
    let mut table = Table::new(&[
        "services x endpoints",
        "Weir: read YAML",
        "Weir: translate",
        "Weir: map writes",
        "Weir total",
        "iptables-restore",
        "nft -f",
        "iptables / Weir",
        "nft / Weir",
    ]);
    let ms = |s: f64| format!("{:.0} ms", s * 1e3);
    for (size, r) in rows {
        table.row(vec![
            format!("{} x {ENDPOINTS}", thousands(*size as f64)),
            ms(r.read),
            ms(r.translate),
            ms(r.maps),
            ms(r.weir()),
            format!(
                "{} ({} rules)",
                ms(r.iptables),
                thousands(r.rules_iptables as f64)
            ),
            format!(
                "{} ({} statements)",
                ms(r.nft),
                thousands(r.rules_nft as f64)
            ),
            ratio(r.iptables, r.weir()),
            ratio(r.nft, r.weir()),
        ]);
    }
    let points = |f: &dyn Fn(&Programming) -> f64| {
        rows.iter()
            .map(|(s, r)| (*s as f64, f(r) * 1e3))
            .collect::<Vec<_>>()
    };
    let n = latencies.len();
    let (p50, p99) = (
        quantile(&mut latencies, 0.5),
        quantile(&mut latencies, 0.99),
    );
    let mut change = Table::new(&["changes", "p50", "p99", "max"]);
    change.row(vec![
        n.to_string(),
        format!("{p50:.1} ms"),
        format!("{p99:.1} ms"),
        format!("{:.1} ms", latencies.last().copied().unwrap_or(0.0)),
    ]);
    let mut mem = Table::new(&[
        "services x endpoints",
        "start to all programmed",
        "RSS",
        "peak RSS",
    ]);
    mem.row(vec![
        format!("{} x {ENDPOINTS}", thousands(agent_size as f64)),
        format!("{:.1} s", memory.0),
        format!("{:.1} MiB", memory.1 as f64 / 1024.0),
        format!("{:.1} MiB", memory.2 as f64 / 1024.0),
    ]);
    Section {
        title: "3. Control plane".into(),
        intro: format!(
            "Programming N services of {ENDPOINTS} ready endpoints each from scratch. Weir: \
             reading the YAML through its directory source, `translate`, and the map writes \
             of `Dataplane::sync` (the object is loaded beforehand; loading is not counted; \
             the backends map is sized as the agent's `--max-backends` would be for that many \
             endpoints: the next power of two, at least the default 65,536). \
             kube-proxy: `iptables-restore` and `nft -f` of the rules its iptables and \
             nftables modes write for the same input (generated by this crate, see \
             bench/src/kubeproxy/), each in a fresh network namespace. kube-proxy's own rule \
             generation is not counted, only the kernel programming.\n\n\
             EndpointSlice change to map write: up to {changes} times (as many as fit in \
             {budget} s), one endpoint of a different \
             service moves to a new address and the agent's path runs: the state compared with \
             the last one ({largest} services), the Services that changed translated again, \
             their frontends planned and written (`Translation::update`, \
             `Dataplane::sync_changes`). The time the source takes to notice the change (the \
             agent polls a directory, or is told by a watch) is not included.",
            changes = p.changes,
            budget = p.budget.as_secs(),
        ),
        tables: vec![
            ("Time to program everything:".into(), table),
            ("EndpointSlice change to map write:".into(), change),
            (
                "The agent (`weir agent`, release build) on a manifest directory:".into(),
                mem,
            ),
        ],
        notes: Vec::new(),
        plots: vec![Plot {
            file: "control-plane.png".into(),
            title: format!("Time to program N services x {ENDPOINTS} endpoints"),
            x_label: "services".into(),
            y_label: "ms".into(),
            log_x: true,
            series: vec![
                Series {
                    name: "Weir (read + translate + maps)".into(),
                    points: points(&|r| r.weir()),
                },
                Series {
                    name: "iptables-restore".into(),
                    points: points(&|r| r.iptables),
                },
                Series {
                    name: "nft -f".into(),
                    points: points(&|r| r.nft),
                },
            ],
        }],
    }
}
