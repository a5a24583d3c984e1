//! The API's JSON shapes, and how they map to and from the runtime's types.
//!
//! The runtime's types are made for storage and the wire (bincode); these are made for people
//! and other languages: job ids as `job-7`, times as RFC 3339, timeouts in seconds, params as
//! plain JSON objects. Every request field is checked here, and a bad one is named by its
//! path (`params.num_samples`).
//!
//! One room per subject, each re-exported here flatly:
//! - `values`: single values (times, job ids, epochs, lease tokens);
//! - `names`: the names taken as text (job types, failure classes, states) as OpenAPI
//!   schemas, built from the runtime's lists;
//! - `submit`: a job to submit; `jobs`: a job as shown, listed, cancelled; `job_types`: what
//!   each job type takes; `logs`: a job's log as read;
//! - `workers`: registering, heartbeats, asking for work; `reports`: what a worker reports
//!   under a lease.

mod job_types;
mod jobs;
mod logs;
mod names;
mod reports;
mod submit;
mod values;
mod workers;

pub(crate) use job_types::{JobTypesBody, job_types_body};
pub(crate) use jobs::{
    CancelRequest, EventParams, EventsBody, JobBody, JobPage, ListParams, PipelineLinkBody,
    WaitManyBody, WaitManyRequest, WaitParams, event_body, job_body,
};
pub(crate) use logs::{LogParams, LogsBody, line_body};
pub(crate) use names::{job_type_list, state};
pub(crate) use reports::{
    CompleteRequest, EpochRequest, FailRequest, LogAckBody, LogBatchRequest, ProgressAnswer,
    ProgressRequest, StartedAnswer,
};
pub(crate) use submit::{BatchBody, BatchRequest, SubmitRequest, SubmittedBody};
pub(crate) use values::{MAX_SAFE, epoch, job_id, lease_token, path_job, time};
pub(crate) use workers::{
    AssignmentBody, HeartbeatAnswer, HeartbeatRequest, NextJobParams, RegisterRequest,
    RegisteredBody, WorkersBody, worker_body,
};
