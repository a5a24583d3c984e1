//! The core of Nexa Forge: what a job is and the rules it lives by, with no I/O.
//!
//! This crate holds job specs and their validation ([`JobSpec`]), the job state machine
//! ([`Job::apply`]), leases with epoch fencing, retry backoff ([`RetryPolicy`]), the
//! scheduling policy ([`pick_next`], [`queued_reason`]), job logs, the [`Store`] trait and
//! [`MemStore`], the in-memory store that is the reference for every other.
//!
//! It deliberately does no I/O, spawns no threads or tasks and never reads a clock: time is an
//! argument ([`Timestamp`]). Everything here is deterministic, which is what lets the property
//! tests run thousands of random histories in seconds. Durable storage (`nexa-storage`), the
//! network and the actors live in other crates, built on this one.
//!
//! ```
//! use nexa_runtime::*;
//!
//! let store = MemStore::default();
//! let now = Timestamp(1_000);
//! let job = store
//!     .submit(JobSpec::new(JobParams::Deploy(DeployParams::new("llama-1b-distilled"))), now)
//!     .unwrap();
//!
//! let worker = WorkerId::new("gpu-1").unwrap();
//! store
//!     .register_worker(WorkerInfo {
//!         id: worker.clone(),
//!         cpus: 8,
//!         memory_mb: 32_768,
//!         gpus: vec![],
//!         labels: Default::default(),
//!         job_types: JobType::ALL.into_iter().collect(),
//!     }, now)
//!     .unwrap();
//! let lease = store
//!     .lease_next(LeaseRequest { worker, free_gpus: vec![] }, now)
//!     .unwrap()
//!     .expect("the job fits");
//! store.start(job.id, lease.epoch, now).unwrap();
//! let state = store.complete(job.id, lease.epoch, JobOutput::default(), now).unwrap();
//! assert_eq!(state, JobState::Succeeded);
//!
//! // A report under an old epoch is refused: that lease is no longer live.
//! assert!(store.heartbeat(job.id, lease.epoch, None, now).unwrap_err().is_stale());
//! ```

mod artifact;
mod id;
mod job;
mod log;
mod mem_store;
mod params;
pub mod pipeline;
mod registry;
mod retry;
mod scheduling;
mod spec;
mod store;
mod time;
pub mod wire;
mod worker;

#[cfg(feature = "testkit")]
pub mod testkit;

pub use artifact::{
    ARTIFACT_URI_PREFIX, ArtifactKind, ArtifactMeta, Digest, ParseDigestError, artifact_uri,
    check_artifact_name, parse_artifact_uri,
};
pub use id::{Epoch, InvalidWorkerId, JobId, LeaseToken, ParseJobIdError, WorkerId};
pub use job::{
    Attempt, AttemptOutcome, Event, FailureClass, Job, JobError, JobOutput, JobState, Transition,
    TransitionError, UnknownJobState,
};
pub use log::{
    AttemptLog, LINE_CUT, LogAck, LogLine, LogMeta, LogPage, LogQuery, MAX_LOG_LINE_BYTES,
    cap_marker, clip_line,
};
pub use mem_store::MemStore;
pub use params::{
    AuditParams, DeployParams, DistillParams, EvaluateParams, GenerateParams, JobParams, Options,
    ParamField, ParamValue, Split, Task, TrainParams,
};
pub use registry::{MODEL_ARTIFACT, ModelRef, ModelVersion, Registry};
pub use retry::{DEFAULT_MAX_RECOVERIES, RetryPolicy};
pub use scheduling::{
    Misfit, Offer, PendingReason, QueueClass, QueueEntry, QueueKey, fits, pick_next, queued_reason,
};
pub use spec::{JobSpec, JobType, Resources, SpecError, URI_SCHEMES, UnknownJobType, thousands};
pub use store::{
    Call, Copied, Counter, Engine, Expired, FaultKind, Lease, LeaseRequest, LeaseStatus, ListQuery,
    Page, ReadTables, StorageFault, Store, StoreConfig, StoreError, Submission, Submitted,
    SubmittedAndLeased, Tables, Visit, WriteOp, copy, recording,
};
pub use time::Timestamp;
pub use worker::{Gpu, WorkerInfo, WorkerRecord, WorkerStatus};
