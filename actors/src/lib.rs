//! Nexa Forge's actors and the stages workers run.
//!
//! - [`ControlPlane`]: the store, the scheduler, job and session actors, and the QUIC server
//!   workers join. Submit, inspect and cancel jobs through it when embedding Nexa Forge.
//! - [`WorkerNode`]: a worker agent and a stage supervisor per job it runs.
//! - Stages: the [`Stage`] trait and [`StageRegistry`]; [`CommandStage`], which hands a job to
//!   the user's own program; [`AuditStage`], the built-in dataset audit.
//!
//! Embedding a control plane and submitting a job (`examples/embedded.rs` runs a whole
//! cluster in one process):
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use nexa_actors::{ControlPlane, ControlPlaneConfig};
//! use nexa_runtime::{AuditParams, JobParams, JobSpec};
//!
//! let config = ControlPlaneConfig::new("127.0.0.1:7443".parse()?, "var", "a-long-join-token");
//! let plane = ControlPlane::start(config).await?;
//! let job = plane
//!     .submit(JobSpec::new(JobParams::Audit(AuditParams {
//!         label_column: Some("label".into()),
//!         ..AuditParams::new("data/train.csv")
//!     })))
//!     .await?;
//! println!("{} is {}", job.id, job.state);
//! # Ok(())
//! # }
//! ```
//!
//! It deliberately holds no HTTP and no CLI: those are the `nexa` binary's.

mod artifacts;
mod audit_stage;
mod clock;
mod command_stage;
mod control;
mod lifecycle;
mod metrics;
mod stage;
mod worker;

pub use artifacts::{Artifacts, ModelSource, is_location};
pub use audit_stage::AuditStage;
pub use clock::now;
pub use command_stage::{CommandStage, INVALID_INPUT_EXIT, kill_leftover_programs};
pub use control::{
    ControlPlane, ControlPlaneConfig, FollowFrom, GateVerdict, HeartbeatAnswer, HeldLease,
    LogEvent, PipelineError, PipelineRun, PlaneError, Replica, RunEvent, RunState, StartError,
    StepRun, StepState,
};
pub use lifecycle::{
    CHECKPOINT_INTERVAL, DEFAULT_BASE, DEFAULT_STUDENT, DeployStage, DistillStage,
    EVALUATION_METRICS, EvaluateStage, GENERATED_SPLIT, GenerateStage, HealthProbes,
    KNOWN_HYPERPARAMETERS, MAX_ROWS, TrainStage, builtin_stages, builtin_stages_serving,
    builtin_stages_with, endpoint_name,
};
pub use metrics::{DISPATCH_BUCKETS, Histogram, Metrics};
/// Sets the threads the built-in stages' CPU kernels may use (see
/// [`nexa_compute::set_threads`]); the results do not depend on it.
pub use nexa_compute::set_threads as set_cpu_threads;
pub use stage::{
    BoxFuture, FnStage, LogSink, Progress, Serving, Stage, StageContext, StageError, StageRegistry,
    stage_fn,
};
pub use worker::{RestartLimit, WorkerConfig, WorkerNode, local_gpus};

/// Replaces the file at `path` whole with `bytes`, for this user only: written beside it,
/// synced, then renamed over it, so a reader never sees half of it.
pub fn replace_private(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let next = path.with_extension("next");
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(&next)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&next, path)
}

/// Makes `dir` and the folders above it that are missing, readable by this user only. A
/// folder that exists keeps its mode.
pub(crate) fn private_dir(dir: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}
