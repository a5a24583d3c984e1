//! A job's log as read: which lines to read, and the lines.

use nexa_runtime::LogLine;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::values::time;

/// Which log lines to read.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct LogParams {
    /// The attempt (default: the latest).
    #[param(minimum = 1)]
    pub(crate) attempt: Option<u32>,
    /// The first line number (default 0).
    #[param(maximum = 9007199254740991_u64)]
    pub(crate) from_seq: Option<u64>,
    /// Lines at most (1 to 10000, default 1000).
    #[param(minimum = 1, maximum = 10000)]
    pub(crate) limit: Option<usize>,
    /// Stream lines as server-sent events until the job ends.
    pub(crate) follow: Option<bool>,
}

/// One line a job wrote.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct LogLineBody {
    /// Numbered per attempt from 0.
    pub(crate) seq: u64,
    pub(crate) at: String,
    pub(crate) text: String,
}

pub(crate) fn line_body(l: &LogLine) -> LogLineBody {
    LogLineBody {
        seq: l.seq,
        at: time(l.at),
        text: l.text.clone(),
    }
}

/// Log lines of one attempt.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct LogsBody {
    pub(crate) job_id: String,
    pub(crate) attempt: u32,
    pub(crate) lines: Vec<LogLineBody>,
    /// The line to read from next.
    pub(crate) next_seq: u64,
    /// Lines dropped because the job wrote more than the limit.
    pub(crate) dropped: u64,
}
