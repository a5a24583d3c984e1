//! CSV: comma-separated, RFC 4180 quoting, the first record is the header, every record has
//! as many fields as the header. Empty lines are skipped; a leading UTF-8 byte order mark is
//! ignored.

use std::path::Path;

use ::csv::{ErrorKind, ReaderBuilder, StringRecord};

use super::guard::LineTooLong;
use super::profile::{Cell, Profiler};
use super::{AuditError, AuditPhase, DatasetFormat, Observer, Position, ROWS_PER_REPORT};

/// Feeds every row of the CSV file to `profiler`. Returns whether rows were left unread
/// because of `limits.max_rows`.
pub(crate) fn read(
    file: impl std::io::Read,
    path: &Path,
    file_size: u64,
    profiler: &mut Profiler,
    observer: &mut Observer<'_>,
) -> Result<bool, AuditError> {
    let mut reader = ReaderBuilder::new()
        .has_headers(true)
        .flexible(false)
        .from_reader(file);
    let header = reader.headers().map_err(|e| error(path, e))?.clone();
    for name in header.iter() {
        profiler.add_column(name.to_owned());
    }
    profiler.check_label()?;

    let mut record = StringRecord::new();
    loop {
        let next = reader.read_record(&mut record);
        if !profiler.wants_more() {
            // Past the limit: anything more, even a malformed record, means truncated.
            return Ok(!matches!(next, Ok(false)));
        }
        if !next.map_err(|e| error(path, e))? {
            return Ok(false);
        }
        let mut row = profiler.begin_row();
        for (index, field) in record.iter().enumerate() {
            if let Some(cell) = Cell::from_text(field) {
                profiler.cell(&mut row, index, cell);
            }
        }
        profiler.end_row(row);
        if profiler.rows().is_multiple_of(ROWS_PER_REPORT) {
            observer.report(AuditPhase::Reading, reader.position().byte(), file_size)?;
        }
    }
}

fn error(path: &Path, error: ::csv::Error) -> AuditError {
    let malformed = |at, reason| AuditError::Malformed {
        path: path.to_path_buf(),
        format: DatasetFormat::Csv,
        at,
        reason,
    };
    let line =
        |pos: Option<&::csv::Position>| pos.map_or(Position::File, |p| Position::Line(p.line()));
    match error.into_kind() {
        ErrorKind::Io(source) => match LineTooLong::within(&source) {
            Some(too_long) => malformed(Position::Line(too_long.line), too_long.to_string()),
            None => AuditError::Read {
                path: path.to_path_buf(),
                source,
            },
        },
        ErrorKind::UnequalLengths {
            pos,
            expected_len,
            len,
        } => malformed(
            line(pos.as_ref()),
            format!("expected {expected_len} fields, as in the header, but found {len}"),
        ),
        ErrorKind::Utf8 { pos, err } => malformed(
            line(pos.as_ref()),
            format!(
                "field {} is not valid UTF-8 (after byte {} of the field); re-encode the file as UTF-8",
                err.field() + 1,
                err.valid_up_to()
            ),
        ),
        other => malformed(Position::File, format!("{other:?}")),
    }
}
