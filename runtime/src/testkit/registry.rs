//! The worker registry, and restarts: nothing acknowledged is lost, counters keep growing and
//! leases that ran out while the store was down are recovered.

use std::collections::BTreeMap;
use std::time::Duration;

use super::Harness;
use super::fixtures::{
    LEASE_TTL, at, config, depending, error, generate, get, lease, list_all, output,
    register_cpu_worker, spec, state, submit, try_lease, wid, with_priority, worker,
};
use crate::{
    AttemptOutcome, Epoch, Expired, FailureClass, Job, JobId, JobState, JobType, ListQuery,
    LogPage, LogQuery, PendingReason, Store, StoreConfig, StoreError, Timestamp, WorkerRecord,
    WorkerStatus,
};

/// Workers register (and re-register) as active, heartbeats move `last_seen`, draining sticks
/// until they register again, removal forgets them; unknown workers are `UnknownWorker`.
pub fn workers_register_heartbeat_drain_and_remove<H: Harness>(h: &mut H) {
    let store = h.open(config());
    assert_eq!(store.list_workers().expect("list"), vec![]);

    let b = worker("node-b", &[80_000], &[("zone", "eu")], &[JobType::Train]);
    let rec = store.register_worker(b.clone(), at(0)).expect("register");
    assert_eq!(
        rec,
        WorkerRecord {
            info: b.clone(),
            status: WorkerStatus::Active,
            registered_at: at(0),
            last_seen: at(0),
        }
    );
    let a = worker("node-a", &[], &[], &JobType::ALL);
    store.register_worker(a.clone(), at(1)).expect("register");
    let listed = store.list_workers().expect("list");
    let names: Vec<&str> = listed.iter().map(|w| w.info.id.as_str()).collect();
    assert_eq!(names, vec!["node-a", "node-b"], "workers are listed by id");
    assert_eq!(listed[1], rec);

    let rec = store.worker_heartbeat(&a.id, at(5)).expect("heartbeat");
    assert_eq!(
        (rec.status, rec.registered_at, rec.last_seen),
        (WorkerStatus::Active, at(1), at(5))
    );
    let rec = store.drain_worker(&b.id, at(6)).expect("drain");
    assert_eq!((rec.status, rec.last_seen), (WorkerStatus::Draining, at(6)));
    let rec = store.worker_heartbeat(&b.id, at(7)).expect("heartbeat");
    assert_eq!(
        rec.status,
        WorkerStatus::Draining,
        "a heartbeat does not undo draining"
    );
    assert_eq!(store.list_workers().expect("list")[1], rec);

    // Registering again makes it active with what it says now.
    let b2 = worker(
        "node-b",
        &[80_000, 80_000],
        &[("zone", "eu")],
        &JobType::ALL,
    );
    let rec = store
        .register_worker(b2.clone(), at(8))
        .expect("re-register");
    assert_eq!(
        (rec.status, &rec.info, rec.registered_at),
        (WorkerStatus::Active, &b2, at(8))
    );
    assert_eq!(store.list_workers().expect("list").len(), 2);

    store.remove_worker(&a.id).expect("remove");
    let listed = store.list_workers().expect("list");
    assert_eq!(listed, vec![rec]);
    let is_unknown = |r: Result<WorkerRecord, StoreError>| matches!(r, Err(StoreError::UnknownWorker(w)) if w == a.id);
    assert!(is_unknown(store.worker_heartbeat(&a.id, at(9))));
    assert!(is_unknown(store.drain_worker(&a.id, at(9))));
    assert!(matches!(store.remove_worker(&a.id), Err(StoreError::UnknownWorker(w)) if w == a.id));

    // A removed worker's lease runs out as usual.
    let id = submit(&store, generate(0), at(10));
    let w = register_cpu_worker(&store, "node-c", at(10));
    let l = lease(&store, &w, id, at(10));
    store.remove_worker(&w).expect("remove");
    assert_eq!(state(&store, id), JobState::Assigned);
    assert_eq!(
        store.expire(l.lease_expires_at).expect("expire"),
        vec![Expired {
            job: id,
            state: JobState::Queued,
            timed_out: false,
        }]
    );
}

