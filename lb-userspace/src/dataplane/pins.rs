//! Versioned pins across restarts and upgrades.
//!
//! A pinned map is reused only when its layout is exactly what this build's
//! object declares (type, key and value size, capacity, flags). Aya would
//! otherwise reuse any pin with the right name, and a program would then
//! read a value of the wrong size or the agent would run with a capacity it
//! was not given. A pin that differs is moved aside and recreated; its
//! entries are copied into the new map where that is safe (hash maps whose
//! key and value keep their layout, and the listed migrations of older
//! versions), so that live flows keep their conntrack entries and service
//! and backend ids. Pins of older layouts that nothing reads any more are
//! removed. Every action is returned so the agent can log it.
use std::{
    collections::HashMap,
    fmt,
    path::{Path, PathBuf},
};

use aya::maps::{Map, MapData, MapError, MapInfo};
use lb_common::{
    AffinityKey, AffinityKey6, AffinityValue, Backend, Backend6, CtKey, CtKey6, CtValue, CtValue6,
    RevNat, RevNat6, ServiceKey, ServiceKey6, ServiceValue, SlotKey, ALL_MAPS, MAP_AFFINITY,
    MAP_AFFINITY6, MAP_BACKENDS, MAP_BACKENDS6, MAP_CT, MAP_CT6, MAP_MIGRATIONS, MAP_NODE_ADDRS,
    MAP_NODE_ADDRS6, MAP_REVNAT, MAP_REVNAT6, MAP_SERVICES, MAP_SERVICES6, MAP_SLOTS,
};

/// Kernel map types whose entries are copied when a pin is recreated.
const BPF_MAP_TYPE_HASH: u32 = 1;
const BPF_MAP_TYPE_LRU_HASH: u32 = 9;
/// Map types whose capacity aya derives itself (CPUs, pages): not compared.
const BPF_MAP_TYPE_PERF_EVENT_ARRAY: u32 = 4;
const BPF_MAP_TYPE_RINGBUF: u32 = 27;

#[derive(Debug, thiserror::Error)]
pub enum PinError {
    #[error("parsing the eBPF object's map definitions: {0}")]
    Object(#[from] aya_obj::ParseError),
    #[error("pin {path}: {source}")]
    Info { path: PathBuf, source: MapError },
    #[error("pin {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The layout of a map, as declared by the object or as pinned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapSpec {
    pub map_type: u32,
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
    pub flags: u32,
}

impl MapSpec {
    fn of_pin(info: &MapInfo) -> Self {
        Self {
            // MapType's discriminants are the kernel's bpf_map_type values.
            map_type: info.map_type().map_or(u32::MAX, |t| t as u32),
            key_size: info.key_size(),
            value_size: info.value_size(),
            max_entries: info.max_entries(),
            flags: info.map_flags(),
        }
    }

    fn capacity_is_derived(&self) -> bool {
        matches!(
            self.map_type,
            BPF_MAP_TYPE_PERF_EVENT_ARRAY | BPF_MAP_TYPE_RINGBUF
        )
    }

    fn copyable(&self) -> bool {
        matches!(self.map_type, BPF_MAP_TYPE_HASH | BPF_MAP_TYPE_LRU_HASH)
    }
}

impl fmt::Display for MapSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "type {} key {} value {} entries {} flags {:#x}",
            self.map_type, self.key_size, self.value_size, self.max_entries, self.flags
        )
    }
}

/// How a pinned map differs from what this build wants, if it does.
pub fn difference(wanted: &MapSpec, pinned: &MapSpec) -> Option<String> {
    let mut what = Vec::new();
    if wanted.map_type != pinned.map_type {
        what.push(format!(
            "type {} (want {})",
            pinned.map_type, wanted.map_type
        ));
    }
    if wanted.key_size != pinned.key_size {
        what.push(format!(
            "key size {} (want {})",
            pinned.key_size, wanted.key_size
        ));
    }
    if wanted.value_size != pinned.value_size {
        what.push(format!(
            "value size {} (want {})",
            pinned.value_size, wanted.value_size
        ));
    }
    if !wanted.capacity_is_derived() && wanted.max_entries != pinned.max_entries {
        what.push(format!(
            "capacity {} (want {})",
            pinned.max_entries, wanted.max_entries
        ));
    }
    if wanted.flags != pinned.flags {
        what.push(format!(
            "flags {:#x} (want {:#x})",
            pinned.flags, wanted.flags
        ));
    }
    (!what.is_empty()).then(|| what.join(", "))
}

