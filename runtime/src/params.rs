//! Each job type's parameters, defined once: names, types, defaults and limits, how they read
//! from and show as the API's JSON, and how they are checked.
//!
//! The HTTP API, the CLI, the job file a `--handler` program reads and the built-in stages all
//! go through this module, so a default or a field name cannot differ between them:
//!
//! - [`JobParams::from_json`] reads a `params` object as a user sends it: every default
//!   applied, a missing required field, an unknown name or a value of the wrong kind refused
//!   with the field's dotted path (`params.epochs`);
//! - [`JobParams::to_json`] is the same object as the API shows it and a handler reads it,
//!   every field present;
//! - [`JobType::params`] describes each field for help texts and documentation.
//!
//! Hyperparameters and options are plain JSON for people and the API, and a compact tagged
//! form in the store and on the wire (see [`ParamValue`] and [`Options`]).

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, Deserializer, Visitor};
use serde::ser::Serializer;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::spec::{JobType, SpecError};

/// `generate`: synthesise `num_samples` examples for `domain`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenerateParams {
    /// The subject of the data: `physics`, `circuits`, a problem (`pendulum`) or
    /// `domain/problem`.
    pub domain: String,
    /// How many examples to produce (1 to 10,000,000).
    pub num_samples: u64,
    /// Seed for reproducible output; the job's number when absent.
    #[serde(default)]
    pub seed: Option<u64>,
    /// What the target column is.
    #[serde(default)]
    pub task: Task,
    /// Classes of a classification target (2 to 64; default 4); regression has none.
    #[serde(default)]
    pub classes: Option<u32>,
    /// Relative standard deviation of the measurement noise (0 to 0.5).
    #[serde(default = "GenerateParams::default_noise")]
    pub noise: f64,
    /// Passed to a `--handler` program untouched.
    #[serde(default)]
    pub options: Options,
}

/// The kind of target a generated dataset has.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Task {
    /// The target binned into equally populated classes.
    #[default]
    Classification,
    /// The target as a real number.
    Regression,
}

impl GenerateParams {
    /// Classes of a classification dataset when the job names none.
    pub const DEFAULT_CLASSES: u32 = 4;
    /// Measurement noise when the job names none: 1%.
    pub const DEFAULT_NOISE: f64 = 0.01;

    /// `num_samples` examples of `domain` with every default.
    pub fn new(domain: impl Into<String>, num_samples: u64) -> Self {
        Self {
            domain: domain.into(),
            num_samples,
            seed: None,
            task: Task::Classification,
            classes: Some(Self::DEFAULT_CLASSES),
            noise: Self::DEFAULT_NOISE,
            options: Options::default(),
        }
    }

    fn default_noise() -> f64 {
        Self::DEFAULT_NOISE
    }
}

/// `audit`: check a dataset and report its shape and quality.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditParams {
    /// Where the dataset is: a path or a `nexa://`, `file://`, `s3://`, `gs://`, `az://`,
    /// `http(s)://` URI.
    pub dataset_uri: String,
    /// The column whose class balance to report.
    #[serde(default)]
    pub label_column: Option<String>,
    /// The file's expected SHA-256 (64 hex digits); the audit fails when it differs.
    #[serde(default)]
    pub expected_sha256: Option<String>,
    /// Passed to a `--handler` program untouched.
    #[serde(default)]
    pub options: Options,
}

impl AuditParams {
    /// An audit of `dataset_uri` with every default.
    pub fn new(dataset_uri: impl Into<String>) -> Self {
        Self {
            dataset_uri: dataset_uri.into(),
            label_column: None,
            expected_sha256: None,
            options: Options::default(),
        }
    }
}

