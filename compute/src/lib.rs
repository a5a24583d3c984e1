//! The algorithms behind Nexa Forge's built-in stages. For now: the dataset audit.
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

mod audit;

pub use audit::{
    AuditError, AuditLimits, AuditPhase, AuditProgress, AuditReport, AuditRequest, ColumnReport,
    ColumnType, DatasetFormat, LabelBalance, NumericSummary, Position, TypeCounts, audit,
    audit_with, report_metrics,
};
