//! JSON Lines datasets: one object per row, `{"feature": 1.5, …, "label": 2}`, and the
//! [`Schema`] as JSON in `<file>.schema.json` beside it.

use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

use serde_json::{Map, Number, Value};

use super::{Columns, Dataset, Schema, Targets};
use crate::ComputeError;

/// Where the schema of the JSON Lines file `path` is kept.
pub(crate) fn schema_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".schema.json");
    path.with_file_name(name)
}

pub(crate) fn read_schema(path: &Path) -> Result<Schema, ComputeError> {
    let schema_path = schema_path(path);
    let bytes = std::fs::read(&schema_path).map_err(|e| {
        ComputeError::io(
            "cannot read the schema (pass one explicitly if the file has none)",
            &schema_path,
            e,
        )
    })?;
    serde_json::from_slice(&bytes).map_err(|e| ComputeError::Dataset {
        path: schema_path,
        reason: format!("not a dataset schema: {e}"),
    })
}

fn number(v: f32) -> Value {
    // f32 → f64 is exact, and serde_json prints the shortest text that reads back the same.
    Number::from_f64(f64::from(v)).map_or(Value::Null, Value::Number)
}

pub(crate) fn write(dataset: &Dataset, path: &Path) -> Result<(), ComputeError> {
    let file = File::create(path).map_err(|e| ComputeError::io("cannot create", path, e))?;
    let mut out = BufWriter::new(file);
    let schema = dataset.schema();
    for row in 0..dataset.len() {
        let mut object = Map::new();
        for (j, name) in schema.features.iter().enumerate() {
            object.insert(name.clone(), number(dataset.features()[[row, j]]));
        }
        match dataset.targets() {
            Targets::Classes(c) => {
                object.insert(schema.labels[0].clone(), Value::from(c[row]));
            }
            Targets::Values(v) => {
                for (j, name) in schema.labels.iter().enumerate() {
                    object.insert(name.clone(), number(v[[row, j]]));
                }
            }
        }
        if let Some(soft) = dataset.soft_targets() {
            for (j, name) in schema.soft_labels.iter().enumerate() {
                object.insert(name.clone(), number(soft[[row, j]]));
            }
        }
        serde_json::to_writer(&mut out, &Value::Object(object))
            .map_err(|e| ComputeError::io("cannot write", path, e.into()))?;
        out.write_all(b"\n")
            .map_err(|e| ComputeError::io("cannot write", path, e))?;
    }
    let file = out
        .into_inner()
        .map_err(|e| ComputeError::io("cannot write", path, e.into_error()))?;
    file.sync_all()
        .map_err(|e| ComputeError::io("cannot sync", path, e))
}

pub(crate) fn read(path: &Path, schema: Schema) -> Result<Dataset, ComputeError> {
    let file = File::open(path).map_err(|e| ComputeError::io("cannot open", path, e))?;
    let mut columns = Columns::new(schema);
    let malformed = |line: usize, reason: String| ComputeError::Dataset {
        path: path.to_path_buf(),
        reason: format!("line {line}: {reason}"),
    };
    for (index, line) in BufReader::new(file).lines().enumerate() {
        let number = index + 1;
        let line = line.map_err(|e| ComputeError::io("cannot read", path, e))?;
        if line.trim().is_empty() {
            continue;
        }
        let value: Value =
            serde_json::from_str(&line).map_err(|e| malformed(number, format!("not JSON: {e}")))?;
        let Value::Object(object) = value else {
            return Err(malformed(number, "not a JSON object".into()));
        };
        columns
            .push_row(|name| match object.get(name) {
                None => Err(format!("no column {name:?}")),
                Some(Value::Number(n)) => n
                    .as_f64()
                    .ok_or_else(|| format!("column {name:?} is not a number")),
                Some(other) => Err(format!("column {name:?} is {other}, not a number")),
            })
            .map_err(|reason| malformed(number, reason))?;
    }
    columns.finish(path)
}
