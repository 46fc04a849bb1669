//! The no-service filter: a bitmap the kernel checks before any hash lookup,
//! so that a packet that is neither for a frontend nor from a backend (most
//! pod-to-pod and host traffic) costs two array reads instead of a conntrack
//! and one or two service lookups.
//!
//! FILTER_V1 is an array of u64 words in two halves: the first holds a bit
//! per frontend (address, port, protocol), set for every service entry; the
//! second a bit per reply source (backend address, port, protocol), set for
//! every backend and kept while conntrack holds replies from it. A bit may be
//! set with nothing behind it (a hash collision or a removed entry): the
//! packet then takes the full path, which decides as before. A bit must never
//! be clear while something uses it; the agent's ordering guarantees that
//! (dataplane/filter.rs).

/// Bits per half, as a power of two: 2^24 = 16 Mi bits (2 MiB) per half,
/// so that 100k services x 10 endpoints set about 6% of the reply half
/// (a packet for no service whose bits collide takes the full path).
pub const FILTER_BITS_LOG2: u32 = 24;
/// Words per half.
pub const FILTER_HALF_WORDS: u32 = 1 << (FILTER_BITS_LOG2 - 6);
/// Words in the map: the frontend half, then the reply half.
pub const FILTER_WORDS: u32 = 2 * FILTER_HALF_WORDS;
/// The map's name (pinned like the others).
pub const MAP_FILTER: &str = "FILTER_V1";

/// Which half a bit lives in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Half {
    /// Destinations that are frontends.
    Frontend = 0,
    /// Sources that are (or were) backends.
    Reply = 1,
}

/// A bit of the filter: the word it is in and its mask.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FilterBit {
    pub word: u32,
    pub mask: u64,
}

/// The bit of (`addr`, `port`, `proto`) in `half`: a multiplicative hash of
/// the 56 bits, its top FILTER_BITS_LOG2 bits picking the bit.
#[inline(always)]
pub fn filter_bit(half: Half, addr: [u8; 4], port: u16, proto: u8) -> FilterBit {
    let x = ((u32::from_be_bytes(addr) as u64) << 24) | ((port as u64) << 8) | proto as u64;
    let h = (x.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> (64 - FILTER_BITS_LOG2)) as u32;
    FilterBit {
        word: half as u32 * FILTER_HALF_WORDS + (h >> 6),
        mask: 1u64 << (h & 63),
    }
}

/// An IPv6 address folded to 32 bits for `filter_bit` (the XOR of its four
/// words): IPv6 frontends and reply sources share the filter with IPv4
/// ones; a collision only sends a packet down the full path.
#[inline(always)]
pub fn fold6(addr: [u8; 16]) -> [u8; 4] {
    let mut out = [0u8; 4];
    let mut i = 0;
    while i < 16 {
        out[i % 4] ^= addr[i];
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;

    #[test]
    fn bits_stay_in_their_half() {
        for i in 0..10_000u32 {
            let addr = (0xc612_0000u32 + i * 7919).to_be_bytes();
            let f = filter_bit(Half::Frontend, addr, i as u16, 6);
            let r = filter_bit(Half::Reply, addr, i as u16, 6);
            assert!(f.word < FILTER_HALF_WORDS);
            assert!((FILTER_HALF_WORDS..FILTER_WORDS).contains(&r.word));
            assert_eq!((f.word + FILTER_HALF_WORDS, f.mask), (r.word, r.mask));
            assert_eq!(f.mask.count_ones(), 1);
        }
    }

    #[test]
    fn nearby_frontends_spread_over_the_bits() {
        // 10k consecutive ClusterIPs on one port: few share a bit.
        let mut bits = std::collections::BTreeSet::new();
        for i in 0..10_000u32 {
            let addr = (0xc613_0000u32 + i).to_be_bytes();
            bits.insert(filter_bit(Half::Frontend, addr, 80, 6));
        }
        assert!(bits.len() > 9_950, "{} distinct bits", bits.len());
        // Port and protocol change the bit too.
        let a = [198, 19, 0, 10];
        assert_ne!(
            filter_bit(Half::Frontend, a, 80, 6),
            filter_bit(Half::Frontend, a, 81, 6)
        );
        assert_ne!(
            filter_bit(Half::Frontend, a, 80, 6),
            filter_bit(Half::Frontend, a, 80, 17)
        );
    }
}
