//! The rules of every store operation, written once against [`Tables`].
//!
//! Each write operation does all of its checks before its first write, so an operation that
//! returns an error other than a [`StorageFault`] has written nothing. Storage engines that
//! commit several operations in one transaction rely on that.

use std::collections::BTreeSet;

use super::{
    Counter, Expired, LeaseRequest, ListQuery, Page, ReadTables, StorageFault, StoreConfig,
    StoreError, Submitted, Tables,
};
use crate::id::{Epoch, JobId, WorkerId};
use crate::job::{Job, JobState, Transition, TransitionError};
use crate::log::{LogAck, LogLine, LogPage, LogQuery, cap_marker};
use crate::scheduling::{self, Offer, PendingReason, QueueEntry, QueueKey};
use crate::spec::{JobSpec, SpecError};
use crate::time::Timestamp;
use crate::worker::{WorkerInfo, WorkerRecord, WorkerStatus};

fn corrupt(what: String) -> StoreError {
    StoreError::Storage(StorageFault::new(super::FaultKind::Corrupt, what))
}

fn load<T: ReadTables + ?Sized>(t: &T, id: JobId) -> Result<Job, StoreError> {
    t.job(id)?.ok_or(StoreError::NotFound(id))
}

fn queue_slot(job: &Job) -> Option<(QueueKey, QueueEntry)> {
    (job.state == JobState::Queued).then(|| {
        (
            QueueKey {
                priority: job.spec.priority,
                job: job.id,
            },
            QueueEntry::new(&job.spec, job.not_before),
        )
    })
}

/// Stores `new` and brings the indexes from `old`'s entries to `new`'s.
fn write_job<T: Tables + ?Sized>(
    t: &mut T,
    old: Option<&Job>,
    new: &Job,
) -> Result<(), StoreError> {
    t.put_job(new)?;
    // A lease adds an attempt: the worker's index of jobs gains this one.
    let tried = old.map_or(0, |o| o.attempts.len());
    for attempt in new.attempts.iter().skip(tried) {
        t.worker_job_put(&attempt.worker, new.id)?;
    }
    if old.map(|o| o.state) != Some(new.state) {
        if let Some(o) = old {
            t.state_remove(o.state, o.id)?;
        }
        t.state_put(new.state, new.id)?;
    }
    let old_slot = old.and_then(queue_slot);
    let new_slot = queue_slot(new);
    if old_slot != new_slot {
        if let Some((key, entry)) = &old_slot {
            t.queue_remove(*key)?;
            t.class_queue_remove(&entry.class(), *key)?;
        }
        if let Some((key, entry)) = &new_slot {
            t.queue_put(*key, entry)?;
            t.class_queue_put(&entry.class(), *key, entry.not_before)?;
        }
    }
    let old_deadline = old.and_then(Job::deadline);
    let new_deadline = new.deadline();
    if old_deadline != new_deadline {
        if let Some(at) = old_deadline {
            t.deadline_remove(at, new.id)?;
        }
        if let Some(at) = new_deadline {
            t.deadline_put(at, new.id)?;
        }
    }
    Ok(())
}

fn next_counter<T: Tables + ?Sized>(t: &mut T, c: Counter) -> Result<u64, StoreError> {
    let value = t.counter(c)?.max(1);
    t.set_counter(c, value + 1)?;
    Ok(value)
}

/// What a submission will do, decided before anything is written.
enum Plan {
    Existing(Submitted),
    New {
        spec: JobSpec,
        /// Dependencies not yet succeeded.
        pending: Vec<JobId>,
        /// A dependency that failed or was cancelled.
        doomed: Option<(JobId, JobState)>,
    },
}

fn plan_submit<T: ReadTables + ?Sized>(t: &T, spec: JobSpec) -> Result<Plan, StoreError> {
    spec.validate()?;
    if let Some(key) = &spec.idempotency_key
        && let Some(existing) = t.idempotent(key)?
    {
        let job = t
            .job(existing)?
            .ok_or_else(|| corrupt(format!("idempotency key {key:?} names missing {existing}")))?;
        if job.spec != spec {
            return Err(StoreError::IdempotencyConflict {
                key: key.clone(),
                existing,
            });
        }
        return Ok(Plan::Existing(Submitted {
            id: existing,
            state: job.state,
            created: false,
        }));
    }
    let mut pending = Vec::new();
    let mut doomed = None;
    for &dep in &spec.depends_on {
        let Some(d) = t.job(dep)? else {
            return Err(SpecError::new("depends_on", format!("{dep} does not exist")).into());
        };
        match d.state {
            JobState::Succeeded => {}
            JobState::Failed | JobState::Cancelled => {
                doomed.get_or_insert((dep, d.state));
            }
            _ => pending.push(dep),
        }
    }
    Ok(Plan::New {
        spec,
        pending,
        doomed,
    })
}

