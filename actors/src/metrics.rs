//! Counters the control plane keeps in memory for its operators (exported by the HTTP API as
//! Prometheus text). They start from zero with each process, as Prometheus expects.

use std::sync::atomic::{AtomicU64, Ordering};

use nexa_runtime::{Job, JobState};

/// Upper bounds (seconds) of the dispatch-latency histogram's buckets.
pub const DISPATCH_BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0, 60.0, 600.0,
];

/// What the control plane counts.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Per bucket of [`DISPATCH_BUCKETS`], how many leases took at most that long; the last
    /// slot counts the slower ones.
    dispatch_buckets: [AtomicU64; DISPATCH_BUCKETS.len() + 1],
    dispatch_count: AtomicU64,
    dispatch_sum_micros: AtomicU64,
    leases_expired: AtomicU64,
}

/// A snapshot of the dispatch-latency histogram.
#[derive(Debug, Clone, PartialEq)]
pub struct Histogram {
    /// Cumulative counts per bucket bound of [`DISPATCH_BUCKETS`], then `+Inf`.
    pub cumulative: Vec<u64>,
    /// How many were observed.
    pub count: u64,
    /// Their sum, in seconds.
    pub sum_seconds: f64,
}

impl Metrics {
    /// Records the wait of a job just leased: from when it was (last) queued to its lease.
    pub fn record_dispatch(&self, job: &Job) {
        let Some(attempt) = job.attempts.last() else {
            return;
        };
        let queued_at = job
            .events
            .iter()
            .rev()
            .find(|e| e.to == JobState::Queued && e.at <= attempt.leased_at)
            .map_or(job.submitted_at, |e| e.at);
        let waited = attempt.leased_at.saturating_since(queued_at);
        let seconds = waited.as_secs_f64();
        let slot = DISPATCH_BUCKETS
            .iter()
            .position(|&bound| seconds <= bound)
            .unwrap_or(DISPATCH_BUCKETS.len());
        self.dispatch_buckets[slot].fetch_add(1, Ordering::Relaxed);
        self.dispatch_count.fetch_add(1, Ordering::Relaxed);
        self.dispatch_sum_micros.fetch_add(
            u64::try_from(waited.as_micros()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    /// Counts leases that ran out without a heartbeat.
    pub fn record_leases_expired(&self, n: u64) {
        self.leases_expired.fetch_add(n, Ordering::Relaxed);
    }

    /// Leases that ran out since the control plane started.
    pub fn leases_expired(&self) -> u64 {
        self.leases_expired.load(Ordering::Relaxed)
    }

    /// The dispatch-latency histogram as it is now.
    pub fn dispatch_latency(&self) -> Histogram {
        let mut running = 0;
        let cumulative = self
            .dispatch_buckets
            .iter()
            .map(|b| {
                running += b.load(Ordering::Relaxed);
                running
            })
            .collect();
        Histogram {
            cumulative,
            count: self.dispatch_count.load(Ordering::Relaxed),
            sum_seconds: self.dispatch_sum_micros.load(Ordering::Relaxed) as f64 / 1e6,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use nexa_runtime::{
        Epoch, GenerateParams, JobId, JobParams, JobSpec, RetryPolicy, Timestamp, Transition,
        WorkerId,
    };

    use super::*;

    fn leased_after(wait: Duration) -> Job {
        let spec = JobSpec::new(JobParams::Generate(GenerateParams::new("physics", 10)));
        let t0 = Timestamp::from_millis(1_000_000);
        let mut job = Job::new(JobId(1), spec, true, t0);
        let at = t0.saturating_add(wait);
        job.apply(
            Transition::Lease {
                worker: WorkerId::new("w").unwrap(),
                epoch: Epoch(1),
                ttl: Duration::from_secs(5),
            },
            at,
            &RetryPolicy::default(),
        )
        .unwrap();
        job
    }

    #[test]
    fn dispatch_latency_lands_in_its_bucket_and_the_sum() {
        let metrics = Metrics::default();
        metrics.record_dispatch(&leased_after(Duration::from_millis(3)));
        metrics.record_dispatch(&leased_after(Duration::from_millis(3)));
        metrics.record_dispatch(&leased_after(Duration::from_secs(2)));
        metrics.record_dispatch(&leased_after(Duration::from_secs(3600)));
        let h = metrics.dispatch_latency();
        assert_eq!(h.count, 4);
        // 3 ms is above 2.5 ms and within 5 ms.
        assert_eq!(h.cumulative[1], 0);
        assert_eq!(h.cumulative[2], 2);
        // 2 s is within 2.5 s; an hour is above the last bound.
        assert_eq!(h.cumulative[10], 3);
        assert_eq!(h.cumulative[DISPATCH_BUCKETS.len() - 1], 3);
        assert_eq!(h.cumulative[DISPATCH_BUCKETS.len()], 4);
        assert!((h.sum_seconds - 3602.006).abs() < 1e-6);
    }
}
