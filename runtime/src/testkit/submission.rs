//! Submission: validation, ids, idempotency, batches and dependencies.

use std::time::Duration;

use super::Harness;
use super::fixtures::{
    all_ids, assert_events_consistent, assert_invalid_field, at, config, depending, error,
    event_states, generate, get, lease, output, register_cpu_worker, spec, state, submit,
};
use crate::{FailureClass, JobId, JobSpec, JobState, JobType, PendingReason, Store, StoreError};

/// Every job type round-trips: `get` returns the spec as submitted, queued, with one event.
pub fn submit_every_job_type<H: Harness>(h: &mut H) {
    let store = h.open(config());
    let mut ids = Vec::new();
    for (i, ty) in JobType::ALL.into_iter().enumerate() {
        let mut s = spec(ty);
        s.priority = i as i32 - 2;
        s.max_attempts = 1 + i as u32;
        s.timeout = Duration::from_secs(60 + i as u64);
        s.idempotency_key = Some(format!("key-{ty}"));
        s.resources.gpus = (i % 3) as u32;
        s.resources.gpu_memory_mb = if i % 3 > 0 { 40_000 } else { 0 };
        s.resources.labels.insert("zone".into(), format!("z{i}"));
        let now = at(i as u64);
        let submitted = store.submit(s.clone(), now).expect("submit");
        assert!(submitted.created);
        assert_eq!(submitted.state, JobState::Queued);

        let job = get(&store, submitted.id);
        assert_eq!(job.id, submitted.id);
        assert_eq!(job.spec, s, "{ty}: the stored spec is the submitted one");
        assert_eq!(job.spec.job_type(), ty);
        assert_eq!(job.state, JobState::Queued);
        assert_eq!(job.submitted_at, now);
        assert_eq!(job.updated_at, now);
        assert!(job.attempts.is_empty());
        assert_eq!(job.events.len(), 1);
        assert_eq!(job.events[0].at, now);
        assert_eq!(job.events[0].from, None);
        assert_eq!(job.events[0].to, JobState::Queued);
        assert_eq!(
            (job.progress, job.not_before, &job.output, &job.error),
            (None, None, &None, &None)
        );
        ids.push(submitted.id);
    }
    let mut newest_first = ids.clone();
    newest_first.reverse();
    assert_eq!(all_ids(&store), newest_first);
    assert!(matches!(
        store.get(JobId(9_999)),
        Err(StoreError::NotFound(JobId(9_999)))
    ));
}

/// Each accepted job gets a larger id than every job before it, refused submissions included.
pub fn job_ids_grow<H: Harness>(h: &mut H) {
    let store = h.open(config());
    let mut last: Option<JobId> = None;
    for n in 0..20 {
        if n % 5 == 4 {
            let mut bad = generate(n);
            bad.max_attempts = 0;
            assert!(store.submit(bad, at(n)).is_err());
        }
        let id = submit(&store, generate(n), at(n));
        assert!(JobId(0) < id);
        if let Some(prev) = last {
            assert!(id > prev, "{id} after {prev}");
        }
        last = Some(id);
    }
    let batch = store
        .submit_batch(vec![generate(100), generate(101)], at(30))
        .expect("batch");
    assert!(batch[0].id > last.unwrap_or(JobId(0)));
    assert!(batch[1].id > batch[0].id);
}

/// An invalid spec is refused with the field named, and nothing is stored (its idempotency
/// key included).
pub fn invalid_spec_is_refused_and_nothing_stored<H: Harness>(h: &mut H) {
    let store = h.open(config());
    let now = at(0);
    let key = |mut s: JobSpec| {
        s.idempotency_key = Some("only-once".into());
        s
    };
    let cases: Vec<(JobSpec, &str)> = vec![
        (
            {
                let mut s = generate(0);
                if let crate::JobParams::Generate(p) = &mut s.params {
                    p.num_samples = 0;
                }
                key(s)
            },
            "params.num_samples",
        ),
        (
            {
                let mut s = spec(JobType::Distill);
                if let crate::JobParams::Distill(p) = &mut s.params {
                    p.student_model = p.teacher_model.clone();
                }
                key(s)
            },
            "params.student_model",
        ),
        (
            {
                let mut s = spec(JobType::Audit);
                if let crate::JobParams::Audit(p) = &mut s.params {
                    p.dataset_uri = "ftp://host/data.csv".into();
                }
                key(s)
            },
            "params.dataset_uri",
        ),
        (
            key(super::fixtures::with_priority(generate(0), 5000)),
            "priority",
        ),
        (
            {
                let mut s = key(generate(0));
                s.max_attempts = 0;
                s
            },
            "max_attempts",
        ),
        (
            {
                let mut s = key(generate(0));
                s.timeout = Duration::from_millis(10);
                s
            },
            "timeout",
        ),
        (
            {
                let mut s = generate(0);
                s.idempotency_key = Some("has space".into());
                s
            },
            "idempotency_key",
        ),
        (
            {
                let mut s = key(generate(0));
                s.resources.gpu_memory_mb = 1024;
                s
            },
            "resources.gpu_memory_mb",
        ),
        (
            {
                let mut s = key(generate(0));
                s.resources.labels.insert("bad key".into(), "x".into());
                s
            },
            "resources.labels",
        ),
        (
            key(depending(generate(0), &[JobId(1), JobId(1)])),
            "depends_on",
        ),
    ];
    for (s, field) in cases {
        let err = store.submit(s, now).expect_err(field);
        assert_invalid_field(&err, field);
        assert!(
            err.to_string().contains(field),
            "the message names {field}: {err}"
        );
        assert_eq!(
            all_ids(&store),
            vec![],
            "nothing stored after a refused {field}"
        );
    }
    // The refused submissions did not claim the key.
    let s = store.submit(key(generate(0)), now).expect("valid spec");
    assert!(s.created);
    assert_eq!(all_ids(&store), vec![s.id]);
}

