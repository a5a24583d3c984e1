//! The property test: random histories of operations against a simple model.
//!
//! A history is a random sequence of store operations (submissions, worker registry changes,
//! leases one at a time and in batches, reports under the live or a stale epoch, cancels,
//! time passing, `expire` and restarts). The model keeps what the test has been told (acknowledged jobs and their specs,
//! idempotency keys, every epoch granted, the workers, log lines) and predicts each answer
//! from the jobs as they were just before the operation. After every operation the whole
//! store is read back and checked against the model and the invariants of `Job::apply`.
//!
//! Operations are generated as plain numbers and resolved against the model when they run
//! ("the third leased job", "an earlier epoch of that job"), so every operation means
//! something in every history and proptest can shrink a failing history by dropping steps.

use std::cell::{Cell, RefCell};
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;
use std::panic::{self, AssertUnwindSafe, catch_unwind, resume_unwind};
use std::sync::Once;
use std::time::Duration;

use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestError, TestRng, TestRunner};

use super::Harness;
use super::fixtures::{T0, assert_events_consistent, list_all, params, worker};
use crate::{
    AttemptOutcome, Epoch, FailureClass, Job, JobError, JobId, JobOutput, JobSpec, JobState,
    JobType, LeaseRequest, ListQuery, LogAck, LogQuery, PendingReason, RetryPolicy, Store,
    StoreConfig, StoreError, Timestamp, TransitionError, WorkerId, WorkerInfo, cap_marker,
};

const WORKERS: [&str; 3] = ["w0", "w1", "w2"];
const KEYS: [&str; 3] = ["key-0", "key-1", "key-2"];
const LEASE_TTL: Duration = Duration::from_secs(10);
const TIMEOUTS: [Duration; 3] = [
    Duration::from_secs(5),
    Duration::from_secs(45),
    Duration::from_secs(86_400),
];
const LOG_CAP: u64 = 4;
const RETRY_MAX: Duration = Duration::from_secs(4);
/// Few, so that histories reach the limit.
const MAX_RECOVERIES: u32 = 2;
/// Epochs from here on are never granted in a history of at most 60 operations.
const NEVER_GRANTED: u64 = 1 << 40;
const CLASSES: [FailureClass; 6] = [
    FailureClass::StageError,
    FailureClass::WorkerLost,
    FailureClass::Platform,
    FailureClass::InvalidInput,
    FailureClass::Timeout,
    FailureClass::Cancelled,
];

fn history_config() -> StoreConfig {
    StoreConfig {
        lease_ttl: LEASE_TTL,
        // The model's leases last `LEASE_TTL` whether acknowledged or not; the short
        // assignment lease has its own tests.
        assign_ttl: LEASE_TTL,
        worker_liveness: None,
        worker_ttl: Duration::from_secs(60),
        retry: RetryPolicy {
            base: Duration::from_secs(1),
            max: RETRY_MAX,
            jitter: 0.5,
            max_recoveries: MAX_RECOVERIES,
        },
        max_log_lines_per_job: LOG_CAP,
        max_log_line_bytes: 1024,
    }
}

/// A job to submit, as random numbers.
#[derive(Clone, Debug)]
struct NewJob {
    ty: u8,
    variant: u8,
    priority: i8,
    gpus: u8,
    big_gpu: bool,
    label: bool,
    max_attempts: u8,
    timeout: u8,
    /// Picks among the jobs submitted before.
    deps: Vec<u8>,
    key: Option<u8>,
    /// With a key already used: submit that key's spec again (else a new spec).
    reuse: bool,
}

/// Which epoch a report quotes.
#[derive(Clone, Copy, Debug)]
enum EpochChoice {
    /// The job's live lease (its last lease when none is live).
    Live,
    /// An earlier lease of the same job.
    Earlier(u8),
    /// A lease of another job.
    OtherJob(u8),
    /// One never granted.
    Never(u8),
}

/// The job a report is about, and the epoch it quotes.
#[derive(Clone, Copy, Debug)]
struct Target {
    /// Picks a leased job mostly, sometimes any job.
    job: u8,
    epoch: EpochChoice,
}

/// How far time moves.
#[derive(Clone, Copy, Debug)]
enum Step {
    Millis(u16),
    PastLeaseTtl,
    PastShortTimeout,
    /// To the next moment something is due (a backoff ends, a lease runs out, an attempt
    /// times out), plus -1, 0 or +1 ms: histories hit every boundary exactly.
    NextDue(i8),
}

#[derive(Clone, Debug)]
enum Op {
    Submit(NewJob),
    SubmitBatch(Vec<NewJob>),
    SubmitInvalid(u8),
    Register {
        worker: u8,
        gpus: u8,
        big: bool,
        label: bool,
        types: u8,
    },
    WorkerHeartbeat(u8),
    Drain(u8),
    RemoveWorker(u8),
    Lease {
        /// Picks a registered worker mostly, else any name of the pool.
        worker: u8,
        /// How many of the worker's GPUs are free.
        free: u8,
    },
    /// Several requests in one write, each `(worker, free)` as for `Lease`.
    LeaseMany(Vec<(u8, u8)>),
    Start(Target),
    Heartbeat(Target, u8),
    Complete(Target),
    Fail(Target, u8),
    Logs {
        target: Target,
        from: u8,
        count: u8,
    },
    Cancel(u8),
    Advance(Step),
    Expire,
    Restart,
}

fn new_job() -> impl Strategy<Value = NewJob> {
    (
        (0..6u8, 0..3u8, prop::sample::select(vec![-1i8, 0, 0, 1, 3])),
        (
            prop::sample::select(vec![0u8, 0, 0, 1, 2]),
            any::<bool>(),
            prop::bool::weighted(0.2),
        ),
        (1..4u8, 0..3u8),
        prop_oneof![
            3 => Just(Vec::new()),
            1 => prop::collection::vec(any::<u8>(), 1..3),
        ],
        prop::option::weighted(0.4, 0..3u8),
        any::<bool>(),
    )
        .prop_map(
            |(
                (ty, variant, priority),
                (gpus, big_gpu, label),
                (max_attempts, timeout),
                deps,
                key,
                reuse,
            )| {
                NewJob {
                    ty,
                    variant,
                    priority,
                    gpus,
                    big_gpu,
                    label,
                    max_attempts,
                    timeout,
                    deps,
                    key,
                    reuse,
                }
            },
        )
}

