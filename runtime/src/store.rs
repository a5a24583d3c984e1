//! The durable record of every job and worker: the [`Store`] trait.
//!
//! A store owns the tables of [`Tables`]; the rules of every operation (validation,
//! idempotency, leasing, fencing, retries, dependencies, log de-duplication) are written once,
//! in this module, against those tables. An implementation provides only an [`Engine`]: a way
//! to run a read against a consistent snapshot and a write as one atomic, durable transaction.
//! Every `Engine` is a `Store` through the blanket implementation below, so [`MemStore`]
//! (the in-memory reference) and the redb store in `nexa-storage` cannot disagree on
//! semantics, and one shared test suite runs against both.
//!
//! Guarantee every implementation must give: when a write returns `Ok`, its effects are
//! durable (for a durable store) and visible to every later read.
//!
//! [`MemStore`]: crate::MemStore

mod ops;
mod tables;
mod touched;

use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use tables::{Counter, FaultKind, ReadTables, StorageFault, Tables, Visit};
pub use touched::recording;

use crate::id::{Epoch, InvalidWorkerId, JobId, WorkerId};
use crate::job::{Job, JobError, JobOutput, JobState, TransitionError};
use crate::log::{LogAck, LogPage, LogQuery};
use crate::retry::RetryPolicy;
use crate::scheduling::PendingReason;
use crate::spec::{JobSpec, JobType, SpecError};
use crate::time::Timestamp;
use crate::worker::{WorkerInfo, WorkerRecord};

/// Settings every store applies.
#[derive(Clone, Debug, PartialEq)]
pub struct StoreConfig {
    /// A lease lasts this long without a heartbeat.
    pub lease_ttl: Duration,
    /// A lease the worker has not acknowledged (by starting the job or heartbeating it) lasts
    /// this long, at most `lease_ttl`: a lease handed to a worker that is already gone comes
    /// back to the queue soon, and costs the job none of its attempts.
    pub assign_ttl: Duration,
    /// Jobs are leased only to workers heard from within this time (a heartbeat, a
    /// registration), so a request for work parked by a worker that died since is not
    /// answered with a job. `None`: any registered worker.
    pub worker_liveness: Option<Duration>,
    /// A worker not heard from for this long does not count when explaining why a job waits.
    pub worker_ttl: Duration,
    /// Backoff between attempts.
    pub retry: RetryPolicy,
    /// Lines kept per job, all attempts together; later lines are counted and dropped.
    pub max_log_lines_per_job: u64,
    /// Longer lines are cut to this many bytes.
    pub max_log_line_bytes: usize,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            // With heartbeats every 500 ms (the control plane's default), five can be missed
            // before a worker is presumed lost, and its job runs again within 3 s.
            lease_ttl: Duration::from_millis(2500),
            assign_ttl: Duration::from_millis(1000),
            worker_liveness: None,
            worker_ttl: Duration::from_secs(10),
            retry: RetryPolicy::default(),
            max_log_lines_per_job: 100_000,
            max_log_line_bytes: crate::log::MAX_LOG_LINE_BYTES,
        }
    }
}

/// The answer to a submission.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Submitted {
    /// The job's id.
    pub id: JobId,
    /// Its state right after submission.
    pub state: JobState,
    /// `false` when the idempotency key matched an earlier submission of the same spec, whose
    /// job this is.
    pub created: bool,
}

/// What [`Store::submit_and_lease`] submits.
#[derive(Clone, Debug, PartialEq)]
pub enum Submission {
    /// One job, as [`Store::submit`] takes it.
    One(JobSpec),
    /// Several jobs, all or none, as [`Store::submit_batch`] takes them.
    Batch(Vec<JobSpec>),
}

/// What [`Store::submit_and_lease`] answers: the jobs submitted, and one answer per lease
/// request, as [`Store::lease_many`] gives them.
pub type SubmittedAndLeased = (Vec<Submitted>, Vec<Result<Option<Lease>, StoreError>>);

/// A worker asking for a job.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRequest {
    /// The (registered) worker.
    pub worker: WorkerId,
    /// Memory in MiB of each of its GPUs that is free now.
    pub free_gpus: Vec<u64>,
}

