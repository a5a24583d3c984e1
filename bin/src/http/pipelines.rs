//! Pipelines: `POST /api/pipelines` runs one (a DAG of job and gate steps), `GET` shows a
//! run with each step's state, job, outputs and gate verdict, and a run can be cancelled or
//! rerun (reusing the steps whose work is unchanged).

use std::collections::BTreeMap;

use actix_web::web::{self, Bytes, Json};
use actix_web::{HttpResponse, http::StatusCode};
use nexa_actors::{PipelineError, PipelineRun};
use nexa_runtime::pipeline::{PipelineSpec, StepKind};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use super::api::time;
use super::auth::{Reader, Writer};
use super::error::{ApiError, ErrorBody};
use super::responses::{
    Malformed, NoSuchRun, NotARunId, ReadOnly, RunNotKept, TooLarge, Unauthorized,
};
use super::{State, read_json};

/// A gate's verdict.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct VerdictBody {
    /// The step whose result it checks.
    pub(crate) on: String,
    pub(crate) passed: bool,
    /// Each check that failed.
    pub(crate) reasons: Vec<String>,
}

/// What a succeeded step made.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct OutputsBody {
    /// Artifacts' URIs by name.
    pub(crate) artifacts: BTreeMap<String, String>,
    pub(crate) metrics: BTreeMap<String, f64>,
    /// The model version it registered, `name:N`.
    pub(crate) model: Option<String>,
}

/// One step of a run.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct StepBody {
    pub(crate) name: String,
    /// `job` or `gate`.
    pub(crate) kind: String,
    /// A job step's type.
    pub(crate) job_type: Option<String>,
    /// The steps it needs (its references, its `needs`, a gate's steps).
    pub(crate) needs: Vec<String>,
    /// `pending`, `running`, `succeeded`, `failed`, `skipped` or `cancelled`.
    pub(crate) status: String,
    /// Its job: submitted for this run, or reused from an earlier one.
    pub(crate) job_id: Option<String>,
    /// The run whose job it reuses (its work was unchanged).
    pub(crate) reused_from: Option<String>,
    pub(crate) outputs: Option<OutputsBody>,
    pub(crate) gate: Option<VerdictBody>,
    /// Why it failed, was skipped or cancelled.
    pub(crate) reason: Option<String>,
}

/// Something that happened to a run.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct RunEventBody {
    pub(crate) at: String,
    pub(crate) message: String,
}

/// A pipeline run.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct PipelineBody {
    /// Its id, like `pl-3`.
    pub(crate) pipeline_id: String,
    pub(crate) name: String,
    /// `running`, `cancelling`, `succeeded`, `failed` or `cancelled`.
    pub(crate) status: String,
    /// The first step that failed (a gate that did not pass, a job that failed).
    pub(crate) failed_step: Option<String>,
    pub(crate) error: Option<String>,
    /// The run this one reruns.
    pub(crate) rerun_of: Option<String>,
    /// The step a rerun ran again from.
    pub(crate) from: Option<String>,
    pub(crate) created_at: String,
    pub(crate) updated_at: String,
    pub(crate) finished_at: Option<String>,
    /// The steps, each after those it needs.
    pub(crate) steps: Vec<StepBody>,
    /// The spec it runs.
    #[schema(value_type = Object)]
    pub(crate) spec: Value,
    /// What happened, oldest first (only on `GET /api/pipelines/{id}`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) events: Option<Vec<RunEventBody>>,
}

/// The runs.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct PipelinesBody {
    pub(crate) pipelines: Vec<PipelineBody>,
}

/// What a rerun changes.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RerunRequest {
    /// Run this step and every step after it again, whatever is unchanged.
    pub(crate) from: Option<String>,
    /// The pipeline as fixed; the run's own spec when absent.
    #[schema(value_type = Option<Object>)]
    pub(crate) spec: Option<PipelineSpec>,
}

