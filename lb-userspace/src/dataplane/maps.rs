//! Typed handles on the datapath maps, either from a loaded object or from
//! the pins (for the CLI). Applying a planned operation happens here.
use std::path::Path;

use aya::maps::{
    lpm_trie::{Key, LpmTrie},
    Array, HashMap, Map, MapData, MapError, PerCpuArray,
};
use lb_common::{
    filter::MAP_FILTER,
    sock::{SockRevKey, SockRevValue, MAP_SOCK_REVNAT, MAP_SOCK_STATS},
    AffinityKey, AffinityValue, Backend, CtKey, CtValue, RevNat, ServiceKey, ServiceStats,
    ServiceValue, SlotKey, SourceRange, MAP_AFFINITY, MAP_BACKENDS, MAP_CT, MAP_DROPS, MAP_MAGLEV,
    MAP_NODE_ADDRS, MAP_REVNAT, MAP_SERVICES, MAP_SLOTS, MAP_SOURCE_RANGES, MAP_STATS,
};

use std::net::{IpAddr, SocketAddr};

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
    /// An entry of a family the loaded datapath has no maps for.
    #[error("{what}: the datapath has no {family} maps")]
    Family {
        what: String,
        family: crate::model::Family,
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
    pub drops: PerCpuArray<MapData, u64>,
    pub src_ranges: LpmTrie<MapData, SourceRange, u8>,
    pub node_addrs: HashMap<MapData, u32, [u8; 4]>,
    /// Socket-level translations and refusals (lb_common::sock::SOCK_STAT_*).
    pub sock_stats: PerCpuArray<MapData, u64>,
    /// Socket LB's reverse translations (an LRU hash).
    pub sock_revnat: HashMap<MapData, SockRevKey, SockRevValue>,
    /// The no-service filter (an mmapable array: filter::MappedWords).
    pub filter: MapData,
}

