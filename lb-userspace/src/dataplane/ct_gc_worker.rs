//! Conntrack garbage collection off the agent's loop. A collection reads
//! every entry (two syscalls each: 238 ms for 250,000 entries, measured),
//! which on the agent's single-threaded loop held up every sync meanwhile.
//! A worker thread scans and deletes on its own handle of the map; the loop
//! only prunes the no-service filter with what it found.
//!
//! The loop asks for one collection at a time and prunes before asking for
//! the next, so every scan starts after the previous prune: the ordering the
//! filter's two-collection rule relies on (filter.rs).
use std::collections::HashSet;

use aya::maps::{HashMap, Map, MapData};
use lb_common::{CtKey, CtKey6, CtValue, CtValue6, CT_REPLY};

use super::{
    ct_gc::{expired, CtEntry, CtGc, CtTimeouts},
    filter::{reply_bit, ReplyBits},
};

/// What one collection did and found.
#[derive(Debug, Clone)]
pub struct Collected {
    pub gc: CtGc,
    /// The reply bits of the reply entries left.
    pub reply_bits: ReplyBits,
}

/// The filter's reply bits of the reply entries among `entries`.
pub fn reply_bits<'a, K: CtEntry + 'a>(
    entries: impl IntoIterator<Item = (&'a K, &'a K::Value)>,
) -> ReplyBits {
    entries
        .into_iter()
        .filter(|(_, v)| K::kind(v) == CT_REPLY)
        .map(|(k, _)| reply_bit(k))
        .collect()
}

/// The conntrack maps of both families (handles of the worker's own).
pub struct CtMaps {
    pub v4: HashMap<MapData, CtKey, CtValue>,
    pub v6: HashMap<MapData, CtKey6, CtValue6>,
}

/// Deletes the expired entries of one family's map: (removed, left, the
/// reply bits of the entries left).
fn collect_family<K: CtEntry>(
    ct: &mut HashMap<MapData, K, K::Value>,
    timeouts: &CtTimeouts,
    now: u64,
) -> (usize, usize, ReplyBits) {
    let entries: Vec<_> = ct.iter().filter_map(Result::ok).collect();
    let removed: HashSet<K> = expired(&entries, now, timeouts)
        .into_iter()
        .filter(|k| ct.remove(k).is_ok())
        .collect();
    let bits = reply_bits(
        entries
            .iter()
            .filter(|(k, _)| !removed.contains(k))
            .map(|(k, v)| (k, v)),
    );
    (removed.len(), entries.len() - removed.len(), bits)
}

/// Deletes the expired entries of both maps (of `capacity` entries each).
pub fn collect(ct: &mut CtMaps, timeouts: &CtTimeouts, capacity: usize) -> Collected {
    let now = crate::inspect::monotonic_ns();
    let (removed, entries, mut reply_bits) = collect_family(&mut ct.v4, timeouts, now);
    let (removed6, entries6, bits6) = collect_family(&mut ct.v6, timeouts, now);
    reply_bits.union(&bits6);
    Collected {
        // The fuller family decides whether conntrack counts as full.
        gc: CtGc {
            removed: removed + removed6,
            entries: entries.max(entries6),
            capacity,
        },
        reply_bits,
    }
}

/// A thread that collects when asked and sends back what it found.
pub struct GcWorker {
    requests: std::sync::mpsc::Sender<()>,
    /// One result per request, in order.
    pub results: tokio::sync::mpsc::UnboundedReceiver<Collected>,
}

impl GcWorker {
    /// Starts a worker on `ct` (a handle of its own on the conntrack map).
    pub fn start(mut ct: CtMaps, timeouts: CtTimeouts, capacity: usize) -> std::io::Result<Self> {
        let (requests, asked) = std::sync::mpsc::channel::<()>();
        let (done, results) = tokio::sync::mpsc::unbounded_channel();
        std::thread::Builder::new()
            .name("weir-ct-gc".into())
            .spawn(move || {
                // Ends when the agent drops the worker (the channel closes).
                while asked.recv().is_ok() {
                    if done.send(collect(&mut ct, &timeouts, capacity)).is_err() {
                        return;
                    }
                }
            })?;
        Ok(Self { requests, results })
    }

    /// Asks for one collection; its result arrives on `results`.
    pub fn request(&self) -> bool {
        self.requests.send(()).is_ok()
    }
}

/// A second handle on the conntrack map of `map` (a duplicated fd).
pub fn conntrack_handle<K: CtEntry>(
    map: &MapData,
) -> Result<HashMap<MapData, K, K::Value>, aya::maps::MapError> {
    use std::os::fd::AsFd;
    let fd = map.fd().as_fd().try_clone_to_owned().map_err(|io_error| {
        aya::maps::MapError::SyscallError(aya::sys::SyscallError {
            call: "dup",
            io_error,
        })
    })?;
    let data = MapData::from_fd(fd)?;
    HashMap::try_from(Map::LruHashMap(data))
}
