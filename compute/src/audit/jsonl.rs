//! JSON Lines: one JSON object per line. Blank lines are skipped; a key absent from a line
//! and a `null` are both missing. Columns are the keys in the order they first appear.

use std::borrow::Cow;
use std::fmt;
use std::io::{self, BufRead, BufReader};
use std::path::Path;

use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::Value;

use super::guard::LineTooLong;
use super::profile::{Cell, Profiler};
use super::{AuditError, AuditPhase, DatasetFormat, Observer, Position, ROWS_PER_REPORT};

/// Feeds every line of the JSON Lines file to `profiler`. Returns whether lines were left
/// unread because of `limits.max_rows`.
pub(crate) fn read(
    file: impl std::io::Read,
    path: &Path,
    file_size: u64,
    profiler: &mut Profiler,
    observer: &mut Observer<'_>,
) -> Result<bool, AuditError> {
    let mut reader = BufReader::with_capacity(1 << 16, file);
    let mut buf = Vec::new();
    let mut line_number = 0u64;
    let mut bytes_read = 0u64;
    // The line each column was last set in, to catch a key repeated within one object.
    let mut set_in_line: Vec<u64> = Vec::new();
    loop {
        buf.clear();
        let n = match reader.read_until(b'\n', &mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if LineTooLong::within(&e).is_some() => {
                let too_long = LineTooLong::within(&e).expect("just checked");
                return Err(AuditError::Malformed {
                    path: path.to_path_buf(),
                    format: DatasetFormat::JsonLines,
                    at: Position::Line(too_long.line),
                    reason: too_long.to_string(),
                });
            }
            Err(source) => {
                return Err(AuditError::Read {
                    path: path.to_path_buf(),
                    source,
                });
            }
        };
        if n == 0 {
            return Ok(false);
        }
        line_number += 1;
        bytes_read += n as u64;
        let mut line = buf.as_slice();
        if line_number == 1 {
            line = line.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(line);
        }
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        if !profiler.wants_more() {
            return Ok(true);
        }

        let malformed = |reason| AuditError::Malformed {
            path: path.to_path_buf(),
            format: DatasetFormat::JsonLines,
            at: Position::Line(line_number),
            reason,
        };
        let object: Object = serde_json::from_slice(line).map_err(|e| malformed(describe(&e)))?;
        let mut row = profiler.begin_row();
        for (key, value) in object.0 {
            let index = profiler.column(&key);
            if index >= set_in_line.len() {
                set_in_line.resize(index + 1, 0);
            }
            if set_in_line[index] == line_number {
                return Err(malformed(format!(
                    "key {key:?} appears more than once in the object"
                )));
            }
            set_in_line[index] = line_number;
            if let Some(cell) = cell(value) {
                profiler.cell(&mut row, index, cell);
            }
        }
        profiler.end_row(row);
        if profiler.rows().is_multiple_of(ROWS_PER_REPORT) {
            observer.report(AuditPhase::Reading, bytes_read, file_size)?;
        }
    }
}

fn cell(value: Value) -> Option<Cell<'static>> {
    Some(match value {
        Value::Null => return None,
        Value::Bool(b) => Cell::Bool(b),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                Cell::Int(i.into())
            } else if let Some(u) = n.as_u64() {
                Cell::Int(u.into())
            } else {
                Cell::Float(n.as_f64().unwrap_or(f64::NAN))
            }
        }
        Value::String(s) => Cell::Text(Cow::Owned(s)),
        // serde_json's map is ordered by key, so equal values print alike.
        nested @ (Value::Array(_) | Value::Object(_)) => {
            Cell::Nested(Cow::Owned(nested.to_string()))
        }
    })
}

/// serde_json's message without its " at line 1 column N" (every parse is of one line), with
/// the column put back where it helps.
fn describe(error: &serde_json::Error) -> String {
    let text = error.to_string();
    let message = text
        .rfind(" at line ")
        .map_or(text.as_str(), |i| &text[..i]);
    match error.classify() {
        serde_json::error::Category::Data => format!("{message} (each line must be one object)"),
        _ => format!("not valid JSON: {message} at column {}", error.column()),
    }
}

/// A JSON object's entries in the order written (serde_json's own map sorts them).
struct Object(Vec<(String, Value)>);

impl<'de> Deserialize<'de> for Object {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ObjectVisitor;

        impl<'de> Visitor<'de> for ObjectVisitor {
            type Value = Object;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Object, A::Error> {
                let mut entries = Vec::with_capacity(map.size_hint().unwrap_or(8));
                while let Some(entry) = map.next_entry::<String, Value>()? {
                    entries.push(entry);
                }
                Ok(Object(entries))
            }
        }

        deserializer.deserialize_map(ObjectVisitor)
    }
}
