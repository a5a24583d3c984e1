//! The scheduler actor: hands queued jobs to workers that ask, and holds a worker's request
//! open (long poll) until a job for it arrives or its wait runs out.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use nexa_runtime::{Lease, LeaseRequest, Store, StoreError, WorkerId};
use nexa_transport::Session;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use tracing::{debug, warn};

use super::blocking;
use super::job_actor::{self, JobActor};
use crate::clock::now;

/// What the scheduler is asked.
#[derive(Debug)]
pub(crate) enum SchedulerMsg {
    /// A worker with free resources wants a job; wait up to `wait` for one.
    AskForWork {
        worker: WorkerId,
        free_gpus: Vec<u64>,
        wait: Duration,
        session: Option<Session>,
        reply: RpcReplyPort<Result<Option<Lease>, StoreError>>,
    },
    /// Jobs may have become available (submitted, requeued, released, out of backoff).
    Wake,
    /// A held request's wait ran out.
    WaitOver(u64),
    /// A job actor for a job leased before a restart.
    Adopt(nexa_runtime::JobId),
}

struct Parked {
    id: u64,
    worker: WorkerId,
    free_gpus: Vec<u64>,
    session: Option<Session>,
    reply: RpcReplyPort<Result<Option<Lease>, StoreError>>,
}

pub(crate) struct Scheduler;

/// Whether any job is queued (ready or in backoff), by a read.
async fn queue_has_jobs(store: &Arc<dyn Store>) -> bool {
    let query = nexa_runtime::ListQuery {
        state: Some(nexa_runtime::JobState::Queued),
        limit: 1,
        ..Default::default()
    };
    blocking(store, move |s| s.list(query))
        .await
        .map_or(true, |page| !page.jobs.is_empty())
}

pub(crate) struct SchedulerState {
    plane: u64,
    store: Arc<dyn Store>,
    parked: VecDeque<Parked>,
    next_id: u64,
}

impl Scheduler {
    /// Leases the next job for a worker and starts the job's actor.
    async fn lease(
        myself: &ActorRef<SchedulerMsg>,
        plane: u64,
        store: &Arc<dyn Store>,
        worker: &WorkerId,
        free_gpus: &[u64],
        session: Option<Session>,
    ) -> Result<Option<Lease>, StoreError> {
        if session.as_ref().is_some_and(Session::is_closed) {
            // The worker is gone: a lease now would only wait out its expiry.
            return Ok(None);
        }
        let request = LeaseRequest {
            worker: worker.clone(),
            free_gpus: free_gpus.to_vec(),
        };
        let lease = blocking(store, move |s| s.lease_next(request, now())).await?;
        if let Some(lease) = &lease {
            // Persisted: only now is the job the worker's. Its actor watches the lease.
            let args = job_actor::Args {
                job: lease.job.id,
                store: store.clone(),
                scheduler: myself.clone(),
                session,
            };
            if let Err(e) = Actor::spawn_linked(
                Some(job_actor::name(plane, lease.job.id)),
                JobActor,
                args,
                myself.get_cell(),
            )
            .await
            {
                warn!(job = %lease.job.id, "cannot start the job's actor: {e}");
            }
        }
        Ok(lease)
    }
}

impl Actor for Scheduler {
    type Msg = SchedulerMsg;
    type State = SchedulerState;
    type Arguments = (u64, Arc<dyn Store>);

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        (plane, store): (u64, Arc<dyn Store>),
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(SchedulerState {
            plane,
            store,
            parked: VecDeque::new(),
            next_id: 0,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            SchedulerMsg::AskForWork {
                worker,
                free_gpus,
                wait,
                session,
                reply,
            } => {
                let leased = Self::lease(
                    &myself,
                    state.plane,
                    &state.store,
                    &worker,
                    &free_gpus,
                    session.clone(),
                )
                .await;
                match leased {
                    Ok(None) if !wait.is_zero() => {
                        state.next_id += 1;
                        let id = state.next_id;
                        debug!(%worker, "no job fits; holding the request");
                        state.parked.push_back(Parked {
                            id,
                            worker,
                            free_gpus,
                            session,
                            reply,
                        });
                        myself.send_after(wait, move || SchedulerMsg::WaitOver(id));
                    }
                    other => {
                        let _ = reply.send(other);
                    }
                }
            }
            SchedulerMsg::Wake => {
                // A read first: with nothing queued, a pass would make one empty (but still
                // durable) write per waiting worker.
                if state.parked.is_empty() || !queue_has_jobs(&state.store).await {
                    return Ok(());
                }
                let mut still = VecDeque::with_capacity(state.parked.len());
                while let Some(p) = state.parked.pop_front() {
                    if p.reply.is_closed() || p.session.as_ref().is_some_and(Session::is_closed) {
                        continue;
                    }
                    match Self::lease(
                        &myself,
                        state.plane,
                        &state.store,
                        &p.worker,
                        &p.free_gpus,
                        p.session.clone(),
                    )
                    .await
                    {
                        Ok(None) => still.push_back(p),
                        other => {
                            let _ = p.reply.send(other);
                        }
                    }
                }
                state.parked = still;
            }
            SchedulerMsg::WaitOver(id) => {
                if let Some(i) = state.parked.iter().position(|p| p.id == id) {
                    if let Some(p) = state.parked.remove(i) {
                        let _ = p.reply.send(Ok(None));
                    }
                }
            }
            SchedulerMsg::Adopt(job) => {
                if ractor::registry::where_is(job_actor::name(state.plane, job)).is_some() {
                    return Ok(());
                }
                let args = job_actor::Args {
                    job,
                    store: state.store.clone(),
                    scheduler: myself.clone(),
                    session: None,
                };
                if let Err(e) = Actor::spawn_linked(
                    Some(job_actor::name(state.plane, job)),
                    JobActor,
                    args,
                    myself.get_cell(),
                )
                .await
                {
                    warn!(%job, "cannot start the job's actor: {e}");
                }
            }
        }
        Ok(())
    }

    /// Job actors are permanent for as long as their job is leased: one that failed is
    /// started again, and finds the lease where the store says it is. One that stopped did so
    /// because its job is no longer leased.
    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        _state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        if let SupervisionEvent::ActorFailed(who, err) = event {
            warn!(actor = ?who.get_name(), "job actor failed: {err}");
            if let Some(job) = who.get_name().as_deref().and_then(job_actor::job_of) {
                let _ = myself.cast(SchedulerMsg::Adopt(job));
            }
        }
        Ok(())
    }
}
