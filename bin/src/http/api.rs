//! The API's JSON shapes, and how they map to and from the runtime's types.
//!
//! The runtime's types are made for storage and the wire (bincode); these are made for people
//! and other languages: job ids as `job-7`, times as RFC 3339, timeouts in seconds, params as
//! plain JSON objects. Every request field is checked here, and a bad one is named by its
//! path (`params.num_samples`).

use std::collections::BTreeMap;
use std::time::{Duration, UNIX_EPOCH};

use nexa_runtime::{
    Attempt, AttemptOutcome, Epoch, Event, FailureClass, Gpu, Job, JobError, JobId, JobOutput,
    JobParams, JobSpec, JobState, JobType, LeaseToken, LogLine, Resources, Timestamp, WorkerRecord,
    WorkerStatus,
};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::{IntoParams, ToSchema};

use super::error::ApiError;

/// The largest whole number every JSON reader holds exactly (2^53 - 1); sizes above it are
/// refused rather than silently rounded by some client.
pub(crate) const MAX_SAFE: u64 = (1 << 53) - 1;

/// A time as RFC 3339 in UTC with milliseconds.
pub(crate) fn time(t: Timestamp) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(t.as_millis())).to_string()
}

/// A job id from a path or a field: `job-7` (or `7`).
pub(crate) fn job_id(field: &str, s: &str) -> Result<JobId, ApiError> {
    s.parse()
        .map_err(|_| ApiError::invalid(field, format!("{s:?} is not a job id (like job-7)")))
}

/// The job in a path: one that cannot exist is simply not found.
pub(crate) fn path_job(s: &str) -> Result<JobId, ApiError> {
    s.parse()
        .map_err(|_| ApiError::not_found(format!("no job {s:?} (job ids look like job-7)")))
}

// ---------------------------------------------------------------------------------------------
// Names, for the OpenAPI document

/// A job type.
#[derive(ToSchema)]
#[schema(as = JobTypeName)]
#[allow(dead_code)]
pub(crate) enum JobTypeName {
    #[schema(rename = "generate")]
    Generate,
    #[schema(rename = "audit")]
    Audit,
    #[schema(rename = "distill")]
    Distill,
    #[schema(rename = "train")]
    Train,
    #[schema(rename = "evaluate")]
    Evaluate,
    #[schema(rename = "deploy")]
    Deploy,
}

/// Whose fault a failure was.
#[derive(ToSchema)]
#[allow(dead_code)]
pub(crate) enum FailureClassName {
    #[schema(rename = "invalid_input")]
    InvalidInput,
    #[schema(rename = "stage_error")]
    StageError,
    #[schema(rename = "worker_lost")]
    WorkerLost,
    #[schema(rename = "timeout")]
    Timeout,
    #[schema(rename = "cancelled")]
    Cancelled,
    #[schema(rename = "platform")]
    Platform,
}

/// A job id, like `job-7`.
#[derive(ToSchema)]
#[schema(pattern = "^(job-)?[0-9]{1,19}$")]
#[allow(dead_code)]
pub(crate) struct JobIdText(String);

// ---------------------------------------------------------------------------------------------
// Submitting

/// A job to run.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct SubmitRequest {
    /// `generate`, `audit`, `distill`, `train`, `evaluate` or `deploy`.
    #[schema(value_type = JobTypeName, example = "generate")]
    pub(crate) job_type: String,
    /// The job type's parameters (see the docs page for each type's).
    #[serde(default)]
    #[schema(value_type = Object, example = json!({"domain": "physics", "num_samples": 1000}))]
    pub(crate) params: Map<String, Value>,
    /// Higher runs first (-1000 to 1000); default 0.
    #[schema(minimum = -1000, maximum = 1000)]
    pub(crate) priority: Option<i32>,
    /// Failures of the job itself allowed before it fails (1 to 100, the first try
    /// included); default 3. Attempts lost to the platform (a worker that died, a restart)
    /// are retried without counting, up to 10 of them.
    #[schema(minimum = 1, maximum = 100)]
    pub(crate) max_attempts: Option<u32>,
    /// How long one attempt may run, in seconds (1 to 2,592,000); default one day.
    #[schema(minimum = 1, maximum = 2592000)]
    pub(crate) timeout_seconds: Option<u64>,
    /// What the job needs from a worker.
    pub(crate) resources: Option<ResourcesBody>,
    /// Jobs that must succeed first (at most 256, each once).
    #[schema(max_items = 256, value_type = Option<Vec<JobIdText>>)]
    pub(crate) depends_on: Option<Vec<String>>,
    /// Submitting twice with the same key makes one job: 1 to 256 printable ASCII characters.
    #[schema(pattern = "^[!-~]{1,256}$")]
    pub(crate) idempotency_key: Option<String>,
}

