//! Leasing, fencing by epoch, retries, timeouts, cancellation and the event history.

use std::time::Duration;

use super::Harness;
use super::fixtures::{
    LEASE_TTL, assert_events_consistent, at, at_ms, config, error, event_states, generate, get,
    lease, list_all, output, register_cpu_worker, spec, state, submit, try_lease, wid,
    with_priority, worker,
};
use crate::{
    AttemptOutcome, Epoch, Expired, FailureClass, Job, JobId, JobState, JobType, Lease,
    LeaseRequest, ListQuery, PendingReason, Store, StoreConfig, StoreError, Submission, Timestamp,
    TransitionError, WorkerId,
};

/// Leases go to the highest priority first, and within a priority to the earliest submitted.
pub fn lease_order_is_priority_then_fifo<H: Harness>(h: &mut H) {
    let store = h.open(config());
    let w = register_cpu_worker(&store, "w1", at(0));
    let ids: Vec<JobId> = [0, 5, 0, 5, -3, 1000, -1000, 5]
        .into_iter()
        .enumerate()
        .map(|(n, p)| submit(&store, with_priority(generate(n as u64), p), at(n as u64)))
        .collect();
    let expected = [
        ids[5], ids[1], ids[3], ids[7], ids[0], ids[2], ids[4], ids[6],
    ];
    for (n, want) in expected.into_iter().enumerate() {
        let l = lease(&store, &w, want, at(10 + n as u64));
        assert_eq!(l.attempt, 1);
        assert_eq!(l.job.state, JobState::Assigned);
    }
    assert!(
        try_lease(&store, &w, at(20)).is_none(),
        "the queue is empty"
    );
}

/// A job is leased only to a worker that runs its type, carries its labels and offers enough
/// free GPUs with enough memory; a job that fits nobody stays queued, untried.
pub fn leases_only_jobs_that_fit<H: Harness>(h: &mut H) {
    let store = h.open(config());
    let now = at(0);
    let mut two_gpus = spec(JobType::Train);
    two_gpus.resources.gpus = 2;
    let two_gpus = submit(&store, two_gpus, now);
    let mut big_gpu = spec(JobType::Train);
    big_gpu.resources.gpus = 1;
    big_gpu.resources.gpu_memory_mb = 40_000;
    let big_gpu = submit(&store, big_gpu, now);
    let audit = submit(&store, spec(JobType::Audit), now);
    let mut eu = generate(1);
    eu.resources.labels.insert("region".into(), "eu".into());
    let eu = submit(&store, eu, now);
    let plain = submit(&store, generate(2), now);

    // Runs generate and train, no GPUs, region us.
    store
        .register_worker(
            worker(
                "cpu",
                &[],
                &[("region", "us")],
                &[JobType::Generate, JobType::Train],
            ),
            now,
        )
        .expect("register");
    let cpu = wid("cpu");
    let l = try_lease(&store, &cpu, now).expect("plain fits");
    assert_eq!(l.job.id, plain);
    for _ in 0..3 {
        assert!(try_lease(&store, &cpu, now).is_none());
    }

    store
        .register_worker(
            worker(
                "gpu",
                &[16_000, 16_000, 80_000],
                &[("region", "eu")],
                &[JobType::Train, JobType::Generate],
            ),
            now,
        )
        .expect("register");
    let gpu = wid("gpu");
    let ask = |free: Vec<u64>| {
        store
            .lease_next(
                LeaseRequest {
                    worker: gpu.clone(),
                    free_gpus: free,
                },
                now,
            )
            .expect("lease_next")
            .map(|l| l.job.id)
    };
    // One small GPU free: only the labelled generate job fits.
    assert_eq!(ask(vec![16_000]), Some(eu));
    assert_eq!(
        ask(vec![16_000]),
        None,
        "one 16 GB GPU fits neither train job"
    );
    assert_eq!(ask(vec![16_000, 16_000]), Some(two_gpus));
    assert_eq!(
        ask(vec![16_000, 16_000]),
        None,
        "the 40 GB job needs a bigger GPU"
    );
    assert_eq!(ask(vec![80_000]), Some(big_gpu));
    assert_eq!(
        ask(vec![80_000, 80_000]),
        None,
        "nobody here runs audit jobs"
    );

    let j = get(&store, audit);
    assert_eq!(j.state, JobState::Queued);
    assert!(j.attempts.is_empty());
    store
        .register_worker(worker("auditor", &[], &[], &[JobType::Audit]), now)
        .expect("register");
    assert_eq!(
        try_lease(&store, &wid("auditor"), now).map(|l| l.job.id),
        Some(audit)
    );
}

/// An unregistered (or removed) worker gets `UnknownWorker`, a draining one `WorkerDraining`,
/// and neither takes a job.
pub fn lease_refuses_unknown_and_draining_workers<H: Harness>(h: &mut H) {
    let store = h.open(config());
    let job = submit(&store, generate(0), at(0));
    let ghost = wid("ghost");
    let ask = |w: &WorkerId| {
        store.lease_next(
            LeaseRequest {
                worker: w.clone(),
                free_gpus: vec![],
            },
            at(1),
        )
    };
    assert!(matches!(ask(&ghost), Err(StoreError::UnknownWorker(w)) if w == ghost));

    let w = register_cpu_worker(&store, "w1", at(0));
    store.drain_worker(&w, at(1)).expect("drain");
    assert!(matches!(ask(&w), Err(StoreError::WorkerDraining(x)) if x == w));

    let gone = register_cpu_worker(&store, "gone", at(0));
    store.remove_worker(&gone).expect("remove");
    assert!(matches!(ask(&gone), Err(StoreError::UnknownWorker(x)) if x == gone));
    assert_eq!(state(&store, job), JobState::Queued);
    assert!(get(&store, job).attempts.is_empty());
}

