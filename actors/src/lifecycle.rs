//! The built-in stages of the ML lifecycle, on `nexa-compute`: [`GenerateStage`],
//! [`TrainStage`], [`DistillStage`] and [`EvaluateStage`] (with the [`AuditStage`] they make
//! [`builtin_stages`], what every worker runs unless a handler replaces a type).
//!
//! Each stage reads its inputs by URI through [`Artifacts`](crate::Artifacts), runs its
//! kernels on a blocking thread — on the job's first GPU through the CUDA backend when the
//! job was given one and the worker is built with the `cuda` feature, else on the CPU —
//! logs and reports progress while it runs, stops soon after a cancel, and keeps what it
//! made as artifacts. Training checkpoints are kept the same way as they are written, so a
//! later attempt on any worker resumes from the last complete one.
//!
//! What a job's parameters mean to each stage, and the defaults, are in each stage's doc.
//! A parameter a stage cannot use is refused as invalid input, naming it, rather than
//! ignored.

mod deploy;
mod distill;
mod evaluate;
mod generate;
mod train;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use nexa_compute::{Backend, ComputeError, Control, CpuBackend, Dataset, Mlp, read_dataset};
use nexa_runtime::{ArtifactKind, JobOutput, JobType};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

pub use self::deploy::{DeployStage, HealthProbes, MAX_ROWS, endpoint_name};
pub use self::distill::{DEFAULT_STUDENT, DistillStage};
pub use self::evaluate::{EVALUATION_METRICS, EvaluateStage};
pub use self::generate::{GENERATED_SPLIT, GenerateStage};
pub use self::train::{DEFAULT_BASE, TrainStage};
use crate::artifacts::{Artifacts, ModelSource};
use crate::audit_stage::AuditStage;
use crate::stage::{BoxFuture, LogSink, Progress, Stage, StageContext, StageError, StageRegistry};

/// The stages every worker runs out of the box: generate, audit, train, distill, evaluate,
/// with the default [`CHECKPOINT_INTERVAL`].
pub fn builtin_stages() -> StageRegistry {
    builtin_stages_with(CHECKPOINT_INTERVAL)
}

/// The built-in stages, training ones keeping a checkpoint with the control plane at most
/// every `checkpoint_interval` (zero: every checkpoint written).
pub fn builtin_stages_with(checkpoint_interval: Duration) -> StageRegistry {
    builtin_stages_serving(checkpoint_interval, None)
}

/// [`builtin_stages_with`], deploy replicas listening on `serve_host` (an address the control
/// plane reaches this worker at; 127.0.0.1 when `None`).
pub fn builtin_stages_serving(
    checkpoint_interval: Duration,
    serve_host: Option<String>,
) -> StageRegistry {
    let deploy = serve_host.map_or_else(DeployStage::default, DeployStage::on);
    let mut stages = StageRegistry::new();
    stages
        .register(JobType::Generate, Builtin(GenerateStage))
        .register(JobType::Audit, Builtin(AuditStage))
        .register(
            JobType::Train,
            Builtin(TrainStage::new(checkpoint_interval)),
        )
        .register(
            JobType::Distill,
            Builtin(DistillStage::new(checkpoint_interval)),
        )
        .register(JobType::Evaluate, Builtin(EvaluateStage))
        .register(JobType::Deploy, Builtin(deploy));
    stages
}

/// A built-in stage: refuses a job with `options`, which only a `--handler` program reads.
struct Builtin<S>(S);

impl<S: Stage> Stage for Builtin<S> {
    fn run(&self, ctx: StageContext) -> BoxFuture<Result<JobOutput, StageError>> {
        let options = ctx.spec.params.options();
        if !options.is_empty() {
            let names: Vec<&str> = options.names().collect();
            return Box::pin(std::future::ready(Err(StageError::InvalidInput(format!(
                "params.options ({}): the built-in {} stage takes no options; they are for a \
                 program given with --handler {}=COMMAND",
                names.join(", "),
                ctx.spec.job_type(),
                ctx.spec.job_type()
            )))));
        }
        self.0.run(ctx)
    }
}