/// `distill`: train `student_model` to imitate `teacher_model` on a dataset.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DistillParams {
    /// The model whose outputs are imitated.
    pub teacher_model: String,
    /// The model being trained; must differ from the teacher.
    pub student_model: String,
    /// The inputs both models see.
    pub dataset_uri: String,
    /// Softmax temperature for the teacher's outputs (greater than 0, at most 100).
    #[serde(default = "DistillParams::default_temperature")]
    pub temperature: f64,
    /// Weight of the hard-label loss, 0 to 1; the rest goes to the teacher's soft targets.
    #[serde(default = "DistillParams::default_alpha")]
    pub alpha: f64,
    /// Passes over the dataset (1 to 10,000).
    #[serde(default = "DistillParams::default_epochs")]
    pub epochs: u32,
    /// Settings for the trainer of the student, e.g. `learning_rate = 3e-4`.
    #[serde(default)]
    pub hyperparameters: BTreeMap<String, ParamValue>,
    /// How a prompt is built from a row, for LLM distillation by a `--handler` program.
    #[serde(default)]
    pub prompt_template: Option<String>,
    /// Passed to a `--handler` program untouched.
    #[serde(default)]
    pub options: Options,
}

impl DistillParams {
    /// Teacher softmax temperature when the job names none.
    pub const DEFAULT_TEMPERATURE: f64 = 2.0;
    /// Weight of the hard-label loss when the job names none.
    pub const DEFAULT_ALPHA: f64 = 0.5;
    /// Passes over the dataset when the job names none.
    pub const DEFAULT_EPOCHS: u32 = 3;

    /// A distillation of `teacher_model` into `student_model` on `dataset_uri` with every
    /// default.
    pub fn new(
        teacher_model: impl Into<String>,
        student_model: impl Into<String>,
        dataset_uri: impl Into<String>,
    ) -> Self {
        Self {
            teacher_model: teacher_model.into(),
            student_model: student_model.into(),
            dataset_uri: dataset_uri.into(),
            temperature: Self::DEFAULT_TEMPERATURE,
            alpha: Self::DEFAULT_ALPHA,
            epochs: Self::DEFAULT_EPOCHS,
            hyperparameters: BTreeMap::new(),
            prompt_template: None,
            options: Options::default(),
        }
    }

    fn default_temperature() -> f64 {
        Self::DEFAULT_TEMPERATURE
    }

    fn default_alpha() -> f64 {
        Self::DEFAULT_ALPHA
    }

    fn default_epochs() -> u32 {
        Self::DEFAULT_EPOCHS
    }
}

/// `train`: train or fine-tune `model_id` on a dataset.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainParams {
    /// The name the trained model is registered under.
    pub model_id: String,
    /// The training data.
    pub dataset_uri: String,
    /// Passes over the dataset (1 to 10,000).
    #[serde(default = "TrainParams::default_epochs")]
    pub epochs: u32,
    /// Settings for the trainer, e.g. `learning_rate = 3e-4`.
    #[serde(default)]
    pub hyperparameters: BTreeMap<String, ParamValue>,
    /// Passed to a `--handler` program untouched.
    #[serde(default)]
    pub options: Options,
}

impl TrainParams {
    /// Passes over the dataset when the job names none.
    pub const DEFAULT_EPOCHS: u32 = 1;

    /// Training `model_id` on `dataset_uri` with every default.
    pub fn new(model_id: impl Into<String>, dataset_uri: impl Into<String>) -> Self {
        Self {
            model_id: model_id.into(),
            dataset_uri: dataset_uri.into(),
            epochs: Self::DEFAULT_EPOCHS,
            hyperparameters: BTreeMap::new(),
            options: Options::default(),
        }
    }

    fn default_epochs() -> u32 {
        Self::DEFAULT_EPOCHS
    }
}

