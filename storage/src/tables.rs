//! The redb tables behind [`ReadTables`] and [`Tables`].
//!
//! Keys are fixed-width integers and tuples, so redb's ordering is the order the operations
//! scan in: job ids ascending, the queue in [`QueueKey::sort_key`] order, deadlines by time.

use nexa_runtime::{
    Counter, Job, JobId, JobState, LogLine, LogMeta, QueueClass, QueueEntry, QueueKey, ReadTables,
    StorageFault, Tables, Timestamp, Visit, WorkerId, WorkerRecord,
};
use redb::{
    MultimapTable, MultimapTableDefinition, ReadOnlyMultimapTable, ReadOnlyTable, ReadTransaction,
    ReadableMultimapTable, ReadableTable, ReadableTableMetadata, Table, TableDefinition,
    WriteTransaction,
};

use crate::fault::fault;
use crate::record::{decode, encode};

pub(crate) const JOBS: TableDefinition<'_, u64, &[u8]> = TableDefinition::new("jobs");
pub(crate) const QUEUE: TableDefinition<'_, (u32, u64), &[u8]> = TableDefinition::new("queue");
/// The queue by class: (the encoded [`QueueClass`], rank, job) → the job's retry backoff.
pub(crate) const CLASS_QUEUE: TableDefinition<'_, (&[u8], u32, u64), Option<u64>> =
    TableDefinition::new("class_queue");
pub(crate) const STATES: TableDefinition<'_, (u8, u64), ()> = TableDefinition::new("states");
/// (worker, job) for every attempt a worker had: the jobs a worker ran, without a scan.
pub(crate) const WORKER_JOBS: TableDefinition<'_, (&str, u64), ()> =
    TableDefinition::new("worker_jobs");
pub(crate) const DEADLINES: TableDefinition<'_, (u64, u64), ()> = TableDefinition::new("deadlines");
pub(crate) const IDEMPOTENCY: TableDefinition<'_, &str, u64> = TableDefinition::new("idempotency");
pub(crate) const DEPENDENTS: MultimapTableDefinition<'_, u64, u64> =
    MultimapTableDefinition::new("dependents");
pub(crate) const LOG_META: TableDefinition<'_, u64, &[u8]> = TableDefinition::new("log_meta");
pub(crate) const LOGS: TableDefinition<'_, (u64, u32, u64), &[u8]> = TableDefinition::new("logs");
pub(crate) const WORKERS: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("workers");
/// Counters and the format version.
pub(crate) const META: TableDefinition<'_, &str, u64> = TableDefinition::new("meta");

/// Opens every table in `$txn`, a read or a write transaction (which creates the missing
/// ones): the one list of tables and their definitions.
macro_rules! open_all {
    ($txn:expr) => {
        Ok(Self {
            jobs: $txn.open_table(JOBS).map_err(fault)?,
            queue: $txn.open_table(QUEUE).map_err(fault)?,
            class_queue: $txn.open_table(CLASS_QUEUE).map_err(fault)?,
            states: $txn.open_table(STATES).map_err(fault)?,
            worker_jobs: $txn.open_table(WORKER_JOBS).map_err(fault)?,
            deadlines: $txn.open_table(DEADLINES).map_err(fault)?,
            idempotency: $txn.open_table(IDEMPOTENCY).map_err(fault)?,
            dependents: $txn.open_multimap_table(DEPENDENTS).map_err(fault)?,
            log_meta: $txn.open_table(LOG_META).map_err(fault)?,
            logs: $txn.open_table(LOGS).map_err(fault)?,
            workers: $txn.open_table(WORKERS).map_err(fault)?,
            meta: $txn.open_table(META).map_err(fault)?,
        })
    };
}

