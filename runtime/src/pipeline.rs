//! Pipelines: the lifecycle declared once, as named steps.
//!
//! A [`PipelineSpec`] names its steps. A step is a job (a job type and its params, as the API
//! takes them) or a [`GateSpec`] on an earlier step's result. A job's params may refer to
//! earlier steps' outputs with `${step.output}`:
//!
//! | reference | what | from |
//! |---|---|---|
//! | `${s.artifacts.NAME}` | the URI of an artifact the step made | `generate` (`dataset`), `train` and `distill` (`model`; `distill` also `teacher_labelled`) |
//! | `${s.model}` | the model version the step registered, as `name:N` | `train`, `distill` |
//! | `${s.metrics.NAME}` | a number of its result | `audit`, `train`, `distill`, `evaluate` |
//! | `${s.job_id}` | the step's job | any job step |
//!
//! A reference that is the whole value takes the output's own type (a number stays a
//! number); inside a longer string it is written into the string. A step needs the steps it
//! refers to, and those in its `needs`.
//!
//! [`PipelineSpec::plan`] checks a spec before anything runs — unknown steps, cycles, outputs a
//! step type does not make, params of the wrong type — and names each fault by its path
//! (`steps.train.params.dataset_uri`). The plan is pure: running it (submitting jobs as their
//! inputs exist, checking gates, reusing unchanged steps) is the control plane's.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::{JobParams, JobSpec, JobType, SpecError};

/// A pipeline as a user declares it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineSpec {
    /// A name for people (`physics`): 1 to 128 characters.
    pub name: String,
    /// The steps by name.
    pub steps: BTreeMap<String, StepSpec>,
}

/// One step: a job, or a gate.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StepSpec {
    /// The job type of a job step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_type: Option<String>,
    /// Its params, as `POST /api/jobs` takes them, with `${step.output}` references.
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub params: Map<String, Value>,
    /// A gate step's checks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gate: Option<GateSpec>,
    /// Steps that must succeed first, besides those its params refer to.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub needs: Vec<String>,
    /// Failures of the step's job allowed (1 to 100); the job's default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<u32>,
    /// How long one attempt may run, in seconds; the job's default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_seconds: Option<u64>,
    /// GPUs the step's job needs (0 to 64).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpus: Option<u32>,
}

/// Checks on an earlier step's result. A gate passes when every check given holds; a failed
/// gate stops the steps after it, with its reasons, and is not retried.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GateSpec {
    /// The step whose result is checked: an `audit` or an `evaluate` step.
    pub on: String,
    /// Audit: at most this fraction of cells missing (0 to 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_missing: Option<f64>,
    /// Audit: at most this fraction of rows duplicates of earlier rows (0 to 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_duplicates: Option<f64>,
    /// Audit: at least this many rows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_rows: Option<u64>,
    /// Audit: the largest class at most this many times the smallest (from 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_class_ratio: Option<f64>,
    /// Audit: no validation or test row is also a train row (rows compared whole). A
    /// contaminated evaluation makes every later number meaningless.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub no_overlap: bool,
    /// Evaluate: each named metric at least this value (`{"accuracy": 0.8}`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub min_metrics: BTreeMap<String, f64>,
    /// Evaluate: at most `points` below another evaluate step's `metric`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub within: Option<WithinSpec>,
    /// Evaluate: better than the version an endpoint serves now, on the same data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub better_than_deployed: Option<DeployedSpec>,
}

/// A metric better than the deployed version's by a margin, before a deploy replaces it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeployedSpec {
    /// The endpoint whose model is compared with: a deploy job's target, or a model's name.
    pub endpoint: String,
    /// The metric compared (`accuracy`).
    pub metric: String,
    /// How much better it must be, in the metric's units (0: at least as good).
    #[serde(default)]
    pub margin: f64,
}

/// The key of [`GateSpec::check`]'s results under which the control plane gives the
/// evaluation of the version an endpoint serves (for `better_than_deployed`): absent when
/// nothing is deployed there; without the metric when that version has no evaluation of the
/// same data.
pub const DEPLOYED: &str = "@deployed";

/// A metric within a margin of another evaluation's (a student near its teacher).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WithinSpec {
    /// The other `evaluate` step.
    pub of: String,
    /// The metric compared (`accuracy`).
    pub metric: String,
    /// How far below the other this one may be, in the metric's units (0.02 for two
    /// accuracy points).
    pub points: f64,
}