fn execute_submit<T: Tables + ?Sized>(
    t: &mut T,
    plan: Plan,
    now: Timestamp,
) -> Result<Submitted, StoreError> {
    let (spec, pending, doomed) = match plan {
        Plan::Existing(s) => return Ok(s),
        Plan::New {
            spec,
            pending,
            doomed,
        } => (spec, pending, doomed),
    };
    let id = JobId(next_counter(t, Counter::NextJobId)?);
    let key = spec.idempotency_key.clone();
    let mut job = Job::new(id, spec, pending.is_empty() && doomed.is_none(), now);
    if let Some((dep, state)) = doomed {
        let reason = format!("dependency {dep} {state}");
        // A new job is waiting or queued, where cancel always applies.
        job.apply(Transition::Cancel { reason }, now, &Default::default())?;
    } else {
        for dep in pending {
            t.add_dependent(dep, id)?;
        }
    }
    write_job(t, None, &job)?;
    if let Some(key) = key {
        t.put_idempotent(&key, id)?;
    }
    Ok(Submitted {
        id,
        state: job.state,
        created: true,
    })
}

pub(super) fn submit<T: Tables + ?Sized>(
    t: &mut T,
    _cfg: &StoreConfig,
    spec: JobSpec,
    now: Timestamp,
) -> Result<Submitted, StoreError> {
    let plan = plan_submit(t, spec)?;
    execute_submit(t, plan, now)
}

pub(super) fn submit_batch<T: Tables + ?Sized>(
    t: &mut T,
    specs: Vec<JobSpec>,
    now: Timestamp,
) -> Result<Vec<Submitted>, StoreError> {
    let mut keys = BTreeSet::new();
    let mut plans = Vec::with_capacity(specs.len());
    for (index, spec) in specs.into_iter().enumerate() {
        let batch = |source: StoreError| StoreError::Batch {
            index,
            source: Box::new(source),
        };
        if let Some(key) = &spec.idempotency_key
            && !keys.insert(key.clone())
        {
            return Err(batch(
                SpecError::new(
                    "idempotency_key",
                    format!("{key:?} appears twice in the batch"),
                )
                .into(),
            ));
        }
        plans.push(plan_submit(t, spec).map_err(batch)?);
    }
    plans
        .into_iter()
        .map(|plan| execute_submit(t, plan, now))
        .collect()
}

pub(super) fn get<T: ReadTables + ?Sized>(t: &T, id: JobId) -> Result<Job, StoreError> {
    load(t, id)
}

pub(super) fn count<T: ReadTables + ?Sized>(t: &T, state: JobState) -> Result<u64, StoreError> {
    let mut n = 0;
    t.state_desc(state, None, &mut |_| {
        n += 1;
        true
    })?;
    Ok(n)
}

pub(super) fn list<T: ReadTables + ?Sized>(t: &T, q: &ListQuery) -> Result<Page, StoreError> {
    if !(1..=1000).contains(&q.limit) {
        return Err(StoreError::InvalidQuery(format!(
            "limit {} is outside 1..=1000",
            q.limit
        )));
    }
    let mut jobs = Vec::with_capacity(q.limit + 1);
    let mut fault = None;
    let wanted = |job: &Job| {
        q.job_type.is_none_or(|ty| job.spec.job_type() == ty)
            && q.state.is_none_or(|state| job.state == state)
    };
    // Ids from an index name jobs to read; the narrowest index is used: a worker's jobs,
    // else the jobs in a state, else every job (read in order, no index).
    let mut take = |id: JobId, index: &str| match t.job(id) {
        Ok(Some(job)) => {
            if wanted(&job) {
                jobs.push(job);
            }
            jobs.len() <= q.limit
        }
        Ok(None) => {
            fault = Some(corrupt(format!("{index} index names missing {id}")));
            false
        }
        Err(e) => {
            fault = Some(e.into());
            false
        }
    };
    match (&q.worker, q.state) {
        (Some(worker), _) => t.worker_jobs_desc(worker, q.before, &mut |id| take(id, "worker"))?,
        (None, Some(state)) => t.state_desc(state, q.before, &mut |id| take(id, "state"))?,
        (None, None) => t.jobs_desc(q.before, &mut |job| {
            if wanted(&job) {
                jobs.push(job);
            }
            jobs.len() <= q.limit
        })?,
    }
    if let Some(e) = fault {
        return Err(e);
    }
    let next_before = if jobs.len() > q.limit {
        jobs.truncate(q.limit);
        jobs.last().map(|j| j.id)
    } else {
        None
    };
    Ok(Page { jobs, next_before })
}

