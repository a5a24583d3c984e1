//! Supervised datasets in memory: a feature matrix, targets, and a [`Schema`] naming the
//! columns; splits by seed; JSON Lines and Parquet files ([`read_dataset`],
//! [`write_dataset`]).
//!
//! Features and targets are `f32`, the precision models train in. A classification dataset
//! has one label column of class indices `0..classes`; a regression dataset has one or more
//! target columns. A dataset labelled by a teacher also carries the teacher's logits (soft
//! targets), one column per class, named `teacher_logit_<k>`.

mod jsonl;
mod parquet;

use std::path::Path;

use ndarray::{Array2, Axis};
use serde::{Deserialize, Serialize};

use crate::{ComputeError, Rng};

/// What the targets are.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Task {
    /// One label column with class indices `0..classes`.
    Classification {
        /// The number of classes, at least 2.
        classes: usize,
    },
    /// One or more real-valued target columns.
    Regression,
}

/// The columns of a dataset and what they mean.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Schema {
    /// Feature column names, in the order of the feature matrix's columns.
    pub features: Vec<String>,
    /// Target column names: one for classification, one per output for regression.
    pub labels: Vec<String>,
    /// Classification or regression.
    pub task: Task,
    /// Human-readable class names (for binned targets, the interval), empty when unnamed.
    #[serde(default)]
    pub class_names: Vec<String>,
    /// Soft-target (teacher logit) column names, empty when the dataset has none.
    #[serde(default)]
    pub soft_labels: Vec<String>,
    /// Where the data came from, e.g. `physics/projectile seed=7 noise=0.01`.
    #[serde(default)]
    pub source: String,
    /// The train/validation/test split this dataset was made with, if any: stages that train
    /// on it use its train part, and evaluations its test part ([`Dataset::planned_split`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub split: Option<SplitPlan>,
}

/// How to cut a dataset into train, validation and test parts: the arguments of
/// [`Dataset::split`], kept with a dataset so that every stage cuts it the same way.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct SplitPlan {
    /// The train part's share of the rows.
    pub train: f64,
    /// The validation part's share; the test part gets the rest.
    pub validation: f64,
    /// The seed of the shuffle.
    pub seed: u64,
}

impl Schema {
    /// The number of model outputs the targets call for: classes, or target columns.
    pub fn outputs(&self) -> usize {
        match self.task {
            Task::Classification { classes } => classes,
            Task::Regression => self.labels.len(),
        }
    }

    /// Every column name, features first, then labels, then soft labels.
    pub fn columns(&self) -> impl Iterator<Item = &str> {
        self.features
            .iter()
            .chain(&self.labels)
            .chain(&self.soft_labels)
            .map(String::as_str)
    }

    fn validate(&self) -> Result<(), ComputeError> {
        if self.features.is_empty() {
            return Err(ComputeError::invalid("schema", "no feature columns"));
        }
        match self.task {
            Task::Classification { classes } => {
                if classes < 2 {
                    return Err(ComputeError::invalid(
                        "schema",
                        format!("classification needs at least 2 classes, got {classes}"),
                    ));
                }
                if self.labels.len() != 1 {
                    return Err(ComputeError::invalid(
                        "schema",
                        format!(
                            "classification needs exactly one label column, got {}",
                            self.labels.len()
                        ),
                    ));
                }
                if !self.soft_labels.is_empty() && self.soft_labels.len() != classes {
                    return Err(ComputeError::invalid(
                        "schema",
                        format!(
                            "{} soft-label columns for {classes} classes",
                            self.soft_labels.len()
                        ),
                    ));
                }
            }
            Task::Regression => {
                if self.labels.is_empty() {
                    return Err(ComputeError::invalid("schema", "no label columns"));
                }
                if !self.soft_labels.is_empty() && self.soft_labels.len() != self.labels.len() {
                    return Err(ComputeError::invalid(
                        "schema",
                        "soft-label columns must match the label columns",
                    ));
                }
            }
        }
        let mut seen = std::collections::HashSet::new();
        for name in self.columns() {
            if !seen.insert(name) {
                return Err(ComputeError::invalid(
                    "schema",
                    format!("column {name:?} appears twice"),
                ));
            }
        }
        Ok(())
    }
}