/// A pipeline checked and ordered, ready to run.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    /// Every step, in an order where each comes after the steps it needs (ties by name).
    pub order: Vec<String>,
    /// The steps each step needs (its references, its `needs`, and a gate's steps).
    pub needs: BTreeMap<String, BTreeSet<String>>,
}

/// What a pipeline step is, once checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StepKind {
    /// A job of this type.
    Job(JobType),
    /// A gate.
    Gate,
}

/// The most steps a pipeline may have.
pub const MAX_STEPS: usize = 256;

impl Plan {
    /// `from` and every step that needs it, directly or not: the steps a rerun from `from`
    /// runs again.
    pub fn downstream(&self, from: &str) -> BTreeSet<String> {
        let mut out = BTreeSet::from([from.to_owned()]);
        for step in &self.order {
            if self.needs[step].iter().any(|n| out.contains(n)) {
                out.insert(step.clone());
            }
        }
        out
    }
}

impl PipelineSpec {
    /// Checks every step and orders them; the first fault found, named by its path.
    pub fn plan(&self) -> Result<Plan, SpecError> {
        if self.name.trim().is_empty() || self.name.chars().count() > 128 {
            return Err(SpecError::new("name", "must be 1 to 128 characters"));
        }
        if self.steps.is_empty() {
            return Err(SpecError::new(
                "steps",
                "a pipeline needs at least one step",
            ));
        }
        if self.steps.len() > MAX_STEPS {
            return Err(SpecError::new(
                "steps",
                format!(
                    "{} steps; at most {MAX_STEPS} are allowed",
                    self.steps.len()
                ),
            ));
        }
        let mut kinds = BTreeMap::new();
        for (name, step) in &self.steps {
            check_step_name(name)?;
            kinds.insert(name.as_str(), step.kind(name)?);
        }
        let mut needs: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (name, step) in &self.steps {
            let at = format!("steps.{name}");
            let mut wants = BTreeSet::new();
            for (i, need) in step.needs.iter().enumerate() {
                let path = format!("{at}.needs[{i}]");
                known(&kinds, need, &path)?;
                if need == name {
                    return Err(SpecError::new(path, "a step cannot need itself"));
                }
                wants.insert(need.clone());
            }
            match &step.gate {
                Some(gate) => {
                    gate.check_values(&at)?;
                    for (path, on) in gate.steps(&at) {
                        let kind = known(&kinds, on, &path)?;
                        let wanted = gate.checks_on();
                        if kind != StepKind::Job(wanted) {
                            return Err(SpecError::new(
                                path,
                                format!(
                                    "{on:?} is {kind}; these checks read an {wanted} step's result"
                                ),
                            ));
                        }
                        wants.insert(on.to_owned());
                    }
                }
                None => {
                    let StepKind::Job(job_type) = kinds[name.as_str()] else {
                        return Err(SpecError::new(at, "is neither a job nor a gate"));
                    };
                    let mut typed = Map::new();
                    for (key, value) in &step.params {
                        let path = format!("{at}.params.{key}");
                        let stand_in = references(value, &path, &kinds, &mut wants)?;
                        if wants.contains(name) {
                            return Err(SpecError::new(
                                path,
                                format!("step {name:?} refers to its own outputs"),
                            ));
                        }
                        typed.insert(key.clone(), stand_in);
                    }
                    let params = JobParams::from_json(job_type, typed)
                        .map_err(|e| SpecError::new(format!("{at}.{}", e.field), e.reason))?;
                    let mut spec = JobSpec::new(params);
                    step.apply(&mut spec);
                    spec.validate()
                        .map_err(|e| SpecError::new(format!("{at}.{}", e.field), e.reason))?;
                }
            }
            if wants.contains(name) {
                return Err(SpecError::new(
                    at,
                    format!("step {name:?} reads its own result"),
                ));
            }
            needs.insert(name.clone(), wants);
        }
        let order = order(&needs)?;
        Ok(Plan { order, needs })
    }
}