/// Every lease gets a larger epoch than every lease before it, across jobs and attempts.
pub fn lease_epochs_grow<H: Harness>(h: &mut H) {
    let store = h.open(config());
    let w = register_cpu_worker(&store, "w1", at(0));
    let mut last = Epoch(0);
    for n in 0..5 {
        let id = submit(&store, generate(n), at(n));
        let l = lease(&store, &w, id, at(n));
        assert!(l.epoch > last, "{} after {}", l.epoch, last);
        last = l.epoch;
        assert_eq!(l.job.attempts.last().map(|a| a.epoch), Some(l.epoch));
        if n % 2 == 0 {
            store
                .fail(id, l.epoch, error(FailureClass::StageError), at(n))
                .expect("fail");
            let again = lease(&store, &w, id, at(n + 100));
            assert!(again.epoch > last);
            assert_eq!(again.attempt, 2);
            last = again.epoch;
        }
    }
}

/// The job each answer of a batch leased, if any; every request from a registered worker.
fn leased_jobs(answers: &[Result<Option<Lease>, StoreError>]) -> Vec<Option<JobId>> {
    answers
        .iter()
        .map(|a| {
            a.as_ref()
                .expect("a registered worker")
                .as_ref()
                .map(|l| l.job.id)
        })
        .collect()
}

/// One `lease_many` hands out each queued job once, in queue order (priority, then
/// submission), to the requests in the order given, with epochs growing in that order; the
/// requests left over get `None`, an empty batch changes nothing, and the leases are durable.
pub fn lease_many_leases_each_job_once_in_queue_order<H: Harness>(h: &mut H) {
    let store = h.open(config());
    let workers: Vec<WorkerId> = (0..5)
        .map(|n| register_cpu_worker(&store, &format!("w{n}"), at(0)))
        .collect();
    let low = submit(&store, with_priority(generate(0), 0), at(1));
    let high = submit(&store, with_priority(generate(1), 5), at(2));
    let also_low = submit(&store, with_priority(generate(2), 0), at(3));
    assert_eq!(
        store.lease_many(Vec::new(), at(4)).expect("an empty batch"),
        Vec::new()
    );
    assert_eq!(state(&store, high), JobState::Queued);

    let requests = workers
        .iter()
        .map(|w| LeaseRequest {
            worker: w.clone(),
            free_gpus: vec![],
        })
        .collect();
    let answers = store.lease_many(requests, at(5)).expect("lease_many");
    let leased = leased_jobs(&answers);
    assert_eq!(
        leased,
        [Some(high), Some(low), Some(also_low), None, None],
        "each job once, best first, to the requests in order"
    );
    let leases: Vec<&Lease> = answers.iter().flatten().flatten().collect();
    for pair in leases.windows(2) {
        assert!(
            pair[0].epoch < pair[1].epoch,
            "{} then {}",
            pair[0].epoch,
            pair[1].epoch
        );
    }
    for (lease, worker) in leases.iter().zip(&workers) {
        assert_eq!(lease.attempt, 1);
        assert_eq!(lease.lease_expires_at, at(5).saturating_add(LEASE_TTL));
        let job = get(&store, lease.job.id);
        assert_eq!(&job, &lease.job, "the lease carries the job as stored");
        let live = job.live_attempt().expect("a live attempt");
        assert_eq!((&live.worker, live.epoch), (worker, lease.epoch));
    }

    // Nothing is left to lease, and the leases survive a restart.
    let store = h.restart(store, config());
    for lease in &leases {
        assert_eq!(get(&store, lease.job.id), lease.job);
    }
    let again = store
        .lease_many(
            vec![LeaseRequest {
                worker: workers[0].clone(),
                free_gpus: vec![],
            }],
            at(6),
        )
        .expect("lease_many");
    assert_eq!(again, vec![Ok(None)]);
}

/// `submit_and_lease` submits and then leases for the requests in one write: a waiting
/// worker gets the new job (or, with a batch, the best of them) in the call that accepts it,
/// the other requests get the rest in queue order or `None`; a refused submission submits
/// nothing and leases nothing, not even jobs queued before; and the leases are durable.
pub fn submit_and_lease_hands_new_jobs_to_waiting_workers<H: Harness>(h: &mut H) {
    let store = h.open(config());
    let workers: Vec<WorkerId> = (0..3)
        .map(|n| register_cpu_worker(&store, &format!("w{n}"), at(0)))
        .collect();
    let request = |w: &WorkerId| LeaseRequest {
        worker: w.clone(),
        free_gpus: vec![],
    };

    let (submitted, answers) = store
        .submit_and_lease(
            Submission::One(generate(0)),
            vec![request(&workers[0]), request(&workers[1])],
            at(1),
        )
        .expect("submit_and_lease");
    assert_eq!(submitted.len(), 1);
    let first = submitted[0].id;
    assert!(submitted[0].created);
    assert_eq!(
        submitted[0].state,
        JobState::Queued,
        "its state as submitted"
    );
    assert_eq!(leased_jobs(&answers), [Some(first), None]);
    let lease = answers[0]
        .as_ref()
        .ok()
        .and_then(Option::as_ref)
        .expect("a lease");
    assert_eq!(
        get(&store, first),
        lease.job,
        "the lease carries the job as stored"
    );
    assert_eq!(state(&store, first), JobState::Assigned);

    // A refused submission (its key taken by another spec) changes nothing: the job queued
    // before it stays queued.
    let queued = submit(&store, generate(1), at(2));
    let mut keyed = generate(2);
    keyed.idempotency_key = Some("nightly".into());
    submit(&store, keyed.clone(), at(3));
    let mut other = generate(3);
    other.idempotency_key = Some("nightly".into());
    let before = list_all(&store, ListQuery::default());
    assert!(
        store
            .submit_and_lease(Submission::One(other), vec![request(&workers[1])], at(4))
            .is_err()
    );
    assert_eq!(
        list_all(&store, ListQuery::default()),
        before,
        "nothing submitted, nothing leased"
    );

    // A batch: the requests get the best jobs first, those queued before included.
    let (submitted, answers) = store
        .submit_and_lease(
            Submission::Batch(vec![with_priority(generate(4), 5), generate(5)]),
            vec![request(&workers[1]), request(&workers[2])],
            at(5),
        )
        .expect("submit_and_lease");
    let urgent = submitted[0].id;
    assert_eq!(leased_jobs(&answers), [Some(urgent), Some(queued)]);

    let store = h.restart(store, config());
    assert_eq!(state(&store, first), JobState::Assigned);
    assert_eq!(state(&store, urgent), JobState::Assigned);
    assert_eq!(state(&store, queued), JobState::Assigned);
    assert_eq!(state(&store, submitted[1].id), JobState::Queued);
}

