//! Knowledge distillation: a teacher labels a dataset with its logits, and a student is
//! trained on the mix of hard-label loss and temperature-scaled KL divergence
//! ([`crate::DistillConfig`]).

use ndarray::{Array2, Axis, Slice};

use crate::backend::Backend;
use crate::model::{Head, Mlp};
use crate::{ComputeError, Dataset};

/// `dataset` with the teacher's logits for every row as its soft targets
/// (`teacher_logit_<k>` columns), ready to be written out and to train a student on.
pub fn label_with_teacher<B: Backend>(
    backend: &B,
    teacher: &Mlp<B>,
    dataset: &Dataset,
) -> Result<Dataset, ComputeError> {
    if teacher.config().head != Head::Classification {
        return Err(ComputeError::invalid(
            "teacher",
            "distillation needs a classification teacher",
        ));
    }
    if teacher.config().outputs != dataset.schema().outputs() {
        return Err(ComputeError::invalid(
            "teacher",
            format!(
                "the teacher has {} outputs, the dataset {} classes",
                teacher.config().outputs,
                dataset.schema().outputs()
            ),
        ));
    }
    let logits = predict_chunked(backend, teacher, dataset.features())?;
    dataset.clone().with_soft_targets(logits)
}

/// [`Mlp::predict`] in chunks of 4,096 rows, so memory stays bounded for large datasets.
pub fn predict_chunked<B: Backend>(
    backend: &B,
    model: &Mlp<B>,
    features: &Array2<f32>,
) -> Result<Array2<f32>, ComputeError> {
    let mut out = Array2::zeros((features.nrows(), model.config().outputs));
    let mut start = 0;
    while start < features.nrows() {
        let end = (start + 4096).min(features.nrows());
        let part = model.predict(
            backend,
            &features
                .slice_axis(Axis(0), Slice::from(start..end))
                .to_owned(),
        )?;
        out.slice_axis_mut(Axis(0), Slice::from(start..end))
            .assign(&part);
        start = end;
    }
    Ok(out)
}