/// The same key with the same spec returns the first job, `created: false`, in its current
/// state; nothing new is stored.
pub fn idempotent_resubmit_returns_the_same_job<H: Harness>(h: &mut H) {
    let store = h.open(config());
    let mut s = spec(JobType::Train);
    s.idempotency_key = Some("train-resnet-v1".into());
    let first = store.submit(s.clone(), at(0)).expect("submit");
    assert!(first.created);
    assert_eq!(first.state, JobState::Queued);

    let again = store.submit(s.clone(), at(1)).expect("resubmit");
    assert_eq!(again.id, first.id);
    assert!(!again.created);
    assert_eq!(again.state, JobState::Queued);
    assert_eq!(all_ids(&store), vec![first.id]);
    assert_eq!(
        get(&store, first.id).submitted_at,
        at(0),
        "the job is the first one"
    );

    // It reports the job's state now.
    let w = register_cpu_worker(&store, "w1", at(2));
    lease(&store, &w, first.id, at(2));
    let later = store.submit(s.clone(), at(3)).expect("resubmit");
    assert_eq!(
        (later.id, later.created, later.state),
        (first.id, false, JobState::Assigned)
    );

    // The same spec without the key, or under another key, is a new job.
    let mut other = s.clone();
    other.idempotency_key = Some("train-resnet-v2".into());
    let second = store.submit(other, at(4)).expect("other key");
    assert!(second.created);
    assert!(second.id > first.id);
    s.idempotency_key = None;
    assert!(store.submit(s, at(5)).expect("no key").created);
    assert_eq!(all_ids(&store).len(), 3);
}

/// The same key with a different spec is an `IdempotencyConflict` naming the first job.
pub fn idempotency_key_with_other_spec_conflicts<H: Harness>(h: &mut H) {
    let store = h.open(config());
    let mut s = generate(1);
    s.idempotency_key = Some("gen-bio".into());
    let first = submit(&store, s.clone(), at(0));

    let mut different = generate(2);
    different.idempotency_key = Some("gen-bio".into());
    let err = store.submit(different, at(1)).expect_err("conflict");
    assert!(
        matches!(&err, StoreError::IdempotencyConflict { key, existing } if key == "gen-bio" && *existing == first),
        "{err:?}"
    );
    let mut priority = s.clone();
    priority.priority = 10;
    assert!(matches!(
        store.submit(priority, at(1)),
        Err(StoreError::IdempotencyConflict { existing, .. }) if existing == first
    ));
    assert_eq!(all_ids(&store), vec![first]);
    assert_eq!(get(&store, first).spec, s, "the first spec is untouched");
}

/// A batch stores every job, in order, with growing ids.
pub fn submit_batch_stores_all<H: Harness>(h: &mut H) {
    let store = h.open(config());
    let mut keyed = spec(JobType::Evaluate);
    keyed.idempotency_key = Some("eval-1".into());
    let existing = submit(&store, keyed.clone(), at(0));

    let specs = vec![
        spec(JobType::Generate),
        spec(JobType::Audit),
        keyed,
        spec(JobType::Deploy),
    ];
    let out = store.submit_batch(specs.clone(), at(1)).expect("batch");
    assert_eq!(out.len(), 4);
    assert!(out[0].created && out[1].created && out[3].created);
    assert_eq!(
        (out[2].id, out[2].created),
        (existing, false),
        "keyed spec was already there"
    );
    assert!(existing < out[0].id && out[0].id < out[1].id && out[1].id < out[3].id);
    for (s, spec) in out.iter().zip(&specs) {
        assert_eq!(s.state, JobState::Queued);
        assert_eq!(&get(&store, s.id).spec, spec);
    }
    assert_eq!(
        all_ids(&store),
        vec![out[3].id, out[1].id, out[0].id, existing]
    );
    assert_eq!(
        store.submit_batch(vec![], at(2)).expect("empty batch"),
        vec![]
    );
}

