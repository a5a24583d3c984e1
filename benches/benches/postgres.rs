//! The PostgreSQL store against the redb store, doing the same durable work in one run:
//!
//! ```text
//! NEXA_POSTGRES_FSYNC=on scripts/with-postgres cargo bench -p nexa-benches --bench postgres
//! NEXA_BENCH_DATABASE_URL=postgres://nexa@db/nexa cargo bench -p nexa-benches --bench postgres
//! ```
//!
//! 1. durable submits per second with 1, 8 and 64 submitting threads;
//! 2. lease → start → complete cycles per second with 1 and 8 workers.
//!
//! Each run gets a fresh store: a new redb file, or a new schema in the database. A commit is
//! durable on both (redb fsyncs; PostgreSQL runs with the server's `fsync` and
//! `synchronous_commit`, which the report prints: `scripts/with-postgres` turns fsync on when
//! `NEXA_POSTGRES_FSYNC=on`). The target: 5,000 submits/s with 64 submitters.

use std::path::Path;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use nexa_benches::{
    BenchResult, NOW, Rates, Settings, Throughput, fmt_duration, fmt_rate, lease_cycles, run_for,
    sample_spec,
};
use nexa_runtime::{Store, StoreConfig};
use nexa_storage::{PgStore, RedbStore};

const SUBMITTERS: [usize; 3] = [1, 8, 64];
const WORKERS: [usize; 2] = [1, 8];
/// Jobs queued before a lease-cycle run.
const CYCLE_QUEUE: u64 = 20_000;
/// The submits per second the PostgreSQL store should reach with 64 submitters.
const TARGET: f64 = 5_000.0;

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            println!("\nbenchmark failed: {e}");
            ExitCode::FAILURE
        }
    }
}

fn database_url() -> BenchResult<String> {
    std::env::var("NEXA_BENCH_DATABASE_URL")
        .or_else(|_| std::env::var("NEXA_TEST_DATABASE_URL"))
        .map_err(|_| {
            "set NEXA_BENCH_DATABASE_URL, or run under scripts/with-postgres (NEXA_POSTGRES_FSYNC=on)"
                .into()
        })
}

fn run() -> BenchResult<()> {
    let settings = Settings::from_env()?;
    let base = database_url()?;
    let root = tempfile::tempdir()?;
    let started = Instant::now();
    let mut admin = postgres::Client::connect(&base, postgres::NoTls)?;
    let show = |admin: &mut postgres::Client, what: &str| -> BenchResult<String> {
        Ok(admin.query_one(&format!("show {what}"), &[])?.get(0))
    };
    println!(
        "Nexa Forge PostgreSQL store benchmark: PgStore against RedbStore (both group commit)"
    );
    println!(
        "  PostgreSQL: {} (fsync {}, synchronous_commit {}); redb in {}",
        show(&mut admin, "server_version")?,
        show(&mut admin, "fsync")?,
        show(&mut admin, "synchronous_commit")?,
        root.path().display()
    );
    println!(
        "  each figure: the median of {} runs of {}, PostgreSQL and redb alternating; {} CPUs",
        settings.rounds,
        fmt_duration(settings.run_length()),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );

    println!("\n1. Durable submits per second");
    println!(
        "   {:>10}  {:>27}  {:>27}  {:>8}",
        "submitters", "PostgreSQL", "redb", "pg/redb"
    );
    let mut at_target = 0.0;
    for threads in SUBMITTERS {
        let (pg, redb) = side_by_side(
            settings.rounds,
            || submits(&open_pg(&base)?, threads, settings.run_length()),
            || submits(&open_redb(root.path())?, threads, settings.run_length()),
        )?;
        print_row(threads, &pg, &redb);
        if threads == 64 {
            at_target = pg.median();
        }
    }

    println!("\n2. Lease → start → complete cycles per second ({CYCLE_QUEUE} jobs queued first)");
    println!(
        "   {:>10}  {:>27}  {:>27}  {:>8}",
        "workers", "PostgreSQL", "redb", "pg/redb"
    );
    for workers in WORKERS {
        let (pg, redb) = side_by_side(
            settings.rounds,
            || cycles(&open_pg(&base)?, workers, settings.run_length()),
            || cycles(&open_redb(root.path())?, workers, settings.run_length()),
        )?;
        print_row(workers, &pg, &redb);
    }

    println!(
        "\ntarget: {} durable submits/s with 64 submitters on PostgreSQL: {} ({})",
        fmt_rate(TARGET),
        fmt_rate(at_target),
        if at_target >= TARGET { "met" } else { "MISSED" }
    );
    println!("total time {}", fmt_duration(started.elapsed()));
    Ok(())
}

fn open_pg(base: &str) -> BenchResult<PgStore> {
    Ok(PgStore::open_at(
        &nexa_benches::fresh_schema(base)?,
        StoreConfig::default(),
        NOW,
    )?)
}

/// A redb store in a new folder of `root` (removed with it, at the end).
fn open_redb(root: &Path) -> BenchResult<RedbStore> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let run = NEXT.fetch_add(1, Ordering::Relaxed);
    let path = root.join(format!("run-{run}")).join("nexa_forge.db");
    Ok(RedbStore::open_at(path, StoreConfig::default(), NOW)?)
}

fn side_by_side(
    rounds: usize,
    mut pg: impl FnMut() -> BenchResult<Throughput>,
    mut redb: impl FnMut() -> BenchResult<Throughput>,
) -> BenchResult<(Rates, Rates)> {
    let (mut a, mut b) = (Rates::default(), Rates::default());
    for _ in 0..rounds {
        a.push(pg()?);
        b.push(redb()?);
    }
    Ok((a, b))
}

fn print_row(n: usize, pg: &Rates, redb: &Rates) {
    println!(
        "   {n:>10}  {:>27}  {:>27}  {:>7.2}x",
        pg.to_string(),
        redb.to_string(),
        pg.median() / redb.median().max(1e-9)
    );
}

fn submits(store: &impl Store, threads: usize, duration: Duration) -> BenchResult<Throughput> {
    run_for(threads, duration, |thread| {
        let mut n = 0_u64;
        Ok(move || {
            store.submit(sample_spec(format!("submit-{thread}-{n}"), n), NOW)?;
            n += 1;
            Ok(true)
        })
    })
}

fn cycles(store: &impl Store, workers: usize, duration: Duration) -> BenchResult<Throughput> {
    let specs: Vec<_> = (0..CYCLE_QUEUE)
        .map(|n| sample_spec(format!("cycle-{n}"), n))
        .collect();
    for batch in specs.chunks(5_000) {
        store.submit_batch(batch.to_vec(), NOW)?;
    }
    lease_cycles(store, workers, duration)
}
