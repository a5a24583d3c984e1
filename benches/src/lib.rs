//! What the Nexa Forge benchmarks share: settings read from the environment, a small timing
//! helper, the CPU time of the process and its threads, the fsync latency of the disk under
//! test, the job specs they submit, and the SQLite baseline the store is measured against.
//!
//! Benchmarks are binaries run by `cargo bench` that print figures and ratios measured in the
//! same run; nothing here fails on a timing. It deliberately holds no measurement itself: each
//! bench in `benches/` decides what to measure and how to report it.
//!
//! ```
//! use std::time::Duration;
//!
//! use nexa_benches::{Samples, fmt_duration, timed};
//!
//! let mut samples = Samples::default();
//! for _ in 0..10 {
//!     let ((), took) = timed(|| std::thread::sleep(Duration::from_micros(50)));
//!     samples.push(took);
//! }
//! assert!(samples.median() >= Duration::from_micros(50));
//! println!("median {}", fmt_duration(samples.median()));
//! ```

pub use cpu::{ThreadCpu, machine_cpu_time, process_cpu_time, thread_cpu_times};
pub use disk::fsync_latency;
pub use settings::{Settings, env_count, env_seconds};
pub use sqlite::{SqliteJobs, SqliteLease};
pub use timing::{Rates, Samples, Throughput, fmt_count, fmt_duration, fmt_rate, run_for, timed};
pub use workload::{NOW, job_record, lease_cycles, sample_spec, worker_info};

/// What a benchmark step that cannot go on reports; `anyhow`-like, without the dependency.
pub type BenchError = Box<dyn std::error::Error + Send + Sync>;

/// The result of a benchmark step.
pub type BenchResult<T> = Result<T, BenchError>;

/// A fresh schema on the PostgreSQL server at `base`, as the URL of a store kept there.
pub fn fresh_schema(base: &str) -> BenchResult<String> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let schema = format!(
        "nexa_bench_{}_{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    );
    let mut admin = postgres::Client::connect(base, postgres::NoTls)?;
    admin.batch_execute(&format!("create schema {schema}"))?;
    Ok(nexa_storage::in_schema(base, &schema))
}

mod settings {
    //! Scale settings, from environment variables so that a quick run needs no edit.

    use std::time::Duration;

    use crate::BenchResult;

    /// How big and how long the benchmark runs.
    #[derive(Clone, Copy, Debug, PartialEq)]
    pub struct Settings {
        /// Jobs in the large store (`NEXA_BENCH_JOBS`, default 1,000,000).
        pub jobs: u64,
        /// Time spent on each throughput figure (`NEXA_BENCH_SECONDS`, default 3), split
        /// evenly over its runs.
        pub seconds: Duration,
        /// Runs per throughput figure, which is their median (`NEXA_BENCH_ROUNDS`, default 3).
        pub rounds: usize,
    }

    impl Settings {
        /// The jobs the large-store targets are stated for.
        pub const DEFAULT_JOBS: u64 = 1_000_000;
        /// The default time spent on one throughput figure, in seconds.
        pub const DEFAULT_SECONDS: f64 = 3.0;
        /// The default number of runs per throughput figure.
        pub const DEFAULT_ROUNDS: usize = 3;

        /// Reads `NEXA_BENCH_JOBS`, `NEXA_BENCH_SECONDS` and `NEXA_BENCH_ROUNDS`, falling
        /// back to the defaults for those not set.
        pub fn from_env() -> BenchResult<Self> {
            let jobs = parse_var("NEXA_BENCH_JOBS", Self::DEFAULT_JOBS, |v| {
                v.replace('_', "").parse().ok().filter(|&n| n >= 1_000)
            })
            .map_err(|v| format!("{v}: expected a whole number of jobs, at least 1000"))?;
            let seconds = parse_var("NEXA_BENCH_SECONDS", Self::DEFAULT_SECONDS, |v| {
                v.parse()
                    .ok()
                    .filter(|s: &f64| s.is_finite() && (0.1..=600.0).contains(s))
            })
            .map_err(|v| format!("{v}: expected seconds from 0.1 to 600"))?;
            let rounds = parse_var("NEXA_BENCH_ROUNDS", Self::DEFAULT_ROUNDS, |v| {
                v.parse().ok().filter(|n| (1..=25).contains(n))
            })
            .map_err(|v| format!("{v}: expected a whole number of runs from 1 to 25"))?;
            Ok(Self {
                jobs,
                seconds: Duration::from_secs_f64(seconds),
                rounds,
            })
        }

        /// The length of one throughput run.
        pub fn run_length(&self) -> Duration {
            self.seconds / u32::try_from(self.rounds).unwrap_or(u32::MAX).max(1)
        }
    }

    /// A whole number from the variable `name` (`_` may separate thousands), which must lie in
    /// `range`; `default` when unset.
    pub fn env_count(
        name: &str,
        default: u64,
        range: std::ops::RangeInclusive<u64>,
    ) -> BenchResult<u64> {
        parse_var(name, default, |v| {
            v.replace('_', "")
                .parse()
                .ok()
                .filter(|n| range.contains(n))
        })
        .map_err(|v| {
            format!(
                "{v}: expected a whole number from {} to {}",
                crate::fmt_count(*range.start()),
                crate::fmt_count(*range.end())
            )
            .into()
        })
    }