/// The layouts the object declares for the pinned maps, with the capacities
/// the loader will set (`capacities`, by map name).
pub fn wanted_specs(
    object: &[u8],
    capacities: &HashMap<&str, u32>,
) -> Result<HashMap<&'static str, MapSpec>, PinError> {
    let obj = aya_obj::Object::parse(object)?;
    let mut specs = HashMap::new();
    for name in ALL_MAPS {
        let Some(map) = obj.maps.get(name) else {
            continue;
        };
        specs.insert(
            name,
            MapSpec {
                map_type: map.map_type(),
                key_size: map.key_size(),
                value_size: map.value_size(),
                max_entries: capacities
                    .get(name)
                    .copied()
                    .unwrap_or_else(|| map.max_entries()),
                flags: map.map_flags(),
            },
        );
    }
    Ok(specs)
}

/// What [`prepare`] did to one pin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PinAction {
    /// The pin differs from this build's layout: moved aside and recreated.
    Recreated { name: &'static str, why: String },
    /// A pin of an older layout that this build reads no more: removed.
    RemovedStale { name: String },
    /// Entries carried over into the new map (`failed` did not fit).
    Migrated {
        from: String,
        to: &'static str,
        copied: usize,
        failed: usize,
    },
    /// The old map's entries could not be read as the new layout: dropped.
    NotMigrated {
        from: String,
        to: &'static str,
        why: String,
    },
}

impl fmt::Display for PinAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Recreated { name, why } => {
                write!(f, "map {name}: pinned map differs ({why}); recreated")
            }
            Self::RemovedStale { name } => {
                write!(
                    f,
                    "map {name}: pin of an older layout, not used by this build; removed"
                )
            }
            Self::Migrated {
                from,
                to,
                copied,
                failed,
            } => write!(
                f,
                "map {to}: {copied} entries carried over from the old {from} ({failed} did not fit)"
            ),
            Self::NotMigrated { from, to, why } => {
                write!(
                    f,
                    "map {to}: entries of the old {from} not carried over: {why}"
                )
            }
        }
    }
}

/// Old maps kept open until their entries are copied, and their pins, moved
/// aside to `NAME_OLD` until the new agent has loaded: a start that fails
/// puts them back ([`Pending::restore`]), so no state is lost with it.
pub struct Pending {
    moves: Vec<(String, &'static str, MapData)>,
    aside: Vec<PathBuf>,
}

impl Pending {
    /// The load failed: removes the new pins and puts the old ones back.
    pub fn restore(self) {
        for path in &self.aside {
            let _ = std::fs::remove_file(path);
            let _ = std::fs::rename(aside_path(path), path);
        }
    }

    /// The load succeeded: the old pins go (their maps live on only while
    /// the old programs, still attached, hold them).
    pub fn commit(self) {
        for path in &self.aside {
            let _ = std::fs::remove_file(aside_path(path));
        }
    }
}

fn aside_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    // bpffs refuses names with a dot.
    name.push("_OLD");
    PathBuf::from(name)
}

/// Moves a pin aside (see [`Pending`]).
fn move_aside(path: &Path) -> Result<(), PinError> {
    std::fs::rename(path, aside_path(path)).map_err(|source| PinError::Io {
        path: path.into(),
        source,
    })
}