fn target() -> impl Strategy<Value = Target> {
    let epoch = prop_oneof![
        6 => Just(EpochChoice::Live),
        2 => any::<u8>().prop_map(EpochChoice::Earlier),
        1 => any::<u8>().prop_map(EpochChoice::OtherJob),
        1 => any::<u8>().prop_map(EpochChoice::Never),
    ];
    (any::<u8>(), epoch).prop_map(|(job, epoch)| Target { job, epoch })
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => new_job().prop_map(Op::Submit),
        1 => prop::collection::vec(new_job(), 1..4).prop_map(Op::SubmitBatch),
        1 => (0..3u8).prop_map(Op::SubmitInvalid),
        3 => (0..3u8, 0..4u8, any::<bool>(), any::<bool>(), any::<u8>()).prop_map(
            |(worker, gpus, big, label, types)| Op::Register { worker, gpus, big, label, types }
        ),
        1 => (0..3u8).prop_map(Op::WorkerHeartbeat),
        1 => (0..3u8).prop_map(Op::Drain),
        1 => (0..3u8).prop_map(Op::RemoveWorker),
        8 => (any::<u8>(), any::<u8>()).prop_map(|(worker, free)| Op::Lease { worker, free }),
        3 => prop::collection::vec((any::<u8>(), any::<u8>()), 0..5).prop_map(Op::LeaseMany),
        4 => target().prop_map(Op::Start),
        3 => (target(), 0..3u8).prop_map(|(t, p)| Op::Heartbeat(t, p)),
        3 => target().prop_map(Op::Complete),
        3 => (target(), 0..6u8).prop_map(|(t, c)| Op::Fail(t, c)),
        4 => (target(), 0..4u8, 0..5u8).prop_map(|(target, from, count)| Op::Logs { target, from, count }),
        2 => any::<u8>().prop_map(Op::Cancel),
        3 => prop_oneof![
            3 => (0..3000u16).prop_map(Step::Millis),
            2 => Just(Step::PastLeaseTtl),
            1 => Just(Step::PastShortTimeout),
            3 => (-1..=1i8).prop_map(Step::NextDue),
        ]
        .prop_map(Op::Advance),
        3 => Just(Op::Expire),
        1 => Just(Op::Restart),
    ]
}

/// Runs `cases` random histories of 1 to 59 operations against stores from `h`, checking the
/// model and the invariants after every operation.
///
/// The random generator has a fixed seed, so a run is repeatable; a failure is shrunk to a
/// short history, which the panic message prints with the step that failed.
pub fn random_histories<H: Harness>(h: &mut H, cases: u32) {
    let config = Config {
        cases,
        // Nothing is written next to the caller's sources; the seed is fixed anyway.
        failure_persistence: None,
        // Bounds the time a failure takes to shrink against a slow (durable) store.
        max_shrink_iters: 1024,
        ..Config::default()
    };
    let mut runner =
        TestRunner::new_with_rng(config, TestRng::deterministic_rng(RngAlgorithm::ChaCha));
    let h = RefCell::new(h);
    // Shrinking a failure runs many failing histories; only the last one is worth printing.
    quiet_panics(true);
    let result = runner.run(&prop::collection::vec(op(), 1..60), |ops| {
        let mut h = h.borrow_mut();
        run_history(&mut **h, &ops);
        Ok(())
    });
    quiet_panics(false);
    match result {
        Ok(()) => {}
        Err(TestError::Fail(why, ops)) => panic!(
            "random history failed: {why}\nminimal failing history ({} operations): {ops:#?}",
            ops.len()
        ),
        Err(TestError::Abort(why)) => panic!("random histories aborted: {why}"),
    }
}

fn run_history<H: Harness>(h: &mut H, ops: &[Op]) {
    let cfg = history_config();
    let mut store = h.open(cfg.clone());
    let mut model = Model::new(cfg);
    for (i, op) in ops.iter().enumerate() {
        let step = catch_unwind(AssertUnwindSafe(|| {
            let store = model.apply(h, store, op);
            model.check(&store, i);
            store
        }));
        store = match step {
            Ok(store) => store,
            Err(payload) => {
                let why = LAST_PANIC.take().unwrap_or_else(|| {
                    payload
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| payload.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                        .unwrap_or_else(|| "<panic>".to_owned())
                });
                // `resume_unwind` does not run the panic hook: the failure is reported once,
                // by `random_histories`, with the step that failed.
                resume_unwind(Box::new(format!(
                    "step {i} ({op:?}) at {}: {why}",
                    model.now
                )));
            }
        };
    }
}

thread_local! {
    /// Whether panics on this thread are recorded in `LAST_PANIC` instead of printed.
    static QUIET: Cell<bool> = const { Cell::new(false) };
    /// The last panic (location and message) recorded while quiet.
    static LAST_PANIC: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Makes panics on this thread quiet (recorded, not printed) or loud again. The process's
/// panic hook is wrapped once; other threads, and this one when loud, keep the previous hook.
fn quiet_panics(quiet: bool) {
    static WRAP: Once = Once::new();
    WRAP.call_once(|| {
        let previous = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            if QUIET.with(Cell::get) {
                LAST_PANIC.with(|last| *last.borrow_mut() = Some(info.to_string()));
            } else {
                previous(info);
            }
        }));
    });
    QUIET.with(|q| q.set(quiet));
    LAST_PANIC.take();
}

/// One attempt's log as the model expects it.
#[derive(Clone, Debug, Default)]
struct ModelLog {
    lines: BTreeMap<u64, (Timestamp, String)>,
    next: u64,
    dropped: u64,
}

/// A registered worker as the model sees it.
#[derive(Clone, Debug)]
struct ModelWorker {
    info: WorkerInfo,
    draining: bool,
    last_seen: Timestamp,
}

/// What the test knows independently of the store.
struct Model {
    cfg: StoreConfig,
    now: Timestamp,
    /// Acknowledged jobs, oldest first.
    ids: Vec<JobId>,
    specs: BTreeMap<JobId, JobSpec>,
    keys: BTreeMap<String, JobId>,
    /// Every epoch granted, per job, in order.
    leases: BTreeMap<JobId, Vec<Epoch>>,
    max_epoch: Epoch,
    /// Registered workers.
    workers: BTreeMap<WorkerId, ModelWorker>,
    /// Snapshots of finished jobs.
    finished: BTreeMap<JobId, Job>,
    logs: BTreeMap<(JobId, u32), ModelLog>,
    /// Lines stored per job (markers not counted).
    stored: BTreeMap<JobId, u64>,
    /// The jobs as read back after the previous operation.
    jobs: BTreeMap<JobId, Job>,
    /// The jobs an operation may have changed, as far as the model knows (`None`: any);
    /// every other job that existed before it must read back exactly as before.
    may_touch: Option<BTreeSet<JobId>>,
}

/// What a submission should do.
#[derive(Debug, PartialEq)]
enum Expect {
    New(JobState),
    Existing(JobId),
    Conflict(JobId),
}

