//! The scheduler actor: hands queued jobs to workers that ask, and holds a worker's request
//! open (long poll) until a job for it arrives or its wait runs out.
//!
//! Requests are leased in batches. Every request waiting for an answer goes into one
//! [`Store::lease_many`] write, which leases for each request in turn: the queue order
//! (priority, then submission) holds across the batch, a request gets only a job that fits
//! it, and no job goes to two requests. The write runs in a task of its own, so the scheduler
//! keeps taking requests and wakes while it commits; at most one write is in flight, so the
//! batches are leased in the order they were formed, oldest request first, and the requests
//! that arrive during a commit make up the next batch. Under load one durable commit leases
//! for every worker that asked while the previous one was on its way to disk.
//!
//! A request that gets no job is parked until a wake (a submit, a requeue, a finished job, a
//! worker joining, the end of a retry's backoff) or the end of its wait. While requests are
//! parked, a submission comes to the scheduler ([`SchedulerMsg::Submit`]), whose write
//! submits and leases for them in one commit ([`Store::submit_and_lease`]): a worker that
//! waits gets a new job one durable write sooner than by a submit and then a lease. A wake that comes
//! while a write is in flight is kept and applied when the write ends, so a job queued during
//! the write is not missed. Wakes due later (backoffs) are kept in order, with one timer for
//! the earliest.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use nexa_runtime::{
    JobId, Lease, LeaseRequest, Store, StoreError, Submission, Submitted, Timestamp, WorkerId,
};
use nexa_transport::Session;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use tokio::time::Instant;
use tracing::{debug, warn};

use super::follow::{Changes, write};
use super::job_actor::{self, JobActor, JobActors};
use super::read;
use crate::clock::now;
use crate::metrics::Metrics;

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
    /// A job becomes available at this time (its retry's backoff ends).
    WakeAt(Timestamp),
    /// The earliest wake asked for with `WakeAt` is due.
    Alarm,
    /// A held request's wait ran out.
    WaitOver(u64),
    /// A job actor for a job leased before a restart.
    Adopt(JobId),
    /// Submit these jobs and lease for the parked requests in the same write; declined
    /// (the submission handed back) when none is parked or a lease write is in flight.
    Submit {
        submission: Submission,
        reply: tokio::sync::oneshot::Sender<Fused>,
    },
    /// The lease write of a batch ended: one answer per request, in order, or why the write
    /// failed as a whole.
    Leased {
        batch: Vec<Ask>,
        answers: Result<Vec<Result<Option<Lease>, StoreError>>, StoreError>,
    },
}

/// The scheduler's answer to [`SchedulerMsg::Submit`].
#[derive(Debug)]
pub(crate) enum Fused {
    /// It made the write: the jobs submitted, or why none was.
    Stored(Result<Vec<Submitted>, StoreError>),
    /// It did not: the submission is the submitter's to store.
    Declined(Submission),
}

/// Whether requests are parked, for submitters to know when to come to the scheduler with
/// their submission (see [`SchedulerMsg::Submit`]); set by the scheduler after each message.
#[derive(Clone, Debug, Default)]
pub(crate) struct Parked(Arc<AtomicUsize>);

impl Parked {
    /// Some request was parked when the scheduler last looked.
    pub(crate) fn any(&self) -> bool {
        self.0.load(Ordering::Relaxed) > 0
    }

    fn set(&self, n: usize) {
        self.0.store(n, Ordering::Relaxed);
    }
}

/// A worker's request for work, from its arrival until it is answered.
#[derive(Debug)]
pub(crate) struct Ask {
    id: u64,
    worker: WorkerId,
    free_gpus: Vec<u64>,
    /// When its wait runs out; `None` when it does not wait.
    until: Option<Instant>,
    /// Whether a `WaitOver` is on its way for it.
    timed: bool,
    session: Option<Session>,
    reply: RpcReplyPort<Result<Option<Lease>, StoreError>>,
}

impl Ask {
    /// Nobody is waiting for the answer any more, or the worker is gone (a lease now would
    /// only wait out its expiry).
    fn gone(&self) -> bool {
        self.reply.is_closed() || self.session.as_ref().is_some_and(Session::is_closed)
    }
}

pub(crate) struct Scheduler;

