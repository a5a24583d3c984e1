//! A job's life: its states, attempts, events, and the one function that moves it.
//!
//! ```text
//!           submit
//!             │
//!    waiting ─┤ (depends_on not yet succeeded)
//!             ▼
//!   ┌────► queued ──cancel─────────────────────────► cancelled
//!   │         │ lease to worker (attempt n, epoch e)
//!   │         ▼
//!   │     assigned ──► running ──► succeeded
//!   │         │           │  └──► failed (attempts used up, or not retryable)
//!   │         └───────────┴──cancel──► cancelling ──► cancelled
//!   └── backoff ◄── lease expired / worker lost / retryable error
//! ```
//!
//! [`Job::apply`] is the only code that changes a job's state. It either applies a
//! [`Transition`] whole, appending an [`Event`], or refuses it with a [`TransitionError`] and
//! leaves the job untouched. Invariants it keeps:
//!
//! - at most one attempt is live (has no end), and one is live exactly when the job is
//!   `assigned`, `running` or `cancelling`;
//! - a report (start, heartbeat, completion, failure) must quote the live attempt's epoch;
//! - a terminal job (`succeeded`, `failed`, `cancelled`) never changes again;
//! - a job fails of its own fault (a stage error) at most `max_attempts` times; attempts lost
//!   to the platform (a lost worker, a lease never acknowledged, Nexa Forge failing) do not
//!   count against them, and at most `RetryPolicy::max_recoveries` are retried;
//! - the last event names the current state.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::id::{Epoch, JobId, WorkerId};
use crate::retry::RetryPolicy;
use crate::spec::JobSpec;
use crate::time::Timestamp;

/// Where a job is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum JobState {
    /// Submitted; some job it depends on has not succeeded yet.
    Waiting,
    /// Ready to run (or waiting out a retry backoff), looking for a worker.
    Queued,
    /// Leased to a worker that has not reported that it started.
    Assigned,
    /// A worker is running it.
    Running,
    /// Finished with a result. Terminal.
    Succeeded,
    /// Finished without a result and will not be tried again. Terminal.
    Failed,
    /// Cancel was asked while a worker held it; waiting for the worker to stop.
    Cancelling,
    /// Stopped by a user or because a dependency did not succeed. Terminal.
    Cancelled,
}

impl JobState {
    /// Every state, in a fixed order.
    pub const ALL: [JobState; 8] = [
        JobState::Waiting,
        JobState::Queued,
        JobState::Assigned,
        JobState::Running,
        JobState::Succeeded,
        JobState::Failed,
        JobState::Cancelling,
        JobState::Cancelled,
    ];

    /// `succeeded`, `failed` and `cancelled` never change again.
    pub const fn is_terminal(self) -> bool {
        matches!(
            self,
            JobState::Succeeded | JobState::Failed | JobState::Cancelled
        )
    }

    /// A worker holds a lease on the job in this state.
    pub const fn is_leased(self) -> bool {
        matches!(
            self,
            JobState::Assigned | JobState::Running | JobState::Cancelling
        )
    }

    /// The lower-case name used in the API.
    pub const fn as_str(self) -> &'static str {
        match self {
            JobState::Waiting => "waiting",
            JobState::Queued => "queued",
            JobState::Assigned => "assigned",
            JobState::Running => "running",
            JobState::Succeeded => "succeeded",
            JobState::Failed => "failed",
            JobState::Cancelling => "cancelling",
            JobState::Cancelled => "cancelled",
        }
    }

    /// A stable small number for index keys. Never reorder.
    pub const fn code(self) -> u8 {
        match self {
            JobState::Waiting => 0,
            JobState::Queued => 1,
            JobState::Assigned => 2,
            JobState::Running => 3,
            JobState::Succeeded => 4,
            JobState::Failed => 5,
            JobState::Cancelling => 6,
            JobState::Cancelled => 7,
        }
    }
}

impl fmt::Display for JobState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A string that names no job state.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown job state {0:?} (expected waiting, queued, assigned, running, succeeded, failed, cancelling or cancelled)"
)]
pub struct UnknownJobState(pub String);