/// A batch answers each request exactly as `lease_next` would, called for each in turn: the
/// same jobs to the same workers under the same epochs, a job that fits no request left
/// queued, an unknown or draining worker refused without stopping the others, and the same
/// jobs and workers stored afterwards.
pub fn lease_many_is_lease_next_in_turn<H: Harness>(h: &mut H) {
    let now = at(10);
    let setup = |store: &H::Store| {
        let w = |name, gpus: &[u64], labels: &[(&str, &str)], types: &[JobType]| {
            store
                .register_worker(worker(name, gpus, labels, types), at(0))
                .expect("register");
        };
        w(
            "cpu",
            &[],
            &[("region", "us")],
            &[JobType::Generate, JobType::Train],
        );
        w(
            "gpu",
            &[16_000, 16_000, 80_000],
            &[("region", "eu")],
            &[JobType::Generate, JobType::Train],
        );
        w("drained", &[], &[], &JobType::ALL);
        store.drain_worker(&wid("drained"), at(0)).expect("drain");

        let mut two_gpus = spec(JobType::Train);
        two_gpus.resources.gpus = 2;
        submit(store, two_gpus, at(1));
        let mut big_gpu = spec(JobType::Train);
        big_gpu.resources.gpus = 1;
        big_gpu.resources.gpu_memory_mb = 40_000;
        submit(store, with_priority(big_gpu, 3), at(1));
        submit(store, spec(JobType::Audit), at(1));
        let mut eu = generate(1);
        eu.resources.labels.insert("region".into(), "eu".into());
        submit(store, eu, at(1));
        for n in 2..5 {
            submit(store, with_priority(generate(n), n as i32 % 2), at(2));
        }
        // One in its retry backoff at `now`.
        let backoff = submit(store, with_priority(generate(9), 10), at(3));
        let l = lease(store, &wid("cpu"), backoff, at(3));
        store
            .fail(backoff, l.epoch, error(FailureClass::StageError), now)
            .expect("fail");
    };
    let batched = h.open(config());
    let serial = h.open(config());
    setup(&batched);
    setup(&serial);

    let ask = |name: &str, free: &[u64]| LeaseRequest {
        worker: wid(name),
        free_gpus: free.to_vec(),
    };
    let requests = vec![
        ask("gpu", &[16_000]),
        ask("cpu", &[]),
        ask("ghost", &[]),
        ask("gpu", &[80_000, 16_000, 16_000]),
        ask("drained", &[]),
        ask("gpu", &[16_000, 16_000]),
        ask("cpu", &[]),
        ask("cpu", &[]),
        ask("cpu", &[]),
    ];
    let got = batched
        .lease_many(requests.clone(), now)
        .expect("lease_many");
    let want: Vec<_> = requests
        .into_iter()
        .map(|r| serial.lease_next(r, now))
        .collect();
    assert_eq!(got, want);

    // The batch did lease, refuse and come up empty, so the comparison covered each case.
    assert!(matches!(&got[2], Err(StoreError::UnknownWorker(w)) if *w == wid("ghost")));
    assert!(matches!(&got[4], Err(StoreError::WorkerDraining(w)) if *w == wid("drained")));
    assert!(got.iter().any(|a| matches!(a, Ok(None))));
    let leased: Vec<JobId> = got.iter().flatten().flatten().map(|l| l.job.id).collect();
    assert_eq!(leased.len(), 5);
    let mut distinct = leased.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), leased.len(), "no job leased twice");
    let queued = ListQuery {
        state: Some(JobState::Queued),
        limit: 1000,
        ..ListQuery::default()
    };
    // The audit job (nobody runs audit), the eu job (the gpu worker took better ones) and the
    // one in its backoff.
    assert_eq!(list_all(&batched, queued).len(), 3);

    let everything = ListQuery {
        limit: 1000,
        ..ListQuery::default()
    };
    assert_eq!(
        list_all(&batched, everything.clone()),
        list_all(&serial, everything)
    );
    assert_eq!(
        batched.list_workers().expect("workers"),
        serial.list_workers().expect("workers")
    );
}

/// A failed attempt with a retryable class waits out its backoff (from the store's retry
/// policy) before it can be leased again; `pending_reason` says so.
pub fn retry_waits_out_the_backoff<H: Harness>(h: &mut H) {
    let store = h.open(config());
    let w = register_cpu_worker(&store, "w1", at(0));
    let id = submit(&store, generate(0), at(0));
    let first = lease(&store, &w, id, at(0));
    assert_eq!(
        store
            .fail(id, first.epoch, error(FailureClass::StageError), at(10))
            .expect("fail"),
        JobState::Queued
    );
    // config(): 1 s after the first failure, no jitter.
    let until = at(11);
    let job = get(&store, id);
    assert_eq!(job.not_before, Some(until));
    assert_eq!(
        store.pending_reason(id, at(10)).expect("reason"),
        Some(PendingReason::Backoff { until })
    );
    let other = submit(&store, with_priority(generate(1), -5), at(10));
    let l = try_lease(&store, &w, at_ms(10_999)).expect("the other job");
    assert_eq!(
        l.job.id, other,
        "the job in backoff is skipped, not blocking the queue"
    );
    assert!(try_lease(&store, &w, at_ms(10_999)).is_none());
    let second = lease(&store, &w, id, until);
    assert_eq!(second.attempt, 2);
    assert!(second.epoch > l.epoch);
    assert_eq!(second.job.not_before, None);

    // The second wait doubles.
    store
        .fail(id, second.epoch, error(FailureClass::Platform), at(20))
        .expect("fail");
    assert_eq!(get(&store, id).not_before, Some(at(22)));
    assert!(try_lease(&store, &w, at_ms(21_999)).is_none());
    assert_eq!(lease(&store, &w, id, at(22)).attempt, 3);
}

fn assert_stale(result: Result<impl std::fmt::Debug, StoreError>, what: &str) {
    match result {
        Err(e) => assert!(
            e.is_stale(),
            "{what}: expected a stale-epoch error, got {e:?}"
        ),
        Ok(v) => panic!("{what}: a stale epoch was accepted ({v:?})"),
    }
}

