use serde_json::json;

use super::*;

fn spec(steps: Value) -> PipelineSpec {
    serde_json::from_value(json!({"name": "physics", "steps": steps})).unwrap()
}

fn fault(steps: Value) -> SpecError {
    spec(steps).plan().unwrap_err()
}

/// The lifecycle as the example pipeline declares it.
fn lifecycle() -> Value {
    json!({
        "generate": {"job_type": "generate", "params": {"domain": "physics", "num_samples": 2000}},
        "audit": {"job_type": "audit", "params": {"dataset_uri": "${generate.artifacts.dataset}", "label_column": "label"}},
        "clean": {"gate": {"on": "audit", "max_missing": 0.01, "max_duplicates": 0.05, "min_rows": 1000}},
        "teacher": {"job_type": "train", "needs": ["clean"], "params": {
            "model_id": "teacher", "dataset_uri": "${generate.artifacts.dataset}", "epochs": 3, "hyperparameters": {"base": "teacher_large"}}},
        "student": {"job_type": "distill", "params": {
            "teacher_model": "${teacher.model}", "student_model": "student",
            "dataset_uri": "${generate.artifacts.dataset}"}},
        "eval_teacher": {"job_type": "evaluate", "params": {"model_id": "${teacher.model}", "dataset_uri": "${generate.artifacts.dataset}"}},
        "eval_student": {"job_type": "evaluate", "params": {"model_id": "${student.model}", "dataset_uri": "${generate.artifacts.dataset}"}},
        "close_enough": {"gate": {"on": "eval_student", "within": {"of": "eval_teacher", "metric": "accuracy", "points": 0.05}}},
        "deploy": {"job_type": "deploy", "needs": ["close_enough"], "params": {"model_id": "${student.model}"}},
    })
}

#[test]
fn a_lifecycle_is_ordered_with_its_needs_inferred_from_references() {
    let plan = spec(lifecycle()).plan().unwrap();
    let at = |s: &str| plan.order.iter().position(|x| x == s).unwrap();
    for (before, after) in [
        ("generate", "audit"),
        ("audit", "clean"),
        ("clean", "teacher"),
        ("teacher", "student"),
        ("teacher", "eval_teacher"),
        ("student", "eval_student"),
        ("eval_student", "close_enough"),
        ("eval_teacher", "close_enough"),
        ("close_enough", "deploy"),
    ] {
        assert!(
            at(before) < at(after),
            "{before} after {after}: {:?}",
            plan.order
        );
    }
    let needs = |s: &str| plan.needs[s].iter().cloned().collect::<Vec<_>>();
    assert_eq!(needs("student"), ["generate", "teacher"]);
    assert_eq!(needs("close_enough"), ["eval_student", "eval_teacher"]);
    assert_eq!(needs("deploy"), ["close_enough", "student"]);
}