fn wid(n: u8) -> WorkerId {
    super::fixtures::wid(WORKERS[n as usize % WORKERS.len()])
}

fn fits(spec: &JobSpec, info: &WorkerInfo, free: &[u64]) -> bool {
    // What the queue holds: a deploy job's region is a label too.
    let r = &crate::scheduling::QueueEntry::new(spec, None).resources;
    info.job_types.contains(&spec.job_type())
        && r.labels.iter().all(|(k, v)| info.labels.get(k) == Some(v))
        && free.iter().filter(|&&mb| mb >= r.gpu_memory_mb).count() >= r.gpus as usize
}

fn output() -> JobOutput {
    let mut out = JobOutput::default();
    out.metrics.insert("loss".into(), 0.5);
    out
}

#[track_caller]
fn expect_stale<T: Debug>(result: Result<T, StoreError>, job: &Job, what: &str) {
    match result {
        Err(e) if e.is_stale() => {}
        other => panic!(
            "{what} of {} under a stale epoch: expected is_stale(), got {other:?}",
            job.id
        ),
    }
}

impl Model {
    fn new(cfg: StoreConfig) -> Self {
        Self {
            cfg,
            now: T0,
            ids: Vec::new(),
            specs: BTreeMap::new(),
            keys: BTreeMap::new(),
            leases: BTreeMap::new(),
            max_epoch: Epoch(0),
            workers: BTreeMap::new(),
            finished: BTreeMap::new(),
            logs: BTreeMap::new(),
            stored: BTreeMap::new(),
            jobs: BTreeMap::new(),
            may_touch: None,
        }
    }

    /// The earliest time after now at which a backoff ends, a lease runs out or an attempt
    /// times out.
    fn next_due(&self) -> Option<Timestamp> {
        self.jobs
            .values()
            .flat_map(|j| {
                let live = j.live_attempt();
                [
                    j.not_before,
                    live.map(|a| a.lease_expires_at),
                    live.map(|a| a.deadline),
                ]
            })
            .flatten()
            .filter(|&t| t > self.now)
            .min()
    }

    fn job(&self, id: JobId) -> &Job {
        &self.jobs[&id]
    }

    /// A leased job mostly (when there is one), else any job.
    fn pick(&self, n: u8) -> Option<JobId> {
        if self.ids.is_empty() {
            return None;
        }
        let leased: Vec<JobId> = self
            .jobs
            .values()
            .filter(|j| j.state.is_leased())
            .map(|j| j.id)
            .collect();
        if n % 4 != 3 && !leased.is_empty() {
            Some(leased[(n / 4) as usize % leased.len()])
        } else {
            Some(self.ids[n as usize % self.ids.len()])
        }
    }

    fn epoch_for(&self, job: &Job, choice: EpochChoice) -> Epoch {
        let live = job.live_attempt().map(|a| a.epoch);
        let granted = self.leases.get(&job.id).cloned().unwrap_or_default();
        let never = |i: u8| Epoch(NEVER_GRANTED + u64::from(i));
        let nth = |v: &[Epoch], i: u8| v.get(i as usize % v.len().max(1)).copied();
        match choice {
            EpochChoice::Live => live.or(granted.last().copied()).unwrap_or(never(0)),
            EpochChoice::Earlier(i) => {
                let earlier: Vec<Epoch> =
                    granted.into_iter().filter(|&e| Some(e) != live).collect();
                nth(&earlier, i).unwrap_or(never(i))
            }
            EpochChoice::OtherJob(i) => {
                let others: Vec<Epoch> = self
                    .leases
                    .iter()
                    .filter(|(id, _)| **id != job.id)
                    .flat_map(|(_, v)| v.iter().copied())
                    .collect();
                nth(&others, i).unwrap_or(never(i))
            }
            EpochChoice::Never(i) => never(i),
        }
    }

    fn build(&self, nj: &NewJob) -> JobSpec {
        let key = nj.key.map(|k| KEYS[k as usize % KEYS.len()].to_owned());
        if let Some(existing) = key.as_ref().and_then(|k| self.keys.get(k))
            && nj.reuse
        {
            return self.specs[existing].clone();
        }
        let ty = JobType::ALL[nj.ty as usize % JobType::ALL.len()];
        let mut spec = JobSpec::new(params(ty, u64::from(nj.variant)));
        spec.priority = i32::from(nj.priority);
        spec.resources.gpus = u32::from(nj.gpus);
        if nj.gpus > 0 && nj.big_gpu {
            spec.resources.gpu_memory_mb = 40_000;
        }
        if nj.label {
            spec.resources.labels.insert("zone".into(), "a".into());
        }
        spec.max_attempts = u32::from(nj.max_attempts);
        spec.timeout = TIMEOUTS[nj.timeout as usize % TIMEOUTS.len()];
        if !self.ids.is_empty() {
            for d in &nj.deps {
                let dep = self.ids[*d as usize % self.ids.len()];
                if !spec.depends_on.contains(&dep) {
                    spec.depends_on.push(dep);
                }
            }
        }
        spec.idempotency_key = key;
        spec
    }

    /// What submitting `spec` now should do, ignoring batch-internal duplicates.
    fn expect_submit(&self, spec: &JobSpec) -> Expect {
        if let Some(&existing) = spec.idempotency_key.as_ref().and_then(|k| self.keys.get(k)) {
            return if &self.specs[&existing] == spec {
                Expect::Existing(existing)
            } else {
                Expect::Conflict(existing)
            };
        }
        let deps: Vec<JobState> = spec.depends_on.iter().map(|d| self.job(*d).state).collect();
        if deps
            .iter()
            .any(|s| matches!(s, JobState::Failed | JobState::Cancelled))
        {
            Expect::New(JobState::Cancelled)
        } else if deps.iter().all(|s| *s == JobState::Succeeded) {
            Expect::New(JobState::Queued)
        } else {
            Expect::New(JobState::Waiting)
        }
    }

    fn accept_new(&mut self, id: JobId, spec: JobSpec, state: JobState) {
        if let Some(&last) = self.ids.last() {
            assert!(id > last, "new job {id} after {last}");
        }
        assert!(id > JobId(0));
        assert!(
            matches!(
                state,
                JobState::Waiting | JobState::Queued | JobState::Cancelled
            ),
            "{state}"
        );
        if let Some(key) = &spec.idempotency_key {
            self.keys.insert(key.clone(), id);
        }
        self.ids.push(id);
        self.specs.insert(id, spec);
    }