/// The tables of a read transaction.
pub(crate) struct ReadSnapshot {
    jobs: ReadOnlyTable<u64, &'static [u8]>,
    queue: ReadOnlyTable<(u32, u64), &'static [u8]>,
    class_queue: ReadOnlyTable<(&'static [u8], u32, u64), Option<u64>>,
    states: ReadOnlyTable<(u8, u64), ()>,
    worker_jobs: ReadOnlyTable<(&'static str, u64), ()>,
    deadlines: ReadOnlyTable<(u64, u64), ()>,
    idempotency: ReadOnlyTable<&'static str, u64>,
    dependents: ReadOnlyMultimapTable<u64, u64>,
    log_meta: ReadOnlyTable<u64, &'static [u8]>,
    logs: ReadOnlyTable<(u64, u32, u64), &'static [u8]>,
    workers: ReadOnlyTable<&'static str, &'static [u8]>,
    meta: ReadOnlyTable<&'static str, u64>,
}

impl ReadSnapshot {
    pub(crate) fn open(txn: &ReadTransaction) -> Result<Self, StorageFault> {
        open_all!(txn)
    }
}

/// The tables of a write transaction.
pub(crate) struct WriteTables<'txn> {
    jobs: Table<'txn, u64, &'static [u8]>,
    queue: Table<'txn, (u32, u64), &'static [u8]>,
    class_queue: Table<'txn, (&'static [u8], u32, u64), Option<u64>>,
    states: Table<'txn, (u8, u64), ()>,
    worker_jobs: Table<'txn, (&'static str, u64), ()>,
    deadlines: Table<'txn, (u64, u64), ()>,
    idempotency: Table<'txn, &'static str, u64>,
    dependents: MultimapTable<'txn, u64, u64>,
    log_meta: Table<'txn, u64, &'static [u8]>,
    logs: Table<'txn, (u64, u32, u64), &'static [u8]>,
    workers: Table<'txn, &'static str, &'static [u8]>,
    meta: Table<'txn, &'static str, u64>,
}

impl<'txn> WriteTables<'txn> {
    /// Opens (creating where missing) every table in `txn`.
    pub(crate) fn open(txn: &'txn WriteTransaction) -> Result<Self, StorageFault> {
        open_all!(txn)
    }
}

