//! The training loop: minibatch AdamW over shuffled epochs, with warmup and cosine decay,
//! gradient clipping, optional distillation from a teacher's logits, checkpoints, resume,
//! progress and cancellation.
//!
//! Determinism: shuffling draws from its own [`Rng`] stream of `seed`, and each checkpoint
//! stores that generator's state at the start of the current epoch and how many batches of
//! the epoch are done. A resumed run rebuilds the same order and continues from the same
//! batch with the same weights and optimizer moments, so on the CPU training straight
//! through and training with a kill and resume give bit-identical weights.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use ndarray::{Array2, Axis};
use serde::{Deserialize, Serialize};

use crate::backend::Backend;
use crate::checkpoint::{self, CheckpointDir};
use crate::model::{Head, Mlp};
use crate::optim::{AdamW, AdamWConfig, LrSchedule, clip_gradients};
use crate::{ComputeError, Dataset, Rng, Standardizer, Targets, Task};

/// Training with a teacher: the loss is `alpha · CE(labels) + (1 − alpha) · T² · KL(teacher
/// ‖ student)` at temperature `T`, the teacher's logits taken from the dataset's soft
/// targets (see [`crate::label_with_teacher`]).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct DistillConfig {
    /// The softmax temperature, positive; 2 to 5 is usual.
    pub temperature: f32,
    /// The weight of the hard-label loss, in `[0, 1]`.
    pub alpha: f32,
}

/// How to train.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    /// Passes over the training data, at least 1.
    pub epochs: u32,
    /// Rows per step, at least 1. The last batch of an epoch may be smaller.
    pub batch_size: usize,
    /// The optimizer.
    pub optimizer: AdamWConfig,
    /// The share of all steps spent warming up, in `[0, 1]`.
    pub warmup_fraction: f32,
    /// The final learning rate as a fraction of the peak, in `[0, 1]`.
    pub min_lr_ratio: f32,
    /// Clip the gradient's global norm to this, if set.
    pub clip_norm: Option<f32>,
    /// The seed of the shuffling order.
    pub seed: u64,
    /// Also checkpoint every this many steps (0: at the end of each epoch only).
    pub checkpoint_every: u64,
    /// Distil from soft targets, if set.
    pub distill: Option<DistillConfig>,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            epochs: 10,
            batch_size: 64,
            optimizer: AdamWConfig::default(),
            warmup_fraction: 0.05,
            min_lr_ratio: 0.05,
            clip_norm: Some(1.0),
            seed: 0,
            checkpoint_every: 0,
            distill: None,
        }
    }
}

impl TrainConfig {
    /// Checks every value is in range.
    pub fn validate(&self) -> Result<(), ComputeError> {
        if self.epochs == 0 {
            return Err(ComputeError::invalid("epochs", "must be at least 1"));
        }
        if self.batch_size == 0 {
            return Err(ComputeError::invalid("batch size", "must be at least 1"));
        }
        self.optimizer.validate()?;
        let unit = |v: f32| (0.0..=1.0).contains(&v);
        if !unit(self.warmup_fraction) || !unit(self.min_lr_ratio) {
            return Err(ComputeError::invalid(
                "schedule",
                "warmup fraction and min lr ratio must be in [0, 1]",
            ));
        }
        if let Some(c) = self.clip_norm
            && !(c.is_finite() && c > 0.0)
        {
            return Err(ComputeError::invalid(
                "clip norm",
                format!("{c}; must be positive"),
            ));
        }
        if let Some(d) = self.distill
            && !(d.temperature.is_finite() && d.temperature > 0.0 && unit(d.alpha))
        {
            return Err(ComputeError::invalid(
                "distillation",
                "temperature must be positive and alpha in [0, 1]",
            ));
        }
        Ok(())
    }

    /// What must match for a checkpoint to be resumed: everything but how often to save.
    fn fingerprint(&self) -> String {
        let mut c = self.clone();
        c.checkpoint_every = 0;
        serde_json::to_string(&c).unwrap_or_default()
    }
}

