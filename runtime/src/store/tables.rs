//! The tables a store keeps, as the operations see them.
//!
//! | table        | key                       | value          | holds                               |
//! |--------------|---------------------------|----------------|-------------------------------------|
//! | jobs         | job id                    | [`Job`]        | every job, with attempts and events |
//! | queue        | [`QueueKey`]              | [`QueueEntry`] | exactly the jobs in state `queued`  |
//! | class queue  | ([`QueueClass`], [`QueueKey`]) | retry backoff | the queue by class, for leases |
//! | states       | (state, job id)           | —              | every job, by state                 |
//! | deadlines    | (time, job id)            | —              | jobs with a live attempt, by [`Job::deadline`] |
//! | idempotency  | key                       | job id         | submissions that carried a key      |
//! | dependents   | job id                    | job ids        | who waits on whom                   |
//! | log meta     | job id                    | [`LogMeta`]    | per-attempt line counters           |
//! | logs         | (job id, attempt, seq)    | [`LogLine`]    | the lines                           |
//! | workers      | worker id                 | [`WorkerRecord`] | the worker registry               |
//! | counters     | [`Counter`]               | u64            | the next job id and epoch           |
//!
//! The indexes (queue, class queue, states, deadlines) are derived from the jobs table and
//! maintained in one place, `ops::write_job`; no other code writes them.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::id::{JobId, WorkerId};
use crate::job::{Job, JobState};
use crate::log::{LogLine, LogMeta};
use crate::scheduling::{QueueClass, QueueEntry, QueueKey};
use crate::time::Timestamp;
use crate::worker::WorkerRecord;

/// A failure of the storage underneath: the operation did not happen.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("storage {kind}: {message}")]
pub struct StorageFault {
    /// What kind of failure, for callers that react to it.
    pub kind: FaultKind,
    /// What the storage said, for people.
    pub message: String,
}

impl StorageFault {
    /// A fault of `kind`.
    pub fn new(kind: FaultKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }
}

/// Kinds of storage failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum FaultKind {
    /// The disk is full.
    DiskFull,
    /// The file or its folder cannot be written.
    ReadOnly,
    /// Another I/O failure.
    Io,
    /// The stored data is not what this version wrote.
    Corrupt,
    /// The store was closed or its writer stopped.
    Unavailable,
}

impl fmt::Display for FaultKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FaultKind::DiskFull => "full",
            FaultKind::ReadOnly => "read-only",
            FaultKind::Io => "I/O error",
            FaultKind::Corrupt => "corrupt",
            FaultKind::Unavailable => "unavailable",
        })
    }
}

/// Named counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Counter {
    /// The id the next job gets (ids start at 1).
    NextJobId,
    /// The epoch the next lease gets (epochs start at 1).
    NextEpoch,
}

impl Counter {
    /// A stable name for the counters table.
    pub const fn name(self) -> &'static str {
        match self {
            Counter::NextJobId => "next_job_id",
            Counter::NextEpoch => "next_epoch",
        }
    }
}

/// Visitors return `true` to go on, `false` to stop.
pub type Visit<'a, T> = &'a mut dyn FnMut(T) -> bool;

