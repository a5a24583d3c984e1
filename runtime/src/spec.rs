//! What a user asks for: a job's type, its typed parameters, and how it is to be run.
//!
//! [`JobSpec::validate`] is the single gate every spec passes before a store accepts it. An
//! invalid spec is refused with a [`SpecError`] that names the field (as a dotted path, e.g.
//! `params.num_samples`) and says what is wrong with it.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::id::JobId;
use crate::params::{JobParams, Options, ParamValue, Task};

/// The six kinds of work Nexa Forge runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum JobType {
    /// Synthesise a dataset for a domain.
    Generate,
    /// Check a dataset's integrity and shape.
    Audit,
    /// Train a student model from a teacher's outputs.
    Distill,
    /// Train or fine-tune a model on a dataset.
    Train,
    /// Score a model on a dataset.
    Evaluate,
    /// Publish a model to a serving target.
    Deploy,
}

impl JobType {
    /// Every job type, in a fixed order.
    pub const ALL: [JobType; 6] = [
        JobType::Generate,
        JobType::Audit,
        JobType::Distill,
        JobType::Train,
        JobType::Evaluate,
        JobType::Deploy,
    ];

    /// The lower-case name used in the API, the CLI and logs.
    pub const fn as_str(self) -> &'static str {
        match self {
            JobType::Generate => "generate",
            JobType::Audit => "audit",
            JobType::Distill => "distill",
            JobType::Train => "train",
            JobType::Evaluate => "evaluate",
            JobType::Deploy => "deploy",
        }
    }
}

impl fmt::Display for JobType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A string that names no job type.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown job type {0:?} (expected one of generate, audit, distill, train, evaluate, deploy)"
)]
pub struct UnknownJobType(pub String);

impl FromStr for JobType {
    type Err = UnknownJobType;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        JobType::ALL
            .into_iter()
            .find(|t| t.as_str() == s)
            .ok_or_else(|| UnknownJobType(s.to_owned()))
    }
}

/// What a job needs from the worker that runs it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resources {
    /// Whole GPUs (0 to 64).
    pub gpus: u32,
    /// Memory each of those GPUs must have, in MiB; 0 means any.
    pub gpu_memory_mb: u64,
    /// Labels the worker must carry with exactly these values, e.g. `region = eu-west`.
    pub labels: BTreeMap<String, String>,
}

/// Everything a user submits: the work and how to run it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobSpec {
    /// The job type and its parameters.
    pub params: JobParams,
    /// What the job needs from a worker.
    pub resources: Resources,
    /// Higher runs first (-1,000 to 1,000); equal priorities run in submission order.
    pub priority: i32,
    /// How many times the job may be tried in all, the first try included (1 to 100).
    pub max_attempts: u32,
    /// How long one attempt may take from its lease (1 second to 30 days).
    pub timeout: Duration,
    /// Submitting twice with the same key creates one job.
    pub idempotency_key: Option<String>,
    /// Jobs that must succeed before this one is queued. If one fails or is cancelled, this
    /// job is cancelled with that reason.
    pub depends_on: Vec<JobId>,
}

impl JobSpec {
    /// Default number of attempts.
    pub const DEFAULT_MAX_ATTEMPTS: u32 = 3;
    /// Default attempt timeout: one day.
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(24 * 3600);
    /// Highest accepted priority; the lowest is its negation.
    pub const MAX_PRIORITY: i32 = 1000;
    /// Most dependencies a job may have.
    pub const MAX_DEPENDENCIES: usize = 256;

    /// A spec for `params` with default settings: no GPUs, priority 0, three attempts, a
    /// one-day timeout, no idempotency key and no dependencies.
    pub fn new(params: JobParams) -> Self {
        Self {
            params,
            resources: Resources::default(),
            priority: 0,
            max_attempts: Self::DEFAULT_MAX_ATTEMPTS,
            timeout: Self::DEFAULT_TIMEOUT,
            idempotency_key: None,
            depends_on: Vec::new(),
        }
    }

    /// The job type.
    pub fn job_type(&self) -> JobType {
        self.params.job_type()
    }

