//! Planning map updates: the difference between what is programmed and what
//! is desired, as an ordered list of operations. Pure and unit-tested; the
//! order is what keeps a reader from ever seeing a half-written service:
//! backends, then slots, then reverse NAT, then the service entry with its
//! new count; removals after that, orphaned backends last.
use std::collections::{BTreeMap, BTreeSet, HashMap};

use std::sync::Arc;

use std::net::{IpAddr, SocketAddr};

use lb_common::{
    ServiceValue, SlotKey, ALG_HASH, ALG_MAGLEV, DEFAULT_MAGLEV_M, MAX_BACKENDS, MAX_SERVICES,
    NO_MAGLEV_TABLE, SCOPE_EXTERNAL, SCOPE_INTERNAL, SVC_FLAG_HAS_INTERNAL,
};

use crate::{
    frontend::{Backend, FrontendKey},
    translate::Desired,
};

/// A backend's identity: address, port and protocol (its state may change).
pub type BackendAddr = (IpAddr, u16, u8);

pub fn backend_addr(b: &Backend) -> BackendAddr {
    (b.addr, b.port, b.proto)
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProgrammedService {
    pub value: ServiceValue,
    /// Backend ids in slots 1..=count.
    pub backend_ids: Vec<u32>,
}

/// What the maps hold, as the agent knows it. Restored from the pinned maps
/// at start so that ids (and with them live conntrack entries) stay valid.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Programmed {
    pub services: BTreeMap<FrontendKey, ProgrammedService>,
    pub backends: BTreeMap<u32, Backend>,
    /// The last ids handed out: allocation continues after them, so an id
    /// freed by one sync is not reused by the next one while conntrack
    /// entries may still name it. After a restart they start from the
    /// highest id in the maps.
    pub last_service_id: u32,
    pub last_backend_id: u32,
    /// loadBalancerSourceRanges entries: (service id, network, prefix).
    pub source_ranges: BTreeSet<SourceRangeEntry>,
    /// Derived from `services` and `backends` (see `reindex`), for plans of
    /// only what changed (sync_delta.rs).
    pub index: Index,
}

/// Lookups a plan of changes needs without scanning the whole state.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Index {
    /// Backend id by address, port and protocol.
    pub backend_ids: HashMap<BackendAddr, u32>,
    /// How many slots name each backend id.
    pub backend_refs: HashMap<u32, u32>,
    /// Service ids in use.
    pub service_ids: BTreeSet<u32>,
    /// Slots in use, over all services.
    pub slots: u64,
}

/// A source range of one service id: (service id, network address, prefix).
pub type SourceRangeEntry = (u32, IpAddr, u8);

/// `addr/prefix` with the host bits cleared: the LPM trie treats
/// 198.18.0.5/16 and 198.18.0.0/16 as one key, so the plan must too.
pub use crate::node_addrs::network;

impl Programmed {
    /// Rebuilds `index` from `services` and `backends`.
    pub fn reindex(&mut self) {
        let backend_ids = self
            .backends
            .iter()
            .map(|(id, b)| (backend_addr(b), *id))
            .collect();
        self.reindex_with(backend_ids);
    }

    /// `reindex`, given the backend ids by address (which a full plan has
    /// built already: they must be exactly those of `backends`).
    fn reindex_with(&mut self, backend_ids: HashMap<BackendAddr, u32>) {
        debug_assert_eq!(backend_ids.len(), self.backends.len());
        let mut index = Index {
            backend_ids,
            ..Index::default()
        };
        for s in self.services.values() {
            index.service_ids.insert(s.value.id);
            index.slots += s.backend_ids.len() as u64;
            for id in &s.backend_ids {
                *index.backend_refs.entry(*id).or_default() += 1;
            }
        }
        self.index = index;
    }

    /// The Maglev map was recreated empty: no service has a table any more,
    /// so the next plan builds them all again.
    pub fn forget_maglev_tables(&mut self) {
        for s in self.services.values_mut() {
            s.value.maglev_table = NO_MAGLEV_TABLE;
        }
    }

