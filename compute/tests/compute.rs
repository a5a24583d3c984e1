//! Datasets on disk, training with checkpoints and resume, distillation and evaluation,
//! through the public API.

use std::path::Path;

use nexa_compute::{
    Backend, CheckpointDir, ComputeError, Control, CpuBackend, Dataset, DistillConfig,
    GenerateSpec, Head, Metrics, Mlp, MlpConfig, Preset, Problem, Progress, Schema, Split, Targets,
    Task, TrainConfig, evaluate, generate, label_with_teacher, read_dataset, train, write_dataset,
};

fn small_config(inputs: usize, outputs: usize, head: Head) -> MlpConfig {
    MlpConfig {
        inputs,
        hidden: vec![16, 16],
        outputs,
        activation: nexa_compute::Activation::Relu,
        head,
    }
}

fn weights(model: &Mlp<CpuBackend>) -> Vec<Vec<u32>> {
    model
        .layers()
        .iter()
        .flat_map(|l| [&l.weight, &l.bias])
        .map(|t| t.iter().map(|v| v.to_bits()).collect())
        .collect()
}

#[test]
fn datasets_round_trip_through_jsonl_and_parquet() {
    let dir = tempfile::tempdir().unwrap();
    let regression = generate(&GenerateSpec::new(Problem::RcCharging, 300).seed(3)).unwrap();
    let classes = generate(&GenerateSpec::new(Problem::IdealGas, 300).seed(4).classes(5)).unwrap();
    let teacher = Mlp::new(&CpuBackend, small_config(3, 5, Head::Classification), 1).unwrap();
    let labelled = label_with_teacher(&CpuBackend, &teacher, &classes).unwrap();
    assert_eq!(labelled.schema().soft_labels.len(), 5);
    for data in [&regression, &classes, &labelled] {
        for name in ["d.jsonl", "d.parquet"] {
            let path = dir.path().join(name);
            write_dataset(data, &path).unwrap();
            let back = read_dataset(&path, None).unwrap();
            assert_eq!(&back, data, "{name}");
            // With the schema given explicitly, too.
            let back = read_dataset(&path, Some(data.schema())).unwrap();
            assert_eq!(&back, data, "{name}");
        }
    }
    // A JSON Lines file written elsewhere, read with a schema naming its columns.
    let path = dir.path().join("own.jsonl");
    std::fs::write(
        &path,
        "{\"a\": 1, \"b\": 2.5, \"y\": 1}\n{\"a\": 0, \"b\": -1, \"y\": 0}\n",
    )
    .unwrap();
    let schema = Schema {
        features: vec!["a".into(), "b".into()],
        labels: vec!["y".into()],
        task: Task::Classification { classes: 2 },
        class_names: vec![],
        soft_labels: vec![],
        source: String::new(),
        split: None,
    };
    let d = read_dataset(&path, Some(&schema)).unwrap();
    assert_eq!(d.classes().unwrap(), &[1, 0]);
    assert_eq!(d.features()[[0, 1]], 2.5);
}

#[test]
fn bad_dataset_files_are_named_errors() {
    let dir = tempfile::tempdir().unwrap();
    let schema = Schema {
        features: vec!["a".into()],
        labels: vec!["y".into()],
        task: Task::Classification { classes: 2 },
        class_names: vec![],
        soft_labels: vec![],
        source: String::new(),
        split: None,
    };
    let cases = [
        ("{\"a\": 1, \"y\": 1}\nnot json\n", "line 2"),
        ("{\"a\": 1}\n", "no column \"y\""),
        ("{\"a\": \"x\", \"y\": 1}\n", "not a number"),
        ("{\"a\": 1, \"y\": 7}\n", "not a class index"),
    ];
    for (text, expected) in cases {
        let path = dir.path().join("bad.jsonl");
        std::fs::write(&path, text).unwrap();
        let e = read_dataset(&path, Some(&schema)).unwrap_err();
        assert!(e.to_string().contains(expected), "{e}");
        assert!(e.is_invalid_input());
    }
    let path = dir.path().join("bad.parquet");
    std::fs::write(&path, b"PAR1 nope").unwrap();
    let e = read_dataset(&path, None).unwrap_err();
    assert!(matches!(e, ComputeError::Dataset { .. }), "{e}");
    let e = read_dataset(&dir.path().join("x.csv"), None).unwrap_err();
    assert!(e.to_string().contains(".parquet"), "{e}");
    let e = read_dataset(&dir.path().join("missing.jsonl"), None).unwrap_err();
    assert!(matches!(e, ComputeError::Io { .. }), "{e}");
}

