//! The CUDA backend against the CPU backend, its reference: every operation on fresh random
//! inputs of awkward shapes (1×1, a prime number of columns, more rows than a block has
//! threads, empty matrices), the errors, and short training runs end to end.
//!
//! Needs an NVIDIA GPU with the driver, cuBLAS and NVRTC. Where no CUDA device is found each
//! test prints why and returns, so that the suite builds and passes on machines without one
//! (CI); set `NEXA_REQUIRE_GPU=1` to make that a failure instead, as `scripts/gpu-check.sh`
//! does.
//!
//! Tolerances. One operation: `|gpu − cpu| ≤ 1e-4 · (1 + |cpu|)` for every element, a
//! relative error of 1e-4 for values above 1 and an absolute one below, where a relative
//! error means nothing (a sum of gradients that cancels to nearly 0). Both sides compute in
//! fp32 (cuBLAS in pedantic mode, no TF32), so the differences are the order of summation
//! and a few ulp in `exp`, `log` and `tanh`: about 1e-6 in practice. Training: see
//! `training_matches_the_cpu`.

#![cfg(feature = "cuda")]

use ndarray::Array2;
use nexa_compute::{
    Activation, AdamWStep, Backend, ComputeError, Control, CpuBackend, CudaBackend, Dataset,
    DistillConfig, GenerateSpec, Head, Mlp, MlpConfig, Preset, Problem, Rng, TrainConfig,
    TrainOutcome, devices, generate, label_with_teacher, train,
};

const TOLERANCE: f32 = 1e-4;

/// Shapes of the elementwise, row and reduction operations.
const SHAPES: [(usize, usize); 9] = [
    (1, 1),
    (3, 257),
    (513, 130),
    (64, 8),
    (257, 1),
    (1, 1000),
    (4096, 8),
    (70_000, 3),
    (0, 5),
];

/// The backend on the first GPU, or `None` (with a message) where there is none.
fn gpu() -> Option<CudaBackend> {
    let found = devices();
    if found.is_empty() {
        assert!(
            std::env::var_os("NEXA_REQUIRE_GPU").is_none(),
            "NEXA_REQUIRE_GPU is set but no CUDA device was found"
        );
        eprintln!("no CUDA device found: skipping the CUDA parity test");
        return None;
    }
    let backend = CudaBackend::new(0).unwrap_or_else(|e| {
        panic!("a CUDA device is there ({found:?}) but the backend failed: {e}")
    });
    eprintln!("running on {:?}", backend.device());
    Some(backend)
}

fn random(rng: &mut Rng, rows: usize, cols: usize, scale: f64) -> Array2<f32> {
    Array2::from_shape_simple_fn((rows, cols), || rng.range(-scale, scale) as f32)
}

/// The largest `|gpu − cpu| / (1 + |cpu|)`.
fn error(gpu: &Array2<f32>, cpu: &Array2<f32>) -> f32 {
    assert_eq!(gpu.dim(), cpu.dim());
    gpu.iter()
        .zip(cpu)
        .map(|(g, c)| (g - c).abs() / (1.0 + c.abs()))
        .fold(0.0, f32::max)
}

/// One line per comparison, `parity <what>: <error>`, for `scripts/gpu-check.sh` to sum up as
/// the worst error of each operation (run with `--nocapture`).
fn report(what: &str, error: f32) {
    eprintln!("parity {what}: {error:e}");
}

#[track_caller]
fn assert_close(what: &str, gpu: &Array2<f32>, cpu: &Array2<f32>) {
    let e = error(gpu, cpu);
    report(what, e);
    assert!(
        e < TOLERANCE,
        "{what}: error {e:e} (gpu {gpu:?}, cpu {cpu:?})"
    );
}

#[track_caller]
fn assert_close_scalar(what: &str, gpu: f32, cpu: f32) {
    let e = (gpu - cpu).abs() / (1.0 + cpu.abs());
    report(what, e);
    assert!(e < TOLERANCE, "{what}: gpu {gpu}, cpu {cpu}, error {e:e}");
}

