//! Maglev table properties from the paper (Eisenbud et al., NSDI 2016).
use std::collections::BTreeMap;

use lb_common::{BACKEND_ACTIVE, PROTO_TCP};
use weir::maglev::{is_prime, table};
use weir::translate::Backend;

fn backends(n: u8) -> Vec<Backend> {
    (0..n)
        .map(|i| Backend {
            addr: [198, 18, 10 + i / 200, 1 + i % 200].into(),
            port: 8080,
            proto: PROTO_TCP,
            state: BACKEND_ACTIVE,
        })
        .collect()
}

fn shares(t: &[u32]) -> BTreeMap<u32, usize> {
    let mut m = BTreeMap::new();
    for b in t {
        *m.entry(*b).or_default() += 1;
    }
    m
}

#[test]
fn primes() {
    assert!(is_prime(13) && is_prime(16_381) && is_prime(65_521));
    assert!(!is_prime(1) && !is_prime(16_383) && !is_prime(65_536));
}

#[test]
fn every_backend_owns_close_to_m_over_n_entries() {
    let m = 16_381u32;
    for n in [3u8, 10, 100] {
        let t = table(&backends(n), m);
        assert_eq!(t.len(), m as usize);
        let ideal = m as f64 / n as f64;
        let s = shares(&t);
        assert_eq!(s.len(), n as usize, "every backend appears");
        for (b, count) in s {
            let off = (count as f64 - ideal).abs() / ideal;
            assert!(
                off < 0.10,
                "n={n}: backend {b} owns {count} entries, ideal {ideal:.0}"
            );
        }
    }
}

#[test]
fn removing_one_of_n_backends_moves_about_one_nth_of_the_table() {
    let m = 16_381u32;
    let all = backends(10);
    let before = table(&all, m);
    let removed = 4usize;
    let rest: Vec<Backend> = all
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != removed)
        .map(|(_, b)| *b)
        .collect();
    // Indices in `rest` -> indices in `all`, to compare backend identities.
    let after: Vec<u32> = table(&rest, m)
        .into_iter()
        .map(|i| if (i as usize) < removed { i } else { i + 1 })
        .collect();
    let moved = before.iter().zip(&after).filter(|(a, b)| a != b).count();
    let owned_by_removed = before.iter().filter(|b| **b as usize == removed).count();
    // The removed backend's own entries must move; little else should.
    let moved_from_survivors = moved - owned_by_removed;
    assert!(
        (moved as f64) < m as f64 * (1.0 / 10.0 + 0.05),
        "{moved} of {m} entries moved (about 1/10 expected)"
    );
    assert!(
        (moved_from_survivors as f64) < (m as usize - owned_by_removed) as f64 * 0.05,
        "{moved_from_survivors} entries of surviving backends moved"
    );
}

#[test]
fn the_table_depends_only_on_backend_identities_and_order() {
    let b = backends(5);
    // Another node sees the same endpoints, some terminating: the same table,
    // because only address, port and protocol are hashed.
    let other_node: Vec<Backend> = b
        .iter()
        .enumerate()
        .map(|(i, x)| Backend {
            state: (i % 2) as u8,
            ..*x
        })
        .collect();
    assert_eq!(table(&b, 251), table(&other_node, 251));
    // A different port is a different backend: the table changes.
    let moved: Vec<Backend> = b.iter().map(|x| Backend { port: 9090, ..*x }).collect();
    assert_ne!(table(&b, 251), table(&moved, 251));
    assert!(table(&[], 251).is_empty());
}
