//! Which jobs a write changed: every write the [`Store`](super::Store) methods make runs its
//! operation on a [`Recorder`], which notes the jobs whose record or log the operation wrote
//! (the cascade to dependents included); once the write committed, the calling thread's
//! [`recording`] scope, if it has one, gets them. A control plane runs its writes in such a
//! scope and wakes the waiters of exactly those jobs.

use std::cell::RefCell;

use super::tables::{Counter, ReadTables, StorageFault, Tables, Visit};
use super::{Call, Engine, StoreError, WriteOp};
use crate::{
    Job, JobId, JobState, LogLine, LogMeta, QueueClass, QueueEntry, QueueKey, Timestamp, WorkerId,
    WorkerRecord,
};

thread_local! {
    /// The jobs the writes of this thread's innermost [`recording`] scope changed.
    static COLLECTED: RefCell<Option<Vec<JobId>>> = const { RefCell::new(None) };
}

/// Runs `f`, and answers with what it returned the jobs that the store writes it made (on
/// this thread, through the [`Store`](super::Store) methods) changed and committed, each once,
/// in id order: jobs whose record or log was written or removed.
pub fn recording<R>(f: impl FnOnce() -> R) -> (R, Vec<JobId>) {
    let outer = COLLECTED.with(|c| c.replace(Some(Vec::new())));
    let r = f();
    let mut ours = COLLECTED.with(|c| c.replace(outer)).unwrap_or_default();
    ours.sort_unstable();
    ours.dedup();
    // An enclosing scope sees them too.
    COLLECTED.with(|c| {
        if let Some(outer) = c.borrow_mut().as_mut() {
            outer.extend_from_slice(&ours);
        }
    });
    (r, ours)
}

/// A write through `engine` whose changed jobs go to the calling thread's scope once it
/// committed.
pub(super) fn write<E: Engine + ?Sized, R: Send + 'static>(
    engine: &E,
    call: Call,
    op: WriteOp<R>,
) -> Result<R, StoreError> {
    let (r, touched) = engine.write(
        call,
        Box::new(move |t| {
            let mut recorder = Recorder {
                tables: t,
                touched: Vec::new(),
            };
            let r = op(&mut recorder)?;
            Ok((r, recorder.touched))
        }),
    )?;
    COLLECTED.with(|c| {
        if let Some(collected) = c.borrow_mut().as_mut() {
            collected.extend(touched);
        }
    });
    Ok(r)
}

/// The tables of a write, noting the jobs it changes.
struct Recorder<'t> {
    tables: &'t mut dyn Tables,
    touched: Vec<JobId>,
}

impl ReadTables for Recorder<'_> {
    fn job(&self, id: JobId) -> Result<Option<Job>, StorageFault> {
        self.tables.job(id)
    }
    fn jobs_desc(&self, before: Option<JobId>, visit: Visit<'_, Job>) -> Result<(), StorageFault> {
        self.tables.jobs_desc(before, visit)
    }
    fn state_desc(
        &self,
        state: JobState,
        before: Option<JobId>,
        visit: Visit<'_, JobId>,
    ) -> Result<(), StorageFault> {
        self.tables.state_desc(state, before, visit)
    }
    fn worker_jobs_desc(
        &self,
        worker: &WorkerId,
        before: Option<JobId>,
        visit: Visit<'_, JobId>,
    ) -> Result<(), StorageFault> {
        self.tables.worker_jobs_desc(worker, before, visit)
    }
    fn queue(&self, visit: Visit<'_, (QueueKey, QueueEntry)>) -> Result<(), StorageFault> {
        self.tables.queue(visit)
    }
    fn queue_classes(&self, visit: Visit<'_, QueueClass>) -> Result<(), StorageFault> {
        self.tables.queue_classes(visit)
    }
    fn class_queue(
        &self,
        class: &QueueClass,
        visit: Visit<'_, (QueueKey, Option<Timestamp>)>,
    ) -> Result<(), StorageFault> {
        self.tables.class_queue(class, visit)
    }
    fn deadlines_until(
        &self,
        now: Timestamp,
        visit: Visit<'_, (Timestamp, JobId)>,
    ) -> Result<(), StorageFault> {
        self.tables.deadlines_until(now, visit)
    }
    fn idempotent(&self, key: &str) -> Result<Option<JobId>, StorageFault> {
        self.tables.idempotent(key)
    }
    fn dependents(&self, id: JobId) -> Result<Vec<JobId>, StorageFault> {
        self.tables.dependents(id)
    }
    fn log_meta(&self, id: JobId) -> Result<Option<LogMeta>, StorageFault> {
        self.tables.log_meta(id)
    }
    fn logs(
        &self,
        id: JobId,
        attempt: u32,
        from_seq: u64,
        visit: Visit<'_, LogLine>,
    ) -> Result<(), StorageFault> {
        self.tables.logs(id, attempt, from_seq, visit)
    }
    fn worker(&self, id: &WorkerId) -> Result<Option<WorkerRecord>, StorageFault> {
        self.tables.worker(id)
    }
    fn workers(&self) -> Result<Vec<WorkerRecord>, StorageFault> {
        self.tables.workers()
    }
    fn worker_count(&self) -> Result<usize, StorageFault> {
        self.tables.worker_count()
    }
    fn counter(&self, counter: Counter) -> Result<u64, StorageFault> {
        self.tables.counter(counter)
    }
}