/// Checks that every report under `epoch` is refused as stale and changes nothing.
fn assert_all_reports_stale(store: &impl Store, id: JobId, epoch: Epoch, now: Timestamp) {
    let before = get(store, id);
    assert_stale(store.start(id, epoch, now), "start");
    assert_stale(store.heartbeat(id, epoch, Some(0.5), now), "heartbeat");
    assert_stale(store.complete(id, epoch, output(), now), "complete");
    assert_stale(
        store.fail(id, epoch, error(FailureClass::StageError), now),
        "fail",
    );
    assert_stale(
        store.append_logs(id, epoch, 0, vec!["late".into()], now),
        "append_logs",
    );
    assert_eq!(get(store, id), before, "a stale report changes nothing");
}

/// Start, heartbeat, complete, fail and log reports quoting any epoch but the live lease's are
/// refused with `is_stale()` and change nothing; the live epoch works.
pub fn stale_epoch_reports_are_refused<H: Harness>(h: &mut H) {
    let store = h.open(config());
    let w = register_cpu_worker(&store, "w1", at(0));
    let id = submit(&store, generate(0), at(0));
    // Queued and never leased: no epoch is live.
    assert_all_reports_stale(&store, id, Epoch(1), at(0));

    let old = lease(&store, &w, id, at(0));
    store.start(id, old.epoch, at(1)).expect("start");
    store
        .fail(id, old.epoch, error(FailureClass::StageError), at(2))
        .expect("fail");
    // Queued for a retry: the old epoch is not live.
    assert_all_reports_stale(&store, id, old.epoch, at(3));

    let new = lease(&store, &w, id, at(3));
    assert!(new.epoch > old.epoch);
    for stale in [old.epoch, Epoch(new.epoch.0 + 1), Epoch(u64::MAX)] {
        assert_all_reports_stale(&store, id, stale, at(4));
    }
    let err = store.start(id, old.epoch, at(4)).expect_err("stale");
    assert!(
        matches!(err, StoreError::Transition(TransitionError::StaleEpoch { job, got, live }) if job == id && got == old.epoch && live == Some(new.epoch)),
        "{err:?}"
    );
    // The live epoch still works, start to finish.
    store.start(id, new.epoch, at(5)).expect("start");
    store
        .heartbeat(id, new.epoch, Some(0.5), at(6))
        .expect("heartbeat");
    store
        .append_logs(id, new.epoch, 0, vec!["ok".into()], at(6))
        .expect("logs");
    assert_eq!(
        store
            .complete(id, new.epoch, output(), at(7))
            .expect("complete"),
        JobState::Succeeded
    );
}

/// Once a job has finished, every report under its old epoch is refused as stale, so the
/// worker knows to drop the job (rather than being told it made an illegal move).
pub fn stale_reports_on_finished_job_are_stale<H: Harness>(h: &mut H) {
    let store = h.open(config());
    let w = register_cpu_worker(&store, "w1", at(0));
    let done = submit(&store, generate(0), at(0));
    let l = lease(&store, &w, done, at(0));
    store
        .complete(done, l.epoch, output(), at(1))
        .expect("complete");
    assert_all_reports_stale(&store, done, l.epoch, at(2));

    let failed = submit(&store, generate(1), at(2));
    let l = lease(&store, &w, failed, at(2));
    store
        .fail(failed, l.epoch, error(FailureClass::InvalidInput), at(3))
        .expect("fail");
    assert_all_reports_stale(&store, failed, l.epoch, at(4));

    let cancelled = submit(&store, generate(2), at(4));
    let l = lease(&store, &w, cancelled, at(4));
    store
        .cancel(cancelled, "stop".into(), at(5))
        .expect("cancel");
    store
        .fail(cancelled, l.epoch, error(FailureClass::Cancelled), at(6))
        .expect("fail");
    assert_eq!(state(&store, cancelled), JobState::Cancelled);
    assert_all_reports_stale(&store, cancelled, l.epoch, at(7));
}

/// A lease not acknowledged lasts only `assign_ttl`: a worker that was gone when it was leased
/// the job is found out soon, and the attempt it never started is the platform's, so the job
/// keeps its one attempt. Starting, or a heartbeat, gives the lease its whole `lease_ttl`. With
/// `worker_liveness`, a worker not heard from lately is leased nothing, and a heartbeat makes
/// it eligible again.
pub fn an_unacknowledged_lease_is_short_and_costs_no_attempt<H: Harness>(h: &mut H) {
    let assign = Duration::from_secs(1);
    let liveness = Duration::from_secs(5);
    let store = h.open(StoreConfig {
        assign_ttl: assign,
        worker_liveness: Some(liveness),
        ..config()
    });
    let w = register_cpu_worker(&store, "w1", at(0));
    let mut s = generate(0);
    s.max_attempts = 1;
    let id = submit(&store, s, at(0));
    let first = lease(&store, &w, id, at(0));
    assert_eq!(first.lease_expires_at, at(0).saturating_add(assign));
    let expired = store.expire(at(0).saturating_add(assign)).expect("expire");
    assert_eq!(expired.len(), 1);
    let job = get(&store, id);
    assert_eq!((job.state, job.not_before), (JobState::Queued, None));
    assert_eq!((job.own_failures(), job.recoveries()), (0, 1));
    assert_attempt_failed(&job, 1, FailureClass::WorkerLost);
    let message = &job.events.last().expect("an event").message;
    assert!(message.contains("never acknowledged"), "{message}");

    // Heard from 1 s ago: leased, and a start gives the whole lease.
    let second = lease(&store, &w, id, at(2));
    store.start(id, second.epoch, at(3)).expect("start");
    assert_eq!(
        get(&store, id)
            .live_attempt()
            .expect("live")
            .lease_expires_at,
        at(3).saturating_add(LEASE_TTL)
    );
    store
        .fail(id, second.epoch, error(FailureClass::WorkerLost), at(4))
        .expect("fail");

    // Not heard from for longer than `worker_liveness`: nothing is leased to it, until a
    // heartbeat.
    assert!(try_lease(&store, &w, at(6)).is_none(), "a silent worker");
    store.worker_heartbeat(&w, at(7)).expect("heartbeat");
    let third = lease(&store, &w, id, at(7));
    store.start(id, third.epoch, at(7)).expect("start");
    store
        .fail(id, third.epoch, error(FailureClass::StageError), at(8))
        .expect("fail");
    let job = get(&store, id);
    assert_eq!(
        job.state,
        JobState::Failed,
        "its one attempt of its own is spent"
    );
    assert_eq!((job.own_failures(), job.recoveries()), (1, 2));
}

