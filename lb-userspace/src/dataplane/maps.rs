//! Typed handles on the datapath maps, either from a loaded object or from
//! the pins (for the CLI). Applying a planned operation happens here.
use std::path::Path;

use aya::maps::{
    lpm_trie::{Key, LpmTrie},
    Array, HashMap, Map, MapData, MapError, PerCpuArray,
};
use lb_common::{
    filter::MAP_FILTER,
    sock::{
        SockRevKey, SockRevKey6, SockRevValue, SockRevValue6, MAP_SOCK_REVNAT, MAP_SOCK_REVNAT6,
        MAP_SOCK_STATS,
    },
    AffinityKey, AffinityKey6, AffinityValue, Backend, Backend6, CtKey, CtKey6, CtValue, CtValue6,
    RevNat, RevNat6, ServiceKey, ServiceKey6, ServiceStats, ServiceValue, SlotKey, SourceRange,
    SourceRange6, MAP_AFFINITY, MAP_AFFINITY6, MAP_BACKENDS, MAP_BACKENDS6, MAP_CT, MAP_CT6,
    MAP_DROPS, MAP_MAGLEV, MAP_NODE_ADDRS, MAP_NODE_ADDRS6, MAP_PASSED, MAP_REVNAT, MAP_REVNAT6,
    MAP_SERVICES, MAP_SERVICES6, MAP_SLOTS, MAP_SOURCE_RANGES, MAP_SOURCE_RANGES6, MAP_STATS,
    MAP_STATS_SHARED,
};

use std::net::IpAddr;

use super::sync::{restore, Op, Programmed};
use crate::frontend::{Backend as AnyBackend, FrontendKey};