pub(super) fn pending_reason<T: ReadTables + ?Sized>(
    t: &T,
    id: JobId,
    worker_ttl: std::time::Duration,
    now: Timestamp,
) -> Result<Option<PendingReason>, StoreError> {
    let job = load(t, id)?;
    match job.state {
        JobState::Waiting => {
            let mut waiting = Vec::new();
            for &dep in &job.spec.depends_on {
                if load(t, dep)?.state != JobState::Succeeded {
                    waiting.push(dep);
                }
            }
            Ok(Some(PendingReason::WaitingOn(waiting)))
        }
        JobState::Queued => {
            let entry = QueueEntry::new(&job.spec, job.not_before);
            let workers = t.workers()?;
            let none = std::collections::BTreeSet::new();
            let reason = scheduling::queued_reason(&entry, &workers, &none, now, worker_ttl);
            if reason != PendingReason::Starting {
                return Ok(Some(reason));
            }
            // Some worker fits: only now does it matter which workers hold leases, which
            // takes reading the leased jobs.
            let mut busy = std::collections::BTreeSet::new();
            for leased in [JobState::Assigned, JobState::Running, JobState::Cancelling] {
                let mut ids = Vec::new();
                t.state_desc(leased, None, &mut |id| {
                    ids.push(id);
                    true
                })?;
                for id in ids {
                    if let Some(a) = load(t, id)?.live_attempt() {
                        busy.insert(a.worker.clone());
                    }
                }
            }
            Ok(Some(scheduling::queued_reason(
                &entry, &workers, &busy, now, worker_ttl,
            )))
        }
        _ => Ok(None),
    }
}

pub(super) fn lease_next<T: Tables + ?Sized>(
    t: &mut T,
    cfg: &StoreConfig,
    req: &LeaseRequest,
    now: Timestamp,
) -> Result<Option<super::Lease>, StoreError> {
    let worker = t
        .worker(&req.worker)?
        .ok_or_else(|| StoreError::UnknownWorker(req.worker.clone()))?;
    if worker.status == WorkerStatus::Draining {
        return Err(StoreError::WorkerDraining(req.worker.clone()));
    }
    if let Some(liveness) = cfg.worker_liveness
        && now.saturating_since(worker.last_seen) > liveness
    {
        // Not heard from lately: the request may be one a dead worker left parked.
        return Ok(None);
    }
    let offer = Offer {
        free_gpus: &req.free_gpus,
        labels: &worker.info.labels,
        job_types: &worker.info.job_types,
    };
    let picked = pick_by_class(t, &offer, now)?;
    // Neither an empty poll nor a lease writes the worker: its heartbeats keep `last_seen`
    // fresh, and a request for work is no sign of life (it may have waited long).
    let Some(key) = picked else {
        return Ok(None);
    };
    let old = t
        .job(key.job)?
        .ok_or_else(|| corrupt(format!("queue names missing {}", key.job)))?;
    let mut job = old.clone();
    let epoch = Epoch(t.counter(Counter::NextEpoch)?.max(1));
    job.apply(
        Transition::Lease {
            worker: req.worker.clone(),
            epoch,
            ttl: cfg.assign_ttl.min(cfg.lease_ttl),
        },
        now,
        &cfg.retry,
    )?;
    t.set_counter(Counter::NextEpoch, epoch.0 + 1)?;
    write_job(t, Some(&old), &job)?;
    let attempt = job
        .live_attempt()
        .map(|a| (a.number, a.lease_expires_at, a.deadline));
    let Some((attempt, lease_expires_at, deadline)) = attempt else {
        return Err(corrupt(format!(
            "{} has no live attempt after its lease",
            job.id
        )));
    };
    Ok(Some(super::Lease {
        job,
        attempt,
        epoch,
        lease_expires_at,
        deadline,
    }))
}

