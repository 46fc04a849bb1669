//! Loads the kernel object with its maps pinned under the bpffs directory
//! (reusing existing pins, so state survives an agent restart).
use std::{
    collections::HashMap,
    path::{Path, PathBuf},
};

use aya::{
    programs::{SchedClassifier, Xdp},
    Ebpf, EbpfLoader,
};
use lb_common::{
    ALL_MAPS, GLOBAL_CT_REFRESH_NS, GLOBAL_MAGLEV_M, MAP_MAGLEV, PROG_TC_INGRESS, PROG_TC_UPLINK,
    PROG_XDP,
};

use super::{
    attach::Attachments,
    filter::{self, Filter, MappedWords},
    maps::{Maps, MapsError},
    pins::{self, PinAction},
    sync::{plan_with, PlanConfig, Programmed},
};
use crate::translate::Desired;

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("creating bpffs directory {path}: {source} (is bpffs mounted at /sys/fs/bpf?)")]
    PinDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not on a bpf filesystem (mount -t bpf bpf /sys/fs/bpf)")]
    NotBpffs { path: PathBuf },
    #[error("loading the eBPF object: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("program {name}: {source}")]
    Program {
        name: &'static str,
        source: aya::programs::ProgramError,
    },
    #[error(transparent)]
    Maps(#[from] MapsError),
    #[error("configuration: {0}")]
    Config(String),
    #[error(transparent)]
    Pins(#[from] pins::PinError),
    #[error("planning map updates: {0}")]
    Plan(#[from] super::sync::PlanError),
    #[error(transparent)]
    Filter(#[from] filter::FilterMapError),
}

const BPF_FS_MAGIC: i64 = 0xcafe4a11;

/// The tc program for pod devices of a loaded object.
pub fn tc_program(ebpf: &mut Ebpf) -> &mut SchedClassifier {
    tc_program_named(ebpf, PROG_TC_INGRESS)
}

/// The tc program for uplinks of a loaded object.
pub fn tc_uplink_program(ebpf: &mut Ebpf) -> &mut SchedClassifier {
    tc_program_named(ebpf, PROG_TC_UPLINK)
}

fn tc_program_named<'a>(ebpf: &'a mut Ebpf, name: &str) -> &'a mut SchedClassifier {
    ebpf.program_mut(name)
        .and_then(|p| p.try_into().ok())
        .expect("the tc programs are part of the object and loaded in Dataplane::finish")
}

/// The XDP program of a loaded object.
pub fn xdp_program(ebpf: &mut Ebpf) -> &mut Xdp {
    ebpf.program_mut(PROG_XDP)
        .and_then(|p| p.try_into().ok())
        .expect("the XDP program is part of the object and loaded in Dataplane::finish")
}

/// Loaded programs and maps, the devices they are attached to, and what the maps hold.
pub struct Dataplane {
    pub ebpf: Ebpf,
    pub maps: Maps,
    pub attachments: Attachments,
    pub xdp: super::xdp::XdpAttachments,
    programmed: Programmed,
    cfg: PlanConfig,
    /// The no-service filter, kept in step with `programmed` (filter.rs).
    filter: Filter<MappedWords>,
    /// The next sync plans everything: at start, after a failed sync, and
    /// while frontends are left out for want of room (sync_delta.rs).
    full_sync_needed: bool,
    /// The backends the last sync's operations put or deleted, as they were
    /// before it: what socket LB's "ended sockets of gone backends" compares
    /// with the maps now, without a copy of every backend per sync.
    touched_backends: std::collections::BTreeMap<u32, crate::frontend::Backend>,
}

/// The capacities the loader gives the maps, by map name.
fn capacities(cfg: &PlanConfig) -> Result<HashMap<&'static str, u32>, LoadError> {
    if !crate::maglev::is_prime(cfg.maglev_m) {
        return Err(LoadError::Config(format!(
            "Maglev table size {} is not a prime",
            cfg.maglev_m
        )));
    }
    let entries = cfg
        .maglev_m
        .checked_mul(cfg.maglev_tables.max(1))
        .ok_or_else(|| {
            LoadError::Config(format!(
                "{} Maglev tables of {} entries are too many",
                cfg.maglev_tables, cfg.maglev_m
            ))
        })?;
    // A sync writes new entries before it removes old ones (so readers never
    // see a half-written service), so at its peak a map holds the old and the
    // new state together: twice the capacity the planner fills (sync::fit).
    let doubled = |n: u32| n.saturating_mul(2);
    // Without IPv6 its maps hold one entry each (the kernel wants at least
    // one): preallocated at full size they would cost tens of MiB for nothing.
    let v6 = |n: u32| if cfg.ipv6 { n } else { 1 };
    let stats = |used: bool| {
        if used {
            cfg.service_ids().saturating_add(1)
        } else {
            1
        }
    };
    Ok(HashMap::from([
        (MAP_MAGLEV, entries),
        (lb_common::MAP_SERVICES, doubled(cfg.max_services)),
        (lb_common::MAP_REVNAT, doubled(cfg.max_services)),
        (lb_common::MAP_BACKENDS, doubled(cfg.max_backends)),
        (lb_common::MAP_SLOTS, doubled(cfg.max_slots)),
        (lb_common::MAP_CT, cfg.max_conntrack),
        // Counters by service id: index 0 is unused, ids run 1..=service_ids;
        // per CPU up to PERCPU_STATS_MAX ids, shared beyond.
        (lb_common::MAP_STATS, stats(!cfg.stats_shared())),
        (lb_common::MAP_STATS_SHARED, stats(cfg.stats_shared())),
        (lb_common::MAP_SERVICES6, v6(doubled(cfg.max_services))),
        (lb_common::MAP_REVNAT6, v6(doubled(cfg.max_services))),
        (lb_common::MAP_BACKENDS6, v6(doubled(cfg.max_backends))),
        (lb_common::MAP_CT6, v6(cfg.max_conntrack)),
        (lb_common::MAP_AFFINITY6, v6(lb_common::MAX_AFFINITY)),
        (
            lb_common::MAP_SOURCE_RANGES6,
            v6(lb_common::MAX_SOURCE_RANGES),
        ),
        (
            lb_common::sock::MAP_SOCK_REVNAT6,
            v6(lb_common::sock::MAX_SOCK_REVNAT),
        ),
    ]))
}