fn body(run: &PipelineRun, with_events: bool) -> PipelineBody {
    let plan = run.plan().ok();
    let order: Vec<String> = plan
        .as_ref()
        .map_or_else(|| run.steps.keys().cloned().collect(), |p| p.order.clone());
    let steps = order
        .iter()
        .filter_map(|name| {
            let step = run.steps.get(name)?;
            let spec = run.spec.steps.get(name)?;
            let kind = spec.kind(name).ok();
            Some(StepBody {
                name: name.clone(),
                kind: if kind == Some(StepKind::Gate) {
                    "gate"
                } else {
                    "job"
                }
                .to_owned(),
                job_type: spec.job_type.clone(),
                needs: plan
                    .as_ref()
                    .map(|p| p.needs[name].iter().cloned().collect())
                    .unwrap_or_default(),
                status: step.state.as_str().to_owned(),
                job_id: step.job.map(|j| j.to_string()),
                reused_from: step.reused_from.map(|r| format!("pl-{r}")),
                outputs: step
                    .output
                    .as_ref()
                    .filter(|_| kind != Some(StepKind::Gate))
                    .map(|o| OutputsBody {
                        artifacts: o.artifacts.clone(),
                        metrics: o.metrics.clone(),
                        model: o.model.clone(),
                    }),
                gate: step.verdict.as_ref().map(|v| VerdictBody {
                    on: spec.gate.as_ref().map(|g| g.on.clone()).unwrap_or_default(),
                    passed: v.passed,
                    reasons: v.reasons.clone(),
                }),
                reason: step.reason.clone(),
            })
        })
        .collect();
    PipelineBody {
        pipeline_id: run.name(),
        name: run.spec.name.clone(),
        status: run.state.as_str().to_owned(),
        failed_step: run.failed_step.clone(),
        error: run.error.clone(),
        rerun_of: run.rerun_of.map(|r| format!("pl-{r}")),
        from: run.from.clone(),
        created_at: time(run.created_at),
        updated_at: time(run.updated_at),
        finished_at: run.finished_at.map(time),
        steps,
        spec: serde_json::to_value(&run.spec).unwrap_or(Value::Null),
        events: with_events.then(|| {
            run.events
                .iter()
                .map(|e| RunEventBody {
                    at: time(e.at),
                    message: e.message.clone(),
                })
                .collect()
        }),
    }
}

impl From<PipelineError> for ApiError {
    fn from(e: PipelineError) -> Self {
        match e {
            PipelineError::Invalid(e) => ApiError::invalid(e.field, e.reason),
            PipelineError::NotFound(_) => ApiError::not_found(e.to_string()),
            PipelineError::Ended(..) | PipelineError::NotEnded(..) => {
                ApiError::conflict(e.to_string())
            }
            // The plane's own troubles (its files, its store): try again later.
            _ => ApiError::unavailable(e.to_string()),
        }
    }
}

/// `pl-3` (or `3`) as 3, or a clear refusal.
fn run_id(text: &str) -> Result<u64, ApiError> {
    let number = text.strip_prefix("pl-").unwrap_or(text);
    number
        .parse()
        .ok()
        .filter(|_| number.bytes().all(|b| b.is_ascii_digit()))
        .ok_or_else(|| {
            ApiError::bad_request(format!("{text:?} is not a pipeline run id (like pl-3)"))
        })
}

/// Run a pipeline.
#[utoipa::path(
    post, path = "/api/pipelines", tag = "pipelines",
    request_body(content = Object, description = "`{\"name\": \"physics\", \"steps\": {\"generate\": {\"job_type\": \"generate\", \"params\": {...}}, \"train\": {\"job_type\": \"train\", \"params\": {\"dataset_uri\": \"${generate.artifacts.dataset}\", ...}}, \"good\": {\"gate\": {\"on\": \"evaluate\", \"min_metrics\": {\"accuracy\": 0.8}}}}}`"),
    responses(
        (status = 201, description = "The run, started", body = PipelineBody),
        Malformed, Unauthorized, ReadOnly, TooLarge, RunNotKept,
        (status = 422, description = "A fault in the pipeline, named by its path", body = ErrorBody),
    )
)]
pub(crate) async fn create(
    _: Writer,
    state: web::Data<State>,
    request: Bytes,
) -> Result<HttpResponse, ApiError> {
    let spec: PipelineSpec = read_json(&request)?;
    let run = state.plane.run_pipeline(spec).await?;
    Ok(HttpResponse::build(StatusCode::CREATED).json(body(&run, false)))
}

