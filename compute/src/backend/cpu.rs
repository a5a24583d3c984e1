//! The ndarray backend: the reference implementation, deterministic (matrix products by
//! `matrixmultiply`, no BLAS), so the same inputs give the same bits on every run — and with
//! any number of threads.
//!
//! A large matrix product is cut into bands of the output's rows, one thread each
//! ([`set_threads`]). Each output element is still computed by one thread, over the whole
//! inner dimension, in the same order as on one thread: the bits do not depend on the number
//! of threads. Elementwise steps (bias and activation, its backward, the AdamW update) are cut
//! the same way. No reduction is split: sums (bias gradients, losses, the gradient norm) run
//! whole on the calling thread, so their order never depends on the thread count.
//!
//! The helpers stay awake between one split step and the next (see [`STAY_AWAKE`]): a training
//! step is a dozen of them in a row, each too short to pay for waking a thread that sleeps.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use ndarray::{Array2, ArrayView2, ArrayViewMut2, Axis, Slice, Zip};

use super::{Activation, AdamWStep, Backend, check_labels, same_shape};
use crate::ComputeError;

/// The CPU backend.
#[derive(Clone, Copy, Debug, Default)]
pub struct CpuBackend;

/// The threads matrix products may use; 0 until [`set_threads`] says.
static THREADS: AtomicUsize = AtomicUsize::new(0);

/// Products with fewer multiply-adds than this run on one thread: below it, handing half of
/// it to a helper costs more than it saves (measured on the presets, 2 threads: 2^23 left
/// `medium` at batch 256 on one thread, 2^18 makes it 1.6x faster, 2^16 gains nothing more).
const PARALLEL_WORK: usize = 1 << 18;

/// Rows of the output each thread gets at least.
const BAND_ROWS: usize = 16;

/// Sets the threads the CPU backend's matrix products may use (at least 1; at most the cores,
/// or this number if it was larger when the first product ran on several). The results are the
/// same bits whatever the number.
pub fn set_threads(threads: usize) {
    THREADS.store(threads.max(1), Ordering::Relaxed);
}

/// The threads the CPU backend's matrix products use: as [`set_threads`] said, else
/// `NEXA_THREADS`, else every core.
pub fn threads() -> usize {
    match THREADS.load(Ordering::Relaxed) {
        0 => {
            let from_env = std::env::var("NEXA_THREADS")
                .ok()
                .and_then(|v| v.trim().parse::<usize>().ok())
                .filter(|n| *n > 0);
            let n = from_env.unwrap_or_else(|| {
                std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
            });
            THREADS.store(n, Ordering::Relaxed);
            n
        }
        n => n,
    }
}

/// The helpers large products run on besides the calling thread, made at the first product
/// that uses them: one fewer than the cores (or than [`threads`], if more); `None` when it
/// cannot be made (products then run on the calling thread alone).
fn pool() -> Option<&'static rayon::ThreadPool> {
    static POOL: OnceLock<Option<rayon::ThreadPool>> = OnceLock::new();
    POOL.get_or_init(|| {
        let cores = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
        let helpers = cores.max(threads()).saturating_sub(1);
        if helpers == 0 {
            return None;
        }
        rayon::ThreadPoolBuilder::new()
            .num_threads(helpers)
            .thread_name(|i| format!("nexa-cpu-{i}"))
            .build()
            .ok()
    })
    .as_ref()
}

/// Elementwise work on fewer values than this stays on one thread.
const PARALLEL_VALUES: usize = 1 << 12;

/// Whether elementwise work on `z` goes to the pool: as many values as [`PARALLEL_VALUES`],
/// and as wide as a layer whose square product goes to the pool — a helper costs more than
/// cheap work on narrow rows saves.
fn elementwise_in_parallel(z: &Array2<f32>) -> bool {
    let (m, n) = z.dim();
    m.saturating_mul(n) >= PARALLEL_VALUES && m.saturating_mul(n).saturating_mul(n) >= PARALLEL_WORK
}

