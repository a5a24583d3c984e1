//! Reading: `list` with filters and pages, and `pending_reason`.

use super::Harness;
use super::fixtures::{
    at, config, depending, error, generate, get, lease, list_all, register_cpu_worker, spec,
    submit, wid, worker,
};
use crate::{FailureClass, JobId, JobState, JobType, ListQuery, PendingReason, Store, StoreError};

fn ids(jobs: &[crate::Job]) -> Vec<JobId> {
    jobs.iter().map(|j| j.id).collect()
}

/// `list` filters by state, by job type and by both, newest first, and returns whole jobs.
pub fn list_filters_by_state_and_type<H: Harness>(h: &mut H) {
    let store = h.open(config());
    let w = register_cpu_worker(&store, "w1", at(0));
    // Types cycle through all six; jobs 0, 1, 2 end up assigned, 3 (train) and 8 (distill)
    // cancelled, the rest queued.
    let all: Vec<(JobId, JobType)> = (0..14)
        .map(|n| {
            let ty = JobType::ALL[n % 6];
            (submit(&store, spec_n(ty, n as u64), at(n as u64)), ty)
        })
        .collect();
    let leased: Vec<JobId> = (0..3)
        .map(|_| {
            super::fixtures::try_lease(&store, &w, at(20))
                .expect("lease")
                .job
                .id
        })
        .collect();
    assert_eq!(leased, vec![all[0].0, all[1].0, all[2].0]);
    for n in [3, 8] {
        store.cancel(all[n].0, "no".into(), at(21)).expect("cancel");
    }

    let q = |state, job_type| ListQuery {
        state,
        job_type,
        before: None,
        limit: 1000,
        worker: None,
    };
    let expect = |f: &dyn Fn(usize, JobType) -> bool| -> Vec<JobId> {
        let mut v: Vec<JobId> = all
            .iter()
            .enumerate()
            .filter(|(n, (_, ty))| f(*n, *ty))
            .map(|(_, (id, _))| *id)
            .collect();
        v.reverse();
        v
    };
    let everything = store.list(q(None, None)).expect("list");
    assert_eq!(ids(&everything.jobs), expect(&|_, _| true));
    assert_eq!(everything.next_before, None);
    for job in &everything.jobs {
        assert_eq!(job, &get(&store, job.id), "list returns whole jobs");
    }
    // `count` agrees with the listing, state by state.
    for state in JobState::ALL {
        let listed = store.list(q(Some(state), None)).expect("list").jobs.len() as u64;
        assert_eq!(store.count(state).expect("count"), listed, "{state}");
    }
    assert_eq!(store.count(JobState::Assigned).expect("count"), 3);
    assert_eq!(store.count(JobState::Cancelled).expect("count"), 2);
    // `counts` says the same of every state at once, adding up to every job.
    let counts = store.counts().expect("counts");
    assert_eq!(
        counts.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
        JobState::ALL.to_vec()
    );
    for (state, n) in &counts {
        assert_eq!(*n, store.count(*state).expect("count"), "{state}");
    }
    let total: u64 = counts.iter().map(|(_, n)| n).sum();
    assert_eq!(total, everything.jobs.len() as u64);

    let assigned = store.list(q(Some(JobState::Assigned), None)).expect("list");
    assert_eq!(ids(&assigned.jobs), expect(&|n, _| n < 3));
    assert!(assigned.jobs.iter().all(|j| j.state == JobState::Assigned));
    let cancelled = store
        .list(q(Some(JobState::Cancelled), None))
        .expect("list");
    assert_eq!(ids(&cancelled.jobs), expect(&|n, _| n == 3 || n == 8));
    let queued = store.list(q(Some(JobState::Queued), None)).expect("list");
    assert_eq!(ids(&queued.jobs), expect(&|n, _| n >= 4 && n != 8));
    assert_eq!(
        store
            .list(q(Some(JobState::Succeeded), None))
            .expect("list")
            .jobs,
        vec![]
    );

    for ty in JobType::ALL {
        let page = store.list(q(None, Some(ty))).expect("list");
        assert_eq!(ids(&page.jobs), expect(&|_, t| t == ty), "{ty}");
    }
    let page = store
        .list(q(Some(JobState::Queued), Some(JobType::Generate)))
        .expect("list");
    assert_eq!(
        ids(&page.jobs),
        expect(&|n, t| t == JobType::Generate && n >= 4 && n != 8)
    );
    let page = store
        .list(q(Some(JobState::Cancelled), Some(JobType::Distill)))
        .expect("list");
    assert_eq!(
        ids(&page.jobs),
        expect(&|n, _| n == 8),
        "job 8 is the second distill"
    );
}

fn spec_n(ty: JobType, n: u64) -> crate::JobSpec {
    crate::JobSpec::new(super::fixtures::params(ty, n))
}