/// A lease not renewed within the TTL ends, on `expire`, as a `worker_lost` attempt; the job is
/// queued again, the old worker's completion is refused, and the next lease has a larger epoch.
pub fn expired_lease_requeues_as_worker_lost<H: Harness>(h: &mut H) {
    let store = h.open(config());
    let w1 = register_cpu_worker(&store, "w1", at(0));
    let w2 = register_cpu_worker(&store, "w2", at(0));
    let id = submit(&store, generate(0), at(0));
    let old = lease(&store, &w1, id, at(0));
    assert_eq!(old.lease_expires_at, at(0).saturating_add(LEASE_TTL));
    store.start(id, old.epoch, at(1)).expect("start");

    // Starting renews the lease.
    let expires = at(1).saturating_add(LEASE_TTL);
    assert_eq!(
        store.expire(Timestamp(expires.0 - 1)).expect("expire"),
        vec![]
    );
    assert_eq!(state(&store, id), JobState::Running);
    assert_eq!(
        store.expire(expires).expect("expire"),
        vec![Expired {
            job: id,
            state: JobState::Queued,
            timed_out: false,
        }]
    );
    let job = get(&store, id);
    assert_eq!(job.state, JobState::Queued);
    let attempt = &job.attempts[0];
    assert_eq!(attempt.ended_at, Some(expires));
    assert!(
        matches!(&attempt.outcome, Some(AttemptOutcome::Failed(e)) if e.class == FailureClass::WorkerLost),
        "{:?}",
        attempt.outcome
    );
    assert_eq!(
        job.not_before, None,
        "a lost worker's job is retried at once"
    );
    assert_eq!(
        store.expire(at(100)).expect("expire again"),
        vec![],
        "nothing live is left"
    );

    assert_stale(
        store.complete(id, old.epoch, output(), at(31)),
        "late completion",
    );
    assert_eq!(get(&store, id), job);

    let new = lease(&store, &w2, id, at(100));
    assert!(new.epoch > old.epoch);
    assert_eq!(new.attempt, 2);
    assert_eq!(new.job.attempts[1].worker, w2);
    assert_stale(
        store.heartbeat(id, old.epoch, None, at(101)),
        "old worker's heartbeat",
    );
    assert_eq!(
        store
            .complete(id, new.epoch, output(), at(102))
            .expect("complete"),
        JobState::Succeeded
    );
}

/// A heartbeat extends the lease to `now + lease_ttl`, records progress, keeps the state and
/// adds no event; progress outside 0..=1 is refused.
pub fn heartbeat_renews_the_lease_and_records_progress<H: Harness>(h: &mut H) {
    let store = h.open(config());
    let w = register_cpu_worker(&store, "w1", at(0));
    let id = submit(&store, generate(0), at(0));
    let l = lease(&store, &w, id, at(0));
    store.start(id, l.epoch, at(1)).expect("start");
    let events = get(&store, id).events.len();

    let status = store
        .heartbeat(id, l.epoch, Some(0.25), at(20))
        .expect("heartbeat");
    assert_eq!(status.lease_expires_at, at(20).saturating_add(LEASE_TTL));
    assert!(!status.cancel_requested);
    let job = get(&store, id);
    assert_eq!(job.state, JobState::Running);
    assert_eq!(job.progress, Some(0.25));
    assert_eq!(
        job.events.len(),
        events,
        "a heartbeat is not a state change"
    );
    assert_eq!(job.attempts[0].lease_expires_at, status.lease_expires_at);

    // The lease now lasts past its first expiry.
    assert_eq!(store.expire(at(31)).expect("expire"), vec![]);
    let status = store
        .heartbeat(id, l.epoch, None, at(45))
        .expect("heartbeat");
    assert_eq!(status.lease_expires_at, at(75));
    assert_eq!(
        get(&store, id).progress,
        Some(0.25),
        "no progress keeps the last one"
    );

    for bad in [1.5, -0.1, f64::NAN] {
        let err = store
            .heartbeat(id, l.epoch, Some(bad), at(46))
            .expect_err("bad progress");
        assert!(
            matches!(
                err,
                StoreError::Transition(TransitionError::InvalidProgress(_))
            ),
            "{err:?}"
        );
    }
    assert_eq!(get(&store, id).attempts[0].lease_expires_at, at(75));
    assert_eq!(store.expire(at(75)).expect("expire").len(), 1);
}

fn assert_attempt_failed(job: &Job, number: usize, class: FailureClass) {
    let a = &job.attempts[number - 1];
    assert_eq!(a.number as usize, number);
    assert!(a.ended_at.is_some());
    assert!(
        matches!(&a.outcome, Some(AttemptOutcome::Failed(e)) if e.class == class),
        "{}: attempt {number}: {:?}",
        job.id,
        a.outcome
    );
}

