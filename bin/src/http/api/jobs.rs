//! A job as the API shows it — with its attempts, events, result and error — and the bodies
//! for listing, cancelling and reading the history of jobs.

use std::collections::BTreeMap;

use nexa_runtime::{Attempt, AttemptOutcome, Event, FailureClass, Job, JobError, JobOutput};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};

use super::names::{FailureClassName, failure_class_list};
use super::submit::ResourcesBody;
use super::values::time;
use crate::http::error::ApiError;

/// A job.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct JobBody {
    /// Its id, like `job-7`.
    pub(crate) job_id: String,
    pub(crate) job_type: String,
    /// `waiting`, `queued`, `assigned`, `running`, `cancelling`, `succeeded`, `failed` or
    /// `cancelled`.
    pub(crate) status: String,
    #[schema(value_type = Object)]
    pub(crate) params: Value,
    pub(crate) resources: ResourcesBody,
    pub(crate) priority: i32,
    pub(crate) max_attempts: u32,
    pub(crate) timeout_seconds: u64,
    pub(crate) depends_on: Vec<String>,
    pub(crate) idempotency_key: Option<String>,
    pub(crate) created_at: String,
    pub(crate) updated_at: String,
    /// When the latest attempt's stage started.
    pub(crate) started_at: Option<String>,
    /// When the job reached its final state.
    pub(crate) finished_at: Option<String>,
    /// From 0.0 to 1.0, as the stage reports it.
    pub(crate) progress: Option<f64>,
    /// The worker of the latest attempt.
    pub(crate) worker_id: Option<String>,
    /// The number of the latest attempt (0 before the first).
    pub(crate) attempt: u32,
    /// Why a waiting or queued job has not started.
    pub(crate) pending_reason: Option<String>,
    /// A retry waits until then.
    pub(crate) not_before: Option<String>,
    pub(crate) result: Option<ResultBody>,
    pub(crate) error: Option<ErrorInfo>,
    pub(crate) attempts: Vec<AttemptBody>,
    /// Every state change (only on `GET /api/jobs/{id}`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) events: Option<Vec<EventBody>>,
    /// The pipeline run and step that made it, for a pipeline step's job.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) pipeline: Option<PipelineLinkBody>,
    /// A deploy of `replicas: N` is one deploy job per replica: all N of them, this one first
    /// (only on the answer to `POST /api/jobs`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) replica_job_ids: Option<Vec<String>>,
}

/// The pipeline run and step that made a job or a model version.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct PipelineLinkBody {
    /// The run, like `pl-3`.
    pub(crate) pipeline_id: String,
    /// The step.
    pub(crate) step: String,
}

/// What a job produced.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ResultBody {
    #[serde(default)]
    pub(crate) metrics: BTreeMap<String, f64>,
    /// Named outputs: paths or URIs.
    #[serde(default)]
    pub(crate) artifacts: BTreeMap<String, String>,
    /// The stage's whole result document.
    #[serde(default)]
    #[schema(value_type = Object, nullable = true)]
    pub(crate) output: Value,
}

/// Why a job or attempt failed, and whose fault it was.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ErrorInfo {
    /// `invalid_input`, `stage_error`, `worker_lost`, `timeout`, `cancelled` or `platform`.
    #[serde(default = "stage_error")]
    #[schema(value_type = FailureClassName)]
    pub(crate) class: String,
    pub(crate) message: String,
}

fn stage_error() -> String {
    FailureClass::StageError.as_str().to_owned()
}

/// One try at running a job.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct AttemptBody {
    pub(crate) number: u32,
    pub(crate) worker_id: String,
    /// The lease's fencing token.
    pub(crate) epoch: u64,
    pub(crate) leased_at: String,
    pub(crate) started_at: Option<String>,
    pub(crate) lease_expires_at: String,
    pub(crate) deadline: String,
    pub(crate) ended_at: Option<String>,
    pub(crate) outcome: Option<OutcomeBody>,
}

/// How an attempt ended.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct OutcomeBody {
    /// `succeeded` or `failed`.
    pub(crate) status: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) error: Option<ErrorInfo>,
}

/// A state change.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct EventBody {
    pub(crate) at: String,
    pub(crate) from: Option<String>,
    pub(crate) to: String,
    pub(crate) message: String,
}

impl From<&JobError> for ErrorInfo {
    fn from(e: &JobError) -> Self {
        Self {
            class: e.class.as_str().to_owned(),
            message: e.message.clone(),
        }
    }
}

impl ErrorInfo {
    pub(crate) fn into_job_error(self) -> Result<JobError, ApiError> {
        let class = FailureClass::ALL
            .into_iter()
            .find(|c| c.as_str() == self.class)
            .ok_or_else(|| {
                ApiError::invalid(
                    "error.class",
                    format!(
                        "{:?} is not a failure class (one of: {})",
                        self.class,
                        failure_class_list()
                    ),
                )
            })?;
        Ok(JobError::new(class, self.message))
    }
}

impl ResultBody {
    pub(crate) fn into_output(self) -> Result<JobOutput, ApiError> {
        if let Some((k, _)) = self.metrics.iter().find(|(_, v)| !v.is_finite()) {
            return Err(ApiError::invalid(
                format!("result.metrics.{k}"),
                "must be a finite number",
            ));
        }
        Ok(JobOutput {
            metrics: self.metrics,
            artifacts: self.artifacts,
            result_json: (!self.output.is_null()).then(|| self.output.to_string()),
        })
    }
}

fn output_body(o: &JobOutput) -> ResultBody {
    ResultBody {
        metrics: o.metrics.clone(),
        artifacts: o.artifacts.clone(),
        output: o
            .result_json
            .as_deref()
            .and_then(|j| serde_json::from_str(j).ok())
            .unwrap_or(Value::Null),
    }
}