#[test]
fn faults_are_named_by_their_path() {
    let cases = [
        (
            json!({"a": {"job_type": "audit", "params": {"dataset_uri": "${nope.artifacts.dataset}"}}}),
            "steps.a.params.dataset_uri",
            "no step \"nope\"",
        ),
        (
            json!({"g": {"job_type": "generate", "params": {"domain": "physics", "num_samples": 100}},
                   "t": {"job_type": "train", "params": {"model_id": "m", "dataset_uri": "${g.artifacts.model}"}}}),
            "steps.t.params.dataset_uri",
            "make no artifact \"model\" (they make: dataset)",
        ),
        (
            json!({"g": {"job_type": "generate", "params": {"domain": "physics", "num_samples": 100}},
                   "e": {"job_type": "evaluate", "params": {"model_id": "${g.model}", "dataset_uri": "${g.artifacts.dataset}"}}}),
            "steps.e.params.model_id",
            "register no model",
        ),
        (
            json!({"g": {"job_type": "generate", "params": {"domain": "physics", "num_samples": 100}},
                   "t": {"job_type": "train", "params": {"model_id": "m", "dataset_uri": "${g.artifacts.dataset}", "epochs": "${g.artifacts.dataset}"}}}),
            "steps.t.params.epochs",
            "",
        ),
        (
            json!({"g": {"job_type": "generate", "params": {"domain": "physics", "num_samples": 0}}}),
            "steps.g.params.num_samples",
            "",
        ),
        (
            json!({"g": {"job_type": "generte", "params": {}}}),
            "steps.g.job_type",
            "not a job type",
        ),
        (
            json!({"g": {"job_type": "generate", "params": {"domain": "physics", "num_samples": 100}, "needs": ["h"]}}),
            "steps.g.needs[0]",
            "no step \"h\"",
        ),
        (
            json!({"g": {"job_type": "generate", "params": {"domain": "physics", "num_samples": 100}},
                   "x": {"gate": {"on": "g", "min_rows": 10}}}),
            "steps.x.gate.on",
            "\"g\" is a generate step; these checks read an audit step's result",
        ),
        (
            json!({"a": {"job_type": "audit", "params": {"dataset_uri": "/d.csv"}},
                   "x": {"gate": {"on": "a"}}}),
            "steps.x.gate",
            "a gate needs a check",
        ),
        (
            json!({"a": {"job_type": "audit", "params": {"dataset_uri": "/d.csv"}},
                   "x": {"gate": {"on": "a", "max_missing": 5}}}),
            "steps.x.gate.max_missing",
            "not a fraction",
        ),
        (
            json!({"a": {"job_type": "audit", "params": {"dataset_uri": "/d.csv"}},
                   "x": {"gate": {"on": "a", "min_rows": 5}},
                   "t": {"job_type": "train", "params": {"model_id": "m", "dataset_uri": "${x.artifacts.dataset}"}}}),
            "steps.t.params.dataset_uri",
            "is a gate, which has no outputs",
        ),
        (
            json!({"a": {"job_type": "audit", "params": {"dataset_uri": "${a.metrics.rows}"}}}),
            "steps.a.params.dataset_uri",
            "refers to its own outputs",
        ),
        (
            json!({"a": {"job_type": "audit", "params": {"dataset_uri": "/d.csv"}, "needs": ["a"]}}),
            "steps.a.needs[0]",
            "cannot need itself",
        ),
        (
            json!({"a": {"job_type": "audit", "params": {"dataset_uri": "${a"}}}),
            "steps.a.params.dataset_uri",
            "never closes it",
        ),
        (
            json!({"a": {"job_type": "audit", "params": {"dataset_uri": "${b.weights}"}},
                   "b": {"job_type": "generate", "params": {"domain": "physics", "num_samples": 100}}}),
            "steps.a.params.dataset_uri",
            "\"weights\" is not an output",
        ),
        (
            json!({"bad name": {"job_type": "generate", "params": {"domain": "physics", "num_samples": 100}}}),
            "steps.bad name",
            "letters, digits",
        ),
    ];
    for (steps, path, says) in cases {
        let e = fault(steps.clone());
        assert_eq!(e.field, path, "{steps}: {e:?}");
        assert!(e.reason.contains(says), "{steps}: {e:?}");
    }
    assert_eq!(
        spec(json!({})).plan().unwrap_err().reason,
        "a pipeline needs at least one step"
    );
}

#[test]
fn a_cycle_is_refused_naming_it() {
    let e = fault(json!({
        "g": {"job_type": "generate", "params": {"domain": "physics", "num_samples": 100}},
        "a": {"job_type": "audit", "params": {"dataset_uri": "${g.artifacts.dataset}"}, "needs": ["t"]},
        "t": {"job_type": "train", "params": {"model_id": "m", "dataset_uri": "${g.artifacts.dataset}"}, "needs": ["a"]},
        "after": {"job_type": "evaluate", "params": {"model_id": "${t.model}", "dataset_uri": "${g.artifacts.dataset}"}},
    }));
    assert_eq!(e.field, "steps");
    assert_eq!(e.reason, "steps a → t → a form a cycle");
}

fn outputs() -> BTreeMap<String, StepOutput> {
    let mut out = BTreeMap::new();
    out.insert(
        "generate".to_owned(),
        StepOutput {
            job_id: "job-1".into(),
            artifacts: [("dataset".to_owned(), "nexa://artifacts/ab".to_owned())].into(),
            ..StepOutput::default()
        },
    );
    out.insert(
        "teacher".to_owned(),
        StepOutput {
            job_id: "job-3".into(),
            model: Some("teacher:2".into()),
            metrics: [("final_loss".to_owned(), 0.25)].into(),
            ..StepOutput::default()
        },
    );
    out
}