/// `stage_error`, `worker_lost` and `platform` failures are retried until `max_attempts`
/// attempts were made; then the job fails with the last error.
pub fn retryable_failures_retry_until_max_attempts<H: Harness>(h: &mut H) {
    let store = h.open(config());
    let w = register_cpu_worker(&store, "w1", at(0));
    let mut t = 0;
    // The job's own failures spend its `max_attempts`; failures of the platform (a lost
    // worker, Nexa Forge itself) do not, and have a budget of their own.
    let recoveries = config().retry.max_recoveries;
    for (class, max_attempts, tries) in [
        (FailureClass::StageError, 3, 3),
        (FailureClass::WorkerLost, 1, recoveries + 1),
        (FailureClass::Platform, 1, recoveries + 1),
    ] {
        let mut s = generate(t);
        s.max_attempts = max_attempts;
        let id = submit(&store, s, at(t));
        let mut epochs = Vec::new();
        for attempt in 1..=tries {
            t += 100;
            let l = lease(&store, &w, id, at(t));
            assert_eq!(l.attempt, attempt);
            epochs.push(l.epoch);
            store.start(id, l.epoch, at(t)).expect("start");
            let after = store
                .fail(id, l.epoch, error(class), at(t + 1))
                .expect("fail");
            let want = if attempt < tries {
                JobState::Queued
            } else {
                JobState::Failed
            };
            assert_eq!(after, want, "{class}, attempt {attempt}");
            assert_eq!(state(&store, id), want);
        }
        let job = get(&store, id);
        assert_eq!(job.attempts.len(), tries as usize);
        for n in 1..=tries {
            assert_attempt_failed(&job, n as usize, class);
        }
        assert_eq!(job.error, Some(error(class)));
        assert!(epochs.windows(2).all(|e| e[0] < e[1]));
        assert!(
            try_lease(&store, &w, at(t + 1000)).is_none(),
            "a failed job is not leased"
        );
    }

    // max_attempts = 1: no retry at all.
    let mut s = generate(99);
    s.max_attempts = 1;
    let id = submit(&store, s, at(t));
    let l = lease(&store, &w, id, at(t));
    assert_eq!(
        store
            .fail(id, l.epoch, error(FailureClass::StageError), at(t))
            .expect("fail"),
        JobState::Failed
    );
}

/// `invalid_input`, `timeout` and `cancelled` failures reported by the worker fail the job at
/// once, whatever attempts remain.
pub fn non_retryable_failures_fail_at_once<H: Harness>(h: &mut H) {
    let store = h.open(config());
    let w = register_cpu_worker(&store, "w1", at(0));
    for (n, class) in [
        FailureClass::InvalidInput,
        FailureClass::Timeout,
        FailureClass::Cancelled,
    ]
    .into_iter()
    .enumerate()
    {
        let mut s = generate(n as u64);
        s.max_attempts = 5;
        let id = submit(&store, s, at(0));
        let l = lease(&store, &w, id, at(1));
        store.start(id, l.epoch, at(2)).expect("start");
        assert_eq!(
            store.fail(id, l.epoch, error(class), at(3)).expect("fail"),
            JobState::Failed
        );
        let job = get(&store, id);
        assert_eq!(job.state, JobState::Failed);
        assert_eq!(job.attempts.len(), 1);
        assert_attempt_failed(&job, 1, class);
        assert_eq!(job.error, Some(error(class)));
        assert_eq!(job.not_before, None);
    }
}

/// An attempt still live at its deadline (lease time plus the spec's timeout) ends as a
/// `timeout` on `expire`, and is not retried; heartbeats do not move the deadline.
pub fn timeout_fails_the_attempt<H: Harness>(h: &mut H) {
    let store = h.open(config());
    let w = register_cpu_worker(&store, "w1", at(0));
    let mut s = generate(0);
    s.timeout = Duration::from_secs(50);
    s.max_attempts = 3;
    let id = submit(&store, s, at(0));
    let l = lease(&store, &w, id, at(0));
    assert_eq!(l.deadline, at(50));
    store.start(id, l.epoch, at(1)).expect("start");
    for t in [20, 40] {
        store
            .heartbeat(id, l.epoch, None, at(t))
            .expect("heartbeat");
    }
    assert_eq!(store.expire(at(49)).expect("expire"), vec![]);
    assert_eq!(
        store.expire(at(50)).expect("expire"),
        vec![Expired {
            job: id,
            state: JobState::Failed,
            timed_out: true,
        }]
    );
    let job = get(&store, id);
    assert_eq!(job.attempts.len(), 1);
    assert_attempt_failed(&job, 1, FailureClass::Timeout);
    assert_eq!(job.error.map(|e| e.class), Some(FailureClass::Timeout));
    assert!(
        store.complete(id, l.epoch, output(), at(51)).is_err(),
        "completion after timeout"
    );
    assert_stale(
        store.append_logs(id, l.epoch, 0, vec!["late".into()], at(51)),
        "logs after timeout",
    );
    assert_eq!(get(&store, id).attempts.len(), 1);
}

/// Cancelling a waiting or queued job cancels it at once, with the reason kept.
pub fn cancel_waiting_or_queued_job_is_immediate<H: Harness>(h: &mut H) {
    let store = h.open(config());
    let queued = submit(&store, generate(0), at(0));
    let waiting = submit(
        &store,
        super::fixtures::depending(generate(1), &[queued]),
        at(0),
    );
    let backoff = submit(&store, generate(2), at(0));
    let w = register_cpu_worker(&store, "w1", at(0));
    lease(&store, &w, queued, at(0));
    let l = lease(&store, &w, backoff, at(0));
    store
        .fail(backoff, l.epoch, error(FailureClass::StageError), at(1))
        .expect("fail");
    assert!(get(&store, backoff).not_before.is_some());

    for id in [waiting, backoff] {
        let before = state(&store, id);
        assert!(matches!(before, JobState::Waiting | JobState::Queued));
        assert_eq!(
            store
                .cancel(id, "user asked".into(), at(2))
                .expect("cancel"),
            JobState::Cancelled
        );
        let job = get(&store, id);
        assert_eq!(job.state, JobState::Cancelled);
        assert_eq!(
            job.error.as_ref().map(|e| (e.class, e.message.as_str())),
            Some((FailureClass::Cancelled, "user asked"))
        );
        assert_eq!(
            job.events.last().map(|e| (e.from, e.to, e.at)),
            Some((Some(before), JobState::Cancelled, at(2)))
        );
        assert!(
            job.events
                .last()
                .is_some_and(|e| e.message.contains("user asked"))
        );
        assert_eq!(job.not_before, None);
        assert_eq!(store.pending_reason(id, at(2)).expect("reason"), None);
    }
    assert!(
        try_lease(&store, &w, at(100)).is_none(),
        "a cancelled job is not leased"
    );
    assert!(matches!(
        store.cancel(JobId(9_999), "x".into(), at(3)),
        Err(StoreError::NotFound(JobId(9_999)))
    ));
}