/// One bad spec anywhere in a batch refuses the whole batch with its index; none is stored.
pub fn submit_batch_with_one_bad_spec_stores_none<H: Harness>(h: &mut H) {
    let store = h.open(config());
    let mut bad = generate(1);
    bad.max_attempts = 0;
    let err = store
        .submit_batch(vec![generate(0), bad, generate(2)], at(0))
        .expect_err("bad batch");
    match &err {
        StoreError::Batch { index: 1, source } => assert_invalid_field(source, "max_attempts"),
        other => panic!("expected Batch {{ index: 1 }}, got {other:?}"),
    }
    assert_eq!(all_ids(&store), vec![]);

    // An unknown dependency and an idempotency conflict are refused the same way.
    let err = store
        .submit_batch(
            vec![generate(0), depending(generate(1), &[JobId(77)])],
            at(0),
        )
        .expect_err("unknown dependency");
    match &err {
        StoreError::Batch { index: 1, source } => assert_invalid_field(source, "depends_on"),
        other => panic!("expected Batch {{ index: 1 }}, got {other:?}"),
    }
    let mut keyed = generate(5);
    keyed.idempotency_key = Some("k".into());
    let first = submit(&store, keyed, at(1));
    let mut conflicting = generate(6);
    conflicting.idempotency_key = Some("k".into());
    let err = store
        .submit_batch(vec![generate(7), generate(8), conflicting], at(2))
        .expect_err("conflict");
    assert!(
        matches!(&err, StoreError::Batch { index: 2, source } if matches!(**source, StoreError::IdempotencyConflict { existing, .. } if existing == first)),
        "{err:?}"
    );
    assert_eq!(
        all_ids(&store),
        vec![first],
        "no job of a refused batch is stored"
    );
}

/// Two specs of one batch with the same idempotency key are refused.
pub fn submit_batch_refuses_duplicate_keys<H: Harness>(h: &mut H) {
    let store = h.open(config());
    let mut a = generate(1);
    a.idempotency_key = Some("dup".into());
    let b = generate(2);
    let c = a.clone();
    let err = store
        .submit_batch(vec![a.clone(), b, c], at(0))
        .expect_err("duplicate key");
    match &err {
        StoreError::Batch { index: 2, source } => assert_invalid_field(source, "idempotency_key"),
        other => panic!("expected Batch {{ index: 2 }}, got {other:?}"),
    }
    assert_eq!(all_ids(&store), vec![]);
    // Alone, the spec is fine.
    assert_eq!(store.submit_batch(vec![a], at(1)).expect("batch").len(), 1);
}

/// A dependency that does not exist is refused as `depends_on`.
pub fn unknown_dependency_is_refused<H: Harness>(h: &mut H) {
    let store = h.open(config());
    let a = submit(&store, generate(0), at(0));
    let err = store
        .submit(depending(generate(1), &[a, JobId(a.0 + 100)]), at(1))
        .expect_err("unknown dependency");
    assert_invalid_field(&err, "depends_on");
    assert!(
        err.to_string().contains(&JobId(a.0 + 100).to_string()),
        "{err}"
    );
    assert_eq!(all_ids(&store), vec![a]);
}

/// A job waits until every dependency succeeded, then is queued and can be leased.
pub fn waiting_job_is_queued_when_dependencies_succeed<H: Harness>(h: &mut H) {
    let store = h.open(config());
    let a = submit(&store, generate(0), at(0));
    let b = submit(&store, generate(1), at(0));
    let c = store
        .submit(depending(spec(JobType::Train), &[a, b]), at(1))
        .expect("submit");
    assert_eq!(c.state, JobState::Waiting);
    let c = c.id;
    assert_eq!(state(&store, c), JobState::Waiting);
    assert_eq!(
        store.pending_reason(c, at(1)).expect("reason"),
        Some(PendingReason::WaitingOn(vec![a, b]))
    );

    let w = register_cpu_worker(&store, "w1", at(1));
    let la = lease(&store, &w, a, at(2));
    let lb = lease(&store, &w, b, at(2));
    assert!(
        super::fixtures::try_lease(&store, &w, at(2)).is_none(),
        "waiting jobs are not leased"
    );
    store.start(a, la.epoch, at(3)).expect("start");
    assert_eq!(
        store
            .complete(a, la.epoch, output(), at(4))
            .expect("complete"),
        JobState::Succeeded
    );
    assert_eq!(
        state(&store, c),
        JobState::Waiting,
        "b has not succeeded yet"
    );
    assert_eq!(
        store.pending_reason(c, at(4)).expect("reason"),
        Some(PendingReason::WaitingOn(vec![b]))
    );

    assert_eq!(
        store
            .complete(b, lb.epoch, output(), at(5))
            .expect("complete"),
        JobState::Succeeded
    );
    let job = get(&store, c);
    assert_eq!(job.state, JobState::Queued);
    assert_eq!(
        event_states(&job),
        vec![JobState::Waiting, JobState::Queued]
    );
    assert_eq!(job.events[1].at, at(5));
    assert_events_consistent(&job);
    lease(&store, &w, c, at(6));
}

