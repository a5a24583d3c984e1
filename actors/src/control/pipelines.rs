//! Pipelines run: each step's job is submitted once the steps it needs have succeeded, gates
//! are checked on their steps' results, and a rerun reuses the steps whose work is unchanged.
//!
//! A run is kept as one JSON file (`<data>/pipelines/pl-N.json`, replaced whole on every
//! change), its steps' jobs in the job store. A step's job is submitted under the idempotency
//! key `pipeline:pl-N/STEP`, so a control plane that stops between submitting a job and
//! writing the run down finds the same job again when it resubmits. The driver looks at every
//! active run a few times a second and when woken.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Weak};
use std::time::Duration;

use nexa_runtime::pipeline::{
    DEPLOYED, GateSpec, PipelineSpec, Plan, StepKind, StepOutput, resolve,
};
use nexa_runtime::{JobId, JobParams, JobState, SpecError, StoreError, Timestamp};
use serde::{Deserialize, Serialize};
use sha2::Digest as _;
use tokio::sync::{Mutex, Notify};
use tracing::warn;

use super::jobs::Jobs;
use crate::clock::now;

/// How often the driver looks at active runs when nothing wakes it.
const TICK: Duration = Duration::from_millis(250);

/// The events a run keeps (the oldest go first).
const MAX_EVENTS: usize = 500;

/// A pipeline run's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum RunState {
    /// Steps are running or waiting for their inputs.
    Running,
    /// Cancelled; its running steps are stopping.
    Cancelling,
    /// Every step succeeded (every gate passed).
    Succeeded,
    /// A step failed or a gate did not pass; no step can go on.
    Failed,
    /// Cancelled, and every step has stopped.
    Cancelled,
}

impl RunState {
    /// Whether the run has ended.
    pub fn is_final(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed | Self::Cancelled)
    }

    /// As the API shows it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Cancelling => "cancelling",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }
}

/// A step's state in a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum StepState {
    /// Waiting for the steps it needs.
    Pending,
    /// Its job is submitted and not finished.
    Running,
    /// Its job succeeded (or an earlier run's was reused); a gate passed.
    Succeeded,
    /// Its job failed; a gate did not pass.
    Failed,
    /// A step it needs failed or was cancelled: it will not run.
    Skipped,
    /// The run was cancelled before it ended.
    Cancelled,
}

impl StepState {
    /// Whether the step has ended.
    pub fn is_final(self) -> bool {
        !matches!(self, Self::Pending | Self::Running)
    }

    /// As the API shows it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Skipped => "skipped",
            Self::Cancelled => "cancelled",
        }
    }
}

/// A gate's verdict.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct GateVerdict {
    /// Whether every check held.
    pub passed: bool,
    /// Each check that failed, said plainly.
    pub reasons: Vec<String>,
}

/// One step of a run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct StepRun {
    /// Where it is.
    pub state: StepState,
    /// Its job, once submitted (or the earlier run's job it reuses).
    pub job: Option<JobId>,
    /// The run whose job it reuses.
    pub reused_from: Option<u64>,
    /// What makes two runs of it the same work (a digest of its resolved spec).
    pub key: Option<String>,
    /// What it made, once succeeded.
    pub output: Option<StepOutput>,
    /// A gate's verdict.
    pub verdict: Option<GateVerdict>,
    /// Why it failed, was skipped or cancelled.
    pub reason: Option<String>,
}

impl StepRun {
    fn pending() -> Self {
        Self {
            state: StepState::Pending,
            job: None,
            reused_from: None,
            key: None,
            output: None,
            verdict: None,
            reason: None,
        }
    }
}

/// Something that happened to a run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct RunEvent {
    /// When.
    pub at: Timestamp,
    /// What.
    pub message: String,
}

