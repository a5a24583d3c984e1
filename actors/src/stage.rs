//! What a worker runs for a job: the [`Stage`] trait, what a stage is given, and the registry
//! mapping job types to stages.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;

use nexa_runtime::{FailureClass, JobError, JobId, JobOutput, JobSpec, JobType};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::artifacts::Artifacts;

/// A boxed future, so stages can be kept as trait objects.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// Where a stage writes its log lines. They leave the worker while the stage runs.
#[derive(Clone, Debug)]
pub struct LogSink(mpsc::UnboundedSender<String>);

impl LogSink {
    /// A sink and the receiving end the worker drains.
    pub fn channel() -> (Self, mpsc::UnboundedReceiver<String>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (Self(tx), rx)
    }

    /// Logs one line.
    pub fn line(&self, line: impl Into<String>) {
        // The receiver is gone only once the attempt is over; late lines have nowhere to go.
        let _ = self.0.send(line.into());
    }
}

/// Where a stage reports how far it is, from 0.0 to 1.0.
#[derive(Clone, Debug)]
pub struct Progress(Arc<watch::Sender<Option<f64>>>);

impl Progress {
    /// A reporter and the receiving end the worker reads.
    pub fn channel() -> (Self, watch::Receiver<Option<f64>>) {
        let (tx, rx) = watch::channel(None);
        (Self(Arc::new(tx)), rx)
    }

    /// Reports progress; values outside 0.0..=1.0 are clamped, NaN is ignored.
    pub fn set(&self, fraction: f64) {
        if !fraction.is_nan() {
            self.0.send_replace(Some(fraction.clamp(0.0, 1.0)));
        }
    }
}

/// Where a serving stage (a `deploy` replica) says it is ready, and at which URL: the worker
/// tells the control plane in every heartbeat, which routes requests there.
#[derive(Clone, Debug)]
pub struct Serving(Arc<watch::Sender<Option<String>>>);

impl Serving {
    /// A reporter and the receiving end the worker reads.
    pub fn channel() -> (Self, watch::Receiver<Option<String>>) {
        let (tx, rx) = watch::channel(None);
        (Self(Arc::new(tx)), rx)
    }

    /// Ready at `url`.
    pub fn ready(&self, url: impl Into<String>) {
        self.0.send_replace(Some(url.into()));
    }

    /// Not ready any more (stopping, restarting).
    pub fn gone(&self) {
        self.0.send_replace(None);
    }
}

/// Everything a stage gets for one attempt.
#[derive(Clone, Debug)]
pub struct StageContext {
    /// The job.
    pub job: JobId,
    /// The attempt number, from 1.
    pub attempt: u32,
    /// What to run.
    pub spec: JobSpec,
    /// Indices of the GPUs assigned to this attempt.
    pub gpus: Vec<u32>,
    /// Log lines.
    pub logs: LogSink,
    /// Progress.
    pub progress: Progress,
    /// Where it serves, once it does.
    pub serving: Serving,
    /// Cancelled when the job is cancelled or the lease is lost: stop soon after.
    pub cancel: CancellationToken,
    /// Kept across attempts of the job: resume from the latest complete checkpoint here.
    pub checkpoint_dir: PathBuf,
    /// This attempt's artifacts.
    pub output_dir: PathBuf,
    /// Reads inputs by URI and keeps outputs beyond this worker.
    pub artifacts: Artifacts,
}

impl StageContext {
    /// The refusal of a stage made for `expected` jobs, given a job of another type.
    pub(crate) fn wrong_job_type(&self, expected: JobType) -> StageError {
        StageError::InvalidInput(format!(
            "the {expected} stage runs {expected} jobs, not {} jobs",
            self.spec.job_type()
        ))
    }
}

/// Why a stage did not produce a result.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StageError {
    /// The job's input cannot work; retrying will not help.
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// The stage failed; another attempt may succeed (the job's retry policy decides).
    #[error("{0}")]
    Failed(String),
    /// The stage crashed (it panicked, its program was killed by a signal): it is started
    /// again within the worker's restart limit, then the attempt fails.
    #[error("{0}")]
    Crashed(String),
    /// The stage stopped because it was cancelled.
    #[error("cancelled")]
    Cancelled,
}