impl StepSpec {
    /// A job of its type, or a gate; refused when it is both, or neither.
    pub fn kind(&self, name: &str) -> Result<StepKind, SpecError> {
        let at = format!("steps.{name}");
        match (&self.job_type, &self.gate) {
            (Some(_), Some(_)) => Err(SpecError::new(
                at,
                "is a job (job_type) and a gate; give one of them",
            )),
            (None, None) => Err(SpecError::new(
                at,
                "give a job_type (generate, audit, distill, train, evaluate, deploy) or a gate",
            )),
            (None, Some(_)) => {
                if !self.params.is_empty() {
                    return Err(SpecError::new(
                        format!("{at}.params"),
                        "a gate takes no params; its checks go in `gate`",
                    ));
                }
                if self.max_attempts.is_some() || self.timeout_seconds.is_some() || self.gpus.is_some()
                {
                    return Err(SpecError::new(
                        at,
                        "a gate runs no job: max_attempts, timeout_seconds and gpus are for job steps",
                    ));
                }
                Ok(StepKind::Gate)
            }
            (Some(t), None) => t.parse().map(StepKind::Job).map_err(|_| {
                SpecError::new(
                    format!("{at}.job_type"),
                    format!(
                        "{t:?} is not a job type (one of: generate, audit, distill, train, evaluate, deploy)"
                    ),
                )
            }),
        }
    }

    /// The job of this step (named `name`) with `params`, its references resolved
    /// ([`resolve`]); refused as [`PipelineSpec::plan`] would, by path.
    pub fn job_spec(&self, name: &str, params: Map<String, Value>) -> Result<JobSpec, SpecError> {
        let at = format!("steps.{name}");
        let StepKind::Job(job_type) = self.kind(name)? else {
            return Err(SpecError::new(at, "is a gate, which runs no job"));
        };
        let params = JobParams::from_json(job_type, params)
            .map_err(|e| SpecError::new(format!("{at}.{}", e.field), e.reason))?;
        let mut spec = JobSpec::new(params);
        self.apply(&mut spec);
        spec.validate()
            .map_err(|e| SpecError::new(format!("{at}.{}", e.field), e.reason))?;
        Ok(spec)
    }

    /// What makes two runs of this step the same work: its job type, its params with their
    /// references resolved (artifacts are named by their content, so the inputs' checksums
    /// are in them), and its job options, as one canonical JSON text (keys sorted).
    pub fn reuse_key(&self, resolved: &Map<String, Value>) -> String {
        fn canonical(value: &Value) -> Value {
            match value {
                Value::Object(map) => {
                    let sorted: BTreeMap<&String, Value> =
                        map.iter().map(|(k, v)| (k, canonical(v))).collect();
                    Value::Object(sorted.into_iter().map(|(k, v)| (k.clone(), v)).collect())
                }
                Value::Array(items) => Value::Array(items.iter().map(canonical).collect()),
                other => other.clone(),
            }
        }
        let key = serde_json::json!({
            "job_type": self.job_type,
            "params": canonical(&Value::Object(resolved.clone())),
            "max_attempts": self.max_attempts,
            "timeout_seconds": self.timeout_seconds,
            "gpus": self.gpus,
        });
        key.to_string()
    }

    /// The job options of the step on `spec`.
    pub fn apply(&self, spec: &mut JobSpec) {
        if let Some(n) = self.max_attempts {
            spec.max_attempts = n;
        }
        if let Some(s) = self.timeout_seconds {
            spec.timeout = std::time::Duration::from_secs(s);
        }
        if let Some(g) = self.gpus {
            spec.resources.gpus = g;
        }
    }
}

impl GateSpec {
    /// The steps the gate reads, each with its path.
    fn steps(&self, at: &str) -> Vec<(String, &str)> {
        let mut out = vec![(format!("{at}.gate.on"), self.on.as_str())];
        if let Some(w) = &self.within {
            out.push((format!("{at}.gate.within.of"), w.of.as_str()));
        }
        out
    }

    /// The job type whose results the gate's checks read.
    fn checks_on(&self) -> JobType {
        if self.audit_checks() {
            JobType::Audit
        } else {
            JobType::Evaluate
        }
    }

    fn audit_checks(&self) -> bool {
        self.max_missing.is_some()
            || self.max_duplicates.is_some()
            || self.min_rows.is_some()
            || self.max_class_ratio.is_some()
            || self.no_overlap
    }

    fn eval_checks(&self) -> bool {
        !self.min_metrics.is_empty() || self.within.is_some() || self.better_than_deployed.is_some()
    }