    /// Checks every field; the first problem found is returned.
    pub fn validate(&self) -> Result<(), SpecError> {
        validate_params(&self.params)?;
        validate_resources(&self.resources)?;
        if let JobParams::Deploy(p) = &self.params
            && let (Some(region), Some(label)) = (&p.region, self.resources.labels.get("region"))
            && region != label
        {
            return Err(SpecError::new(
                "params.region",
                format!(
                    "is {region:?} but resources.labels.region is {label:?}; give the region once"
                ),
            ));
        }
        if !(-Self::MAX_PRIORITY..=Self::MAX_PRIORITY).contains(&self.priority) {
            return Err(SpecError::new(
                "priority",
                format!("must be from -1,000 to 1,000; got {}", self.priority),
            ));
        }
        if !(1..=100).contains(&self.max_attempts) {
            return Err(SpecError::new(
                "max_attempts",
                format!("must be from 1 to 100; got {}", self.max_attempts),
            ));
        }
        if self.timeout < Duration::from_secs(1) || self.timeout > Duration::from_secs(30 * 86_400)
        {
            return Err(SpecError::new(
                "timeout",
                format!("{:?} is outside 1 second to 30 days", self.timeout),
            ));
        }
        if let Some(key) = &self.idempotency_key {
            if key.is_empty() || key.len() > 256 {
                return Err(SpecError::new(
                    "idempotency_key",
                    "must be 1 to 256 bytes long",
                ));
            }
            if !key.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(SpecError::new(
                    "idempotency_key",
                    "only printable ASCII without spaces is allowed",
                ));
            }
        }
        if self.depends_on.len() > Self::MAX_DEPENDENCIES {
            return Err(SpecError::new(
                "depends_on",
                format!(
                    "{} jobs listed; at most 256 are allowed",
                    self.depends_on.len()
                ),
            ));
        }
        let mut seen = BTreeSet::new();
        for dep in &self.depends_on {
            if !seen.insert(dep) {
                return Err(SpecError::new(
                    "depends_on",
                    format!("{dep} is listed twice"),
                ));
            }
        }
        Ok(())
    }
}

/// A spec field that does not hold.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {field}: {reason}")]
pub struct SpecError {
    /// The offending field as a dotted path, e.g. `params.epochs`.
    pub field: String,
    /// What is wrong and what is accepted.
    pub reason: String,
}