/// A pipeline run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct PipelineRun {
    /// Its number: the run is `pl-N`.
    pub id: u64,
    /// What it runs.
    pub spec: PipelineSpec,
    /// The run it reruns, whose unchanged steps it reuses.
    pub rerun_of: Option<u64>,
    /// The step a rerun was forced to run again from (with every step after it).
    pub from: Option<String>,
    /// Where it is.
    pub state: RunState,
    /// The first step that failed.
    pub failed_step: Option<String>,
    /// Why it failed or was cancelled.
    pub error: Option<String>,
    /// When it was made.
    pub created_at: Timestamp,
    /// When it last changed.
    pub updated_at: Timestamp,
    /// When it ended.
    pub finished_at: Option<Timestamp>,
    /// The steps by name.
    pub steps: BTreeMap<String, StepRun>,
    /// What happened, oldest first.
    pub events: Vec<RunEvent>,
}

impl PipelineRun {
    /// The run's name in the API: `pl-N`.
    pub fn name(&self) -> String {
        format!("pl-{}", self.id)
    }

    /// Its plan (it was checked when the run was made).
    pub fn plan(&self) -> Result<Plan, SpecError> {
        self.spec.plan()
    }

    fn event(&mut self, message: impl Into<String>) {
        let at = now();
        self.updated_at = at;
        if self.events.len() >= MAX_EVENTS {
            self.events.remove(0);
        }
        self.events.push(RunEvent {
            at,
            message: message.into(),
        });
    }
}

/// Why a pipeline request was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PipelineError {
    /// The spec is wrong; the field names where.
    #[error("{}: {}", .0.field, .0.reason)]
    Invalid(SpecError),
    /// No such run.
    #[error("no pipeline run pl-{0}")]
    NotFound(u64),
    /// The run has ended.
    #[error("pipeline run pl-{0} has already ended ({1})")]
    Ended(u64, &'static str),
    /// The run has not ended, so it cannot be rerun yet.
    #[error("pipeline run pl-{0} is still {1}; cancel it or wait for it to end before a rerun")]
    NotEnded(u64, &'static str),
    /// The run could not be kept.
    #[error("cannot keep the pipeline run: {0}")]
    Io(String),
}

/// The pipeline runs of a control plane.
pub(crate) struct Pipelines {
    dir: PathBuf,
    runs: Mutex<BTreeMap<u64, PipelineRun>>,
    wake: Notify,
}

impl Pipelines {
    /// Loads the runs kept in `dir` and starts driving the active ones with `jobs`.
    pub(crate) async fn start(dir: PathBuf, jobs: Jobs) -> std::io::Result<Arc<Self>> {
        let load = dir.clone();
        let runs = tokio::task::spawn_blocking(move || load_runs(&load))
            .await
            .map_err(std::io::Error::other)??;
        let pipelines = Arc::new(Self {
            dir,
            runs: Mutex::new(runs),
            wake: Notify::new(),
        });
        tokio::spawn(drive(Arc::downgrade(&pipelines), jobs));
        Ok(pipelines)
    }

    /// Starts a run of `spec` (checked first), or of a rerun.
    pub(crate) async fn create(
        &self,
        spec: PipelineSpec,
        rerun_of: Option<u64>,
        from: Option<String>,
    ) -> Result<PipelineRun, PipelineError> {
        let plan = spec.plan().map_err(PipelineError::Invalid)?;
        if let Some(step) = &from
            && !plan.needs.contains_key(step)
        {
            return Err(PipelineError::Invalid(SpecError::new(
                "from",
                format!("no step {step:?} (the steps: {})", plan.order.join(", ")),
            )));
        }
        let mut runs = self.runs.lock().await;
        if let Some(old) = rerun_of {
            let Some(previous) = runs.get(&old) else {
                return Err(PipelineError::NotFound(old));
            };
            if !previous.state.is_final() {
                return Err(PipelineError::NotEnded(old, previous.state.as_str()));
            }
        }
        let id = runs.keys().next_back().map_or(1, |last| last + 1);
        let at = now();
        let mut run = PipelineRun {
            id,
            steps: plan
                .order
                .iter()
                .map(|s| (s.clone(), StepRun::pending()))
                .collect(),
            spec,
            rerun_of,
            from,
            state: RunState::Running,
            failed_step: None,
            error: None,
            created_at: at,
            updated_at: at,
            finished_at: None,
            events: Vec::new(),
        };
        run.event(match (rerun_of, &run.from) {
            (Some(old), Some(step)) => format!("rerun of pl-{old} from step {step}"),
            (Some(old), None) => format!("rerun of pl-{old}"),
            _ => "started".to_owned(),
        });
        self.keep(&run).await?;
        runs.insert(id, run.clone());
        drop(runs);
        self.wake.notify_one();
        Ok(run)
    }

    /// One run.
    pub(crate) async fn get(&self, id: u64) -> Result<PipelineRun, PipelineError> {
        self.runs
            .lock()
            .await
            .get(&id)
            .cloned()
            .ok_or(PipelineError::NotFound(id))
    }

    /// Every run, newest first.
    pub(crate) async fn list(&self) -> Vec<PipelineRun> {
        self.runs.lock().await.values().rev().cloned().collect()
    }

    /// Cancels a run: its running steps' jobs are cancelled, and the steps not started never
    /// will be.
    pub(crate) async fn cancel(&self, id: u64, reason: &str) -> Result<PipelineRun, PipelineError> {
        let mut runs = self.runs.lock().await;
        let run = runs.get_mut(&id).ok_or(PipelineError::NotFound(id))?;
        if run.state.is_final() {
            return Err(PipelineError::Ended(id, run.state.as_str()));
        }
        if run.state == RunState::Running {
            run.state = RunState::Cancelling;
            run.error = Some(reason.to_owned());
            run.event(format!("cancelling: {reason}"));
        }
        let run = run.clone();
        self.keep(&run).await?;
        drop(runs);
        self.wake.notify_one();
        Ok(run)
    }

    /// Writes `run` down.
    async fn keep(&self, run: &PipelineRun) -> Result<(), PipelineError> {
        let dir = self.dir.clone();
        let path = dir.join(format!("{}.json", run.name()));
        let text = serde_json::to_string(run).map_err(|e| PipelineError::Io(e.to_string()))?;
        tokio::task::spawn_blocking(move || {
            crate::private_dir(&dir)?;
            crate::replace_private(&path, text.as_bytes())
        })
        .await
        .map_err(|e| PipelineError::Io(e.to_string()))?
        .map_err(|e| PipelineError::Io(e.to_string()))
    }
}

fn load_runs(dir: &std::path::Path) -> std::io::Result<BTreeMap<u64, PipelineRun>> {
    let mut runs = BTreeMap::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(runs),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let path = entry?.path();
        if path.extension().is_none_or(|e| e != "json") {
            continue;
        }
        let text = std::fs::read_to_string(&path)?;
        match serde_json::from_str::<PipelineRun>(&text) {
            Ok(run) => {
                runs.insert(run.id, run);
            }
            Err(e) => {
                warn!(path = %path.display(), "a pipeline run that cannot be read is left alone: {e}")
            }
        }
    }
    Ok(runs)
}

