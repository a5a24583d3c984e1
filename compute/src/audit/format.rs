//! The dataset formats the audit reads, told apart by file extension.

use std::fmt;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::AuditError;

/// A dataset file format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DatasetFormat {
    /// Comma-separated values with a header row (`.csv`).
    Csv,
    /// One JSON object per line (`.jsonl`, `.ndjson`).
    #[serde(rename = "jsonl")]
    JsonLines,
    /// Apache Parquet (`.parquet`).
    Parquet,
}

impl DatasetFormat {
    /// The extensions the audit recognises, without the dot.
    pub const SUPPORTED_EXTENSIONS: [&'static str; 4] = ["csv", "jsonl", "ndjson", "parquet"];

    /// The format of `path`, from its extension (any case).
    pub fn from_path(path: &Path) -> Result<Self, AuditError> {
        let extension = path.extension().map(|e| e.to_string_lossy().to_lowercase());
        match extension.as_deref() {
            Some("csv") => Ok(DatasetFormat::Csv),
            Some("jsonl" | "ndjson") => Ok(DatasetFormat::JsonLines),
            Some("parquet") => Ok(DatasetFormat::Parquet),
            _ => Err(AuditError::UnsupportedFormat {
                path: path.to_path_buf(),
                extension,
            }),
        }
    }

    /// The name used in reports and messages.
    pub const fn as_str(self) -> &'static str {
        match self {
            DatasetFormat::Csv => "CSV",
            DatasetFormat::JsonLines => "JSON Lines",
            DatasetFormat::Parquet => "Parquet",
        }
    }
}

impl fmt::Display for DatasetFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