impl SpecError {
    /// An error for `field`.
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

fn validate_params(params: &JobParams) -> Result<(), SpecError> {
    options(params.options())?;
    match params {
        JobParams::Generate(p) => {
            name("params.domain", &p.domain)?;
            range_u64("params.num_samples", p.num_samples, 1, 10_000_000)?;
            match (p.task, p.classes) {
                (Task::Classification, Some(classes)) => {
                    range_u64("params.classes", u64::from(classes), 2, 64)?;
                }
                (Task::Classification, None) => {}
                (Task::Regression, Some(_)) => {
                    return Err(SpecError::new(
                        "params.classes",
                        "only a classification task has classes",
                    ));
                }
                (Task::Regression, None) => {}
            }
            if !(p.noise.is_finite() && (0.0..=0.5).contains(&p.noise)) {
                return Err(SpecError::new(
                    "params.noise",
                    format!("{} is not a number in [0, 0.5]", p.noise),
                ));
            }
            Ok(())
        }
        JobParams::Audit(p) => {
            uri("params.dataset_uri", &p.dataset_uri)?;
            if let Some(col) = &p.label_column {
                name("params.label_column", col)?;
            }
            if let Some(sha) = &p.expected_sha256
                && (sha.len() != 64 || !sha.bytes().all(|b| b.is_ascii_hexdigit()))
            {
                return Err(SpecError::new(
                    "params.expected_sha256",
                    "must be 64 hexadecimal digits",
                ));
            }
            Ok(())
        }
        JobParams::Distill(p) => {
            name("params.teacher_model", &p.teacher_model)?;
            name("params.student_model", &p.student_model)?;
            if p.teacher_model == p.student_model {
                return Err(SpecError::new(
                    "params.student_model",
                    "must differ from the teacher model",
                ));
            }
            uri("params.dataset_uri", &p.dataset_uri)?;
            if !(p.temperature.is_finite() && p.temperature > 0.0 && p.temperature <= 100.0) {
                return Err(SpecError::new(
                    "params.temperature",
                    format!("{} is not a number in (0, 100]", p.temperature),
                ));
            }
            if !(p.alpha.is_finite() && (0.0..=1.0).contains(&p.alpha)) {
                return Err(SpecError::new(
                    "params.alpha",
                    format!("{} is not a number in [0, 1]", p.alpha),
                ));
            }
            range_u64("params.epochs", u64::from(p.epochs), 1, 10_000)?;
            hyperparameters(&p.hyperparameters)?;
            if let Some(template) = &p.prompt_template
                && (template.is_empty() || template.len() > 64 * 1024)
            {
                return Err(SpecError::new(
                    "params.prompt_template",
                    "must be 1 byte to 64 KiB long",
                ));
            }
            Ok(())
        }
        JobParams::Train(p) => {
            name("params.model_id", &p.model_id)?;
            uri("params.dataset_uri", &p.dataset_uri)?;
            range_u64("params.epochs", u64::from(p.epochs), 1, 10_000)?;
            hyperparameters(&p.hyperparameters)
        }
        JobParams::Evaluate(p) => {
            name("params.model_id", &p.model_id)?;
            match (&p.dataset_uri, &p.suite) {
                (None, None) => {
                    return Err(SpecError::new(
                        "params.dataset_uri",
                        "is required for evaluate jobs unless a suite is named",
                    ));
                }
                (Some(uri_), _) => uri("params.dataset_uri", uri_)?,
                (None, Some(_)) => {}
            }
            if let Some(suite) = &p.suite {
                identifier("params.suite", suite, 128)?;
            }
            if p.split.is_some() && p.dataset_uri.is_none() {
                return Err(SpecError::new(
                    "params.split",
                    "names a part of a dataset, and no dataset_uri is given",
                ));
            }
            if p.metrics.len() > 32 {
                return Err(SpecError::new(
                    "params.metrics",
                    "at most 32 metrics are allowed",
                ));
            }
            p.metrics
                .iter()
                .try_for_each(|m| identifier("params.metrics", m, 64))
        }
        JobParams::Deploy(p) => {
            name("params.model_id", &p.model_id)?;
            name("params.target", &p.target)?;
            if let Some(region) = &p.region {
                identifier("params.region", region, 63)?;
            }
            range_u64("params.replicas", u64::from(p.replicas), 1, 64)
        }
    }
}

fn hyperparameters(values: &BTreeMap<String, ParamValue>) -> Result<(), SpecError> {
    if values.len() > 64 {
        return Err(SpecError::new(
            "params.hyperparameters",
            "at most 64 hyperparameters are allowed",
        ));
    }
    for (key, value) in values {
        let field = format!("params.hyperparameters.{key}");
        identifier("params.hyperparameters", key, 64)?;
        match value {
            ParamValue::Float(x) if !x.is_finite() => {
                return Err(SpecError::new(field, "must be a finite number"));
            }
            ParamValue::Text(t) if t.len() > 1024 => {
                return Err(SpecError::new(field, "text is longer than 1024 bytes"));
            }
            _ => {}
        }
    }
    Ok(())
}

fn options(options: &Options) -> Result<(), SpecError> {
    let bytes = options.to_json_text().len();
    if bytes > Options::MAX_BYTES {
        return Err(SpecError::new(
            "params.options",
            format!("is {bytes} bytes as JSON; at most 65536 are allowed"),
        ));
    }
    Ok(())
}

fn validate_resources(r: &Resources) -> Result<(), SpecError> {
    range_u64("resources.gpus", u64::from(r.gpus), 0, 64)?;
    if r.gpu_memory_mb > 0 && r.gpus == 0 {
        return Err(SpecError::new(
            "resources.gpu_memory_mb",
            "is set but resources.gpus is 0; ask for at least one GPU",
        ));
    }
    range_u64(
        "resources.gpu_memory_mb",
        r.gpu_memory_mb,
        0,
        16 * 1024 * 1024,
    )?;
    labels("resources.labels", &r.labels)
}

/// Labels (of a job's resources or a worker): at most 32, keys of `a-z A-Z 0-9 . _ - /`,
/// values of at most 256 bytes without control characters.
pub(crate) fn labels(field: &str, labels: &BTreeMap<String, String>) -> Result<(), SpecError> {
    if labels.len() > 32 {
        return Err(SpecError::new(field, "at most 32 labels are allowed"));
    }
    for (key, value) in labels {
        identifier(field, key, 63)?;
        if value.len() > 256 || value.chars().any(char::is_control) {
            return Err(SpecError::new(
                format!("{field}.{key}"),
                "value must be at most 256 bytes without control characters",
            ));
        }
    }
    Ok(())
}

/// A worker's description, as it registers (over QUIC or HTTP alike).
pub(crate) fn validate_worker(w: &crate::worker::WorkerInfo) -> Result<(), SpecError> {
    const MAX_SAFE: u64 = (1 << 53) - 1;
    range_u64("cpus", u64::from(w.cpus), 0, 1 << 20)?;
    range_u64("memory_mb", w.memory_mb, 0, MAX_SAFE)?;
    if w.gpus.len() > 64 {
        return Err(SpecError::new(
            "gpus",
            format!("{} GPUs listed; at most 64 are allowed", w.gpus.len()),
        ));
    }
    for (i, gpu) in w.gpus.iter().enumerate() {
        range_u64(&format!("gpus[{i}].memory_mb"), gpu.memory_mb, 1, MAX_SAFE)?;
        if gpu.model.trim().is_empty()
            || gpu.model.len() > 128
            || gpu.model.chars().any(char::is_control)
        {
            return Err(SpecError::new(
                format!("gpus[{i}].model"),
                "must be 1 to 128 bytes without control characters",
            ));
        }
    }
    labels("labels", &w.labels)
}

/// A model, domain or target name: 1 to 512 bytes, no control characters, not blank.
fn name(field: &str, value: &str) -> Result<(), SpecError> {
    if value.trim().is_empty() {
        return Err(SpecError::new(field, "must not be empty"));
    }
    if value.len() > 512 {
        return Err(SpecError::new(field, "is longer than 512 bytes"));
    }
    if value.chars().any(char::is_control) {
        return Err(SpecError::new(field, "contains control characters"));
    }
    Ok(())
}

/// A key: 1 to `max` bytes of `a-z A-Z 0-9 . _ - /`.
fn identifier(field: &str, value: &str, max: usize) -> Result<(), SpecError> {
    let ok = !value.is_empty()
        && value.len() <= max
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'/'));
    if ok {
        Ok(())
    } else {
        Err(SpecError::new(
            field,
            format!(
                "{value:?} must be 1 to {max} characters of letters, digits, '.', '_', '-', '/'"
            ),
        ))
    }
}

