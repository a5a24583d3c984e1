//! The QUIC server's handler: a worker's connection, its requests and its going away. The
//! HTTP API's worker link (`nexa worker --api`) is answered by the same [`PlaneHandler::answer`].

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use nexa_runtime::wire::{Assignment, ErrorCode, HeartbeatAck, Message, RunningJob, Welcome};
use nexa_runtime::{Epoch, JobId, LeaseToken, StoreError, WorkerId, WorkerInfo};
use nexa_storage::{ArtifactStore, RemoteBlobs};
use nexa_transport::{Handler, Session};
use ractor::rpc::CallResult;
use ractor::{Actor, ActorRef};
use tracing::{info, warn};

use super::jobs::Jobs;
use super::lease::LeaseKey;
use super::report::Report;
use super::scheduler::SchedulerMsg;
use super::session::{self, SessionActor, SessionMsg};
use super::{CALL_TIMEOUT, artifacts, blocking};
use crate::clock::now;
use crate::metrics::Metrics;

/// The transport's view of the control plane.
pub(super) struct PlaneHandler {
    pub(super) jobs: Jobs,
    /// The session actor of each connected worker, by session.
    pub(super) sessions: std::sync::Mutex<HashMap<u64, ActorRef<SessionMsg>>>,
    pub(super) artifacts: ArtifactStore,
    pub(super) remote: Option<RemoteBlobs>,
    pub(super) welcome: Welcome,
    pub(super) long_poll: Duration,
    pub(super) metrics: Arc<Metrics>,
    pub(super) lease_key: Arc<LeaseKey>,
}

/// The jobs of a heartbeat whose lease tokens hold, and those of the others (to be told lost).
pub(super) fn held_leases(key: &LeaseKey, jobs: Vec<RunningJob>) -> (Vec<RunningJob>, Vec<JobId>) {
    let (held, foreign): (Vec<_>, Vec<_>) = jobs
        .into_iter()
        .partition(|j| key.check(j.job, j.epoch, &j.lease_token).is_ok());
    (held, foreign.into_iter().map(|j| j.job).collect())
}

/// The lease a message reports under, for the messages that report on a job.
fn lease_of(message: &Message) -> Option<(JobId, Epoch, &LeaseToken)> {
    match message {
        Message::Started {
            job,
            epoch,
            lease_token,
        }
        | Message::Complete {
            job,
            epoch,
            lease_token,
            ..
        }
        | Message::Fail {
            job,
            epoch,
            lease_token,
            ..
        }
        | Message::ArtifactCommit {
            job,
            epoch,
            lease_token,
            ..
        }
        | Message::CheckpointSaved {
            job,
            epoch,
            lease_token,
            ..
        }
        | Message::CheckpointQuery {
            job,
            epoch,
            lease_token,
        } => Some((*job, *epoch, lease_token)),
        Message::LogBatch(b) => Some((b.job, b.epoch, &b.lease_token)),
        _ => None,
    }
}

pub(super) fn refusal(e: &StoreError) -> Message {
    let code = match e {
        e if e.is_stale() => ErrorCode::Stale,
        StoreError::NotFound(_) => ErrorCode::NotFound,
        StoreError::Storage(_) => ErrorCode::Unavailable,
        _ => ErrorCode::BadRequest,
    };
    Message::Error {
        code,
        message: e.to_string(),
    }
}

/// `Ack`, or the refusal.
fn ack<T>(result: Result<T, StoreError>) -> Message {
    result.map_or_else(|e| refusal(&e), |_| Message::Ack)
}

impl PlaneHandler {
    /// The heartbeat of a worker with no QUIC session (it speaks HTTP): it is alive, and so
    /// are `jobs`. Says which to cancel and which leases are gone (a job quoted without its
    /// lease token is one).
    pub(super) async fn linkless_heartbeat(
        &self,
        worker: WorkerId,
        jobs: Vec<RunningJob>,
    ) -> Result<HeartbeatAck, StoreError> {
        self.jobs.beats.beat(worker.clone()).await?;
        let (held, foreign) = held_leases(&self.lease_key, jobs);
        match self.jobs.running(&worker, held).await {
            (mut ack, None) => {
                ack.lost.extend(foreign);
                Ok(ack)
            }
            (_, Some(e)) => Err(e),
        }
    }

