//! The cluster benchmark: no-op jobs through the whole system, end to end.
//!
//! ```text
//! cargo bench -p nexa-benches --bench cluster
//! NEXA_BENCH_CLUSTER_JOBS=500 NEXA_BENCH_LATENCY_JOBS=50 NEXA_BENCH_FAILOVERS=1 \
//!     cargo bench -p nexa-benches --bench cluster
//! NEXA_BENCH_SECTIONS=3 cargo bench -p nexa-benches --bench cluster    # failover only
//! NEXA_POSTGRES_FSYNC=on NEXA_BENCH_SECTIONS=1,2 scripts/with-postgres \
//!     cargo bench -p nexa-benches --bench cluster                        # and PostgreSQL
//! ```
//!
//! Every job goes the whole way: a durable submit to a control plane started with
//! `ControlPlane::start` (the redb store, in a temporary folder), a durable lease handed to a
//! worker over QUIC on loopback, a durable start, the stage run on the worker, and a durable
//! completion. The workers are in-process `WorkerNode`s, each with its own QUIC connection
//! and one slot, running a stage defined here that returns at once (or, for the failover,
//! waits for its cancel). The stage notes the moment it is run, on this process's clock.
//!
//! It measures, with 1, 4 and 16 workers (`NEXA_BENCH_WORKERS`):
//!
//! 1. throughput: `NEXA_BENCH_CLUSTER_JOBS` jobs (5,000) submitted as fast as
//!    `NEXA_BENCH_SUBMITTERS` tasks (16) can, from the first submit to the last durable
//!    completion;
//! 2. latency when not saturated: `NEXA_BENCH_LATENCY_JOBS` jobs (500) submitted one at a
//!    time at `NEXA_BENCH_LATENCY_RATE` per second (100), from the submit call to the stage
//!    running;
//!
//! each also over the in-memory store (`ControlPlane::start_with_store`), the baseline that
//! shows what the same system costs without a disk, and, when `NEXA_BENCH_DATABASE_URL` (or
//! `scripts/with-postgres`'s `NEXA_TEST_DATABASE_URL`) names a PostgreSQL server, over the
//! PostgreSQL store (`--database-url`, a fresh schema per plane); then, with the default settings (lease
//! 2.5 s, heartbeat 0.5 s):
//!
//! 3. failover: a job blocked on worker A, A stopped abruptly (`WorkerNode::stop`), worker B
//!    idle and asking: the time from the stop until the job runs on B, `NEXA_BENCH_FAILOVERS`
//!    times (5) with A having one slot, and as many with A having two (one of them idle);
//! 4. what one durable store call costs on this disk on its own, in time and in CPU time of
//!    the store's committer thread;
//! 5. where the time goes: the throughput run with 16 workers and latency runs with 1 and 16
//!    workers repeated over a store wrapped in a meter (`ControlPlane::start_with_store`) that
//!    counts and times every store call and notes when each job's submit, lease and start
//!    calls returned, so that the way from the submit call to the stage running is cut into
//!    pieces;
//!
//! and ends with the targets and whether each was met. `NEXA_BENCH_SECTIONS` (1,2,3,4,5)
//! picks the sections to run. Every figure is measured in this run;
//! a missed target is printed as MISSED with its figure. The control plane, the workers and
//! the submitters share one tokio runtime (a worker thread per CPU) and the machine's CPUs, so
//! the CPU time the rest of the machine used meanwhile is printed beside the figures.

use std::any::Any;
use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::Path;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use nexa_actors::{
    BoxFuture, ControlPlane, ControlPlaneConfig, Stage, StageContext, StageError, StageRegistry,
    WorkerConfig, WorkerNode, now,
};
use nexa_benches::{
    BenchResult, Samples, env_count, fmt_count, fmt_duration, fmt_rate, fsync_latency,
    machine_cpu_time, process_cpu_time, sample_spec, thread_cpu_times, timed, worker_info,
};
use nexa_runtime::{
    Call, Engine, Job, JobId, JobOutput, JobState, JobType, Lease, LeaseRequest, ListQuery,
    MemStore, ReadTables, Store, StoreConfig, StoreError, Submitted, SubmittedAndLeased, Timestamp,
    WorkerId, WriteOp,
};
use nexa_storage::RedbStore;
use nexa_transport::Trust;

/// The join token of every control plane here.
const TOKEN: &str = "cluster-bench-token";
/// Worker counts measured, by default (`NEXA_BENCH_WORKERS`).
const WORKERS: &str = "1,4,16";
/// Jobs of each throughput run, by default (`NEXA_BENCH_CLUSTER_JOBS`).
const THROUGHPUT_JOBS: u64 = 5_000;
/// Submitting tasks of each throughput run, by default (`NEXA_BENCH_SUBMITTERS`).
const SUBMITTERS: u64 = 16;
/// Jobs timed in each latency run, by default (`NEXA_BENCH_LATENCY_JOBS`).
const LATENCY_JOBS: u64 = 500;
/// Submits per second in the latency runs, by default (`NEXA_BENCH_LATENCY_RATE`).
const LATENCY_RATE: u64 = 100;
/// The sections run, by default (`NEXA_BENCH_SECTIONS`).
const SECTIONS: &str = "1,2,3,4,5";
/// Failovers timed of each kind, by default (`NEXA_BENCH_FAILOVERS`).
const FAILOVERS: u64 = 5;
/// Jobs per worker run untimed first, so that every connection is up and warm.
const WARM_UP_PER_WORKER: usize = 4;
/// Each worker's slots.
const SLOTS: usize = 1;
/// A worker asks for its next job once its stage is gone, with the reports of at most two
/// finished jobs per slot still on their way; so the last three jobs each worker ran are the
/// only ones of its jobs whose completion may still be pending.
const PENDING_PER_WORKER: usize = 3 * SLOTS;
/// How often a waited-for moment is looked for.
const POLL: Duration = Duration::from_millis(1);
/// Store calls timed one after another in the cost section, of each kind.
const SERIAL_CALLS: usize = 200;
/// fsync samples of the disk.
const FSYNCS: usize = 50;
/// The metered runs use this many workers (the throughput target's).
const METERED_WORKERS: usize = TARGET_WORKERS;

/// The targets.
const TARGET_WORKERS: usize = 16;
const TARGET_JOBS_PER_SECOND: f64 = 2_000.0;
const TARGET_P50: Duration = Duration::from_millis(2);
const TARGET_P99: Duration = Duration::from_millis(20);
const TARGET_FAILOVER: Duration = Duration::from_secs(3);

/// The settings of a run, from the environment.
struct Config {
    workers: Vec<usize>,
    jobs: u64,
    submitters: u64,
    latency_jobs: u64,
    rate: u64,
    failovers: u64,
    sections: Vec<u32>,
    /// The PostgreSQL server to run the store on as well, when one is given.
    database: Option<String>,
}

impl Config {
    fn from_env() -> BenchResult<Self> {
        Ok(Self {
            workers: list_var("NEXA_BENCH_WORKERS", WORKERS, 1..=256)?,
            jobs: env_count("NEXA_BENCH_CLUSTER_JOBS", THROUGHPUT_JOBS, 10..=10_000_000)?,
            submitters: env_count("NEXA_BENCH_SUBMITTERS", SUBMITTERS, 1..=1_000)?,
            latency_jobs: env_count("NEXA_BENCH_LATENCY_JOBS", LATENCY_JOBS, 1..=1_000_000)?,
            rate: env_count("NEXA_BENCH_LATENCY_RATE", LATENCY_RATE, 1..=10_000)?,
            failovers: env_count("NEXA_BENCH_FAILOVERS", FAILOVERS, 0..=100)?,
            sections: list_var("NEXA_BENCH_SECTIONS", SECTIONS, 1..=5)?,
            database: std::env::var("NEXA_BENCH_DATABASE_URL")
                .or_else(|_| std::env::var("NEXA_TEST_DATABASE_URL"))
                .ok(),
        })
    }

    /// The stores the throughput and latency runs compare.
    fn backends(&self) -> Vec<Backend> {
        let mut backends = vec![Backend::Redb];
        if self.database.is_some() {
            backends.push(Backend::Postgres);
        }
        backends.push(Backend::Memory);
        backends
    }

    fn runs(&self, section: u32) -> bool {
        self.sections.contains(&section)
    }
}