    fn check_new_job(&self, store: &impl Store, id: JobId, state: JobState) {
        let job = store.get(id).expect("get a new job");
        assert_eq!(job.state, state);
        assert_eq!(job.submitted_at, self.now);
        assert!(job.attempts.is_empty());
        let want = if state == JobState::Cancelled {
            vec![JobState::Waiting, JobState::Cancelled]
        } else {
            vec![state]
        };
        assert_eq!(job.events.iter().map(|e| e.to).collect::<Vec<_>>(), want);
    }

    fn apply<H: Harness>(&mut self, h: &mut H, store: H::Store, op: &Op) -> H::Store {
        self.may_touch = None;
        let now = self.now;
        match op {
            Op::Submit(nj) => {
                let spec = self.build(nj);
                let expect = self.expect_submit(&spec);
                let result = store.submit(spec.clone(), now);
                match (expect, result) {
                    (Expect::New(state), Ok(s)) => {
                        assert!(s.created);
                        assert_eq!(s.state, state);
                        self.check_new_job(&store, s.id, state);
                        self.accept_new(s.id, spec, state);
                        // A new job changes none of those it depends on.
                        self.touch_nothing();
                    }
                    (Expect::Existing(id), Ok(s)) => {
                        assert_eq!((s.id, s.created, s.state), (id, false, self.job(id).state));
                        self.touch_nothing();
                    }
                    (
                        Expect::Conflict(id),
                        Err(StoreError::IdempotencyConflict { key, existing }),
                    ) => {
                        assert_eq!(Some(&key), spec.idempotency_key.as_ref());
                        assert_eq!(existing, id);
                        self.touch_nothing();
                    }
                    (expect, result) => panic!("submit: expected {expect:?}, got {result:?}"),
                }
            }
            Op::SubmitBatch(njs) => self.submit_batch(&store, njs),
            Op::SubmitInvalid(kind) => {
                let mut spec = JobSpec::new(params(JobType::Generate, 0));
                let field = match kind % 3 {
                    0 => {
                        if let crate::JobParams::Generate(p) = &mut spec.params {
                            p.num_samples = 0;
                        }
                        "params.num_samples"
                    }
                    1 => {
                        let unknown = JobId(self.ids.last().map_or(0, |id| id.0) + 1000);
                        spec.depends_on.push(unknown);
                        "depends_on"
                    }
                    _ => {
                        spec.max_attempts = 0;
                        "max_attempts"
                    }
                };
                let err = store.submit(spec, now).expect_err("an invalid spec");
                assert!(
                    matches!(&err, StoreError::InvalidSpec(e) if e.field == field),
                    "expected InvalidSpec({field}), got {err:?}"
                );
                self.touch_nothing();
            }
            Op::Register {
                worker: w,
                gpus,
                big,
                label,
                types,
            } => {
                let memory = if *big { 80_000 } else { 16_000 };
                let gpus = vec![memory; *gpus as usize];
                let labels: &[(&str, &str)] = if *label { &[("zone", "a")] } else { &[] };
                let types: Vec<JobType> = if *types >= 128 {
                    JobType::ALL.to_vec()
                } else {
                    JobType::ALL
                        .into_iter()
                        .enumerate()
                        .filter(|(i, _)| types & (1 << i) != 0)
                        .map(|(_, t)| t)
                        .collect()
                };
                let info = worker(wid(*w).as_str(), &gpus, labels, &types);
                let rec = store
                    .register_worker(info.clone(), now)
                    .expect("register_worker");
                assert_eq!(rec.info, info);
                assert_eq!(rec.status, crate::WorkerStatus::Active);
                assert_eq!((rec.registered_at, rec.last_seen), (now, now));
                self.workers.insert(
                    info.id.clone(),
                    ModelWorker {
                        info,
                        draining: false,
                        last_seen: now,
                    },
                );
                self.touch_nothing();
            }
            Op::WorkerHeartbeat(w) | Op::Drain(w) => {
                let id = wid(*w);
                let drain = matches!(op, Op::Drain(_));
                let result = if drain {
                    store.drain_worker(&id, now)
                } else {
                    store.worker_heartbeat(&id, now)
                };
                match self.workers.get_mut(&id) {
                    None => assert!(
                        matches!(&result, Err(StoreError::UnknownWorker(x)) if *x == id),
                        "{result:?}"
                    ),
                    Some(w) => {
                        w.draining |= drain;
                        w.last_seen = w.last_seen.max(now);
                        let rec = result.expect("known worker");
                        assert_eq!(rec.info, w.info);
                        assert_eq!(rec.status == crate::WorkerStatus::Draining, w.draining);
                        assert_eq!(rec.last_seen, w.last_seen);
                    }
                }
                self.touch_nothing();
            }
            Op::RemoveWorker(w) => {
                let id = wid(*w);
                let result = store.remove_worker(&id);
                match self.workers.remove(&id) {
                    None => assert!(
                        matches!(&result, Err(StoreError::UnknownWorker(x)) if *x == id),
                        "{result:?}"
                    ),
                    Some(_) => result.expect("remove a known worker"),
                }
                self.touch_nothing();
            }
            Op::Lease { worker, free } => {
                let request = self.lease_request(*worker, *free);
                let queued = self.queued(&store);
                let result = store.lease_next(request.clone(), self.now);
                let leased = self.check_lease(&store, &request, &queued, result);
                self.may_touch = Some(leased.into_iter().collect());
            }
            Op::LeaseMany(asks) => {
                let requests: Vec<LeaseRequest> = asks
                    .iter()
                    .map(|&(worker, free)| self.lease_request(worker, free))
                    .collect();
                let mut queued = self.queued(&store);
                let answers = store
                    .lease_many(requests.clone(), self.now)
                    .expect("lease_many");
                assert_eq!(answers.len(), requests.len(), "one answer per request");
                // As if each request were a `lease_next` of its own, in turn: a job leased
                // for one request is no longer queued for the next.
                let mut leased = BTreeSet::new();
                for (request, answer) in requests.iter().zip(answers) {
                    if let Some(id) = self.check_lease(&store, request, &queued, answer) {
                        queued.retain(|j| j.id != id);
                        leased.insert(id);
                    }
                }
                self.may_touch = Some(leased);
            }
            Op::Start(t) => self.report(&store, *t, Report::Start),
            Op::Heartbeat(t, p) => self.report(&store, *t, Report::Heartbeat(*p)),
            Op::Complete(t) => self.report(&store, *t, Report::Complete),
            Op::Fail(t, c) => self.report(&store, *t, Report::Fail(CLASSES[*c as usize % 6])),
            Op::Logs {
                target,
                from,
                count,
            } => self.logs(&store, *target, *from, *count),
            Op::Cancel(n) => self.cancel(&store, *n),
            Op::Advance(step) => {
                let ms = match step {
                    Step::Millis(ms) => u64::from(*ms),
                    Step::PastLeaseTtl => LEASE_TTL.as_millis() as u64 + 1,
                    Step::PastShortTimeout => TIMEOUTS[0].as_millis() as u64 + 1,
                    Step::NextDue(offset) => self.next_due().map_or(0, |t| {
                        t.0.saturating_add_signed(i64::from(*offset))
                            .saturating_sub(self.now.0)
                    }),
                };
                self.now = Timestamp(self.now.0 + ms);
                self.touch_nothing();
            }
            Op::Expire => self.expire(&store),
            Op::Restart => {
                let workers = store.list_workers().expect("list_workers");
                let store = h.restart(store, self.cfg.clone());
                assert_eq!(store.list_workers().expect("list_workers"), workers);
                for (&(id, attempt), log) in &self.logs {
                    self.check_log(&store, id, attempt, log);
                }
                self.touch_nothing();
                return store;
            }
        }
        store
    }

