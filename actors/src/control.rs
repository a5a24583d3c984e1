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

mod artifacts;
mod endpoints;
mod job_actor;
mod lease;
mod pipelines;
mod scheduler;
mod session;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use nexa_runtime::wire::{Assignment, ErrorCode, HeartbeatAck, Message, RunningJob, Welcome};
use nexa_runtime::{
    Epoch, FaultKind, Job, JobError, JobId, JobOutput, JobSpec, JobState, Lease, LeaseStatus,
    LeaseToken, ListQuery, LogAck, LogPage, LogQuery, Page, PendingReason, Registry, StorageFault,
    Store, StoreConfig, StoreError, Submitted, WorkerId, WorkerInfo, WorkerRecord,
};
use nexa_storage::{ArtifactError, ArtifactStore, ByteStream, RedbStore, RemoteBlobs, RemoteError};
use nexa_transport::{Fingerprint, Handler, Server, ServerConfig, Session};
use ractor::rpc::CallResult;
use ractor::{Actor, ActorRef, RpcReplyPort};
use tracing::{info, warn};

use self::endpoints::Endpoints;
pub use self::endpoints::Replica;
use self::job_actor::{JobActors, JobMsg};
use self::lease::LeaseKey;
use self::pipelines::Pipelines;
pub use self::pipelines::{
    GateVerdict, PipelineError, PipelineRun, RunEvent, RunState, StepRun, StepState,
};
use self::scheduler::{Scheduler, SchedulerMsg};
use self::session::{SessionActor, SessionMsg};
use crate::clock::now;
use crate::metrics::Metrics;
use nexa_runtime::pipeline::PipelineSpec;

/// How long an actor call may take before the caller gives up on it.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Settings of a control plane.
#[derive(Clone, Debug)]
pub struct ControlPlaneConfig {
    /// Where workers connect (QUIC/UDP); port 0 picks a free one.
    pub listen: SocketAddr,
    /// The data folder: the store (`nexa_forge.db`), the certificate (`tls/`) and the
    /// artifacts (`artifacts/`).
    pub data_dir: PathBuf,
    /// The secret workers must present.
    pub join_token: String,
    /// Leases, retries and logs.
    pub store: StoreConfig,
    /// How often workers are asked to heartbeat.
    pub heartbeat: Duration,
    /// The longest a worker's request for work is held open.
    pub long_poll: Duration,
    /// Where artifacts' bytes go, e.g. `s3://bucket/prefix` (credentials and endpoint from the
    /// usual variables); `None` keeps them in the data folder. Their metadata stays there.
    pub artifacts_remote: Option<String>,
    /// A worker not heard from for this long is forgotten (it can register again).
    pub worker_retention: Duration,
    /// Finished jobs are deleted (with their logs) this long after they finished; `None`
    /// keeps them. Jobs that registered a model version, and jobs that a job not yet
    /// finished depends on, are kept.
    pub job_retention: Option<Duration>,
}

impl ControlPlaneConfig {
    /// Defaults for everything but the address, folder and token.
    pub fn new(
        listen: SocketAddr,
        data_dir: impl Into<PathBuf>,
        join_token: impl Into<String>,
    ) -> Self {
        Self {
            listen,
            data_dir: data_dir.into(),
            join_token: join_token.into(),
            store: StoreConfig {
                // Four heartbeats: a worker missing that many is not leased a job, so the
                // request for work a dead worker left parked is not answered with one.
                worker_liveness: Some(Duration::from_secs(2)),
                ..StoreConfig::default()
            },
            heartbeat: Duration::from_millis(500),
            long_poll: Duration::from_secs(10),
            artifacts_remote: None,
            worker_retention: Duration::from_secs(24 * 3600),
            job_retention: None,
        }
    }
}