impl FromStr for JobState {
    type Err = UnknownJobState;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        JobState::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| UnknownJobState(s.to_owned()))
    }
}

/// Whose fault a failure was, which decides whether it is retried.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum FailureClass {
    /// The job's input cannot work (a missing dataset, a bad parameter). Not retried.
    InvalidInput,
    /// The stage's code failed. Retried.
    StageError,
    /// The worker stopped answering or its lease ran out. Retried.
    WorkerLost,
    /// The attempt ran past the job's timeout. Not retried: it would likely run out again.
    Timeout,
    /// Stopped on request. Not retried.
    Cancelled,
    /// Nexa Forge itself failed (storage, transport). Retried; not the user's fault.
    Platform,
}

impl FailureClass {
    /// Every failure class, in a fixed order (the API lists them so).
    pub const ALL: [FailureClass; 6] = [
        FailureClass::InvalidInput,
        FailureClass::StageError,
        FailureClass::WorkerLost,
        FailureClass::Timeout,
        FailureClass::Cancelled,
        FailureClass::Platform,
    ];

    /// Whether a failure of this kind is the platform's rather than the job's: the worker was
    /// lost (or never acknowledged the lease), or Nexa Forge itself failed. Such attempts do
    /// not spend the job's `max_attempts`.
    pub const fn is_platform(self) -> bool {
        matches!(self, FailureClass::WorkerLost | FailureClass::Platform)
    }

    /// Whether an attempt that failed this way may be tried again.
    pub const fn is_retryable(self) -> bool {
        matches!(
            self,
            FailureClass::StageError | FailureClass::WorkerLost | FailureClass::Platform
        )
    }

    /// The snake-case name used in the API.
    pub const fn as_str(self) -> &'static str {
        match self {
            FailureClass::InvalidInput => "invalid_input",
            FailureClass::StageError => "stage_error",
            FailureClass::WorkerLost => "worker_lost",
            FailureClass::Timeout => "timeout",
            FailureClass::Cancelled => "cancelled",
            FailureClass::Platform => "platform",
        }
    }
}

impl fmt::Display for FailureClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a job or an attempt did not succeed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobError {
    /// Whose fault, and whether it is retried.
    pub class: FailureClass,
    /// What happened, for people.
    pub message: String,
}

impl JobError {
    /// An error of `class`.
    pub fn new(class: FailureClass, message: impl Into<String>) -> Self {
        Self {
            class,
            message: message.into(),
        }
    }
}

impl fmt::Display for JobError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.class, self.message)
    }
}

/// What a successful job produced.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct JobOutput {
    /// Named numbers, e.g. `accuracy`, `rows`.
    pub metrics: BTreeMap<String, f64>,
    /// Named artifacts and where they are, e.g. `model = file:///var/artifacts/job-7/model.bin`.
    pub artifacts: BTreeMap<String, String>,
    /// The stage's full result as a JSON document, kept verbatim.
    pub result_json: Option<String>,
}

/// How an attempt ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AttemptOutcome {
    /// The worker reported success.
    Succeeded,
    /// The attempt failed; the class says whose fault.
    Failed(JobError),
}

/// One try at running a job, under one lease.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attempt {
    /// 1 for the first try.
    pub number: u32,
    /// The worker holding the lease.
    pub worker: WorkerId,
    /// The lease's fencing token.
    pub epoch: Epoch,
    /// When the lease was granted.
    pub leased_at: Timestamp,
    /// When the worker said it started.
    pub started_at: Option<Timestamp>,
    /// The lease ends here unless a heartbeat renews it.
    pub lease_expires_at: Timestamp,
    /// The attempt times out here (lease time plus the job's timeout).
    pub deadline: Timestamp,
    /// When the attempt ended; `None` while it is live.
    pub ended_at: Option<Timestamp>,
    /// How it ended; `None` while it is live.
    pub outcome: Option<AttemptOutcome>,
}

