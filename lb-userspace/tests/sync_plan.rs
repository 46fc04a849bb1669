//! `dataplane::sync::{plan, restore}` and the `weir service list` rows and
//! table built from the planned state. Maps are simulated with BTreeMaps.
mod common;
use std::collections::BTreeMap;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use lb_common::{
    ServiceValue, SlotKey, ALG_HASH, ALG_MAGLEV, ALG_RANDOM, BACKEND_ACTIVE, BACKEND_TERMINATING,
    NO_MAGLEV_TABLE, PROTO_TCP, PROTO_UDP, SCOPE_EXTERNAL, SCOPE_INTERNAL,
};
use weir::translate::{Backend, FrontendKey as ServiceKey};
use weir::{
    cli::{service_rows, service_table},
    dataplane::sync::{plan, plan_with, restore, Op, PlanConfig, Programmed},
    model::ObjectRef,
    translate::{Desired, Frontend},
};

// ---- builders ---------------------------------------------------------------

fn key(last: u8, port: u16) -> ServiceKey {
    key_proto(last, port, PROTO_TCP)
}

fn key_proto(last: u8, port: u16, proto: u8) -> ServiceKey {
    ServiceKey {
        addr: [198, 19, 0, last].into(),
        port,
        proto,
        scope: SCOPE_EXTERNAL,
    }
}

fn be(last: u8) -> Backend {
    Backend {
        addr: [198, 18, 1, last].into(),
        port: 8080,
        proto: PROTO_TCP,
        state: BACKEND_ACTIVE,
    }
}

fn frontend(algorithm: u8, backends: &[Backend]) -> Frontend {
    Frontend {
        service: ObjectRef::new("demo", "echo"),
        port_name: "http".into(),
        algorithm,
        backends: backends.to_vec(),
        ..Default::default()
    }
}

fn desired(entries: &[(ServiceKey, &[Backend])]) -> Desired {
    Desired {
        frontends: entries
            .iter()
            .map(|(k, b)| (*k, frontend(ALG_RANDOM, b).into()))
            .collect(),
        ..Default::default()
    }
}

fn slot(service_id: u32, slot: u32) -> SlotKey {
    SlotKey { service_id, slot }
}

fn value(id: u32, count: u32, algorithm: u8) -> ServiceValue {
    ServiceValue {
        id,
        count,
        flags: 0,
        algorithm,
        _pad: 0,
        affinity_timeout: 0,
        maglev_table: NO_MAGLEV_TABLE,
    }
}

fn revnat(k: ServiceKey) -> SocketAddr {
    SocketAddr::new(k.addr, k.port)
}

fn service_id(p: &Programmed, k: ServiceKey) -> u32 {
    p.services[&k].value.id
}

fn backend_id(p: &Programmed, b: Backend) -> u32 {
    *p.backends
        .iter()
        .find(|(_, v)| **v == b)
        .unwrap_or_else(|| panic!("{b:?} not programmed"))
        .0
}

/// Rank of an op kind in the required order.
fn rank(op: &Op) -> u8 {
    match op {
        Op::PutBackend(..) | Op::PutMaglev(..) => 0,
        Op::PutSlot(..) => 1,
        Op::PutRevNat(..) | Op::PutSourceRange(..) => 2,
        Op::PutService(..) => 3,
        Op::DelService(..) => 4,
        Op::DelSlot(..) | Op::DelRevNat(..) | Op::DelSourceRange(..) => 5,
        Op::DelBackend(..) => 6,
    }
}

// ---- simulated maps -----------------------------------------------------------

/// The four maps, as the kernel would hold them.
#[derive(Default, Debug, Clone)]
struct Maps {
    services: BTreeMap<ServiceKey, ServiceValue>,
    slots: BTreeMap<SlotKey, u32>,
    backends: BTreeMap<u32, Backend>,
    revnat: BTreeMap<u32, SocketAddr>,
    maglev: BTreeMap<u32, Vec<u32>>,
    source_ranges: std::collections::BTreeSet<(u32, IpAddr, u8)>,
}

impl Maps {
    /// Applies `ops` one by one, checking after each that a datapath reader
    /// sees only complete services.
    fn apply_all(&mut self, ops: &[Op]) {
        for (i, op) in ops.iter().enumerate() {
            self.apply(op);
            self.check_consistent()
                .unwrap_or_else(|e| panic!("after op {i} {op:?}: {e}\nops: {ops:#?}"));
        }
    }

    fn apply(&mut self, op: &Op) {
        // A plan made from the true map state never deletes what is not there.
        let existed = match *op {
            Op::PutMaglev(table, ref entries) => {
                let in_use = self.services.values().any(|v| v.maglev_table == table);
                assert!(!in_use, "{op:?} overwrites a table a service is using");
                self.maglev.insert(table, entries.to_vec());
                true
            }
            Op::PutBackend(id, b) => {
                self.backends.insert(id, b);
                true
            }
            Op::PutSlot(k, id) => {
                self.slots.insert(k, id);
                true
            }
            Op::PutRevNat(id, ref r) => {
                self.revnat.insert(id, **r);
                true
            }
            Op::PutService(k, ref v) => {
                self.services.insert(k, **v);
                true
            }
            Op::PutSourceRange(id, a, p) => {
                self.source_ranges.insert((id, a, p));
                true
            }
            Op::DelSourceRange(id, a, p) => self.source_ranges.remove(&(id, a, p)),
            Op::DelService(k) => self.services.remove(&k).is_some(),
            Op::DelSlot(k) => self.slots.remove(&k).is_some(),
            Op::DelRevNat(id) => self.revnat.remove(&id).is_some(),
            Op::DelBackend(id) => self.backends.remove(&id).is_some(),
        };
        assert!(existed, "{op:?} deletes a missing entry");
    }

