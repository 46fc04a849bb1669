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

/// Every capacity raised to hold `services` x ENDPOINTS (services and slots
/// too, which `plan_config` leaves at their defaults).
fn capacity(services: usize) -> PlanConfig {
    let defaults = PlanConfig::default();
    PlanConfig {
        max_services: (services as u32 + 16).max(defaults.max_services),
        max_slots: backend_capacity(services).max(defaults.max_slots),
        ..plan_config(services)
    }
}

struct Params {
    sizes: Vec<usize>,
    changes: usize,
    /// The most time the changes may take (fewer are measured if they are slow).
    budget: Duration,
    /// Changes at this many services alone and while scraped (scrape_effect).
    scrape_size: usize,
    scrape_changes: usize,
}

fn params(mode: Mode) -> Params {
    match mode {
        Mode::Quick => Params {
            // nft -f of 10k x 10 takes minutes with nftables 1.0.6: --full only.
            sizes: vec![100, 1_000, 3_000],
            changes: 200,
            budget: Duration::from_secs(60),
            scrape_size: 10_000,
            scrape_changes: 200,
        },
        Mode::Full => Params {
            sizes: vec![100, 1_000, 10_000],
            changes: 1_000,
            budget: Duration::from_secs(900),
            scrape_size: 100_000,
            scrape_changes: 500,
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
    eprintln!(
        "bench: control plane, {} changes at {} services, alone and while scraped",
        p.scrape_changes, p.scrape_size
    );
    let scrape = scrape_effect(p.scrape_size, p.scrape_changes)?;
    let mut agent_sizes = vec![largest, p.scrape_size];
    agent_sizes.dedup();
    let mut memory = Vec::new();
    for size in agent_sizes {
        eprintln!("bench: control plane, agent memory at {size} services");
        memory.push((size, agent_memory(size)?));
    }
    let mut section = section(&p, &rows, latencies, &memory, largest);
    section.tables.insert(2, scrape_table(scrape));
    section.intro.push_str(
        "\n\nA scrape during syncs: EndpointSlice changes as above, first alone, then while \
         another thread reads the maps as /metrics does at every scrape (`Metrics::refresh` \
         over the pinned maps: every frontend's counters), back to back without pause. The \
         agent serves /metrics on a thread and runtime of its own, so a scrape shares no lock \
         or runtime with a sync; what remains is the kernel's and the CPUs'.",
    );
    Ok(section)
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

/// One EndpointSlice change after another along the agent's path: the
/// changes found by comparing the new state with the last one, the Services
/// they touch translated again, only their frontends planned and written.
struct Changer {
    size: usize,
    state: ClusterState,
    before: ClusterState,
    facts: weir::translate::NodeFacts,
    translation: Translation,
    dp: Dataplane,
    done: usize,
}

impl Changer {
    /// `size` services programmed into `dp`.
    fn new(size: usize, mut dp: Dataplane) -> Result<Self> {
        let state = Workload::new(size, ENDPOINTS).state();
        let facts = workload::node_facts();
        let mut translation = Translation::default();
        let empty = ClusterState::default();
        translation.update(&empty, &state, &facts, &state.changes_since(&empty));
        let stats = dp.sync(translation.desired())?;
        if stats.skipped > 0 {
            bail!("{} frontends did not fit in the maps", stats.skipped);
        }
        Ok(Self {
            size,
            before: state.clone(),
            state,
            facts,
            translation,
            dp,
            done: 0,
        })
    }

    /// One change; milliseconds from the new state to the maps written.
    fn change(&mut self) -> Result<f64> {
        let c = self.done;
        self.done += 1;
        // A different service each time: its first endpoint moves to a new pod address.
        let i = (c * 7919) % self.size;
        let id = ObjectRef::new(
            workload::NAMESPACE,
            format!("{}-1", workload::service_name(i)),
        );
        let Some(slice) = self.state.slices.get_mut(&id) else {
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
        let found = self.state.changes_since(&self.before);
        let stats = match self
            .translation
            .update(&self.before, &self.state, &self.facts, &found)
        {
            Changed::All => self.dp.sync(self.translation.desired())?,
            Changed::Keys(keys) => self.dp.sync_changes(self.translation.desired(), &keys)?,
        };
        let ms = t.elapsed().as_secs_f64() * 1e3;
        if stats.ops == 0 {
            bail!("an endpoint change wrote nothing");
        }
        // The agent keeps the last state as it came (an Arc): no copy is timed.
        self.before
            .slices
            .insert(id.clone(), self.state.slices[&id].clone());
        Ok(ms)
    }
}

/// Milliseconds from changing one EndpointSlice to the maps written, `changes`
/// times (fewer if `budget` runs out).
fn change_latency(size: usize, changes: usize, budget: Duration) -> Result<Vec<f64>> {
    let mut changer = Changer::new(size, Dataplane::load_unpinned(plan_config(size))?)?;
    let deadline = Instant::now() + budget;
    let mut ms = Vec::with_capacity(changes);
    while ms.len() < changes && Instant::now() < deadline {
        ms.push(changer.change()?);
    }
    Ok(ms)
}

/// EndpointSlice changes at `size` services, alone and then while another
/// thread reads the maps as /metrics does at every scrape
/// (`Metrics::refresh` over the pinned maps, as the agent's metrics thread
/// does), back to back: the change latencies both ways, the scrapes done
/// and their mean time.
struct ScrapeEffect {
    size: usize,
    alone: Vec<f64>,
    scraped: Vec<f64>,
    scrapes: usize,
    scrape_ms: f64,
}

fn scrape_effect(size: usize, changes: usize) -> Result<ScrapeEffect> {
    let dir = std::path::PathBuf::from(format!(
        "/sys/fs/bpf/weir-bench-{}-scrape",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir)?;
    let result = (|| {
        let (dp, _) = Dataplane::load(&dir, capacity(size))?;
        let mut changer = Changer::new(size, dp)?;
        let alone = (0..changes)
            .map(|_| changer.change())
            .collect::<Result<Vec<_>>>()?;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let scraper = {
            let (stop, dir) = (stop.clone(), dir.clone());
            std::thread::spawn(move || -> Result<(usize, f64)> {
                let maps = weir::dataplane::maps::Maps::open_pinned(&dir)?;
                let metrics = weir::metrics::Metrics::new();
                let (mut n, t) = (0usize, Instant::now());
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    metrics.refresh(&maps, &dir);
                    n += 1;
                }
                Ok((n, t.elapsed().as_secs_f64() * 1e3 / n.max(1) as f64))
            })
        };
        // Let the first scrape get going.
        std::thread::sleep(Duration::from_millis(50));
        let scraped = (0..changes)
            .map(|_| changer.change())
            .collect::<Result<Vec<_>>>();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let (scrapes, scrape_ms) = scraper
            .join()
            .map_err(|_| anyhow::anyhow!("the scraper panicked"))??;
        Ok(ScrapeEffect {
            size,
            alone,
            scraped: scraped?,
            scrapes,
            scrape_ms,
        })
    })();
    let _ = std::fs::remove_dir_all(&dir);
    result
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
    // The capacities the agent's flags would be given for this many.
    let cfg = capacity(size);
    let flags = [
        format!("--max-backends={}", cfg.max_backends),
        format!("--max-services={}", cfg.max_services),
        format!("--max-slots={}", cfg.max_slots),
    ];
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let mut agent = Agent::start(&ns.name, &dir.path, &tag, &flags)?;
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

fn scrape_table(mut e: ScrapeEffect) -> (String, Table) {
    let mut t = Table::new(&[
        "services",
        "changes",
        "p50 / p99 alone",
        "p50 / p99 while scraped",
        "p99 ratio",
        "scrapes meanwhile",
        "mean scrape",
    ]);
    let q = |v: &mut Vec<f64>| (quantile(v, 0.5), quantile(v, 0.99));
    let (a50, a99) = q(&mut e.alone);
    let (s50, s99) = q(&mut e.scraped);
    t.row(vec![
        thousands(e.size as f64),
        e.alone.len().to_string(),
        format!("{a50:.1} / {a99:.1} ms"),
        format!("{s50:.1} / {s99:.1} ms"),
        ratio(s99, a99),
        e.scrapes.to_string(),
        format!("{:.0} ms", e.scrape_ms),
    ]);
    (
        "A scrape during syncs (EndpointSlice change to map write):".into(),
        t,
    )
}

fn section(
    p: &Params,
    rows: &[(usize, Programming)],
    mut latencies: Vec<f64>,
    memory: &[(usize, (f64, u64, u64))],
    largest: usize,
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
    for (size, (ready, rss, peak)) in memory {
        mem.row(vec![
            format!("{} x {ENDPOINTS}", thousands(*size as f64)),
            format!("{ready:.1} s"),
            format!("{:.1} MiB", *rss as f64 / 1024.0),
            format!("{:.1} MiB", *peak as f64 / 1024.0),
        ]);
    }
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
