//! What each job type takes: its params and, for the built-in training stages, the
//! hyperparameters they know.

use nexa_runtime::JobType;
use serde::Serialize;
use utoipa::ToSchema;

use super::names::JobTypeName;

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
