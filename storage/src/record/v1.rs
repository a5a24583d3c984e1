//! The layout of version-1 records that changed since: a job's params before the fields added
//! in version 2 (generate task, classes and noise; distill alpha, hyperparameters and prompt
//! template; evaluate split and suite; deploy region; options of every type). A version-1 job
//! reads as the same job with those fields at the values version 1 ran with, which are the
//! defaults.

use std::collections::BTreeMap;
use std::time::Duration;

use nexa_runtime as now;
use nexa_runtime::{
    Attempt, Event, JobError, JobId, JobOutput, JobState, ParamValue, Resources, Timestamp,
};
use serde::Deserialize;

#[derive(Deserialize)]
pub(super) struct Job {
    id: JobId,
    spec: JobSpec,
    state: JobState,
    submitted_at: Timestamp,
    updated_at: Timestamp,
    attempts: Vec<Attempt>,
    events: Vec<Event>,
    progress: Option<f64>,
    not_before: Option<Timestamp>,
    output: Option<JobOutput>,
    error: Option<JobError>,
}

#[derive(Deserialize)]
struct JobSpec {
    params: JobParams,
    resources: Resources,
    priority: i32,
    max_attempts: u32,
    timeout: Duration,
    idempotency_key: Option<String>,
    depends_on: Vec<JobId>,
}

#[derive(Deserialize)]
enum JobParams {
    Generate {
        domain: String,
        num_samples: u64,
        seed: Option<u64>,
    },
    Audit {
        dataset_uri: String,
        label_column: Option<String>,
        expected_sha256: Option<String>,
    },
    Distill {
        teacher_model: String,
        student_model: String,
        dataset_uri: String,
        temperature: f64,
        epochs: u32,
    },
    Train {
        model_id: String,
        dataset_uri: String,
        epochs: u32,
        hyperparameters: BTreeMap<String, ParamValue>,
    },
    Evaluate {
        model_id: String,
        dataset_uri: String,
        metrics: Vec<String>,
    },
    Deploy {
        model_id: String,
        target: String,
        replicas: u32,
    },
}

impl From<JobParams> for now::JobParams {
    fn from(p: JobParams) -> Self {
        match p {
            JobParams::Generate {
                domain,
                num_samples,
                seed,
            } => now::JobParams::Generate(now::GenerateParams {
                seed,
                ..now::GenerateParams::new(domain, num_samples)
            }),
            JobParams::Audit {
                dataset_uri,
                label_column,
                expected_sha256,
            } => now::JobParams::Audit(now::AuditParams {
                label_column,
                expected_sha256,
                ..now::AuditParams::new(dataset_uri)
            }),
            JobParams::Distill {
                teacher_model,
                student_model,
                dataset_uri,
                temperature,
                epochs,
            } => now::JobParams::Distill(now::DistillParams {
                temperature,
                epochs,
                ..now::DistillParams::new(teacher_model, student_model, dataset_uri)
            }),
            JobParams::Train {
                model_id,
                dataset_uri,
                epochs,
                hyperparameters,
            } => now::JobParams::Train(now::TrainParams {
                epochs,
                hyperparameters,
                ..now::TrainParams::new(model_id, dataset_uri)
            }),
            JobParams::Evaluate {
                model_id,
                dataset_uri,
                metrics,
            } => now::JobParams::Evaluate(now::EvaluateParams {
                metrics,
                ..now::EvaluateParams::new(model_id, dataset_uri)
            }),
            JobParams::Deploy {
                model_id,
                target,
                replicas,
            } => now::JobParams::Deploy(now::DeployParams {
                target,
                replicas,
                ..now::DeployParams::new(model_id)
            }),
        }
    }
}

impl From<Job> for now::Job {
    fn from(j: Job) -> Self {
        let spec = j.spec;
        now::Job {
            id: j.id,
            spec: now::JobSpec {
                params: spec.params.into(),
                resources: spec.resources,
                priority: spec.priority,
                max_attempts: spec.max_attempts,
                timeout: spec.timeout,
                idempotency_key: spec.idempotency_key,
                depends_on: spec.depends_on,
            },
            state: j.state,
            submitted_at: j.submitted_at,
            updated_at: j.updated_at,
            attempts: j.attempts,
            events: j.events,
            progress: j.progress,
            not_before: j.not_before,
            output: j.output,
            error: j.error,
        }
    }
}