/// Pins left aside by an agent that stopped between moving them and
/// finishing its start: back in place when nothing replaced them, else gone.
fn recover_aside(bpffs: &Path, names: &[&str]) -> Result<(), PinError> {
    for name in names {
        let path = bpffs.join(name);
        let old = aside_path(&path);
        if old.exists() {
            if path.exists() {
                remove(&old)?;
            } else {
                std::fs::rename(&old, &path).map_err(|source| PinError::Io {
                    path: old.clone(),
                    source,
                })?;
            }
        }
    }
    Ok(())
}

/// Run before the loader: removes every pin under `bpffs` that must not be
/// reused, keeping the ones whose entries can be carried over open.
pub fn prepare(
    bpffs: &Path,
    wanted: &HashMap<&'static str, MapSpec>,
) -> Result<(Vec<PinAction>, Pending), PinError> {
    let mut actions = Vec::new();
    let mut moves = Vec::new();
    let mut aside = Vec::new();
    let mut names: Vec<&str> = ALL_MAPS.to_vec();
    names.extend(MAP_MIGRATIONS.iter().map(|(old, _)| *old));
    recover_aside(bpffs, &names)?;
    // Decide everything before touching any pin.
    let mut recreate = Vec::new();
    for (&name, spec) in wanted {
        let path = bpffs.join(name);
        if !path.exists() {
            continue;
        }
        let info = MapInfo::from_pin(&path).map_err(|source| PinError::Info {
            path: path.clone(),
            source,
        })?;
        let pinned = MapSpec::of_pin(&info);
        let Some(why) = difference(spec, &pinned) else {
            continue;
        };
        let same_layout = pinned.map_type == spec.map_type
            && pinned.key_size == spec.key_size
            && pinned.value_size == spec.value_size;
        let old = (same_layout && spec.copyable())
            .then(|| open(&path))
            .transpose()?;
        recreate.push((name, path, why, old));
    }
    let mut migrations = Vec::new();
    for (old, new) in MAP_MIGRATIONS {
        let path = bpffs.join(old);
        if path.exists() {
            migrations.push((old, new, path.clone(), open(&path)?));
        }
    }
    for (name, path, why, old) in recreate {
        move_aside(&path)?;
        aside.push(path);
        if let Some(old) = old {
            moves.push((name.to_string(), name, old));
        }
        actions.push(PinAction::Recreated { name, why });
    }
    for (old, new, path, map) in migrations {
        move_aside(&path)?;
        aside.push(path);
        moves.push((old.to_string(), new, map));
        actions.push(PinAction::RemovedStale {
            name: old.to_string(),
        });
    }
    for entry in std::fs::read_dir(bpffs).map_err(|source| PinError::Io {
        path: bpffs.into(),
        source,
    })? {
        let entry = entry.map_err(|source| PinError::Io {
            path: bpffs.into(),
            source,
        })?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if is_versioned_map_name(&name) && !ALL_MAPS.contains(&name.as_str()) {
            remove(&entry.path())?;
            actions.push(PinAction::RemovedStale { name });
        }
    }
    Ok((actions, Pending { moves, aside }))
}

/// Run after the loader created and pinned the new maps: copies the entries
/// of the old maps [`prepare`] kept open.
pub fn migrate(bpffs: &Path, pending: &mut Pending) -> Result<Vec<PinAction>, PinError> {
    let mut actions = Vec::new();
    for (from, to, old) in std::mem::take(&mut pending.moves) {
        let new = open(&bpffs.join(to))?;
        let copied = match to {
            MAP_SERVICES => copy::<ServiceKey, ServiceValue, _>(old, new, Some),
            MAP_SLOTS => copy::<SlotKey, u32, _>(old, new, Some),
            MAP_BACKENDS => copy::<u32, Backend, _>(old, new, Some),
            MAP_REVNAT => copy::<u32, RevNat, _>(old, new, Some),
            MAP_AFFINITY => copy::<AffinityKey, AffinityValue, _>(old, new, Some),
            MAP_NODE_ADDRS => copy::<u32, [u8; 4], _>(old, new, Some),
            MAP_CT if from == MAP_CT => copy::<CtKey, CtValue, _>(old, new, Some),
            MAP_CT => copy::<CtKey, CtValue, [u8; CT_V1_VALUE]>(old, new, ct_v1_to_v2),
            MAP_SERVICES6 => copy::<ServiceKey6, ServiceValue, _>(old, new, Some),
            MAP_BACKENDS6 => copy::<u32, Backend6, _>(old, new, Some),
            MAP_REVNAT6 => copy::<u32, RevNat6, _>(old, new, Some),
            MAP_AFFINITY6 => copy::<AffinityKey6, AffinityValue, _>(old, new, Some),
            MAP_NODE_ADDRS6 => copy::<u32, [u8; 16], _>(old, new, Some),
            MAP_CT6 => copy::<CtKey6, CtValue6, _>(old, new, Some),
            _ => continue,
        };
        actions.push(match copied {
            Ok((copied, failed)) => PinAction::Migrated {
                from,
                to,
                copied,
                failed,
            },
            Err(e) => PinAction::NotMigrated {
                from,
                to,
                why: e.to_string(),
            },
        });
    }
    Ok(actions)
}