impl Attempt {
    /// Whether the attempt still holds its lease.
    pub fn is_live(&self) -> bool {
        self.ended_at.is_none()
    }
}

/// One entry of a job's history: every state change appends one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// When it happened.
    pub at: Timestamp,
    /// The state before; `None` for the submission.
    pub from: Option<JobState>,
    /// The state after.
    pub to: JobState,
    /// Why, for people.
    pub message: String,
}

/// A request to move a job; see [`Job::apply`].
#[derive(Clone, Debug, PartialEq)]
pub enum Transition {
    /// Every dependency succeeded: `waiting → queued`.
    Release,
    /// Grant `worker` a lease: `queued → assigned`.
    Lease {
        /// The worker taking the job.
        worker: WorkerId,
        /// A fresh epoch, larger than any handed out before.
        epoch: Epoch,
        /// How long the lease lasts without a heartbeat.
        ttl: Duration,
    },
    /// The worker started the stage: `assigned → running`; the lease is extended by `ttl`
    /// from now (a lease not yet acknowledged lasts only the short assignment time).
    Start {
        /// The lease's epoch.
        epoch: Epoch,
        /// How long the lease lasts from now.
        ttl: Duration,
    },
    /// The worker is alive: the lease is extended by `ttl` from now; the state is unchanged.
    Renew {
        /// The lease's epoch.
        epoch: Epoch,
        /// How long the lease lasts from now.
        ttl: Duration,
        /// Progress from 0.0 to 1.0, if the worker reports it.
        progress: Option<f64>,
    },
    /// The stage produced a result: `assigned | running → succeeded`, `cancelling → cancelled`.
    Succeed {
        /// The lease's epoch.
        epoch: Epoch,
        /// What the stage produced.
        output: JobOutput,
    },
    /// The attempt failed: back to `queued` (after a backoff) when the class is retryable and
    /// attempts remain, else `failed`; from `cancelling`, `cancelled`.
    Fail {
        /// The lease's epoch.
        epoch: Epoch,
        /// What went wrong.
        error: JobError,
    },
    /// The live lease ran out without a heartbeat: the attempt ends as `worker_lost`.
    LeaseExpired,
    /// The live attempt passed its deadline: the attempt ends as `timeout`.
    TimedOut,
    /// Stop the job: `waiting | queued → cancelled`, `assigned | running → cancelling`.
    /// Asking again while `cancelling` is accepted and changes nothing.
    Cancel {
        /// Why, for people.
        reason: String,
    },
}

impl Transition {
    fn name(&self) -> &'static str {
        match self {
            Transition::Release => "release",
            Transition::Lease { .. } => "lease",
            Transition::Start { .. } => "start",
            Transition::Renew { .. } => "renew",
            Transition::Succeed { .. } => "succeed",
            Transition::Fail { .. } => "fail",
            Transition::LeaseExpired => "lease expiry",
            Transition::TimedOut => "timeout",
            Transition::Cancel { .. } => "cancel",
        }
    }

    fn epoch(&self) -> Option<Epoch> {
        match self {
            Transition::Start { epoch, .. }
            | Transition::Renew { epoch, .. }
            | Transition::Succeed { epoch, .. }
            | Transition::Fail { epoch, .. } => Some(*epoch),
            _ => None,
        }
    }
}

