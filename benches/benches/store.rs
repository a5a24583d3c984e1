//! The store benchmark: the redb store against SQLite, doing the same durable work.
//!
//! ```text
//! cargo bench -p nexa-benches --bench store
//! NEXA_BENCH_JOBS=20000 NEXA_BENCH_SECONDS=1 cargo bench -p nexa-benches --bench store
//! ```
//!
//! It measures, in one run and on one disk (a temporary folder beside `/tmp`):
//!
//! 1. durable submits per second with 1, 8 and 64 submitting threads;
//! 2. lease → start → complete cycles per second with 1 and 8 workers;
//! 3. a store of `NEXA_BENCH_JOBS` jobs (1,000,000 by default): loading it, opening it,
//!    leasing the next job and listing the first page of queued jobs;
//!
//! and ends with the targets and whether each was met. Every figure is measured in this run;
//! a missed target is printed as MISSED with its figure. The disk's fsync latency is measured
//! first, since no durable commit can be faster.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use nexa_benches::{
    BenchResult, NOW, Rates, Samples, Settings, SqliteJobs, Throughput, fmt_count, fmt_duration,
    fmt_rate, fsync_latency, job_record, lease_cycles, run_for, sample_spec, timed, worker_info,
};
use nexa_runtime::{Job, JobId, JobState, LeaseRequest, ListQuery, Store, StoreConfig, WorkerId};
use nexa_storage::RedbStore;

/// Submitting threads in the submit benchmark.
const SUBMITTERS: [usize; 3] = [1, 8, 64];
/// The submitters the throughput targets are stated for.
const TARGET_SUBMITTERS: usize = 64;
/// Workers in the lease-cycle benchmark.
const WORKERS: [usize; 2] = [1, 8];
/// Most jobs queued before a lease-cycle run; a run that empties the queue ends early.
const CYCLE_QUEUE: u64 = 50_000;
/// Jobs per `submit_batch` call when loading a store.
const LOAD_BATCH: u64 = 10_000;
/// Opens timed on the large store.
const OPENS: usize = 5;
/// Leases timed on the large store (each one a durable commit).
const LEASES: usize = 200;
/// First-page lists timed on the large store.
const LISTS: usize = 1_000;
/// The page size of those lists.
const PAGE: usize = 50;
/// fsync samples taken at start.
const FSYNCS: usize = 50;

/// The figures the targets are judged on.
struct Targets {
    /// Jobs in the large store (the large-store targets are stated for 1,000,000).
    jobs: u64,
    /// Submits per second with [`TARGET_SUBMITTERS`] threads.
    submits: Option<Row>,
    large: LargeStore,
}

/// One line of a throughput table: `n` threads.
struct Row {
    n: usize,
    redb: Rates,
    sqlite: Rates,
}

impl Row {
    fn ratio(&self) -> f64 {
        ratio(self.redb.median(), self.sqlite.median())
    }
}