/// A job handed to a worker.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Lease {
    /// The job, as it is after the lease.
    pub job: Job,
    /// The attempt number, from 1.
    pub attempt: u32,
    /// The fencing token to quote in every report.
    pub epoch: Epoch,
    /// Renew before this.
    pub lease_expires_at: Timestamp,
    /// The attempt times out here.
    pub deadline: Timestamp,
}

/// The answer to a heartbeat.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseStatus {
    /// The lease now ends here.
    pub lease_expires_at: Timestamp,
    /// The job is being cancelled: stop it and report.
    pub cancel_requested: bool,
}

/// What [`copy`] copied.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Copied {
    /// Jobs, with their events and attempts.
    pub jobs: u64,
    /// Log lines.
    pub log_lines: u64,
    /// Workers.
    pub workers: u64,
}

/// Copies one store's contents into another that holds no job, in one write of `to`: every
/// job (its state, queue, deadline and worker indexes rebuilt from it), log line, worker,
/// idempotency key, dependency and counter, so `to` answers every read as `from` does. For
/// moving a control plane's jobs from one kind of store to another (`nexa store copy`).
pub fn copy<F, T>(from: std::sync::Arc<F>, to: &T) -> Result<Copied, StoreError>
where
    F: Engine + 'static,
    T: Engine,
{
    let call = Call::new("copy", None);
    to.write(
        call,
        Box::new(move |dst| from.read(call, &mut |src| ops::copy(src, &mut *dst))),
    )
}

/// Which jobs to list. Results come newest first.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListQuery {
    /// Only jobs in this state.
    pub state: Option<JobState>,
    /// Only jobs of this type.
    pub job_type: Option<JobType>,
    /// Only jobs with an attempt on this worker (read from an index of each worker's jobs,
    /// so a worker's page costs no scan of the others').
    pub worker: Option<WorkerId>,
    /// Only jobs older than this one (the previous page's `next_before`).
    pub before: Option<JobId>,
    /// At most this many (1 to 1,000).
    pub limit: usize,
}

impl Default for ListQuery {
    fn default() -> Self {
        Self {
            state: None,
            job_type: None,
            worker: None,
            before: None,
            limit: 50,
        }
    }
}

/// One page of jobs.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Page {
    /// The jobs, newest first.
    pub jobs: Vec<Job>,
    /// Pass as `before` to get the next page; `None` on the last page.
    pub next_before: Option<JobId>,
}

/// A job that [`Store::expire`] moved.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Expired {
    /// The job.
    pub job: JobId,
    /// Its state afterwards.
    pub state: JobState,
    /// The attempt ran past its deadline; otherwise its lease ran out without a heartbeat.
    pub timed_out: bool,
}

impl Expired {
    /// Why the attempt ended, for people.
    pub fn cause(&self) -> &'static str {
        if self.timed_out {
            "past its deadline"
        } else {
            "lease ran out"
        }
    }
}

/// Why a store operation was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum StoreError {
    /// The spec is invalid; the error names the field.
    #[error(transparent)]
    InvalidSpec(#[from] SpecError),
    /// No job has this id.
    #[error("{0} does not exist")]
    NotFound(JobId),
    /// The idempotency key was used before, for a different spec.
    #[error(
        "idempotency key {key:?} was already used for {existing} with a different spec; use a new key or resubmit the same spec"
    )]
    IdempotencyConflict {
        /// The key.
        key: String,
        /// The job it created.
        existing: JobId,
    },
    /// The transition does not apply (an illegal move, or a stale epoch).
    #[error(transparent)]
    Transition(#[from] TransitionError),
    /// The worker has not registered (or was removed).
    #[error("worker {0} is not registered; register it first")]
    UnknownWorker(WorkerId),
    /// A worker id that is not valid.
    #[error(transparent)]
    InvalidWorker(#[from] InvalidWorkerId),
    /// The worker is draining and takes no new jobs.
    #[error("worker {0} is draining and takes no new jobs")]
    WorkerDraining(WorkerId),
    /// A log batch skips lines the store has not seen.
    #[error(
        "log batch for {job} attempt {attempt} starts at line {got}, but line {expected} is next; resend from line {expected}"
    )]
    LogGap {
        /// The job.
        job: JobId,
        /// The attempt.
        attempt: u32,
        /// The next line the store expects.
        expected: u64,
        /// The first line of the batch.
        got: u64,
    },
    /// A list or log query out of range.
    #[error("invalid query: {0}")]
    InvalidQuery(String),
    /// The job cannot be deleted: something still needs it.
    #[error("{job} cannot be deleted: {why}")]
    Kept {
        /// The job.
        job: JobId,
        /// What needs it.
        why: String,
    },
    /// One job of a batch submission was refused; none of the batch was stored.
    #[error("job {index} of the batch: {source}")]
    Batch {
        /// Its position in the batch, from 0.
        index: usize,
        /// Why.
        source: Box<StoreError>,
    },
    /// The storage underneath failed; the operation was not stored.
    #[error(transparent)]
    Storage(#[from] StorageFault),
}