#[derive(Debug, thiserror::Error)]
pub enum MapsError {
    #[error("map {name}: not in the loaded object")]
    Missing { name: &'static str },
    #[error("map {name}: {source}")]
    Map {
        name: &'static str,
        source: MapError,
    },
    /// A planned write failed.
    #[error("map {}: {}: {}", .0.name, .0.what, .0.source)]
    Write(Box<WriteFailure>),
}

/// A failed map write, naming the entry.
#[derive(Debug)]
pub struct WriteFailure {
    pub name: &'static str,
    /// E.g. "writing frontend 198.19.0.10:80/TCP".
    pub what: String,
    /// The frontend written, when the entry is one (to name its Service).
    pub frontend: Option<FrontendKey>,
    pub source: MapError,
}

/// What an operation writes, for error messages.
fn describe(op: &Op) -> (String, Option<FrontendKey>) {
    let frontend = |k: &FrontendKey| format!("frontend {k}");
    match op {
        Op::PutMaglev(t, _) => (format!("writing Maglev table {t}"), None),
        Op::PutBackend(id, b) => (
            format!(
                "writing backend {id} ({})",
                std::net::SocketAddr::new(b.addr, b.port)
            ),
            None,
        ),
        Op::PutSlot(k, _) => (
            format!("writing slot {} of service id {}", k.slot, k.service_id),
            None,
        ),
        Op::PutRevNat(id, _) => (format!("writing reverse NAT of service id {id}"), None),
        Op::PutService(k, _) => (format!("writing {}", frontend(k)), Some(*k)),
        Op::PutSourceRange(id, a, p) => (
            format!("writing source range {a}/{p} of service id {id}"),
            None,
        ),
        Op::DelService(k) => (format!("removing {}", frontend(k)), Some(*k)),
        Op::DelSourceRange(id, a, p) => (
            format!("removing source range {a}/{p} of service id {id}"),
            None,
        ),
        Op::DelSlot(k) => (
            format!("removing slot {} of service id {}", k.slot, k.service_id),
            None,
        ),
        Op::DelRevNat(id) => (format!("removing reverse NAT of service id {id}"), None),
        Op::DelBackend(id) => (format!("removing backend {id}"), None),
    }
}

pub struct Maps {
    pub services: HashMap<MapData, ServiceKey, ServiceValue>,
    pub slots: HashMap<MapData, SlotKey, u32>,
    pub backends: HashMap<MapData, u32, Backend>,
    pub revnat: HashMap<MapData, u32, RevNat>,
    pub ct: HashMap<MapData, CtKey, CtValue>,
    pub affinity: HashMap<MapData, AffinityKey, AffinityValue>,
    pub maglev: Array<MapData, u32>,
    pub stats: PerCpuArray<MapData, ServiceStats>,
    /// The shared counters (one entry unless the id space is beyond PERCPU_STATS_MAX).
    pub stats_shared: Array<MapData, ServiceStats>,
    pub drops: PerCpuArray<MapData, u64>,
    pub src_ranges: LpmTrie<MapData, SourceRange, u8>,
    pub node_addrs: HashMap<MapData, u32, [u8; 4]>,
    /// Socket-level translations and refusals (lb_common::sock::SOCK_STAT_*).
    pub sock_stats: PerCpuArray<MapData, u64>,
    /// Socket LB's reverse translations (an LRU hash).
    pub sock_revnat: HashMap<MapData, SockRevKey, SockRevValue>,
    pub sock_revnat6: HashMap<MapData, SockRevKey6, SockRevValue6>,
    /// The no-service filter (an mmapable array: filter::MappedWords).
    pub filter: MapData,
    /// Packets passed untranslated, by reason (lb_common::PASS_*).
    pub passed: PerCpuArray<MapData, u64>,
    pub services6: HashMap<MapData, ServiceKey6, ServiceValue>,
    pub backends6: HashMap<MapData, u32, Backend6>,
    pub revnat6: HashMap<MapData, u32, RevNat6>,
    pub ct6: HashMap<MapData, CtKey6, CtValue6>,
    pub affinity6: HashMap<MapData, AffinityKey6, AffinityValue>,
    pub src_ranges6: LpmTrie<MapData, SourceRange6, u8>,
    pub node_addrs6: HashMap<MapData, u32, [u8; 16]>,
}

fn lpm<K: aya::Pod>(name: &'static str, map: Map) -> Result<LpmTrie<MapData, K, u8>, MapsError> {
    LpmTrie::try_from(map).map_err(|source| MapsError::Map { name, source })
}

/// The LPM key of range `addr/prefix` of service `service_id`.
pub fn source_range_key(service_id: u32, addr: [u8; 4], prefix: u8) -> Key<SourceRange> {
    Key::new(
        SourceRange::prefix_len(prefix),
        SourceRange {
            service_id: service_id.to_be_bytes(),
            addr,
        },
    )
}

/// The LPM key of IPv6 range `addr/prefix` of service `service_id`.
pub fn source_range_key6(service_id: u32, addr: [u8; 16], prefix: u8) -> Key<SourceRange6> {
    Key::new(
        SourceRange::prefix_len(prefix),
        SourceRange6 {
            service_id: service_id.to_be_bytes(),
            addr,
        },
    )
}

fn typed<K: aya::Pod, V: aya::Pod>(
    name: &'static str,
    map: Map,
) -> Result<HashMap<MapData, K, V>, MapsError> {
    HashMap::try_from(map).map_err(|source| MapsError::Map { name, source })
}

fn array<V: aya::Pod>(name: &'static str, map: Map) -> Result<Array<MapData, V>, MapsError> {
    Array::try_from(map).map_err(|source| MapsError::Map { name, source })
}

/// The map data of an array map (for mmapping it).
fn array_data(name: &'static str, map: Map) -> Result<MapData, MapsError> {
    match map {
        Map::Array(data) => Ok(data),
        _ => Err(MapsError::Map {
            name,
            source: MapError::InvalidMapType { map_type: u32::MAX },
        }),
    }
}

fn per_cpu<V: aya::Pod>(
    name: &'static str,
    map: Map,
) -> Result<PerCpuArray<MapData, V>, MapsError> {
    PerCpuArray::try_from(map).map_err(|source| MapsError::Map { name, source })
}

impl Maps {
    /// The counters of service `id`, summed over CPUs.
    pub fn service_stats(&self, id: u32) -> ServiceStats {
        // Only one of the two maps holds the id (the other has 1 entry).
        let mut sum = self.stats_shared.get(&id, 0).unwrap_or_default();
        if let Ok(values) = self.stats.get(&id, 0) {
            for v in values.iter() {
                sum.flows += v.flows;
                sum.packets += v.packets;
                sum.bytes += v.bytes;
            }
        }
        sum
    }