/// `evaluate`: score `model_id` on a dataset or a benchmark suite.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvaluateParams {
    /// The model to score.
    pub model_id: String,
    /// The evaluation data; a job names this, a `suite`, or both.
    #[serde(default)]
    pub dataset_uri: Option<String>,
    /// Which part of a dataset that records a split to score on; by default its test part
    /// (all of a dataset that records none).
    #[serde(default)]
    pub split: Option<Split>,
    /// A named benchmark suite (e.g. `mmlu`), for a `--handler` program.
    #[serde(default)]
    pub suite: Option<String>,
    /// Metric names, e.g. `accuracy`, `macro_f1`; empty means the stage's default set.
    #[serde(default)]
    pub metrics: Vec<String>,
    /// Passed to a `--handler` program untouched.
    #[serde(default)]
    pub options: Options,
}

/// A part of a dataset that records its train/validation/test split.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Split {
    /// The rows trained on.
    Train,
    /// The rows held out for choosing settings.
    Validation,
    /// The rows held out for the final score.
    Test,
    /// Every row.
    All,
}

impl Split {
    /// The name used in the API.
    pub const fn as_str(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Validation => "validation",
            Split::Test => "test",
            Split::All => "all",
        }
    }
}

impl EvaluateParams {
    /// Scoring `model_id` on `dataset_uri` with every default.
    pub fn new(model_id: impl Into<String>, dataset_uri: impl Into<String>) -> Self {
        Self {
            model_id: model_id.into(),
            dataset_uri: Some(dataset_uri.into()),
            split: None,
            suite: None,
            metrics: Vec::new(),
            options: Options::default(),
        }
    }
}

/// `deploy`: publish `model_id` to a serving target.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeployParams {
    /// The model to publish.
    pub model_id: String,
    /// Where to serve it, e.g. `local` or an endpoint name.
    #[serde(default = "DeployParams::default_target")]
    pub target: String,
    /// The region to serve from, e.g. `eu-west`: workers labelled `region` with this value.
    #[serde(default)]
    pub region: Option<String>,
    /// How many serving replicas (1 to 64).
    #[serde(default = "DeployParams::default_replicas")]
    pub replicas: u32,
    /// Passed to a `--handler` program untouched.
    #[serde(default)]
    pub options: Options,
}

impl DeployParams {
    /// The serving target when the job names none.
    pub const DEFAULT_TARGET: &'static str = "local";
    /// Serving replicas when the job names none.
    pub const DEFAULT_REPLICAS: u32 = 1;

    /// Publishing `model_id` with every default.
    pub fn new(model_id: impl Into<String>) -> Self {
        Self {
            model_id: model_id.into(),
            target: Self::DEFAULT_TARGET.to_owned(),
            region: None,
            replicas: Self::DEFAULT_REPLICAS,
            options: Options::default(),
        }
    }

    fn default_target() -> String {
        Self::DEFAULT_TARGET.to_owned()
    }

    fn default_replicas() -> u32 {
        Self::DEFAULT_REPLICAS
    }
}

/// A job type together with its parameters.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum JobParams {
    /// See [`GenerateParams`].
    Generate(GenerateParams),
    /// See [`AuditParams`].
    Audit(AuditParams),
    /// See [`DistillParams`].
    Distill(DistillParams),
    /// See [`TrainParams`].
    Train(TrainParams),
    /// See [`EvaluateParams`].
    Evaluate(EvaluateParams),
    /// See [`DeployParams`].
    Deploy(DeployParams),
}

impl JobParams {
    /// The job type these parameters belong to.
    pub fn job_type(&self) -> JobType {
        match self {
            JobParams::Generate(_) => JobType::Generate,
            JobParams::Audit(_) => JobType::Audit,
            JobParams::Distill(_) => JobType::Distill,
            JobParams::Train(_) => JobType::Train,
            JobParams::Evaluate(_) => JobType::Evaluate,
            JobParams::Deploy(_) => JobType::Deploy,
        }
    }

    /// The options passed to a `--handler` program.
    pub fn options(&self) -> &Options {
        match self {
            JobParams::Generate(p) => &p.options,
            JobParams::Audit(p) => &p.options,
            JobParams::Distill(p) => &p.options,
            JobParams::Train(p) => &p.options,
            JobParams::Evaluate(p) => &p.options,
            JobParams::Deploy(p) => &p.options,
        }
    }