    /// A number of seconds from the variable `name`, which must lie in `range`; `default`
    /// when unset.
    pub fn env_seconds(
        name: &str,
        default: f64,
        range: std::ops::RangeInclusive<f64>,
    ) -> BenchResult<Duration> {
        let seconds = parse_var(name, default, |v| {
            v.parse()
                .ok()
                .filter(|s: &f64| s.is_finite() && range.contains(s))
        })
        .map_err(|v| {
            format!(
                "{v}: expected seconds from {} to {}",
                range.start(),
                range.end()
            )
        })?;
        Ok(Duration::from_secs_f64(seconds))
    }

    /// The variable `name` read by `parse`, `default` when unset; on an unusable value,
    /// `NAME="value"` for the error message.
    fn parse_var<T>(
        name: &str,
        default: T,
        parse: impl FnOnce(&str) -> Option<T>,
    ) -> Result<T, String> {
        match std::env::var(name) {
            Err(std::env::VarError::NotPresent) => Ok(default),
            Err(std::env::VarError::NotUnicode(v)) => Err(format!("{name}={v:?}")),
            Ok(v) => parse(v.trim()).ok_or_else(|| format!("{name}={v:?}")),
        }
    }
}

mod timing {
    //! Timing one call, collecting latencies, and running a loop on many threads for a while.

    use std::sync::Barrier;
    use std::time::{Duration, Instant};

    use crate::BenchResult;

    /// Runs `f` and returns its result with how long it took.
    pub fn timed<T>(f: impl FnOnce() -> T) -> (T, Duration) {
        let start = Instant::now();
        let out = f();
        (out, start.elapsed())
    }

    /// Latencies of one operation.
    #[derive(Clone, Debug, Default)]
    pub struct Samples {
        sorted: Vec<Duration>,
    }

    /// Latencies collected first and sorted once, which keeps a long timing loop free of
    /// the sorted insertion [`Samples::push`] does.
    impl FromIterator<Duration> for Samples {
        fn from_iter<I: IntoIterator<Item = Duration>>(iter: I) -> Self {
            let mut sorted: Vec<Duration> = iter.into_iter().collect();
            sorted.sort_unstable();
            Self { sorted }
        }
    }

    impl Samples {
        /// Adds one latency.
        pub fn push(&mut self, d: Duration) {
            let at = self.sorted.partition_point(|&x| x <= d);
            self.sorted.insert(at, d);
        }

        /// How many were taken.
        pub fn len(&self) -> usize {
            self.sorted.len()
        }

        /// Whether none was taken.
        pub fn is_empty(&self) -> bool {
            self.sorted.is_empty()
        }

        /// The `p`-th percentile (0 to 100) by nearest rank; zero when empty.
        pub fn percentile(&self, p: f64) -> Duration {
            if self.sorted.is_empty() {
                return Duration::ZERO;
            }
            let rank = (p / 100.0 * self.sorted.len() as f64).ceil() as usize;
            self.sorted[rank.clamp(1, self.sorted.len()) - 1]
        }

        /// The median.
        pub fn median(&self) -> Duration {
            self.percentile(50.0)
        }

        /// The 99th percentile.
        pub fn p99(&self) -> Duration {
            self.percentile(99.0)
        }

        /// The fastest.
        pub fn min(&self) -> Duration {
            self.sorted.first().copied().unwrap_or_default()
        }

        /// The slowest.
        pub fn max(&self) -> Duration {
            self.sorted.last().copied().unwrap_or_default()
        }
    }

    /// Operations done in a span of time.
    #[derive(Clone, Copy, Debug, PartialEq)]
    pub struct Throughput {
        /// Operations completed.
        pub ops: u64,
        /// From the first thread's start to the last thread's end.
        pub elapsed: Duration,
        /// Some thread ran out of work before the time was up (the run was cut short).
        pub ran_dry: bool,
    }

    impl Throughput {
        /// Operations per second.
        pub fn per_second(&self) -> f64 {
            self.ops as f64 / self.elapsed.as_secs_f64().max(1e-9)
        }
    }

    /// The throughputs of repeated runs of one measurement.
    #[derive(Clone, Debug, Default)]
    pub struct Rates {
        /// Operations per second of each run, in ascending order.
        sorted: Vec<f64>,
        ran_dry: bool,
    }

    impl Rates {
        /// Adds one run.
        pub fn push(&mut self, run: Throughput) {
            let rate = run.per_second();
            let at = self.sorted.partition_point(|&x| x <= rate);
            self.sorted.insert(at, rate);
            self.ran_dry |= run.ran_dry;
        }

        /// The median rate (the lower middle one of an even count); zero when empty.
        pub fn median(&self) -> f64 {
            match self.sorted.len() {
                0 => 0.0,
                n => self.sorted[(n - 1) / 2],
            }
        }