#[test]
fn matmul_matches_for_every_transpose() {
    let Some(gpu) = gpu() else { return };
    let cpu = CpuBackend;
    let mut rng = Rng::new(1);
    // (m, k, n) of op(a) · op(b).
    for (m, k, n) in [
        (1, 1, 1),
        (3, 257, 5),
        (513, 130, 7),
        (64, 3, 256),
        (257, 513, 130),
        (4096, 256, 8),
        (0, 4, 3),
        (4, 0, 3),
        (4, 3, 0),
    ] {
        for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
            let a = random(
                &mut rng,
                if ta { k } else { m },
                if ta { m } else { k },
                1.0,
            );
            let b = random(
                &mut rng,
                if tb { n } else { k },
                if tb { k } else { n },
                1.0,
            );
            let want = cpu.matmul(&a, ta, &b, tb).unwrap();
            let (ga, gb) = (gpu.upload(&a).unwrap(), gpu.upload(&b).unwrap());
            let got = gpu
                .download(&gpu.matmul(&ga, ta, &gb, tb).unwrap())
                .unwrap();
            assert_close(&format!("matmul {m}x{k}x{n} ta={ta} tb={tb}"), &got, &want);
        }
    }
}

#[test]
fn elementwise_operations_match() {
    let Some(gpu) = gpu() else { return };
    let cpu = CpuBackend;
    let mut rng = Rng::new(2);
    for (rows, cols) in SHAPES {
        for activation in [Activation::Identity, Activation::Relu, Activation::Tanh] {
            let what = format!("{rows}x{cols} {activation:?}");
            let z = random(&mut rng, rows, cols, 3.0);
            let bias = random(&mut rng, 1, cols, 1.0);
            let mut want = z.clone();
            cpu.bias_activation(&mut want, &bias, activation).unwrap();
            let mut got = gpu.upload(&z).unwrap();
            gpu.bias_activation(&mut got, &gpu.upload(&bias).unwrap(), activation)
                .unwrap();
            let output = gpu.download(&got).unwrap();
            assert_close(&format!("bias_activation {what}"), &output, &want);

            // The backward pass from the CPU's forward output, so both see the same one.
            let grad = random(&mut rng, rows, cols, 1.0);
            let mut want_grad = grad.clone();
            cpu.activation_backward(&mut want_grad, &want, activation)
                .unwrap();
            let mut got_grad = gpu.upload(&grad).unwrap();
            gpu.activation_backward(&mut got_grad, &gpu.upload(&want).unwrap(), activation)
                .unwrap();
            assert_close(
                &format!("activation_backward {what}"),
                &gpu.download(&got_grad).unwrap(),
                &want_grad,
            );
        }

        let x = random(&mut rng, rows, cols, 2.0);
        let y = random(&mut rng, rows, cols, 2.0);
        let mut want = x.clone();
        cpu.scale(&mut want, -0.37).unwrap();
        let mut got = gpu.upload(&x).unwrap();
        gpu.scale(&mut got, -0.37).unwrap();
        assert_close(
            &format!("scale {rows}x{cols}"),
            &gpu.download(&got).unwrap(),
            &want,
        );

        let mut want = y.clone();
        cpu.add_scaled(&mut want, 1.7, &x).unwrap();
        let mut got = gpu.upload(&y).unwrap();
        gpu.add_scaled(&mut got, 1.7, &gpu.upload(&x).unwrap())
            .unwrap();
        assert_close(
            &format!("add_scaled {rows}x{cols}"),
            &gpu.download(&got).unwrap(),
            &want,
        );
    }
}

#[test]
fn reductions_match() {
    let Some(gpu) = gpu() else { return };
    let cpu = CpuBackend;
    let mut rng = Rng::new(3);
    for (rows, cols) in SHAPES {
        let x = random(&mut rng, rows, cols, 1.0);
        let g = gpu.upload(&x).unwrap();
        assert_close(
            &format!("sum_rows {rows}x{cols}"),
            &gpu.download(&gpu.sum_rows(&g).unwrap()).unwrap(),
            &cpu.sum_rows(&x).unwrap(),
        );
        assert_close_scalar(
            &format!("sum_squares {rows}x{cols}"),
            gpu.sum_squares(&g).unwrap(),
            cpu.sum_squares(&x).unwrap(),
        );
    }
}