/// A comma-separated list of whole numbers in `range` from the variable `name`.
fn list_var<T>(name: &str, default: &str, range: std::ops::RangeInclusive<T>) -> BenchResult<Vec<T>>
where
    T: std::str::FromStr + PartialOrd + std::fmt::Display,
{
    let value = match std::env::var(name) {
        Ok(v) => v,
        Err(std::env::VarError::NotPresent) => default.to_owned(),
        Err(e) => return Err(format!("{name}: {e}").into()),
    };
    value
        .split(',')
        .map(|w| w.trim().parse().ok().filter(|n| range.contains(n)))
        .collect::<Option<Vec<T>>>()
        .ok_or_else(|| {
            format!(
                "{name}={value:?}: expected whole numbers from {} to {}, separated by commas",
                range.start(),
                range.end()
            )
            .into()
        })
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // On stdout with the rest of the report, so a failure is seen where the figures are.
            println!("\nbenchmark failed: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> BenchResult<()> {
    let config = Config::from_env()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(bench(config))
}

async fn bench(config: Config) -> BenchResult<()> {
    let root = tempfile::tempdir()?;
    let started = Instant::now();
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!("Nexa Forge cluster benchmark: no-op jobs through control plane, QUIC and workers");
    println!(
        "  control plane: ControlPlane::start (redb store, durable commits) in {}",
        root.path().display()
    );
    println!(
        "  workers: in-process WorkerNodes over QUIC on loopback, one connection and {SLOTS} slot each; counts {:?} (NEXA_BENCH_WORKERS)",
        config.workers
    );
    println!(
        "  one tokio runtime for everything ({cpus} worker threads, one per CPU); {cpus} CPUs on the machine"
    );
    if let Some(url) = &config.database {
        println!(
            "  and over the PostgreSQL store (--database-url, a fresh schema each) on {}",
            url.split('@').next_back().unwrap_or(url)
        );
    }
    println!(
        "  baseline: the same runs over the in-memory store (ControlPlane::start_with_store(MemStore)), no disk"
    );
    println!(
        "  sections run: {:?} (NEXA_BENCH_SECTIONS)",
        config.sections
    );

    let mut found = Found::default();
    let root = root.path();
    if config.runs(1) {
        found.throughput = section_throughput(&config, root).await?;
    }
    if config.runs(2) {
        found.latency = section_latency(&config, root).await?;
    }
    if config.runs(3) {
        found.failovers = section_failover(&config, root).await?;
    }
    if config.runs(4) {
        found.lease_alone = Some(section_costs(root).await?);
    }
    if config.runs(5) {
        section_meter(&config, root).await?;
    }
    print_targets(&found);
    println!("\ntotal time {}", fmt_duration(started.elapsed()));
    Ok(())
}

/// What the targets are judged on.
#[derive(Default)]
struct Found {
    throughput: Vec<ThroughputRun>,
    latency: Vec<LatencyRun>,
    failovers: Vec<Failover>,
    /// One lease commit alone, the median.
    lease_alone: Option<Duration>,
}

async fn section_throughput(config: &Config, root: &Path) -> BenchResult<Vec<ThroughputRun>> {
    println!(
        "\n1. Throughput: {} no-op jobs (NEXA_BENCH_CLUSTER_JOBS) from {} submitting tasks (NEXA_BENCH_SUBMITTERS),",
        fmt_count(config.jobs),
        config.submitters
    );
    println!(
        "   first submit to last durable completion, after {WARM_UP_PER_WORKER} untimed jobs per worker"
    );
    print_throughput_header();
    let mut runs = Vec::new();
    for backend in config.backends() {
        for &workers in &config.workers {
            let run = bench_throughput(config, workers, backend, root).await?;
            print_throughput(&run);
            runs.push(run);
        }
    }
    print_lifecycles(&runs);
    Ok(runs)
}

async fn section_latency(config: &Config, root: &Path) -> BenchResult<Vec<LatencyRun>> {
    println!(
        "\n2. Latency when not saturated: {} jobs (NEXA_BENCH_LATENCY_JOBS) submitted one at a time at {}/s (NEXA_BENCH_LATENCY_RATE)",
        fmt_count(config.latency_jobs),
        config.rate
    );
    println!(
        "   bench clock (Instant): the submit call, its return → the stage run, the call → the stage run;"
    );
    println!(
        "   control plane clock (ms, so ±1 ms): the attempt's started_at − the job's submitted_at; p50 / p99"
    );
    print_latency_header();
    let mut runs = Vec::new();
    for backend in config.backends() {
        for &workers in &config.workers {
            let run = bench_latency(config, workers, backend, root).await?;
            print_latency(&run);
            runs.push(run);
        }
    }
    Ok(runs)
}

async fn section_failover(config: &Config, root: &Path) -> BenchResult<Vec<Failover>> {
    println!(
        "\n3. Failover, default settings: a job blocked on worker A; A stopped abruptly (WorkerNode::stop)"
    );
    println!(
        "   while worker B is idle and asking; from the stop until the job's stage runs on B ({} times each,",
        config.failovers
    );
    println!(
        "   NEXA_BENCH_FAILOVERS); a fresh control plane each time; A stopped at a different point of its"
    );
    println!("   heartbeat cycle each time");
    let defaults = ControlPlaneConfig::new("127.0.0.1:0".parse()?, root, TOKEN);
    println!(
        "   settings: lease {}, heartbeat every {}, a lost worker's job retried at once",
        fmt_duration(defaults.store.lease_ttl),
        fmt_duration(defaults.heartbeat),
    );
    let mut failovers = Vec::new();
    for slots in [1, 2] {
        failovers.push(bench_failover(config, slots, root).await?);
    }
    Ok(failovers)
}

async fn section_meter(config: &Config, root: &Path) -> BenchResult<()> {
    println!(
        "\n5. Where the time goes: the runs of 1 and 2 again over a store wrapped to count and time each call"
    );
    println!(
        "   and note, on the bench's clock, when each job's submit, lease and start calls returned"
    );
    println!(
        "   (ControlPlane::start_with_store(meter(RedbStore::open(..) or MemStore)), same settings)"
    );
    let metered = bench_throughput(config, METERED_WORKERS, Backend::MeteredRedb, root).await?;
    print_calls(
        &format!(
            "throughput, {} workers, redb: {} jobs in {}, {}",
            metered.workers,
            fmt_count(metered.jobs),
            fmt_duration(metered.elapsed),
            fmt_rate(metered.per_second())
        ),
        metered.jobs,
        metered.elapsed,
        metered.calls.as_deref().unwrap_or_default(),
    );
    let mut runs = Vec::new();
    for (workers, backend) in [
        (1, Backend::MeteredRedb),
        (METERED_WORKERS, Backend::MeteredRedb),
        (1, Backend::MeteredMemory),
        (METERED_WORKERS, Backend::MeteredMemory),
    ] {
        runs.push(bench_latency(config, workers, backend, root).await?);
    }
    for r in runs.iter().filter(|r| r.backend == Backend::MeteredRedb) {
        print_calls(
            &format!(
                "latency, {} worker(s), redb: {} jobs at {}",
                r.workers,
                fmt_count(r.jobs),
                fmt_rate(r.achieved_rate),
            ),
            r.jobs,
            r.elapsed,
            r.calls.as_deref().unwrap_or_default(),
        );
    }
    print_segments(&runs);
    print_slowest(&runs);
    Ok(())
}

// ---- the stages ----

/// When each job's stage was run, and on which worker.
#[derive(Default)]
struct Probe {
    runs: Mutex<ProbeRuns>,
}

#[derive(Default)]
struct ProbeRuns {
    /// The first run of each job: the worker's index and the moment.
    first: HashMap<JobId, (usize, Instant)>,
    /// Every later run of a job (run again after its lease was lost).
    again: Vec<(JobId, usize, Instant)>,
    /// The jobs each worker ran last, oldest first.
    last: BTreeMap<usize, VecDeque<JobId>>,
}

impl Probe {
    fn record(&self, job: JobId, worker: usize) {
        let at = Instant::now();
        let mut runs = self.lock();
        match runs.first.entry(job) {
            Entry::Occupied(_) => runs.again.push((job, worker, at)),
            Entry::Vacant(first) => {
                first.insert((worker, at));
            }
        }
        let last = runs.last.entry(worker).or_default();
        last.push_back(job);
        if last.len() > PENDING_PER_WORKER {
            last.pop_front();
        }
    }

    fn lock(&self) -> MutexGuard<'_, ProbeRuns> {
        self.runs.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Jobs run at least once.
    fn distinct(&self) -> usize {
        self.lock().first.len()
    }

    /// The jobs each worker ran last, whose completions may still be pending.
    fn last_per_worker(&self) -> Vec<JobId> {
        self.lock().last.values().flatten().copied().collect()
    }

    /// Forgets every run.
    fn clear(&self) {
        *self.lock() = ProbeRuns::default();
    }

    /// Where and when `job` was run last.
    fn last_run(&self, job: JobId) -> Option<(usize, Instant)> {
        let runs = self.lock();
        runs.again
            .iter()
            .rev()
            .find(|(j, _, _)| *j == job)
            .map(|&(_, w, at)| (w, at))
            .or_else(|| runs.first.get(&job).copied())
    }
}

/// Returns an empty output at once.
#[derive(Clone)]
struct NoopStage {
    worker: usize,
    probe: Arc<Probe>,
}

impl Stage for NoopStage {
    fn run(&self, ctx: StageContext) -> BoxFuture<Result<JobOutput, StageError>> {
        self.probe.record(ctx.job, self.worker);
        Box::pin(async { Ok(JobOutput::default()) })
    }
}

/// Runs until it is cancelled (or its worker stops).
#[derive(Clone)]
struct BlockingStage {
    worker: usize,
    probe: Arc<Probe>,
}

impl Stage for BlockingStage {
    fn run(&self, ctx: StageContext) -> BoxFuture<Result<JobOutput, StageError>> {
        self.probe.record(ctx.job, self.worker);
        let cancel = ctx.cancel.clone();
        Box::pin(async move {
            cancel.cancelled().await;
            Err(StageError::Cancelled)
        })
    }
}

// ---- a cluster ----

/// Which store the control plane runs over.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Backend {
    /// `ControlPlane::start`: the redb store in the data folder, durable commits.
    Redb,
    /// `ControlPlane::start` with a database URL: the PostgreSQL store, durable commits.
    Postgres,
    /// The same redb store opened here, [`Metered`].
    MeteredRedb,
    /// The in-memory store: the system without a disk.
    Memory,
    /// The in-memory store, [`Metered`].
    MeteredMemory,
}

