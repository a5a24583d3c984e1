//! A job to submit: the request body, every field checked and turned into the runtime's
//! spec.

use std::collections::BTreeMap;
use std::time::Duration;

use nexa_runtime::{JobParams, JobSpec, JobType, Resources};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::ToSchema;

use super::names::{JobIdText, JobTypeName, job_type_list};
use super::values::{MAX_SAFE, job_id};
use crate::http::error::ApiError;

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

/// Several jobs to submit at once: all of them, or none.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct BatchRequest {
    /// 1 to 1,000 jobs, each as `POST /api/jobs` takes one (with its own `idempotency_key`,
    /// if any).
    #[schema(min_items = 1, max_items = 1000)]
    pub(crate) jobs: Vec<SubmitRequest>,
}

/// The jobs a batch made (or, sent again with the same keys, had made), in order.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct BatchBody {
    pub(crate) jobs: Vec<SubmittedBody>,
}

/// One job of a batch.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct SubmittedBody {
    #[schema(value_type = JobIdText)]
    pub(crate) job_id: String,
    /// `queued`, or `waiting` on its dependencies (or the status of the job made earlier
    /// with the same key).
    pub(crate) status: String,
    /// False when the job was made earlier, with the same idempotency key.
    pub(crate) created: bool,
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
                    "{:?} is not a job type (one of: {})",
                    self.job_type,
                    job_type_list()
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