/// What the large-store measurement found.
struct LargeStore {
    open: Samples,
    lease: Samples,
    list: Samples,
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
    let settings = Settings::from_env()?;
    let root = tempfile::tempdir()?;
    let started = Instant::now();
    println!("Nexa Forge store benchmark: RedbStore (group commit) against SQLite");
    println!(
        "  jobs in the large store: {} (NEXA_BENCH_JOBS)",
        fmt_count(settings.jobs)
    );
    println!(
        "  each throughput figure: {} (NEXA_BENCH_SECONDS) as the median of {} runs (NEXA_BENCH_ROUNDS)",
        fmt_duration(settings.seconds),
        settings.rounds,
    );
    println!(
        "  of {} each, redb and SQLite alternating, each run on a fresh file; [slowest-fastest run]",
        fmt_duration(settings.run_length())
    );
    println!(
        "  data folder: {} ({} CPUs)",
        root.path().display(),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    describe_records()?;
    let fsync = fsync_latency(root.path(), FSYNCS)?;
    println!(
        "  fsync latency of that disk (4 KiB write + sync_data, {} samples): median {}, min {}, max {}",
        fsync.len(),
        fmt_duration(fsync.median()),
        fmt_duration(fsync.min()),
        fmt_duration(fsync.max())
    );
    println!(
        "  so one writer that fsyncs once per commit makes at most about {} commits/s",
        fmt_count((1.0 / fsync.median().as_secs_f64().max(1e-9)).round() as u64)
    );

    let submits = bench_submits(&settings, root.path())?
        .into_iter()
        .find(|row| row.n == TARGET_SUBMITTERS);
    bench_cycles(&settings, root.path())?;
    let large = bench_large_store(&settings, root.path(), fsync.median())?;
    let targets = Targets {
        jobs: settings.jobs,
        submits,
        large,
    };
    print_targets(&targets);
    println!("\ntotal time {}", fmt_duration(started.elapsed()));
    Ok(())
}

/// Prints how big the job records are: both stores keep the same bincode bytes.
fn describe_records() -> BenchResult<()> {
    let mut sizes = Vec::new();
    for n in 0..3 {
        let job = Job::new(JobId(n + 1), sample_spec(format!("size-{n}"), n), true, NOW);
        sizes.push(job_record(&job)?.len());
    }
    let (min, max) = (
        sizes.iter().min().copied().unwrap_or(0),
        sizes.iter().max().copied().unwrap_or(0),
    );
    println!(
        "  job record: {min} to {max} bytes of bincode when submitted (the same bytes in both stores)"
    );
    Ok(())
}

fn open_store(path: &Path) -> BenchResult<RedbStore> {
    Ok(RedbStore::open_at(path, StoreConfig::default(), NOW)?)
}

/// A store file in a new folder under `root`; the folder goes when the guard is dropped.
fn fresh_file(root: &Path, name: &str) -> BenchResult<(tempfile::TempDir, PathBuf)> {
    let dir = tempfile::tempdir_in(root)?;
    let path = dir.path().join(name);
    Ok((dir, path))
}

fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 { a / b } else { f64::INFINITY }
}

/// Measures `n` threads with `redb` and then `sqlite`, `rounds` times over, so that both meet
/// the disk in the same states, and prints the row.
fn side_by_side(
    n: usize,
    rounds: usize,
    mut redb: impl FnMut() -> BenchResult<Throughput>,
    mut sqlite: impl FnMut() -> BenchResult<Throughput>,
) -> BenchResult<Row> {
    let mut row = Row {
        n,
        redb: Rates::default(),
        sqlite: Rates::default(),
    };
    for _ in 0..rounds {
        row.redb.push(redb()?);
        row.sqlite.push(sqlite()?);
    }
    println!(
        "   {n:>10}  {:>27}  {:>27}  {:>10.2}x",
        row.redb.to_string(),
        row.sqlite.to_string(),
        row.ratio()
    );
    Ok(row)
}

fn print_header(what: &str) {
    println!(
        "   {what:>10}  {:>27}  {:>27}  {:>11}",
        "redb", "SQLite", "redb/SQLite"
    );
}

// ---- 1. durable submits ----

fn bench_submits(settings: &Settings, root: &Path) -> BenchResult<Vec<Row>> {
    println!("\n1. Durable submits per second (each returns once its commit is on disk)");
    println!("   redb: RedbStore::submit; SQLite: WAL, synchronous=FULL, one BEGIN IMMEDIATE");
    println!("   transaction per submit, one connection per thread, busy_timeout 60 s");
    print_header("submitters");
    let rows = SUBMITTERS
        .into_iter()
        .map(|threads| {
            side_by_side(
                threads,
                settings.rounds,
                || redb_submits(threads, settings.run_length(), root),
                || sqlite_submits(threads, settings.run_length(), root),
            )
        })
        .collect::<BenchResult<Vec<_>>>()?;
    // SQLite has no group commit: its writers take turns on one lock, and a connection that
    // finds it taken sleeps in its busy handler, so SQLite may do best with few threads.
    // Compare with its best too, not only with it at the same thread count.
    let best = rows
        .iter()
        .max_by(|a, b| a.sqlite.median().total_cmp(&b.sqlite.median()));
    if let (Some(best), Some(last)) = (best, rows.last()) {
        println!(
            "   SQLite's best median was {} with {} submitter(s); redb with {} is {:.2}x that",
            fmt_rate(best.sqlite.median()),
            best.n,
            last.n,
            ratio(last.redb.median(), best.sqlite.median())
        );
    }
    Ok(rows)
}