/// A transition that does not apply to the job as it is.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TransitionError {
    /// The transition is not allowed from the job's state.
    #[error("{job} is {state}; cannot {transition} it")]
    Illegal {
        /// The job.
        job: JobId,
        /// Its state.
        state: JobState,
        /// What was asked.
        transition: &'static str,
    },
    /// The report quotes an epoch that is not the job's live lease: it comes from an attempt
    /// that was replaced or has ended.
    #[error("{job}: {got} is stale (the live lease is {})", live.map_or_else(|| "none".to_owned(), |e| e.to_string()))]
    StaleEpoch {
        /// The job.
        job: JobId,
        /// The epoch the report carried.
        got: Epoch,
        /// The live lease's epoch, if there is one.
        live: Option<Epoch>,
    },
    /// The report does not carry the lease token of the lease it names: it does not come
    /// from the worker the lease was granted to. Refused the same way whether or not that
    /// lease is live.
    #[error("{job}: the report under {epoch} does not carry that lease's token; it is refused")]
    NotLeaseHolder {
        /// The job.
        job: JobId,
        /// The epoch the report carried.
        epoch: Epoch,
    },
    /// The stored job contradicts itself (a leased state without a live attempt, or the
    /// reverse). Records written through [`Job::apply`] never do.
    #[error("{job} is {state} but its attempts disagree; the record is inconsistent")]
    Inconsistent {
        /// The job.
        job: JobId,
        /// Its state.
        state: JobState,
    },
    /// A progress value outside 0.0 to 1.0.
    #[error("progress {0} is outside 0.0..=1.0")]
    InvalidProgress(f64),
}

/// A job and everything that happened to it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Job {
    /// Its id.
    pub id: JobId,
    /// What was submitted.
    pub spec: JobSpec,
    /// Where it is now.
    pub state: JobState,
    /// When it was accepted.
    pub submitted_at: Timestamp,
    /// When it last changed.
    pub updated_at: Timestamp,
    /// Every try, oldest first.
    pub attempts: Vec<Attempt>,
    /// Every state change, oldest first.
    pub events: Vec<Event>,
    /// The live attempt's last reported progress, 0.0 to 1.0.
    pub progress: Option<f64>,
    /// Not leased before this time (retry backoff).
    pub not_before: Option<Timestamp>,
    /// The result, once succeeded.
    pub output: Option<JobOutput>,
    /// Why it failed or was cancelled.
    pub error: Option<JobError>,
}

impl Job {
    /// A newly accepted job: `waiting` when `dependencies_met` is false, else `queued`.
    pub fn new(id: JobId, spec: JobSpec, dependencies_met: bool, now: Timestamp) -> Self {
        let state = if dependencies_met {
            JobState::Queued
        } else {
            JobState::Waiting
        };
        let message = if dependencies_met {
            "submitted".to_owned()
        } else {
            "submitted; waiting for its dependencies".to_owned()
        };
        Self {
            id,
            spec,
            state,
            submitted_at: now,
            updated_at: now,
            attempts: Vec::new(),
            events: vec![Event {
                at: now,
                from: None,
                to: state,
                message,
            }],
            progress: None,
            not_before: None,
            output: None,
            error: None,
        }
    }

    /// The attempt holding the lease, if any.
    pub fn live_attempt(&self) -> Option<&Attempt> {
        self.attempts.last().filter(|a| a.is_live())
    }

    /// The earliest time something must happen to the live attempt without a report: its
    /// lease runs out or it times out. `None` when no attempt is live.
    pub fn deadline(&self) -> Option<Timestamp> {
        self.live_attempt()
            .map(|a| a.lease_expires_at.min(a.deadline))
    }

