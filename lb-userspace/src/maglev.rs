//! Maglev consistent hashing (Eisenbud et al., NSDI 2016, section 3.4): a
//! lookup table of M entries (M prime) filled by every backend in turn along
//! its own permutation. Each backend gets close to M/N entries, and removing
//! one backend moves little more than its own entries. Pure; the table holds
//! indices into the backend list, which must be in the same order on every
//! node (translate sorts backends), and backends are hashed by address, port
//! and protocol, never by node-local ids, so every node builds the same table.
use crate::frontend::Backend;

/// Whether `n` is prime (trial division; M is at most a few million).
pub fn is_prime(n: u32) -> bool {
    if n < 2 {
        return false;
    }
    let n = n as u64;
    (2..)
        .take_while(|d| d * d <= n)
        .all(|d| !n.is_multiple_of(d))
}

fn hash(backend: &Backend, seed: u64) -> u64 {
    // FNV-1a over the identity, then splitmix64's finaliser to decorrelate seeds.
    let mut h = 0xcbf2_9ce4_8422_2325u64 ^ seed;
    // An IPv4 address hashes as its 4 bytes, as before IPv6 existed, so
    // that tables stay the same across an upgrade.
    let addr = match backend.addr {
        std::net::IpAddr::V4(a) => a.octets().to_vec(),
        std::net::IpAddr::V6(a) => a.octets().to_vec(),
    };
    for b in addr
        .iter()
        .chain(&backend.port.to_be_bytes())
        .chain(&[backend.proto])
    {
        h ^= *b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// The lookup table: `m` entries, each an index into `backends`. Empty when
/// there are no backends. `m` must be prime (the permutations rely on it).
pub fn table(backends: &[Backend], m: u32) -> Vec<u32> {
    let n = backends.len();
    if n == 0 || m < 2 {
        return Vec::new();
    }
    let m64 = m as u64;
    let offset: Vec<u64> = backends
        .iter()
        .map(|b| hash(b, 0x5eed_0001) % m64)
        .collect();
    let skip: Vec<u64> = backends
        .iter()
        .map(|b| hash(b, 0x5eed_0002) % (m64 - 1) + 1)
        .collect();
    let mut next = vec![0u64; n];
    let mut entry = vec![u32::MAX; m as usize];
    let mut filled = 0usize;
    loop {
        for i in 0..n {
            let mut c = (offset[i] + next[i] * skip[i]) % m64;
            while entry[c as usize] != u32::MAX {
                next[i] += 1;
                c = (offset[i] + next[i] * skip[i]) % m64;
            }
            entry[c as usize] = i as u32;
            next[i] += 1;
            filled += 1;
            if filled == m as usize {
                return entry;
            }
        }
    }
}