/// Cancelling a leased job makes it `cancelling`; heartbeats say `cancel_requested`; it is
/// `cancelled` once the worker reports (success or failure) or its lease runs out, and it is
/// never retried.
pub fn cancel_leased_job_waits_for_the_worker<H: Harness>(h: &mut H) {
    let store = h.open(config());
    let w = register_cpu_worker(&store, "w1", at(0));
    // Four jobs: assigned, then completes; running, then fails (retryable); running, then its
    // lease runs out; assigned, then its lease runs out.
    let ids: Vec<JobId> = (0..4).map(|n| submit(&store, generate(n), at(0))).collect();
    let leases: Vec<_> = ids.iter().map(|&id| lease(&store, &w, id, at(1))).collect();
    store.start(ids[1], leases[1].epoch, at(2)).expect("start");
    store.start(ids[2], leases[2].epoch, at(2)).expect("start");

    for (&id, l) in ids.iter().zip(&leases) {
        let before = state(&store, id);
        assert_eq!(
            store.cancel(id, "stop it".into(), at(3)).expect("cancel"),
            JobState::Cancelling
        );
        let job = get(&store, id);
        assert_eq!(job.state, JobState::Cancelling);
        assert_eq!(
            job.events.last().map(|e| (e.from, e.to)),
            Some((Some(before), JobState::Cancelling))
        );
        assert!(job.live_attempt().is_some(), "the worker still holds it");
        // Asking again changes nothing.
        assert_eq!(
            store
                .cancel(id, "again".into(), at(4))
                .expect("cancel again"),
            JobState::Cancelling
        );
        assert_eq!(get(&store, id), job);
        let status = store
            .heartbeat(id, l.epoch, None, at(5))
            .expect("heartbeat");
        assert!(status.cancel_requested);
        assert_eq!(state(&store, id), JobState::Cancelling);
        assert!(matches!(
            store.start(id, l.epoch, at(5)),
            Err(StoreError::Transition(TransitionError::Illegal { .. }))
        ));
    }

    assert_eq!(
        store
            .complete(ids[0], leases[0].epoch, output(), at(6))
            .expect("complete"),
        JobState::Cancelled
    );
    assert_eq!(
        store
            .fail(
                ids[1],
                leases[1].epoch,
                error(FailureClass::StageError),
                at(6)
            )
            .expect("fail"),
        JobState::Cancelled,
        "a cancelling job is not retried"
    );
    let mut expired = store
        .expire(at(5).saturating_add(LEASE_TTL))
        .expect("expire");
    expired.sort_by_key(|e| e.job);
    assert_eq!(
        expired,
        vec![
            Expired {
                job: ids[2],
                state: JobState::Cancelled,
                timed_out: false,
            },
            Expired {
                job: ids[3],
                state: JobState::Cancelled,
                timed_out: false,
            },
        ]
    );
    for (n, &id) in ids.iter().enumerate() {
        let job = get(&store, id);
        assert_eq!(job.state, JobState::Cancelled, "job {n}");
        assert!(job.live_attempt().is_none());
        assert_eq!(job.attempts.len(), 1);
        assert_eq!(
            job.error.as_ref().map(|e| e.class),
            Some(FailureClass::Cancelled)
        );
        assert_events_consistent(&job);
        assert!(try_lease(&store, &w, at(1000)).is_none());
    }
}

/// Cancelling a finished job is a `Transition` error and changes nothing.
pub fn cancel_of_finished_job_is_refused<H: Harness>(h: &mut H) {
    let store = h.open(config());
    let w = register_cpu_worker(&store, "w1", at(0));
    let finished = finished_jobs(&store, &w);
    for id in finished {
        let before = get(&store, id);
        let err = store
            .cancel(id, "too late".into(), at(50))
            .expect_err("cancel finished");
        assert!(
            matches!(&err, StoreError::Transition(TransitionError::Illegal { job, state, .. }) if *job == id && *state == before.state),
            "{err:?}"
        );
        assert!(!err.is_stale());
        assert_eq!(get(&store, id), before);
    }
}

/// One job in each terminal state: succeeded, failed, cancelled (each leased once).
fn finished_jobs(store: &impl Store, w: &WorkerId) -> [JobId; 3] {
    let ok = submit(store, generate(0), at(0));
    let l = lease(store, w, ok, at(1));
    store
        .complete(ok, l.epoch, output(), at(2))
        .expect("complete");
    let failed = submit(store, generate(1), at(3));
    let l = lease(store, w, failed, at(3));
    store
        .fail(failed, l.epoch, error(FailureClass::InvalidInput), at(4))
        .expect("fail");
    let cancelled = submit(store, generate(2), at(5));
    let l = lease(store, w, cancelled, at(5));
    store
        .cancel(cancelled, "stop".into(), at(6))
        .expect("cancel");
    store
        .complete(cancelled, l.epoch, output(), at(7))
        .expect("complete");
    [ok, failed, cancelled]
}

/// A finished job never changes again, whatever is asked of the store.
pub fn finished_jobs_never_change<H: Harness>(h: &mut H) {
    let store = h.open(config());
    let w = register_cpu_worker(&store, "w1", at(0));
    let finished = finished_jobs(&store, &w);
    let before: Vec<Job> = finished.iter().map(|&id| get(&store, id)).collect();
    for (&id, job) in finished.iter().zip(&before) {
        let epoch = job.attempts.last().map(|a| a.epoch).expect("leased once");
        for e in [epoch, Epoch(epoch.0 + 100)] {
            assert!(store.start(id, e, at(10)).is_err());
            assert!(store.heartbeat(id, e, None, at(10)).is_err());
            assert!(store.complete(id, e, output(), at(10)).is_err());
            assert!(
                store
                    .fail(id, e, error(FailureClass::StageError), at(10))
                    .is_err()
            );
            assert!(
                store
                    .append_logs(id, e, 0, vec!["x".into()], at(10))
                    .is_err()
            );
        }
        assert!(store.cancel(id, "no".into(), at(10)).is_err());
    }
    assert_eq!(store.expire(at(1_000_000)).expect("expire"), vec![]);
    assert!(try_lease(&store, &w, at(1_000_000)).is_none());
    // Dependents of finished jobs are settled without touching them.
    submit(
        &store,
        super::fixtures::depending(generate(9), &finished),
        at(11),
    );
    let after: Vec<Job> = finished.iter().map(|&id| get(&store, id)).collect();
    assert_eq!(after, before);
}