    /// Drops by reason index, summed over CPUs.
    pub fn drops(&self, reason: u32) -> u64 {
        self.drops
            .get(&reason, 0)
            .map(|values| values.iter().sum())
            .unwrap_or(0)
    }

    /// A socket-level counter (lb_common::sock::SOCK_STAT_*), summed over CPUs.
    pub fn sock_stat(&self, stat: u32) -> u64 {
        self.sock_stats
            .get(&stat, 0)
            .map(|values| values.iter().sum())
            .unwrap_or(0)
    }

    /// Every frontend of both families.
    pub fn frontends(&self) -> Vec<(FrontendKey, ServiceValue)> {
        let v6 = self.services6.iter().filter_map(Result::ok);
        self.services
            .iter()
            .filter_map(Result::ok)
            .map(|(k, v)| (frontend_key(&k), v))
            .chain(v6.map(|(k, v)| (frontend_key6(&k), v)))
            .collect()
    }

    /// Every backend of both families, by id.
    pub fn backend_entries(&self) -> Vec<(u32, AnyBackend)> {
        let v6 = self.backends6.iter().filter_map(Result::ok);
        self.backends
            .iter()
            .filter_map(Result::ok)
            .map(|(id, b)| (id, any_backend(&b)))
            .chain(v6.map(|(id, b)| (id, any_backend6(&b))))
            .collect()
    }

    /// Every reverse NAT entry of both families: the frontend by service id.
    pub fn revnat_entries(&self) -> Vec<(u32, std::net::SocketAddr)> {
        let v6 = self.revnat6.iter().filter_map(Result::ok);
        self.revnat
            .iter()
            .filter_map(Result::ok)
            .map(|(id, r)| (id, (IpAddr::from(r.addr), r.port).into()))
            .chain(v6.map(|(id, r)| (id, (IpAddr::from(r.addr), r.port).into())))
            .collect()
    }

    /// Packets passed untranslated for `reason` (lb_common::PASS_*), summed over CPUs.
    pub fn passed(&self, reason: u32) -> u64 {
        self.passed
            .get(&reason, 0)
            .map(|values| values.iter().sum())
            .unwrap_or(0)
    }

