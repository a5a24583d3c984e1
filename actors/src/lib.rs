//! Nexa Forge's actors and the stages workers run.
//!
//! So far: the [`Stage`] trait and [`StageRegistry`], and [`CommandStage`], which hands a job
//! to the user's own program.

mod clock;
mod command_stage;
mod control;
mod stage;
mod worker;

pub use clock::now;
pub use command_stage::CommandStage;
pub use control::{ControlPlane, ControlPlaneConfig, StartError};
pub use stage::{BoxFuture, LogSink, Progress, Stage, StageContext, StageError, StageRegistry};
pub use worker::{RestartPolicy, WorkerConfig, WorkerNode};
