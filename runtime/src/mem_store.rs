//! [`MemStore`]: the in-memory store, the reference model every other store is tested against.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;
use std::sync::{Mutex, MutexGuard, PoisonError};

use crate::id::{JobId, WorkerId};
use crate::job::{Job, JobState};
use crate::log::{LogLine, LogMeta};
use crate::scheduling::{QueueClass, QueueEntry, QueueKey};
use crate::store::{
    Call, Counter, Engine, ReadTables, StorageFault, StoreConfig, StoreError, Tables, Visit,
    WriteOp,
};
use crate::time::Timestamp;
use crate::worker::WorkerRecord;

/// The tables, as ordered maps.
#[derive(Clone, Debug, Default)]
struct MemTables {
    jobs: BTreeMap<JobId, Job>,
    queue: BTreeMap<QueueKey, QueueEntry>,
    /// The queue by class: each class with queued jobs, and its jobs in queue order.
    classes: Vec<(QueueClass, BTreeMap<QueueKey, Option<Timestamp>>)>,
    states: BTreeSet<(u8, JobId)>,
    worker_jobs: BTreeSet<(WorkerId, JobId)>,
    deadlines: BTreeSet<(Timestamp, JobId)>,
    idempotency: BTreeMap<String, JobId>,
    dependents: BTreeMap<JobId, Vec<JobId>>,
    log_meta: BTreeMap<JobId, LogMeta>,
    logs: BTreeMap<(JobId, u32, u64), LogLine>,
    workers: BTreeMap<WorkerId, WorkerRecord>,
    counters: BTreeMap<&'static str, u64>,
}

/// A store that keeps everything in memory. Nothing survives the process; use it for tests,
/// examples and embedding where durability is not wanted.
///
/// ```
/// use nexa_runtime::{GenerateParams, JobParams, JobSpec, JobState, MemStore, Store, Timestamp};
///
/// let store = MemStore::default();
/// let spec = JobSpec::new(JobParams::Generate(GenerateParams::new("biology", 100)));
/// let submitted = store.submit(spec, Timestamp(0)).unwrap();
/// assert_eq!(store.get(submitted.id).unwrap().state, JobState::Queued);
/// ```
#[derive(Debug, Default)]
pub struct MemStore {
    config: StoreConfig,
    tables: Mutex<MemTables>,
}