/// What a job needs from the worker that runs it.
#[derive(Debug, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ResourcesBody {
    /// Whole GPUs (0 to 64).
    #[serde(default)]
    #[schema(maximum = 64)]
    pub(crate) gpus: u32,
    /// Memory each GPU must have, in MiB; 0 means any.
    #[serde(default)]
    #[schema(maximum = 9007199254740991_u64)]
    pub(crate) gpu_memory_mb: u64,
    /// Labels the worker must carry with these values.
    #[serde(default)]
    pub(crate) labels: BTreeMap<String, String>,
}

impl SubmitRequest {
    /// The spec this asks for, every field checked. `header_key` is the `Idempotency-Key`
    /// header, which wins over the body's.
    pub(crate) fn into_spec(self, header_key: Option<String>) -> Result<JobSpec, ApiError> {
        let job_type: JobType = self.job_type.parse().map_err(|_| {
            ApiError::invalid(
                "job_type",
                format!(
                    "{:?} is not a job type (one of: generate, audit, distill, train, evaluate, deploy)",
                    self.job_type
                ),
            )
        })?;
        let params = JobParams::from_json(job_type, self.params)
            .map_err(|e| ApiError::invalid(e.field, e.reason))?;
        let mut spec = JobSpec::new(params);
        if let Some(p) = self.priority {
            spec.priority = p;
        }
        if let Some(n) = self.max_attempts {
            spec.max_attempts = n;
        }
        if let Some(s) = self.timeout_seconds {
            spec.timeout = Duration::from_secs(s);
        }
        if let Some(r) = self.resources {
            if r.gpu_memory_mb > MAX_SAFE {
                return Err(ApiError::invalid(
                    "resources.gpu_memory_mb",
                    "is larger than 2^53 - 1",
                ));
            }
            spec.resources = Resources {
                gpus: r.gpus,
                gpu_memory_mb: r.gpu_memory_mb,
                labels: r.labels,
            };
        }
        if let Some(deps) = self.depends_on {
            spec.depends_on = deps
                .iter()
                .enumerate()
                .map(|(i, d)| job_id(&format!("depends_on[{i}]"), d))
                .collect::<Result<_, _>>()?;
        }
        spec.idempotency_key = header_key.or(self.idempotency_key);
        spec.validate().map_err(|e| {
            // The API takes the timeout in seconds, under another name.
            let field = if e.field == "timeout" {
                "timeout_seconds".to_owned()
            } else {
                e.field
            };
            ApiError::invalid(field, e.reason)
        })?;
        Ok(spec)
    }
}

/// One field of a job type's params.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ParamBody {
    pub(crate) name: &'static str,
    pub(crate) required: bool,
    /// What it holds, its limits and its default.
    pub(crate) doc: &'static str,
}

/// A job type and the params it takes.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct JobTypeBody {
    #[schema(value_type = JobTypeName)]
    pub(crate) job_type: &'static str,
    pub(crate) params: Vec<ParamBody>,
    /// The hyperparameters the built-in stage knows (train and distill), by name.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(crate) builtin_hyperparameters: Vec<ParamBody>,
}

/// Every job type with its params.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct JobTypesBody {
    pub(crate) job_types: Vec<JobTypeBody>,
}

