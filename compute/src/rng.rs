//! The seeded random number generator used everywhere results must be reproducible:
//! dataset generation, splits, initialisation and shuffling.
//!
//! xoshiro256** seeded through SplitMix64. Its whole state is four `u64`s, so a checkpoint
//! can store it exactly and a resumed run draws the same numbers as one that never stopped.
//! The stream of numbers for a seed is part of this crate's contract: changing it changes
//! every generated dataset, so a test pins the first values.

use serde::{Deserialize, Serialize};

/// A small, fast, seedable generator whose state can be saved and restored exactly.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rng {
    state: [u64; 4],
}

fn splitmix64(x: &mut u64) -> u64 {
    *x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *x;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl Rng {
    /// A generator for `seed`. Equal seeds give equal streams.
    pub fn new(seed: u64) -> Self {
        let mut x = seed;
        let state = [
            splitmix64(&mut x),
            splitmix64(&mut x),
            splitmix64(&mut x),
            splitmix64(&mut x),
        ];
        Self { state }
    }

    /// An independent generator for one purpose (`stream`) derived from `seed`, so that, for
    /// example, shuffling does not change when initialisation draws more numbers.
    pub fn derive(seed: u64, stream: u64) -> Self {
        let mut x = seed ^ stream.wrapping_mul(0xD1B5_4A32_D192_ED03);
        Self::new(splitmix64(&mut x))
    }

    /// The state, to save.
    pub fn state(&self) -> [u64; 4] {
        self.state
    }

    /// A generator continuing from a saved state. The all-zero state (which xoshiro never
    /// leaves) is replaced by the state of seed 0.
    pub fn from_state(state: [u64; 4]) -> Self {
        if state == [0; 4] {
            return Self::new(0);
        }
        Self { state }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let s = &mut self.state;
        let result = s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        result
    }

    /// Uniform in `[0, 1)`, 53 bits of precision.
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in `[low, high)`.
    pub fn range(&mut self, low: f64, high: f64) -> f64 {
        low + (high - low) * self.uniform()
    }

    /// Log-uniform in `[low, high)` (both positive): every order of magnitude equally likely.
    pub fn log_range(&mut self, low: f64, high: f64) -> f64 {
        self.range(low.ln(), high.ln()).exp()
    }

    /// Standard normal (Box–Muller; one draw of two uniforms per value, so the state alone
    /// says where the stream is).
    pub fn normal(&mut self) -> f64 {
        let u1 = 1.0 - self.uniform(); // (0, 1]: ln is finite
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }

    /// Uniform integer in `[0, n)`; `n` must be positive. Unbiased (rejection sampling).
    pub fn below(&mut self, n: u64) -> u64 {
        debug_assert!(n > 0);
        let zone = u64::MAX - (u64::MAX % n);
        loop {
            let x = self.next_u64();
            if x < zone {
                return x % n;
            }
        }
    }

    /// Shuffles `items` in place (Fisher–Yates).
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below(i as u64 + 1) as usize;
            items.swap(i, j);
        }
    }

    /// The state as 64 hex digits, for text metadata.
    pub fn to_hex(&self) -> String {
        self.state.iter().map(|w| format!("{w:016x}")).collect()
    }

    /// The inverse of [`Rng::to_hex`]; `None` when `text` is not 64 hex digits.
    pub fn from_hex(text: &str) -> Option<Self> {
        if text.len() != 64 || !text.is_ascii() {
            return None;
        }
        let mut state = [0u64; 4];
        for (i, word) in state.iter_mut().enumerate() {
            *word = u64::from_str_radix(&text[i * 16..(i + 1) * 16], 16).ok()?;
        }
        Some(Self::from_state(state))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_stream_and_state_round_trips() {
        let mut a = Rng::new(7);
        let mut b = Rng::new(7);
        for _ in 0..10 {
            assert_eq!(a.next_u64(), b.next_u64());
        }
        let saved = a.to_hex();
        let x: Vec<u64> = (0..5).map(|_| a.next_u64()).collect();
        let mut c = Rng::from_hex(&saved).unwrap();
        let y: Vec<u64> = (0..5).map(|_| c.next_u64()).collect();
        assert_eq!(x, y);
        assert_ne!(Rng::new(1).next_u64(), Rng::new(2).next_u64());
        assert!(Rng::from_hex("zz").is_none());
    }

    #[test]
    fn distributions_are_in_range() {
        let mut r = Rng::new(3);
        let mut sum = 0.0;
        for _ in 0..10_000 {
            let u = r.uniform();
            assert!((0.0..1.0).contains(&u));
            sum += r.normal();
            assert!(r.below(7) < 7);
        }
        assert!((sum / 10_000.0).abs() < 0.05);
        let mut v: Vec<u32> = (0..100).collect();
        r.shuffle(&mut v);
        let mut sorted = v.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..100).collect::<Vec<_>>());
        assert_ne!(v, sorted);
    }

    #[test]
    fn stream_is_pinned() {
        // Changing the generator changes every dataset made from a seed; this must be a
        // deliberate decision.
        // The value is xoshiro256**'s first output for SplitMix64(42), computed independently.
        assert_eq!(Rng::new(42).next_u64(), 0x1578_0b2e_0c2e_c716);
    }
}