/// Why a control plane did not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The store cannot be opened.
    #[error(transparent)]
    Store(#[from] nexa_storage::OpenError),
    /// The store failed while the control plane rebuilt its view.
    #[error("cannot read the store: {0}")]
    Recover(#[from] StoreError),
    /// The QUIC server did not start.
    #[error(transparent)]
    Server(#[from] nexa_transport::ServerError),
    /// The artifact folder cannot be made.
    #[error(transparent)]
    Artifacts(#[from] ArtifactError),
    /// The object storage for artifacts cannot be used.
    #[error(transparent)]
    RemoteArtifacts(#[from] RemoteError),
    /// An actor did not start.
    #[error("cannot start the {0} actor: {1}")]
    Actor(&'static str, String),
    /// The key of lease tokens cannot be read or made.
    #[error("the lease key: {0}")]
    LeaseKey(std::io::Error),
}

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

/// Asks the job's actor, or the store directly when the job has no actor (it is not leased,
/// so the store gives the right answer, usually a stale lease).
pub(crate) async fn job_call<R: Send + 'static>(
    actors: &JobActors,
    store: &Arc<dyn Store>,
    job: JobId,
    message: impl FnOnce(RpcReplyPort<Result<R, StoreError>>) -> JobMsg,
    direct: impl FnOnce(&dyn Store) -> Result<R, StoreError> + Send + 'static,
) -> Result<R, StoreError> {
    if let Some(actor) = actors.get(job)
        && let Ok(CallResult::Success(result)) = actor.call(message, Some(CALL_TIMEOUT)).await
    {
        return result;
    }
    blocking(store, direct).await
}

fn unavailable(why: &str) -> StoreError {
    StorageFault::new(FaultKind::Unavailable, why).into()
}

/// A worker's reports about a leased job, through the job's actor (or the store when the job
/// has none). The QUIC handler and the HTTP API both report through these.
async fn report_started(
    actors: &JobActors,
    store: &Arc<dyn Store>,
    job: JobId,
    epoch: Epoch,
) -> Result<(), StoreError> {
    job_call(
        actors,
        store,
        job,
        |reply| JobMsg::Started { epoch, reply },
        move |s| s.start(job, epoch, now()),
    )
    .await
}

async fn report_complete(
    actors: &JobActors,
    store: &Arc<dyn Store>,
    job: JobId,
    epoch: Epoch,
    output: JobOutput,
) -> Result<(), StoreError> {
    let direct = output.clone();
    job_call(
        actors,
        store,
        job,
        |reply| JobMsg::Complete {
            epoch,
            output,
            reply,
        },
        move |s| s.complete(job, epoch, direct, now()),
    )
    .await
    .map(drop)
}

async fn report_fail(
    actors: &JobActors,
    store: &Arc<dyn Store>,
    job: JobId,
    epoch: Epoch,
    error: JobError,
) -> Result<(), StoreError> {
    let direct = error.clone();
    job_call(
        actors,
        store,
        job,
        |reply| JobMsg::Fail {
            epoch,
            error,
            reply,
        },
        move |s| s.fail(job, epoch, direct, now()),
    )
    .await
    .map(drop)
}

async fn report_logs(
    actors: &JobActors,
    store: &Arc<dyn Store>,
    job: JobId,
    epoch: Epoch,
    first_seq: u64,
    lines: Vec<String>,
) -> Result<LogAck, StoreError> {
    let direct = lines.clone();
    job_call(
        actors,
        store,
        job,
        |reply| JobMsg::Logs {
            epoch,
            first_seq,
            lines,
            reply,
        },
        move |s| s.append_logs(job, epoch, first_seq, direct, now()),
    )
    .await
}

async fn report_heartbeat(
    actors: &JobActors,
    store: &Arc<dyn Store>,
    job: JobId,
    epoch: Epoch,
    progress: Option<f64>,
) -> Result<LeaseStatus, StoreError> {
    job_call(
        actors,
        store,
        job,
        |reply| JobMsg::Heartbeat {
            epoch,
            progress,
            reply,
        },
        move |s| s.heartbeat(job, epoch, progress, now()),
    )
    .await
}

/// Renews the leases of the jobs a worker says it runs. The acknowledgement names the jobs to
/// cancel and the leases that are gone; a job whose renewal failed otherwise is left out of
/// it, and the first such failure is returned beside it.
async fn report_running(
    actors: &JobActors,
    endpoints: &Endpoints,
    store: &Arc<dyn Store>,
    worker: &WorkerId,
    jobs: Vec<RunningJob>,
) -> (HeartbeatAck, Option<StoreError>) {
    let mut ack = HeartbeatAck {
        cancel: vec![],
        lost: vec![],
    };
    let mut failure = None;
    for running in jobs {
        let job = running.job;
        match report_heartbeat(actors, store, job, running.epoch, running.progress).await {
            Ok(status) if status.cancel_requested => {
                endpoints.forget(job);
                ack.cancel.push(job);
            }
            Ok(_) => serving(endpoints, store, worker, job, running.serving).await,
            Err(e) if e.is_stale() || matches!(e, StoreError::NotFound(_)) => {
                endpoints.forget(job);
                ack.lost.push(job);
            }
            Err(e) => {
                failure.get_or_insert(e);
            }
        }
    }
    (ack, failure)
}

/// Records where `job` serves, as its worker says (a deploy job's ready replica), or that it
/// does not.
async fn serving(
    endpoints: &Endpoints,
    store: &Arc<dyn Store>,
    worker: &WorkerId,
    job: JobId,
    url: Option<String>,
) {
    let Some(url) = url.filter(|u| nexa_runtime::wire::check_serving_url(u).is_ok()) else {
        endpoints.forget(job);
        return;
    };
    if endpoints.knows(job, &url) {
        endpoints.refresh(job);
        return;
    }
    // Newly ready: its endpoint's name is in the job's params.
    if let Ok(found) = blocking(store, move |s| s.get(job)).await
        && let nexa_runtime::JobParams::Deploy(p) = &found.spec.params
    {
        endpoints.heard(Replica {
            job,
            endpoint: crate::endpoint_name(&p.model_id, &p.target),
            worker: worker.clone(),
            url,
        });
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

/// A running control plane.
pub struct ControlPlane {
    actors: Arc<JobActors>,
    endpoints: Arc<Endpoints>,
    store: Arc<dyn Store>,
    artifacts: ArtifactStore,
    remote: Option<RemoteBlobs>,
    scheduler: ActorRef<SchedulerMsg>,
    server: Server,
    metrics: Arc<Metrics>,
    long_poll: Duration,
    lease_key: Arc<LeaseKey>,
    handler: Arc<PlaneHandler>,
    /// Why the control plane cannot work any more, once it cannot.
    failure: Arc<std::sync::OnceLock<String>>,
    jobs: Jobs,
    pipelines: Arc<Pipelines>,
}

/// Jobs as the control plane's own features (pipelines) submit and cancel them: as a user
/// would, through the job actors and the scheduler.
#[derive(Clone)]
pub(crate) struct Jobs {
    store: Arc<dyn Store>,
    actors: Arc<JobActors>,
    endpoints: Arc<Endpoints>,
    scheduler: ActorRef<SchedulerMsg>,
}

impl Jobs {
    /// See [`ControlPlane::submit_all`].
    pub(crate) async fn submit_all(&self, spec: JobSpec) -> Result<Vec<Submitted>, StoreError> {
        let replicas = match &spec.params {
            nexa_runtime::JobParams::Deploy(p) if p.replicas > 1 => p.replicas,
            _ => 1,
        };
        let submitted = if replicas == 1 {
            vec![blocking(&self.store, move |s| s.submit(spec, now())).await?]
        } else {
            let specs = (1..=replicas)
                .map(|n| {
                    let mut replica = spec.clone();
                    if n > 1 {
                        replica.idempotency_key =
                            spec.idempotency_key.as_deref().map(|k| replica_key(k, n));
                    }
                    replica
                })
                .collect();
            blocking(&self.store, move |s| s.submit_batch(specs, now())).await?
        };
        let _ = self.scheduler.cast(SchedulerMsg::Wake);
        Ok(submitted)
    }

    /// See [`ControlPlane::cancel`].
    pub(crate) async fn cancel(&self, id: JobId, reason: String) -> Result<JobState, StoreError> {
        let direct = reason.clone();
        // A deploy job being cancelled serves no more requests.
        self.endpoints.forget(id);
        let state = job_call(
            &self.actors,
            &self.store,
            id,
            |reply| JobMsg::Cancel { reason, reply },
            move |s| s.cancel(id, direct, now()),
        )
        .await?;
        let _ = self.scheduler.cast(SchedulerMsg::Wake);
        Ok(state)
    }

    /// One job.
    pub(crate) async fn get(&self, id: JobId) -> Result<Job, StoreError> {
        blocking(&self.store, move |s| s.get(id)).await
    }

    /// The deploy jobs not finished, newest first (see [`ControlPlane::deployments`]).
    pub(crate) async fn deployments(&self) -> Result<Vec<Job>, StoreError> {
        let mut out = Vec::new();
        for state in [
            JobState::Waiting,
            JobState::Queued,
            JobState::Assigned,
            JobState::Running,
        ] {
            let mut before = None;
            loop {
                let query = ListQuery {
                    state: Some(state),
                    job_type: Some(nexa_runtime::JobType::Deploy),
                    before,
                    limit: 1000,
                };
                let page = blocking(&self.store, move |s| s.list(query)).await?;
                out.extend(page.jobs);
                match page.next_before {
                    Some(b) => before = Some(b),
                    None => break,
                }
            }
        }
        out.sort_by_key(|j| std::cmp::Reverse(j.id));
        Ok(out)
    }

    /// Whether `job` is a deploy job whose replica is ready.
    pub(crate) fn serving(&self, job: JobId) -> bool {
        self.endpoints.ready(None).iter().any(|r| r.job == job)
    }

    /// The model registry as it stands.
    pub(crate) async fn registry(&self) -> Result<Registry, StoreError> {
        artifacts::registry(&self.store).await
    }
}

impl std::fmt::Debug for ControlPlane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlPlane")
            .field("addr", &self.server.local_addr())
            .finish_non_exhaustive()
    }
}

impl ControlPlane {
    /// Opens (or creates) the store in the data folder and starts.
    pub async fn start(config: ControlPlaneConfig) -> Result<Self, StartError> {
        let path = config.data_dir.join("nexa_forge.db");
        let store_config = config.store.clone();
        let dir = config.data_dir.clone();
        let store = tokio::task::spawn_blocking(move || {
            // Jobs' params, logs and results are the users': the folders this makes and the
            // database are for this user only. A folder that exists keeps its mode.
            let folder = |source| nexa_storage::OpenError::Folder {
                path: dir.clone(),
                source,
            };
            crate::private_dir(&dir).map_err(folder)?;
            let store = RedbStore::open(&path, store_config)?;
            std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
                .map_err(folder)?;
            Ok::<_, nexa_storage::OpenError>(store)
        })
        .await
        .map_err(|e| StartError::Actor("store", e.to_string()))??;
        for e in store.recovered() {
            info!(job = %e.job, state = %e.state, "attempt ended while the control plane was down: {}", e.cause());
        }
        let lost = store.recovered().iter().filter(|e| !e.timed_out).count();
        let plane = Self::start_with_store(config, Arc::new(store)).await?;
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
        let args = scheduler::Args {
            actors: actors.clone(),
            store: store.clone(),
            metrics: metrics.clone(),
        };
        let (scheduler, ended) = Actor::spawn(None, Scheduler, args)
            .await
            .map_err(|e| StartError::Actor("scheduler", e.to_string()))?;
        // The scheduler is permanent: if it stops (a bug), the plane cannot lease anything,
        // so it says so — in its health and in every refusal to lease — rather than limp on.
        let failure: Arc<std::sync::OnceLock<String>> = Arc::default();
        {
            let (failure, scheduler) = (failure.clone(), scheduler.clone());
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
            ));
        }
        let welcome = Welcome {
            session: 0,
            lease_ttl_ms: config.store.lease_ttl.as_millis() as u64,
            heartbeat_ms: config.heartbeat.as_millis() as u64,
            long_poll_ms: config.long_poll.as_millis() as u64,
        };
        let handler = Arc::new(PlaneHandler {
            actors: actors.clone(),
            endpoints: endpoints.clone(),
            sessions: Default::default(),
            store: store.clone(),
            artifacts: artifacts.clone(),
            remote: remote.clone(),
            scheduler: scheduler.clone(),
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
        let jobs = Jobs {
            store: store.clone(),
            actors: actors.clone(),
            endpoints: endpoints.clone(),
            scheduler: scheduler.clone(),
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
            actors,
            endpoints,
            store,
            artifacts,
            remote,
            scheduler,
            server,
            metrics,
            long_poll: config.long_poll,
            lease_key,
            handler,
            failure,
            jobs,
            pipelines,
        })
    }

    /// The address workers connect to.
    pub fn addr(&self) -> SocketAddr {
        self.server.local_addr()
    }

    /// The certificate fingerprint workers trust.
    pub fn fingerprint(&self) -> Fingerprint {
        self.server.fingerprint()
    }

    /// The store, for reads the methods below do not cover.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
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
    pub async fn registry(&self) -> Result<Registry, StoreError> {
        artifacts::registry(&self.store).await
    }

    /// Accepts a job (durably), then lets the scheduler offer it. A deploy job of
    /// `replicas: N` is N deploy jobs, one per replica (see [`ControlPlane::submit_all`]):
    /// this is the first.
    pub async fn submit(&self, spec: JobSpec) -> Result<Submitted, StoreError> {
        let mut all = self.submit_all(spec).await?;
        Ok(all.swap_remove(0))
    }

    /// Accepts a job, or, for a deploy job of `replicas: N`, one deploy job per replica in one
    /// transaction (each its own lease, placement, restarts and cancel; the endpoint routes to
    /// all of them). With an idempotency key `K`, the replicas after the first take
    /// `K#replica-2`… so a retried submission makes none twice.
    pub async fn submit_all(&self, spec: JobSpec) -> Result<Vec<Submitted>, StoreError> {
        self.jobs.submit_all(spec).await
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
    pub async fn get(&self, id: JobId) -> Result<Job, StoreError> {
        blocking(&self.store, move |s| s.get(id)).await
    }

    /// Jobs, newest first.
    pub async fn list(&self, query: ListQuery) -> Result<Page, StoreError> {
        blocking(&self.store, move |s| s.list(query)).await
    }

    /// How many jobs are in each state, counted at one moment.
    pub async fn counts(&self) -> Result<Vec<(JobState, u64)>, StoreError> {
        blocking(&self.store, |s| s.counts()).await
    }

    /// How many jobs are in `state`.
    pub async fn count(&self, state: JobState) -> Result<u64, StoreError> {
        blocking(&self.store, move |s| s.count(state)).await
    }

    /// A job's log lines.
    pub async fn logs(&self, id: JobId, query: LogQuery) -> Result<LogPage, StoreError> {
        blocking(&self.store, move |s| s.read_logs(id, query)).await
    }

    /// Why a job has not started.
    pub async fn pending_reason(&self, id: JobId) -> Result<Option<PendingReason>, StoreError> {
        blocking(&self.store, move |s| s.pending_reason(id, now())).await
    }

    /// The registered workers.
    pub async fn workers(&self) -> Result<Vec<WorkerRecord>, StoreError> {
        blocking(&self.store, |s| s.list_workers()).await
    }

    /// Cancels a job; a running one is told to stop and ends `cancelled` once it has.
    pub async fn cancel(
        &self,
        id: JobId,
        reason: impl Into<String>,
    ) -> Result<JobState, StoreError> {
        self.jobs.cancel(id, reason.into()).await
    }

    /// Deletes a finished job with its log (see [`Store::delete`] for what is kept), then the
    /// artifacts it made that no other job made or names.
    pub async fn delete(&self, id: JobId) -> Result<Job, StoreError> {
        let job = blocking(&self.store, move |s| s.delete(id)).await?;
        collect_artifacts(&self.store, &self.artifacts, self.remote.as_ref()).await;
        Ok(job)
    }

    /// Registers (or re-registers) a worker that speaks HTTP rather than QUIC; jobs that
    /// waited for what it offers may now be leased to it.
    pub async fn register_worker(&self, info: WorkerInfo) -> Result<WorkerRecord, StoreError> {
        let record = blocking(&self.store, move |s| s.register_worker(info, now())).await?;
        let _ = self.scheduler.cast(SchedulerMsg::Wake);
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
    ) -> Result<Option<Lease>, StoreError> {
        let wait = wait.min(self.long_poll);
        let asked = self
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
            _ => {
                return Err(unavailable(
                    self.failure()
                        .unwrap_or("the scheduler did not answer in time"),
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

    /// The worker says the leased job's stage started.
    pub async fn started(
        &self,
        job: JobId,
        epoch: Epoch,
        token: &LeaseToken,
    ) -> Result<(), StoreError> {
        self.lease_key.check(job, epoch, token)?;
        report_started(&self.actors, &self.store, job, epoch).await
    }

    /// The worker reports the leased job succeeded.
    pub async fn complete(
        &self,
        job: JobId,
        epoch: Epoch,
        token: &LeaseToken,
        output: JobOutput,
    ) -> Result<(), StoreError> {
        self.lease_key.check(job, epoch, token)?;
        self.endpoints.forget(job);
        report_complete(&self.actors, &self.store, job, epoch, output).await
    }

    /// The worker reports the leased job's attempt failed.
    pub async fn fail(
        &self,
        job: JobId,
        epoch: Epoch,
        token: &LeaseToken,
        error: JobError,
    ) -> Result<(), StoreError> {
        self.lease_key.check(job, epoch, token)?;
        self.endpoints.forget(job);
        report_fail(&self.actors, &self.store, job, epoch, error).await
    }

    /// Log lines of the leased job's attempt, numbered from `first_seq`.
    pub async fn append_logs(
        &self,
        job: JobId,
        epoch: Epoch,
        token: &LeaseToken,
        first_seq: u64,
        lines: Vec<String>,
    ) -> Result<LogAck, StoreError> {
        self.lease_key.check(job, epoch, token)?;
        report_logs(&self.actors, &self.store, job, epoch, first_seq, lines).await
    }

    /// Renews the lease of one job and records its progress.
    pub async fn job_heartbeat(
        &self,
        job: JobId,
        epoch: Epoch,
        token: &LeaseToken,
        progress: Option<f64>,
    ) -> Result<LeaseStatus, StoreError> {
        self.lease_key.check(job, epoch, token)?;
        report_heartbeat(&self.actors, &self.store, job, epoch, progress).await
    }

    /// An HTTP worker's heartbeat: it is alive, and so are `jobs`. Says which to cancel and
    /// which leases are gone (a job quoted without its lease token is one).
    pub async fn worker_heartbeat(
        &self,
        worker: WorkerId,
        jobs: Vec<RunningJob>,
    ) -> Result<HeartbeatAck, StoreError> {
        linkless_heartbeat(
            &self.actors,
            &self.endpoints,
            &self.store,
            &self.lease_key,
            worker,
            jobs,
        )
        .await
    }

    /// The answer to `message` from `worker`, a worker that speaks the QUIC protocol's
    /// messages over another link (`nexa worker --api` sends them over HTTP): exactly what
    /// its QUIC session would answer. A cancel is not pushed over such a link; the heartbeat's
    /// answer names it.
    pub async fn worker_request(&self, worker: &WorkerId, message: Message) -> Message {
        self.handler.answer(worker, None, message).await
    }

    /// The ready replicas of every endpoint, or of `endpoint`: deploy jobs whose replica
    /// passed its smoke test and whose worker said so lately.
    pub fn replicas(&self, endpoint: Option<&str>) -> Vec<Replica> {
        self.endpoints.ready(endpoint)
    }

    /// The ready replicas of `endpoint` in the order a request should try them (round robin
    /// over requests).
    pub fn route(&self, endpoint: &str) -> Vec<Replica> {
        self.endpoints.route(endpoint)
    }

    /// A replica that did not answer a request (its server refused the connection or failed):
    /// not routed to until its worker's next heartbeat says it serves.
    pub fn replica_failed(&self, job: JobId) {
        self.endpoints.forget(job);
    }

    /// The deploy jobs not finished (queued, placed or serving), newest first: every
    /// endpoint's replicas, ready or not.
    pub async fn deployments(&self) -> Result<Vec<Job>, StoreError> {
        self.jobs.deployments().await
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

    /// Closes worker connections and stops the actors. Jobs stay as stored.
    pub async fn shutdown(self) {
        self.server.shutdown().await;
        self.scheduler.stop(None);
    }
}

/// Forgets the workers not heard from for `retention`, now and then, for as long as the store
/// is in use.
async fn prune_workers(store: std::sync::Weak<dyn Store>, retention: Duration) {
    let every = (retention / 4).clamp(Duration::from_millis(100), Duration::from_secs(60));
    loop {
        tokio::time::sleep(every).await;
        let Some(store) = store.upgrade() else {
            return;
        };
        let now = now();
        let pruned = blocking(&store, move |s| {
            let mut pruned = Vec::new();
            for w in s.list_workers()? {
                if now.saturating_since(w.last_seen) >= retention {
                    s.remove_worker(&w.info.id)?;
                    pruned.push(w.info.id);
                }
            }
            Ok(pruned)
        })
        .await;
        match pruned {
            Ok(pruned) => {
                for id in pruned {
                    info!(worker = %id, "forgot a worker not heard from for {retention:?}");
                }
            }
            Err(e) => warn!("cannot prune lost workers: {e}"),
        }
    }
}

/// Deletes the finished jobs older than `retention`, now and then, a bounded number at a time
/// (each pass is one write transaction), for as long as the store is in use.
/// Collects the artifacts of deleted jobs that no job uses (see [`artifacts::collect`]); a
/// failure is logged, and the next collection finishes the work.
async fn collect_artifacts(
    store: &Arc<dyn Store>,
    artifacts: &ArtifactStore,
    remote: Option<&RemoteBlobs>,
) {
    match artifacts::collect(store, artifacts, remote).await {
        Ok(0) => {}
        Ok(n) => info!(count = n, "removed artifacts no job uses any more"),
        Err(e) => warn!("cannot collect the artifacts of deleted jobs: {e}"),
    }
}

async fn prune_jobs(
    store: std::sync::Weak<dyn Store>,
    artifacts: ArtifactStore,
    remote: Option<RemoteBlobs>,
    retention: Duration,
) {
    /// Finished jobs read in one pass.
    const SCAN: usize = 1000;
    let every = (retention / 4).clamp(Duration::from_millis(100), Duration::from_secs(60));
    let mut from = JobId(1);
    loop {
        tokio::time::sleep(every).await;
        let Some(store) = store.upgrade() else {
            return;
        };
        let before = nexa_runtime::Timestamp(now().0.saturating_sub(retention.as_millis() as u64));
        match blocking(&store, move |s| {
            s.delete_finished_before(before, from, SCAN)
        })
        .await
        {
            Ok((deleted, next)) => {
                if !deleted.is_empty() {
                    info!(
                        count = deleted.len(),
                        "deleted finished jobs older than {retention:?}"
                    );
                    collect_artifacts(&store, &artifacts, remote.as_ref()).await;
                }
                from = next.unwrap_or(JobId(1));
            }
            Err(e) => warn!("cannot delete old jobs: {e}"),
        }
    }
}

/// The transport's view of the control plane.
struct PlaneHandler {
    actors: Arc<JobActors>,
    endpoints: Arc<Endpoints>,
    /// The session actor of each connected worker, by session.
    sessions: std::sync::Mutex<HashMap<u64, ActorRef<SessionMsg>>>,
    store: Arc<dyn Store>,
    artifacts: ArtifactStore,
    remote: Option<RemoteBlobs>,
    scheduler: ActorRef<SchedulerMsg>,
    welcome: Welcome,
    long_poll: Duration,
    metrics: Arc<Metrics>,
    lease_key: Arc<LeaseKey>,
}

/// The heartbeat of a worker with no QUIC session (it speaks HTTP): it is alive, and so are
/// `jobs`. Says which to cancel and which leases are gone (a job quoted without its lease
/// token is one).
async fn linkless_heartbeat(
    actors: &JobActors,
    endpoints: &Endpoints,
    store: &Arc<dyn Store>,
    key: &LeaseKey,
    worker: WorkerId,
    jobs: Vec<RunningJob>,
) -> Result<HeartbeatAck, StoreError> {
    let id = worker.clone();
    blocking(store, move |s| s.worker_heartbeat(&id, now())).await?;
    let (held, foreign) = held_leases(key, jobs);
    match report_running(actors, endpoints, store, &worker, held).await {
        (mut ack, None) => {
            ack.lost.extend(foreign);
            Ok(ack)
        }
        (_, Some(e)) => Err(e),
    }
}

/// The jobs of a heartbeat whose lease tokens hold, and those of the others (to be told lost).
fn held_leases(key: &LeaseKey, jobs: Vec<RunningJob>) -> (Vec<RunningJob>, Vec<JobId>) {
    let (held, foreign): (Vec<_>, Vec<_>) = jobs
        .into_iter()
        .partition(|j| key.check(j.job, j.epoch, &j.lease_token).is_ok());
    (held, foreign.into_iter().map(|j| j.job).collect())
}

/// The lease a message reports under, for the messages that report on a job.
/// The idempotency key of replica `n` of a deploy job submitted under `key`: `key#replica-n`,
/// or, for a key too long to take the suffix (keys hold at most 256 bytes), its SHA-256.
fn replica_key(key: &str, n: u32) -> String {
    use sha2::Digest as _;
    let suffix = format!("#replica-{n}");
    if key.len() + suffix.len() <= 256 {
        format!("{key}{suffix}")
    } else {
        let digest = nexa_runtime::Digest(sha2::Sha256::digest(key.as_bytes()).into());
        format!("{digest}{suffix}")
    }
}

fn lease_of(message: &Message) -> Option<(JobId, Epoch, &LeaseToken)> {
    match message {
        Message::Started {
            job,
            epoch,
            lease_token,
        }
        | Message::Complete {
            job,
            epoch,
            lease_token,
            ..
        }
        | Message::Fail {
            job,
            epoch,
            lease_token,
            ..
        }
        | Message::ArtifactCommit {
            job,
            epoch,
            lease_token,
            ..
        }
        | Message::CheckpointSaved {
            job,
            epoch,
            lease_token,
            ..
        }
        | Message::CheckpointQuery {
            job,
            epoch,
            lease_token,
        } => Some((*job, *epoch, lease_token)),
        Message::LogBatch(b) => Some((b.job, b.epoch, &b.lease_token)),
        _ => None,
    }
}

fn refusal(e: &StoreError) -> Message {
    let code = match e {
        e if e.is_stale() => ErrorCode::Stale,
        StoreError::NotFound(_) => ErrorCode::NotFound,
        StoreError::Storage(_) => ErrorCode::Unavailable,
        _ => ErrorCode::BadRequest,
    };
    Message::Error {
        code,
        message: e.to_string(),
    }
}

/// `Ack`, or the refusal.
fn ack<T>(result: Result<T, StoreError>) -> Message {
    result.map_or_else(|e| refusal(&e), |_| Message::Ack)
}

impl PlaneHandler {
    fn lock_sessions(&self) -> std::sync::MutexGuard<'_, HashMap<u64, ActorRef<SessionMsg>>> {
        self.sessions.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Handler for PlaneHandler {
    async fn connected(
        &self,
        session: &Session,
        hello: nexa_runtime::wire::Hello,
    ) -> Result<Welcome, String> {
        let info = WorkerInfo {
            id: hello.worker.clone(),
            cpus: hello.cpus,
            memory_mb: hello.memory_mb,
            gpus: hello.gpus,
            labels: hello.labels,
            job_types: hello.job_types,
        };
        blocking(&self.store, move |s| s.register_worker(info, now()))
            .await
            .map_err(|e| e.to_string())?;
        let args = session::Args {
            actors: self.actors.clone(),
            endpoints: self.endpoints.clone(),
            worker: hello.worker.clone(),
            store: self.store.clone(),
        };
        let (actor, _) = Actor::spawn(None, SessionActor, args)
            .await
            .map_err(|e| format!("cannot start the session: {e}"))?;
        self.lock_sessions().insert(session.id(), actor);
        info!(worker = %hello.worker, session = session.id(), addr = %session.remote_addr(), "worker connected");
        // A worker that registers may fit jobs that waited for it.
        let _ = self.scheduler.cast(SchedulerMsg::Wake);
        Ok(self.welcome.clone())
    }

    async fn request(&self, session: &Session, message: Message) -> Message {
        self.answer(session.worker(), Some(session), message).await
    }

    async fn disconnected(&self, session: &Session, reason: String) {
        warn!(worker = %session.worker(), session = session.id(), reason, "worker disconnected");
        if let Some(actor) = self.lock_sessions().remove(&session.id()) {
            actor.stop(None);
        }
    }
}

impl PlaneHandler {
    /// The answer to a request of `worker`, on its QUIC `session` or, with none, over
    /// another link (HTTP).
    async fn answer(
        &self,
        worker: &WorkerId,
        session: Option<&Session>,
        message: Message,
    ) -> Message {
        let (actors, store) = (&*self.actors, &self.store);
        if let Some((job, epoch, token)) = lease_of(&message)
            && let Err(e) = self.lease_key.check(job, epoch, token)
        {
            warn!(%job, %epoch, %worker, "a report without its lease token was refused");
            return refusal(&e);
        }
        match message {
            Message::AskForWork(ask) => {
                let wait = Duration::from_millis(ask.wait_ms).min(self.long_poll);
                let worker = worker.clone();
                let asked = self
                    .scheduler
                    .call(
                        |reply| SchedulerMsg::AskForWork {
                            worker,
                            free_gpus: ask.free_gpus,
                            wait,
                            session: session.cloned(),
                            reply,
                        },
                        Some(wait + CALL_TIMEOUT),
                    )
                    .await;
                match asked {
                    Ok(CallResult::Success(Ok(Some(lease)))) => {
                        self.metrics.record_dispatch(&lease.job);
                        Message::Assignment(Assignment {
                            job: lease.job.id,
                            spec: lease.job.spec,
                            attempt: lease.attempt,
                            epoch: lease.epoch,
                            lease_token: self.lease_key.token(lease.job.id, lease.epoch),
                            lease_expires_at: lease.lease_expires_at,
                            deadline: lease.deadline,
                        })
                    }
                    Ok(CallResult::Success(Ok(None))) => Message::NoWork,
                    Ok(CallResult::Success(Err(e))) => refusal(&e),
                    _ => Message::Error {
                        code: ErrorCode::Unavailable,
                        message: "the scheduler did not answer".into(),
                    },
                }
            }
            Message::Started { job, epoch, .. } => {
                ack(report_started(actors, store, job, epoch).await)
            }
            // An attempt that ended serves no more (a deploy job's replica).
            Message::Complete {
                job, epoch, output, ..
            } => {
                self.endpoints.forget(job);
                ack(report_complete(actors, store, job, epoch, output).await)
            }
            Message::Fail {
                job, epoch, error, ..
            } => {
                self.endpoints.forget(job);
                ack(report_fail(actors, store, job, epoch, error).await)
            }
            Message::LogBatch(batch) => {
                let job = batch.job;
                match report_logs(
                    actors,
                    store,
                    job,
                    batch.epoch,
                    batch.first_seq,
                    batch.lines,
                )
                .await
                {
                    Ok(ack) => Message::LogAck {
                        job,
                        next_seq: ack.next_seq,
                    },
                    Err(e) => refusal(&e),
                }
            }
            Message::Heartbeat(hb) if session.is_none() => {
                match linkless_heartbeat(
                    actors,
                    &self.endpoints,
                    store,
                    &self.lease_key,
                    worker.clone(),
                    hb.jobs,
                )
                .await
                {
                    Ok(ack) => Message::HeartbeatAck(ack),
                    Err(e) => refusal(&e),
                }
            }
            Message::Heartbeat(mut hb) => {
                let (held, foreign) = held_leases(&self.lease_key, hb.jobs);
                hb.jobs = held;
                let actor = session.and_then(|s| self.lock_sessions().get(&s.id()).cloned());
                let Some(actor) = actor else {
                    return Message::Error {
                        code: ErrorCode::Unavailable,
                        message: "the session is gone".into(),
                    };
                };
                match actor
                    .call(|reply| SessionMsg::Heartbeat(hb, reply), Some(CALL_TIMEOUT))
                    .await
                {
                    Ok(CallResult::Success(mut ack)) => {
                        ack.lost.extend(foreign);
                        Message::HeartbeatAck(ack)
                    }
                    _ => Message::Error {
                        code: ErrorCode::Unavailable,
                        message: "the session did not answer".into(),
                    },
                }
            }
            Message::Goodbye { drain } => {
                let worker = worker.clone();
                let result = if drain {
                    blocking(store, move |s| s.drain_worker(&worker, now()))
                        .await
                        .map(drop)
                } else {
                    blocking(store, move |s| s.remove_worker(&worker)).await
                };
                ack(result)
            }
            other => {
                let name = other.name();
                match artifacts::answer(store, &self.artifacts, self.remote.as_ref(), other).await {
                    Some(answer) => answer,
                    None => Message::Error {
                        code: ErrorCode::BadRequest,
                        message: format!("a worker does not send {name}"),
                    },
                }
            }
        }
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
        plane.scheduler.stop(None);
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
        plane.shutdown().await;
    }
}