/// The job [`scheduling::pick_next`] would pick from the whole queue, read from the queue's
/// class index: the first ready job of each class that fits `offer`, the earliest of those in
/// queue order. A class that does not fit costs one check, not a read of each of its jobs.
fn pick_by_class<T: ReadTables + ?Sized>(
    t: &T,
    offer: &Offer<'_>,
    now: Timestamp,
) -> Result<Option<QueueKey>, StoreError> {
    let mut fitting = Vec::new();
    t.queue_classes(&mut |class| {
        if class.fits(offer) {
            fitting.push(class);
        }
        true
    })?;
    let mut best: Option<QueueKey> = None;
    for class in &fitting {
        t.class_queue(class, &mut |(key, not_before)| {
            if best.is_some_and(|b| b <= key) {
                // Every later job of this class comes after the best found.
                return false;
            }
            if not_before.is_none_or(|at| at <= now) {
                best = Some(key);
                return false;
            }
            true
        })?;
    }
    Ok(best)
}

/// [`lease_next`] for each request in turn, in one write. A request refused on its own (an
/// unknown or draining worker, a job record that does not take the lease) gets its error and
/// leases nothing, as [`lease_next`] alone would; a storage fault fails the whole write, so
/// the caller's engine discards every lease of it.
pub(super) fn lease_many<T: Tables + ?Sized>(
    t: &mut T,
    cfg: &StoreConfig,
    requests: &[LeaseRequest],
    now: Timestamp,
) -> Result<Vec<Result<Option<super::Lease>, StoreError>>, StoreError> {
    each_answered(requests, |req| lease_next(t, cfg, req, now))
}

/// [`touch_worker`] (a heartbeat) for each of `ids` in turn, each with its own answer.
pub(super) fn touch_workers<T: Tables + ?Sized>(
    t: &mut T,
    ids: &[WorkerId],
    now: Timestamp,
) -> Result<Vec<Result<WorkerRecord, StoreError>>, StoreError> {
    each_answered(ids, |id| touch_worker(t, id, false, now))
}

/// `op` on each item in turn, each answer kept: one refused does not stop the others (it
/// wrote nothing), a storage fault fails the whole write.
fn each_answered<I, R>(
    items: impl IntoIterator<Item = I>,
    mut op: impl FnMut(I) -> Result<R, StoreError>,
) -> Result<Vec<Result<R, StoreError>>, StoreError> {
    let mut answers = Vec::new();
    for item in items {
        match op(item) {
            Err(StoreError::Storage(fault)) => return Err(fault.into()),
            answer => answers.push(answer),
        }
    }
    Ok(answers)
}

/// Applies `transition` to job `id` and, when it ends the job, to the jobs waiting on it.
pub(super) fn report<T: Tables + ?Sized>(
    t: &mut T,
    cfg: &StoreConfig,
    id: JobId,
    transition: Transition,
    now: Timestamp,
) -> Result<Job, StoreError> {
    let old = load(t, id)?;
    let mut job = old.clone();
    job.apply(transition, now, &cfg.retry)?;
    write_job(t, Some(&old), &job)?;
    if job.state.is_terminal() {
        settle_dependents(t, cfg, &job, now)?;
    }
    Ok(job)
}

/// Releases or cancels the jobs waiting on `finished`, and on down the chain.
fn settle_dependents<T: Tables + ?Sized>(
    t: &mut T,
    cfg: &StoreConfig,
    finished: &Job,
    now: Timestamp,
) -> Result<(), StoreError> {
    let mut work = vec![(finished.id, finished.state)];
    while let Some((done, state)) = work.pop() {
        for child_id in t.dependents(done)? {
            // A deleted dependent had finished: there is nothing to settle.
            let Some(old) = t.job(child_id)? else {
                continue;
            };
            if old.state != JobState::Waiting {
                continue;
            }
            let transition = if state == JobState::Succeeded {
                let mut all = true;
                for &dep in &old.spec.depends_on {
                    if dep != done && load(t, dep)?.state != JobState::Succeeded {
                        all = false;
                        break;
                    }
                }
                if !all {
                    continue;
                }
                Transition::Release
            } else {
                Transition::Cancel {
                    reason: format!("dependency {done} {state}"),
                }
            };
            let mut child = old.clone();
            child.apply(transition, now, &cfg.retry)?;
            write_job(t, Some(&old), &child)?;
            if child.state.is_terminal() {
                work.push((child.id, child.state));
            }
        }
    }
    Ok(())
}