        /// The slowest run's rate.
        pub fn min(&self) -> f64 {
            self.sorted.first().copied().unwrap_or(0.0)
        }

        /// The fastest run's rate.
        pub fn max(&self) -> f64 {
            self.sorted.last().copied().unwrap_or(0.0)
        }

        /// Some run ran out of work before its time was up.
        pub fn ran_dry(&self) -> bool {
            self.ran_dry
        }
    }

    impl std::fmt::Display for Rates {
        /// `12,345/s [11,002-13,410]`: the median, then the range when there are several runs.
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "{}", fmt_rate(self.median()))?;
            if self.sorted.len() > 1 {
                let round = |x: f64| fmt_count(x.round() as u64);
                write!(f, " [{}-{}]", round(self.min()), round(self.max()))?;
            }
            if self.ran_dry {
                f.write_str(" (ran dry)")?;
            }
            Ok(())
        }
    }

    struct ThreadRun {
        ops: u64,
        start: Instant,
        end: Instant,
        ran_dry: bool,
    }

    /// Runs `threads` threads for about `duration`. Each thread calls `setup(index)` once,
    /// outside the timing, to get its operation; all then start together and call the
    /// operation until the time is up or it returns `false` (no more work). An operation in
    /// flight when the time runs out is finished and counted, and the elapsed time covers it.
    pub fn run_for<S, W>(threads: usize, duration: Duration, setup: S) -> BenchResult<Throughput>
    where
        S: Fn(usize) -> BenchResult<W> + Sync,
        W: FnMut() -> BenchResult<bool>,
    {
        let barrier = Barrier::new(threads);
        let runs: Vec<BenchResult<ThreadRun>> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..threads)
                .map(|index| {
                    let (setup, barrier) = (&setup, &barrier);
                    scope.spawn(move || {
                        let op = setup(index);
                        // Wait even when the setup failed, or the other threads would wait
                        // forever.
                        barrier.wait();
                        let mut op = op?;
                        let start = Instant::now();
                        let deadline = start + duration;
                        let (mut ops, mut ran_dry) = (0, false);
                        while Instant::now() < deadline {
                            if !op()? {
                                ran_dry = true;
                                break;
                            }
                            ops += 1;
                        }
                        Ok(ThreadRun {
                            ops,
                            start,
                            end: Instant::now(),
                            ran_dry,
                        })
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err("a benchmark thread panicked".into()))
                })
                .collect()
        });
        let runs = runs.into_iter().collect::<BenchResult<Vec<_>>>()?;
        let (Some(start), Some(end)) = (
            runs.iter().map(|r| r.start).min(),
            runs.iter().map(|r| r.end).max(),
        ) else {
            return Err("run_for needs at least one thread".into());
        };
        Ok(Throughput {
            ops: runs.iter().map(|r| r.ops).sum(),
            elapsed: end - start,
            ran_dry: runs.iter().any(|r| r.ran_dry),
        })
    }

    /// A duration for people: `840 ns`, `412 µs`, `1.23 ms`, `2.41 s`.
    pub fn fmt_duration(d: Duration) -> String {
        let ns = d.as_nanos();
        if ns < 1_000 {
            format!("{ns} ns")
        } else if ns < 1_000_000 {
            format!("{:.0} µs", ns as f64 / 1e3)
        } else if ns < 1_000_000_000 {
            format!("{:.2} ms", ns as f64 / 1e6)
        } else {
            format!("{:.2} s", ns as f64 / 1e9)
        }
    }

    /// A count with thousands separators: `1,000,000`.
    pub fn fmt_count(n: u64) -> String {
        nexa_runtime::thousands(n)
    }

    /// A rate per second, rounded to a whole number: `12,345/s`.
    pub fn fmt_rate(per_second: f64) -> String {
        format!("{}/s", fmt_count(per_second.round() as u64))
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn percentiles_use_the_nearest_rank() {
            let mut s = Samples::default();
            for ms in (1..=100).rev() {
                s.push(Duration::from_millis(ms));
            }
            assert_eq!(s.median(), Duration::from_millis(50));
            assert_eq!(s.p99(), Duration::from_millis(99));
            assert_eq!(s.min(), Duration::from_millis(1));
            assert_eq!(s.max(), Duration::from_millis(100));
            assert_eq!(Samples::default().median(), Duration::ZERO);
        }

        #[test]
        fn samples_collected_from_an_iterator_are_sorted() {
            let s: Samples = [3, 1, 2].into_iter().map(Duration::from_millis).collect();
            assert_eq!(s.min(), Duration::from_millis(1));
            assert_eq!(s.median(), Duration::from_millis(2));
            assert_eq!(s.max(), Duration::from_millis(3));
            assert_eq!(s.len(), 3);
        }

        #[test]
        fn rates_report_the_median_and_range() {
            let mut r = Rates::default();
            for ops in [300, 100, 200] {
                r.push(Throughput {
                    ops,
                    elapsed: Duration::from_secs(1),
                    ran_dry: false,
                });
            }
            assert_eq!(r.median(), 200.0);
            assert_eq!(r.to_string(), "200/s [100-300]");
        }

        #[test]
        fn counts_get_separators() {
            assert_eq!(fmt_count(0), "0");
            assert_eq!(fmt_count(999), "999");
            assert_eq!(fmt_count(1_000), "1,000");
            assert_eq!(fmt_count(1_234_567), "1,234,567");
        }

        #[test]
        fn run_for_counts_every_thread_and_stops_when_work_runs_out() {
            let run = run_for(3, Duration::from_secs(5), |_| {
                let mut left = 10;
                Ok(move || {
                    left -= 1;
                    Ok(left >= 0)
                })
            })
            .unwrap();
            assert_eq!(run.ops, 30);
            assert!(run.ran_dry);
        }

        #[test]
        fn run_for_reports_a_failed_setup_without_hanging() {
            let run = run_for(4, Duration::from_millis(10), |i| {
                if i == 2 {
                    return Err("no connection".into());
                }
                Ok(|| Ok(true))
            });
            assert!(run.is_err());
        }
    }
}

