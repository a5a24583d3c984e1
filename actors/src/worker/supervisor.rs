//! The stage supervisor: one actor per job on a worker. It runs the job's stage, ships its
//! logs while it runs, restarts it after a failure or a panic within the restart budget, stops
//! it on cancel (aborting it when it ignores the cancel past the grace period), and reports
//! the outcome under the job's lease. It tells the agent as soon as the stage is gone, so the
//! job's slot and GPUs take the next job while the outcome is on its way.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use nexa_runtime::JobOutput;
use nexa_runtime::wire::{Assignment, ErrorCode, Message};
use nexa_transport::{FlushError, LogStream, RequestError, Uplink};
use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::{AgentMsg, RestartLimit};
use crate::artifacts::Artifacts;
use crate::stage::{LogSink, Progress, Serving, Stage, StageContext, StageError};

/// How long a stage runs before its start is reported on its own; one that ends sooner is
/// started by its outcome's report.
const START_REPORT_DELAY: Duration = Duration::from_millis(5);

/// What a supervisor is started with.
pub(crate) struct Args {
    pub(crate) client: Arc<dyn Uplink>,
    pub(crate) assignment: Assignment,
    pub(crate) stage: Arc<dyn Stage>,
    pub(crate) gpus: Vec<u32>,
    pub(crate) work_dir: std::path::PathBuf,
    pub(crate) data_roots: Vec<std::path::PathBuf>,
    pub(crate) restart: RestartLimit,
    pub(crate) grace: Duration,
    pub(crate) cancel: CancellationToken,
    pub(crate) lost: Arc<AtomicBool>,
    /// The worker hands the job back (it is leaving while the job, a service, still runs):
    /// the stage is stopped and the attempt reported lost to the platform, to be placed again.
    pub(crate) handed_back: Arc<AtomicBool>,
    pub(crate) progress: Progress,
    pub(crate) serving: Serving,
    pub(crate) agent: ActorRef<AgentMsg>,
}

pub(crate) struct Supervisor;

impl Actor for Supervisor {
    type Msg = ();
    type State = ();
    type Arguments = Args;

    async fn pre_start(&self, myself: ActorRef<()>, args: Args) -> Result<(), ActorProcessingErr> {
        tokio::spawn(async move {
            let a = &args.assignment;
            let (job, epoch, lease_token) = (a.job, a.epoch, a.lease_token);
            let (agent, client, lost) =
                (args.agent.clone(), args.client.clone(), args.lost.clone());
            // A panic in the supervision itself (not in the stage, which it catches) is seen
            // here: the attempt is reported failed as the platform's fault, and the job's
            // slot and GPUs are given back.
            if let Err(e) = tokio::spawn(supervise(args)).await {
                warn!(%job, "the stage supervisor failed: {e}");
                let _ = agent.cast(AgentMsg::StageDone(job));
                let error = nexa_runtime::JobError::new(
                    nexa_runtime::FailureClass::Platform,
                    format!("the worker's supervisor of this job failed: {e}"),
                );
                let report = Message::Fail {
                    job,
                    epoch,
                    lease_token,
                    error,
                };
                deliver(&*client, &report, &lost).await;
            }
            let _ = agent.cast(AgentMsg::Finished(job));
            myself.stop(None);
        });
        Ok(())
    }
}

/// Why the last run of the stage ended.
enum Ended {
    Done(Result<JobOutput, StageError>),
    Panicked(String),
}

