//! The operations models are built from, behind one trait, so that the same algorithms run
//! on any device. [`CpuBackend`] (ndarray) is the reference every other backend is checked
//! against; `CudaBackend` (feature `cuda`) runs them on an NVIDIA GPU.
//!
//! Matrices are row-major `f32`, one row per sample. Losses return their mean over the batch
//! and the gradient of that mean with respect to their input, so a caller never scales by
//! the batch size itself.

mod cpu;
// The one module where the crate allows `unsafe`: kernel launches and cuBLAS calls (see its
// module doc). Everywhere else it stays denied.
#[cfg(feature = "cuda")]
#[allow(unsafe_code)]
pub(crate) mod cuda;

use std::fmt;

use ndarray::Array2;
use serde::{Deserialize, Serialize};

use crate::ComputeError;

pub use cpu::{CpuBackend, set_threads, threads};
#[cfg(feature = "cuda")]
pub use cuda::{CudaBackend, CudaTensor};

/// The nonlinearity after a hidden layer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    /// No nonlinearity (the output layer).
    Identity,
    /// `max(0, x)`.
    #[default]
    Relu,
    /// `tanh(x)`.
    Tanh,
}

impl Activation {
    /// The activation of `x`.
    pub fn apply(self, x: f32) -> f32 {
        match self {
            Self::Identity => x,
            Self::Relu => x.max(0.0),
            Self::Tanh => x.tanh(),
        }
    }

    /// The derivative, written in terms of the activation's output `y` (which is what the
    /// forward pass keeps).
    pub fn derivative_from_output(self, y: f32) -> f32 {
        match self {
            Self::Identity => 1.0,
            Self::Relu => {
                if y > 0.0 {
                    1.0
                } else {
                    0.0
                }
            }
            Self::Tanh => 1.0 - y * y,
        }
    }
}

/// One AdamW step's hyperparameters (decoupled weight decay, as in PyTorch's `AdamW`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamWStep {
    /// Learning rate for this step.
    pub lr: f32,
    /// First-moment decay.
    pub beta1: f32,
    /// Second-moment decay.
    pub beta2: f32,
    /// Added to the second-moment root.
    pub eps: f32,
    /// Decoupled weight decay (0 for biases).
    pub weight_decay: f32,
    /// The 1-based step number, for bias correction.
    pub step: u64,
}

impl AdamWStep {
    /// The step's constants, computed once here so that every backend updates with the
    /// same bits: the bias corrections `1 − β₁ᵗ` and `1 − β₂ᵗ`, and the decoupled decay
    /// factor `1 − lr · weight_decay`.
    pub fn constants(&self) -> (f32, f32, f32) {
        let t = i32::try_from(self.step.max(1)).unwrap_or(i32::MAX);
        (
            1.0 - self.beta1.powi(t),
            1.0 - self.beta2.powi(t),
            1.0 - self.lr * self.weight_decay,
        )
    }
}

/// A device that runs the operations of training and inference.
///
/// Implementations check shapes and return [`ComputeError::Shape`] rather than panic.
pub trait Backend: fmt::Debug {
    /// A matrix on the device.
    type Tensor: Clone + fmt::Debug + Send;

    /// A short name for logs and reports, e.g. `cpu`.
    fn name(&self) -> String;
    /// Copies a host matrix to the device.
    fn upload(&self, host: &Array2<f32>) -> Result<Self::Tensor, ComputeError>;
    /// Copies a device matrix to the host.
    fn download(&self, tensor: &Self::Tensor) -> Result<Array2<f32>, ComputeError>;
    /// `(rows, columns)`.
    fn shape(&self, tensor: &Self::Tensor) -> (usize, usize);
    /// A matrix of zeros.
    fn zeros(&self, rows: usize, cols: usize) -> Result<Self::Tensor, ComputeError>;