/// Schemes a dataset or artifact URI may use; anything without `://` is a local path.
pub const URI_SCHEMES: [&str; 7] = ["nexa", "file", "s3", "gs", "az", "http", "https"];

fn uri(field: &str, value: &str) -> Result<(), SpecError> {
    name(field, value)?;
    if let Some((scheme, rest)) = value.split_once("://") {
        if !URI_SCHEMES.contains(&scheme) {
            return Err(SpecError::new(
                field,
                format!(
                    "unsupported scheme {scheme:?}; use nexa://, file://, s3://, gs://, az://, http(s):// or a path"
                ),
            ));
        }
        if rest.is_empty() {
            return Err(SpecError::new(
                field,
                format!("{scheme}:// is followed by nothing"),
            ));
        }
    }
    Ok(())
}

/// `n` with its thousands grouped: `10,000`.
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn range_u64(field: &str, value: u64, min: u64, max: u64) -> Result<(), SpecError> {
    if (min..=max).contains(&value) {
        Ok(())
    } else {
        Err(SpecError::new(
            field,
            format!(
                "must be from {} to {}; got {}",
                thousands(min),
                thousands(max),
                thousands(value)
            ),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::params::{DistillParams, EvaluateParams, GenerateParams, TrainParams};

    fn generate(n: u64) -> JobSpec {
        JobSpec::new(JobParams::Generate(GenerateParams::new("biology", n)))
    }

    fn field_of(spec: &JobSpec) -> String {
        spec.validate().unwrap_err().field
    }

    #[test]
    fn a_default_spec_is_valid() {
        assert_eq!(generate(100).validate(), Ok(()));
    }

    #[test]
    fn errors_name_the_field() {
        assert_eq!(field_of(&generate(0)), "params.num_samples");
        let mut s = generate(10);
        s.priority = 5000;
        assert_eq!(field_of(&s), "priority");
        s.priority = i32::MIN;
        assert_eq!(field_of(&s), "priority");
        s = generate(10);
        s.max_attempts = 0;
        assert_eq!(field_of(&s), "max_attempts");
        s = generate(10);
        s.timeout = Duration::from_millis(10);
        assert_eq!(field_of(&s), "timeout");
        s = generate(10);
        s.idempotency_key = Some("has space".into());
        assert_eq!(field_of(&s), "idempotency_key");
        s = generate(10);
        s.depends_on = vec![JobId(1), JobId(1)];
        assert_eq!(field_of(&s), "depends_on");
        s = generate(10);
        s.resources.gpu_memory_mb = 1024;
        assert_eq!(field_of(&s), "resources.gpu_memory_mb");
        s = generate(10);
        s.resources.labels.insert("bad key".into(), "x".into());
        assert_eq!(field_of(&s), "resources.labels");
    }

    #[test]
    fn distill_rejects_same_teacher_and_student_and_bad_uris() {
        let mut p = DistillParams::new("llama-70b", "llama-70b", "s3://bucket/data.jsonl");
        let err = JobSpec::new(JobParams::Distill(p.clone()))
            .validate()
            .unwrap_err();
        assert_eq!(err.field, "params.student_model");
        p.student_model = "llama-1b".into();
        p.dataset_uri = "ftp://host/x".into();
        let err = JobSpec::new(JobParams::Distill(p.clone()))
            .validate()
            .unwrap_err();
        assert_eq!(err.field, "params.dataset_uri");
        assert!(
            err.to_string().contains("unsupported scheme \"ftp\""),
            "{err}"
        );
        p.dataset_uri = "data/train.csv".into();
        p.temperature = f64::NAN;
        assert_eq!(
            JobSpec::new(JobParams::Distill(p))
                .validate()
                .unwrap_err()
                .field,
            "params.temperature"
        );
    }

    #[test]
    fn train_checks_hyperparameters() {
        let mut hp = BTreeMap::new();
        hp.insert("learning_rate".to_owned(), ParamValue::Float(f64::INFINITY));
        let mut params = TrainParams::new("resnet", "file:///data/x.parquet");
        params.hyperparameters = hp;
        let spec = JobSpec::new(JobParams::Train(params));
        assert_eq!(field_of(&spec), "params.hyperparameters.learning_rate");
    }

    #[test]
    fn job_types_parse_by_name() {
        for t in JobType::ALL {
            assert_eq!(t.as_str().parse::<JobType>(), Ok(t));
        }
        assert!("training".parse::<JobType>().is_err());
    }

    #[test]
    fn new_fields_are_checked() {
        let mut g = GenerateParams::new("physics", 10);
        g.classes = Some(1);
        assert_eq!(
            field_of(&JobSpec::new(JobParams::Generate(g.clone()))),
            "params.classes"
        );
        g.classes = Some(65);
        assert_eq!(
            field_of(&JobSpec::new(JobParams::Generate(g.clone()))),
            "params.classes"
        );
        g.classes = Some(4);
        g.task = Task::Regression;
        assert_eq!(
            field_of(&JobSpec::new(JobParams::Generate(g.clone()))),
            "params.classes"
        );
        g.classes = None;
        g.noise = 0.9;
        assert_eq!(
            field_of(&JobSpec::new(JobParams::Generate(g))),
            "params.noise"
        );
        let mut d = DistillParams::new("t", "s", "d");
        d.alpha = 1.5;
        assert_eq!(
            field_of(&JobSpec::new(JobParams::Distill(d))),
            "params.alpha"
        );
        let mut e = EvaluateParams::new("m", "d");
        e.dataset_uri = None;
        assert_eq!(
            field_of(&JobSpec::new(JobParams::Evaluate(e.clone()))),
            "params.dataset_uri"
        );
        e.suite = Some("mmlu".into());
        assert_eq!(
            JobSpec::new(JobParams::Evaluate(e.clone())).validate(),
            Ok(())
        );
        e.split = Some(crate::params::Split::Test);
        assert_eq!(
            field_of(&JobSpec::new(JobParams::Evaluate(e))),
            "params.split"
        );
        let mut t = TrainParams::new("m", "d");
        t.options.0.insert("blob".into(), "x".repeat(70_000).into());
        assert_eq!(
            field_of(&JobSpec::new(JobParams::Train(t))),
            "params.options"
        );
    }

    #[test]
    fn worker_registrations_are_bounded() {
        use crate::worker::{Gpu, WorkerInfo};
        let ok = WorkerInfo {
            id: crate::WorkerId::new("w").unwrap(),
            cpus: 8,
            memory_mb: 1024,
            gpus: vec![Gpu {
                model: "H100".into(),
                memory_mb: 81_559,
            }],
            labels: BTreeMap::from([("region".into(), "eu".into())]),
            job_types: JobType::ALL.into_iter().collect(),
        };
        assert_eq!(ok.validate(), Ok(()));
        let field = |f: &dyn Fn(&mut WorkerInfo)| {
            let mut w = ok.clone();
            f(&mut w);
            w.validate().unwrap_err().field
        };
        assert_eq!(field(&|w| w.cpus = 4_000_000_000), "cpus");
        assert_eq!(field(&|w| w.memory_mb = u64::MAX), "memory_mb");
        assert_eq!(field(&|w| w.gpus = vec![w.gpus[0].clone(); 1000]), "gpus");
        assert_eq!(
            field(&|w| w.gpus[0].model = "\u{1b}[2J".into()),
            "gpus[0].model"
        );
        assert_eq!(field(&|w| w.gpus[0].memory_mb = 0), "gpus[0].memory_mb");
        assert_eq!(
            field(&|w| { w.labels = (0..20_000).map(|i| (format!("k{i}"), "v".into())).collect() }),
            "labels"
        );
    }
}