/// Following `next_before` visits every job exactly once, newest first, for every page size
/// and with filters; the last page has no `next_before`.
pub fn list_pages_cover_every_job_once<H: Harness>(h: &mut H) {
    let store = h.open(config());
    let created: Vec<JobId> = (0..23)
        .map(|n| {
            let ty = if n % 3 == 0 {
                JobType::Train
            } else {
                JobType::Generate
            };
            submit(&store, spec_n(ty, n), at(n))
        })
        .collect();
    let mut newest_first = created.clone();
    newest_first.reverse();

    for limit in [1, 2, 5, 22, 23, 24, 1000] {
        let q = ListQuery {
            limit,
            ..ListQuery::default()
        };
        assert_eq!(ids(&list_all(&store, q)), newest_first, "limit {limit}");
    }
    // Exact page shapes for limit 5: 5, 5, 5, 5, 3.
    let mut q = ListQuery {
        limit: 5,
        ..ListQuery::default()
    };
    let mut sizes = Vec::new();
    loop {
        let page = store.list(q.clone()).expect("list");
        sizes.push(page.jobs.len());
        match page.next_before {
            Some(b) => q.before = Some(b),
            None => break,
        }
    }
    assert_eq!(sizes, vec![5, 5, 5, 5, 3]);
    // A full last page has no next page either.
    let page = store
        .list(ListQuery {
            limit: 23,
            ..ListQuery::default()
        })
        .expect("list");
    assert_eq!((page.jobs.len(), page.next_before), (23, None));

    let trains: Vec<JobId> = newest_first
        .iter()
        .copied()
        .filter(|id| get(&store, *id).spec.job_type() == JobType::Train)
        .collect();
    assert_eq!(trains.len(), 8);
    for limit in [1, 2, 3, 7, 8] {
        let q = ListQuery {
            job_type: Some(JobType::Train),
            limit,
            ..ListQuery::default()
        };
        assert_eq!(ids(&list_all(&store, q)), trains, "train, limit {limit}");
        let q = ListQuery {
            state: Some(JobState::Queued),
            limit,
            ..ListQuery::default()
        };
        assert_eq!(
            ids(&list_all(&store, q)),
            newest_first,
            "queued, limit {limit}"
        );
    }
    // `before` alone starts below that job.
    let page = store
        .list(ListQuery {
            before: Some(created[10]),
            limit: 3,
            ..ListQuery::default()
        })
        .expect("list");
    assert_eq!(ids(&page.jobs), vec![created[9], created[8], created[7]]);
    assert_eq!(page.next_before, Some(created[7]));
}

/// `list` with a worker gives the jobs with an attempt on that worker (a job retried
/// elsewhere is on both), newest first, in pages, with the other filters; a deleted job leaves
/// the worker's list.
pub fn list_filters_by_worker<H: Harness>(h: &mut H) {
    let store = h.open(config());
    let w1 = register_cpu_worker(&store, "w1", at(0));
    let w2 = register_cpu_worker(&store, "w2", at(0));
    let jobs: Vec<JobId> = (0..5).map(|n| submit(&store, generate(n), at(n))).collect();
    let first = lease(&store, &w1, jobs[0], at(10));
    let second = lease(&store, &w1, jobs[1], at(10));
    lease(&store, &w2, jobs[2], at(10));
    // jobs[0] fails on w1 and runs again on w2, after its backoff.
    store
        .fail(
            jobs[0],
            first.epoch,
            error(FailureClass::StageError),
            at(11),
        )
        .expect("fail");
    let w2_again = register_cpu_worker(&store, "w2", at(3600));
    lease(&store, &w2_again, jobs[0], at(3600));
    let on = |worker: &crate::WorkerId, state, limit, before| {
        store
            .list(ListQuery {
                worker: Some(worker.clone()),
                state,
                limit,
                before,
                ..ListQuery::default()
            })
            .expect("list")
    };
    assert_eq!(ids(&on(&w1, None, 10, None).jobs), vec![jobs[1], jobs[0]]);
    assert_eq!(ids(&on(&w2, None, 10, None).jobs), vec![jobs[2], jobs[0]]);
    let page = on(&w2, None, 1, None);
    assert_eq!(
        (ids(&page.jobs), page.next_before),
        (vec![jobs[2]], Some(jobs[2]))
    );
    let page = on(&w2, None, 1, page.next_before);
    assert_eq!((ids(&page.jobs), page.next_before), (vec![jobs[0]], None));
    assert!(on(&wid("never-seen"), None, 10, None).jobs.is_empty());

    store
        .complete(jobs[1], second.epoch, super::fixtures::output(), at(3601))
        .expect("complete");
    // The state is the job's now, wherever its latest attempt runs.
    let state = |state| ids(&on(&w1, Some(state), 10, None).jobs);
    assert_eq!(state(JobState::Succeeded), vec![jobs[1]]);
    assert_eq!(state(JobState::Assigned), vec![jobs[0]]);
    store.delete(jobs[1]).expect("delete");
    assert_eq!(ids(&on(&w1, None, 10, None).jobs), vec![jobs[0]]);
}

