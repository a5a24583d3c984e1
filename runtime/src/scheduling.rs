//! Which queued job a worker gets next, and why a queued job is still waiting.
//!
//! Pure functions over the queue's entries. The rule: among jobs that are ready (not in a
//! retry backoff) and fit the worker's free resources, labels and job types, the highest
//! priority goes first, and within a priority the earliest submitted. A job that does not fit
//! is never handed out.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::id::{JobId, WorkerId};
use crate::spec::{JobSpec, JobType, Resources};
use crate::time::Timestamp;
use crate::worker::{WorkerRecord, WorkerStatus};

/// A queued job's place in the queue. Orders by priority, highest first, then by id (that is,
/// submission order).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct QueueKey {
    /// The job's priority.
    pub priority: i32,
    /// The job.
    pub job: JobId,
}

impl QueueKey {
    /// `(rank, id)` where a smaller rank means a higher priority: sorting these pairs
    /// ascending gives queue order. Storage engines use this as the index key.
    pub fn sort_key(self) -> (u32, u64) {
        (!((self.priority as u32) ^ 0x8000_0000), self.job.0)
    }

    /// The inverse of [`QueueKey::sort_key`].
    pub fn from_sort_key((rank, id): (u32, u64)) -> Self {
        Self {
            priority: ((!rank) ^ 0x8000_0000) as i32,
            job: JobId(id),
        }
    }
}

impl Ord for QueueKey {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.sort_key().cmp(&other.sort_key())
    }
}

impl PartialOrd for QueueKey {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

/// What the scheduler needs to know about a queued job, kept in the queue index so that
/// matching never loads whole jobs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueEntry {
    /// The job's type.
    pub job_type: JobType,
    /// What it needs.
    pub resources: Resources,
    /// Not before this time (retry backoff).
    pub not_before: Option<Timestamp>,
}

/// What a queued job asks of a worker: its type and resources. Queued jobs with equal
/// classes fit the same workers, so the store indexes the queue by class, and a lease reads
/// the head of each class that fits rather than every entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueClass {
    /// The job type.
    pub job_type: JobType,
    /// What it needs.
    pub resources: Resources,
}

impl QueueClass {
    /// Whether its jobs fit `offer`.
    pub fn fits(&self, offer: &Offer<'_>) -> bool {
        fits(self.job_type, &self.resources, offer).is_ok()
    }
}

impl QueueEntry {
    /// The class of its job.
    pub fn class(&self) -> QueueClass {
        QueueClass {
            job_type: self.job_type,
            resources: self.resources.clone(),
        }
    }

    /// The entry for a job with `spec`.
    pub fn new(spec: &JobSpec, not_before: Option<Timestamp>) -> Self {
        let mut resources = spec.resources.clone();
        // A deploy job's region is a label its workers must carry.
        if let crate::JobParams::Deploy(p) = &spec.params
            && let Some(region) = &p.region
        {
            resources
                .labels
                .entry("region".to_owned())
                .or_insert_with(|| region.clone());
        }
        Self {
            job_type: spec.job_type(),
            resources,
            not_before,
        }
    }

    /// Out of backoff at `now`.
    pub fn is_ready(&self, now: Timestamp) -> bool {
        self.not_before.is_none_or(|t| t <= now)
    }
}

/// What a worker can take right now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Offer<'a> {
    /// Memory in MiB of each GPU that is free now.
    pub free_gpus: &'a [u64],
    /// The worker's labels.
    pub labels: &'a BTreeMap<String, String>,
    /// The job types it runs.
    pub job_types: &'a BTreeSet<JobType>,
}

/// Why a job does not fit a worker.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Misfit {
    /// The worker does not run this job type.
    #[error("does not run {0} jobs")]
    JobType(JobType),
    /// Too few (free) GPUs with enough memory.
    #[error("has {have} GPUs with at least {memory_mb} MiB, the job needs {need}")]
    Gpus {
        /// GPUs the job needs.
        need: u32,
        /// Memory each must have, MiB.
        memory_mb: u64,
        /// Matching GPUs the worker has.
        have: u32,
    },
    /// A label is missing or has another value.
    #[error("lacks label {key}={want}")]
    Label {
        /// The label's key.
        key: String,
        /// The value the job asks for.
        want: String,
    },
}

/// Whether a job with `job_type` and `need` fits `offer`.
pub fn fits(job_type: JobType, need: &Resources, offer: &Offer<'_>) -> Result<(), Misfit> {
    if !offer.job_types.contains(&job_type) {
        return Err(Misfit::JobType(job_type));
    }
    for (key, want) in &need.labels {
        if offer.labels.get(key) != Some(want) {
            return Err(Misfit::Label {
                key: key.clone(),
                want: want.clone(),
            });
        }
    }
    if need.gpus > 0 {
        let have = offer
            .free_gpus
            .iter()
            .filter(|&&mb| mb >= need.gpu_memory_mb)
            .count() as u32;
        if have < need.gpus {
            return Err(Misfit::Gpus {
                need: need.gpus,
                memory_mb: need.gpu_memory_mb,
                have,
            });
        }
    }
    Ok(())
}

