//! The algorithms behind Nexa Forge's built-in stages: the dataset audit, synthetic
//! datasets, multilayer perceptrons with their training loop and checkpoints,
//! distillation, and evaluation. Everything runs through the [`Backend`] trait: on the CPU
//! by [`CpuBackend`], and on an NVIDIA GPU by `CudaBackend` with the `cuda` feature.
//!
//! ## Datasets, models, training
//!
//! [`generate`] makes a seeded dataset from a closed-form law ([`Problem`]: projectile,
//! pendulum, damped oscillator, ideal gas, and the circuits domain), as regression or as
//! classes by binning. A [`Dataset`] splits by seed and reads and writes JSON Lines and
//! Parquet with its [`Schema`]. An [`Mlp`] (presets in [`Preset`]) trains with [`train`]:
//! AdamW, warmup and cosine decay, gradient clipping, checkpoints in a [`CheckpointDir`]
//! that a later call resumes from bit for bit, progress through a callback that can stop
//! it. [`label_with_teacher`] and [`DistillConfig`] distil a teacher into a student;
//! [`evaluate`] gives an [`EvaluationReport`].
//!
//! ```
//! use nexa_compute::{
//!     Control, CpuBackend, GenerateSpec, Head, Mlp, Preset, Problem, TrainConfig, evaluate,
//!     generate, train,
//! };
//!
//! let data = generate(&GenerateSpec::new(Problem::Pendulum, 600).seed(1).classes(3))?;
//! let split = data.split(0.8, 0.0, 1)?;
//! let backend = CpuBackend;
//! let config = Preset::StudentSmall.config(3, 3, Head::Classification);
//! let mut model = Mlp::new(&backend, config, 7)?;
//! let settings = TrainConfig { epochs: 3, batch_size: 32, ..TrainConfig::default() };
//! let outcome = train(&backend, &mut model, &split.train, None, &settings, None, &mut |_| {
//!     Control::Continue
//! })?;
//! assert_eq!(outcome.steps, 3 * 15);
//! let report = evaluate(&backend, &model, &split.test, None)?;
//! assert!(report.headline() > 0.0);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! What it deliberately does not do: nothing whose result depends on the number of threads
//! (the CPU backend splits large products and elementwise steps between threads only where
//! each value is still computed by one thread in one order), no async, no downloads, no model
//! architectures beyond the MLP, no mixed precision.
//!
//! ## Backends and devices
//!
//! The algorithms are generic over a [`Backend`]: the operations of an MLP's training and
//! inference (matrix products, bias and activation, the losses with their gradients,
//! AdamW), on matrices that live on the backend's device.
//!
//! - [`CpuBackend`] is always there: ndarray, on [`threads`] threads ([`set_threads`],
//!   `NEXA_THREADS`; default every core), bit-reproducible whatever their number. It is the
//!   reference every other backend is tested against.
//! - `CudaBackend` and its `CudaTensor`, with the cargo feature **`cuda`** (off by default):
//!   matrix products by cuBLAS, everything else by kernels compiled with NVRTC when the
//!   backend is created, fp32 throughout (no TF32). The CUDA libraries are loaded at run
//!   time, so the feature builds on a machine with no CUDA at all; there it finds no device
//!   and `CudaBackend::new` returns an error. It needs an NVIDIA driver and a CUDA 13
//!   toolkit's cuBLAS and NVRTC at run time. `tests/cuda_parity.rs` checks it against the
//!   CPU on a GPU, and `scripts/gpu-check.sh` runs those tests and a throughput example.
//!
//! [`devices`] lists the CUDA devices (always empty without the feature) and
//! [`best_device`] picks one, or [`Device::Cpu`] when there is none, so a caller can choose
//! a backend at run time:
//!
//! ```
//! use nexa_compute::{Device, best_device};
//!
//! match best_device() {
//!     Device::Cpu => println!("training on the CPU"),
//!     Device::Cuda(gpu) => println!("training on {} ({} bytes)", gpu.name, gpu.total_memory),
//! }
//! ```
//!
//! ## The dataset audit
//!
//! [`audit`] reads one local dataset file — CSV, JSON Lines or Parquet, chosen by its
//! extension — and returns an [`AuditReport`]: the file's size and SHA-256, its row count,
//! the schema with an inferred type per column, missing values per column, duplicate rows,
//! the class balance of a label column, and per numeric column min, max, mean, standard
//! deviation, quartiles and the number of outliers outside the 1.5 IQR fences. When the
//! request carries an expected SHA-256 and the file's differs, the audit fails with
//! [`AuditError::IntegrityMismatch`] before a single row is parsed. [`report_metrics`] picks
//! the headline numbers out of a report for a job's metrics.
//!
//! Every failure is an [`AuditError`], and [`AuditError::is_invalid_input`] says whose fault
//! it is: a missing file, an unknown extension, a malformed row (named by line or row
//! number), an integrity mismatch or an unknown label column are the input's fault and
//! retrying will not help; an I/O error in the middle of a read is not.
//!
//! What it deliberately does not do:
//!
//! - No async, no threads, no actors: it is plain synchronous code that reads a file. A stage
//!   runs it on a blocking thread and uses [`audit_with`] to report progress and to stop
//!   when the job is cancelled.
//! - No downloads: only local paths and `file://` URIs. `s3://`, `gs://` and `http(s)://`
//!   are refused with [`AuditError::UnsupportedLocation`]; fetching is the caller's job.
//! - No compressed text files (`.csv.gz`), no CSV dialect sniffing (the delimiter is `,`,
//!   the first row is the header), no Parquet codecs other than snappy and uncompressed.
//! - Bounded memory, not bounded exactness. At most [`AuditLimits::max_rows`] rows are
//!   read. Quartiles and outlier counts are exact while a column has at most
//!   [`AuditLimits::quantile_sample`] values and estimated from a uniform sample above that
//!   ([`NumericSummary::exact`] says which). Duplicates are found by a 64-bit hash per row,
//!   kept once per distinct row (about 16 bytes each).
//!
//! ```
//! use nexa_compute::{AuditRequest, ColumnType, audit, report_metrics};
//!
//! let dir = tempfile::tempdir()?;
//! let path = dir.path().join("iris.csv");
//! std::fs::write(&path, "petal,species\n1.4,setosa\n4.7,versicolor\n1.4,setosa\n")?;
//!
//! let report = audit(&AuditRequest::new(path.display().to_string()).label_column("species"))?;
//! assert_eq!(report.rows, 3);
//! assert_eq!(report.duplicate_rows, 1);
//! assert_eq!(report.columns[0].inferred_type, ColumnType::Float);
//! assert_eq!(report.label.as_ref().unwrap().classes["setosa"], 2);
//! assert_eq!(report_metrics(&report)["rows"], 3.0);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

