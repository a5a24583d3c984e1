//! When a failed attempt is tried again.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::id::JobId;

/// Exponential backoff with jitter: the n-th retry waits `base * 2^(n-1)`, capped at `max`,
/// less a random share of up to `jitter` of that. The "random" share is a hash of the job id
/// and the attempt number, so the core stays deterministic while retries of many jobs that
/// failed together still spread out.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct RetryPolicy {
    /// The wait before the first retry.
    pub base: Duration,
    /// The longest wait.
    pub max: Duration,
    /// Share of the wait that is randomised, from 0.0 (none) to 1.0 (all of it).
    pub jitter: f64,
    /// Attempts a job may lose to the platform (a lost worker, a lease never acknowledged,
    /// Nexa Forge failing) besides its own `max_attempts`: those are not the job's failures
    /// and do not spend its attempts, but a job is not tried forever either.
    #[serde(default = "default_max_recoveries")]
    pub max_recoveries: u32,
}

/// [`RetryPolicy::max_recoveries`] by default.
pub const DEFAULT_MAX_RECOVERIES: u32 = 10;

fn default_max_recoveries() -> u32 {
    DEFAULT_MAX_RECOVERIES
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            base: Duration::from_secs(2),
            max: Duration::from_secs(300),
            jitter: 0.5,
            max_recoveries: DEFAULT_MAX_RECOVERIES,
        }
    }
}

impl RetryPolicy {
    /// The wait after attempt number `attempt` (1-based) of `job` failed.
    pub fn delay(&self, job: JobId, attempt: u32) -> Duration {
        let doublings = attempt.saturating_sub(1).min(32);
        let full = self
            .base
            .checked_mul(1u32 << doublings.min(31))
            .unwrap_or(self.max)
            .min(self.max);
        let unit = splitmix64(job.0 ^ (u64::from(attempt) << 48)) as f64 / u64::MAX as f64;
        full.mul_f64(1.0 - self.jitter.clamp(0.0, 1.0) * unit)
    }
}

/// A well-mixed 64-bit hash (the SplitMix64 finaliser).
fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_and_stay_within_bounds() {
        let p = RetryPolicy {
            base: Duration::from_secs(1),
            max: Duration::from_secs(60),
            jitter: 0.5,
            ..RetryPolicy::default()
        };
        for job in 1..200 {
            for attempt in 1..40 {
                let full = Duration::from_secs(1u64 << (attempt - 1).min(20)).min(p.max);
                let d = p.delay(JobId(job), attempt);
                assert!(
                    d <= full && d >= full / 2,
                    "job {job} attempt {attempt}: {d:?}"
                );
            }
        }
    }

    #[test]
    fn jitter_spreads_jobs_that_failed_together() {
        let p = RetryPolicy::default();
        let delays: std::collections::BTreeSet<_> = (1..50).map(|j| p.delay(JobId(j), 1)).collect();
        assert!(delays.len() > 40);
        let none = RetryPolicy { jitter: 0.0, ..p };
        assert_eq!(none.delay(JobId(1), 3), Duration::from_secs(8));
    }
}
