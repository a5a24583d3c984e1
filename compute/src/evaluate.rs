//! Evaluation: classification metrics (accuracy, macro-F1, per-class precision and recall,
//! confusion matrix, expected calibration error, agreement with a teacher) and regression
//! metrics (MSE, MAE, R²), as a typed report that serializes to JSON.

use ndarray::Array2;
use serde::{Deserialize, Serialize};

use crate::backend::Backend;
use crate::distill::predict_chunked;
use crate::model::Mlp;
use crate::{ComputeError, Dataset, Targets};

/// One class's scores.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClassMetrics {
    /// The class index.
    pub class: u32,
    /// Its name, when the schema names classes.
    pub name: Option<String>,
    /// Of the rows predicted as this class, the share that are (0 when none were).
    pub precision: f64,
    /// Of the rows of this class, the share predicted as it.
    pub recall: f64,
    /// Harmonic mean of precision and recall.
    pub f1: f64,
    /// Rows of this class.
    pub support: u64,
}

/// Scores of a classifier.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClassificationMetrics {
    /// Share of rows predicted right.
    pub accuracy: f64,
    /// Unweighted mean of the per-class F1.
    pub macro_f1: f64,
    /// Per class.
    pub per_class: Vec<ClassMetrics>,
    /// `confusion[true][predicted]` row counts.
    pub confusion: Vec<Vec<u64>>,
    /// Mean cross-entropy of the predicted probabilities.
    pub log_loss: f64,
    /// Expected calibration error over 15 equal-width confidence bins: the row-weighted
    /// mean gap between confidence and accuracy.
    pub expected_calibration_error: f64,
    /// Share of rows where the model predicts the teacher's class, when a teacher was given.
    pub teacher_agreement: Option<f64>,
}

/// Scores of a regressor, over all target columns.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RegressionMetrics {
    /// Mean squared error.
    pub mse: f64,
    /// Mean absolute error.
    pub mae: f64,
    /// Coefficient of determination, `1 − SSE / SST` (per column, then averaged).
    pub r2: f64,
    /// MSE against the teacher's predictions, when a teacher was given.
    pub teacher_mse: Option<f64>,
}

/// The metrics of a model's task.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "task")]
pub enum Metrics {
    /// A classifier's.
    Classification(ClassificationMetrics),
    /// A regressor's.
    Regression(RegressionMetrics),
}

/// An evaluation of one model on one dataset.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EvaluationReport {
    /// Rows evaluated.
    pub rows: u64,
    /// The model's parameter count.
    pub parameters: u64,
    /// The dataset's source, from its schema.
    pub dataset: String,
    /// The scores.
    pub metrics: Metrics,
}

impl EvaluationReport {
    /// The report as pretty JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// The headline number: accuracy, or R².
    pub fn headline(&self) -> f64 {
        match &self.metrics {
            Metrics::Classification(c) => c.accuracy,
            Metrics::Regression(r) => r.r2,
        }
    }
}

/// Evaluates `model` on `data`, and its agreement with `teacher` when given.
pub fn evaluate<B: Backend>(
    backend: &B,
    model: &Mlp<B>,
    data: &Dataset,
    teacher: Option<&Mlp<B>>,
) -> Result<EvaluationReport, ComputeError> {
    if data.is_empty() {
        return Err(ComputeError::invalid("evaluation set", "has no rows"));
    }
    let output = predict_chunked(backend, model, data.features())?;
    let teacher_output = teacher
        .map(|t| predict_chunked(backend, t, data.features()))
        .transpose()?;
    let metrics = match data.targets() {
        Targets::Classes(labels) => {
            let probs = backend.download(&backend.softmax(&backend.upload(&output)?, 1.0)?)?;
            let mut m = classification_metrics(&probs, labels, &data.schema().class_names)?;
            if let Some(t) = &teacher_output {
                let ours = argmax_rows(&output);
                let theirs = argmax_rows(t);
                let same = ours.iter().zip(&theirs).filter(|(a, b)| a == b).count();
                m.teacher_agreement = Some(same as f64 / ours.len() as f64);
            }
            Metrics::Classification(m)
        }
        Targets::Values(values) => {
            let mut m = regression_metrics(&output, values)?;
            if let Some(t) = &teacher_output {
                m.teacher_mse = Some(regression_metrics(&output, t)?.mse);
            }
            Metrics::Regression(m)
        }
    };
    Ok(EvaluationReport {
        rows: data.len() as u64,
        parameters: model.config().parameters() as u64,
        dataset: data.schema().source.clone(),
        metrics,
    })
}