/// Whether any job is queued (ready or in backoff), by a read.
async fn queue_has_jobs(store: &Arc<dyn Store>) -> bool {
    let query = nexa_runtime::ListQuery {
        state: Some(nexa_runtime::JobState::Queued),
        limit: 1,
        ..Default::default()
    };
    read(store, move |s| s.list(query))
        .await
        .map_or(true, |page| !page.jobs.is_empty())
}

/// A pending `Alarm` message.
type Timer = tokio::task::JoinHandle<Result<(), ractor::MessagingErr<SchedulerMsg>>>;

/// What the scheduler starts with.
pub(crate) struct Args {
    /// Where its job actors are found.
    pub(crate) actors: Arc<JobActors>,
    pub(crate) store: Arc<dyn Store>,
    pub(crate) metrics: Arc<Metrics>,
    /// Told when a lease write leased jobs.
    pub(crate) changes: Changes,
    /// Kept up to date with the parked requests.
    pub(crate) parked: Parked,
}

pub(crate) struct SchedulerState {
    actors: Arc<JobActors>,
    /// The job of each of its job actors, by actor, to restart a failed one.
    watching: HashMap<ractor::ActorId, JobId>,
    store: Arc<dyn Store>,
    metrics: Arc<Metrics>,
    changes: Changes,
    /// Times at which to wake, earliest first (`WakeAt`).
    alarms: BTreeSet<Timestamp>,
    /// The timer armed for the earliest of `alarms`, and its time.
    alarm: Option<(Timestamp, Timer)>,
    /// Requests for the next lease write, oldest first.
    ready: VecDeque<Ask>,
    /// Requests that found no job, waiting for a wake or the end of their wait, oldest first.
    parked: VecDeque<Ask>,
    /// How many are, for submitters.
    parked_count: Parked,
    /// A lease write is in flight.
    leasing: bool,
    /// A wake came while the write was in flight: the parked requests try again after it.
    woken: bool,
    next_id: u64,
}

impl SchedulerState {
    /// Begins the next lease write, unless one is in flight: its batch (the ready requests;
    /// those whose caller is gone are answered instead) and what they ask the store for.
    /// `None`, and no write, when no request is left.
    fn begin_write(&mut self) -> Option<(Vec<Ask>, Vec<LeaseRequest>)> {
        if self.leasing {
            return None;
        }
        let mut batch = Vec::with_capacity(self.ready.len());
        for ask in self.ready.drain(..) {
            if ask.gone() {
                let _ = ask.reply.send(Ok(None));
            } else {
                batch.push(ask);
            }
        }
        if batch.is_empty() {
            return None;
        }
        self.leasing = true;
        let requests = batch
            .iter()
            .map(|ask| LeaseRequest {
                worker: ask.worker.clone(),
                free_gpus: ask.free_gpus.clone(),
            })
            .collect();
        Some((batch, requests))
    }

    /// Starts the lease write of every ready request, unless one is in flight.
    fn lease_ready(&mut self, myself: &ActorRef<SchedulerMsg>) {
        let Some((batch, requests)) = self.begin_write() else {
            return;
        };
        let (store, changes, myself) = (self.store.clone(), self.changes.clone(), myself.clone());
        tokio::spawn(async move {
            // A read first: with nothing queued, the write would be an empty (but still
            // durable) commit.
            let answers = if queue_has_jobs(&store).await {
                write(&store, &changes, move |s| s.lease_many(requests, now())).await
            } else {
                Ok(vec![Ok(None); requests.len()])
            };
            // When the scheduler has stopped, the callers see their answers dropped, and any
            // lease made runs out unrenewed.
            let _ = myself.cast(SchedulerMsg::Leased { batch, answers });
        });
    }