/// The rows of each band when work on `m` rows is split between threads (with `parallel`,
/// more than one thread and a pool), with the pool; `None` to run it whole on this thread.
fn band_rows(m: usize, parallel: bool) -> Option<(usize, &'static rayon::ThreadPool)> {
    let bands = threads().min(m / BAND_ROWS).max(1);
    match pool() {
        Some(pool) if parallel && bands > 1 => {
            let bands = bands.min(pool.current_num_threads() + 1);
            Some((m.div_ceil(bands), pool))
        }
        _ => None,
    }
}

/// How long a helper keeps looking for the next band after its last one, and how long the
/// calling thread waits for the helpers' bands by spinning before it blocks. Waking a thread
/// that sleeps takes tens of microseconds (about 50 on a virtual machine), as long as a band
/// of a 256-row product takes to compute: a training step splits a dozen products and
/// elementwise steps one after the other, so helpers that slept between them would cost a
/// third of the step. They spin instead, while a step's products keep coming, and sleep once
/// they stop.
const STAY_AWAKE: Duration = Duration::from_millis(1);

/// Spinning threads yield to the operating system's scheduler after this long, so that on a
/// machine with more threads than cores the thread they wait for gets to run.
const SPIN_ALONE: Duration = Duration::from_micros(20);

/// Helpers of the pool now looking for bands (see [`STAY_AWAKE`]).
static AWAKE: AtomicUsize = AtomicUsize::new(0);

/// Makes sure every helper of `pool` is awake and looking for bands: starts a watch on each
/// helper that has none, which runs the bands it finds and ends after [`STAY_AWAKE`] without
/// any.
fn wake_helpers(pool: &'static rayon::ThreadPool) {
    let helpers = pool.current_num_threads();
    while AWAKE
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            (n < helpers).then_some(n + 1)
        })
        .is_ok()
    {
        pool.spawn(|| {
            let mut last = Instant::now();
            loop {
                if let Some(rayon::Yield::Executed) = rayon::yield_now() {
                    last = Instant::now();
                    continue;
                }
                let idle = last.elapsed();
                if idle > STAY_AWAKE {
                    break;
                }
                pause(idle);
            }
            AWAKE.fetch_sub(1, Ordering::AcqRel);
        });
    }
}

/// One turn of a wait by spinning: a hint to the processor, or after [`SPIN_ALONE`] a yield
/// to the scheduler.
fn pause(waited: Duration) {
    if waited < SPIN_ALONE {
        std::hint::spin_loop();
    } else {
        std::thread::yield_now();
    }
}

/// Runs `f` on each of `bands`: the first on this thread, the others on the pool's helpers
/// (kept awake, [`wake_helpers`]); returns when all are done.
fn run_bands<T: Send>(
    pool: &'static rayon::ThreadPool,
    bands: impl Iterator<Item = T>,
    f: impl Fn(T) + Sync,
) {
    wake_helpers(pool);
    let f = &f;
    let done = &AtomicUsize::new(0);
    pool.in_place_scope(|scope| {
        let mut bands = bands;
        let first = bands.next();
        let mut sent = 0;
        for band in bands {
            sent += 1;
            scope.spawn(move |_| {
                f(band);
                done.fetch_add(1, Ordering::Release);
            });
        }
        if let Some(band) = first {
            f(band);
        }
        // The helpers' bands are usually done or nearly: wait by spinning, which is quicker
        // than the scope's wait (it sleeps, and a sleeping thread is slow to wake).
        let start = Instant::now();
        while done.load(Ordering::Acquire) < sent {
            let waited = start.elapsed();
            if waited > STAY_AWAKE {
                break;
            }
            pause(waited);
        }
    });
}