impl StageError {
    /// As the job error recorded for the attempt: the class says whose fault it is, so the
    /// message is the reason alone.
    pub fn to_job_error(&self) -> JobError {
        match self {
            StageError::InvalidInput(m) => JobError::new(FailureClass::InvalidInput, m.clone()),
            StageError::Failed(m) | StageError::Crashed(m) => {
                JobError::new(FailureClass::StageError, m.clone())
            }
            StageError::Cancelled => JobError::new(FailureClass::Cancelled, "cancelled"),
        }
    }
}

/// Work a worker can do for a job type.
///
/// A type of one's own implements it; an async closure becomes one with [`stage_fn`] (or
/// [`StageRegistry::register_fn`]).
pub trait Stage: Send + Sync + 'static {
    /// Runs one attempt. It must return soon after `ctx.cancel` fires.
    fn run(&self, ctx: StageContext) -> BoxFuture<Result<JobOutput, StageError>>;
}

/// A [`Stage`] made of an async closure (see [`stage_fn`]).
#[derive(Clone)]
pub struct FnStage<F>(F);

impl<F> std::fmt::Debug for FnStage<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FnStage")
    }
}

/// The stage that runs `f` for each attempt.
///
/// ```
/// use nexa_actors::{StageError, StageRegistry, stage_fn};
/// use nexa_runtime::{JobOutput, JobType};
///
/// let mut stages = StageRegistry::new();
/// stages.register(
///     JobType::Evaluate,
///     stage_fn(|ctx| async move {
///         ctx.logs.line(format!("evaluating for {}", ctx.job));
///         Ok::<_, StageError>(JobOutput::default())
///     }),
/// );
/// assert_eq!(stages.job_types().collect::<Vec<_>>(), [JobType::Evaluate]);
/// ```
pub fn stage_fn<F, Fut>(f: F) -> FnStage<F>
where
    F: Fn(StageContext) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<JobOutput, StageError>> + Send + 'static,
{
    FnStage(f)
}

impl<F, Fut> Stage for FnStage<F>
where
    F: Fn(StageContext) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<JobOutput, StageError>> + Send + 'static,
{
    fn run(&self, ctx: StageContext) -> BoxFuture<Result<JobOutput, StageError>> {
        Box::pin((self.0)(ctx))
    }
}

/// The stages a worker offers, by job type.
#[derive(Clone, Default)]
pub struct StageRegistry {
    stages: BTreeMap<JobType, Arc<dyn Stage>>,
}

impl std::fmt::Debug for StageRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.stages.keys()).finish()
    }
}

impl StageRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Runs `stage` for jobs of `job_type`, replacing any stage registered before.
    pub fn register(&mut self, job_type: JobType, stage: impl Stage) -> &mut Self {
        self.stages.insert(job_type, Arc::new(stage));
        self
    }

    /// Runs the async closure `f` for jobs of `job_type` (see [`stage_fn`]).
    ///
    /// ```
    /// use nexa_actors::StageRegistry;
    /// use nexa_runtime::{JobOutput, JobType};
    ///
    /// let mut stages = StageRegistry::new();
    /// stages.register_fn(JobType::Train, |ctx| async move {
    ///     ctx.progress.set(1.0);
    ///     Ok(JobOutput::default())
    /// });
    /// ```
    pub fn register_fn<F, Fut>(&mut self, job_type: JobType, f: F) -> &mut Self
    where
        F: Fn(StageContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<JobOutput, StageError>> + Send + 'static,
    {
        self.register(job_type, stage_fn(f))
    }

    /// The stage for `job_type`.
    pub fn get(&self, job_type: JobType) -> Option<Arc<dyn Stage>> {
        self.stages.get(&job_type).cloned()
    }

    /// The job types this registry runs.
    pub fn job_types(&self) -> impl Iterator<Item = JobType> + '_ {
        self.stages.keys().copied()
    }
}