    /// Submits `submission` and leases for the parked requests in one write, which is the
    /// lease write in flight until it ends; declines when no request is parked or a lease
    /// write is already in flight (one at a time keeps the batches in order).
    fn submit(
        &mut self,
        myself: &ActorRef<SchedulerMsg>,
        submission: Submission,
        reply: tokio::sync::oneshot::Sender<Fused>,
    ) {
        if self.leasing || self.parked.is_empty() {
            let _ = reply.send(Fused::Declined(submission));
            return;
        }
        self.wake_parked();
        let Some((batch, requests)) = self.begin_write() else {
            let _ = reply.send(Fused::Declined(submission));
            return;
        };
        let (store, changes, myself) = (self.store.clone(), self.changes.clone(), myself.clone());
        tokio::spawn(async move {
            let stored = write(&store, &changes, move |s| {
                s.submit_and_lease(submission, requests, now())
            })
            .await;
            let (submitted, answers, refused) = match stored {
                Ok((submitted, answers)) => (Ok(submitted), answers, false),
                // Nothing was submitted or leased: the requests try again as if woken (the
                // jobs queued before may fit them).
                Err(e) => (Err(e), vec![Ok(None); batch.len()], true),
            };
            let _ = reply.send(Fused::Stored(submitted));
            let _ = myself.cast(SchedulerMsg::Leased {
                batch,
                answers: Ok(answers),
            });
            if refused {
                let _ = myself.cast(SchedulerMsg::Wake);
            }
        });
    }

    /// Every parked request tries again, now or, while a write is in flight, when it ends.
    fn wake(&mut self, myself: &ActorRef<SchedulerMsg>) {
        if self.leasing {
            self.woken = true;
        } else if !self.parked.is_empty() {
            self.wake_parked();
            self.lease_ready(myself);
        }
    }

    /// Arms the timer for the earliest alarm, unless it is armed for it already.
    fn arm(&mut self, myself: &ActorRef<SchedulerMsg>) {
        let Some(&first) = self.alarms.first() else {
            return;
        };
        if self.alarm.as_ref().is_some_and(|(at, _)| *at == first) {
            return;
        }
        if let Some((_, timer)) = self.alarm.take() {
            timer.abort();
        }
        let wait = first.saturating_since(now()) + Duration::from_millis(1);
        self.alarm = Some((first, myself.send_after(wait, || SchedulerMsg::Alarm)));
    }

    /// Moves the parked requests back to the ready ones, oldest first.
    fn wake_parked(&mut self) {
        let mut parked = std::mem::take(&mut self.parked);
        parked.append(&mut self.ready);
        self.ready = parked;
    }

    /// Parks a request that found no job, or answers `None` when it does not wait or its wait
    /// is over.
    fn park(&mut self, myself: &ActorRef<SchedulerMsg>, mut ask: Ask) {
        let left = match ask.until {
            Some(until) if !ask.gone() => until.saturating_duration_since(Instant::now()),
            _ => Duration::ZERO,
        };
        if left.is_zero() {
            let _ = ask.reply.send(Ok(None));
            return;
        }
        if !ask.timed {
            ask.timed = true;
            let id = ask.id;
            debug!(worker = %ask.worker, "no job fits; holding the request");
            myself.send_after(left, move || SchedulerMsg::WaitOver(id));
        }
        self.parked.push_back(ask);
    }

    /// Starts the actor that watches a new lease.
    async fn watch(
        &mut self,
        myself: &ActorRef<SchedulerMsg>,
        lease: &Lease,
        session: Option<Session>,
    ) {
        let job = lease.job.id;
        let args = job_actor::Args {
            job,
            deadline: lease.job.deadline(),
            store: self.store.clone(),
            scheduler: myself.clone(),
            session,
            metrics: self.metrics.clone(),
            actors: self.actors.clone(),
            changes: self.changes.clone(),
        };
        self.spawn_job_actor(myself, job, args).await;
    }

    /// Starts a job actor as a child, and lists it; the one of the job's previous attempt,
    /// if still stopping, is no longer found.
    async fn spawn_job_actor(
        &mut self,
        myself: &ActorRef<SchedulerMsg>,
        job: JobId,
        args: job_actor::Args,
    ) {
        match Actor::spawn_linked(None, JobActor, args, myself.get_cell()).await {
            Ok((actor, _)) => {
                self.watching.insert(actor.get_id(), job);
                self.actors.insert(job, actor);
            }
            // The job's lease is still watched by the store's deadlines: its expiry is found
            // when the job is next read (a restart of the plane adopts it again).
            Err(e) => warn!(%job, "cannot start the job's actor: {e}"),
        }
    }