#[test]
fn splits_are_reproducible_and_disjoint() {
    let data = generate(&GenerateSpec::new(Problem::Pendulum, 101).seed(9)).unwrap();
    let a = data.split(0.7, 0.15, 5).unwrap();
    let b = data.split(0.7, 0.15, 5).unwrap();
    assert_eq!(a.train, b.train);
    assert_eq!(a.train.len() + a.validation.len() + a.test.len(), 101);
    assert_eq!(a.train.len(), 71);
    assert_ne!(a.train, data.split(0.7, 0.15, 6).unwrap().train);
    assert!(data.split(0.9, 0.2, 0).is_err());
    assert!(data.split(-0.1, 0.2, 0).is_err());
    // Generated rows do not repeat, so no evaluation row is a train row.
    let overlap = a.overlap();
    assert_eq!(
        (
            overlap.train_rows,
            overlap.validation_rows + overlap.test_rows
        ),
        (71, 30)
    );
    assert_eq!(overlap.overlapping(), 0);
    // Test rows that are also train rows are found.
    let rows = |r: std::ops::Range<usize>| data.select(&r.collect::<Vec<_>>()).unwrap();
    let contaminated = Split {
        train: rows(0..80),
        validation: rows(80..90),
        test: rows(78..101),
    };
    assert_eq!(contaminated.overlap().test_in_train, 2);
    assert_eq!(contaminated.overlap().validation_in_train, 0);
}

fn run(
    model: &mut Mlp<CpuBackend>,
    data: &Dataset,
    config: &TrainConfig,
    dir: Option<&CheckpointDir>,
    stop_at: Option<u64>,
) -> nexa_compute::TrainOutcome {
    train(
        &CpuBackend,
        model,
        data,
        None,
        config,
        dir,
        &mut |p: &Progress| {
            if Some(p.step) == stop_at {
                Control::Stop
            } else {
                Control::Continue
            }
        },
    )
    .unwrap()
}

#[test]
fn interrupted_and_resumed_training_matches_training_straight_through() {
    let data = generate(
        &GenerateSpec::new(Problem::Projectile, 200)
            .seed(2)
            .classes(4),
    )
    .unwrap();
    let config = TrainConfig {
        epochs: 4,
        batch_size: 32, // 7 steps per epoch, the last batch short
        checkpoint_every: 3,
        seed: 11,
        ..TrainConfig::default()
    };
    let model_config = small_config(3, 4, Head::Classification);

    let straight_dir = tempfile::tempdir().unwrap();
    let straight_ckpt = CheckpointDir::new(straight_dir.path(), 2).unwrap();
    let mut straight = Mlp::new(&CpuBackend, model_config.clone(), 5).unwrap();
    let outcome = run(&mut straight, &data, &config, Some(&straight_ckpt), None);
    assert_eq!((outcome.steps, outcome.stopped), (28, false));

    // Killed at steps 10 (mid-epoch, after the step-9 checkpoint) and then 14 (an epoch
    // end), resumed each time into a model built from another seed: the checkpoint
    // replaces its weights.
    let dir = tempfile::tempdir().unwrap();
    let ckpt = CheckpointDir::new(dir.path(), 2).unwrap();
    let mut first = Mlp::new(&CpuBackend, model_config.clone(), 5).unwrap();
    let outcome = run(&mut first, &data, &config, Some(&ckpt), Some(10));
    assert!(outcome.stopped);
    assert_eq!(ckpt.complete_steps().unwrap(), vec![7, 9]);
    let mut second = Mlp::new(&CpuBackend, model_config.clone(), 99).unwrap();
    let outcome = run(&mut second, &data, &config, Some(&ckpt), Some(14));
    assert_eq!(outcome.resumed_from, Some(9));
    let mut third = Mlp::new(&CpuBackend, model_config.clone(), 98).unwrap();
    let outcome = run(&mut third, &data, &config, Some(&ckpt), None);
    assert_eq!(outcome.resumed_from, Some(14));
    assert_eq!((outcome.steps, outcome.stopped), (28, false));
    assert_eq!(weights(&third), weights(&straight));

    // A finished run resumes to its end and does nothing more.
    let mut again = Mlp::new(&CpuBackend, model_config.clone(), 5).unwrap();
    let outcome = run(&mut again, &data, &config, Some(&ckpt), None);
    assert_eq!(outcome.resumed_from, Some(28));
    assert_eq!(weights(&again), weights(&straight));

    // Another configuration does not silently resume a foreign checkpoint.
    let other = TrainConfig {
        batch_size: 16,
        ..config.clone()
    };
    let mut model = Mlp::new(&CpuBackend, model_config, 5).unwrap();
    let e = train(
        &CpuBackend,
        &mut model,
        &data,
        None,
        &other,
        Some(&ckpt),
        &mut |_| Control::Continue,
    )
    .unwrap_err();
    assert!(
        e.to_string().contains("another training configuration"),
        "{e}"
    );
}

