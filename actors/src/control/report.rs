//! What a worker reports about a job it holds the lease of, and how a report is applied: the
//! one definition the QUIC handler, the HTTP API and the job actors share.

use nexa_runtime::wire::{HeartbeatAck, RunningJob};
use nexa_runtime::{
    Epoch, JobError, JobId, JobOutput, JobState, LeaseStatus, LeaseToken, LogAck, Store, StoreError,
};

use crate::clock::now;

/// A worker's report on a leased job, under the lease's epoch.
#[derive(Clone, Debug)]
pub(crate) enum Report {
    /// The job's stage started.
    Started,
    /// The attempt is alive (its lease is renewed), this far along.
    Heartbeat { progress: Option<f64> },
    /// The attempt succeeded.
    Complete(JobOutput),
    /// The attempt failed.
    Fail(JobError),
    /// Log lines of the attempt, numbered from `first_seq`.
    Logs { first_seq: u64, lines: Vec<String> },
}

/// What the store made of a report.
#[derive(Debug)]
pub(crate) enum Applied {
    /// The stage's start was recorded.
    Started,
    /// The lease was renewed.
    Lease(LeaseStatus),
    /// The attempt ended; the job is now in this state.
    Ended(JobState),
    /// The lines were stored.
    Logged(LogAck),
}

impl Report {
    /// Whether the report ends the attempt.
    pub(crate) fn is_outcome(&self) -> bool {
        matches!(self, Report::Complete(_) | Report::Fail(_))
    }

    /// Applies the report to `job` in the store.
    pub(crate) fn apply(
        self,
        store: &dyn Store,
        job: JobId,
        epoch: Epoch,
    ) -> Result<Applied, StoreError> {
        let now = now();
        Ok(match self {
            Report::Started => {
                store.start(job, epoch, now)?;
                Applied::Started
            }
            Report::Heartbeat { progress } => {
                Applied::Lease(store.heartbeat(job, epoch, progress, now)?)
            }
            Report::Complete(output) => Applied::Ended(store.complete(job, epoch, output, now)?),
            Report::Fail(error) => Applied::Ended(store.fail(job, epoch, error, now)?),
            Report::Logs { first_seq, lines } => {
                Applied::Logged(store.append_logs(job, epoch, first_seq, lines, now)?)
            }
        })
    }
}

impl Applied {
    /// The renewed lease, for a heartbeat.
    pub(crate) fn lease(self, job: JobId) -> Result<LeaseStatus, StoreError> {
        match self {
            Applied::Lease(status) => Ok(status),
            other => Err(unexpected(job, &other)),
        }
    }

    /// Where the lines' numbering goes on, for log lines.
    pub(crate) fn logged(self, job: JobId) -> Result<LogAck, StoreError> {
        match self {
            Applied::Logged(ack) => Ok(ack),
            other => Err(unexpected(job, &other)),
        }
    }
}

/// A report answered as another kind of report is: a bug of this module, said as one.
fn unexpected(job: JobId, applied: &Applied) -> StoreError {
    nexa_runtime::StorageFault::new(
        nexa_runtime::FaultKind::Corrupt,
        format!("{job}: a report was answered with {applied:?}"),
    )
    .into()
}

/// A job a worker says it runs, in a heartbeat over a link other than QUIC (see
/// [`ControlPlane::worker_heartbeat`](super::ControlPlane::worker_heartbeat)).
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct HeldLease {
    /// The job.
    pub job: JobId,
    /// The lease's epoch.
    pub epoch: Epoch,
    /// The lease's token, as the lease handed it out.
    pub token: LeaseToken,
    /// How far along the attempt is, 0.0 to 1.0.
    pub progress: Option<f64>,
    /// Where the job serves, for a deploy job whose replica is ready.
    pub serving: Option<String>,
}

impl HeldLease {
    /// The lease of `job` at `epoch`, proved by `token`, with no progress and not serving.
    pub fn new(job: JobId, epoch: Epoch, token: LeaseToken) -> Self {
        Self {
            job,
            epoch,
            token,
            progress: None,
            serving: None,
        }
    }

    /// How far along the attempt is.
    pub fn progress(mut self, fraction: Option<f64>) -> Self {
        self.progress = fraction;
        self
    }

    /// Where the job serves.
    pub fn serving(mut self, url: Option<String>) -> Self {
        self.serving = url;
        self
    }
}

impl From<HeldLease> for RunningJob {
    fn from(h: HeldLease) -> Self {
        RunningJob {
            job: h.job,
            epoch: h.epoch,
            lease_token: h.token,
            progress: h.progress,
            serving: h.serving,
        }
    }
}

/// What a worker does with the jobs its heartbeat named.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct HeartbeatAnswer {
    /// Stop these: they are being cancelled.
    pub cancel: Vec<JobId>,
    /// Drop these: their leases are gone (they ran out, or the token did not hold).
    pub lost: Vec<JobId>,
}

impl From<HeartbeatAck> for HeartbeatAnswer {
    fn from(ack: HeartbeatAck) -> Self {
        Self {
            cancel: ack.cancel,
            lost: ack.lost,
        }
    }
}