    fn lock_sessions(&self) -> std::sync::MutexGuard<'_, HashMap<u64, ActorRef<SessionMsg>>> {
        self.sessions.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Handler for PlaneHandler {
    async fn connected(
        &self,
        session: &Session,
        hello: nexa_runtime::wire::Hello,
    ) -> Result<Welcome, String> {
        let info = WorkerInfo {
            id: hello.worker.clone(),
            cpus: hello.cpus,
            memory_mb: hello.memory_mb,
            gpus: hello.gpus,
            labels: hello.labels,
            job_types: hello.job_types,
        };
        blocking(&self.jobs.store, move |s| s.register_worker(info, now()))
            .await
            .map_err(|e| e.to_string())?;
        let args = session::Args {
            jobs: self.jobs.clone(),
            worker: hello.worker.clone(),
        };
        let (actor, _) = Actor::spawn(None, SessionActor, args)
            .await
            .map_err(|e| format!("cannot start the session: {e}"))?;
        self.lock_sessions().insert(session.id(), actor);
        info!(worker = %hello.worker, session = session.id(), addr = %session.remote_addr(), "worker connected");
        // A worker that registers may fit jobs that waited for it.
        let _ = self.jobs.scheduler.cast(SchedulerMsg::Wake);
        Ok(self.welcome.clone())
    }

    async fn request(&self, session: &Session, message: Message) -> Message {
        self.answer(session.worker(), Some(session), message).await
    }

    async fn disconnected(&self, session: &Session, reason: String) {
        warn!(worker = %session.worker(), session = session.id(), reason, "worker disconnected");
        if let Some(actor) = self.lock_sessions().remove(&session.id()) {
            actor.stop(None);
        }
    }
}

impl PlaneHandler {
    /// The answer to a request of `worker`, on its QUIC `session` or, with none, over
    /// another link (HTTP).
    pub(super) async fn answer(
        &self,
        worker: &WorkerId,
        session: Option<&Session>,
        message: Message,
    ) -> Message {
        let (jobs, store) = (&self.jobs, &self.jobs.store);
        if let Some((job, epoch, token)) = lease_of(&message)
            && let Err(e) = self.lease_key.check(job, epoch, token)
        {
            warn!(%job, %epoch, %worker, "a report without its lease token was refused");
            return refusal(&e);
        }
        match message {
            Message::AskForWork(ask) => {
                let wait = Duration::from_millis(ask.wait_ms).min(self.long_poll);
                let worker = worker.clone();
                let asked = jobs
                    .scheduler
                    .call(
                        |reply| SchedulerMsg::AskForWork {
                            worker,
                            free_gpus: ask.free_gpus,
                            wait,
                            session: session.cloned(),
                            reply,
                        },
                        Some(wait + CALL_TIMEOUT),
                    )
                    .await;
                match asked {
                    Ok(CallResult::Success(Ok(Some(lease)))) => {
                        self.metrics.record_dispatch(&lease.job);
                        Message::Assignment(Assignment {
                            job: lease.job.id,
                            spec: lease.job.spec,
                            attempt: lease.attempt,
                            epoch: lease.epoch,
                            lease_token: self.lease_key.token(lease.job.id, lease.epoch),
                            lease_expires_at: lease.lease_expires_at,
                            deadline: lease.deadline,
                        })
                    }
                    Ok(CallResult::Success(Ok(None))) => Message::NoWork,
                    Ok(CallResult::Success(Err(e))) => refusal(&e),
                    _ => Message::Error {
                        code: ErrorCode::Unavailable,
                        message: "the scheduler did not answer".into(),
                    },
                }
            }
            Message::Started { job, epoch, .. } => {
                ack(jobs.report(job, epoch, Report::Started).await)
            }
            Message::Complete {
                job, epoch, output, ..
            } => ack(jobs.report(job, epoch, Report::Complete(output)).await),
            Message::Fail {
                job, epoch, error, ..
            } => ack(jobs.report(job, epoch, Report::Fail(error)).await),
            Message::LogBatch(batch) => {
                let (job, report) = (
                    batch.job,
                    Report::Logs {
                        first_seq: batch.first_seq,
                        lines: batch.lines,
                    },
                );
                match jobs
                    .report(job, batch.epoch, report)
                    .await
                    .and_then(|a| a.logged(job))
                {
                    Ok(ack) => Message::LogAck {
                        job,
                        next_seq: ack.next_seq,
                    },
                    Err(e) => refusal(&e),
                }
            }
            Message::Heartbeat(hb) if session.is_none() => {
                match self.linkless_heartbeat(worker.clone(), hb.jobs).await {
                    Ok(ack) => Message::HeartbeatAck(ack),
                    Err(e) => refusal(&e),
                }
            }
            Message::Heartbeat(mut hb) => {
                let (held, foreign) = held_leases(&self.lease_key, hb.jobs);
                hb.jobs = held;
                let actor = session.and_then(|s| self.lock_sessions().get(&s.id()).cloned());
                let Some(actor) = actor else {
                    return Message::Error {
                        code: ErrorCode::Unavailable,
                        message: "the session is gone".into(),
                    };
                };
                match actor
                    .call(|reply| SessionMsg::Heartbeat(hb, reply), Some(CALL_TIMEOUT))
                    .await
                {
                    Ok(CallResult::Success(mut ack)) => {
                        ack.lost.extend(foreign);
                        Message::HeartbeatAck(ack)
                    }
                    _ => Message::Error {
                        code: ErrorCode::Unavailable,
                        message: "the session did not answer".into(),
                    },
                }
            }
            Message::Goodbye { drain } => {
                let worker = worker.clone();
                let result = if drain {
                    blocking(store, move |s| s.drain_worker(&worker, now()))
                        .await
                        .map(drop)
                } else {
                    blocking(store, move |s| s.remove_worker(&worker)).await
                };
                ack(result)
            }
            other => {
                let name = other.name();
                match artifacts::answer(store, &self.artifacts, self.remote.as_ref(), other).await {
                    Some(answer) => answer,
                    None => Message::Error {
                        code: ErrorCode::BadRequest,
                        message: format!("a worker does not send {name}"),
                    },
                }
            }
        }
    }
}