fn redb_submits(threads: usize, duration: Duration, root: &Path) -> BenchResult<Throughput> {
    let (_dir, path) = fresh_file(root, "nexa_forge.db")?;
    let store = open_store(&path)?;
    run_for(threads, duration, |thread| {
        let store = &store;
        let mut n = 0_u64;
        Ok(move || {
            store.submit(sample_spec(format!("submit-{thread}-{n}"), n), NOW)?;
            n += 1;
            Ok(true)
        })
    })
}

fn sqlite_submits(threads: usize, duration: Duration, root: &Path) -> BenchResult<Throughput> {
    let (_dir, path) = fresh_file(root, "jobs.sqlite")?;
    drop(SqliteJobs::create(&path)?);
    run_for(threads, duration, |thread| {
        let mut db = SqliteJobs::connect(&path)?;
        let mut n = 0_u64;
        Ok(move || {
            db.submit(sample_spec(format!("submit-{thread}-{n}"), n))?;
            n += 1;
            Ok(true)
        })
    })
}

// ---- 2. lease cycles ----

fn bench_cycles(settings: &Settings, root: &Path) -> BenchResult<()> {
    let queued = settings.jobs.min(CYCLE_QUEUE);
    println!("\n2. Lease → start → complete cycles per second (three durable commits per cycle)");
    println!(
        "   {} jobs queued first; each worker registered under its own id",
        fmt_count(queued)
    );
    print_header("workers");
    for workers in WORKERS {
        side_by_side(
            workers,
            settings.rounds,
            || redb_cycles(workers, settings.run_length(), queued, root),
            || sqlite_cycles(workers, settings.run_length(), queued, root),
        )?;
    }
    Ok(())
}

fn redb_cycles(
    workers: usize,
    duration: Duration,
    queued: u64,
    root: &Path,
) -> BenchResult<Throughput> {
    let (_dir, path) = fresh_file(root, "nexa_forge.db")?;
    let store = open_store(&path)?;
    load_redb(&store, queued, "cycle", false)?;
    lease_cycles(&store, workers, duration)
}

fn sqlite_cycles(
    workers: usize,
    duration: Duration,
    queued: u64,
    root: &Path,
) -> BenchResult<Throughput> {
    let (_dir, path) = fresh_file(root, "jobs.sqlite")?;
    SqliteJobs::create(&path)?.load((0..queued).map(|n| sample_spec(format!("cycle-{n}"), n)))?;
    run_for(workers, duration, |w| {
        let mut db = SqliteJobs::connect(&path)?;
        let worker = WorkerId::new(format!("bench-worker-{w}"))?;
        Ok(move || {
            let Some(lease) = db.lease_next(&worker)? else {
                return Ok(false);
            };
            db.start(lease)?;
            db.complete(lease)?;
            Ok(true)
        })
    })
}

/// Queues `jobs` jobs with `submit_batch`, [`LOAD_BATCH`] at a time, and returns how long it
/// took; with `progress`, prints a line every tenth.
fn load_redb(store: &RedbStore, jobs: u64, prefix: &str, progress: bool) -> BenchResult<Duration> {
    let start = Instant::now();
    let step = (jobs / 10).max(1);
    let mut next_report = step;
    let mut done = 0;
    while done < jobs {
        let batch = (jobs - done).min(LOAD_BATCH);
        let specs = (done..done + batch)
            .map(|n| sample_spec(format!("{prefix}-{n}"), n))
            .collect();
        let submitted = store.submit_batch(specs, NOW)?;
        if submitted.iter().any(|s| !s.created) {
            return Err(format!("{prefix}: a fresh store reported a duplicate submission").into());
        }
        done += batch;
        if progress && done >= next_report {
            println!(
                "     loaded {:>9} / {} jobs ({})",
                fmt_count(done),
                fmt_count(jobs),
                fmt_duration(start.elapsed())
            );
            next_report += step;
        }
    }
    Ok(start.elapsed())
}