/// The targets of a dataset.
#[derive(Clone, Debug, PartialEq)]
pub enum Targets {
    /// Class indices, one per row.
    Classes(Vec<u32>),
    /// Real values, one row per sample and one column per target.
    Values(Array2<f32>),
}

/// A supervised dataset held in memory. Construct with [`Dataset::new`], which checks that
/// the parts agree; the fields are read-only through accessors so they stay consistent.
#[derive(Clone, Debug, PartialEq)]
pub struct Dataset {
    schema: Schema,
    features: Array2<f32>,
    targets: Targets,
    soft_targets: Option<Array2<f32>>,
}

/// A dataset cut in three by [`Dataset::split`].
#[derive(Clone, Debug)]
pub struct Split {
    /// For fitting.
    pub train: Dataset,
    /// For choosing hyperparameters and early stopping.
    pub validation: Dataset,
    /// For the final report only.
    pub test: Dataset,
}

impl Split {
    /// How many validation and test rows are copies of a train row: features and targets
    /// equal bit for bit (a contaminated evaluation).
    pub fn overlap(&self) -> crate::SplitOverlap {
        let train: std::collections::HashSet<u64> = (0..self.train.len())
            .map(|i| self.train.row_hash(i))
            .collect();
        let copies = |d: &Dataset| {
            (0..d.len())
                .filter(|&i| train.contains(&d.row_hash(i)))
                .count() as u64
        };
        crate::SplitOverlap {
            train_rows: self.train.len() as u64,
            validation_rows: self.validation.len() as u64,
            test_rows: self.test.len() as u64,
            validation_in_train: copies(&self.validation),
            test_in_train: copies(&self.test),
        }
    }
}

