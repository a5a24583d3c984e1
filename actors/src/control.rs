//! The control plane: the store, the actors that run the queue, and the QUIC server workers
//! connect to.
//!
//! ```text
//! ControlPlane
//!  ├── Scheduler                  permanent, never restarted: if it stops, the plane says so
//!  │    │                         (ControlPlane::failure, /healthz) and leases nothing
//!  │    └── JobActor × leased job  transient: restarted after a failure while its job is
//!  │                               leased; stops normally when it is not
//!  └── SessionActor × worker      temporary: lives as long as the worker's connection
//! ```
//!
//! Every change goes to the store first; only once the store has acknowledged it (durably)
//! is anything sent to a worker or a caller (persist, then send). On start the control plane
//! rebuilds its view from the store: every live lease gets its time again plus a grace (the
//! time the plane was down is held against no worker), and every job still leased gets its
//! actor back, so its worker can carry on.
//!
//! The rooms: [`ControlPlane`] (this file) is the facade an embedder and the HTTP API call;
//! `jobs` is the one way a job is changed (through its actor, then waiters and the
//! scheduler are told); `report` is what a worker reports and how the store applies it;
//! `quic` answers workers' connections and messages; `follow` waits for jobs and follows
//! logs without polling; `housekeeping` prunes lost workers and old jobs; `config` holds the
//! settings and `error` the errors.

mod artifacts;
mod beats;
mod config;
mod endpoints;
mod error;
mod follow;
mod housekeeping;
mod job_actor;
mod jobs;
mod leadership;
mod lease;
mod pipelines;
mod quic;
mod report;
mod scheduler;
mod session;

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures_util::Stream;
use nexa_runtime::wire::{Message, RunningJob, Welcome};
use nexa_runtime::{
    Epoch, FaultKind, Job, JobError, JobId, JobOutput, JobSpec, JobState, Lease, LeaseStatus,
    LeaseToken, ListQuery, LogAck, LogPage, LogQuery, Page, PendingReason, Registry, StorageFault,
    Store, StoreError, Submitted, WorkerId, WorkerInfo, WorkerRecord,
};
use nexa_storage::{ArtifactError, ArtifactStore, ByteStream, PgStore, RedbStore, RemoteBlobs};
use nexa_transport::{Fingerprint, Server, ServerConfig};
use ractor::Actor;
use ractor::rpc::CallResult;
use tracing::{info, warn};

pub use self::config::{ControlPlaneConfig, StartError};
use self::endpoints::Endpoints;
pub use self::endpoints::Replica;
pub use self::error::PlaneError;
use self::follow::Changes;
pub use self::follow::{FollowFrom, LogEvent};
use self::housekeeping::{collect_artifacts, prune_jobs, prune_workers};
use self::job_actor::JobActors;
use self::jobs::Jobs;
use self::lease::LeaseKey;
use self::pipelines::Pipelines;
pub use self::pipelines::{
    GateVerdict, PipelineError, PipelineRun, RunEvent, RunState, StepRun, StepState,
};
use self::quic::PlaneHandler;
use self::report::Report;
pub use self::report::{HeartbeatAnswer, HeldLease};
use self::scheduler::{Scheduler, SchedulerMsg};
use crate::clock::now;
use crate::metrics::Metrics;
use nexa_runtime::pipeline::PipelineSpec;

/// The store a plane opened itself.
enum Opened {
    Redb(Arc<RedbStore>),
    Postgres(Arc<PgStore>),
}

/// How long an actor call may take before the caller gives up on it.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs a store operation off the async threads.
pub(crate) async fn blocking<R: Send + 'static>(
    store: &Arc<dyn Store>,
    op: impl FnOnce(&dyn Store) -> Result<R, StoreError> + Send + 'static,
) -> Result<R, StoreError> {
    let store = store.clone();
    tokio::task::spawn_blocking(move || op(&*store))
        .await
        .unwrap_or_else(|e| {
            Err(StorageFault::new(FaultKind::Unavailable, format!("store task failed: {e}")).into())
        })
}

/// Runs a read of one record (a job, or whether any job is queued): on this thread when the
/// store's reads never wait long ([`Store::quick_reads`]: memory, redb), which spares the two
/// thread switches of a hand-off to a blocking thread and back (a third of a short job's
/// switches went to such reads); else off the async threads, as [`blocking`] does.
pub(crate) async fn read<R: Send + 'static>(
    store: &Arc<dyn Store>,
    op: impl FnOnce(&dyn Store) -> Result<R, StoreError> + Send + 'static,
) -> Result<R, StoreError> {
    if store.quick_reads() {
        op(&**store)
    } else {
        blocking(store, op).await
    }
}