async fn supervise(args: Args) {
    let a = &args.assignment;
    let (job, epoch, lease_token) = (a.job, a.epoch, a.lease_token);
    let client = &*args.client;
    // Report the start without holding up the stage (the outcome waits for it, so the job's
    // history stays in order); a stale answer means the lease is gone. A stage that ends
    // within `START_REPORT_DELAY` is not reported started on its own: its outcome starts it
    // on the control plane in the same write, one durable commit instead of two.
    let over = CancellationToken::new();
    let started = {
        let (client, lost, cancel) = (args.client.clone(), args.lost.clone(), args.cancel.clone());
        let over = over.clone();
        tokio::spawn(async move {
            tokio::select! {
                () = tokio::time::sleep(START_REPORT_DELAY) => {}
                () = over.cancelled() => return,
            }
            let started = Message::Started {
                job,
                epoch,
                lease_token,
            };
            match client.request(&started).await {
                Ok(Message::Error {
                    code: ErrorCode::Stale,
                    message,
                }) => {
                    info!(%job, "lease is gone: {message}");
                    lost.store(true, Ordering::SeqCst);
                    cancel.cancel();
                }
                Ok(_) => {}
                Err(e) => debug!(%job, "start not reported (the heartbeat keeps the lease): {e}"),
            }
        })
    };
    let job_dir = args.work_dir.join("jobs").join(job.to_string());
    let (sink, mut lines) = LogSink::channel();
    let mut logs = LogStream::new(job, epoch, lease_token);
    let mut restarts: VecDeque<Instant> = VecDeque::new();
    let outcome = loop {
        let ctx = StageContext {
            job,
            attempt: a.attempt,
            spec: a.spec.clone(),
            gpus: args.gpus.clone(),
            logs: sink.clone(),
            progress: args.progress.clone(),
            serving: args.serving.clone(),
            cancel: args.cancel.clone(),
            checkpoint_dir: job_dir.join("checkpoints"),
            output_dir: job_dir.join(format!("attempt-{}", a.attempt)),
            artifacts: Artifacts::new(
                Some(args.client.clone()),
                job,
                epoch,
                lease_token,
                args.work_dir.join("cache"),
            )
            .confined_to(args.data_roots.iter().cloned()),
        };
        let ended = run_once(&args, ctx, &mut lines, &mut logs).await;
        let message = match ended {
            Ended::Done(Ok(output)) => break Ok(output),
            Ended::Done(Err(StageError::Cancelled)) => break Err(StageError::Cancelled),
            // A failure of the stage's own (a program's non-zero exit) ends the attempt: the
            // job's retry policy decides on another. Only crashes are restarted here.
            Ended::Done(Err(e @ (StageError::InvalidInput(_) | StageError::Failed(_)))) => {
                break Err(e);
            }
            Ended::Done(Err(StageError::Crashed(m))) => m,
            Ended::Panicked(m) => format!("the stage panicked: {m}"),
        };
        if args.cancel.is_cancelled() {
            break Err(StageError::Cancelled);
        }
        let now = Instant::now();
        while restarts
            .front()
            .is_some_and(|t| now.duration_since(*t) > args.restart.window)
        {
            restarts.pop_front();
        }
        if restarts.len() as u32 >= args.restart.max_restarts {
            break Err(StageError::Crashed(format!(
                "{message} (restarted {} times within {:?}; restart budget used up)",
                restarts.len(),
                args.restart.window
            )));
        }
        let n = restarts.len() as u32 + 1;
        let delay = args.restart.backoff.saturating_mul(1 << (n - 1).min(16));
        sink.line(format!(
            "[nexa] stage failed: {message}; restarting in {delay:?} (restart {n} of {})",
            args.restart.max_restarts
        ));
        warn!(%job, restart = n, "stage failed: {message}");
        restarts.push_back(now);
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = args.cancel.cancelled() => break Err(StageError::Cancelled),
        }
    };
    let outcome = outcome.map_err(|e| match e {
        // What the restarts could not mend is the attempt's failure.
        StageError::Crashed(m) => StageError::Failed(m),
        e => e,
    });
    drop(sink);
    while let Ok(line) = lines.try_recv() {
        logs.push(line);
    }
    // The stage is gone: its slot and GPUs can take the next job while the outcome is
    // reported.
    let _ = args.agent.cast(AgentMsg::StageDone(job));
    over.cancel();
    let _ = started.await;
    if args.lost.load(Ordering::SeqCst) {
        info!(%job, "lease lost; not reporting");
        return;
    }
    if flush_all(client, &mut logs, &args.lost).await.is_err() {
        return;
    }
    let report = match outcome {
        Ok(output) => Message::Complete {
            job,
            epoch,
            lease_token,
            output,
        },
        Err(_) if args.handed_back.load(Ordering::SeqCst) => Message::Fail {
            job,
            epoch,
            lease_token,
            error: nexa_runtime::JobError::new(
                nexa_runtime::FailureClass::WorkerLost,
                "its worker left (drained); it is placed again",
            ),
        },
        Err(e) => Message::Fail {
            job,
            epoch,
            lease_token,
            error: e.to_job_error(),
        },
    };
    deliver(client, &report, &args.lost).await;
}