impl Backend {
    fn name(self) -> &'static str {
        match self {
            Backend::Redb => "redb",
            Backend::Postgres => "postgres",
            Backend::MeteredRedb => "redb+meter",
            Backend::Memory => "memory",
            Backend::MeteredMemory => "mem+meter",
        }
    }
}

struct Plane {
    plane: Arc<ControlPlane>,
    meter: Option<Arc<Meter>>,
}

/// A control plane with the default settings.
async fn start_plane(dir: &Path, backend: Backend, bench: &Config) -> BenchResult<Plane> {
    let mut config = ControlPlaneConfig::new("127.0.0.1:0".parse()?, dir.join("plane"), TOKEN);
    let (plane, meter) = match backend {
        Backend::Redb => (ControlPlane::start(config).await?, None),
        Backend::Postgres => {
            let base = bench.database.clone().ok_or("no database was given")?;
            let url =
                tokio::task::spawn_blocking(move || nexa_benches::fresh_schema(&base)).await??;
            config.database_url = Some(url);
            (ControlPlane::start(config).await?, None)
        }
        Backend::MeteredRedb => {
            // As `ControlPlane::start` opens it.
            let path = config.data_dir.join("nexa_forge.db");
            let store_config = config.store.clone();
            let store =
                tokio::task::spawn_blocking(move || RedbStore::open(path, store_config)).await??;
            let meter = Arc::new(Meter::new());
            let engine = Metered {
                engine: store,
                meter: meter.clone(),
            };
            let plane = ControlPlane::start_with_store(config, Arc::new(engine)).await?;
            (plane, Some(meter))
        }
        Backend::Memory => {
            let store = Arc::new(MemStore::new(config.store.clone()));
            (ControlPlane::start_with_store(config, store).await?, None)
        }
        Backend::MeteredMemory => {
            let meter = Arc::new(Meter::new());
            let engine = Metered {
                engine: MemStore::new(config.store.clone()),
                meter: meter.clone(),
            };
            let plane = ControlPlane::start_with_store(config, Arc::new(engine)).await?;
            (plane, Some(meter))
        }
    };
    Ok(Plane {
        plane: Arc::new(plane),
        meter,
    })
}

/// A worker with `slots` slots running `stage` for every job type.
async fn start_worker(
    plane: &ControlPlane,
    dir: &Path,
    name: &str,
    slots: usize,
    stage: impl Stage + Clone,
) -> BenchResult<WorkerNode> {
    let mut stages = StageRegistry::new();
    for job_type in JobType::ALL {
        stages.register(job_type, stage.clone());
    }
    let mut config = WorkerConfig::new(
        plane.addr(),
        Trust::Fingerprint(plane.fingerprint()),
        TOKEN,
        WorkerId::new(name)?,
        stages,
        dir.join(name),
    );
    config.slots = slots;
    Ok(WorkerNode::start(config).await?)
}

/// `workers` workers running [`NoopStage`].
async fn start_noop_workers(
    plane: &ControlPlane,
    dir: &Path,
    workers: usize,
    probe: &Arc<Probe>,
) -> BenchResult<Vec<WorkerNode>> {
    let mut nodes = Vec::with_capacity(workers);
    for worker in 0..workers {
        let stage = NoopStage {
            worker,
            probe: probe.clone(),
        };
        let name = format!("bench-w{worker}");
        nodes.push(start_worker(plane, dir, &name, SLOTS, stage).await?);
    }
    Ok(nodes)
}

async fn stop_cluster(plane: Arc<ControlPlane>, workers: Vec<WorkerNode>) {
    for w in workers {
        w.stop().await;
    }
    if let Ok(plane) = Arc::try_unwrap(plane) {
        plane.shutdown().await;
    }
}

/// Waits until `n` distinct jobs have been run.
async fn wait_for_runs(probe: &Probe, n: usize, timeout: Duration) -> BenchResult<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let ran = probe.distinct();
        if ran >= n {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!(
                "only {} of {} jobs were run within {}",
                fmt_count(ran as u64),
                fmt_count(n as u64),
                fmt_duration(timeout)
            )
            .into());
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Waits until every job of `jobs` has succeeded.
async fn wait_for_success(
    plane: &ControlPlane,
    jobs: impl IntoIterator<Item = JobId>,
    timeout: Duration,
) -> BenchResult<()> {
    let deadline = Instant::now() + timeout;
    for id in jobs {
        loop {
            let job = plane.get(id).await?;
            match job.state {
                JobState::Succeeded => break,
                s if s.is_terminal() => {
                    return Err(format!("{id} ended {s}, not succeeded: {:?}", job.error).into());
                }
                _ if Instant::now() > deadline => {
                    return Err(format!("{id} is still {} after {timeout:?}", job.state).into());
                }
                _ => tokio::time::sleep(POLL).await,
            }
        }
    }
    Ok(())
}

/// Every job in `state`, newest first.
async fn all_jobs(plane: &ControlPlane, state: JobState) -> BenchResult<Vec<Job>> {
    let mut jobs = Vec::new();
    let mut before = None;
    loop {
        let page = plane
            .list(ListQuery {
                state: Some(state),
                before,
                limit: 1000,
                ..ListQuery::default()
            })
            .await?;
        jobs.extend(page.jobs);
        match page.next_before {
            Some(b) => before = Some(b),
            None => return Ok(jobs),
        }
    }
}

/// CPU time used: by this process, by the store's committer thread, by the whole machine.
#[derive(Clone, Copy, Default)]
struct Cpu {
    process: Duration,
    committer: Duration,
    machine: Duration,
}

impl Cpu {
    fn now() -> BenchResult<Self> {
        let committer = thread_cpu_times()?
            .into_iter()
            // The kernel keeps 15 bytes of a thread's name: "nexa-store-comm".
            .filter(|t| t.name.len() >= 10 && "nexa-store-commit".starts_with(t.name.as_str()))
            .map(|t| t.cpu)
            .sum();
        Ok(Self {
            process: process_cpu_time()?,
            committer,
            machine: machine_cpu_time()?,
        })
    }

    fn since(self, earlier: Cpu) -> Cpu {
        Cpu {
            process: self.process.saturating_sub(earlier.process),
            committer: self.committer.saturating_sub(earlier.committer),
            machine: self.machine.saturating_sub(earlier.machine),
        }
    }

    /// CPU time used by everything else on the machine.
    fn rest(&self) -> Duration {
        self.machine.saturating_sub(self.process)
    }
}

/// Cores' worth of CPU: `cpu` spread over `wall`.
fn cores(cpu: Duration, wall: Duration) -> f64 {
    cpu.as_secs_f64() / wall.as_secs_f64().max(1e-9)
}

/// The time between two control-plane timestamps (milliseconds).
fn ms_between(later: Option<Timestamp>, earlier: Option<Timestamp>) -> Option<Duration> {
    Some(later?.saturating_since(earlier?))
}

fn p50_p99(s: &Samples) -> String {
    format!("{} / {}", fmt_duration(s.median()), fmt_duration(s.p99()))
}

// ---- 1. throughput ----

struct ThroughputRun {
    workers: usize,
    backend: Backend,
    jobs: u64,
    elapsed: Duration,
    /// From the first submit to the return of the last.
    submitting: Duration,
    /// Jobs whose stage was run more than once (their lease was lost in between).
    rerun: usize,
    cpu: Cpu,
    /// Per job, from the store's timestamps: submitted → leased, leased → started,
    /// started → ended.
    queued: Samples,
    leased: Samples,
    running: Samples,
    calls: Option<Vec<Calls>>,
}

