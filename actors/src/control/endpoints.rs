//! The replicas that serve models, as their workers' heartbeats tell of them, and the choice
//! of one for each request to an endpoint's stable URL.
//!
//! A `deploy` job's replica says its URL in every heartbeat once its smoke test has passed;
//! a replica not heard from lately, or whose job is being cancelled, is not routed to. It is
//! kept in memory only: after a restart of the control plane, the next heartbeats tell again.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use nexa_runtime::{JobId, WorkerId};

/// A replica heard from: where it serves, under which endpoint name, on which worker.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Replica {
    /// The deploy job.
    pub job: JobId,
    /// The endpoint it serves.
    pub endpoint: String,
    /// Its worker.
    pub worker: WorkerId,
    /// Its inference server.
    pub url: String,
}

struct Seen {
    replica: Replica,
    at: Instant,
}

/// The replicas of every endpoint.
#[derive(Default)]
pub(crate) struct Endpoints {
    replicas: Mutex<HashMap<JobId, Seen>>,
    next: AtomicUsize,
}

/// A replica not heard from for this long is not routed to (its worker heartbeats every
/// 0.5 s; the job's lease is about to run out).
pub(crate) const FRESH: Duration = Duration::from_secs(3);

impl Endpoints {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<JobId, Seen>> {
        self.replicas.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `replica` is ready, as its worker just said.
    pub(crate) fn heard(&self, replica: Replica) {
        let mut replicas = self.lock();
        let now = Instant::now();
        replicas.retain(|_, s| now.duration_since(s.at) < FRESH * 20);
        replicas.insert(replica.job, Seen { replica, at: now });
    }

    /// Whether `job` is known to serve (and so its endpoint name need not be looked up).
    pub(crate) fn knows(&self, job: JobId, url: &str) -> bool {
        self.lock().get(&job).is_some_and(|s| s.replica.url == url)
    }

    /// Refreshes `job`'s replica, when it is known at `url`.
    pub(crate) fn refresh(&self, job: JobId) {
        if let Some(s) = self.lock().get_mut(&job) {
            s.at = Instant::now();
        }
    }

    /// `job` serves no more (not ready, cancelled, or its lease is gone).
    pub(crate) fn forget(&self, job: JobId) {
        self.lock().remove(&job);
    }

    /// The ready replicas of every endpoint, or of the one named.
    pub(crate) fn ready(&self, endpoint: Option<&str>) -> Vec<Replica> {
        let now = Instant::now();
        let mut out: Vec<Replica> = self
            .lock()
            .values()
            .filter(|s| now.duration_since(s.at) < FRESH)
            .filter(|s| endpoint.is_none_or(|e| s.replica.endpoint == e))
            .map(|s| s.replica.clone())
            .collect();
        out.sort_by_key(|r| r.job);
        out
    }

    /// The ready replicas of `endpoint` in the order to try them: each request starts at the
    /// next one (round robin), and the others follow should it fail.
    pub(crate) fn route(&self, endpoint: &str) -> Vec<Replica> {
        let mut ready = self.ready(Some(endpoint));
        if !ready.is_empty() {
            let first = self.next.fetch_add(1, Ordering::Relaxed) % ready.len();
            ready.rotate_left(first);
        }
        ready
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn replica(job: u64, endpoint: &str) -> Replica {
        Replica {
            job: JobId(job),
            endpoint: endpoint.into(),
            worker: WorkerId::new("w").unwrap(),
            url: format!("http://127.0.0.1:{}", 9000 + job),
        }
    }

    #[test]
    fn requests_go_round_robin_to_the_ready_replicas_of_their_endpoint() {
        let e = Endpoints::default();
        e.heard(replica(1, "iris"));
        e.heard(replica(2, "iris"));
        e.heard(replica(3, "wine"));
        let firsts: Vec<JobId> = (0..4).map(|_| e.route("iris")[0].job).collect();
        assert_eq!(firsts, [JobId(1), JobId(2), JobId(1), JobId(2)]);
        assert_eq!(
            e.route("iris").len(),
            2,
            "the others follow, should one fail"
        );
        assert_eq!(e.route("wine").len(), 1);
        assert!(e.route("nothing").is_empty());
        e.forget(JobId(1));
        assert_eq!(e.route("iris")[0].job, JobId(2));
        assert!(e.knows(JobId(3), "http://127.0.0.1:9003"));
        assert!(!e.knows(JobId(3), "http://elsewhere"));
    }
}