/// The index of each row's largest value (the first on ties).
pub fn argmax_rows(m: &Array2<f32>) -> Vec<u32> {
    m.rows()
        .into_iter()
        .map(|row| {
            let mut best = 0;
            for (i, &v) in row.iter().enumerate() {
                if v > row[best] {
                    best = i;
                }
            }
            best as u32
        })
        .collect()
}

const CALIBRATION_BINS: usize = 15;

/// Classification metrics from predicted class probabilities (rows sum to 1) and labels.
pub fn classification_metrics(
    probs: &Array2<f32>,
    labels: &[u32],
    class_names: &[String],
) -> Result<ClassificationMetrics, ComputeError> {
    let (rows, classes) = probs.dim();
    if rows != labels.len() || rows == 0 {
        return Err(ComputeError::Shape {
            op: "classification_metrics",
            detail: format!("{rows} predictions, {} labels", labels.len()),
        });
    }
    if let Some(bad) = labels.iter().find(|&&c| c as usize >= classes) {
        return Err(ComputeError::invalid(
            "label",
            format!("class {bad} with {classes} outputs"),
        ));
    }
    let predicted = argmax_rows(probs);
    let mut confusion = vec![vec![0u64; classes]; classes];
    let mut log_loss = 0.0;
    let mut bins = [(0u64, 0.0f64, 0u64); CALIBRATION_BINS]; // rows, confidence sum, correct
    for (row, (&truth, &guess)) in labels.iter().zip(&predicted).enumerate() {
        confusion[truth as usize][guess as usize] += 1;
        log_loss -= f64::from(probs[[row, truth as usize]]).max(1e-12).ln();
        let confidence = f64::from(probs[[row, guess as usize]]);
        let bin = ((confidence * CALIBRATION_BINS as f64) as usize).min(CALIBRATION_BINS - 1);
        bins[bin].0 += 1;
        bins[bin].1 += confidence;
        bins[bin].2 += u64::from(truth == guess);
    }
    let ece = bins
        .iter()
        .filter(|b| b.0 > 0)
        .map(|&(n, conf, correct)| (conf / n as f64 - correct as f64 / n as f64).abs() * n as f64)
        .sum::<f64>()
        / rows as f64;
    let ratio = |a: u64, b: u64| if b == 0 { 0.0 } else { a as f64 / b as f64 };
    let per_class: Vec<ClassMetrics> = (0..classes)
        .map(|k| {
            let tp = confusion[k][k];
            let predicted_k: u64 = confusion.iter().map(|r| r[k]).sum();
            let actual_k: u64 = confusion[k].iter().sum();
            let precision = ratio(tp, predicted_k);
            let recall = ratio(tp, actual_k);
            let f1 = if precision + recall > 0.0 {
                2.0 * precision * recall / (precision + recall)
            } else {
                0.0
            };
            ClassMetrics {
                class: k as u32,
                name: class_names.get(k).cloned(),
                precision,
                recall,
                f1,
                support: actual_k,
            }
        })
        .collect();
    let correct: u64 = (0..classes).map(|k| confusion[k][k]).sum();
    Ok(ClassificationMetrics {
        accuracy: ratio(correct, rows as u64),
        macro_f1: per_class.iter().map(|c| c.f1).sum::<f64>() / classes as f64,
        per_class,
        confusion,
        log_loss: log_loss / rows as f64,
        expected_calibration_error: ece,
        teacher_agreement: None,
    })
}