    /// Whether both hold the same map entries (allocation cursors aside).
    pub fn same_entries(&self, other: &Programmed) -> bool {
        self.services == other.services
            && self.backends == other.backends
            && self.source_ranges == other.source_ranges
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// A whole Maglev table (backend ids), written into an unused table
    /// index before the service entry is pointed at it.
    PutMaglev(u32, Arc<Vec<u32>>),
    PutBackend(u32, Backend),
    PutSlot(SlotKey, u32),
    /// The frontend restored as the source of replies, by service id.
    /// Boxed, as is the service value: with them inline an Op was 48
    /// bytes, and a full plan at 100k services holds 2.2 million (32 now).
    PutRevNat(u32, Box<SocketAddr>),
    PutService(FrontendKey, Box<ServiceValue>),
    /// A loadBalancerSourceRanges entry (service id, network, prefix),
    /// written before the service entry that turns the check on.
    PutSourceRange(u32, IpAddr, u8),
    DelService(FrontendKey),
    DelSourceRange(u32, IpAddr, u8),
    DelSlot(SlotKey),
    DelRevNat(u32),
    DelBackend(u32),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error("no free {what} id: all {max} are in use")]
    IdsExhausted { what: &'static str, max: u32 },
}

/// Picks the lowest id in 1..=max not in `used`, starting after `after` so
/// that a just-freed id (which stale conntrack entries may still name) is not
/// reused at once.
fn allocate(
    used: &BTreeSet<u32>,
    after: u32,
    max: u32,
    what: &'static str,
) -> Result<u32, PlanError> {
    allocate_where(|id| used.contains(&id), after, max, what)
}

/// `allocate` with the ids in use given by `used`.
pub(super) fn allocate_where(
    used: impl Fn(u32) -> bool,
    after: u32,
    max: u32,
    what: &'static str,
) -> Result<u32, PlanError> {
    (after + 1..=max)
        .chain(1..=after.min(max))
        .find(|id| !used(*id))
        .ok_or(PlanError::IdsExhausted { what, max })
}

/// Datapath sizing the planner must respect.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PlanConfig {
    /// Maglev table size (prime).
    pub maglev_m: u32,
    /// How many Maglev tables the map holds.
    pub maglev_tables: u32,
    /// Capacity of the services (and reverse NAT) map: frontends.
    pub max_services: u32,
    /// Capacity of the backends map.
    pub max_backends: u32,
    /// Capacity of the slots map: backends summed over frontends.
    pub max_slots: u32,
    /// Capacity of the conntrack map (entries; two per flow), per family.
    pub max_conntrack: u32,
    /// Whether IPv6 frontends are served: without, the IPv6 maps are
    /// created with one entry each (`--ipv6`).
    pub ipv6: bool,
}

pub const DEFAULT_MAGLEV_TABLES: u32 = 32;

impl PlanConfig {
    /// Service ids run 1..=this: the services map's capacity, and never fewer
    /// than the default's 65,536, so that ids programmed under the default
    /// stay valid after a restart with a smaller `--max-services`. The
    /// per-service counters (STATS, an array indexed by id) are sized by it.
    pub fn service_ids(&self) -> u32 {
        self.max_services.max(MAX_SERVICES)
    }

    /// Whether the service counters are one shared array rather than per
    /// CPU: for a service id space beyond lb_common::PERCPU_STATS_MAX.
    pub fn stats_shared(&self) -> bool {
        self.service_ids() > lb_common::PERCPU_STATS_MAX
    }

    /// Backend ids run 1..=this (as for services).
    pub fn backend_ids(&self) -> u32 {
        self.max_backends.max(MAX_BACKENDS)
    }
}

impl Default for PlanConfig {
    fn default() -> Self {
        Self {
            maglev_m: DEFAULT_MAGLEV_M,
            maglev_tables: DEFAULT_MAGLEV_TABLES,
            max_services: MAX_SERVICES,
            max_backends: MAX_BACKENDS,
            max_slots: lb_common::MAX_SLOTS,
            max_conntrack: lb_common::MAX_CT,
            ipv6: false,
        }
    }
}

