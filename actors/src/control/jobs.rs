//! [`Jobs`]: the control plane's one way to change a job, shared by its facade, the QUIC
//! handler, the session actors and the pipelines. Every change goes through the job's actor
//! when it has one (it is leased), else to the store, and then tells waiters
//! ([`Changes`]) and the scheduler.

use std::sync::Arc;

use nexa_runtime::wire::{HeartbeatAck, RunningJob};
use nexa_runtime::{
    Epoch, FaultKind, Job, JobId, JobParams, JobSpec, JobState, JobType, ListQuery, Registry,
    SpecError, StorageFault, Store, StoreError, Submission, Submitted, WorkerId,
};
use ractor::rpc::CallResult;
use ractor::{ActorRef, RpcReplyPort};

use super::beats::Beats;
use super::endpoints::{Endpoints, Replica};
use super::follow::{Changes, write};
use super::job_actor::{JobActors, JobMsg};
use super::report::{Applied, Report};
use super::scheduler::{Fused, Parked, SchedulerMsg};
use super::{CALL_TIMEOUT, artifacts, blocking, read};
use crate::clock::now;

/// Jobs as the control plane changes them: through the job actors and the scheduler.
#[derive(Clone)]
pub(crate) struct Jobs {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) actors: Arc<JobActors>,
    pub(crate) endpoints: Arc<Endpoints>,
    pub(crate) scheduler: ActorRef<SchedulerMsg>,
    /// Whether workers wait for a job (then a submission goes through the scheduler).
    pub(crate) parked: Parked,
    /// Workers' heartbeats, written together.
    pub(crate) beats: Beats,
    pub(crate) changes: Changes,
}

impl Jobs {
    /// See [`ControlPlane::submit_all`](super::ControlPlane::submit_all).
    pub(crate) async fn submit_all(&self, spec: JobSpec) -> Result<Vec<Submitted>, StoreError> {
        let replicas = match &spec.params {
            JobParams::Deploy(p) if p.replicas > 1 => p.replicas,
            _ => 1,
        };
        let submission = if replicas == 1 {
            Submission::One(spec)
        } else {
            let specs = (1..=replicas)
                .map(|n| {
                    let mut replica = spec.clone();
                    if n > 1 {
                        replica.idempotency_key =
                            spec.idempotency_key.as_deref().map(|k| replica_key(k, n));
                    }
                    replica
                })
                .collect();
            Submission::Batch(specs)
        };
        self.store_submission(submission).await
    }

    /// Stores a submission, and lets the workers have its jobs: while some wait, the
    /// scheduler leases for them in the same write; else the scheduler is woken after it.
    async fn store_submission(&self, submission: Submission) -> Result<Vec<Submitted>, StoreError> {
        let submission = if self.parked.any() {
            let (reply, answer) = tokio::sync::oneshot::channel();
            match self
                .scheduler
                .cast(SchedulerMsg::Submit { submission, reply })
            {
                Ok(()) => match answer.await {
                    Ok(Fused::Stored(submitted)) => return submitted,
                    Ok(Fused::Declined(submission)) => submission,
                    Err(_) => {
                        return Err(StorageFault::new(
                            FaultKind::Unavailable,
                            "the scheduler stopped while storing the submission, which may or \
                             may not be stored; send it again with an idempotency key to know",
                        )
                        .into());
                    }
                },
                Err(ractor::MessagingErr::SendErr(SchedulerMsg::Submit { submission, .. })) => {
                    submission
                }
                Err(e) => {
                    return Err(StorageFault::new(
                        FaultKind::Unavailable,
                        format!("the scheduler cannot take the submission: {e}"),
                    )
                    .into());
                }
            }
        } else {
            submission
        };
        let submitted = match submission {
            Submission::One(spec) => {
                vec![write(&self.store, &self.changes, move |s| s.submit(spec, now())).await?]
            }
            Submission::Batch(specs) => {
                write(&self.store, &self.changes, move |s| {
                    s.submit_batch(specs, now())
                })
                .await?
            }
        };
        let _ = self.scheduler.cast(SchedulerMsg::Wake);
        Ok(submitted)
    }

    /// See [`ControlPlane::submit_batch`](super::ControlPlane::submit_batch).
    pub(crate) async fn submit_batch(
        &self,
        specs: Vec<JobSpec>,
    ) -> Result<Vec<Submitted>, StoreError> {
        if let Some(index) = specs
            .iter()
            .position(|s| matches!(&s.params, JobParams::Deploy(p) if p.replicas > 1))
        {
            let why = "a deploy of several replicas is submitted on its own, not in a batch";
            return Err(StoreError::Batch {
                index,
                source: Box::new(SpecError::new("params.replicas", why).into()),
            });
        }
        if specs.is_empty() {
            return Ok(Vec::new());
        }
        self.store_submission(Submission::Batch(specs)).await
    }

    /// See [`ControlPlane::cancel`](super::ControlPlane::cancel).
    pub(crate) async fn cancel(&self, id: JobId, reason: String) -> Result<JobState, StoreError> {
        let direct = reason.clone();
        // A deploy job being cancelled serves no more requests.
        self.endpoints.forget(id);
        let state = self
            .call(
                id,
                |reply| JobMsg::Cancel { reason, reply },
                move |s| s.cancel(id, direct, now()),
            )
            .await?;
        // Its dependents were cancelled with it, or it left the queue: the scheduler looks.
        let _ = self.scheduler.cast(SchedulerMsg::Wake);
        Ok(state)
    }