    /// Reads the `params` object of a `job_type` job as the API takes it: absent fields (and
    /// fields set to `null`) get their defaults; a missing required field, a name the type
    /// does not take or a value of the wrong kind is refused, naming the field. The limits
    /// of each value are checked by [`JobSpec::validate`](crate::JobSpec::validate).
    pub fn from_json(job_type: JobType, params: Map<String, Value>) -> Result<Self, SpecError> {
        let fields = job_type.params();
        let mut map = Map::new();
        for (key, value) in params {
            if !fields.iter().any(|f| f.name == key) {
                let names: Vec<&str> = fields.iter().map(|f| f.name).collect();
                return Err(SpecError::new(
                    format!("params.{key}"),
                    format!(
                        "{job_type} jobs take no parameter {key:?} (they take: {})",
                        names.join(", ")
                    ),
                ));
            }
            if !value.is_null() {
                map.insert(key, whole(value));
            }
        }
        if let Some(missing) = fields
            .iter()
            .find(|f| f.required && !map.contains_key(f.name))
        {
            return Err(SpecError::new(
                format!("params.{}", missing.name),
                format!("is required for {job_type} jobs"),
            ));
        }
        let given = map.clone();
        let value = Value::Object(map);
        let typed = |e: SpecError| plain(e, &given, fields);
        let params = match job_type {
            JobType::Generate => JobParams::Generate(self::typed(value).map_err(typed)?),
            JobType::Audit => JobParams::Audit(self::typed(value).map_err(typed)?),
            JobType::Distill => JobParams::Distill(self::typed(value).map_err(typed)?),
            JobType::Train => JobParams::Train(self::typed(value).map_err(typed)?),
            JobType::Evaluate => JobParams::Evaluate(self::typed(value).map_err(typed)?),
            JobType::Deploy => JobParams::Deploy(self::typed(value).map_err(typed)?),
        };
        Ok(params.with_defaults())
    }

    /// Fills in defaults that depend on other fields (a classification's classes).
    fn with_defaults(mut self) -> Self {
        if let JobParams::Generate(p) = &mut self
            && p.task == Task::Classification
            && p.classes.is_none()
        {
            p.classes = Some(GenerateParams::DEFAULT_CLASSES);
        }
        self
    }

    /// The `params` object as the API shows it and a handler reads it: every field,
    /// hyperparameters and options as plain JSON.
    pub fn to_json(&self) -> Value {
        let value = match self {
            JobParams::Generate(p) => serde_json::to_value(p),
            JobParams::Audit(p) => serde_json::to_value(p),
            JobParams::Distill(p) => serde_json::to_value(p),
            JobParams::Train(p) => serde_json::to_value(p),
            JobParams::Evaluate(p) => serde_json::to_value(p),
            JobParams::Deploy(p) => serde_json::to_value(p),
        };
        // Params hold only strings, finite numbers, lists and maps with string keys.
        value.unwrap_or_else(|e| Value::String(format!("params do not show as JSON: {e}")))
    }
}

/// A number written with a fraction or an exponent that is whole (`1e3`, `1000.0`) as the
/// integer it is, so that an integer parameter takes it; anything else as it is.
fn whole(value: Value) -> Value {
    const SAFE: f64 = 9_007_199_254_740_992.0; // 2^53: every integer below is exact.
    match value.as_f64() {
        Some(x) if !value.is_i64() && !value.is_u64() && x.fract() == 0.0 && x.abs() < SAFE => {
            if x >= 0.0 {
                Value::from(x as u64)
            } else {
                Value::from(x as i64)
            }
        }
        _ => value,
    }
}