impl Dataset {
    /// A hash of row `i`: its features' and targets' bits.
    fn row_hash(&self, i: usize) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        for v in self.features.row(i) {
            v.to_bits().hash(&mut hasher);
        }
        match &self.targets {
            Targets::Classes(c) => c[i].hash(&mut hasher),
            Targets::Values(v) => {
                for x in v.row(i) {
                    x.to_bits().hash(&mut hasher);
                }
            }
        }
        hasher.finish()
    }

    /// A dataset from its parts. Fails when the schema is inconsistent, the matrices' shapes
    /// do not match it or each other, a value is not finite, or a class index is out of
    /// range.
    pub fn new(
        schema: Schema,
        features: Array2<f32>,
        targets: Targets,
        soft_targets: Option<Array2<f32>>,
    ) -> Result<Self, ComputeError> {
        schema.validate()?;
        let rows = features.nrows();
        if features.ncols() != schema.features.len() {
            return Err(ComputeError::Shape {
                op: "dataset",
                detail: format!(
                    "{} feature columns in the matrix, {} in the schema",
                    features.ncols(),
                    schema.features.len()
                ),
            });
        }
        if let Some(position) = features.iter().position(|v| !v.is_finite()) {
            return Err(ComputeError::invalid(
                "features",
                format!(
                    "value at row {}, column {:?} is not finite",
                    position / features.ncols(),
                    schema.features[position % features.ncols()]
                ),
            ));
        }
        match (&targets, schema.task) {
            (Targets::Classes(classes), Task::Classification { classes: k }) => {
                if classes.len() != rows {
                    return Err(ComputeError::Shape {
                        op: "dataset",
                        detail: format!("{rows} feature rows, {} labels", classes.len()),
                    });
                }
                if let Some((row, c)) = classes.iter().enumerate().find(|(_, c)| **c as usize >= k)
                {
                    return Err(ComputeError::invalid(
                        "labels",
                        format!("row {row} has class {c}, but there are {k} classes (0..{k})"),
                    ));
                }
            }
            (Targets::Values(values), Task::Regression) => {
                if values.nrows() != rows || values.ncols() != schema.labels.len() {
                    return Err(ComputeError::Shape {
                        op: "dataset",
                        detail: format!(
                            "targets are {}x{}, expected {rows}x{}",
                            values.nrows(),
                            values.ncols(),
                            schema.labels.len()
                        ),
                    });
                }
                if values.iter().any(|v| !v.is_finite()) {
                    return Err(ComputeError::invalid("targets", "a value is not finite"));
                }
            }
            _ => {
                return Err(ComputeError::invalid(
                    "targets",
                    "class labels go with a classification schema, values with regression",
                ));
            }
        }
        if let Some(soft) = &soft_targets {
            if soft.nrows() != rows || soft.ncols() != schema.soft_labels.len() {
                return Err(ComputeError::Shape {
                    op: "dataset",
                    detail: format!(
                        "soft targets are {}x{}, expected {rows}x{}",
                        soft.nrows(),
                        soft.ncols(),
                        schema.soft_labels.len()
                    ),
                });
            }
        } else if !schema.soft_labels.is_empty() {
            return Err(ComputeError::invalid(
                "soft targets",
                "the schema names soft-label columns but no soft targets were given",
            ));
        }
        Ok(Self {
            schema,
            features,
            targets,
            soft_targets,
        })
    }

    /// The schema.
    pub fn schema(&self) -> &Schema {
        &self.schema
    }

    /// The feature matrix, one row per sample.
    pub fn features(&self) -> &Array2<f32> {
        &self.features
    }

    /// The targets.
    pub fn targets(&self) -> &Targets {
        &self.targets
    }

    /// The class labels, for a classification dataset.
    pub fn classes(&self) -> Option<&[u32]> {
        match &self.targets {
            Targets::Classes(c) => Some(c),
            Targets::Values(_) => None,
        }
    }

    /// The teacher's logits, for a dataset labelled by a teacher.
    pub fn soft_targets(&self) -> Option<&Array2<f32>> {
        self.soft_targets.as_ref()
    }

    /// The number of rows.
    pub fn len(&self) -> usize {
        self.features.nrows()
    }

    /// Whether there are no rows.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The same dataset with `soft` as its soft targets (teacher logits), named
    /// `teacher_logit_<k>`.
    pub fn with_soft_targets(mut self, soft: Array2<f32>) -> Result<Self, ComputeError> {
        self.schema.soft_labels = (0..soft.ncols())
            .map(|k| format!("teacher_logit_{k}"))
            .collect();
        Self::new(self.schema, self.features, self.targets, Some(soft))
    }

    /// The rows at `indices`, in that order. Fails on an index out of range.
    pub fn select(&self, indices: &[usize]) -> Result<Self, ComputeError> {
        if let Some(bad) = indices.iter().find(|&&i| i >= self.len()) {
            return Err(ComputeError::invalid(
                "row index",
                format!("{bad} is past the last row ({})", self.len()),
            ));
        }
        // A split plan speaks of the whole dataset's rows; a selection has other rows.
        let schema = Schema {
            split: None,
            ..self.schema.clone()
        };
        Ok(Self {
            schema,
            features: self.features.select(Axis(0), indices),
            targets: match &self.targets {
                Targets::Classes(c) => Targets::Classes(indices.iter().map(|&i| c[i]).collect()),
                Targets::Values(v) => Targets::Values(v.select(Axis(0), indices)),
            },
            soft_targets: self
                .soft_targets
                .as_ref()
                .map(|s| s.select(Axis(0), indices)),
        })
    }

    /// The split recorded in the schema ([`Schema::split`]), if there is one.
    pub fn planned_split(&self) -> Option<Result<Split, ComputeError>> {
        self.schema
            .split
            .map(|plan| self.split(plan.train, plan.validation, plan.seed))
    }

    /// The same rows with `plan` recorded as the way to split them.
    pub fn with_split_plan(mut self, plan: SplitPlan) -> Result<Self, ComputeError> {
        self.split(plan.train, plan.validation, plan.seed)?;
        self.schema.split = Some(plan);
        Ok(self)
    }

    /// Splits the rows at random (by `seed`) into train, validation and test parts of the
    /// given fractions; the test part gets the rest. The same seed and dataset always give
    /// the same split. Fails when a fraction is negative or they add up to more than 1.
    pub fn split(
        &self,
        train_fraction: f64,
        validation_fraction: f64,
        seed: u64,
    ) -> Result<Split, ComputeError> {
        let ok = |f: f64| f.is_finite() && (0.0..=1.0).contains(&f);
        if !ok(train_fraction)
            || !ok(validation_fraction)
            || train_fraction + validation_fraction > 1.0 + 1e-9
        {
            return Err(ComputeError::invalid(
                "split fractions",
                format!(
                    "train {train_fraction} and validation {validation_fraction} must each be \
                     in [0, 1] and add up to at most 1"
                ),
            ));
        }
        let n = self.len();
        let mut order: Vec<usize> = (0..n).collect();
        Rng::derive(seed, 0x5_0117).shuffle(&mut order);
        let n_train = ((n as f64) * train_fraction).round() as usize;
        let n_val = (((n as f64) * validation_fraction).round() as usize).min(n - n_train.min(n));
        let n_train = n_train.min(n);
        Ok(Split {
            train: self.select(&order[..n_train])?,
            validation: self.select(&order[n_train..n_train + n_val])?,
            test: self.select(&order[n_train + n_val..])?,
        })
    }
}