/// A dependency that fails or is cancelled cancels its dependents, and theirs, with a reason
/// naming the dependency; unrelated jobs are untouched.
pub fn dependency_failure_cancels_dependents_transitively<H: Harness>(h: &mut H) {
    let store = h.open(config());
    let w = register_cpu_worker(&store, "w1", at(0));
    let a = submit(&store, generate(0), at(0));
    let la = lease(&store, &w, a, at(0));
    let b = submit(&store, depending(generate(1), &[a]), at(1));
    let c = submit(&store, depending(generate(2), &[b]), at(1));
    let d = submit(&store, depending(generate(3), &[c, b]), at(1));
    let other = submit(&store, generate(4), at(1));
    let waits_on_other = submit(&store, depending(generate(5), &[other]), at(1));

    let after = store
        .fail(a, la.epoch, error(FailureClass::InvalidInput), at(2))
        .expect("fail");
    assert_eq!(after, JobState::Failed);
    for (job, dep) in [(b, a), (c, b), (d, c)] {
        let j = get(&store, job);
        assert_eq!(j.state, JobState::Cancelled, "{job} is cancelled");
        assert_eq!(
            event_states(&j),
            vec![JobState::Waiting, JobState::Cancelled]
        );
        let err = j.error.expect("a cancelled job says why");
        assert_eq!(err.class, FailureClass::Cancelled);
        // d waits on both c and b; either names a dependency that did not succeed.
        let named = err.message.contains(&dep.to_string())
            || (job == d && err.message.contains(&b.to_string()));
        assert!(
            named,
            "{job}: reason {:?} names its dependency",
            err.message
        );
        assert!(j.attempts.is_empty());
        assert_eq!(j.updated_at, at(2));
    }
    assert_eq!(state(&store, other), JobState::Queued);
    assert_eq!(state(&store, waits_on_other), JobState::Waiting);

    // A cancelled dependency does the same.
    let e = submit(&store, depending(generate(6), &[other]), at(3));
    let f = submit(&store, depending(generate(7), &[e]), at(3));
    assert_eq!(
        store
            .cancel(other, "not needed".into(), at(4))
            .expect("cancel"),
        JobState::Cancelled
    );
    for (job, dep) in [(waits_on_other, other), (e, other), (f, e)] {
        let j = get(&store, job);
        assert_eq!(j.state, JobState::Cancelled);
        let msg = j.error.expect("reason").message;
        assert!(msg.contains(&dep.to_string()), "{job}: {msg:?} names {dep}");
        assert!(
            j.events
                .last()
                .is_some_and(|ev| ev.message.contains(&dep.to_string())),
            "the event names {dep}"
        );
    }
}

/// Submitting with a dependency that already failed or was cancelled gives a cancelled job at
/// once; with one that succeeded, a queued job.
pub fn submit_with_finished_dependency<H: Harness>(h: &mut H) {
    let store = h.open(config());
    let w = register_cpu_worker(&store, "w1", at(0));
    let ok = submit(&store, generate(0), at(0));
    let l = lease(&store, &w, ok, at(0));
    store
        .complete(ok, l.epoch, output(), at(1))
        .expect("complete");
    let failed = submit(&store, generate(1), at(1));
    let l = lease(&store, &w, failed, at(1));
    store
        .fail(failed, l.epoch, error(FailureClass::InvalidInput), at(2))
        .expect("fail");
    let cancelled = submit(&store, generate(2), at(2));
    store.cancel(cancelled, "no".into(), at(2)).expect("cancel");

    for dep in [failed, cancelled] {
        let s = store
            .submit(depending(generate(10 + dep.0), &[ok, dep]), at(3))
            .expect("submit");
        assert!(s.created);
        assert_eq!(s.state, JobState::Cancelled);
        let j = get(&store, s.id);
        assert_eq!(j.state, JobState::Cancelled);
        assert_events_consistent(&j);
        let msg = j.error.expect("reason").message;
        assert!(msg.contains(&dep.to_string()), "{msg:?} names {dep}");
        assert_eq!(store.pending_reason(s.id, at(3)).expect("reason"), None);
    }
    let s = store
        .submit(depending(generate(20), &[ok]), at(3))
        .expect("submit");
    assert_eq!(s.state, JobState::Queued);
    lease(&store, &w, s.id, at(4));
}