#[test]
fn losses_and_softmax_match() {
    let Some(gpu) = gpu() else { return };
    let cpu = CpuBackend;
    let mut rng = Rng::new(4);
    for (rows, cols) in SHAPES {
        let what = format!("{rows}x{cols}");
        let logits = random(&mut rng, rows, cols, 6.0);
        let other = random(&mut rng, rows, cols, 6.0);
        let (gl, go) = (gpu.upload(&logits).unwrap(), gpu.upload(&other).unwrap());

        if rows > 0 {
            let labels: Vec<u32> = (0..rows).map(|_| rng.below(cols as u64) as u32).collect();
            let (want, want_grad) = cpu.softmax_cross_entropy(&logits, &labels).unwrap();
            let (got, got_grad) = gpu.softmax_cross_entropy(&gl, &labels).unwrap();
            assert_close_scalar(&format!("cross-entropy {what}"), got, want);
            assert_close(
                &format!("cross-entropy gradient {what}"),
                &gpu.download(&got_grad).unwrap(),
                &want_grad,
            );
        }

        let (want, want_grad) = cpu.mse(&logits, &other).unwrap();
        let (got, got_grad) = gpu.mse(&gl, &go).unwrap();
        assert_close_scalar(&format!("mse {what}"), got, want);
        assert_close(
            &format!("mse gradient {what}"),
            &gpu.download(&got_grad).unwrap(),
            &want_grad,
        );

        for temperature in [1.0, 2.5, 4.0] {
            let what = format!("{what} T={temperature}");
            let (want, want_grad) = cpu.kl_divergence(&logits, &other, temperature).unwrap();
            let (got, got_grad) = gpu.kl_divergence(&gl, &go, temperature).unwrap();
            assert_close_scalar(&format!("kl {what}"), got, want);
            assert_close(
                &format!("kl gradient {what}"),
                &gpu.download(&got_grad).unwrap(),
                &want_grad,
            );
            assert_close(
                &format!("softmax {what}"),
                &gpu.download(&gpu.softmax(&gl, temperature).unwrap())
                    .unwrap(),
                &cpu.softmax(&logits, temperature).unwrap(),
            );
        }
        // A distribution against itself: zero, not a rounding residue of the wrong sign.
        let (kl, _) = gpu.kl_divergence(&gl, &gl, 2.0).unwrap();
        assert!(kl.abs() < 1e-5, "kl of {what} with itself: {kl}");
    }
}

#[test]
fn adamw_matches() {
    let Some(gpu) = gpu() else { return };
    let cpu = CpuBackend;
    let mut rng = Rng::new(5);
    for (rows, cols) in SHAPES {
        for (step, weight_decay) in [(1, 0.0), (10, 0.01), (1000, 0.1)] {
            let what = format!("adamw {rows}x{cols} step {step}");
            let config = AdamWStep {
                lr: 1e-3,
                beta1: 0.9,
                beta2: 0.999,
                eps: 1e-8,
                weight_decay,
                step,
            };
            let param = random(&mut rng, rows, cols, 1.0);
            let grad = random(&mut rng, rows, cols, 0.1);
            let m = random(&mut rng, rows, cols, 0.01);
            let v = random(&mut rng, rows, cols, 1e-4).mapv(f32::abs);
            let (mut wp, mut wm, mut wv) = (param.clone(), m.clone(), v.clone());
            cpu.adamw_update(&mut wp, &grad, &mut wm, &mut wv, &config)
                .unwrap();
            let (mut gp, mut gm, mut gv) = (
                gpu.upload(&param).unwrap(),
                gpu.upload(&m).unwrap(),
                gpu.upload(&v).unwrap(),
            );
            gpu.adamw_update(
                &mut gp,
                &gpu.upload(&grad).unwrap(),
                &mut gm,
                &mut gv,
                &config,
            )
            .unwrap();
            assert_close(&format!("{what} param"), &gpu.download(&gp).unwrap(), &wp);
            assert_close(&format!("{what} m"), &gpu.download(&gm).unwrap(), &wm);
            assert_close(&format!("{what} v"), &gpu.download(&gv).unwrap(), &wv);
        }
    }
}