impl StoreError {
    /// The report came from a lease that is no longer live, or is not the reporter's: the
    /// worker should drop the job.
    pub fn is_stale(&self) -> bool {
        matches!(
            self,
            StoreError::Transition(
                TransitionError::StaleEpoch { .. } | TransitionError::NotLeaseHolder { .. }
            )
        )
    }
}

/// The job and worker records of the control plane.
///
/// Every method takes the current time: stores never read a clock, so tests can move time by
/// hand. A method that returns `Ok` has stored its effect (durably, for a durable store);
/// one that returns `Err` has changed nothing.
pub trait Store: Send + Sync {
    /// Accepts a job. With an idempotency key already used for the same spec, returns the
    /// earlier job (`created: false`); for a different spec, refuses.
    fn submit(&self, spec: JobSpec, now: Timestamp) -> Result<Submitted, StoreError>;

    /// Accepts several jobs in one transaction: all of them, or (with
    /// [`StoreError::Batch`]) none.
    fn submit_batch(
        &self,
        specs: Vec<JobSpec>,
        now: Timestamp,
    ) -> Result<Vec<Submitted>, StoreError>;

    /// One job, with its attempts and events.
    fn get(&self, id: JobId) -> Result<Job, StoreError>;

    /// Jobs, newest first, filtered and paged.
    fn list(&self, query: ListQuery) -> Result<Page, StoreError>;

    /// How many jobs are in `state`. Stores count from their state index; this default,
    /// for wrappers, counts through `list` pages.
    fn count(&self, state: JobState) -> Result<u64, StoreError> {
        let mut query = ListQuery {
            state: Some(state),
            limit: 1000,
            ..ListQuery::default()
        };
        let mut n = 0;
        loop {
            let page = self.list(query.clone())?;
            n += page.jobs.len() as u64;
            match page.next_before {
                Some(before) => query.before = Some(before),
                None => return Ok(n),
            }
        }
    }

    /// How many jobs are in each state, all counted at one moment (so they add up to the
    /// jobs stored then). This default, for wrappers, counts state by state.
    fn counts(&self) -> Result<Vec<(JobState, u64)>, StoreError> {
        JobState::ALL
            .into_iter()
            .map(|s| Ok((s, self.count(s)?)))
            .collect()
    }

    /// Why a job has not started: `None` unless it is waiting or queued.
    fn pending_reason(
        &self,
        id: JobId,
        now: Timestamp,
    ) -> Result<Option<PendingReason>, StoreError>;

    /// Leases the next job that fits the worker, or `None` when none does.
    fn lease_next(
        &self,
        request: LeaseRequest,
        now: Timestamp,
    ) -> Result<Option<Lease>, StoreError>;

    /// Leases for several workers in one write: the same as [`Store::lease_next`] for each
    /// request in turn, in the order given, so the queue order (priority, then submission)
    /// holds across the batch and no job goes to two requests. Each request gets its own
    /// answer; one refused (an unknown or draining worker) leases nothing and does not stop the
    /// others. `Err` only when the write itself failed: then nothing was leased.
    fn lease_many(
        &self,
        requests: Vec<LeaseRequest>,
        now: Timestamp,
    ) -> Result<Vec<Result<Option<Lease>, StoreError>>, StoreError>;

