//! Specs, workers, times and small steps the suite functions share.

use std::time::Duration;

use crate::{
    AuditParams, DeployParams, DistillParams, EvaluateParams, FailureClass, GenerateParams, Gpu,
    Job, JobError, JobId, JobOutput, JobParams, JobSpec, JobState, JobType, Lease, LeaseRequest,
    ListQuery, ParamValue, RetryPolicy, Store, StoreConfig, StoreError, Timestamp, TrainParams,
    WorkerId, WorkerInfo,
};

/// The suite's epoch: every test starts its clock here.
pub(crate) const T0: Timestamp = Timestamp(1_700_000_000_000);

/// `T0` plus `ms` milliseconds.
pub(crate) fn at_ms(ms: u64) -> Timestamp {
    Timestamp(T0.0 + ms)
}

/// `T0` plus `secs` seconds.
pub(crate) fn at(secs: u64) -> Timestamp {
    at_ms(secs * 1000)
}

/// The lease TTL of [`config`].
pub(crate) const LEASE_TTL: Duration = Duration::from_secs(30);

/// Settings with a predictable retry backoff: no jitter, 1 s, then 2 s, 4 s, capped at 8 s.
pub(crate) fn config() -> StoreConfig {
    StoreConfig {
        lease_ttl: LEASE_TTL,
        // As long as a lease: the short lease of an unacknowledged assignment has tests of
        // its own, with its own settings.
        assign_ttl: LEASE_TTL,
        worker_ttl: Duration::from_secs(60),
        retry: RetryPolicy {
            base: Duration::from_secs(1),
            max: Duration::from_secs(8),
            jitter: 0.0,
            ..RetryPolicy::default()
        },
        ..StoreConfig::default()
    }
}

/// A valid spec of `ty` with default settings.
pub(crate) fn spec(ty: JobType) -> JobSpec {
    JobSpec::new(params(ty, 0))
}

/// Valid parameters of `ty`; `n` varies them, so two different `n` give different specs.
pub(crate) fn params(ty: JobType, n: u64) -> JobParams {
    match ty {
        JobType::Generate => {
            let mut p = GenerateParams::new("biology", 100 + n);
            p.seed = Some(7);
            JobParams::Generate(p)
        }
        JobType::Audit => {
            let mut p = AuditParams::new(format!("s3://bucket/data-{n}.jsonl"));
            p.label_column = Some("label".into());
            p.expected_sha256 = Some("ab".repeat(32));
            JobParams::Audit(p)
        }
        JobType::Distill => {
            let mut p = DistillParams::new(
                "llama-70b",
                format!("llama-1b-{n}"),
                "file:///data/prompts.jsonl",
            );
            p.prompt_template = Some("Q: {question}".into());
            p.options
                .0
                .insert("lora_rank".into(), serde_json::json!({"r": 8}));
            JobParams::Distill(p)
        }
        JobType::Train => {
            let mut p = TrainParams::new(format!("resnet-{n}"), "data/train.parquet");
            p.epochs = 2;
            let hp = &mut p.hyperparameters;
            hp.insert("learning_rate".to_owned(), ParamValue::Float(3e-4));
            hp.insert("warmup".to_owned(), ParamValue::Bool(true));
            hp.insert("batch_size".to_owned(), ParamValue::Int(32));
            hp.insert("optimizer".to_owned(), ParamValue::Text("adamw".into()));
            JobParams::Train(p)
        }
        JobType::Evaluate => {
            let mut p = EvaluateParams::new(format!("resnet-{n}"), "gs://bucket/eval.parquet");
            p.metrics = vec!["accuracy".into(), "f1".into()];
            JobParams::Evaluate(p)
        }
        JobType::Deploy => {
            let mut p = DeployParams::new(format!("llama-1b-{n}"));
            p.replicas = 2;
            p.target = format!("endpoint-{n}");
            JobParams::Deploy(p)
        }
    }
}

/// A plain `generate` spec; `n` varies it.
pub(crate) fn generate(n: u64) -> JobSpec {
    JobSpec::new(params(JobType::Generate, n))
}

/// `spec` with `priority`.
pub(crate) fn with_priority(mut spec: JobSpec, priority: i32) -> JobSpec {
    spec.priority = priority;
    spec
}

/// `spec` depending on `deps`.
pub(crate) fn depending(mut spec: JobSpec, deps: &[JobId]) -> JobSpec {
    spec.depends_on = deps.to_vec();
    spec
}

/// A worker id (the names used here are valid).
pub(crate) fn wid(name: &str) -> WorkerId {
    match WorkerId::new(name) {
        Ok(id) => id,
        Err(e) => panic!("test worker id: {e}"),
    }
}