/// Trims `desired` to what the maps can hold. Frontends that are programmed
/// already keep their place; a frontend that does not fit is left out whole
/// (never half-programmed) with a warning naming it, and the rest still apply.
pub fn fit(current: &Programmed, desired: &Desired, cfg: &PlanConfig) -> (Desired, Vec<String>) {
    let mut fitted = Desired {
        frontends: BTreeMap::new(),
        ..desired.clone()
    };
    let mut warnings = Vec::new();
    let mut backends: BTreeSet<BackendAddr> = BTreeSet::new();
    let mut slots = 0u64;
    let (old, new): (Vec<_>, Vec<_>) = desired
        .frontends
        .iter()
        .partition(|(k, _)| current.services.contains_key(k));
    for (key, frontend) in old.into_iter().chain(new) {
        let added: BTreeSet<BackendAddr> = frontend
            .backends
            .iter()
            .map(backend_addr)
            .filter(|a| !backends.contains(a))
            .collect();
        let full = if fitted.frontends.len() as u64 >= cfg.max_services as u64 {
            Some(format!(
                "the services map is full ({} frontends)",
                cfg.max_services
            ))
        } else if slots + frontend.backends.len() as u64 > cfg.max_slots as u64 {
            Some(format!(
                "the slots map is full ({} backend slots)",
                cfg.max_slots
            ))
        } else if (backends.len() + added.len()) as u64 > cfg.max_backends as u64 {
            Some(format!(
                "the backends map is full ({} backends)",
                cfg.max_backends
            ))
        } else {
            None
        };
        if let Some(reason) = full {
            warnings.push(format!(
                "Service {}: frontend {key} not programmed: {reason}",
                frontend.service,
            ));
            continue;
        }
        backends.extend(added);
        slots += frontend.backends.len() as u64;
        fitted.frontends.insert(*key, frontend.clone());
    }
    (fitted, warnings)
}

/// A plan: the ordered operations, the state once they are applied, and
/// notes about what could not be done as asked.
#[derive(Clone, Debug, Default)]
pub struct Plan {
    pub ops: Vec<Op>,
    pub next: Programmed,
    pub warnings: Vec<String>,
    /// Frontends left out because the maps are full.
    pub skipped: usize,
    /// Maglev frontends given hash for want of a free table: a later plan
    /// may find them one, so plans stay full while there are any.
    pub maglev_fallbacks: usize,
}

/// `plan_with` under the default configuration, without the warnings.
pub fn plan(current: &Programmed, desired: &Desired) -> Result<(Vec<Op>, Programmed), PlanError> {
    let p = plan_with(current, desired, &PlanConfig::default())?;
    Ok((p.ops, p.next))
}

/// A plan's operations by kind, put together in the order that keeps a
/// reader from seeing a half-written service (see the module comment).
#[derive(Default)]
pub(super) struct Ops {
    pub put_backends: Vec<Op>,
    pub put_maglev: Vec<Op>,
    pub put_slots: Vec<Op>,
    pub put_revnat: Vec<Op>,
    pub put_ranges: Vec<Op>,
    pub put_services: Vec<Op>,
    pub removals: Vec<Op>,
    pub del_backends: Vec<Op>,
    /// Maglev frontends given hash for want of a free table.
    pub maglev_fallbacks: usize,
}

impl Ops {
    pub fn into_ops(mut self) -> Vec<Op> {
        // Service entries go before their slots, source ranges and reverse NAT entries.
        self.removals
            .sort_by_key(|op| !matches!(op, Op::DelService(_)));
        let groups = [
            self.put_backends,
            self.put_maglev,
            self.put_slots,
            self.put_revnat,
            self.put_ranges,
            self.put_services,
            self.removals,
            self.del_backends,
        ];
        // One group at a time, each freed once moved: a full plan at 100k
        // services has 2.2 million operations, and holding every group
        // beside the result doubled its memory.
        let mut ops = Vec::with_capacity(groups.iter().map(Vec::len).sum());
        for group in groups {
            ops.extend(group);
        }
        ops
    }
}

/// The Maglev tables the services of `p` use.
pub(super) fn maglev_tables_used(p: &Programmed) -> BTreeSet<u32> {
    p.services
        .values()
        .map(|s| s.value.maglev_table)
        .filter(|t| *t != NO_MAGLEV_TABLE)
        .collect()
}