/// Advances the active runs until the pipelines are dropped.
async fn drive(pipelines: Weak<Pipelines>, jobs: Jobs) {
    loop {
        let Some(p) = pipelines.upgrade() else {
            return;
        };
        {
            let mut runs = p.runs.lock().await;
            let active: Vec<u64> = runs
                .values()
                .filter(|r| !r.state.is_final())
                .map(|r| r.id)
                .collect();
            for id in active {
                let previous = runs
                    .get(&id)
                    .and_then(|r| r.rerun_of)
                    .and_then(|old| runs.get(&old))
                    .cloned();
                let Some(run) = runs.get_mut(&id) else {
                    continue;
                };
                let before = run.clone();
                if let Err(e) = advance(run, previous.as_ref(), &jobs).await {
                    warn!(run = %run.name(), "cannot advance the pipeline run yet: {e}");
                }
                if *run != before {
                    let run = run.clone();
                    if let Err(e) = p.keep(&run).await {
                        warn!(run = %run.name(), "{e}");
                    }
                }
            }
        }
        // Held while it waits, at most a tick: the driver ends at the first look after the
        // control plane has gone.
        let _ = tokio::time::timeout(TICK, p.wake.notified()).await;
    }
}

/// The idempotency key of `step`'s job in run `id`.
fn job_key(id: u64, step: &str) -> String {
    format!("pipeline:pl-{id}/{step}")
}

