//! The worker agent: registration, heartbeats, asking for work, and the jobs it runs.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use nexa_runtime::wire::{
    AskForWork, Assignment, ErrorCode, Heartbeat, Message, RunningJob, Welcome,
};
use nexa_runtime::{Epoch, FailureClass, JobError, JobId};
use nexa_transport::{Client, ClientEvent, RequestError};
use ractor::{Actor, ActorProcessingErr, ActorRef, SupervisionEvent};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::WorkerConfig;
use super::supervisor::{self, Supervisor};
use crate::stage::Progress;

/// What the agent is told.
#[derive(Debug)]
pub(crate) enum AgentMsg {
    /// Ask for work if there is room.
    Poll,
    /// The answer to a request for work.
    Offer(Result<Message, RequestError>),
    /// Time to heartbeat.
    Tick,
    /// The answer to a heartbeat.
    Beat(Result<Message, RequestError>),
    /// Something from the connection.
    Event(ClientEvent),
    /// A job's supervisor is done with it.
    Finished(JobId),
    /// Stop taking work; leave once the running jobs are done.
    Drain,
}

pub(crate) struct AgentArgs {
    pub(crate) client: Client,
    pub(crate) welcome: Welcome,
    pub(crate) events: mpsc::Receiver<ClientEvent>,
    pub(crate) config: WorkerConfig,
}

struct Running {
    epoch: Epoch,
    gpus: Vec<u32>,
    cancel: CancellationToken,
    lost: Arc<AtomicBool>,
    progress: watch::Receiver<Option<f64>>,
}

pub(crate) struct AgentState {
    client: Arc<Client>,
    config: WorkerConfig,
    long_poll: Duration,
    free_gpus: BTreeSet<u32>,
    running: BTreeMap<JobId, Running>,
    asking: bool,
    draining: bool,
}

impl AgentState {
    fn has_room(&self) -> bool {
        !self.draining && self.running.len() < self.config.slots
    }

    /// Memory of each free GPU, as the control plane matches on it.
    fn free_gpu_memory(&self) -> Vec<u64> {
        self.free_gpus
            .iter()
            .filter_map(|&i| self.config.gpus.get(i as usize).map(|g| g.memory_mb))
            .collect()
    }

    /// Takes the GPUs an assignment needs: the smallest free ones that are big enough.
    fn take_gpus(&mut self, a: &Assignment) -> Option<Vec<u32>> {
        let need = a.spec.resources.gpus as usize;
        let min = a.spec.resources.gpu_memory_mb;
        let mut fitting: Vec<u32> = self
            .free_gpus
            .iter()
            .copied()
            .filter(|&i| {
                self.config
                    .gpus
                    .get(i as usize)
                    .is_some_and(|g| g.memory_mb >= min)
            })
            .collect();
        fitting.sort_by_key(|&i| self.config.gpus[i as usize].memory_mb);
        if fitting.len() < need {
            return None;
        }
        let taken: Vec<u32> = fitting.into_iter().take(need).collect();
        for i in &taken {
            self.free_gpus.remove(i);
        }
        Some(taken)
    }
}

pub(crate) struct Agent;

