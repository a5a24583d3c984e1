//! The dataset audit: what is asked ([`AuditRequest`]), the entry points ([`audit`],
//! [`audit_with`]) and the headline metrics ([`report_metrics`]).
//!
//! An audit runs in two passes over the file. The first hashes every byte (SHA-256) and, when
//! an expected digest was given, fails on a mismatch before anything is parsed: a file that is
//! not the one the user meant is not worth profiling. The second parses rows with the reader
//! for the file's format and feeds each cell to the [`profile`] accumulator, which is the same
//! for every format, so "missing", "duplicate" and the type names mean one thing everywhere.
//! The file is assumed not to change between the two passes.

mod csv;
mod digest;
mod error;
mod format;
mod guard;
mod jsonl;
mod location;
mod numeric;
mod parquet;
mod profile;
mod report;
mod verdict;

use std::collections::BTreeMap;
use std::fs::File;
use std::ops::ControlFlow;
use std::path::Path;

use nexa_runtime::AuditParams;

pub use error::{AuditError, Position};
pub use format::DatasetFormat;
pub use report::{
    AuditReport, ColumnReport, ColumnType, LabelBalance, NumericSummary, SplitOverlap, TypeCounts,
};
pub use verdict::{Finding, Severity, Verdict};

use profile::Profiler;

/// What to audit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditRequest {
    /// A local path, or a `file://` URI (`file:///data/train.csv`, percent-escapes allowed).
    pub location: String,
    /// The column whose class balance to report; the audit fails when it does not exist.
    pub label_column: Option<String>,
    /// The file's expected SHA-256 as 64 hex digits, either case.
    pub expected_sha256: Option<String>,
    /// How much of the file to look at, and how much memory to spend.
    pub limits: AuditLimits,
}

impl AuditRequest {
    /// A request for the dataset at `location`, with no label column, no expected digest and
    /// the default limits.
    pub fn new(location: impl Into<String>) -> Self {
        Self {
            location: location.into(),
            label_column: None,
            expected_sha256: None,
            limits: AuditLimits::default(),
        }
    }

    /// Reports the class balance of `column`.
    pub fn label_column(mut self, column: impl Into<String>) -> Self {
        self.label_column = Some(column.into());
        self
    }

    /// Fails the audit unless the file's SHA-256 is `hex`.
    pub fn expected_sha256(mut self, hex: impl Into<String>) -> Self {
        self.expected_sha256 = Some(hex.into());
        self
    }

    /// Replaces the limits.
    pub fn limits(mut self, limits: AuditLimits) -> Self {
        self.limits = limits;
        self
    }
}

impl From<&AuditParams> for AuditRequest {
    /// The request for an `audit` job, with the default limits.
    fn from(params: &AuditParams) -> Self {
        Self {
            location: params.dataset_uri.clone(),
            label_column: params.label_column.clone(),
            expected_sha256: params.expected_sha256.clone(),
            limits: AuditLimits::default(),
        }
    }
}

/// Bounds on the work and memory of one audit. The defaults suit a laptop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AuditLimits {
    /// Rows read at most; the rest of the file is not looked at and the report says
    /// [`AuditReport::truncated`]. The SHA-256 always covers the whole file.
    pub max_rows: u64,
    /// Values kept per numeric column for quartiles and outliers (8 bytes each). Up to this
    /// many the figures are exact; above it they come from a uniform random sample of this
    /// size (fixed seed, so the same file gives the same report). At least 1.
    pub quantile_sample: usize,
    /// Distinct classes counted for the label column; rows of further classes are counted
    /// together in [`LabelBalance::other`].
    pub max_label_classes: usize,
    /// The longest line of a CSV or JSON Lines file, in bytes: a longer one stops the audit
    /// as malformed input before it is held whole, so memory stays bounded whatever the
    /// file.
    pub max_line_bytes: u64,
}

impl Default for AuditLimits {
    fn default() -> Self {
        Self {
            max_rows: 10_000_000,
            quantile_sample: 100_000,
            max_label_classes: 10_000,
            max_line_bytes: 16 << 20,
        }
    }
}

