//! One actor per leased job: it serialises the job's reports and watches its lease.
//!
//! It arms a timer for the earlier of the lease's expiry and the attempt's deadline, and
//! re-arms it on every heartbeat. When the timer fires it has the store end every attempt that
//! is due ([`Store::expire`]), and wakes the scheduler for the jobs that went back to the
//! queue. It stops as soon as its job is no longer leased; a retry gets a new actor with the
//! next lease.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nexa_runtime::{Epoch, Job, JobId, JobState, Store, StoreError, Timestamp};
use nexa_transport::Session;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tokio::task::JoinHandle;
use tracing::{debug, info};

use super::follow::{Changes, write};
use super::read;
use super::report::{Applied, Report};
use super::scheduler::SchedulerMsg;
use crate::clock::now;
use crate::metrics::Metrics;

/// The actors of one control plane's leased jobs, by job: the scheduler starts them, they
/// take themselves out when they stop, and reports find them here. Held by the plane, not in a
/// process-wide registry, so several planes share a process without naming schemes.
#[derive(Default)]
pub(crate) struct JobActors(Mutex<HashMap<JobId, ActorRef<JobMsg>>>);

impl JobActors {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<JobId, ActorRef<JobMsg>>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The actor of `job`, while it has one.
    pub(crate) fn get(&self, job: JobId) -> Option<ActorRef<JobMsg>> {
        self.lock().get(&job).cloned()
    }

    /// `actor` is now `job`'s (an earlier one, still stopping, no longer is).
    pub(crate) fn insert(&self, job: JobId, actor: ActorRef<JobMsg>) {
        self.lock().insert(job, actor);
    }

    /// Forgets `actor` as `job`'s, unless another has taken its place.
    pub(crate) fn remove(&self, job: JobId, actor: ractor::ActorId) {
        let mut actors = self.lock();
        if actors.get(&job).is_some_and(|a| a.get_id() == actor) {
            actors.remove(&job);
        }
    }
}

/// What a job actor is asked.
#[derive(Debug)]
pub(crate) enum JobMsg {
    /// A worker's report under the lease of `epoch`.
    Report {
        epoch: Epoch,
        report: Report,
        reply: RpcReplyPort<Result<Applied, StoreError>>,
    },
    Cancel {
        reason: String,
        reply: RpcReplyPort<Result<JobState, StoreError>>,
    },
    /// The lease or the attempt's deadline may have passed.
    Due,
}

pub(crate) struct Args {
    pub(crate) job: JobId,
    /// The lease's next deadline (`Job::deadline`) when the caller has just leased the job;
    /// `None` to read it from the store.
    pub(crate) deadline: Option<Timestamp>,
    pub(crate) store: Arc<dyn Store>,
    pub(crate) scheduler: ActorRef<SchedulerMsg>,
    pub(crate) session: Option<Session>,
    pub(crate) metrics: Arc<Metrics>,
    /// The directory it takes itself out of when it stops.
    pub(crate) actors: Arc<JobActors>,
    /// Told when it ends attempts that ran out.
    pub(crate) changes: Changes,
}

pub(crate) struct JobActor;

/// A pending `Due` message.
type Timer = JoinHandle<Result<(), ractor::MessagingErr<JobMsg>>>;

pub(crate) struct JobActorState {
    job: JobId,
    deadline: Option<Timestamp>,
    store: Arc<dyn Store>,
    scheduler: ActorRef<SchedulerMsg>,
    session: Option<Session>,
    metrics: Arc<Metrics>,
    actors: Arc<JobActors>,
    changes: Changes,
    timer: Option<Timer>,
}

impl JobActorState {
    /// Re-arms the timer for `job`'s next deadline; stops the actor when it is not leased.
    fn follow(&mut self, myself: &ActorRef<JobMsg>, job: &Job) {
        match job.deadline() {
            Some(at) => self.arm(myself, at),
            None => self.release(myself, job.state, job.not_before),
        }
    }

    /// Arms the timer for `at`, replacing the one armed.
    fn arm(&mut self, myself: &ActorRef<JobMsg>, at: Timestamp) {
        if let Some(t) = self.timer.take() {
            t.abort();
        }
        let wait = at.saturating_since(now()) + Duration::from_millis(1);
        self.timer = Some(myself.send_after(wait, || JobMsg::Due));
    }

    /// The job is no longer leased (it went to `state`, to be leased again no earlier than
    /// `not_before`): stops the actor.
    fn release(
        &mut self,
        myself: &ActorRef<JobMsg>,
        state: JobState,
        not_before: Option<Timestamp>,
    ) {
        if let Some(t) = self.timer.take() {
            t.abort();
        }
        debug!(job = %self.job, %state, "job no longer leased");
        // Back in the queue, or finished (which may release dependents): let the scheduler
        // look again, now or when the job's backoff ends.
        let wake = match not_before {
            Some(at) if state == JobState::Queued => SchedulerMsg::WakeAt(at),
            _ => SchedulerMsg::Wake,
        };
        let _ = self.scheduler.cast(wake);
        myself.stop(None);
    }

