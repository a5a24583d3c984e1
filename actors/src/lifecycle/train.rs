//! [`TrainStage`], and the training run it shares with the distill stage.

use std::path::PathBuf;
use std::time::Duration;

use nexa_compute::{
    Backend, CheckpointDir, Dataset, DistillConfig, EvaluationReport, Head, Mlp, MlpConfig, Preset,
    Task, TrainOutcome, evaluate, label_with_teacher, train, write_dataset,
};
use nexa_runtime::{ArtifactKind, JobOutput, JobParams, JobType, MODEL_ARTIFACT};
use serde_json::json;
use tokio::sync::mpsc;

use super::{
    Device, Hyper, Reporter, Work, architecture, compute_error, fetch_model, file_name, keep,
    keep_checkpoints, load_dataset, load_model, make_output_dir, on_device, restore_checkpoint,
};
use crate::stage::{BoxFuture, Stage, StageContext, StageError};

/// The preset a `train` job starts from when it names no `base`.
pub const DEFAULT_BASE: Preset = Preset::Medium;

/// Checkpoints kept on the worker per job (each is also kept as an artifact).
const LOCAL_CHECKPOINTS: usize = 3;

/// Where a model's first weights come from.
#[derive(Clone, Debug)]
pub(crate) enum Start {
    /// A fresh model of this preset, sized to the dataset.
    Preset(Preset),
    /// The weights in this file (fine-tuning).
    File(PathBuf),
}

/// A distillation's teacher: its weights, the settings, and where the teacher-labelled
/// dataset goes.
pub(crate) struct Teacher {
    pub(crate) path: PathBuf,
    pub(crate) config: DistillConfig,
    pub(crate) labelled: PathBuf,
}

/// One training run on a backend: labels the data with the teacher first when distilling,
/// trains on the dataset's train part (all of it when it records no split) with its
/// validation part for the validation loss, checkpoints as it goes and resumes from the
/// latest complete checkpoint, saves the model and scores it on the test part.
pub(crate) struct Training {
    pub(crate) start: Start,
    pub(crate) data: Dataset,
    pub(crate) hyper: Hyper,
    pub(crate) checkpoints: CheckpointDir,
    pub(crate) reporter: Reporter,
    pub(crate) model_file: PathBuf,
    pub(crate) teacher: Option<Teacher>,
    /// The least time between two checkpoints kept with the control plane.
    pub(crate) keep_every: Duration,
}

/// What a training run made.
pub(crate) struct Trained {
    pub(crate) config: MlpConfig,
    pub(crate) outcome: TrainOutcome,
    pub(crate) rows: [usize; 3],
    pub(crate) test: Option<EvaluationReport>,
}

impl Work for Training {
    type Output = Trained;