    /// Submits, then leases for `requests` as [`Store::lease_many`] does, in one write: the
    /// workers waiting when a job arrives get it in the commit that accepts it, one durable
    /// write sooner than a submit and then a lease. `Err` when the submission is refused or
    /// the write failed: then nothing was submitted and nothing leased.
    fn submit_and_lease(
        &self,
        submission: Submission,
        requests: Vec<LeaseRequest>,
        now: Timestamp,
    ) -> Result<SubmittedAndLeased, StoreError>;

    /// The worker started the job (`assigned → running`).
    fn start(&self, id: JobId, epoch: Epoch, now: Timestamp) -> Result<(), StoreError>;

    /// Renews the lease and records progress (0.0 to 1.0).
    fn heartbeat(
        &self,
        id: JobId,
        epoch: Epoch,
        progress: Option<f64>,
        now: Timestamp,
    ) -> Result<LeaseStatus, StoreError>;

    /// The job succeeded with `output`. Returns the job's state afterwards (`succeeded`, or
    /// `cancelled` when a cancel was pending).
    fn complete(
        &self,
        id: JobId,
        epoch: Epoch,
        output: JobOutput,
        now: Timestamp,
    ) -> Result<JobState, StoreError>;

    /// The attempt failed. Returns the job's state afterwards: `queued` for a retry, `failed`,
    /// or `cancelled` when a cancel was pending.
    fn fail(
        &self,
        id: JobId,
        epoch: Epoch,
        error: JobError,
        now: Timestamp,
    ) -> Result<JobState, StoreError>;

    /// Cancels the job: at once when no worker holds it, else it becomes `cancelling` until
    /// the worker stops. Returns the state afterwards.
    fn cancel(&self, id: JobId, reason: String, now: Timestamp) -> Result<JobState, StoreError>;

    /// Ends every attempt whose lease ran out (`worker_lost`) or that passed its deadline
    /// (`timeout`) by `now`. Run it periodically and on start, to recover from a crash.
    fn expire(&self, now: Timestamp) -> Result<Vec<Expired>, StoreError>;

    /// Extends every live lease to run at least until `until`, as if its worker had just
    /// heartbeated; answers how many it extended. For a control plane that starts again: the
    /// time it was down is no evidence that its workers died, so they get the time to
    /// reconnect and heartbeat before their jobs are presumed lost. Timeouts are unchanged.
    fn renew_leases(&self, until: Timestamp, now: Timestamp) -> Result<u64, StoreError>;

    /// Stores log lines `first_seq..` of the live attempt under `epoch`. Lines already stored
    /// are skipped, so a resent batch is not duplicated.
    fn append_logs(
        &self,
        id: JobId,
        epoch: Epoch,
        first_seq: u64,
        lines: Vec<String>,
        now: Timestamp,
    ) -> Result<LogAck, StoreError>;

    /// Reads stored log lines.
    fn read_logs(&self, id: JobId, query: LogQuery) -> Result<LogPage, StoreError>;

    /// Registers (or re-registers) a worker as active.
    fn register_worker(&self, info: WorkerInfo, now: Timestamp)
    -> Result<WorkerRecord, StoreError>;

    /// Records that the worker is alive.
    fn worker_heartbeat(&self, id: &WorkerId, now: Timestamp) -> Result<WorkerRecord, StoreError>;

    /// Heartbeats of several workers in one write: the same as [`Store::worker_heartbeat`]
    /// for each, in the order given, each with its own answer (an unknown worker is refused
    /// without stopping the others). `Err` only when the write itself failed.
    fn worker_heartbeats(
        &self,
        ids: Vec<WorkerId>,
        now: Timestamp,
    ) -> Result<Vec<Result<WorkerRecord, StoreError>>, StoreError>;

    /// Marks the worker as draining: it gets no new jobs.
    fn drain_worker(&self, id: &WorkerId, now: Timestamp) -> Result<WorkerRecord, StoreError>;

    /// Forgets the worker. Leases it still holds run out as usual.
    fn remove_worker(&self, id: &WorkerId) -> Result<(), StoreError>;

    /// Deletes a finished job with its log and its history; answers it as it was. Refused
    /// (nothing deleted) for a job that has not finished, one that a job not yet finished
    /// depends on, and one that registered a model version (the registry is read off the
    /// jobs that made models, and version numbers must not change).
    fn delete(&self, id: JobId) -> Result<Job, StoreError>;