mod cpu {
    //! CPU time used by this process and by each of its threads, read from `/proc` (Linux).
    //!
    //! `/proc` rather than `getrusage`: calling libc needs `unsafe`, which the workspace
    //! forbids, and `/proc` also gives each thread's time, so work can be charged to the
    //! runtime (named threads) that did it.

    use std::time::Duration;

    use crate::BenchResult;

    /// The unit of the times in `/proc/<pid>/stat`: `USER_HZ`, which the kernel fixes at 100
    /// on every architecture Rust targets on Linux.
    const USER_HZ: u64 = 100;

    /// User plus system CPU time of the whole process so far, threads that have exited
    /// included, from `/proc/self/stat` (10 ms resolution).
    pub fn process_cpu_time() -> BenchResult<Duration> {
        let stat = std::fs::read_to_string("/proc/self/stat")
            .map_err(|e| format!("cannot read /proc/self/stat (Linux only): {e}"))?;
        // The command name, in parentheses, may hold spaces: count fields after its end.
        // After it come state (field 3) … utime (14) and stime (15).
        let rest = stat
            .rsplit_once(')')
            .map(|(_, rest)| rest)
            .ok_or("/proc/self/stat has no command name")?;
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ticks = |i: usize| -> BenchResult<u64> {
            Ok(fields
                .get(i)
                .ok_or("/proc/self/stat is too short")?
                .parse()?)
        };
        let (utime, stime) = (ticks(11)?, ticks(12)?);
        Ok(Duration::from_millis((utime + stime) * 1000 / USER_HZ))
    }

    /// CPU time every process of the machine has used so far, from the first line of
    /// `/proc/stat`: user, nice, system, irq and softirq time (idle, I/O wait and time stolen
    /// by a hypervisor left out), in 10 ms ticks.
    pub fn machine_cpu_time() -> BenchResult<Duration> {
        let stat = std::fs::read_to_string("/proc/stat")
            .map_err(|e| format!("cannot read /proc/stat (Linux only): {e}"))?;
        let line = stat
            .lines()
            .find(|l| l.starts_with("cpu "))
            .ok_or("/proc/stat has no cpu line")?;
        let ticks: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .map(str::parse)
            .collect::<Result<_, _>>()?;
        // user nice system idle iowait irq softirq steal …
        let busy: u64 = [0, 1, 2, 5, 6]
            .iter()
            .map(|&i| ticks.get(i).copied().unwrap_or(0))
            .sum();
        Ok(Duration::from_millis(busy * 1000 / USER_HZ))
    }

    /// One thread's name and its CPU time so far.
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub struct ThreadCpu {
        /// The thread's id.
        pub tid: u64,
        /// Its name as the kernel keeps it (at most 15 bytes).
        pub name: String,
        /// Time it ran on a CPU, user and system together, in nanoseconds' resolution.
        pub cpu: Duration,
    }

    /// Every live thread of this process with its CPU time, from
    /// `/proc/self/task/*/schedstat`. A thread that ended is missing: compare with
    /// [`process_cpu_time`] to see whether any did.
    pub fn thread_cpu_times() -> BenchResult<Vec<ThreadCpu>> {
        let mut threads = Vec::new();
        for entry in std::fs::read_dir("/proc/self/task")? {
            let entry = entry?;
            let Some(tid) = entry.file_name().to_str().and_then(|t| t.parse().ok()) else {
                continue;
            };
            // A thread may end between listing and reading: skip it.
            let (Ok(name), Ok(schedstat)) = (
                std::fs::read_to_string(entry.path().join("comm")),
                std::fs::read_to_string(entry.path().join("schedstat")),
            ) else {
                continue;
            };
            let ns: u64 = schedstat
                .split_whitespace()
                .next()
                .ok_or("empty schedstat")?
                .parse()?;
            threads.push(ThreadCpu {
                tid,
                name: name.trim_end().to_owned(),
                cpu: Duration::from_nanos(ns),
            });
        }
        Ok(threads)
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn this_process_and_its_threads_have_used_some_cpu() {
            let mut x = 0_u64;
            for i in 0..2_000_000_u64 {
                x = x.wrapping_mul(31).wrapping_add(i);
            }
            std::hint::black_box(x);
            let threads = thread_cpu_times().unwrap();
            assert!(!threads.is_empty());
            assert!(threads.iter().any(|t| t.cpu > Duration::ZERO));
            let process = process_cpu_time().unwrap();
            assert!(process <= Duration::from_secs(24 * 3600));
            assert!(machine_cpu_time().unwrap() >= process);
        }
    }
}