    fn submit_batch(&mut self, store: &impl Store, njs: &[NewJob]) {
        let specs: Vec<JobSpec> = njs.iter().map(|nj| self.build(nj)).collect();
        let mut seen = Vec::new();
        let mut refused = None;
        let mut expects = Vec::new();
        for (index, spec) in specs.iter().enumerate() {
            if let Some(key) = &spec.idempotency_key {
                if seen.contains(key) {
                    refused = Some((index, "idempotency_key"));
                    break;
                }
                seen.push(key.clone());
            }
            let expect = self.expect_submit(spec);
            if matches!(expect, Expect::Conflict(_)) {
                refused = Some((index, "conflict"));
                break;
            }
            expects.push(expect);
        }
        let result = store.submit_batch(specs.clone(), self.now);
        if let Some((index, why)) = refused {
            let err = result.expect_err("a batch with a bad spec");
            let ok = match (&err, why) {
                (StoreError::Batch { index: i, source }, "conflict") => {
                    *i == index && matches!(**source, StoreError::IdempotencyConflict { .. })
                }
                (StoreError::Batch { index: i, source }, field) => {
                    *i == index
                        && matches!(&**source, StoreError::InvalidSpec(e) if e.field == field)
                }
                _ => false,
            };
            assert!(
                ok,
                "expected Batch {{ index: {index} }} ({why}), got {err:?}"
            );
            self.touch_nothing();
            return;
        }
        let out = result.expect("a valid batch");
        assert_eq!(out.len(), specs.len());
        for ((s, spec), expect) in out.iter().zip(specs).zip(expects) {
            match expect {
                Expect::New(state) => {
                    assert!(s.created);
                    assert_eq!(s.state, state);
                    self.check_new_job(store, s.id, state);
                    self.accept_new(s.id, spec, state);
                }
                Expect::Existing(id) => {
                    assert_eq!((s.id, s.created, s.state), (id, false, self.job(id).state));
                }
                Expect::Conflict(_) => unreachable!("refused above"),
            }
        }
    }

    /// A request for work: mostly from a registered worker, sometimes from any name (maybe
    /// unknown), offering some of its GPUs.
    fn lease_request(&self, w: u8, free: u8) -> LeaseRequest {
        let registered: Vec<&WorkerId> = self.workers.keys().collect();
        let worker = if w % 4 != 3 && !registered.is_empty() {
            registered[(w / 4) as usize % registered.len()].clone()
        } else {
            wid(w)
        };
        let free_gpus: Vec<u64> = match self.workers.get(&worker) {
            Some(known) => {
                let n = free as usize % (known.info.gpus.len() + 1);
                known.info.gpus[..n].iter().map(|g| g.memory_mb).collect()
            }
            None => vec![],
        };
        LeaseRequest { worker, free_gpus }
    }

    /// The queue as a reader sees it.
    fn queued(&self, store: &impl Store) -> Vec<Job> {
        list_all(
            store,
            ListQuery {
                state: Some(JobState::Queued),
                limit: 1000,
                ..ListQuery::default()
            },
        )
    }

    /// Checks the answer to `request` given the jobs `queued` just before it; returns the job
    /// leased, if any.
    fn check_lease(
        &mut self,
        store: &impl Store,
        request: &LeaseRequest,
        queued: &[Job],
        result: Result<Option<crate::Lease>, StoreError>,
    ) -> Option<JobId> {
        let (worker, free_gpus) = (&request.worker, &request.free_gpus);
        let info = match self.workers.get(worker) {
            None => {
                assert!(
                    matches!(&result, Err(StoreError::UnknownWorker(w)) if w == worker),
                    "{result:?}"
                );
                return None;
            }
            Some(w) if w.draining => {
                assert!(
                    matches!(&result, Err(StoreError::WorkerDraining(w)) if w == worker),
                    "{result:?}"
                );
                return None;
            }
            Some(w) => w.info.clone(),
        };
        let now = self.now;
        let expected = queued
            .iter()
            .filter(|j| j.not_before.is_none_or(|t| t <= now))
            .filter(|j| fits(&j.spec, &info, free_gpus))
            .min_by_key(|j| (Reverse(j.spec.priority), j.id))
            .map(|j| j.id);
        let lease = result.expect("lease_next");
        let Some(lease) = lease else {
            assert_eq!(
                expected, None,
                "a ready job fits {worker} but none was leased"
            );
            return None;
        };
        // Being given a job is no sign of life: `last_seen` stays as the worker left it.
        let id = lease.job.id;
        assert_eq!(
            Some(id),
            expected,
            "leased {id}, but the best fit is {expected:?}"
        );
        let before = self.job(id);
        assert!(
            lease.epoch > self.max_epoch,
            "{} after {}",
            lease.epoch,
            self.max_epoch
        );
        assert_eq!(lease.attempt as usize, before.attempts.len() + 1);
        let job = store.get(id).expect("get");
        assert_eq!(lease.job, job);
        assert_eq!(job.state, JobState::Assigned);
        assert_eq!(job.not_before, None);
        let live = job.live_attempt().expect("a live attempt");
        assert_eq!(
            (&live.worker, live.epoch, live.leased_at),
            (worker, lease.epoch, now)
        );
        assert_eq!(live.lease_expires_at, now.saturating_add(LEASE_TTL));
        assert_eq!(live.deadline, now.saturating_add(job.spec.timeout));
        assert_eq!(
            (lease.lease_expires_at, lease.deadline),
            (live.lease_expires_at, live.deadline)
        );
        self.max_epoch = lease.epoch;
        self.leases.entry(id).or_default().push(lease.epoch);
        Some(id)
    }

