//! AdamW with decoupled weight decay, the learning-rate schedule (linear warmup, then
//! cosine decay), and gradient clipping by global norm.

use serde::{Deserialize, Serialize};

use crate::ComputeError;
use crate::backend::{AdamWStep, Backend};
use crate::model::{Gradients, Layer, Mlp};

/// AdamW's hyperparameters. Weight decay applies to weights, not biases.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct AdamWConfig {
    /// Peak learning rate (reached at the end of warmup).
    pub lr: f32,
    /// First-moment decay.
    pub beta1: f32,
    /// Second-moment decay.
    pub beta2: f32,
    /// Added to the second-moment root.
    pub eps: f32,
    /// Decoupled weight decay.
    pub weight_decay: f32,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        Self {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
        }
    }
}

impl AdamWConfig {
    /// Checks every value is in range.
    pub fn validate(&self) -> Result<(), ComputeError> {
        let in_unit = |v: f32| (0.0..1.0).contains(&v);
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return Err(ComputeError::invalid(
                "learning rate",
                format!("{}; must be positive", self.lr),
            ));
        }
        if !in_unit(self.beta1) || !in_unit(self.beta2) {
            return Err(ComputeError::invalid("betas", "must be in [0, 1)"));
        }
        if !(self.eps.is_finite() && self.eps > 0.0) {
            return Err(ComputeError::invalid("eps", "must be positive"));
        }
        if !(self.weight_decay.is_finite()
            && self.weight_decay >= 0.0
            && self.lr * self.weight_decay < 1.0)
        {
            return Err(ComputeError::invalid(
                "weight decay",
                "must be non-negative, with lr · weight_decay below 1",
            ));
        }
        Ok(())
    }
}

/// Linear warmup from `lr / warmup_steps` to `lr`, then cosine decay to `lr · min_ratio` at
/// `total_steps`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct LrSchedule {
    /// The peak learning rate.
    pub peak: f32,
    /// Steps of warmup.
    pub warmup_steps: u64,
    /// Steps of the whole run.
    pub total_steps: u64,
    /// The final learning rate as a fraction of the peak.
    pub min_ratio: f32,
}

impl LrSchedule {
    /// The learning rate of the 0-based `step`.
    pub fn lr(&self, step: u64) -> f32 {
        if step < self.warmup_steps {
            return self.peak * (step + 1) as f32 / self.warmup_steps as f32;
        }
        let span = self.total_steps.saturating_sub(self.warmup_steps).max(1);
        let progress = ((step - self.warmup_steps) as f64 / span as f64).min(1.0);
        let cosine = 0.5 * (1.0 + (std::f64::consts::PI * progress).cos());
        let min = f64::from(self.peak * self.min_ratio);
        (min + (f64::from(self.peak) - min) * cosine) as f32
    }
}

/// AdamW's state: the moments of every parameter and the number of steps taken.
#[derive(Clone, Debug)]
pub struct AdamW<B: Backend> {
    config: AdamWConfig,
    pub(crate) m: Vec<Layer<B>>,
    pub(crate) v: Vec<Layer<B>>,
    pub(crate) steps: u64,
}

impl<B: Backend> AdamW<B> {
    /// Zero moments for `model`'s parameters.
    pub fn new(backend: &B, model: &Mlp<B>, config: AdamWConfig) -> Result<Self, ComputeError> {
        config.validate()?;
        let zeros = || -> Result<Vec<Layer<B>>, ComputeError> {
            model
                .config()
                .layers()
                .into_iter()
                .map(|(i, o)| {
                    Ok(Layer {
                        weight: backend.zeros(i, o)?,
                        bias: backend.zeros(1, o)?,
                    })
                })
                .collect()
        };
        Ok(Self {
            config,
            m: zeros()?,
            v: zeros()?,
            steps: 0,
        })
    }

    /// Steps taken.
    pub fn steps(&self) -> u64 {
        self.steps
    }

    /// One update of every parameter of `model` with `grads` at learning rate `lr`.
    pub fn step(
        &mut self,
        backend: &B,
        model: &mut Mlp<B>,
        grads: &Gradients<B>,
        lr: f32,
    ) -> Result<(), ComputeError> {
        self.steps += 1;
        let base = AdamWStep {
            lr,
            beta1: self.config.beta1,
            beta2: self.config.beta2,
            eps: self.config.eps,
            weight_decay: self.config.weight_decay,
            step: self.steps,
        };
        let no_decay = AdamWStep {
            weight_decay: 0.0,
            ..base
        };
        for (((layer, grad), m), v) in model
            .layers_mut()
            .iter_mut()
            .zip(&grads.layers)
            .zip(&mut self.m)
            .zip(&mut self.v)
        {
            backend.adamw_update(
                &mut layer.weight,
                &grad.weight,
                &mut m.weight,
                &mut v.weight,
                &base,
            )?;
            backend.adamw_update(
                &mut layer.bias,
                &grad.bias,
                &mut m.bias,
                &mut v.bias,
                &no_decay,
            )?;
        }
        Ok(())
    }
}

/// Scales `grads` so that their global L2 norm is at most `max_norm`; returns the norm
/// before clipping.
pub fn clip_gradients<B: Backend>(
    backend: &B,
    grads: &mut Gradients<B>,
    max_norm: f32,
) -> Result<f32, ComputeError> {
    let mut total = 0.0f64;
    for layer in &grads.layers {
        total += f64::from(backend.sum_squares(&layer.weight)?);
        total += f64::from(backend.sum_squares(&layer.bias)?);
    }
    let norm = total.sqrt() as f32;
    if norm > max_norm && norm.is_finite() {
        let s = max_norm / (norm + 1e-6);
        for layer in &mut grads.layers {
            backend.scale(&mut layer.weight, s)?;
            backend.scale(&mut layer.bias, s)?;
        }
    }
    Ok(norm)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_warms_up_then_decays() {
        let s = LrSchedule {
            peak: 1.0,
            warmup_steps: 10,
            total_steps: 110,
            min_ratio: 0.1,
        };
        assert!((s.lr(0) - 0.1).abs() < 1e-6);
        assert!((s.lr(9) - 1.0).abs() < 1e-6);
        assert!((s.lr(10) - 1.0).abs() < 1e-6);
        assert!((s.lr(60) - 0.55).abs() < 1e-6);
        assert!((s.lr(110) - 0.1).abs() < 1e-6);
        assert!((s.lr(500) - 0.1).abs() < 1e-6);
        assert!((1..110).all(|t| t <= 10 || s.lr(t) <= s.lr(t - 1)));
    }

    #[test]
    fn bad_hyperparameters_are_refused() {
        for c in [
            AdamWConfig {
                lr: 0.0,
                ..Default::default()
            },
            AdamWConfig {
                lr: f32::NAN,
                ..Default::default()
            },
            AdamWConfig {
                beta1: 1.0,
                ..Default::default()
            },
            AdamWConfig {
                weight_decay: -1.0,
                ..Default::default()
            },
        ] {
            assert!(c.validate().is_err(), "{c:?}");
        }
    }
}