mod disk {
    //! The disk's own durability cost, which bounds every durable store on it.

    use std::fs::OpenOptions;
    use std::io::{Seek, SeekFrom, Write};
    use std::path::Path;

    use crate::{BenchResult, Samples, timed};

    /// The latency of `File::sync_data` after overwriting 4 KiB of a file in `dir`, `samples`
    /// times. One writer that commits with one fsync each cannot commit faster than one per
    /// this latency.
    pub fn fsync_latency(dir: &Path, samples: usize) -> BenchResult<Samples> {
        let path = dir.join("fsync-probe");
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(&path)?;
        let block = [0x5a_u8; 4096];
        // Give the file its size first, so the timed syncs do not also record a new length.
        file.write_all(&block)?;
        file.sync_all()?;
        let mut out = Samples::default();
        for _ in 0..samples {
            file.seek(SeekFrom::Start(0))?;
            file.write_all(&block)?;
            let (synced, took) = timed(|| file.sync_data());
            synced?;
            out.push(took);
        }
        drop(file);
        std::fs::remove_file(&path)?;
        Ok(out)
    }
}

mod workload {
    //! The jobs and workers the benchmarks use.

    use std::collections::BTreeMap;

    use nexa_runtime::{
        EvaluateParams, GenerateParams, Job, JobId, JobParams, JobSpec, JobType, ParamValue,
        Timestamp, TrainParams, WorkerId, WorkerInfo,
    };

    use crate::BenchResult;

    /// The time every benchmark operation is stamped with. Stores never read a clock, and one
    /// fixed time keeps every lease live for the whole run.
    pub const NOW: Timestamp = Timestamp(1_750_000_000_000);

    /// The `n`-th benchmark job, with idempotency key `key`: a mix of train, evaluate and
    /// generate jobs with five priorities, needing no GPU, so every benchmark worker fits it.
    pub fn sample_spec(key: String, n: u64) -> JobSpec {
        let params = match n % 3 {
            0 => JobParams::Train(TrainParams {
                epochs: 3,
                hyperparameters: BTreeMap::from([
                    ("learning_rate".to_owned(), ParamValue::Float(3e-4)),
                    ("batch_size".to_owned(), ParamValue::Int(32)),
                ]),
                ..TrainParams::new(
                    format!("llama-1b-ft-{}", n % 97),
                    format!("s3://nexa-datasets/support/shard-{:05}.parquet", n % 4096),
                )
            }),
            1 => JobParams::Evaluate(EvaluateParams {
                metrics: vec!["accuracy".to_owned(), "f1".to_owned()],
                ..EvaluateParams::new(
                    format!("llama-1b-ft-{}", n % 97),
                    "s3://nexa-datasets/support/holdout.parquet".to_owned(),
                )
            }),
            _ => JobParams::Generate(GenerateParams {
                seed: Some(n),
                ..GenerateParams::new("customer-support".to_owned(), 10_000 + n % 1000)
            }),
        };
        let mut spec = JobSpec::new(params);
        spec.priority = (n % 5) as i32 * 10;
        spec.idempotency_key = Some(key);
        spec
    }

    /// Lease → start → complete cycles on `store` by `workers` threads, each registered as a
    /// worker of its own, for `duration` or until the queue is empty.
    pub fn lease_cycles(
        store: &impl nexa_runtime::Store,
        workers: usize,
        duration: std::time::Duration,
    ) -> BenchResult<crate::Throughput> {
        crate::run_for(workers, duration, |w| {
            let worker = store
                .register_worker(worker_info(&format!("bench-worker-{w}"))?, NOW)?
                .info
                .id;
            let request = nexa_runtime::LeaseRequest {
                worker,
                free_gpus: vec![],
            };
            Ok(move || {
                let Some(lease) = store.lease_next(request.clone(), NOW)? else {
                    return Ok(false);
                };
                store.start(lease.job.id, lease.epoch, NOW)?;
                let output = nexa_runtime::JobOutput::default();
                store.complete(lease.job.id, lease.epoch, output, NOW)?;
                Ok(true)
            })
        })
    }

    /// A CPU-only worker that runs every job type.
    pub fn worker_info(name: &str) -> BenchResult<WorkerInfo> {
        Ok(WorkerInfo {
            id: WorkerId::new(name)?,
            cpus: 16,
            memory_mb: 65_536,
            gpus: vec![],
            labels: BTreeMap::new(),
            job_types: JobType::ALL.into_iter().collect(),
        })
    }

