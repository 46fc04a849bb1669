//! Helpers shared by the property tests of this crate.

/// xorshift64*: a fixed seed, so a failure is reproducible.
pub struct Rng(pub u64);

impl Rng {
    pub fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
    }

    /// True `percent` times in 100.
    #[allow(dead_code)] // not every test crate that includes this uses it
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}
