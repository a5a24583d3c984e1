//! Nexa Forge's actors and the stages workers run.
//!
//! - [`ControlPlane`]: the store, the scheduler, job and session actors, and the QUIC server
//!   workers join. Submit, inspect and cancel jobs through it when embedding Nexa Forge.
//! - [`WorkerNode`]: a worker agent and a stage supervisor per job it runs.
//! - Stages: the [`Stage`] trait and [`StageRegistry`]; [`CommandStage`], which hands a job to
//!   the user's own program; [`AuditStage`], the built-in dataset audit.

mod audit_stage;
mod clock;
mod command_stage;
mod control;
mod stage;
mod worker;

pub use audit_stage::AuditStage;
pub use clock::now;
pub use command_stage::CommandStage;
pub use control::{ControlPlane, ControlPlaneConfig, StartError};
pub use stage::{BoxFuture, LogSink, Progress, Stage, StageContext, StageError, StageRegistry};
pub use worker::{RestartPolicy, WorkerConfig, WorkerNode};