    /// Every service entry has its reverse NAT entry and `count` slots, each
    /// naming an existing backend.
    fn check_consistent(&self) -> Result<(), String> {
        for (k, v) in &self.services {
            if v.flags & lb_common::SVC_FLAG_SOURCE_RANGES != 0
                && !self.source_ranges.iter().any(|r| r.0 == v.id)
            {
                return Err(format!(
                    "service {k:?} (id {}) checks source ranges it lacks",
                    v.id
                ));
            }
            if self.revnat.get(&v.id) != Some(&revnat(*k)) {
                return Err(format!("service {k:?} (id {}) has no reverse NAT", v.id));
            }
            for s in 1..=v.count {
                let Some(bid) = self.slots.get(&slot(v.id, s)) else {
                    return Err(format!("service {k:?} (id {}) lacks slot {s}", v.id));
                };
                if !self.backends.contains_key(bid) {
                    return Err(format!(
                        "slot {s} of service {} names missing backend {bid}",
                        v.id
                    ));
                }
            }
            if v.maglev_table != NO_MAGLEV_TABLE {
                let Some(table) = self.maglev.get(&v.maglev_table) else {
                    return Err(format!(
                        "service {} points at unwritten table {}",
                        v.id, v.maglev_table
                    ));
                };
                if let Some(bid) = table.iter().find(|b| !self.backends.contains_key(b)) {
                    return Err(format!(
                        "Maglev table of service {} names missing backend {bid}",
                        v.id
                    ));
                }
            }
        }
        Ok(())
    }

    fn restore(&self) -> Programmed {
        let mut p = restore(
            self.services.iter().map(|(k, v)| (*k, *v)),
            self.slots.iter().map(|(k, v)| (*k, *v)),
            self.backends.iter().map(|(k, v)| (*k, *v)),
        );
        p.source_ranges = self.source_ranges.clone();
        p
    }
}

/// Plans from `current`, applies the ops to `maps`, checks that the maps now
/// hold exactly what the returned `Programmed` says, and returns both.
fn step(maps: &mut Maps, current: &Programmed, want: &Desired) -> (Vec<Op>, Programmed) {
    let (ops, next) = plan(current, want).expect("plan");
    let ranks: Vec<u8> = ops.iter().map(rank).collect();
    assert!(
        ranks.windows(2).all(|w| w[0] <= w[1]),
        "ops out of order: {ops:#?}"
    );
    maps.apply_all(&ops);
    assert!(
        maps.restore().same_entries(&next),
        "maps differ from the planned state"
    );
    // No stray entries: every slot and reverse NAT entry belongs to a service.
    let ids: Vec<u32> = maps.services.values().map(|v| v.id).collect();
    assert!(maps.slots.keys().all(|k| ids.contains(&k.service_id)
        && k.slot
            <= maps
                .services
                .values()
                .find(|v| v.id == k.service_id)
                .unwrap()
                .count));
    assert!(maps.revnat.keys().all(|id| ids.contains(id)));
    // Every planned frontend matches the desired one.
    assert_eq!(
        next.services.keys().collect::<Vec<_>>(),
        want.frontends.keys().collect::<Vec<_>>()
    );
    for (k, f) in &want.frontends {
        let s = &next.services[k];
        let got: Vec<Backend> = s.backend_ids.iter().map(|id| next.backends[id]).collect();
        assert_eq!(got, f.backends);
        assert_eq!(s.value.count as usize, f.backends.len());
        assert_eq!(s.value.algorithm, f.algorithm);
    }
    (ops, next)
}

// ---- plan -------------------------------------------------------------------

#[test]
fn from_empty_puts_backends_slots_revnat_then_service() {
    let k = key(10, 80);
    let mut want = desired(&[(k, &[be(1), be(2)])]);
    Arc::make_mut(want.frontends.get_mut(&k).unwrap()).algorithm = ALG_HASH;
    let (ops, next) = plan(&Programmed::default(), &want).unwrap();
    assert_eq!(
        ops,
        vec![
            Op::PutBackend(1, be(1)),
            Op::PutBackend(2, be(2)),
            Op::PutSlot(slot(1, 1), 1),
            Op::PutSlot(slot(1, 2), 2),
            Op::PutRevNat(1, Box::new(SocketAddr::new([198, 19, 0, 10].into(), 80))),
            Op::PutService(k, Box::new(value(1, 2, ALG_HASH))),
        ]
    );
    assert_eq!(next.services[&k].backend_ids, vec![1, 2]);
    assert_eq!(next.services[&k].value, value(1, 2, ALG_HASH));
    assert_eq!(next.backends, BTreeMap::from([(1, be(1)), (2, be(2))]));
}

#[test]
fn from_empty_with_several_services_groups_ops_by_kind() {
    let (k1, k2) = (key(10, 80), key(11, 53));
    // be(2) is shared by both services: one backend entry, two slots.
    let want = desired(&[(k1, &[be(1), be(2)]), (k2, &[be(2), be(3)])]);
    let mut maps = Maps::default();
    let (ops, next) = step(&mut maps, &Programmed::default(), &want);
    assert_eq!(
        ops,
        vec![
            Op::PutBackend(1, be(1)),
            Op::PutBackend(2, be(2)),
            Op::PutBackend(3, be(3)),
            Op::PutSlot(slot(1, 1), 1),
            Op::PutSlot(slot(1, 2), 2),
            Op::PutSlot(slot(2, 1), 2),
            Op::PutSlot(slot(2, 2), 3),
            Op::PutRevNat(1, Box::new(revnat(k1))),
            Op::PutRevNat(2, Box::new(revnat(k2))),
            Op::PutService(k1, Box::new(value(1, 2, ALG_RANDOM))),
            Op::PutService(k2, Box::new(value(2, 2, ALG_RANDOM))),
        ]
    );
    assert_eq!(next.backends.len(), 3);
}

