//! Comparing addresses of either family without a byte-wise compare: a
//! 16-byte array compare would become a call to bcmp in BPF.
pub trait Addr: Copy {
    fn same(&self, other: &Self) -> bool;
    fn is_zero(&self) -> bool;
    /// A checksum over this address, updated for `old` becoming `new`.
    fn csum_replace(check: u16, old: Self, new: Self) -> u16;
}

impl Addr for [u8; 4] {
    #[inline(always)]
    fn same(&self, other: &Self) -> bool {
        u32::from_ne_bytes(*self) == u32::from_ne_bytes(*other)
    }

    #[inline(always)]
    fn is_zero(&self) -> bool {
        u32::from_ne_bytes(*self) == 0
    }

    #[inline(always)]
    fn csum_replace(check: u16, old: Self, new: Self) -> u16 {
        lb_common::csum_replace4(check, old, new)
    }
}

/// The four words of an IPv6 address.
#[inline(always)]
pub fn words6(a: &[u8; 16]) -> [u32; 4] {
    [
        u32::from_ne_bytes([a[0], a[1], a[2], a[3]]),
        u32::from_ne_bytes([a[4], a[5], a[6], a[7]]),
        u32::from_ne_bytes([a[8], a[9], a[10], a[11]]),
        u32::from_ne_bytes([a[12], a[13], a[14], a[15]]),
    ]
}

/// An IPv6 address from its four words (the inverse of words6).
#[inline(always)]
pub fn bytes6(w: [u32; 4]) -> [u8; 16] {
    let mut b = [0u8; 16];
    let mut i = 0;
    while i < 4 {
        let [b0, b1, b2, b3] = w[i].to_ne_bytes();
        (b[i * 4], b[i * 4 + 1], b[i * 4 + 2], b[i * 4 + 3]) = (b0, b1, b2, b3);
        i += 1;
    }
    b
}

impl Addr for [u8; 16] {
    #[inline(always)]
    fn same(&self, other: &Self) -> bool {
        let (a, b) = (words6(self), words6(other));
        (a[0] ^ b[0]) | (a[1] ^ b[1]) | (a[2] ^ b[2]) | (a[3] ^ b[3]) == 0
    }

    #[inline(always)]
    fn is_zero(&self) -> bool {
        let a = words6(self);
        a[0] | a[1] | a[2] | a[3] == 0
    }

    #[inline(always)]
    fn csum_replace(check: u16, old: Self, new: Self) -> u16 {
        lb_common::csum_replace16(check, old, new)
    }
}
