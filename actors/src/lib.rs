//! Nexa Forge's actors and the stages workers run.
//!
//! So far: the [`Stage`] trait and [`StageRegistry`], and [`CommandStage`], which hands a job
//! to the user's own program.

mod command_stage;
mod stage;

pub use command_stage::CommandStage;
pub use stage::{BoxFuture, LogSink, Progress, Stage, StageContext, StageError, StageRegistry};
