//! Planning only what changed: the operations for the frontends whose
//! desired state may differ (`changed`), in the same order and with the
//! same ids a full plan (sync.rs) would give them, without looking at the
//! rest. A full plan costs time in proportion to everything programmed
//! (~80 ms at 10k services x 10 endpoints); this one in proportion to the
//! change.
//!
//! It declines (None) where the result could depend on frontends outside
//! `changed`: when the maps would overflow, since then `fit` decides which
//! frontends stay out. The caller plans in full instead.
use std::collections::{BTreeMap, BTreeSet, HashMap};

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use lb_common::{SCOPE_EXTERNAL, SCOPE_INTERNAL};

use super::sync::{
    allocate_where, backend_addr, maglev_tables_used, plan_frontend, remove_frontend, BackendAddr,
    Op, Ops, PlanConfig, PlanError, Programmed, ProgrammedService, SourceRangeEntry,
};
use crate::{
    frontend::{Backend, FrontendKey},
    translate::Desired,
};

/// A plan of changes, and what it does to `Programmed` once applied.
#[derive(Debug, Default)]
pub struct Delta {
    pub ops: Vec<Op>,
    pub warnings: Vec<String>,
    /// As `Plan::maglev_fallbacks`.
    pub maglev_fallbacks: usize,
    /// Frontends written (Some) or removed (None).
    services: Vec<(FrontendKey, Option<ProgrammedService>)>,
    /// Backends written (Some) or removed (None).
    backends: Vec<(u32, Option<Backend>)>,
    ranges_added: Vec<SourceRangeEntry>,
    ranges_removed: Vec<SourceRangeEntry>,
    last_service_id: u32,
    last_backend_id: u32,
}

/// The keys to plan for a change of `changed`: an internal-scope entry
/// comes and goes with a flag on its external sibling, so that is planned too.
fn with_siblings(changed: &BTreeSet<FrontendKey>) -> BTreeSet<FrontendKey> {
    let mut keys = changed.clone();
    for k in changed {
        if k.scope == SCOPE_INTERNAL {
            keys.insert(FrontendKey {
                scope: SCOPE_EXTERNAL,
                ..*k
            });
        }
    }
    keys
}

/// The source range entries of service id `id` in `p`.
fn ranges_of(p: &Programmed, id: u32) -> Vec<SourceRangeEntry> {
    p.source_ranges
        .range(
            (id, IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0)
                ..=(id, IpAddr::V6(Ipv6Addr::from(u128::MAX)), u8::MAX),
        )
        .copied()
        .collect()
}