/// Calls `f` with every job in `state`, a page at a time.
async fn for_each_job(
    store: &Arc<dyn Store>,
    state: JobState,
    mut f: impl FnMut(&Job),
) -> Result<(), StoreError> {
    let mut before = None;
    loop {
        let query = ListQuery {
            state: Some(state),
            before,
            limit: 1000,
            ..ListQuery::default()
        };
        let page = blocking(store, move |s| s.list(query)).await?;
        page.jobs.iter().for_each(&mut f);
        match page.next_before {
            Some(b) => before = Some(b),
            None => return Ok(()),
        }
    }
}

/// The time, beyond a lease's own, that the workers of running jobs get to reconnect to a
/// control plane that started again.
const RESTART_GRACE: Duration = Duration::from_secs(5);

/// A running control plane: submit, watch and cancel jobs; run pipelines; serve workers.
///
/// Every method takes `&self`, so one plane can be shared (`Arc<ControlPlane>`) by an HTTP
/// server, background tasks and the program embedding it. It runs until
/// [`shutdown`](Self::shutdown) or until the future given to [`run_until`](Self::run_until)
/// completes.
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use nexa_actors::ControlPlane;
/// use nexa_runtime::{JobParams, JobSpec, TrainParams};
///
/// let plane = ControlPlane::builder("127.0.0.1:7443".parse()?, "var", "a-long-join-token")
///     .start()
///     .await?;
/// let job = plane
///     .submit(JobSpec::new(JobParams::Train(TrainParams::new("mlp", "data/train.csv"))))
///     .await?;
/// let done = plane.wait(job.id).await?; // once a worker has run it
/// println!("{} ended {}", done.id, done.state);
/// plane.shutdown().await;
/// # Ok(())
/// # }
/// ```
pub struct ControlPlane {
    jobs: Jobs,
    artifacts: ArtifactStore,
    remote: Option<RemoteBlobs>,
    /// The QUIC server until shutdown, which takes it (its socket is released then).
    server: std::sync::Mutex<Option<Server>>,
    addr: SocketAddr,
    fingerprint: Fingerprint,
    metrics: Arc<Metrics>,
    config: ControlPlaneConfig,
    lease_key: Arc<LeaseKey>,
    handler: Arc<PlaneHandler>,
    /// Why the control plane cannot work any more, once it cannot.
    failure: Arc<std::sync::OnceLock<String>>,
    /// Told once `failure` is set.
    failing: Arc<tokio::sync::Notify>,
    pipelines: Arc<Pipelines>,
    /// Set once it has shut down.
    stopped: tokio::sync::OnceCell<()>,
}

