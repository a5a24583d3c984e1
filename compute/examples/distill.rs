//! Distillation on a generated physics task: a large teacher, then the same small student
//! trained with and without the teacher's logits, each from several seeds, evaluated on a
//! held-out test split.
//!
//! ```text
//! cargo run --release -p nexa-compute --example distill [rows] [epochs] [seeds] [T] [alpha]
//! ```

use nexa_compute::{
    AdamWConfig, Control, CpuBackend, DistillConfig, GenerateSpec, Head, Metrics, Mlp, MlpConfig,
    Preset, Problem, TrainConfig, evaluate, generate, label_with_teacher, train,
};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1).map(|a| a.parse::<usize>());
    let rows = args.next().transpose()?.unwrap_or(3000);
    let epochs = args.next().transpose()?.unwrap_or(30) as u32;
    let seeds = args.next().transpose()?.unwrap_or(5) as u64;
    let mut floats = std::env::args().skip(4).map(|a| a.parse::<f32>());
    let temperature = floats.next().transpose()?.unwrap_or(4.0);
    let alpha = floats.next().transpose()?.unwrap_or(0.3);
    let classes = 5;
    let backend = CpuBackend;
    let problem = Problem::Projectile;
    let data = generate(
        &GenerateSpec::new(problem, rows)
            .seed(7)
            .noise(0.02)
            .classes(classes),
    )?;
    // A small training set is where a teacher's soft labels are expected to help most.
    let split = data.split(0.5, 0.1, 7)?;
    let train_settings = |seed| TrainConfig {
        epochs,
        batch_size: 64,
        optimizer: AdamWConfig {
            lr: 3e-3,
            ..AdamWConfig::default()
        },
        seed,
        ..TrainConfig::default()
    };
    let quiet = &mut |_: &nexa_compute::Progress| Control::Continue;
    let inputs = problem.features().len();

    let mut teacher = Mlp::new(
        &backend,
        Preset::TeacherLarge.config(inputs, classes, Head::Classification),
        1,
    )?;
    train(
        &backend,
        &mut teacher,
        &split.train,
        Some(&split.validation),
        &train_settings(1),
        None,
        quiet,
    )?;
    let teacher_report = evaluate(&backend, &teacher, &split.test, None)?;
    println!(
        "{problem}, {classes} classes, {} train / {} test rows, {epochs} epochs",
        split.train.len(),
        split.test.len()
    );
    println!(
        "teacher ({}): accuracy {:.4}",
        Preset::TeacherLarge,
        teacher_report.headline()
    );
    let labelled = label_with_teacher(&backend, &teacher, &split.train)?;

    let student = MlpConfig {
        hidden: vec![16],
        ..Preset::StudentSmall.config(inputs, classes, Head::Classification)
    };
    println!(
        "student: hidden {:?}, {} parameters",
        student.hidden,
        student.parameters()
    );
    let (mut plain_sum, mut distilled_sum, mut wins) = (0.0, 0.0, 0);
    for seed in 0..seeds {
        let mut plain = Mlp::new(&backend, student.clone(), 100 + seed)?;
        train(
            &backend,
            &mut plain,
            &split.train,
            None,
            &train_settings(seed),
            None,
            quiet,
        )?;
        let mut distilled = Mlp::new(&backend, student.clone(), 100 + seed)?;
        let settings = TrainConfig {
            distill: Some(DistillConfig { temperature, alpha }),
            ..train_settings(seed)
        };
        train(
            &backend,
            &mut distilled,
            &labelled,
            None,
            &settings,
            None,
            quiet,
        )?;
        let p = evaluate(&backend, &plain, &split.test, Some(&teacher))?;
        let d = evaluate(&backend, &distilled, &split.test, Some(&teacher))?;
        let (Metrics::Classification(pm), Metrics::Classification(dm)) = (&p.metrics, &d.metrics)
        else {
            unreachable!("classification task")
        };
        println!(
            "seed {seed}: plain acc {:.4} f1 {:.4} ece {:.4} agree {:.4} | distilled acc {:.4} f1 {:.4} ece {:.4} agree {:.4}",
            pm.accuracy,
            pm.macro_f1,
            pm.expected_calibration_error,
            pm.teacher_agreement.unwrap_or(f64::NAN),
            dm.accuracy,
            dm.macro_f1,
            dm.expected_calibration_error,
            dm.teacher_agreement.unwrap_or(f64::NAN),
        );
        plain_sum += pm.accuracy;
        distilled_sum += dm.accuracy;
        wins += u32::from(dm.accuracy > pm.accuracy);
    }
    let n = seeds as f64;
    println!(
        "mean test accuracy: plain {:.4}, distilled {:.4}; distilled better in {wins} of {seeds} seeds",
        plain_sum / n,
        distilled_sum / n
    );
    Ok(())
}