#[test]
fn training_reports_progress_and_learns_regression() {
    let data = generate(&GenerateSpec::new(Problem::Pendulum, 400).seed(1)).unwrap();
    let split = data.split(0.8, 0.1, 1).unwrap();
    let mut model = Mlp::new(&CpuBackend, small_config(3, 1, Head::Regression), 3).unwrap();
    let config = TrainConfig {
        epochs: 15,
        batch_size: 32,
        optimizer: nexa_compute::AdamWConfig {
            lr: 5e-3,
            ..Default::default()
        },
        ..TrainConfig::default()
    };
    let mut reports = Vec::new();
    let outcome = train(
        &CpuBackend,
        &mut model,
        &split.train,
        Some(&split.validation),
        &config,
        None,
        &mut |p| {
            reports.push(p.clone());
            Control::Continue
        },
    )
    .unwrap();
    assert_eq!(reports.len() as u64, outcome.steps);
    assert_eq!(
        reports.last().unwrap().step,
        reports.last().unwrap().total_steps
    );
    assert!(
        reports
            .iter()
            .all(|p| p.samples_per_sec > 0.0 && p.loss.is_finite())
    );
    assert_eq!(
        reports
            .iter()
            .filter(|p| p.validation_loss.is_some())
            .count(),
        15
    );
    let first_val = reports.iter().find_map(|p| p.validation_loss).unwrap();
    assert!(outcome.validation_loss.unwrap() < first_val);
    let report = evaluate(&CpuBackend, &model, &split.test, None).unwrap();
    let Metrics::Regression(m) = &report.metrics else {
        panic!("regression")
    };
    assert!(m.r2 > 0.5, "{}", report.to_json());
}

#[test]
fn wrong_model_or_settings_are_refused() {
    let data = generate(&GenerateSpec::new(Problem::Pendulum, 50).classes(3)).unwrap();
    let mut regressor = Mlp::new(&CpuBackend, small_config(3, 3, Head::Regression), 0).unwrap();
    let none = &mut |_: &Progress| Control::Continue;
    let e = train(
        &CpuBackend,
        &mut regressor,
        &data,
        None,
        &TrainConfig::default(),
        None,
        none,
    )
    .unwrap_err();
    assert!(e.to_string().contains("cannot train"), "{e}");
    let mut wide = Mlp::new(&CpuBackend, small_config(4, 3, Head::Classification), 0).unwrap();
    assert!(
        train(
            &CpuBackend,
            &mut wide,
            &data,
            None,
            &TrainConfig::default(),
            None,
            none
        )
        .is_err()
    );
    let mut model = Mlp::new(&CpuBackend, small_config(3, 3, Head::Classification), 0).unwrap();
    for config in [
        TrainConfig {
            epochs: 0,
            ..TrainConfig::default()
        },
        TrainConfig {
            batch_size: 0,
            ..TrainConfig::default()
        },
        TrainConfig {
            clip_norm: Some(-1.0),
            ..TrainConfig::default()
        },
        TrainConfig {
            distill: Some(DistillConfig {
                temperature: 2.0,
                alpha: 0.5,
            }),
            ..TrainConfig::default()
        },
    ] {
        let e = train(&CpuBackend, &mut model, &data, None, &config, None, none).unwrap_err();
        assert!(e.is_invalid_input(), "{e}");
    }
    // A learning rate far too high diverges with a message that says what to do.
    let mut model = Mlp::new(&CpuBackend, small_config(3, 3, Head::Classification), 0).unwrap();
    let config = TrainConfig {
        optimizer: nexa_compute::AdamWConfig {
            lr: 1e30,
            weight_decay: 0.0,
            ..Default::default()
        },
        clip_norm: None,
        warmup_fraction: 0.0,
        ..TrainConfig::default()
    };
    match train(&CpuBackend, &mut model, &data, None, &config, None, none) {
        Err(ComputeError::Diverged { .. }) => {}
        other => panic!("expected divergence, got {other:?}"),
    }
}