/// One step's report.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Progress {
    /// Steps done, counting this one.
    pub step: u64,
    /// Steps of the whole run.
    pub total_steps: u64,
    /// The 0-based epoch this step belongs to.
    pub epoch: u32,
    /// Epochs of the whole run.
    pub epochs: u32,
    /// This batch's loss.
    pub loss: f32,
    /// The learning rate used.
    pub lr: f32,
    /// Training throughput since this call started (or resumed).
    pub samples_per_sec: f64,
    /// Estimated time to finish, at that throughput.
    pub eta: Duration,
    /// The validation loss, on the last step of an epoch when a validation set was given.
    pub validation_loss: Option<f32>,
}

/// What the progress callback wants next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Control {
    /// Keep training.
    Continue,
    /// Stop now (cancellation). Nothing more is saved: resume starts from the last
    /// checkpoint.
    Stop,
}

/// How a training call ended.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TrainOutcome {
    /// Steps done in total, including those before a resume.
    pub steps: u64,
    /// The step the run resumed from, if it did.
    pub resumed_from: Option<u64>,
    /// Whether the callback stopped it before the end.
    pub stopped: bool,
    /// The last batch's loss (NaN if no step ran).
    pub last_loss: f32,
    /// The last validation loss, if there was a validation set.
    pub validation_loss: Option<f32>,
    /// Training throughput of this call.
    pub samples_per_sec: f64,
}

const SHUFFLE_STREAM: u64 = 0x5_4FF1E;
const KEY_TRAIN: &str = "nexa.train_config";
const KEY_STEP: &str = "nexa.step";
const KEY_EPOCH: &str = "nexa.epoch";
const KEY_BATCH: &str = "nexa.batch_in_epoch";
const KEY_RNG: &str = "nexa.rng";

/// Data prepared for the model: standardised features and targets.
struct Prepared {
    x: Array2<f32>,
    y: Option<Array2<f32>>,
    classes: Option<Vec<u32>>,
    soft: Option<Array2<f32>>,
}

fn prepare<B: Backend>(model: &Mlp<B>, data: &Dataset) -> Result<Prepared, ComputeError> {
    let x = match &model.input_norm {
        Some(n) => n.apply(data.features())?,
        None => data.features().clone(),
    };
    let (y, classes) = match data.targets() {
        Targets::Classes(c) => (None, Some(c.clone())),
        Targets::Values(v) => (
            Some(match &model.target_norm {
                Some(n) => n.apply(v)?,
                None => v.clone(),
            }),
            None,
        ),
    };
    Ok(Prepared {
        x,
        y,
        classes,
        soft: data.soft_targets().cloned(),
    })
}

fn check_fit<B: Backend>(
    model: &Mlp<B>,
    data: &Dataset,
    config: &TrainConfig,
) -> Result<(), ComputeError> {
    let schema = data.schema();
    let m = model.config();
    if m.inputs != schema.features.len() || m.outputs != schema.outputs() {
        return Err(ComputeError::invalid(
            "model",
            format!(
                "the model maps {} inputs to {} outputs; the dataset has {} features and {} outputs",
                m.inputs,
                m.outputs,
                schema.features.len(),
                schema.outputs()
            ),
        ));
    }
    let head_ok = matches!(
        (m.head, schema.task),
        (Head::Classification, Task::Classification { .. }) | (Head::Regression, Task::Regression)
    );
    if !head_ok {
        return Err(ComputeError::invalid(
            "model",
            format!(
                "a {:?} model cannot train on a {:?} dataset",
                m.head, schema.task
            ),
        ));
    }
    if config.distill.is_some() {
        if m.head != Head::Classification {
            return Err(ComputeError::invalid(
                "distillation",
                "needs a classification task",
            ));
        }
        if data.soft_targets().is_none() {
            return Err(ComputeError::invalid(
                "distillation",
                "the dataset has no teacher logits; label it with label_with_teacher first",
            ));
        }
    }
    Ok(())
}