    fn report(&mut self, store: &impl Store, t: Target, report: Report) {
        let Some(id) = self.pick(t.job) else {
            self.touch_nothing();
            return;
        };
        // The job, and the jobs waiting on it (its end starts or fails them).
        self.may_touch = Some(self.with_dependents(id));
        let before = self.job(id).clone();
        let epoch = self.epoch_for(&before, t.epoch);
        let live = before.live_attempt().cloned();
        let now = self.now;
        if live.as_ref().map(|a| a.epoch) != Some(epoch) {
            match report {
                Report::Start => expect_stale(store.start(id, epoch, now), &before, "start"),
                Report::Heartbeat(p) => expect_stale(
                    store.heartbeat(id, epoch, progress(p), now),
                    &before,
                    "heartbeat",
                ),
                Report::Complete => {
                    expect_stale(
                        store.complete(id, epoch, output(), now),
                        &before,
                        "complete",
                    );
                }
                Report::Fail(class) => expect_stale(
                    store.fail(id, epoch, JobError::new(class, "stale"), now),
                    &before,
                    "fail",
                ),
            }
            self.touch_nothing();
            return;
        }
        let live = live.expect("the live attempt");
        let illegal = |r: Result<(), StoreError>| {
            assert!(
                matches!(&r, Err(StoreError::Transition(TransitionError::Illegal { state, .. })) if *state == before.state),
                "{r:?}"
            );
        };
        match report {
            Report::Start => {
                let r = store.start(id, epoch, now);
                if before.state == JobState::Assigned {
                    r.expect("start");
                    let job = store.get(id).expect("get");
                    assert_eq!(job.state, JobState::Running);
                    assert_eq!(job.live_attempt().and_then(|a| a.started_at), Some(now));
                } else {
                    illegal(r);
                    self.touch_nothing();
                }
            }
            Report::Heartbeat(p) => {
                let progress = progress(p);
                let r = store.heartbeat(id, epoch, progress, now);
                if progress.is_some_and(|p| !(0.0..=1.0).contains(&p)) {
                    assert!(
                        matches!(
                            &r,
                            Err(StoreError::Transition(TransitionError::InvalidProgress(_)))
                        ),
                        "{r:?}"
                    );
                    self.touch_nothing();
                    return;
                }
                let status = r.expect("heartbeat");
                let expires = live.lease_expires_at.max(now.saturating_add(LEASE_TTL));
                assert_eq!(status.lease_expires_at, expires);
                assert_eq!(
                    status.cancel_requested,
                    before.state == JobState::Cancelling
                );
                let job = store.get(id).expect("get");
                assert_eq!(job.state, before.state);
                assert_eq!(job.events, before.events);
                assert_eq!(job.progress, progress.or(before.progress));
                assert_eq!(
                    job.live_attempt().map(|a| a.lease_expires_at),
                    Some(expires)
                );
            }
            Report::Complete => {
                let r = store.complete(id, epoch, output(), now);
                let job = store.get(id).expect("get");
                if before.state == JobState::Cancelling {
                    assert_eq!(r.expect("complete"), JobState::Cancelled);
                } else {
                    assert_eq!(r.expect("complete"), JobState::Succeeded);
                    assert_eq!(job.output, Some(output()));
                }
                assert_eq!(
                    job.attempts.last().and_then(|a| a.outcome.clone()),
                    Some(AttemptOutcome::Succeeded)
                );
            }
            Report::Fail(class) => {
                let error = JobError::new(class, "reported");
                let r = store.fail(id, epoch, error.clone(), now);
                self.check_failed(store, &before, &error, r.expect("fail"));
            }
        }
    }

    /// The job after its live attempt ended with `error`, which it reported as `state`.
    fn check_failed(&self, store: &impl Store, before: &Job, error: &JobError, state: JobState) {
        // The job's own failures spend its attempts; the platform's, its recoveries.
        let retry = if error.class.is_platform() {
            before.recoveries() < MAX_RECOVERIES
        } else {
            error.class.is_retryable() && before.own_failures() + 1 < before.spec.max_attempts
        };
        let want = match before.state {
            JobState::Cancelling => JobState::Cancelled,
            _ if retry => JobState::Queued,
            _ => JobState::Failed,
        };
        assert_eq!(state, want, "{} after a {} failure", before.id, error.class);
        let job = store.get(before.id).expect("get");
        assert_eq!(job.state, want);
        let last = job.attempts.last().expect("an attempt");
        assert_eq!(last.ended_at, Some(self.now));
        assert_eq!(last.outcome, Some(AttemptOutcome::Failed(error.clone())));
        match want {
            // A lost worker's job is retried at once; any other failure waits out a backoff.
            JobState::Queued if error.class == FailureClass::WorkerLost => {
                assert_eq!(job.not_before, None);
            }
            JobState::Queued => {
                let until = job.not_before.expect("a backoff");
                assert!(
                    until > self.now && until <= self.now.saturating_add(RETRY_MAX),
                    "{until}"
                );
            }
            JobState::Failed => assert_eq!(job.error.as_ref(), Some(error)),
            _ => {}
        }
    }

    fn logs(&mut self, store: &impl Store, t: Target, from: u8, count: u8) {
        self.touch_nothing();
        let Some(id) = self.pick(t.job) else {
            return;
        };
        let before = self.job(id).clone();
        let epoch = self.epoch_for(&before, t.epoch);
        let live = before.live_attempt().filter(|a| a.epoch == epoch);
        let attempt = live.map_or(0, |a| a.number);
        let log = self.logs.get(&(id, attempt)).cloned().unwrap_or_default();
        let first = match from {
            0 => log.next,
            1 => log.next.saturating_sub(1),
            2 => log.next.saturating_sub(3),
            _ => log.next + 1,
        };
        let lines: Vec<String> = (first..first + u64::from(count))
            .map(|seq| format!("{id} attempt {attempt} line {seq}"))
            .collect();
        let result = store.append_logs(id, epoch, first, lines.clone(), self.now);
        if live.is_none() {
            expect_stale(result, &before, "append_logs");
            return;
        }
        if first > log.next {
            assert!(
                matches!(result, Err(StoreError::LogGap { job, attempt: a, expected, got })
                    if job == id && a == attempt && expected == log.next && got == first),
                "{result:?}"
            );
            return;
        }
        let ack = result.expect("append_logs");
        let stored = self.stored.entry(id).or_default();
        let log = self.logs.entry((id, attempt)).or_default();
        for (seq, text) in (first..).zip(lines) {
            if seq < log.next {
                continue;
            }
            if *stored < LOG_CAP {
                log.lines.insert(seq, (self.now, text));
                *stored += 1;
            } else {
                if log.dropped == 0 {
                    log.lines.insert(seq, (self.now, cap_marker(LOG_CAP)));
                }
                log.dropped += 1;
            }
            log.next = seq + 1;
        }
        let dropped = self
            .logs
            .iter()
            .filter(|((j, _), _)| *j == id)
            .map(|(_, l)| l.dropped)
            .sum();
        let next_seq = self.logs[&(id, attempt)].next;
        assert_eq!(ack, LogAck { next_seq, dropped });
        self.check_log(store, id, attempt, &self.logs[&(id, attempt)]);
    }