    /// Takes the maps out of a loaded object.
    pub fn take(ebpf: &mut aya::Ebpf) -> Result<Self, MapsError> {
        let mut take = |name: &'static str| ebpf.take_map(name).ok_or(MapsError::Missing { name });
        Ok(Self {
            services: typed(MAP_SERVICES, take(MAP_SERVICES)?)?,
            slots: typed(MAP_SLOTS, take(MAP_SLOTS)?)?,
            backends: typed(MAP_BACKENDS, take(MAP_BACKENDS)?)?,
            revnat: typed(MAP_REVNAT, take(MAP_REVNAT)?)?,
            ct: typed(MAP_CT, take(MAP_CT)?)?,
            affinity: typed(MAP_AFFINITY, take(MAP_AFFINITY)?)?,
            maglev: array(MAP_MAGLEV, take(MAP_MAGLEV)?)?,
            stats: per_cpu(MAP_STATS, take(MAP_STATS)?)?,
            stats_shared: array(MAP_STATS_SHARED, take(MAP_STATS_SHARED)?)?,
            drops: per_cpu(MAP_DROPS, take(MAP_DROPS)?)?,
            src_ranges: lpm(MAP_SOURCE_RANGES, take(MAP_SOURCE_RANGES)?)?,
            node_addrs: typed(MAP_NODE_ADDRS, take(MAP_NODE_ADDRS)?)?,
            sock_stats: per_cpu(MAP_SOCK_STATS, take(MAP_SOCK_STATS)?)?,
            sock_revnat: typed(MAP_SOCK_REVNAT, take(MAP_SOCK_REVNAT)?)?,
            sock_revnat6: typed(MAP_SOCK_REVNAT6, take(MAP_SOCK_REVNAT6)?)?,
            filter: array_data(MAP_FILTER, take(MAP_FILTER)?)?,
            passed: per_cpu(MAP_PASSED, take(MAP_PASSED)?)?,
            services6: typed(MAP_SERVICES6, take(MAP_SERVICES6)?)?,
            backends6: typed(MAP_BACKENDS6, take(MAP_BACKENDS6)?)?,
            revnat6: typed(MAP_REVNAT6, take(MAP_REVNAT6)?)?,
            ct6: typed(MAP_CT6, take(MAP_CT6)?)?,
            affinity6: typed(MAP_AFFINITY6, take(MAP_AFFINITY6)?)?,
            src_ranges6: lpm(MAP_SOURCE_RANGES6, take(MAP_SOURCE_RANGES6)?)?,
            node_addrs6: typed(MAP_NODE_ADDRS6, take(MAP_NODE_ADDRS6)?)?,
        })
    }

    /// Opens the maps pinned under `dir` by the agent.
    pub fn open_pinned(dir: &Path) -> Result<Self, MapsError> {
        let open = |name: &'static str| -> Result<Map, MapsError> {
            let data = MapData::from_pin(dir.join(name))
                .map_err(|source| MapsError::Map { name, source })?;
            Map::from_map_data(data).map_err(|source| MapsError::Map { name, source })
        };
        Ok(Self {
            services: typed(MAP_SERVICES, open(MAP_SERVICES)?)?,
            slots: typed(MAP_SLOTS, open(MAP_SLOTS)?)?,
            backends: typed(MAP_BACKENDS, open(MAP_BACKENDS)?)?,
            revnat: typed(MAP_REVNAT, open(MAP_REVNAT)?)?,
            ct: typed(MAP_CT, open(MAP_CT)?)?,
            affinity: typed(MAP_AFFINITY, open(MAP_AFFINITY)?)?,
            maglev: array(MAP_MAGLEV, open(MAP_MAGLEV)?)?,
            stats: per_cpu(MAP_STATS, open(MAP_STATS)?)?,
            stats_shared: array(MAP_STATS_SHARED, open(MAP_STATS_SHARED)?)?,
            drops: per_cpu(MAP_DROPS, open(MAP_DROPS)?)?,
            src_ranges: lpm(MAP_SOURCE_RANGES, open(MAP_SOURCE_RANGES)?)?,
            node_addrs: typed(MAP_NODE_ADDRS, open(MAP_NODE_ADDRS)?)?,
            sock_stats: per_cpu(MAP_SOCK_STATS, open(MAP_SOCK_STATS)?)?,
            sock_revnat: typed(MAP_SOCK_REVNAT, open(MAP_SOCK_REVNAT)?)?,
            sock_revnat6: typed(MAP_SOCK_REVNAT6, open(MAP_SOCK_REVNAT6)?)?,
            filter: array_data(MAP_FILTER, open(MAP_FILTER)?)?,
            passed: per_cpu(MAP_PASSED, open(MAP_PASSED)?)?,
            services6: typed(MAP_SERVICES6, open(MAP_SERVICES6)?)?,
            backends6: typed(MAP_BACKENDS6, open(MAP_BACKENDS6)?)?,
            revnat6: typed(MAP_REVNAT6, open(MAP_REVNAT6)?)?,
            ct6: typed(MAP_CT6, open(MAP_CT6)?)?,
            affinity6: typed(MAP_AFFINITY6, open(MAP_AFFINITY6)?)?,
            src_ranges6: lpm(MAP_SOURCE_RANGES6, open(MAP_SOURCE_RANGES6)?)?,
            node_addrs6: typed(MAP_NODE_ADDRS6, open(MAP_NODE_ADDRS6)?)?,
        })
    }