/// The pipeline runs, newest first.
#[utoipa::path(
    get, path = "/api/pipelines", tag = "pipelines",
    responses(
        (status = 200, description = "The runs", body = PipelinesBody),
        Unauthorized,
    )
)]
pub(crate) async fn list(_: Reader, state: web::Data<State>) -> Json<PipelinesBody> {
    let runs = state.plane.pipelines().await;
    Json(PipelinesBody {
        pipelines: runs.iter().map(|r| body(r, false)).collect(),
    })
}

/// One run: the DAG with each step's state, job, outputs and gate verdict.
#[utoipa::path(
    get, path = "/api/pipelines/{id}", tag = "pipelines",
    params(("id" = String, Path, description = "Run id, like pl-3")),
    responses(
        (status = 200, description = "The run", body = PipelineBody),
        NotARunId, Unauthorized, NoSuchRun,
    )
)]
pub(crate) async fn get(
    _: Reader,
    state: web::Data<State>,
    id: web::Path<String>,
) -> Result<Json<PipelineBody>, ApiError> {
    let run = state.plane.pipeline(run_id(&id)?).await?;
    Ok(Json(body(&run, true)))
}

/// Cancel a run: its running steps' jobs are cancelled, its waiting steps never start.
#[utoipa::path(
    post, path = "/api/pipelines/{id}/cancel", tag = "pipelines",
    params(("id" = String, Path, description = "Run id, like pl-3")),
    responses(
        (status = 200, description = "The run, cancelling", body = PipelineBody),
        NotARunId, Unauthorized, ReadOnly, NoSuchRun, RunNotKept,
        (status = 409, description = "The run has ended", body = ErrorBody),
    )
)]
pub(crate) async fn cancel(
    _: Writer,
    state: web::Data<State>,
    id: web::Path<String>,
) -> Result<Json<PipelineBody>, ApiError> {
    let run = state
        .plane
        .cancel_pipeline(run_id(&id)?, "cancelled through the API")
        .await?;
    Ok(Json(body(&run, false)))
}

/// Rerun an ended run: steps whose job type, resolved params and options are unchanged reuse
/// its jobs; `from` runs a step and every step after it again.
#[utoipa::path(
    post, path = "/api/pipelines/{id}/rerun", tag = "pipelines",
    params(("id" = String, Path, description = "Run id, like pl-3")),
    request_body(content = Option<RerunRequest>, description = "Optional `from` step and fixed `spec`"),
    responses(
        (status = 201, description = "The new run", body = PipelineBody),
        Malformed, Unauthorized, ReadOnly, NoSuchRun, TooLarge, RunNotKept,
        (status = 409, description = "The run has not ended", body = ErrorBody),
        (status = 422, description = "A fault in the fixed pipeline, or an unknown step", body = ErrorBody),
    )
)]
pub(crate) async fn rerun(
    _: Writer,
    state: web::Data<State>,
    id: web::Path<String>,
    request: Bytes,
) -> Result<HttpResponse, ApiError> {
    let id = run_id(&id)?;
    let request: RerunRequest = if request.iter().all(u8::is_ascii_whitespace) {
        RerunRequest::default()
    } else {
        read_json(&request)?
    };
    let run = state
        .plane
        .rerun_pipeline(id, request.spec, request.from)
        .await?;
    Ok(HttpResponse::build(StatusCode::CREATED).json(body(&run, false)))
}