fn lpm(name: &'static str, map: Map) -> Result<LpmTrie<MapData, SourceRange, u8>, MapsError> {
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

fn typed<K: aya::Pod, V: aya::Pod>(
    name: &'static str,
    map: Map,
) -> Result<HashMap<MapData, K, V>, MapsError> {
    HashMap::try_from(map).map_err(|source| MapsError::Map { name, source })
}

fn array(name: &'static str, map: Map) -> Result<Array<MapData, u32>, MapsError> {
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
        let mut sum = ServiceStats::default();
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
            drops: per_cpu(MAP_DROPS, take(MAP_DROPS)?)?,
            src_ranges: lpm(MAP_SOURCE_RANGES, take(MAP_SOURCE_RANGES)?)?,
            node_addrs: typed(MAP_NODE_ADDRS, take(MAP_NODE_ADDRS)?)?,
            sock_stats: per_cpu(MAP_SOCK_STATS, take(MAP_SOCK_STATS)?)?,
            sock_revnat: typed(MAP_SOCK_REVNAT, take(MAP_SOCK_REVNAT)?)?,
            filter: array_data(MAP_FILTER, take(MAP_FILTER)?)?,
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
            drops: per_cpu(MAP_DROPS, open(MAP_DROPS)?)?,
            src_ranges: lpm(MAP_SOURCE_RANGES, open(MAP_SOURCE_RANGES)?)?,
            node_addrs: typed(MAP_NODE_ADDRS, open(MAP_NODE_ADDRS)?)?,
            sock_stats: per_cpu(MAP_SOCK_STATS, open(MAP_SOCK_STATS)?)?,
            sock_revnat: typed(MAP_SOCK_REVNAT, open(MAP_SOCK_REVNAT)?)?,
            filter: array_data(MAP_FILTER, open(MAP_FILTER)?)?,
        })
    }

    /// Reads what the maps hold (entries that fail to read are skipped).
    pub fn read(&self) -> Programmed {
        let mut p = restore(
            self.services
                .iter()
                .filter_map(Result::ok)
                .map(|(k, v)| (frontend_key(&k), v)),
            self.slots.iter().filter_map(Result::ok),
            self.backends
                .iter()
                .filter_map(Result::ok)
                .map(|(id, b)| (id, any_backend(&b))),
        );
        p.source_ranges = self
            .src_ranges
            .keys()
            .filter_map(Result::ok)
            .map(|k| {
                let r = k.data();
                (
                    u32::from_be_bytes(r.service_id),
                    IpAddr::from(r.addr),
                    k.prefix_len().saturating_sub(32) as u8,
                )
            })
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
        let family = |what: &str, addr: IpAddr| MapsError::Family {
            what: what.to_string(),
            family: crate::model::Family::of(addr),
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
            Op::PutBackend(id, b) => {
                let b = backend4(&b).ok_or_else(|| family("backend", b.addr))?;
                self.backends.insert(id, b, 0).map_err(e(MAP_BACKENDS))
            }
            Op::PutSlot(k, id) => self.slots.insert(k, id, 0).map_err(e(MAP_SLOTS)),
            Op::PutRevNat(id, r) => {
                let r = revnat4(r).ok_or_else(|| family("reverse NAT", r.ip()))?;
                self.revnat.insert(id, r, 0).map_err(e(MAP_REVNAT))
            }
            Op::PutService(k, v) => {
                let k = service_key4(&k).ok_or_else(|| family("frontend", k.addr))?;
                self.services.insert(k, v, 0).map_err(e(MAP_SERVICES))
            }
            Op::DelService(k) => {
                let k = service_key4(&k).ok_or_else(|| family("frontend", k.addr))?;
                ignore_missing(self.services.remove(&k)).map_err(e(MAP_SERVICES))
            }
            Op::DelSlot(k) => ignore_missing(self.slots.remove(&k)).map_err(e(MAP_SLOTS)),
            Op::DelRevNat(id) => ignore_missing(self.revnat.remove(&id)).map_err(e(MAP_REVNAT)),
            Op::PutSourceRange(id, addr, prefix) => {
                let a = v4(addr).ok_or_else(|| family("source range", addr))?;
                self.src_ranges
                    .insert(&source_range_key(id, a, prefix), 1, 0)
                    .map_err(e(MAP_SOURCE_RANGES))
            }
            Op::DelSourceRange(id, addr, prefix) => {
                let a = v4(addr).ok_or_else(|| family("source range", addr))?;
                ignore_missing(self.src_ranges.remove(&source_range_key(id, a, prefix)))
                    .map_err(e(MAP_SOURCE_RANGES))
            }
            Op::DelBackend(id) => {
                ignore_missing(self.backends.remove(&id)).map_err(e(MAP_BACKENDS))
            }
        }
    }
}

/// The octets of an IPv4 address; None for IPv6.
pub fn v4(addr: IpAddr) -> Option<[u8; 4]> {
    match addr {
        IpAddr::V4(a) => Some(a.octets()),
        IpAddr::V6(_) => None,
    }
}

/// The kernel's IPv4 frontend key of `k`.
pub fn service_key4(k: &FrontendKey) -> Option<ServiceKey> {
    Some(ServiceKey {
        addr: v4(k.addr)?,
        port: k.port,
        proto: k.proto,
        scope: k.scope,
    })
}

/// The kernel's IPv4 backend of `b`.
pub fn backend4(b: &AnyBackend) -> Option<Backend> {
    Some(Backend {
        addr: v4(b.addr)?,
        port: b.port,
        proto: b.proto,
        state: b.state,
    })
}

fn revnat4(a: SocketAddr) -> Option<RevNat> {
    Some(RevNat {
        addr: v4(a.ip())?,
        port: a.port(),
        _pad: 0,
    })
}

pub fn frontend_key(k: &ServiceKey) -> FrontendKey {
    FrontendKey {
        addr: IpAddr::from(k.addr),
        port: k.port,
        proto: k.proto,
        scope: k.scope,
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
    match r {
        Err(MapError::KeyNotFound) => Ok(()),
        Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        other => other,
    }
}