// Unsafe code is denied in the manifest and allowed in the CUDA module only; without the
// `cuda` feature it is forbidden outright, as in the rest of the workspace.
#![cfg_attr(not(feature = "cuda"), forbid(unsafe_code))]

mod audit;
mod backend;
mod checkpoint;
mod dataset;
mod device;
mod distill;
mod error;
mod evaluate;
mod generate;
mod model;
mod optim;
mod rng;
mod train;

pub use audit::{
    AuditError, AuditLimits, AuditPhase, AuditProgress, AuditReport, AuditRequest, ColumnReport,
    ColumnType, DatasetFormat, Finding, LabelBalance, NumericSummary, Position, Severity,
    SplitOverlap, TypeCounts, Verdict, audit, audit_file, audit_with, open_regular, report_metrics,
};

pub use backend::{Activation, AdamWStep, Backend, CpuBackend, set_threads, threads};
#[cfg(feature = "cuda")]
pub use backend::{CudaBackend, CudaTensor};
pub use checkpoint::{Checkpoint, CheckpointDir};
pub use dataset::{
    Dataset, FileFormat, SCHEMA_METADATA_KEY, Schema, Split, SplitPlan, Standardizer, Targets,
    Task, read_dataset, write_dataset,
};
pub use device::{Device, DeviceInfo, best_device, devices};
pub use distill::{label_with_teacher, predict_chunked};
pub use error::ComputeError;
pub use evaluate::{
    ClassMetrics, ClassificationMetrics, EvaluationReport, Metrics, RegressionMetrics, argmax_rows,
    classification_metrics, evaluate, regression_metrics,
};
pub use generate::{GenerateSpec, MAX_GENERATED_VALUES, Problem, TargetKind, generate};
pub use model::{ForwardCache, Gradients, Head, Layer, Mlp, MlpConfig, Preset};
pub use optim::{AdamW, AdamWConfig, LrSchedule, clip_gradients};
pub use rng::Rng;
pub use train::{Control, DistillConfig, Progress, TrainConfig, TrainOutcome, train};