    fn check_values(&self, at: &str) -> Result<(), SpecError> {
        match (self.audit_checks(), self.eval_checks()) {
            (false, false) => {
                return Err(SpecError::new(
                    format!("{at}.gate"),
                    "a gate needs a check: max_missing, max_duplicates, min_rows, max_class_ratio or \
                     no_overlap on an audit; min_metrics, within or better_than_deployed on an \
                     evaluation",
                ));
            }
            (true, true) => {
                return Err(SpecError::new(
                    format!("{at}.gate"),
                    "checks of an audit and of an evaluation in one gate; make two gates",
                ));
            }
            _ => {}
        }
        let fraction = |name: &str, v: Option<f64>| match v {
            Some(x) if !(0.0..=1.0).contains(&x) => Err(SpecError::new(
                format!("{at}.gate.{name}"),
                format!("{x} is not a fraction from 0 to 1"),
            )),
            _ => Ok(()),
        };
        fraction("max_missing", self.max_missing)?;
        fraction("max_duplicates", self.max_duplicates)?;
        if let Some(r) = self.max_class_ratio
            && !(r >= 1.0 && r.is_finite())
        {
            return Err(SpecError::new(
                format!("{at}.gate.max_class_ratio"),
                format!("{r} is not a ratio from 1"),
            ));
        }
        for (metric, min) in &self.min_metrics {
            if !min.is_finite() {
                return Err(SpecError::new(
                    format!("{at}.gate.min_metrics.{metric}"),
                    "must be a finite number",
                ));
            }
        }
        if let Some(d) = &self.better_than_deployed
            && !d.margin.is_finite()
        {
            return Err(SpecError::new(
                format!("{at}.gate.better_than_deployed.margin"),
                "must be a finite number",
            ));
        }
        if let Some(w) = &self.within
            && !(w.points >= 0.0 && w.points.is_finite())
        {
            return Err(SpecError::new(
                format!("{at}.gate.within.points"),
                format!("{} is not a margin from 0", w.points),
            ));
        }
        Ok(())
    }