/// One look at `run`: steps whose inputs exist start, finished jobs end their steps, gates
/// are checked, and the run ends once no step can go on. A store that cannot be read now
/// leaves the rest for the next look.
async fn advance(
    run: &mut PipelineRun,
    previous: Option<&PipelineRun>,
    jobs: &Jobs,
) -> Result<(), StoreError> {
    let plan = match run.plan() {
        Ok(p) => p,
        Err(e) => {
            run.state = RunState::Failed;
            run.error = Some(format!("{}: {}", e.field, e.reason));
            run.finished_at = Some(now());
            return Ok(());
        }
    };
    let forced = run
        .from
        .as_deref()
        .map(|f| plan.downstream(f))
        .unwrap_or_default();
    let cancelling = run.state == RunState::Cancelling;
    for name in &plan.order {
        let Some(step) = run.steps.get(name).cloned() else {
            continue;
        };
        if step.state.is_final() {
            continue;
        }
        let Some(spec) = run.spec.steps.get(name).cloned() else {
            continue;
        };
        // A running step's job: has it ended?
        if let Some(job_id) = step.job.filter(|_| step.state == StepState::Running) {
            let job = jobs.get(job_id).await?;
            if cancelling && !job.state.is_terminal() && job.state != JobState::Cancelling {
                match jobs
                    .cancel(job_id, "its pipeline run was cancelled".to_owned())
                    .await
                {
                    Ok(_) | Err(StoreError::Transition(_)) => {}
                    Err(e) => return Err(e),
                }
            }
            // A deploy step has done its work once its replica is ready: its job serves on.
            let serving = matches!(job.spec.params, JobParams::Deploy(_))
                && job.state == JobState::Running
                && jobs.serving_now(job_id);
            match job.state {
                _ if serving => {
                    let output = step_output(&job, jobs).await?;
                    let s = run.steps.get_mut(name).expect("listed above");
                    s.state = StepState::Succeeded;
                    s.output = Some(output);
                    run.event(format!("step {name} serves ({job_id} is ready)"));
                }
                JobState::Succeeded => {
                    let output = step_output(&job, jobs).await?;
                    let s = run.steps.get_mut(name).expect("listed above");
                    s.state = StepState::Succeeded;
                    s.output = Some(output);
                    run.event(format!("step {name} succeeded ({job_id})"));
                }
                JobState::Failed => {
                    let why = job
                        .error
                        .as_ref()
                        .map_or_else(|| "its job failed".to_owned(), |e| e.message.clone());
                    fail(run, name, format!("{job_id} failed: {why}"));
                }
                JobState::Cancelled => {
                    let s = run.steps.get_mut(name).expect("listed above");
                    s.state = StepState::Cancelled;
                    s.reason = Some(format!("{job_id} was cancelled"));
                    if !cancelling && run.failed_step.is_none() {
                        run.failed_step = Some(name.clone());
                        run.error = Some(format!("step {name}: {job_id} was cancelled"));
                    }
                    run.event(format!("step {name} cancelled ({job_id})"));
                }
                _ => {}
            }
            continue;
        }
        // A pending step: the run is cancelled, a step it needs did not succeed, or it can
        // start.
        if cancelling {
            let s = run.steps.get_mut(name).expect("listed above");
            s.state = StepState::Cancelled;
            s.reason = Some("its pipeline run was cancelled".to_owned());
            continue;
        }
        let needs = &plan.needs[name];
        if let Some(blocked) = needs.iter().find(|n| {
            run.steps
                .get(*n)
                .is_some_and(|s| s.state.is_final() && s.state != StepState::Succeeded)
        }) {
            let s = run.steps.get_mut(name).expect("listed above");
            s.state = StepState::Skipped;
            s.reason = Some(format!("it needs step {blocked}, which did not succeed"));
            continue;
        }
        if !needs.iter().all(|n| {
            run.steps
                .get(n)
                .is_some_and(|s| s.state == StepState::Succeeded)
        }) {
            continue;
        }
        let outputs: BTreeMap<String, StepOutput> = needs
            .iter()
            .filter_map(|n| {
                let out = run.steps.get(n)?.output.clone()?;
                Some((n.clone(), out))
            })
            .collect();
        match spec.kind(name) {
            Ok(StepKind::Gate) => {
                let gate: GateSpec = spec.gate.clone().unwrap_or_default();
                let mut outputs = outputs;
                if let Some(d) = &gate.better_than_deployed
                    && let Some(on) = outputs.get(&gate.on)
                    && let Some(deployed) = deployed_evaluation(jobs, &d.endpoint, on).await?
                {
                    outputs.insert(DEPLOYED.to_owned(), deployed);
                }
                let reasons = gate.check(&outputs);
                let passed = reasons.is_empty();
                let s = run.steps.get_mut(name).expect("listed above");
                s.verdict = Some(GateVerdict {
                    passed,
                    reasons: reasons.clone(),
                });
                if passed {
                    s.state = StepState::Succeeded;
                    s.output = Some(StepOutput::default());
                    run.event(format!("gate {name} passed"));
                } else {
                    fail(
                        run,
                        name,
                        format!("gate did not pass: {}", reasons.join("; ")),
                    );
                }
            }
            Ok(StepKind::Job(_)) => {
                let made = resolve(&spec.params, &outputs)
                    .map_err(|e| SpecError::new(format!("steps.{name}.params"), e))
                    .and_then(|params| {
                        let job = spec.job_spec(name, params.clone())?;
                        Ok((job, digest(&spec.reuse_key(&params))))
                    });
                let (mut job_spec, key) = match made {
                    Ok(m) => m,
                    Err(e) => {
                        fail(run, name, format!("{}: {}", e.field, e.reason));
                        continue;
                    }
                };
                // The same work done by the run this one reruns: reuse it (a deployment only
                // while it still serves).
                let reuse = previous.filter(|_| !forced.contains(name)).and_then(|p| {
                    p.steps.get(name).filter(|s| {
                        s.state == StepState::Succeeded && s.key.as_deref() == Some(key.as_str())
                    })
                });
                let reuse = match reuse {
                    Some(old) if matches!(job_spec.params, JobParams::Deploy(_)) => {
                        let job = match old.job {
                            Some(j) => Some(jobs.get(j).await?),
                            None => None,
                        };
                        job.filter(|j| j.state == JobState::Running).map(|_| old)
                    }
                    other => other,
                };
                if let Some(old) = reuse {
                    let from = old.reused_from.or(previous.map(|p| p.id));
                    let s = run.steps.get_mut(name).expect("listed above");
                    s.state = StepState::Succeeded;
                    s.job = old.job;
                    s.output = old.output.clone();
                    s.reused_from = from;
                    s.key = Some(key);
                    let job = old.job.map_or_else(String::new, |j| format!(" ({j})"));
                    run.event(format!(
                        "step {name} reused from pl-{}{job}: the same work",
                        from.unwrap_or_default()
                    ));
                    continue;
                }
                job_spec.idempotency_key = Some(job_key(run.id, name));
                let submitted = match jobs.submit_all(job_spec).await {
                    Ok(s) => s,
                    Err(StoreError::InvalidSpec(e)) => {
                        fail(run, name, format!("{}: {}", e.field, e.reason));
                        continue;
                    }
                    Err(e) => return Err(e),
                };
                let job_id = submitted[0].id;
                let s = run.steps.get_mut(name).expect("listed above");
                s.state = StepState::Running;
                s.job = Some(job_id);
                s.key = Some(key);
                run.event(format!("step {name} submitted as {job_id}"));
            }
            Err(e) => fail(run, name, format!("{}: {}", e.field, e.reason)),
        }
    }
    if run.steps.values().all(|s| s.state.is_final()) {
        run.state = if cancelling {
            RunState::Cancelled
        } else if run.failed_step.is_some() {
            RunState::Failed
        } else {
            RunState::Succeeded
        };
        run.finished_at = Some(now());
        run.event(run.state.as_str());
    }
    Ok(())
}