    fn check_log(&self, store: &impl Store, id: JobId, attempt: u32, log: &ModelLog) {
        let q = LogQuery {
            attempt: Some(attempt),
            from_seq: 0,
            limit: 10_000,
        };
        let page = store.read_logs(id, q).expect("read_logs");
        assert_eq!(page.attempt, attempt);
        let got: Vec<(u64, Timestamp, &str)> = page
            .lines
            .iter()
            .map(|l| (l.seq, l.at, l.text.as_str()))
            .collect();
        let want: Vec<(u64, Timestamp, &str)> = log
            .lines
            .iter()
            .map(|(s, (at, t))| (*s, *at, t.as_str()))
            .collect();
        assert_eq!(got, want, "{id} attempt {attempt}: lines");
        assert_eq!(
            (page.next_seq, page.dropped),
            (None, log.dropped),
            "{id} attempt {attempt}"
        );
    }

    fn cancel(&mut self, store: &impl Store, n: u8) {
        let Some(id) = self.pick(n) else {
            self.touch_nothing();
            return;
        };
        self.may_touch = Some(self.with_dependents(id));
        let before = self.job(id).clone();
        let reason = format!("cancel {n}");
        let result = store.cancel(id, reason.clone(), self.now);
        match before.state {
            JobState::Waiting | JobState::Queued => {
                assert_eq!(result.expect("cancel"), JobState::Cancelled);
                let job = store.get(id).expect("get");
                assert_eq!(
                    job.error,
                    Some(JobError::new(FailureClass::Cancelled, reason))
                );
            }
            JobState::Assigned | JobState::Running => {
                assert_eq!(result.expect("cancel"), JobState::Cancelling);
            }
            JobState::Cancelling => {
                assert_eq!(result.expect("cancel"), JobState::Cancelling);
                self.touch_nothing();
            }
            JobState::Succeeded | JobState::Failed | JobState::Cancelled => {
                assert!(
                    matches!(&result, Err(StoreError::Transition(TransitionError::Illegal { job, .. })) if *job == id),
                    "{result:?}"
                );
                self.touch_nothing();
            }
        }
    }

    fn expire(&mut self, store: &impl Store) {
        let now = self.now;
        let mut want: Vec<(JobId, FailureClass)> = self
            .jobs
            .values()
            .filter_map(|j| {
                let a = j.live_attempt()?;
                // Both passed: whichever came first decides.
                if a.deadline <= now && a.deadline <= a.lease_expires_at {
                    Some((j.id, FailureClass::Timeout))
                } else if a.lease_expires_at <= now {
                    Some((j.id, FailureClass::WorkerLost))
                } else if a.deadline <= now {
                    Some((j.id, FailureClass::Timeout))
                } else {
                    None
                }
            })
            .collect();
        want.sort_by_key(|(id, _)| *id);
        let mut got = store.expire(now).expect("expire");
        got.sort_by_key(|e| e.job);
        assert_eq!(
            got.iter().map(|e| e.job).collect::<Vec<_>>(),
            want.iter().map(|(id, _)| *id).collect::<Vec<_>>(),
            "expired jobs"
        );
        for (e, (id, class)) in got.iter().zip(want) {
            let before = self.job(id).clone();
            let job = store.get(id).expect("get");
            let error = match &job.attempts.last().and_then(|a| a.outcome.clone()) {
                Some(AttemptOutcome::Failed(err)) => err.clone(),
                other => panic!("{id}: attempt outcome {other:?} after expiry"),
            };
            assert_eq!(error.class, class, "{id}");
            assert_eq!(e.state, job.state);
            self.check_failed(store, &before, &error, e.state);
        }
        let mut touched = BTreeSet::new();
        for e in &got {
            touched.extend(self.with_dependents(e.job));
        }
        self.may_touch = Some(touched);
    }

    /// The operation changed no job.
    fn touch_nothing(&mut self) {
        self.may_touch = Some(BTreeSet::new());
    }

    /// `id` and every job that depends on it, directly or not.
    fn with_dependents(&self, id: JobId) -> BTreeSet<JobId> {
        let mut out = BTreeSet::from([id]);
        // Ids grow with submission and a job depends only on earlier ones: one pass in order.
        for (job, spec) in &self.specs {
            if spec.depends_on.iter().any(|d| out.contains(d)) {
                out.insert(*job);
            }
        }
        out
    }

    /// Reads the whole store back and checks it against the model and the job invariants.
    fn check(&mut self, store: &impl Store, step: usize) {
        let limit = step % 7 + 1;
        let listed = list_all(
            store,
            ListQuery {
                limit,
                ..ListQuery::default()
            },
        );
        let mut newest_first = self.ids.clone();
        newest_first.reverse();
        assert_eq!(
            listed.iter().map(|j| j.id).collect::<Vec<_>>(),
            newest_first,
            "list (pages of {limit}) shows exactly the acknowledged jobs"
        );
        let jobs: BTreeMap<JobId, Job> = listed.into_iter().map(|j| (j.id, j)).collect();
        for job in jobs.values() {
            self.check_job(store, job, &jobs);
        }
        if let Some(may_touch) = &self.may_touch {
            for (id, before) in &self.jobs {
                if !may_touch.contains(id) {
                    assert!(
                        jobs.get(id) == Some(before),
                        "the operation changed {id}, which it had no reason to touch"
                    );
                }
            }
        }

        // Filtered lists agree with the full one.
        let state = JobState::ALL[step % JobState::ALL.len()];
        let job_type = JobType::ALL[step % JobType::ALL.len()];
        for (state, job_type) in [
            (Some(state), None),
            (None, Some(job_type)),
            (Some(state), Some(job_type)),
        ] {
            let q = ListQuery {
                state,
                job_type,
                before: None,
                limit: step % 3 + 1,
                worker: None,
            };
            let got: Vec<JobId> = list_all(store, q).into_iter().map(|j| j.id).collect();
            let want: Vec<JobId> = jobs
                .values()
                .rev()
                .filter(|j| state.is_none_or(|s| j.state == s))
                .filter(|j| job_type.is_none_or(|t| j.spec.job_type() == t))
                .map(|j| j.id)
                .collect();
            assert_eq!(got, want, "list filtered by {state:?} and {job_type:?}");
        }

        let workers = store.list_workers().expect("list_workers");
        let got: Vec<(&WorkerInfo, bool, Timestamp)> = workers
            .iter()
            .map(|w| {
                (
                    &w.info,
                    w.status == crate::WorkerStatus::Draining,
                    w.last_seen,
                )
            })
            .collect();
        let want: Vec<(&WorkerInfo, bool, Timestamp)> = self
            .workers
            .values()
            .map(|w| (&w.info, w.draining, w.last_seen))
            .collect();
        assert_eq!(got, want, "workers");
        self.jobs = jobs;
    }