#[test]
fn a_frontend_without_backends_is_programmed_with_count_zero() {
    let k = key(10, 80);
    let (ops, next) = plan(&Programmed::default(), &desired(&[(k, &[])])).unwrap();
    assert_eq!(
        ops,
        vec![
            Op::PutRevNat(1, Box::new(revnat(k))),
            Op::PutService(k, Box::new(value(1, 0, ALG_RANDOM))),
        ]
    );
    assert!(next.services[&k].backend_ids.is_empty());
}

#[test]
fn replanning_the_same_state_is_a_no_op() {
    let want = desired(&[
        (key(10, 80), &[be(1), be(2)]),
        (key_proto(10, 53, PROTO_UDP), &[be(3)]),
        (key(11, 80), &[]),
    ]);
    let mut maps = Maps::default();
    let (_, first) = step(&mut maps, &Programmed::default(), &want);
    let (ops, second) = step(&mut maps, &first, &want);
    assert_eq!(ops, vec![]);
    assert_eq!(second, first);
}

#[test]
fn removing_a_backend_rewrites_slots_and_lowers_count_before_deleting() {
    let k = key(10, 80);
    let mut maps = Maps::default();
    let (_, first) = step(
        &mut maps,
        &Programmed::default(),
        &desired(&[(k, &[be(1), be(2), be(3)])]),
    );
    assert_eq!(first.services[&k].backend_ids, vec![1, 2, 3]);

    let (ops, next) = step(&mut maps, &first, &desired(&[(k, &[be(1), be(3)])]));
    assert_eq!(
        ops,
        vec![
            Op::PutSlot(slot(1, 2), 3),
            Op::PutService(k, Box::new(value(1, 2, ALG_RANDOM))),
            Op::DelSlot(slot(1, 3)),
            Op::DelBackend(2),
        ]
    );
    assert_eq!(next.services[&k].backend_ids, vec![1, 3]);
    assert_eq!(next.backends, BTreeMap::from([(1, be(1)), (3, be(3))]));
}

#[test]
fn a_backend_still_used_by_another_service_is_kept() {
    let (k1, k2) = (key(10, 80), key(11, 80));
    let mut maps = Maps::default();
    let (_, first) = step(
        &mut maps,
        &Programmed::default(),
        &desired(&[(k1, &[be(1), be(2)]), (k2, &[be(2)])]),
    );
    let (ops, _) = step(
        &mut maps,
        &first,
        &desired(&[(k1, &[be(1)]), (k2, &[be(2)])]),
    );
    assert_eq!(
        ops,
        vec![
            Op::PutService(k1, Box::new(value(1, 1, ALG_RANDOM))),
            Op::DelSlot(slot(1, 2)),
        ]
    );
}

#[test]
fn removing_a_service_deletes_the_entry_before_its_slots_and_revnat() {
    let (k1, k2) = (key(10, 80), key(11, 80));
    let mut maps = Maps::default();
    let (_, first) = step(
        &mut maps,
        &Programmed::default(),
        &desired(&[(k1, &[be(1)]), (k2, &[be(2), be(3)])]),
    );
    let id2 = service_id(&first, k2);
    let (ops, next) = step(&mut maps, &first, &desired(&[(k1, &[be(1)])]));
    assert_eq!(
        ops,
        vec![
            Op::DelService(k2),
            Op::DelSlot(slot(id2, 1)),
            Op::DelSlot(slot(id2, 2)),
            Op::DelRevNat(id2),
            Op::DelBackend(2),
            Op::DelBackend(3),
        ]
    );
    assert_eq!(next.services.len(), 1);
    assert_eq!(next.backends, BTreeMap::from([(1, be(1))]));
}

#[test]
fn removed_services_go_before_any_slot_deletion() {
    // One service shrinks, another disappears, in the same plan.
    let (k1, k2) = (key(10, 80), key(11, 80));
    let mut maps = Maps::default();
    let (_, first) = step(
        &mut maps,
        &Programmed::default(),
        &desired(&[(k1, &[be(1), be(2)]), (k2, &[be(3)])]),
    );
    let (ops, _) = step(&mut maps, &first, &desired(&[(k1, &[be(1)])]));
    assert_eq!(
        ops,
        vec![
            Op::PutService(k1, Box::new(value(1, 1, ALG_RANDOM))),
            Op::DelService(k2),
            Op::DelSlot(slot(1, 2)),
            Op::DelSlot(slot(2, 1)),
            Op::DelRevNat(2),
            Op::DelBackend(2),
            Op::DelBackend(3),
        ]
    );
}

#[test]
fn adding_a_backend_puts_the_slot_before_raising_the_count() {
    let k = key(10, 80);
    let mut maps = Maps::default();
    let (_, first) = step(
        &mut maps,
        &Programmed::default(),
        &desired(&[(k, &[be(1)])]),
    );
    let (ops, _) = step(&mut maps, &first, &desired(&[(k, &[be(1), be(2)])]));
    assert_eq!(
        ops,
        vec![
            Op::PutBackend(2, be(2)),
            Op::PutSlot(slot(1, 2), 2),
            Op::PutService(k, Box::new(value(1, 2, ALG_RANDOM))),
        ]
    );
}

