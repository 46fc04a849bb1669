//! The incremental checksum update (RFC 1624) agrees with a checksum
//! computed from scratch over the changed bytes.
use lb_common::{csum_replace2, csum_replace4};

fn full(bytes: &[u8]) -> u16 {
    let mut sum: u32 = bytes
        .chunks(2)
        .map(|c| u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]) as u32)
        .sum();
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An IPv4 header (checksum field zero) with the given addresses.
fn header(src: [u8; 4], dst: [u8; 4]) -> Vec<u8> {
    let mut h = vec![0x45, 0, 0, 60, 0x12, 0x34, 0x40, 0, 64, 6, 0, 0];
    h.extend_from_slice(&src);
    h.extend_from_slice(&dst);
    h
}

#[test]
fn replacing_an_address_matches_a_full_recomputation() {
    let cases = [
        ([198, 18, 1, 2], [198, 19, 0, 10], [198, 18, 1, 11]),
        ([0, 0, 0, 0], [255, 255, 255, 255], [0, 0, 0, 0]),
        ([198, 18, 100, 100], [198, 18, 100, 11], [198, 18, 12, 3]),
        ([1, 2, 3, 4], [0xff, 0xfe, 0, 1], [0, 1, 0xff, 0xfe]),
    ];
    for (src, old_dst, new_dst) in cases {
        let before = full(&header(src, old_dst));
        let after = full(&header(src, new_dst));
        assert_eq!(
            csum_replace4(before, old_dst, new_dst),
            after,
            "{src:?} {old_dst:?} -> {new_dst:?}"
        );
    }
}

#[test]
fn replacing_a_port_matches_a_full_recomputation() {
    for (old, new) in [(80u16, 8080u16), (0, 65535), (65535, 0), (30080, 61000)] {
        let mut seg = vec![0x9c, 0x40, 0, 0, 0xde, 0xad, 0xbe, 0xef];
        seg[2..4].copy_from_slice(&old.to_be_bytes());
        let before = full(&seg);
        seg[2..4].copy_from_slice(&new.to_be_bytes());
        assert_eq!(
            csum_replace2(before, old, new),
            full(&seg),
            "{old} -> {new}"
        );
    }
}