    /// Applies `transition` at `now`, or refuses it and leaves the job as it was.
    pub fn apply(
        &mut self,
        transition: Transition,
        now: Timestamp,
        retry: &RetryPolicy,
    ) -> Result<(), TransitionError> {
        use JobState as S;
        use Transition as T;

        let illegal = TransitionError::Illegal {
            job: self.id,
            state: self.state,
            transition: transition.name(),
        };
        // A report from a worker is judged by its epoch first: on a finished job every epoch
        // is stale, which tells the worker to drop the job rather than that it erred.
        if let Some(epoch) = transition.epoch() {
            let live = self.live_attempt().map(|a| a.epoch);
            if live != Some(epoch) {
                return Err(TransitionError::StaleEpoch {
                    job: self.id,
                    got: epoch,
                    live,
                });
            }
        }
        if self.state.is_terminal() {
            return Err(illegal);
        }
        if self.state.is_leased() != self.live_attempt().is_some() {
            // Only a record not written by `apply` can get here; refuse rather than guess.
            return Err(TransitionError::Inconsistent {
                job: self.id,
                state: self.state,
            });
        }

        match (self.state, transition) {
            (S::Waiting, T::Release) => self.enter(S::Queued, now, "dependencies succeeded"),
            (S::Queued, T::Lease { worker, epoch, ttl }) => {
                let number = self.attempts.len() as u32 + 1;
                let message = format!("leased to {worker} (attempt {number}, {epoch})");
                self.attempts.push(Attempt {
                    number,
                    worker,
                    epoch,
                    leased_at: now,
                    started_at: None,
                    lease_expires_at: now.saturating_add(ttl),
                    deadline: now.saturating_add(self.spec.timeout),
                    ended_at: None,
                    outcome: None,
                });
                self.not_before = None;
                self.progress = None;
                self.enter(S::Assigned, now, message);
            }
            (S::Assigned, T::Start { ttl, .. }) => {
                let attempt = self.live_mut();
                attempt.started_at = Some(now);
                attempt.lease_expires_at = attempt.lease_expires_at.max(now.saturating_add(ttl));
                self.enter(S::Running, now, "started");
            }
            (S::Assigned | S::Running | S::Cancelling, T::Renew { ttl, progress, .. }) => {
                if let Some(p) = progress {
                    if !(0.0..=1.0).contains(&p) {
                        return Err(TransitionError::InvalidProgress(p));
                    }
                    self.progress = Some(p);
                }
                let attempt = self.live_mut();
                attempt.lease_expires_at = attempt.lease_expires_at.max(now.saturating_add(ttl));
                self.updated_at = now;
            }
            (S::Assigned | S::Running, T::Succeed { output, .. }) => {
                self.started_by_outcome(now);
                self.end_attempt(now, AttemptOutcome::Succeeded);
                self.progress = Some(1.0);
                self.output = Some(output);
                self.enter(S::Succeeded, now, "succeeded");
            }
            (S::Cancelling, T::Succeed { .. }) => {
                self.end_attempt(now, AttemptOutcome::Succeeded);
                self.enter(
                    S::Cancelled,
                    now,
                    "cancelled; the worker finished before it stopped",
                );
            }
            (S::Assigned | S::Running | S::Cancelling, T::Fail { error, .. }) => {
                self.started_by_outcome(now);
                self.fail_attempt(error, now, retry);
            }
            (S::Assigned | S::Running | S::Cancelling, T::LeaseExpired) => {
                let attempt = self.live_mut();
                let worker = attempt.worker.clone();
                let message = if attempt.started_at.is_none() && self.state == S::Assigned {
                    format!("{worker} never acknowledged the lease (it was gone, or is too busy)")
                } else {
                    format!("lease expired: {worker} stopped sending heartbeats")
                };
                let error = JobError::new(FailureClass::WorkerLost, message);
                self.fail_attempt(error, now, retry);
            }
            (S::Assigned | S::Running | S::Cancelling, T::TimedOut) => {
                let error = JobError::new(
                    FailureClass::Timeout,
                    format!(
                        "attempt ran past the job's timeout of {:?}",
                        self.spec.timeout
                    ),
                );
                self.fail_attempt(error, now, retry);
            }
            (S::Waiting | S::Queued, T::Cancel { reason }) => {
                self.not_before = None;
                self.error = Some(JobError::new(FailureClass::Cancelled, reason.clone()));
                self.enter(S::Cancelled, now, format!("cancelled: {reason}"));
            }
            (S::Assigned | S::Running, T::Cancel { reason }) => {
                self.error = Some(JobError::new(FailureClass::Cancelled, reason.clone()));
                self.enter(
                    S::Cancelling,
                    now,
                    format!("cancel requested: {reason}; waiting for the worker to stop"),
                );
            }
            (S::Cancelling, T::Cancel { .. }) => {}
            _ => return Err(illegal),
        }
        Ok(())
    }

    /// An outcome reported while the job is still `assigned` (a short stage: its worker reports
    /// the start with the outcome, in one write) starts it first, so that its history and its
    /// attempt read as every other job's: started, then ended.
    fn started_by_outcome(&mut self, now: Timestamp) {
        if self.state == JobState::Assigned {
            self.live_mut().started_at = Some(now);
            self.enter(JobState::Running, now, "started");
        }
    }