/// Plans one desired frontend `key` with service id `id` and the backends
/// `backend_ids` (`old`: what is programmed for it now): its slots, reverse
/// NAT entry, Maglev table and entry. Returns what will be programmed and
/// the source range entries it needs.
#[allow(clippy::too_many_arguments)]
pub(super) fn plan_frontend(
    key: &FrontendKey,
    frontend: &crate::translate::Frontend,
    old: Option<&ProgrammedService>,
    id: u32,
    backend_ids: Vec<u32>,
    desired: &Desired,
    tables_used: &mut BTreeSet<u32>,
    cfg: &PlanConfig,
    ops: &mut Ops,
    warnings: &mut Vec<String>,
) -> (ProgrammedService, Vec<SourceRangeEntry>) {
    let old_ids = old.map(|s| s.backend_ids.as_slice()).unwrap_or_default();
    for (i, bid) in backend_ids.iter().enumerate() {
        if old_ids.get(i) != Some(bid) {
            ops.put_slots.push(Op::PutSlot(
                SlotKey {
                    service_id: id,
                    slot: i as u32 + 1,
                },
                *bid,
            ));
        }
    }
    for slot in backend_ids.len() + 1..=old_ids.len() {
        ops.removals.push(Op::DelSlot(SlotKey {
            service_id: id,
            slot: slot as u32,
        }));
    }
    if old.is_none() {
        ops.put_revnat.push(Op::PutRevNat(
            id,
            Box::new(SocketAddr::new(key.addr, key.port)),
        ));
    }
    let mut algorithm = frontend.algorithm;
    let mut maglev_table = NO_MAGLEV_TABLE;
    if algorithm == ALG_MAGLEV && !backend_ids.is_empty() {
        let reusable = old.filter(|s| {
            s.value.algorithm == ALG_MAGLEV
                && s.value.maglev_table < cfg.maglev_tables
                && s.backend_ids == backend_ids
        });
        if let Some(s) = reusable {
            maglev_table = s.value.maglev_table;
        } else if let Some(t) = (0..cfg.maglev_tables).find(|t| !tables_used.contains(t)) {
            tables_used.insert(t);
            let table = crate::maglev::table(&frontend.backends, cfg.maglev_m);
            let entries = table.into_iter().map(|i| backend_ids[i as usize]).collect();
            ops.put_maglev.push(Op::PutMaglev(t, Arc::new(entries)));
            maglev_table = t;
        } else {
            warnings.push(format!(
                "Service {}: all {} Maglev tables are in use (--maglev-max-services); using hash for {key}",
                frontend.service,
                cfg.maglev_tables,
            ));
            algorithm = ALG_HASH;
            ops.maglev_fallbacks += 1;
        }
    }
    let internal = FrontendKey {
        scope: SCOPE_INTERNAL,
        ..*key
    };
    let has_internal = if key.scope == SCOPE_EXTERNAL && desired.frontends.contains_key(&internal) {
        SVC_FLAG_HAS_INTERNAL
    } else {
        0
    };
    let value = ServiceValue {
        id,
        count: backend_ids.len() as u32,
        affinity_timeout: frontend.affinity_timeout,
        maglev_table,
        flags: frontend.flags | has_internal,
        algorithm,
        _pad: 0,
    };
    let mut ranges = Vec::new();
    if frontend.flags & lb_common::SVC_FLAG_SOURCE_RANGES != 0 {
        for (addr, prefix) in &frontend.source_ranges {
            let max = if addr.is_ipv4() { 32 } else { 128 };
            let entry = (id, network(*addr, *prefix), (*prefix).min(max));
            if !ranges.contains(&entry) {
                ranges.push(entry);
            }
        }
    }
    if old.map(|s| s.value) != Some(value) {
        ops.put_services.push(Op::PutService(*key, Box::new(value)));
    }
    (ProgrammedService { value, backend_ids }, ranges)
}

/// Plans the removal of frontend `key` (programmed as `old`); its source
/// ranges are the caller's.
pub(super) fn remove_frontend(key: &FrontendKey, old: &ProgrammedService, ops: &mut Ops) {
    ops.removals.push(Op::DelService(*key));
    for slot in 1..=old.backend_ids.len() as u32 {
        ops.removals.push(Op::DelSlot(SlotKey {
            service_id: old.value.id,
            slot,
        }));
    }
    ops.removals.push(Op::DelRevNat(old.value.id));
}