#[test]
fn backend_state_and_algorithm_changes_update_in_place() {
    let k = key(10, 80);
    let mut maps = Maps::default();
    let (_, first) = step(
        &mut maps,
        &Programmed::default(),
        &desired(&[(k, &[be(1)])]),
    );
    let terminating = Backend {
        state: BACKEND_TERMINATING,
        ..be(1)
    };
    let mut want = desired(&[(k, &[terminating])]);
    Arc::make_mut(want.frontends.get_mut(&k).unwrap()).algorithm = ALG_HASH;
    let (ops, next) = step(&mut maps, &first, &want);
    assert_eq!(
        ops,
        vec![
            Op::PutBackend(1, terminating),
            Op::PutService(k, Box::new(value(1, 1, ALG_HASH))),
        ]
    );
    assert_eq!(next.backends[&1].state, BACKEND_TERMINATING);
}

#[test]
fn ids_of_surviving_services_and_backends_are_stable() {
    let (k1, k2, k3, k4) = (key(10, 80), key(11, 80), key(12, 80), key(13, 80));
    let mut maps = Maps::default();
    let (_, first) = step(
        &mut maps,
        &Programmed::default(),
        &desired(&[(k1, &[be(1), be(2)]), (k2, &[be(3)]), (k3, &[be(4)])]),
    );
    // k1 goes, k4 comes; backends 1 and 2 go, 5 comes; the rest reorders.
    let (_, second) = step(
        &mut maps,
        &first,
        &desired(&[(k2, &[be(5), be(3)]), (k3, &[be(4)]), (k4, &[be(3), be(4)])]),
    );
    for k in [k2, k3] {
        assert_eq!(service_id(&second, k), service_id(&first, k), "{k:?}");
    }
    for b in [be(3), be(4)] {
        assert_eq!(backend_id(&second, b), backend_id(&first, b), "{b:?}");
    }
    // New ids do not take the ids freed in the same plan.
    assert_eq!(service_id(&second, k4), 4);
    assert_eq!(backend_id(&second, be(5)), 5);
    assert_eq!(second.services[&k4].backend_ids, vec![3, 4]);
}

#[test]
fn a_backend_id_freed_in_the_same_plan_is_not_reused() {
    let k = key(10, 80);
    let mut maps = Maps::default();
    let (_, first) = step(
        &mut maps,
        &Programmed::default(),
        &desired(&[(k, &[be(1), be(2), be(3)])]),
    );
    // be(3) leaves and be(4) arrives together: be(4) must not get id 3.
    let (ops, next) = step(&mut maps, &first, &desired(&[(k, &[be(1), be(2), be(4)])]));
    assert_eq!(backend_id(&next, be(4)), 4);
    assert_eq!(
        ops,
        vec![
            Op::PutBackend(4, be(4)),
            Op::PutSlot(slot(1, 3), 4),
            Op::DelBackend(3),
        ]
    );
}

#[test]
fn a_lower_freed_backend_id_is_not_reused_by_the_next_plan() {
    let k = key(10, 80);
    let mut maps = Maps::default();
    let (_, first) = step(
        &mut maps,
        &Programmed::default(),
        &desired(&[(k, &[be(1), be(2), be(3)])]),
    );
    let (_, second) = step(&mut maps, &first, &desired(&[(k, &[be(1), be(3)])]));
    let (_, third) = step(&mut maps, &second, &desired(&[(k, &[be(1), be(3), be(4)])]));
    assert_eq!(backend_id(&third, be(4)), 4);
}

/// Backend 3 (the highest id) is deleted by one plan; the next plan must not
/// hand id 3 to a new backend, since conntrack entries may still name it.
/// `plan` starts allocating after the highest id *still in use*, so the id is
/// reused at once. See the report.
#[test]
fn the_just_freed_highest_backend_id_is_not_reused_by_the_next_plan() {
    let k = key(10, 80);
    let mut maps = Maps::default();
    let (_, first) = step(
        &mut maps,
        &Programmed::default(),
        &desired(&[(k, &[be(1), be(2), be(3)])]),
    );
    let (_, second) = step(&mut maps, &first, &desired(&[(k, &[be(1), be(2)])]));
    let (_, third) = step(&mut maps, &second, &desired(&[(k, &[be(1), be(2), be(4)])]));
    assert_ne!(backend_id(&third, be(4)), 3, "freed id 3 reused at once");
}

/// Same for service ids (conntrack entries and reverse NAT name them too).
#[test]
fn the_just_freed_highest_service_id_is_not_reused_by_the_next_plan() {
    let (k1, k2, k3) = (key(10, 80), key(11, 80), key(12, 80));
    let mut maps = Maps::default();
    let (_, first) = step(
        &mut maps,
        &Programmed::default(),
        &desired(&[(k1, &[be(1)]), (k2, &[be(1)])]),
    );
    let (_, second) = step(&mut maps, &first, &desired(&[(k1, &[be(1)])]));
    let (_, third) = step(
        &mut maps,
        &second,
        &desired(&[(k1, &[be(1)]), (k3, &[be(1)])]),
    );
    assert_ne!(service_id(&third, k3), service_id(&first, k2));
}

// ---- restore ----------------------------------------------------------------

#[test]
fn restore_rebuilds_the_planned_state() {
    let (k1, k2) = (key(10, 80), key_proto(10, 53, PROTO_UDP));
    let udp = Backend {
        proto: PROTO_UDP,
        port: 5353,
        ..be(7)
    };
    let mut want = desired(&[
        (k1, &[be(1), be(2), be(3)]),
        (k2, &[udp]),
        (key(12, 80), &[]),
    ]);
    Arc::make_mut(want.frontends.get_mut(&k1).unwrap()).algorithm = ALG_HASH;
    let mut maps = Maps::default();
    let (_, first) = step(&mut maps, &Programmed::default(), &want);
    assert!(maps.restore().same_entries(&first));

    // After a few changes, too, and a plan from the restored state is a no-op.
    let want = desired(&[(k1, &[be(3), be(1)]), (key(13, 80), &[be(4)])]);
    let (_, second) = step(&mut maps, &first, &want);
    let restored = maps.restore();
    assert!(restored.same_entries(&second));
    assert_eq!(plan(&restored, &want).unwrap().0, vec![]);
}