/// Loads a program, trying again (at most 5 times more) while the kernel
/// answers EAGAIN: a transient failure, which libbpf retries too. The
/// verifier returns it when the loading thread gets a signal during a long
/// verification, as happens on a busy node (and once failed a CI run).
pub fn load_retrying(
    mut load: impl FnMut() -> Result<(), aya::programs::ProgramError>,
) -> Result<(), aya::programs::ProgramError> {
    let eagain = |e: &aya::programs::ProgramError| {
        matches!(e, aya::programs::ProgramError::LoadError { io_error, .. }
            if io_error.raw_os_error() == Some(libc::EAGAIN))
    };
    let mut tries = 0;
    loop {
        match load() {
            Err(e) if eagain(&e) && tries < 5 => tries += 1,
            result => return result,
        }
    }
}

/// aya-log levels of the kernel programs: none, or all (`--bpf-log`).
const BPF_LOG_OFF: u8 = 0;
const BPF_LOG_ALL: u8 = 5;

/// What the kernel programs are loaded with, besides the map capacities.
#[derive(Clone, Copy, Debug)]
pub struct LoadOptions {
    /// The programs' aya-log messages on (`--bpf-log`).
    pub bpf_log: bool,
    /// Which sockets the socket programs translate.
    pub socket_lb: super::socket_lb::SocketLbMode,
    /// The host network namespace's cookie (for host-only socket LB).
    pub host_netns_cookie: u64,
    /// How stale an active flow's conntrack timestamp may get before the
    /// kernel writes it again (ns; `CtTimeouts::refresh` of the agent's timeouts).
    pub ct_refresh_ns: u64,
    /// The kernel's in-place fast paths (always on in the agent; packet
    /// tests turn them off to compare both paths' bytes).
    pub direct_access: bool,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            bpf_log: false,
            socket_lb: Default::default(),
            host_netns_cookie: 0,
            ct_refresh_ns: super::ct_gc::CtTimeouts::default().refresh().as_nanos() as u64,
            direct_access: true,
        }
    }
}