/// Reads are the same code for both transaction kinds: their tables share redb's
/// `ReadableTable` traits.
macro_rules! read_tables {
    ($ty:ty) => {
        impl ReadTables for $ty {
            fn job(&self, id: JobId) -> Result<Option<Job>, StorageFault> {
                match self.jobs.get(id.0).map_err(fault)? {
                    Some(v) => decode(v.value(), "job").map(Some),
                    None => Ok(None),
                }
            }

            fn jobs_desc(
                &self,
                before: Option<JobId>,
                visit: Visit<'_, Job>,
            ) -> Result<(), StorageFault> {
                let range = self
                    .jobs
                    .range(..before.map_or(u64::MAX, |b| b.0))
                    .map_err(fault)?;
                // `..u64::MAX` would miss id u64::MAX, which the id counter never reaches.
                for entry in range.rev() {
                    let (_, v) = entry.map_err(fault)?;
                    if !visit(decode(v.value(), "job")?) {
                        break;
                    }
                }
                Ok(())
            }

            fn state_desc(
                &self,
                state: JobState,
                before: Option<JobId>,
                visit: Visit<'_, JobId>,
            ) -> Result<(), StorageFault> {
                let s = state.code();
                let end = before.map_or(u64::MAX, |b| b.0);
                for entry in self.states.range((s, 0)..(s, end)).map_err(fault)?.rev() {
                    let (k, _) = entry.map_err(fault)?;
                    if !visit(JobId(k.value().1)) {
                        break;
                    }
                }
                Ok(())
            }

            fn worker_jobs_desc(
                &self,
                worker: &WorkerId,
                before: Option<JobId>,
                visit: Visit<'_, JobId>,
            ) -> Result<(), StorageFault> {
                let w = worker.as_str();
                let end = before.map_or(u64::MAX, |b| b.0);
                for entry in self
                    .worker_jobs
                    .range((w, 0)..(w, end))
                    .map_err(fault)?
                    .rev()
                {
                    let (k, _) = entry.map_err(fault)?;
                    if !visit(JobId(k.value().1)) {
                        break;
                    }
                }
                Ok(())
            }

            fn queue(&self, visit: Visit<'_, (QueueKey, QueueEntry)>) -> Result<(), StorageFault> {
                for entry in self.queue.iter().map_err(fault)? {
                    let (k, v) = entry.map_err(fault)?;
                    let key = QueueKey::from_sort_key(k.value());
                    if !visit((key, decode(v.value(), "queue entry")?)) {
                        break;
                    }
                }
                Ok(())
            }

            fn queue_classes(&self, visit: Visit<'_, QueueClass>) -> Result<(), StorageFault> {
                // One seek per class: past every key of the class just read.
                let mut after: Option<Vec<u8>> = None;
                loop {
                    let mut next = None;
                    let range = match &after {
                        None => self.class_queue.iter(),
                        Some(c) => self.class_queue.range((c.as_slice(), u32::MAX, u64::MAX)..),
                    }
                    .map_err(fault)?;
                    for entry in range {
                        let (k, _) = entry.map_err(fault)?;
                        let class = k.value().0;
                        if after.as_deref() != Some(class) {
                            next = Some(class.to_vec());
                            break;
                        }
                    }
                    let Some(class) = next else {
                        return Ok(());
                    };
                    if !visit(decode(&class, "queue class")?) {
                        return Ok(());
                    }
                    after = Some(class);
                }
            }

            fn class_queue(
                &self,
                class: &QueueClass,
                visit: Visit<'_, (QueueKey, Option<Timestamp>)>,
            ) -> Result<(), StorageFault> {
                let c = encode(class)?;
                let c = c.as_slice();
                for entry in self
                    .class_queue
                    .range((c, 0, 0)..=(c, u32::MAX, u64::MAX))
                    .map_err(fault)?
                {
                    let (k, v) = entry.map_err(fault)?;
                    let (_, rank, job) = k.value();
                    let key = QueueKey::from_sort_key((rank, job));
                    if !visit((key, v.value().map(Timestamp))) {
                        break;
                    }
                }
                Ok(())
            }

            fn deadlines_until(
                &self,
                now: Timestamp,
                visit: Visit<'_, (Timestamp, JobId)>,
            ) -> Result<(), StorageFault> {
                for entry in self.deadlines.range(..=(now.0, u64::MAX)).map_err(fault)? {
                    let (k, _) = entry.map_err(fault)?;
                    let (at, id) = k.value();
                    if !visit((Timestamp(at), JobId(id))) {
                        break;
                    }
                }
                Ok(())
            }

            fn idempotent(&self, key: &str) -> Result<Option<JobId>, StorageFault> {
                Ok(self
                    .idempotency
                    .get(key)
                    .map_err(fault)?
                    .map(|v| JobId(v.value())))
            }

            fn dependents(&self, id: JobId) -> Result<Vec<JobId>, StorageFault> {
                let mut out = Vec::new();
                for v in self.dependents.get(id.0).map_err(fault)? {
                    out.push(JobId(v.map_err(fault)?.value()));
                }
                Ok(out)
            }

            fn log_meta(&self, id: JobId) -> Result<Option<LogMeta>, StorageFault> {
                match self.log_meta.get(id.0).map_err(fault)? {
                    Some(v) => decode(v.value(), "log meta").map(Some),
                    None => Ok(None),
                }
            }

            fn logs(
                &self,
                id: JobId,
                attempt: u32,
                from_seq: u64,
                visit: Visit<'_, LogLine>,
            ) -> Result<(), StorageFault> {
                let range = (id.0, attempt, from_seq)..=(id.0, attempt, u64::MAX);
                for entry in self.logs.range(range).map_err(fault)? {
                    let (_, v) = entry.map_err(fault)?;
                    if !visit(decode(v.value(), "log line")?) {
                        break;
                    }
                }
                Ok(())
            }

            fn worker(&self, id: &WorkerId) -> Result<Option<WorkerRecord>, StorageFault> {
                match self.workers.get(id.as_str()).map_err(fault)? {
                    Some(v) => decode(v.value(), "worker").map(Some),
                    None => Ok(None),
                }
            }

            fn workers(&self) -> Result<Vec<WorkerRecord>, StorageFault> {
                let mut out = Vec::new();
                for entry in self.workers.iter().map_err(fault)? {
                    let (_, v) = entry.map_err(fault)?;
                    out.push(decode(v.value(), "worker")?);
                }
                Ok(out)
            }

            fn worker_count(&self) -> Result<usize, StorageFault> {
                // The table keeps its length: no record is read.
                let n = self.workers.len().map_err(fault)?;
                Ok(usize::try_from(n).unwrap_or(usize::MAX))
            }

            fn counter(&self, counter: Counter) -> Result<u64, StorageFault> {
                Ok(self
                    .meta
                    .get(counter.name())
                    .map_err(fault)?
                    .map_or(0, |v| v.value()))
            }
        }
    };
}