    /// Settles the requests of a batch whose lease write ended: refusals are answered and
    /// requests that found nothing parked; returns the requests that got a lease, with it.
    fn settle(
        &mut self,
        myself: &ActorRef<SchedulerMsg>,
        batch: Vec<Ask>,
        answers: Result<Vec<Result<Option<Lease>, StoreError>>, StoreError>,
    ) -> Vec<(Ask, Lease)> {
        let mut answers = match answers {
            Ok(answers) => answers.into_iter(),
            Err(e) => {
                for ask in batch {
                    let _ = ask.reply.send(Err(e.clone()));
                }
                return Vec::new();
            }
        };
        let mut leased = Vec::with_capacity(batch.len());
        for ask in batch {
            match answers.next().unwrap_or(Ok(None)) {
                Ok(Some(lease)) => leased.push((ask, lease)),
                Ok(None) => self.park(myself, ask),
                Err(e) => {
                    let _ = ask.reply.send(Err(e));
                }
            }
        }
        leased
    }

    /// Hands out leases made: each job's actor starts watching its lease, then the worker
    /// hears of it.
    async fn hand_out(&mut self, myself: &ActorRef<SchedulerMsg>, leased: Vec<(Ask, Lease)>) {
        for (ask, lease) in leased {
            self.watch(myself, &lease, ask.session.clone()).await;
            let _ = ask.reply.send(Ok(Some(lease)));
        }
    }
}