/// The same inputs are refused the same way, with an error rather than a panic or a
/// device fault.
#[test]
fn errors_match_the_cpu() {
    let Some(gpu) = gpu() else { return };
    let cpu = CpuBackend;
    let a = Array2::<f32>::ones((3, 4));
    let b = Array2::<f32>::ones((3, 5));
    let row = Array2::<f32>::ones((1, 5));
    let (ga, gb, grow) = (
        gpu.upload(&a).unwrap(),
        gpu.upload(&b).unwrap(),
        gpu.upload(&row).unwrap(),
    );
    let shape = |e: ComputeError| matches!(e, ComputeError::Shape { .. });
    let invalid = |e: ComputeError| matches!(e, ComputeError::InvalidArgument { .. });

    assert!(shape(cpu.matmul(&a, false, &b, false).unwrap_err()));
    assert!(shape(gpu.matmul(&ga, false, &gb, false).unwrap_err()));
    let mut z = ga.clone();
    assert!(shape(
        gpu.bias_activation(&mut z, &grow, Activation::Relu)
            .unwrap_err()
    ));
    assert!(shape(
        gpu.activation_backward(&mut z, &gb, Activation::Tanh)
            .unwrap_err()
    ));
    assert!(shape(gpu.mse(&ga, &gb).unwrap_err()));
    assert!(shape(gpu.kl_divergence(&ga, &gb, 1.0).unwrap_err()));
    assert!(shape(gpu.add_scaled(&mut z, 1.0, &gb).unwrap_err()));
    let (mut m, mut v) = (ga.clone(), gb.clone());
    let step = AdamWStep {
        lr: 1e-3,
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay: 0.0,
        step: 1,
    };
    assert!(shape(
        gpu.adamw_update(&mut z, &ga, &mut m, &mut v, &step)
            .unwrap_err()
    ));

    // Labels: one per row, each below the number of classes.
    assert!(shape(gpu.softmax_cross_entropy(&ga, &[0, 1]).unwrap_err()));
    assert!(invalid(
        gpu.softmax_cross_entropy(&ga, &[0, 1, 4]).unwrap_err()
    ));
    assert!(invalid(
        cpu.softmax_cross_entropy(&a, &[0, 1, 4]).unwrap_err()
    ));
    assert!(invalid(
        gpu.softmax_cross_entropy(&ga, &[0, u32::MAX, 1])
            .unwrap_err()
    ));
    let empty = gpu.upload(&Array2::zeros((0, 4))).unwrap();
    assert!(shape(gpu.softmax_cross_entropy(&empty, &[]).unwrap_err()));

    for t in [0.0, -1.0, f32::NAN, f32::INFINITY] {
        assert!(invalid(gpu.kl_divergence(&ga, &ga, t).unwrap_err()));
        assert!(invalid(gpu.softmax(&ga, t).unwrap_err()));
    }

    // The backend still works after all that.
    let (loss, _) = gpu.softmax_cross_entropy(&ga, &[0, 1, 3]).unwrap();
    assert_close_scalar("cross-entropy of uniform logits", loss, 4f32.ln());
}

/// A clone does not see writes made through the original (copy on write), and tensors of
/// another backend are refused rather than raced.
#[test]
fn tensors_behave_as_values() {
    let Some(gpu) = gpu() else { return };
    let x = Array2::from_shape_fn((2, 3), |(i, j)| (i * 3 + j) as f32);
    let original = gpu.upload(&x).unwrap();
    let mut copy = original.clone();
    gpu.scale(&mut copy, 2.0).unwrap();
    assert_eq!(gpu.download(&original).unwrap(), x);
    assert_eq!(gpu.download(&copy).unwrap(), x.mapv(|v| v * 2.0));
    let zeros = gpu.zeros(0, 7).unwrap();
    assert_eq!(gpu.shape(&zeros), (0, 7));
    assert_eq!(gpu.download(&zeros).unwrap().dim(), (0, 7));

    let other = CudaBackend::new(0).unwrap();
    let e = other.download(&original).unwrap_err();
    assert!(matches!(e, ComputeError::InvalidArgument { .. }), "{e}");
}