/// Plans the frontends `changed` from `current` to `desired` (every other
/// frontend of `desired` must be programmed as it is in `current`). None:
/// plan in full instead.
pub fn plan_delta(
    current: &Programmed,
    desired: &Desired,
    changed: &BTreeSet<FrontendKey>,
    cfg: &PlanConfig,
) -> Result<Option<Delta>, PlanError> {
    let keys = with_siblings(changed);
    // Capacity: if this change does not fit, `fit` must choose.
    let (mut services, mut slots) = (current.services.len() as i64, current.index.slots as i64);
    for k in &keys {
        if let Some(old) = current.services.get(k) {
            services -= 1;
            slots -= old.backend_ids.len() as i64;
        }
        if let Some(f) = desired.frontends.get(k) {
            services += 1;
            slots += f.backends.len() as i64;
        }
    }
    if services > i64::from(cfg.max_services) || slots > i64::from(cfg.max_slots) {
        return Ok(None);
    }

    let mut delta = Delta::default();
    let mut ops = Ops::default();
    let mut tables_used = if keys
        .iter()
        .filter_map(|k| desired.frontends.get(k))
        .any(|f| f.algorithm == lb_common::ALG_MAGLEV)
    {
        maglev_tables_used(current)
    } else {
        BTreeSet::new()
    };

    // Backends of the changed frontends, in the order a full plan meets them.
    let mut ids: HashMap<BackendAddr, u32> = HashMap::new();
    let mut added: BTreeSet<u32> = BTreeSet::new();
    let mut last_backend = current
        .last_backend_id
        .max(current.backends.keys().next_back().copied().unwrap_or(0));
    let mut refs: BTreeMap<u32, i64> = BTreeMap::new();
    for k in &keys {
        if let Some(old) = current.services.get(k) {
            for id in &old.backend_ids {
                *refs.entry(*id).or_default() -= 1;
            }
        }
        let Some(f) = desired.frontends.get(k) else {
            continue;
        };
        for b in &f.backends {
            let addr = backend_addr(b);
            let id = match ids.get(&addr) {
                Some(id) => *id,
                None => {
                    let id = match current.index.backend_ids.get(&addr) {
                        Some(id) => *id,
                        None => {
                            let id = allocate_where(
                                |id| current.backends.contains_key(&id) || added.contains(&id),
                                last_backend,
                                cfg.backend_ids(),
                                "backend",
                            )?;
                            added.insert(id);
                            last_backend = id;
                            id
                        }
                    };
                    ids.insert(addr, id);
                    if current.backends.get(&id) != Some(b) {
                        ops.put_backends.push(Op::PutBackend(id, *b));
                        delta.backends.push((id, Some(*b)));
                    }
                    id
                }
            };
            *refs.entry(id).or_default() += 1;
        }
    }
    let backends = current.backends.len() + added.len();
    let orphans: Vec<u32> = refs
        .iter()
        .filter(|(id, d)| {
            let now = i64::from(current.index.backend_refs.get(id).copied().unwrap_or(0));
            now + **d == 0 && !added.contains(id)
        })
        .map(|(id, _)| *id)
        .collect();
    if backends > cfg.max_backends as usize + orphans.len() {
        return Ok(None);
    }
    delta.last_backend_id = last_backend;

    // The frontends, in key order as a full plan goes.
    let mut last_service = current
        .last_service_id
        .max(current.index.service_ids.last().copied().unwrap_or(0));
    let mut new_ids: BTreeSet<u32> = BTreeSet::new();
    for k in &keys {
        let old = current.services.get(k);
        let old_ranges = old
            .map(|s| ranges_of(current, s.value.id))
            .unwrap_or_default();
        let Some(f) = desired.frontends.get(k) else {
            if let Some(old) = old {
                remove_frontend(k, old, &mut ops);
                delta.services.push((*k, None));
                delta.ranges_removed.extend(old_ranges);
            }
            continue;
        };
        let id = match old {
            Some(s) => s.value.id,
            None => {
                let id = allocate_where(
                    |id| current.index.service_ids.contains(&id) || new_ids.contains(&id),
                    last_service,
                    cfg.service_ids(),
                    "service",
                )?;
                new_ids.insert(id);
                last_service = id;
                id
            }
        };
        let backend_ids = f.backends.iter().map(|b| ids[&backend_addr(b)]).collect();
        let (programmed, ranges) = plan_frontend(
            k,
            f,
            old,
            id,
            backend_ids,
            desired,
            &mut tables_used,
            cfg,
            &mut ops,
            &mut delta.warnings,
        );
        for entry in &ranges {
            if !old_ranges.contains(entry) {
                ops.put_ranges
                    .push(Op::PutSourceRange(entry.0, entry.1, entry.2));
                delta.ranges_added.push(*entry);
            }
        }
        for entry in old_ranges {
            if !ranges.contains(&entry) {
                delta.ranges_removed.push(entry);
            }
        }
        delta.services.push((*k, Some(programmed)));
    }
    for &(id, addr, prefix) in &delta.ranges_removed {
        ops.removals.push(Op::DelSourceRange(id, addr, prefix));
    }
    for id in orphans {
        ops.del_backends.push(Op::DelBackend(id));
        delta.backends.push((id, None));
    }
    delta.last_service_id = last_service;
    delta.maglev_fallbacks = ops.maglev_fallbacks;
    delta.ops = ops.into_ops();
    Ok(Some(delta))
}

impl Programmed {
    /// What the maps hold once `delta`'s operations are all applied.
    pub fn apply_delta(&mut self, delta: Delta) {
        for (key, programmed) in delta.services {
            if let Some(old) = self.services.remove(&key) {
                self.index.service_ids.remove(&old.value.id);
                self.index.slots -= old.backend_ids.len() as u64;
                for id in &old.backend_ids {
                    if let Some(n) = self.index.backend_refs.get_mut(id) {
                        *n -= 1;
                        if *n == 0 {
                            self.index.backend_refs.remove(id);
                        }
                    }
                }
            }
            if let Some(p) = programmed {
                self.index.service_ids.insert(p.value.id);
                self.index.slots += p.backend_ids.len() as u64;
                for id in &p.backend_ids {
                    *self.index.backend_refs.entry(*id).or_default() += 1;
                }
                self.services.insert(key, p);
            }
        }
        for (id, backend) in delta.backends {
            if let Some(old) = self.backends.remove(&id) {
                self.index.backend_ids.remove(&backend_addr(&old));
            }
            if let Some(b) = backend {
                self.index.backend_ids.insert(backend_addr(&b), id);
                self.backends.insert(id, b);
            }
        }
        for entry in delta.ranges_removed {
            self.source_ranges.remove(&entry);
        }
        self.source_ranges.extend(delta.ranges_added);
        self.last_service_id = delta.last_service_id;
        self.last_backend_id = delta.last_backend_id;
    }
}