    /// A worker's report on a job it holds the lease of (the lease token is checked by the
    /// caller). An attempt that ended serves no more (a deploy job's replica).
    pub(crate) async fn report(
        &self,
        job: JobId,
        epoch: Epoch,
        report: Report,
    ) -> Result<Applied, StoreError> {
        if report.is_outcome() {
            self.endpoints.forget(job);
        }
        let direct = report.clone();
        self.call(
            job,
            |reply| JobMsg::Report {
                epoch,
                report,
                reply,
            },
            move |s| direct.apply(s, job, epoch),
        )
        .await
    }

    /// Asks the job's actor, or the store directly when the job has no actor (it is not
    /// leased, so the store gives the right answer, usually a stale lease).
    async fn call<R: Send + 'static>(
        &self,
        job: JobId,
        message: impl FnOnce(RpcReplyPort<Result<R, StoreError>>) -> JobMsg,
        direct: impl FnOnce(&dyn Store) -> Result<R, StoreError> + Send + 'static,
    ) -> Result<R, StoreError> {
        // The actor's write wakes the job's waiters, as this one does.
        match self.actors.get(job) {
            Some(actor) => match actor.call(message, Some(CALL_TIMEOUT)).await {
                Ok(CallResult::Success(result)) => result,
                _ => write(&self.store, &self.changes, direct).await,
            },
            None => write(&self.store, &self.changes, direct).await,
        }
    }

    /// Renews the leases of the jobs a worker says it runs. The acknowledgement names the
    /// jobs to cancel and the leases that are gone; a job whose renewal failed otherwise is
    /// left out of it, and the first such failure is returned beside it.
    pub(crate) async fn running(
        &self,
        worker: &WorkerId,
        jobs: Vec<RunningJob>,
    ) -> (HeartbeatAck, Option<StoreError>) {
        let mut ack = HeartbeatAck {
            cancel: vec![],
            lost: vec![],
        };
        let mut failure = None;
        for running in jobs {
            let job = running.job;
            let progress = running.progress;
            let renewed = self
                .report(job, running.epoch, Report::Heartbeat { progress })
                .await
                .and_then(|a| a.lease(job));
            match renewed {
                Ok(status) if status.cancel_requested => {
                    self.endpoints.forget(job);
                    ack.cancel.push(job);
                }
                Ok(_) => self.serving(worker, job, running.serving).await,
                Err(e) if e.is_stale() || matches!(e, StoreError::NotFound(_)) => {
                    self.endpoints.forget(job);
                    ack.lost.push(job);
                }
                Err(e) => {
                    failure.get_or_insert(e);
                }
            }
        }
        (ack, failure)
    }

    /// Records where `job` serves, as its worker says (a deploy job's ready replica), or
    /// that it does not.
    async fn serving(&self, worker: &WorkerId, job: JobId, url: Option<String>) {
        let endpoints = &self.endpoints;
        let Some(url) = url.filter(|u| nexa_runtime::wire::check_serving_url(u).is_ok()) else {
            endpoints.forget(job);
            return;
        };
        if endpoints.knows(job, &url) {
            endpoints.refresh(job);
            return;
        }
        // Newly ready: its endpoint's name is in the job's params.
        if let Ok(found) = self.get(job).await
            && let JobParams::Deploy(p) = &found.spec.params
        {
            endpoints.heard(Replica {
                job,
                endpoint: crate::endpoint_name(&p.model_id, &p.target),
                worker: worker.clone(),
                url,
            });
        }
    }

    /// One job.
    pub(crate) async fn get(&self, id: JobId) -> Result<Job, StoreError> {
        read(&self.store, move |s| s.get(id)).await
    }

    /// The deploy jobs not finished, newest first (see
    /// [`ControlPlane::deployments`](super::ControlPlane::deployments)).
    pub(crate) async fn deployments(&self) -> Result<Vec<Job>, StoreError> {
        let mut out = Vec::new();
        for state in [
            JobState::Waiting,
            JobState::Queued,
            JobState::Assigned,
            JobState::Running,
        ] {
            let mut before = None;
            loop {
                let query = ListQuery {
                    state: Some(state),
                    job_type: Some(JobType::Deploy),
                    before,
                    limit: 1000,
                    ..ListQuery::default()
                };
                let page = blocking(&self.store, move |s| s.list(query)).await?;
                out.extend(page.jobs);
                match page.next_before {
                    Some(b) => before = Some(b),
                    None => break,
                }
            }
        }
        out.sort_by_key(|j| std::cmp::Reverse(j.id));
        Ok(out)
    }

    /// Whether `job` is a deploy job whose replica is ready.
    pub(crate) fn serving_now(&self, job: JobId) -> bool {
        self.endpoints.ready(None).iter().any(|r| r.job == job)
    }

    /// The model registry as it stands.
    pub(crate) async fn registry(&self) -> Result<Registry, StoreError> {
        artifacts::registry(&self.store).await
    }
}

/// The idempotency key of replica `n` of a deploy job submitted under `key`: `key#replica-n`,
/// or, for a key too long to take the suffix (keys hold at most 256 bytes), its SHA-256.
fn replica_key(key: &str, n: u32) -> String {
    use sha2::Digest as _;
    let suffix = format!("#replica-{n}");
    if key.len() + suffix.len() <= 256 {
        format!("{key}{suffix}")
    } else {
        let digest = nexa_runtime::Digest(sha2::Sha256::digest(key.as_bytes()).into());
        format!("{digest}{suffix}")
    }
}
