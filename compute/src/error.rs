//! Why a dataset, model, training or evaluation operation failed.

use std::io;
use std::path::PathBuf;

/// The error of every operation outside the audit: generating, reading and writing datasets,
/// building and running models, training, checkpoints and evaluation.
///
/// [`ComputeError::is_invalid_input`] says whose fault it is: everything but an I/O error is
/// the input's (a bad argument, a malformed file, a model that does not fit the data), and
/// retrying the same input will not help.
#[derive(Debug, thiserror::Error)]
pub enum ComputeError {
    /// An argument is out of range or inconsistent with another.
    #[error("invalid {what}: {reason}")]
    InvalidArgument {
        /// The argument, e.g. `rows` or `train fraction`.
        what: String,
        /// What is wrong and what would be accepted.
        reason: String,
    },
    /// Two matrices that must fit together do not.
    #[error("shape mismatch in {op}: {detail}")]
    Shape {
        /// The operation, e.g. `matmul`.
        op: &'static str,
        /// The shapes involved.
        detail: String,
    },
    /// A file could not be opened, read, written or renamed.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done, e.g. `cannot write`.
        action: &'static str,
        /// The file or folder.
        path: PathBuf,
        /// The operating system's reason.
        #[source]
        source: io::Error,
    },
    /// A dataset file is not what it should be.
    #[error("malformed dataset {path}: {reason}")]
    Dataset {
        /// The file.
        path: PathBuf,
        /// What is wrong, with the line or row where that helps.
        reason: String,
    },
    /// A checkpoint or model file is damaged, of another format, or of another model.
    #[error("bad model or checkpoint {path}: {reason}")]
    Checkpoint {
        /// The file or folder.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The loss became NaN or infinite: the learning rate is likely too high.
    #[error(
        "training diverged at step {step} (loss {loss}); lower the learning rate or enable gradient clipping"
    )]
    Diverged {
        /// The optimizer step at which it happened.
        step: u64,
        /// The loss seen.
        loss: f32,
    },
    /// The backend failed (a device error); on the CPU this does not happen.
    #[error("backend {backend}: {reason}")]
    Backend {
        /// The backend's name.
        backend: String,
        /// What failed.
        reason: String,
    },
}

impl ComputeError {
    /// Whether the failure is the input's fault, so that retrying the same input is pointless.
    pub fn is_invalid_input(&self) -> bool {
        !matches!(self, Self::Io { .. } | Self::Backend { .. })
    }

    pub(crate) fn invalid(what: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::InvalidArgument {
            what: what.into(),
            reason: reason.into(),
        }
    }

    pub(crate) fn io(action: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        Self::Io {
            action,
            path: path.into(),
            source,
        }
    }
}