    /// The gate's verdict on the results of the steps it reads (`results[step]`, each the
    /// step's result document: an audit's report, an evaluation's metrics): every reason it
    /// fails, or none when it passes.
    pub fn check(&self, results: &BTreeMap<String, StepOutput>) -> Vec<String> {
        let mut failed = Vec::new();
        let Some(on) = results.get(&self.on) else {
            return vec![format!("step {:?} has no result to check", self.on)];
        };
        if self.audit_checks() {
            let report = on.result.as_ref();
            let number = |key: &str| report.and_then(|r| r.get(key)).and_then(Value::as_f64);
            let rows = number("rows").unwrap_or(0.0);
            let columns = report
                .and_then(|r| r.get("columns"))
                .and_then(Value::as_array)
                .map_or(0, Vec::len) as f64;
            if let Some(min) = self.min_rows
                && rows < min as f64
            {
                failed.push(format!("{rows} rows; at least {min} wanted"));
            }
            if let Some(max) = self.max_missing {
                let cells = rows * columns;
                let share = number("missing_values").unwrap_or(0.0) / cells.max(1.0);
                if share > max {
                    failed.push(format!(
                        "{} of cells missing; at most {} allowed",
                        percent(share),
                        percent(max)
                    ));
                }
            }
            if let Some(max) = self.max_duplicates {
                let share = number("duplicate_rows").unwrap_or(0.0) / rows.max(1.0);
                if share > max {
                    failed.push(format!(
                        "{} of rows are duplicates; at most {} allowed",
                        percent(share),
                        percent(max)
                    ));
                }
            }
            if let Some(max) = self.max_class_ratio {
                match report
                    .and_then(|r| r.get("label"))
                    .and_then(|l| l.get("imbalance_ratio"))
                    .and_then(Value::as_f64)
                {
                    Some(ratio) if ratio > max => failed.push(format!(
                        "the largest class has {ratio:.2} times the rows of the smallest; at \
                         most {max} allowed"
                    )),
                    Some(_) => {}
                    None => failed
                        .push("the audit has no class balance (give it a label_column)".to_owned()),
                }
            }
            if self.no_overlap {
                match report
                    .and_then(|r| r.get("split_overlap"))
                    .filter(|o| !o.is_null())
                {
                    Some(o) => {
                        let n = |k: &str| o.get(k).and_then(Value::as_u64).unwrap_or(0);
                        let (validation, test) = (n("validation_in_train"), n("test_in_train"));
                        if validation + test > 0 {
                            failed.push(format!(
                                "the evaluation data overlaps the training data: {test} of {} \
                                 test rows and {validation} of {} validation rows are also \
                                 train rows",
                                n("test_rows"),
                                n("validation_rows")
                            ));
                        }
                    }
                    None => failed.push(
                        "the audit found no split to check (no `split` column, and no split \
                         recorded with the dataset)"
                            .to_owned(),
                    ),
                }
            }
        }
        for (metric, min) in &self.min_metrics {
            match on.metrics.get(metric) {
                Some(v) if v >= min => {}
                Some(v) => failed.push(format!("{metric} is {v:.4}; at least {min} wanted")),
                None => failed.push(format!(
                    "{:?} has no metric {metric:?} (it has: {})",
                    self.on,
                    on.metrics.keys().cloned().collect::<Vec<_>>().join(", ")
                )),
            }
        }
        if let Some(w) = &self.within {
            let ours = on.metrics.get(&w.metric);
            let theirs = results.get(&w.of).and_then(|o| o.metrics.get(&w.metric));
            match (ours, theirs) {
                (Some(a), Some(b)) if *a >= b - w.points => {}
                (Some(a), Some(b)) => failed.push(format!(
                    "{} is {a:.4}, more than {} below {:?}'s {b:.4}",
                    w.metric, w.points, w.of
                )),
                _ => failed.push(format!(
                    "{} is not in the results of both {:?} and {:?}",
                    w.metric, self.on, w.of
                )),
            }
        }
        if let Some(d) = &self.better_than_deployed
            && let Some(deployed) = results.get(DEPLOYED)
        {
            let served = deployed.model.as_deref().unwrap_or("the deployed model");
            match (on.metrics.get(&d.metric), deployed.metrics.get(&d.metric)) {
                (Some(ours), Some(theirs)) if *ours >= theirs + d.margin => {}
                (Some(ours), Some(theirs)) => failed.push(format!(
                    "{} is {ours:.4}; {served}, which {:?} serves, has {theirs:.4}, and {} \
                     better is wanted",
                    d.metric,
                    d.endpoint,
                    if d.margin > 0.0 {
                        format!("{} or more", d.margin)
                    } else {
                        "at least as good".to_owned()
                    }
                )),
                (None, _) => failed.push(format!("{:?} has no metric {:?}", self.on, d.metric)),
                (Some(_), None) => failed.push(format!(
                    "{served}, which {:?} serves, has no evaluation of {} on the same data; \
                     evaluate it there first",
                    d.endpoint, d.metric
                )),
            }
        }
        failed
    }
}

fn percent(x: f64) -> String {
    format!("{:.2}%", x * 100.0)
}

/// What a succeeded step made, for the references and gates after it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StepOutput {
    /// Its job.
    pub job_id: String,
    /// Its artifacts' URIs by name.
    pub artifacts: BTreeMap<String, String>,
    /// Its numbers.
    pub metrics: BTreeMap<String, f64>,
    /// The model version it registered, `name:N`.
    pub model: Option<String>,
    /// Its result document (an audit's report).
    pub result: Option<Value>,
}

/// A reference to a step's output, as written in a param: `${step.path}`.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Reference<'a> {
    step: &'a str,
    output: Output<'a>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Output<'a> {
    Artifact(&'a str),
    Model,
    Metric(&'a str),
    JobId,
}

impl fmt::Display for StepKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StepKind::Job(t @ (JobType::Audit | JobType::Evaluate)) => write!(f, "an {t} step"),
            StepKind::Job(t) => write!(f, "a {t} step"),
            StepKind::Gate => f.write_str("a gate"),
        }
    }
}

/// The artifacts a job type makes.
fn artifacts_of(job_type: JobType) -> &'static [&'static str] {
    match job_type {
        JobType::Generate => &["dataset"],
        JobType::Train => &["model"],
        JobType::Distill => &["model", "teacher_labelled"],
        JobType::Evaluate => &["report"],
        JobType::Audit | JobType::Deploy => &[],
    }
}