/// The params of every job type, from the one definition the server applies.
pub(crate) fn job_types_body() -> JobTypesBody {
    let job_types = JobType::ALL
        .into_iter()
        .map(|t| {
            let params = t
                .params()
                .iter()
                .map(|f| ParamBody {
                    name: f.name,
                    required: f.required,
                    doc: f.doc,
                })
                .collect();
            let builtin_hyperparameters = match t {
                JobType::Train | JobType::Distill => nexa_actors::KNOWN_HYPERPARAMETERS
                    .iter()
                    .filter(|(name, _)| t == JobType::Train || *name != "base")
                    .map(|&(name, doc)| ParamBody {
                        name,
                        required: false,
                        doc,
                    })
                    .collect(),
                _ => Vec::new(),
            };
            JobTypeBody {
                job_type: t.as_str(),
                params,
                builtin_hyperparameters,
            }
        })
        .collect();
    JobTypesBody { job_types }
}

// ---------------------------------------------------------------------------------------------
// Jobs as shown

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
        let class = [
            FailureClass::InvalidInput,
            FailureClass::StageError,
            FailureClass::WorkerLost,
            FailureClass::Timeout,
            FailureClass::Cancelled,
            FailureClass::Platform,
        ]
        .into_iter()
        .find(|c| c.as_str() == self.class)
        .ok_or_else(|| {
            ApiError::invalid(
                "error.class",
                format!(
                    "{:?} is not a failure class (one of: invalid_input, stage_error, worker_lost, timeout, cancelled, platform)",
                    self.class
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
    /// Only jobs whose latest attempt ran on this worker.
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

/// Why a job is cancelled.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct CancelRequest {
    pub(crate) reason: Option<String>,
}

// ---------------------------------------------------------------------------------------------
// Logs

/// Which log lines to read.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct LogParams {
    /// The attempt (default: the latest).
    #[param(minimum = 1)]
    pub(crate) attempt: Option<u32>,
    /// The first line number (default 0).
    #[param(maximum = 9007199254740991_u64)]
    pub(crate) from_seq: Option<u64>,
    /// Lines at most (1 to 10000, default 1000).
    #[param(minimum = 1, maximum = 10000)]
    pub(crate) limit: Option<usize>,
    /// Stream lines as server-sent events until the job ends.
    pub(crate) follow: Option<bool>,
}

/// One line a job wrote.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct LogLineBody {
    /// Numbered per attempt from 0.
    pub(crate) seq: u64,
    pub(crate) at: String,
    pub(crate) text: String,
}

pub(crate) fn line_body(l: &LogLine) -> LogLineBody {
    LogLineBody {
        seq: l.seq,
        at: time(l.at),
        text: l.text.clone(),
    }
}

/// Log lines of one attempt.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct LogsBody {
    pub(crate) job_id: String,
    pub(crate) attempt: u32,
    pub(crate) lines: Vec<LogLineBody>,
    /// The line to read from next.
    pub(crate) next_seq: u64,
    /// Lines dropped because the job wrote more than the limit.
    pub(crate) dropped: u64,
}

// ---------------------------------------------------------------------------------------------
// Workers

/// A GPU.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct GpuBody {
    pub(crate) model: String,
    #[schema(minimum = 1, maximum = 9007199254740991_u64)]
    pub(crate) memory_mb: u64,
}

/// A worker joining over HTTP.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RegisterRequest {
    /// 1 to 128 letters, digits, `.`, `_` or `-`.
    #[schema(pattern = "^[A-Za-z0-9._-]{1,128}$")]
    pub(crate) worker_id: String,
    #[serde(default)]
    #[schema(maximum = 1048576)]
    pub(crate) cpus: u32,
    #[serde(default)]
    #[schema(maximum = 9007199254740991_u64)]
    pub(crate) memory_mb: u64,
    #[serde(default)]
    pub(crate) gpus: Vec<GpuBody>,
    #[serde(default)]
    pub(crate) labels: BTreeMap<String, String>,
    /// The job types it runs (default: all).
    #[schema(value_type = Option<Vec<JobTypeName>>)]
    pub(crate) job_types: Option<Vec<String>>,
}