/// A loader with the maps sized and the Maglev table size set, the kernel
/// programs' log messages on or off, and the socket LB mode.
fn loader<'a>(
    cfg: &'a PlanConfig,
    capacities: &HashMap<&'static str, u32>,
    options: &'a LoadOptions,
) -> EbpfLoader<'a> {
    let bpf_log = options.bpf_log;
    let mut loader = EbpfLoader::new();
    for (name, entries) in capacities {
        loader.map_max_entries(name, *entries);
    }
    loader.override_global(GLOBAL_MAGLEV_M, &cfg.maglev_m, true);
    let shared: &u32 = if cfg.stats_shared() { &1 } else { &0 };
    loader.override_global(lb_common::GLOBAL_STATS_SHARED, shared, true);
    loader.override_global(GLOBAL_CT_REFRESH_NS, &options.ct_refresh_ns, true);
    let direct: &u8 = if options.direct_access { &1 } else { &0 };
    loader.override_global(lb_common::GLOBAL_DIRECT_ACCESS, direct, true);
    // Read-only data: with 0 the verifier removes the log code from the programs.
    let level = if bpf_log { &BPF_LOG_ALL } else { &BPF_LOG_OFF };
    loader.override_global(aya_log::LEVEL, level, true);
    loader.override_global(
        lb_common::sock::GLOBAL_SOCK_LB_MODE,
        match options.socket_lb {
            super::socket_lb::SocketLbMode::HostOnly => &lb_common::sock::SOCK_LB_HOST_ONLY,
            _ => &lb_common::sock::SOCK_LB_ALL,
        },
        true,
    );
    loader.override_global(
        lb_common::sock::GLOBAL_HOST_NETNS_COOKIE,
        &options.host_netns_cookie,
        true,
    );
    loader
}

/// Result of one sync: how many map operations were applied.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SyncStats {
    pub ops: usize,
    pub frontends: usize,
    pub warnings: Vec<String>,
    /// Frontends left out because the maps are full.
    pub skipped: usize,
}

impl Dataplane {
    /// Loads the object, pinning (or reusing) the maps under `bpffs`, and
    /// restores what the maps already hold. Pins whose layout differs from
    /// this build's are recreated (their entries carried over where the
    /// layout allows it), and each such action is returned for the log.
    pub fn load(bpffs: &Path, cfg: PlanConfig) -> Result<(Self, Vec<PinAction>), LoadError> {
        Self::load_with_log(bpffs, cfg, false)
    }

    /// As `load`, with the kernel programs' aya-log messages on (`bpf_log`;
    /// `bpf_log::start` prints them) or off.
    pub fn load_with_log(
        bpffs: &Path,
        cfg: PlanConfig,
        bpf_log: bool,
    ) -> Result<(Self, Vec<PinAction>), LoadError> {
        let options = LoadOptions {
            bpf_log,
            ..Default::default()
        };
        Self::load_with(bpffs, cfg, &options)
    }

    /// As `load`, with `options`.
    pub fn load_with(
        bpffs: &Path,
        cfg: PlanConfig,
        options: &LoadOptions,
    ) -> Result<(Self, Vec<PinAction>), LoadError> {
        std::fs::create_dir_all(bpffs).map_err(|source| LoadError::PinDir {
            path: bpffs.into(),
            source,
        })?;
        let stat = nix::sys::statfs::statfs(bpffs).map_err(|e| LoadError::PinDir {
            path: bpffs.into(),
            source: e.into(),
        })?;
        if stat.filesystem_type().0 as i64 != BPF_FS_MAGIC {
            return Err(LoadError::NotBpffs { path: bpffs.into() });
        }
        let capacities = capacities(&cfg)?;
        let wanted = pins::wanted_specs(crate::EBPF_OBJECT, &capacities)?;
        let (mut actions, mut pending) = pins::prepare(bpffs, &wanted)?;
        let loaded = (|| {
            let paths: Vec<(&str, PathBuf)> =
                ALL_MAPS.iter().map(|n| (*n, bpffs.join(n))).collect();
            let mut loader = loader(&cfg, &capacities, options);
            for (name, path) in &paths {
                loader.map_pin_path(name, path.as_path());
            }
            let ebpf = loader.load(crate::EBPF_OBJECT)?;
            drop(loader);
            let migrated = pins::migrate(bpffs, &mut pending)?;
            let links = bpffs.join("links");
            std::fs::create_dir_all(&links).map_err(|source| LoadError::PinDir {
                path: links.clone(),
                source,
            })?;
            let mut dataplane = Self::finish(ebpf, cfg)?;
            dataplane.attachments = Attachments::pinned(links);
            Ok::<_, LoadError>((dataplane, migrated))
        })();
        let (mut dataplane, migrated) = match loaded {
            Ok(loaded) => loaded,
            Err(e) => {
                pending.restore();
                return Err(e);
            }
        };
        pending.commit();
        actions.extend(migrated);
        if actions
            .iter()
            .any(|a| matches!(a, PinAction::Recreated { name, .. } if *name == MAP_MAGLEV))
        {
            // The tables are gone: every Maglev service gets a new one.
            dataplane.programmed.forget_maglev_tables();
        }
        Ok((dataplane, actions))
    }