/// The file formats datasets are read from and written to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FileFormat {
    /// One JSON object per line; the schema goes beside it in `<file>.schema.json`.
    JsonLines,
    /// Parquet, snappy-compressed; the schema goes in the file's key-value metadata.
    Parquet,
}

impl FileFormat {
    /// The format for a path's extension (`.jsonl`, `.ndjson`, `.parquet`).
    pub fn from_path(path: &Path) -> Result<Self, ComputeError> {
        match path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase)
            .as_deref()
        {
            Some("jsonl" | "ndjson") => Ok(Self::JsonLines),
            Some("parquet") => Ok(Self::Parquet),
            other => Err(ComputeError::invalid(
                "dataset path",
                format!(
                    "{}: extension {:?} is not a dataset format; use .jsonl, .ndjson or .parquet",
                    path.display(),
                    other.unwrap_or("")
                ),
            )),
        }
    }
}

/// The metadata key under which a Parquet file carries its [`Schema`] as JSON.
pub const SCHEMA_METADATA_KEY: &str = "nexa.schema";

/// Writes `dataset` to `path` in the format its extension names, schema included. The file
/// is written to a temporary name beside `path` and renamed, so a reader never sees half a
/// file.
pub fn write_dataset(dataset: &Dataset, path: &Path) -> Result<(), ComputeError> {
    let format = FileFormat::from_path(path)?;
    let tmp = crate::checkpoint::temp_path(path);
    let result = match format {
        FileFormat::JsonLines => jsonl::write(dataset, &tmp).and_then(|()| {
            let schema = serde_json::to_vec_pretty(dataset.schema())
                .map_err(|e| ComputeError::invalid("schema", e.to_string()))?;
            let schema_path = jsonl::schema_path(path);
            crate::checkpoint::write_atomic(&schema_path, &schema)
        }),
        FileFormat::Parquet => parquet::write(dataset, &tmp),
    };
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    std::fs::rename(&tmp, path).map_err(|e| ComputeError::io("cannot rename into", path, e))
}

/// Reads a dataset from `path` in the format its extension names. The schema is `schema`
/// when given (the file must have its columns), otherwise the one written with the file
/// (Parquet metadata, or the `.schema.json` beside a JSON Lines file).
pub fn read_dataset(path: &Path, schema: Option<&Schema>) -> Result<Dataset, ComputeError> {
    match FileFormat::from_path(path)? {
        FileFormat::JsonLines => {
            let schema = match schema {
                Some(s) => s.clone(),
                None => jsonl::read_schema(path)?,
            };
            jsonl::read(path, schema)
        }
        FileFormat::Parquet => parquet::read(path, schema),
    }
}

/// Columns of rows being assembled by a reader, checked by [`Dataset::new`] at the end.
pub(crate) struct Columns {
    schema: Schema,
    features: Vec<f32>,
    labels: Vec<f32>,
    soft: Vec<f32>,
}

impl Columns {
    pub(crate) fn new(schema: Schema) -> Self {
        Self {
            schema,
            features: Vec::new(),
            labels: Vec::new(),
            soft: Vec::new(),
        }
    }