/// `step` failed for `why`: the run fails at it, unless an earlier step failed first.
fn fail(run: &mut PipelineRun, step: &str, why: String) {
    if let Some(s) = run.steps.get_mut(step) {
        s.state = StepState::Failed;
        s.reason = Some(why.clone());
    }
    if run.failed_step.is_none() {
        run.failed_step = Some(step.to_owned());
        run.error = Some(format!("step {step}: {why}"));
    }
    run.event(format!("step {step} failed: {why}"));
}

/// A digest of a step's reuse key, as the run keeps it.
fn digest(key: &str) -> String {
    nexa_runtime::Digest(sha2::Sha256::digest(key.as_bytes()).into()).to_string()
}

/// What a succeeded job made, for the steps after it: its artifacts, metrics and result, and
/// the model version it registered.
async fn step_output(job: &nexa_runtime::Job, jobs: &Jobs) -> Result<StepOutput, StoreError> {
    let output = job.output.clone().unwrap_or_default();
    let model = match &job.spec.params {
        JobParams::Train(_) | JobParams::Distill(_) => {
            jobs.registry()
                .await?
                .models()
                .find_map(|(name, versions)| {
                    versions
                        .iter()
                        .find(|v| v.job == job.id)
                        .map(|v| format!("{name}:{}", v.version))
                })
        }
        _ => None,
    };
    let result = match &job.spec.params {
        // A deployment's result is where it serves.
        JobParams::Deploy(p) => Some(serde_json::json!({
            "endpoint": crate::endpoint_name(&p.model_id, &p.target),
        })),
        _ => output
            .result_json
            .as_deref()
            .and_then(|t| serde_json::from_str(t).ok()),
    };
    Ok(StepOutput {
        job_id: job.id.to_string(),
        artifacts: output.artifacts,
        metrics: output.metrics,
        model,
        result,
    })
}