#[test]
fn restore_stops_at_a_missing_slot() {
    let k = key(10, 80);
    let p = restore(
        [(k, value(1, 3, ALG_RANDOM))],
        [(slot(1, 1), 1), (slot(1, 3), 3)],
        [(1, be(1)), (3, be(3))],
    );
    assert_eq!(p.services[&k].backend_ids, vec![1]);
    assert_eq!(p.services[&k].value.count, 3);
}

// ---- weir service list ------------------------------------------------------

fn listed() -> Programmed {
    let internal = ServiceKey {
        scope: SCOPE_INTERNAL,
        ..key(10, 80)
    };
    let terminating = Backend {
        state: BACKEND_TERMINATING,
        ..be(2)
    };
    let mut want = desired(&[
        (key(10, 80), &[be(1), terminating]),
        (key_proto(10, 53, PROTO_UDP), &[]),
        (internal, &[be(1)]),
    ]);
    Arc::make_mut(want.frontends.get_mut(&internal).unwrap()).algorithm = ALG_HASH;
    plan(&Programmed::default(), &want).unwrap().1
}

#[test]
fn service_rows_json() {
    let p = listed();
    let rows = service_rows(&p);
    assert_eq!(rows.len(), 3);
    assert_eq!(
        rows.iter().map(|r| r.id).collect::<Vec<_>>(),
        vec![1, 2, 3],
        "ordered by id"
    );
    let id = service_id(&p, key(10, 80));
    let json = serde_json::to_value(&rows).unwrap();
    let row = json
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == id)
        .unwrap();
    assert_eq!(
        *row,
        serde_json::json!({
            "id": id,
            "frontend": "198.19.0.10:80/TCP",
            "address": "198.19.0.10",
            "port": 80,
            "protocol": "TCP",
            "scope": "external",
            "algorithm": "random",
            "affinity_timeout": 0,
            "backends": [
                {"id": 1, "address": "198.18.1.1", "port": 8080, "protocol": "TCP", "state": "active"},
                {"id": 2, "address": "198.18.1.2", "port": 8080, "protocol": "TCP", "state": "terminating"},
            ],
        })
    );
    let udp = rows
        .iter()
        .find(|r| r.frontend == "198.19.0.10:53/UDP")
        .unwrap();
    assert_eq!(udp.protocol, "UDP");
    assert!(udp.backends.is_empty());
    let internal = rows.iter().find(|r| r.scope == "internal").unwrap();
    assert_eq!(internal.frontend, "198.19.0.10:80/TCP");
    assert_eq!(internal.algorithm, "hash");
}

#[test]
fn service_rows_mark_a_missing_backend() {
    let k = key(10, 80);
    let p = restore([(k, value(1, 1, ALG_RANDOM))], [(slot(1, 1), 9)], []);
    let rows = service_rows(&p);
    assert_eq!(rows[0].backends.len(), 1);
    assert_eq!(rows[0].backends[0].id, 9);
    assert_eq!(rows[0].backends[0].state, "missing");
}

#[test]
fn service_table_text() {
    let p = listed();
    let id = service_id(&p, key(10, 80));
    let table = service_table(&service_rows(&p));
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(
        lines.len(),
        1 + 4,
        "header, 3 rows, 1 extra backend line:\n{table}"
    );
    let header: Vec<&str> = lines[0].split_whitespace().collect();
    assert_eq!(header, ["ID", "FRONTEND", "SCOPE", "ALG", "BACKENDS"]);

    // The frontend's first line carries its first backend; the next line the second.
    let at = lines
        .iter()
        .position(|l| {
            l.split_whitespace().next() == Some(&id.to_string()) && l.contains("external")
        })
        .unwrap_or_else(|| panic!("no row for service {id}:\n{table}"));
    let first: Vec<&str> = lines[at].split_whitespace().collect();
    assert_eq!(
        first,
        [
            &id.to_string(),
            "198.19.0.10:80/TCP",
            "external",
            "random",
            "1",
            "198.18.1.1:8080/TCP",
            "(active)"
        ]
    );
    let second: Vec<&str> = lines[at + 1].split_whitespace().collect();
    assert_eq!(second, ["2", "198.18.1.2:8080/TCP", "(terminating)"]);
    assert!(lines[at + 1].starts_with(' '), "{table}");

    assert!(table.contains("198.19.0.10:53/UDP"), "{table}");
    assert!(table.contains("(none: rejected)"), "{table}");
}

// ---- Maglev tables ------------------------------------------------------------

fn maglev_desired(entries: &[(ServiceKey, &[Backend])]) -> Desired {
    let mut d = desired(entries);
    for f in d.frontends.values_mut() {
        let f = Arc::make_mut(f);
        f.algorithm = ALG_MAGLEV;
    }
    d
}

const SMALL: PlanConfig = PlanConfig {
    maglev_m: 13,
    maglev_tables: 2,
    max_services: lb_common::MAX_SERVICES,
    max_backends: lb_common::MAX_BACKENDS,
    max_slots: lb_common::MAX_SLOTS,
    max_conntrack: lb_common::MAX_CT,
    ipv6: false,
};

/// Plans with SMALL, applies to the simulated maps (checking consistency after every op).
fn step_with(
    maps: &mut Maps,
    current: &Programmed,
    want: &Desired,
) -> (Vec<Op>, Programmed, Vec<String>) {
    let p = plan_with(current, want, &SMALL).expect("plan");
    maps.apply_all(&p.ops);
    (p.ops, p.next, p.warnings)
}

