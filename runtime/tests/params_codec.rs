//! Properties of the job params codec (`runtime/src/params.rs`): the API's JSON
//! (`JobParams::from_json` / `JobParams::to_json`) and the tagged serde form the store and the
//! wire keep (bincode 2, standard configuration).
//!
//! The generators make valid params (`JobSpec::validate` passes: every generated case checks
//! it) of every job type, with each optional field absent or present, options objects of
//! any JSON, and hyperparameters of every `ParamValue` kind.
//!
//! One valid value does not read back as itself: a `generate` job whose task is a
//! classification and whose `classes` is `None` (which `validate` accepts, and the generate
//! stage runs with the default). `from_json` fills in the default classes there, so what is
//! shown and read back has `Some(DEFAULT_CLASSES)`. [`canonical`] is that normalisation, and
//! `a_classification_without_classes_reads_back_with_the_default` pins it.
//!
//! Floats in options are any finite `f64`: the stored and wire forms keep options as JSON
//! text, which reads every float back exactly (serde_json's `float_roundtrip`, pinned by
//! `an_options_float_survives_the_stored_form`).

use std::collections::BTreeMap;

use nexa_runtime::wire::{self, Assignment, DEFAULT_MAX_FRAME, LENGTH_BYTES, Message};
use nexa_runtime::{
    AuditParams, DeployParams, DistillParams, Epoch, EvaluateParams, GenerateParams, JobId,
    JobParams, JobSpec, JobType, LeaseToken, Options, ParamValue, Split, Task, Timestamp,
    TrainParams, URI_SCHEMES,
};
use proptest::prelude::*;
use serde_json::{Map, Value, json};

// ---------------------------------------------------------------------------------------------
// Generators of valid params

/// A model, domain or target name: not blank, no control characters, any script.
fn name() -> impl Strategy<Value = String> {
    "\\PC{0,12}[a-zA-Z0-9é中]"
}

/// A dataset URI: a local path, or a URI of a supported scheme.
fn uri() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-zA-Z0-9._/-]{0,24}[a-zA-Z0-9]",
        (
            prop::sample::select(URI_SCHEMES.to_vec()),
            "[a-zA-Z0-9._/-]{1,24}"
        )
            .prop_map(|(scheme, rest)| format!("{scheme}://{rest}")),
    ]
}

/// A key of letters, digits and `. _ - /`, at most `max` long.
fn identifier(max: usize) -> impl Strategy<Value = String> {
    proptest::string::string_regex(&format!("[a-zA-Z0-9._/-]{{1,{max}}}")).unwrap()
}

/// A finite `f64` of any magnitude.
fn finite() -> impl Strategy<Value = f64> {
    prop_oneof![
        any::<f64>().prop_filter("finite", |x| x.is_finite()),
        -1e6..1e6f64,
        Just(0.0),
        Just(-0.0),
    ]
}

fn param_value() -> impl Strategy<Value = ParamValue> {
    prop_oneof![
        any::<bool>().prop_map(ParamValue::Bool),
        any::<i64>().prop_map(ParamValue::Int),
        finite().prop_map(ParamValue::Float),
        ".{0,24}".prop_map(ParamValue::Text),
    ]
}

fn hyperparameters() -> impl Strategy<Value = BTreeMap<String, ParamValue>> {
    prop::collection::btree_map(identifier(64), param_value(), 0..6)
}

/// A number as people write them (`0.25`, `-1234.567`), or any finite `f64`.
fn decimal() -> impl Strategy<Value = f64> {
    prop_oneof![
        (-1_000_000_000i64..1_000_000_000).prop_map(|n| n as f64 / 1000.0),
        any::<f64>().prop_filter("finite", |x| x.is_finite()),
    ]
}

