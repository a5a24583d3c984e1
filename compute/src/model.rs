//! The multilayer perceptron: configuration and named presets, seeded initialisation,
//! forward and backward passes, and the model file (safetensors).
//!
//! A model owns the standardisation of its inputs (and, for regression, of its targets),
//! fitted on the training data, so that [`Mlp::predict`] takes raw features and gives
//! results in the data's units.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::str::FromStr;

use ndarray::Array2;
use serde::{Deserialize, Serialize};

use crate::backend::{Activation, Backend};
use crate::checkpoint::{self, TensorMap};
use crate::{ComputeError, Rng, Standardizer};

/// What the output layer predicts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Head {
    /// Logits of each class; trained with softmax cross-entropy.
    Classification,
    /// Real values; trained with mean squared error.
    Regression,
}

/// A named model size.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Preset {
    /// Three hidden layers of 256: the teacher.
    TeacherLarge,
    /// Two hidden layers of 128.
    Medium,
    /// Two hidden layers of 32: the student.
    StudentSmall,
}

impl Preset {
    /// Every preset, largest first.
    pub const ALL: [Preset; 3] = [Self::TeacherLarge, Self::Medium, Self::StudentSmall];

    /// The hidden layer widths.
    pub fn hidden(self) -> Vec<usize> {
        match self {
            Self::TeacherLarge => vec![256, 256, 256],
            Self::Medium => vec![128, 128],
            Self::StudentSmall => vec![32, 32],
        }
    }

    /// The name used in job parameters: `teacher_large`, `medium`, `student_small`.
    pub fn name(self) -> &'static str {
        match self {
            Self::TeacherLarge => "teacher_large",
            Self::Medium => "medium",
            Self::StudentSmall => "student_small",
        }
    }

    /// The configuration of this preset for `inputs` features and `outputs` outputs.
    pub fn config(self, inputs: usize, outputs: usize, head: Head) -> MlpConfig {
        MlpConfig {
            inputs,
            hidden: self.hidden(),
            outputs,
            activation: Activation::Relu,
            head,
        }
    }
}

impl fmt::Display for Preset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Preset {
    type Err = ComputeError;

    fn from_str(text: &str) -> Result<Self, ComputeError> {
        let text = text.trim().to_ascii_lowercase().replace('-', "_");
        Self::ALL
            .into_iter()
            .find(|p| p.name() == text)
            .ok_or_else(|| {
                ComputeError::invalid(
                    "preset",
                    format!(
                        "{text:?}; known presets: {}",
                        Self::ALL.map(|p| p.name()).join(", ")
                    ),
                )
            })
    }
}

/// The shape of an MLP.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MlpConfig {
    /// Input features.
    pub inputs: usize,
    /// Hidden layer widths, input side first; may be empty (a linear model).
    pub hidden: Vec<usize>,
    /// Outputs: classes, or regression targets.
    pub outputs: usize,
    /// The hidden layers' activation.
    pub activation: Activation,
    /// Classification or regression.
    pub head: Head,
}

impl MlpConfig {
    /// `(inputs, outputs)` of each layer.
    pub fn layers(&self) -> Vec<(usize, usize)> {
        let mut widths = vec![self.inputs];
        widths.extend(&self.hidden);
        widths.push(self.outputs);
        widths.windows(2).map(|w| (w[0], w[1])).collect()
    }

    /// The number of trainable parameters.
    pub fn parameters(&self) -> usize {
        self.layers().iter().map(|(i, o)| i * o + o).sum()
    }

    /// Checks that every width is positive and the model is not absurdly large.
    pub fn validate(&self) -> Result<(), ComputeError> {
        if self.inputs == 0 || self.outputs == 0 || self.hidden.contains(&0) {
            return Err(ComputeError::invalid(
                "model",
                format!("every layer needs a positive width: {self:?}"),
            ));
        }
        if self.head == Head::Classification && self.outputs < 2 {
            return Err(ComputeError::invalid(
                "model",
                "a classifier needs at least 2 outputs",
            ));
        }
        let too_big = self
            .layers()
            .iter()
            .any(|(i, o)| i.checked_mul(*o).is_none_or(|n| n > 1 << 28));
        if too_big {
            return Err(ComputeError::invalid(
                "model",
                "a layer has more than 2^28 weights",
            ));
        }
        Ok(())
    }
}

