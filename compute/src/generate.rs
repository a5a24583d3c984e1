//! Seeded synthetic datasets from closed-form laws, with measurement noise: the `physics`
//! domain (projectile range, pendulum period, damped oscillator, ideal gas) and the
//! `circuits` domain (resistor power, RC charging, LC resonance).
//!
//! Inputs are drawn from ranges a lab would use, the law gives the exact target, and then
//! every measured quantity, inputs and target, gets independent Gaussian noise relative to
//! its value (`noise = 0.01` is a 1% instrument). A regression dataset keeps the noisy
//! target; a classification dataset bins it into `classes` equally populated classes (cut at
//! the quantiles of the generated targets), named by their intervals. The same spec always
//! gives the same dataset, bit for bit.

mod circuits;
mod physics;

use std::fmt;
use std::str::FromStr;

use ndarray::Array2;
use serde::{Deserialize, Serialize};

use crate::{ComputeError, Dataset, Rng, Schema, Targets, Task};

/// A law to sample: its domain and problem.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Problem {
    /// Range of a projectile on flat ground: `v² sin 2θ / g`.
    Projectile,
    /// Period of a pendulum with the large-amplitude correction.
    Pendulum,
    /// Amplitude left of an underdamped oscillator after time `t`.
    DampedOscillator,
    /// Pressure of an ideal gas, `nRT / V`.
    IdealGas,
    /// Power dissipated in a resistor, `V² / R`.
    ResistorPower,
    /// Capacitor voltage while charging through a resistor.
    RcCharging,
    /// Resonant frequency of an LC circuit.
    LcResonance,
}

impl Problem {
    /// Every problem, in the order `list` shows them.
    pub const ALL: [Problem; 7] = [
        Self::Projectile,
        Self::Pendulum,
        Self::DampedOscillator,
        Self::IdealGas,
        Self::ResistorPower,
        Self::RcCharging,
        Self::LcResonance,
    ];

    /// The domain: `physics` or `circuits`.
    pub fn domain(self) -> &'static str {
        match self {
            Self::Projectile | Self::Pendulum | Self::DampedOscillator | Self::IdealGas => {
                "physics"
            }
            Self::ResistorPower | Self::RcCharging | Self::LcResonance => "circuits",
        }
    }

    /// The problem's name within its domain.
    pub fn name(self) -> &'static str {
        match self {
            Self::Projectile => "projectile",
            Self::Pendulum => "pendulum",
            Self::DampedOscillator => "damped_oscillator",
            Self::IdealGas => "ideal_gas",
            Self::ResistorPower => "resistor_power",
            Self::RcCharging => "rc_charging",
            Self::LcResonance => "lc_resonance",
        }
    }

    fn law(self) -> &'static Law {
        match self {
            Self::Projectile => &physics::PROJECTILE,
            Self::Pendulum => &physics::PENDULUM,
            Self::DampedOscillator => &physics::DAMPED_OSCILLATOR,
            Self::IdealGas => &physics::IDEAL_GAS,
            Self::ResistorPower => &circuits::RESISTOR_POWER,
            Self::RcCharging => &circuits::RC_CHARGING,
            Self::LcResonance => &circuits::LC_RESONANCE,
        }
    }

    /// The feature column names.
    pub fn features(self) -> &'static [&'static str] {
        self.law().features
    }

    /// The target column name.
    pub fn target(self) -> &'static str {
        self.law().target
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.domain(), self.name())
    }
}

impl FromStr for Problem {
    type Err = ComputeError;

    /// `domain/problem` (`physics/pendulum`), a bare problem name, or a bare domain, which
    /// means its first problem (`physics` is `physics/projectile`).
    fn from_str(text: &str) -> Result<Self, ComputeError> {
        let text = text.trim().to_ascii_lowercase().replace('-', "_");
        let found = Self::ALL.into_iter().find(|p| {
            text == p.to_string() || text == p.name() || (text == p.domain() && p.is_first())
        });
        found.ok_or_else(|| {
            ComputeError::invalid(
                "domain",
                format!(
                    "{text:?} is not a known problem; known: {}",
                    Self::ALL.map(|p| p.to_string()).join(", ")
                ),
            )
        })
    }
}