// ---- 3. a large store ----

fn bench_large_store(settings: &Settings, root: &Path, fsync: Duration) -> BenchResult<LargeStore> {
    let jobs = settings.jobs;
    println!(
        "\n3. A store of {} queued jobs (page cache warm: the files were just written)",
        fmt_count(jobs)
    );
    let (dir, path) = fresh_file(root, "nexa_forge.db")?;
    println!(
        "   redb: loading with submit_batch, {} jobs per batch",
        fmt_count(LOAD_BATCH)
    );
    let store = open_store(&path)?;
    let load = load_redb(&store, jobs, "large", true)?;
    drop(store);
    println!(
        "   redb: loaded in {} ({}), file {} MiB",
        fmt_duration(load),
        fmt_rate(jobs as f64 / load.as_secs_f64().max(1e-9)),
        std::fs::metadata(&path)?.len() >> 20
    );

    let open = time_opens(&path)?;
    print_samples("redb: open (RedbStore::open_at)", &open);
    let store = open_store(&path)?;
    let lease = time_redb_leases(&store)?;
    print_samples("redb: lease_next (durable commit)", &lease);
    println!(
        "   (each lease commits durably; this disk's fsync alone takes {} at the median)",
        fmt_duration(fsync)
    );
    let list = time_redb_lists(&store)?;
    print_samples(&format!("redb: list first {PAGE} queued"), &list);
    drop(store);
    drop(dir);

    sqlite_large_store(jobs, root)?;
    Ok(LargeStore { open, lease, list })
}

/// Opens the closed store [`OPENS`] times, closing it between opens (untimed).
fn time_opens(path: &Path) -> BenchResult<Samples> {
    let mut samples = Samples::default();
    for _ in 0..OPENS {
        let (store, took) = timed(|| open_store(path));
        samples.push(took);
        drop(store?);
    }
    Ok(samples)
}

fn time_redb_leases(store: &RedbStore) -> BenchResult<Samples> {
    let worker = store
        .register_worker(worker_info("bench-large")?, NOW)?
        .info
        .id;
    let request = LeaseRequest {
        worker,
        free_gpus: vec![],
    };
    let mut samples = Samples::default();
    for _ in 0..LEASES {
        let (lease, took) = timed(|| store.lease_next(request.clone(), NOW));
        if lease?.is_none() {
            return Err("the large store ran out of queued jobs while leasing".into());
        }
        samples.push(took);
    }
    Ok(samples)
}

fn time_redb_lists(store: &RedbStore) -> BenchResult<Samples> {
    let query = ListQuery {
        state: Some(JobState::Queued),
        limit: PAGE,
        ..ListQuery::default()
    };
    let mut samples = Samples::default();
    for _ in 0..LISTS {
        let (page, took) = timed(|| store.list(query.clone()));
        if page?.jobs.len() != PAGE {
            return Err("the first page of queued jobs is not full".into());
        }
        samples.push(took);
    }
    Ok(samples)
}