/// Any JSON, nested a little.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        decimal().prop_map(Value::from),
        ".{0,12}".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(".{0,8}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Options for a handler: empty, or an object of any JSON.
fn options() -> impl Strategy<Value = Options> {
    prop_oneof![
        1 => Just(Options::default()),
        3 => prop::collection::btree_map(".{0,8}", json_value(), 0..5)
            .prop_map(|m| Options(m.into_iter().collect())),
    ]
}

fn generate() -> impl Strategy<Value = GenerateParams> {
    let classes = prop_oneof![Just(None), (2u32..=64).prop_map(Some)];
    (
        (name(), 1u64..=10_000_000, any::<Option<u64>>()),
        (any::<bool>(), classes, 0.0..=0.5f64, options()),
    )
        .prop_map(
            |((domain, num_samples, seed), (regression, classes, noise, options))| {
                let (task, classes) = if regression {
                    (Task::Regression, None)
                } else {
                    (Task::Classification, classes)
                };
                GenerateParams {
                    domain,
                    num_samples,
                    seed,
                    task,
                    classes,
                    noise,
                    options,
                }
            },
        )
}

fn audit() -> impl Strategy<Value = AuditParams> {
    (
        uri(),
        proptest::option::of(name()),
        proptest::option::of("[0-9a-fA-F]{64}"),
        options(),
    )
        .prop_map(
            |(dataset_uri, label_column, expected_sha256, options)| AuditParams {
                dataset_uri,
                label_column,
                expected_sha256,
                options,
            },
        )
}

fn distill() -> impl Strategy<Value = DistillParams> {
    (
        (name(), name(), uri()),
        (
            prop_oneof![Just(100.0), 1e-9..100.0f64],
            0.0..=1.0f64,
            1u32..=10_000,
        ),
        (
            hyperparameters(),
            proptest::option::of(".{1,40}"),
            options(),
        ),
    )
        .prop_filter(
            "the student differs from the teacher",
            |((t, s, _), _, _)| t != s,
        )
        .prop_map(
            |(
                (teacher_model, student_model, dataset_uri),
                (temperature, alpha, epochs),
                (hyperparameters, prompt_template, options),
            )| DistillParams {
                teacher_model,
                student_model,
                dataset_uri,
                temperature,
                alpha,
                epochs,
                hyperparameters,
                prompt_template,
                options,
            },
        )
}

fn train() -> impl Strategy<Value = TrainParams> {
    (name(), uri(), 1u32..=10_000, hyperparameters(), options()).prop_map(
        |(model_id, dataset_uri, epochs, hyperparameters, options)| TrainParams {
            model_id,
            dataset_uri,
            epochs,
            hyperparameters,
            options,
        },
    )
}

fn evaluate() -> impl Strategy<Value = EvaluateParams> {
    let split = prop::sample::select(vec![
        Split::Train,
        Split::Validation,
        Split::Test,
        Split::All,
    ]);
    (
        name(),
        proptest::option::of(uri()),
        proptest::option::of(split),
        proptest::option::of(identifier(128)),
        prop::collection::vec(identifier(64), 0..5),
        options(),
    )
        .prop_map(|(model_id, dataset_uri, split, suite, metrics, options)| {
            // A dataset, a suite or both; a split only of a dataset.
            let suite = if dataset_uri.is_none() {
                suite.or_else(|| Some("mmlu".to_owned()))
            } else {
                suite
            };
            let split = split.filter(|_| dataset_uri.is_some());
            EvaluateParams {
                model_id,
                dataset_uri,
                split,
                suite,
                metrics,
                options,
            }
        })
}

fn deploy() -> impl Strategy<Value = DeployParams> {
    (
        name(),
        name(),
        proptest::option::of(identifier(63)),
        1u32..=64,
        options(),
    )
        .prop_map(
            |(model_id, target, region, replicas, options)| DeployParams {
                model_id,
                target,
                region,
                replicas,
                options,
            },
        )
}

/// Valid params of `job_type`.
fn params_of(job_type: JobType) -> BoxedStrategy<JobParams> {
    match job_type {
        JobType::Generate => generate().prop_map(JobParams::Generate).boxed(),
        JobType::Audit => audit().prop_map(JobParams::Audit).boxed(),
        JobType::Distill => distill().prop_map(JobParams::Distill).boxed(),
        JobType::Train => train().prop_map(JobParams::Train).boxed(),
        JobType::Evaluate => evaluate().prop_map(JobParams::Evaluate).boxed(),
        JobType::Deploy => deploy().prop_map(JobParams::Deploy).boxed(),
    }
}

/// Valid params of every job type.
fn params() -> impl Strategy<Value = JobParams> {
    prop::sample::select(JobType::ALL.to_vec()).prop_flat_map(params_of)
}

// ---------------------------------------------------------------------------------------------
// Helpers

fn read(job_type: JobType, shown: Value) -> JobParams {
    let Value::Object(map) = shown else {
        panic!("params show as an object: {shown}")
    };
    JobParams::from_json(job_type, map).unwrap_or_else(|e| panic!("{e}"))
}

/// `p` as `from_json` reads it back: the default classes of a classification filled in.
fn canonical(p: &JobParams) -> JobParams {
    let mut p = p.clone();
    if let JobParams::Generate(g) = &mut p
        && g.task == Task::Classification
        && g.classes.is_none()
    {
        g.classes = Some(GenerateParams::DEFAULT_CLASSES);
    }
    p
}

/// Each optional field of `job_type` as a minimal object shows it: its default. Written out
/// here from the `DEFAULT_*` constants, so that the codec and the constants cannot drift.
fn defaults(job_type: JobType) -> Value {
    match job_type {
        JobType::Generate => json!({
            "seed": null,
            "task": "classification",
            "classes": GenerateParams::DEFAULT_CLASSES,
            "noise": GenerateParams::DEFAULT_NOISE,
            "options": {},
        }),
        JobType::Audit => json!({"label_column": null, "expected_sha256": null, "options": {}}),
        JobType::Distill => json!({
            "temperature": DistillParams::DEFAULT_TEMPERATURE,
            "alpha": DistillParams::DEFAULT_ALPHA,
            "epochs": DistillParams::DEFAULT_EPOCHS,
            "hyperparameters": {},
            "prompt_template": null,
            "options": {},
        }),
        JobType::Train => json!({
            "epochs": TrainParams::DEFAULT_EPOCHS,
            "hyperparameters": {},
            "options": {},
        }),
        JobType::Evaluate => json!({
            "dataset_uri": null,
            "split": null,
            "suite": null,
            "metrics": [],
            "options": {},
        }),
        JobType::Deploy => json!({
            "target": DeployParams::DEFAULT_TARGET,
            "region": null,
            "replicas": DeployParams::DEFAULT_REPLICAS,
            "options": {},
        }),
    }
}

/// The default of optional field `field` of `job_type`, given the params as read (`shown`):
/// `classes` has one only for a classification.
fn default_of(job_type: JobType, field: &str, shown: &Value) -> Value {
    if job_type == JobType::Generate && field == "classes" && shown["task"] == json!("regression") {
        return Value::Null;
    }
    defaults(job_type)[field].clone()
}

/// The required fields of `shown`, alone.
fn minimal(job_type: JobType, shown: &Value) -> Value {
    let map: Map<String, Value> = job_type
        .params()
        .iter()
        .filter(|f| f.required)
        .map(|f| (f.name.to_owned(), shown[f.name].clone()))
        .collect();
    Value::Object(map)
}

/// `p` with every optional field at its default: what its minimal object reads as.
fn with_defaults(p: &JobParams) -> JobParams {
    match p {
        JobParams::Generate(g) => {
            JobParams::Generate(GenerateParams::new(g.domain.clone(), g.num_samples))
        }
        JobParams::Audit(a) => JobParams::Audit(AuditParams::new(a.dataset_uri.clone())),
        JobParams::Distill(d) => JobParams::Distill(DistillParams::new(
            d.teacher_model.clone(),
            d.student_model.clone(),
            d.dataset_uri.clone(),
        )),
        JobParams::Train(t) => {
            JobParams::Train(TrainParams::new(t.model_id.clone(), t.dataset_uri.clone()))
        }
        // `new` takes a dataset, which is optional.
        JobParams::Evaluate(e) => JobParams::Evaluate(EvaluateParams {
            dataset_uri: None,
            ..EvaluateParams::new(e.model_id.clone(), "")
        }),
        JobParams::Deploy(d) => JobParams::Deploy(DeployParams::new(d.model_id.clone())),
    }
}

fn bincode_round_trip<T>(value: &T) -> T
where
    T: serde::Serialize + serde::de::DeserializeOwned,
{
    let config = bincode::config::standard();
    let bytes = bincode::serde::encode_to_vec(value, config).unwrap();
    let (back, used): (T, usize) = bincode::serde::decode_from_slice(&bytes, config).unwrap();
    assert_eq!(used, bytes.len(), "bytes left over");
    back
}

// ---------------------------------------------------------------------------------------------
// Properties

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// What is shown reads back as the same params, and showing what was read shows the same
    /// object again (a fixed point). Every generated value is valid.
    #[test]
    fn what_is_shown_reads_back_the_same(p in params()) {
        prop_assert_eq!(JobSpec::new(p.clone()).validate(), Ok(()));
        let t = p.job_type();
        let shown = p.to_json();
        let back = read(t, shown.clone());
        prop_assert_eq!(&back, &canonical(&p));
        let again = back.to_json();
        prop_assert_eq!(&again, &canonical(&p).to_json());
        prop_assert_eq!(read(t, again.clone()).to_json(), again);
        // Every field of the table is shown, and no other.
        let mut names: Vec<&str> = t.params().iter().map(|f| f.name).collect();
        names.sort_unstable();
        let keys: Vec<&str> = shown.as_object().unwrap().keys().map(String::as_str).collect();
        prop_assert_eq!(keys, names);
    }

    /// The required fields alone read as the params with every default, and show every
    /// optional field at its default.
    #[test]
    fn a_minimal_object_reads_with_every_default(p in params()) {
        let t = p.job_type();
        let read_back = read(t, minimal(t, &p.to_json()));
        prop_assert_eq!(&read_back, &with_defaults(&p));
        let shown = read_back.to_json();
        for field in t.params() {
            let want = if field.required {
                p.to_json()[field.name].clone()
            } else {
                default_of(t, field.name, &shown)
            };
            prop_assert_eq!(&shown[field.name], &want, "{} {}", t, field.name);
        }
    }

    /// Any optional field left out or given as `null` reads as its default; the others as
    /// given.
    #[test]
    fn absent_and_null_fields_get_their_defaults(
        p in params(),
        leave_out in prop::collection::vec(0u8..3, 9),
    ) {
        let t = p.job_type();
        let shown = canonical(&p).to_json();
        let mut given = shown.as_object().unwrap().clone();
        let optional = t.params().iter().filter(|f| !f.required);
        let mut dropped = Vec::new();
        for (field, how) in optional.zip(&leave_out) {
            match how {
                0 => {}
                1 => {
                    given.remove(field.name);
                    dropped.push(field.name);
                }
                _ => {
                    given.insert(field.name.to_owned(), Value::Null);
                    dropped.push(field.name);
                }
            }
        }
        let read_back = read(t, Value::Object(given)).to_json();
        for field in t.params() {
            // A field shown as `null` was absent too. (The default of `classes` follows the
            // task as read, which may itself be the default.)
            let want = if dropped.contains(&field.name) || shown[field.name].is_null() {
                default_of(t, field.name, &read_back)
            } else {
                shown[field.name].clone()
            };
            prop_assert_eq!(&read_back[field.name], &want, "{} {}", t, field.name);
        }
    }

    /// The stored form (bincode 2, standard configuration, as the store's records and the
    /// wire's messages use it) keeps params exactly, hyperparameters' kinds and options
    /// included; so does a whole frame carrying the spec to a worker.
    #[test]
    fn the_stored_and_wire_forms_keep_params(p in params(), job in any::<u64>()) {
        prop_assert_eq!(&bincode_round_trip(&p), &p);
        let spec = JobSpec::new(p);
        prop_assert_eq!(&bincode_round_trip(&spec), &spec);
        let message = Message::Assignment(Assignment {
            job: JobId(job),
            spec,
            attempt: 1,
            epoch: Epoch(7),
            lease_token: LeaseToken([9; 32]),
            lease_expires_at: Timestamp(1_000),
            deadline: Timestamp(2_000),
        });
        let frame = wire::encode(2, &message, DEFAULT_MAX_FRAME).unwrap();
        let envelope = wire::decode_body(&frame[LENGTH_BYTES..]).unwrap();
        prop_assert_eq!(envelope.id, 2);
        prop_assert_eq!(envelope.message, message);
    }

    /// Hyperparameters keep their kind through the API's JSON: a whole float stays a float,
    /// an integer an integer.
    #[test]
    fn hyperparameters_keep_their_kind_through_json(hp in hyperparameters()) {
        let mut train = TrainParams::new("m", "d.csv");
        train.hyperparameters = hp;
        let p = JobParams::Train(train);
        prop_assert_eq!(read(JobType::Train, p.to_json()), p);
    }
}

