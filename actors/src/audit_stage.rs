//! [`AuditStage`]: the built-in `audit` stage, running [`nexa_compute::audit`] on a blocking
//! thread with progress and cancellation, on a dataset named by path or by URI (an artifact
//! is fetched first).

use std::ops::ControlFlow;

use nexa_compute::{
    AuditPhase, AuditRequest, DatasetFormat, SplitOverlap, audit_file, read_dataset, report_metrics,
};
use nexa_runtime::{JobOutput, JobParams, JobType};

use crate::stage::{BoxFuture, Stage, StageContext, StageError};

/// Audits the dataset of an `audit` job: the report becomes the job's result, its headline
/// numbers the job's metrics. A missing or malformed file, or an integrity mismatch, fails the
/// job as invalid input (not retried).
#[derive(Clone, Copy, Debug, Default)]
pub struct AuditStage;

impl Stage for AuditStage {
    fn run(&self, ctx: StageContext) -> BoxFuture<Result<JobOutput, StageError>> {
        Box::pin(async move {
            let JobParams::Audit(params) = &ctx.spec.params else {
                return Err(ctx.wrong_job_type(JobType::Audit));
            };
            // A nexa:// artifact is fetched first; a path or file:// URI is read where it is.
            let (path, file) = ctx.artifacts.open(&params.dataset_uri).await?;
            let cached = nexa_runtime::parse_artifact_uri(&params.dataset_uri)
                .is_some()
                .then(|| path.clone());
            let mut request = AuditRequest::from(params);
            request.location = path.display().to_string();
            ctx.logs.line(format!("auditing {}", params.dataset_uri));
            let (cancel, progress) = (ctx.cancel.clone(), ctx.progress.clone());
            let audited = tokio::task::spawn_blocking(move || {
                audit_file(&request, &path, file, |p| {
                    let part = if p.total == 0 {
                        0.0
                    } else {
                        p.done as f64 / p.total as f64
                    };
                    let base = match p.phase {
                        AuditPhase::Hashing => 0.0,
                        AuditPhase::Reading => 0.5,
                    };
                    progress.set(base + part / 2.0);
                    if cancel.is_cancelled() {
                        ControlFlow::Break(())
                    } else {
                        ControlFlow::Continue(())
                    }
                })
            })
            .await
            .map_err(|e| StageError::Failed(format!("the audit stopped unexpectedly: {e}")))?;
            let mut report = match audited {
                Ok(report) => report,
                Err(e) if e.is_cancelled() => return Err(StageError::Cancelled),
                Err(e) if e.is_invalid_input() => {
                    return Err(StageError::InvalidInput(e.to_string()));
                }
                Err(e) => return Err(StageError::Failed(e.to_string())),
            };
            // A generated dataset records its split rather than naming it in a column: its
            // evaluation rows are compared with its train rows too. Only an artifact (in this
            // worker's cache) is opened again by name; a user's file is read once, above.
            if report.split_overlap.is_none()
                && report.format == DatasetFormat::Parquet
                && let Some(cached) = cached
            {
                report.split_overlap = recorded_split_overlap(cached).await;
            }
            if let Some(o) = &report.split_overlap {
                ctx.logs.line(format!(
                    "split: {} train, {} validation, {} test rows; {} validation and {} test                      rows are also train rows",
                    o.train_rows, o.validation_rows, o.test_rows, o.validation_in_train,
                    o.test_in_train
                ));
            }
            ctx.logs.line(format!(
                "{} rows, {} columns, {} duplicate rows, {} missing values, {} outliers; sha256 {}",
                report.rows,
                report.columns.len(),
                report.duplicate_rows,
                report.missing_values,
                report.outliers,
                report.sha256
            ));
            let result_json = serde_json::to_string(&report)
                .map_err(|e| StageError::Failed(format!("cannot encode the report: {e}")))?;
            Ok(JobOutput {
                metrics: report_metrics(&report),
                artifacts: Default::default(),
                result_json: Some(result_json),
            })
        })
    }
}

/// The overlap of the split a dataset file records (a generated dataset's), or `None` when it
/// records none (or is not a dataset this platform wrote).
async fn recorded_split_overlap(path: std::path::PathBuf) -> Option<SplitOverlap> {
    tokio::task::spawn_blocking(move || {
        let data = read_dataset(&path, None).ok()?;
        let split = data.planned_split()?.ok()?;
        Some(split.overlap())
    })
    .await
    .ok()
    .flatten()
}