    /// `op(a) · op(b)`, where `op` transposes when the flag is set.
    fn matmul(
        &self,
        a: &Self::Tensor,
        transpose_a: bool,
        b: &Self::Tensor,
        transpose_b: bool,
    ) -> Result<Self::Tensor, ComputeError>;
    /// In place: `z ← act(z + bias)`, `bias` a `1 × cols` row added to every row.
    fn bias_activation(
        &self,
        z: &mut Self::Tensor,
        bias: &Self::Tensor,
        activation: Activation,
    ) -> Result<(), ComputeError>;
    /// In place: `grad ← grad ⊙ act'(…)`, with the derivative taken from the forward
    /// pass's `output` of the activation.
    fn activation_backward(
        &self,
        grad: &mut Self::Tensor,
        output: &Self::Tensor,
        activation: Activation,
    ) -> Result<(), ComputeError>;
    /// The sum of the rows, as a `1 × cols` matrix (a bias gradient).
    fn sum_rows(&self, tensor: &Self::Tensor) -> Result<Self::Tensor, ComputeError>;
    /// Mean softmax cross-entropy of `logits` against class `labels`, and its gradient.
    fn softmax_cross_entropy(
        &self,
        logits: &Self::Tensor,
        labels: &[u32],
    ) -> Result<(f32, Self::Tensor), ComputeError>;
    /// Mean squared error over every element, and its gradient.
    fn mse(
        &self,
        prediction: &Self::Tensor,
        target: &Self::Tensor,
    ) -> Result<(f32, Self::Tensor), ComputeError>;
    /// `T² · KL(softmax(teacher/T) ‖ softmax(student/T))`, averaged over rows, and its
    /// gradient with respect to the student's logits. The `T²` keeps the gradient's scale
    /// independent of the temperature (Hinton et al., 2015).
    fn kl_divergence(
        &self,
        student_logits: &Self::Tensor,
        teacher_logits: &Self::Tensor,
        temperature: f32,
    ) -> Result<(f32, Self::Tensor), ComputeError>;
    /// Row-wise `softmax(logits / temperature)`.
    fn softmax(
        &self,
        logits: &Self::Tensor,
        temperature: f32,
    ) -> Result<Self::Tensor, ComputeError>;
    /// The sum of squared elements (for gradient norms).
    fn sum_squares(&self, tensor: &Self::Tensor) -> Result<f32, ComputeError>;
    /// In place: `tensor ← s · tensor`.
    fn scale(&self, tensor: &mut Self::Tensor, s: f32) -> Result<(), ComputeError>;
    /// In place: `y ← y + a · x`.
    fn add_scaled(
        &self,
        y: &mut Self::Tensor,
        a: f32,
        x: &Self::Tensor,
    ) -> Result<(), ComputeError>;
    /// One AdamW update of `param` with `grad`, updating the moments `m` and `v` in place.
    fn adamw_update(
        &self,
        param: &mut Self::Tensor,
        grad: &Self::Tensor,
        m: &mut Self::Tensor,
        v: &mut Self::Tensor,
        step: &AdamWStep,
    ) -> Result<(), ComputeError>;
}

pub(crate) fn same_shape(
    op: &'static str,
    a: (usize, usize),
    b: (usize, usize),
) -> Result<(), ComputeError> {
    if a == b {
        Ok(())
    } else {
        Err(ComputeError::Shape {
            op,
            detail: format!("{}x{} and {}x{}", a.0, a.1, b.0, b.1),
        })
    }
}

/// Checks that there is one label per row of logits, at least one row, and every label is
/// one of the `classes` outputs.
pub(crate) fn check_labels(
    rows: usize,
    classes: usize,
    labels: &[u32],
) -> Result<(), ComputeError> {
    if labels.len() != rows || rows == 0 {
        return Err(ComputeError::Shape {
            op: "softmax_cross_entropy",
            detail: format!("{rows} rows of logits, {} labels", labels.len()),
        });
    }
    match labels.iter().find(|&&c| c as usize >= classes) {
        Some(bad) => Err(ComputeError::invalid(
            "label",
            format!("class {bad} with {classes} outputs"),
        )),
        None => Ok(()),
    }
}