/// Where a stage runs its kernels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Device {
    /// The CPU backend.
    Cpu,
    /// The CUDA backend on this device ordinal.
    Cuda(usize),
}

impl Device {
    /// The job's first GPU when it was given one and CUDA is built in; else the CPU.
    pub(crate) fn for_job(gpus: &[u32]) -> Self {
        match gpus.first() {
            Some(&gpu) if cfg!(feature = "cuda") => Device::Cuda(gpu as usize),
            _ => Device::Cpu,
        }
    }

    fn describe(self, gpus: &[u32]) -> String {
        match self {
            Device::Cpu if !gpus.is_empty() => {
                "the CPU (this worker is built without CUDA, so its GPUs go unused)".into()
            }
            Device::Cpu => "the CPU".into(),
            Device::Cuda(n) => format!("GPU {n} (CUDA)"),
        }
    }
}

/// Kernel work of a stage, run by [`on_device`] with whichever backend the device needs.
pub(crate) trait Work: Send + 'static {
    /// What it gives back.
    type Output: Send + 'static;
    /// Runs on `backend`.
    fn run<B: Backend>(self, backend: &B) -> Result<Self::Output, StageError>;
}

/// Runs `work` on a blocking thread with the backend of `device`. A panic in it is a stage
/// failure (the supervisor restarts the stage), never the worker's end.
pub(crate) async fn on_device<W: Work>(device: Device, work: W) -> Result<W::Output, StageError> {
    let ran = tokio::task::spawn_blocking(move || match device {
        Device::Cpu => work.run(&CpuBackend),
        #[cfg(feature = "cuda")]
        Device::Cuda(ordinal) => {
            let backend = nexa_compute::CudaBackend::new(ordinal)
                .map_err(|e| StageError::Failed(format!("cannot use GPU {ordinal}: {e}")))?;
            work.run(&backend)
        }
        #[cfg(not(feature = "cuda"))]
        Device::Cuda(_) => work.run(&CpuBackend),
    })
    .await;
    match ran {
        Ok(result) => result,
        Err(e) if e.is_panic() => Err(StageError::Failed(format!(
            "the computation panicked: {}",
            panic_message(e.into_panic())
        ))),
        Err(e) => Err(StageError::Failed(format!("the computation stopped: {e}"))),
    }
}

fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".into())
}

/// A compute error as the stage's: the input's fault (a bad dataset, a model that does not
/// fit it, divergence) is not retried; an I/O or device failure is.
pub(crate) fn compute_error(context: &str, e: ComputeError) -> StageError {
    if e.is_invalid_input() {
        StageError::InvalidInput(format!("{context}: {e}"))
    } else {
        StageError::Failed(format!("{context}: {e}"))
    }
}

/// Reads the dataset `uri` names.
pub(crate) async fn load_dataset(artifacts: &Artifacts, uri: &str) -> Result<Dataset, StageError> {
    let path = artifacts.fetch(uri).await?;
    let read = path.clone();
    tokio::task::spawn_blocking(move || read_dataset(&read, None))
        .await
        .map_err(|e| StageError::Failed(format!("reading {uri} stopped: {e}")))?
        .map_err(|e| compute_error(&format!("dataset {uri}"), e))
}

/// The model file `reference` names (a registered `name[:N]`, or a URI or path), fetched.
pub(crate) async fn fetch_model(
    artifacts: &Artifacts,
    reference: &str,
) -> Result<(ModelSource, std::path::PathBuf), StageError> {
    let source = artifacts.resolve_model(reference).await?;
    let path = artifacts.fetch(&source.uri).await?;
    Ok((source, path))
}

/// Loads a model file on `backend`.
pub(crate) fn load_model<B: Backend>(
    backend: &B,
    path: &std::path::Path,
    what: &str,
) -> Result<Mlp<B>, StageError> {
    Mlp::load(backend, path).map_err(|e| compute_error(what, e))
}

/// A file name made of `name`: characters outside `A-Z a-z 0-9 . _ -` become `_`.
pub(crate) fn file_name(name: &str, extension: &str) -> String {
    let stem: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .take(200)
        .collect();
    format!("{stem}.{extension}")
}

