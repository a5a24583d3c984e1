//! `nexa bench`: the platform measured as its users meet it.
//!
//! `nexa bench run [SCENARIO.toml] [flags]` starts a control plane in this process (on a redb
//! file, in memory or on PostgreSQL) with bench workers that run every job as a no-op, so the
//! platform's own cost is what is measured; or, with `--api`, drives a running one. Clients
//! submit jobs and wait until they see each result (a closed loop of `clients`, or an open
//! loop at a `rate`), through the Rust API or the HTTP API; faults (workers stopped
//! abruptly), a deep queue and simulated workers heartbeating are scenario settings. The
//! result, printed and (with `--out`) written as JSON, holds the scenario, the host, the
//! version and every figure: throughput, latency percentiles from submit to start and to
//! result seen, the store calls' times, and per job the store's fsyncs, writes and bytes and
//! this process's write calls, context switches and CPU time. `nexa bench compare A B` sets
//! two results side by side.

mod cluster;
mod drive;
mod report;
mod scenario;

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde_json::json;

use self::cluster::{Cluster, Heartbeats};
use self::drive::{Budget, Client, Record, Work};
use self::report::{PerJob, Process, Spread};
use self::scenario::Scenario;
use crate::options::{BenchClient, BenchCommand, BenchRunArgs};

