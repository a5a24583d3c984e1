//! The format-independent part of the audit: every reader turns its rows into [`Cell`]s and
//! feeds them here, one row at a time.
//!
//! Per column it counts present values by type, keeps a [`NumericAccumulator`] and, for the
//! label column, the class counts. Missing cells are never fed: a column's missing count is
//! the rows minus its present values, which also covers JSON keys absent from a row and
//! columns first seen part way through a JSON Lines file.
//!
//! Duplicate rows are found by hashing each row's present `(column, value)` pairs into 64
//! bits (the sum of a SipHash per pair) and keeping the set of hashes. Two different rows collide with probability about
//! `rows² / 2⁶⁵` (below 3 in a million at 10 million rows); a collision would count one
//! row as a duplicate that is not.

use std::borrow::Cow;
use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hash, Hasher};

use super::numeric::NumericAccumulator;
use super::{
    AuditError, AuditLimits, ColumnReport, ColumnType, LabelBalance, SplitOverlap, TypeCounts,
};

/// One present value, as the readers see it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Cell<'a> {
    Bool(bool),
    /// Wide enough for every i64 and u64.
    Int(i128),
    Float(f64),
    Text(Cow<'a, str>),
    /// A nested value in a canonical text form (equal values, equal text).
    Nested(Cow<'a, str>),
}

impl Cell<'_> {
    /// The cell a CSV field's text stands for, or `None` when the field is empty (missing).
    pub(crate) fn from_text(raw: &str) -> Option<Cell<'_>> {
        let s = raw.trim();
        if s.is_empty() {
            return None;
        }
        let looks_numeric = matches!(s.as_bytes()[0], b'0'..=b'9' | b'-' | b'+' | b'.');
        let cell = if !looks_numeric {
            if s.eq_ignore_ascii_case("true") {
                Cell::Bool(true)
            } else if s.eq_ignore_ascii_case("false") {
                Cell::Bool(false)
            } else {
                Cell::Text(Cow::Borrowed(raw))
            }
        } else if let Ok(i) = s.parse::<i128>() {
            Cell::Int(i)
        } else if let Ok(f) = s.parse::<f64>() {
            Cell::Float(f)
        } else {
            Cell::Text(Cow::Borrowed(raw))
        };
        Some(cell)
    }

    /// The class name of a label value.
    fn class(&self) -> String {
        match self {
            Cell::Bool(b) => b.to_string(),
            Cell::Int(i) => i.to_string(),
            Cell::Float(f) => f.to_string(),
            Cell::Text(s) | Cell::Nested(s) => s.to_string(),
        }
    }

    fn hash_into(&self, hasher: &mut DefaultHasher) {
        match self {
            Cell::Bool(b) => {
                hasher.write_u8(1);
                b.hash(hasher);
            }
            Cell::Int(i) => {
                hasher.write_u8(2);
                i.hash(hasher);
            }
            Cell::Float(f) => {
                hasher.write_u8(3);
                // -0.0 == 0.0, and every NaN is the same missing-ish value.
                let canonical = if *f == 0.0 {
                    0.0
                } else if f.is_nan() {
                    f64::NAN
                } else {
                    *f
                };
                canonical.to_bits().hash(hasher);
            }
            Cell::Text(s) => {
                hasher.write_u8(4);
                s.hash(hasher);
            }
            Cell::Nested(s) => {
                hasher.write_u8(5);
                s.hash(hasher);
            }
        }
    }
}

/// The row being fed; hand it back to [`Profiler::end_row`]. Holds the sum of its cells'
/// hashes (a sum does not depend on the order cells come in, which JSON keys do not fix),
/// the same without the split column's cell, and the part of the split it is in.
pub(crate) struct RowState {
    all: u64,
    content: u64,
    part: Option<Part>,
}

/// A part of a dataset's split, as a `split` column names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Part {
    Train,
    Validation,
    Test,
}

impl Part {
    fn of(cell: &Cell<'_>) -> Option<Self> {
        let Cell::Text(text) = cell else {
            return None;
        };
        match text.to_ascii_lowercase().as_str() {
            "train" | "training" => Some(Self::Train),
            "validation" | "val" | "valid" | "dev" => Some(Self::Validation),
            "test" | "testing" => Some(Self::Test),
            _ => None,
        }
    }
}