impl RegisterRequest {
    pub(crate) fn into_info(self) -> Result<nexa_runtime::WorkerInfo, ApiError> {
        let id = nexa_runtime::WorkerId::new(self.worker_id)
            .map_err(|e| ApiError::invalid("worker_id", e))?;
        let job_types = match self.job_types {
            None => JobType::ALL.into_iter().collect(),
            Some(types) => types
                .iter()
                .enumerate()
                .map(|(i, t)| {
                    t.parse::<JobType>().map_err(|_| {
                        ApiError::invalid(
                            format!("job_types[{i}]"),
                            format!("{t:?} is not a job type"),
                        )
                    })
                })
                .collect::<Result<_, _>>()?,
        };
        // Limits are checked by the store, as for every registration (QUIC or HTTP): a
        // field out of bounds comes back as a 422 naming it.
        Ok(nexa_runtime::WorkerInfo {
            id,
            cpus: self.cpus,
            memory_mb: self.memory_mb,
            gpus: self
                .gpus
                .into_iter()
                .map(|g| Gpu {
                    model: g.model,
                    memory_mb: g.memory_mb,
                })
                .collect(),
            labels: self.labels,
            job_types,
        })
    }
}

/// A registered worker.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct WorkerBody {
    pub(crate) worker_id: String,
    /// `alive`, `draining` or `lost` (not heard from lately).
    pub(crate) status: String,
    pub(crate) cpus: u32,
    pub(crate) memory_mb: u64,
    pub(crate) gpus: Vec<GpuBody>,
    pub(crate) labels: BTreeMap<String, String>,
    pub(crate) job_types: Vec<String>,
    pub(crate) registered_at: String,
    pub(crate) last_heartbeat: String,
    /// Jobs it holds leases on.
    pub(crate) running_jobs: Vec<String>,
}

pub(crate) fn worker_body(w: &WorkerRecord, alive: bool, running_jobs: Vec<String>) -> WorkerBody {
    let status = match (w.status, alive) {
        (_, false) => "lost",
        (WorkerStatus::Draining, true) => "draining",
        (WorkerStatus::Active, true) => "alive",
    };
    WorkerBody {
        worker_id: w.info.id.as_str().to_owned(),
        status: status.to_owned(),
        cpus: w.info.cpus,
        memory_mb: w.info.memory_mb,
        gpus: w
            .info
            .gpus
            .iter()
            .map(|g| GpuBody {
                model: g.model.clone(),
                memory_mb: g.memory_mb,
            })
            .collect(),
        labels: w.info.labels.clone(),
        job_types: w
            .info
            .job_types
            .iter()
            .map(|t| t.as_str().to_owned())
            .collect(),
        registered_at: time(w.registered_at),
        last_heartbeat: time(w.last_seen),
        running_jobs,
    }
}

/// A worker, with the settings it should keep to.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct RegisteredBody {
    /// Send it in the `X-Nexa-Worker-Session` header of every later call for this worker
    /// (heartbeats, next_job); registering again makes a new one.
    pub(crate) session: String,
    #[serde(flatten)]
    pub(crate) worker: WorkerBody,
    /// A lease ends this long after the last heartbeat.
    pub(crate) lease_ttl_seconds: f64,
    /// Heartbeat this often.
    pub(crate) heartbeat_interval_seconds: f64,
}

/// The workers.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct WorkersBody {
    pub(crate) workers: Vec<WorkerBody>,
}

/// A job a worker runs, as its heartbeat reports it.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RunningJobBody {
    #[schema(pattern = "^(job-)?[0-9]{1,19}$")]
    pub(crate) job_id: String,
    pub(crate) epoch: u64,
    /// The lease's token, from the job's assignment.
    #[schema(value_type = LeaseTokenText)]
    pub(crate) lease_token: String,
    #[schema(minimum = 0.0, maximum = 1.0)]
    pub(crate) progress: Option<f64>,
    /// Where the job serves requests, once ready (a `deploy` replica): an `http://` or
    /// `https://` URL the control plane can reach.
    #[serde(default)]
    pub(crate) serving_url: Option<String>,
}

/// A worker's heartbeat.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct HeartbeatRequest {
    #[serde(default)]
    pub(crate) jobs: Vec<RunningJobBody>,
}