/// A type error of a top-level parameter in plain words, with the value given: "must be a
/// whole number, not -1" rather than serde's "invalid value: integer `-1`, expected u32".
fn plain(e: SpecError, given: &Map<String, Value>, fields: &[ParamField]) -> SpecError {
    let Some(name) = e.field.strip_prefix("params.") else {
        return e;
    };
    let (Some(value), Some(field)) = (given.get(name), fields.iter().find(|f| f.name == name))
    else {
        return e;
    };
    let expected = e.reason.rsplit("expected ").next().unwrap_or_default();
    let negative = value.as_f64().is_some_and(|x| x < 0.0);
    let wanted = if ["u8", "u16", "u32", "u64", "usize"].contains(&expected) {
        if negative {
            "0 or more"
        } else {
            "a whole number"
        }
    } else if ["i32", "i64"].contains(&expected) {
        "a whole number"
    } else if ["f32", "f64"].contains(&expected) {
        "a number"
    } else if expected.starts_with("a string") {
        "text"
    } else if expected.starts_with("a boolean") {
        "true or false"
    } else {
        return e;
    };
    SpecError::new(
        e.field.clone(),
        format!("must be {wanted}; got {value} ({})", field.doc),
    )
}

fn typed<T: serde::de::DeserializeOwned>(value: Value) -> Result<T, SpecError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let field = if path == "." {
            "params".to_owned()
        } else {
            format!("params.{path}")
        };
        SpecError::new(field, e.into_inner().to_string())
    })
}

/// One field of a job type's parameters, for help texts and documentation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ParamField {
    /// Its name in the API's `params`.
    pub name: &'static str,
    /// Whether a job must give it.
    pub required: bool,
    /// What it holds, its limits and its default.
    pub doc: &'static str,
}

const fn required(name: &'static str, doc: &'static str) -> ParamField {
    ParamField {
        name,
        required: true,
        doc,
    }
}

const fn optional(name: &'static str, doc: &'static str) -> ParamField {
    ParamField {
        name,
        required: false,
        doc,
    }
}

const OPTIONS: ParamField = optional(
    "options",
    "an object passed to a --handler program untouched; built-in stages take none",
);

const HYPERPARAMETERS: ParamField = optional(
    "hyperparameters",
    "trainer settings: numbers, strings or booleans by name (the built-in stage lists the ones it knows)",
);

const GENERATE: [ParamField; 7] = [
    required(
        "domain",
        "physics, circuits, a problem (pendulum) or domain/problem",
    ),
    required("num_samples", "rows to make, 1 to 10,000,000"),
    optional(
        "seed",
        "seed of the data and its split (default: the job's number)",
    ),
    optional("task", "classification (default) or regression"),
    optional(
        "classes",
        "classes of a classification target, 2 to 64 (default 4)",
    ),
    optional(
        "noise",
        "relative standard deviation of the measurement noise, 0 to 0.5 (default 0.01)",
    ),
    OPTIONS,
];

const AUDIT: [ParamField; 4] = [
    required(
        "dataset_uri",
        "a CSV, JSON Lines or Parquet file: a path or a nexa://, file://, s3://, gs://, az://, http(s):// URI",
    ),
    optional("label_column", "the column whose class balance to report"),
    optional(
        "expected_sha256",
        "the file's SHA-256 (64 hex digits); the audit fails when it differs",
    ),
    OPTIONS,
];

const DISTILL: [ParamField; 9] = [
    required("teacher_model", "a registered model, name or name:version"),
    required(
        "student_model",
        "the name the student is registered under: a preset, a registered model to go on from, or a new name",
    ),
    required("dataset_uri", "the data both models see"),
    optional(
        "temperature",
        "softmax temperature of the teacher's outputs, above 0 and at most 100 (default 2)",
    ),
    optional(
        "alpha",
        "weight of the hard-label loss, 0 to 1; the rest goes to the soft targets (default 0.5)",
    ),
    optional("epochs", "passes over the data, 1 to 10,000 (default 3)"),
    HYPERPARAMETERS,
    optional(
        "prompt_template",
        "how a prompt is built from a row, for LLM distillation by a --handler program",
    ),
    OPTIONS,
];