/// Parses `${step.path}` (the text between the braces).
fn parse_reference(inner: &str) -> Result<Reference<'_>, String> {
    let (step, rest) = inner
        .split_once('.')
        .ok_or_else(|| format!("${{{inner}}} names no output; write ${{step.output}}"))?;
    let output = match rest.split_once('.') {
        Some(("artifacts", name)) if !name.is_empty() => Output::Artifact(name),
        Some(("metrics", name)) if !name.is_empty() => Output::Metric(name),
        None if rest == "model" => Output::Model,
        None if rest == "job_id" => Output::JobId,
        _ => {
            return Err(format!(
                "${{{inner}}}: {rest:?} is not an output (artifacts.NAME, model, metrics.NAME \
                 or job_id)"
            ));
        }
    };
    Ok(Reference { step, output })
}

/// The `${...}` references in `text`, with where each starts and ends.
fn spans(text: &str) -> Result<Vec<(usize, usize, &str)>, String> {
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(start) = text[from..].find("${").map(|i| i + from) {
        let end = text[start..]
            .find('}')
            .map(|i| i + start)
            .ok_or_else(|| format!("{:?} opens ${{ and never closes it", text))?;
        out.push((start, end + 1, &text[start + 2..end]));
        from = end + 1;
    }
    Ok(out)
}

/// Checks the references in `value` (at `path`), adds the steps they name to `wants`, and
/// answers a stand-in of the type each output has, for the type check of the params.
fn references(
    value: &Value,
    path: &str,
    kinds: &BTreeMap<&str, StepKind>,
    wants: &mut BTreeSet<String>,
) -> Result<Value, SpecError> {
    match value {
        Value::String(text) => {
            let found = spans(text).map_err(|e| SpecError::new(path, e))?;
            if found.is_empty() {
                return Ok(value.clone());
            }
            let mut stand_ins = Vec::new();
            for &(_, _, inner) in &found {
                let r = parse_reference(inner).map_err(|e| SpecError::new(path, e))?;
                let kind = known(kinds, r.step, path)?;
                let StepKind::Job(job_type) = kind else {
                    return Err(SpecError::new(
                        path,
                        format!("{:?} is a gate, which has no outputs", r.step),
                    ));
                };
                let stand_in = match r.output {
                    Output::Artifact(name) => {
                        if !artifacts_of(job_type).contains(&name) {
                            let made = artifacts_of(job_type);
                            return Err(SpecError::new(
                                path,
                                if made.is_empty() {
                                    format!(
                                        "{job_type} steps make no artifacts; ${{{inner}}} names one"
                                    )
                                } else {
                                    format!(
                                        "{job_type} steps make no artifact {name:?} (they make: {})",
                                        made.join(", ")
                                    )
                                },
                            ));
                        }
                        Value::String(format!("nexa://artifacts/{}", "0".repeat(64)))
                    }
                    Output::Model => {
                        if !matches!(job_type, JobType::Train | JobType::Distill) {
                            return Err(SpecError::new(
                                path,
                                format!(
                                    "{job_type} steps register no model; ${{{inner}}} needs a \
                                     train or distill step"
                                ),
                            ));
                        }
                        Value::String("model:1".to_owned())
                    }
                    Output::Metric(_) => {
                        if matches!(job_type, JobType::Generate | JobType::Deploy) {
                            return Err(SpecError::new(
                                path,
                                format!("{job_type} steps report no metrics"),
                            ));
                        }
                        Value::from(1)
                    }
                    Output::JobId => Value::String("job-1".to_owned()),
                };
                wants.insert(r.step.to_owned());
                stand_ins.push(stand_in);
            }
            Ok(substitute(text, &found, stand_ins))
        }
        Value::Array(items) => items
            .iter()
            .enumerate()
            .map(|(i, v)| references(v, &format!("{path}[{i}]"), kinds, wants))
            .collect::<Result<Vec<_>, _>>()
            .map(Value::Array),
        Value::Object(map) => map
            .iter()
            .map(|(k, v)| {
                Ok((
                    k.clone(),
                    references(v, &format!("{path}.{k}"), kinds, wants)?,
                ))
            })
            .collect::<Result<Map<_, _>, SpecError>>()
            .map(Value::Object),
        other => Ok(other.clone()),
    }
}

/// `text` with its references (`found`) replaced by `values`: a reference that is the whole
/// text becomes its value, of its own type; others are written into the text.
fn substitute(text: &str, found: &[(usize, usize, &str)], mut values: Vec<Value>) -> Value {
    if let [(0, end, _)] = found
        && *end == text.len()
        && !values.is_empty()
    {
        return values.swap_remove(0);
    }
    let mut out = String::new();
    let mut last = 0;
    for ((start, end, _), value) in found.iter().zip(&values) {
        out.push_str(&text[last..*start]);
        match value {
            Value::String(s) => out.push_str(s),
            other => out.push_str(&other.to_string()),
        }
        last = *end;
    }
    out.push_str(&text[last..]);
    Value::String(out)
}

