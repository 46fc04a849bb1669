//! Keeping the no-service filter (lb_common::filter) true: a bit must be set
//! before anything the kernel could match through it exists, and may be
//! cleared only once nothing does.
//!
//! - Frontend bits follow the service entries: set before a sync writes a
//!   new frontend, cleared after it removes the last frontend on that bit
//!   (counted per bit, since frontends can share one).
//! - Reply bits are set before a sync writes a backend and never cleared by a
//!   sync: conntrack may still hold replies from a removed backend. Conntrack
//!   GC clears a reply bit that neither a backend nor a remaining conntrack
//!   reply entry used in two consecutive collections (a flow created from a
//!   backend value read just before its removal shows up in the second).
//! - At load, before the programs are attached, the bits are set from what
//!   the maps hold (services, backends, conntrack), so that an upgrade or a
//!   restart never lets a packet of a live flow through untranslated.
use std::collections::HashMap;

use std::net::IpAddr;

use lb_common::filter::{filter_bit, fold6, FilterBit, Half, FILTER_HALF_WORDS, FILTER_WORDS};

use super::sync::{Op, Programmed};
use crate::frontend::{Backend, FrontendKey};

/// The filter's words, wherever they live (the mmapped map, or a test's Vec).
pub trait Words {
    fn word(&self, i: u32) -> u64;
    fn set_word(&mut self, i: u32, v: u64);
}

impl Words for Vec<u64> {
    fn word(&self, i: u32) -> u64 {
        self[i as usize]
    }
    fn set_word(&mut self, i: u32, v: u64) {
        self[i as usize] = v;
    }
}

/// The 32 bits of an address the filter hashes (lb_common::filter::fold6
/// for IPv6, as the kernel does).
fn filter_addr(addr: IpAddr) -> [u8; 4] {
    match addr {
        IpAddr::V4(a) => a.octets(),
        IpAddr::V6(a) => fold6(a.octets()),
    }
}

pub fn frontend_bit(k: &FrontendKey) -> FilterBit {
    filter_bit(Half::Frontend, filter_addr(k.addr), k.port, k.proto)
}

pub fn backend_bit(b: &Backend) -> FilterBit {
    filter_bit(Half::Reply, filter_addr(b.addr), b.port, b.proto)
}

/// The bit of a conntrack entry's packets' source: for a reply entry, the
/// backend's address and port.
pub fn reply_bit<K: super::ct_gc::CtEntry>(k: &K) -> FilterBit {
    let (addr, port) = k.source();
    filter_bit(Half::Reply, filter_addr(addr), port, k.proto())
}

/// A set of reply bits as a bitmap of the filter's reply half: at 100k
/// services x 10 endpoints a collection deals with about a million bits;
/// as a bitmap, pruning is one AND per word on the agent's loop instead of
/// a hash set lookup per bit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplyBits(Vec<u64>);

impl Default for ReplyBits {
    fn default() -> Self {
        Self(vec![0; FILTER_HALF_WORDS as usize])
    }
}

impl ReplyBits {
    /// Word `i` of the reply half (`i` counted from the half's start).
    fn word(&self, i: u32) -> u64 {
        self.0[i as usize]
    }

    /// Adds a bit of the reply half (a bit of the other half is ignored).
    pub fn insert(&mut self, bit: FilterBit) {
        if let Some(w) = bit
            .word
            .checked_sub(FILTER_HALF_WORDS)
            .and_then(|i| self.0.get_mut(i as usize))
        {
            *w |= bit.mask;
        }
    }

    pub fn is_empty(&self) -> bool {
        self.0.iter().all(|w| *w == 0)
    }

    /// Adds every bit of `other`.
    pub fn union(&mut self, other: &ReplyBits) {
        for (w, o) in self.0.iter_mut().zip(&other.0) {
            *w |= *o;
        }
    }
}

impl FromIterator<FilterBit> for ReplyBits {
    fn from_iter<I: IntoIterator<Item = FilterBit>>(bits: I) -> Self {
        let mut set = Self::default();
        set.extend(bits);
        set
    }
}

impl Extend<FilterBit> for ReplyBits {
    fn extend<I: IntoIterator<Item = FilterBit>>(&mut self, bits: I) {
        for bit in bits {
            self.insert(bit);
        }
    }
}