/// Makes the attempt's output folder.
pub(crate) async fn make_output_dir(ctx: &StageContext) -> Result<(), StageError> {
    tokio::fs::create_dir_all(&ctx.output_dir)
        .await
        .map_err(|e| StageError::Failed(format!("cannot make the output folder: {e}")))
}

/// Keeps `path` as an artifact and logs where it went.
pub(crate) async fn keep(
    ctx: &StageContext,
    path: &std::path::Path,
    name: &str,
    kind: ArtifactKind,
) -> Result<String, StageError> {
    let uri = ctx.artifacts.publish(path, name, kind).await?;
    ctx.logs.line(format!("kept {name} as {uri}"));
    Ok(uri)
}

/// The training progress of a stage: a log line at most every second and at each epoch's
/// end, the job's progress within `span` of the whole stage, a stop on cancel, and the steps
/// at which a checkpoint was written, for the uploader.
pub(crate) struct Reporter {
    logs: LogSink,
    progress: Progress,
    cancel: CancellationToken,
    span: (f64, f64),
    last_log: Option<Instant>,
    checkpoint_every: u64,
    checkpoints: Option<mpsc::UnboundedSender<u64>>,
}

impl Reporter {
    pub(crate) fn new(ctx: &StageContext, span: (f64, f64), checkpoint_every: u64) -> Self {
        Self {
            logs: ctx.logs.clone(),
            progress: ctx.progress.clone(),
            cancel: ctx.cancel.clone(),
            span,
            last_log: None,
            checkpoint_every,
            checkpoints: None,
        }
    }

    /// Sends the step of every checkpoint written to `tx`.
    pub(crate) fn with_checkpoints(mut self, tx: mpsc::UnboundedSender<u64>) -> Self {
        self.checkpoints = Some(tx);
        self
    }

    /// What the training loop calls after each step.
    pub(crate) fn step(&mut self, p: &nexa_compute::Progress) -> Control {
        let fraction = p.step as f64 / p.total_steps.max(1) as f64;
        self.progress
            .set(self.span.0 + (self.span.1 - self.span.0) * fraction);
        let epoch_done = p.validation_loss.is_some() || p.step == p.total_steps;
        let due = self
            .last_log
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(1));
        if due || epoch_done {
            self.last_log = Some(Instant::now());
            let validation = p
                .validation_loss
                .map(|v| format!(" validation loss {v:.4}"))
                .unwrap_or_default();
            self.logs.line(format!(
                "step {}/{} epoch {}/{} loss {:.4}{validation} lr {:.2e} {:.0} samples/s eta {}s",
                p.step,
                p.total_steps,
                p.epoch + 1,
                p.epochs,
                p.loss,
                p.lr,
                p.samples_per_sec,
                p.eta.as_secs()
            ));
        }
        if let Some(tx) = &self.checkpoints {
            let at_epoch_end = p
                .step
                .is_multiple_of((p.total_steps / u64::from(p.epochs)).max(1));
            let periodic =
                self.checkpoint_every > 0 && p.step.is_multiple_of(self.checkpoint_every);
            if at_epoch_end || periodic {
                let _ = tx.send(p.step);
            }
        }
        if self.cancel.is_cancelled() {
            Control::Stop
        } else {
            Control::Continue
        }
    }
}

/// The least time between two checkpoints a training stage keeps with the control plane, by
/// default: a resume loses at most this much more work, and a fast run does not store a
/// checkpoint a step.
pub const CHECKPOINT_INTERVAL: Duration = Duration::from_secs(5);