impl MemStore {
    /// An empty store with `config`.
    pub fn new(config: StoreConfig) -> Self {
        Self {
            config,
            tables: Mutex::default(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, MemTables> {
        // The tables are only changed by whole operations that cannot panic half-way through
        // a write sequence except by a bug; recovering the guard keeps the store usable.
        self.tables.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Engine for MemStore {
    fn config(&self) -> &StoreConfig {
        &self.config
    }

    fn quick_reads(&self) -> bool {
        true
    }

    fn write<R: Send + 'static>(&self, _: Call, op: WriteOp<R>) -> Result<R, StoreError> {
        let mut tables = self.lock();
        // Ops check everything before their first write, so a failed op wrote nothing.
        op(&mut *tables)
    }

    fn read<R>(
        &self,
        _: Call,
        op: &mut dyn FnMut(&dyn ReadTables) -> Result<R, StoreError>,
    ) -> Result<R, StoreError> {
        let tables = self.lock();
        op(&*tables)
    }
}

impl ReadTables for MemTables {
    fn job(&self, id: JobId) -> Result<Option<Job>, StorageFault> {
        Ok(self.jobs.get(&id).cloned())
    }

    fn jobs_desc(&self, before: Option<JobId>, visit: Visit<'_, Job>) -> Result<(), StorageFault> {
        let upper = before.map_or(Bound::Unbounded, Bound::Excluded);
        for job in self
            .jobs
            .range((Bound::Unbounded, upper))
            .rev()
            .map(|(_, j)| j)
        {
            if !visit(job.clone()) {
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
        let lo = Bound::Included((worker.clone(), JobId(0)));
        let hi = match before {
            Some(b) => Bound::Excluded((worker.clone(), b)),
            None => Bound::Included((worker.clone(), JobId(u64::MAX))),
        };
        for (_, id) in self.worker_jobs.range((lo, hi)).rev() {
            if !visit(*id) {
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
        let lo = (state.code(), JobId(0));
        let hi = (state.code(), before.unwrap_or(JobId(u64::MAX)));
        let upper = if before.is_some() {
            Bound::Excluded(hi)
        } else {
            Bound::Included(hi)
        };
        for &(_, id) in self.states.range((Bound::Included(lo), upper)).rev() {
            if !visit(id) {
                break;
            }
        }
        Ok(())
    }

    fn queue(&self, visit: Visit<'_, (QueueKey, QueueEntry)>) -> Result<(), StorageFault> {
        for (k, e) in &self.queue {
            if !visit((*k, e.clone())) {
                break;
            }
        }
        Ok(())
    }

    fn queue_classes(&self, visit: Visit<'_, QueueClass>) -> Result<(), StorageFault> {
        for (class, _) in &self.classes {
            if !visit(class.clone()) {
                break;
            }
        }
        Ok(())
    }

    fn class_queue(
        &self,
        class: &QueueClass,
        visit: Visit<'_, (QueueKey, Option<Timestamp>)>,
    ) -> Result<(), StorageFault> {
        let jobs = self.classes.iter().find(|(c, _)| c == class);
        for (key, not_before) in jobs.into_iter().flat_map(|(_, jobs)| jobs) {
            if !visit((*key, *not_before)) {
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
        for &entry in self.deadlines.range(..=(now, JobId(u64::MAX))) {
            if !visit(entry) {
                break;
            }
        }
        Ok(())
    }

    fn idempotent(&self, key: &str) -> Result<Option<JobId>, StorageFault> {
        Ok(self.idempotency.get(key).copied())
    }

    fn dependents(&self, id: JobId) -> Result<Vec<JobId>, StorageFault> {
        Ok(self.dependents.get(&id).cloned().unwrap_or_default())
    }

    fn log_meta(&self, id: JobId) -> Result<Option<LogMeta>, StorageFault> {
        Ok(self.log_meta.get(&id).cloned())
    }

    fn logs(
        &self,
        id: JobId,
        attempt: u32,
        from_seq: u64,
        visit: Visit<'_, LogLine>,
    ) -> Result<(), StorageFault> {
        for line in self
            .logs
            .range((id, attempt, from_seq)..=(id, attempt, u64::MAX))
            .map(|(_, l)| l)
        {
            if !visit(line.clone()) {
                break;
            }
        }
        Ok(())
    }

    fn worker(&self, id: &WorkerId) -> Result<Option<WorkerRecord>, StorageFault> {
        Ok(self.workers.get(id).cloned())
    }

    fn workers(&self) -> Result<Vec<WorkerRecord>, StorageFault> {
        Ok(self.workers.values().cloned().collect())
    }

    fn worker_count(&self) -> Result<usize, StorageFault> {
        Ok(self.workers.len())
    }

    fn counter(&self, counter: Counter) -> Result<u64, StorageFault> {
        Ok(self.counters.get(counter.name()).copied().unwrap_or(0))
    }
}

impl Tables for MemTables {
    fn put_job(&mut self, job: &Job) -> Result<(), StorageFault> {
        self.jobs.insert(job.id, job.clone());
        Ok(())
    }

    fn queue_put(&mut self, key: QueueKey, entry: &QueueEntry) -> Result<(), StorageFault> {
        self.queue.insert(key, entry.clone());
        Ok(())
    }

    fn queue_remove(&mut self, key: QueueKey) -> Result<(), StorageFault> {
        self.queue.remove(&key);
        Ok(())
    }

    fn class_queue_put(
        &mut self,
        class: &QueueClass,
        key: QueueKey,
        not_before: Option<Timestamp>,
    ) -> Result<(), StorageFault> {
        match self.classes.iter_mut().find(|(c, _)| c == class) {
            Some((_, jobs)) => {
                jobs.insert(key, not_before);
            }
            None => self
                .classes
                .push((class.clone(), [(key, not_before)].into())),
        }
        Ok(())
    }

    fn class_queue_remove(
        &mut self,
        class: &QueueClass,
        key: QueueKey,
    ) -> Result<(), StorageFault> {
        if let Some(i) = self.classes.iter().position(|(c, _)| c == class) {
            self.classes[i].1.remove(&key);
            if self.classes[i].1.is_empty() {
                self.classes.swap_remove(i);
            }
        }
        Ok(())
    }

    fn worker_job_put(&mut self, worker: &WorkerId, id: JobId) -> Result<(), StorageFault> {
        self.worker_jobs.insert((worker.clone(), id));
        Ok(())
    }

    fn worker_job_remove(&mut self, worker: &WorkerId, id: JobId) -> Result<(), StorageFault> {
        self.worker_jobs.remove(&(worker.clone(), id));
        Ok(())
    }

    fn state_put(&mut self, state: JobState, id: JobId) -> Result<(), StorageFault> {
        self.states.insert((state.code(), id));
        Ok(())
    }

    fn state_remove(&mut self, state: JobState, id: JobId) -> Result<(), StorageFault> {
        self.states.remove(&(state.code(), id));
        Ok(())
    }

    fn deadline_put(&mut self, at: Timestamp, id: JobId) -> Result<(), StorageFault> {
        self.deadlines.insert((at, id));
        Ok(())
    }

    fn deadline_remove(&mut self, at: Timestamp, id: JobId) -> Result<(), StorageFault> {
        self.deadlines.remove(&(at, id));
        Ok(())
    }

    fn put_idempotent(&mut self, key: &str, id: JobId) -> Result<(), StorageFault> {
        self.idempotency.insert(key.to_owned(), id);
        Ok(())
    }

    fn add_dependent(&mut self, dep: JobId, child: JobId) -> Result<(), StorageFault> {
        self.dependents.entry(dep).or_default().push(child);
        Ok(())
    }

    fn put_log_meta(&mut self, id: JobId, meta: &LogMeta) -> Result<(), StorageFault> {
        self.log_meta.insert(id, meta.clone());
        Ok(())
    }

    fn put_log_line(
        &mut self,
        id: JobId,
        attempt: u32,
        line: &LogLine,
    ) -> Result<(), StorageFault> {
        self.logs.insert((id, attempt, line.seq), line.clone());
        Ok(())
    }

    fn put_worker(&mut self, worker: &WorkerRecord) -> Result<(), StorageFault> {
        self.workers.insert(worker.info.id.clone(), worker.clone());
        Ok(())
    }

    fn remove_worker(&mut self, id: &WorkerId) -> Result<bool, StorageFault> {
        Ok(self.workers.remove(id).is_some())
    }

    fn remove_job(&mut self, id: JobId) -> Result<(), StorageFault> {
        self.jobs.remove(&id);
        Ok(())
    }

    fn remove_idempotent(&mut self, key: &str) -> Result<(), StorageFault> {
        self.idempotency.remove(key);
        Ok(())
    }

    fn remove_dependents(&mut self, id: JobId) -> Result<(), StorageFault> {
        self.dependents.remove(&id);
        Ok(())
    }

    fn remove_logs(&mut self, id: JobId) -> Result<(), StorageFault> {
        self.log_meta.remove(&id);
        let lines: Vec<_> = self
            .logs
            .range((id, 0, 0)..=(id, u32::MAX, u64::MAX))
            .map(|(k, _)| *k)
            .collect();
        for key in lines {
            self.logs.remove(&key);
        }
        Ok(())
    }

    fn set_counter(&mut self, counter: Counter, value: u64) -> Result<(), StorageFault> {
        self.counters.insert(counter.name(), value);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{JobType, SpecError, Store, WorkerInfo};

    #[test]
    fn registrations_stop_at_the_most_a_control_plane_keeps() {
        let store = MemStore::new(StoreConfig::default());
        let info = |n: usize| WorkerInfo {
            id: WorkerId::new(format!("w{n}")).unwrap(),
            cpus: 1,
            memory_mb: 1024,
            gpus: vec![],
            labels: Default::default(),
            job_types: [JobType::Train].into(),
        };
        for n in 0..WorkerInfo::MAX_REGISTERED {
            store.register_worker(info(n), Timestamp(0)).unwrap();
        }
        let err = store
            .register_worker(info(WorkerInfo::MAX_REGISTERED), Timestamp(0))
            .unwrap_err();
        assert!(
            matches!(&err, StoreError::InvalidSpec(SpecError { field, .. }) if field == "worker_id"),
            "{err}"
        );
        // A registered worker may register again (after a restart).
        store.register_worker(info(7), Timestamp(1)).unwrap();
        assert_eq!(
            store.list_workers().unwrap().len(),
            WorkerInfo::MAX_REGISTERED
        );
    }
}