pub(super) fn expire<T: Tables + ?Sized>(
    t: &mut T,
    cfg: &StoreConfig,
    now: Timestamp,
) -> Result<Vec<Expired>, StoreError> {
    let mut due = Vec::new();
    t.deadlines_until(now, &mut |(_, id)| {
        due.push(id);
        true
    })?;
    let mut expired = Vec::with_capacity(due.len());
    for id in due {
        let job = load(t, id)?;
        let Some(live) = job.live_attempt() else {
            continue;
        };
        // When both have passed (say, the control plane was down), what came first decides.
        let transition = if live.deadline <= now && live.deadline <= live.lease_expires_at {
            Transition::TimedOut
        } else if live.lease_expires_at <= now {
            Transition::LeaseExpired
        } else if live.deadline <= now {
            Transition::TimedOut
        } else {
            continue;
        };
        let timed_out = transition == Transition::TimedOut;
        let job = report(t, cfg, id, transition, now)?;
        expired.push(Expired {
            job: id,
            state: job.state,
            timed_out,
        });
    }
    Ok(expired)
}

pub(super) fn renew_leases<T: Tables + ?Sized>(
    t: &mut T,
    cfg: &StoreConfig,
    until: Timestamp,
    now: Timestamp,
) -> Result<u64, StoreError> {
    let mut leased = Vec::new();
    for state in [JobState::Assigned, JobState::Running, JobState::Cancelling] {
        t.state_desc(state, None, &mut |id| {
            leased.push(id);
            true
        })?;
    }
    let mut renewed = 0;
    for id in leased {
        let old = load(t, id)?;
        let Some(live) = old.live_attempt().filter(|a| a.lease_expires_at < until) else {
            continue;
        };
        let mut job = old.clone();
        let renew = Transition::Renew {
            epoch: live.epoch,
            ttl: until.saturating_since(now),
            progress: None,
        };
        job.apply(renew, now, &cfg.retry)?;
        write_job(t, Some(&old), &job)?;
        renewed += 1;
    }
    Ok(renewed)
}

fn stale(job: &Job, epoch: Epoch) -> StoreError {
    TransitionError::StaleEpoch {
        job: job.id,
        got: epoch,
        live: job.live_attempt().map(|a| a.epoch),
    }
    .into()
}

pub(super) fn append_logs<T: Tables + ?Sized>(
    t: &mut T,
    cfg: &StoreConfig,
    id: JobId,
    epoch: Epoch,
    first_seq: u64,
    lines: Vec<String>,
    now: Timestamp,
) -> Result<LogAck, StoreError> {
    let job = load(t, id)?;
    let attempt = match job.live_attempt() {
        Some(a) if a.epoch == epoch => a.number,
        _ => return Err(stale(&job, epoch)),
    };
    let mut meta = t.log_meta(id)?.unwrap_or_default();
    let next = meta.attempts.get(&attempt).map_or(0, |a| a.next_seq);
    if first_seq > next {
        return Err(StoreError::LogGap {
            job: id,
            attempt,
            expected: next,
            got: first_seq,
        });
    }
    let skip = usize::try_from(next - first_seq).unwrap_or(usize::MAX);
    if skip >= lines.len() {
        return Ok(LogAck {
            next_seq: next,
            dropped: meta.dropped(),
        });
    }
    let mut stored = meta.stored;
    let mut log = meta.attempts.get(&attempt).cloned().unwrap_or_default();
    for (seq, text) in (first_seq..).zip(lines).skip(skip) {
        if stored < cfg.max_log_lines_per_job {
            let line = LogLine {
                seq,
                at: now,
                text: crate::log::clip_line(text, cfg.max_log_line_bytes),
            };
            t.put_log_line(id, attempt, &line)?;
            stored += 1;
        } else {
            if log.dropped == 0 {
                let marker = LogLine {
                    seq,
                    at: now,
                    text: cap_marker(cfg.max_log_lines_per_job),
                };
                t.put_log_line(id, attempt, &marker)?;
            }
            log.dropped += 1;
        }
        log.next_seq = seq + 1;
    }
    meta.stored = stored;
    let next_seq = log.next_seq;
    meta.attempts.insert(attempt, log);
    t.put_log_meta(id, &meta)?;
    Ok(LogAck {
        next_seq,
        dropped: meta.dropped(),
    })
}