/// The filter and what its bits stand for.
pub struct Filter<W> {
    words: W,
    /// How many programmed frontends use each frontend bit.
    frontends: HashMap<FilterBit, u32>,
    /// The reply bits the last conntrack GC found in use, and those a sync
    /// set since.
    kept: ReplyBits,
}

impl<W: Words> Filter<W> {
    pub fn new(words: W) -> Self {
        Self {
            words,
            frontends: HashMap::new(),
            kept: ReplyBits::default(),
        }
    }

    pub fn has(&self, bit: FilterBit) -> bool {
        self.words.word(bit.word) & bit.mask != 0
    }

    fn set(&mut self, bit: FilterBit) {
        let w = self.words.word(bit.word);
        if w & bit.mask == 0 {
            self.words.set_word(bit.word, w | bit.mask);
        }
    }

    fn clear(&mut self, bit: FilterBit) {
        let w = self.words.word(bit.word);
        if w & bit.mask != 0 {
            self.words.set_word(bit.word, w & !bit.mask);
        }
    }

    /// Counts the frontends of `programmed` afresh and makes the frontend
    /// half say exactly that (after a failed sync, whose maps were re-read).
    pub fn rebuild_frontends(&mut self, programmed: &Programmed) {
        self.frontends.clear();
        for key in programmed.services.keys() {
            *self.frontends.entry(frontend_bit(key)).or_default() += 1;
        }
        let mut want = vec![0u64; FILTER_HALF_WORDS as usize];
        for b in self.frontends.keys() {
            want[b.word as usize] |= b.mask;
        }
        for (i, w) in want.into_iter().enumerate() {
            if self.words.word(i as u32) != w {
                self.words.set_word(i as u32, w);
            }
        }
    }

    /// At load, before the programs are attached: the frontend half from
    /// the services the maps hold, and a reply bit for every backend and
    /// every conntrack reply source (`replies`), besides those already set.
    pub fn restore(&mut self, programmed: &Programmed, replies: ReplyBits) {
        self.rebuild_frontends(programmed);
        self.kept = replies;
        self.kept
            .extend(programmed.backends.values().map(backend_bit));
        for i in 0..FILTER_HALF_WORDS {
            let w = self.words.word(FILTER_HALF_WORDS + i);
            let want = w | self.kept.word(i);
            if want != w {
                self.words.set_word(FILTER_HALF_WORDS + i, want);
            }
        }
    }

    /// Before a sync's operations: the bits of the frontends and backends it
    /// adds to `current`.
    pub fn before(&mut self, current: &Programmed, ops: &[Op]) {
        for op in ops {
            match op {
                Op::PutService(k, _) if !current.services.contains_key(k) => {
                    let bit = frontend_bit(k);
                    *self.frontends.entry(bit).or_default() += 1;
                    self.set(bit);
                }
                Op::PutBackend(_, b) => {
                    // Counted as in use until the next GC but one, like a
                    // backend the last GC saw.
                    let bit = backend_bit(b);
                    self.set(bit);
                    self.kept.insert(bit);
                }
                _ => {}
            }
        }
    }

    /// After a sync's operations all applied: clears the frontend bits no
    /// remaining frontend uses.
    pub fn after(&mut self, ops: &[Op]) {
        for op in ops {
            if let Op::DelService(k) = op {
                let bit = frontend_bit(k);
                let gone = match self.frontends.get_mut(&bit) {
                    Some(n) if *n > 1 => {
                        *n -= 1;
                        false
                    }
                    _ => true,
                };
                if gone {
                    self.frontends.remove(&bit);
                    self.clear(bit);
                }
            }
        }
    }

