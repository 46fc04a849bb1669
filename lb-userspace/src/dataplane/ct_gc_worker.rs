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
use lb_common::{CtKey, CtValue, CT_REPLY};

use super::{
    ct_gc::{expired, CtGc, CtTimeouts},
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
pub fn reply_bits<'a>(entries: impl IntoIterator<Item = (&'a CtKey, &'a CtValue)>) -> ReplyBits {
    entries
        .into_iter()
        .filter(|(_, v)| v.kind == CT_REPLY)
        .map(|(k, _)| reply_bit(k))
        .collect()
}

/// Deletes the expired entries of `ct` (of `capacity` entries).
pub fn collect(
    ct: &mut HashMap<MapData, CtKey, CtValue>,
    timeouts: &CtTimeouts,
    capacity: usize,
) -> Collected {
    let entries: Vec<_> = ct.iter().filter_map(Result::ok).collect();
    let now = crate::inspect::monotonic_ns();
    let removed: HashSet<CtKey> = expired(&entries, now, timeouts)
        .into_iter()
        .filter(|k| ct.remove(k).is_ok())
        .collect();
    let reply_bits = reply_bits(
        entries
            .iter()
            .filter(|(k, _)| !removed.contains(k))
            .map(|(k, v)| (k, v)),
    );
    Collected {
        gc: CtGc {
            removed: removed.len(),
            entries: entries.len() - removed.len(),
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
    pub fn start(
        mut ct: HashMap<MapData, CtKey, CtValue>,
        timeouts: CtTimeouts,
        capacity: usize,
    ) -> std::io::Result<Self> {
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
pub fn conntrack_handle(
    map: &MapData,
) -> Result<HashMap<MapData, CtKey, CtValue>, aya::maps::MapError> {
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
