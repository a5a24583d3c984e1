//! Single values as the API writes and reads them: times as RFC 3339, job ids as `job-7`,
//! epochs and lease tokens as a worker quotes them, and the largest number sent exactly.

use std::time::{Duration, UNIX_EPOCH};

use nexa_runtime::{Epoch, JobId, LeaseToken, Timestamp};

use crate::http::error::ApiError;

/// The largest whole number every JSON reader holds exactly (2^53 - 1); sizes above it are
/// refused rather than silently rounded by some client.
pub(crate) const MAX_SAFE: u64 = (1 << 53) - 1;

/// A time as RFC 3339 in UTC with milliseconds.
pub(crate) fn time(t: Timestamp) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(t.as_millis())).to_string()
}

/// A job id from a path or a field: `job-7` (or `7`).
pub(crate) fn job_id(field: &str, s: &str) -> Result<JobId, ApiError> {
    s.parse()
        .map_err(|_| ApiError::invalid(field, format!("{s:?} is not a job id (like job-7)")))
}

/// The job in a path: one that cannot exist is simply not found.
pub(crate) fn path_job(s: &str) -> Result<JobId, ApiError> {
    s.parse()
        .map_err(|_| ApiError::not_found(format!("no job {s:?} (job ids look like job-7)")))
}

pub(crate) fn epoch(e: u64) -> Epoch {
    Epoch(e)
}

/// The lease token of a report, read from its hex text.
pub(crate) fn lease_token(field: &str, text: &str) -> Result<LeaseToken, ApiError> {
    LeaseToken::from_hex(text).ok_or_else(|| {
        ApiError::invalid(
            field,
            "must be the 64 hex digits of the job's assignment's lease_token",
        )
    })
}