/// Every state change appends one event whose `to` is the new state, at the time of the
/// change; reports that keep the state add none.
pub fn every_state_change_appends_an_event<H: Harness>(h: &mut H) {
    use JobState as S;
    let store = h.open(config());
    let w = register_cpu_worker(&store, "w1", at(0));
    let id = submit(&store, generate(0), at(0));
    let l1 = lease(&store, &w, id, at(1));
    store.start(id, l1.epoch, at(2)).expect("start");
    store
        .heartbeat(id, l1.epoch, Some(0.5), at(3))
        .expect("heartbeat");
    store
        .append_logs(id, l1.epoch, 0, vec!["line".into()], at(3))
        .expect("logs");
    store
        .fail(id, l1.epoch, error(FailureClass::StageError), at(4))
        .expect("fail");
    let l2 = lease(&store, &w, id, at(10));
    store.start(id, l2.epoch, at(11)).expect("start");
    store
        .complete(id, l2.epoch, output(), at(12))
        .expect("complete");
    let job = get(&store, id);
    assert_eq!(
        event_states(&job),
        vec![
            S::Queued,
            S::Assigned,
            S::Running,
            S::Queued,
            S::Assigned,
            S::Running,
            S::Succeeded
        ]
    );
    let times: Vec<Timestamp> = job.events.iter().map(|e| e.at).collect();
    assert_eq!(
        times,
        vec![at(0), at(1), at(2), at(4), at(10), at(11), at(12)]
    );
    assert_events_consistent(&job);
    assert_eq!(job.output, Some(output()));
    assert_eq!(job.progress, Some(1.0));

    let c = submit(&store, generate(1), at(20));
    let l = lease(&store, &w, c, at(21));
    store.cancel(c, "stop".into(), at(22)).expect("cancel");
    store
        .fail(c, l.epoch, error(FailureClass::Cancelled), at(23))
        .expect("fail");
    let job = get(&store, c);
    assert_eq!(
        event_states(&job),
        vec![S::Queued, S::Assigned, S::Cancelling, S::Cancelled]
    );
    assert_events_consistent(&job);

    let x = submit(&store, generate(2), at(30));
    let l = lease(&store, &w, x, at(30));
    store
        .expire(at(30).saturating_add(LEASE_TTL))
        .expect("expire");
    let job = get(&store, x);
    assert_eq!(event_states(&job), vec![S::Queued, S::Assigned, S::Queued]);
    assert!(
        job.events[2].message.contains("worker_lost") || job.events[2].message.contains("lease")
    );
    assert_eq!(job.attempts[0].epoch, l.epoch);
    assert_events_consistent(&job);
}

/// A finished job is deleted with its log and its idempotency key; a job that has not
/// finished, one a waiting job depends on, and one that registered a model are kept.
pub fn finished_jobs_are_deleted_with_their_logs<H: Harness>(h: &mut H) {
    let store = h.open(config());
    let w = register_cpu_worker(&store, "w1", at(0));
    let [ok, failed, cancelled] = finished_jobs(&store, &w);
    // `ok` is a generate job: its "model" artifact registers nothing.
    for id in [ok, failed, cancelled] {
        assert!(store.read_logs(id, Default::default()).is_ok());
        let gone = store.delete(id).expect("delete a finished job");
        assert_eq!(gone.id, id);
        assert!(matches!(store.get(id), Err(StoreError::NotFound(_))));
        assert!(matches!(store.delete(id), Err(StoreError::NotFound(_))));
    }
    assert_eq!(store.count(JobState::Succeeded).expect("count"), 0);

    // Logs and the idempotency key go with the job: the key makes a new job afterwards.
    let mut keyed = generate(9);
    keyed.idempotency_key = Some("nightly".into());
    let first = store.submit(keyed.clone(), at(10)).expect("submit").id;
    let l = lease(&store, &w, first, at(11));
    store
        .append_logs(first, l.epoch, 0, vec!["a line".into()], at(12))
        .expect("logs");
    store
        .fail(first, l.epoch, error(FailureClass::InvalidInput), at(13))
        .expect("fail");
    store.delete(first).expect("delete");
    let again = store.submit(keyed, at(14)).expect("resubmit");
    assert!(again.created && again.id != first);

    // Not finished: kept, and so is a finished job that a waiting one depends on.
    let running = again.id;
    let held = lease(&store, &w, running, at(21));
    assert!(matches!(
        store.delete(running),
        Err(StoreError::Kept { .. })
    ));
    let parent = store.submit(generate(21), at(22)).expect("submit").id;
    let child = store
        .submit(
            super::fixtures::depending(spec(JobType::Train), &[parent, running]),
            at(22),
        )
        .expect("submit")
        .id;
    let lp = lease(&store, &w, parent, at(23));
    store
        .complete(parent, lp.epoch, output(), at(24))
        .expect("complete");
    assert_eq!(state(&store, child), JobState::Waiting);
    let err = store
        .delete(parent)
        .expect_err("a waiting job depends on it");
    assert!(err.to_string().contains(&child.to_string()), "{err}");
    // Once the dependent has finished (here: cancelled), the dependency goes; settling the
    // other dependency later does not trip on it.
    store
        .cancel(child, "not needed".into(), at(25))
        .expect("cancel");
    store.delete(parent).expect("delete");
    store.delete(child).expect("delete");
    store
        .complete(running, held.epoch, output(), at(26))
        .expect("complete");

    // A train job that registered a model version is kept: versions must not renumber.
    let trained = store
        .submit(spec(JobType::Train), at(30))
        .expect("submit")
        .id;
    let lt = lease(&store, &w, trained, at(31));
    store
        .complete(trained, lt.epoch, output(), at(32))
        .expect("complete");
    let err = store.delete(trained).expect_err("it registered a model");
    assert!(err.to_string().contains("model"), "{err}");

    // Retention: finished before the cutoff and deletable, oldest first, in passes.
    let (deleted, next) = store
        .delete_finished_before(at(1000), JobId(1), 1000)
        .expect("prune");
    assert_eq!(next, None);
    assert_eq!(deleted, [running]);
    assert!(store.get(trained).is_ok());
}