impl Tables for Recorder<'_> {
    fn put_job(&mut self, job: &Job) -> Result<(), StorageFault> {
        self.touched.push(job.id);
        self.tables.put_job(job)
    }
    fn queue_put(&mut self, key: QueueKey, entry: &QueueEntry) -> Result<(), StorageFault> {
        self.tables.queue_put(key, entry)
    }
    fn queue_remove(&mut self, key: QueueKey) -> Result<(), StorageFault> {
        self.tables.queue_remove(key)
    }
    fn class_queue_put(
        &mut self,
        class: &QueueClass,
        key: QueueKey,
        not_before: Option<Timestamp>,
    ) -> Result<(), StorageFault> {
        self.tables.class_queue_put(class, key, not_before)
    }
    fn class_queue_remove(
        &mut self,
        class: &QueueClass,
        key: QueueKey,
    ) -> Result<(), StorageFault> {
        self.tables.class_queue_remove(class, key)
    }
    fn state_put(&mut self, state: JobState, id: JobId) -> Result<(), StorageFault> {
        self.tables.state_put(state, id)
    }
    fn state_remove(&mut self, state: JobState, id: JobId) -> Result<(), StorageFault> {
        self.tables.state_remove(state, id)
    }
    fn worker_job_put(&mut self, worker: &WorkerId, id: JobId) -> Result<(), StorageFault> {
        self.tables.worker_job_put(worker, id)
    }
    fn worker_job_remove(&mut self, worker: &WorkerId, id: JobId) -> Result<(), StorageFault> {
        self.tables.worker_job_remove(worker, id)
    }
    fn deadline_put(&mut self, at: Timestamp, id: JobId) -> Result<(), StorageFault> {
        self.tables.deadline_put(at, id)
    }
    fn deadline_remove(&mut self, at: Timestamp, id: JobId) -> Result<(), StorageFault> {
        self.tables.deadline_remove(at, id)
    }
    fn put_idempotent(&mut self, key: &str, id: JobId) -> Result<(), StorageFault> {
        self.tables.put_idempotent(key, id)
    }
    fn add_dependent(&mut self, dep: JobId, child: JobId) -> Result<(), StorageFault> {
        self.tables.add_dependent(dep, child)
    }
    fn put_log_meta(&mut self, id: JobId, meta: &LogMeta) -> Result<(), StorageFault> {
        self.touched.push(id);
        self.tables.put_log_meta(id, meta)
    }
    fn put_log_line(
        &mut self,
        id: JobId,
        attempt: u32,
        line: &LogLine,
    ) -> Result<(), StorageFault> {
        self.touched.push(id);
        self.tables.put_log_line(id, attempt, line)
    }
    fn put_worker(&mut self, worker: &WorkerRecord) -> Result<(), StorageFault> {
        self.tables.put_worker(worker)
    }
    fn remove_worker(&mut self, id: &WorkerId) -> Result<bool, StorageFault> {
        self.tables.remove_worker(id)
    }
    fn remove_job(&mut self, id: JobId) -> Result<(), StorageFault> {
        self.touched.push(id);
        self.tables.remove_job(id)
    }
    fn remove_idempotent(&mut self, key: &str) -> Result<(), StorageFault> {
        self.tables.remove_idempotent(key)
    }
    fn remove_dependents(&mut self, id: JobId) -> Result<(), StorageFault> {
        self.tables.remove_dependents(id)
    }
    fn remove_logs(&mut self, id: JobId) -> Result<(), StorageFault> {
        self.touched.push(id);
        self.tables.remove_logs(id)
    }
    fn set_counter(&mut self, counter: Counter, value: u64) -> Result<(), StorageFault> {
        self.tables.set_counter(counter, value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{GenerateParams, JobParams, JobSpec, MemStore, Store, StoreConfig};

    fn spec() -> JobSpec {
        JobSpec::new(JobParams::Generate(GenerateParams::new("physics", 10)))
    }

    #[test]
    fn a_scope_gets_the_jobs_its_writes_changed_the_cascade_included() {
        let store = MemStore::new(StoreConfig::default());
        let (a, touched) = recording(|| store.submit(spec(), Timestamp(1)).unwrap());
        assert_eq!(touched, [a.id]);
        let mut child = spec();
        child.depends_on = vec![a.id];
        let b = store.submit(child, Timestamp(2)).unwrap();
        let other = store.submit(spec(), Timestamp(3)).unwrap();
        // Cancelling a cancels b, which waits on it; the other job is untouched.
        let (_, touched) = recording(|| store.cancel(a.id, "no".into(), Timestamp(4)).unwrap());
        assert_eq!(touched, [a.id, b.id]);
        assert!(!touched.contains(&other.id));
        // Reads touch nothing; nor does a refused write; nor writes outside a scope.
        let (_, touched) = recording(|| {
            store.get(other.id).unwrap();
            assert!(store.cancel(a.id, "again".into(), Timestamp(5)).is_err());
        });
        assert!(touched.is_empty(), "{touched:?}");
        // A scope inside another: both see the inner one's.
        let ((_, inner), outer) =
            recording(|| recording(|| store.cancel(other.id, "x".into(), Timestamp(6)).unwrap()));
        assert_eq!(
            (inner.as_slice(), outer.as_slice()),
            ([other.id].as_slice(), [other.id].as_slice())
        );
    }
}