impl std::fmt::Debug for ControlPlane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlPlane")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl ControlPlane {
    /// The settings of a control plane listening for workers on `listen`, keeping its data in
    /// `data_dir`, admitting workers that present `join_token`; every other setting has its
    /// default until changed. Start it with [`ControlPlaneConfig::start`].
    pub fn builder(
        listen: SocketAddr,
        data_dir: impl Into<PathBuf>,
        join_token: impl Into<String>,
    ) -> ControlPlaneConfig {
        ControlPlaneConfig::new(listen, data_dir, join_token)
    }

    /// Opens (or creates) the store in the data folder and starts (see also
    /// [`ControlPlane::builder`]).
    pub async fn start(config: ControlPlaneConfig) -> Result<Self, StartError> {
        let path = config.data_dir.join("nexa_forge.db");
        let store_config = config.store.clone();
        let dir = config.data_dir.clone();
        let database = config.database_url.clone();
        let (store, recovered) = tokio::task::spawn_blocking(move || {
            // Jobs' params, logs and results are the users': the folders this makes and the
            // database are for this user only. A folder that exists keeps its mode.
            let folder = |source| nexa_storage::OpenError::Folder {
                path: dir.clone(),
                source,
            };
            crate::private_dir(&dir).map_err(folder)?;
            if let Some(url) = database {
                let store = leadership::lead(&url, store_config)?;
                return Ok((Opened::Postgres(Arc::new(store.0)), store.1));
            }
            let store = RedbStore::open(&path, store_config)?;
            std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
                .map_err(folder)?;
            let recovered = store.recovered().to_vec();
            Ok::<_, nexa_storage::OpenError>((Opened::Redb(Arc::new(store)), recovered))
        })
        .await
        .map_err(|e| StartError::Actor("store", e.to_string()))??;
        for e in &recovered {
            info!(job = %e.job, state = %e.state, "attempt ended while the control plane was down: {}", e.cause());
        }
        let lost = recovered.iter().filter(|e| !e.timed_out).count();
        let plane = match store {
            Opened::Redb(store) => Self::start_with_store(config, store).await?,
            Opened::Postgres(store) => {
                let plane = Self::start_with_store(config, store.clone()).await?;
                leadership::keep(store, plane.failure.clone(), plane.failing.clone());
                plane
            }
        };
        plane.metrics.record_leases_expired(lost as u64);
        Ok(plane)
    }

    /// Starts over a store of the caller's choice (an in-memory one, for example).
    pub async fn start_with_store(
        config: ControlPlaneConfig,
        store: Arc<dyn Store>,
    ) -> Result<Self, StartError> {
        let actors = Arc::new(JobActors::default());
        let endpoints = Arc::new(Endpoints::default());
        let metrics = Arc::new(Metrics::default());
        let dir = config.data_dir.clone();
        let lease_key = tokio::task::spawn_blocking(move || LeaseKey::load_or_create(&dir))
            .await
            .map_err(|e| StartError::Actor("lease key", e.to_string()))?
            .map_err(StartError::LeaseKey)?;
        let lease_key = Arc::new(lease_key);
        let root = config.data_dir.join("artifacts");
        let artifacts = tokio::task::spawn_blocking(move || ArtifactStore::open(root))
            .await
            .map_err(|e| StartError::Actor("artifact store", e.to_string()))??;
        let remote = match &config.artifacts_remote {
            Some(uri) => {
                let remote = RemoteBlobs::open(uri).await?;
                info!(uri, "artifacts' bytes go to object storage");
                // Bytes kept here before a crash (or before object storage was configured)
                // move there, off the way to serving.
                let (local, to) = (artifacts.clone(), remote.clone());
                tokio::spawn(async move {
                    if let Err(e) = artifacts::offload_all(&local, &to).await {
                        warn!("cannot move artifacts to {}: {e}", to.uri());
                    }
                });
                Some(remote)
            }
            None => None,
        };
        let changes = Changes::default();
        let parked = scheduler::Parked::default();
        let args = scheduler::Args {
            actors: actors.clone(),
            store: store.clone(),
            metrics: metrics.clone(),
            changes: changes.clone(),
            parked: parked.clone(),
        };
        let (scheduler, ended) = Actor::spawn(None, Scheduler, args)
            .await
            .map_err(|e| StartError::Actor("scheduler", e.to_string()))?;
        // The scheduler is permanent: if it stops (a bug), the plane cannot lease anything,
        // so it says so — in its health and in every refusal to lease — rather than limp on.
        let failure: Arc<std::sync::OnceLock<String>> = Arc::default();
        let failing = Arc::new(tokio::sync::Notify::new());
        {
            let (failure, failing, scheduler) =
                (failure.clone(), failing.clone(), scheduler.clone());
            tokio::spawn(async move {
                let why = match ended.await {
                    Ok(()) => match scheduler.get_status() {
                        ractor::ActorStatus::Stopped => "it stopped".to_owned(),
                        status => format!("it ended ({status:?})"),
                    },
                    Err(e) => format!("it panicked: {e}"),
                };
                let _ = failure.set(format!(
                    "the scheduler failed ({why}); no job can be leased until the control \
                     plane is restarted"
                ));
                failing.notify_waiters();
            });
        }
        // A restart is no sign that workers died: every lease gets the time for its worker to
        // notice, reconnect and heartbeat before it is presumed lost.
        let until = now().saturating_add(config.store.lease_ttl + RESTART_GRACE);
        let renewed = blocking(&store, move |s| s.renew_leases(until, now())).await?;
        if renewed > 0 {
            info!(
                renewed,
                "leases of running jobs wait for their workers to reconnect"
            );
        }
        // Jobs leased before a restart get their actors back before any worker is served.
        for state in [JobState::Assigned, JobState::Running, JobState::Cancelling] {
            for_each_job(&store, state, |job| {
                let _ = scheduler.cast(SchedulerMsg::Adopt(job.id));
            })
            .await?;
        }
        // Queued retries still in their backoff wake the scheduler when it ends. Off the way
        // to serving: the queue may be long, and a request meanwhile finds the retries that
        // are due by itself.
        let (queue, waker) = (store.clone(), scheduler.clone());
        tokio::spawn(async move {
            let found = for_each_job(&queue, JobState::Queued, |job| {
                if let Some(at) = job.not_before {
                    let _ = waker.cast(SchedulerMsg::WakeAt(at));
                }
            })
            .await;
            if let Err(e) = found {
                warn!("cannot read the queue for retries in backoff: {e}");
            }
        });
        tokio::spawn(prune_workers(
            Arc::downgrade(&store),
            config.worker_retention,
        ));
        if let Some(retention) = config.job_retention {
            tokio::spawn(prune_jobs(
                Arc::downgrade(&store),
                artifacts.clone(),
                remote.clone(),
                retention,
                changes.clone(),
            ));
        }
        let welcome = Welcome {
            session: 0,
            lease_ttl_ms: config.store.lease_ttl.as_millis() as u64,
            heartbeat_ms: config.heartbeat.as_millis() as u64,
            long_poll_ms: config.long_poll.as_millis() as u64,
        };
        let jobs = Jobs {
            beats: beats::Beats::start(store.clone()),
            store,
            actors,
            endpoints,
            scheduler: scheduler.clone(),
            parked,
            changes,
        };
        let handler = Arc::new(PlaneHandler {
            jobs: jobs.clone(),
            sessions: Default::default(),
            artifacts: artifacts.clone(),
            remote: remote.clone(),
            welcome,
            long_poll: config.long_poll,
            metrics: metrics.clone(),
            lease_key: lease_key.clone(),
        });
        let server_config =
            ServerConfig::new(config.listen, &config.data_dir, config.join_token.clone());
        let server = match Server::start(server_config, handler.clone()).await {
            Ok(s) => s,
            Err(e) => {
                scheduler.stop(None);
                return Err(e.into());
            }
        };
        let pipelines =
            match Pipelines::start(config.data_dir.join("pipelines"), jobs.clone()).await {
                Ok(p) => p,
                Err(e) => {
                    scheduler.stop(None);
                    return Err(StartError::Actor("pipelines", e.to_string()));
                }
            };
        info!(addr = %server.local_addr(), fingerprint = %server.fingerprint(), "control plane listening");
        Ok(Self {
            jobs,
            artifacts,
            remote,
            addr: server.local_addr(),
            fingerprint: server.fingerprint(),
            server: std::sync::Mutex::new(Some(server)),
            metrics,
            config,
            lease_key,
            handler,
            failure,
            failing,
            pipelines,
            stopped: tokio::sync::OnceCell::new(),
        })
    }

    /// The settings it runs with.
    pub fn config(&self) -> &ControlPlaneConfig {
        &self.config
    }

    /// The address workers connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The certificate fingerprint workers trust.
    pub fn fingerprint(&self) -> Fingerprint {
        self.fingerprint
    }

    /// The artifacts jobs made, kept in the data folder.
    pub fn artifacts(&self) -> &ArtifactStore {
        &self.artifacts
    }

    /// The bytes of an artifact, from the data folder or object storage; `Ok(None)` when no
    /// artifact has that digest.
    pub async fn artifact_bytes(
        &self,
        digest: nexa_runtime::Digest,
    ) -> Result<Option<(nexa_runtime::ArtifactMeta, ByteStream)>, ArtifactError> {
        artifacts::open(&self.artifacts, self.remote.as_ref(), digest).await
    }

    /// The model registry as it stands, read off the jobs (see [`Registry`]).
    pub async fn registry(&self) -> Result<Registry, PlaneError> {
        Ok(self.jobs.registry().await?)
    }

    /// Accepts a job (durably), then lets the scheduler offer it. A deploy job of
    /// `replicas: N` is N deploy jobs, one per replica (see [`ControlPlane::submit_all`]):
    /// this is the first.
    pub async fn submit(&self, spec: JobSpec) -> Result<Submitted, PlaneError> {
        let mut all = self.submit_all(spec).await?;
        Ok(all.swap_remove(0))
    }

    /// Accepts a job, or, for a deploy job of `replicas: N`, one deploy job per replica in one
    /// transaction (each its own lease, placement, restarts and cancel; the endpoint routes to
    /// all of them). With an idempotency key `K`, the replicas after the first take
    /// `K#replica-2`… so a retried submission makes none twice.
    pub async fn submit_all(&self, spec: JobSpec) -> Result<Vec<Submitted>, PlaneError> {
        Ok(self.jobs.submit_all(spec).await?)
    }

    /// Accepts several jobs in one transaction: all of them, or none (the error names the
    /// first job refused, [`StoreError::Batch`]); then lets the scheduler offer them. Each may
    /// carry its own idempotency key: a batch sent again answers the same jobs. A deploy of
    /// several replicas is submitted on its own ([`ControlPlane::submit_all`]).
    pub async fn submit_batch(&self, specs: Vec<JobSpec>) -> Result<Vec<Submitted>, PlaneError> {
        Ok(self.jobs.submit_batch(specs).await?)
    }

    /// The job once it has ended (succeeded, failed or cancelled). The plane reads the job
    /// again only when jobs change, so waiting costs nothing while nothing happens.
    pub async fn wait(&self, id: JobId) -> Result<Job, PlaneError> {
        follow::wait(self.jobs.store.clone(), &self.jobs.changes, id).await
    }

    /// The jobs of `ids` that have ended, in the order given (each once), as soon as at
    /// least `at_least` of them have: `ids.len()` waits for all, 1 for the first (as
    /// `ray.wait`'s `num_returns`). Like [`ControlPlane::wait`], it reads only when jobs
    /// change. A job that does not exist is an error.
    pub async fn wait_many(&self, ids: &[JobId], at_least: usize) -> Result<Vec<Job>, PlaneError> {
        follow::wait_many(self.jobs.store.clone(), &self.jobs.changes, ids, at_least).await
    }

    /// The job as it is now, then each time it changes (an event, its state, its
    /// progress), until the change that ends it: what `GET /api/jobs/{id}/events?follow`
    /// streams.
    pub fn watch_job(
        &self,
        id: JobId,
    ) -> impl Stream<Item = Result<Job, PlaneError>> + Send + 'static {
        follow::watch(self.jobs.store.clone(), &self.jobs.changes, id)
    }

    /// A job's log as it is written, attempt after attempt, until the job ends: a stream of
    /// [`LogEvent`]s that ends with [`LogEvent::End`] (or an error). Lines are read when they
    /// are stored, not on a timer.
    ///
    /// ```no_run
    /// # async fn demo(plane: &nexa_actors::ControlPlane, job: nexa_runtime::JobId)
    /// # -> Result<(), nexa_actors::PlaneError> {
    /// use futures_util::StreamExt;
    /// use nexa_actors::{FollowFrom, LogEvent};
    ///
    /// let mut log = std::pin::pin!(plane.follow_logs(job, FollowFrom::default()));
    /// while let Some(event) = log.next().await {
    ///     match event? {
    ///         LogEvent::Line { line, .. } => println!("{}", line.text),
    ///         LogEvent::End(state) => println!("{job} ended {state}"),
    ///         _ => {}
    ///     }
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub fn follow_logs(
        &self,
        id: JobId,
        from: FollowFrom,
    ) -> impl Stream<Item = Result<LogEvent, PlaneError>> + Send + 'static {
        follow::follow(self.jobs.store.clone(), &self.jobs.changes, id, from)
    }

    /// Starts a run of a pipeline, checked first (see [`nexa_runtime::pipeline`]): each step's
    /// job is submitted once the steps it needs have succeeded.
    pub async fn run_pipeline(&self, spec: PipelineSpec) -> Result<PipelineRun, PipelineError> {
        self.pipelines.create(spec, None, None).await
    }

    /// Runs an ended pipeline run again, with `spec` when given (a fix) or its own: steps
    /// whose job type, resolved params and options are unchanged reuse the earlier run's
    /// jobs, except `from` and every step after it, which run again.
    pub async fn rerun_pipeline(
        &self,
        id: u64,
        spec: Option<PipelineSpec>,
        from: Option<String>,
    ) -> Result<PipelineRun, PipelineError> {
        let spec = match spec {
            Some(s) => s,
            None => self.pipelines.get(id).await?.spec,
        };
        self.pipelines.create(spec, Some(id), from).await
    }

    /// One pipeline run.
    pub async fn pipeline(&self, id: u64) -> Result<PipelineRun, PipelineError> {
        self.pipelines.get(id).await
    }

    /// The pipeline run and step that made `job`: its idempotency key names them
    /// (`pipeline:pl-N/STEP`) and that step's job is this one.
    pub async fn made_by_pipeline(&self, job: &Job) -> Option<(String, String)> {
        let key = job.spec.idempotency_key.as_deref()?;
        let (run, step) = key.strip_prefix("pipeline:pl-")?.split_once('/')?;
        let run = self.pipelines.get(run.parse().ok()?).await.ok()?;
        (run.steps.get(step)?.job == Some(job.id)).then(|| (run.name(), step.to_owned()))
    }

    /// Every pipeline run, newest first.
    pub async fn pipelines(&self) -> Vec<PipelineRun> {
        self.pipelines.list().await
    }

    /// Cancels a pipeline run and its running steps.
    pub async fn cancel_pipeline(
        &self,
        id: u64,
        reason: &str,
    ) -> Result<PipelineRun, PipelineError> {
        self.pipelines.cancel(id, reason).await
    }

    /// One job.
    pub async fn get(&self, id: JobId) -> Result<Job, PlaneError> {
        Ok(self.jobs.get(id).await?)
    }

    /// Jobs, newest first, a page at a time (see [`ListQuery`] for the filters).
    pub async fn list(&self, query: ListQuery) -> Result<Page, PlaneError> {
        Ok(blocking(&self.jobs.store, move |s| s.list(query)).await?)
    }

    /// How many jobs are in each state, counted at one moment.
    pub async fn counts(&self) -> Result<Vec<(JobState, u64)>, PlaneError> {
        Ok(blocking(&self.jobs.store, |s| s.counts()).await?)
    }

    /// How many jobs are in `state`.
    pub async fn count(&self, state: JobState) -> Result<u64, PlaneError> {
        Ok(blocking(&self.jobs.store, move |s| s.count(state)).await?)
    }

    /// A page of a job's log lines (see [`follow_logs`](Self::follow_logs) to follow them).
    pub async fn logs(&self, id: JobId, query: LogQuery) -> Result<LogPage, PlaneError> {
        Ok(blocking(&self.jobs.store, move |s| s.read_logs(id, query)).await?)
    }

    /// Why a job has not started.
    pub async fn pending_reason(&self, id: JobId) -> Result<Option<PendingReason>, PlaneError> {
        Ok(blocking(&self.jobs.store, move |s| s.pending_reason(id, now())).await?)
    }

    /// The registered workers.
    pub async fn workers(&self) -> Result<Vec<WorkerRecord>, PlaneError> {
        Ok(blocking(&self.jobs.store, |s| s.list_workers()).await?)
    }

    /// The jobs each worker holds the lease of (assigned, running or being cancelled), newest
    /// first, by worker: read from the index of leased states, so it costs as many jobs as
    /// run now, not as many as ever ran.
    pub async fn leased_jobs(&self) -> Result<BTreeMap<WorkerId, Vec<JobId>>, PlaneError> {
        let mut by_worker: BTreeMap<WorkerId, Vec<JobId>> = BTreeMap::new();
        for state in [JobState::Assigned, JobState::Running, JobState::Cancelling] {
            for_each_job(&self.jobs.store, state, |job| {
                if let Some(a) = job.live_attempt() {
                    by_worker.entry(a.worker.clone()).or_default().push(job.id);
                }
            })
            .await?;
        }
        for jobs in by_worker.values_mut() {
            jobs.sort_unstable_by(|a, b| b.cmp(a));
        }
        Ok(by_worker)
    }

    /// Cancels a job; a running one is told to stop and ends `cancelled` once it has.
    pub async fn cancel(
        &self,
        id: JobId,
        reason: impl Into<String>,
    ) -> Result<JobState, PlaneError> {
        Ok(self.jobs.cancel(id, reason.into()).await?)
    }

    /// Deletes a finished job with its log (see [`Store::delete`] for what is kept), then the
    /// artifacts it made that no other job made or names.
    pub async fn delete(&self, id: JobId) -> Result<Job, PlaneError> {
        let job =
            follow::write(&self.jobs.store, &self.jobs.changes, move |s| s.delete(id)).await?;
        collect_artifacts(&self.jobs.store, &self.artifacts, self.remote.as_ref()).await;
        Ok(job)
    }

    /// Registers (or re-registers) a worker that speaks HTTP rather than QUIC; jobs that
    /// waited for what it offers may now be leased to it.
    pub async fn register_worker(&self, info: WorkerInfo) -> Result<WorkerRecord, PlaneError> {
        let record = blocking(&self.jobs.store, move |s| s.register_worker(info, now())).await?;
        let _ = self.jobs.scheduler.cast(SchedulerMsg::Wake);
        Ok(record)
    }

    /// Leases the next job that fits `free_gpus` to `worker`, waiting up to `wait` (at most
    /// the long-poll limit) for one to be queued. The job's actor then watches the lease: a
    /// worker that stops heartbeating loses it.
    pub async fn next_job(
        &self,
        worker: WorkerId,
        free_gpus: Vec<u64>,
        wait: Duration,
    ) -> Result<Option<Lease>, PlaneError> {
        let wait = wait.min(self.config.long_poll);
        let asked = self
            .jobs
            .scheduler
            .call(
                |reply| SchedulerMsg::AskForWork {
                    worker,
                    free_gpus,
                    wait,
                    session: None,
                    reply,
                },
                Some(wait + CALL_TIMEOUT),
            )
            .await;
        let lease = match asked {
            Ok(CallResult::Success(result)) => result?,
            Ok(CallResult::Timeout) => {
                return Err(PlaneError::Timeout {
                    actor: "scheduler",
                    after: wait + CALL_TIMEOUT,
                });
            }
            _ => {
                return Err(PlaneError::Unavailable(
                    self.failure()
                        .unwrap_or("the scheduler did not answer")
                        .to_owned(),
                ));
            }
        };
        if let Some(lease) = &lease {
            self.metrics.record_dispatch(&lease.job);
        }
        Ok(lease)
    }

    /// The token that proves holding `lease`: give it to the worker that leased the job, and
    /// to no one else. Every report below must quote it.
    pub fn lease_token(&self, lease: &Lease) -> LeaseToken {
        self.lease_key.token(lease.job.id, lease.epoch)
    }

    /// A report under a lease, once its token is checked.
    async fn report(
        &self,
        job: JobId,
        epoch: Epoch,
        token: &LeaseToken,
        report: Report,
    ) -> Result<report::Applied, PlaneError> {
        self.lease_key.check(job, epoch, token)?;
        Ok(self.jobs.report(job, epoch, report).await?)
    }

    /// The worker says the leased job's stage started.
    pub async fn started(
        &self,
        job: JobId,
        epoch: Epoch,
        token: &LeaseToken,
    ) -> Result<(), PlaneError> {
        self.report(job, epoch, token, Report::Started)
            .await
            .map(drop)
    }

    /// The worker reports the leased job succeeded.
    pub async fn complete(
        &self,
        job: JobId,
        epoch: Epoch,
        token: &LeaseToken,
        output: JobOutput,
    ) -> Result<(), PlaneError> {
        self.report(job, epoch, token, Report::Complete(output))
            .await
            .map(drop)
    }

    /// The worker reports the leased job's attempt failed.
    pub async fn fail(
        &self,
        job: JobId,
        epoch: Epoch,
        token: &LeaseToken,
        error: JobError,
    ) -> Result<(), PlaneError> {
        self.report(job, epoch, token, Report::Fail(error))
            .await
            .map(drop)
    }

    /// Log lines of the leased job's attempt, numbered from `first_seq`.
    pub async fn append_logs(
        &self,
        job: JobId,
        epoch: Epoch,
        token: &LeaseToken,
        first_seq: u64,
        lines: Vec<String>,
    ) -> Result<LogAck, PlaneError> {
        let report = Report::Logs { first_seq, lines };
        let applied = self.report(job, epoch, token, report).await?;
        Ok(applied.logged(job)?)
    }

    /// Renews the lease of one job and records its progress.
    pub async fn job_heartbeat(
        &self,
        job: JobId,
        epoch: Epoch,
        token: &LeaseToken,
        progress: Option<f64>,
    ) -> Result<LeaseStatus, PlaneError> {
        let report = Report::Heartbeat { progress };
        let applied = self.report(job, epoch, token, report).await?;
        Ok(applied.lease(job)?)
    }

    /// The heartbeat of a worker that speaks HTTP: it is alive, and so are the leases of
    /// `jobs`. Says which to cancel and which leases are gone (a job quoted without its lease
    /// token is one).
    pub async fn worker_heartbeat(
        &self,
        worker: WorkerId,
        jobs: Vec<HeldLease>,
    ) -> Result<HeartbeatAnswer, PlaneError> {
        let jobs = jobs.into_iter().map(RunningJob::from).collect();
        let ack = self.handler.linkless_heartbeat(worker, jobs).await?;
        Ok(ack.into())
    }

    /// The answer to `message` from `worker`, a worker that speaks the QUIC protocol's
    /// messages ([`nexa_runtime::wire`], by design: this is the protocol's bridge) over another link (`nexa worker --api` sends them over HTTP): exactly what
    /// its QUIC session would answer. A cancel is not pushed over such a link; the heartbeat's
    /// answer names it.
    pub async fn worker_request(&self, worker: &WorkerId, message: Message) -> Message {
        self.handler.answer(worker, None, message).await
    }

    /// The ready replicas of every endpoint, or of `endpoint`: deploy jobs whose replica
    /// passed its smoke test and whose worker said so lately.
    pub fn replicas(&self, endpoint: Option<&str>) -> Vec<Replica> {
        self.jobs.endpoints.ready(endpoint)
    }

    /// The ready replicas of `endpoint` in the order a request should try them (round robin
    /// over requests).
    pub fn route(&self, endpoint: &str) -> Vec<Replica> {
        self.jobs.endpoints.route(endpoint)
    }

    /// A replica that did not answer a request (its server refused the connection or failed):
    /// not routed to until its worker's next heartbeat says it serves.
    pub fn replica_failed(&self, job: JobId) {
        self.jobs.endpoints.forget(job);
    }

    /// The deploy jobs not finished (queued, placed or serving), newest first: every
    /// endpoint's replicas, ready or not.
    pub async fn deployments(&self) -> Result<Vec<Job>, PlaneError> {
        Ok(self.jobs.deployments().await?)
    }

    /// Why the control plane cannot lease jobs any more (its scheduler failed); `None` while
    /// it is well. A supervisor of the process should restart it.
    pub fn failure(&self) -> Option<&str> {
        self.failure.get().map(String::as_str)
    }

    /// How the control plane has been doing.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Serves until `shutdown` completes (a signal, a channel, a test's end), then shuts down:
    /// the shape of a server's `run(listener, shutdown)`. Returns early, with
    /// [`PlaneError::Unavailable`], if the plane fails first (its scheduler stopped); it
    /// shuts down then too.
    ///
    /// ```no_run
    /// # async fn demo(plane: nexa_actors::ControlPlane) -> Result<(), nexa_actors::PlaneError> {
    /// plane.run_until(async { tokio::signal::ctrl_c().await.ok(); }).await
    /// # }
    /// ```
    pub async fn run_until(&self, shutdown: impl Future<Output = ()>) -> Result<(), PlaneError> {
        let result = tokio::select! {
            () = shutdown => Ok(()),
            why = self.failed() => Err(PlaneError::Unavailable(why)),
        };
        self.shutdown().await;
        result
    }

    /// Completes, with the reason, once the control plane cannot go on (see
    /// [`failure`](Self::failure)); pending while it is well.
    pub async fn failed(&self) -> String {
        let failing = self.failing.notified();
        if let Some(why) = self.failure() {
            return why.to_owned();
        }
        failing.await;
        self.failure()
            .unwrap_or("the control plane failed")
            .to_owned()
    }

    /// Closes worker connections and stops the actors; jobs stay as stored. Later calls do
    /// nothing; every other method fails or finds no workers afterwards.
    pub async fn shutdown(&self) {
        self.stopped
            .get_or_init(|| async {
                let server = self
                    .server
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .take();
                if let Some(server) = server {
                    server.shutdown().await;
                }
                self.jobs.scheduler.stop(None);
            })
            .await;
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use nexa_runtime::{WorkerId, WorkerInfo};

    use super::{ControlPlane, ControlPlaneConfig};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_plane_whose_scheduler_stopped_says_so_instead_of_limping_on() {
        let dir = tempfile::tempdir().unwrap();
        let config = ControlPlaneConfig::new(
            "127.0.0.1:0".parse().unwrap(),
            dir.path(),
            "a-token-for-tests",
        );
        let plane = ControlPlane::start(config).await.unwrap();
        assert_eq!(plane.failure(), None);
        let worker = WorkerId::new("w1").unwrap();
        plane
            .register_worker(WorkerInfo {
                id: worker.clone(),
                cpus: 1,
                memory_mb: 1024,
                gpus: vec![],
                labels: Default::default(),
                job_types: nexa_runtime::JobType::ALL.into_iter().collect(),
            })
            .await
            .unwrap();
        plane.jobs.scheduler.stop(None);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while plane.failure().is_none() {
            assert!(tokio::time::Instant::now() < deadline);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let failure = plane.failure().unwrap().to_owned();
        assert!(failure.contains("the scheduler failed"), "{failure}");
        let refused = plane
            .next_job(worker, vec![], Duration::ZERO)
            .await
            .unwrap_err();
        assert!(refused.to_string().contains("restarted"), "{refused}");
        // Serving until a shutdown that never comes ends with the failure instead.
        let served = plane.run_until(std::future::pending()).await;
        assert!(
            matches!(&served, Err(super::PlaneError::Unavailable(why)) if why.contains("the scheduler failed")),
            "{served:?}"
        );
    }
}