    /// Follows the job after an outcome report: one the store took (`Some` state after it)
    /// ended the attempt, so the job is no longer leased; after one it refused, or one that
    /// queued the job for a retry (which may wait out a backoff), the store says where the job
    /// is.
    async fn after_outcome(&mut self, myself: &ActorRef<JobMsg>, state: Option<JobState>) {
        match state {
            Some(state) if !state.is_leased() && state != JobState::Queued => {
                self.release(myself, state, None)
            }
            _ => self.refresh(myself).await,
        }
    }

    async fn refresh(&mut self, myself: &ActorRef<JobMsg>) {
        let id = self.job;
        match read(&self.store, move |s| s.get(id)).await {
            Ok(job) => self.follow(myself, &job),
            Err(e) => {
                debug!(job = %id, "cannot read the job: {e}");
                myself.stop(None);
            }
        }
    }
}

impl Actor for JobActor {
    type Msg = JobMsg;
    type State = JobActorState;
    type Arguments = Args;

    async fn pre_start(
        &self,
        _myself: ActorRef<JobMsg>,
        args: Args,
    ) -> Result<JobActorState, ActorProcessingErr> {
        Ok(JobActorState {
            job: args.job,
            deadline: args.deadline,
            store: args.store,
            scheduler: args.scheduler,
            session: args.session,
            metrics: args.metrics,
            actors: args.actors,
            changes: args.changes,
            timer: None,
        })
    }

    async fn post_start(
        &self,
        myself: ActorRef<JobMsg>,
        state: &mut JobActorState,
    ) -> Result<(), ActorProcessingErr> {
        match state.deadline.take() {
            Some(at) => state.arm(&myself, at),
            None => state.refresh(&myself).await,
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        myself: ActorRef<JobMsg>,
        state: &mut JobActorState,
    ) -> Result<(), ActorProcessingErr> {
        if let Some(t) = state.timer.take() {
            t.abort();
        }
        state.actors.remove(state.job, myself.get_id());
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<JobMsg>,
        message: JobMsg,
        state: &mut JobActorState,
    ) -> Result<(), ActorProcessingErr> {
        let id = state.job;
        match message {
            JobMsg::Report {
                epoch,
                report,
                reply,
            } => {
                let outcome = report.is_outcome();
                let result = write(&state.store, &state.changes, move |s| {
                    report.apply(s, id, epoch)
                })
                .await;
                let after = match &result {
                    Ok(Applied::Lease(status)) => Some(status.lease_expires_at),
                    _ => None,
                };
                let ended = match &result {
                    Ok(Applied::Ended(state)) => Some(*state),
                    _ => None,
                };
                let _ = reply.send(result);
                if let Some(at) = after {
                    state.arm(&myself, at);
                } else if outcome {
                    state.after_outcome(&myself, ended).await;
                }
            }
            JobMsg::Cancel { reason, reply } => {
                let result = write(&state.store, &state.changes, move |s| {
                    s.cancel(id, reason, now())
                })
                .await;
                if let (Ok(JobState::Cancelling), Some(session)) = (&result, &state.session) {
                    // Tell the worker now rather than at its next heartbeat.
                    if let Ok(job) = read(&state.store, move |s| s.get(id)).await
                        && let Some(attempt) = job.live_attempt()
                    {
                        let cancel = nexa_runtime::wire::Message::Cancel {
                            job: id,
                            epoch: attempt.epoch,
                            reason: job
                                .error
                                .as_ref()
                                .map_or_else(String::new, |e| e.message.clone()),
                        };
                        let session = session.clone();
                        tokio::spawn(async move {
                            if let Err(e) = session.push(&cancel).await {
                                debug!(job = %id, "cancel not pushed (the heartbeat will carry it): {e}");
                            }
                        });
                    }
                }
                let _ = reply.send(result);
                state.refresh(&myself).await;
            }
            JobMsg::Due => {
                let expired = write(&state.store, &state.changes, |s| s.expire(now())).await;
                match expired {
                    Ok(list) => {
                        for e in &list {
                            info!(job = %e.job, state = %e.state, "attempt ended by the control plane: {}", e.cause());
                        }
                        let lost = list.iter().filter(|e| !e.timed_out).count();
                        state.metrics.record_leases_expired(lost as u64);
                    }
                    Err(e) => debug!("expire failed: {e}"),
                }
                state.refresh(&myself).await;
            }
        }
        Ok(())
    }
}