    /// Deletes the finished jobs that last changed before `before` and that [`Store::delete`]
    /// would delete, reading at most `scan` finished jobs from id `from` on, oldest first.
    /// Answers the ids deleted and where the next pass goes on (`None`: the end was reached).
    fn delete_finished_before(
        &self,
        before: Timestamp,
        from: JobId,
        scan: usize,
    ) -> Result<(Vec<JobId>, Option<JobId>), StoreError>;

    /// Every registered worker.
    fn list_workers(&self) -> Result<Vec<WorkerRecord>, StoreError>;

    /// Whether a read of one record never waits long: no network, no lock a write holds
    /// through its commit ([`Engine::quick_reads`]). Such a read may run on an async thread
    /// instead of being handed to a blocking one and back.
    fn quick_reads(&self) -> bool {
        false
    }
}

/// A write: runs inside one transaction, which commits only if it returns `Ok`.
pub type WriteOp<R> = Box<dyn FnOnce(&mut dyn Tables) -> Result<R, StoreError> + Send>;

/// What a store implementation provides; [`Store`] follows from it.
pub trait Engine: Send + Sync {
    /// The settings the operations apply.
    fn config(&self) -> &StoreConfig;

    /// Runs `op` in a write transaction and returns once the transaction committed (durably,
    /// for a durable store). When `op` returns `Err` its writes must be discarded; an
    /// implementation may commit several callers' ops in one transaction, provided each
    /// op's effect is all or nothing. `call` names the operation, for a wrapper around an
    /// engine (one that counts, times, holds or fails some operations); an engine ignores it.
    fn write<R: Send + 'static>(&self, call: Call, op: WriteOp<R>) -> Result<R, StoreError>;

    /// Whether a read of one record never waits long: it takes no network round trip and no
    /// lock that a write holds through its commit (a read of memory, or of a snapshot whose
    /// pages a local file holds). `false` unless the engine says so; a wrapper says what the
    /// engine it wraps says.
    fn quick_reads(&self) -> bool {
        false
    }

    /// Runs `op` against a consistent snapshot that includes every acknowledged write;
    /// `call` as for [`Engine::write`].
    fn read<R>(
        &self,
        call: Call,
        op: &mut dyn FnMut(&dyn ReadTables) -> Result<R, StoreError>,
    ) -> Result<R, StoreError>;
}

/// Which operation an [`Engine`] is asked to run: the [`Store`] method (its name in the
/// trait: `"submit"`, `"lease_next"`, `"complete"`, …), and its job when the method takes a
/// job id. The blanket `Store` implementation makes one engine call per `Store` call, so a
/// wrapper tells operations apart by this alone. A write's answer is `'static`, so a wrapper
/// may also look at it through [`std::any::Any`] (to see whether a lease was handed out, say).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Call {
    /// The `Store` method, or `"copy"` for [`copy`].
    pub method: &'static str,
    /// The job it is about, when it takes a job id.
    pub job: Option<JobId>,
}

impl Call {
    /// `method`, about `job`.
    pub const fn new(method: &'static str, job: Option<JobId>) -> Self {
        Self { method, job }
    }
}

impl<E: Engine> Store for E {
    fn submit(&self, spec: JobSpec, now: Timestamp) -> Result<Submitted, StoreError> {
        let cfg = self.config().clone();
        touched::write(
            self,
            Call::new("submit", None),
            Box::new(move |t| ops::submit(t, &cfg, spec, now)),
        )
    }

    fn submit_batch(
        &self,
        specs: Vec<JobSpec>,
        now: Timestamp,
    ) -> Result<Vec<Submitted>, StoreError> {
        touched::write(
            self,
            Call::new("submit_batch", None),
            Box::new(move |t| ops::submit_batch(t, specs, now)),
        )
    }

    fn get(&self, id: JobId) -> Result<Job, StoreError> {
        self.read(Call::new("get", Some(id)), &mut |t| ops::get(t, id))
    }

    fn list(&self, query: ListQuery) -> Result<Page, StoreError> {
        self.read(Call::new("list", None), &mut |t| ops::list(t, &query))
    }