/// Runs the stage once, shipping its logs, until it returns, panics, or is aborted after
/// ignoring a cancel for longer than the grace period.
async fn run_once(
    args: &Args,
    ctx: StageContext,
    lines: &mut tokio::sync::mpsc::UnboundedReceiver<String>,
    logs: &mut LogStream,
) -> Ended {
    let mut run = tokio::spawn(args.stage.run(ctx));
    let mut flush = tokio::time::interval(Duration::from_millis(200));
    let mut abort_at: Option<Instant> = None;
    loop {
        tokio::select! {
            ended = &mut run => {
                return match ended {
                    Ok(result) => Ended::Done(result),
                    Err(e) if e.is_panic() => {
                        let payload = e.into_panic();
                        let what = payload
                            .downcast_ref::<String>()
                            .cloned()
                            .or_else(|| payload.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                            .unwrap_or_else(|| "unknown panic".to_owned());
                        Ended::Panicked(what)
                    }
                    Err(_) => Ended::Done(Err(StageError::Cancelled)),
                };
            }
            Some(line) = lines.recv() => logs.push(line),
            _ = flush.tick() => {
                if logs.pending() > 0
                    && let Err(e) = logs.flush(&*args.client).await {
                        debug!(job = %args.assignment.job, "log flush failed, will retry: {e}");
                    }
            }
            () = args.cancel.cancelled(), if abort_at.is_none() => {
                abort_at = Some(Instant::now() + args.grace);
            }
            () = sleep_until(abort_at) => {
                warn!(job = %args.assignment.job, "stage ignored the cancel for {:?}; aborting it", args.grace);
                run.abort();
                // Only once the task has ended is the stage gone (and its GPUs free).
                let _ = (&mut run).await;
                return Ended::Done(Err(StageError::Cancelled));
            }
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Whether a failed request is worth trying again.
fn transient(e: &RequestError) -> bool {
    matches!(
        e,
        RequestError::Disconnected(_) | RequestError::Timeout(_) | RequestError::Stream(_)
    )
}

/// Ships every remaining line, riding out reconnects; `Err` when the lease is gone.
async fn flush_all(client: &dyn Uplink, logs: &mut LogStream, lost: &AtomicBool) -> Result<(), ()> {
    let mut wait = Duration::from_millis(100);
    loop {
        match logs.flush(client).await {
            Ok(()) => return Ok(()),
            Err(FlushError::Request(e)) if transient(&e) && !lost.load(Ordering::SeqCst) => {
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(2));
            }
            Err(e) => {
                info!("logs not delivered: {e}");
                return Err(());
            }
        }
    }
}

/// Sends the outcome, riding out reconnects, until the control plane answers.
async fn deliver(client: &dyn Uplink, report: &Message, lost: &AtomicBool) {
    let mut wait = Duration::from_millis(100);
    loop {
        match client.request(report).await {
            Ok(Message::Ack) => return,
            Ok(Message::Error { code, message }) => {
                info!(?code, "outcome refused: {message}");
                return;
            }
            Ok(other) => {
                warn!("unexpected answer to a report: {}", other.name());
                return;
            }
            Err(e) if transient(&e) && !lost.load(Ordering::SeqCst) => {
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(2));
            }
            Err(e) => {
                warn!("outcome not delivered: {e}");
                return;
            }
        }
    }
}