/// A worker with `gpus` (memory in MiB each), `labels`, running `types`.
pub(crate) fn worker(
    name: &str,
    gpus: &[u64],
    labels: &[(&str, &str)],
    types: &[JobType],
) -> WorkerInfo {
    WorkerInfo {
        id: wid(name),
        cpus: 16,
        memory_mb: 65_536,
        gpus: gpus
            .iter()
            .map(|&memory_mb| Gpu {
                model: "NVIDIA H100 80GB HBM3".into(),
                memory_mb,
            })
            .collect(),
        labels: labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        job_types: types.iter().copied().collect(),
    }
}

/// Registers a worker without GPUs or labels that runs every job type.
pub(crate) fn register_cpu_worker(store: &impl Store, name: &str, now: Timestamp) -> WorkerId {
    let info = worker(name, &[], &[], &JobType::ALL);
    store.register_worker(info, now).expect("register worker");
    wid(name)
}

/// Submits `spec`, which must be accepted as a new job.
pub(crate) fn submit(store: &impl Store, spec: JobSpec, now: Timestamp) -> JobId {
    let s = store.submit(spec, now).expect("submit");
    assert!(s.created, "a new spec creates a job");
    s.id
}

/// Asks for a job for `worker` with no free GPUs.
pub(crate) fn try_lease(store: &impl Store, worker: &WorkerId, now: Timestamp) -> Option<Lease> {
    store
        .lease_next(
            LeaseRequest {
                worker: worker.clone(),
                free_gpus: vec![],
            },
            now,
        )
        .expect("lease_next")
}

/// Leases the next job for `worker`, which must be `expected`.
pub(crate) fn lease(
    store: &impl Store,
    worker: &WorkerId,
    expected: JobId,
    now: Timestamp,
) -> Lease {
    let lease = try_lease(store, worker, now).expect("a job to lease");
    assert_eq!(lease.job.id, expected, "leased job");
    lease
}

/// An error of `class`.
pub(crate) fn error(class: FailureClass) -> JobError {
    JobError::new(class, format!("it went wrong ({class})"))
}

/// An output with a metric, an artifact and a JSON result.
pub(crate) fn output() -> JobOutput {
    let mut out = JobOutput::default();
    out.metrics.insert("accuracy".into(), 0.93);
    out.artifacts
        .insert("model".into(), "file:///var/artifacts/model.bin".into());
    out.result_json = Some(r#"{"ok":true}"#.into());
    out
}

/// The job, which must exist.
pub(crate) fn get(store: &impl Store, id: JobId) -> Job {
    store.get(id).expect("get")
}

/// The job's state.
pub(crate) fn state(store: &impl Store, id: JobId) -> JobState {
    get(store, id).state
}

/// Every job matching `query`'s filters, following `next_before` with pages of
/// `query.limit`, newest first. Panics when the jobs are not strictly newest first (a job
/// repeated across pages) or a page before the last is not full.
pub(crate) fn list_all(store: &impl Store, mut query: ListQuery) -> Vec<Job> {
    let mut all: Vec<Job> = Vec::new();
    loop {
        let page = store.list(query.clone()).expect("list");
        assert!(page.jobs.len() <= query.limit, "page longer than its limit");
        if page.next_before.is_some() {
            assert_eq!(
                page.jobs.len(),
                query.limit,
                "a page with a next page is full"
            );
        }
        for job in page.jobs {
            if let Some(prev) = all.last() {
                assert!(
                    job.id < prev.id,
                    "list is not newest first: {} after {}",
                    job.id,
                    prev.id
                );
            }
            all.push(job);
        }
        match page.next_before {
            Some(before) => {
                assert_eq!(
                    Some(before),
                    all.last().map(|j| j.id),
                    "next_before is the page's last job"
                );
                query.before = Some(before);
            }
            None => return all,
        }
    }
}

/// Ids of every job, newest first.
pub(crate) fn all_ids(store: &impl Store) -> Vec<JobId> {
    list_all(
        store,
        ListQuery {
            limit: 1000,
            ..ListQuery::default()
        },
    )
    .into_iter()
    .map(|j| j.id)
    .collect()
}

/// Asserts that `err` is `InvalidSpec` naming `field`.
#[track_caller]
pub(crate) fn assert_invalid_field(err: &StoreError, field: &str) {
    assert!(
        matches!(err, StoreError::InvalidSpec(e) if e.field == field),
        "expected InvalidSpec for {field}, got {err:?}"
    );
}

/// Asserts that the job's events chain (each `from` is the previous `to`, the first has no
/// `from`) and that the last names its state.
#[track_caller]
pub(crate) fn assert_events_consistent(job: &Job) {
    let first = job.events.first().expect("a job has its submission event");
    assert_eq!(first.from, None, "{}: first event has no from", job.id);
    for pair in job.events.windows(2) {
        assert_eq!(pair[1].from, Some(pair[0].to), "{}: events chain", job.id);
    }
    assert_eq!(
        job.events.last().map(|e| e.to),
        Some(job.state),
        "{}: the last event names the state",
        job.id
    );
}

/// The `to` of every event of the job.
pub(crate) fn event_states(job: &Job) -> Vec<JobState> {
    job.events.iter().map(|e| e.to).collect()
}