/// The loss of `output` against rows `rows` of `data`, and its gradient.
fn loss<B: Backend>(
    backend: &B,
    output: &B::Tensor,
    data: &Prepared,
    rows: &[usize],
    distill: Option<DistillConfig>,
) -> Result<(f32, B::Tensor), ComputeError> {
    if let Some(classes) = &data.classes {
        let labels: Vec<u32> = rows.iter().map(|&i| classes[i]).collect();
        let (hard, mut grad) = backend.softmax_cross_entropy(output, &labels)?;
        let (Some(d), Some(soft)) = (distill, &data.soft) else {
            return Ok((hard, grad));
        };
        let teacher = backend.upload(&soft.select(Axis(0), rows))?;
        let (kl, kl_grad) = backend.kl_divergence(output, &teacher, d.temperature)?;
        backend.scale(&mut grad, d.alpha)?;
        backend.add_scaled(&mut grad, 1.0 - d.alpha, &kl_grad)?;
        Ok((d.alpha * hard + (1.0 - d.alpha) * kl, grad))
    } else {
        let y = data
            .y
            .as_ref()
            .ok_or_else(|| ComputeError::invalid("dataset", "no targets"))?;
        let target = backend.upload(&y.select(Axis(0), rows))?;
        backend.mse(output, &target)
    }
}

/// The mean loss over all of `data`, in chunks.
fn evaluate_loss<B: Backend>(
    backend: &B,
    model: &Mlp<B>,
    data: &Prepared,
    distill: Option<DistillConfig>,
) -> Result<f32, ComputeError> {
    let n = data.x.nrows();
    if n == 0 {
        return Ok(f32::NAN);
    }
    let mut total = 0.0f64;
    let all: Vec<usize> = (0..n).collect();
    for chunk in all.chunks(4096) {
        let x = backend.upload(&data.x.select(Axis(0), chunk))?;
        let out = model.infer(backend, &x)?;
        let (l, _) = loss(backend, &out, data, chunk, distill)?;
        total += f64::from(l) * chunk.len() as f64;
    }
    Ok((total / n as f64) as f32)
}

