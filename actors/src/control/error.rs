//! [`PlaneError`]: why the control plane did not do what it was asked.

use std::time::Duration;

use nexa_runtime::{JobId, StorageFault, StoreError, TransitionError};

/// Why the control plane did not do what it was asked.
///
/// The kind says what to do about it: fix the request ([`Invalid`](Self::Invalid)), look
/// for another job ([`NotFound`](Self::NotFound)), mind the job's state
/// ([`Conflict`](Self::Conflict)), or try again later ([`Store`](Self::Store),
/// [`Timeout`](Self::Timeout), [`Unavailable`](Self::Unavailable)). Nothing was changed by a
/// request that failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum PlaneError {
    /// No job has this id (it never existed, or was deleted).
    #[error("{0} does not exist")]
    NotFound(JobId),
    /// The request is not valid: a spec's field, a worker's name, a query out of range. The
    /// store's refusal names the field.
    #[error(transparent)]
    Invalid(StoreError),
    /// The request does not fit what is stored: the job has finished, a lease is no longer
    /// the caller's, an idempotency key was used for another spec, a job is still needed,
    /// a worker is not registered or is draining.
    #[error(transparent)]
    Conflict(StoreError),
    /// The store failed underneath; try again.
    #[error(transparent)]
    Store(StorageFault),
    /// One of the plane's actors did not answer in time; try again.
    #[error("the {actor} did not answer within {}s", after.as_secs())]
    Timeout {
        /// Which actor.
        actor: &'static str,
        /// How long it was given.
        after: Duration,
    },
    /// The control plane cannot do this any more (its scheduler failed): restart it.
    #[error("{0}")]
    Unavailable(String),
}

impl PlaneError {
    /// A report from a lease that is no longer live, or is not the reporter's: the worker
    /// should drop the job.
    pub fn is_stale(&self) -> bool {
        matches!(self, PlaneError::Conflict(e) if e.is_stale())
    }

    /// The store's own refusal behind an [`Invalid`](Self::Invalid) or
    /// [`Conflict`](Self::Conflict) error, which says exactly what was refused.
    pub fn refusal(&self) -> Option<&StoreError> {
        match self {
            PlaneError::Invalid(e) | PlaneError::Conflict(e) => Some(e),
            _ => None,
        }
    }
}

impl From<StoreError> for PlaneError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(id) => PlaneError::NotFound(id),
            StoreError::Storage(fault) => PlaneError::Store(fault),
            StoreError::Batch { source, .. }
                if matches!(*source, StoreError::NotFound(_) | StoreError::Storage(_)) =>
            {
                (*source).into()
            }
            e if invalid(&e) => PlaneError::Invalid(e),
            e => PlaneError::Conflict(e),
        }
    }
}

/// Whether the store refused the request itself rather than what it asked of a job.
fn invalid(e: &StoreError) -> bool {
    match e {
        StoreError::InvalidSpec(_)
        | StoreError::InvalidWorker(_)
        | StoreError::InvalidQuery(_)
        | StoreError::Transition(TransitionError::InvalidProgress(_)) => true,
        StoreError::Batch { source, .. } => invalid(source),
        _ => false,
    }
}