#[test]
fn a_maglev_table_is_written_before_the_service_points_at_it() {
    let k = key(10, 80);
    let mut maps = Maps::default();
    let (ops, next, warnings) = step_with(
        &mut maps,
        &Programmed::default(),
        &maglev_desired(&[(k, &[be(1), be(2)])]),
    );
    assert!(warnings.is_empty(), "{warnings:?}");
    let table_at = ops
        .iter()
        .position(|o| matches!(o, Op::PutMaglev(..)))
        .expect("a table is written");
    let service_at = ops
        .iter()
        .position(|o| matches!(o, Op::PutService(..)))
        .expect("a service is written");
    assert!(table_at < service_at);
    let value = next.services[&k].value;
    assert_eq!((value.algorithm, value.maglev_table), (ALG_MAGLEV, 0));
    // Every one of the 13 entries names one of the service's two backends, and both appear.
    let table = &maps.maglev[&0];
    assert_eq!(table.len(), 13);
    let ids = &next.services[&k].backend_ids;
    assert!(table.iter().all(|b| ids.contains(b)));
    assert!(ids.iter().all(|b| table.contains(b)));
}

#[test]
fn changing_maglev_backends_switches_to_a_fresh_table_and_frees_the_old_one() {
    let k = key(10, 80);
    let mut maps = Maps::default();
    let (_, first, _) = step_with(
        &mut maps,
        &Programmed::default(),
        &maglev_desired(&[(k, &[be(1), be(2)])]),
    );
    // Unchanged: no table written again.
    let (ops, same, _) = step_with(&mut maps, &first, &maglev_desired(&[(k, &[be(1), be(2)])]));
    assert!(ops.is_empty(), "{ops:?}");
    // A backend added: the new table goes to the free index 1 (0 is in use until the switch).
    let (_, second, _) = step_with(
        &mut maps,
        &same,
        &maglev_desired(&[(k, &[be(1), be(2), be(3)])]),
    );
    assert_eq!(second.services[&k].value.maglev_table, 1);
    // And the next change can use index 0 again.
    let (_, third, _) = step_with(&mut maps, &second, &maglev_desired(&[(k, &[be(1)])]));
    assert_eq!(third.services[&k].value.maglev_table, 0);
    assert!(maps.maglev[&0]
        .iter()
        .all(|b| *b == third.services[&k].backend_ids[0]));
}

#[test]
fn without_a_free_maglev_table_a_service_falls_back_to_hash_with_a_warning() {
    let keys = [key(10, 80), key(11, 80), key(12, 80)];
    let mut maps = Maps::default();
    let want = maglev_desired(&[
        (keys[0], &[be(1)]),
        (keys[1], &[be(2)]),
        (keys[2], &[be(3)]),
    ]);
    let (_, next, warnings) = step_with(&mut maps, &Programmed::default(), &want);
    let algorithms: Vec<u8> = keys
        .iter()
        .map(|k| next.services[k].value.algorithm)
        .collect();
    assert_eq!(algorithms, [ALG_MAGLEV, ALG_MAGLEV, ALG_HASH]);
    assert_eq!(next.services[&keys[2]].value.maglev_table, NO_MAGLEV_TABLE);
    assert_eq!(warnings.len(), 1);
    assert!(
        warnings[0].contains("demo/echo") && warnings[0].contains("Maglev"),
        "{}",
        warnings[0]
    );
}

#[test]
fn a_maglev_service_without_backends_gets_no_table() {
    let k = key(10, 80);
    let mut maps = Maps::default();
    let (ops, next, _) = step_with(
        &mut maps,
        &Programmed::default(),
        &maglev_desired(&[(k, &[])]),
    );
    assert!(!ops.iter().any(|o| matches!(o, Op::PutMaglev(..))));
    assert_eq!(next.services[&k].value.maglev_table, NO_MAGLEV_TABLE);
}

// ---- capacity -------------------------------------------------------------------

#[test]
fn frontends_beyond_capacity_are_left_out_whole_and_named() {
    let small = PlanConfig {
        max_services: 2,
        max_backends: 3,
        max_slots: 4,
        ..PlanConfig::default()
    };
    let want = desired(&[
        (key(10, 80), &[be(1), be(2)]),
        (key(11, 80), &[be(3)]),
        (key(12, 80), &[be(4)]),
    ]);
    let p = plan_with(&Programmed::default(), &want, &small).expect("plan");
    let mut keys: Vec<ServiceKey> = p.next.services.keys().copied().collect();
    keys.sort();
    assert_eq!(keys, vec![key(10, 80), key(11, 80)]);
    assert_eq!(p.warnings.len(), 1, "{:?}", p.warnings);
    assert!(
        p.warnings[0].contains("198.19.0.12:80") && p.warnings[0].contains("services map is full"),
        "{}",
        p.warnings[0]
    );
    // Nothing of the left-out frontend was written: no backend 4.
    assert!(!p.next.backends.values().any(|b| *b == be(4)));
}

#[test]
fn programmed_frontends_keep_their_place_when_the_maps_are_full() {
    let small = PlanConfig {
        max_services: 1,
        ..PlanConfig::default()
    };
    let first = plan_with(
        &Programmed::default(),
        &desired(&[(key(12, 80), &[be(1)])]),
        &small,
    )
    .expect("plan");
    // A new frontend that sorts first does not evict the programmed one.
    let both = desired(&[(key(10, 80), &[be(2)]), (key(12, 80), &[be(1)])]);
    let second = plan_with(&first.next, &both, &small).expect("plan");
    assert!(second.ops.is_empty(), "{:?}", second.ops);
    assert!(
        second.warnings[0].contains("198.19.0.10:80"),
        "{:?}",
        second.warnings
    );
}