read_tables!(ReadSnapshot);
read_tables!(WriteTables<'_>);

impl Tables for WriteTables<'_> {
    fn put_job(&mut self, job: &Job) -> Result<(), StorageFault> {
        self.jobs
            .insert(job.id.0, encode(job)?.as_slice())
            .map_err(fault)?;
        Ok(())
    }

    fn queue_put(&mut self, key: QueueKey, entry: &QueueEntry) -> Result<(), StorageFault> {
        self.queue
            .insert(key.sort_key(), encode(entry)?.as_slice())
            .map_err(fault)?;
        Ok(())
    }

    fn queue_remove(&mut self, key: QueueKey) -> Result<(), StorageFault> {
        self.queue.remove(key.sort_key()).map_err(fault)?;
        Ok(())
    }

    fn class_queue_put(
        &mut self,
        class: &QueueClass,
        key: QueueKey,
        not_before: Option<Timestamp>,
    ) -> Result<(), StorageFault> {
        let (rank, job) = key.sort_key();
        self.class_queue
            .insert(
                (encode(class)?.as_slice(), rank, job),
                not_before.map(|t| t.0),
            )
            .map_err(fault)?;
        Ok(())
    }

    fn class_queue_remove(
        &mut self,
        class: &QueueClass,
        key: QueueKey,
    ) -> Result<(), StorageFault> {
        let (rank, job) = key.sort_key();
        self.class_queue
            .remove((encode(class)?.as_slice(), rank, job))
            .map_err(fault)?;
        Ok(())
    }

    fn worker_job_put(&mut self, worker: &WorkerId, id: JobId) -> Result<(), StorageFault> {
        self.worker_jobs
            .insert((worker.as_str(), id.0), ())
            .map_err(fault)?;
        Ok(())
    }

    fn worker_job_remove(&mut self, worker: &WorkerId, id: JobId) -> Result<(), StorageFault> {
        self.worker_jobs
            .remove((worker.as_str(), id.0))
            .map_err(fault)?;
        Ok(())
    }

    fn state_put(&mut self, state: JobState, id: JobId) -> Result<(), StorageFault> {
        self.states
            .insert((state.code(), id.0), ())
            .map_err(fault)?;
        Ok(())
    }

    fn state_remove(&mut self, state: JobState, id: JobId) -> Result<(), StorageFault> {
        self.states.remove((state.code(), id.0)).map_err(fault)?;
        Ok(())
    }

    fn deadline_put(&mut self, at: Timestamp, id: JobId) -> Result<(), StorageFault> {
        self.deadlines.insert((at.0, id.0), ()).map_err(fault)?;
        Ok(())
    }

    fn deadline_remove(&mut self, at: Timestamp, id: JobId) -> Result<(), StorageFault> {
        self.deadlines.remove((at.0, id.0)).map_err(fault)?;
        Ok(())
    }

    fn put_idempotent(&mut self, key: &str, id: JobId) -> Result<(), StorageFault> {
        self.idempotency.insert(key, id.0).map_err(fault)?;
        Ok(())
    }

    fn add_dependent(&mut self, dep: JobId, child: JobId) -> Result<(), StorageFault> {
        self.dependents.insert(dep.0, child.0).map_err(fault)?;
        Ok(())
    }

    fn put_log_meta(&mut self, id: JobId, meta: &LogMeta) -> Result<(), StorageFault> {
        self.log_meta
            .insert(id.0, encode(meta)?.as_slice())
            .map_err(fault)?;
        Ok(())
    }

    fn put_log_line(
        &mut self,
        id: JobId,
        attempt: u32,
        line: &LogLine,
    ) -> Result<(), StorageFault> {
        self.logs
            .insert((id.0, attempt, line.seq), encode(line)?.as_slice())
            .map_err(fault)?;
        Ok(())
    }

    fn put_worker(&mut self, worker: &WorkerRecord) -> Result<(), StorageFault> {
        self.workers
            .insert(worker.info.id.as_str(), encode(worker)?.as_slice())
            .map_err(fault)?;
        Ok(())
    }

    fn remove_worker(&mut self, id: &WorkerId) -> Result<bool, StorageFault> {
        Ok(self.workers.remove(id.as_str()).map_err(fault)?.is_some())
    }

    fn remove_job(&mut self, id: JobId) -> Result<(), StorageFault> {
        self.jobs.remove(id.0).map_err(fault)?;
        Ok(())
    }

    fn remove_idempotent(&mut self, key: &str) -> Result<(), StorageFault> {
        self.idempotency.remove(key).map_err(fault)?;
        Ok(())
    }

    fn remove_dependents(&mut self, id: JobId) -> Result<(), StorageFault> {
        self.dependents.remove_all(id.0).map_err(fault)?;
        Ok(())
    }

    fn remove_logs(&mut self, id: JobId) -> Result<(), StorageFault> {
        self.log_meta.remove(id.0).map_err(fault)?;
        self.logs
            .retain_in((id.0, 0, 0)..=(id.0, u32::MAX, u64::MAX), |_, _| false)
            .map_err(fault)?;
        Ok(())
    }

    fn set_counter(&mut self, counter: Counter, value: u64) -> Result<(), StorageFault> {
        self.meta.insert(counter.name(), value).map_err(fault)?;
        Ok(())
    }
}

