//! The audit's verdict: findings a user (or a pipeline's gate) can read at a glance.

use serde::{Deserialize, Serialize};

use super::report::AuditReport;

/// How much a finding matters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// Worth a look; the data can still be used.
    Warning,
    /// The data is unlikely to be usable as it is.
    Problem,
}

/// The overall verdict: the worst severity found.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Nothing found.
    Ok,
    /// Warnings only.
    Warnings,
    /// At least one problem.
    Problems,
}

/// One thing the audit found.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Finding {
    /// How much it matters.
    pub severity: Severity,
    /// Which check found it: `empty`, `truncated`, `duplicates`, `missing_values`,
    /// `constant_column`, `outliers`, `single_class` or `class_imbalance`.
    pub check: String,
    /// The column it is about, if one.
    pub column: Option<String>,
    /// What was found, for people.
    pub message: String,
}

/// The share of duplicate rows from which they are a warning, and a problem.
pub(crate) const DUPLICATES: (f64, f64) = (0.01, 0.2);
/// The share of a column's values missing from which it is a warning, and a problem.
pub(crate) const MISSING: (f64, f64) = (0.0, 0.5);
/// The share of a numeric column's values that are outliers from which it is a warning.
pub(crate) const OUTLIERS: f64 = 0.05;
/// The largest class over the smallest from which the label is a warning.
pub(crate) const IMBALANCE: f64 = 10.0;

fn percent(part: u64, whole: u64) -> String {
    format!("{:.1}%", 100.0 * part as f64 / whole.max(1) as f64)
}

/// What the report shows, checked against the thresholds above, most severe first.
pub(crate) fn findings(report: &AuditReport) -> Vec<Finding> {
    let mut found = Vec::new();
    let mut add = |severity, check: &str, column: Option<&str>, message: String| {
        found.push(Finding {
            severity,
            check: check.to_owned(),
            column: column.map(str::to_owned),
            message,
        });
    };
    let rows = report.rows;
    if rows == 0 {
        add(
            Severity::Problem,
            "empty",
            None,
            "the file has no data rows".into(),
        );
    }
    if report.truncated {
        add(
            Severity::Warning,
            "truncated",
            None,
            format!("only the first {rows} rows were read (AuditLimits::max_rows)"),
        );
    }
    if rows > 0 {
        let share = report.duplicate_rows as f64 / rows as f64;
        let severity = if share >= DUPLICATES.1 {
            Some(Severity::Problem)
        } else if share >= DUPLICATES.0 {
            Some(Severity::Warning)
        } else {
            None
        };
        if let Some(severity) = severity {
            add(
                severity,
                "duplicates",
                None,
                format!(
                    "{} of {rows} rows ({}) repeat an earlier row",
                    report.duplicate_rows,
                    percent(report.duplicate_rows, rows)
                ),
            );
        }
    }
    for column in &report.columns {
        let name = Some(column.name.as_str());
        if column.missing > 0 && rows > 0 {
            let share = column.missing as f64 / rows as f64;
            let severity = if share >= MISSING.1 {
                Severity::Problem
            } else {
                Severity::Warning
            };
            add(
                severity,
                "missing_values",
                name,
                format!(
                    "{}: {} of {rows} values missing ({})",
                    column.name,
                    column.missing,
                    percent(column.missing, rows)
                ),
            );
        }
        if let Some(n) = &column.numeric {
            if n.count >= 2 && n.min == n.max {
                add(
                    Severity::Warning,
                    "constant_column",
                    name,
                    format!(
                        "{}: every value is {}; it carries no information",
                        column.name, n.min
                    ),
                );
            }
            if n.count > 0 && n.outliers as f64 / n.count as f64 >= OUTLIERS {
                add(
                    Severity::Warning,
                    "outliers",
                    name,
                    format!(
                        "{}: {} of {} values ({}) lie outside [{}, {}]",
                        column.name,
                        n.outliers,
                        n.count,
                        percent(n.outliers, n.count),
                        n.lower_fence,
                        n.upper_fence
                    ),
                );
            }
        }
    }
    if let Some(label) = &report.label {
        let column = Some(label.column.as_str());
        if label.classes.len() == 1 && label.other == 0 {
            add(
                Severity::Problem,
                "single_class",
                column,
                format!("{}: every labelled row has the same class", label.column),
            );
        } else if label.imbalance_ratio >= IMBALANCE {
            add(
                Severity::Warning,
                "class_imbalance",
                column,
                format!(
                    "{}: the largest class has {:.1} times the rows of the smallest",
                    label.column, label.imbalance_ratio
                ),
            );
        }
    }
    found.sort_by_key(|f| std::cmp::Reverse(f.severity));
    found
}

/// The verdict of `findings`: the worst severity among them.
pub(crate) fn verdict(findings: &[Finding]) -> Verdict {
    match findings.iter().map(|f| f.severity).max() {
        None => Verdict::Ok,
        Some(Severity::Warning) => Verdict::Warnings,
        Some(Severity::Problem) => Verdict::Problems,
    }
}