    fn count(&self, state: JobState) -> Result<u64, StoreError> {
        self.read(Call::new("count", None), &mut |t| ops::count(t, state))
    }

    fn counts(&self) -> Result<Vec<(JobState, u64)>, StoreError> {
        self.read(Call::new("counts", None), &mut |t| {
            JobState::ALL
                .into_iter()
                .map(|s| Ok((s, ops::count(t, s)?)))
                .collect()
        })
    }

    fn pending_reason(
        &self,
        id: JobId,
        now: Timestamp,
    ) -> Result<Option<PendingReason>, StoreError> {
        let ttl = self.config().worker_ttl;
        self.read(Call::new("pending_reason", Some(id)), &mut |t| {
            ops::pending_reason(t, id, ttl, now)
        })
    }

    fn lease_next(
        &self,
        request: LeaseRequest,
        now: Timestamp,
    ) -> Result<Option<Lease>, StoreError> {
        let cfg = self.config().clone();
        touched::write(
            self,
            Call::new("lease_next", None),
            Box::new(move |t| ops::lease_next(t, &cfg, &request, now)),
        )
    }

    fn lease_many(
        &self,
        requests: Vec<LeaseRequest>,
        now: Timestamp,
    ) -> Result<Vec<Result<Option<Lease>, StoreError>>, StoreError> {
        let cfg = self.config().clone();
        touched::write(
            self,
            Call::new("lease_many", None),
            Box::new(move |t| ops::lease_many(t, &cfg, &requests, now)),
        )
    }

    fn submit_and_lease(
        &self,
        submission: Submission,
        requests: Vec<LeaseRequest>,
        now: Timestamp,
    ) -> Result<SubmittedAndLeased, StoreError> {
        let cfg = self.config().clone();
        touched::write(
            self,
            Call::new("submit_and_lease", None),
            Box::new(move |t| {
                let submitted = match submission {
                    Submission::One(spec) => vec![ops::submit(t, &cfg, spec, now)?],
                    Submission::Batch(specs) => ops::submit_batch(t, specs, now)?,
                };
                Ok((submitted, ops::lease_many(t, &cfg, &requests, now)?))
            }),
        )
    }

    fn start(&self, id: JobId, epoch: Epoch, now: Timestamp) -> Result<(), StoreError> {
        let cfg = self.config().clone();
        touched::write(
            self,
            Call::new("start", Some(id)),
            Box::new(move |t| {
                let ttl = cfg.lease_ttl;
                ops::report(t, &cfg, id, crate::Transition::Start { epoch, ttl }, now).map(drop)
            }),
        )
    }

    fn heartbeat(
        &self,
        id: JobId,
        epoch: Epoch,
        progress: Option<f64>,
        now: Timestamp,
    ) -> Result<LeaseStatus, StoreError> {
        let cfg = self.config().clone();
        touched::write(
            self,
            Call::new("heartbeat", Some(id)),
            Box::new(move |t| {
                let ttl = cfg.lease_ttl;
                let job = ops::report(
                    t,
                    &cfg,
                    id,
                    crate::Transition::Renew {
                        epoch,
                        ttl,
                        progress,
                    },
                    now,
                )?;
                Ok(LeaseStatus {
                    lease_expires_at: job.live_attempt().map_or(now, |a| a.lease_expires_at),
                    cancel_requested: job.state == JobState::Cancelling,
                })
            }),
        )
    }

    fn complete(
        &self,
        id: JobId,
        epoch: Epoch,
        output: JobOutput,
        now: Timestamp,
    ) -> Result<JobState, StoreError> {
        let cfg = self.config().clone();
        touched::write(
            self,
            Call::new("complete", Some(id)),
            Box::new(move |t| {
                ops::report(
                    t,
                    &cfg,
                    id,
                    crate::Transition::Succeed { epoch, output },
                    now,
                )
                .map(|j| j.state)
            }),
        )
    }

    fn fail(
        &self,
        id: JobId,
        epoch: Epoch,
        error: JobError,
        now: Timestamp,
    ) -> Result<JobState, StoreError> {
        let cfg = self.config().clone();
        touched::write(
            self,
            Call::new("fail", Some(id)),
            Box::new(move |t| {
                ops::report(t, &cfg, id, crate::Transition::Fail { epoch, error }, now)
                    .map(|j| j.state)
            }),
        )
    }

