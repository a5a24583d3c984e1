//! The worker agent: registration, heartbeats, asking for work, and the jobs it runs.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use nexa_runtime::wire::{
    AskForWork, Assignment, ErrorCode, Heartbeat, Message, RunningJob, Welcome,
};
use nexa_runtime::{Epoch, FailureClass, JobError, JobId, LeaseToken};
use nexa_transport::{ClientEvent, RequestError, Uplink};
use ractor::{Actor, ActorProcessingErr, ActorRef, SupervisionEvent};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::WorkerConfig;
use super::supervisor::{self, Supervisor};
use crate::stage::{Progress, Serving};

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
    /// A job's stage is gone (finished, failed for good, stopped or aborted): its slot and
    /// GPUs are free, while its supervisor still reports the outcome.
    StageDone(JobId),
    /// A job's supervisor is done with it.
    Finished(JobId),
    /// Stop taking work; leave once the running jobs are done.
    Drain,
}

pub(crate) struct AgentArgs {
    pub(crate) client: Arc<dyn Uplink>,
    pub(crate) welcome: Welcome,
    pub(crate) events: mpsc::Receiver<ClientEvent>,
    pub(crate) config: WorkerConfig,
}

/// Services (deploy replicas) a worker runs at most, besides its slots.
const MAX_SERVICES: usize = 16;

/// Jobs a worker keeps per slot: the one whose stage runs, and up to two whose stages are gone
/// but whose reports (start, then outcome) are still on their way. A short job's reports so
/// ride behind the next job instead of holding up the request for it, and a control plane that
/// stops acknowledging reports is not handed more work than the worker can report.
const JOBS_PER_SLOT: usize = 3;

/// Whether a worker with `slots` slots can take another job, given for each job it still
/// supervises whether its stage is done: fewer stages run than there are slots, and the reports
/// still on their way are within bounds.
fn room(slots: usize, stages_done: impl Iterator<Item = bool>) -> bool {
    let (mut jobs, mut stages) = (0, 0);
    for done in stages_done {
        jobs += 1;
        stages += usize::from(!done);
    }
    stages < slots && jobs < slots * JOBS_PER_SLOT
}

struct Running {
    epoch: Epoch,
    lease_token: LeaseToken,
    /// Taken at assignment, given back when the stage is gone.
    gpus: Vec<u32>,
    /// The stage is gone; the outcome is being reported.
    stage_done: bool,
    /// A service (a deploy replica): it runs until undeployed, and takes no slot.
    service: bool,
    handed_back: Arc<AtomicBool>,
    cancel: CancellationToken,
    lost: Arc<AtomicBool>,
    progress: watch::Receiver<Option<f64>>,
    serving: watch::Receiver<Option<String>>,
}

pub(crate) struct AgentState {
    client: Arc<dyn Uplink>,
    config: WorkerConfig,
    long_poll: Duration,
    free_gpus: BTreeSet<u32>,
    running: BTreeMap<JobId, Running>,
    asking: bool,
    draining: bool,
}