/// Heartbeats of several workers in one write move each one's `last_seen` as one heartbeat
/// each would, in one write that survives a restart; an unknown worker is refused in its own
/// answer and the others are still written.
pub fn worker_heartbeats_answer_each_worker<H: Harness>(h: &mut H) {
    let store = h.open(config());
    let a = worker("node-a", &[], &[], &JobType::ALL);
    let b = worker("node-b", &[], &[], &JobType::ALL);
    store.register_worker(a.clone(), at(0)).expect("register");
    store.register_worker(b.clone(), at(1)).expect("register");
    store.drain_worker(&b.id, at(2)).expect("drain");
    let gone = wid("node-gone");
    assert_eq!(
        store.worker_heartbeats(Vec::new(), at(3)).expect("none"),
        Vec::new()
    );

    let answers = store
        .worker_heartbeats(vec![b.id.clone(), gone.clone(), a.id.clone()], at(5))
        .expect("heartbeats");
    assert_eq!(answers.len(), 3);
    let b_rec = answers[0].as_ref().expect("node-b");
    assert_eq!(
        (b_rec.status, b_rec.last_seen),
        (WorkerStatus::Draining, at(5))
    );
    assert!(matches!(&answers[1], Err(StoreError::UnknownWorker(w)) if *w == gone));
    let a_rec = answers[2].as_ref().expect("node-a");
    assert_eq!(
        (a_rec.status, a_rec.last_seen),
        (WorkerStatus::Active, at(5))
    );

    let store = h.restart(store, config());
    let listed = store.list_workers().expect("list");
    assert_eq!(listed, vec![a_rec.clone(), b_rec.clone()]);
}

/// Everything a reader can see of a store.
#[derive(Debug, PartialEq)]
struct Snapshot {
    jobs: Vec<Job>,
    by_state: Vec<Vec<JobId>>,
    workers: Vec<WorkerRecord>,
    logs: BTreeMap<(JobId, u32), LogPage>,
    reasons: Vec<Option<PendingReason>>,
}

fn snapshot(store: &impl Store, now: Timestamp) -> Snapshot {
    let jobs = list_all(
        store,
        ListQuery {
            limit: 3,
            ..ListQuery::default()
        },
    );
    for job in &jobs {
        assert_eq!(job, &get(store, job.id));
    }
    let by_state = JobState::ALL
        .into_iter()
        .map(|s| {
            let q = ListQuery {
                state: Some(s),
                limit: 2,
                ..ListQuery::default()
            };
            list_all(store, q).into_iter().map(|j| j.id).collect()
        })
        .collect();
    let mut logs = BTreeMap::new();
    for job in &jobs {
        for a in &job.attempts {
            let q = LogQuery {
                attempt: Some(a.number),
                from_seq: 0,
                limit: 10_000,
            };
            logs.insert(
                (job.id, a.number),
                store.read_logs(job.id, q).expect("read_logs"),
            );
        }
    }
    let reasons = jobs
        .iter()
        .map(|j| store.pending_reason(j.id, now).expect("pending_reason"))
        .collect();
    Snapshot {
        jobs,
        by_state,
        workers: store.list_workers().expect("list_workers"),
        logs,
        reasons,
    }
}

fn max_epoch(jobs: &[Job]) -> Epoch {
    jobs.iter()
        .flat_map(|j| j.attempts.iter().map(|a| a.epoch))
        .max()
        .unwrap_or(Epoch(0))
}

/// After a restart every acknowledged job (attempts, events, output), log line, worker,
/// idempotency key and dependency is there; the next job id and the next lease epoch are
/// larger than every one before.
pub fn restart_keeps_every_acknowledged_write<H: Harness>(h: &mut H) {
    let cfg = log_cap();
    let store = h.open(cfg.clone());
    carries_every_acknowledged_write(h, store, |h, store, cfg| h.restart(store, cfg));
}

