//! [`EvaluateStage`]: a model scored on a dataset.

use nexa_compute::{Backend, Dataset, EvaluationReport, Metrics, evaluate};
use nexa_runtime::{ArtifactKind, JobOutput, JobParams, JobType, MODEL_ARTIFACT, Split};
use serde_json::json;

use super::{
    Device, Work, compute_error, fetch_model, keep, load_dataset, load_model, make_output_dir,
    on_device,
};
use crate::stage::{BoxFuture, Stage, StageContext, StageError};

/// The metric names an evaluate job may ask for in `metrics`.
pub const EVALUATION_METRICS: [&str; 9] = [
    "accuracy",
    "macro_f1",
    "log_loss",
    "expected_calibration_error",
    "teacher_agreement",
    "mse",
    "mae",
    "r2",
    "teacher_mse",
];

/// Scores an `evaluate` job's `model_id` (a registered model `name[:N]`, or a model file's
/// URI) on `dataset_uri`: on the part `split` names of a dataset that records a split (a
/// generated dataset does; its test part by default), else on all of it. A named `suite` is
/// for a `--handler` program and is refused here. Classification: accuracy, macro-F1, per-class precision
/// and recall, the confusion matrix, log loss and expected calibration error; regression:
/// MSE, MAE and R². A distilled model is also compared with its teacher (agreement, or the
/// MSE between the two). `metrics` picks which become the job's metrics (default: all);
/// the full report is the job's result and its `report` artifact, and the job's `model`
/// artifact names the file it scored, which links the evaluation to the model's version in
/// the registry.
#[derive(Clone, Copy, Debug, Default)]
pub struct EvaluateStage;

struct Scoring {
    model: std::path::PathBuf,
    teacher: Option<std::path::PathBuf>,
    data: Dataset,
}

impl Work for Scoring {
    type Output = EvaluationReport;

    fn run<B: Backend>(self, backend: &B) -> Result<EvaluationReport, StageError> {
        let model = load_model(backend, &self.model, "model")?;
        let teacher = self
            .teacher
            .map(|t| load_model(backend, &t, "teacher model"))
            .transpose()?;
        evaluate(backend, &model, &self.data, teacher.as_ref())
            .map_err(|e| compute_error("evaluation", e))
    }
}

/// The report's numbers by name.
fn all_metrics(report: &EvaluationReport) -> Vec<(&'static str, f64)> {
    let mut out = vec![];
    match &report.metrics {
        Metrics::Classification(c) => {
            out.push(("accuracy", c.accuracy));
            out.push(("macro_f1", c.macro_f1));
            out.push(("log_loss", c.log_loss));
            out.push(("expected_calibration_error", c.expected_calibration_error));
            if let Some(a) = c.teacher_agreement {
                out.push(("teacher_agreement", a));
            }
        }
        Metrics::Regression(r) => {
            out.push(("mse", r.mse));
            out.push(("mae", r.mae));
            out.push(("r2", r.r2));
            if let Some(t) = r.teacher_mse {
                out.push(("teacher_mse", t));
            }
        }
    }
    out
}

impl Stage for EvaluateStage {
    fn run(&self, ctx: StageContext) -> BoxFuture<Result<JobOutput, StageError>> {
        Box::pin(async move {
            let JobParams::Evaluate(params) = &ctx.spec.params else {
                return Err(ctx.wrong_job_type(JobType::Evaluate));
            };
            if let Some(unknown) = params
                .metrics
                .iter()
                .find(|m| !EVALUATION_METRICS.contains(&m.as_str()))
            {
                return Err(StageError::InvalidInput(format!(
                    "params.metrics: unknown metric {unknown:?}; known: {}",
                    EVALUATION_METRICS.join(", ")
                )));
            }
            if let Some(suite) = &params.suite {
                return Err(StageError::InvalidInput(format!(
                    "params.suite: the built-in evaluate stage has no benchmark suites \
                     ({suite:?}); give it a dataset_uri (and a split), or run suites with \
                     --handler evaluate=COMMAND"
                )));
            }
            let Some(dataset_uri) = params.dataset_uri.as_deref() else {
                return Err(StageError::InvalidInput(
                    "params.dataset_uri: the built-in evaluate stage scores on a dataset".into(),
                ));
            };
            let (model, model_path) = fetch_model(&ctx.artifacts, &params.model_id).await?;
            let teacher = match model.version.as_ref().and_then(|v| v.teacher.clone()) {
                Some(t) => Some(fetch_model(&ctx.artifacts, &t).await?.1),
                None => None,
            };
            let data = load_dataset(&ctx.artifacts, dataset_uri).await?;
            let (data, part) = match (data.planned_split(), params.split) {
                (_, Some(Split::All)) => (data, "all of it".to_owned()),
                (Some(split), wanted) => {
                    let split = split.map_err(|e| compute_error("the dataset's split", e))?;
                    let wanted = wanted.unwrap_or(Split::Test);
                    let part = match wanted {
                        Split::Train => split.train,
                        Split::Validation => split.validation,
                        Split::Test | Split::All => split.test,
                    };
                    (part, format!("its {} split", wanted.as_str()))
                }
                (None, None) => (data, "all of it".to_owned()),
                (None, Some(wanted)) => {
                    return Err(StageError::InvalidInput(format!(
                        "params.split: {dataset_uri} records no train/validation/test split, \
                         so it has no {} part; leave split out (or say all) to score on all \
                         of it",
                        wanted.as_str()
                    )));
                }
            };
            let device = Device::for_job(&ctx.gpus);
            ctx.logs.line(format!(
                "evaluating {} on {} ({part}, {} rows) on {}",
                model.label(),
                dataset_uri,
                data.len(),
                device.describe(&ctx.gpus)
            ));
            ctx.progress.set(0.2);
            let report = on_device(
                device,
                Scoring {
                    model: model_path,
                    teacher,
                    data,
                },
            )
            .await?;
            ctx.progress.set(0.9);
            let mut output = JobOutput::default();
            for (name, value) in all_metrics(&report) {
                if params.metrics.is_empty() || params.metrics.iter().any(|m| m == name) {
                    output.metrics.insert(name.into(), value);
                }
            }
            ctx.logs.line(
                output
                    .metrics
                    .iter()
                    .map(|(k, v)| format!("{k} {v:.4}"))
                    .collect::<Vec<_>>()
                    .join(", "),
            );
            let document = json!({
                "model": {
                    "reference": params.model_id,
                    "name": model.version.as_ref().map(|v| &v.name),
                    "version": model.version.as_ref().map(|v| v.version),
                    "job": model.version.as_ref().map(|v| v.job.to_string()),
                    "uri": model.uri,
                },
                "dataset": {"uri": dataset_uri, "part": part},
                "report": report,
            });
            make_output_dir(&ctx).await?;
            let report_file = ctx.output_dir.join("evaluation.json");
            tokio::fs::write(&report_file, document.to_string())
                .await
                .map_err(|e| StageError::Failed(format!("cannot write the report: {e}")))?;
            let report_uri =
                keep(&ctx, &report_file, "evaluation.json", ArtifactKind::Report).await?;
            output
                .artifacts
                .insert(MODEL_ARTIFACT.into(), model.uri.clone());
            output.artifacts.insert("report".into(), report_uri);
            output.result_json = Some(document.to_string());
            Ok(output)
        })
    }
}
