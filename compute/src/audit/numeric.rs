//! Streaming statistics of one numeric column in bounded memory.
//!
//! Min, max, mean and variance are exact and streaming (Welford's update). Quartiles need the
//! values themselves: up to `capacity` of them are kept, and past that a uniform reservoir
//! sample of `capacity` values (Vitter's algorithm R) stands in for the column. The random
//! choices come from a fixed-seed generator, so an audit is reproducible.

use super::NumericSummary;

/// The 1.5 of Tukey's fences.
const FENCE_IQR_MULTIPLE: f64 = 1.5;

pub(crate) struct NumericAccumulator {
    count: u64,
    non_finite: u64,
    min: f64,
    max: f64,
    mean: f64,
    /// Sum of squared differences from the running mean.
    m2: f64,
    sample: Vec<f64>,
    capacity: usize,
    rng: SplitMix64,
}

impl NumericAccumulator {
    /// An empty accumulator keeping at most `capacity` values (at least 1), its random
    /// choices seeded with `seed`.
    pub(crate) fn new(capacity: usize, seed: u64) -> Self {
        Self {
            count: 0,
            non_finite: 0,
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
            mean: 0.0,
            m2: 0.0,
            sample: Vec::new(),
            capacity: capacity.max(1),
            rng: SplitMix64(seed),
        }
    }

    pub(crate) fn push(&mut self, x: f64) {
        if !x.is_finite() {
            self.non_finite += 1;
            return;
        }
        self.count += 1;
        self.min = self.min.min(x);
        self.max = self.max.max(x);
        let delta = x - self.mean;
        self.mean += delta / self.count as f64;
        self.m2 += delta * (x - self.mean);

        if self.sample.len() < self.capacity {
            self.sample.push(x);
        } else {
            // Keep the new value with probability capacity / count, in a uniform slot.
            let slot = self.rng.below(self.count);
            if let Some(kept) = self.sample.get_mut(slot as usize) {
                *kept = x;
            }
        }
    }

    /// The summary, or `None` when no finite value was pushed.
    pub(crate) fn finish(mut self) -> Option<NumericSummary> {
        if self.count == 0 {
            return None;
        }
        self.sample.sort_unstable_by(f64::total_cmp);
        let sample = &self.sample;
        let q1 = quantile(sample, 0.25);
        let median = quantile(sample, 0.5);
        let q3 = quantile(sample, 0.75);
        let iqr = q3 - q1;
        let lower_fence = q1 - FENCE_IQR_MULTIPLE * iqr;
        let upper_fence = q3 + FENCE_IQR_MULTIPLE * iqr;
        // The sample is sorted: outliers are a prefix and a suffix.
        let below = sample.partition_point(|&x| x < lower_fence);
        let above = sample.len() - sample.partition_point(|&x| x <= upper_fence);
        let in_sample = (below + above) as u64;
        let exact = sample.len() as u64 == self.count;
        let outliers = if exact {
            in_sample
        } else {
            (in_sample as f64 * self.count as f64 / sample.len() as f64).round() as u64
        };
        let std = if self.count > 1 {
            (self.m2 / (self.count - 1) as f64).sqrt()
        } else {
            0.0
        };
        Some(NumericSummary {
            count: self.count,
            non_finite: self.non_finite,
            min: self.min,
            max: self.max,
            mean: self.mean,
            std,
            q1,
            median,
            q3,
            lower_fence,
            upper_fence,
            outliers,
            exact,
            sample_size: sample.len() as u64,
        })
    }
}

/// The `p` quantile of sorted, non-empty `values`, interpolating linearly between order
/// statistics.
fn quantile(values: &[f64], p: f64) -> f64 {
    let h = (values.len() - 1) as f64 * p;
    let lo = h.floor() as usize;
    let hi = (lo + 1).min(values.len() - 1);
    values[lo] + (h - lo as f64) * (values[hi] - values[lo])
}

/// A small, fast, seedable generator (Steele, Lea and Flood's SplitMix64). Statistical
/// quality is ample for choosing sample slots; it is not for anything secret.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0), by multiply-and-shift.
    fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next()) * u128::from(n)) >> 64) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(values: &[f64], capacity: usize) -> NumericSummary {
        let mut acc = NumericAccumulator::new(capacity, 7);
        for &v in values {
            acc.push(v);
        }
        acc.finish().unwrap()
    }

    #[test]
    fn quartiles_match_numpy() {
        // numpy.percentile([1..=10], [25, 50, 75]) == [3.25, 5.5, 7.75]
        let values: Vec<f64> = (1..=10).map(f64::from).collect();
        let s = summary(&values, 100);
        assert_eq!((s.q1, s.median, s.q3), (3.25, 5.5, 7.75));
        assert_eq!((s.min, s.max, s.mean), (1.0, 10.0, 5.5));
        // numpy.std(range(1, 11), ddof=1)
        assert!((s.std - 3.027_650_354_097_491_7).abs() < 1e-12);
        assert!(s.exact);
        assert_eq!(s.outliers, 0);
    }

    #[test]
    fn planted_outlier_and_non_finite_values() {
        let mut values = vec![10.0, 11.0, 12.0, 13.0, 14.0, 1000.0, -1000.0];
        values.extend([f64::INFINITY, f64::NAN]);
        let s = summary(&values, 100);
        assert_eq!(s.count, 7);
        assert_eq!(s.non_finite, 2);
        assert_eq!(s.outliers, 2);
        assert_eq!((s.min, s.max), (-1000.0, 1000.0));
    }

    #[test]
    fn a_single_value() {
        let s = summary(&[4.0], 1);
        assert_eq!(
            (s.q1, s.median, s.q3, s.std, s.outliers),
            (4.0, 4.0, 4.0, 0.0, 0)
        );
        assert!(NumericAccumulator::new(0, 1).finish().is_none());
    }

    #[test]
    fn sampled_quartiles_are_close_and_flagged() {
        // 0..100_000 with 1% planted outliers, summarised from a 5,000-value sample.
        let values: Vec<f64> = (0..100_000)
            .map(|i| {
                if i % 100 == 0 {
                    1e9
                } else {
                    f64::from(i % 1000)
                }
            })
            .collect();
        let s = summary(&values, 5_000);
        assert!(!s.exact);
        assert_eq!(s.sample_size, 5_000);
        assert_eq!(s.count, 100_000);
        assert!((s.median - 500.0).abs() < 25.0, "{}", s.median);
        assert!(
            (s.outliers as f64 - 1_000.0).abs() < 300.0,
            "{}",
            s.outliers
        );
        assert_eq!(s.max, 1e9);
    }
}
