//! The cluster a benchmark runs in this process: a control plane on the scenario's store, its
//! HTTP API, and bench workers that run every job as a no-op.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use nexa_actors::{
    ControlPlane, ControlPlaneConfig, StageRegistry, WorkerConfig, WorkerNode, stage_fn,
};
use nexa_runtime::{
    Call, Engine, JobId, JobOutput, JobType, MemStore, ReadTables, Store, StoreConfig, StoreError,
    Timestamp, WorkerId, WorkerInfo, WriteOp,
};
use nexa_storage::{IoCounts, IoSnapshot, PgStore, RedbStore};
use nexa_transport::Trust;

use super::scenario::Scenario;
use crate::http::HttpApi;
use crate::options::BenchStore;

/// The join token of the bench's own control plane (loopback only).
const JOIN_TOKEN: &str = "nexa-bench";

/// When each job's stage began, on this process's clock.
#[derive(Default)]
pub(crate) struct Probe {
    started: Mutex<HashMap<JobId, Instant>>,
}

impl Probe {
    fn record(&self, job: JobId) {
        let now = Instant::now();
        self.lock().entry(job).or_insert(now);
    }

    /// When `job`'s stage first ran.
    pub(crate) fn started(&self, job: JobId) -> Option<Instant> {
        self.lock().get(&job).copied()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<JobId, Instant>> {
        self.started.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// How long each store call took, by method; and when each job's completion was stored.
#[derive(Default)]
pub(crate) struct CallTimes {
    taken: Mutex<HashMap<&'static str, Vec<Duration>>>,
    finished: Mutex<HashMap<JobId, Instant>>,
}

impl CallTimes {
    fn finished(&self, job: JobId, at: Instant) {
        self.finished
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(job, at);
    }

    /// When `job`'s completion was stored (once the store acknowledged it).
    pub(crate) fn finished_at(&self, job: JobId) -> Option<Instant> {
        self.finished
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&job)
            .copied()
    }

    fn add(&self, method: &'static str, took: Duration) {
        self.taken
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(method)
            .or_default()
            .push(took);
    }

    /// The times so far, by method; they start again from none.
    pub(crate) fn take(&self) -> HashMap<&'static str, Vec<Duration>> {
        std::mem::take(&mut *self.taken.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// A store engine whose calls are timed.
struct Timed<E> {
    engine: E,
    times: Arc<CallTimes>,
}

impl<E: Engine> Engine for Timed<E> {
    fn config(&self) -> &StoreConfig {
        self.engine.config()
    }

    fn quick_reads(&self) -> bool {
        self.engine.quick_reads()
    }

    fn write<R: Send + 'static>(&self, call: Call, op: WriteOp<R>) -> Result<R, StoreError> {
        let began = Instant::now();
        let r = self.engine.write(call, op);
        let stored = Instant::now();
        self.times.add(call.method, stored - began);
        if let (true, "complete", Some(job)) = (r.is_ok(), call.method, call.job) {
            self.times.finished(job, stored);
        }
        r
    }

    fn read<R>(
        &self,
        call: Call,
        op: &mut dyn FnMut(&dyn ReadTables) -> Result<R, StoreError>,
    ) -> Result<R, StoreError> {
        let began = Instant::now();
        let r = self.engine.read(call, op);
        self.times.add(call.method, began.elapsed());
        r
    }
}

/// The control plane, its HTTP API and the bench workers.
pub(crate) struct Cluster {
    pub(crate) plane: Arc<ControlPlane>,
    http: HttpApi,
    workers: Vec<WorkerNode>,
    next_worker: usize,
    slots: usize,
    pub(crate) probe: Arc<Probe>,
    pub(crate) times: Arc<CallTimes>,
    io: Option<Arc<IoCounts>>,
    dir: tempfile::TempDir,
}

impl Cluster {
    /// Starts the control plane of `scenario` and its workers.
    pub(crate) async fn start(scenario: &Scenario, database_url: Option<&str>) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("nexa-bench-")
            .tempdir()
            .context("cannot make a folder for the benchmark's control plane")?;
        let config =
            ControlPlaneConfig::new("127.0.0.1:0".parse()?, dir.path().join("plane"), JOIN_TOKEN);
        let times = Arc::new(CallTimes::default());
        let (store, io): (Arc<dyn Store>, _) = match scenario.store {
            BenchStore::Memory => {
                let engine = MemStore::new(config.store.clone());
                (timed(engine, &times), None)
            }
            BenchStore::Redb => {
                let counts = Arc::new(IoCounts::default());
                let (path, store_config, c) = (
                    dir.path().join("plane").join("nexa_forge.db"),
                    config.store.clone(),
                    counts.clone(),
                );
                let engine = tokio::task::spawn_blocking(move || {
                    RedbStore::open_counted(path, store_config, Timestamp(0), c)
                })
                .await??;
                (timed(engine, &times), Some(counts))
            }
            BenchStore::Postgres => {
                let Some(url) = database_url else {
                    bail!(
                        "--store postgres needs a database of its own: --database-url or \
                         NEXA_BENCH_DATABASE_URL"
                    );
                };
                let (url, store_config) = (url.to_owned(), config.store.clone());
                // The client blocks on a runtime of its own: off the async threads.
                let engine = tokio::task::spawn_blocking(move || -> Result<PgStore> {
                    let engine = PgStore::open(&url, store_config)?;
                    let held: u64 = engine.counts()?.iter().map(|(_, n)| n).sum();
                    if held > 0 {
                        bail!(
                            "{} holds {held} jobs: give the benchmark an empty database or \
                             schema (its jobs stay there)",
                            engine.location()
                        );
                    }
                    Ok(engine)
                })
                .await??;
                (timed(engine, &times), None)
            }
        };
        let plane = Arc::new(ControlPlane::start_with_store(config, store).await?);
        let http = HttpApi::start(plane.clone(), dir.path(), "127.0.0.1:0".parse()?)?;
        let mut cluster = Self {
            plane,
            http,
            workers: Vec::new(),
            next_worker: 0,
            slots: scenario.slots as usize,
            probe: Arc::new(Probe::default()),
            times,
            io,
            dir,
        };
        for _ in 0..scenario.workers {
            cluster.add_worker().await?;
        }
        Ok(cluster)
    }

    /// The HTTP API's base URL (`http://127.0.0.1:PORT/api`).
    pub(crate) fn api_url(&self) -> String {
        format!("http://{}/api", self.http.addr())
    }

    /// What the store asked of its file so far (a redb store only).
    pub(crate) fn io(&self) -> Option<IoSnapshot> {
        self.io.as_ref().map(|c| c.snapshot())
    }

    /// Starts one more bench worker.
    pub(crate) async fn add_worker(&mut self) -> Result<()> {
        let name = format!("bench-{}", self.next_worker);
        self.next_worker += 1;
        let mut stages = StageRegistry::new();
        for job_type in JobType::ALL {
            let probe = self.probe.clone();
            stages.register(
                job_type,
                stage_fn(move |ctx| {
                    probe.record(ctx.job);
                    async { Ok(JobOutput::default()) }
                }),
            );
        }
        let mut config = WorkerConfig::new(
            self.plane.addr(),
            Trust::Fingerprint(self.plane.fingerprint()),
            JOIN_TOKEN,
            WorkerId::new(&name)?,
            stages,
            self.dir.path().join(&name),
        );
        config.slots = self.slots;
        let node = WorkerNode::start(config)
            .await
            .with_context(|| format!("cannot start bench worker {name}"))?;
        self.workers.push(node);
        Ok(())
    }

    /// Stops the oldest bench worker abruptly (its jobs run again once their leases run
    /// out) and starts another in its place.
    pub(crate) async fn replace_worker(&mut self) -> Result<()> {
        if !self.workers.is_empty() {
            self.workers.remove(0).stop().await;
        }
        self.add_worker().await
    }

    /// Stops everything.
    pub(crate) async fn stop(self) {
        for w in self.workers {
            w.stop().await;
        }
        self.http.stop().await;
        self.plane.shutdown().await;
        drop(self.dir);
    }
}

fn timed<E: Engine + 'static>(engine: E, times: &Arc<CallTimes>) -> Arc<dyn Store> {
    Arc::new(Timed {
        engine,
        times: times.clone(),
    })
}

/// Workers that only heartbeat (never asking for work), once a second each, spread over the
/// second, each heartbeat on its own (at most [`IN_FLIGHT`] at once); the heartbeats answered
/// and refused are counted.
pub(crate) struct Heartbeats {
    pub(crate) sent: Arc<AtomicU64>,
    pub(crate) failed: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

/// The most heartbeats of simulated workers waiting for their answer at once.
const IN_FLIGHT: usize = 1024;

impl Heartbeats {
    /// Registers `count` workers with `plane` and starts their heartbeats.
    pub(crate) async fn start(plane: Arc<ControlPlane>, count: u32) -> Result<Self> {
        let mut ids = Vec::with_capacity(count as usize);
        for n in 0..count {
            let id = WorkerId::new(format!("simulated-{n}"))?;
            let info = WorkerInfo {
                id: id.clone(),
                cpus: 1,
                memory_mb: 1024,
                gpus: Vec::new(),
                labels: [("nexa-bench".to_owned(), "simulated".to_owned())].into(),
                job_types: JobType::ALL.into_iter().collect(),
            };
            plane
                .register_worker(info)
                .await
                .with_context(|| format!("cannot register simulated worker {n}"))?;
            ids.push(id);
        }
        let sent = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let (s, f) = (sent.clone(), failed.clone());
        let task = tokio::spawn(async move {
            let gap = Duration::from_secs(1) / count.max(1);
            let mut tick = tokio::time::interval(gap);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let slots = Arc::new(tokio::sync::Semaphore::new(IN_FLIGHT));
            for id in ids.iter().cycle() {
                tick.tick().await;
                let Ok(slot) = slots.clone().acquire_owned().await else {
                    return;
                };
                let (plane, id, s, f) = (plane.clone(), id.clone(), s.clone(), f.clone());
                tokio::spawn(async move {
                    let counter = match plane.worker_heartbeat(id, Vec::new()).await {
                        Ok(_) => s,
                        Err(_) => f,
                    };
                    counter.fetch_add(1, Ordering::Relaxed);
                    drop(slot);
                });
            }
        });
        Ok(Self { sent, failed, task })
    }

    /// Stops the heartbeats.
    pub(crate) fn stop(self) {
        self.task.abort();
    }
}