/// The column that says which part of the split a row is in.
pub(crate) const SPLIT_COLUMN: &str = "split";

pub(crate) struct Profiler {
    limits: AuditLimits,
    label: Option<String>,
    label_index: Option<usize>,
    columns: Vec<Column>,
    by_name: HashMap<String, usize>,
    rows: u64,
    duplicate_rows: u64,
    seen_rows: HashSet<u64, BuildHasherDefault<PrehashedHasher>>,
    split_index: Option<usize>,
    /// The contents of the train rows, and the part and contents of the evaluation rows.
    train_rows: HashSet<u64, BuildHasherDefault<PrehashedHasher>>,
    evaluation_rows: Vec<(Part, u64)>,
    overlap: SplitOverlap,
}

struct Column {
    name: String,
    counts: TypeCounts,
    numeric: NumericAccumulator,
    /// The label column's counts.
    classes: Option<Classes>,
}

#[derive(Default)]
struct Classes {
    counts: BTreeMap<String, u64>,
    other: u64,
}

/// What the profiler found.
pub(crate) struct Profile {
    pub(crate) rows: u64,
    pub(crate) duplicate_rows: u64,
    pub(crate) columns: Vec<ColumnReport>,
    pub(crate) label: Option<LabelBalance>,
    pub(crate) split_overlap: Option<SplitOverlap>,
}

impl Profiler {
    pub(crate) fn new(limits: AuditLimits, label: Option<String>) -> Self {
        Self {
            limits,
            label,
            label_index: None,
            columns: Vec::new(),
            by_name: HashMap::new(),
            rows: 0,
            duplicate_rows: 0,
            seen_rows: HashSet::default(),
            split_index: None,
            train_rows: HashSet::default(),
            evaluation_rows: Vec::new(),
            overlap: SplitOverlap::default(),
        }
    }

    /// Rows fed so far.
    pub(crate) fn rows(&self) -> u64 {
        self.rows
    }

    /// Whether another row may be read.
    pub(crate) fn wants_more(&self) -> bool {
        self.rows < self.limits.max_rows
    }

    /// The index of the column `name`, adding it when new. Names are matched exactly; when a
    /// header repeats a name, each occurrence is its own column (use [`Self::add_column`]).
    pub(crate) fn column(&mut self, name: &str) -> usize {
        match self.by_name.get(name) {
            Some(&i) => i,
            None => self.add_column(name.to_owned()),
        }
    }

    /// Adds a column whose values come at the next index.
    pub(crate) fn add_column(&mut self, name: String) -> usize {
        let index = self.columns.len();
        let is_label = self.label_index.is_none() && self.label.as_deref() == Some(&name);
        if is_label {
            self.label_index = Some(index);
        }
        if self.split_index.is_none() && name == SPLIT_COLUMN {
            self.split_index = Some(index);
        }
        self.by_name.entry(name.clone()).or_insert(index);
        // A distinct seed per column, so columns with equal values do not sample alike.
        let seed = 0x5EED_0000_0000_0000 ^ index as u64;
        self.columns.push(Column {
            name,
            counts: TypeCounts::default(),
            numeric: NumericAccumulator::new(self.limits.quantile_sample, seed),
            classes: is_label.then(Classes::default),
        });
        index
    }

    /// Fails when a label column was asked for and is not among the columns so far. Readers
    /// whose schema is known up front call it before reading rows.
    pub(crate) fn check_label(&self) -> Result<(), AuditError> {
        match (&self.label, self.label_index) {
            (Some(column), None) => Err(AuditError::UnknownLabelColumn {
                column: column.clone(),
                available: self.columns.iter().map(|c| c.name.clone()).collect(),
            }),
            _ => Ok(()),
        }
    }

    pub(crate) fn begin_row(&self) -> RowState {
        RowState {
            all: 0,
            content: 0,
            part: None,
        }
    }