    /// A new queued job as both stores keep it: the whole [`Job`] in bincode, as the redb
    /// store writes it (less its one-byte record version).
    pub fn job_record(job: &Job) -> BenchResult<Vec<u8>> {
        Ok(bincode::serde::encode_to_vec(
            job,
            bincode::config::standard(),
        )?)
    }

    /// [`job_record`] read back.
    pub(crate) fn read_job_record(bytes: &[u8]) -> BenchResult<Job> {
        let (job, _) = bincode::serde::decode_from_slice(bytes, bincode::config::standard())?;
        Ok(job)
    }

    /// A new queued job `id` for `spec`.
    pub(crate) fn new_job(id: JobId, spec: JobSpec) -> Job {
        Job::new(id, spec, true, NOW)
    }
}

mod sqlite {
    //! The baseline: the same job records and the same durable steps, in SQLite.
    //!
    //! WAL mode with `synchronous=FULL`, so a commit returns only once it is on disk, like a
    //! redb commit with `Durability::Immediate`. Every write runs in its own
    //! `BEGIN IMMEDIATE` transaction, and a connection waits for the write lock (up to
    //! [`SqliteJobs::BUSY_TIMEOUT`]) rather than failing. The record in each row is the same
    //! bincode [`Job`] the redb store keeps, moved through the same [`Job::apply`], so both
    //! sides encode, decode and write the same bytes.
    //!
    //! What it leaves out, which makes it if anything a little cheaper than the store: the
    //! worker's `last_seen` write on a lease, and the deadline index.

    use std::path::Path;
    use std::time::Duration;

    use nexa_runtime::{
        Epoch, Job, JobId, JobOutput, JobSpec, JobState, RetryPolicy, StoreConfig, Transition,
        WorkerId,
    };
    use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

    use crate::workload::{new_job, read_job_record};
    use crate::{BenchResult, NOW, job_record};

    const SCHEMA: &str = "
        CREATE TABLE IF NOT EXISTS jobs (
            id       INTEGER PRIMARY KEY,
            type     TEXT    NOT NULL,
            state    INTEGER NOT NULL,
            priority INTEGER NOT NULL,
            epoch    INTEGER,
            worker   TEXT,
            record   BLOB    NOT NULL
        );
        -- The queue: highest priority first, then submission order.
        CREATE INDEX IF NOT EXISTS jobs_queue ON jobs (state, priority DESC, id);
        CREATE TABLE IF NOT EXISTS job_states (
            state  INTEGER NOT NULL,
            job_id INTEGER NOT NULL,
            PRIMARY KEY (state, job_id)
        ) WITHOUT ROWID;
        CREATE TABLE IF NOT EXISTS idempotency (
            key    TEXT    PRIMARY KEY,
            job_id INTEGER NOT NULL
        ) WITHOUT ROWID;
        CREATE TABLE IF NOT EXISTS counters (
            name  TEXT    PRIMARY KEY,
            value INTEGER NOT NULL
        ) WITHOUT ROWID;
    ";

    const NEXT_QUEUED: &str =
        "SELECT id, record FROM jobs WHERE state = ?1 ORDER BY priority DESC, id LIMIT 1";
    const PAGE_BY_STATE: &str = "SELECT j.record FROM job_states s JOIN jobs j ON j.id = s.job_id
         WHERE s.state = ?1 ORDER BY s.job_id DESC LIMIT ?2";

    /// A job handed out by [`SqliteJobs::lease_next`].
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct SqliteLease {
        /// The job.
        pub job: JobId,
        /// Its fencing token.
        pub epoch: Epoch,
    }

    /// One connection to the baseline database.
    #[derive(Debug)]
    pub struct SqliteJobs {
        conn: Connection,
        lease_ttl: Duration,
        retry: RetryPolicy,
    }

    fn sql_id(id: JobId) -> BenchResult<i64> {
        Ok(i64::try_from(id.0)?)
    }

    fn state_code(state: JobState) -> i64 {
        i64::from(state.code())
    }

    impl SqliteJobs {
        /// How long a connection waits for another one's write lock before giving up.
        pub const BUSY_TIMEOUT: Duration = Duration::from_secs(60);