const TRAIN: [ParamField; 5] = [
    required("model_id", "the name the model is registered under"),
    required("dataset_uri", "the training data"),
    optional("epochs", "passes over the data, 1 to 10,000 (default 1)"),
    HYPERPARAMETERS,
    OPTIONS,
];

const EVALUATE: [ParamField; 6] = [
    required(
        "model_id",
        "a registered model (name or name:version) or a model file's URI",
    ),
    optional(
        "dataset_uri",
        "the data to score on (this, a suite, or both)",
    ),
    optional(
        "split",
        "train, validation, test or all (default: test when the dataset records a split)",
    ),
    optional("suite", "a named benchmark suite, for a --handler program"),
    optional(
        "metrics",
        "metric names to report (default: all the stage computes)",
    ),
    OPTIONS,
];

const DEPLOY: [ParamField; 5] = [
    required("model_id", "the model to serve"),
    optional("target", "where to serve it (default local)"),
    optional("region", "serve from workers labelled region=REGION"),
    optional("replicas", "serving replicas, 1 to 64 (default 1)"),
    OPTIONS,
];

impl JobType {
    /// The fields of this type's `params`, in the order the API documents them.
    pub const fn params(self) -> &'static [ParamField] {
        match self {
            JobType::Generate => &GENERATE,
            JobType::Audit => &AUDIT,
            JobType::Distill => &DISTILL,
            JobType::Train => &TRAIN,
            JobType::Evaluate => &EVALUATE,
            JobType::Deploy => &DEPLOY,
        }
    }
}

/// One hyperparameter value. As JSON it is a bare boolean, number or string; stored and sent
/// between nodes it keeps its kind.
#[derive(Clone, Debug, PartialEq)]
pub enum ParamValue {
    /// `true` or `false`.
    Bool(bool),
    /// A whole number.
    Int(i64),
    /// A finite real number.
    Float(f64),
    /// Text, at most 1,024 bytes.
    Text(String),
}

/// The tagged form of [`ParamValue`] in the store and on the wire.
#[derive(Serialize, Deserialize)]
#[serde(rename = "ParamValue")]
enum TaggedValue {
    Bool(bool),
    Int(i64),
    Float(f64),
    Text(String),
}