// ---------------------------------------------------------------------------------------------
// Examples

/// The one valid value that does not read back as itself (see the module doc).
#[test]
fn a_classification_without_classes_reads_back_with_the_default() {
    let mut g = GenerateParams::new("physics", 10);
    g.classes = None;
    let p = JobParams::Generate(g);
    assert_eq!(JobSpec::new(p.clone()).validate(), Ok(()));
    assert_eq!(p.to_json()["classes"], Value::Null);
    let back = read(JobType::Generate, p.to_json());
    assert_eq!(back, canonical(&p));
    assert_eq!(
        back.to_json()["classes"],
        json!(GenerateParams::DEFAULT_CLASSES)
    );
}

/// The field table lists as optional exactly the fields [`defaults`] knows, and where a
/// field's help text states its default as a value ("(default 0.01)", "classification
/// (default)"), it is the default the codec applies.
#[test]
fn the_field_table_states_the_defaults_the_codec_applies() {
    for t in JobType::ALL {
        let defaults = defaults(t);
        let mut optional: Vec<&str> = t
            .params()
            .iter()
            .filter(|f| !f.required)
            .map(|f| f.name)
            .collect();
        optional.sort_unstable();
        let known: Vec<&str> = defaults
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(optional, known, "{t}");
        for field in t.params().iter().filter(|f| !f.required) {
            let doc = field.doc;
            let stated = if let Some((_, rest)) = doc.split_once("(default ") {
                rest.split(')').next().unwrap_or_default()
            } else if let Some((before, _)) = doc.split_once(" (default)") {
                before.rsplit(' ').next().unwrap_or_default()
            } else {
                continue; // no default, or one in words ("(default: the job's number)")
            };
            let applied = &defaults[field.name];
            let same = match applied {
                Value::Number(n) => stated.parse::<f64>().ok() == n.as_f64(),
                Value::String(s) => stated == s,
                _ => false,
            };
            assert!(
                same,
                "{t} {}: the table says the default is {stated:?}, the codec applies {applied}",
                field.name
            );
        }
    }
}

/// A float in a job's options (or in any of its params once they go through the API's JSON
/// text) comes back exactly. Options are stored and sent as JSON text, and serde_json parses
/// a float's shortest representation exactly only with its `float_roundtrip` feature (the
/// workspace turns it on); without it about 30% of random finite `f64`s came back one or two
/// units in the last place off, `964355.0117316851` among them.
#[test]
fn an_options_float_survives_the_stored_form() {
    let x = 964_355.011_731_685_1;
    let mut train = TrainParams::new("m", "d.csv");
    train.options.0.insert("x".to_owned(), json!(x));
    train
        .hyperparameters
        .insert("x".to_owned(), ParamValue::Float(x));
    let p = JobParams::Train(train);
    // Stored or sent to a worker: options as JSON text.
    assert_eq!(bincode_round_trip(&p), p);
    // Shown by the API as JSON text and read back.
    let text = p.to_json().to_string();
    assert_eq!(
        read(JobType::Train, serde_json::from_str(&text).unwrap()),
        p
    );
}