/// Size of a CT_V1 value: CtValue without the SNAT fields appended in V2.
const CT_V1_VALUE: usize = 24;

/// A CT_V1 value as CT_V2: the appended SNAT fields are zero ("no SNAT").
fn ct_v1_to_v2(v1: [u8; CT_V1_VALUE]) -> Option<CtValue> {
    let u32_at = |i: usize| u32::from_ne_bytes([v1[i], v1[i + 1], v1[i + 2], v1[i + 3]]);
    let mut last_seen = [0u8; 8];
    last_seen.copy_from_slice(&v1[16..24]);
    Some(CtValue {
        backend_id: u32_at(0),
        service_id: u32_at(4),
        nat_addr: [v1[8], v1[9], v1[10], v1[11]],
        nat_port: u16::from_ne_bytes([v1[12], v1[13]]),
        kind: v1[14],
        flags: v1[15],
        last_seen_ns: u64::from_ne_bytes(last_seen),
        snat_addr: [0; 4],
        snat_port: 0,
        _pad: 0,
    })
}

/// Copies every entry of `old` into `new`; returns (copied, failed). Fails
/// as a whole when `old` is not a hash map of this key and value size.
fn copy<K: aya::Pod, VNew: aya::Pod, VOld: aya::Pod>(
    old: MapData,
    new: MapData,
    convert: impl Fn(VOld) -> Option<VNew>,
) -> Result<(usize, usize), MapError> {
    let old: aya::maps::HashMap<MapData, K, VOld> =
        aya::maps::HashMap::try_from(Map::from_map_data(old)?)?;
    let mut new: aya::maps::HashMap<MapData, K, VNew> =
        aya::maps::HashMap::try_from(Map::from_map_data(new)?)?;
    let (mut copied, mut failed) = (0, 0);
    for entry in old.iter() {
        let (key, value) = entry?;
        match convert(value).map(|v| new.insert(key, v, 0)) {
            Some(Ok(())) => copied += 1,
            _ => failed += 1,
        }
    }
    Ok((copied, failed))
}

fn open(path: &Path) -> Result<MapData, PinError> {
    MapData::from_pin(path).map_err(|source| PinError::Info {
        path: path.into(),
        source,
    })
}

fn remove(path: &Path) -> Result<(), PinError> {
    std::fs::remove_file(path).map_err(|source| PinError::Io {
        path: path.into(),
        source,
    })
}