    /// Loads the object with private, unpinned maps (packet tests, benchmarks).
    pub fn load_unpinned(cfg: PlanConfig) -> Result<Self, LoadError> {
        Self::load_unpinned_with(cfg, &LoadOptions::default())
    }

    /// As `load_unpinned`, with `options`.
    pub fn load_unpinned_with(cfg: PlanConfig, options: &LoadOptions) -> Result<Self, LoadError> {
        let ebpf = loader(&cfg, &capacities(&cfg)?, options).load(crate::EBPF_OBJECT)?;
        Self::finish(ebpf, cfg)
    }

    fn finish(mut ebpf: Ebpf, cfg: PlanConfig) -> Result<Self, LoadError> {
        for name in [PROG_TC_INGRESS, PROG_TC_UPLINK] {
            let prog: &mut SchedClassifier = ebpf
                .program_mut(name)
                .ok_or(LoadError::Program {
                    name,
                    source: aya::programs::ProgramError::NotLoaded,
                })?
                .try_into()
                .map_err(|source| LoadError::Program { name, source })?;
            load_retrying(|| prog.load()).map_err(|source| LoadError::Program { name, source })?;
        }
        let xdp: &mut Xdp = ebpf
            .program_mut(PROG_XDP)
            .ok_or(LoadError::Program {
                name: PROG_XDP,
                source: aya::programs::ProgramError::NotLoaded,
            })?
            .try_into()
            .map_err(|source| LoadError::Program {
                name: PROG_XDP,
                source,
            })?;
        load_retrying(|| xdp.load()).map_err(|source| LoadError::Program {
            name: PROG_XDP,
            source,
        })?;
        let maps = Maps::take(&mut ebpf)?;
        let programmed = maps.read();
        // Before anything is attached: every bit a live flow needs.
        let mut filter = Filter::new(MappedWords::map(&maps.filter)?);
        let entries: Vec<_> = maps.ct.iter().filter_map(Result::ok).collect();
        let mut replies = super::ct_gc_worker::reply_bits(entries.iter().map(|(k, v)| (k, v)));
        let entries6: Vec<_> = maps.ct6.iter().filter_map(Result::ok).collect();
        replies.union(&super::ct_gc_worker::reply_bits(
            entries6.iter().map(|(k, v)| (k, v)),
        ));
        filter.restore(&programmed, replies);
        Ok(Self {
            ebpf,
            maps,
            attachments: Attachments::default(),
            xdp: Default::default(),
            programmed,
            cfg,
            filter,
            full_sync_needed: true,
            touched_backends: Default::default(),
        })
    }

    pub fn programmed(&self) -> &Programmed {
        &self.programmed
    }

    /// The backends the last sync put or deleted, as they were before it.
    pub(super) fn touched_backends(
        &self,
    ) -> &std::collections::BTreeMap<u32, crate::frontend::Backend> {
        &self.touched_backends
    }

    /// Deletes the conntrack entries whose flows have expired, here and now
    /// (tests; the agent uses `ct_gc_worker`), and prunes the filter.
    pub fn gc_conntrack(
        &mut self,
        timeouts: &super::ct_gc::CtTimeouts,
    ) -> Result<super::ct_gc::CtGc, LoadError> {
        let capacity = self.cfg.max_conntrack as usize;
        let mut ct = self.conntrack_handles()?;
        let collected = super::ct_gc_worker::collect(&mut ct, timeouts, capacity);
        self.prune_filter(collected.reply_bits);
        Ok(collected.gc)
    }