pub(super) fn read_logs<T: ReadTables + ?Sized>(
    t: &T,
    id: JobId,
    q: &LogQuery,
) -> Result<LogPage, StoreError> {
    if !(1..=10_000).contains(&q.limit) {
        return Err(StoreError::InvalidQuery(format!(
            "limit {} is outside 1..=10000",
            q.limit
        )));
    }
    let job = load(t, id)?;
    let tried = job.attempts.len() as u32;
    let attempt = match q.attempt {
        None if tried == 0 => return Ok(LogPage::default()),
        None => tried,
        Some(n) if (1..=tried).contains(&n) => n,
        Some(n) => {
            return Err(StoreError::InvalidQuery(format!(
                "{id} has {tried} attempts; there is no attempt {n}"
            )));
        }
    };
    let mut lines = Vec::with_capacity(q.limit.min(1024));
    let mut more = None;
    t.logs(id, attempt, q.from_seq, &mut |line| {
        if lines.len() == q.limit {
            more = Some(line.seq);
            return false;
        }
        lines.push(line);
        true
    })?;
    let dropped = t
        .log_meta(id)?
        .and_then(|m| m.attempts.get(&attempt).map(|a| a.dropped))
        .unwrap_or(0);
    Ok(LogPage {
        attempt,
        lines,
        next_seq: more,
        dropped,
    })
}

pub(super) fn register_worker<T: Tables + ?Sized>(
    t: &mut T,
    info: WorkerInfo,
    now: Timestamp,
) -> Result<WorkerRecord, StoreError> {
    // Deserialised ids bypass `WorkerId::new` only if a caller built one by hand; check again.
    WorkerId::new(info.id.as_str())?;
    info.validate()?;
    if t.worker(&info.id)?.is_none() && t.worker_count()? >= WorkerInfo::MAX_REGISTERED {
        return Err(SpecError::new(
            "worker_id",
            format!(
                "{} workers are registered, the most one control plane keeps",
                WorkerInfo::MAX_REGISTERED
            ),
        )
        .into());
    }
    let record = WorkerRecord {
        info,
        status: WorkerStatus::Active,
        registered_at: now,
        last_seen: now,
    };
    t.put_worker(&record)?;
    Ok(record)
}

pub(super) fn touch_worker<T: Tables + ?Sized>(
    t: &mut T,
    id: &WorkerId,
    drain: bool,
    now: Timestamp,
) -> Result<WorkerRecord, StoreError> {
    let mut record = t
        .worker(id)?
        .ok_or_else(|| StoreError::UnknownWorker(id.clone()))?;
    record.last_seen = record.last_seen.max(now);
    if drain {
        record.status = WorkerStatus::Draining;
    }
    t.put_worker(&record)?;
    Ok(record)
}

pub(super) fn remove_worker<T: Tables + ?Sized>(
    t: &mut T,
    id: &WorkerId,
) -> Result<(), StoreError> {
    if t.remove_worker(id)? {
        Ok(())
    } else {
        Err(StoreError::UnknownWorker(id.clone()))
    }
}

/// Why `job` must be kept, if it must.
fn kept_because<T: ReadTables + ?Sized>(t: &T, job: &Job) -> Result<Option<String>, StoreError> {
    if !job.state.is_terminal() {
        return Ok(Some(format!("it is {}; cancel it first", job.state)));
    }
    for child in t.dependents(job.id)? {
        if let Some(c) = t.job(child)?
            && !c.state.is_terminal()
        {
            return Ok(Some(format!("{child} ({}) depends on it", c.state)));
        }
    }
    let made_model = job.state == JobState::Succeeded
        && matches!(
            job.spec.params,
            crate::JobParams::Train(_) | crate::JobParams::Distill(_)
        )
        && job
            .output
            .as_ref()
            .is_some_and(|o| o.artifacts.contains_key(crate::registry::MODEL_ARTIFACT));
    if made_model {
        return Ok(Some(
            "it registered a model version (the registry is read off the jobs that made models)"
                .to_owned(),
        ));
    }
    Ok(None)
}