    /// Feeds column `index`'s present value in the current row. Each column at most once a
    /// row.
    pub(crate) fn cell(&mut self, row: &mut RowState, index: usize, cell: Cell<'_>) {
        let column = &mut self.columns[index];
        match &cell {
            Cell::Bool(_) => column.counts.boolean += 1,
            Cell::Int(i) => {
                column.counts.integer += 1;
                column.numeric.push(*i as f64);
            }
            Cell::Float(f) => {
                column.counts.float += 1;
                column.numeric.push(*f);
            }
            Cell::Text(_) => column.counts.string += 1,
            Cell::Nested(_) => column.counts.nested += 1,
        }
        if let Some(classes) = &mut column.classes {
            let class = cell.class();
            if let Some(n) = classes.counts.get_mut(&class) {
                *n += 1;
            } else if classes.counts.len() < self.limits.max_label_classes {
                classes.counts.insert(class, 1);
            } else {
                classes.other += 1;
            }
        }
        let mut hasher = DefaultHasher::new();
        index.hash(&mut hasher);
        cell.hash_into(&mut hasher);
        let hash = hasher.finish();
        row.all = row.all.wrapping_add(hash);
        if Some(index) == self.split_index {
            row.part = Part::of(&cell);
        } else {
            row.content = row.content.wrapping_add(hash);
        }
    }

    pub(crate) fn end_row(&mut self, row: RowState) {
        self.rows += 1;
        if !self.seen_rows.insert(row.all) {
            self.duplicate_rows += 1;
        }
        match row.part {
            Some(Part::Train) => {
                self.overlap.train_rows += 1;
                self.train_rows.insert(row.content);
            }
            Some(part) => self.evaluation_rows.push((part, row.content)),
            None => {}
        }
    }

    pub(crate) fn finish(self) -> Result<Profile, AuditError> {
        self.check_label()?;
        let rows = self.rows;
        let mut label = None;
        let mut columns = Vec::with_capacity(self.columns.len());
        for column in self.columns {
            let present = column.counts.total();
            let inferred_type = column.counts.inferred_type();
            if let Some(classes) = column.classes {
                label = Some(label_balance(&column.name, classes, rows - present));
            }
            let numeric = match inferred_type {
                ColumnType::Integer | ColumnType::Float => column.numeric.finish(),
                _ => None,
            };
            columns.push(ColumnReport {
                name: column.name,
                inferred_type,
                missing: rows - present,
                type_counts: column.counts,
                numeric,
            });
        }
        let split_overlap = self.split_index.map(|_| {
            let mut overlap = self.overlap;
            for (part, content) in &self.evaluation_rows {
                let seen = u64::from(self.train_rows.contains(content));
                match part {
                    Part::Validation => {
                        overlap.validation_rows += 1;
                        overlap.validation_in_train += seen;
                    }
                    _ => {
                        overlap.test_rows += 1;
                        overlap.test_in_train += seen;
                    }
                }
            }
            overlap
        });
        Ok(Profile {
            rows,
            duplicate_rows: self.duplicate_rows,
            columns,
            label,
            split_overlap,
        })
    }
}

fn label_balance(column: &str, classes: Classes, missing: u64) -> LabelBalance {
    let largest = classes.counts.values().max().copied().unwrap_or(0);
    let smallest = classes.counts.values().min().copied().unwrap_or(0);
    let imbalance_ratio = if smallest == 0 {
        0.0
    } else {
        largest as f64 / smallest as f64
    };
    LabelBalance {
        column: column.to_owned(),
        classes: classes.counts,
        missing,
        other: classes.other,
        imbalance_ratio,
    }
}

/// The set of row hashes holds hashes already: hashing them again would only cost time.
#[derive(Default)]
struct PrehashedHasher(u64);