/// Trains a teacher, labels the data with its logits, and trains the same student with and
/// without it. Asserts that distillation runs and reports; which student wins is printed
/// (the `distill` example gives the full comparison).
#[test]
fn distillation_trains_a_student_from_teacher_logits() {
    let data = generate(
        &GenerateSpec::new(Problem::Projectile, 600)
            .seed(21)
            .classes(4),
    )
    .unwrap();
    let split = data.split(0.7, 0.1, 21).unwrap();
    let backend = CpuBackend;
    let base = TrainConfig {
        epochs: 12,
        batch_size: 32,
        optimizer: nexa_compute::AdamWConfig {
            lr: 3e-3,
            ..Default::default()
        },
        ..TrainConfig::default()
    };
    let none = &mut |_: &Progress| Control::Continue;
    let mut teacher = Mlp::new(&backend, small_config(3, 4, Head::Classification), 1).unwrap();
    train(
        &backend,
        &mut teacher,
        &split.train,
        None,
        &base,
        None,
        none,
    )
    .unwrap();
    let labelled = label_with_teacher(&backend, &teacher, &split.train).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sft.parquet");
    write_dataset(&labelled, &path).unwrap();
    let labelled = read_dataset(&path, None).unwrap();

    let student_config = MlpConfig {
        hidden: vec![8],
        ..small_config(3, 4, Head::Classification)
    };
    let mut plain = Mlp::new(&backend, student_config.clone(), 2).unwrap();
    train(&backend, &mut plain, &split.train, None, &base, None, none).unwrap();
    let mut distilled = Mlp::new(&backend, student_config, 2).unwrap();
    let config = TrainConfig {
        distill: Some(DistillConfig {
            temperature: 3.0,
            alpha: 0.3,
        }),
        ..base
    };
    let outcome = train(
        &backend,
        &mut distilled,
        &labelled,
        None,
        &config,
        None,
        none,
    )
    .unwrap();
    assert!(outcome.last_loss.is_finite());

    let plain_report = evaluate(&backend, &plain, &split.test, Some(&teacher)).unwrap();
    let distilled_report = evaluate(&backend, &distilled, &split.test, Some(&teacher)).unwrap();
    let Metrics::Classification(m) = &distilled_report.metrics else {
        panic!("classification")
    };
    let agreement = m.teacher_agreement.unwrap();
    assert!((0.0..=1.0).contains(&agreement));
    // Four balanced classes: chance is 0.25.
    assert!(m.accuracy > 0.35, "{}", distilled_report.to_json());
    let json: serde_json::Value = serde_json::from_str(&distilled_report.to_json()).unwrap();
    assert_eq!(json["metrics"]["task"], "classification");
    assert_eq!(json["metrics"]["confusion"].as_array().unwrap().len(), 4);
    println!(
        "distilled accuracy {:.3}, plain {:.3}",
        distilled_report.headline(),
        plain_report.headline()
    );
}

#[test]
fn presets_build_and_predict() {
    let data = generate(&GenerateSpec::new(Problem::LcResonance, 10)).unwrap();
    for preset in Preset::ALL {
        let config = preset.config(2, 1, Head::Regression);
        let model = Mlp::new(&CpuBackend, config, 0).unwrap();
        let out = model.predict(&CpuBackend, data.features()).unwrap();
        assert_eq!(out.dim(), (10, 1));
        assert!(out.iter().all(|v| v.is_finite()));
    }
    let Targets::Values(_) = data.targets() else {
        panic!("regression")
    };
    let _ = CpuBackend.name();
    let _: &Path = Path::new("");
}