    /// Reads what the maps hold (entries that fail to read are skipped).
    pub fn read(&self) -> Programmed {
        let mut p = restore(
            self.frontends(),
            self.slots.iter().filter_map(Result::ok),
            self.backend_entries(),
        );
        let prefix = |len: u32| len.saturating_sub(32) as u8;
        p.source_ranges = self
            .src_ranges
            .keys()
            .filter_map(Result::ok)
            .map(|k| {
                let r = k.data();
                let id = u32::from_be_bytes(r.service_id);
                (id, IpAddr::from(r.addr), prefix(k.prefix_len()))
            })
            .chain(self.src_ranges6.keys().filter_map(Result::ok).map(|k| {
                let r = k.data();
                let id = u32::from_be_bytes(r.service_id);
                (id, IpAddr::from(r.addr), prefix(k.prefix_len()))
            }))
            .collect();
        p
    }

    /// Applies one planned operation; `maglev_m` is the Maglev table size.
    pub fn apply(&mut self, op: &Op, maglev_m: u32) -> Result<(), MapsError> {
        let e = |name: &'static str| {
            move |source| {
                let (what, frontend) = describe(op);
                MapsError::Write(Box::new(WriteFailure {
                    name,
                    what,
                    frontend,
                    source,
                }))
            }
        };
        match *op {
            Op::PutMaglev(table, ref entries) => {
                let base = table * maglev_m;
                for (i, id) in entries.iter().enumerate() {
                    self.maglev
                        .set(base + i as u32, id, 0)
                        .map_err(e(MAP_MAGLEV))?;
                }
                Ok(())
            }
            Op::PutSlot(k, id) => self.slots.insert(k, id, 0).map_err(e(MAP_SLOTS)),
            Op::DelSlot(k) => ignore_missing(self.slots.remove(&k)).map_err(e(MAP_SLOTS)),
            Op::PutBackend(id, b) => match b.addr {
                IpAddr::V4(a) => {
                    let b = Backend {
                        addr: a.octets(),
                        port: b.port,
                        proto: b.proto,
                        state: b.state,
                    };
                    self.backends.insert(id, b, 0).map_err(e(MAP_BACKENDS))
                }
                IpAddr::V6(a) => {
                    let b = Backend6 {
                        addr: a.octets(),
                        port: b.port,
                        proto: b.proto,
                        state: b.state,
                        _pad: 0,
                    };
                    self.backends6.insert(id, b, 0).map_err(e(MAP_BACKENDS6))
                }
            },
            Op::PutRevNat(id, ref r) => match r.ip() {
                IpAddr::V4(a) => {
                    let v = RevNat {
                        addr: a.octets(),
                        port: r.port(),
                        _pad: 0,
                    };
                    self.revnat.insert(id, v, 0).map_err(e(MAP_REVNAT))
                }
                IpAddr::V6(a) => {
                    let v = RevNat6 {
                        addr: a.octets(),
                        port: r.port(),
                        _pad: 0,
                        _pad2: 0,
                    };
                    self.revnat6.insert(id, v, 0).map_err(e(MAP_REVNAT6))
                }
            },
            Op::PutService(k, ref v) => match service_key(&k) {
                Key4or6::V4(k) => self.services.insert(k, **v, 0).map_err(e(MAP_SERVICES)),
                Key4or6::V6(k) => self.services6.insert(k, **v, 0).map_err(e(MAP_SERVICES6)),
            },
            Op::DelService(k) => match service_key(&k) {
                Key4or6::V4(k) => ignore_missing(self.services.remove(&k)).map_err(e(MAP_SERVICES)),
                Key4or6::V6(k) => {
                    ignore_missing(self.services6.remove(&k)).map_err(e(MAP_SERVICES6))
                }
            },
            // Ids are unique across the families: the entry is in one of
            // the two maps (IPv4 first: the common case costs one call).
            Op::DelRevNat(id) => {
                if gone(self.revnat.remove(&id)).map_err(e(MAP_REVNAT))? {
                    ignore_missing(self.revnat6.remove(&id)).map_err(e(MAP_REVNAT6))?;
                }
                Ok(())
            }
            Op::DelBackend(id) => {
                if gone(self.backends.remove(&id)).map_err(e(MAP_BACKENDS))? {
                    ignore_missing(self.backends6.remove(&id)).map_err(e(MAP_BACKENDS6))?;
                }
                Ok(())
            }
            Op::PutSourceRange(id, addr, prefix) => match addr {
                IpAddr::V4(a) => self
                    .src_ranges
                    .insert(&source_range_key(id, a.octets(), prefix), 1, 0)
                    .map_err(e(MAP_SOURCE_RANGES)),
                IpAddr::V6(a) => self
                    .src_ranges6
                    .insert(&source_range_key6(id, a.octets(), prefix), 1, 0)
                    .map_err(e(MAP_SOURCE_RANGES6)),
            },
            Op::DelSourceRange(id, addr, prefix) => match addr {
                IpAddr::V4(a) => ignore_missing(self.src_ranges.remove(&source_range_key(
                    id,
                    a.octets(),
                    prefix,
                )))
                .map_err(e(MAP_SOURCE_RANGES)),
                IpAddr::V6(a) => ignore_missing(self.src_ranges6.remove(&source_range_key6(
                    id,
                    a.octets(),
                    prefix,
                )))
                .map_err(e(MAP_SOURCE_RANGES6)),
            },
        }
    }
}

