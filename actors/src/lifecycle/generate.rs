//! [`GenerateStage`]: a seeded synthetic dataset as a Parquet artifact.

use nexa_compute::{GenerateSpec, Problem, SplitPlan, generate, write_dataset};
use nexa_runtime::{ArtifactKind, JobOutput, JobParams, JobType, Task};
use serde_json::json;

use super::{compute_error, file_name, keep, make_output_dir};
use crate::stage::{BoxFuture, Stage, StageContext, StageError};

/// Shares of a generated dataset's rows in its train and validation parts (the test part
/// gets the rest).
pub const GENERATED_SPLIT: (f64, f64) = (0.8, 0.1);

/// Makes the dataset of a `generate` job: `domain` is `physics`, `circuits`, a problem
/// (`pendulum`) or `domain/problem` (`physics/pendulum`); `num_samples` rows; `seed` (the
/// job's number when absent, so a retry makes the same data); `task`: `classification` (the
/// target binned into `classes` equally populated intervals) or `regression`; `noise`, the
/// relative measurement noise. The Parquet file carries its schema and the
/// train/validation/test split (80/10/10, by the same seed) that the train, distill and
/// evaluate stages use; it is the job's `dataset` artifact.
#[derive(Clone, Copy, Debug, Default)]
pub struct GenerateStage;

impl Stage for GenerateStage {
    fn run(&self, ctx: StageContext) -> BoxFuture<Result<JobOutput, StageError>> {
        Box::pin(async move {
            let JobParams::Generate(params) = &ctx.spec.params else {
                return Err(ctx.wrong_job_type(JobType::Generate));
            };
            let problem: Problem = params
                .domain
                .parse()
                .map_err(|e| compute_error("params.domain", e))?;
            let seed = params.seed.unwrap_or(ctx.job.0);
            let rows = usize::try_from(params.num_samples)
                .map_err(|_| StageError::InvalidInput("params.num_samples is too large".into()))?;
            let mut spec = GenerateSpec::new(problem, rows).seed(seed);
            spec.noise = params.noise;
            let classes = match (params.task, params.classes) {
                (Task::Classification, classes) => {
                    let n = classes.unwrap_or(nexa_runtime::GenerateParams::DEFAULT_CLASSES);
                    spec = spec.classes(n as usize);
                    Some(n)
                }
                (Task::Regression, _) => None,
            };
            let task = match classes {
                Some(n) => format!("{n} classes"),
                None => "regression".to_owned(),
            };
            let plan = SplitPlan {
                train: GENERATED_SPLIT.0,
                validation: GENERATED_SPLIT.1,
                seed,
            };
            ctx.logs.line(format!(
                "generating {rows} rows of {problem} (seed {seed}, {task}, noise {})",
                spec.noise
            ));
            ctx.progress.set(0.05);
            make_output_dir(&ctx).await?;
            let name = file_name(
                &format!("{}_{}", problem.domain(), problem.name()),
                "parquet",
            );
            let path = ctx.output_dir.join(&name);
            let target = path.clone();
            let made = tokio::task::spawn_blocking(move || {
                let data = generate(&spec)?.with_split_plan(plan)?;
                let split = data.planned_split().expect("the plan was just set")?;
                write_dataset(&data, &target)?;
                Ok::<_, nexa_compute::ComputeError>((
                    data.schema().clone(),
                    [split.train.len(), split.validation.len(), split.test.len()],
                ))
            })
            .await
            .map_err(|e| StageError::Failed(format!("generation stopped: {e}")))?
            .map_err(|e| compute_error("generate", e))?;
            let (schema, sizes) = made;
            ctx.progress.set(0.7);
            if ctx.cancel.is_cancelled() {
                return Err(StageError::Cancelled);
            }
            let uri = keep(&ctx, &path, &name, ArtifactKind::Dataset).await?;
            ctx.logs.line(format!(
                "{rows} rows: {} train, {} validation, {} test",
                sizes[0], sizes[1], sizes[2]
            ));
            let mut output = JobOutput::default();
            output.metrics.insert("rows".into(), rows as f64);
            output
                .metrics
                .insert("features".into(), schema.features.len() as f64);
            if let Some(n) = classes {
                output.metrics.insert("classes".into(), f64::from(n));
            }
            output.artifacts.insert("dataset".into(), uri);
            output.result_json = Some(
                // The dataset's URI and rows are the result's artifacts and metrics: said
                // once, there.
                json!({
                    "format": "parquet",
                    "problem": problem.to_string(),
                    "seed": seed,
                    "noise": spec.noise,
                    "task": match classes {
                        Some(n) => json!({"kind": "classification", "classes": n}),
                        None => json!({"kind": "regression"}),
                    },
                    "schema": schema,
                    "split": {
                        "train": sizes[0], "validation": sizes[1], "test": sizes[2],
                        "seed": seed,
                    },
                })
                .to_string(),
            );
            Ok(output)
        })
    }
}