    pub(crate) fn schema(&self) -> &Schema {
        &self.schema
    }

    /// Adds one row; `value(name)` gives each column's value or an error message.
    pub(crate) fn push_row(
        &mut self,
        mut value: impl FnMut(&str) -> Result<f64, String>,
    ) -> Result<(), String> {
        for name in &self.schema.features {
            self.features.push(value(name)? as f32);
        }
        for name in &self.schema.labels {
            let v = value(name)?;
            if let Task::Classification { classes } = self.schema.task
                && (v.fract() != 0.0 || v < 0.0 || v >= classes as f64)
            {
                return Err(format!(
                    "label {name:?} is {v}, not a class index in 0..{classes}"
                ));
            }
            self.labels.push(v as f32);
        }
        for name in &self.schema.soft_labels {
            self.soft.push(value(name)? as f32);
        }
        Ok(())
    }

    pub(crate) fn finish(self, path: &Path) -> Result<Dataset, ComputeError> {
        let schema = self.schema;
        let bad = |e: ndarray::ShapeError| ComputeError::Dataset {
            path: path.to_path_buf(),
            reason: e.to_string(),
        };
        let rows = self.features.len() / schema.features.len().max(1);
        let features =
            Array2::from_shape_vec((rows, schema.features.len()), self.features).map_err(bad)?;
        let targets = match schema.task {
            Task::Classification { .. } => {
                Targets::Classes(self.labels.iter().map(|&v| v as u32).collect())
            }
            Task::Regression => Targets::Values(
                Array2::from_shape_vec((rows, schema.labels.len()), self.labels).map_err(bad)?,
            ),
        };
        let soft = if schema.soft_labels.is_empty() {
            None
        } else {
            Some(Array2::from_shape_vec((rows, schema.soft_labels.len()), self.soft).map_err(bad)?)
        };
        Dataset::new(schema, features, targets, soft).map_err(|e| ComputeError::Dataset {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })
    }
}

/// Per-column mean and standard deviation, to put features (or regression targets) on a
/// common scale. Fitted on the training split only and stored with the model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Standardizer {
    /// Column means.
    pub mean: Vec<f32>,
    /// Column standard deviations (1 where a column is constant).
    pub std: Vec<f32>,
}

impl Standardizer {
    /// Fits on the columns of `data`.
    pub fn fit(data: &Array2<f32>) -> Self {
        let n = data.nrows().max(1) as f64;
        let mut mean = Vec::with_capacity(data.ncols());
        let mut std = Vec::with_capacity(data.ncols());
        for column in data.columns() {
            let m = column.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
            let var = column
                .iter()
                .map(|&v| (f64::from(v) - m).powi(2))
                .sum::<f64>()
                / n;
            let s = var.sqrt();
            mean.push(m as f32);
            std.push(if s > 1e-12 { s as f32 } else { 1.0 });
        }
        Self { mean, std }
    }

    /// `(x - mean) / std`, column by column.
    pub fn apply(&self, data: &Array2<f32>) -> Result<Array2<f32>, ComputeError> {
        if data.ncols() != self.mean.len() {
            return Err(ComputeError::Shape {
                op: "standardize",
                detail: format!("{} columns, fitted on {}", data.ncols(), self.mean.len()),
            });
        }
        let mut out = data.clone();
        for (j, mut column) in out.columns_mut().into_iter().enumerate() {
            let (m, s) = (self.mean[j], self.std[j]);
            column.mapv_inplace(|v| (v - m) / s);
        }
        Ok(out)
    }

    /// `x * std + mean`, the inverse of [`Standardizer::apply`].
    pub fn invert(&self, data: &Array2<f32>) -> Result<Array2<f32>, ComputeError> {
        if data.ncols() != self.mean.len() {
            return Err(ComputeError::Shape {
                op: "standardize",
                detail: format!("{} columns, fitted on {}", data.ncols(), self.mean.len()),
            });
        }
        let mut out = data.clone();
        for (j, mut column) in out.columns_mut().into_iter().enumerate() {
            let (m, s) = (self.mean[j], self.std[j]);
            column.mapv_inplace(|v| v * s + m);
        }
        Ok(out)
    }
}