    /// After a conntrack GC: `in_use` are the reply bits of the programmed
    /// backends and of the conntrack entries left. Clears the reply bits
    /// that neither this collection nor the last one found in use (nor a
    /// sync set since); returns how many.
    pub fn prune_replies(&mut self, in_use: ReplyBits) -> usize {
        let mut cleared = 0;
        for i in 0..FILTER_HALF_WORDS {
            let w = self.words.word(FILTER_HALF_WORDS + i);
            let keep = w & (in_use.word(i) | self.kept.word(i));
            if keep != w {
                cleared += (w & !keep).count_ones() as usize;
                self.words.set_word(FILTER_HALF_WORDS + i, keep);
            }
        }
        self.kept = in_use;
        cleared
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FilterMapError {
    #[error("map FILTER_V1: {0}")]
    Info(aya::maps::MapError),
    #[error("map FILTER_V1: {entries} entries of {value_size} bytes; this build needs {FILTER_WORDS} of 8")]
    Layout { entries: u32, value_size: u32 },
    #[error("map FILTER_V1: mmap: {0}")]
    Mmap(std::io::Error),
}

/// FILTER_V1 mapped into the agent (it is BPF_F_MMAPABLE): reading and
/// writing a word is a memory access the kernel sees at once, with no
/// syscall per word (the GC scans all of them).
pub struct MappedWords {
    ptr: std::ptr::NonNull<std::sync::atomic::AtomicU64>,
}

// SAFETY: the mapping is plain shared memory, accessed through atomics.
unsafe impl Send for MappedWords {}
// SAFETY: as above.
unsafe impl Sync for MappedWords {}

const FILTER_BYTES: usize = FILTER_WORDS as usize * 8;

impl MappedWords {
    pub fn map(map: &aya::maps::MapData) -> Result<Self, FilterMapError> {
        use std::os::fd::{AsFd, AsRawFd};
        let info = map.info().map_err(FilterMapError::Info)?;
        if info.max_entries() != FILTER_WORDS || info.value_size() != 8 {
            return Err(FilterMapError::Layout {
                entries: info.max_entries(),
                value_size: info.value_size(),
            });
        }
        // SAFETY: a shared mapping of an mmapable array map's fd whose size
        // was checked above; the kernel keeps the map alive while mapped.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                FILTER_BYTES,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                map.fd().as_fd().as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(FilterMapError::Mmap(std::io::Error::last_os_error()));
        }
        let ptr = std::ptr::NonNull::new(ptr.cast()).ok_or_else(|| {
            FilterMapError::Mmap(std::io::Error::other("mmap returned a null pointer"))
        })?;
        Ok(Self { ptr })
    }

    fn at(&self, i: u32) -> &std::sync::atomic::AtomicU64 {
        assert!(i < FILTER_WORDS, "filter word {i} out of range");
        // SAFETY: in bounds of the mapping, which lives as long as self;
        // u64-aligned (the mapping is page-aligned).
        unsafe { &*self.ptr.as_ptr().add(i as usize) }
    }
}

impl Words for MappedWords {
    fn word(&self, i: u32) -> u64 {
        self.at(i).load(std::sync::atomic::Ordering::Acquire)
    }
    fn set_word(&mut self, i: u32, v: u64) {
        self.at(i).store(v, std::sync::atomic::Ordering::Release)
    }
}

impl Drop for MappedWords {
    fn drop(&mut self) {
        // SAFETY: unmapping what map() mapped, once.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), FILTER_BYTES) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lb_common::{
        CtKey, ServiceValue, BACKEND_ACTIVE, NO_MAGLEV_TABLE, PROTO_TCP, SCOPE_EXTERNAL,
    };

    fn filter() -> Filter<Vec<u64>> {
        Filter::new(vec![0; FILTER_WORDS as usize])
    }

    fn key(addr: [u8; 4], port: u16) -> FrontendKey {
        FrontendKey {
            addr: addr.into(),
            port,
            proto: PROTO_TCP,
            scope: SCOPE_EXTERNAL,
        }
    }

    fn value(id: u32) -> ServiceValue {
        ServiceValue {
            id,
            count: 1,
            affinity_timeout: 0,
            maglev_table: NO_MAGLEV_TABLE,
            flags: 0,
            algorithm: 0,
            _pad: 0,
        }
    }

    fn backend(addr: [u8; 4]) -> Backend {
        Backend {
            addr: addr.into(),
            port: 8080,
            proto: PROTO_TCP,
            state: BACKEND_ACTIVE,
        }
    }

    fn with_service(k: FrontendKey) -> Programmed {
        let mut p = Programmed::default();
        p.services.insert(
            k,
            super::super::sync::ProgrammedService {
                value: value(1),
                backend_ids: vec![1],
            },
        );
        p
    }