/// One dense layer: `y = act(x · weight + bias)`.
#[derive(Clone, Debug)]
pub struct Layer<B: Backend> {
    /// `inputs × outputs`.
    pub weight: B::Tensor,
    /// `1 × outputs`.
    pub bias: B::Tensor,
}

/// The gradient of every parameter, in [`Mlp::layers`] order.
#[derive(Clone, Debug)]
pub struct Gradients<B: Backend> {
    /// One per layer.
    pub layers: Vec<Layer<B>>,
}

/// What the forward pass keeps for the backward pass: each layer's input.
#[derive(Debug)]
pub struct ForwardCache<B: Backend> {
    inputs: Vec<B::Tensor>,
}

/// A multilayer perceptron on backend `B`.
#[derive(Clone, Debug)]
pub struct Mlp<B: Backend> {
    config: MlpConfig,
    layers: Vec<Layer<B>>,
    /// Fitted on the training features; applied by [`Mlp::predict`].
    pub input_norm: Option<Standardizer>,
    /// Regression only: fitted on the training targets; inverted by [`Mlp::predict`].
    pub target_norm: Option<Standardizer>,
}

impl<B: Backend> Mlp<B> {
    /// A model with He-uniform weights (Glorot for a tanh or identity layer) and zero
    /// biases, drawn from `seed`: the same seed gives the same model.
    pub fn new(backend: &B, config: MlpConfig, seed: u64) -> Result<Self, ComputeError> {
        config.validate()?;
        let mut rng = Rng::derive(seed, 0x1417);
        let count = config.layers().len();
        let mut layers = Vec::with_capacity(count);
        for (index, (fan_in, fan_out)) in config.layers().into_iter().enumerate() {
            let last = index + 1 == count;
            let limit = if config.activation == Activation::Relu && !last {
                (6.0 / fan_in as f64).sqrt()
            } else {
                (6.0 / (fan_in + fan_out) as f64).sqrt()
            };
            let weight =
                Array2::from_shape_simple_fn((fan_in, fan_out), || rng.range(-limit, limit) as f32);
            layers.push(Layer {
                weight: backend.upload(&weight)?,
                bias: backend.zeros(1, fan_out)?,
            });
        }
        Ok(Self {
            config,
            layers,
            input_norm: None,
            target_norm: None,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &MlpConfig {
        &self.config
    }

    /// The layers, input side first.
    pub fn layers(&self) -> &[Layer<B>] {
        &self.layers
    }

    /// The layers, for an optimizer to update.
    pub fn layers_mut(&mut self) -> &mut [Layer<B>] {
        &mut self.layers
    }

    /// The output for `x` (already standardised), and what backward needs.
    pub fn forward(
        &self,
        backend: &B,
        x: &B::Tensor,
    ) -> Result<(B::Tensor, ForwardCache<B>), ComputeError> {
        let (_, cols) = backend.shape(x);
        if cols != self.config.inputs {
            return Err(ComputeError::Shape {
                op: "forward",
                detail: format!(
                    "{cols} input columns, the model takes {}",
                    self.config.inputs
                ),
            });
        }
        let mut inputs = Vec::with_capacity(self.layers.len());
        let mut current = x.clone();
        let count = self.layers.len();
        for (index, layer) in self.layers.iter().enumerate() {
            let mut z = backend.matmul(&current, false, &layer.weight, false)?;
            let activation = if index + 1 == count {
                Activation::Identity
            } else {
                self.config.activation
            };
            backend.bias_activation(&mut z, &layer.bias, activation)?;
            inputs.push(std::mem::replace(&mut current, z));
        }
        Ok((current, ForwardCache { inputs }))
    }

    /// The output alone, for inference.
    pub fn infer(&self, backend: &B, x: &B::Tensor) -> Result<B::Tensor, ComputeError> {
        Ok(self.forward(backend, x)?.0)
    }

    /// The gradients of every parameter, given the gradient of the loss with respect to
    /// the output.
    pub fn backward(
        &self,
        backend: &B,
        cache: ForwardCache<B>,
        grad_output: B::Tensor,
    ) -> Result<Gradients<B>, ComputeError> {
        let mut grads = Vec::with_capacity(self.layers.len());
        let mut grad = grad_output;
        for (index, (layer, input)) in self.layers.iter().zip(&cache.inputs).enumerate().rev() {
            let weight = backend.matmul(input, true, &grad, false)?;
            let bias = backend.sum_rows(&grad)?;
            if index > 0 {
                let mut next = backend.matmul(&grad, false, &layer.weight, true)?;
                backend.activation_backward(&mut next, input, self.config.activation)?;
                grad = next;
            }
            grads.push(Layer { weight, bias });
        }
        grads.reverse();
        Ok(Gradients { layers: grads })
    }

    /// Predictions for raw features: logits for a classifier, values in the targets' units
    /// for a regressor.
    pub fn predict(
        &self,
        backend: &B,
        features: &Array2<f32>,
    ) -> Result<Array2<f32>, ComputeError> {
        let x = match &self.input_norm {
            Some(norm) => norm.apply(features)?,
            None => features.clone(),
        };
        let out = backend.download(&self.infer(backend, &backend.upload(&x)?)?)?;
        match &self.target_norm {
            Some(norm) => norm.invert(&out),
            None => Ok(out),
        }
    }

    /// The parameters and standardisers as named host tensors, as a model file holds them.
    pub(crate) fn to_tensors(&self, backend: &B) -> Result<TensorMap, ComputeError> {
        let mut map = TensorMap::new();
        for (i, layer) in self.layers.iter().enumerate() {
            map.insert(
                format!("layers.{i}.weight"),
                backend.download(&layer.weight)?,
            );
            map.insert(format!("layers.{i}.bias"), backend.download(&layer.bias)?);
        }
        for (name, norm) in [("input", &self.input_norm), ("target", &self.target_norm)] {
            if let Some(norm) = norm {
                map.insert(format!("{name}_norm.mean"), row(&norm.mean));
                map.insert(format!("{name}_norm.std"), row(&norm.std));
            }
        }
        Ok(map)
    }

    /// The inverse of [`Mlp::to_tensors`]; every tensor must be there with its shape.
    pub(crate) fn from_tensors(
        backend: &B,
        config: MlpConfig,
        tensors: &TensorMap,
        path: &Path,
    ) -> Result<Self, ComputeError> {
        config.validate()?;
        let bad = |reason: String| ComputeError::Checkpoint {
            path: path.to_path_buf(),
            reason,
        };
        let take = |name: String, shape: (usize, usize)| -> Result<&Array2<f32>, ComputeError> {
            let t = tensors
                .get(&name)
                .ok_or_else(|| bad(format!("no tensor {name:?}")))?;
            if t.dim() != shape {
                return Err(bad(format!(
                    "tensor {name:?} is {:?}, the model needs {shape:?}",
                    t.dim()
                )));
            }
            Ok(t)
        };
        let mut layers = Vec::new();
        for (i, (fan_in, fan_out)) in config.layers().into_iter().enumerate() {
            layers.push(Layer {
                weight: backend.upload(take(format!("layers.{i}.weight"), (fan_in, fan_out))?)?,
                bias: backend.upload(take(format!("layers.{i}.bias"), (1, fan_out))?)?,
            });
        }
        let norm = |name: &str, width: usize| -> Result<Option<Standardizer>, ComputeError> {
            if !tensors.contains_key(&format!("{name}_norm.mean")) {
                return Ok(None);
            }
            Ok(Some(Standardizer {
                mean: take(format!("{name}_norm.mean"), (1, width))?
                    .iter()
                    .copied()
                    .collect(),
                std: take(format!("{name}_norm.std"), (1, width))?
                    .iter()
                    .copied()
                    .collect(),
            }))
        };
        Ok(Self {
            input_norm: norm("input", config.inputs)?,
            target_norm: norm("target", config.outputs)?,
            config,
            layers,
        })
    }

    /// Writes the model to `path` as safetensors, its configuration in the metadata;
    /// atomically (temporary name, then rename).
    pub fn save(&self, backend: &B, path: &Path) -> Result<(), ComputeError> {
        let mut metadata = HashMap::new();
        metadata.insert(
            checkpoint::CONFIG_KEY.to_owned(),
            serde_json::to_string(&self.config)
                .map_err(|e| ComputeError::invalid("model", e.to_string()))?,
        );
        checkpoint::write_tensors(path, &self.to_tensors(backend)?, metadata)
    }

    /// Reads a model written by [`Mlp::save`] (or a training checkpoint's weights).
    pub fn load(backend: &B, path: &Path) -> Result<Self, ComputeError> {
        let (tensors, metadata) = checkpoint::read_tensors(path)?;
        let config =
            metadata
                .get(checkpoint::CONFIG_KEY)
                .ok_or_else(|| ComputeError::Checkpoint {
                    path: path.to_path_buf(),
                    reason: "no model configuration in the metadata".into(),
                })?;
        let config: MlpConfig =
            serde_json::from_str(config).map_err(|e| ComputeError::Checkpoint {
                path: path.to_path_buf(),
                reason: format!("model configuration does not parse: {e}"),
            })?;
        Self::from_tensors(backend, config, &tensors, path)
    }
}

fn row(values: &[f32]) -> Array2<f32> {
    Array2::from_shape_vec((1, values.len()), values.to_vec()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::CpuBackend;

    #[test]
    fn backward_matches_finite_differences() {
        let b = CpuBackend;
        for activation in [Activation::Relu, Activation::Tanh] {
            let config = MlpConfig {
                inputs: 3,
                hidden: vec![5, 4],
                outputs: 2,
                activation,
                head: Head::Regression,
            };
            let mut model = Mlp::new(&b, config, 1).unwrap();
            let x = Array2::from_shape_fn((4, 3), |(i, j)| (i as f32 - 1.5) * 0.3 + j as f32 * 0.2);
            let target = Array2::from_shape_fn((4, 2), |(i, j)| (i + j) as f32 * 0.1);
            let loss = |m: &Mlp<CpuBackend>| {
                let (out, _) = m.forward(&b, &x).unwrap();
                b.mse(&out, &target).unwrap().0
            };
            let (out, cache) = model.forward(&b, &x).unwrap();
            let (_, grad) = b.mse(&out, &target).unwrap();
            let grads = model.backward(&b, cache, grad).unwrap();
            for layer in 0..3 {
                let (rows, cols) = model.layers[layer].weight.dim();
                for (i, j) in [(0, 0), (rows - 1, cols - 1), (rows / 2, cols / 2)] {
                    let h = 1e-3;
                    model.layers[layer].weight[[i, j]] += h;
                    let plus = loss(&model);
                    model.layers[layer].weight[[i, j]] -= 2.0 * h;
                    let minus = loss(&model);
                    model.layers[layer].weight[[i, j]] += h;
                    let numeric = (plus - minus) / (2.0 * h);
                    let analytic = grads.layers[layer].weight[[i, j]];
                    assert!(
                        (numeric - analytic).abs() < 1e-3,
                        "layer {layer} ({i},{j}): {numeric} vs {analytic}"
                    );
                }
            }
        }
    }

    #[test]
    fn presets_and_bad_configs() {
        assert_eq!(
            "teacher-large".parse::<Preset>().unwrap(),
            Preset::TeacherLarge
        );
        assert!(
            "huge"
                .parse::<Preset>()
                .unwrap_err()
                .to_string()
                .contains("student_small")
        );
        let config = Preset::StudentSmall.config(3, 4, Head::Classification);
        assert_eq!(config.parameters(), 3 * 32 + 32 + 32 * 32 + 32 + 32 * 4 + 4);
        let mut bad = config.clone();
        bad.hidden = vec![0];
        assert!(Mlp::new(&CpuBackend, bad, 0).is_err());
        let a = Mlp::new(&CpuBackend, config.clone(), 9).unwrap();
        let b = Mlp::new(&CpuBackend, config, 9).unwrap();
        assert_eq!(a.layers[0].weight, b.layers[0].weight);
        let e = a.forward(&CpuBackend, &Array2::zeros((2, 5))).unwrap_err();
        assert!(matches!(e, ComputeError::Shape { .. }));
    }

    #[test]
    fn save_and_load_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.safetensors");
        let b = CpuBackend;
        let mut model =
            Mlp::new(&b, Preset::StudentSmall.config(3, 1, Head::Regression), 4).unwrap();
        model.input_norm = Some(Standardizer {
            mean: vec![1.0, 2.0, 3.0],
            std: vec![0.5, 1.0, 2.0],
        });
        model.save(&b, &path).unwrap();
        let loaded = Mlp::load(&b, &path).unwrap();
        let x = Array2::from_elem((2, 3), 0.7);
        assert_eq!(
            model.predict(&b, &x).unwrap(),
            loaded.predict(&b, &x).unwrap()
        );
        std::fs::write(&path, b"not a model").unwrap();
        assert!(matches!(
            Mlp::load(&b, &path).unwrap_err(),
            ComputeError::Checkpoint { .. }
        ));
    }
}
