//! [`DistillStage`]: a teacher's knowledge into a student.

use std::time::Duration;

use nexa_compute::{DistillConfig, Preset};
use nexa_runtime::{ArtifactKind, JobOutput, JobParams, JobType, MODEL_ARTIFACT};
use serde_json::json;

use super::train::{Start, Teacher, Training, metrics, prepare, run_training};
use super::{Device, Hyper, Reporter, architecture, fetch_model, file_name, keep, load_dataset};
use crate::stage::{BoxFuture, Stage, StageContext, StageError};

/// The preset a student starts from when `student_model` names neither a preset nor a
/// registered model.
pub const DEFAULT_STUDENT: Preset = Preset::StudentSmall;

/// Distils a `distill` job's `teacher_model` (a registered model `name[:N]`, or a model
/// file's URI) into `student_model`, on `dataset_uri`:
///
/// 1. the teacher labels every row with its logits: the teacher-labelled dataset (inputs,
///    labels and soft targets, `teacher_logit_<k>` columns) is the job's
///    `teacher_labelled` artifact;
/// 2. the student — a fresh model of the preset `student_model` names, a registered model of
///    that name to go on from, or else a fresh `student_small` — trains for `epochs` on
///    `alpha · CE + (1 − alpha) · T² · KL` at the job's `temperature` and `alpha`, with the
///    job's `hyperparameters` (those of a train job but `base`: the student is
///    `student_model`), checkpointed and resumable like a train job;
/// 3. it is scored on the test split, agreement with the teacher included, and registered
///    under `student_model` (the job's `model` artifact).
///
/// A teacher that is not registered fails at once as invalid input, naming the registered
/// models; so does a `prompt_template`, which only a `--handler` program for LLM
/// distillation can use.
#[derive(Clone, Copy, Debug)]
pub struct DistillStage {
    checkpoint_interval: Duration,
}

impl DistillStage {
    /// Keeping a checkpoint with the control plane at most every `checkpoint_interval`.
    pub fn new(checkpoint_interval: Duration) -> Self {
        Self {
            checkpoint_interval,
        }
    }
}

impl Default for DistillStage {
    fn default() -> Self {
        Self::new(super::CHECKPOINT_INTERVAL)
    }
}

impl Stage for DistillStage {
    fn run(&self, ctx: StageContext) -> BoxFuture<Result<JobOutput, StageError>> {
        let keep_every = self.checkpoint_interval;
        Box::pin(async move {
            let JobParams::Distill(params) = &ctx.spec.params else {
                return Err(ctx.wrong_job_type(JobType::Distill));
            };
            if params.prompt_template.is_some() {
                return Err(StageError::InvalidInput(
                    "params.prompt_template: the built-in distill stage labels tabular rows \
                     with the teacher's outputs and has no prompts; a prompt template is for \
                     a program given with --handler distill=COMMAND"
                        .into(),
                ));
            }
            let hyper = Hyper::parse(&params.hyperparameters, params.epochs)?;
            if hyper.base.is_some() {
                return Err(StageError::InvalidInput(
                    "params.hyperparameters.base: a distillation starts from student_model \
                     (a preset, a registered model or a new name); it takes no base"
                        .into(),
                ));
            }
            let (teacher, teacher_path) = fetch_model(&ctx.artifacts, &params.teacher_model)
                .await
                .map_err(|e| match e {
                    StageError::InvalidInput(why) => {
                        StageError::InvalidInput(format!("teacher_model: {why}"))
                    }
                    other => other,
                })?;
            let start = match params.student_model.parse::<Preset>() {
                Ok(p) => Start::Preset(p),
                Err(_) => match fetch_model(&ctx.artifacts, &params.student_model).await {
                    Ok((_, path)) => Start::File(path),
                    Err(StageError::InvalidInput(_)) => {
                        ctx.logs.line(format!(
                            "{} is neither a preset nor a registered model: the student \
                             starts as a fresh {DEFAULT_STUDENT}",
                            params.student_model
                        ));
                        Start::Preset(DEFAULT_STUDENT)
                    }
                    Err(e) => return Err(e),
                },
            };
            let data = load_dataset(&ctx.artifacts, &params.dataset_uri).await?;
            ctx.logs.line(format!(
                "distilling {} into {} on {} ({} rows), temperature {}, alpha {}",
                teacher.label(),
                params.student_model,
                params.dataset_uri,
                data.len(),
                params.temperature,
                params.alpha
            ));
            let dir = prepare(&ctx).await?;
            let name = file_name(&params.student_model, "safetensors");
            let model_file = ctx.output_dir.join(&name);
            let labelled_name = file_name(
                &format!("{}_teacher_labelled", params.student_model),
                "parquet",
            );
            let labelled = ctx.output_dir.join(&labelled_name);
            let training = Training {
                start,
                data,
                hyper,
                checkpoints: dir,
                reporter: Reporter::new(&ctx, (0.05, 0.95), 0),
                model_file: model_file.clone(),
                teacher: Some(Teacher {
                    path: teacher_path,
                    config: DistillConfig {
                        temperature: params.temperature as f32,
                        alpha: params.alpha as f32,
                    },
                    labelled: labelled.clone(),
                }),
                keep_every,
            };
            let trained = run_training(&ctx, training).await?;
            let labelled_uri = keep(&ctx, &labelled, &labelled_name, ArtifactKind::Dataset).await?;
            let uri = keep(&ctx, &model_file, &name, ArtifactKind::Model).await?;
            let mut output = JobOutput::default();
            metrics(&trained, &mut output);
            if let Some(agreement) = trained.test.as_ref().and_then(|r| match &r.metrics {
                nexa_compute::Metrics::Classification(c) => c.teacher_agreement,
                nexa_compute::Metrics::Regression(_) => None,
            }) {
                output.metrics.insert("teacher_agreement".into(), agreement);
            }
            output.artifacts.insert(MODEL_ARTIFACT.into(), uri.clone());
            output
                .artifacts
                .insert("teacher_labelled".into(), labelled_uri.clone());
            output.result_json = Some(
                json!({
                    "model": {
                        "name": params.student_model,
                        "uri": uri,
                        "architecture": architecture(&trained.config),
                    },
                    "teacher": {"reference": params.teacher_model, "resolved": teacher.label(),
                                "uri": teacher.uri},
                    "teacher_labelled": labelled_uri,
                    "distillation": {"temperature": params.temperature, "alpha": params.alpha},
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
            Ok(output)
        })
    }
}
