//! Workers: registering over HTTP, as listed, heartbeats, and asking for work.

use std::collections::BTreeMap;

use nexa_runtime::{Gpu, JobType, WorkerRecord, WorkerStatus};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::jobs::JobBody;
use super::names::{JobTypeName, LeaseTokenText};
use super::values::time;
use crate::http::error::ApiError;

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