    #[test]
    fn a_new_frontend_and_backend_are_set_before_the_writes_and_a_removed_frontend_cleared_after() {
        let mut f = filter();
        let k = key([198, 19, 0, 10], 80);
        let b = backend([198, 18, 1, 11]);
        let add = [Op::PutBackend(1, b), Op::PutService(k, Box::new(value(1)))];
        f.before(&Programmed::default(), &add);
        assert!(f.has(frontend_bit(&k)) && f.has(backend_bit(&b)));
        f.after(&add);
        assert!(f.has(frontend_bit(&k)), "cleared after being added");

        // A value change of a programmed frontend counts it once only.
        let change = [Op::PutService(k, Box::new(value(1)))];
        f.before(&with_service(k), &change);
        f.after(&change);
        let del = [Op::DelService(k), Op::DelBackend(1)];
        f.before(&with_service(k), &del);
        assert!(f.has(frontend_bit(&k)), "cleared before the delete");
        f.after(&del);
        assert!(!f.has(frontend_bit(&k)), "a removed frontend keeps its bit");
        assert!(
            f.has(backend_bit(&b)),
            "a sync cleared a reply bit conntrack may still need"
        );
        assert_eq!(f.words.iter().filter(|w| **w != 0).count(), 1);
    }

    #[test]
    fn frontends_sharing_a_bit_keep_it_until_the_last_one_goes() {
        let mut seen = HashMap::new();
        // Scattered addresses and ports (consecutive ones spread evenly).
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let (a, b) = (0..1_000_000)
            .find_map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let k = key((x as u32).to_be_bytes(), (x >> 32) as u16);
                seen.insert(frontend_bit(&k), k).map(|other| (other, k))
            })
            .expect("two frontends on one bit");
        let mut f = filter();
        let add = [
            Op::PutService(a, Box::new(value(1))),
            Op::PutService(b, Box::new(value(2))),
        ];
        f.before(&Programmed::default(), &add);
        f.after(&add);
        let del = [Op::DelService(a)];
        f.after(&del);
        assert!(f.has(frontend_bit(&b)), "the other frontend lost its bit");
        f.after(&[Op::DelService(b)]);
        assert!(!f.has(frontend_bit(&b)));
    }

    #[test]
    fn a_reply_bit_goes_only_after_two_collections_found_it_unused() {
        let mut f = filter();
        let b = backend([198, 18, 1, 11]);
        let bit = backend_bit(&b);
        f.before(&Programmed::default(), &[Op::PutBackend(1, b)]);
        // The backend is removed at once; a flow chosen just before may
        // still create its conntrack entry after the next collection's scan.
        assert_eq!(f.prune_replies(ReplyBits::default()), 0);
        assert!(f.has(bit), "cleared by the first collection after the sync");
        assert_eq!(f.prune_replies(ReplyBits::default()), 1);
        assert!(!f.has(bit));

        // A conntrack reply entry keeps it, for as long as it lasts.
        f.before(&Programmed::default(), &[Op::PutBackend(1, b)]);
        for _ in 0..3 {
            f.prune_replies([bit].into_iter().collect());
            assert!(f.has(bit));
        }
        f.prune_replies(ReplyBits::default());
        assert!(f.has(bit));
        f.prune_replies(ReplyBits::default());
        assert!(!f.has(bit));
    }

    #[test]
    fn restore_sets_what_the_maps_hold_and_drops_stale_frontend_bits() {
        let mut f = filter();
        let stale = key([198, 19, 9, 9], 443);
        f.before(
            &Programmed::default(),
            &[Op::PutService(stale, Box::new(value(9)))],
        );
        let k = key([198, 19, 0, 10], 80);
        let mut p = with_service(k);
        let b = backend([198, 18, 1, 11]);
        p.backends.insert(1, b);
        let ct_reply = CtKey {
            saddr: [198, 18, 1, 99],
            daddr: [198, 18, 200, 2],
            sport: 8443,
            dport: 40000,
            proto: PROTO_TCP,
            _pad: [0; 3],
        };
        f.restore(&p, [reply_bit(&ct_reply)].into_iter().collect());
        assert!(f.has(frontend_bit(&k)));
        assert!(
            !f.has(frontend_bit(&stale)),
            "a frontend the maps lack kept its bit"
        );
        assert!(f.has(backend_bit(&b)));
        assert!(f.has(reply_bit(&ct_reply)));
        // Both survive the first collection even if unused by then.
        f.prune_replies(ReplyBits::default());
        assert!(f.has(backend_bit(&b)) && f.has(reply_bit(&ct_reply)));
    }
}
