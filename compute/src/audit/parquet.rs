//! Parquet, read row by row with the `parquet` crate's record API (no arrow). Columns are the
//! schema's top-level fields; a null is missing. Integers of every width are `integer`,
//! floats and decimals `float`, strings, dates, times and binary values `string`, and
//! groups, lists and maps `nested`.

use std::borrow::Cow;
use std::fs::File;
use std::io;
use std::path::Path;

use ::parquet::errors::ParquetError;
use ::parquet::file::reader::{FileReader, SerializedFileReader};
use ::parquet::record::Field;

use super::profile::{Cell, Profiler};
use super::{AuditError, AuditPhase, DatasetFormat, Observer, Position, ROWS_PER_REPORT};

/// Feeds every row of the Parquet file to `profiler`. Returns whether rows were left unread
/// because of `limits.max_rows`.
pub(crate) fn read(
    file: File,
    path: &Path,
    profiler: &mut Profiler,
    observer: &mut Observer<'_>,
) -> Result<bool, AuditError> {
    let reader = SerializedFileReader::new(file).map_err(|e| error(path, Position::File, e))?;
    let metadata = reader.metadata().file_metadata();
    let total_rows = u64::try_from(metadata.num_rows()).unwrap_or(0);
    for field in metadata.schema_descr().root_schema().get_fields() {
        profiler.add_column(field.name().to_owned());
    }
    profiler.check_label()?;

    let rows = reader
        .get_row_iter(None)
        .map_err(|e| error(path, Position::File, e))?;
    for row in rows {
        if !profiler.wants_more() {
            return Ok(true);
        }
        let row = row.map_err(|e| error(path, Position::Row(profiler.rows() + 1), e))?;
        let mut state = profiler.begin_row();
        for (index, (_, field)) in row.get_column_iter().enumerate() {
            if let Some(cell) = cell(field) {
                profiler.cell(&mut state, index, cell);
            }
        }
        profiler.end_row(state);
        if profiler.rows().is_multiple_of(ROWS_PER_REPORT) {
            observer.report(AuditPhase::Reading, profiler.rows(), total_rows)?;
        }
    }
    Ok(false)
}

fn cell(field: &Field) -> Option<Cell<'_>> {
    Some(match field {
        Field::Null => return None,
        Field::Bool(b) => Cell::Bool(*b),
        Field::Byte(i) => Cell::Int((*i).into()),
        Field::Short(i) => Cell::Int((*i).into()),
        Field::Int(i) => Cell::Int((*i).into()),
        Field::Long(i) => Cell::Int((*i).into()),
        Field::UByte(i) => Cell::Int((*i).into()),
        Field::UShort(i) => Cell::Int((*i).into()),
        Field::UInt(i) => Cell::Int((*i).into()),
        Field::ULong(i) => Cell::Int((*i).into()),
        Field::Float16(f) => Cell::Float(f64::from(*f)),
        Field::Float(f) => Cell::Float((*f).into()),
        Field::Double(f) => Cell::Float(*f),
        Field::Decimal(_) => {
            let text = field.to_string();
            match text.parse::<f64>() {
                Ok(f) => Cell::Float(f),
                Err(_) => Cell::Text(Cow::Owned(text)),
            }
        }
        Field::Str(s) => Cell::Text(Cow::Borrowed(s)),
        Field::Bytes(b) => Cell::Text(String::from_utf8_lossy(b.data())),
        Field::Date(_)
        | Field::TimeMillis(_)
        | Field::TimeMicros(_)
        | Field::TimestampMillis(_)
        | Field::TimestampMicros(_) => Cell::Text(Cow::Owned(field.to_string())),
        Field::Group(_) | Field::ListInternal(_) | Field::MapInternal(_) => {
            Cell::Nested(Cow::Owned(field.to_string()))
        }
    })
}

fn error(path: &Path, at: Position, error: ParquetError) -> AuditError {
    // The file was read end to end for its digest just before, so an I/O error now is the
    // disk's fault, except running out of bytes, which is a truncated or damaged file.
    if let ParquetError::External(source) = &error
        && let Some(io) = source.downcast_ref::<io::Error>()
        && io.kind() != io::ErrorKind::UnexpectedEof
    {
        return AuditError::Read {
            path: path.to_path_buf(),
            source: io::Error::new(io.kind(), io.to_string()),
        };
    }
    let mut reason = error.to_string();
    if reason.contains("Disabled feature at compile time") {
        reason.push_str(
            " (this build reads uncompressed and snappy-compressed Parquet; \
             rewrite the file with one of those)",
        );
    }
    if at == Position::File {
        reason = format!("not a readable Parquet file: {reason}");
    }
    AuditError::Malformed {
        path: path.to_path_buf(),
        format: DatasetFormat::Parquet,
        at,
        reason,
    }
}