#[test]
fn references_resolve_to_outputs_keeping_their_type() {
    let params = json!({
        "dataset_uri": "${generate.artifacts.dataset}",
        "model_id": "${teacher.model}",
        "alpha": "${teacher.metrics.final_loss}",
        "note": "from ${teacher.job_id} on ${generate.artifacts.dataset}",
        "options": {"nested": ["${teacher.model}"]},
        "plain": 3,
    });
    let Value::Object(params) = params else {
        unreachable!()
    };
    let resolved = resolve(&params, &outputs()).unwrap();
    assert_eq!(
        Value::Object(resolved),
        json!({
            "dataset_uri": "nexa://artifacts/ab",
            "model_id": "teacher:2",
            "alpha": 0.25,
            "note": "from job-3 on nexa://artifacts/ab",
            "options": {"nested": ["teacher:2"]},
            "plain": 3,
        })
    );
    let mut missing = Map::new();
    missing.insert("x".into(), json!("${teacher.artifacts.model}"));
    assert_eq!(
        resolve(&missing, &outputs()).unwrap_err(),
        "step \"teacher\" did not make ${teacher.artifacts.model}"
    );
    missing.insert("x".into(), json!("${student.model}"));
    assert_eq!(
        resolve(&missing, &outputs()).unwrap_err(),
        "step \"student\" has not succeeded"
    );
}

fn audit(rows: u64, missing: u64, duplicates: u64, ratio: Option<f64>) -> StepOutput {
    let mut report = json!({
        "rows": rows, "missing_values": missing, "duplicate_rows": duplicates,
        "columns": [{"name": "a"}, {"name": "b"}, {"name": "label"}, {"name": "split"}],
    });
    if let Some(r) = ratio {
        report["label"] = json!({"column": "label", "imbalance_ratio": r});
    }
    StepOutput {
        job_id: "job-2".into(),
        result: Some(report),
        ..StepOutput::default()
    }
}

#[test]
fn an_audit_gate_names_every_check_that_failed() {
    let gate = GateSpec {
        on: "audit".into(),
        max_missing: Some(0.01),
        max_duplicates: Some(0.05),
        min_rows: Some(1000),
        max_class_ratio: Some(3.0),
        ..GateSpec::default()
    };
    let check = |o: StepOutput| gate.check(&[("audit".to_owned(), o)].into());
    assert!(check(audit(2000, 80, 100, Some(2.0))).is_empty());
    let failed = check(audit(500, 100, 50, Some(5.0)));
    assert_eq!(
        failed,
        [
            "500 rows; at least 1000 wanted",
            "5.00% of cells missing; at most 1.00% allowed",
            "10.00% of rows are duplicates; at most 5.00% allowed",
            "the largest class has 5.00 times the rows of the smallest; at most 3 allowed",
        ]
    );
    assert_eq!(
        check(audit(2000, 0, 0, None)),
        ["the audit has no class balance (give it a label_column)"]
    );
}

#[test]
fn an_evaluation_gate_checks_thresholds_and_margins() {
    let eval = |acc: f64| StepOutput {
        metrics: [("accuracy".to_owned(), acc), ("macro_f1".to_owned(), acc)].into(),
        ..StepOutput::default()
    };
    let results: BTreeMap<String, StepOutput> = [
        ("student".to_owned(), eval(0.80)),
        ("teacher".to_owned(), eval(0.90)),
    ]
    .into();
    let gate = |min: f64, points: f64| GateSpec {
        on: "student".into(),
        min_metrics: [("accuracy".to_owned(), min)].into(),
        within: Some(WithinSpec {
            of: "teacher".into(),
            metric: "accuracy".into(),
            points,
        }),
        ..GateSpec::default()
    };
    assert!(gate(0.75, 0.15).check(&results).is_empty());
    assert_eq!(
        gate(0.85, 0.05).check(&results),
        [
            "accuracy is 0.8000; at least 0.85 wanted",
            "accuracy is 0.8000, more than 0.05 below \"teacher\"'s 0.9000",
        ]
    );
    let unknown = GateSpec {
        on: "student".into(),
        min_metrics: [("auc".to_owned(), 0.5)].into(),
        ..GateSpec::default()
    };
    assert_eq!(
        unknown.check(&results),
        ["\"student\" has no metric \"auc\" (it has: accuracy, macro_f1)"]
    );
}