/// A limit of 0 or above 1,000 is an `InvalidQuery`; 1 and 1,000 are fine.
pub fn list_limit_out_of_range_is_invalid<H: Harness>(h: &mut H) {
    let store = h.open(config());
    submit(&store, generate(0), at(0));
    for limit in [0, 1001, usize::MAX] {
        let q = ListQuery {
            limit,
            ..ListQuery::default()
        };
        assert!(
            matches!(store.list(q.clone()), Err(StoreError::InvalidQuery(_))),
            "limit {limit}"
        );
        let filtered = ListQuery {
            state: Some(JobState::Queued),
            ..q
        };
        assert!(matches!(
            store.list(filtered),
            Err(StoreError::InvalidQuery(_))
        ));
    }
    for limit in [1, 1000] {
        let q = ListQuery {
            limit,
            ..ListQuery::default()
        };
        assert_eq!(store.list(q).expect("list").jobs.len(), 1);
    }
}

/// Every waiting or queued job says why it has not started: the jobs it waits on, no workers,
/// no worker that fits (naming what is missing), a backoff, starting on an idle worker, or
/// waiting for capacity; other states have no reason.
pub fn pending_reason_says_why<H: Harness>(h: &mut H) {
    let store = h.open(config());
    let now = at(0);
    let reason = |id| store.pending_reason(id, now).expect("pending_reason");

    let dep = submit(&store, generate(0), now);
    let waiting = submit(&store, depending(generate(1), &[dep]), now);
    assert_eq!(reason(waiting), Some(PendingReason::WaitingOn(vec![dep])));
    assert_eq!(reason(dep), Some(PendingReason::NoWorkers));

    let mut two_gpus = spec(JobType::Train);
    two_gpus.resources.gpus = 2;
    let two_gpus = submit(&store, two_gpus, now);
    let mut labelled = generate(2);
    labelled
        .resources
        .labels
        .insert("zone".into(), "eu-1".into());
    let labelled = submit(&store, labelled, now);
    let audit = submit(&store, spec(JobType::Audit), now);
    let plain = submit(&store, generate(3), now);

    store
        .register_worker(
            worker(
                "w1",
                &[80_000],
                &[("zone", "us-1")],
                &[JobType::Generate, JobType::Train],
            ),
            now,
        )
        .expect("register");
    let text = |id| match reason(id) {
        Some(PendingReason::NoWorkerFits(text)) => text,
        other => panic!("{id}: expected NoWorkerFits, got {other:?}"),
    };
    let t = text(two_gpus);
    assert!(
        t.contains("GPU") && t.contains('2'),
        "{t:?} mentions the 2 GPUs"
    );
    let t = text(labelled);
    assert!(
        t.contains("zone") && t.contains("eu-1"),
        "{t:?} mentions the label"
    );
    let t = text(audit);
    assert!(t.contains("audit"), "{t:?} mentions the job type");
    assert_eq!(
        reason(plain),
        Some(PendingReason::Starting),
        "w1 fits it and holds no job"
    );
    store
        .register_worker(
            worker("w2", &[80_000, 80_000], &[("zone", "eu-1")], &JobType::ALL),
            now,
        )
        .expect("register");
    for id in [two_gpus, labelled, audit, plain] {
        assert_eq!(reason(id), Some(PendingReason::Starting), "{id}");
    }
    // Workers that fit but hold jobs make it a matter of capacity.
    let on_w2 = lease(&store, &wid("w2"), dep, now);
    lease(&store, &wid("w1"), plain, now);
    assert_eq!(reason(plain), None, "an assigned job is not pending");
    for id in [two_gpus, labelled, audit] {
        assert_eq!(reason(id), Some(PendingReason::WaitingForCapacity), "{id}");
    }
    // Draining workers do not count.
    store.drain_worker(&wid("w1"), now).expect("drain");
    store.drain_worker(&wid("w2"), now).expect("drain");
    assert_eq!(reason(audit), Some(PendingReason::NoWorkers));

    // Backoff.
    store
        .fail(dep, on_w2.epoch, error(FailureClass::StageError), now)
        .expect("fail");
    assert_eq!(reason(dep), Some(PendingReason::Backoff { until: at(1) }));
    assert!(matches!(
        store.pending_reason(JobId(9_999), now),
        Err(StoreError::NotFound(JobId(9_999)))
    ));
    store.cancel(audit, "no".into(), now).expect("cancel");
    assert_eq!(reason(audit), None, "a cancelled job is not pending");
}