impl Hasher for PrehashedHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u64` is used; this keeps the hasher correct for anything else.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_text_types() {
        let t = |s| Cell::from_text(s);
        assert_eq!(t(""), None);
        assert_eq!(t("  "), None);
        assert_eq!(t("-12"), Some(Cell::Int(-12)));
        assert_eq!(t(" 7 "), Some(Cell::Int(7)));
        assert_eq!(t("18446744073709551615"), Some(Cell::Int(u64::MAX.into())));
        assert_eq!(t("3.5"), Some(Cell::Float(3.5)));
        assert_eq!(t("1e-3"), Some(Cell::Float(1e-3)));
        assert_eq!(t(".5"), Some(Cell::Float(0.5)));
        assert_eq!(t("-inf"), Some(Cell::Float(f64::NEG_INFINITY)));
        assert_eq!(t("TRUE"), Some(Cell::Bool(true)));
        assert_eq!(t("false"), Some(Cell::Bool(false)));
        assert_eq!(t("NaN"), Some(Cell::Text("NaN".into())));
        assert_eq!(t("NA"), Some(Cell::Text("NA".into())));
        assert_eq!(t("-"), Some(Cell::Text("-".into())));
        assert_eq!(t("2024-01-02"), Some(Cell::Text("2024-01-02".into())));
    }

    #[test]
    fn type_inference() {
        let c = |integer, float, boolean, string, nested| TypeCounts {
            integer,
            float,
            boolean,
            string,
            nested,
        };
        assert_eq!(c(0, 0, 0, 0, 0).inferred_type(), ColumnType::NullOnly);
        assert_eq!(c(3, 0, 0, 0, 0).inferred_type(), ColumnType::Integer);
        assert_eq!(c(3, 1, 0, 0, 0).inferred_type(), ColumnType::Float);
        assert_eq!(c(0, 0, 2, 0, 0).inferred_type(), ColumnType::Boolean);
        assert_eq!(c(0, 0, 0, 2, 0).inferred_type(), ColumnType::String);
        assert_eq!(c(0, 0, 0, 0, 2).inferred_type(), ColumnType::Nested);
        assert_eq!(c(1, 0, 0, 1, 0).inferred_type(), ColumnType::Mixed);
        assert_eq!(c(0, 1, 1, 0, 0).inferred_type(), ColumnType::Mixed);
    }

    #[test]
    fn duplicates_ignore_where_values_are_missing() {
        let mut p = Profiler::new(AuditLimits::default(), None);
        let a = p.add_column("a".into());
        let b = p.add_column("b".into());
        let rows: [&[(usize, Cell<'_>)]; 5] = [
            &[(a, Cell::Int(1))],
            &[(a, Cell::Int(1)), (b, Cell::Text("x".into()))],
            &[(a, Cell::Int(1))],
            &[(b, Cell::Int(1))],
            &[(a, Cell::Float(1.0))],
        ];
        for row in rows {
            let mut state = p.begin_row();
            for (i, cell) in row {
                p.cell(&mut state, *i, cell.clone());
            }
            p.end_row(state);
        }
        let profile = p.finish().unwrap();
        assert_eq!(profile.duplicate_rows, 1);
        assert_eq!(profile.columns[0].missing, 1);
        assert_eq!(profile.columns[1].missing, 3);
        assert_eq!(
            profile.split_overlap, None,
            "no split column, nothing to compare"
        );
    }

    #[test]
    fn evaluation_rows_that_copy_a_train_row_are_counted_whatever_the_order() {
        let mut p = Profiler::new(AuditLimits::default(), None);
        let x = p.add_column("x".into());
        let y = p.add_column("y".into());
        let split = p.add_column("split".into());
        let text = |t: &'static str| Cell::Text(t.into());
        let rows = [
            (1, 0, "test"), // the same as a train row below
            (1, 0, "train"),
            (2, 1, "train"),
            (2, 1, "Validation"),
            (3, 0, "val"),
            (4, 1, "TEST"),
            (2, 1, "test"),
            (9, 9, "holdout"), // in no part
        ];
        for (a, b, part) in rows {
            let mut state = p.begin_row();
            p.cell(&mut state, x, Cell::Int(a));
            p.cell(&mut state, y, Cell::Int(b));
            p.cell(&mut state, split, text(part));
            p.end_row(state);
        }
        let profile = p.finish().unwrap();
        assert_eq!(
            profile.split_overlap,
            Some(SplitOverlap {
                train_rows: 2,
                validation_rows: 2,
                test_rows: 3,
                validation_in_train: 1,
                test_in_train: 2,
            })
        );
        // A row and its copy in another part are not duplicates of each other's whole row.
        assert_eq!(profile.duplicate_rows, 0);
    }
}