/// Trains the same model from the same initial weights on both backends.
fn train_both(
    gpu: &CudaBackend,
    config: &MlpConfig,
    data: &Dataset,
    settings: &TrainConfig,
) -> (TrainOutcome, TrainOutcome, f32) {
    let cpu = CpuBackend;
    let mut cpu_model = Mlp::new(&cpu, config.clone(), 7).unwrap();
    let mut gpu_model = Mlp::new(gpu, config.clone(), 7).unwrap();
    let run = |outcome: Result<TrainOutcome, ComputeError>| outcome.unwrap();
    let cpu_outcome = run(train(
        &cpu,
        &mut cpu_model,
        data,
        None,
        settings,
        None,
        &mut |_| Control::Continue,
    ));
    let gpu_outcome = run(train(
        gpu,
        &mut gpu_model,
        data,
        None,
        settings,
        None,
        &mut |_| Control::Continue,
    ));
    let mut max_weight_difference = 0.0f32;
    for (c, g) in cpu_model.layers().iter().zip(gpu_model.layers()) {
        for (ct, gt) in [(&c.weight, &g.weight), (&c.bias, &g.bias)] {
            let gt = gpu.download(gt).unwrap();
            let d = gt
                .iter()
                .zip(ct)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f32::max);
            max_weight_difference = max_weight_difference.max(d);
        }
    }
    (cpu_outcome, gpu_outcome, max_weight_difference)
}

/// Short training runs (classification, regression, distillation) end the same on both
/// backends.
///
/// Tolerances: the last batch's loss within 1e-3 relative and every weight within 1e-3
/// absolute, after 32 to 48 AdamW steps at a peak learning rate of 1e-3. Training amplifies
/// rounding differences (Adam divides by the root of the second moment, so an element whose
/// gradient is near 0 can step by up to `lr` either way, and a ReLU near 0 can switch), so
/// these were sized by training on the CPU against a CPU backend that multiplies every
/// product, row sum and loss gradient by `1 + ε`, `ε` uniform in ±1e-6 (more than the
/// differences these tests allow per operation in practice): the largest gaps seen were 5e-7
/// in the loss and 2e-4 in a weight; at ±1e-5, 1.4e-4 and 6.6e-4. A wrong operation moves
/// weights by up to `lr` per step, 1e-2 and more over a run. `teacher_large` is left out: with
/// three layers of 256 it amplified ±1e-6 to 4e-4 in the loss and ±1e-5 to 1.6e-2 in a
/// weight, too close to a real error to tell apart; its operations are checked one by one
/// above.
#[test]
fn training_matches_the_cpu() {
    let Some(gpu) = gpu() else { return };
    let classes = generate(
        &GenerateSpec::new(Problem::Projectile, 3000)
            .seed(1)
            .classes(4),
    )
    .unwrap();
    let regression = generate(&GenerateSpec::new(Problem::Pendulum, 2000).seed(2)).unwrap();
    let features = |d: &Dataset| d.schema().features.len();
    let teacher_config = Preset::Medium.config(features(&classes), 4, Head::Classification);
    let teacher = Mlp::new(&CpuBackend, teacher_config, 11).unwrap();
    let distilled = label_with_teacher(&CpuBackend, &teacher, &classes).unwrap();
    let settings = TrainConfig {
        epochs: 2,
        batch_size: 128,
        seed: 3,
        ..TrainConfig::default()
    };
    let runs = [
        (
            "classification, student_small",
            Preset::StudentSmall.config(features(&classes), 4, Head::Classification),
            &classes,
            settings.clone(),
        ),
        (
            "classification, medium",
            Preset::Medium.config(features(&classes), 4, Head::Classification),
            &classes,
            settings.clone(),
        ),
        (
            "regression, medium",
            Preset::Medium.config(
                features(&regression),
                regression.schema().outputs(),
                Head::Regression,
            ),
            &regression,
            settings.clone(),
        ),
        (
            "distillation, student_small",
            Preset::StudentSmall.config(features(&distilled), 4, Head::Classification),
            &distilled,
            TrainConfig {
                distill: Some(DistillConfig {
                    temperature: 3.0,
                    alpha: 0.5,
                }),
                ..settings.clone()
            },
        ),
    ];
    for (what, config, data, settings) in runs {
        let (cpu, gpu_outcome, weights) = train_both(&gpu, &config, data, &settings);
        let loss = (gpu_outcome.last_loss - cpu.last_loss).abs() / cpu.last_loss.abs().max(1e-6);
        eprintln!(
            "{what}: {} steps, last loss cpu {} gpu {} (relative difference {loss:e}), \
             largest weight difference {weights:e}",
            cpu.steps, cpu.last_loss, gpu_outcome.last_loss
        );
        assert_eq!(cpu.steps, gpu_outcome.steps, "{what}");
        assert!(loss < 1e-3, "{what}: losses differ by {loss:e}");
        assert!(
            weights < 1e-3,
            "{what}: weights differ by up to {weights:e}"
        );
    }
}