fn attempt_body(a: &Attempt) -> AttemptBody {
    AttemptBody {
        number: a.number,
        worker_id: a.worker.as_str().to_owned(),
        epoch: a.epoch.0,
        leased_at: time(a.leased_at),
        started_at: a.started_at.map(time),
        lease_expires_at: time(a.lease_expires_at),
        deadline: time(a.deadline),
        ended_at: a.ended_at.map(time),
        outcome: a.outcome.as_ref().map(|o| match o {
            AttemptOutcome::Succeeded => OutcomeBody {
                status: "succeeded".into(),
                error: None,
            },
            AttemptOutcome::Failed(e) => OutcomeBody {
                status: "failed".into(),
                error: Some(e.into()),
            },
        }),
    }
}

pub(crate) fn event_body(e: &Event) -> EventBody {
    EventBody {
        at: time(e.at),
        from: e.from.map(|s| s.as_str().to_owned()),
        to: e.to.as_str().to_owned(),
        message: e.message.clone(),
    }
}

/// A job as the API shows it; `pending_reason` is looked up by the caller.
pub(crate) fn job_body(job: &Job, pending_reason: Option<String>, with_events: bool) -> JobBody {
    let spec = &job.spec;
    let latest = job.attempts.last();
    let finished_at = job
        .state
        .is_terminal()
        .then(|| job.events.last().map_or(job.updated_at, |e| e.at))
        .map(time);
    JobBody {
        job_id: job.id.to_string(),
        job_type: spec.job_type().as_str().to_owned(),
        status: job.state.as_str().to_owned(),
        params: spec.params.to_json(),
        resources: ResourcesBody {
            gpus: spec.resources.gpus,
            gpu_memory_mb: spec.resources.gpu_memory_mb,
            labels: spec.resources.labels.clone(),
        },
        priority: spec.priority,
        max_attempts: spec.max_attempts,
        timeout_seconds: spec.timeout.as_secs(),
        depends_on: spec.depends_on.iter().map(ToString::to_string).collect(),
        idempotency_key: spec.idempotency_key.clone(),
        created_at: time(job.submitted_at),
        updated_at: time(job.updated_at),
        started_at: latest.and_then(|a| a.started_at).map(time),
        finished_at,
        progress: job.progress,
        worker_id: latest.map(|a| a.worker.as_str().to_owned()),
        attempt: latest.map_or(0, |a| a.number),
        pending_reason,
        not_before: job.not_before.map(time),
        result: job.output.as_ref().map(output_body),
        error: job.error.as_ref().map(Into::into),
        attempts: job.attempts.iter().map(attempt_body).collect(),
        events: with_events.then(|| job.events.iter().map(event_body).collect()),
        replica_job_ids: None,
        pipeline: None,
    }
}

/// A page of jobs.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct JobPage {
    pub(crate) jobs: Vec<JobBody>,
    /// Pass as `cursor` for the next (older) page; `null` on the last.
    pub(crate) next_cursor: Option<String>,
}

/// Which jobs to list.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct ListParams {
    /// Only jobs in this state.
    #[param(pattern = "^(waiting|queued|assigned|running|cancelling|succeeded|failed|cancelled)$")]
    pub(crate) status: Option<String>,
    /// Only jobs of this type.
    #[serde(rename = "type")]
    #[param(
        rename = "type",
        pattern = "^(generate|audit|distill|train|evaluate|deploy)$"
    )]
    pub(crate) job_type: Option<String>,
    /// Only jobs with an attempt on this worker (a job retried elsewhere is on both).
    pub(crate) worker: Option<String>,
    /// Jobs per page (1 to 500, default 50).
    #[param(minimum = 1, maximum = 500)]
    pub(crate) limit: Option<usize>,
    /// The `next_cursor` of the previous page.
    #[param(pattern = "^(job-)?[0-9]{1,19}$")]
    pub(crate) cursor: Option<String>,
}

/// The state-change history of a job.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct EventsBody {
    pub(crate) job_id: String,
    pub(crate) events: Vec<EventBody>,
}

/// How long to wait for a job to end.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct WaitParams {
    /// Seconds to wait at most (above 0, at most 60; default 30). The job is answered as it
    /// is then, ended or not.
    #[param(exclusive_minimum = 0, maximum = 60)]
    pub(crate) timeout: Option<f64>,
}

/// Several jobs to wait for.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct WaitManyRequest {
    /// The jobs, 1 to 10,000 of them (an id given twice counts once).
    #[schema(min_items = 1, max_items = 10000, value_type = Vec<super::names::JobIdText>)]
    pub(crate) job_ids: Vec<String>,
    /// Seconds to wait at most (above 0, at most 60; default 30).
    #[schema(exclusive_minimum = 0, maximum = 60)]
    pub(crate) timeout: Option<f64>,
    /// `all` (default): answer once every job has ended; `any`: once one has.
    #[schema(example = "all")]
    pub(crate) return_when: Option<String>,
}

/// The jobs waited for, split as `concurrent.futures.wait` splits them.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct WaitManyBody {
    /// The jobs that have ended, in the order asked.
    pub(crate) done: Vec<JobBody>,
    /// The ids of the others, in the order asked.
    #[schema(value_type = Vec<super::names::JobIdText>)]
    pub(crate) pending: Vec<String>,
}

/// How to follow a job's events.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct EventParams {
    /// Stream the events as server-sent events (`event`, then `end` once the job has ended)
    /// instead of answering them at once.
    pub(crate) follow: Option<bool>,
    /// With `follow`, the index of the first event to send (default 0): a client that
    /// reconnects sends how many it has.
    pub(crate) from: Option<usize>,
}

/// Why a job is cancelled.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct CancelRequest {
    pub(crate) reason: Option<String>,
}