    fn run<B: Backend>(self, backend: &B) -> Result<Trained, StageError> {
        let Training {
            start,
            mut data,
            hyper,
            checkpoints,
            mut reporter,
            model_file,
            teacher,
            keep_every: _,
        } = self;
        let mut config = hyper.config;
        let teacher = match teacher {
            Some(t) => {
                let model = load_model(backend, &t.path, "teacher model")?;
                data = label_with_teacher(backend, &model, &data)
                    .map_err(|e| compute_error("labelling with the teacher", e))?;
                write_dataset(&data, &t.labelled)
                    .map_err(|e| compute_error("writing the labelled dataset", e))?;
                config.distill = Some(t.config);
                Some(model)
            }
            None => None,
        };
        let (train_part, validation, test) = match data.planned_split() {
            Some(split) => {
                let s = split.map_err(|e| compute_error("the dataset's split", e))?;
                (s.train, Some(s.validation), Some(s.test))
            }
            None => (data, None, None),
        };
        let validation = validation.filter(|v| !v.is_empty());
        let schema = train_part.schema();
        let head = match schema.task {
            Task::Classification { .. } => Head::Classification,
            Task::Regression => Head::Regression,
        };
        let mut model = match start {
            Start::Preset(p) => Mlp::new(
                backend,
                p.config(schema.features.len(), schema.outputs(), head),
                config.seed,
            )
            .map_err(|e| compute_error("model", e))?,
            Start::File(path) => load_model(backend, &path, "base model")?,
        };
        let steps =
            train_part.len().div_ceil(config.batch_size.max(1)) as u64 * u64::from(config.epochs);
        config.checkpoint_every = hyper.checkpoint_every.unwrap_or((steps / 20).max(1));
        reporter.checkpoint_every = config.checkpoint_every;
        let outcome = train(
            backend,
            &mut model,
            &train_part,
            validation.as_ref(),
            &config,
            Some(&checkpoints),
            &mut |p| reporter.step(p),
        )
        .map_err(|e| compute_error("training", e))?;
        if outcome.stopped {
            return Err(StageError::Cancelled);
        }
        model
            .save(backend, &model_file)
            .map_err(|e| compute_error("saving the model", e))?;
        let test_report = match &test {
            Some(t) if !t.is_empty() => Some(
                evaluate(backend, &model, t, teacher.as_ref())
                    .map_err(|e| compute_error("scoring on the test split", e))?,
            ),
            _ => None,
        };
        Ok(Trained {
            config: model.config().clone(),
            outcome,
            rows: [
                train_part.len(),
                validation.as_ref().map_or(0, Dataset::len),
                test.as_ref().map_or(0, Dataset::len),
            ],
            test: test_report,
        })
    }
}

/// Runs `training` on the job's device while its checkpoints are kept as they are written.
pub(crate) async fn run_training(
    ctx: &StageContext,
    training: Training,
) -> Result<Trained, StageError> {
    let device = Device::for_job(&ctx.gpus);
    ctx.logs
        .line(format!("training on {}", device.describe(&ctx.gpus)));
    let (dir, keep_every) = (training.checkpoints.clone(), training.keep_every);
    let (tx, rx) = mpsc::unbounded_channel();
    let training = Training {
        reporter: training.reporter.with_checkpoints(tx),
        ..training
    };
    let (trained, ()) = tokio::join!(
        on_device(device, training),
        keep_checkpoints(ctx, &dir, rx, keep_every)
    );
    trained
}

/// Gets a training stage ready to run: the output folder made, and the job's checkpoint
/// folder with the latest checkpoint any earlier attempt kept brought in (the step it resumes
/// from is logged).
pub(crate) async fn prepare(ctx: &StageContext) -> Result<CheckpointDir, StageError> {
    make_output_dir(ctx).await?;
    let dir = CheckpointDir::new(ctx.checkpoint_dir.join("train"), LOCAL_CHECKPOINTS)
        .map_err(|e| StageError::Failed(format!("checkpoints: {e}")))?;
    restore_checkpoint(ctx, &dir).await?;
    let resume = dir
        .complete_steps()
        .map_err(|e| StageError::Failed(format!("checkpoints: {e}")))?
        .last()
        .copied();
    if let Some(step) = resume {
        ctx.logs
            .line(format!("resuming from the checkpoint at step {step}"));
    }
    Ok(dir)
}

/// The metrics of a training run, for the job.
pub(crate) fn metrics(trained: &Trained, output: &mut JobOutput) {
    let m = &mut output.metrics;
    m.insert("steps".into(), trained.outcome.steps as f64);
    m.insert("final_loss".into(), f64::from(trained.outcome.last_loss));
    if let Some(v) = trained.outcome.validation_loss {
        m.insert("validation_loss".into(), f64::from(v));
    }
    m.insert("samples_per_sec".into(), trained.outcome.samples_per_sec);
    m.insert("parameters".into(), trained.config.parameters() as f64);
    if let Some(step) = trained.outcome.resumed_from {
        m.insert("resumed_from_step".into(), step as f64);
    }
    if let Some(report) = &trained.test {
        m.insert("test_score".into(), report.headline());
    }
}