/// Runs `nexa bench`.
pub(crate) fn run(command: BenchCommand) -> Result<ExitCode> {
    match command {
        BenchCommand::Run(args) => {
            let scenario = Scenario::from_args(&args)?;
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("cannot start the async runtime")?;
            let result = runtime.block_on(measure(&scenario, &args))?;
            println!("{}", summary(&result));
            if let Some(out) = &args.out {
                let text = serde_json::to_string_pretty(&result)?;
                std::fs::write(out, text + "\n")
                    .with_context(|| format!("cannot write {}", out.display()))?;
                println!("written to {}", out.display());
            }
            Ok(ExitCode::SUCCESS)
        }
        BenchCommand::Compare(args) => {
            let read = |path: &std::path::Path| -> Result<serde_json::Value> {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read {}", path.display()))?;
                let value: serde_json::Value = serde_json::from_str(&text)
                    .with_context(|| format!("{} is not JSON", path.display()))?;
                if value["nexa_bench"].as_u64().is_none() {
                    anyhow::bail!(
                        "{} is not a result of `nexa bench run --out`",
                        path.display()
                    );
                }
                Ok(value)
            };
            let (before, after) = (read(&args.before)?, read(&args.after)?);
            print!("{}", report::compare(&before, &after, args.all));
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Runs the scenario; its result as JSON.
async fn measure(scenario: &Scenario, args: &BenchRunArgs) -> Result<serde_json::Value> {
    let started_at = humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string();
    let mut cluster = None;
    let client = if scenario.api.is_empty() {
        let c = Cluster::start(scenario, args.database_url.as_deref()).await?;
        let client = match scenario.client {
            BenchClient::Library => Client::Library(c.plane.clone()),
            BenchClient::Http | BenchClient::Python => Client::http(&c.api_url(), None)?,
        };
        cluster = Some(c);
        client
    } else {
        Client::http(&scenario.api, args.token.clone())?
    };
    let api_url = match &cluster {
        Some(c) => c.api_url(),
        None => scenario.api.clone(),
    };
    let client = Arc::new(client);
    let work = Arc::new(Work::new(scenario, &[])?);

    let mut figures = serde_json::Map::new();
    if let Some(c) = &cluster
        && scenario.queued > 0
    {
        let began = Instant::now();
        queue_unreachable(&c.plane, scenario).await?;
        figures.insert("queued_fill_s".into(), json!(began.elapsed().as_secs_f64()));
    }
    let heartbeats = match &cluster {
        Some(c) if scenario.simulated_workers > 0 => {
            Some(Heartbeats::start(c.plane.clone(), scenario.simulated_workers).await?)
        }
        _ => None,
    };
    let python = match scenario.client {
        BenchClient::Python => Some(drive::Python::start(&api_url, scenario).await?),
        _ => None,
    };
    if python.is_none() && scenario.warmup > 0 {
        let warm = Scenario {
            rate: 0.0,
            ..scenario.clone()
        };
        drive::run(&client, &work, &warm, Budget::Jobs(scenario.warmup)).await?;
    }

    // The measured part.
    if let Some(c) = &cluster {
        c.times.take();
    }
    let io_before = cluster.as_ref().and_then(Cluster::io);
    let process_before = Process::now();
    let beats_before = heartbeats
        .as_ref()
        .map(|h| h.sent.load(std::sync::atomic::Ordering::Relaxed));
    let budget = if scenario.duration > 0.0 {
        Budget::Until(Instant::now() + Duration::from_secs_f64(scenario.duration))
    } else {
        Budget::Jobs(scenario.jobs)
    };
    let cluster = cluster.map(|c| Arc::new(tokio::sync::Mutex::new(c)));
    let killed = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let faults = cluster
        .clone()
        .filter(|_| scenario.kill_worker_every > 0.0)
        .map(|c| {
            let every = Duration::from_secs_f64(scenario.kill_worker_every);
            let killed = killed.clone();
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(every).await;
                    if let Err(e) = c.lock().await.replace_worker().await {
                        tracing::warn!("cannot replace a bench worker: {e:#}");
                        return;
                    }
                    killed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            })
        });
    let began = Instant::now();
    let records = match python {
        Some(python) => python.run().await?,
        None => drive::run(&client, &work, scenario, budget).await?,
    };
    let wall = began.elapsed();
    if let Some(task) = faults {
        task.abort();
    }
    let process = Process::now().since(process_before);

    let jobs = records.len() as u64;
    let first = records.iter().map(|r| r.submitted).min();
    let last = records.iter().map(|r| r.seen).max();
    let elapsed = match (first, last) {
        (Some(a), Some(b)) => b.duration_since(a),
        _ => wall,
    };
    figures.insert("jobs".into(), json!(jobs));
    figures.insert(
        "succeeded".into(),
        json!(records.iter().filter(|r| r.succeeded).count()),
    );
    figures.insert(
        "retried_jobs".into(),
        json!(records.iter().filter(|r| r.attempts > 1).count()),
    );
    figures.insert("elapsed_s".into(), json!(elapsed.as_secs_f64()));
    figures.insert(
        "throughput_jobs_per_s".into(),
        json!(jobs as f64 / elapsed.as_secs_f64().max(1e-9)),
    );
    figures.insert(
        "submit_to_result_ms".into(),
        json!(Spread::of(
            records.iter().map(|r| r.seen - r.submitted).collect()
        )),
    );
    if let Some(c) = &cluster {
        let c = c.lock().await;
        let started: Vec<Duration> = records
            .iter()
            .filter_map(|r: &Record| {
                Some(
                    c.probe
                        .started(r.id)?
                        .saturating_duration_since(r.submitted),
                )
            })
            .collect();
        figures.insert("submit_to_start_ms".into(), json!(Spread::of(started)));
        // The push path: from the store acknowledging a job's completion to the client
        // seeing the job finished.
        let pushed: Vec<Duration> = records
            .iter()
            .filter_map(|r| Some(r.seen.saturating_duration_since(c.times.finished_at(r.id)?)))
            .collect();
        figures.insert("finish_stored_to_seen_ms".into(), json!(Spread::of(pushed)));
        let io = c.io().zip(io_before).map(|(now, then)| now.since(then));
        figures.insert("per_job".into(), json!(PerJob::new(jobs, process, io)));
        figures.insert(
            "process_cpu_cores".into(),
            json!((process.cpu_ms() / 1e3) / wall.as_secs_f64().max(1e-9)),
        );
        figures.insert(
            "store_calls".into(),
            json!(report::calls(c.times.take(), jobs)),
        );
        figures.insert(
            "workers_killed".into(),
            json!(killed.load(std::sync::atomic::Ordering::Relaxed)),
        );
    }
    if let (Some(h), Some(before)) = (heartbeats, beats_before) {
        let sent = h.sent.load(std::sync::atomic::Ordering::Relaxed) - before;
        figures.insert(
            "simulated_heartbeats_per_s".into(),
            json!(sent as f64 / wall.as_secs_f64().max(1e-9)),
        );
        figures.insert(
            "simulated_heartbeats_refused".into(),
            json!(h.failed.load(std::sync::atomic::Ordering::Relaxed)),
        );
        h.stop();
    }
    if let Some(c) = cluster
        && let Ok(c) = Arc::try_unwrap(c)
    {
        c.into_inner().stop().await;
    }
    Ok(json!({
        "nexa_bench": report::FORMAT,
        "version": env!("CARGO_PKG_VERSION"),
        "started_at": started_at,
        "host": report::Host::this(),
        "scenario": scenario,
        "figures": figures,
    }))
}

/// Queues the scenario's `queued` jobs, which no worker can take (they ask for a label no
/// worker has), in batches of 1,000.
async fn queue_unreachable(plane: &nexa_actors::ControlPlane, scenario: &Scenario) -> Result<()> {
    let work = Work::new(scenario, &[("nexa-bench", "unreachable")])?;
    let mut left = scenario.queued;
    while left > 0 {
        let n = left.min(1000);
        let specs = vec![work.spec().clone(); n as usize];
        plane.submit_batch(specs).await?;
        left -= n;
    }
    Ok(())
}

/// The result for people.
fn summary(result: &serde_json::Value) -> String {
    use std::fmt::Write;
    let f = &result["figures"];
    let s = &result["scenario"];
    let mut out = String::new();
    let num = |v: &serde_json::Value| v.as_f64().unwrap_or(f64::NAN);
    let failed = f["jobs"]
        .as_u64()
        .unwrap_or(0)
        .saturating_sub(f["succeeded"].as_u64().unwrap_or(0));
    let _ = writeln!(
        out,
        "{}: {} jobs ({failed} did not succeed, {} retried) in {:.2} s: {:.0} jobs/s",
        s["name"].as_str().unwrap_or("bench"),
        f["jobs"],
        f["retried_jobs"],
        num(&f["elapsed_s"]),
        num(&f["throughput_jobs_per_s"]),
    );
    for (label, key) in [
        ("submit → start", "submit_to_start_ms"),
        ("submit → result seen", "submit_to_result_ms"),
        ("finish stored → seen", "finish_stored_to_seen_ms"),
    ] {
        let v = &f[key];
        if v.is_object() {
            let _ = writeln!(
                out,
                "  {label:<22} p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
                num(&v["p50"]),
                num(&v["p90"]),
                num(&v["p99"]),
                num(&v["max"])
            );
        }
    }
    let p = &f["per_job"];
    if p.is_object() {
        let opt = |v: &serde_json::Value| v.as_f64().map_or("-".to_owned(), |v| format!("{v:.2}"));
        let _ = writeln!(
            out,
            "  per job: {} fsyncs, {} store writes, {} store bytes; {:.1} write calls, {:.1} context switches, {:.3} ms CPU ({:.2} cores)",
            opt(&p["fsyncs"]),
            opt(&p["store_writes"]),
            opt(&p["store_bytes"]),
            num(&p["write_syscalls"]),
            num(&p["context_switches"]),
            num(&p["cpu_ms"]),
            num(&f["process_cpu_cores"]),
        );
    }
    if let Some(calls) = f["store_calls"].as_object() {
        let methods = [
            "submit",
            "submit_batch",
            "submit_and_lease",
            "lease_many",
            "start",
            "complete",
        ];
        for method in methods {
            if let Some(c) = calls.get(method) {
                let _ = writeln!(
                    out,
                    "  store {method:<16} {:.2}/job, p50 {:.0} µs, p99 {:.0} µs",
                    num(&c["per_job"]),
                    num(&c["p50_us"]),
                    num(&c["p99_us"])
                );
            }
        }
    }
    if f["simulated_heartbeats_per_s"].is_number() {
        let _ = writeln!(
            out,
            "  simulated workers: {:.0} heartbeats/s, {} refused",
            num(&f["simulated_heartbeats_per_s"]),
            f["simulated_heartbeats_refused"]
        );
    }
    out.trim_end().to_owned()
}