/// Which pass an audit is in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuditPhase {
    /// Computing the SHA-256; `done` and `total` are bytes.
    Hashing,
    /// Parsing rows; `done` and `total` are bytes for CSV and JSON Lines, rows for Parquet.
    Reading,
}

/// How far an audit is, passed to the callback of [`audit_with`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AuditProgress {
    /// The pass.
    pub phase: AuditPhase,
    /// Work done in this pass.
    pub done: u64,
    /// Work in this pass in all (0 when unknown or empty).
    pub total: u64,
}

impl AuditProgress {
    /// The whole audit's progress from 0.0 to 1.0, counting hashing as the first fifth.
    pub fn fraction(&self) -> f64 {
        let within = if self.total == 0 {
            0.0
        } else {
            (self.done as f64 / self.total as f64).clamp(0.0, 1.0)
        };
        match self.phase {
            AuditPhase::Hashing => 0.2 * within,
            AuditPhase::Reading => 0.2 + 0.8 * within,
        }
    }
}

/// Audits a dataset file. See the [crate docs](crate) for what the report holds.
pub fn audit(request: &AuditRequest) -> Result<AuditReport, AuditError> {
    audit_with(request, |_| ControlFlow::Continue(()))
}

/// [`audit`], calling `on_progress` now and then (every few MiB or thousand rows). Returning
/// [`ControlFlow::Break`] stops the audit soon after with [`AuditError::Cancelled`].
pub fn audit_with(
    request: &AuditRequest,
    mut on_progress: impl FnMut(AuditProgress) -> ControlFlow<()>,
) -> Result<AuditReport, AuditError> {
    let mut observer = Observer(&mut on_progress);
    let path = location::resolve(&request.location)?;
    let format = DatasetFormat::from_path(&path)?;
    let expected = request
        .expected_sha256
        .as_deref()
        .map(digest::parse_expected)
        .transpose()?;

    let (mut file, total) = open_regular(&path)?;
    audit_opened(
        request,
        &path,
        format,
        expected,
        &mut file,
        total,
        &mut observer,
    )
}

/// [`audit_with`] of a file already opened (with [`open_regular`], so that what was checked is
/// what is read): `path` only names it in the report and errors, and says its format.
pub fn audit_file(
    request: &AuditRequest,
    path: &Path,
    mut file: File,
    mut on_progress: impl FnMut(AuditProgress) -> ControlFlow<()>,
) -> Result<AuditReport, AuditError> {
    let mut observer = Observer(&mut on_progress);
    let format = DatasetFormat::from_path(path)?;
    let expected = request
        .expected_sha256
        .as_deref()
        .map(digest::parse_expected)
        .transpose()?;
    let total = regular_size(&file, path)?;
    audit_opened(
        request,
        path,
        format,
        expected,
        &mut file,
        total,
        &mut observer,
    )
}

/// Opens `path` for reading, refusing a symlink at its end, and checks on the descriptor
/// itself that it is a regular file (not a folder, device or pipe, which would never end);
/// answers the file and its size.
pub fn open_regular(path: &Path) -> Result<(File, u64), AuditError> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        // A pipe must not block the open; reads of a regular file ignore the flag.
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .map_err(|source| AuditError::Open {
            path: path.to_path_buf(),
            source: if source.raw_os_error() == Some(libc::ELOOP) {
                std::io::Error::other("a symlink (the path must name the file itself)")
            } else {
                source
            },
        })?;
    let size = regular_size(&file, path)?;
    Ok((file, size))
}

/// The size of `file`, when it is a regular file.
fn regular_size(file: &File, path: &Path) -> Result<u64, AuditError> {
    let open_error = |source| AuditError::Open {
        path: path.to_path_buf(),
        source,
    };
    let metadata = file.metadata().map_err(open_error)?;
    if !metadata.is_file() {
        return Err(open_error(std::io::Error::other("not a regular file")));
    }
    Ok(metadata.len())
}