/// Reading the tables. Scans call a visitor in key order until it returns `false`.
pub trait ReadTables {
    /// A job by id.
    fn job(&self, id: JobId) -> Result<Option<Job>, StorageFault>;
    /// Jobs with an id below `before` (all when `None`), highest id first.
    fn jobs_desc(&self, before: Option<JobId>, visit: Visit<'_, Job>) -> Result<(), StorageFault>;
    /// Ids of jobs in `state` below `before`, highest first.
    fn state_desc(
        &self,
        state: JobState,
        before: Option<JobId>,
        visit: Visit<'_, JobId>,
    ) -> Result<(), StorageFault>;
    /// Ids of the jobs with an attempt on `worker` below `before`, highest first.
    fn worker_jobs_desc(
        &self,
        worker: &WorkerId,
        before: Option<JobId>,
        visit: Visit<'_, JobId>,
    ) -> Result<(), StorageFault>;
    /// The queue in [`QueueKey`] order.
    fn queue(&self, visit: Visit<'_, (QueueKey, QueueEntry)>) -> Result<(), StorageFault>;
    /// Deadline entries at or before `now`, earliest first.
    fn deadlines_until(
        &self,
        now: Timestamp,
        visit: Visit<'_, (Timestamp, JobId)>,
    ) -> Result<(), StorageFault>;
    /// The job an idempotency key created.
    fn idempotent(&self, key: &str) -> Result<Option<JobId>, StorageFault>;
    /// Jobs that depend on `id`.
    fn dependents(&self, id: JobId) -> Result<Vec<JobId>, StorageFault>;
    /// A job's log bookkeeping.
    fn log_meta(&self, id: JobId) -> Result<Option<LogMeta>, StorageFault>;
    /// Lines of (`id`, `attempt`) from `from_seq` on, in order.
    fn logs(
        &self,
        id: JobId,
        attempt: u32,
        from_seq: u64,
        visit: Visit<'_, LogLine>,
    ) -> Result<(), StorageFault>;
    /// A worker by id.
    fn worker(&self, id: &WorkerId) -> Result<Option<WorkerRecord>, StorageFault>;
    /// Every worker, by id.
    fn workers(&self) -> Result<Vec<WorkerRecord>, StorageFault>;
    /// The classes of the queued jobs (each once, in no particular order).
    fn queue_classes(&self, visit: Visit<'_, QueueClass>) -> Result<(), StorageFault>;
    /// The queued jobs of `class` in [`QueueKey`] order, each with the time before which it
    /// may not be leased (its retry backoff).
    fn class_queue(
        &self,
        class: &QueueClass,
        visit: Visit<'_, (QueueKey, Option<Timestamp>)>,
    ) -> Result<(), StorageFault>;
    /// How many workers there are (engines count without reading them).
    fn worker_count(&self) -> Result<usize, StorageFault> {
        Ok(self.workers()?.len())
    }
    /// A counter's value; 0 when never set.
    fn counter(&self, counter: Counter) -> Result<u64, StorageFault>;
}

/// Writing the tables. Only the operations in this module call these.
pub trait Tables: ReadTables {
    /// Inserts or replaces a job.
    fn put_job(&mut self, job: &Job) -> Result<(), StorageFault>;
    /// Adds a queue entry.
    fn queue_put(&mut self, key: QueueKey, entry: &QueueEntry) -> Result<(), StorageFault>;
    /// Removes a queue entry.
    fn queue_remove(&mut self, key: QueueKey) -> Result<(), StorageFault>;
    /// Adds a queued job to its class's index.
    fn class_queue_put(
        &mut self,
        class: &QueueClass,
        key: QueueKey,
        not_before: Option<Timestamp>,
    ) -> Result<(), StorageFault>;
    /// Removes a queued job from its class's index.
    fn class_queue_remove(&mut self, class: &QueueClass, key: QueueKey)
    -> Result<(), StorageFault>;
    /// Adds a state index entry.
    fn state_put(&mut self, state: JobState, id: JobId) -> Result<(), StorageFault>;
    /// Removes a state index entry.
    fn state_remove(&mut self, state: JobState, id: JobId) -> Result<(), StorageFault>;
    /// Records that job `id` had an attempt on `worker`.
    fn worker_job_put(&mut self, worker: &WorkerId, id: JobId) -> Result<(), StorageFault>;
    /// Forgets that job `id` had an attempt on `worker`.
    fn worker_job_remove(&mut self, worker: &WorkerId, id: JobId) -> Result<(), StorageFault>;
    /// Adds a deadline entry.
    fn deadline_put(&mut self, at: Timestamp, id: JobId) -> Result<(), StorageFault>;
    /// Removes a deadline entry.
    fn deadline_remove(&mut self, at: Timestamp, id: JobId) -> Result<(), StorageFault>;
    /// Records that `key` created `id`.
    fn put_idempotent(&mut self, key: &str, id: JobId) -> Result<(), StorageFault>;
    /// Records that `child` waits on `dep`.
    fn add_dependent(&mut self, dep: JobId, child: JobId) -> Result<(), StorageFault>;
    /// Replaces a job's log bookkeeping.
    fn put_log_meta(&mut self, id: JobId, meta: &LogMeta) -> Result<(), StorageFault>;
    /// Stores one line.
    fn put_log_line(&mut self, id: JobId, attempt: u32, line: &LogLine)
    -> Result<(), StorageFault>;
    /// Inserts or replaces a worker.
    fn put_worker(&mut self, worker: &WorkerRecord) -> Result<(), StorageFault>;
    /// Removes a worker; `false` when there was none.
    fn remove_worker(&mut self, id: &WorkerId) -> Result<bool, StorageFault>;
    /// Removes a job's record (not its indexes: see `ops::delete`).
    fn remove_job(&mut self, id: JobId) -> Result<(), StorageFault>;
    /// Forgets which job `key` created.
    fn remove_idempotent(&mut self, key: &str) -> Result<(), StorageFault>;
    /// Forgets the jobs that wait on `id`.
    fn remove_dependents(&mut self, id: JobId) -> Result<(), StorageFault>;
    /// Removes a job's log, every attempt's lines and the bookkeeping.
    fn remove_logs(&mut self, id: JobId) -> Result<(), StorageFault>;
    /// Sets a counter.
    fn set_counter(&mut self, counter: Counter, value: u64) -> Result<(), StorageFault>;
}