/// `params` with every reference replaced by the output it names, from `outputs` (each
/// needed step's); an output missing there is an error saying which.
pub fn resolve(
    params: &Map<String, Value>,
    outputs: &BTreeMap<String, StepOutput>,
) -> Result<Map<String, Value>, String> {
    fn one(value: &Value, outputs: &BTreeMap<String, StepOutput>) -> Result<Value, String> {
        match value {
            Value::String(text) => {
                let found = spans(text)?;
                if found.is_empty() {
                    return Ok(value.clone());
                }
                let mut values = Vec::new();
                for &(_, _, inner) in &found {
                    let r = parse_reference(inner)?;
                    let out = outputs
                        .get(r.step)
                        .ok_or_else(|| format!("step {:?} has not succeeded", r.step))?;
                    let v = match r.output {
                        Output::Artifact(name) => out.artifacts.get(name).cloned().map(Value::from),
                        Output::Model => out.model.clone().map(Value::from),
                        Output::Metric(name) => out.metrics.get(name).map(|m| Value::from(*m)),
                        Output::JobId => Some(Value::from(out.job_id.clone())),
                    };
                    values.push(
                        v.ok_or_else(|| format!("step {:?} did not make ${{{inner}}}", r.step))?,
                    );
                }
                Ok(substitute(text, &found, values))
            }
            Value::Array(items) => items
                .iter()
                .map(|v| one(v, outputs))
                .collect::<Result<_, _>>()
                .map(Value::Array),
            Value::Object(map) => map
                .iter()
                .map(|(k, v)| Ok((k.clone(), one(v, outputs)?)))
                .collect::<Result<Map<_, _>, String>>()
                .map(Value::Object),
            other => Ok(other.clone()),
        }
    }
    params
        .iter()
        .map(|(k, v)| Ok((k.clone(), one(v, outputs)?)))
        .collect()
}

fn check_step_name(name: &str) -> Result<(), SpecError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(SpecError::new(
            format!("steps.{name}"),
            "a step's name is 1 to 64 letters, digits, `_` or `-`",
        ))
    }
}

fn known(kinds: &BTreeMap<&str, StepKind>, step: &str, path: &str) -> Result<StepKind, SpecError> {
    kinds.get(step).copied().ok_or_else(|| {
        SpecError::new(
            path,
            format!(
                "no step {step:?} (the steps: {})",
                kinds.keys().copied().collect::<Vec<_>>().join(", ")
            ),
        )
    })
}

/// The steps in an order where each follows those it needs (Kahn's, ties by name), or the
/// cycle that prevents one.
fn order(needs: &BTreeMap<String, BTreeSet<String>>) -> Result<Vec<String>, SpecError> {
    let mut left: BTreeMap<&str, BTreeSet<&str>> = needs
        .iter()
        .map(|(k, v)| (k.as_str(), v.iter().map(String::as_str).collect()))
        .collect();
    let mut out = Vec::with_capacity(needs.len());
    while !left.is_empty() {
        let Some(next) = left.iter().find(|(_, n)| n.is_empty()).map(|(k, _)| *k) else {
            return Err(SpecError::new(
                "steps",
                format!("{} form a cycle", cycle(&left)),
            ));
        };
        left.remove(next);
        for n in left.values_mut() {
            n.remove(next);
        }
        out.push(next.to_owned());
    }
    Ok(out)
}

/// One cycle among `left` (every step of which needs another of them), as `a → b → a`.
fn cycle(left: &BTreeMap<&str, BTreeSet<&str>>) -> String {
    let Some(mut at) = left.keys().next().copied() else {
        return String::new();
    };
    let mut path: Vec<&str> = Vec::new();
    while !path.contains(&at) {
        path.push(at);
        at = left[at].iter().next().copied().unwrap_or(at);
    }
    let start = path.iter().position(|s| *s == at).unwrap_or(0);
    let mut shown: Vec<&str> = path[start..].to_vec();
    shown.push(at);
    format!("steps {}", shown.join(" → "))
}

#[cfg(test)]
mod tests;