/// The same large store in SQLite, for reference: loaded in one transaction, with the queue
/// index (state, priority, id) and the state index (state, id).
fn sqlite_large_store(jobs: u64, root: &Path) -> BenchResult<()> {
    let (_dir, path) = fresh_file(root, "jobs.sqlite")?;
    let mut db = SqliteJobs::create(&path)?;
    let (loaded, took) = timed(|| db.load((0..jobs).map(|n| sample_spec(format!("large-{n}"), n))));
    loaded?;
    println!(
        "   SQLite: loaded in one transaction in {} ({}), file {} MiB",
        fmt_duration(took),
        fmt_rate(jobs as f64 / took.as_secs_f64().max(1e-9)),
        std::fs::metadata(&path)?.len() >> 20
    );
    for plan in db.query_plans()? {
        println!("   SQLite plan, {plan}");
    }

    let worker = WorkerId::new("bench-large")?;
    let mut lease = Samples::default();
    for _ in 0..LEASES {
        let (leased, took) = timed(|| db.lease_next(&worker));
        if leased?.is_none() {
            return Err("the large SQLite store ran out of queued jobs while leasing".into());
        }
        lease.push(took);
    }
    print_samples("SQLite: lease next (durable commit)", &lease);

    // `PAGE + 1` rows, as the store reads one more than the page to know whether another
    // page follows.
    let mut list = Samples::default();
    for _ in 0..LISTS {
        let (page, took) = timed(|| db.list_by_state(JobState::Queued, PAGE + 1));
        if page?.len() != PAGE + 1 {
            return Err("the first SQLite page of queued jobs is not full".into());
        }
        list.push(took);
    }
    print_samples(&format!("SQLite: list first {PAGE} queued"), &list);
    Ok(())
}

/// One line: the median, p99, fastest and slowest of `samples`.
fn print_samples(what: &str, samples: &Samples) {
    println!(
        "   {what:<38} median {:>9}  p99 {:>9}  min {:>9}  max {:>9}  ({} runs)",
        fmt_duration(samples.median()),
        fmt_duration(samples.p99()),
        fmt_duration(samples.min()),
        fmt_duration(samples.max()),
        samples.len()
    );
}

// ---- summary ----

fn verdict(met: bool) -> &'static str {
    if met { "met" } else { "MISSED" }
}

fn print_targets(t: &Targets) {
    println!("\nTargets");
    println!("   {:<52} {:<28} verdict", "target", "measured");
    match &t.submits {
        Some(row) => {
            let rate = row.redb.median();
            println!(
                "   {:<52} {:<28} {}",
                format!("{TARGET_SUBMITTERS} submitters: >= 10,000 durable submits/s"),
                fmt_rate(rate),
                verdict(rate >= 10_000.0)
            );
            println!(
                "   {:<52} {:<28} {}",
                format!("{TARGET_SUBMITTERS} submitters: redb >= 5x SQLite"),
                format!("{:.2}x", row.ratio()),
                verdict(row.ratio() >= 5.0)
            );
        }
        None => println!("   {TARGET_SUBMITTERS} submitters: not measured"),
    }
    let scale = if t.jobs == Settings::DEFAULT_JOBS {
        "1M jobs".to_owned()
    } else {
        format!("{} jobs*", fmt_count(t.jobs))
    };
    let latency = |s: &Samples| {
        format!(
            "median {} (p99 {})",
            fmt_duration(s.median()),
            fmt_duration(s.p99())
        )
    };
    let ms = Duration::from_millis(1);
    println!(
        "   {:<52} {:<28} {}",
        format!("{scale}: lease_next < 1 ms (median)"),
        latency(&t.large.lease),
        verdict(t.large.lease.median() < ms)
    );
    println!(
        "   {:<52} {:<28} {}",
        format!("{scale}: list first page < 1 ms (median)"),
        latency(&t.large.list),
        verdict(t.large.list.median() < ms)
    );
    println!(
        "   {:<52} {:<28} {}",
        format!("{scale}: open < 2 s (median of {OPENS})"),
        format!("median {}", fmt_duration(t.large.open.median())),
        verdict(t.large.open.median() < Duration::from_secs(2))
    );
    if t.jobs != Settings::DEFAULT_JOBS {
        println!(
            "   * a reduced run ({} jobs, not 1,000,000): these rows say nothing about the 1M targets",
            fmt_count(t.jobs)
        );
    }
}