/// Keeps the checkpoints the training loop reports (their steps arrive on `steps`) as
/// artifacts of the job: the newest one at most every `interval`, and the last one always;
/// returns when `steps` closes. A failed upload is logged and training goes on:
/// the worst it costs is a resume from an older checkpoint.
pub(crate) async fn keep_checkpoints(
    ctx: &StageContext,
    dir: &nexa_compute::CheckpointDir,
    mut steps: mpsc::UnboundedReceiver<u64>,
    interval: Duration,
) {
    let mut last_kept: Option<tokio::time::Instant> = None;
    let mut open = true;
    while open {
        let Some(mut step) = steps.recv().await else {
            break;
        };
        if let Some(kept) = last_kept {
            // Wait out the interval, taking newer checkpoints as they come; the run's end
            // (the channel closing) ends the wait.
            let due = kept + interval;
            loop {
                tokio::select! {
                    () = tokio::time::sleep_until(due) => break,
                    next = steps.recv() => match next {
                        Some(later) => step = later,
                        None => {
                            open = false;
                            break;
                        }
                    },
                }
            }
        }
        while let Ok(later) = steps.try_recv() {
            step = later;
        }
        let state = dir.state_file(step);
        if !state.exists() {
            continue;
        }
        last_kept = Some(tokio::time::Instant::now());
        match ctx.artifacts.save_checkpoint(step, &state).await {
            Ok(()) => ctx.logs.line(format!("checkpoint at step {step} kept")),
            Err(e) => ctx
                .logs
                .line(format!("checkpoint at step {step} not kept: {e}")),
        }
    }
}

/// Brings the job's latest kept checkpoint (from an earlier attempt, on any worker) into
/// `dir`, unless `dir` has one at least as recent. Returns the step it brought, if any.
pub(crate) async fn restore_checkpoint(
    ctx: &StageContext,
    dir: &nexa_compute::CheckpointDir,
) -> Result<Option<u64>, StageError> {
    let Some((step, file)) = ctx.artifacts.latest_checkpoint().await? else {
        return Ok(None);
    };
    let local = dir
        .complete_steps()
        .map_err(|e| StageError::Failed(format!("checkpoints: {e}")))?;
    if local.last().is_some_and(|&s| s >= step) {
        return Ok(None);
    }
    let target = dir.clone();
    tokio::task::spawn_blocking(move || target.import(step, &file))
        .await
        .map_err(|e| StageError::Failed(format!("restoring the checkpoint stopped: {e}")))?
        .map_err(|e| StageError::Failed(format!("cannot restore checkpoint {step}: {e}")))?;
    ctx.logs.line(format!(
        "restored the checkpoint at step {step} kept by an earlier attempt"
    ));
    Ok(Some(step))
}

/// Hyperparameters of the training stages, from a job's `hyperparameters` map.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Hyper {
    pub(crate) base: Option<String>,
    pub(crate) config: nexa_compute::TrainConfig,
    /// Explicit checkpoint interval in steps; `None` picks about twenty a run.
    pub(crate) checkpoint_every: Option<u64>,
}

/// The hyperparameters the built-in train and distill stages understand, with what each means
/// (distill takes all but `base`).
pub const KNOWN_HYPERPARAMETERS: [(&str, &str); 9] = [
    (
        "base",
        "a preset (teacher_large, medium, student_small) or a registered model to fine-tune",
    ),
    ("learning_rate", "peak AdamW learning rate (default 1e-3)"),
    ("batch_size", "rows per step (default 64)"),
    (
        "weight_decay",
        "AdamW weight decay on weights (default 0.01)",
    ),
    (
        "warmup",
        "share of the steps spent warming up, 0 to 1 (default 0.05)",
    ),
    (
        "min_lr_ratio",
        "final learning rate as a share of the peak, 0 to 1 (default 0.05)",
    ),
    (
        "clip_norm",
        "clip the gradient norm to this; 0 turns clipping off (default 1)",
    ),
    (
        "seed",
        "seed of the initial weights and the shuffling (default 0)",
    ),
    (
        "checkpoint_every",
        "steps between checkpoints (default: about 20 a run)",
    ),
];