/// Trains `model` on `train`, reporting each step to `progress`.
///
/// Standardisers the model lacks are fitted on `train` first. With `checkpoints`, the run
/// resumes from the latest complete checkpoint there (which must come from the same model
/// and training configuration), saves one every `checkpoint_every` steps and at the end of
/// every epoch, and a run that finds its last step already done returns at once.
pub fn train<B: Backend>(
    backend: &B,
    model: &mut Mlp<B>,
    train: &Dataset,
    validation: Option<&Dataset>,
    config: &TrainConfig,
    checkpoints: Option<&CheckpointDir>,
    progress: &mut dyn FnMut(&Progress) -> Control,
) -> Result<TrainOutcome, ComputeError> {
    config.validate()?;
    check_fit(model, train, config)?;
    if let Some(v) = validation {
        check_fit(model, v, config)?;
    }
    if train.is_empty() {
        return Err(ComputeError::invalid("training set", "has no rows"));
    }
    if model.input_norm.is_none() {
        model.input_norm = Some(Standardizer::fit(train.features()));
    }
    if let (Targets::Values(v), None) = (train.targets(), &model.target_norm) {
        model.target_norm = Some(Standardizer::fit(v));
    }

    let n = train.len();
    let per_epoch = n.div_ceil(config.batch_size) as u64;
    let total_steps = per_epoch * u64::from(config.epochs);
    let schedule = LrSchedule {
        peak: config.optimizer.lr,
        warmup_steps: (total_steps as f64 * f64::from(config.warmup_fraction)).round() as u64,
        total_steps,
        min_ratio: config.min_lr_ratio,
    };
    let mut optimizer = AdamW::new(backend, model, config.optimizer)?;
    let mut rng = Rng::derive(config.seed, SHUFFLE_STREAM);
    let mut epoch = 0u32;
    let mut batch_start = 0u64;
    let mut resumed_from = None;
    if let Some(dir) = checkpoints
        && let Some(ckpt) = dir.latest()?
    {
        let state = restore(backend, model, &mut optimizer, &ckpt, config)?;
        epoch = state.epoch;
        batch_start = state.batch;
        rng = state.rng;
        resumed_from = Some(ckpt.step);
    }
    let data = prepare(model, train)?;
    let validation = validation.map(|v| prepare(model, v)).transpose()?;

    let started = Instant::now();
    let steps_at_start = optimizer.steps();
    let mut seen = 0u64;
    let mut last_loss = f32::NAN;
    let mut validation_loss = None;
    let outcome =
        |steps: u64, stopped: bool, last_loss: f32, validation_loss: Option<f32>, seen: u64| {
            TrainOutcome {
                steps,
                resumed_from,
                stopped,
                last_loss,
                validation_loss,
                samples_per_sec: seen as f64 / started.elapsed().as_secs_f64().max(1e-9),
            }
        };
    while epoch < config.epochs {
        let epoch_rng = rng.clone();
        let mut order: Vec<usize> = (0..n).collect();
        rng.shuffle(&mut order);
        let batches: Vec<&[usize]> = order.chunks(config.batch_size).collect();
        for (index, rows) in batches.iter().enumerate().skip(batch_start as usize) {
            let x = backend.upload(&data.x.select(Axis(0), rows))?;
            let (output, cache) = model.forward(backend, &x)?;
            let (batch_loss, grad) = loss(backend, &output, &data, rows, config.distill)?;
            let step = optimizer.steps();
            if !batch_loss.is_finite() {
                return Err(ComputeError::Diverged {
                    step: step + 1,
                    loss: batch_loss,
                });
            }
            let mut grads = model.backward(backend, cache, grad)?;
            if let Some(max) = config.clip_norm {
                clip_gradients(backend, &mut grads, max)?;
            }
            let lr = schedule.lr(step);
            optimizer.step(backend, model, &grads, lr)?;
            last_loss = batch_loss;
            seen += rows.len() as u64;

            let step = optimizer.steps();
            let epoch_done = index + 1 == batches.len();
            if epoch_done && let Some(v) = &validation {
                validation_loss = Some(evaluate_loss(backend, model, v, config.distill)?);
            }
            if let Some(dir) = checkpoints {
                if epoch_done {
                    save(backend, model, &optimizer, dir, config, epoch + 1, 0, &rng)?;
                } else if config.checkpoint_every > 0
                    && step.is_multiple_of(config.checkpoint_every)
                {
                    let done = index as u64 + 1;
                    save(
                        backend, model, &optimizer, dir, config, epoch, done, &epoch_rng,
                    )?;
                }
            }
            let elapsed = started.elapsed().as_secs_f64().max(1e-9);
            let rate = seen as f64 / elapsed;
            let steps_done_here = (step - steps_at_start).max(1);
            let eta = elapsed / steps_done_here as f64 * (total_steps - step) as f64;
            let report = Progress {
                step,
                total_steps,
                epoch,
                epochs: config.epochs,
                loss: batch_loss,
                lr,
                samples_per_sec: rate,
                eta: Duration::from_secs_f64(eta.min(1e9)),
                validation_loss: if epoch_done { validation_loss } else { None },
            };
            if progress(&report) == Control::Stop {
                return Ok(outcome(step, true, last_loss, validation_loss, seen));
            }
        }
        batch_start = 0;
        epoch += 1;
    }
    Ok(outcome(
        optimizer.steps(),
        false,
        last_loss,
        validation_loss,
        seen,
    ))
}

struct Resumed {
    epoch: u32,
    batch: u64,
    rng: Rng,
}