    fn check_job(&mut self, store: &impl Store, job: &Job, all: &BTreeMap<JobId, Job>) {
        let id = job.id;
        assert_eq!(&store.get(id).expect("get"), job, "get and list agree");
        assert_eq!(&job.spec, &self.specs[&id], "{id}: the spec as submitted");
        assert_events_consistent(job);

        if let Some(old) = self.jobs.get(&id) {
            assert!(
                job.events.starts_with(&old.events),
                "{id}: events are only appended"
            );
            if old.state != job.state {
                assert!(
                    job.events.len() > old.events.len(),
                    "{id}: a state change adds an event"
                );
            }
            let ended = old.attempts.len() - usize::from(old.live_attempt().is_some());
            assert!(job.attempts.len() >= old.attempts.len());
            assert_eq!(
                job.attempts[..ended],
                old.attempts[..ended],
                "{id}: ended attempts never change"
            );
            assert_eq!(job.submitted_at, old.submitted_at);
        }

        // Attempts and leases.
        let live: Vec<usize> = (0..job.attempts.len())
            .filter(|&i| job.attempts[i].is_live())
            .collect();
        assert!(live.len() <= 1, "{id}: at most one live attempt");
        assert!(
            live.iter().all(|&i| i + 1 == job.attempts.len()),
            "{id}: only the last attempt can be live"
        );
        assert_eq!(
            !live.is_empty(),
            job.state.is_leased(),
            "{id}: live attempt iff {} is leased",
            job.state
        );
        assert!(
            job.own_failures() <= job.spec.max_attempts,
            "{id}: own failures <= max_attempts"
        );
        assert!(
            job.recoveries() <= MAX_RECOVERIES + 1,
            "{id}: attempts lost to the platform <= max_recoveries + 1"
        );
        for (n, a) in job.attempts.iter().enumerate() {
            assert_eq!(a.number as usize, n + 1);
            assert_eq!(a.is_live(), a.outcome.is_none());
        }
        let epochs: Vec<Epoch> = job.attempts.iter().map(|a| a.epoch).collect();
        assert!(epochs.windows(2).all(|e| e[0] < e[1]), "{id}: epochs grow");
        assert_eq!(
            &epochs,
            self.leases.get(&id).unwrap_or(&Vec::new()),
            "{id}: one attempt per lease granted"
        );

        // Finished jobs.
        match self.finished.get(&id) {
            Some(snapshot) => assert_eq!(job, snapshot, "{id}: a finished job never changes"),
            None if job.state.is_terminal() => {
                self.finished.insert(id, job.clone());
            }
            None => {}
        }
        match job.state {
            JobState::Succeeded => assert!(job.output.is_some()),
            JobState::Failed => assert!(job.error.is_some()),
            JobState::Cancelled => {
                assert_eq!(
                    job.error.as_ref().map(|e| e.class),
                    Some(FailureClass::Cancelled)
                );
            }
            _ => {}
        }

        // Dependencies.
        let deps: Vec<&Job> = job.spec.depends_on.iter().map(|d| &all[d]).collect();
        if job.state == JobState::Waiting {
            assert!(
                deps.iter()
                    .all(|d| !matches!(d.state, JobState::Failed | JobState::Cancelled)),
                "{id} waits on a failed or cancelled job"
            );
            assert!(
                deps.iter().any(|d| d.state != JobState::Succeeded),
                "{id} waits though every dependency succeeded"
            );
        }
        if job.state == JobState::Queued || !job.attempts.is_empty() {
            assert!(
                deps.iter().all(|d| d.state == JobState::Succeeded),
                "{id} is {} before its dependencies succeeded",
                job.state
            );
        }

        // Pending reasons.
        let reason = store.pending_reason(id, self.now).expect("pending_reason");
        match job.state {
            JobState::Waiting => {
                let on: Vec<JobId> = deps
                    .iter()
                    .filter(|d| d.state != JobState::Succeeded)
                    .map(|d| d.id)
                    .collect();
                assert_eq!(reason, Some(PendingReason::WaitingOn(on)));
            }
            JobState::Queued => match job.not_before.filter(|&t| t > self.now) {
                Some(until) => assert_eq!(reason, Some(PendingReason::Backoff { until })),
                None => self.check_queued_reason(job, reason, all),
            },
            _ => assert_eq!(reason, None, "{id} is {}", job.state),
        }
    }
}

impl Model {
    /// A ready queued job: no live worker, a live worker holding no job that could run it
    /// with all its GPUs free (starting), one holding jobs (capacity), or none that could
    /// (the text naming what is missing).
    fn check_queued_reason(
        &self,
        job: &Job,
        reason: Option<PendingReason>,
        all: &BTreeMap<JobId, Job>,
    ) {
        let ttl = self.cfg.worker_ttl;
        let live: Vec<&ModelWorker> = self
            .workers
            .values()
            .filter(|w| !w.draining && w.last_seen.saturating_add(ttl) >= self.now)
            .collect();
        let id = job.id;
        if live.is_empty() {
            assert_eq!(reason, Some(PendingReason::NoWorkers), "{id}");
            return;
        }
        let busy: std::collections::BTreeSet<&WorkerId> = all
            .values()
            .filter_map(|j| j.live_attempt().map(|a| &a.worker))
            .collect();
        let fitting: Vec<&&ModelWorker> = live
            .iter()
            .filter(|w| {
                let all: Vec<u64> = w.info.gpus.iter().map(|g| g.memory_mb).collect();
                fits(&job.spec, &w.info, &all)
            })
            .collect();
        if fitting.iter().any(|w| !busy.contains(&w.info.id)) {
            assert_eq!(reason, Some(PendingReason::Starting), "{id}");
        } else if !fitting.is_empty() {
            assert_eq!(reason, Some(PendingReason::WaitingForCapacity), "{id}");
        } else {
            assert!(
                matches!(&reason, Some(PendingReason::NoWorkerFits(text)) if !text.is_empty()),
                "{id}: {reason:?}"
            );
        }
    }
}

#[derive(Clone, Copy, Debug)]
enum Report {
    Start,
    Heartbeat(u8),
    Complete,
    Fail(FailureClass),
}

fn progress(p: u8) -> Option<f64> {
    match p % 3 {
        0 => None,
        1 => Some(0.5),
        _ => Some(1.5),
    }
}