#[test]
fn backend_and_slot_limits_are_enforced_too() {
    let by_backends = PlanConfig {
        max_backends: 2,
        ..PlanConfig::default()
    };
    let want = desired(&[
        (key(10, 80), &[be(1), be(2)]),
        (key(11, 80), &[be(2), be(3)]),
        (key(12, 80), &[be(1)]),
    ]);
    let p = plan_with(&Programmed::default(), &want, &by_backends).expect("plan");
    assert!(
        p.next.services.contains_key(&key(10, 80)) && p.next.services.contains_key(&key(12, 80))
    );
    assert!(!p.next.services.contains_key(&key(11, 80)));
    assert!(
        p.warnings[0].contains("backends map is full"),
        "{:?}",
        p.warnings
    );

    let by_slots = PlanConfig {
        max_slots: 2,
        ..PlanConfig::default()
    };
    let p = plan_with(&Programmed::default(), &want, &by_slots).expect("plan");
    assert_eq!(p.next.services.len(), 1);
    assert!(
        p.warnings.iter().all(|w| w.contains("slots map is full")),
        "{:?}",
        p.warnings
    );
}

/// `n` frontends 198.19.x.y:80, each with its own backend 198.18.x.y:8080.
fn many(n: u32) -> Desired {
    let addr = |base: [u8; 4], i: u32| (u32::from_be_bytes(base) + i).to_be_bytes();
    Desired {
        frontends: (0..n)
            .map(|i| {
                let k = ServiceKey {
                    addr: addr([198, 19, 0, 0], i).into(),
                    port: 80,
                    proto: PROTO_TCP,
                    scope: SCOPE_EXTERNAL,
                };
                let b = Backend {
                    addr: addr([198, 18, 0, 0], i).into(),
                    ..be(0)
                };
                (k, frontend(ALG_RANDOM, &[b]).into())
            })
            .collect(),
        ..Default::default()
    }
}

#[test]
fn capacities_above_65536_get_ids_above_65535() {
    let n = 70_000;
    let want = many(n);
    // The default capacity (65,536) leaves the rest out, reported.
    let p = plan_with(&Programmed::default(), &want, &PlanConfig::default()).expect("plan");
    assert_eq!(p.next.services.len(), 65_536);
    assert_eq!(p.skipped, (n - 65_536) as usize);
    // A larger one programs all of them, with distinct ids past 65,535.
    let big = PlanConfig {
        max_services: 100_000,
        max_backends: 100_000,
        ..PlanConfig::default()
    };
    assert_eq!(big.service_ids(), 100_000);
    let p = plan_with(&Programmed::default(), &want, &big).expect("plan");
    assert_eq!((p.next.services.len(), p.skipped), (n as usize, 0));
    let ids: std::collections::BTreeSet<u32> =
        p.next.services.values().map(|s| s.value.id).collect();
    assert_eq!(ids.len(), n as usize);
    assert_eq!(ids.last(), Some(&n));
    assert_eq!(p.next.backends.keys().last(), Some(&n));
    // Every slot names the backend id of its own service's backend.
    for (k, s) in &p.next.services {
        let b = p.next.backends[&s.backend_ids[0]];
        let offset = |a: IpAddr, base: [u8; 4]| match a {
            IpAddr::V4(a) => u32::from(a) - u32::from_be_bytes(base),
            IpAddr::V6(_) => unreachable!("IPv4 only"),
        };
        assert_eq!(
            offset(b.addr, [198, 18, 0, 0]),
            offset(k.addr, [198, 19, 0, 0])
        );
    }
}

/// A frontend that admits only `ranges`.
fn guarded(ranges: &[(std::net::Ipv4Addr, u8)]) -> Frontend {
    Frontend {
        flags: lb_common::SVC_FLAG_EXTERNAL | lb_common::SVC_FLAG_SOURCE_RANGES,
        source_ranges: ranges.iter().map(|(a, p)| ((*a).into(), *p)).collect(),
        ..frontend(ALG_RANDOM, &[be(1)])
    }
}

#[test]
fn source_ranges_are_written_before_the_service_and_removed_after_it() {
    use std::net::Ipv4Addr;
    let k = key(20, 80);
    let mut maps = Maps::default();
    let mut want = Desired::default();
    // Host bits are cleared: 198.18.7.9/16 is the network 198.18.0.0/16.
    want.frontends.insert(
        k,
        Arc::new(guarded(&[
            (Ipv4Addr::new(198, 18, 7, 9), 16),
            (Ipv4Addr::new(198, 19, 5, 5), 32),
        ])),
    );
    let (ops, first) = step(&mut maps, &Programmed::default(), &want);
    let id = service_id(&first, k);
    let ranges: Vec<&Op> = ops
        .iter()
        .filter(|o| matches!(o, Op::PutSourceRange(..)))
        .collect();
    assert_eq!(
        ranges,
        vec![
            &Op::PutSourceRange(id, [198, 18, 0, 0].into(), 16),
            &Op::PutSourceRange(id, [198, 19, 5, 5].into(), 32)
        ]
    );
    let flags = maps.services[&k].flags;
    assert_eq!(
        flags,
        lb_common::SVC_FLAG_EXTERNAL | lb_common::SVC_FLAG_SOURCE_RANGES
    );

    // One range replaced: the new one is put, the old one deleted, nothing else.
    want.frontends
        .insert(k, guarded(&[(Ipv4Addr::new(198, 18, 0, 0), 16)]).into());
    let (ops, second) = step(&mut maps, &first, &want);
    assert_eq!(
        ops,
        vec![Op::DelSourceRange(id, [198, 19, 5, 5].into(), 32)]
    );

    // The service goes: its entry first, then its range.
    let (ops, _) = step(&mut maps, &second, &Desired::default());
    let del_service = ops.iter().position(|o| matches!(o, Op::DelService(_)));
    let del_range = ops.iter().position(|o| matches!(o, Op::DelSourceRange(..)));
    assert!(
        del_service < del_range && del_range.is_some(),
        "order: {ops:#?}"
    );
    assert!(maps.source_ranges.is_empty());
}