impl ThroughputRun {
    fn per_second(&self) -> f64 {
        self.jobs as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

async fn bench_throughput(
    config: &Config,
    workers: usize,
    backend: Backend,
    root: &Path,
) -> BenchResult<ThroughputRun> {
    let dir = tempfile::tempdir_in(root)?;
    let Plane { plane, meter } = start_plane(dir.path(), backend, config).await?;
    let probe = Arc::new(Probe::default());
    let nodes = start_noop_workers(&plane, dir.path(), workers, &probe).await?;

    // Warm up: every connection carries a few jobs before the clock starts.
    let warm = WARM_UP_PER_WORKER * workers;
    for n in 0..warm {
        plane
            .submit(sample_spec(format!("warm-{n}"), n as u64))
            .await?;
    }
    wait_for_runs(&probe, warm, Duration::from_secs(60)).await?;
    wait_for_success(&plane, probe.last_per_worker(), Duration::from_secs(60)).await?;
    probe.clear();

    let jobs = config.jobs;
    let submitters = config.submitters.min(jobs);
    if let Some(m) = &meter {
        m.reset_max();
    }
    let calls_before = meter.as_ref().map(|m| m.snapshot());
    let cpu_before = Cpu::now()?;
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for s in 0..submitters {
        let plane = plane.clone();
        tasks.spawn(async move {
            let mut n = s;
            while n < jobs {
                plane
                    .submit(sample_spec(format!("job-{n}"), n))
                    .await
                    .map_err(|e| format!("submit: {e}"))?;
                n += submitters;
            }
            Ok::<_, String>(Instant::now())
        });
    }
    let mut submitted = start;
    while let Some(done) = tasks.join_next().await {
        submitted = submitted.max(done??);
    }
    let timeout = Duration::from_secs(120).max(Duration::from_millis(jobs * 50));
    wait_for_runs(&probe, jobs as usize, timeout).await?;
    // Each worker's earlier jobs were acknowledged before it took its last ones.
    wait_for_success(&plane, probe.last_per_worker(), timeout).await?;
    let elapsed = start.elapsed();
    let cpu = Cpu::now()?.since(cpu_before);
    let calls = match (&meter, calls_before) {
        (Some(m), Some(before)) => Some(Calls::between(&before, &m.snapshot())),
        _ => None,
    };

    // Untimed: check that every job succeeded, and read its history.
    let done = all_jobs(&plane, JobState::Succeeded).await?;
    let expected = jobs as usize + warm;
    if done.len() != expected {
        return Err(format!(
            "{} jobs succeeded, {} expected",
            fmt_count(done.len() as u64),
            fmt_count(expected as u64)
        )
        .into());
    }
    let rerun = probe.lock().again.len();
    let (mut queued, mut leased, mut running) = (Vec::new(), Vec::new(), Vec::new());
    let timed = done.iter().filter(|j| {
        j.spec
            .idempotency_key
            .as_deref()
            .is_some_and(|k| k.starts_with("job-"))
    });
    for job in timed {
        let Some(a) = job.attempts.last() else {
            continue;
        };
        queued.extend(ms_between(Some(a.leased_at), Some(job.submitted_at)));
        leased.extend(ms_between(a.started_at, Some(a.leased_at)));
        running.extend(ms_between(a.ended_at, a.started_at));
    }
    stop_cluster(plane, nodes).await;
    Ok(ThroughputRun {
        workers,
        backend,
        jobs,
        elapsed,
        submitting: submitted - start,
        rerun,
        cpu,
        queued: queued.into_iter().collect(),
        leased: leased.into_iter().collect(),
        running: running.into_iter().collect(),
        calls,
    })
}

fn print_throughput_header() {
    println!(
        "   {:>7}  {:>6}  {:>9}  {:>9}  {:>10}  {:>11}  {:>8}  {:>20}  {:>11}",
        "workers",
        "store",
        "elapsed",
        "jobs/s",
        "submits/s",
        "process CPU",
        "CPU/job",
        "committer thread, /job",
        "rest of m."
    );
}

fn print_throughput(r: &ThroughputRun) {
    let jobs = u32::try_from(r.jobs).unwrap_or(u32::MAX);
    println!(
        "   {:>7}  {:>6}  {:>9}  {:>9}  {:>10}  {:>11}  {:>8}  {:>20}  {:>11}{}",
        r.workers,
        r.backend.name(),
        fmt_duration(r.elapsed),
        fmt_rate(r.per_second()),
        fmt_rate(r.jobs as f64 / r.submitting.as_secs_f64().max(1e-9)),
        format!("{:.2} cores", cores(r.cpu.process, r.elapsed)),
        fmt_duration(r.cpu.process / jobs),
        format!(
            "{:.2} cores, {}",
            cores(r.cpu.committer, r.elapsed),
            fmt_duration(r.cpu.committer / jobs)
        ),
        format!("{:.2} cores", cores(r.cpu.rest(), r.elapsed)),
        if r.rerun > 0 {
            format!("  ({} runs of jobs already run)", r.rerun)
        } else {
            String::new()
        }
    );
}

fn print_lifecycles(runs: &[ThroughputRun]) {
    println!(
        "   where each job's time went, from the store's timestamps (ms resolution): p50 / p99"
    );
    println!(
        "   {:>7}  {:>6}  {:>22}  {:>22}  {:>22}",
        "workers", "store", "submitted → leased", "leased → started", "started → completed"
    );
    for r in runs {
        println!(
            "   {:>7}  {:>6}  {:>22}  {:>22}  {:>22}",
            r.workers,
            r.backend.name(),
            p50_p99(&r.queued),
            p50_p99(&r.leased),
            p50_p99(&r.running)
        );
    }
}

// ---- 2. latency ----

struct LatencyRun {
    workers: usize,
    backend: Backend,
    jobs: u64,
    /// Bench clock: the submit call.
    submit: Samples,
    /// Bench clock: the submit call's return → the stage being run.
    after_return: Samples,
    /// Bench clock: the submit call → the stage being run.
    call_to_run: Samples,
    /// Control plane clock (ms): started_at − submitted_at.
    plane: Samples,
    /// The rate submits were actually made at.
    achieved_rate: f64,
    cpu: Cpu,
    elapsed: Duration,
    calls: Option<Vec<Calls>>,
    /// With a meter: the submit call → the stage run, cut at the store calls (see
    /// [`SEGMENTS`]).
    segments: Option<[Samples; SEGMENTS.len()]>,
    /// With a meter: the slowest jobs, piece by piece.
    slowest: Vec<Slow>,
    /// With a meter: how long each job kept its worker's one slot (lease committed → complete
    /// committed), and the share of the run's worker time that was.
    busy: Option<(Samples, f64)>,
}

/// One slow job of a metered latency run.
struct Slow {
    /// When it was submitted, from the start of the timed submits.
    at: Duration,
    /// The submit call → the stage run.
    total: Duration,
    /// That time cut at the store calls (see [`SEGMENTS`]).
    pieces: [Option<Duration>; SEGMENTS.len()],
}

/// Slow jobs shown per metered latency run.
const SLOWEST: usize = 3;

/// The pieces of the way from the submit call to the stage running, cut where the store is
/// called; each of the first [`PATH`] ends where the next begins. The worker runs the stage as
/// soon as it has the lease and reports the start meanwhile, so the last two, the start report,
/// run beside the way rather than on it.
const SEGMENTS: [&str; 6] = [
    "submit call → store submit done",
    "store submit done → submit returns",
    "submit returns → lease committed",
    "lease committed → stage run",
    "beside: lease committed → start called",
    "beside: start called → start committed",
];
/// The pieces of [`SEGMENTS`] that make up the way.
const PATH: usize = 4;

async fn bench_latency(
    config: &Config,
    workers: usize,
    backend: Backend,
    root: &Path,
) -> BenchResult<LatencyRun> {
    let dir = tempfile::tempdir_in(root)?;
    let Plane { plane, meter } = start_plane(dir.path(), backend, config).await?;
    let probe = Arc::new(Probe::default());
    let nodes = start_noop_workers(&plane, dir.path(), workers, &probe).await?;
    let interval = Duration::from_secs_f64(1.0 / config.rate as f64);

    // Warm-up at the same pace, untimed.
    let warm = WARM_UP_PER_WORKER * workers;
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    for n in 0..warm {
        ticks.tick().await;
        plane
            .submit(sample_spec(format!("warm-{n}"), n as u64))
            .await?;
    }
    wait_for_runs(&probe, warm, Duration::from_secs(60)).await?;
    probe.clear();

    let n = config.latency_jobs;
    let mut submits = Vec::with_capacity(n as usize);
    if let Some(m) = &meter {
        m.reset_max();
    }
    let calls_before = meter.as_ref().map(|m| m.snapshot());
    let cpu_before = Cpu::now()?;
    let start = Instant::now();
    for i in 0..n {
        ticks.tick().await;
        let spec = sample_spec(format!("job-{i}"), i);
        let call = Instant::now();
        let id = plane.submit(spec).await?.id;
        submits.push((id, call, Instant::now()));
    }
    let achieved_rate = n as f64 / start.elapsed().as_secs_f64().max(1e-9);
    wait_for_runs(&probe, n as usize, Duration::from_secs(60)).await?;
    let elapsed = start.elapsed();
    let cpu = Cpu::now()?.since(cpu_before);
    let calls = match (&meter, calls_before) {
        (Some(m), Some(before)) => Some(Calls::between(&before, &m.snapshot())),
        _ => None,
    };

    let (mut submit, mut after_return, mut call_to_run, mut plane_started) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut segments: [Vec<Duration>; SEGMENTS.len()] = Default::default();
    let mut slowest = Vec::new();
    let mut busy = Vec::new();
    for &(id, call, returned) in &submits {
        let (_, ran) = probe
            .last_run(id)
            .ok_or_else(|| format!("{id} was never run"))?;
        submit.push(returned - call);
        after_return.push(ran.saturating_duration_since(returned));
        call_to_run.push(ran.saturating_duration_since(call));
        if let Some(m) = &meter {
            let marks = m.marks(id);
            let path = [
                Some(call),
                marks.submitted,
                Some(returned),
                marks.leased,
                Some(ran),
            ];
            let beside = [
                (marks.leased, marks.start_called),
                (marks.start_called, marks.started),
            ];
            let spans = path.windows(2).map(|pair| (pair[0], pair[1])).chain(beside);
            let mut pieces = [None; SEGMENTS.len()];
            for (i, span) in spans.enumerate() {
                if let (Some(from), Some(to)) = span {
                    let piece = to.saturating_duration_since(from);
                    segments[i].push(piece);
                    pieces[i] = Some(piece);
                }
            }
            if let (Some(leased), Some(completed)) = (marks.leased, marks.completed) {
                busy.push(completed.saturating_duration_since(leased));
            }
            slowest.push(Slow {
                at: call.saturating_duration_since(start),
                total: ran.saturating_duration_since(call),
                pieces,
            });
        }
        let job = plane.get(id).await?;
        if let Some(a) = job.attempts.first() {
            plane_started.extend(ms_between(a.started_at, Some(job.submitted_at)));
        }
    }
    stop_cluster(plane, nodes).await;
    Ok(LatencyRun {
        workers,
        backend,
        jobs: n,
        submit: submit.into_iter().collect(),
        after_return: after_return.into_iter().collect(),
        call_to_run: call_to_run.into_iter().collect(),
        plane: plane_started.into_iter().collect(),
        achieved_rate,
        cpu,
        elapsed,
        calls,
        segments: meter
            .as_ref()
            .map(|_| segments.map(|s| s.into_iter().collect())),
        slowest: {
            slowest.sort_by_key(|s| std::cmp::Reverse(s.total));
            slowest.truncate(SLOWEST);
            slowest
        },
        busy: meter.map(|_| {
            let total: Duration = busy.iter().sum();
            let share = total.as_secs_f64() / (elapsed.as_secs_f64() * workers as f64).max(1e-9);
            (busy.into_iter().collect(), share)
        }),
    })
}

fn print_latency_header() {
    println!(
        "   {:>7}  {:>6}  {:>7}  {:>19}  {:>19}  {:>21}  {:>19}  {:>10}",
        "workers",
        "store",
        "rate",
        "submit call",
        "returned → run",
        "call → run",
        "plane: submit→start",
        "rest of m."
    );
}

fn print_latency(r: &LatencyRun) {
    println!(
        "   {:>7}  {:>6}  {:>7}  {:>19}  {:>19}  {:>21}  {:>19}  {:>10}",
        r.workers,
        r.backend.name(),
        fmt_rate(r.achieved_rate),
        p50_p99(&r.submit),
        p50_p99(&r.after_return),
        p50_p99(&r.call_to_run),
        p50_p99(&r.plane),
        format!("{:.2} cores", cores(r.cpu.rest(), r.elapsed)),
    );
}

// ---- 3. failover ----

struct Failover {
    /// Slots of worker A.
    slots: usize,
    times: Vec<Duration>,
}

impl Failover {
    fn max(&self) -> Option<Duration> {
        self.times.iter().max().copied()
    }
}

async fn bench_failover(config: &Config, slots: usize, root: &Path) -> BenchResult<Failover> {
    let rounds = config.failovers;
    let idle = if slots > 1 {
        format!(", {} of them idle and asking for work", slots - 1)
    } else {
        String::new()
    };
    println!("   worker A with {slots} slot(s){idle}:");
    println!(
        "   {:>5}  {:>10}  {:>10}  {:>13}  {:>13}  {:>13}  {:>11}  attempts on",
        "round",
        "stop → run",
        "lease left",
        "lease → ended",
        "ended → lease",
        "lease → start",
        "start → run"
    );
    let mut times = Vec::new();
    for round in 0..rounds {
        let dir = tempfile::tempdir_in(root)?;
        // The defaults: only the address, folder and token are set.
        let Plane { plane, .. } = start_plane(dir.path(), Backend::Redb, config).await?;
        let probe = Arc::new(Probe::default());
        let stage = |worker| BlockingStage {
            worker,
            probe: probe.clone(),
        };
        let (a, b) = (0, 1);
        let node_a = start_worker(&plane, dir.path(), "worker-a", slots, stage(a)).await?;
        let id = plane
            .submit(sample_spec(format!("failover-{round}"), round))
            .await?
            .id;
        let ran_at = wait_for_run_on(&probe, id, a, Duration::from_secs(30)).await?;
        let node_b = start_worker(&plane, dir.path(), "worker-b", 1, stage(b)).await?;
        // Stop A at a different point of its heartbeat cycle each round (every 500 ms), so
        // that the rounds cover the range of lease left at the stop.
        let offset = Duration::from_millis(700 + 500 * round / rounds.max(1));
        tokio::time::sleep_until((ran_at + offset).into()).await;
        let stop_wall = now();
        let stopped = Instant::now();
        node_a.stop().await;
        let again_at = wait_for_run_on(&probe, id, b, Duration::from_secs(30)).await?;
        let took = again_at - stopped;
        times.push(took);

        let job = plane.get(id).await?;
        // The first attempt is A's and the last B's; any between went to a worker that never
        // ran it.
        let (first, last) = (job.attempts.first(), job.attempts.last());
        let ms = |d: Option<Duration>| d.map_or_else(|| "?".to_owned(), fmt_duration);
        let path: Vec<&str> = job.attempts.iter().map(|a| a.worker.as_str()).collect();
        println!(
            "   {:>5}  {:>10}  {:>10}  {:>13}  {:>13}  {:>13}  {:>11}  {}",
            round + 1,
            fmt_duration(took),
            ms(first.map(|a| a.lease_expires_at.saturating_since(stop_wall))),
            ms(first.and_then(|a| ms_between(a.ended_at, Some(a.lease_expires_at)))),
            ms(last.and_then(|l| ms_between(Some(l.leased_at), first?.ended_at))),
            ms(last.and_then(|l| ms_between(l.started_at, Some(l.leased_at)))),
            ms(last
                .and_then(|l| l.started_at)
                .map(|s| stop_wall.saturating_add(took).saturating_since(s))),
            path.join(" → ")
        );
        // Tidy up (untimed): the job cancelled, B stopped, the plane shut down.
        plane.cancel(id, "failover measured").await?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while !plane.get(id).await?.state.is_terminal() {
            if Instant::now() > deadline {
                return Err(format!("{id} did not end within 30 s of its cancel").into());
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        stop_cluster(plane, vec![node_b]).await;
    }
    let failover = Failover { slots, times };
    if let Some(max) = failover.max() {
        let all: Samples = failover.times.iter().copied().collect();
        println!(
            "   max {}, median {}, min {}; lease columns from the control plane's clock (ms)",
            fmt_duration(max),
            fmt_duration(all.median()),
            fmt_duration(all.min()),
        );
    }
    Ok(failover)
}

/// Waits until `job` has been run on `worker`, returning the moment.
async fn wait_for_run_on(
    probe: &Probe,
    job: JobId,
    worker: usize,
    timeout: Duration,
) -> BenchResult<Instant> {
    let deadline = Instant::now() + timeout;
    loop {
        match probe.last_run(job) {
            Some((w, at)) if w == worker => return Ok(at),
            _ if Instant::now() > deadline => {
                return Err(format!(
                    "{job} was not run on worker {worker} within {}",
                    fmt_duration(timeout)
                )
                .into());
            }
            _ => tokio::time::sleep(POLL).await,
        }
    }
}

// ---- 4. costs ----

/// What one durable store call costs on this disk on its own, one call at a time; returns the
/// median lease.
async fn section_costs(root: &Path) -> BenchResult<Duration> {
    println!(
        "\n4. Store calls on this disk on their own, one at a time ({SERIAL_CALLS} of each; redb, a fresh file);"
    );
    println!("   beside each, the CPU time of the store's committer thread per call");
    let fsync = fsync_latency(root, FSYNCS)?;
    print_samples("fsync of the disk (4 KiB + sync_data)", &fsync);
    let dir = tempfile::tempdir_in(root)?;
    let path = dir.path().join("nexa_forge.db");
    let phases = tokio::task::spawn_blocking(move || -> BenchResult<Vec<(&str, Phase)>> {
        let store = RedbStore::open(&path, StoreConfig::default())?;
        let worker = store
            .register_worker(worker_info("cost-worker")?, now())?
            .info
            .id;
        let request = LeaseRequest {
            worker,
            free_gpus: vec![],
        };
        let mut leases = Vec::new();
        let submit = Phase::time(|n| {
            store.submit(sample_spec(format!("cost-{n}"), 0), now())?;
            Ok(())
        })?;
        let lease = Phase::time(|_| {
            let lease = store.lease_next(request.clone(), now())?;
            leases.push(lease.ok_or("the queue ran dry")?);
            Ok(())
        })?;
        let start = Phase::time(|n| {
            let l = &leases[n];
            Ok(store.start(l.job.id, l.epoch, now())?)
        })?;
        let complete = Phase::time(|n| {
            let l = &leases[n];
            store.complete(l.job.id, l.epoch, JobOutput::default(), now())?;
            Ok(())
        })?;
        let empty = Phase::time(|_| match store.lease_next(request.clone(), now())? {
            Some(_) => Err("a lease was found in an emptied queue".into()),
            None => Ok(()),
        })?;
        // The scheduler's write when every worker asks at once: a lease for each.
        let mut requests = Vec::with_capacity(TARGET_WORKERS);
        for n in 0..TARGET_WORKERS {
            let info = worker_info(&format!("cost-batch-{n}"))?;
            requests.push(LeaseRequest {
                worker: store.register_worker(info, now())?.info.id,
                free_gpus: vec![],
            });
        }
        for call in 0..SERIAL_CALLS {
            let specs = (0..TARGET_WORKERS)
                .map(|n| sample_spec(format!("cost-batch-{call}-{n}"), 0))
                .collect();
            store.submit_batch(specs, now())?;
        }
        let many = Phase::time(|_| {
            let answers = store.lease_many(requests.clone(), now())?;
            if answers.iter().all(|a| matches!(a, Ok(Some(_)))) {
                Ok(())
            } else {
                Err("a batch of leases came back short".into())
            }
        })?;
        Ok(vec![
            ("submit", submit),
            ("lease_next, a job queued", lease),
            ("start", start),
            ("complete", complete),
            ("lease_next, queue empty", empty),
            ("lease_many, 16 requests, 16 jobs queued", many),
        ])
    })
    .await??;
    for (what, phase) in &phases {
        println!(
            "   {what:<40} p50 {:>9}  p99 {:>9}  min {:>9}  max {:>9}  committer CPU {:>9}",
            fmt_duration(phase.wall.median()),
            fmt_duration(phase.wall.p99()),
            fmt_duration(phase.wall.min()),
            fmt_duration(phase.wall.max()),
            fmt_duration(phase.committer),
        );
    }
    let median = |name: &str| {
        phases
            .iter()
            .find(|(what, _)| what.starts_with(name))
            .map_or(Duration::ZERO, |(_, p)| p.wall.median())
    };
    let (lease, many) = (median("lease_next, a job"), median("lease_many"));
    println!(
        "   the scheduler makes one lease write at a time, for every worker that asked meanwhile: at the"
    );
    println!(
        "   medians above that is at most {} leases (jobs) per second with one worker asking at a time,",
        fmt_rate(1.0 / lease.as_secs_f64().max(1e-9))
    );
    println!(
        "   {} with {TARGET_WORKERS} asking at once",
        fmt_rate(TARGET_WORKERS as f64 / many.as_secs_f64().max(1e-9))
    );
    Ok(lease)
}

/// [`SERIAL_CALLS`] calls of one kind, one after another.
struct Phase {
    wall: Samples,
    /// The committer thread's CPU time per call.
    committer: Duration,
}

impl Phase {
    fn time(mut call: impl FnMut(usize) -> BenchResult<()>) -> BenchResult<Self> {
        let before = Cpu::now()?;
        let mut wall = Samples::default();
        for n in 0..SERIAL_CALLS {
            let (r, took) = timed(|| call(n));
            r?;
            wall.push(took);
        }
        let cpu = Cpu::now()?.since(before);
        Ok(Self {
            wall,
            committer: cpu.committer / u32::try_from(SERIAL_CALLS).unwrap_or(u32::MAX),
        })
    }
}

fn print_samples(what: &str, s: &Samples) {
    println!(
        "   {what:<40} p50 {:>9}  p99 {:>9}  min {:>9}  max {:>9}",
        fmt_duration(s.median()),
        fmt_duration(s.p99()),
        fmt_duration(s.min()),
        fmt_duration(s.max())
    );
}

// ---- 5. the meter ----

/// The store calls counted by a [`Meter`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    Submit,
    SubmitBatch,
    SubmitAndLease,
    Get,
    List,
    Count,
    Counts,
    PendingReason,
    LeaseFound,
    LeaseEmpty,
    LeaseFailed,
    LeaseMany,
    BatchFound,
    BatchEmpty,
    BatchFailed,
    Start,
    Heartbeat,
    Complete,
    Fail,
    Cancel,
    Expire,
    RenewLeases,
    AppendLogs,
    ReadLogs,
    RegisterWorker,
    WorkerHeartbeat,
    DrainWorker,
    RemoveWorker,
    ListWorkers,
    /// A `Store` method this meter has no row for (one added since).
    Other,
}

impl Op {
    const ALL: [Op; 30] = [
        Op::Submit,
        Op::SubmitBatch,
        Op::SubmitAndLease,
        Op::Get,
        Op::List,
        Op::Count,
        Op::Counts,
        Op::PendingReason,
        Op::LeaseFound,
        Op::LeaseEmpty,
        Op::LeaseFailed,
        Op::LeaseMany,
        Op::BatchFound,
        Op::BatchEmpty,
        Op::BatchFailed,
        Op::Start,
        Op::Heartbeat,
        Op::Complete,
        Op::Fail,
        Op::Cancel,
        Op::Expire,
        Op::RenewLeases,
        Op::AppendLogs,
        Op::ReadLogs,
        Op::RegisterWorker,
        Op::WorkerHeartbeat,
        Op::DrainWorker,
        Op::RemoveWorker,
        Op::ListWorkers,
        Op::Other,
    ];

    /// The row of a call of the `Store` method `method` (its name in the trait, as the engine
    /// is told it), for the methods whose row does not depend on their answer. `None` for
    /// deleting finished jobs, which is not on the measured path.
    fn of(method: &str) -> Option<Op> {
        Some(match method {
            "submit" => Op::Submit,
            "submit_batch" => Op::SubmitBatch,
            "submit_and_lease" => Op::SubmitAndLease,
            "get" => Op::Get,
            "list" => Op::List,
            "count" => Op::Count,
            "counts" => Op::Counts,
            "pending_reason" => Op::PendingReason,
            "lease_many" => Op::LeaseMany,
            "start" => Op::Start,
            "heartbeat" => Op::Heartbeat,
            "complete" => Op::Complete,
            "fail" => Op::Fail,
            "cancel" => Op::Cancel,
            "expire" => Op::Expire,
            "renew_leases" => Op::RenewLeases,
            "append_logs" => Op::AppendLogs,
            "read_logs" => Op::ReadLogs,
            "register_worker" => Op::RegisterWorker,
            "worker_heartbeat" => Op::WorkerHeartbeat,
            "drain_worker" => Op::DrainWorker,
            "remove_worker" => Op::RemoveWorker,
            "list_workers" => Op::ListWorkers,
            "delete" | "delete_finished_before" => return None,
            _ => Op::Other,
        })
    }

    fn name(self) -> &'static str {
        match self {
            Op::Submit => "submit",
            Op::SubmitBatch => "submit_batch",
            Op::SubmitAndLease => "submit_and_lease (writes)",
            Op::Get => "get",
            Op::List => "list",
            Op::Count => "count",
            Op::Counts => "counts",
            Op::PendingReason => "pending_reason",
            Op::LeaseFound => "lease_next → a job",
            Op::LeaseEmpty => "lease_next → none",
            Op::LeaseFailed => "lease_next → error",
            Op::LeaseMany => "lease_many (writes)",
            Op::BatchFound => "  a request → a job",
            Op::BatchEmpty => "  a request → none",
            Op::BatchFailed => "  a request → error",
            Op::Start => "start",
            Op::Heartbeat => "heartbeat (job)",
            Op::Complete => "complete",
            Op::Fail => "fail",
            Op::Cancel => "cancel",
            Op::Expire => "expire",
            Op::RenewLeases => "renew_leases",
            Op::AppendLogs => "append_logs",
            Op::ReadLogs => "read_logs",
            Op::RegisterWorker => "register_worker",
            Op::WorkerHeartbeat => "worker_heartbeat",
            Op::DrainWorker => "drain_worker",
            Op::RemoveWorker => "remove_worker",
            Op::ListWorkers => "list_workers",
            Op::Other => "other",
        }
    }

    /// Whether only the scheduler makes this call, one at a time.
    fn serial(self) -> bool {
        matches!(
            self,
            Op::LeaseFound | Op::LeaseEmpty | Op::LeaseFailed | Op::LeaseMany
        )
    }

    /// Whether this counts the requests of `lease_many` calls (timed with their call).
    fn per_request(self) -> bool {
        matches!(self, Op::BatchFound | Op::BatchEmpty | Op::BatchFailed)
    }
}

/// One kind of call over a span of time: how many, and the time spent in them in all.
#[derive(Clone, Copy, Debug)]
struct Calls {
    op: Op,
    count: u64,
    total: Duration,
    /// The longest call since the meter was made.
    max: Duration,
}

impl Calls {
    fn between(before: &[Calls], after: &[Calls]) -> Vec<Calls> {
        before
            .iter()
            .zip(after)
            .map(|(b, a)| Calls {
                op: a.op,
                count: a.count - b.count,
                total: a.total.saturating_sub(b.total),
                max: a.max,
            })
            .collect()
    }
}

/// When the store calls of one job returned, on the bench's clock.
#[derive(Clone, Copy, Debug, Default)]
struct Marks {
    /// `submit` returned.
    submitted: Option<Instant>,
    /// `lease_next` returned this job.
    leased: Option<Instant>,
    /// `start` was called.
    start_called: Option<Instant>,
    /// `start` returned.
    started: Option<Instant>,
    /// `complete` returned.
    completed: Option<Instant>,
}

/// The count and time of every store call a [`Metered`] engine ran, and when each job's
/// submit, lease, start and complete calls were made.
struct Meter {
    counts: [AtomicU64; Op::ALL.len()],
    nanos: [AtomicU64; Op::ALL.len()],
    max_nanos: [AtomicU64; Op::ALL.len()],
    marks: Mutex<HashMap<JobId, Marks>>,
}

impl Meter {
    fn new() -> Self {
        Self {
            counts: std::array::from_fn(|_| AtomicU64::new(0)),
            nanos: std::array::from_fn(|_| AtomicU64::new(0)),
            max_nanos: std::array::from_fn(|_| AtomicU64::new(0)),
            marks: Mutex::default(),
        }
    }

    fn mark(&self, job: JobId, note: impl FnOnce(&mut Marks)) {
        note(
            self.marks
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .entry(job)
                .or_default(),
        );
    }

    fn marks(&self, job: JobId) -> Marks {
        self.marks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&job)
            .copied()
            .unwrap_or_default()
    }

    fn add(&self, op: Op, took: Duration) {
        let i = op as usize;
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        let ns = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        self.nanos[i].fetch_add(ns, Ordering::Relaxed);
        self.max_nanos[i].fetch_max(ns, Ordering::Relaxed);
    }

    /// Forgets the longest calls so far.
    fn reset_max(&self) {
        for m in &self.max_nanos {
            m.store(0, Ordering::Relaxed);
        }
    }

    /// Counts the answers of a batch of lease requests, leased at `at`.
    fn batch_answers(&self, answers: &[Result<Option<Lease>, StoreError>], at: Instant) {
        for answer in answers {
            match answer {
                Ok(Some(lease)) => {
                    self.add(Op::BatchFound, Duration::ZERO);
                    self.mark(lease.job.id, |m| m.leased = Some(at));
                }
                Ok(None) => self.add(Op::BatchEmpty, Duration::ZERO),
                Err(_) => self.add(Op::BatchFailed, Duration::ZERO),
            }
        }
    }

    /// Counts a write of the `Store` method `method` about `job`, called at `called`, that
    /// took `took`, answered `answer` and returned at `at`; notes the job's moments.
    fn wrote(
        &self,
        method: &'static str,
        job: Option<JobId>,
        answer: Result<&dyn Any, &StoreError>,
        called: Instant,
        took: Duration,
        at: Instant,
    ) {
        match method {
            "lease_next" => match answer.map(|a| answer_as::<Option<Lease>>(method, a)) {
                Ok(Some(lease)) => {
                    self.add(Op::LeaseFound, took);
                    self.mark(lease.job.id, |m| m.leased = Some(at));
                }
                Ok(None) => self.add(Op::LeaseEmpty, took),
                Err(_) => self.add(Op::LeaseFailed, took),
            },
            "lease_many" => {
                self.add(Op::LeaseMany, took);
                let answers = answer.map(|a| {
                    answer_as::<Vec<Result<Option<Lease>, StoreError>>>(method, a).as_slice()
                });
                self.batch_answers(answers.unwrap_or_default(), at);
            }
            "submit" => {
                self.add(Op::Submit, took);
                if let Ok(a) = answer {
                    let id = answer_as::<Submitted>(method, a).id;
                    self.mark(id, |m| m.submitted = Some(at));
                }
            }
            "submit_and_lease" => {
                self.add(Op::SubmitAndLease, took);
                if let Ok(a) = answer {
                    let (submitted, answers) = answer_as::<SubmittedAndLeased>(method, a);
                    for s in submitted {
                        self.mark(s.id, |m| m.submitted = Some(at));
                    }
                    self.batch_answers(answers, at);
                }
            }
            "start" => {
                self.add(Op::Start, took);
                if let Some(id) = job {
                    self.mark(id, |m| {
                        m.start_called = Some(called);
                        m.started = Some(at);
                    });
                }
            }
            "complete" => {
                self.add(Op::Complete, took);
                if let Some(id) = job {
                    self.mark(id, |m| m.completed = Some(at));
                }
            }
            _ => {
                if let Some(op) = Op::of(method) {
                    self.add(op, took);
                }
            }
        }
    }

    fn snapshot(&self) -> Vec<Calls> {
        Op::ALL
            .iter()
            .map(|&op| Calls {
                op,
                count: self.counts[op as usize].load(Ordering::Relaxed),
                total: Duration::from_nanos(self.nanos[op as usize].load(Ordering::Relaxed)),
                max: Duration::from_nanos(self.max_nanos[op as usize].load(Ordering::Relaxed)),
            })
            .collect()
    }
}

/// A write's answer as the type the `Store` method `method` answers with. The engine's
/// `write` is generic over the answer, so the meter reads a lease or a job id out of it
/// by its type; a mismatch is a bug in this meter.
fn answer_as<'a, T: 'static>(method: &str, answer: &'a dyn Any) -> &'a T {
    answer.downcast_ref().unwrap_or_else(|| {
        panic!(
            "the meter expects {method} to answer {}",
            std::any::type_name::<T>()
        )
    })
}

/// An engine whose store calls a [`Meter`] counts and times. It is a store through the blanket
/// `impl<E: Engine> Store for E`, whose every call reaches the engine once, through `write`
/// or `read` with a [`Call`] naming the `Store` method: the meter sees each call whole,
/// from the engine's side, with no `Store` method of its own to keep in step.
struct Metered<E> {
    engine: E,
    meter: Arc<Meter>,
}

impl<E: Engine> Engine for Metered<E> {
    fn config(&self) -> &StoreConfig {
        self.engine.config()
    }

    fn quick_reads(&self) -> bool {
        self.engine.quick_reads()
    }

    fn write<R: Send + 'static>(&self, call: Call, op: WriteOp<R>) -> Result<R, StoreError> {
        let called = Instant::now();
        let (r, took) = timed(|| self.engine.write(call, op));
        let at = Instant::now();
        let answer = r.as_ref().map(|a| a as &dyn Any);
        self.meter
            .wrote(call.method, call.job, answer, called, took, at);
        r
    }

    fn read<R>(
        &self,
        call: Call,
        op: &mut dyn FnMut(&dyn ReadTables) -> Result<R, StoreError>,
    ) -> Result<R, StoreError> {
        let (r, took) = timed(|| self.engine.read(call, op));
        if let Some(op) = Op::of(call.method) {
            self.meter.add(op, took);
        }
        r
    }
}

fn print_calls(title: &str, jobs: u64, elapsed: Duration, calls: &[Calls]) {
    println!("   {title}");
    println!(
        "   {:<20} {:>8} {:>9} {:>11} {:>11} {:>15}",
        "store call", "calls", "per job", "mean", "longest", "time in calls"
    );
    let (mut serial, mut writes) = (Duration::ZERO, 0);
    for c in calls.iter().filter(|c| c.count > 0) {
        let per_job = c.count as f64 / jobs.max(1) as f64;
        if c.op.per_request() {
            // Timed with their `lease_many` call, above.
            println!(
                "   {:<20} {:>8} {:>9.2} {:>11} {:>11} {:>15}",
                c.op.name(),
                fmt_count(c.count),
                per_job,
                "",
                "",
                ""
            );
            continue;
        }
        let mean = c.total / u32::try_from(c.count).unwrap_or(u32::MAX);
        println!(
            "   {:<20} {:>8} {:>9.2} {:>11} {:>11} {:>14.0}%",
            c.op.name(),
            fmt_count(c.count),
            per_job,
            fmt_duration(mean),
            fmt_duration(c.max),
            100.0 * c.total.as_secs_f64() / elapsed.as_secs_f64().max(1e-9)
        );
        if c.op.serial() {
            serial += c.total;
            writes += c.count;
        }
    }
    println!(
        "   (time in calls: their summed duration as a share of the run's {}; the scheduler makes its",
        fmt_duration(elapsed)
    );
    println!(
        "   lease writes one at a time: its {} writes were in flight {:.0}% of the run)",
        fmt_count(writes),
        100.0 * serial.as_secs_f64() / elapsed.as_secs_f64().max(1e-9)
    );
    let count = |op: Op| calls.iter().find(|c| c.op == op).map_or(0, |c| c.count);
    let total = |op: Op| {
        calls
            .iter()
            .find(|c| c.op == op)
            .map_or(Duration::ZERO, |c| c.total)
    };
    let (lease_writes, batched) = (count(Op::LeaseMany), count(Op::BatchFound));
    if lease_writes > 0 && batched > 0 {
        let mean = total(Op::LeaseMany).as_secs_f64() / lease_writes as f64;
        let per_write = batched as f64 / lease_writes as f64;
        println!(
            "   (lease writes at their mean of {} with {per_write:.1} leases each, one after another: at most {} leases, so jobs)",
            fmt_duration(Duration::from_secs_f64(mean)),
            fmt_rate(per_write / mean.max(1e-9))
        );
    }
    if count(Op::LeaseFound) > 0 {
        let mean = total(Op::LeaseFound).as_secs_f64() / count(Op::LeaseFound) as f64;
        println!(
            "   (one lease_next after another at their mean of {}: at most {} leases, so jobs)",
            fmt_duration(Duration::from_secs_f64(mean)),
            fmt_rate(1.0 / mean.max(1e-9))
        );
    }
}

/// The way from the submit call to the stage running, piece by piece, for each metered run.
fn print_segments(runs: &[LatencyRun]) {
    println!(
        "   latency runs above, the submit call → the stage run cut at the store calls (bench clock): p50 / p99"
    );
    let mut header = format!("   {:<36}", "");
    for r in runs {
        let name = format!("{} w, {}", r.workers, r.backend.name());
        header.push_str(&format!("  {name:>21}"));
    }
    println!("{header}");
    for (i, what) in SEGMENTS.iter().enumerate() {
        let mut line = format!("   {what:<36}");
        for r in runs {
            let cell = r
                .segments
                .as_ref()
                .map_or_else(String::new, |s| p50_p99(&s[i]));
            line.push_str(&format!("  {cell:>21}"));
        }
        println!("{line}");
    }
    let mut line = format!("   {:<36}", "the whole: submit call → stage run");
    for r in runs {
        line.push_str(&format!("  {:>21}", p50_p99(&r.call_to_run)));
    }
    println!("{line}");
    let mut line = format!("   {:<36}", "a job holds its worker's slot");
    for r in runs {
        let cell = r
            .busy
            .as_ref()
            .map_or_else(String::new, |(s, _)| p50_p99(s));
        line.push_str(&format!("  {cell:>21}"));
    }
    println!("{line}");
    let mut line = format!("   {:<36}", "  so the workers were busy");
    for r in runs {
        let cell = r
            .busy
            .as_ref()
            .map_or_else(String::new, |(_, share)| format!("{:.0}%", share * 100.0));
        line.push_str(&format!("  {cell:>21}"));
    }
    println!("{line}");
    let mut line = format!("   {:<36}", "rest of machine");
    for r in runs {
        let cell = format!("{:.2} cores", cores(r.cpu.rest(), r.elapsed));
        line.push_str(&format!("  {cell:>21}"));
    }
    println!("{line}");
}

/// The slowest jobs of each metered run, piece by piece.
fn print_slowest(runs: &[LatencyRun]) {
    println!(
        "   the {SLOWEST} slowest jobs of each of those runs, piece by piece (same order as above):"
    );
    for r in runs {
        for slow in &r.slowest {
            let pieces: Vec<String> = slow
                .pieces
                .iter()
                .map(|p| p.map_or_else(|| "?".to_owned(), fmt_duration))
                .collect();
            let (path, beside) = pieces.split_at(PATH);
            println!(
                "   {:>2} w, {:<10} {:>9} at +{:<9} = {} (beside: {})",
                r.workers,
                r.backend.name(),
                fmt_duration(slow.total),
                fmt_duration(slow.at),
                path.join(" + "),
                beside.join(", ")
            );
        }
    }
}

// ---- summary ----

fn verdict(met: bool) -> &'static str {
    if met { "met" } else { "MISSED" }
}

