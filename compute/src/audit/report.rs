//! What an audit found. Serialisable, so a stage can keep the whole report as the job's
//! result JSON.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::DatasetFormat;

/// The result of an audit.
///
/// Counts cover the rows read: all of them unless [`truncated`](Self::truncated).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AuditReport {
    /// The local path audited.
    pub path: String,
    /// The format the file was read as.
    pub format: DatasetFormat,
    /// The file's size in bytes.
    pub file_size: u64,
    /// The SHA-256 of the whole file, lower-case hex.
    pub sha256: String,
    /// Data rows read (the CSV header is not a row).
    pub rows: u64,
    /// True when the file has more rows than `limits.max_rows` and the rest were not read.
    pub truncated: bool,
    /// The columns in order: the CSV header, the Parquet schema's top-level fields, or for
    /// JSON Lines the keys in the order they first appear.
    pub columns: Vec<ColumnReport>,
    /// Rows identical to an earlier row (so a row present three times counts twice).
    pub duplicate_rows: u64,
    /// Missing cells over all columns.
    pub missing_values: u64,
    /// Outliers over all numeric columns.
    pub outliers: u64,
    /// The label column's class balance, when one was asked for.
    pub label: Option<LabelBalance>,
    /// Rows of the evaluation parts (validation, test) that are also in the train part,
    /// when the dataset says which rows are which: a `split` column (`train`,
    /// `validation` or `val`, `test`), or the split a generated dataset records.
    #[serde(default)]
    pub split_overlap: Option<SplitOverlap>,
    /// `ok`, `warnings` or `problems`: the worst of `findings`.
    pub verdict: super::Verdict,
    /// What the checks found, most severe first: no rows or a read cut short; duplicate rows
    /// from 1% (a problem from 20%); missing values in a column (a problem from 50%); a
    /// numeric column with one value; 5% outliers in a column; a label with one class, or
    /// with 10 times the rows in its largest class as in its smallest.
    pub findings: Vec<super::Finding>,
}

/// One column.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ColumnReport {
    /// Its name.
    pub name: String,
    /// The type its present values have.
    pub inferred_type: ColumnType,
    /// Rows where it is missing: an empty CSV field, an absent JSON key, a JSON or Parquet
    /// null.
    pub missing: u64,
    /// Present values by type; they add up to `rows - missing`.
    pub type_counts: TypeCounts,
    /// Statistics of the values, for `integer` and `float` columns with at least one finite
    /// value.
    pub numeric: Option<NumericSummary>,
}

/// The type of a column, from its present values.
///
/// CSV fields are text, so their type is read from the text: an integer (`-12`), a float
/// (`3.5`, `1e-3`, `-inf`), `true` or `false` in any case, else a string. Words such as `NA`
/// or `null` are strings, not missing values; only an empty field is missing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ColumnType {
    /// Every value is a whole number.
    Integer,
    /// Every value is a number, at least one of them not whole (or written as a float).
    Float,
    /// Every value is true or false.
    Boolean,
    /// Every value is text (Parquet dates, times and binary values count as text).
    String,
    /// Every value is a JSON array or object, or a Parquet group, list or map.
    Nested,
    /// No present values at all.
    NullOnly,
    /// Values of more than one of the types above (integers with floats make `float`).
    Mixed,
}

/// How many present values of each type a column has.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TypeCounts {
    /// Whole numbers.
    pub integer: u64,
    /// Other numbers, including infinities and NaN.
    pub float: u64,
    /// `true` and `false`.
    pub boolean: u64,
    /// Text.
    pub string: u64,
    /// Arrays, objects, groups, lists and maps.
    pub nested: u64,
}

impl TypeCounts {
    /// The type these counts make.
    pub fn inferred_type(&self) -> ColumnType {
        let kinds = [
            self.integer,
            self.float,
            self.boolean,
            self.string,
            self.nested,
        ]
        .iter()
        .filter(|&&n| n > 0)
        .count();
        let numeric_only = self.boolean + self.string + self.nested == 0;
        match kinds {
            0 => ColumnType::NullOnly,
            1 if self.integer > 0 => ColumnType::Integer,
            1 if self.float > 0 => ColumnType::Float,
            1 if self.boolean > 0 => ColumnType::Boolean,
            1 if self.string > 0 => ColumnType::String,
            1 => ColumnType::Nested,
            2 if numeric_only => ColumnType::Float,
            _ => ColumnType::Mixed,
        }
    }

    /// All present values.
    pub fn total(&self) -> u64 {
        self.integer + self.float + self.boolean + self.string + self.nested
    }
}

/// Statistics of a numeric column's finite values.
///
/// Quartiles interpolate linearly between order statistics (numpy's default, "type 7").
/// Outliers are values below `lower_fence = q1 - 1.5 * iqr` or above
/// `upper_fence = q3 + 1.5 * iqr`. When [`exact`](Self::exact) is false the column had more
/// values than `limits.quantile_sample`: quartiles, fences and outliers then come from a
/// uniform random sample of `sample_size` values, and `outliers` is the sample's outlier
/// count scaled to `count`. `min`, `max`, `mean` and `std` are always exact.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NumericSummary {
    /// Finite values.
    pub count: u64,
    /// Infinite and NaN values, left out of every figure here.
    pub non_finite: u64,
    /// Smallest value.
    pub min: f64,
    /// Largest value.
    pub max: f64,
    /// Arithmetic mean.
    pub mean: f64,
    /// Sample standard deviation (divides by `count - 1`); 0 for a single value.
    pub std: f64,
    /// First quartile.
    pub q1: f64,
    /// Median.
    pub median: f64,
    /// Third quartile.
    pub q3: f64,
    /// Values below this are outliers.
    pub lower_fence: f64,
    /// Values above this are outliers.
    pub upper_fence: f64,
    /// Values outside the fences.
    pub outliers: u64,
    /// Whether quartiles and outliers were computed from every value.
    pub exact: bool,
    /// How many values the quartiles were computed from.
    pub sample_size: u64,
}

/// The classes of the label column and how many rows each has.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LabelBalance {
    /// The label column.
    pub column: String,
    /// Rows per class. A class is the value as text: `setosa`, `3`, `true`.
    pub classes: BTreeMap<String, u64>,
    /// Rows with no label.
    pub missing: u64,
    /// Rows whose class came after `limits.max_label_classes` distinct classes were seen;
    /// they are counted here and not in `classes`.
    pub other: u64,
    /// Rows of the largest class over rows of the smallest (1.0 when balanced; 0 with no
    /// classes).
    pub imbalance_ratio: f64,
}

/// How much of a dataset's evaluation data its train data holds: rows compared whole (every
/// column but the split's), so a test row that is a copy of a train row is found however the
/// rows are ordered.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SplitOverlap {
    /// Rows in the train part.
    pub train_rows: u64,
    /// Rows in the validation part.
    pub validation_rows: u64,
    /// Rows in the test part.
    pub test_rows: u64,
    /// Validation rows identical to a train row.
    pub validation_in_train: u64,
    /// Test rows identical to a train row.
    pub test_in_train: u64,
}

impl SplitOverlap {
    /// Evaluation rows also in the train part.
    pub fn overlapping(&self) -> u64 {
        self.validation_in_train + self.test_in_train
    }
}