/// An external entry says when pods have an internal view of the same
/// frontend (SVC_FLAG_HAS_INTERNAL), so that the kernel looks the internal
/// scope up only then; the flag follows the internal entry in and out.
#[test]
fn an_external_entry_is_flagged_while_an_internal_entry_exists() {
    let ext = key(30, 80);
    let int = ServiceKey {
        scope: SCOPE_INTERNAL,
        ..ext
    };
    let other = key(31, 80);
    let flags = |p: &Programmed, k: ServiceKey| p.services[&k].value.flags;
    let both = desired(&[(ext, &[be(1)]), (int, &[be(2)]), (other, &[be(1)])]);
    let (_, p) = plan(&Programmed::default(), &both).expect("plan");
    assert_eq!(flags(&p, ext), lb_common::SVC_FLAG_HAS_INTERNAL);
    assert_eq!(
        flags(&p, int),
        0,
        "the internal entry itself is not flagged"
    );
    assert_eq!(flags(&p, other), 0);
    let external_only = desired(&[(ext, &[be(1)]), (other, &[be(1)])]);
    let (ops, p) = plan(&p, &external_only).expect("plan");
    assert_eq!(flags(&p, ext), 0);
    assert!(ops.contains(&Op::PutService(ext, Box::new(p.services[&ext].value))));
}

// ---- plans of changes ---------------------------------------------------------

use common::Rng;

/// A random frontend over a small universe, so that backends are shared,
/// keys come and go and Maglev tables run out.
fn random_frontend(r: &mut Rng, state_of: &dyn Fn(u8) -> u8) -> Frontend {
    let algorithm = [ALG_RANDOM, ALG_HASH, ALG_MAGLEV][r.below(3) as usize];
    let backends: Vec<Backend> = (0..r.below(5))
        .map(|_| {
            let last = 1 + r.below(12) as u8;
            Backend {
                state: state_of(last),
                ..be(last)
            }
        })
        .collect();
    let mut f = frontend(algorithm, &backends);
    if r.below(4) == 0 {
        f.flags |= lb_common::SVC_FLAG_SOURCE_RANGES;
        f.source_ranges = (0..1 + r.below(2))
            .map(|i| {
                (
                    std::net::Ipv4Addr::new(198, 18, r.below(3) as u8, 0).into(),
                    16 + i as u8 * 8,
                )
            })
            .collect();
    }
    f
}

/// The keys whose frontends differ between `a` and `b`.
fn changed_keys(a: &Desired, b: &Desired) -> std::collections::BTreeSet<ServiceKey> {
    a.frontends
        .keys()
        .chain(b.frontends.keys())
        .filter(|k| a.frontends.get(k) != b.frontends.get(k))
        .copied()
        .collect()
}

/// A plan of only the changed frontends gives exactly what a full plan
/// gives (entries, ids, allocation cursors, indices), over 2,000 random
/// steps of adds, removals, backend and state changes, source ranges,
/// internal-scope entries and Maglev tables running out; its operations
/// keep every service whole at every point, as the full plan's do.
#[test]
fn a_plan_of_changes_programs_what_a_full_plan_does() {
    use weir::dataplane::sync_delta::plan_delta;
    let cfg = PlanConfig {
        maglev_m: 251,
        maglev_tables: 6,
        ..PlanConfig::default()
    };
    let mut r = Rng(0x5eed_de17a);
    let mut want = Desired::default();
    let mut maps = Maps::default();
    let mut full = Programmed::default();
    let mut incremental = Programmed::default();
    let mut full_due = true;
    let mut planned_in_part = 0;
    for step in 0..2_000u32 {
        // A backend's state is a function of its address at each step, as
        // one endpoint's conditions are, whichever services it is in.
        let flip = r.below(12) as u8 + 1;
        let state_of = move |last: u8| {
            if last == flip && step % 2 == 1 {
                BACKEND_TERMINATING
            } else {
                BACKEND_ACTIVE
            }
        };
        let before = want.clone();
        for f in want.frontends.values_mut() {
            let f = Arc::make_mut(f);
            for b in &mut f.backends {
                b.state = state_of(match b.addr {
                    IpAddr::V4(a) => a.octets()[3],
                    IpAddr::V6(a) => a.octets()[15],
                });
            }
        }
        for _ in 0..1 + r.below(3) {
            let mut k = key(1 + r.below(10) as u8, 80 + r.below(2) as u16);
            if r.below(4) == 0 {
                k.scope = SCOPE_INTERNAL;
            }
            if r.below(3) == 0 {
                want.frontends.remove(&k);
            } else {
                want.frontends
                    .insert(k, random_frontend(&mut r, &state_of).into());
            }
        }
        let changed = changed_keys(&before, &want);
        let plan = plan_with(&full, &want, &cfg).expect("full plan");
        if full_due {
            maps.apply_all(&plan.ops);
            incremental = plan.next.clone();
        } else {
            let delta = plan_delta(&incremental, &want, &changed, &cfg)
                .expect("plan of changes")
                .expect("the change fits");
            full_due = delta.maglev_fallbacks > 0;
            maps.apply_all(&delta.ops);
            incremental.apply_delta(delta);
            planned_in_part += 1;
        }
        if full_due {
            full_due = plan.maglev_fallbacks > 0;
        }
        full = plan.next;
        assert_eq!(incremental, full, "step {step}: changed {changed:?}");
        assert!(
            maps.restore().same_entries(&incremental),
            "step {step}: the maps differ from the planned state"
        );
    }
    assert!(
        planned_in_part > 500,
        "only {planned_in_part} steps planned in part"
    );
}
