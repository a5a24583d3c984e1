//! Why an audit failed, and whose fault that is.

use std::fmt;
use std::io;
use std::path::PathBuf;

use super::DatasetFormat;

/// Why an audit did not produce a report.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// The location uses a scheme other than `file://`; the audit reads local files only.
    #[error(
        "unsupported location scheme {scheme:?} in {location:?}: the audit reads local files only; \
         pass a path or a file:// URI (download the dataset first)"
    )]
    UnsupportedLocation {
        /// The location as given.
        location: String,
        /// The scheme, e.g. `s3`.
        scheme: String,
    },
    /// The location is a `file://` URI that names no local file.
    #[error("invalid location {location:?}: {reason}")]
    InvalidLocation {
        /// The location as given.
        location: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The file's extension names no supported format.
    #[error(
        "cannot tell the format of {path}: {}; supported extensions: {}",
        describe_extension(.extension.as_deref()),
        DatasetFormat::SUPPORTED_EXTENSIONS.map(|e| format!(".{e}")).join(", ")
    )]
    UnsupportedFormat {
        /// The file.
        path: PathBuf,
        /// Its extension, if it has one.
        extension: Option<String>,
    },
    /// The file cannot be opened: missing, not readable, or not a regular file.
    #[error("cannot open {path}: {source}")]
    Open {
        /// The file.
        path: PathBuf,
        /// The operating system's reason.
        #[source]
        source: io::Error,
    },
    /// Reading failed part way, for a reason that is not the file's content (a disk error, a
    /// vanished network mount). The only failure that another try may cure.
    #[error("error reading {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The operating system's reason.
        #[source]
        source: io::Error,
    },
    /// The expected SHA-256 given is not 64 hex digits.
    #[error("expected sha-256 {value:?} is not 64 hexadecimal digits")]
    InvalidExpectedSha256 {
        /// The value given.
        value: String,
    },
    /// The file's SHA-256 is not the expected one: a different or damaged file.
    #[error("sha-256 mismatch: expected {expected}, actual {actual}")]
    IntegrityMismatch {
        /// The digest asked for, lower-case hex.
        expected: String,
        /// The file's digest, lower-case hex.
        actual: String,
    },
    /// A row, line or the file's structure is not valid for its format.
    #[error("{path}: malformed {format} at {at}: {reason}")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// The format it was read as.
        format: DatasetFormat,
        /// Where.
        at: Position,
        /// What was wrong.
        reason: String,
    },
    /// The label column is not in the dataset.
    #[error(
        "label column {column:?} not found; available columns: {}",
        list_columns(.available)
    )]
    UnknownLabelColumn {
        /// The column asked for.
        column: String,
        /// The dataset's columns, in order.
        available: Vec<String>,
    },
    /// The progress callback asked to stop.
    #[error("audit cancelled")]
    Cancelled,
}

impl AuditError {
    /// Whether the failure is the input's fault (the location, the file, its content or the
    /// request), so that running the same audit again cannot succeed. False only for an I/O
    /// error part way through a read and for cancellation.
    pub fn is_invalid_input(&self) -> bool {
        !matches!(self, AuditError::Read { .. } | AuditError::Cancelled)
    }

    /// Whether the audit stopped because the progress callback asked it to.
    pub fn is_cancelled(&self) -> bool {
        matches!(self, AuditError::Cancelled)
    }
}

fn describe_extension(extension: Option<&str>) -> String {
    match extension {
        Some(ext) => format!("extension .{ext} is not supported"),
        None => "it has no extension".to_owned(),
    }
}

fn list_columns(columns: &[String]) -> String {
    if columns.is_empty() {
        "(none)".to_owned()
    } else {
        columns.join(", ")
    }
}

/// Where in a file a problem is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Position {
    /// A line of a text file, from 1 (the CSV header is line 1).
    Line(u64),
    /// A data row, from 1.
    Row(u64),
    /// The file as a whole: its header, footer or metadata.
    File,
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Position::Line(n) => write!(f, "line {n}"),
            Position::Row(n) => write!(f, "row {n}"),
            Position::File => f.write_str("file level"),
        }
    }
}