fn remove<T: Tables + ?Sized>(t: &mut T, job: &Job) -> Result<(), StoreError> {
    t.state_remove(job.state, job.id)?;
    for attempt in &job.attempts {
        t.worker_job_remove(&attempt.worker, job.id)?;
    }
    t.remove_job(job.id)?;
    if let Some(key) = &job.spec.idempotency_key
        && t.idempotent(key)? == Some(job.id)
    {
        t.remove_idempotent(key)?;
    }
    t.remove_dependents(job.id)?;
    t.remove_logs(job.id)?;
    Ok(())
}

pub(super) fn delete<T: Tables + ?Sized>(t: &mut T, id: JobId) -> Result<Job, StoreError> {
    let job = load(t, id)?;
    if let Some(why) = kept_because(t, &job)? {
        return Err(StoreError::Kept { job: id, why });
    }
    remove(t, &job)?;
    Ok(job)
}

pub(super) fn delete_finished_before<T: Tables + ?Sized>(
    t: &mut T,
    before: Timestamp,
    from: JobId,
    scan: usize,
) -> Result<(Vec<JobId>, Option<JobId>), StoreError> {
    let mut candidates = Vec::new();
    for state in [JobState::Succeeded, JobState::Failed, JobState::Cancelled] {
        t.state_desc(state, None, &mut |id| {
            if id >= from {
                candidates.push(id);
            }
            true
        })?;
    }
    // Oldest first; at most `scan` of them are read in one pass.
    candidates.sort_unstable();
    let mut deleted = Vec::new();
    let mut next = None;
    for (i, id) in candidates.into_iter().enumerate() {
        if i == scan {
            next = Some(id);
            break;
        }
        let job = load(t, id)?;
        if job.updated_at < before && kept_because(t, &job)?.is_none() {
            remove(t, &job)?;
            deleted.push(id);
        }
    }
    Ok((deleted, next))
}

/// Copies every job (with its indexes rebuilt), log, worker, idempotency key, dependency and
/// counter of `from` into `to`, which must hold no job.
pub(super) fn copy<T: Tables + ?Sized>(
    from: &dyn ReadTables,
    to: &mut T,
) -> Result<super::Copied, StoreError> {
    let mut held = false;
    to.jobs_desc(None, &mut |_| {
        held = true;
        false
    })?;
    if held {
        return Err(StoreError::InvalidQuery(
            "the destination already holds jobs; copy into an empty store".into(),
        ));
    }
    let mut copied = super::Copied::default();
    let mut failure: Option<StoreError> = None;
    from.jobs_desc(None, &mut |job| {
        match copy_job(from, &mut *to, &job) {
            Ok(lines) => {
                copied.jobs += 1;
                copied.log_lines += lines;
            }
            Err(e) => failure = Some(e),
        }
        failure.is_none()
    })?;
    if let Some(e) = failure {
        return Err(e);
    }
    for worker in from.workers()? {
        to.put_worker(&worker)?;
        copied.workers += 1;
    }
    for counter in [Counter::NextJobId, Counter::NextEpoch] {
        to.set_counter(counter, from.counter(counter)?)?;
    }
    Ok(copied)
}