/// A copy of an in-memory store into this one (`copy`, as `nexa store copy` makes) answers
/// as the original did: the same jobs, logs, workers, idempotency keys, dependencies, queue
/// and counters; copying into a store that holds jobs is refused.
pub fn copy_keeps_every_acknowledged_write<H: Harness>(h: &mut H)
where
    H::Store: crate::Engine,
{
    let from = crate::MemStore::new(log_cap());
    carries_every_acknowledged_write(h, from, |h, from, cfg| {
        let to = h.open(cfg);
        let from = std::sync::Arc::new(from);
        let copied = crate::copy(from.clone(), &to).expect("copy");
        assert_eq!((copied.jobs, copied.workers), (10, 2), "{copied:?}");
        // Four lines of the evaluation under the cap, its marker, and three of the training.
        assert_eq!(copied.log_lines, 8, "{copied:?}");
        let again = crate::copy(from, &to).expect_err("a second copy");
        assert!(
            matches!(&again, StoreError::InvalidQuery(why) if why.contains("already holds jobs")),
            "{again:?}"
        );
        to
    });
}

/// The log cap of the tests above: 4 lines a job.
fn log_cap() -> StoreConfig {
    StoreConfig {
        max_log_lines_per_job: 4,
        ..config()
    }
}

/// Fills `store` with a job in every state, logs, workers, an idempotency key and a
/// dependency; `carry` moves it into a store of the harness (a restart, a copy), which must
/// then answer every read as `store` did, and go on from there as `store` would have.
fn carries_every_acknowledged_write<H: Harness, S: Store>(
    h: &mut H,
    store: S,
    carry: impl FnOnce(&mut H, S, StoreConfig) -> H::Store,
) {
    let cfg = log_cap();
    let w = register_cpu_worker(&store, "w1", at(0));
    store
        .register_worker(
            worker(
                "gpu-2",
                &[80_000, 80_000],
                &[("zone", "eu")],
                &[JobType::Train],
            ),
            at(0),
        )
        .expect("register");
    store.drain_worker(&wid("gpu-2"), at(1)).expect("drain");

    let succeeded = submit(&store, spec(JobType::Evaluate), at(1));
    let l = lease(&store, &w, succeeded, at(1));
    store.start(succeeded, l.epoch, at(2)).expect("start");
    let five: Vec<String> = (0..5).map(|n| format!("eval {n}")).collect();
    assert_eq!(
        store
            .append_logs(succeeded, l.epoch, 0, five, at(2))
            .expect("logs")
            .dropped,
        1
    );
    store
        .complete(succeeded, l.epoch, output(), at(3))
        .expect("complete");

    let failed = submit(&store, generate(1), at(3));
    let l = lease(&store, &w, failed, at(3));
    store
        .fail(failed, l.epoch, error(FailureClass::InvalidInput), at(4))
        .expect("fail");

    let cancelled = submit(&store, generate(2), at(4));
    store.cancel(cancelled, "no".into(), at(4)).expect("cancel");

    let running = submit(&store, spec(JobType::Train), at(5));
    let running_lease = lease(&store, &w, running, at(5));
    store
        .start(running, running_lease.epoch, at(5))
        .expect("start");
    store
        .heartbeat(running, running_lease.epoch, Some(0.4), at(6))
        .expect("heartbeat");
    let three: Vec<String> = (0..3).map(|n| format!("step {n}")).collect();
    store
        .append_logs(running, running_lease.epoch, 0, three, at(6))
        .expect("logs");

    let assigned = submit(&store, generate(3), at(7));
    lease(&store, &w, assigned, at(7));
    let cancelling = submit(&store, generate(4), at(7));
    lease(&store, &w, cancelling, at(7));
    store
        .cancel(cancelling, "stop".into(), at(8))
        .expect("cancel");

    let backoff = submit(&store, generate(5), at(8));
    let l = lease(&store, &w, backoff, at(8));
    let old_epoch = l.epoch;
    store
        .fail(backoff, l.epoch, error(FailureClass::StageError), at(8))
        .expect("fail");

    let waiting = submit(&store, depending(generate(6), &[running]), at(8));
    let low = submit(&store, with_priority(generate(7), -1), at(8));
    let mut keyed = with_priority(spec(JobType::Deploy), 5);
    keyed.idempotency_key = Some("deploy-v1".into());
    let high = submit(&store, keyed.clone(), at(8));

    let now = at(8);
    let before = snapshot(&store, now);
    let states: Vec<JobState> = before.jobs.iter().map(|j| j.state).collect();
    for s in JobState::ALL {
        assert!(states.contains(&s), "the store holds a {s} job");
    }
    let max_id = before.jobs.iter().map(|j| j.id).max().expect("jobs");
    let last_epoch = max_epoch(&before.jobs);

    let store = carry(h, store, cfg.clone());
    assert_eq!(
        snapshot(&store, now),
        before,
        "everything acknowledged is there"
    );
    // A second restart with nothing in between changes nothing either.
    let store = h.restart(store, cfg.clone());
    assert_eq!(snapshot(&store, now), before);

    // Idempotency keys survived.
    let again = store.submit(keyed, at(9)).expect("resubmit");
    assert_eq!((again.id, again.created), (high, false));
    // Ids and epochs go on from where they were.
    let new = submit(&store, generate(8), at(9));
    assert!(new > max_id, "{new} after {max_id}");
    let l = lease(&store, &w, high, at(9));
    assert!(l.epoch > last_epoch, "{} after {last_epoch}", l.epoch);
    // The queue survived: the job whose backoff is over, then the new one, then low priority.
    assert_eq!(lease(&store, &w, backoff, at(9)).attempt, 2);
    lease(&store, &w, new, at(9));
    lease(&store, &w, low, at(9));
    assert!(try_lease(&store, &w, at(9)).is_none());
    assert!(
        store
            .start(backoff, old_epoch, at(9))
            .unwrap_err()
            .is_stale()
    );

    // Log bookkeeping survived: next line, gap check, the job's cap.
    let e = running_lease.epoch;
    let err = store
        .append_logs(running, e, 5, vec!["x".into()], at(10))
        .expect_err("gap");
    assert!(
        matches!(err, StoreError::LogGap { expected: 3, .. }),
        "{err:?}"
    );
    let ack = store
        .append_logs(
            running,
            e,
            2,
            vec!["step 2".into(), "step 3".into(), "step 4".into()],
            at(10),
        )
        .expect("logs");
    assert_eq!(
        (ack.next_seq, ack.dropped),
        (5, 1),
        "one more line fits under the cap of 4"
    );
    // Dependencies survived: completing `running` releases `waiting`.
    let status = store
        .heartbeat(running, e, None, at(10))
        .expect("heartbeat");
    assert!(!status.cancel_requested);
    store
        .complete(running, e, output(), at(11))
        .expect("complete");
    assert_eq!(state(&store, waiting), JobState::Queued);
    // The cancel request survived.
    let c = get(&store, cancelling);
    let ce = c.live_attempt().map(|a| a.epoch).expect("live");
    assert!(
        store
            .heartbeat(cancelling, ce, None, at(11))
            .expect("heartbeat")
            .cancel_requested
    );

    let after = snapshot(&store, at(11));
    let store = h.restart(store, cfg);
    assert_eq!(snapshot(&store, at(11)), after);
}

