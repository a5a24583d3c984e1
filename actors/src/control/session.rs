//! One actor per connected worker: it keeps the worker's registration alive and answers its
//! heartbeats, telling it which of its jobs to cancel and which leases it lost.

use nexa_runtime::WorkerId;
use nexa_runtime::wire::{Heartbeat, HeartbeatAck};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tracing::debug;

use super::jobs::Jobs;

#[derive(Debug)]
pub(crate) enum SessionMsg {
    Heartbeat(Heartbeat, RpcReplyPort<HeartbeatAck>),
}

pub(crate) struct SessionActor;

/// What a session starts with, and keeps.
pub(crate) struct Args {
    pub(crate) jobs: Jobs,
    pub(crate) worker: WorkerId,
}

impl Actor for SessionActor {
    type Msg = SessionMsg;
    type State = Args;
    type Arguments = Args;

    async fn pre_start(
        &self,
        _myself: ActorRef<SessionMsg>,
        args: Args,
    ) -> Result<Args, ActorProcessingErr> {
        Ok(args)
    }

    async fn handle(
        &self,
        _myself: ActorRef<SessionMsg>,
        message: SessionMsg,
        state: &mut Args,
    ) -> Result<(), ActorProcessingErr> {
        let SessionMsg::Heartbeat(hb, reply) = message;
        let worker = state.worker.clone();
        // An unknown worker (removed meanwhile) still gets answers about its jobs.
        let _ = state.jobs.beats.beat(worker).await;
        // The worker learns of a job whose renewal failed otherwise at its next heartbeat.
        let (ack, failure) = state.jobs.running(&state.worker, hb.jobs).await;
        if let Some(e) = failure {
            debug!(worker = %state.worker, "a lease not renewed: {e}");
        }
        let _ = reply.send(ack);
        Ok(())
    }
}