/// One job of [`copy`] with what hangs off it; returns the log lines copied.
fn copy_job<T: Tables + ?Sized>(
    from: &dyn ReadTables,
    to: &mut T,
    job: &Job,
) -> Result<u64, StoreError> {
    write_job(to, None, job)?;
    if let Some(key) = &job.spec.idempotency_key
        && from.idempotent(key)? == Some(job.id)
    {
        to.put_idempotent(key, job.id)?;
    }
    for child in from.dependents(job.id)? {
        to.add_dependent(job.id, child)?;
    }
    let mut lines = 0;
    if let Some(meta) = from.log_meta(job.id)? {
        to.put_log_meta(job.id, &meta)?;
        for &attempt in meta.attempts.keys() {
            let mut failure = None;
            from.logs(job.id, attempt, 0, &mut |line| {
                match to.put_log_line(job.id, attempt, &line) {
                    Ok(()) => lines += 1,
                    Err(e) => failure = Some(e),
                }
                failure.is_none()
            })?;
            if let Some(e) = failure {
                return Err(e.into());
            }
        }
    }
    Ok(lines)
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use super::*;
    use crate::{
        Engine, FailureClass, GenerateParams, JobError, JobParams, JobType, MemStore, Resources,
        Store, StoreConfig,
    };

    /// A small deterministic generator (xorshift), so a failure repeats.
    struct Rng(u64);

    impl Rng {
        fn below(&mut self, n: u64) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0 % n
        }
    }

    fn worker(n: u64, labels: BTreeMap<String, String>, types: BTreeSet<JobType>) -> WorkerInfo {
        WorkerInfo {
            id: WorkerId::new(format!("w{n}")).unwrap(),
            cpus: 1,
            memory_mb: 1024,
            gpus: vec![],
            labels,
            job_types: types,
        }
    }

    #[test]
    fn the_class_index_picks_what_a_scan_of_the_whole_queue_picks() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let labels = |rng: &mut Rng| -> BTreeMap<String, String> {
            let mut l = BTreeMap::new();
            if rng.below(3) == 0 {
                l.insert("region".into(), ["eu", "us"][rng.below(2) as usize].into());
            }
            if rng.below(4) == 0 {
                l.insert("disk".into(), "ssd".into());
            }
            l
        };
        let (mut picked, mut backing_off) = (0, 0);
        for round in 0..20 {
            let store = MemStore::new(StoreConfig::default());
            let mut now = Timestamp(1_000);
            // Jobs of many classes and priorities, a few leased and failed into a backoff.
            for n in 0..150 {
                let mut spec =
                    JobSpec::new(JobParams::Generate(GenerateParams::new("physics", 10)));
                spec.priority = rng.below(3) as i32 - 1;
                let gpus = rng.below(3) as u32;
                spec.resources = Resources {
                    gpus,
                    gpu_memory_mb: if gpus > 0 { 1000 * rng.below(3) } else { 0 },
                    labels: labels(&mut rng),
                };
                store.submit(spec, now).unwrap();
                if n % 10 == 9 {
                    let mut all = BTreeMap::new();
                    all.insert("region".into(), "eu".into());
                    store
                        .register_worker(worker(n, all, [JobType::Generate].into()), now)
                        .unwrap();
                    let req = LeaseRequest {
                        worker: WorkerId::new(format!("w{n}")).unwrap(),
                        free_gpus: vec![4000, 4000],
                    };
                    if let Some(lease) = store.lease_next(req, now).unwrap() {
                        let error = JobError::new(FailureClass::StageError, "flaky");
                        store.fail(lease.job.id, lease.epoch, error, now).unwrap();
                    }
                }
                now = Timestamp(now.0 + 1);
            }
            for _ in 0..200 {
                let labels = labels(&mut rng);
                let free: Vec<u64> = (0..rng.below(3))
                    .map(|_| 500 + 1000 * rng.below(3))
                    .collect();
                let types: BTreeSet<JobType> = if rng.below(5) == 0 {
                    [JobType::Train].into()
                } else {
                    JobType::ALL.into_iter().collect()
                };
                let offer = Offer {
                    free_gpus: &free,
                    labels: &labels,
                    job_types: &types,
                };
                let at = Timestamp(now.0 + rng.below(60_000));
                let (by_class, by_scan) = store
                    .read(crate::Call::new("test", None), &mut |t| {
                        let mut queue = Vec::new();
                        t.queue(&mut |e| {
                            queue.push(e);
                            true
                        })?;
                        backing_off += queue.iter().filter(|(_, e)| !e.is_ready(at)).count();
                        let scan =
                            scheduling::pick_next(queue.iter().map(|(k, e)| (*k, e)), &offer, at);
                        Ok((pick_by_class(t, &offer, at)?, scan))
                    })
                    .unwrap();
                assert_eq!(by_class, by_scan, "round {round}: {offer:?} at {at:?}");
                picked += usize::from(by_scan.is_some());
            }
        }
        // The offers fit some of the time, and some jobs were in a backoff when asked.
        assert!(
            (500..3900).contains(&picked),
            "{picked} of 4000 picks found a job"
        );
        assert!(backing_off > 0);
    }
}