/// Leases that ran out while the store was down are ended by `expire` after the restart:
/// `worker_lost` (retried, or cancelled when a cancel was pending), `timeout` past the
/// deadline; a lease still valid is untouched and its worker carries on.
pub fn restart_recovers_expired_leases<H: Harness>(h: &mut H) {
    let cfg = config();
    let store = h.open(cfg.clone());
    let w = register_cpu_worker(&store, "w1", at(0));
    let running = submit(&store, generate(0), at(0));
    let assigned = submit(&store, generate(1), at(0));
    let cancelling = submit(&store, generate(2), at(0));
    let renewed = submit(&store, generate(3), at(0));
    let mut short = generate(4);
    short.timeout = Duration::from_secs(35);
    let timed_out = submit(&store, short, at(0));
    let l_running = lease(&store, &w, running, at(0));
    store.start(running, l_running.epoch, at(1)).expect("start");
    lease(&store, &w, assigned, at(0));
    let l_cancelling = lease(&store, &w, cancelling, at(0));
    store
        .cancel(cancelling, "stop".into(), at(2))
        .expect("cancel");
    let l_renewed = lease(&store, &w, renewed, at(0));
    store
        .heartbeat(renewed, l_renewed.epoch, None, at(25))
        .expect("heartbeat");
    let l_timed_out = lease(&store, &w, timed_out, at(0));
    store
        .heartbeat(timed_out, l_timed_out.epoch, None, at(25))
        .expect("heartbeat");
    let before: Vec<Job> = [running, assigned, cancelling, renewed, timed_out]
        .iter()
        .map(|&id| get(&store, id))
        .collect();

    // Down from t = 26 s to t = 40 s.
    let store = h.restart(store, cfg);
    let after: Vec<Job> = before.iter().map(|j| get(&store, j.id)).collect();
    assert_eq!(after, before, "restarting alone changes nothing");
    let now = at(40);
    assert!(now >= at(0).saturating_add(LEASE_TTL));
    let mut expired = store.expire(now).expect("expire");
    expired.sort_by_key(|e| e.job);
    assert_eq!(
        expired,
        vec![
            Expired {
                job: running,
                state: JobState::Queued,
                timed_out: false,
            },
            Expired {
                job: assigned,
                state: JobState::Queued,
                timed_out: false,
            },
            Expired {
                job: cancelling,
                state: JobState::Cancelled,
                timed_out: false,
            },
            Expired {
                job: timed_out,
                state: JobState::Failed,
                timed_out: true,
            },
        ]
    );
    for (id, class) in [
        (running, FailureClass::WorkerLost),
        (assigned, FailureClass::WorkerLost),
        (cancelling, FailureClass::WorkerLost),
        (timed_out, FailureClass::Timeout),
    ] {
        let job = get(&store, id);
        let outcome = job.attempts[0].outcome.clone();
        assert!(
            matches!(&outcome, Some(AttemptOutcome::Failed(e)) if e.class == class),
            "{id}: {outcome:?}"
        );
        assert_eq!(job.attempts[0].ended_at, Some(now));
    }
    assert_eq!(state(&store, renewed), JobState::Assigned);
    assert!(
        store
            .complete(running, l_running.epoch, output(), now)
            .unwrap_err()
            .is_stale()
    );
    // (`cancelling` is finished now; `append_logs` is the report whose answer does not depend
    // on the terminal-state bug pinned by `stale_reports_on_finished_job_are_stale`.)
    let late = store.append_logs(cancelling, l_cancelling.epoch, 0, vec!["late".into()], now);
    assert!(late.unwrap_err().is_stale());
    assert!(
        store
            .fail(
                cancelling,
                l_cancelling.epoch,
                error(FailureClass::StageError),
                now
            )
            .is_err()
    );
    store
        .start(renewed, l_renewed.epoch, now)
        .expect("the live lease carries on");

    let l = lease(&store, &w, running, at(45));
    assert!(l.epoch > l_timed_out.epoch);
    assert_eq!(l.attempt, 2);
    assert!(matches!(
        store.expire(at(45)),
        Ok(v) if v.is_empty()
    ));
}