/// A frontend key as the kernel map of its family holds it.
pub enum Key4or6 {
    V4(ServiceKey),
    V6(ServiceKey6),
}

pub fn service_key(k: &FrontendKey) -> Key4or6 {
    match k.addr {
        IpAddr::V4(a) => Key4or6::V4(ServiceKey {
            addr: a.octets(),
            port: k.port,
            proto: k.proto,
            scope: k.scope,
        }),
        IpAddr::V6(a) => Key4or6::V6(ServiceKey6 {
            addr: a.octets(),
            port: k.port,
            proto: k.proto,
            scope: k.scope,
            _pad: 0,
        }),
    }
}

/// Whether a removal found nothing to remove (an error otherwise).
fn gone(r: Result<(), MapError>) -> Result<bool, MapError> {
    match r {
        Ok(()) => Ok(false),
        Err(MapError::KeyNotFound) => Ok(true),
        Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => {
            Ok(true)
        }
        Err(e) => Err(e),
    }
}

pub fn frontend_key(k: &ServiceKey) -> FrontendKey {
    FrontendKey {
        addr: IpAddr::from(k.addr),
        port: k.port,
        proto: k.proto,
        scope: k.scope,
    }
}

pub fn frontend_key6(k: &ServiceKey6) -> FrontendKey {
    FrontendKey {
        addr: IpAddr::from(k.addr),
        port: k.port,
        proto: k.proto,
        scope: k.scope,
    }
}

pub fn any_backend6(b: &Backend6) -> AnyBackend {
    AnyBackend {
        addr: IpAddr::from(b.addr),
        port: b.port,
        proto: b.proto,
        state: b.state,
    }
}

pub fn any_backend(b: &Backend) -> AnyBackend {
    AnyBackend {
        addr: IpAddr::from(b.addr),
        port: b.port,
        proto: b.proto,
        state: b.state,
    }
}

/// Deleting an entry that is already gone is success.
fn ignore_missing(r: Result<(), MapError>) -> Result<(), MapError> {
    gone(r).map(|_| ())
}