/// Regression metrics of `prediction` against `target` (same shape).
pub fn regression_metrics(
    prediction: &Array2<f32>,
    target: &Array2<f32>,
) -> Result<RegressionMetrics, ComputeError> {
    if prediction.dim() != target.dim() || prediction.is_empty() {
        return Err(ComputeError::Shape {
            op: "regression_metrics",
            detail: format!(
                "{:?} predictions, {:?} targets",
                prediction.dim(),
                target.dim()
            ),
        });
    }
    let n = prediction.len() as f64;
    let mut se = 0.0;
    let mut ae = 0.0;
    for (&p, &t) in prediction.iter().zip(target) {
        let d = f64::from(p) - f64::from(t);
        se += d * d;
        ae += d.abs();
    }
    let mut r2 = 0.0;
    for (p, t) in prediction.columns().into_iter().zip(target.columns()) {
        let mean = t.iter().map(|&v| f64::from(v)).sum::<f64>() / t.len() as f64;
        let sst: f64 = t.iter().map(|&v| (f64::from(v) - mean).powi(2)).sum();
        let sse: f64 = p
            .iter()
            .zip(t)
            .map(|(&a, &b)| (f64::from(a) - f64::from(b)).powi(2))
            .sum();
        r2 += if sst > 0.0 { 1.0 - sse / sst } else { 0.0 };
    }
    Ok(RegressionMetrics {
        mse: se / n,
        mae: ae / n,
        r2: r2 / prediction.ncols() as f64,
        teacher_mse: None,
    })
}

#[cfg(test)]
mod tests {
    use ndarray::array;

    use super::*;

    #[test]
    fn classification_metrics_by_hand() {
        // Truth 0,0,1,1; predicted 0,1,1,1.
        let probs = array![[0.9f32, 0.1], [0.4, 0.6], [0.2, 0.8], [0.3, 0.7]];
        let m = classification_metrics(&probs, &[0, 0, 1, 1], &[]).unwrap();
        assert_eq!(m.confusion, vec![vec![1, 1], vec![0, 2]]);
        assert!((m.accuracy - 0.75).abs() < 1e-12);
        assert!((m.per_class[0].precision - 1.0).abs() < 1e-12);
        assert!((m.per_class[0].recall - 0.5).abs() < 1e-12);
        assert!((m.per_class[1].precision - 2.0 / 3.0).abs() < 1e-12);
        let f1_0 = 2.0 * 0.5 / 1.5;
        let f1_1 = 2.0 * (2.0 / 3.0) / (5.0 / 3.0);
        assert!((m.macro_f1 - (f1_0 + f1_1) / 2.0).abs() < 1e-9);
        // Bins: 0.9 (right), 0.6 (wrong), 0.8 (right), 0.7 (right), each alone.
        let ece = (0.1 + 0.6 + 0.2 + 0.3) / 4.0;
        assert!(
            (m.expected_calibration_error - ece).abs() < 1e-6,
            "{}",
            m.expected_calibration_error
        );
        assert!(classification_metrics(&probs, &[0, 0, 1], &[]).is_err());
        assert!(classification_metrics(&probs, &[0, 0, 1, 2], &[]).is_err());
    }

    #[test]
    fn regression_metrics_by_hand() {
        let t = array![[1.0f32], [2.0], [3.0]];
        let m = regression_metrics(&t, &t).unwrap();
        assert_eq!((m.mse, m.mae, m.r2), (0.0, 0.0, 1.0));
        let p = array![[2.0f32], [2.0], [2.0]];
        let m = regression_metrics(&p, &t).unwrap();
        assert!((m.mse - 2.0 / 3.0).abs() < 1e-12);
        assert!((m.mae - 2.0 / 3.0).abs() < 1e-12);
        assert!(m.r2.abs() < 1e-12);
        assert!(regression_metrics(&p, &array![[1.0f32, 2.0]]).is_err());
    }
}