/// The audit proper, of `file` from its start.
fn audit_opened(
    request: &AuditRequest,
    path: &Path,
    format: DatasetFormat,
    expected: Option<String>,
    file: &mut File,
    total: u64,
    observer: &mut Observer<'_>,
) -> Result<AuditReport, AuditError> {
    use std::io::Seek;
    let path = path.to_path_buf();
    let (sha256, file_size) = digest::sha256_file(file, total, &path, observer)?;
    if let Some(expected) = expected
        && expected != sha256
    {
        return Err(AuditError::IntegrityMismatch {
            expected,
            actual: sha256,
        });
    }

    file.rewind().map_err(|source| AuditError::Read {
        path: path.clone(),
        source,
    })?;
    let file = file.try_clone().map_err(|source| AuditError::Read {
        path: path.clone(),
        source,
    })?;
    let file = guard::LineGuard::new(file, request.limits.max_line_bytes);
    let mut profiler = Profiler::new(request.limits, request.label_column.clone());
    let truncated = match format {
        DatasetFormat::Csv => csv::read(file, &path, file_size, &mut profiler, observer)?,
        DatasetFormat::JsonLines => jsonl::read(file, &path, file_size, &mut profiler, observer)?,
        DatasetFormat::Parquet => parquet::read(file.into_inner(), &path, &mut profiler, observer)?,
    };
    let profile = profiler.finish()?;

    let missing_values = profile.columns.iter().map(|c| c.missing).sum();
    let outliers = profile
        .columns
        .iter()
        .filter_map(|c| c.numeric.as_ref())
        .map(|n| n.outliers)
        .sum();
    let mut report = AuditReport {
        path: path.display().to_string(),
        format,
        file_size,
        sha256,
        rows: profile.rows,
        truncated,
        columns: profile.columns,
        duplicate_rows: profile.duplicate_rows,
        missing_values,
        outliers,
        label: profile.label,
        split_overlap: profile.split_overlap,
        verdict: Verdict::Ok,
        findings: Vec::new(),
    };
    report.findings = verdict::findings(&report);
    report.verdict = verdict::verdict(&report.findings);
    Ok(report)
}

/// The headline numbers of a report, for a job's metrics: `rows`, `columns`,
/// `duplicate_rows`, `missing_values`, `outliers`, `file_size_bytes`, `label_classes` when a
/// label column was audited, and `split_overlap_rows` (evaluation rows also in the train
/// part) when the dataset says which rows are which.
pub fn report_metrics(report: &AuditReport) -> BTreeMap<String, f64> {
    let mut metrics = BTreeMap::from([
        ("rows".to_owned(), report.rows as f64),
        ("columns".to_owned(), report.columns.len() as f64),
        ("duplicate_rows".to_owned(), report.duplicate_rows as f64),
        ("missing_values".to_owned(), report.missing_values as f64),
        ("outliers".to_owned(), report.outliers as f64),
        ("file_size_bytes".to_owned(), report.file_size as f64),
    ]);
    if let Some(label) = &report.label {
        metrics.insert("label_classes".to_owned(), label.classes.len() as f64);
    }
    if let Some(overlap) = &report.split_overlap {
        metrics.insert(
            "split_overlap_rows".to_owned(),
            overlap.overlapping() as f64,
        );
    }
    let count = |s| report.findings.iter().filter(|f| f.severity == s).count() as f64;
    metrics.insert("warnings".to_owned(), count(Severity::Warning));
    metrics.insert("problems".to_owned(), count(Severity::Problem));
    metrics
}

/// The caller's progress callback, turning a request to stop into [`AuditError::Cancelled`].
struct Observer<'a>(&'a mut dyn FnMut(AuditProgress) -> ControlFlow<()>);

impl Observer<'_> {
    fn report(&mut self, phase: AuditPhase, done: u64, total: u64) -> Result<(), AuditError> {
        match (self.0)(AuditProgress { phase, done, total }) {
            ControlFlow::Continue(()) => Ok(()),
            ControlFlow::Break(()) => Err(AuditError::Cancelled),
        }
    }
}

/// How often the readers report progress, in rows.
const ROWS_PER_REPORT: u64 = 8_192;