impl Actor for Scheduler {
    type Msg = SchedulerMsg;
    type State = SchedulerState;
    type Arguments = Args;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        Args {
            actors,
            store,
            metrics,
            changes,
            parked,
        }: Args,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(SchedulerState {
            actors,
            watching: HashMap::new(),
            store,
            metrics,
            changes,
            alarms: BTreeSet::new(),
            alarm: None,
            ready: VecDeque::new(),
            parked: VecDeque::new(),
            parked_count: parked,
            leasing: false,
            woken: false,
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
                state.next_id += 1;
                state.ready.push_back(Ask {
                    id: state.next_id,
                    worker,
                    free_gpus,
                    until: (!wait.is_zero()).then(|| Instant::now() + wait),
                    timed: false,
                    session,
                    reply,
                });
                state.lease_ready(&myself);
            }
            SchedulerMsg::Wake => state.wake(&myself),
            SchedulerMsg::WakeAt(at) => {
                if at <= now() {
                    state.wake(&myself);
                } else {
                    state.alarms.insert(at);
                    state.arm(&myself);
                }
            }
            SchedulerMsg::Alarm => {
                // Every alarm due, and any a fraction early (the timer has millisecond
                // grain): waking a little early only costs a lease pass.
                let due = now().saturating_add(Duration::from_millis(1));
                state.alarms = state.alarms.split_off(&due);
                state.alarm = None;
                state.arm(&myself);
                state.wake(&myself);
            }
            SchedulerMsg::WaitOver(id) => {
                // A request in a batch in flight is answered when the batch is, its wait
                // being over by then.
                if let Some(i) = state.parked.iter().position(|p| p.id == id)
                    && let Some(p) = state.parked.remove(i)
                {
                    let _ = p.reply.send(Ok(None));
                }
            }
            SchedulerMsg::Leased { batch, answers } => {
                state.leasing = false;
                let leased = state.settle(&myself, batch, answers);
                if std::mem::take(&mut state.woken) {
                    state.wake_parked();
                }
                // The next write first: the requests that came meanwhile need not wait for
                // the job actors of this one to start.
                state.lease_ready(&myself);
                // Persisted: only now are the jobs the workers'.
                state.hand_out(&myself, leased).await;
            }
            SchedulerMsg::Adopt(job) => {
                if state.actors.get(job).is_some() {
                    return Ok(());
                }
                let args = job_actor::Args {
                    job,
                    deadline: None,
                    store: state.store.clone(),
                    scheduler: myself.clone(),
                    session: None,
                    metrics: state.metrics.clone(),
                    actors: state.actors.clone(),
                    changes: state.changes.clone(),
                };
                state.spawn_job_actor(&myself, job, args).await;
            }
            SchedulerMsg::Submit { submission, reply } => {
                state.submit(&myself, submission, reply);
            }
        }
        state.parked_count.set(state.parked.len());
        Ok(())
    }

    /// Job actors are permanent for as long as their job is leased: one that failed is
    /// started again, and finds the lease where the store says it is. One that stopped did so
    /// because its job is no longer leased.
    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match event {
            SupervisionEvent::ActorFailed(who, err) => {
                if let Some(job) = state.watching.remove(&who.get_id()) {
                    warn!(%job, "job actor failed: {err}");
                    state.actors.remove(job, who.get_id());
                    let _ = myself.cast(SchedulerMsg::Adopt(job));
                }
            }
            SupervisionEvent::ActorTerminated(who, ..) => {
                state.watching.remove(&who.get_id());
            }
            _ => {}
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::sync::mpsc::{Receiver, SyncSender, sync_channel};

    use nexa_runtime::{
        Call, Engine, GenerateParams, JobParams, JobSpec, JobType, MemStore, ReadTables,
        StoreConfig, WorkerInfo, WriteOp,
    };
    use ractor::concurrency::{OneshotReceiver, oneshot};

    use super::*;

    /// A `MemStore` whose next write, once armed, is made and then held, as if its commit
    /// were on its way to disk, until the test lets it go.
    struct Gated {
        inner: Arc<MemStore>,
        gate: Mutex<Option<(SyncSender<()>, Receiver<()>)>>,
    }

    impl Gated {
        fn new(inner: Arc<MemStore>) -> Self {
            Self {
                inner,
                gate: Mutex::new(None),
            }
        }

        /// Holds the next write once made: the first receiver hears when it is made, and the
        /// write returns when the sender sends or is dropped.
        fn arm(&self) -> (Receiver<()>, SyncSender<()>) {
            let (made, made_rx) = sync_channel(1);
            let (open, wait) = sync_channel(0);
            *self.gate.lock().unwrap() = Some((made, wait));
            (made_rx, open)
        }
    }

    impl Engine for Gated {
        fn config(&self) -> &StoreConfig {
            Engine::config(&*self.inner)
        }

        fn write<R: Send + 'static>(&self, call: Call, op: WriteOp<R>) -> Result<R, StoreError> {
            let gate = self.gate.lock().unwrap().take();
            let result = Engine::write(&*self.inner, call, op);
            if let Some((made, wait)) = gate {
                let _ = made.send(());
                let _ = wait.recv();
            }
            result
        }

        fn read<R>(
            &self,
            call: Call,
            op: &mut dyn FnMut(&dyn ReadTables) -> Result<R, StoreError>,
        ) -> Result<R, StoreError> {
            Engine::read(&*self.inner, call, op)
        }
    }

    type Answer = OneshotReceiver<Result<Option<Lease>, StoreError>>;

    /// Leases that outlast every test: no lease runs out and wakes the scheduler meanwhile.
    fn store() -> Arc<MemStore> {
        Arc::new(MemStore::new(StoreConfig {
            lease_ttl: Duration::from_secs(3600),
            ..StoreConfig::default()
        }))
    }

    /// The job actors of each test's scheduler, by the test's number.
    static ACTORS: std::sync::Mutex<Vec<(u64, Arc<JobActors>)>> = std::sync::Mutex::new(Vec::new());

    /// A scheduler for test number `plane`.
    async fn scheduler(plane: u64, store: Arc<dyn Store>) -> ActorRef<SchedulerMsg> {
        scheduler_counting(plane, store, Arc::default()).await
    }

    async fn scheduler_counting(
        plane: u64,
        store: Arc<dyn Store>,
        metrics: Arc<Metrics>,
    ) -> ActorRef<SchedulerMsg> {
        scheduler_telling(plane, store, metrics, Parked::default()).await
    }

    async fn scheduler_telling(
        plane: u64,
        store: Arc<dyn Store>,
        metrics: Arc<Metrics>,
        parked: Parked,
    ) -> ActorRef<SchedulerMsg> {
        let actors = Arc::new(JobActors::default());
        ACTORS.lock().unwrap().push((plane, actors.clone()));
        let args = Args {
            actors,
            store,
            metrics,
            changes: Default::default(),
            parked,
        };
        Actor::spawn(None, Scheduler, args)
            .await
            .expect("the scheduler starts")
            .0
    }

    /// The actor watching `job`'s lease, under the scheduler of test `plane`.
    fn job_actor(plane: u64, job: JobId) -> ActorRef<job_actor::JobMsg> {
        let actors = ACTORS.lock().unwrap();
        let (_, actors) = actors
            .iter()
            .find(|(p, _)| *p == plane)
            .expect("the test's scheduler");
        actors.get(job).expect("the leased job has its actor")
    }

    fn register(store: &MemStore, name: &str, types: &[JobType]) -> WorkerId {
        let id = WorkerId::new(name).unwrap();
        let info = WorkerInfo {
            id: id.clone(),
            cpus: 4,
            memory_mb: 8_192,
            gpus: vec![],
            labels: Default::default(),
            job_types: types.iter().copied().collect(),
        };
        store.register_worker(info, now()).expect("register");
        id
    }

    fn spec(job_type: JobType, priority: i32) -> JobSpec {
        let params = match job_type {
            JobType::Audit => JobParams::Audit(nexa_runtime::AuditParams::new("file:///data.csv")),
            _ => JobParams::Generate(GenerateParams::new("math", 10)),
        };
        let mut spec = JobSpec::new(params);
        spec.priority = priority;
        spec
    }

    fn ask(scheduler: &ActorRef<SchedulerMsg>, worker: &WorkerId, wait: Duration) -> Answer {
        let (reply, answer) = oneshot();
        scheduler
            .cast(SchedulerMsg::AskForWork {
                worker: worker.clone(),
                free_gpus: vec![],
                wait,
                session: None,
                reply: reply.into(),
            })
            .expect("the scheduler takes the request");
        answer
    }

    async fn lease(answer: Answer) -> Option<Lease> {
        tokio::time::timeout(Duration::from_secs(20), answer)
            .await
            .expect("an answer before the request's wait is over")
            .expect("the scheduler answers")
            .expect("the lease write succeeds")
    }

    async fn leased(answer: Answer) -> Option<JobId> {
        lease(answer).await.map(|lease| lease.job.id)
    }

    #[tokio::test]
    async fn workers_asking_at_once_get_distinct_jobs_in_queue_order() {
        let store = store();
        let workers: Vec<WorkerId> = (0..6)
            .map(|n| register(&store, &format!("w{n}"), &JobType::ALL))
            .collect();
        let jobs: Vec<JobId> = [0, 2, 1, 2]
            .into_iter()
            .map(|p| store.submit(spec(JobType::Generate, p), now()).unwrap().id)
            .collect();
        let scheduler = scheduler(1, store.clone()).await;
        let answers: Vec<Answer> = workers
            .iter()
            .map(|w| ask(&scheduler, w, Duration::ZERO))
            .collect();
        let mut got = Vec::new();
        for answer in answers {
            got.push(leased(answer).await);
        }
        // Priority first, then submission order; the requests in the order they came.
        let best = [jobs[1], jobs[3], jobs[2], jobs[0]];
        assert_eq!(
            got,
            [
                Some(best[0]),
                Some(best[1]),
                Some(best[2]),
                Some(best[3]),
                None,
                None
            ]
        );
        for (job, worker) in best.iter().zip(&workers) {
            let job = store.get(*job).unwrap();
            assert_eq!(job.state, nexa_runtime::JobState::Assigned);
            assert_eq!(job.attempts.len(), 1, "{} leased once", job.id);
            assert_eq!(&job.attempts[0].worker, worker);
        }
        scheduler.stop(None);
    }

    /// A job queued while a lease write is in flight reaches a request parked by that write.
    #[tokio::test]
    async fn a_wake_during_a_lease_write_is_not_lost() {
        let mem = store();
        let gated = Arc::new(Gated::new(mem.clone()));
        let auditor = register(&mem, "auditor", &[JobType::Audit]);
        let generator = register(&mem, "generator", &[JobType::Generate]);
        let audit = mem.submit(spec(JobType::Audit, 0), now()).unwrap().id;
        let scheduler = scheduler(2, gated.clone()).await;

        // The generator's request finds nothing that fits, in a write held in flight...
        let (made, open) = gated.arm();
        let generator_answer = ask(&scheduler, &generator, Duration::from_secs(60));
        tokio::task::spawn_blocking(move || made.recv())
            .await
            .unwrap()
            .expect("the lease write is made");
        // ... while a job for it is queued and the scheduler woken.
        let generate = mem.submit(spec(JobType::Generate, 0), now()).unwrap().id;
        scheduler.cast(SchedulerMsg::Wake).unwrap();
        let auditor_answer = ask(&scheduler, &auditor, Duration::ZERO);
        drop(open);

        assert_eq!(leased(generator_answer).await, Some(generate));
        assert_eq!(leased(auditor_answer).await, Some(audit));
        scheduler.stop(None);
    }

    #[tokio::test]
    async fn a_request_that_finds_nothing_waits_then_gets_none() {
        let store = store();
        let worker = register(&store, "idle", &JobType::ALL);
        let scheduler = scheduler(3, store.clone()).await;
        let answer = ask(&scheduler, &worker, Duration::from_millis(50));
        assert_eq!(leased(answer).await, None);

        // A job submitted while a request waits goes to it on the next wake.
        let waiting = ask(&scheduler, &worker, Duration::from_secs(60));
        let id = store.submit(spec(JobType::Generate, 0), now()).unwrap().id;
        scheduler.cast(SchedulerMsg::Wake).unwrap();
        assert_eq!(leased(waiting).await, Some(id));
        scheduler.stop(None);
    }

    /// A retry that waits out a backoff goes to a request parked meanwhile as soon as the
    /// backoff ends, not when the request's wait does.
    #[tokio::test]
    async fn a_retry_reaches_a_parked_request_when_its_backoff_ends() {
        let store = Arc::new(MemStore::new(StoreConfig {
            lease_ttl: Duration::from_secs(3600),
            retry: nexa_runtime::RetryPolicy {
                base: Duration::from_millis(300),
                max: Duration::from_millis(300),
                jitter: 0.0,
                ..nexa_runtime::RetryPolicy::default()
            },
            ..StoreConfig::default()
        }));
        let worker = register(&store, "retrier", &JobType::ALL);
        let id = store.submit(spec(JobType::Generate, 0), now()).unwrap().id;
        let scheduler = scheduler(4, store.clone()).await;
        let first = lease(ask(&scheduler, &worker, Duration::ZERO))
            .await
            .expect("the job is leased");

        // The attempt fails; the job goes back to the queue for a retry after its backoff.
        let error = nexa_runtime::JobError::new(nexa_runtime::FailureClass::StageError, "boom");
        let after = job_actor(4, id)
            .call(
                |reply| job_actor::JobMsg::Report {
                    epoch: first.epoch,
                    report: super::super::report::Report::Fail(error),
                    reply,
                },
                None,
            )
            .await
            .expect("the job's actor answers");
        assert!(matches!(
            after,
            ractor::rpc::CallResult::Success(Ok(super::super::report::Applied::Ended(
                nexa_runtime::JobState::Queued
            )))
        ));
        let until = store.get(id).unwrap().not_before.expect("a backoff");

        // A request waiting far longer than the backoff gets the retry once it is due.
        let waiting = ask(&scheduler, &worker, Duration::from_secs(60));
        let second = lease(waiting).await.expect("the retry is leased");
        assert_eq!(second.job.id, id);
        assert!(second.epoch > first.epoch);
        assert!(now() >= until, "leased before its backoff ended");
        assert_eq!(store.get(id).unwrap().attempts.len(), 2);
        scheduler.stop(None);
    }

    /// A `MemStore` that notes the method of each write.
    struct Noted {
        inner: MemStore,
        writes: Mutex<Vec<&'static str>>,
    }

    impl Engine for Noted {
        fn config(&self) -> &StoreConfig {
            Engine::config(&self.inner)
        }

        fn write<R: Send + 'static>(&self, call: Call, op: WriteOp<R>) -> Result<R, StoreError> {
            self.writes.lock().unwrap().push(call.method);
            Engine::write(&self.inner, call, op)
        }

        fn read<R>(
            &self,
            call: Call,
            op: &mut dyn FnMut(&dyn ReadTables) -> Result<R, StoreError>,
        ) -> Result<R, StoreError> {
            Engine::read(&self.inner, call, op)
        }
    }

    /// Waits until the scheduler says a request is parked.
    async fn until_parked(parked: &Parked) {
        for _ in 0..10_000 {
            if parked.any() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        panic!("the request was never parked");
    }

    async fn submit(scheduler: &ActorRef<SchedulerMsg>, submission: Submission) -> Fused {
        let (reply, answer) = tokio::sync::oneshot::channel();
        scheduler
            .cast(SchedulerMsg::Submit { submission, reply })
            .expect("the scheduler takes the submission");
        answer.await.expect("the scheduler answers")
    }

    /// A job submitted while a worker waits is leased to it in the write that stores it: one
    /// write, no lease write after it. With no worker waiting the scheduler declines, and the
    /// submitter stores the job itself.
    #[tokio::test]
    async fn a_job_submitted_while_a_worker_waits_is_leased_in_its_own_write() {
        let store = Arc::new(Noted {
            inner: MemStore::new(StoreConfig {
                lease_ttl: Duration::from_secs(3600),
                ..StoreConfig::default()
            }),
            writes: Mutex::default(),
        });
        let worker = register(&store.inner, "w", &JobType::ALL);
        let parked = Parked::default();
        let scheduler = scheduler_telling(20, store.clone(), Arc::default(), parked.clone()).await;

        let job = Submission::One(spec(JobType::Generate, 0));
        match submit(&scheduler, job.clone()).await {
            Fused::Declined(back) => assert_eq!(back, job, "the submission is handed back"),
            Fused::Stored(_) => panic!("no worker waits: nothing to lease with it"),
        }

        let answer = ask(&scheduler, &worker, Duration::from_secs(60));
        until_parked(&parked).await;
        store.writes.lock().unwrap().clear();
        let submitted = match submit(&scheduler, job).await {
            Fused::Stored(submitted) => submitted.expect("stored"),
            Fused::Declined(_) => panic!("a worker waits"),
        };
        assert_eq!(leased(answer).await, Some(submitted[0].id));
        assert_eq!(*store.writes.lock().unwrap(), ["submit_and_lease"]);
        assert!(!parked.any());
        scheduler.stop(None);
    }

    /// A refused submission leases nothing in its write; the waiting worker then gets a job
    /// queued before it, as on any wake.
    #[tokio::test]
    async fn after_a_refused_submission_a_waiting_worker_gets_a_job_queued_before() {
        let store = store();
        let worker = register(&store, "w", &JobType::ALL);
        let parked = Parked::default();
        let scheduler = scheduler_telling(21, store.clone(), Arc::default(), parked.clone()).await;
        let mut keyed = spec(JobType::Generate, 0);
        keyed.idempotency_key = Some("nightly".into());
        let first = store.submit(keyed.clone(), now()).unwrap().id;

        let answer = ask(&scheduler, &worker, Duration::from_secs(60));
        let mut leased_first = leased(answer).await;
        assert_eq!(leased_first.take(), Some(first));
        let answer = ask(&scheduler, &worker, Duration::from_secs(60));
        until_parked(&parked).await;
        // Queued behind the scheduler's back (no wake), then a submission the store refuses:
        // the same key for another spec.
        let queued = store.submit(spec(JobType::Generate, 1), now()).unwrap().id;
        keyed.priority = 7;
        match submit(&scheduler, Submission::One(keyed)).await {
            Fused::Stored(Err(StoreError::IdempotencyConflict { .. })) => {}
            other => panic!("the conflict is the submitter's answer: {other:?}"),
        }
        assert_eq!(leased(answer).await, Some(queued));
        scheduler.stop(None);
    }

    /// A lease that runs out without a heartbeat ends the attempt and is counted; the job goes
    /// straight back to a waiting worker (a lost worker says nothing about the job).
    #[tokio::test]
    async fn a_lease_that_runs_out_is_counted_and_requeued() {
        let store = Arc::new(MemStore::new(StoreConfig {
            lease_ttl: Duration::from_millis(200),
            ..StoreConfig::default()
        }));
        let silent = register(&store, "silent", &JobType::ALL);
        let other = register(&store, "other", &JobType::ALL);
        let id = store.submit(spec(JobType::Generate, 0), now()).unwrap().id;
        let metrics = Arc::new(Metrics::default());
        let scheduler = scheduler_counting(5, store.clone(), metrics.clone()).await;
        let first = lease(ask(&scheduler, &silent, Duration::ZERO))
            .await
            .expect("the job is leased");
        assert_eq!(metrics.leases_expired(), 0);

        let second = lease(ask(&scheduler, &other, Duration::from_secs(60)))
            .await
            .expect("the job is leased again once the first lease ran out");
        assert_eq!(second.job.id, id);
        assert!(second.epoch > first.epoch);
        assert_eq!(&second.job.attempts[1].worker, &other);
        assert_eq!(metrics.leases_expired(), 1);
        scheduler.stop(None);
    }
}