/// The first job in `queue` (which must be in [`QueueKey`] order) that is ready at `now` and
/// fits `offer`.
pub fn pick_next<'q>(
    queue: impl IntoIterator<Item = (QueueKey, &'q QueueEntry)>,
    offer: &Offer<'_>,
    now: Timestamp,
) -> Option<QueueKey> {
    queue
        .into_iter()
        .find(|(_, e)| e.is_ready(now) && fits(e.job_type, &e.resources, offer).is_ok())
        .map(|(k, _)| k)
}

/// Why a job has not started yet.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PendingReason {
    /// Waiting for these jobs to succeed.
    WaitingOn(Vec<JobId>),
    /// A failed attempt is waiting out its retry backoff.
    Backoff {
        /// When it may be leased again.
        until: Timestamp,
    },
    /// No worker is connected.
    NoWorkers,
    /// No connected worker could ever run it; the text says what is missing.
    NoWorkerFits(String),
    /// Some worker can run it once it has free capacity (or higher-priority jobs are ahead).
    WaitingForCapacity,
    /// A worker that fits holds no job: it takes this one on its next ask, within moments.
    Starting,
}

impl fmt::Display for PendingReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PendingReason::WaitingOn(jobs) => {
                f.write_str("waiting on ")?;
                for (i, j) in jobs.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{j}")?;
                }
                Ok(())
            }
            PendingReason::Backoff { until } => write!(f, "retry backoff until {until}"),
            PendingReason::NoWorkers => f.write_str("no worker is connected"),
            PendingReason::NoWorkerFits(why) => write!(f, "no connected worker can run it: {why}"),
            PendingReason::WaitingForCapacity => {
                f.write_str("waiting for a worker with free capacity")
            }
            PendingReason::Starting => f.write_str("starting on an idle worker"),
        }
    }
}