impl Actor for Agent {
    type Msg = AgentMsg;
    type State = AgentState;
    type Arguments = AgentArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<AgentMsg>,
        args: AgentArgs,
    ) -> Result<AgentState, ActorProcessingErr> {
        let mut events = args.events;
        let forward = myself.clone();
        tokio::spawn(async move {
            while let Some(event) = events.recv().await {
                if forward.cast(AgentMsg::Event(event)).is_err() {
                    break;
                }
            }
        });
        let heartbeat = Duration::from_millis(args.welcome.heartbeat_ms.max(100));
        myself.send_interval(heartbeat, || AgentMsg::Tick);
        let _ = myself.cast(AgentMsg::Poll);
        info!(worker = %args.config.id, session = args.welcome.session, "joined the control plane");
        Ok(AgentState {
            client: Arc::new(args.client),
            long_poll: Duration::from_millis(args.welcome.long_poll_ms),
            free_gpus: (0..args.config.gpus.len() as u32).collect(),
            config: args.config,
            running: BTreeMap::new(),
            asking: false,
            draining: false,
        })
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<AgentMsg>,
        state: &mut AgentState,
    ) -> Result<(), ActorProcessingErr> {
        for running in state.running.values() {
            running.lost.store(true, Ordering::SeqCst);
            running.cancel.cancel();
        }
        // Close the connection even though a request for work may still be in flight: the
        // control plane must not hand a job to a worker that has stopped.
        state.client.shutdown();
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<AgentMsg>,
        message: AgentMsg,
        state: &mut AgentState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            AgentMsg::Poll => {
                if state.asking || !state.has_room() {
                    return Ok(());
                }
                state.asking = true;
                let ask = Message::AskForWork(AskForWork {
                    free_gpus: state.free_gpu_memory(),
                    wait_ms: state.long_poll.as_millis() as u64,
                });
                let (client, me) = (state.client.clone(), myself.clone());
                tokio::spawn(async move {
                    let answer = client.request(&ask).await;
                    let _ = me.cast(AgentMsg::Offer(answer));
                });
            }
            AgentMsg::Offer(answer) => {
                state.asking = false;
                match answer {
                    Ok(Message::Assignment(a)) => self.accept(&myself, state, a).await,
                    Ok(Message::NoWork) => {}
                    Ok(Message::Error { code, message }) => {
                        warn!(?code, "request for work refused: {message}");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                    Ok(other) => warn!("unexpected answer to a request for work: {}", other.name()),
                    Err(e) => {
                        debug!("request for work failed: {e}");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
                let _ = myself.cast(AgentMsg::Poll);
            }
            AgentMsg::Tick => {
                let jobs = state
                    .running
                    .iter()
                    .map(|(&job, r)| RunningJob {
                        job,
                        epoch: r.epoch,
                        progress: *r.progress.borrow(),
                    })
                    .collect();
                let (client, me) = (state.client.clone(), myself.clone());
                tokio::spawn(async move {
                    let answer = client
                        .request(&Message::Heartbeat(Heartbeat { jobs }))
                        .await;
                    let _ = me.cast(AgentMsg::Beat(answer));
                });
            }
            AgentMsg::Beat(answer) => match answer {
                Ok(Message::HeartbeatAck(ack)) => {
                    for job in ack.cancel {
                        if let Some(r) = state.running.get(&job) {
                            info!(%job, "cancel requested");
                            r.cancel.cancel();
                        }
                    }
                    for job in ack.lost {
                        if let Some(r) = state.running.get(&job) {
                            warn!(%job, "lease lost; stopping the job without reporting");
                            r.lost.store(true, Ordering::SeqCst);
                            r.cancel.cancel();
                        }
                    }
                }
                Ok(other) => debug!("unexpected heartbeat answer: {}", other.name()),
                Err(e) => debug!("heartbeat failed: {e}"),
            },
            AgentMsg::Event(event) => match event {
                ClientEvent::Pushed(pushed) => {
                    let answer = match &pushed.message {
                        Message::Cancel { job, epoch, reason } => {
                            match state.running.get(job).filter(|r| r.epoch == *epoch) {
                                Some(r) => {
                                    info!(%job, reason, "cancel requested");
                                    r.cancel.cancel();
                                    Message::Ack
                                }
                                None => Message::Error {
                                    code: ErrorCode::NotFound,
                                    message: format!("{job} under {epoch} does not run here"),
                                },
                            }
                        }
                        other => Message::Error {
                            code: ErrorCode::BadRequest,
                            message: format!("a worker does not take {}", other.name()),
                        },
                    };
                    pushed.reply(answer);
                }
                ClientEvent::Disconnected { reason } => {
                    warn!(reason, "lost the control plane; reconnecting")
                }
                ClientEvent::Reconnected { welcome } => {
                    info!(session = welcome.session, "back with the control plane");
                    let _ = myself.cast(AgentMsg::Poll);
                }
            },
            AgentMsg::Finished(job) => {
                if let Some(r) = state.running.remove(&job) {
                    state.free_gpus.extend(r.gpus);
                }
                if state.draining && state.running.is_empty() {
                    self.leave(&myself, state).await;
                } else {
                    let _ = myself.cast(AgentMsg::Poll);
                }
            }
            AgentMsg::Drain => {
                info!(
                    running = state.running.len(),
                    "draining: finishing running jobs, taking no more"
                );
                state.draining = true;
                let _ = state
                    .client
                    .request(&Message::Goodbye { drain: true })
                    .await;
                if state.running.is_empty() {
                    self.leave(&myself, state).await;
                }
            }
        }
        Ok(())
    }

    /// Supervisors stop themselves when done; a failed one is a bug, and its job is handed
    /// back as a platform failure so it is retried elsewhere.
    async fn handle_supervisor_evt(
        &self,
        _myself: ActorRef<AgentMsg>,
        event: SupervisionEvent,
        _state: &mut AgentState,
    ) -> Result<(), ActorProcessingErr> {
        if let SupervisionEvent::ActorFailed(who, err) = event {
            warn!(actor = ?who.get_id(), "a stage supervisor failed: {err}");
        }
        Ok(())
    }
}

impl Agent {
    async fn accept(&self, myself: &ActorRef<AgentMsg>, state: &mut AgentState, a: Assignment) {
        let (job, epoch) = (a.job, a.epoch);
        let client = state.client.clone();
        let refuse = |message: String| {
            let client = client.clone();
            async move {
                let error = JobError::new(FailureClass::Platform, message);
                let _ = client.request(&Message::Fail { job, epoch, error }).await;
            }
        };
        let Some(stage) = state.config.stages.get(a.spec.job_type()) else {
            refuse(format!(
                "worker {} has no stage for {} jobs",
                state.config.id,
                a.spec.job_type()
            ))
            .await;
            return;
        };
        let Some(gpus) = state.take_gpus(&a) else {
            refuse(format!(
                "worker {} has no free GPUs that fit",
                state.config.id
            ))
            .await;
            return;
        };
        info!(%job, attempt = a.attempt, %epoch, job_type = %a.spec.job_type(), ?gpus, "running job");
        let cancel = CancellationToken::new();
        let lost = Arc::new(AtomicBool::new(false));
        let (progress, progress_rx) = Progress::channel();
        let args = supervisor::Args {
            client: state.client.clone(),
            assignment: a,
            stage,
            gpus: gpus.clone(),
            work_dir: state.config.work_dir.clone(),
            restart: state.config.restart,
            grace: state.config.cancel_grace,
            cancel: cancel.clone(),
            lost: lost.clone(),
            progress,
            agent: myself.clone(),
        };
        state.running.insert(
            job,
            Running {
                epoch,
                gpus,
                cancel,
                lost,
                progress: progress_rx,
            },
        );
        if let Err(e) = Actor::spawn_linked(None, Supervisor, args, myself.get_cell()).await {
            warn!(%job, "cannot start the stage supervisor: {e}");
            if let Some(r) = state.running.remove(&job) {
                state.free_gpus.extend(r.gpus);
            }
            refuse(format!("cannot start the stage supervisor: {e}")).await;
        }
    }

    async fn leave(&self, myself: &ActorRef<AgentMsg>, state: &mut AgentState) {
        let _ = state
            .client
            .request(&Message::Goodbye { drain: false })
            .await;
        info!("drained; leaving");
        myself.stop(None);
    }
}