fn print_targets(found: &Found) {
    println!("\nTargets (redb store, ControlPlane::start)");
    println!("   {:<64} {:<28} verdict", "target", "measured");
    let redb = |b: Backend| b == Backend::Redb;
    match found
        .throughput
        .iter()
        .find(|r| r.workers == TARGET_WORKERS && redb(r.backend))
    {
        Some(r) => println!(
            "   {:<64} {:<28} {}",
            format!(
                "{TARGET_WORKERS} workers: >= {} jobs/s",
                fmt_count(TARGET_JOBS_PER_SECOND as u64)
            ),
            format!("{} ({} jobs)", fmt_rate(r.per_second()), fmt_count(r.jobs)),
            verdict(r.per_second() >= TARGET_JOBS_PER_SECOND)
        ),
        None => println!(
            "   {TARGET_WORKERS} workers: throughput not measured (NEXA_BENCH_SECTIONS, NEXA_BENCH_WORKERS)"
        ),
    }
    let latency: Vec<&LatencyRun> = found.latency.iter().filter(|r| redb(r.backend)).collect();
    if latency.is_empty() {
        println!("   latency not measured (NEXA_BENCH_SECTIONS)");
    }
    for r in latency {
        let s = &r.call_to_run;
        println!(
            "   {:<64} {:<28} {}",
            format!(
                "{:>2} worker(s), submit call → run: p50 < {}, p99 < {}",
                r.workers,
                fmt_duration(TARGET_P50),
                fmt_duration(TARGET_P99)
            ),
            format!(
                "p50 {}, p99 {}",
                fmt_duration(s.median()),
                fmt_duration(s.p99())
            ),
            verdict(s.median() < TARGET_P50 && s.p99() < TARGET_P99)
        );
    }
    if found.failovers.is_empty() {
        println!("   failover not measured (NEXA_BENCH_SECTIONS)");
    }
    for f in &found.failovers {
        match f.max() {
            Some(max) => println!(
                "   {:<64} {:<28} {}",
                format!(
                    "failover, A with {} slot(s): running on B within {}",
                    f.slots,
                    fmt_duration(TARGET_FAILOVER)
                ),
                format!("max {} of {}", fmt_duration(max), f.times.len()),
                verdict(max < TARGET_FAILOVER)
            ),
            None => println!(
                "   failover, A with {} slot(s): not measured (NEXA_BENCH_FAILOVERS=0)",
                f.slots
            ),
        }
    }
    println!(
        "   (latency is judged on the bench's clock from the submit call to the stage running, which"
    );
    print!(
        "   includes two durable commits in a row: submit, lease (the start is reported while the stage runs)"
    );
    match found.lease_alone {
        Some(lease) => println!(
            "; one lease commit alone took\n   {} at the median on this disk)",
            fmt_duration(lease)
        ),
        None => println!(")"),
    }
}
