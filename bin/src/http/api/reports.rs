//! The reports an HTTP worker makes about a job under its lease (started, log lines,
//! progress, success, failure), each quoting the lease's epoch and token, and their answers.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::jobs::{ErrorInfo, ResultBody};
use super::names::LeaseTokenText;

/// A report under a lease.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct EpochRequest {
    pub(crate) epoch: u64,
    #[schema(value_type = LeaseTokenText)]
    pub(crate) lease_token: String,
}

/// Log lines from a worker.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct LogBatchRequest {
    pub(crate) epoch: u64,
    #[schema(value_type = LeaseTokenText)]
    pub(crate) lease_token: String,
    /// The number of the first line; lines are numbered per attempt from 0.
    #[serde(default)]
    pub(crate) first_seq: u64,
    pub(crate) lines: Vec<String>,
}

/// Lines stored.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct LogAckBody {
    /// Send from this line next.
    pub(crate) next_seq: u64,
}

/// Progress of a leased job.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ProgressRequest {
    pub(crate) epoch: u64,
    #[schema(value_type = LeaseTokenText)]
    pub(crate) lease_token: String,
    /// From 0.0 to 1.0.
    #[schema(minimum = 0.0, maximum = 1.0)]
    pub(crate) progress: Option<f64>,
}

/// Whether to stop.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ProgressAnswer {
    pub(crate) cancel_requested: bool,
}

/// The stage started.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct StartedAnswer {
    pub(crate) status: String,
}

/// A leased job succeeded.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct CompleteRequest {
    pub(crate) epoch: u64,
    #[schema(value_type = LeaseTokenText)]
    pub(crate) lease_token: String,
    #[serde(default)]
    pub(crate) result: Option<ResultBody>,
}

/// A leased job's attempt failed.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct FailRequest {
    pub(crate) epoch: u64,
    #[schema(value_type = LeaseTokenText)]
    pub(crate) lease_token: String,
    pub(crate) error: ErrorInfo,
}