/// Plans the operations that turn `current` into `desired`; returns them and
/// the state the maps hold once they are applied.
pub fn plan_with(
    current: &Programmed,
    desired: &Desired,
    cfg: &PlanConfig,
) -> Result<Plan, PlanError> {
    let (fitted, mut warnings) = fit(current, desired, cfg);
    let skipped = warnings.len();
    let desired = &fitted;
    let mut next = Programmed::default();
    let mut ops = Ops::default();
    // Tables in use now stay untouched until their service points elsewhere.
    let mut tables_used = maglev_tables_used(current);

    // Backends: keep ids by address, allocate new ones for new addresses.
    let existing = &current.index.backend_ids;
    let mut used: BTreeSet<u32> = current.backends.keys().copied().collect();
    let mut last = current
        .last_backend_id
        .max(used.last().copied().unwrap_or(0));
    let mut ids: HashMap<BackendAddr, u32> = HashMap::with_capacity(existing.len());
    for backend in desired.frontends.values().flat_map(|f| &f.backends) {
        let addr = backend_addr(backend);
        if ids.contains_key(&addr) {
            continue;
        }
        let id = match existing.get(&addr) {
            Some(id) => *id,
            None => {
                let id = allocate(&used, last, cfg.backend_ids(), "backend")?;
                used.insert(id);
                last = id;
                id
            }
        };
        ids.insert(addr, id);
        if current.backends.get(&id) != Some(backend) {
            ops.put_backends.push(Op::PutBackend(id, *backend));
        }
        next.backends.insert(id, *backend);
    }
    next.last_backend_id = last;

    // Services.
    let mut used: BTreeSet<u32> = current.services.values().map(|s| s.value.id).collect();
    let mut last = current
        .last_service_id
        .max(used.last().copied().unwrap_or(0));
    for (key, frontend) in &desired.frontends {
        let old = current.services.get(key);
        let id = match old {
            Some(s) => s.value.id,
            None => {
                let id = allocate(&used, last, cfg.service_ids(), "service")?;
                used.insert(id);
                last = id;
                id
            }
        };
        let backend_ids: Vec<u32> = frontend
            .backends
            .iter()
            .map(|b| ids[&backend_addr(b)])
            .collect();
        let (programmed, ranges) = plan_frontend(
            key,
            frontend,
            old,
            id,
            backend_ids,
            desired,
            &mut tables_used,
            cfg,
            &mut ops,
            &mut warnings,
        );
        for entry in ranges {
            if next.source_ranges.insert(entry) && !current.source_ranges.contains(&entry) {
                ops.put_ranges
                    .push(Op::PutSourceRange(entry.0, entry.1, entry.2));
            }
        }
        next.services.insert(*key, programmed);
    }
    for (key, old) in &current.services {
        if !desired.frontends.contains_key(key) {
            remove_frontend(key, old, &mut ops);
        }
    }
    next.last_service_id = last;
    next.reindex_with(ids);
    for &(id, addr, prefix) in current.source_ranges.difference(&next.source_ranges) {
        ops.removals.push(Op::DelSourceRange(id, addr, prefix));
    }
    for id in current.backends.keys() {
        if !next.backends.contains_key(id) {
            ops.del_backends.push(Op::DelBackend(*id));
        }
    }
    Ok(Plan {
        maglev_fallbacks: ops.maglev_fallbacks,
        ops: ops.into_ops(),
        next,
        warnings,
        skipped,
    })
}

/// Rebuilds `Programmed` from map contents (services, slots, backends).
pub fn restore(
    services: impl IntoIterator<Item = (FrontendKey, ServiceValue)>,
    slots: impl IntoIterator<Item = (SlotKey, u32)>,
    backends: impl IntoIterator<Item = (u32, Backend)>,
) -> Programmed {
    let slots: BTreeMap<SlotKey, u32> = slots.into_iter().collect();
    let services: BTreeMap<FrontendKey, ProgrammedService> = services
        .into_iter()
        .map(|(key, value)| {
            let backend_ids = (1..=value.count)
                .map_while(|slot| {
                    slots
                        .get(&SlotKey {
                            service_id: value.id,
                            slot,
                        })
                        .copied()
                })
                .collect();
            (key, ProgrammedService { value, backend_ids })
        })
        .collect();
    let backends: BTreeMap<u32, Backend> = backends.into_iter().collect();
    let mut p = Programmed {
        last_service_id: services.values().map(|s| s.value.id).max().unwrap_or(0),
        last_backend_id: backends.keys().copied().max().unwrap_or(0),
        services,
        backends,
        source_ranges: BTreeSet::new(),
        index: Index::default(),
    };
    p.reindex();
    p
}