    fn cancel(&self, id: JobId, reason: String, now: Timestamp) -> Result<JobState, StoreError> {
        let cfg = self.config().clone();
        touched::write(
            self,
            Call::new("cancel", Some(id)),
            Box::new(move |t| {
                ops::report(t, &cfg, id, crate::Transition::Cancel { reason }, now).map(|j| j.state)
            }),
        )
    }

    fn expire(&self, now: Timestamp) -> Result<Vec<Expired>, StoreError> {
        let cfg = self.config().clone();
        touched::write(
            self,
            Call::new("expire", None),
            Box::new(move |t| ops::expire(t, &cfg, now)),
        )
    }

    fn renew_leases(&self, until: Timestamp, now: Timestamp) -> Result<u64, StoreError> {
        let cfg = self.config().clone();
        touched::write(
            self,
            Call::new("renew_leases", None),
            Box::new(move |t| ops::renew_leases(t, &cfg, until, now)),
        )
    }

    fn append_logs(
        &self,
        id: JobId,
        epoch: Epoch,
        first_seq: u64,
        lines: Vec<String>,
        now: Timestamp,
    ) -> Result<LogAck, StoreError> {
        let cfg = self.config().clone();
        touched::write(
            self,
            Call::new("append_logs", Some(id)),
            Box::new(move |t| ops::append_logs(t, &cfg, id, epoch, first_seq, lines, now)),
        )
    }

    fn read_logs(&self, id: JobId, query: LogQuery) -> Result<LogPage, StoreError> {
        self.read(Call::new("read_logs", Some(id)), &mut |t| {
            ops::read_logs(t, id, &query)
        })
    }

    fn register_worker(
        &self,
        info: WorkerInfo,
        now: Timestamp,
    ) -> Result<WorkerRecord, StoreError> {
        touched::write(
            self,
            Call::new("register_worker", None),
            Box::new(move |t| ops::register_worker(t, info, now)),
        )
    }

    fn worker_heartbeat(&self, id: &WorkerId, now: Timestamp) -> Result<WorkerRecord, StoreError> {
        let id = id.clone();
        touched::write(
            self,
            Call::new("worker_heartbeat", None),
            Box::new(move |t| ops::touch_worker(t, &id, false, now)),
        )
    }

    fn worker_heartbeats(
        &self,
        ids: Vec<WorkerId>,
        now: Timestamp,
    ) -> Result<Vec<Result<WorkerRecord, StoreError>>, StoreError> {
        touched::write(
            self,
            Call::new("worker_heartbeats", None),
            Box::new(move |t| ops::touch_workers(t, &ids, now)),
        )
    }

    fn drain_worker(&self, id: &WorkerId, now: Timestamp) -> Result<WorkerRecord, StoreError> {
        let id = id.clone();
        touched::write(
            self,
            Call::new("drain_worker", None),
            Box::new(move |t| ops::touch_worker(t, &id, true, now)),
        )
    }

    fn remove_worker(&self, id: &WorkerId) -> Result<(), StoreError> {
        let id = id.clone();
        touched::write(
            self,
            Call::new("remove_worker", None),
            Box::new(move |t| ops::remove_worker(t, &id)),
        )
    }

    fn delete(&self, id: JobId) -> Result<Job, StoreError> {
        touched::write(
            self,
            Call::new("delete", Some(id)),
            Box::new(move |t| ops::delete(t, id)),
        )
    }

    fn delete_finished_before(
        &self,
        before: Timestamp,
        from: JobId,
        scan: usize,
    ) -> Result<(Vec<JobId>, Option<JobId>), StoreError> {
        touched::write(
            self,
            Call::new("delete_finished_before", None),
            Box::new(move |t| ops::delete_finished_before(t, before, from, scan)),
        )
    }

    fn quick_reads(&self) -> bool {
        Engine::quick_reads(self)
    }