impl Serialize for ParamValue {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if serializer.is_human_readable() {
            return match self {
                ParamValue::Bool(b) => serializer.serialize_bool(*b),
                ParamValue::Int(i) => serializer.serialize_i64(*i),
                ParamValue::Float(f) => serializer.serialize_f64(*f),
                ParamValue::Text(t) => serializer.serialize_str(t),
            };
        }
        let tagged = match self {
            ParamValue::Bool(b) => TaggedValue::Bool(*b),
            ParamValue::Int(i) => TaggedValue::Int(*i),
            ParamValue::Float(f) => TaggedValue::Float(*f),
            ParamValue::Text(t) => TaggedValue::Text(t.clone()),
        };
        tagged.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for ParamValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        if !deserializer.is_human_readable() {
            return Ok(match TaggedValue::deserialize(deserializer)? {
                TaggedValue::Bool(b) => ParamValue::Bool(b),
                TaggedValue::Int(i) => ParamValue::Int(i),
                TaggedValue::Float(f) => ParamValue::Float(f),
                TaggedValue::Text(t) => ParamValue::Text(t),
            });
        }
        struct Plain;
        impl Visitor<'_> for Plain {
            type Value = ParamValue;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a number, string or boolean")
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<ParamValue, E> {
                Ok(ParamValue::Bool(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<ParamValue, E> {
                Ok(ParamValue::Int(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<ParamValue, E> {
                Ok(i64::try_from(v).map_or(ParamValue::Float(v as f64), ParamValue::Int))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<ParamValue, E> {
                Ok(ParamValue::Float(v))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ParamValue, E> {
                Ok(ParamValue::Text(v.to_owned()))
            }
        }
        deserializer.deserialize_any(Plain)
    }
}

/// Settings for a `--handler` program, passed through untouched: any JSON object. As JSON it
/// is that object; stored and sent between nodes, its JSON text.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Options(pub Map<String, Value>);

impl Options {
    /// Largest options object accepted, as JSON text.
    pub const MAX_BYTES: usize = 64 * 1024;

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The names given, in order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.0.keys().map(String::as_str)
    }

    /// The options as JSON text.
    pub fn to_json_text(&self) -> String {
        Value::Object(self.0.clone()).to_string()
    }
}

impl Serialize for Options {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if serializer.is_human_readable() {
            self.0.serialize(serializer)
        } else {
            serializer.serialize_str(&self.to_json_text())
        }
    }
}

impl<'de> Deserialize<'de> for Options {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        if deserializer.is_human_readable() {
            return Map::deserialize(deserializer).map(Options);
        }
        let text = String::deserialize(deserializer)?;
        match serde_json::from_str(&text) {
            Ok(Value::Object(map)) => Ok(Options(map)),
            Ok(_) => Err(de::Error::custom("options are not a JSON object")),
            Err(e) => Err(de::Error::custom(format!("options are not JSON: {e}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn parse(job_type: JobType, params: Value) -> Result<JobParams, SpecError> {
        let Value::Object(map) = params else {
            panic!("params must be an object")
        };
        JobParams::from_json(job_type, map)
    }

    fn minimal(job_type: JobType) -> Value {
        match job_type {
            JobType::Generate => json!({"domain": "physics", "num_samples": 10}),
            JobType::Audit => json!({"dataset_uri": "d.csv"}),
            JobType::Distill => {
                json!({"teacher_model": "t", "student_model": "s", "dataset_uri": "d"})
            }
            JobType::Train => json!({"model_id": "m", "dataset_uri": "d"}),
            JobType::Evaluate => json!({"model_id": "m"}),
            JobType::Deploy => json!({"model_id": "m"}),
        }
    }

    #[test]
    fn the_field_table_names_exactly_the_fields_shown() {
        for t in JobType::ALL {
            let shown = parse(t, minimal(t)).unwrap().to_json();
            let shown: Vec<&str> = shown
                .as_object()
                .unwrap()
                .keys()
                .map(|k| k.as_str())
                .collect();
            let mut documented: Vec<&str> = t.params().iter().map(|f| f.name).collect();
            documented.sort_unstable();
            assert_eq!(shown, documented, "{t}");
        }
    }

    #[test]
    fn defaults_are_applied_once_and_shown() {
        let p = parse(JobType::Distill, minimal(JobType::Distill)).unwrap();
        assert_eq!(p, JobParams::Distill(DistillParams::new("t", "s", "d")));
        let shown = p.to_json();
        assert_eq!(shown["temperature"], json!(2.0));
        assert_eq!(shown["alpha"], json!(0.5));
        assert_eq!(shown["epochs"], json!(3));
        assert_eq!(shown["options"], json!({}));
        let g = parse(JobType::Generate, minimal(JobType::Generate)).unwrap();
        assert_eq!(g, JobParams::Generate(GenerateParams::new("physics", 10)));
        assert_eq!(g.to_json()["classes"], json!(4));
        assert_eq!(g.to_json()["task"], json!("classification"));
        let r = parse(
            JobType::Generate,
            json!({"domain": "physics", "num_samples": 10, "task": "regression"}),
        )
        .unwrap();
        assert_eq!(r.to_json()["classes"], Value::Null);
        assert_eq!(
            parse(JobType::Deploy, minimal(JobType::Deploy)).unwrap(),
            JobParams::Deploy(DeployParams::new("m"))
        );
    }

    #[test]
    fn what_is_shown_reads_back_the_same() {
        let mut t = TrainParams::new("m", "s3://b/k");
        t.hyperparameters
            .insert("learning_rate".into(), ParamValue::Float(0.5));
        t.hyperparameters.insert("batch".into(), ParamValue::Int(7));
        t.hyperparameters
            .insert("opt".into(), ParamValue::Text("adam".into()));
        t.hyperparameters
            .insert("amp".into(), ParamValue::Bool(true));
        t.options.0.insert("nested".into(), json!({"a": [1, 2]}));
        let params = JobParams::Train(t);
        let shown = params.to_json();
        assert_eq!(shown["hyperparameters"]["learning_rate"], json!(0.5));
        assert_eq!(shown["hyperparameters"]["batch"], json!(7));
        assert_eq!(shown["options"]["nested"]["a"][1], json!(2));
        assert_eq!(parse(JobType::Train, shown).unwrap(), params);
    }

    #[test]
    fn bad_params_name_the_field() {
        let field = |t, v| parse(t, v).unwrap_err().field;
        assert_eq!(
            field(JobType::Generate, json!({"domain": "x"})),
            "params.num_samples"
        );
        let err = parse(
            JobType::Train,
            json!({"model_id": "m", "dataset_uri": "d", "lr": 1}),
        )
        .unwrap_err();
        assert_eq!(err.field, "params.lr");
        assert!(
            err.reason.contains("train jobs take no parameter \"lr\""),
            "{err}"
        );
        assert!(err.reason.contains("hyperparameters"), "{err}");
        let err = parse(
            JobType::Train,
            json!({"model_id": "m", "dataset_uri": "d", "epochs": "3"}),
        )
        .unwrap_err();
        assert_eq!(err.field, "params.epochs");
        assert!(
            err.reason.starts_with("must be a whole number; got \"3\""),
            "{err}"
        );
        let err = parse(
            JobType::Train,
            json!({"model_id": "m", "dataset_uri": "d", "epochs": -1}),
        )
        .unwrap_err();
        assert!(
            err.reason.starts_with("must be 0 or more; got -1 ("),
            "{err}"
        );
        // A whole number written with an exponent or a fraction is taken as one.
        let p = parse(
            JobType::Generate,
            json!({"domain": "physics", "num_samples": 1e3}),
        )
        .unwrap();
        let JobParams::Generate(p) = p else {
            panic!("{p:?}")
        };
        assert_eq!(p.num_samples, 1000);
        let err = parse(
            JobType::Generate,
            json!({"domain": "physics", "num_samples": 2.5}),
        )
        .unwrap_err();
        assert!(
            err.reason.starts_with("must be a whole number; got 2.5"),
            "{err}"
        );
        let err = parse(
            JobType::Train,
            json!({"model_id": "m", "dataset_uri": "d", "hyperparameters": {"x": [1]}}),
        )
        .unwrap_err();
        assert_eq!(err.field, "params.hyperparameters.x");
        assert!(err.reason.contains("a number, string or boolean"), "{err}");
        assert_eq!(
            field(
                JobType::Evaluate,
                json!({"model_id": "m", "split": "holdout"})
            ),
            "params.split"
        );
        assert_eq!(
            field(JobType::Deploy, json!({"model_id": "m", "options": [1]})),
            "params.options"
        );
        // null is the same as absent
        assert_eq!(
            parse(JobType::Deploy, json!({"model_id": "m", "target": null})).unwrap(),
            JobParams::Deploy(DeployParams::new("m"))
        );
    }

    #[test]
    fn stored_form_keeps_kinds_and_options() {
        let mut d = DistillParams::new("t", "s", "d");
        d.hyperparameters.insert("lr".into(), ParamValue::Int(3));
        d.options.0.insert("k".into(), json!([1, "two", null]));
        d.prompt_template = Some("Q: {question}".into());
        let params = JobParams::Distill(d);
        let config = bincode::config::standard();
        let bytes = bincode::serde::encode_to_vec(&params, config).unwrap();
        let (back, _): (JobParams, usize) =
            bincode::serde::decode_from_slice(&bytes, config).unwrap();
        assert_eq!(back, params);
    }
}