        /// Creates the database at `path` in WAL mode, with its tables, and connects to it.
        pub fn create(path: &Path) -> BenchResult<Self> {
            let jobs = Self::connect(path)?;
            let mode: String =
                jobs.conn
                    .pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))?;
            if !mode.eq_ignore_ascii_case("wal") {
                return Err(format!("SQLite refused WAL mode (journal_mode is {mode})").into());
            }
            jobs.conn.execute_batch(SCHEMA)?;
            Ok(jobs)
        }

        /// A new connection to the database [`SqliteJobs::create`] made, with
        /// `synchronous=FULL` and the busy timeout.
        pub fn connect(path: &Path) -> BenchResult<Self> {
            let conn = Connection::open(path)?;
            conn.busy_timeout(Self::BUSY_TIMEOUT)?;
            conn.pragma_update(None, "synchronous", "FULL")?;
            let config = StoreConfig::default();
            Ok(Self {
                conn,
                lease_ttl: config.lease_ttl,
                retry: config.retry,
            })
        }

        /// Submits one job in one durable transaction: the job row (and its queue index
        /// entry), its state-index row and its idempotency-key row. A key seen before returns
        /// the earlier job.
        pub fn submit(&mut self, spec: JobSpec) -> BenchResult<JobId> {
            spec.validate()?;
            let tx = self
                .conn
                .transaction_with_behavior(TransactionBehavior::Immediate)?;
            if let Some(key) = &spec.idempotency_key {
                let existing: Option<i64> = tx
                    .prepare_cached("SELECT job_id FROM idempotency WHERE key = ?1")?
                    .query_row([key], |r| r.get(0))
                    .optional()?;
                if let Some(id) = existing {
                    tx.commit()?;
                    return Ok(JobId(u64::try_from(id)?));
                }
            }
            let next: i64 = tx
                .prepare_cached("SELECT COALESCE(MAX(id), 0) + 1 FROM jobs")?
                .query_row([], |r| r.get(0))?;
            let id = JobId(u64::try_from(next)?);
            let key = spec.idempotency_key.clone();
            insert_job(&tx, &new_job(id, spec), key.as_deref())?;
            tx.commit()?;
            Ok(id)
        }

        /// Loads `specs` as queued jobs in one transaction, as fast as SQLite allows.
        pub fn load(&mut self, specs: impl IntoIterator<Item = JobSpec>) -> BenchResult<u64> {
            let tx = self
                .conn
                .transaction_with_behavior(TransactionBehavior::Immediate)?;
            let first: i64 =
                tx.query_row("SELECT COALESCE(MAX(id), 0) + 1 FROM jobs", [], |r| {
                    r.get(0)
                })?;
            let mut loaded = 0;
            for (id, spec) in (u64::try_from(first)?..).zip(specs) {
                let key = spec.idempotency_key.clone();
                insert_job(&tx, &new_job(JobId(id), spec), key.as_deref())?;
                loaded += 1;
            }
            tx.commit()?;
            Ok(loaded)
        }

        /// Leases the highest-priority queued job to `worker` in one durable transaction:
        /// the next epoch, the job moved to `assigned`, its state-index row moved.
        pub fn lease_next(&mut self, worker: &WorkerId) -> BenchResult<Option<SqliteLease>> {
            let tx = self
                .conn
                .transaction_with_behavior(TransactionBehavior::Immediate)?;
            let next = tx
                .prepare_cached(NEXT_QUEUED)?
                .query_row([state_code(JobState::Queued)], |r| {
                    Ok((r.get::<_, i64>(0)?, r.get::<_, Vec<u8>>(1)?))
                })
                .optional()?;
            let Some((id, record)) = next else {
                tx.commit()?;
                return Ok(None);
            };
            let epoch: i64 = tx
                .prepare_cached("SELECT value FROM counters WHERE name = 'next_epoch'")?
                .query_row([], |r| r.get(0))
                .optional()?
                .unwrap_or(1);
            let epoch = Epoch(u64::try_from(epoch)?);
            let mut job = read_job_record(&record)?;
            let old = job.state;
            job.apply(
                Transition::Lease {
                    worker: worker.clone(),
                    epoch,
                    ttl: self.lease_ttl,
                },
                NOW,
                &self.retry,
            )?;
            tx.prepare_cached(
                "INSERT INTO counters (name, value) VALUES ('next_epoch', ?1)
                 ON CONFLICT (name) DO UPDATE SET value = excluded.value",
            )?
            .execute([i64::try_from(epoch.0 + 1)?])?;
            update_job(&tx, &job, old)?;
            tx.commit()?;
            Ok(Some(SqliteLease {
                job: JobId(u64::try_from(id)?),
                epoch,
            }))
        }

        /// The worker started the job: `assigned → running`, in one durable transaction.
        pub fn start(&mut self, lease: SqliteLease) -> BenchResult<()> {
            self.report(
                lease,
                Transition::Start {
                    epoch: lease.epoch,
                    ttl: std::time::Duration::from_secs(30),
                },
            )
        }

        /// The job succeeded: `running → succeeded`, in one durable transaction.
        pub fn complete(&mut self, lease: SqliteLease) -> BenchResult<()> {
            self.report(
                lease,
                Transition::Succeed {
                    epoch: lease.epoch,
                    output: JobOutput::default(),
                },
            )
        }

        fn report(&mut self, lease: SqliteLease, transition: Transition) -> BenchResult<()> {
            let tx = self
                .conn
                .transaction_with_behavior(TransactionBehavior::Immediate)?;
            let record: Vec<u8> = tx
                .prepare_cached("SELECT record FROM jobs WHERE id = ?1")?
                .query_row([sql_id(lease.job)?], |r| r.get(0))?;
            let mut job = read_job_record(&record)?;
            let old = job.state;
            // Refuses a stale epoch, as the store does.
            job.apply(transition, NOW, &self.retry)?;
            update_job(&tx, &job, old)?;
            tx.commit()?;
            Ok(())
        }

        /// The newest `limit` jobs in `state`, decoded, as the store's `list` reads them.
        pub fn list_by_state(&self, state: JobState, limit: usize) -> BenchResult<Vec<Job>> {
            let mut stmt = self.conn.prepare_cached(PAGE_BY_STATE)?;
            let mut rows = stmt.query(params![state_code(state), i64::try_from(limit)?])?;
            let mut jobs = Vec::with_capacity(limit);
            while let Some(row) = rows.next()? {
                jobs.push(read_job_record(row.get_ref(0)?.as_blob()?)?);
            }
            Ok(jobs)
        }

        /// SQLite's plans for the lease and list queries, one line per step; a plan that
        /// sorts in a temporary B-tree means the index is not used.
        pub fn query_plans(&self) -> BenchResult<Vec<String>> {
            let mut out = Vec::new();
            let queued = state_code(JobState::Queued);
            let queries: [(&str, &str, &[&dyn rusqlite::ToSql]); 2] = [
                ("lease", NEXT_QUEUED, &[&queued]),
                ("list", PAGE_BY_STATE, &[&queued, &50]),
            ];
            for (name, sql, args) in queries {
                let mut stmt = self.conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}"))?;
                let mut rows = stmt.query(args)?;
                while let Some(row) = rows.next()? {
                    out.push(format!("{name}: {}", row.get::<_, String>(3)?));
                }
            }
            Ok(out)
        }
    }

    fn insert_job(tx: &Connection, job: &Job, key: Option<&str>) -> BenchResult<()> {
        let id = sql_id(job.id)?;
        tx.prepare_cached(
            "INSERT INTO jobs (id, type, state, priority, record) VALUES (?1, ?2, ?3, ?4, ?5)",
        )?
        .execute(params![
            id,
            job.spec.job_type().as_str(),
            state_code(job.state),
            job.spec.priority,
            job_record(job)?,
        ])?;
        tx.prepare_cached("INSERT INTO job_states (state, job_id) VALUES (?1, ?2)")?
            .execute(params![state_code(job.state), id])?;
        if let Some(key) = key {
            tx.prepare_cached("INSERT INTO idempotency (key, job_id) VALUES (?1, ?2)")?
                .execute(params![key, id])?;
        }
        Ok(())
    }

    fn update_job(tx: &Connection, job: &Job, old: JobState) -> BenchResult<()> {
        let id = sql_id(job.id)?;
        let live = job.live_attempt();
        let epoch = live.map(|a| i64::try_from(a.epoch.0)).transpose()?;
        let worker = live.map(|a| a.worker.as_str());
        tx.prepare_cached(
            "UPDATE jobs SET state = ?2, epoch = ?3, worker = ?4, record = ?5 WHERE id = ?1",
        )?
        .execute(params![
            id,
            state_code(job.state),
            epoch,
            worker,
            job_record(job)?
        ])?;
        if old != job.state {
            tx.prepare_cached("DELETE FROM job_states WHERE state = ?1 AND job_id = ?2")?
                .execute(params![state_code(old), id])?;
            tx.prepare_cached("INSERT INTO job_states (state, job_id) VALUES (?1, ?2)")?
                .execute(params![state_code(job.state), id])?;
        }
        Ok(())
    }

    #[cfg(test)]
    mod tests {
        use super::*;
        use crate::sample_spec;

        #[test]
        fn a_job_goes_through_lease_start_and_complete() {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("jobs.sqlite");
            let mut db = SqliteJobs::create(&path).unwrap();
            let low = db.submit(sample_spec("a".into(), 0)).unwrap(); // priority 0
            let high = db.submit(sample_spec("b".into(), 4)).unwrap(); // priority 40
            assert_eq!(db.submit(sample_spec("a".into(), 0)).unwrap(), low);
            assert_eq!(db.list_by_state(JobState::Queued, 50).unwrap().len(), 2);

            let worker = WorkerId::new("w").unwrap();
            let lease = db.lease_next(&worker).unwrap().unwrap();
            assert_eq!(lease.job, high);
            db.start(lease).unwrap();
            let stale = SqliteLease {
                epoch: Epoch(lease.epoch.0 + 7),
                ..lease
            };
            assert!(db.complete(stale).is_err());
            db.complete(lease).unwrap();
            let done = db.list_by_state(JobState::Succeeded, 50).unwrap();
            assert_eq!(done.len(), 1);
            assert_eq!(done[0].id, high);
            assert_eq!(db.lease_next(&worker).unwrap().unwrap().job, low);
            assert_eq!(db.lease_next(&worker).unwrap(), None);
        }

        #[test]
        fn the_queries_use_the_indexes() {
            let dir = tempfile::tempdir().unwrap();
            let db = SqliteJobs::create(&dir.path().join("jobs.sqlite")).unwrap();
            let plans = db.query_plans().unwrap();
            assert!(!plans.is_empty());
            assert!(
                plans.iter().all(|p| !p.contains("TEMP B-TREE")),
                "{plans:?}"
            );
        }
    }
}