/// Trains a model for a `train` job and registers it under `model_id`.
///
/// - `dataset_uri`: a dataset (Parquet or JSON Lines with its schema); a generated dataset's
///   recorded split is used (train part to fit, validation part for the validation loss,
///   test part for the final score).
/// - `epochs`, and `hyperparameters`: `base` (a preset — `teacher_large`, `medium`,
///   `student_small` — or a registered model `name[:N]` to fine-tune; default `medium`),
///   `learning_rate`, `batch_size`, `weight_decay`, `warmup`, `min_lr_ratio`, `clip_norm`,
///   `seed`, `checkpoint_every`. Any other key is refused, naming the known ones.
///
/// Checkpoints are kept as artifacts as they are written; a retried attempt on any worker
/// resumes from the latest, and the run then ends with the same weights as one that was
/// never interrupted (on the CPU, bit for bit). The model is the job's `model` artifact.
#[derive(Clone, Copy, Debug)]
pub struct TrainStage {
    checkpoint_interval: Duration,
}

impl TrainStage {
    /// Keeping a checkpoint with the control plane at most every `checkpoint_interval`.
    pub fn new(checkpoint_interval: Duration) -> Self {
        Self {
            checkpoint_interval,
        }
    }
}

impl Default for TrainStage {
    fn default() -> Self {
        Self::new(super::CHECKPOINT_INTERVAL)
    }
}

impl Stage for TrainStage {
    fn run(&self, ctx: StageContext) -> BoxFuture<Result<JobOutput, StageError>> {
        let keep_every = self.checkpoint_interval;
        Box::pin(async move {
            let JobParams::Train(params) = &ctx.spec.params else {
                return Err(ctx.wrong_job_type(JobType::Train));
            };
            let hyper = Hyper::parse(&params.hyperparameters, params.epochs)?;
            let base = hyper
                .base
                .clone()
                .unwrap_or_else(|| DEFAULT_BASE.name().to_owned());
            let start = match base.parse::<Preset>() {
                Ok(p) => Start::Preset(p),
                Err(_) => Start::File(fetch_model(&ctx.artifacts, &base).await?.1),
            };
            let data = load_dataset(&ctx.artifacts, &params.dataset_uri).await?;
            ctx.logs.line(format!(
                "training {} from {base} on {} ({} rows) for {} epochs",
                params.model_id,
                params.dataset_uri,
                data.len(),
                params.epochs
            ));
            let dir = prepare(&ctx).await?;
            let name = file_name(&params.model_id, "safetensors");
            let model_file = ctx.output_dir.join(&name);
            let training = Training {
                start,
                data,
                hyper,
                checkpoints: dir,
                reporter: Reporter::new(&ctx, (0.02, 0.95), 0),
                model_file: model_file.clone(),
                teacher: None,
                keep_every,
            };
            let trained = run_training(&ctx, training).await?;
            let uri = keep(&ctx, &model_file, &name, ArtifactKind::Model).await?;
            let mut output = JobOutput::default();
            metrics(&trained, &mut output);
            output.artifacts.insert(MODEL_ARTIFACT.into(), uri.clone());
            output.result_json = Some(
                json!({
                    "model": {
                        "name": params.model_id,
                        "uri": uri,
                        "base": base,
                        "architecture": architecture(&trained.config),
                    },
                    "dataset": {
                        "uri": params.dataset_uri,
                        "rows": {"train": trained.rows[0], "validation": trained.rows[1],
                                 "test": trained.rows[2]},
                    },
                    "training": trained.outcome,
                    "test": trained.test,
                    "device": Device::for_job(&ctx.gpus).describe(&ctx.gpus),
                })
                .to_string(),
            );
            ctx.logs.line(format!(
                "trained {}: {} steps, final loss {:.4}{}",
                params.model_id,
                trained.outcome.steps,
                trained.outcome.last_loss,
                trained
                    .test
                    .as_ref()
                    .map(|r| format!(", test score {:.4}", r.headline()))
                    .unwrap_or_default()
            ));
            Ok(output)
        })
    }
}