impl Problem {
    fn is_first(self) -> bool {
        matches!(self, Self::Projectile | Self::ResistorPower)
    }
}

/// A closed-form law: input names, target name and a sampler.
pub(crate) struct Law {
    pub(crate) features: &'static [&'static str],
    pub(crate) target: &'static str,
    /// Fills `inputs` (exact values) and returns the exact target.
    pub(crate) sample: fn(&mut Rng, &mut [f64]) -> f64,
}

/// Regression targets, or classes by binning.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum TargetKind {
    /// The noisy target value.
    Regression,
    /// The target binned into equally populated classes.
    Classification {
        /// How many classes, 2 to 1000.
        classes: usize,
    },
}

/// What to generate.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct GenerateSpec {
    /// The law.
    pub problem: Problem,
    /// How many rows, at least 1 (at least `classes` for classification).
    pub rows: usize,
    /// The seed: equal specs give equal datasets.
    pub seed: u64,
    /// Relative standard deviation of the measurement noise, in `[0, 0.5]`.
    pub noise: f64,
    /// Regression or classification.
    pub target: TargetKind,
}

impl GenerateSpec {
    /// `rows` regression rows of `problem` with seed 0 and 1% noise.
    pub fn new(problem: Problem, rows: usize) -> Self {
        Self {
            problem,
            rows,
            seed: 0,
            noise: 0.01,
            target: TargetKind::Regression,
        }
    }

    /// With this seed.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// With this relative noise.
    pub fn noise(mut self, noise: f64) -> Self {
        self.noise = noise;
        self
    }

    /// As a classification task with `classes` classes.
    pub fn classes(mut self, classes: usize) -> Self {
        self.target = TargetKind::Classification { classes };
        self
    }
}

/// The largest dataset [`generate`] makes in one call (rows × columns values).
pub const MAX_GENERATED_VALUES: usize = 1 << 30;

/// Generates the dataset `spec` describes.
pub fn generate(spec: &GenerateSpec) -> Result<Dataset, ComputeError> {
    let law = spec.problem.law();
    let width = law.features.len();
    if spec.rows == 0 {
        return Err(ComputeError::invalid("rows", "must be at least 1"));
    }
    if spec.rows.saturating_mul(width + 1) > MAX_GENERATED_VALUES {
        return Err(ComputeError::invalid(
            "rows",
            format!("{} rows is too many for one dataset", spec.rows),
        ));
    }
    if !(0.0..=0.5).contains(&spec.noise) {
        return Err(ComputeError::invalid(
            "noise",
            format!("{} is outside [0, 0.5]", spec.noise),
        ));
    }
    if let TargetKind::Classification { classes } = spec.target
        && (!(2..=1000).contains(&classes) || classes > spec.rows)
    {
        return Err(ComputeError::invalid(
            "classes",
            format!(
                "{classes} classes for {} rows; use 2 to 1000, and no more than rows",
                spec.rows
            ),
        ));
    }

    let mut rng = Rng::new(spec.seed);
    let mut features = Vec::with_capacity(spec.rows * width);
    let mut targets = Vec::with_capacity(spec.rows);
    let mut inputs = vec![0.0; width];
    let measure = |rng: &mut Rng, v: f64| v * (1.0 + spec.noise * rng.normal());
    for _ in 0..spec.rows {
        let y = (law.sample)(&mut rng, &mut inputs);
        for &x in &inputs {
            features.push(measure(&mut rng, x) as f32);
        }
        targets.push(measure(&mut rng, y));
    }
    let features = Array2::from_shape_vec((spec.rows, width), features)
        .map_err(|e| ComputeError::invalid("rows", e.to_string()))?;
    let source = format!("{} seed={} noise={}", spec.problem, spec.seed, spec.noise);
    let feature_names = law.features.iter().map(|s| (*s).to_owned()).collect();
    match spec.target {
        TargetKind::Regression => {
            let values =
                Array2::from_shape_vec((spec.rows, 1), targets.iter().map(|&v| v as f32).collect())
                    .map_err(|e| ComputeError::invalid("rows", e.to_string()))?;
            let schema = Schema {
                features: feature_names,
                labels: vec![law.target.to_owned()],
                task: Task::Regression,
                class_names: Vec::new(),
                soft_labels: Vec::new(),
                source,
                split: None,
            };
            Dataset::new(schema, features, Targets::Values(values), None)
        }
        TargetKind::Classification { classes } => {
            let edges = quantile_edges(&targets, classes);
            let labels = targets
                .iter()
                .map(|&y| edges.partition_point(|&e| e <= y) as u32)
                .collect();
            let class_names = (0..classes)
                .map(|k| {
                    let low = if k == 0 {
                        f64::NEG_INFINITY
                    } else {
                        edges[k - 1]
                    };
                    let high = if k == classes - 1 {
                        f64::INFINITY
                    } else {
                        edges[k]
                    };
                    format!("{} in [{low:.4}, {high:.4})", law.target)
                })
                .collect();
            let schema = Schema {
                features: feature_names,
                labels: vec![format!("{}_class", law.target)],
                task: Task::Classification { classes },
                class_names,
                soft_labels: Vec::new(),
                source,
                split: None,
            };
            Dataset::new(schema, features, Targets::Classes(labels), None)
        }
    }
}