/// What a worker should do with its jobs.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct HeartbeatAnswer {
    /// Stop these (then report them failed with class `cancelled`).
    pub(crate) cancel: Vec<String>,
    /// These leases are gone: drop the jobs without reporting.
    pub(crate) lost: Vec<String>,
}

/// Who asks for work.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct NextJobParams {
    /// The worker, as registered.
    #[param(pattern = "^[A-Za-z0-9._-]{1,128}$")]
    pub(crate) worker_id: String,
    /// Hold the request up to this many seconds for a job (0 to 30, default 0).
    #[param(minimum = 0, maximum = 30)]
    pub(crate) wait_seconds: Option<f64>,
    /// The memory (MiB) of each GPU free now, comma-separated, e.g. `81559,81559`; empty
    /// for none. Default: every GPU the worker registered.
    #[param(pattern = "^([0-9]{1,12}(,[0-9]{1,12})*)?$")]
    pub(crate) free_gpus: Option<String>,
}

/// A job leased to a worker.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct AssignmentBody {
    pub(crate) job_id: String,
    pub(crate) job: JobBody,
    pub(crate) attempt: u32,
    /// Quote it in every report about this job.
    pub(crate) epoch: u64,
    /// Quote it with the epoch in every report about this job: it proves the report comes
    /// from the worker the job was leased to. Keep it to yourself; the API never shows it.
    #[schema(value_type = LeaseTokenText)]
    pub(crate) lease_token: String,
    pub(crate) lease_expires_at: String,
    pub(crate) deadline: String,
}

/// A report under a lease.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct EpochRequest {
    pub(crate) epoch: u64,
    #[schema(value_type = LeaseTokenText)]
    pub(crate) lease_token: String,
}

/// A lease token: 64 hex digits, as the job's assignment gave it.
#[derive(ToSchema)]
#[schema(pattern = "^[0-9a-f]{64}$")]
pub(crate) struct LeaseTokenText(#[allow(dead_code)] String);

/// The lease token of a report, read from its hex text.
pub(crate) fn lease_token(field: &str, text: &str) -> Result<LeaseToken, ApiError> {
    LeaseToken::from_hex(text).ok_or_else(|| {
        ApiError::invalid(
            field,
            "must be the 64 hex digits of the job's assignment's lease_token",
        )
    })
}

/// Log lines from a worker.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct LogBatchRequest {
    pub(crate) epoch: u64,
    #[schema(value_type = LeaseTokenText)]
    pub(crate) lease_token: String,
    /// The number of the first line; lines are numbered per attempt from 0.
    #[serde(default)]
    pub(crate) first_seq: u64,
    pub(crate) lines: Vec<String>,
}

/// Lines stored.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct LogAckBody {
    /// Send from this line next.
    pub(crate) next_seq: u64,
}

/// Progress of a leased job.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ProgressRequest {
    pub(crate) epoch: u64,
    #[schema(value_type = LeaseTokenText)]
    pub(crate) lease_token: String,
    /// From 0.0 to 1.0.
    #[schema(minimum = 0.0, maximum = 1.0)]
    pub(crate) progress: Option<f64>,
}

/// Whether to stop.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ProgressAnswer {
    pub(crate) cancel_requested: bool,
}

/// The stage started.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct StartedAnswer {
    pub(crate) status: String,
}

/// A leased job succeeded.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct CompleteRequest {
    pub(crate) epoch: u64,
    #[schema(value_type = LeaseTokenText)]
    pub(crate) lease_token: String,
    #[serde(default)]
    pub(crate) result: Option<ResultBody>,
}

/// A leased job's attempt failed.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct FailRequest {
    pub(crate) epoch: u64,
    #[schema(value_type = LeaseTokenText)]
    pub(crate) lease_token: String,
    pub(crate) error: ErrorInfo,
}

pub(crate) fn epoch(e: u64) -> Epoch {
    Epoch(e)
}

/// Whether the server is well.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Health {
    /// `ok`.
    pub(crate) status: String,
}

/// A job state by its name.
pub(crate) fn state(s: &str) -> Result<JobState, String> {
    s.parse().map_err(|_| {
        format!("{s:?} is not a status (one of: waiting, queued, assigned, running, cancelling, succeeded, failed, cancelled)")
    })
}