#[test]
fn a_rerun_from_a_step_runs_it_and_everything_after_it() {
    let plan = spec(lifecycle()).plan().unwrap();
    let after: Vec<String> = plan.downstream("student").into_iter().collect();
    assert_eq!(after, ["close_enough", "deploy", "eval_student", "student"]);
}

#[test]
fn the_reuse_key_is_the_same_for_the_same_work_in_any_key_order() {
    let step: StepSpec = serde_json::from_value(json!({"job_type": "train"})).unwrap();
    let a = json!({"model_id": "m", "hyperparameters": {"seed": 1, "base": "medium"}});
    let b = json!({"hyperparameters": {"base": "medium", "seed": 1}, "model_id": "m"});
    let (Value::Object(a), Value::Object(b)) = (a, b) else {
        unreachable!()
    };
    assert_eq!(step.reuse_key(&a), step.reuse_key(&b));
    let mut c = a.clone();
    c.insert("epochs".into(), json!(4));
    assert_ne!(step.reuse_key(&a), step.reuse_key(&c));
}

#[test]
fn a_contaminated_split_stops_the_overlap_gate() {
    let gate = GateSpec {
        on: "audit".into(),
        no_overlap: true,
        ..GateSpec::default()
    };
    let with = |overlap: Value| {
        let mut out = audit(100, 0, 0, None);
        if let Some(r) = out.result.as_mut() {
            r["split_overlap"] = overlap;
        }
        gate.check(&[("audit".to_owned(), out)].into())
    };
    let clean = json!({"train_rows": 80, "validation_rows": 10, "test_rows": 10,
                       "validation_in_train": 0, "test_in_train": 0});
    assert!(with(clean).is_empty());
    let leaked = json!({"train_rows": 80, "validation_rows": 10, "test_rows": 10,
                        "validation_in_train": 0, "test_in_train": 3});
    assert_eq!(
        with(leaked),
        [
            "the evaluation data overlaps the training data: 3 of 10 test rows and 0 of 10 \
          validation rows are also train rows"
        ]
    );
    assert_eq!(
        with(Value::Null),
        [
            "the audit found no split to check (no `split` column, and no split recorded with \
          the dataset)"
        ]
    );
}

#[test]
fn a_model_must_beat_the_deployed_one_on_the_same_data() {
    let gate = GateSpec {
        on: "evaluate".into(),
        better_than_deployed: Some(DeployedSpec {
            endpoint: "physics".into(),
            metric: "accuracy".into(),
            margin: 0.01,
        }),
        ..GateSpec::default()
    };
    let eval = |acc: Option<f64>, model: &str| StepOutput {
        metrics: acc
            .map(|a| ("accuracy".to_owned(), a))
            .into_iter()
            .collect(),
        model: Some(model.into()),
        ..StepOutput::default()
    };
    let ours = ("evaluate".to_owned(), eval(Some(0.90), "student:2"));
    let with = |deployed: Option<StepOutput>| {
        let mut results: BTreeMap<String, StepOutput> = [ours.clone()].into();
        if let Some(d) = deployed {
            results.insert(DEPLOYED.to_owned(), d);
        }
        gate.check(&results)
    };
    // Nothing deployed yet: a first deployment passes.
    assert!(with(None).is_empty());
    assert!(with(Some(eval(Some(0.85), "student:1"))).is_empty());
    assert_eq!(
        with(Some(eval(Some(0.895), "student:1"))),
        [
            "accuracy is 0.9000; student:1, which \"physics\" serves, has 0.8950, and 0.01 or \
          more better is wanted"
        ]
    );
    assert_eq!(
        with(Some(eval(None, "student:1"))),
        [
            "student:1, which \"physics\" serves, has no evaluation of accuracy on the same data; \
          evaluate it there first"
        ]
    );
}