/// The `classes - 1` cut points that split `values` into equally populated bins.
fn quantile_edges(values: &[f64], classes: usize) -> Vec<f64> {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    (1..classes)
        .map(|k| sorted[(k * sorted.len() / classes).min(sorted.len() - 1)])
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_problem_generates_finite_reproducible_rows() {
        for problem in Problem::ALL {
            let spec = GenerateSpec::new(problem, 200).seed(5);
            let a = generate(&spec).unwrap();
            let b = generate(&spec).unwrap();
            assert_eq!(a, b, "{problem}");
            assert_eq!(a.len(), 200);
            assert_eq!(a.schema().features.len(), problem.features().len());
            assert_ne!(a, generate(&spec.seed(6)).unwrap());
            assert_eq!(problem.to_string().parse::<Problem>().unwrap(), problem);
        }
    }

    #[test]
    fn noiseless_targets_follow_the_law() {
        let d = generate(&GenerateSpec::new(Problem::IdealGas, 50).noise(0.0)).unwrap();
        let Targets::Values(y) = d.targets() else {
            panic!("regression")
        };
        for i in 0..d.len() {
            let (n, t, v) = (
                d.features()[[i, 0]] as f64,
                d.features()[[i, 1]] as f64,
                d.features()[[i, 2]] as f64,
            );
            let p = n * 8.314_462_618 * t / v;
            assert!((p - y[[i, 0]] as f64).abs() / p < 1e-5);
        }
        let d = generate(&GenerateSpec::new(Problem::Projectile, 50).noise(0.0)).unwrap();
        let Targets::Values(y) = d.targets() else {
            panic!("regression")
        };
        for i in 0..d.len() {
            let f = d.features().row(i);
            let (v, angle, g) = (f[0] as f64, (f[1] as f64).to_radians(), f[2] as f64);
            let range = v * v * (2.0 * angle).sin() / g;
            assert!((range - y[[i, 0]] as f64).abs() / range < 1e-4);
        }
    }

    #[test]
    fn classes_are_balanced() {
        let d = generate(&GenerateSpec::new(Problem::Pendulum, 1000).classes(4)).unwrap();
        let mut counts = [0; 4];
        for &c in d.classes().unwrap() {
            counts[c as usize] += 1;
        }
        assert!(counts.iter().all(|&c| c == 250), "{counts:?}");
        assert_eq!(d.schema().class_names.len(), 4);
    }

    #[test]
    fn bad_specs_are_refused() {
        for spec in [
            GenerateSpec::new(Problem::Pendulum, 0),
            GenerateSpec::new(Problem::Pendulum, 10).noise(-1.0),
            GenerateSpec::new(Problem::Pendulum, 10).noise(f64::NAN),
            GenerateSpec::new(Problem::Pendulum, 10).classes(1),
            GenerateSpec::new(Problem::Pendulum, 3).classes(4),
        ] {
            let e = generate(&spec).unwrap_err();
            assert!(e.is_invalid_input(), "{e}");
        }
        let e = "chemistry".parse::<Problem>().unwrap_err().to_string();
        assert!(e.contains("physics/projectile"), "{e}");
        assert_eq!("physics".parse::<Problem>().unwrap(), Problem::Projectile);
    }
}