    /// Handles of their own on both conntrack maps (duplicated fds).
    fn conntrack_handles(&self) -> Result<super::ct_gc_worker::CtMaps, LoadError> {
        use super::ct_gc_worker::conntrack_handle;
        use aya::maps::IterableMap;
        let e = |name| move |source| LoadError::from(MapsError::Map { name, source });
        Ok(super::ct_gc_worker::CtMaps {
            v4: conntrack_handle(self.maps.ct.map()).map_err(e(lb_common::MAP_CT))?,
            v6: conntrack_handle(self.maps.ct6.map()).map_err(e(lb_common::MAP_CT6))?,
        })
    }

    /// A worker thread collecting conntrack on a handle of its own.
    pub fn ct_gc_worker(
        &self,
        timeouts: super::ct_gc::CtTimeouts,
    ) -> Result<super::ct_gc_worker::GcWorker, LoadError> {
        let ct = self.conntrack_handles()?;
        super::ct_gc_worker::GcWorker::start(ct, timeouts, self.cfg.max_conntrack as usize)
            .map_err(|e| LoadError::Config(format!("starting the conntrack GC thread: {e}")))
    }

    /// After a conntrack collection that found `ct_reply_bits` in use:
    /// clears the filter's reply bits nothing uses any more (filter.rs).
    pub fn prune_filter(&mut self, mut ct_reply_bits: filter::ReplyBits) {
        ct_reply_bits.extend(self.programmed.backends.values().map(filter::backend_bit));
        self.filter.prune_replies(ct_reply_bits);
    }

    /// Brings the maps to `desired`. On a failed write the maps are re-read,
    /// so that the next sync plans from what they really hold.
    pub fn sync(&mut self, desired: &Desired) -> Result<SyncStats, LoadError> {
        self.touched_backends.clear();
        let plan = plan_with(&self.programmed, desired, &self.cfg)?;
        self.full_sync_needed = true;
        self.apply(&plan.ops)?;
        self.programmed = plan.next;
        self.full_sync_needed = plan.skipped > 0 || plan.maglev_fallbacks > 0;
        Ok(SyncStats {
            ops: plan.ops.len(),
            frontends: desired.frontends.len(),
            warnings: plan.warnings,
            skipped: plan.skipped,
        })
    }

    /// As `sync`, when only the frontends `changed` may differ from what the
    /// last sync programmed: plans and writes only those (sync_delta.rs),
    /// unless a full plan is due.
    pub fn sync_changes(
        &mut self,
        desired: &Desired,
        changed: &std::collections::BTreeSet<crate::frontend::FrontendKey>,
    ) -> Result<SyncStats, LoadError> {
        self.touched_backends.clear();
        if self.full_sync_needed {
            return self.sync(desired);
        }
        let Some(mut delta) =
            super::sync_delta::plan_delta(&self.programmed, desired, changed, &self.cfg)?
        else {
            return self.sync(desired);
        };
        self.full_sync_needed = true;
        self.apply(&delta.ops)?;
        self.full_sync_needed = delta.maglev_fallbacks > 0;
        let stats = SyncStats {
            ops: delta.ops.len(),
            frontends: desired.frontends.len(),
            warnings: std::mem::take(&mut delta.warnings),
            skipped: 0,
        };
        self.programmed.apply_delta(delta);
        Ok(stats)
    }

    /// Writes `ops` with the filter bits around them; on a failed write
    /// re-reads the maps.
    fn apply(&mut self, ops: &[super::sync::Op]) -> Result<(), LoadError> {
        use super::sync::Op;
        self.touched_backends = ops
            .iter()
            .filter_map(|op| match op {
                Op::PutBackend(id, _) | Op::DelBackend(id) => {
                    self.programmed.backends.get(id).map(|b| (*id, *b))
                }
                _ => None,
            })
            .collect();
        self.filter.before(&self.programmed, ops);
        for op in ops {
            if let Err(e) = self.maps.apply(op, self.cfg.maglev_m) {
                self.programmed = self.maps.read();
                self.filter.rebuild_frontends(&self.programmed);
                return Err(e.into());
            }
        }
        self.filter.after(ops);
        Ok(())
    }
}