/// Runs `f` on bands of `z`'s rows (each with the index of its first row): with `parallel`,
/// the first band on this thread and the others on the pool's helpers; else, or with one
/// thread or no pool, all of `z` on this thread. For work where each value depends on its own
/// row only, so the bits do not depend on the bands.
fn in_bands(z: &mut Array2<f32>, parallel: bool, f: impl Fn(usize, ArrayViewMut2<'_, f32>) + Sync) {
    match band_rows(z.nrows(), parallel) {
        None => f(0, z.view_mut()),
        Some((rows, pool)) => run_bands(
            pool,
            z.axis_chunks_iter_mut(Axis(0), rows).enumerate(),
            |(i, band)| f(i * rows, band),
        ),
    }
}

/// The sum of the squares of `values`, in f64: sixteen running sums, each over every
/// sixteenth value, then added in order. The same bits on every run and any number of
/// threads; sixteen independent sums keep the vector units busy where one would wait on
/// each addition.
fn sum_of_squares(values: &[f32]) -> f64 {
    const LANES: usize = 16;
    let mut sums = [0.0f64; LANES];
    let chunks = values.chunks_exact(LANES);
    let rest = chunks.remainder();
    for chunk in chunks {
        for (s, &v) in sums.iter_mut().zip(chunk) {
            *s += f64::from(v) * f64::from(v);
        }
    }
    for (s, &v) in sums.iter_mut().zip(rest) {
        *s += f64::from(v) * f64::from(v);
    }
    sums.iter().sum()
}

/// `a · b`, in bands of output rows on the pool when it is large enough.
fn product(a: ArrayView2<'_, f32>, b: ArrayView2<'_, f32>) -> Array2<f32> {
    let (m, k, n) = (a.nrows(), a.ncols(), b.ncols());
    if m.saturating_mul(k).saturating_mul(n) < PARALLEL_WORK {
        return a.dot(&b);
    }
    let mut out = Array2::<f32>::zeros((m, n));
    in_bands(&mut out, true, |start, mut band| {
        let part = a.slice_axis(Axis(0), Slice::from(start..start + band.nrows()));
        ndarray::linalg::general_mat_mul(1.0, &part, &b, 0.0, &mut band);
    });
    out
}

fn softmax_rows(logits: &Array2<f32>, temperature: f32) -> Array2<f32> {
    let mut out = logits.mapv(|v| v / temperature);
    for mut row in out.rows_mut() {
        let max = row.fold(f32::NEG_INFINITY, |m, &v| m.max(v));
        row.mapv_inplace(|v| (v - max).exp());
        let sum: f32 = row.sum();
        row.mapv_inplace(|v| v / sum);
    }
    out
}

/// Row-wise log-softmax of `logits / temperature`.
fn log_softmax_rows(logits: &Array2<f32>, temperature: f32) -> Array2<f32> {
    let mut out = logits.mapv(|v| v / temperature);
    for mut row in out.rows_mut() {
        let max = row.fold(f32::NEG_INFINITY, |m, &v| m.max(v));
        let lse = max + row.fold(0.0f32, |s, &v| s + (v - max).exp()).ln();
        row.mapv_inplace(|v| v - lse);
    }
    out
}

impl Backend for CpuBackend {
    type Tensor = Array2<f32>;

    fn name(&self) -> String {
        "cpu".into()
    }

    fn upload(&self, host: &Array2<f32>) -> Result<Array2<f32>, ComputeError> {
        Ok(host.as_standard_layout().into_owned())
    }

    fn download(&self, tensor: &Array2<f32>) -> Result<Array2<f32>, ComputeError> {
        Ok(tensor.clone())
    }

    fn shape(&self, tensor: &Array2<f32>) -> (usize, usize) {
        tensor.dim()
    }

    fn zeros(&self, rows: usize, cols: usize) -> Result<Array2<f32>, ComputeError> {
        Ok(Array2::zeros((rows, cols)))
    }

    fn matmul(
        &self,
        a: &Array2<f32>,
        transpose_a: bool,
        b: &Array2<f32>,
        transpose_b: bool,
    ) -> Result<Array2<f32>, ComputeError> {
        let a = if transpose_a { a.t() } else { a.view() };
        let b = if transpose_b { b.t() } else { b.view() };
        if a.ncols() != b.nrows() {
            return Err(ComputeError::Shape {
                op: "matmul",
                detail: format!("{}x{} · {}x{}", a.nrows(), a.ncols(), b.nrows(), b.ncols()),
            });
        }
        Ok(product(a, b))
    }

    fn bias_activation(
        &self,
        z: &mut Array2<f32>,
        bias: &Array2<f32>,
        activation: Activation,
    ) -> Result<(), ComputeError> {
        same_shape("bias_activation", (1, z.ncols()), bias.dim())?;
        let bias = bias.row(0);
        in_bands(z, elementwise_in_parallel(z), |_, mut band| {
            for mut row in band.rows_mut() {
                Zip::from(&mut row)
                    .and(&bias)
                    .for_each(|v, &b| *v = activation.apply(*v + b));
            }
        });
        Ok(())
    }

    fn activation_backward(
        &self,
        grad: &mut Array2<f32>,
        output: &Array2<f32>,
        activation: Activation,
    ) -> Result<(), ComputeError> {
        same_shape("activation_backward", grad.dim(), output.dim())?;
        in_bands(grad, elementwise_in_parallel(grad), |start, band| {
            let rows = Slice::from(start..start + band.nrows());
            Zip::from(band)
                .and(output.slice_axis(Axis(0), rows))
                .for_each(|g, &y| *g *= activation.derivative_from_output(y));
        });
        Ok(())
    }

    fn sum_rows(&self, tensor: &Array2<f32>) -> Result<Array2<f32>, ComputeError> {
        Ok(tensor.sum_axis(Axis(0)).insert_axis(Axis(0)))
    }

    fn softmax_cross_entropy(
        &self,
        logits: &Array2<f32>,
        labels: &[u32],
    ) -> Result<(f32, Array2<f32>), ComputeError> {
        let (rows, classes) = logits.dim();
        check_labels(rows, classes, labels)?;
        let log_p = log_softmax_rows(logits, 1.0);
        let mut loss = 0.0f64;
        for (row, &label) in labels.iter().enumerate() {
            loss -= f64::from(log_p[[row, label as usize]]);
        }
        let inv = 1.0 / rows as f32;
        let mut grad = log_p.mapv(|v| v.exp() * inv);
        for (row, &label) in labels.iter().enumerate() {
            grad[[row, label as usize]] -= inv;
        }
        Ok(((loss / rows as f64) as f32, grad))
    }

    fn mse(
        &self,
        prediction: &Array2<f32>,
        target: &Array2<f32>,
    ) -> Result<(f32, Array2<f32>), ComputeError> {
        same_shape("mse", prediction.dim(), target.dim())?;
        let n = prediction.len().max(1) as f32;
        let diff = prediction - target;
        let loss = diff
            .iter()
            .map(|&d| f64::from(d) * f64::from(d))
            .sum::<f64>()
            / n as f64;
        Ok((loss as f32, diff.mapv(|d| 2.0 * d / n)))
    }

    fn kl_divergence(
        &self,
        student_logits: &Array2<f32>,
        teacher_logits: &Array2<f32>,
        temperature: f32,
    ) -> Result<(f32, Array2<f32>), ComputeError> {
        same_shape("kl_divergence", student_logits.dim(), teacher_logits.dim())?;
        if !(temperature.is_finite() && temperature > 0.0) {
            return Err(ComputeError::invalid(
                "temperature",
                format!("{temperature}; must be positive"),
            ));
        }
        let rows = student_logits.nrows().max(1) as f32;
        let log_q = log_softmax_rows(student_logits, temperature);
        let log_p = log_softmax_rows(teacher_logits, temperature);
        let mut kl = 0.0f64;
        Zip::from(&log_p).and(&log_q).for_each(|&lp, &lq| {
            kl += f64::from(lp.exp() * (lp - lq));
        });
        let t2 = f64::from(temperature * temperature);
        let loss = (kl * t2 / f64::from(rows)) as f32;
        // d/ds of T²·KL(p‖softmax(s/T)) = T (q − p), then the mean over rows.
        let scale = temperature / rows;
        let mut grad = Array2::zeros(log_q.dim());
        Zip::from(&mut grad)
            .and(&log_q)
            .and(&log_p)
            .for_each(|g, &lq, &lp| *g = scale * (lq.exp() - lp.exp()));
        Ok((loss, grad))
    }

    fn softmax(&self, logits: &Array2<f32>, temperature: f32) -> Result<Array2<f32>, ComputeError> {
        if !(temperature.is_finite() && temperature > 0.0) {
            return Err(ComputeError::invalid(
                "temperature",
                format!("{temperature}; must be positive"),
            ));
        }
        Ok(softmax_rows(logits, temperature))
    }

    fn sum_squares(&self, tensor: &Array2<f32>) -> Result<f32, ComputeError> {
        let sum = match tensor.as_slice() {
            Some(values) => sum_of_squares(values),
            // Not in standard layout (this backend makes none such): its values in order.
            None => sum_of_squares(&tensor.iter().copied().collect::<Vec<_>>()),
        };
        Ok(sum as f32)
    }

    fn scale(&self, tensor: &mut Array2<f32>, s: f32) -> Result<(), ComputeError> {
        tensor.mapv_inplace(|v| v * s);
        Ok(())
    }

    fn add_scaled(&self, y: &mut Array2<f32>, a: f32, x: &Array2<f32>) -> Result<(), ComputeError> {
        same_shape("add_scaled", y.dim(), x.dim())?;
        y.scaled_add(a, x);
        Ok(())
    }

    fn adamw_update(
        &self,
        param: &mut Array2<f32>,
        grad: &Array2<f32>,
        m: &mut Array2<f32>,
        v: &mut Array2<f32>,
        step: &AdamWStep,
    ) -> Result<(), ComputeError> {
        same_shape("adamw_update", param.dim(), grad.dim())?;
        same_shape("adamw_update", param.dim(), m.dim())?;
        same_shape("adamw_update", param.dim(), v.dim())?;
        let (c1, c2, decay) = step.constants();
        let AdamWStep {
            lr,
            beta1,
            beta2,
            eps,
            ..
        } = *step;
        let update = |param: ArrayViewMut2<'_, f32>,
                      grad: ArrayView2<'_, f32>,
                      m: ArrayViewMut2<'_, f32>,
                      v: ArrayViewMut2<'_, f32>| {
            Zip::from(param)
                .and(grad)
                .and(m)
                .and(v)
                .for_each(|p, &g, m, v| {
                    *m = beta1 * *m + (1.0 - beta1) * g;
                    *v = beta2 * *v + (1.0 - beta2) * g * g;
                    let m_hat = *m / c1;
                    let v_hat = *v / c2;
                    *p = *p * decay - lr * m_hat / (v_hat.sqrt() + eps);
                });
        };
        match band_rows(param.nrows(), elementwise_in_parallel(param)) {
            None => update(param.view_mut(), grad.view(), m.view_mut(), v.view_mut()),
            Some((rows, pool)) => {
                let bands = param
                    .axis_chunks_iter_mut(Axis(0), rows)
                    .zip(grad.axis_chunks_iter(Axis(0), rows))
                    .zip(m.axis_chunks_iter_mut(Axis(0), rows))
                    .zip(v.axis_chunks_iter_mut(Axis(0), rows));
                run_bands(pool, bands, |(((p, g), m), v)| update(p, g, m, v));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use ndarray::array;

    use super::*;

    fn close(a: f32, b: f32) -> bool {
        (a - b).abs() <= 1e-5 * (1.0 + a.abs().max(b.abs()))
    }

    #[test]
    fn matmul_transposes_and_checks_shapes() {
        let b = CpuBackend;
        let x = array![[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]];
        let y = b.matmul(&x, true, &x, false).unwrap();
        assert_eq!(y, array![[35.0, 44.0], [44.0, 56.0]]);
        let e = b.matmul(&x, false, &x, false).unwrap_err();
        assert!(matches!(e, ComputeError::Shape { op: "matmul", .. }), "{e}");
    }

    #[test]
    fn losses_match_finite_differences() {
        let b = CpuBackend;
        let logits = array![[0.3f32, -1.2, 2.0], [1.0, 0.5, -0.5]];
        let teacher = array![[1.0f32, 0.0, -1.0], [0.2, 0.1, 0.4]];
        let labels = [2u32, 0];
        let target = array![[0.1f32, 0.2, 0.3], [-1.0, 0.0, 1.0]];
        type Loss<'a> = dyn Fn(&Array2<f32>) -> (f32, Array2<f32>) + 'a;
        let losses: Vec<Box<Loss<'_>>> = vec![
            Box::new(|x| b.softmax_cross_entropy(x, &labels).unwrap()),
            Box::new(|x| b.mse(x, &target).unwrap()),
            Box::new(|x| b.kl_divergence(x, &teacher, 2.5).unwrap()),
        ];
        for loss in &losses {
            let (_, grad) = loss(&logits);
            for i in 0..2 {
                for j in 0..3 {
                    let h = 1e-2;
                    let mut plus = logits.clone();
                    plus[[i, j]] += h;
                    let mut minus = logits.clone();
                    minus[[i, j]] -= h;
                    let numeric = (loss(&plus).0 - loss(&minus).0) / (2.0 * h);
                    assert!((numeric - grad[[i, j]]).abs() < 2e-3, "{numeric} vs {grad}");
                }
            }
        }
        // KL of a distribution with itself is zero.
        let (kl, _) = b.kl_divergence(&teacher, &teacher, 3.0).unwrap();
        assert!(kl.abs() < 1e-6);
        assert!(b.kl_divergence(&teacher, &teacher, 0.0).is_err());
        assert!(b.softmax_cross_entropy(&logits, &[0, 3]).is_err());
        assert!(b.softmax_cross_entropy(&logits, &[0]).is_err());
    }

    #[test]
    fn activations_and_reductions() {
        let b = CpuBackend;
        let mut z = array![[-1.0f32, 2.0], [0.5, -3.0]];
        b.bias_activation(&mut z, &array![[1.0, -1.0]], Activation::Relu)
            .unwrap();
        assert_eq!(z, array![[0.0, 1.0], [1.5, 0.0]]);
        let mut g = array![[1.0f32, 1.0], [1.0, 1.0]];
        b.activation_backward(&mut g, &z, Activation::Relu).unwrap();
        assert_eq!(g, array![[0.0, 1.0], [1.0, 0.0]]);
        assert_eq!(b.sum_rows(&z).unwrap(), array![[1.5, 1.0]]);
        assert!(close(b.sum_squares(&z).unwrap(), 3.25));
        assert!(
            b.bias_activation(&mut z, &array![[1.0]], Activation::Tanh)
                .is_err()
        );
        let p = b.softmax(&array![[1.0f32, 1.0, 1.0]], 1.0).unwrap();
        assert!(p.iter().all(|&v| close(v, 1.0 / 3.0)));
    }

    #[test]
    fn sum_squares_reads_any_layout_in_one_order() {
        let b = CpuBackend;
        let x = Array2::from_shape_fn((37, 19), |(i, j)| ((i * 19 + j) as f32 * 0.37).sin());
        // The same values in the same logical order, one array in standard layout (read as a
        // slice) and one not (read element by element): the same bits.
        let transposed = x.clone().reversed_axes();
        assert!(transposed.as_slice().is_none());
        let standard = transposed.as_standard_layout().into_owned();
        let (a, s) = (
            b.sum_squares(&transposed).unwrap(),
            b.sum_squares(&standard).unwrap(),
        );
        assert_eq!(a.to_bits(), s.to_bits());
        let plain: f64 = x.iter().map(|&v| f64::from(v) * f64::from(v)).sum();
        assert!(close(a, plain as f32), "{a} vs {plain}");
    }

    #[test]
    fn adamw_first_step_moves_by_lr() {
        let b = CpuBackend;
        let mut p = array![[1.0f32, -1.0]];
        let g = array![[0.5f32, -2.0]];
        let (mut m, mut v) = (Array2::zeros((1, 2)), Array2::zeros((1, 2)));
        let step = AdamWStep {
            lr: 0.1,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
            step: 1,
        };
        b.adamw_update(&mut p, &g, &mut m, &mut v, &step).unwrap();
        // The first bias-corrected step is lr · sign(g).
        assert!(close(p[[0, 0]], 0.9) && close(p[[0, 1]], -0.9), "{p}");
        let mut p = array![[1.0f32]];
        let (mut m, mut v) = (Array2::zeros((1, 1)), Array2::zeros((1, 1)));
        let decay = AdamWStep {
            weight_decay: 0.5,
            ..step
        };
        b.adamw_update(&mut p, &array![[0.0]], &mut m, &mut v, &decay)
            .unwrap();
        assert!(close(p[[0, 0]], 0.95), "{p}");
    }
}