impl Hyper {
    /// Reads `values`; an unknown key or a value of the wrong kind is invalid input that
    /// names it and lists what is known.
    pub(crate) fn parse(
        values: &BTreeMap<String, nexa_runtime::ParamValue>,
        epochs: u32,
    ) -> Result<Self, StageError> {
        use nexa_runtime::ParamValue as V;
        let mut config = nexa_compute::TrainConfig {
            epochs,
            ..Default::default()
        };
        let mut base = None;
        let mut checkpoint_every = None;
        let bad = |key: &str, want: &str| {
            StageError::InvalidInput(format!("hyperparameter {key} must be {want}"))
        };
        let number = |key: &str, v: &V| match v {
            V::Float(x) => Ok(*x),
            V::Int(i) => Ok(*i as f64),
            _ => Err(bad(key, "a number")),
        };
        let count = |key: &str, v: &V| match v {
            V::Int(i) if *i >= 0 => Ok(*i as u64),
            _ => Err(bad(key, "a whole number, 0 or more")),
        };
        for (key, value) in values {
            match key.as_str() {
                "base" => match value {
                    V::Text(t) => base = Some(t.clone()),
                    _ => return Err(bad(key, "a preset or model name")),
                },
                "learning_rate" => config.optimizer.lr = number(key, value)? as f32,
                "batch_size" => config.batch_size = count(key, value)? as usize,
                "weight_decay" => config.optimizer.weight_decay = number(key, value)? as f32,
                "warmup" => config.warmup_fraction = number(key, value)? as f32,
                "min_lr_ratio" => config.min_lr_ratio = number(key, value)? as f32,
                "clip_norm" => {
                    let c = number(key, value)? as f32;
                    config.clip_norm = (c != 0.0).then_some(c);
                }
                "seed" => config.seed = count(key, value)?,
                "checkpoint_every" => checkpoint_every = Some(count(key, value)?),
                other => {
                    let known: Vec<&str> = KNOWN_HYPERPARAMETERS.iter().map(|(k, _)| *k).collect();
                    return Err(StageError::InvalidInput(format!(
                        "unknown hyperparameter {other:?}; the built-in stage knows {}",
                        known.join(", ")
                    )));
                }
            }
        }
        config
            .validate()
            .map_err(|e| compute_error("hyperparameters", e))?;
        Ok(Self {
            base,
            config,
            checkpoint_every,
        })
    }
}

/// A model's shape for results and the registry.
pub(crate) fn architecture(config: &nexa_compute::MlpConfig) -> Value {
    json!({
        "kind": "mlp",
        "inputs": config.inputs,
        "hidden": config.hidden,
        "outputs": config.outputs,
        "activation": format!("{:?}", config.activation).to_lowercase(),
        "head": format!("{:?}", config.head).to_lowercase(),
        "parameters": config.parameters(),
    })
}

#[cfg(test)]
mod tests {
    use nexa_runtime::ParamValue;

    use super::*;

    #[test]
    fn hyperparameters_are_read_and_unknown_ones_named() {
        let values = BTreeMap::from([
            ("learning_rate".to_owned(), ParamValue::Float(3e-3)),
            ("batch_size".to_owned(), ParamValue::Int(32)),
            ("base".to_owned(), ParamValue::Text("student_small".into())),
            ("clip_norm".to_owned(), ParamValue::Int(0)),
        ]);
        let h = Hyper::parse(&values, 4).unwrap();
        assert_eq!(h.config.epochs, 4);
        assert_eq!(h.config.batch_size, 32);
        assert_eq!(h.config.optimizer.lr, 3e-3);
        assert_eq!(h.config.clip_norm, None);
        assert_eq!(h.base.as_deref(), Some("student_small"));

        let bad = BTreeMap::from([("prompt_template".to_owned(), ParamValue::Text("x".into()))]);
        let e = Hyper::parse(&bad, 1).unwrap_err().to_string();
        assert!(
            e.contains("\"prompt_template\"") && e.contains("learning_rate"),
            "{e}"
        );
        let wrong = BTreeMap::from([("batch_size".to_owned(), ParamValue::Float(1.5))]);
        let e = Hyper::parse(&wrong, 1).unwrap_err().to_string();
        assert!(e.contains("batch_size must be a whole number"), "{e}");
        let zero = BTreeMap::from([("batch_size".to_owned(), ParamValue::Int(0))]);
        assert!(matches!(
            Hyper::parse(&zero, 1).unwrap_err(),
            StageError::InvalidInput(_)
        ));
    }

    #[test]
    fn file_names_keep_only_safe_characters() {
        assert_eq!(
            file_name("org/llama 3", "safetensors"),
            "org_llama_3.safetensors"
        );
    }
}