/// Fills the index of each worker's jobs from every job's attempts (a format-1 file has none).
/// Builds the queue's class index from the queue (format 3 added it).
pub(crate) fn index_queue_classes(txn: &WriteTransaction) -> Result<u64, StorageFault> {
    let queue = txn.open_table(QUEUE).map_err(fault)?;
    let mut index = txn.open_table(CLASS_QUEUE).map_err(fault)?;
    let mut entries = 0;
    for entry in queue.iter().map_err(fault)? {
        let (k, v) = entry.map_err(fault)?;
        let (rank, job) = k.value();
        let entry: QueueEntry = decode(v.value(), "queue entry")?;
        index
            .insert(
                (encode(&entry.class())?.as_slice(), rank, job),
                entry.not_before.map(|t| t.0),
            )
            .map_err(fault)?;
        entries += 1;
    }
    Ok(entries)
}

pub(crate) fn index_worker_jobs(txn: &WriteTransaction) -> Result<u64, StorageFault> {
    let jobs = txn.open_table(JOBS).map_err(fault)?;
    let mut index = txn.open_table(WORKER_JOBS).map_err(fault)?;
    let mut entries = 0;
    for entry in jobs.iter().map_err(fault)? {
        let (_, v) = entry.map_err(fault)?;
        let job: Job = decode(v.value(), "job")?;
        for attempt in &job.attempts {
            index
                .insert((attempt.worker.as_str(), job.id.0), ())
                .map_err(fault)?;
            entries += 1;
        }
    }
    Ok(entries)
}