/// The evaluation, on the data `ours` (an evaluate step's output) was evaluated on, of the
/// model version that `endpoint` serves now: `None` when no replica of it serves; without
/// metrics when that version has no such evaluation.
async fn deployed_evaluation(
    jobs: &Jobs,
    endpoint: &str,
    ours: &StepOutput,
) -> Result<Option<StepOutput>, StoreError> {
    let Ok(our_job) = ours.job_id.parse::<JobId>() else {
        return Ok(None);
    };
    let JobParams::Evaluate(evaluated) = jobs.get(our_job).await?.spec.params else {
        return Ok(None);
    };
    let serving = jobs.deployments().await?.into_iter().find(|j| {
        matches!(&j.spec.params, JobParams::Deploy(p)
            if crate::endpoint_name(&p.model_id, &p.target) == endpoint)
            && j.state == JobState::Running
            && jobs.serving_now(j.id)
    });
    let Some(deploy) = serving else {
        return Ok(None);
    };
    let JobParams::Deploy(p) = &deploy.spec.params else {
        return Ok(None);
    };
    let registry = jobs.registry().await?;
    // The version it serves: the one named, or the latest when it started serving.
    let version = if crate::artifacts::is_location(&p.model_id) {
        registry
            .models()
            .flat_map(|(_, versions)| versions)
            .find(|v| v.uri == p.model_id)
    } else {
        let reference: nexa_runtime::ModelRef = match p.model_id.parse() {
            Ok(r) => r,
            Err(never) => match never {},
        };
        match reference.version {
            Some(_) => registry.resolve(&reference).ok(),
            None => {
                let since = deploy
                    .live_attempt()
                    .map_or(deploy.submitted_at, |a| a.leased_at);
                registry
                    .versions(&reference.name)
                    .iter()
                    .rev()
                    .find(|v| v.created_at <= since)
            }
        }
    };
    let Some(version) = version else {
        return Ok(None);
    };
    let mut out = StepOutput {
        job_id: deploy.id.to_string(),
        model: Some(format!("{}:{}", version.name, version.version)),
        ..StepOutput::default()
    };
    for id in version.evaluations.iter().rev() {
        let job = jobs.get(*id).await?;
        if let JobParams::Evaluate(theirs) = &job.spec.params
            && theirs.dataset_uri == evaluated.dataset_uri
            && theirs.split == evaluated.split
        {
            out.metrics = job.output.map(|o| o.metrics).unwrap_or_default();
            break;
        }
    }
    Ok(Some(out))
}