impl AgentState {
    /// Room for another job: the running jobs leave a slot, services (deploy replicas, which
    /// run until undeployed) taking none of the `slots` but at most [`MAX_SERVICES`].
    fn has_room(&self) -> bool {
        let services = self.running.values().filter(|r| r.service).count();
        !self.draining
            && services < MAX_SERVICES
            && room(
                self.config.slots,
                self.running
                    .values()
                    .filter(|r| !r.service)
                    .map(|r| r.stage_done),
            )
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
            client: args.client,
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
                        // Ask again later; the agent goes on heartbeating meanwhile.
                        myself.send_after(Duration::from_millis(500), || AgentMsg::Poll);
                        return Ok(());
                    }
                    Ok(other) => warn!("unexpected answer to a request for work: {}", other.name()),
                    Err(e) => {
                        debug!("request for work failed: {e}");
                        myself.send_after(Duration::from_millis(200), || AgentMsg::Poll);
                        return Ok(());
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
                        lease_token: r.lease_token,
                        progress: *r.progress.borrow(),
                        serving: r.serving.borrow().clone(),
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
                    // Heartbeat at once: the leases of running jobs wait for it.
                    let _ = myself.cast(AgentMsg::Tick);
                    let _ = myself.cast(AgentMsg::Poll);
                }
            },
            AgentMsg::StageDone(job) => {
                if let Some(r) = state.running.get_mut(&job) {
                    r.stage_done = true;
                    state.free_gpus.extend(r.gpus.drain(..));
                }
                let _ = myself.cast(AgentMsg::Poll);
            }
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
                // Services (deploy replicas) never finish by themselves: they are handed back,
                // to be placed again on another worker.
                for (job, r) in state.running.iter().filter(|(_, r)| r.service) {
                    info!(%job, "handing back a service: it is placed again elsewhere");
                    r.handed_back.store(true, Ordering::SeqCst);
                    r.cancel.cancel();
                }
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
        let (job, epoch, lease_token) = (a.job, a.epoch, a.lease_token);
        let service = a.spec.job_type() == nexa_runtime::JobType::Deploy;
        let client = state.client.clone();
        let refuse = |message: String| {
            let client = client.clone();
            async move {
                let error = JobError::new(FailureClass::Platform, message);
                let fail = Message::Fail {
                    job,
                    epoch,
                    lease_token,
                    error,
                };
                let _ = client.request(&fail).await;
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
        let handed_back = Arc::new(AtomicBool::new(false));
        let (progress, progress_rx) = Progress::channel();
        let (serving, serving_rx) = Serving::channel();
        let args = supervisor::Args {
            client: state.client.clone(),
            assignment: a,
            stage,
            gpus: gpus.clone(),
            work_dir: state.config.work_dir.clone(),
            data_roots: state.config.data_roots.clone(),
            restart: state.config.restart,
            grace: state.config.cancel_grace,
            cancel: cancel.clone(),
            lost: lost.clone(),
            handed_back: handed_back.clone(),
            progress,
            serving,
            agent: myself.clone(),
        };
        state.running.insert(
            job,
            Running {
                epoch,
                lease_token,
                gpus,
                stage_done: false,
                service,
                handed_back,
                cancel,
                lost,
                progress: progress_rx,
                serving: serving_rx,
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

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Condvar, Mutex};
    use std::time::Duration;

    use nexa_runtime::*;
    use nexa_transport::Trust;

    use super::room;
    use crate::{
        BoxFuture, ControlPlane, ControlPlaneConfig, Stage, StageContext, StageError,
        StageRegistry, WorkerConfig, WorkerNode,
    };

    #[test]
    fn a_slot_is_free_once_its_stage_is_gone_within_the_reports_bound() {
        fn done(flags: &[bool]) -> impl Iterator<Item = bool> + '_ {
            flags.iter().copied()
        }
        assert!(room(1, done(&[])));
        assert!(!room(1, done(&[false])), "a stage runs");
        assert!(
            room(1, done(&[true])),
            "its stage is gone; its report is on its way"
        );
        assert!(room(1, done(&[true, true])));
        assert!(
            !room(1, done(&[true, true, true])),
            "three reports on their way"
        );
        assert!(!room(1, done(&[true, false])));
        assert!(room(2, done(&[false, true, true, true, true])));
        assert!(!room(2, done(&[false, false])));
        assert!(!room(2, done(&[true; 6])));
    }

    /// A `MemStore` that holds every `complete` until released.
    struct HeldCompletions {
        inner: MemStore,
        held: Mutex<bool>,
        released: Condvar,
    }

    impl HeldCompletions {
        fn release(&self) {
            *self.held.lock().unwrap_or_else(|e| e.into_inner()) = false;
            self.released.notify_all();
        }
    }

    /// Releases the held completions when dropped, so that a failed assertion does not leave
    /// a store call blocked (the test's runtime waits for it on shutdown).
    struct Release(Arc<HeldCompletions>);

    impl Drop for Release {
        fn drop(&mut self) {
            self.0.release();
        }
    }

    // A store through the blanket `impl<E: Engine> Store for E`, which names every call to the
    // engine: only `complete` is held, the rest go straight to the `MemStore`.
    impl Engine for HeldCompletions {
        fn config(&self) -> &StoreConfig {
            self.inner.config()
        }

        fn write<R: Send + 'static>(&self, call: Call, op: WriteOp<R>) -> Result<R, StoreError> {
            if call.method == "complete" {
                let held = self.held.lock().unwrap();
                drop(self.released.wait_while(held, |held| *held).unwrap());
            }
            self.inner.write(call, op)
        }

        fn read<R>(
            &self,
            call: Call,
            op: &mut dyn FnMut(&dyn ReadTables) -> Result<R, StoreError>,
        ) -> Result<R, StoreError> {
            self.inner.read(call, op)
        }
    }

    /// A worker of one slot, `one-slot`, running `stages` for `plane`, its files under `dir`.
    pub(super) async fn one_slot_worker(
        plane: &ControlPlane,
        stages: StageRegistry,
        dir: &std::path::Path,
    ) -> WorkerNode {
        WorkerNode::start(WorkerConfig::new(
            plane.addr(),
            Trust::Fingerprint(plane.fingerprint()),
            "agent-test-token",
            WorkerId::new("one-slot").unwrap(),
            stages,
            dir.join("worker"),
        ))
        .await
        .unwrap()
    }

    /// Tells the test which job it ran.
    #[derive(Clone)]
    struct Noted(tokio::sync::mpsc::UnboundedSender<JobId>);

    impl Stage for Noted {
        fn run(&self, ctx: StageContext) -> BoxFuture<Result<JobOutput, StageError>> {
            let _ = self.0.send(ctx.job);
            Box::pin(async { Ok(JobOutput::default()) })
        }
    }

    fn spec(n: u64) -> JobSpec {
        JobSpec::new(JobParams::Generate(GenerateParams::new("math", n + 1)))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_worker_runs_its_next_job_while_the_last_ones_outcome_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let config = ControlPlaneConfig::new(
            "127.0.0.1:0".parse().unwrap(),
            dir.path().join("plane"),
            "agent-test-token",
        );
        let store = Arc::new(HeldCompletions {
            inner: MemStore::new(config.store.clone()),
            held: Mutex::new(true),
            released: Condvar::new(),
        });
        let release = Release(store.clone());
        let plane = ControlPlane::start_with_store(config, store.clone())
            .await
            .unwrap();
        let (ran, mut runs) = tokio::sync::mpsc::unbounded_channel();
        let mut stages = StageRegistry::new();
        stages.register(JobType::Generate, Noted(ran));
        let worker = one_slot_worker(&plane, stages, dir.path()).await;

        let first = plane.submit(spec(1)).await.unwrap().id;
        let second = plane.submit(spec(2)).await.unwrap().id;
        let wait = Duration::from_secs(20);
        let ran_first = tokio::time::timeout(wait, runs.recv()).await.unwrap();
        assert_eq!(ran_first, Some(first));
        // The one slot takes the second job while the first one's completion is held.
        let ran_second = tokio::time::timeout(wait, runs.recv()).await;
        assert_eq!(
            ran_second.expect("the second job runs before the first is acknowledged"),
            Some(second)
        );
        let state = plane.get(first).await.unwrap().state;
        assert!(state.is_leased(), "the first job is still leased ({state})");

        drop(release);
        for id in [first, second] {
            let deadline = tokio::time::Instant::now() + wait;
            while plane.get(id).await.unwrap().state != JobState::Succeeded {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "{id} did not succeed"
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        worker.stop().await;
        plane.shutdown().await;
    }
}

#[cfg(test)]
mod supervision_tests {
    use std::time::Duration;

    use nexa_runtime::*;

    use super::tests::one_slot_worker;
    use crate::{
        BoxFuture, ControlPlane, ControlPlaneConfig, Stage, StageContext, StageError, StageRegistry,
    };

    /// A stage whose `run` panics before it returns a future: the panic is in the
    /// supervisor's own task, not in the stage's.
    struct PanicsAtOnce;

    impl Stage for PanicsAtOnce {
        fn run(&self, _ctx: StageContext) -> BoxFuture<Result<JobOutput, StageError>> {
            panic!("cannot even start")
        }
    }

    struct Fine;

    impl Stage for Fine {
        fn run(&self, _ctx: StageContext) -> BoxFuture<Result<JobOutput, StageError>> {
            Box::pin(async { Ok(JobOutput::default()) })
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_supervisor_reports_a_platform_failure_and_frees_its_slot() {
        let dir = tempfile::tempdir().unwrap();
        let config = ControlPlaneConfig::new(
            "127.0.0.1:0".parse().unwrap(),
            dir.path().join("plane"),
            "agent-test-token",
        );
        let plane = ControlPlane::start(config).await.unwrap();
        let mut stages = StageRegistry::new();
        stages.register(JobType::Generate, PanicsAtOnce);
        stages.register(JobType::Train, Fine);
        let worker = one_slot_worker(&plane, stages, dir.path()).await;

        let broken = plane
            .submit(JobSpec::new(JobParams::Generate(GenerateParams::new(
                "physics", 10,
            ))))
            .await
            .unwrap()
            .id;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        let failed = loop {
            let job = plane.get(broken).await.unwrap();
            if let Some(Some(AttemptOutcome::Failed(e))) =
                job.attempts.first().map(|a| a.outcome.clone())
            {
                break e;
            }
            assert!(tokio::time::Instant::now() < deadline, "{:#?}", job.events);
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert_eq!(failed.class, FailureClass::Platform, "{failed:?}");
        assert!(failed.message.contains("supervisor"), "{failed:?}");
        // The one slot is free again: another job runs.
        let fine = plane
            .submit(JobSpec::new(JobParams::Train(TrainParams::new(
                "m",
                "file:///d.csv",
            ))))
            .await
            .unwrap()
            .id;
        loop {
            if plane.get(fine).await.unwrap().state == JobState::Succeeded {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the slot stayed taken"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        plane.cancel(broken, "done").await.unwrap();
        worker.stop().await;
        plane.shutdown().await;
    }
}