    fn live_mut(&mut self) -> &mut Attempt {
        // Callers match on a leased state, which always has a live attempt (module invariant).
        let attempt = self.attempts.last_mut().filter(|a| a.is_live());
        match attempt {
            Some(a) => a,
            None => unreachable!("a leased job always has a live attempt"),
        }
    }

    fn end_attempt(&mut self, now: Timestamp, outcome: AttemptOutcome) {
        let attempt = self.live_mut();
        attempt.ended_at = Some(now);
        attempt.outcome = Some(outcome);
    }

    /// Attempts that failed of the job's own fault: those `max_attempts` counts.
    pub fn own_failures(&self) -> u32 {
        self.failures(|class| !class.is_platform())
    }

    /// Attempts lost to the platform (see [`FailureClass::is_platform`]).
    pub fn recoveries(&self) -> u32 {
        self.failures(FailureClass::is_platform)
    }

    fn failures(&self, counted: impl Fn(FailureClass) -> bool) -> u32 {
        self.attempts
            .iter()
            .filter(|a| matches!(&a.outcome, Some(AttemptOutcome::Failed(e)) if counted(e.class)))
            .count() as u32
    }

    fn fail_attempt(&mut self, error: JobError, now: Timestamp, retry: &RetryPolicy) {
        let number = self.live_mut().number;
        self.end_attempt(now, AttemptOutcome::Failed(error.clone()));
        self.progress = None;
        let class = error.class;
        if self.state == JobState::Cancelling {
            self.enter(
                JobState::Cancelled,
                now,
                format!("cancelled; the attempt ended ({error})"),
            );
            return;
        }
        let (own, recoveries) = (self.own_failures(), self.recoveries());
        let max = self.spec.max_attempts;
        let retried = if class.is_platform() {
            recoveries <= retry.max_recoveries
        } else {
            class.is_retryable() && own < max
        };
        if retried {
            // A lost worker says nothing about the job: retry at once. Any other failure
            // waits out a backoff, so a crashing stage does not spin.
            let when = if class == FailureClass::WorkerLost {
                self.not_before = None;
                "retrying now".to_owned()
            } else {
                let until = now.saturating_add(retry.delay(self.id, number));
                self.not_before = Some(until);
                format!("retrying after {until}")
            };
            let counted = if class.is_platform() {
                format!(
                    "lost to the platform ({recoveries} of {} such), not counted against \
                     max_attempts",
                    retry.max_recoveries
                )
            } else {
                format!("failure {own} of {max}")
            };
            self.enter(
                JobState::Queued,
                now,
                format!("attempt {number} failed ({error}); {counted}; {when}"),
            );
        } else {
            let why = if class.is_platform() {
                format!(
                    "attempt {number} failed ({error}); {recoveries} attempts lost to the \
                     platform, giving up"
                )
            } else if class.is_retryable() {
                format!("attempt {number} failed ({error}); failure {own} of {max}, none left")
            } else {
                format!("attempt {number} failed ({error}); not retryable")
            };
            self.error = Some(error);
            self.enter(JobState::Failed, now, why);
        }
    }