#[allow(clippy::too_many_arguments)]
fn save<B: Backend>(
    backend: &B,
    model: &Mlp<B>,
    optimizer: &AdamW<B>,
    dir: &CheckpointDir,
    config: &TrainConfig,
    epoch: u32,
    batch: u64,
    rng: &Rng,
) -> Result<(), ComputeError> {
    let mut tensors = model.to_tensors(backend)?;
    for (kind, moments) in [("m", &optimizer.m), ("v", &optimizer.v)] {
        for (i, layer) in moments.iter().enumerate() {
            tensors.insert(
                format!("optimizer.{kind}.{i}.weight"),
                backend.download(&layer.weight)?,
            );
            tensors.insert(
                format!("optimizer.{kind}.{i}.bias"),
                backend.download(&layer.bias)?,
            );
        }
    }
    let mut metadata = HashMap::new();
    metadata.insert(
        checkpoint::CONFIG_KEY.to_owned(),
        serde_json::to_string(model.config()).unwrap_or_default(),
    );
    metadata.insert(KEY_TRAIN.to_owned(), config.fingerprint());
    metadata.insert(KEY_STEP.to_owned(), optimizer.steps().to_string());
    metadata.insert(KEY_EPOCH.to_owned(), epoch.to_string());
    metadata.insert(KEY_BATCH.to_owned(), batch.to_string());
    metadata.insert(KEY_RNG.to_owned(), rng.to_hex());
    dir.save(optimizer.steps(), &tensors, metadata)?;
    Ok(())
}

fn restore<B: Backend>(
    backend: &B,
    model: &mut Mlp<B>,
    optimizer: &mut AdamW<B>,
    ckpt: &checkpoint::Checkpoint,
    config: &TrainConfig,
) -> Result<Resumed, ComputeError> {
    let bad = |reason: String| ComputeError::Checkpoint {
        path: ckpt.path.clone(),
        reason,
    };
    let get = |key: &str| {
        ckpt.metadata
            .get(key)
            .ok_or_else(|| bad(format!("no {key:?} in the metadata")))
    };
    let model_config = serde_json::to_string(model.config()).unwrap_or_default();
    if get(checkpoint::CONFIG_KEY)? != &model_config {
        return Err(bad(format!(
            "it is of another model ({}); use an empty checkpoint folder for this one",
            get(checkpoint::CONFIG_KEY)?
        )));
    }
    if get(KEY_TRAIN)? != &config.fingerprint() {
        return Err(bad(
            "it was written with another training configuration; use an empty checkpoint \
             folder, or the configuration it was started with"
                .into(),
        ));
    }
    let number = |key: &str| -> Result<u64, ComputeError> {
        get(key)?
            .parse::<u64>()
            .map_err(|e| bad(format!("{key}: {e}")))
    };
    let step = number(KEY_STEP)?;
    let epoch = u32::try_from(number(KEY_EPOCH)?).map_err(|e| bad(e.to_string()))?;
    let batch = number(KEY_BATCH)?;
    let rng = Rng::from_hex(get(KEY_RNG)?).ok_or_else(|| bad("bad RNG state".into()))?;
    let restored = Mlp::from_tensors(backend, model.config().clone(), &ckpt.tensors, &ckpt.path)?;
    let take = |name: String, shape: (usize, usize)| -> Result<B::Tensor, ComputeError> {
        let t = ckpt
            .tensors
            .get(&name)
            .ok_or_else(|| bad(format!("no tensor {name:?}")))?;
        if t.dim() != shape {
            return Err(bad(format!("tensor {name:?} has shape {:?}", t.dim())));
        }
        backend.upload(t)
    };
    for (kind, moments) in [("m", &mut optimizer.m), ("v", &mut optimizer.v)] {
        for (i, (fan_in, fan_out)) in model.config().layers().into_iter().enumerate() {
            moments[i].weight = take(format!("optimizer.{kind}.{i}.weight"), (fan_in, fan_out))?;
            moments[i].bias = take(format!("optimizer.{kind}.{i}.bias"), (1, fan_out))?;
        }
    }
    optimizer.steps = step;
    *model = restored;
    Ok(Resumed { epoch, batch, rng })
}