    fn list_workers(&self) -> Result<Vec<WorkerRecord>, StoreError> {
        self.read(Call::new("list_workers", None), &mut |t| Ok(t.workers()?))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::MemStore;
    use crate::job::FailureClass;
    use crate::params::{GenerateParams, JobParams};

    /// A `MemStore` that notes the method and job of every read and write it is asked for.
    struct Noting {
        inner: MemStore,
        calls: Mutex<Vec<(&'static str, Option<JobId>, &'static str)>>,
    }

    impl Noting {
        fn note(&self, method: &'static str, job: Option<JobId>, kind: &'static str) {
            self.calls.lock().unwrap().push((method, job, kind));
        }
    }

    impl Engine for Noting {
        fn config(&self) -> &StoreConfig {
            self.inner.config()
        }

        fn write<R: Send + 'static>(&self, call: Call, op: WriteOp<R>) -> Result<R, StoreError> {
            self.note(call.method, call.job, "write");
            self.inner.write(call, op)
        }

        fn read<R>(
            &self,
            call: Call,
            op: &mut dyn FnMut(&dyn ReadTables) -> Result<R, StoreError>,
        ) -> Result<R, StoreError> {
            self.note(call.method, call.job, "read");
            self.inner.read(call, op)
        }
    }

    #[test]
    fn every_store_call_names_its_method_and_job_to_the_engine() {
        let store = Noting {
            inner: MemStore::new(StoreConfig::default()),
            calls: Mutex::default(),
        };
        let (t, j) = (Timestamp(0), JobId(1));
        let spec = || JobSpec::new(JobParams::Generate(GenerateParams::new("physics", 1)));
        let worker = WorkerId::new("w").unwrap();
        let info = WorkerInfo {
            id: worker.clone(),
            cpus: 1,
            memory_mb: 1,
            gpus: Vec::new(),
            labels: Default::default(),
            job_types: Default::default(),
        };
        let ask = || LeaseRequest {
            worker: worker.clone(),
            free_gpus: Vec::new(),
        };
        let e = Epoch(1);
        // Outcomes do not matter here (most of these are refused): only what the engine hears.
        let _ = store.submit(spec(), t);
        let _ = store.submit_batch(vec![spec()], t);
        let _ = store.get(j);
        let _ = store.list(ListQuery::default());
        let _ = store.count(JobState::Queued);
        let _ = store.counts();
        let _ = store.pending_reason(j, t);
        let _ = store.register_worker(info, t);
        let _ = store.lease_next(ask(), t);
        let _ = store.lease_many(vec![ask()], t);
        let _ = store.start(j, e, t);
        let _ = store.heartbeat(j, e, None, t);
        let _ = store.complete(j, e, JobOutput::default(), t);
        let _ = store.fail(j, e, JobError::new(FailureClass::StageError, "x"), t);
        let _ = store.cancel(j, "x".into(), t);
        let _ = store.expire(t);
        let _ = store.renew_leases(t, t);
        let _ = store.append_logs(j, e, 0, vec!["x".into()], t);
        let _ = store.read_logs(j, LogQuery::default());
        let _ = store.worker_heartbeat(&worker, t);
        let _ = store.drain_worker(&worker, t);
        let _ = store.remove_worker(&worker);
        let _ = store.delete(j);
        let _ = store.delete_finished_before(t, j, 1);
        let _ = store.list_workers();
        let expected = [
            ("submit", None, "write"),
            ("submit_batch", None, "write"),
            ("get", Some(j), "read"),
            ("list", None, "read"),
            ("count", None, "read"),
            ("counts", None, "read"),
            ("pending_reason", Some(j), "read"),
            ("register_worker", None, "write"),
            ("lease_next", None, "write"),
            ("lease_many", None, "write"),
            ("start", Some(j), "write"),
            ("heartbeat", Some(j), "write"),
            ("complete", Some(j), "write"),
            ("fail", Some(j), "write"),
            ("cancel", Some(j), "write"),
            ("expire", None, "write"),
            ("renew_leases", None, "write"),
            ("append_logs", Some(j), "write"),
            ("read_logs", Some(j), "read"),
            ("worker_heartbeat", None, "write"),
            ("drain_worker", None, "write"),
            ("remove_worker", None, "write"),
            ("delete", Some(j), "write"),
            ("delete_finished_before", None, "write"),
            ("list_workers", None, "read"),
        ];
        assert_eq!(*store.calls.lock().unwrap(), expected);
    }
}