    fn enter(&mut self, to: JobState, now: Timestamp, message: impl Into<String>) {
        self.events.push(Event {
            at: now,
            from: Some(self.state),
            to,
            message: message.into(),
        });
        self.state = to;
        self.updated_at = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::params::{GenerateParams, JobParams};

    const TTL: Duration = Duration::from_secs(30);

    #[test]
    fn every_failure_class_is_listed_once_in_all() {
        // Exhaustive: a class added to the enum stops the build here until it has a place in
        // `FailureClass::ALL`.
        let place = |class: FailureClass| match class {
            FailureClass::InvalidInput => 0,
            FailureClass::StageError => 1,
            FailureClass::WorkerLost => 2,
            FailureClass::Timeout => 3,
            FailureClass::Cancelled => 4,
            FailureClass::Platform => 5,
        };
        for (i, class) in FailureClass::ALL.into_iter().enumerate() {
            assert_eq!(place(class), i, "{class}");
        }
    }

    fn job(max_attempts: u32) -> Job {
        let mut spec = JobSpec::new(JobParams::Generate(GenerateParams::new("math", 10)));
        spec.max_attempts = max_attempts;
        Job::new(JobId(1), spec, true, Timestamp(0))
    }

    fn lease(job: &mut Job, epoch: u64, now: u64) {
        let t = Transition::Lease {
            worker: WorkerId::new("w").unwrap(),
            epoch: Epoch(epoch),
            ttl: TTL,
        };
        job.apply(t, Timestamp(now), &RetryPolicy::default())
            .unwrap();
    }

    fn fail(class: FailureClass, epoch: u64) -> Transition {
        Transition::Fail {
            epoch: Epoch(epoch),
            error: JobError::new(class, "boom"),
        }
    }

    #[test]
    fn a_job_runs_to_success_with_an_event_per_state() {
        let retry = RetryPolicy::default();
        let mut j = job(3);
        lease(&mut j, 7, 10);
        j.apply(
            Transition::Start {
                epoch: Epoch(7),
                ttl: Duration::from_secs(10),
            },
            Timestamp(11),
            &retry,
        )
        .unwrap();
        let out = JobOutput::default();
        j.apply(
            Transition::Succeed {
                epoch: Epoch(7),
                output: out,
            },
            Timestamp(12),
            &retry,
        )
        .unwrap();
        let states: Vec<JobState> = j.events.iter().map(|e| e.to).collect();
        use JobState::*;
        assert_eq!(states, vec![Queued, Assigned, Running, Succeeded]);
        assert_eq!(j.attempts[0].outcome, Some(AttemptOutcome::Succeeded));
        assert_eq!(j.live_attempt(), None);
    }

    #[test]
    fn illegal_and_stale_transitions_change_nothing() {
        let retry = RetryPolicy::default();
        let mut j = job(3);
        let before = j.clone();
        let err = j.apply(
            Transition::Start {
                epoch: Epoch(1),
                ttl: Duration::from_secs(10),
            },
            Timestamp(1),
            &retry,
        );
        assert!(matches!(
            err,
            Err(TransitionError::StaleEpoch { live: None, .. })
        ));
        let err = j
            .apply(Transition::Release, Timestamp(1), &retry)
            .unwrap_err();
        assert_eq!(err.to_string(), "job-1 is queued; cannot release it");
        assert_eq!(j, before);

        lease(&mut j, 7, 10);
        let leased = j.clone();
        let err = j.apply(
            Transition::Start {
                epoch: Epoch(6),
                ttl: Duration::from_secs(10),
            },
            Timestamp(11),
            &retry,
        );
        assert!(matches!(
            err,
            Err(TransitionError::StaleEpoch {
                got: Epoch(6),
                live: Some(Epoch(7)),
                ..
            })
        ));
        let bad = Transition::Renew {
            epoch: Epoch(7),
            ttl: TTL,
            progress: Some(1.5),
        };
        assert!(matches!(
            j.apply(bad, Timestamp(11), &retry),
            Err(TransitionError::InvalidProgress(_))
        ));
        assert_eq!(j, leased);
    }

    #[test]
    fn attempts_lost_to_the_platform_have_a_budget_of_their_own() {
        let retry = RetryPolicy {
            max_recoveries: 2,
            ..RetryPolicy::default()
        };
        let mut j = job(1);
        for n in 1..=3u64 {
            lease(&mut j, n, n * 10);
            j.apply(
                fail(FailureClass::WorkerLost, n),
                Timestamp(n * 10 + 1),
                &retry,
            )
            .unwrap();
        }
        // One attempt allowed, three lost to dead workers: two retried, then given up.
        assert_eq!(j.state, JobState::Failed);
        assert_eq!((j.own_failures(), j.recoveries()), (0, 3));
        let message = &j.events.last().unwrap().message;
        assert!(
            message.contains("3 attempts lost to the platform, giving up"),
            "{message}"
        );
    }

    #[test]
    fn retryable_failures_back_off_until_attempts_run_out() {
        let retry = RetryPolicy::default();
        let mut j = job(2);
        lease(&mut j, 1, 0);
        j.apply(fail(FailureClass::StageError, 1), Timestamp(5), &retry)
            .unwrap();
        assert_eq!(j.state, JobState::Queued);
        let until = j.not_before.unwrap();
        assert!(until > Timestamp(5) && until <= Timestamp(5).saturating_add(retry.base));
        lease(&mut j, 2, until.0);
        assert_eq!(j.not_before, None);
        // A lost worker is the platform's failure: retried at once, not counted.
        j.apply(
            Transition::LeaseExpired,
            Timestamp(until.0 + 40_000),
            &retry,
        )
        .unwrap();
        assert_eq!((j.state, j.not_before), (JobState::Queued, None));
        let message = &j.events.last().unwrap().message;
        assert!(message.contains("never acknowledged"), "{message}");
        assert!(
            message.contains("not counted against max_attempts"),
            "{message}"
        );
        assert_eq!((j.own_failures(), j.recoveries()), (1, 1));
        lease(&mut j, 3, until.0 + 40_001);
        j.apply(
            fail(FailureClass::StageError, 3),
            Timestamp(until.0 + 40_002),
            &retry,
        )
        .unwrap();
        assert_eq!(j.state, JobState::Failed);
        assert_eq!(j.error.as_ref().unwrap().class, FailureClass::StageError);
        let message = &j.events.last().unwrap().message;
        assert!(message.contains("failure 2 of 2, none left"), "{message}");
        // Terminal: nothing applies any more.
        let frozen = j.clone();
        for t in [
            Transition::Release,
            Transition::Cancel { reason: "x".into() },
            Transition::TimedOut,
        ] {
            assert!(j.apply(t, Timestamp(99_999), &retry).is_err());
        }
        assert_eq!(j, frozen);
    }

    #[test]
    fn non_retryable_failures_fail_at_once() {
        let retry = RetryPolicy::default();
        for class in [
            FailureClass::InvalidInput,
            FailureClass::Timeout,
            FailureClass::Cancelled,
        ] {
            let mut j = job(5);
            lease(&mut j, 1, 0);
            j.apply(fail(class, 1), Timestamp(1), &retry).unwrap();
            assert_eq!(j.state, JobState::Failed, "{class}");
            assert_eq!(j.attempts.len(), 1);
        }
        let mut j = job(5);
        lease(&mut j, 1, 0);
        j.apply(Transition::TimedOut, Timestamp(1), &retry).unwrap();
        assert_eq!(j.error.as_ref().unwrap().class, FailureClass::Timeout);
    }

    #[test]
    fn cancel_waits_for_the_worker_then_ends_cancelled() {
        let retry = RetryPolicy::default();
        let mut j = job(3);
        lease(&mut j, 4, 0);
        j.apply(
            Transition::Cancel {
                reason: "user asked".into(),
            },
            Timestamp(1),
            &retry,
        )
        .unwrap();
        assert_eq!(j.state, JobState::Cancelling);
        // Asking again is accepted and changes nothing.
        let events = j.events.len();
        j.apply(
            Transition::Cancel {
                reason: "again".into(),
            },
            Timestamp(2),
            &retry,
        )
        .unwrap();
        assert_eq!(j.events.len(), events);
        // The worker stops (reporting a retryable failure does not retry a cancelled job).
        j.apply(fail(FailureClass::StageError, 4), Timestamp(3), &retry)
            .unwrap();
        assert_eq!(j.state, JobState::Cancelled);
        assert_eq!(j.error.as_ref().unwrap().message, "user asked");

        let mut queued = job(3);
        queued
            .apply(
                Transition::Cancel {
                    reason: "not needed".into(),
                },
                Timestamp(1),
                &retry,
            )
            .unwrap();
        assert_eq!(queued.state, JobState::Cancelled);
    }
}