/// Why the queued job `entry` waits, given the registered workers at `now` and those of them
/// that hold a lease (`busy`). Workers not heard from within `worker_ttl`, and draining ones,
/// do not count. A job that fits an idle worker is [`PendingReason::Starting`]: that worker
/// takes it on its next ask.
pub fn queued_reason(
    entry: &QueueEntry,
    workers: &[WorkerRecord],
    busy: &BTreeSet<WorkerId>,
    now: Timestamp,
    worker_ttl: Duration,
) -> PendingReason {
    if let Some(until) = entry.not_before.filter(|&t| t > now) {
        return PendingReason::Backoff { until };
    }
    let live: Vec<&WorkerRecord> = workers
        .iter()
        .filter(|w| w.status == WorkerStatus::Active && w.is_alive(now, worker_ttl))
        .collect();
    if live.is_empty() {
        return PendingReason::NoWorkers;
    }
    let mut closest: Option<(&WorkerRecord, Misfit)> = None;
    let mut fits_busy = false;
    for w in live {
        let all_gpus: Vec<u64> = w.info.gpus.iter().map(|g| g.memory_mb).collect();
        let offer = Offer {
            free_gpus: &all_gpus,
            labels: &w.info.labels,
            job_types: &w.info.job_types,
        };
        match fits(entry.job_type, &entry.resources, &offer) {
            Ok(()) if !busy.contains(&w.info.id) => return PendingReason::Starting,
            Ok(()) => fits_busy = true,
            Err(m) => {
                // Prefer a worker that at least runs the job type: its misfit says more.
                let better = match &closest {
                    None => true,
                    Some((_, c)) => {
                        matches!(c, Misfit::JobType(_)) && !matches!(m, Misfit::JobType(_))
                    }
                };
                if better {
                    closest = Some((w, m));
                }
            }
        }
    }
    if fits_busy {
        return PendingReason::WaitingForCapacity;
    }
    match closest {
        Some((_, Misfit::JobType(t))) => {
            PendingReason::NoWorkerFits(format!("no worker runs {t} jobs"))
        }
        Some((w, m)) => PendingReason::NoWorkerFits(format!("worker {} {m}", w.info.id)),
        None => PendingReason::NoWorkers,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::WorkerId;
    use crate::worker::{Gpu, WorkerInfo};

    fn entry(gpus: u32, mem: u64, labels: &[(&str, &str)]) -> QueueEntry {
        QueueEntry {
            job_type: JobType::Train,
            resources: Resources {
                gpus,
                gpu_memory_mb: mem,
                labels: labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            },
            not_before: None,
        }
    }

    #[test]
    fn sort_key_orders_by_priority_then_id() {
        let mut keys = vec![
            QueueKey {
                priority: 0,
                job: JobId(5),
            },
            QueueKey {
                priority: -1000,
                job: JobId(1),
            },
            QueueKey {
                priority: 1000,
                job: JobId(9),
            },
            QueueKey {
                priority: 0,
                job: JobId(2),
            },
            QueueKey {
                priority: i32::MIN,
                job: JobId(3),
            },
            QueueKey {
                priority: i32::MAX,
                job: JobId(4),
            },
        ];
        keys.sort();
        let order: Vec<u64> = keys.iter().map(|k| k.job.0).collect();
        assert_eq!(order, vec![4, 9, 2, 5, 1, 3]);
        for k in keys {
            assert_eq!(QueueKey::from_sort_key(k.sort_key()), k);
        }
    }

    #[test]
    fn picks_highest_priority_that_fits() {
        let types: BTreeSet<_> = JobType::ALL.into_iter().collect();
        let labels: BTreeMap<_, _> = [("region".to_string(), "eu".to_string())].into();
        // A deploy job's region is a label its worker must carry.
        let mut deploy = crate::DeployParams::new("m");
        deploy.region = Some("eu".into());
        let deploy = QueueEntry::new(&JobSpec::new(crate::JobParams::Deploy(deploy)), None);
        assert_eq!(deploy.resources.labels, labels);
        let big = entry(2, 80_000, &[]);
        let eu = entry(1, 0, &[("region", "eu")]);
        let us = entry(0, 0, &[("region", "us")]);
        let mut backoff = entry(0, 0, &[]);
        backoff.not_before = Some(Timestamp(100));
        let queue = [
            (
                QueueKey {
                    priority: 9,
                    job: JobId(1),
                },
                &big,
            ),
            (
                QueueKey {
                    priority: 8,
                    job: JobId(2),
                },
                &us,
            ),
            (
                QueueKey {
                    priority: 7,
                    job: JobId(3),
                },
                &backoff,
            ),
            (
                QueueKey {
                    priority: 6,
                    job: JobId(4),
                },
                &eu,
            ),
        ];
        let offer = Offer {
            free_gpus: &[40_000, 40_000],
            labels: &labels,
            job_types: &types,
        };
        assert_eq!(
            pick_next(queue, &offer, Timestamp(50)).map(|k| k.job),
            Some(JobId(4))
        );
        assert_eq!(
            pick_next(queue, &offer, Timestamp(100)).map(|k| k.job),
            Some(JobId(3))
        );
        let none = Offer {
            free_gpus: &[],
            ..offer
        };
        assert_eq!(
            pick_next(queue[3..].iter().copied(), &none, Timestamp(0)),
            None
        );
    }

    #[test]
    fn queued_jobs_say_why_they_wait() {
        let worker = WorkerRecord {
            info: WorkerInfo {
                id: WorkerId::new("w1").unwrap(),
                cpus: 8,
                memory_mb: 1024,
                gpus: vec![Gpu {
                    model: "H100".into(),
                    memory_mb: 81_559,
                }],
                labels: BTreeMap::new(),
                job_types: [JobType::Train].into(),
            },
            status: WorkerStatus::Active,
            registered_at: Timestamp(0),
            last_seen: Timestamp(0),
        };
        let ttl = Duration::from_secs(30);
        let now = Timestamp(1000);
        let idle = BTreeSet::new();
        let busy = BTreeSet::from([worker.info.id.clone()]);
        assert_eq!(
            queued_reason(&entry(0, 0, &[]), &[], &idle, now, ttl),
            PendingReason::NoWorkers
        );
        let ws = [worker.clone()];
        assert_eq!(
            queued_reason(&entry(1, 0, &[]), &ws, &idle, now, ttl),
            PendingReason::Starting
        );
        assert_eq!(
            queued_reason(&entry(1, 0, &[]), &ws, &busy, now, ttl),
            PendingReason::WaitingForCapacity
        );
        let r = queued_reason(&entry(2, 0, &[]), &ws, &idle, now, ttl);
        assert_eq!(
            r.to_string(),
            "no connected worker can run it: worker w1 has 1 GPUs with at least 0 MiB, the job needs 2"
        );
        let mut audit = entry(0, 0, &[]);
        audit.job_type = JobType::Audit;
        assert_eq!(
            queued_reason(&audit, &ws, &idle, now, ttl).to_string(),
            "no connected worker can run it: no worker runs audit jobs"
        );
        let later = Timestamp(60_000);
        assert_eq!(
            queued_reason(&entry(1, 0, &[]), &ws, &idle, later, ttl),
            PendingReason::NoWorkers
        );
    }
}