/// Weir's map pins are `UPPER_CASE_V<n>`; anything else under the bpffs
/// directory (the links directory, a file someone put there) is left alone.
fn is_versioned_map_name(name: &str) -> bool {
    let Some((base, version)) = name.rsplit_once("_V") else {
        return false;
    };
    !base.is_empty()
        && base
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
        && !version.is_empty()
        && version.bytes().all(|b| b.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> MapSpec {
        MapSpec {
            map_type: BPF_MAP_TYPE_LRU_HASH,
            key_size: 16,
            value_size: 32,
            max_entries: 1024,
            flags: 0,
        }
    }

    #[test]
    fn pins_moved_aside_come_back_when_the_start_fails_and_go_when_it_succeeds() {
        let dir = std::env::temp_dir().join(format!("weir-pins-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let pin = dir.join("CT_V2");
        std::fs::write(&pin, "old").expect("pin");
        move_aside(&pin).expect("aside");
        std::fs::write(&pin, "new").expect("new pin");
        Pending {
            moves: Vec::new(),
            aside: vec![pin.clone()],
        }
        .restore();
        assert_eq!(std::fs::read_to_string(&pin).expect("read"), "old");
        assert!(!aside_path(&pin).exists());

        move_aside(&pin).expect("aside");
        std::fs::write(&pin, "new").expect("new pin");
        Pending {
            moves: Vec::new(),
            aside: vec![pin.clone()],
        }
        .commit();
        assert_eq!(std::fs::read_to_string(&pin).expect("read"), "new");
        assert!(!aside_path(&pin).exists());

        // A start that died in between: the pin comes back if nothing replaced it.
        move_aside(&pin).expect("aside");
        recover_aside(&dir, &["CT_V2"]).expect("recover");
        assert_eq!(std::fs::read_to_string(&pin).expect("read"), "new");
        std::fs::remove_dir_all(&dir).expect("clean up");
    }

    #[test]
    fn an_identical_pin_is_reused() {
        assert_eq!(difference(&spec(), &spec()), None);
    }

    #[test]
    fn a_pin_with_another_value_size_or_capacity_is_not_reused() {
        let pinned = MapSpec {
            value_size: 24,
            max_entries: 512,
            ..spec()
        };
        assert_eq!(
            difference(&spec(), &pinned).as_deref(),
            Some("value size 24 (want 32), capacity 512 (want 1024)")
        );
        let other_type = MapSpec {
            map_type: BPF_MAP_TYPE_HASH,
            ..spec()
        };
        assert_eq!(
            difference(&spec(), &other_type).as_deref(),
            Some("type 1 (want 9)")
        );
    }

    #[test]
    fn a_ring_buffer_capacity_is_not_compared() {
        let ring = MapSpec {
            map_type: BPF_MAP_TYPE_RINGBUF,
            key_size: 0,
            value_size: 0,
            ..spec()
        };
        let pinned = MapSpec {
            max_entries: 4096,
            ..ring
        };
        assert_eq!(difference(&ring, &pinned), None);
    }

    #[test]
    fn only_versioned_upper_case_names_are_map_pins() {
        for name in ["CT_V1", "SRC_RANGES_V12", "A_V1"] {
            assert!(is_versioned_map_name(name), "{name}");
        }
        for name in ["links", "CT", "CT_V", "ct_V1", "CT_V1x", "_V1", "CT-V1"] {
            assert!(!is_versioned_map_name(name), "{name}");
        }
    }

    #[test]
    fn a_ct_v1_value_keeps_its_fields_and_gets_no_snat() {
        let mut v1 = [0u8; CT_V1_VALUE];
        v1[0..4].copy_from_slice(&7u32.to_ne_bytes());
        v1[4..8].copy_from_slice(&3u32.to_ne_bytes());
        v1[8..12].copy_from_slice(&[198, 18, 0, 10]);
        v1[12..14].copy_from_slice(&8080u16.to_be_bytes());
        v1[14] = 1;
        v1[15] = 2;
        v1[16..24].copy_from_slice(&123_456_789u64.to_ne_bytes());
        let v2 = ct_v1_to_v2(v1).expect("converts");
        assert_eq!(
            v2,
            CtValue {
                backend_id: 7,
                service_id: 3,
                nat_addr: [198, 18, 0, 10],
                nat_port: 8080u16.to_be(),
                kind: 1,
                flags: 2,
                last_seen_ns: 123_456_789,
                snat_addr: [0; 4],
                snat_port: 0,
                _pad: 0,
            }
        );
    }
}
